//! Whether a failed try may be retried: the failure's kind must be listed in `retry.on`; a
//! request that never reached a backend (connect failure) may be retried whatever its method;
//! once sent, only idempotent methods are (GET HEAD OPTIONS PUT DELETE TRACE); a body too large
//! to keep a copy of cannot be sent again. (Never retrying once a response byte has gone to the
//! client is the frontend's part: it retries only before answering.)

use crate::config::Retry;
use http::Method;

/// How a try failed, for the retry decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connection could not be made: the backend never saw the request.
    Connect,
    /// The connection broke after the request was sent.
    Reset,
    /// No response headers in time.
    Timeout,
    /// The backend answered this status.
    Status(u16),
}

/// Every `reason` of a retry, as `retry.on` names the failures.
pub const REASONS: [&str; 4] = ["connect-failure", "reset", "timeout", "status"];

impl Failure {
    /// The `reason` label of a retry of this failure: one of [`REASONS`].
    pub fn reason(self) -> &'static str {
        REASONS[match self {
            Failure::Connect => 0,
            Failure::Reset => 1,
            Failure::Timeout => 2,
            Failure::Status(_) => 3,
        }]
    }
}

/// Why a failure is not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRetry {
    /// `retry.on` does not list it.
    NotListed,
    /// It may have been processed and the method is not idempotent.
    NotIdempotent,
    /// The request body was too large to keep a copy of.
    BodyNotReplayable,
}

/// The retry rules of one upstream.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    attempts: u32,
    on_connect: bool,
    on_reset: bool,
    on_timeout: bool,
    statuses: Vec<u16>,
}

/// Methods whose repetition has the effect of one request (RFC 9110 §9.2.2).
pub fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

impl RetryPolicy {
    /// The rules of `[upstreams.retry]`.
    pub fn new(cfg: &Retry) -> RetryPolicy {
        let listed = |k: &str| cfg.on.iter().any(|o| o == k);
        RetryPolicy {
            attempts: cfg.attempts,
            on_connect: listed("connect-failure"),
            on_reset: listed("reset"),
            on_timeout: listed("timeout"),
            statuses: cfg.on.iter().filter_map(|s| s.parse().ok()).collect(),
        }
    }

    /// Retries allowed after the first try.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Whether a response with this status counts as a failure (for the breaker, the EWMA and
    /// retries): a 5xx listed in `retry.on`.
    pub fn is_failure_status(&self, status: u16) -> bool {
        (500..=599).contains(&status) && self.statuses.contains(&status)
    }

    /// Whether a try that failed with `failure` may be tried again elsewhere.
    pub fn may_retry(
        &self,
        failure: Failure,
        method: &Method,
        replayable: bool,
    ) -> Result<(), NoRetry> {
        let listed = match failure {
            Failure::Connect => self.on_connect,
            Failure::Reset => self.on_reset,
            Failure::Timeout => self.on_timeout,
            Failure::Status(s) => self.is_failure_status(s),
        };
        if !listed {
            return Err(NoRetry::NotListed);
        }
        if !replayable {
            return Err(NoRetry::BodyNotReplayable);
        }
        if failure != Failure::Connect && !idempotent(method) {
            return Err(NoRetry::NotIdempotent);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::new(&Retry::default())
    }

    #[test]
    fn a_request_that_never_reached_a_backend_is_retried_whatever_its_method() {
        assert_eq!(
            policy().may_retry(Failure::Connect, &Method::POST, true),
            Ok(())
        );
        assert_eq!(
            policy().may_retry(Failure::Connect, &Method::PATCH, true),
            Ok(())
        );
    }

    #[test]
    fn after_sending_only_idempotent_methods_are_retried() {
        let p = policy();
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
            Method::TRACE,
        ] {
            assert_eq!(p.may_retry(Failure::Reset, &m, true), Ok(()), "{m}");
            assert_eq!(p.may_retry(Failure::Timeout, &m, true), Ok(()), "{m}");
            assert_eq!(p.may_retry(Failure::Status(503), &m, true), Ok(()), "{m}");
        }
        for m in [Method::POST, Method::PATCH] {
            assert_eq!(
                p.may_retry(Failure::Reset, &m, true),
                Err(NoRetry::NotIdempotent)
            );
            assert_eq!(
                p.may_retry(Failure::Status(502), &m, true),
                Err(NoRetry::NotIdempotent)
            );
        }
    }

    #[test]
    fn only_what_retry_on_lists() {
        let p = RetryPolicy::new(&Retry {
            on: vec!["reset".into(), "503".into()],
            ..Retry::default()
        });
        assert_eq!(
            p.may_retry(Failure::Connect, &Method::GET, true),
            Err(NoRetry::NotListed)
        );
        assert_eq!(
            p.may_retry(Failure::Timeout, &Method::GET, true),
            Err(NoRetry::NotListed)
        );
        assert_eq!(
            p.may_retry(Failure::Status(502), &Method::GET, true),
            Err(NoRetry::NotListed)
        );
        assert_eq!(
            p.may_retry(Failure::Status(503), &Method::GET, true),
            Ok(())
        );
        assert!(p.is_failure_status(503) && !p.is_failure_status(502) && !p.is_failure_status(200));
    }

    #[test]
    fn a_body_without_a_copy_is_never_sent_twice() {
        let p = policy();
        assert_eq!(
            p.may_retry(Failure::Connect, &Method::PUT, false),
            Err(NoRetry::BodyNotReplayable)
        );
    }
}
