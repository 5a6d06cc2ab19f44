//! Request outcomes on their way from the request path to a backend's actor, in batches: the
//! request path pushes each outcome onto a lock-free queue and sends the actor a message only
//! when none is on its way already; the actor folds everything queued when that message comes.
//! Under load one message carries many outcomes, where one per request woke the actor as often
//! as requests ended; at low load it is one message per outcome, as before, with no delay.

use super::backend::Outcome;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;

/// One backend's queue of outcomes not yet folded.
#[derive(Debug)]
pub(crate) struct OutcomeQueue {
    tx: Sender<Outcome>,
    /// Drained by the backend's actor alone; the lock is never taken on the request path.
    rx: Mutex<Receiver<Outcome>>,
    /// A drain message is on its way to the actor (or the actor is between lives and will
    /// drain when it starts).
    nudged: AtomicBool,
}

impl Default for OutcomeQueue {
    fn default() -> Self {
        let (tx, rx) = channel();
        OutcomeQueue {
            tx,
            rx: Mutex::new(rx),
            nudged: AtomicBool::new(false),
        }
    }
}

impl OutcomeQueue {
    /// Queues `outcome`; true when the actor must be sent a drain message.
    pub(crate) fn push(&self, outcome: Outcome) -> bool {
        // The queue lives as long as this struct, which holds its receiver: the send cannot fail.
        let _ = self.tx.send(outcome);
        !self.nudged.swap(true, Ordering::AcqRel)
    }

    /// The drain message could not be sent (its actor is gone): the next push sends one.
    pub(crate) fn unnudge(&self) {
        self.nudged.store(false, Ordering::Release);
    }

    /// Hands every queued outcome to `fold`, oldest first.
    pub(crate) fn drain(&self, mut fold: impl FnMut(Outcome)) {
        // Cleared before draining: an outcome pushed from here on either is drained now or
        // sends a new message.
        self.nudged.store(false, Ordering::Release);
        let rx = self.rx.lock().unwrap_or_else(|e| e.into_inner());
        for outcome in rx.try_iter() {
            fold(outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::OutcomeKind;
    use std::time::Duration;

    fn outcome(ms: u64) -> Outcome {
        Outcome {
            kind: OutcomeKind::Success,
            latency: Duration::from_millis(ms),
        }
    }

    #[test]
    fn one_message_per_batch_and_every_outcome_in_order() {
        let q = OutcomeQueue::default();
        assert!(q.push(outcome(1)), "the first asks for a drain");
        assert!(!q.push(outcome(2)), "one is on its way");
        assert!(!q.push(outcome(3)));
        let mut seen = Vec::new();
        q.drain(|o| seen.push(o.latency.as_millis()));
        assert_eq!(seen, [1, 2, 3]);
        assert!(q.push(outcome(4)), "after a drain, the next asks again");
        seen.clear();
        q.drain(|o| seen.push(o.latency.as_millis()));
        assert_eq!(seen, [4]);
    }
}
