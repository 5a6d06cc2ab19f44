//! The clock of a body read from a peer that may fall silent mid-way (a client's request body,
//! a backend's response body), as nginx's `client_body_timeout` and `proxy_read_timeout`: it
//! runs only while the reader waits for the peer's next bytes, and runs out after `idle` of
//! silence, or at a deadline for the whole body when one is set.
//!
//! It runs only from a poll that found nothing to the next poll that finds something: a body is
//! polled when whoever consumes it has room for more, so a consumer that is slow (a client not
//! reading its response, a backend not reading its upload) is not blamed on the peer that
//! produces the body. (A reader that polls, finds nothing and writes out what it has before
//! polling again lends the clock that write's time: the plain server's flush, which the send
//! timeout bounds, shorter than the read timeout by default.)

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// See the module doc. Sixteen bytes: it rides in every backend body, which the request path
/// moves about; its timer is boxed, made the first time a body has to wait (most never do).
#[derive(Debug)]
pub struct BodyTimeout {
    sleep: Option<Pin<Box<Sleep>>>,
    /// The silence allowed, milliseconds.
    idle_ms: u32,
    /// Waiting since the clock was last set.
    waiting: bool,
}

impl BodyTimeout {
    /// A clock allowing `idle_ms` milliseconds of silence between two reads (see [`millis`]):
    /// a body is made on every request, so its caller converts its timeout once.
    #[inline]
    pub fn millis(idle_ms: u32) -> BodyTimeout {
        BodyTimeout {
            sleep: None,
            idle_ms,
            waiting: false,
        }
    }

    /// The silence allowed, milliseconds.
    pub fn idle_ms(&self) -> u32 {
        self.idle_ms
    }

    /// Called after each poll of the body: `waiting` when it had nothing yet. Ready when the
    /// peer has been silent too long, or `deadline` (for the whole body) has passed: the body
    /// should fail.
    #[inline]
    pub fn poll_silence(
        &mut self,
        waiting: bool,
        deadline: Option<Instant>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        if !waiting {
            self.waiting = false;
            return Poll::Pending;
        }
        self.poll_waiting(deadline, cx)
    }

    /// [`BodyTimeout::poll_silence`] when the body had nothing: the clock is set if it was not
    /// running, and polled.
    fn poll_waiting(&mut self, deadline: Option<Instant>, cx: &mut Context<'_>) -> Poll<()> {
        if !self.waiting {
            self.waiting = true;
            let mut at = Instant::now() + Duration::from_millis(u64::from(self.idle_ms));
            if let Some(d) = deadline {
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

/// `d` in whole milliseconds, as [`BodyTimeout::millis`] takes it.
pub fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn poll(t: &mut BodyTimeout, waiting: bool) -> bool {
        poll_until(t, waiting, None)
    }

    fn poll_until(t: &mut BodyTimeout, waiting: bool, deadline: Option<Instant>) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        t.poll_silence(waiting, deadline, &mut cx).is_ready()
    }

    #[tokio::test(start_paused = true)]
    async fn silence_runs_out_only_while_waiting_and_restarts_with_each_read() {
        let mut t = BodyTimeout::millis(1000);
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
        let mut t = BodyTimeout::millis(1000);
        assert!(!poll(&mut t, false));
        // The reader did not ask for an hour (its consumer was slow): not the peer's silence.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(!poll(&mut t, true));
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!poll(&mut t, true));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_bounds_a_body_that_is_never_silent_for_long() {
        let mut t = BodyTimeout::millis(1000);
        let deadline = Some(Instant::now() + Duration::from_millis(2500));
        // A byte every 600 ms: never a second of silence, but the deadline comes.
        for _ in 0..4 {
            assert!(!poll_until(&mut t, true, deadline));
            tokio::time::advance(Duration::from_millis(600)).await;
            assert!(!poll_until(&mut t, false, deadline));
        }
        assert!(!poll_until(&mut t, true, deadline));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(poll_until(&mut t, true, deadline));
    }
}
