//! fulcrum: an HTTP load balancer on the actor model that adapts to sick backends fast.
//!
//! Layers (architecture.md): the frontend ([`proxy`]) routes and forwards; one pool actor per
//! upstream ([`pool`]) answers "which backend?"; one backend actor per backend folds outcomes
//! into the pure [`policy`] structs. [`server`] wires them from a [`config`]; [`control`]
//! applies reloads and admin changes as differences; [`admin`] serves /metrics, /status and the
//! admin API; [`telemetry`] owns the metrics, the access log and logging; [`cli`] is
//! the command line.
#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod connection;
pub mod control;
pub mod demo;
pub mod patience;
pub mod policy;
pub mod pool;
pub mod proxy;
pub mod race;
pub mod server;
pub mod spare;
pub mod telemetry;
pub mod watchdog;
pub mod workers;
