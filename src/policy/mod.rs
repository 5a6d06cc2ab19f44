//! Pure policies: synchronous, no tokio tasks, no I/O, and `now` always passed in, so each is
//! unit-tested over explicit timelines. Actors hold and drive them; they import nothing of
//! fulcrum but config types.

pub mod balance;
pub mod ewma;
pub mod rise_fall;
