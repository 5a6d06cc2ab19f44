//! The actors of architecture.md: one [`PoolActor`] per upstream answers "which backend?" and
//! schedules active probes; one [`BackendActor`] per backend, spawned linked to its pool and
//! restarted by it, folds request outcomes into its policies. A pick hands out a [`Lease`] that
//! counts the request in flight until it is dropped.

mod actor;
mod backend;
mod batch;
mod change;
mod choose;
mod later;
mod lease;
mod picks;
mod probe;
mod shard;

pub use actor::{BackendStatus, NoBackend, PoolActor, PoolArgs, PoolMsg, UpstreamStatus};
pub use backend::{BackendActor, BackendMsg, BackendView, Outcome, OutcomeKind, Recent};
pub use change::{AdminState, Applied, ChangeError};
pub use lease::Lease;
pub use picks::{Asked, PickAnswer, Pool, PoolStart, Shard, Shards};
pub use shard::Table;
