//! The drain messages that wait ([`super::batch::Nudge::Later`]): one timer per thread for every
//! backend whose outcomes wait, rather than one per backend. All of a window's messages go at the
//! same instant, so that on a serving worker they wake the main thread, where the backend actors
//! run, once: with a timer each, three backends at one connection woke it three times as often,
//! each wake-up costing more CPU than the message it carried (BENCHMARKS.md, twelfth round).

use super::batch::COALESCE;
use std::cell::RefCell;
use std::sync::{Arc, Mutex};

/// A drain message to send when the window closes.
type Ask = Box<dyn FnOnce() + Send>;

/// The messages waiting for one timer.
struct Window {
    /// Set when the timer has fired: what comes after needs a window of its own.
    closed: bool,
    due: Vec<Ask>,
}

thread_local! {
    /// This thread's open window, if any. Shared with its timer's task, which a multi-thread
    /// runtime may run on another thread.
    static OPEN: RefCell<Option<Arc<Mutex<Window>>>> = const { RefCell::new(None) };
}

/// Runs `ask` when this thread's window closes, [`COALESCE`] after the first ask the window
/// took, together with every other ask it took since (opening a window if none is open).
///
/// # Panics
/// Outside a tokio runtime.
pub(crate) fn after_coalesce(ask: impl FnOnce() + Send + 'static) {
    OPEN.with(|open| {
        let mut open = open.borrow_mut();
        if let Some(window) = open.as_ref() {
            let mut window = window.lock().unwrap_or_else(|e| e.into_inner());
            if !window.closed {
                window.due.push(Box::new(ask));
                return;
            }
        }
        let window = Arc::new(Mutex::new(Window {
            closed: false,
            due: vec![Box::new(ask)],
        }));
        *open = Some(window.clone());
        let closer = Closer(window);
        tokio::spawn(async move {
            tokio::time::sleep(COALESCE).await;
            drop(closer);
        });
    });
}

/// Closes its window when dropped: when the timer fires, or when its task is dropped unfired
/// because the runtime is going away. The asks still go then, or their backends' queues would
/// wait for a message no one sends, and this thread's next asks would join a window that never
/// closes.
struct Closer(Arc<Mutex<Window>>);

impl Drop for Closer {
    fn drop(&mut self) {
        let due = {
            let mut window = self.0.lock().unwrap_or_else(|e| e.into_inner());
            window.closed = true;
            std::mem::take(&mut window.due)
        };
        for ask in due {
            ask();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::mpsc;
    use tokio::time::Instant;

    /// An ask that reports its name and the instant it ran.
    fn ask(
        name: &'static str,
        tx: &mpsc::UnboundedSender<(&'static str, Instant)>,
    ) -> impl FnOnce() + Send {
        let tx = tx.clone();
        move || {
            let _ = tx.send((name, Instant::now()));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn asks_join_the_open_window_and_run_together_when_it_closes() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let start = Instant::now();
        after_coalesce(ask("a", &tx));
        tokio::time::sleep(Duration::from_millis(3)).await;
        after_coalesce(ask("b", &tx));
        let (first, at_first) = rx.recv().await.unwrap();
        let (second, at_second) = rx.recv().await.unwrap();
        assert_eq!((first, second), ("a", "b"), "in the order asked");
        assert_eq!(
            at_first - start,
            COALESCE,
            "the window closes COALESCE after its first"
        );
        assert_eq!(
            at_second, at_first,
            "the later ask did not start a timer of its own"
        );

        // The window is closed: the next ask opens another, COALESCE after itself.
        let again = Instant::now();
        after_coalesce(ask("c", &tx));
        let (third, at_third) = rx.recv().await.unwrap();
        assert_eq!(third, "c");
        assert_eq!(at_third - again, COALESCE);
        assert!(rx.try_recv().is_err(), "each ask runs once");
    }

    #[test]
    fn a_window_whose_runtime_goes_away_still_sends_its_asks() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async { after_coalesce(ask("a", &tx)) });
        assert!(rx.try_recv().is_err(), "the window is open");
        drop(runtime);
        assert_eq!(rx.try_recv().unwrap().0, "a", "sent as the timer went");

        // This thread's next ask opens a window of its own, which closes on time.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            after_coalesce(ask("b", &tx));
            assert_eq!(rx.recv().await.unwrap().0, "b");
        });
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_runs_before_the_window_closes() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        after_coalesce(ask("a", &tx));
        tokio::time::sleep(COALESCE - Duration::from_micros(1)).await;
        assert!(rx.try_recv().is_err(), "still waiting");
        tokio::time::sleep(Duration::from_micros(1)).await;
        assert_eq!(rx.recv().await.unwrap().0, "a");
    }
}
