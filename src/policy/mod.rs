//! Pure policies: synchronous, no tokio tasks, no I/O, and `now` always passed in, so each is
//! unit-tested over explicit timelines. Actors hold and drive them; they import nothing of
//! fulcrum but config types.

pub mod backoff;
pub mod balance;
pub mod breaker;
pub mod budget;
pub mod ejection;
pub mod ewma;
pub mod outcome;
pub mod retry;
pub mod rise_fall;
pub mod slow_start;
pub mod success;
pub mod weight;
pub mod window;
