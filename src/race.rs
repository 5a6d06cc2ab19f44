//! A race between a busy future and a quiet one, in which the quiet one is polled only when its
//! own waker fired.
//!
//! A client connection's task races hyper's connection against its watchdog's clocks and the
//! server's stop signal. `tokio::select!` polls every branch at every wake-up of the task, and
//! the connection wakes it several times per request (the client's bytes, the pick's answer, the
//! backend's bytes) while the clocks and the stop signal are almost never what woke it: polling
//! them anyway (a timer's poll registers its waker again, the stop signal's `Notified` is polled)
//! was about 2% of fulcrum's user time. Here the quiet side gets a waker of its own that notes
//! it fired before waking the task, and is polled only then.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// Which side of a [`race`] finished first.
#[derive(Debug, PartialEq, Eq)]
pub enum Won<M, S> {
    /// The busy side, with its output.
    Main(M),
    /// The quiet side, with its output.
    Side(S),
}

/// Polls `main` at every wake-up and `side` only when its own waker fired (and on the first
/// poll); ends with whichever finishes first, `main` first when both can. Both sides must be
/// `Unpin`: pass `&mut` to a boxed future or a `std::pin::pin!`.
pub fn race<M, S>(main: M, side: S) -> Race<M, S>
where
    M: Future + Unpin,
    S: Future + Unpin,
{
    let flag = Arc::new(Flag {
        // Polled at first, so that it can set up its wake-ups.
        woken: AtomicBool::new(true),
        task: Mutex::new(None),
    });
    Race {
        main,
        side,
        side_waker: Waker::from(flag.clone()),
        flag,
        task: None,
    }
}

/// The future of [`race`].
#[derive(Debug)]
pub struct Race<M, S> {
    main: M,
    side: S,
    flag: Arc<Flag>,
    /// The waker the side is polled with: `flag`'s.
    side_waker: Waker,
    /// The task's waker as last handed to `flag`, to hand it over again only when it changes.
    task: Option<Waker>,
}

/// Notes that the side's waker fired, then wakes the task.
#[derive(Debug)]
struct Flag {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(task) = task {
            task.wake();
        }
    }
}

impl<M, S> Future for Race<M, S>
where
    M: Future + Unpin,
    S: Future + Unpin,
{
    type Output = Won<M::Output, S::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Poll::Ready(out) = Pin::new(&mut this.main).poll(cx) {
            return Poll::Ready(Won::Main(out));
        }
        // Handed over before the flag is read: a wake-up of the side from here on reaches the
        // task as it is now.
        if !this.task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
            let task = cx.waker().clone();
            *this.flag.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.clone());
            this.task = Some(task);
        }
        if this.flag.woken.swap(false, Ordering::AcqRel) {
            let mut side_cx = Context::from_waker(&this.side_waker);
            if let Poll::Ready(out) = Pin::new(&mut this.side).poll(&mut side_cx) {
                return Poll::Ready(Won::Side(out));
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::time::Duration;
    use tokio::sync::Notify;

    /// Counts its polls, then waits on `inner`.
    struct Counted<'a, F> {
        polls: &'a Cell<u32>,
        inner: Pin<Box<F>>,
    }

    impl<F: Future> Future for Counted<'_, F> {
        type Output = F::Output;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            self.polls.set(self.polls.get() + 1);
            self.inner.as_mut().poll(cx)
        }
    }

    fn counted<F: Future>(polls: &Cell<u32>, f: F) -> Counted<'_, F> {
        Counted {
            polls,
            inner: Box::pin(f),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_quiet_side_is_polled_only_when_it_was_woken() {
        let busy = Notify::new();
        let (main_polls, side_polls) = (Cell::new(0), Cell::new(0));
        let main = counted(&main_polls, async {
            // Woken 100 times, then done.
            for _ in 0..100 {
                busy.notified().await;
            }
            "main"
        });
        let side = counted(&side_polls, tokio::time::sleep(Duration::from_secs(3600)));
        let waker = async {
            for _ in 0..100 {
                tokio::task::yield_now().await;
                busy.notify_one();
            }
        };
        let (won, ()) = tokio::join!(race(main, side), waker);
        assert_eq!(won, Won::Main("main"));
        assert!(main_polls.get() > 100, "{}", main_polls.get());
        // Once to set up its timer; select! would have polled it as often as main.
        assert_eq!(side_polls.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_quiet_side_wins_when_its_waker_fires() {
        let side_polls = Cell::new(0);
        let main = std::future::pending::<()>();
        let side = counted(&side_polls, async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "side"
        });
        let started = tokio::time::Instant::now();
        let won = race(Box::pin(main), side).await;
        assert_eq!(won, Won::Side("side"));
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(
            side_polls.get(),
            2,
            "once to start, once when the timer fired"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn main_wins_a_tie() {
        let won = race(std::future::ready(1), std::future::ready(2)).await;
        assert_eq!(won, Won::Main(1));
    }
}
