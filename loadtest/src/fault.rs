//! What a backend does wrong, and its text form (`dead`, `latency 200ms`, `errors 0.5 503`,
//! `latency 5ms errors 0.1 500`, `hang`, `reset`, `ok`) used by the control listener and the CLI.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// How a backend treats the connections and requests it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Answers.
    #[default]
    Normal,
    /// Listener and open connections closed: connects are refused.
    Dead,
    /// Reads the request, never answers.
    Hang,
    /// Reads the request, then resets the connection (SO_LINGER 0).
    Reset,
}

/// A backend's behaviour: a mode, plus added latency and a share of error answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fault {
    /// How connections are treated.
    pub mode: Mode,
    /// Added to every answer.
    pub latency: Duration,
    /// Share of requests answered with `error_status`, in [0, 1].
    pub error_rate: f64,
    /// The status of error answers.
    pub error_status: u16,
}

impl Default for Fault {
    fn default() -> Self {
        Fault::OK
    }
}

impl Fault {
    /// Healthy: answers at once.
    pub const OK: Fault = Fault {
        mode: Mode::Normal,
        latency: Duration::ZERO,
        error_rate: 0.0,
        error_status: 503,
    };

    /// Connects refused.
    pub fn dead() -> Fault {
        Fault {
            mode: Mode::Dead,
            ..Fault::OK
        }
    }

    /// Never answers.
    pub fn hang() -> Fault {
        Fault {
            mode: Mode::Hang,
            ..Fault::OK
        }
    }

    /// Resets after reading the request.
    pub fn reset() -> Fault {
        Fault {
            mode: Mode::Reset,
            ..Fault::OK
        }
    }

    /// Adds `d` to every answer.
    pub fn latency(d: Duration) -> Fault {
        Fault {
            latency: d,
            ..Fault::OK
        }
    }

    /// Answers `status` to a share `p` of requests.
    pub fn errors(p: f64, status: u16) -> Fault {
        Fault {
            error_rate: p,
            error_status: status,
            ..Fault::OK
        }
    }
}

/// Why a fault's text form was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad fault {text:?}: {reason}; expected e.g. `ok`, `dead`, `hang`, `reset`, `latency 200ms`, `errors 0.5 503`")]
pub struct FaultParseError {
    text: String,
    reason: String,
}

impl FromStr for Fault {
    type Err = FaultParseError;

    fn from_str(s: &str) -> Result<Fault, FaultParseError> {
        let err = |reason: &str| FaultParseError {
            text: s.to_string(),
            reason: reason.to_string(),
        };
        let mut fault = Fault::OK;
        let mut words = s.split_whitespace();
        let mut any = false;
        while let Some(word) = words.next() {
            any = true;
            match word {
                "ok" | "normal" => fault = Fault::OK,
                "dead" => fault.mode = Mode::Dead,
                "hang" => fault.mode = Mode::Hang,
                "reset" => fault.mode = Mode::Reset,
                "latency" => {
                    let d = words
                        .next()
                        .ok_or_else(|| err("latency needs a duration"))?;
                    fault.latency =
                        humantime::parse_duration(d).map_err(|e| err(&e.to_string()))?;
                }
                "errors" => {
                    let p = words.next().ok_or_else(|| err("errors needs a rate"))?;
                    let p: f64 = p
                        .parse()
                        .map_err(|_| err("the error rate is not a number"))?;
                    if !(0.0..=1.0).contains(&p) {
                        return Err(err("the error rate must be in [0, 1]"));
                    }
                    fault.error_rate = p;
                    if let Some(status) = words.clone().next().and_then(|w| w.parse::<u16>().ok()) {
                        words.next();
                        if !(100..=599).contains(&status) {
                            return Err(err("the error status must be in 100..=599"));
                        }
                        fault.error_status = status;
                    }
                }
                other => return Err(err(&format!("unknown word {other:?}"))),
            }
        }
        if !any {
            return Err(err("empty"));
        }
        Ok(fault)
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        match self.mode {
            Mode::Normal => {}
            Mode::Dead => parts.push("dead".to_string()),
            Mode::Hang => parts.push("hang".to_string()),
            Mode::Reset => parts.push("reset".to_string()),
        }
        if !self.latency.is_zero() {
            parts.push(format!(
                "latency {}",
                humantime::format_duration(self.latency)
            ));
        }
        if self.error_rate > 0.0 {
            parts.push(format!("errors {} {}", self.error_rate, self.error_status));
        }
        if parts.is_empty() {
            parts.push("ok".to_string());
        }
        write!(f, "{}", parts.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_round_trip() {
        for text in [
            "ok",
            "dead",
            "hang",
            "reset",
            "latency 200ms",
            "errors 0.5 503",
            "latency 5ms errors 0.1 500",
        ] {
            let f: Fault = text.parse().unwrap();
            assert_eq!(f.to_string(), text);
        }
        assert_eq!(
            "errors 0.25".parse::<Fault>().unwrap(),
            Fault::errors(0.25, 503)
        );
    }

    #[test]
    fn refuses_nonsense() {
        assert!("".parse::<Fault>().is_err());
        assert!("errors 1.5".parse::<Fault>().is_err());
        assert!("latency soon".parse::<Fault>().is_err());
        assert!("explode".parse::<Fault>().is_err());
    }
}
