//! What happened to one try of a request: the vocabulary the forwarder reports in, the backend
//! actor folds into its policies, and the metrics count. Here, under the policies, so that
//! every layer above can name it without importing another's.

use std::time::Duration;

/// How one try of a request ended, as the frontend saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeKind {
    /// Response headers arrived with a status that is not a failure.
    Success,
    /// The TCP connect failed or timed out.
    Connect,
    /// The connection broke after the request was sent.
    Reset,
    /// No response headers within the response timeout.
    Timeout,
    /// A 5xx status that counts as a failure.
    Status(u16),
}

impl OutcomeKind {
    /// Whether this outcome counts against the backend.
    pub fn is_failure(self) -> bool {
        !matches!(self, OutcomeKind::Success)
    }
}

/// One try's outcome and its time to response headers (or to the failure).
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// How it ended.
    pub kind: OutcomeKind,
    /// Time from sending to response headers, or to the failure.
    pub latency: Duration,
}
