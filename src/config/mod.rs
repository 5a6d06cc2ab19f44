//! The configuration file (every key is in `config/fulcrum.toml`): serde types with their
//! documented defaults, loading from TOML, and validation that names the key path and the reason
//! of every error.
//!
//! Loading is two steps. [`Config::parse`] deserialises (unknown keys are an error; a TOML or type
//! error carries its key path and line), then [`Config::validate`] checks what types cannot say
//! (ranges, uniqueness, addresses) and reports *every* problem at once, so a user fixes a file in
//! one round.

mod types;
mod validate;

pub use types::*;

use std::fmt;
use std::path::Path;

/// One problem in a config file: the key path (e.g. `upstreams[0].circuit_breaker.failure_rate`)
/// and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path; empty for errors about the whole file (unreadable, syntax).
    pub key: String,
    /// Why the value is refused, in a few words.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.key, self.reason)
        }
    }
}

/// All problems found in one config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                key: String::new(),
                reason: format!("cannot read {}: {e}", path.display()),
            }])
        })?;
        Config::from_toml(&text)
    }

    /// Parses and validates a TOML document.
    pub fn from_toml(text: &str) -> Result<Config, ConfigErrors> {
        let config = Config::parse(text).map_err(|e| ConfigErrors(vec![e]))?;
        config.validate().map_err(ConfigErrors)?;
        Ok(config)
    }

    /// Deserialises without the semantic checks of [`Config::validate`].
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let de =
            toml::Deserializer::parse(text).map_err(|e| toml_error(text, &e, String::new()))?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            toml_error(text, e.inner(), key)
        })
    }

    /// A one-line summary for `fulcrum check`.
    pub fn summary(&self) -> String {
        let backends: usize = self.upstreams.iter().map(|u| u.backends.len()).sum();
        format!(
            "config ok: {} upstream(s), {} backend(s), listen {}, admin {}",
            self.upstreams.len(),
            backends,
            self.listen.address,
            self.admin.address
        )
    }
}

/// Turns a toml error into a [`ConfigError`] with the line it points at. The message of a toml
/// error already contains a rendered snippet; we keep only its first line of prose.
fn toml_error(text: &str, e: &toml::de::Error, key: String) -> ConfigError {
    let message = e.message().trim().to_string();
    let reason = match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("{message} (line {line})")
        }
        None => message,
    };
    ConfigError { key, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [[upstreams]]
        name = "web"
          [[upstreams.backends]]
          address = "127.0.0.1:9001"
          [[upstreams.backends]]
          address = "127.0.0.1:9002"
          weight = 2
    "#;

    #[test]
    fn a_minimal_file_gets_every_default() {
        let c = Config::from_toml(MINIMAL).unwrap();
        let u = &c.upstreams[0];
        assert_eq!(c.listen, Listen::default());
        assert_eq!(c.admin, Admin::default());
        assert_eq!(c.runtime.worker_threads, 0);
        assert_eq!(u.hosts, vec!["*"]);
        assert_eq!(u.path_prefix, "/");
        assert_eq!(u.algorithm, Algorithm::Adaptive);
        assert_eq!(u.backends[0].weight, 1);
        assert_eq!(u.health.interval, std::time::Duration::from_secs(2));
        assert_eq!(u.circuit_breaker.max_ejection_percent, 50);
        assert_eq!(u.retry.on.len(), 6);
        assert_eq!(u.timeouts.response, std::time::Duration::from_secs(15));
    }

    /// The documented example spells out every default: it must say what the code does.
    #[test]
    fn the_documented_example_states_the_real_defaults() {
        let text = include_str!("../../config/fulcrum.toml");
        let documented = Config::from_toml(text).unwrap();
        let minimal = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(documented, minimal);
    }

    #[test]
    fn durations_accept_humane_strings() {
        let c = Config::from_toml(&format!(
            "{MINIMAL}\n  [upstreams.timeouts]\n  connect = \"250ms\"\n  idle = \"1m\"\n"
        ))
        .unwrap();
        assert_eq!(c.upstreams[0].timeouts.connect.as_millis(), 250);
        assert_eq!(c.upstreams[0].timeouts.idle.as_secs(), 60);
    }

    #[test]
    fn backend_addresses_may_carry_http_and_names() {
        let ok = |a: &str| {
            BackendConfig {
                address: a.to_string(),
                weight: 1,
            }
            .authority()
            .map(str::to_string)
        };
        assert_eq!(ok("http://10.0.0.1:80").unwrap(), "10.0.0.1:80");
        assert_eq!(ok("app.internal:8080").unwrap(), "app.internal:8080");
        assert_eq!(ok("[::1]:9000").unwrap(), "[::1]:9000");
        assert!(ok("10.0.0.1").is_err());
        assert!(ok("10.0.0.1:0").is_err());
        assert!(ok("10.0.0.1:80/path").is_err());
        assert!(ok("[zz]:80").is_err());
    }
}
