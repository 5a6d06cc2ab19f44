//! The worker threads of `runtime.worker_threads`, as nginx's worker processes: each runs its
//! own tokio current-thread runtime, so a connection, its requests and its backend connections
//! stay on one thread and a wake-up never crosses cores.
//!
//! With one worker, that worker is the thread that starts the server, and everything runs on
//! it. With more, that thread (worker 0) is the main thread, as Envoy's is: it runs the actors,
//! the admin listener and the accepting of connections, and serves none; workers 1 to N serve
//! them. Worker 0's work then never delays a request: when it served connections too, its share
//! of them waited on the actors' work (p99 at 16 connections 0.9–2.4 ms against 0.7 ms without,
//! BENCHMARKS.md, tenth round).
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

/// Whether the actors run on this thread: worker 0 (the main thread, or the one worker), or
/// any thread that is not a worker.
pub fn hosts_actors() -> bool {
    current() == 0
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

    /// `count` workers serving connections (0 is one per core): with one, the runtime this is
    /// called on; with more, that runtime as worker 0, serving none, and `count` threads, each
    /// with a current-thread runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start(count: usize) -> std::io::Result<Workers> {
        let count = match count {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let extra = if count > 1 { count } else { 0 };
        let mut workers = Workers::one();
        for index in 1..=extra {
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
        MOST.fetch_max(extra + 1, Ordering::Relaxed);
        Ok(workers)
    }

    /// The runtimes, worker 0 first.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// The runtimes that serve connections: worker 0 alone, or all the others.
    pub fn serving(&self) -> &[Handle] {
        match self.handles.len() {
            1 => &self.handles,
            _ => &self.handles[1..],
        }
    }

    /// The number of the first of [`Self::serving`]: 0 or 1.
    pub fn first_serving(&self) -> usize {
        usize::from(self.handles.len() > 1)
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

    /// One worker is this runtime alone, serving.
    #[tokio::test]
    async fn one_worker_is_the_runtime_it_starts_on() {
        let workers = Workers::start(1).unwrap();
        assert_eq!(workers.handles().len(), 1);
        assert_eq!(workers.serving().len(), 1);
    }

    /// Each worker runs what is spawned on it on its own thread, which knows its number; worker
    /// 0, this runtime, serves nothing when there are others.
    #[tokio::test]
    async fn each_worker_runs_its_tasks_on_its_own_thread() {
        let workers = Workers::start(2).unwrap();
        assert_eq!(workers.handles().len(), 3);
        assert_eq!(workers.serving().len(), 2);
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
