//! Work on its way from the request path to an actor, in batches: the request path pushes each
//! item onto a lock-free queue and sends the actor a message only when none is on its way
//! already; the actor handles everything queued when that message comes. Under load one
//! message carries many items, where one per item woke the actor (and paid ractor's boxing,
//! its port select and its panic guard) as often as requests came.
//!
//! An item is urgent or can wait. An urgent one (a pick, a failed try, the outcome of the only
//! request in flight to its backend) is sent for at once, even when a message that waits is on
//! its way. One that can wait (a successful try's outcome while others are in flight) is sent
//! for at most [`COALESCE`] later, when its thread's window of waiting messages closes
//! ([`super::later`]), so that the outcomes of those milliseconds' requests reach their
//! backend's actor in one message rather than a few each: at 16 connections outcomes came one
//! or two to a message, which cost as much as folding them. At one request at a time the wait
//! would only add a wake-up of the thread for its timer, so nothing waits then.
//!
//! Two queues use it: a backend's request outcomes ([`Outcomes`]) and a pool's picks
//! ([`super::picks::Picks`]).

use super::backend::Outcome;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;
use std::time::Duration;

/// One actor's queue of items not yet handled.
#[derive(Debug)]
pub(crate) struct Batch<T> {
    tx: Sender<T>,
    /// Drained by the actor alone; the lock is never taken on the request path.
    rx: Mutex<Receiver<T>>,
    /// Which drain message is on its way to the actor, if any: [`IDLE`], [`LATER`] or
    /// [`NOW`] (or the actor is between lives and will drain when it starts).
    nudged: AtomicU8,
}

/// How long a successful try's outcome may wait for others to join it. Short beside anything
/// the estimates react to (a failure is never kept waiting), and half of what the shards' copy
/// of an estimate may lag anyway (`SHARE_PERIOD`). 5 ms rather than 1: on a serving worker each
/// message wakes the main thread, and at one connection with two workers 1 ms cost 15% more CPU
/// per request (BENCHMARKS.md, eleventh round).
pub(crate) const COALESCE: Duration = Duration::from_millis(5);

const IDLE: u8 = 0;
const LATER: u8 = 1;
const NOW: u8 = 2;

/// What the pusher of an item must send the actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nudge {
    /// Nothing: a message is on its way that will drain this item too.
    None,
    /// A drain message now.
    Now,
    /// A drain message at most [`COALESCE`] from now ([`super::later`]).
    Later,
}

/// A backend's outcomes, on their way to its actor.
pub(crate) type Outcomes = Batch<Outcome>;

impl<T> Default for Batch<T> {
    fn default() -> Self {
        let (tx, rx) = channel();
        Batch {
            tx,
            rx: Mutex::new(rx),
            nudged: AtomicU8::new(IDLE),
        }
    }
}

impl<T> Batch<T> {
    /// Queues `item`, `urgent` or not, and says which message the actor must be sent.
    pub(crate) fn push(&self, item: T, urgent: bool) -> Nudge {
        // The queue lives as long as this struct, which holds its receiver: the send cannot fail.
        let _ = self.tx.send(item);
        if urgent {
            // A message that waits may be on its way: this one goes anyway.
            match self.nudged.swap(NOW, Ordering::AcqRel) {
                NOW => Nudge::None,
                _ => Nudge::Now,
            }
        } else {
            match self
                .nudged
                .compare_exchange(IDLE, LATER, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => Nudge::Later,
                Err(_) => Nudge::None,
            }
        }
    }

    /// The drain message could not be sent (its actor is gone): the next push sends one.
    pub(crate) fn unnudge(&self) {
        self.nudged.store(IDLE, Ordering::Release);
    }

    /// Hands every queued item to `handle`, oldest first.
    pub(crate) fn drain(&self, mut handle: impl FnMut(T)) {
        // Cleared before draining: an item pushed from here on either is drained now or
        // sends a new message.
        self.nudged.store(IDLE, Ordering::Release);
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
        assert_eq!(q.push(1, true), Nudge::Now, "the first asks for a drain");
        assert_eq!(q.push(2, true), Nudge::None, "one is on its way");
        assert_eq!(q.push(3, false), Nudge::None);
        let mut seen = Vec::new();
        q.drain(|n| seen.push(n));
        assert_eq!(seen, [1, 2, 3]);
        assert_eq!(
            q.push(4, true),
            Nudge::Now,
            "after a drain, the next asks again"
        );
        seen.clear();
        q.drain(|n| seen.push(n));
        assert_eq!(seen, [4]);
    }

    #[test]
    fn what_can_wait_asks_for_a_later_drain_and_what_cannot_still_goes_at_once() {
        let q = Batch::<u32>::default();
        assert_eq!(q.push(1, false), Nudge::Later);
        assert_eq!(q.push(2, false), Nudge::None, "the later one will take it");
        assert_eq!(q.push(3, true), Nudge::Now, "urgent: not kept waiting");
        assert_eq!(q.push(4, false), Nudge::None);
        assert_eq!(q.push(5, true), Nudge::None, "the urgent one is on its way");
        let mut seen = Vec::new();
        q.drain(|n| seen.push(n));
        assert_eq!(seen, [1, 2, 3, 4, 5]);
        assert_eq!(
            q.push(6, false),
            Nudge::Later,
            "after a drain, the next asks again"
        );
    }

    #[test]
    fn a_failed_nudge_is_sent_again_by_the_next_push() {
        let q = Batch::<u32>::default();
        assert_eq!(q.push(1, true), Nudge::Now);
        q.unnudge();
        assert_eq!(
            q.push(2, true),
            Nudge::Now,
            "the actor never heard of the first"
        );
    }
}
