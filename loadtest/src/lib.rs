//! fulcrum's test bench: the fault-injecting backend (library and `loadtest backend`), with its
//! control listener. It talks to the balancer as a user would: over HTTP.
#![forbid(unsafe_code)]

pub mod backend;
pub mod control;
pub mod fault;

pub use backend::Backend;
pub use fault::{Fault, Mode};
