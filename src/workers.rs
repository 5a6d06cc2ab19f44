//! The worker threads of `runtime.worker_threads`, as nginx's worker processes: each runs its
//! own tokio current-thread runtime, so a connection, its requests and its backend connections
//! stay on one thread and a wake-up never crosses cores. Worker 0 is the thread that starts the
//! server: the actors, the admin listener and the accepting of connections run there too.
//!
//! Why not tokio's multi-thread scheduler: with the load generator and the backends on the same
//! cores, its work stealing and cross-core wake-ups cost fulcrum a third more CPU per request at
//! 128 connections than one worker did (BENCHMARKS.md, ninth and tenth rounds).

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    /// This thread's worker number; 0 for any thread that is not one of the extra workers.
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// The most workers any [`Workers`] of this process has had: what per-worker tables are sized
/// by.
static MOST: AtomicUsize = AtomicUsize::new(1);

/// The worker this thread is: 0 on the thread that started the server (and on any thread that
/// is not a worker), 1.. on the extra ones.
pub fn current() -> usize {
    CURRENT.with(Cell::get)
}

/// How many per-worker slots a table needs for any worker of this process.
pub fn slots() -> usize {
    MOST.load(Ordering::Relaxed)
}

/// The runtimes a server serves on: the one it is started on, then one per extra worker thread.
/// Stops the extra threads when dropped.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
    threads: Vec<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Workers {
    /// The runtime this is called on, alone.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn one() -> Workers {
        Workers {
            handles: vec![Handle::current()],
            threads: Vec::new(),
        }
    }

    /// The runtime this is called on and `count - 1` more threads, each with a current-thread
    /// runtime (`count` 0 is one per core).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start(count: usize) -> std::io::Result<Workers> {
        let count = match count {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut workers = Workers::one();
        for index in 1..count {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            workers.handles.push(rt.handle().clone());
            let thread = std::thread::Builder::new()
                .name(format!("fulcrum-worker-{index}"))
                .spawn(move || {
                    CURRENT.with(|c| c.set(index));
                    // A current-thread runtime runs its tasks only while a thread blocks on it.
                    let _ = rt.block_on(stopped);
                })?;
            workers.threads.push((stop, thread));
        }
        MOST.fetch_max(count, Ordering::Relaxed);
        Ok(workers)
    }

    /// The runtimes, worker 0 first.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Never: there is always worker 0.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for (stop, thread) in self.threads.drain(..) {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each extra worker runs what is spawned on it on its own thread, which knows its number.
    #[tokio::test]
    async fn each_worker_runs_its_tasks_on_its_own_thread() {
        let workers = Workers::start(3).unwrap();
        assert_eq!(workers.len(), 3);
        assert!(slots() >= 3);
        let mut seen = Vec::new();
        for h in workers.handles() {
            let who = h
                .spawn(async { (current(), std::thread::current().id()) })
                .await
                .unwrap();
            seen.push(who);
        }
        assert_eq!(
            seen[0],
            (0, std::thread::current().id()),
            "worker 0 is here"
        );
        assert_eq!(seen[1].0, 1);
        assert_eq!(seen[2].0, 2);
        assert_ne!(seen[1].1, seen[2].1);
        assert_ne!(seen[1].1, seen[0].1);
    }

    /// Dropping the workers stops their threads (the drop joins them).
    #[tokio::test]
    async fn dropped_workers_stop_their_threads() {
        let workers = Workers::start(2).unwrap();
        let h = workers.handles()[1].clone();
        drop(workers);
        assert!(
            h.spawn(async {}).await.is_err(),
            "a stopped runtime runs nothing"
        );
    }
}
