//! What fulcrum tells the people who run it: logs ([`logging`]: format and filter), the
//! Prometheus metrics of metrics.md ([`metrics`]), and the access log with its request ids
//! ([`access`]).

pub mod access;
pub mod logging;
pub mod metrics;

pub use logging::{init, LogFormat};
