//! Waiting for an answer that nearly always comes within one turn of the scheduler, with a
//! deadline whose timer is armed only when it does not.
//!
//! Each try asks its pool actor for a backend and waits for the answer, bounded by a deadline in
//! case the actor is stuck. On fulcrum's runtime the actor runs in the same turn of the scheduler
//! as the request that woke it, so the answer is there when the request is next polled. Arming a
//! timer for that wait anyway (`tokio::time::timeout_at`) put an entry into tokio's timer wheel
//! and took it out again on every try: together with its polls, 1–2% of fulcrum's user time.
//! [`patient`] first lets the task take one turn (it wakes itself and yields, so the actor woken
//! before it runs first), and arms the timer only if the answer is still missing after that.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::time::{Instant, Sleep};

/// Waits for `answer` until `deadline`: `Some` with its output, or `None` at the deadline. No
/// timer is armed unless the answer has not come after the task's next turn.
pub fn patient<F: Future + Unpin>(answer: F, deadline: Instant) -> Patient<F> {
    Patient {
        answer,
        deadline,
        timer: None,
        turned: false,
    }
}

/// The future of [`patient`].
#[derive(Debug)]
pub struct Patient<F> {
    answer: F,
    deadline: Instant,
    /// Armed on the second poll without an answer; boxed, as it is seldom needed.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether the task has taken its turn without a timer.
    turned: bool,
}

impl<F> Patient<F> {
    /// Whether the deadline's timer has been armed.
    pub fn armed(&self) -> bool {
        self.timer.is_some()
    }
}

impl<F: Future + Unpin> Future for Patient<F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Poll::Ready(out) = Pin::new(&mut this.answer).poll(cx) {
            return Poll::Ready(Some(out));
        }
        if !this.turned {
            // Woken now, the task goes to the back of the run queue, behind whatever the
            // request woke (the actor), and is polled again without any timer in between.
            this.turned = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};
    use std::time::Duration;
    use tokio::sync::oneshot;

    /// Counts how often it was woken.
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_within_one_turn_arms_no_timer() {
        let (tx, rx) = oneshot::channel::<u32>();
        let mut wait = patient(rx, Instant::now() + Duration::from_secs(1));
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut wait).poll(&mut cx).is_pending());
        // The task woke itself to take its turn.
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(!wait.armed());
        tx.send(7).unwrap();
        match Pin::new(&mut wait).poll(&mut cx) {
            Poll::Ready(Some(Ok(7))) => {}
            other => panic!("expected the answer, got {other:?}"),
        }
        assert!(!wait.armed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_answer_ends_at_the_deadline() {
        let (_tx, rx) = oneshot::channel::<u32>();
        let start = Instant::now();
        let out = patient(rx, start + Duration::from_millis(300)).await;
        assert!(out.is_none());
        assert_eq!(start.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_answer_within_the_deadline_is_taken() {
        let (tx, rx) = oneshot::channel::<u32>();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = tx.send(9);
        });
        let out = patient(rx, Instant::now() + Duration::from_millis(300)).await;
        assert!(matches!(out, Some(Ok(9))));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_from_a_task_woken_first_comes_without_a_timer() {
        // What a pick does: wake the actor's task, then wait for its answer.
        let (tx, rx) = oneshot::channel::<u32>();
        let (ask, mut asked) = tokio::sync::mpsc::unbounded_channel::<oneshot::Sender<u32>>();
        tokio::spawn(async move {
            while let Some(reply) = asked.recv().await {
                let _ = reply.send(3);
            }
        });
        // Let the answering task reach its first wait.
        tokio::task::yield_now().await;
        ask.send(tx).unwrap();
        let mut wait = patient(rx, Instant::now() + Duration::from_secs(1));
        let out = (&mut wait).await;
        assert!(matches!(out, Some(Ok(3))));
        assert!(!wait.armed());
    }
}
