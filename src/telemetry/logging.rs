//! Logging through tracing: pretty on a terminal, JSON otherwise (or as `--log-format` says);
//! `RUST_LOG` filters, `info` by default.
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

/// Installs the global subscriber; `None` picks pretty on a terminal and JSON otherwise.
pub fn init(format: Option<LogFormat>) {
    let format = format.unwrap_or(if std::io::stderr().is_terminal() {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    });
    let asked = std::env::var(EnvFilter::DEFAULT_ENV).ok();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(asked.as_deref()))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// The filter for `RUST_LOG` = `asked`: `info` when unset or unreadable, ractor quietened unless
/// named.
fn filter(asked: Option<&str>) -> EnvFilter {
    let filter = asked
        .and_then(|d| EnvFilter::try_new(d).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    match asked {
        Some(d) if d.contains("ractor") => filter,
        // A constant that parses (tested below).
        _ => match QUIET_RACTOR.parse() {
            Ok(directive) => filter.add_directive(directive),
            Err(_) => filter,
        },
    }
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
        assert_eq!(passes(filter(None)), (false, true));
        assert_eq!(passes(filter(Some("debug"))), (false, true));
        assert_eq!(passes(filter(Some("info,ractor=info"))), (true, true));
        assert_eq!(passes(filter(Some("not a [filter"))), (false, true));
    }
}
