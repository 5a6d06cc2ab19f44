//! Logging through tracing: pretty on a terminal, JSON otherwise (or as `--log-format` says);
//! `RUST_LOG` filters, `info` by default. A `RUST_LOG` that does not parse is refused with its
//! reason before anything starts, rather than silently replaced by the default.
//!
//! ractor is held to `warn` unless `RUST_LOG` names it: it wraps each actor's message loop in an
//! `info` span, entered and left at every wake-up of the actor, which is at least one per proxied
//! request (the pick). ractor logs nothing at `info` outside its factories, which fulcrum does not
//! use, and fulcrum's own events inside actors carry their upstream and backend as fields, so the
//! span only cost time.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Added to the filter unless `RUST_LOG` names ractor; see the module doc.
const QUIET_RACTOR: &str = "ractor=warn";

/// The log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per event.
    Json,
}

/// Installs the global subscriber; `None` picks pretty on a terminal and JSON otherwise. Errs,
/// installing nothing, when `RUST_LOG` is set but is not a filter, or is not UTF-8.
pub fn init(format: Option<LogFormat>) -> Result<(), String> {
    let format = format.unwrap_or(if std::io::stderr().is_terminal() {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    });
    let asked = match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(v) => Some(v),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(format!("{}: not UTF-8", EnvFilter::DEFAULT_ENV))
        }
    };
    let filter = filter(asked.as_deref())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // Fails only when a subscriber is installed already (a test's): that one stays.
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    Ok(())
}

/// The filter for `RUST_LOG` = `asked`: `info` when unset or blank, ractor quietened unless
/// named; an error naming `RUST_LOG` and the parser's reason when it does not parse.
fn filter(asked: Option<&str>) -> Result<EnvFilter, String> {
    let filter = match asked.map(str::trim).filter(|d| !d.is_empty()) {
        Some(d) => EnvFilter::try_new(d)
            .map_err(|e| format!("{}={d:?} is not a log filter: {e}", EnvFilter::DEFAULT_ENV))?,
        None => EnvFilter::new("info"),
    };
    Ok(match asked {
        Some(d) if d.contains("ractor") => filter,
        // A constant that parses (tested below).
        _ => match QUIET_RACTOR.parse() {
            Ok(directive) => filter.add_directive(directive),
            Err(_) => filter,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    /// Whether an `info` span of ractor's actor loop and an `info` event of fulcrum's pass `f`.
    fn passes(f: EnvFilter) -> (bool, bool) {
        let subscriber = tracing_subscriber::registry().with(f);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(target: "ractor::actor", "Actor");
            let ours = tracing::enabled!(target: "fulcrum::pool", tracing::Level::INFO);
            (!span.is_disabled(), ours)
        })
    }

    #[test]
    fn ractor_span_is_off_unless_asked_for() {
        assert!(QUIET_RACTOR
            .parse::<tracing_subscriber::filter::Directive>()
            .is_ok());
        assert_eq!(passes(filter(None).unwrap()), (false, true));
        assert_eq!(passes(filter(Some("")).unwrap()), (false, true));
        assert_eq!(passes(filter(Some("debug")).unwrap()), (false, true));
        assert_eq!(
            passes(filter(Some("info,ractor=info")).unwrap()),
            (true, true)
        );
    }

    #[test]
    fn a_filter_that_does_not_parse_is_refused_with_its_reason() {
        let e = filter(Some("fulcrum=loud")).unwrap_err();
        assert!(
            e.starts_with("RUST_LOG=\"fulcrum=loud\" is not a log filter: "),
            "{e}"
        );
    }
}
