//! fulcrum's test bench: the fault-injecting backend (library and `loadtest backend`), with its
//! control listener, and the scenario runner (`loadtest run`): scenario files, the run against
//! the real fulcrum binary, the report and its plot; and the bench (`loadtest bench`), fulcrum
//! beside nginx and HAProxy. It talks to the balancer as a user would:
//! over HTTP.
#![forbid(unsafe_code)]

pub mod backend;
pub mod bench;
pub mod control;
pub mod fault;
pub mod plot;
pub mod report;
pub mod run;
pub mod scenario;

pub use backend::Backend;
pub use fault::{Fault, Mode};
