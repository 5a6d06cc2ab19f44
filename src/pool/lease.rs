//! What a pick hands the frontend: a claim on one backend that counts the request in flight
//! until dropped, and the channel to report the request's outcome to the backend's actor.

use super::backend::{BackendMsg, Outcome};
use crate::policy::balance::BackendId;
use ractor::ActorRef;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Per-backend data shared between the pool and the leases it handed out. The in-flight count is
/// an atomic so that a request's end costs no message (architecture.md).
#[derive(Debug)]
pub(crate) struct BackendShared {
    pub(crate) id: BackendId,
    pub(crate) authority: Arc<str>,
    pub(crate) inflight: AtomicU32,
}

/// A request's claim on one backend; the backend counts it in flight until this is dropped.
#[derive(Debug)]
pub struct Lease {
    shared: Arc<BackendShared>,
    actor: ActorRef<BackendMsg>,
}

impl Lease {
    pub(crate) fn new(shared: Arc<BackendShared>, actor: ActorRef<BackendMsg>) -> Lease {
        shared.inflight.fetch_add(1, Ordering::Relaxed);
        Lease { shared, actor }
    }

    /// The backend's identity in its pool.
    pub fn id(&self) -> BackendId {
        self.shared.id
    }

    /// `host:port` of the backend.
    pub fn authority(&self) -> &Arc<str> {
        &self.shared.authority
    }

    /// Requests now in flight to this backend, this one included.
    pub fn inflight(&self) -> u32 {
        self.shared.inflight.load(Ordering::Relaxed)
    }

    /// Tells the backend's actor how the request went. A cast: the request path never waits.
    pub fn report(&self, outcome: Outcome) {
        // The actor may be between a failure and its restart; one lost sample is harmless.
        let _ = self.actor.cast(BackendMsg::Outcome(outcome));
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.shared.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}
