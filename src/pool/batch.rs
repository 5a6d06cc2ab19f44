//! Work on its way from the request path to an actor, in batches: the request path pushes each
//! item onto a lock-free queue and sends the actor a message only when none is on its way
//! already; the actor handles everything queued when that message comes. Under load one
//! message carries many items, where one per item woke the actor (and paid ractor's boxing,
//! its port select and its panic guard) as often as requests came; at low load it is one
//! message per item, as before, with no delay.
//!
//! Two queues use it: a backend's request outcomes ([`Outcomes`]) and a pool's picks
//! ([`super::picks::Picks`]).

use super::backend::Outcome;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;

/// One actor's queue of items not yet handled.
#[derive(Debug)]
pub(crate) struct Batch<T> {
    tx: Sender<T>,
    /// Drained by the actor alone; the lock is never taken on the request path.
    rx: Mutex<Receiver<T>>,
    /// A drain message is on its way to the actor (or the actor is between lives and will
    /// drain when it starts).
    nudged: AtomicBool,
}

/// A backend's outcomes, on their way to its actor.
pub(crate) type Outcomes = Batch<Outcome>;

impl<T> Default for Batch<T> {
    fn default() -> Self {
        let (tx, rx) = channel();
        Batch {
            tx,
            rx: Mutex::new(rx),
            nudged: AtomicBool::new(false),
        }
    }
}

impl<T> Batch<T> {
    /// Queues `item`; true when the actor must be sent a drain message.
    pub(crate) fn push(&self, item: T) -> bool {
        // The queue lives as long as this struct, which holds its receiver: the send cannot fail.
        let _ = self.tx.send(item);
        !self.nudged.swap(true, Ordering::AcqRel)
    }

    /// The drain message could not be sent (its actor is gone): the next push sends one.
    pub(crate) fn unnudge(&self) {
        self.nudged.store(false, Ordering::Release);
    }

    /// Hands every queued item to `handle`, oldest first.
    pub(crate) fn drain(&self, mut handle: impl FnMut(T)) {
        // Cleared before draining: an item pushed from here on either is drained now or
        // sends a new message.
        self.nudged.store(false, Ordering::Release);
        let rx = self.rx.lock().unwrap_or_else(|e| e.into_inner());
        for item in rx.try_iter() {
            handle(item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_message_per_batch_and_every_item_in_order() {
        let q = Batch::<u32>::default();
        assert!(q.push(1), "the first asks for a drain");
        assert!(!q.push(2), "one is on its way");
        assert!(!q.push(3));
        let mut seen = Vec::new();
        q.drain(|n| seen.push(n));
        assert_eq!(seen, [1, 2, 3]);
        assert!(q.push(4), "after a drain, the next asks again");
        seen.clear();
        q.drain(|n| seen.push(n));
        assert_eq!(seen, [4]);
    }

    #[test]
    fn a_failed_nudge_is_sent_again_by_the_next_push() {
        let q = Batch::<u32>::default();
        assert!(q.push(1));
        q.unnudge();
        assert!(q.push(2), "the actor never heard of the first: ask again");
    }
}
