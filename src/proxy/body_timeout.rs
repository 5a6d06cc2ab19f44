//! The clock of a body read from a peer that may fall silent mid-way (a client's request body,
//! a backend's response body), as nginx's `client_body_timeout` and `proxy_read_timeout`: it
//! runs only while the reader waits for the peer's next bytes, and runs out after `idle` of
//! silence, or at a deadline for the whole body when one is set.
//!
//! It never runs while the reader is not asking: a body is polled only when whoever consumes it
//! has room for more, so a consumer that is slow (a client not reading its response, a backend
//! not reading its upload) is never blamed on the peer that produces the body.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// See the module doc.
#[derive(Debug)]
pub struct BodyTimeout {
    idle: Duration,
    deadline: Option<Instant>,
    /// Made the first time the body has to wait, then reset: most bodies never wait.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Waiting since the clock was last set.
    waiting: bool,
}

impl BodyTimeout {
    /// A clock allowing `idle` of silence between two reads.
    pub fn new(idle: Duration) -> BodyTimeout {
        BodyTimeout {
            idle,
            deadline: None,
            sleep: None,
            waiting: false,
        }
    }

    /// The whole body must also be in by `deadline`.
    pub fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = Some(deadline);
        self.waiting = false;
    }

    /// Called after each poll of the body: `waiting` when it had nothing yet. Ready when the
    /// peer has been silent too long (or the deadline passed): the body should fail.
    pub fn poll_silence(&mut self, waiting: bool, cx: &mut Context<'_>) -> Poll<()> {
        if !waiting {
            self.waiting = false;
            return Poll::Pending;
        }
        if !self.waiting {
            self.waiting = true;
            let now = Instant::now();
            let mut at = now + self.idle;
            if let Some(d) = self.deadline {
                at = at.min(d);
            }
            match &mut self.sleep {
                Some(s) => s.as_mut().reset(at),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        match &mut self.sleep {
            Some(s) => s.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn poll(t: &mut BodyTimeout, waiting: bool) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        t.poll_silence(waiting, &mut cx).is_ready()
    }

    #[tokio::test(start_paused = true)]
    async fn silence_runs_out_only_while_waiting_and_restarts_with_each_read() {
        let mut t = BodyTimeout::new(Duration::from_secs(1));
        assert!(!poll(&mut t, true));
        tokio::time::advance(Duration::from_millis(900)).await;
        assert!(!poll(&mut t, true));
        // Bytes came: the next wait starts a new second.
        assert!(!poll(&mut t, false));
        assert!(!poll(&mut t, true));
        tokio::time::advance(Duration::from_millis(900)).await;
        assert!(!poll(&mut t, true));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(poll(&mut t, true));
    }

    #[tokio::test(start_paused = true)]
    async fn time_not_spent_waiting_never_counts() {
        let mut t = BodyTimeout::new(Duration::from_secs(1));
        assert!(!poll(&mut t, false));
        // The reader did not ask for an hour (its consumer was slow): not the peer's silence.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(!poll(&mut t, true));
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!poll(&mut t, true));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_bounds_a_body_that_is_never_silent_for_long() {
        let mut t = BodyTimeout::new(Duration::from_secs(1));
        t.set_deadline(Instant::now() + Duration::from_millis(2500));
        // A byte every 600 ms: never a second of silence, but the deadline comes.
        for _ in 0..4 {
            assert!(!poll(&mut t, true));
            tokio::time::advance(Duration::from_millis(600)).await;
            assert!(!poll(&mut t, false));
        }
        assert!(!poll(&mut t, true));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(poll(&mut t, true));
    }
}
