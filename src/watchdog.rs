//! Client connection timeouts: a connection that takes longer than `header_read_timeout` to send
//! a request's header is closed (slowloris), and a keep-alive connection with no request for
//! `idle_timeout` is closed gracefully. A connection with a request in flight is never cut, how
//! long its request or response takes, unless its client stops reading: a write that has waited
//! `send_timeout` for room in the socket closes it (nginx's `send_timeout`).
//!
//! hyper's own `header_read_timeout` also runs while a keep-alive connection waits for its next
//! request, so it would close idle connections after the header timeout; these two need separate
//! clocks, kept here: the IO wrapper notes the first byte of each new request, the service notes
//! when a request starts and its response ends, and [`Watchdog::expired`] says which clock ran
//! out.
//!
//! A third, shorter clock says when an HTTP/1 connection has been idle long enough to park it
//! (hand hyper's buffers back and wait for the next request on the bare socket); while it is
//! being parked, the IO's shutdown leaves the socket open.
//!
//! While a request is in flight, the watchdog looks at each tick of that shortest clock whether
//! its client has left (closed its side of the connection): a request still in flight a whole
//! tick after the watchdog first saw it is asked about, so that a client that gave up stops
//! the request's work (the backend's exchange, its connection) as nginx does, rather than hyper
//! reading ahead on every request to notice (see `connection`).

use hyper::rt::{Read, ReadBufCursor, Write};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

const IDLE: u8 = 0;
const HEADER: u8 = 1;
const ACTIVE: u8 = 2;

/// Which clock ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// A request's header did not arrive in time: close at once.
    Header,
    /// No request for the idle timeout: close gracefully.
    Idle,
    /// No request for the park delay: park the connection.
    Park,
    /// The client left while its request was in flight: close at once.
    ClientGone,
    /// The client read none of its response for the send timeout: close at once.
    Send,
}

/// What one client connection is doing, shared by its IO, its service and its watchdog.
#[derive(Debug)]
struct State {
    epoch: Instant,
    phase: AtomicU8,
    /// When the phase began, ns since `epoch`.
    since: AtomicU64,
    active: AtomicU32,
    /// Requests started so far, to tell one long request from several short ones.
    started: AtomicU32,
    /// Being parked: a shutdown of the IO is a no-op.
    parking: AtomicBool,
    /// Since when a write has waited for room in the socket, ns since `epoch` plus one; 0 when
    /// none waits.
    write_blocked: AtomicU64,
}

impl State {
    fn stamp(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.epoch)
            .as_nanos() as u64
    }

    fn enter(&self, phase: u8) {
        self.since.store(self.stamp(), Ordering::Relaxed);
        self.phase.store(phase, Ordering::Relaxed);
    }

    fn begin_request(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
        // No stamp: no clock runs while a request is active, and the idle clock starts from
        // the stamp its end takes. One clock read less per request.
        self.phase.store(ACTIVE, Ordering::Relaxed);
    }

    fn end_request(&self) {
        if self.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.enter(IDLE);
        }
    }

    /// A write found no room in the socket.
    fn write_blocked(&self) {
        if self.write_blocked.load(Ordering::Relaxed) == 0 {
            self.write_blocked
                .store(self.stamp() + 1, Ordering::Relaxed);
        }
    }

    /// A write went through.
    #[inline]
    fn wrote(&self) {
        if self.write_blocked.load(Ordering::Relaxed) != 0 {
            self.write_blocked.store(0, Ordering::Relaxed);
        }
    }

    /// Whether a write has waited for room at least `limit`.
    fn write_stuck(&self, limit: Duration) -> bool {
        match self.write_blocked.load(Ordering::Relaxed) {
            0 => false,
            since => self.stamp().saturating_sub(since - 1) >= limit.as_nanos() as u64,
        }
    }
}

/// The clocks of one client connection.
#[derive(Debug, Clone)]
pub struct Watchdog {
    state: Arc<State>,
    header: Duration,
    idle: Duration,
    park: Duration,
    send: Duration,
}

impl Watchdog {
    /// A connection just accepted: idle, waiting for its first request.
    pub fn new(header: Duration, idle: Duration) -> Watchdog {
        let state = Arc::new(State {
            epoch: Instant::now(),
            phase: AtomicU8::new(IDLE),
            since: AtomicU64::new(0),
            active: AtomicU32::new(0),
            started: AtomicU32::new(0),
            parking: AtomicBool::new(false),
            write_blocked: AtomicU64::new(0),
        });
        Watchdog {
            state,
            header,
            idle,
            park: idle,
            send: Duration::MAX,
        }
    }

    /// Also runs the send clock: a write waiting this long for room ends the connection
    /// ([`Expired::Send`]). Without it, a client may read as slowly as it likes.
    pub fn with_send(mut self, send: Duration) -> Watchdog {
        self.send = send;
        self
    }

    /// A write to the client found no room in the socket: the send clock starts, unless it runs.
    pub fn write_blocked(&self) {
        self.state.write_blocked();
    }

    /// A write to the client went through: the send clock stops.
    #[inline]
    pub fn wrote(&self) {
        self.state.wrote();
    }

    /// Also runs the park clock: idle this long, [`Watchdog::expired`] says `Park` (when asked
    /// to watch for it). Without it, parking never comes before the idle timeout.
    pub fn with_park(mut self, after: Duration) -> Watchdog {
        self.park = after.min(self.idle);
        self
    }

    /// While on, a shutdown of the IO leaves the socket open, so that hyper can end its
    /// connection and hand the socket back.
    pub fn set_parking(&self, on: bool) {
        self.state.parking.store(on, Ordering::Relaxed);
    }

    /// Wraps the connection's IO so that the first byte of a request starts the header clock.
    pub fn io<T>(&self, inner: T) -> WatchedIo<T> {
        WatchedIo {
            inner,
            state: self.state.clone(),
        }
    }

    /// A request started; the returned guard marks its end when dropped (with its response body).
    pub fn request(&self) -> ActiveGuard {
        self.state.begin_request();
        ActiveGuard {
            state: self.state.clone(),
        }
    }

    /// As [`Watchdog::request`], for a request that ends while this watchdog is borrowed (the
    /// plain server's, whose response is written before its next request is read): the guard
    /// borrows the state rather than sharing it, two atomic operations less per request.
    pub fn request_here(&self) -> ScopedGuard<'_> {
        self.state.begin_request();
        ScopedGuard { state: &self.state }
    }

    /// Whether a request is in flight.
    pub fn in_flight(&self) -> bool {
        self.state.active.load(Ordering::Relaxed) > 0
    }

    /// Resolves when the header or the idle clock runs out, or with `park`, the park clock;
    /// never while a request is active, unless `gone` says that its client has left (asked
    /// once per tick of the shortest clock about a request in flight a tick earlier).
    pub async fn expired(&self, park: bool, gone: impl Fn() -> bool) -> Expired {
        // Nothing wakes this when the phase changes, so it looks again at the shortest clock
        // at the latest, and less often while nothing changes (see [`LONGEST_LOOK`]).
        let shortest = if park {
            self.header.min(self.park)
        } else {
            self.header.min(self.idle)
        };
        let mut look = shortest;
        loop {
            let phase = self.state.phase.load(Ordering::Relaxed);
            let since = self.state.since.load(Ordering::Relaxed);
            let (limit, kind) = match phase {
                HEADER => (self.header, Expired::Header),
                IDLE if park && self.park < self.idle => (self.park, Expired::Park),
                IDLE => (self.idle, Expired::Idle),
                // Active: look again later; the clocks restart when it ends.
                _ => {
                    let request = self.state.started.load(Ordering::Relaxed);
                    tokio::time::sleep(look).await;
                    // Most requests end within a tick: only a longer one's client is asked about.
                    let same = self.state.phase.load(Ordering::Relaxed) == ACTIVE
                        && self.state.started.load(Ordering::Relaxed) == request;
                    if same && gone() {
                        return Expired::ClientGone;
                    }
                    if self.state.write_stuck(self.send) {
                        return Expired::Send;
                    }
                    look = next_look(look, same, shortest);
                    continue;
                }
            };
            let deadline = self.state.epoch + Duration::from_nanos(since) + limit;
            let look_again = Instant::now() + look;
            tokio::time::sleep_until(deadline.min(look_again)).await;
            let unchanged = self.state.phase.load(Ordering::Relaxed) == phase
                && self.state.since.load(Ordering::Relaxed) == since;
            if unchanged && Instant::now() >= deadline {
                return kind;
            }
            look = next_look(look, unchanged, shortest);
        }
    }
}

/// The longest the watchdog waits between two looks at a connection that stays as it was (a
/// header arriving slowly, a long request): it starts at the shortest clock and doubles while
/// nothing changes. Looking every 20 ms whatever happened cost 50 wake-ups a second per
/// connection: 2,000 slow clients held were 100,000 a second, and tripled the others' p99.
/// A client that leaves during a long request is still noticed within this.
pub const LONGEST_LOOK: Duration = Duration::from_millis(320);

/// The wait before the next look: doubled (up to [`LONGEST_LOOK`]) when nothing changed since
/// the last, back to `shortest` when something did.
fn next_look(look: Duration, unchanged: bool, shortest: Duration) -> Duration {
    if unchanged {
        (look * 2).min(LONGEST_LOOK.max(shortest))
    } else {
        shortest
    }
}

/// Marks the end of a request (its response body finished or dropped).
#[derive(Debug)]
pub struct ActiveGuard {
    state: Arc<State>,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.state.end_request();
    }
}

/// Marks the end of a request when dropped, as [`ActiveGuard`] does, borrowing the watchdog.
#[derive(Debug)]
pub struct ScopedGuard<'a> {
    state: &'a State,
}

impl Drop for ScopedGuard<'_> {
    fn drop(&mut self) {
        self.state.end_request();
    }
}

/// A client connection's IO, noting when the bytes of a new request begin.
#[derive(Debug)]
pub struct WatchedIo<T> {
    inner: T,
    state: Arc<State>,
}

impl<T> WatchedIo<T> {
    /// The IO it wraps.
    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: Read + Unpin> Read for WatchedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        // A read that completes on an idle connection is the start of a request (or its close,
        // after which the clocks no longer matter).
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let s = &self.state;
            if s.active.load(Ordering::Relaxed) == 0 && s.phase.load(Ordering::Relaxed) == IDLE {
                s.enter(HEADER);
            }
        }
        polled
    }
}

impl<T: Write + Unpin> Write for WatchedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note_write(&polled);
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.state.parking.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note_write(&polled);
        polled
    }
}

impl<T> WatchedIo<T> {
    /// Starts or stops the send clock after a write.
    fn note_write(&self, polled: &Poll<io::Result<usize>>) {
        match polled {
            Poll::Pending => self.state.write_blocked(),
            Poll::Ready(_) => self.state.wrote(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn never() -> bool {
        false
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_requests_client_is_asked_after_whether_it_left() {
        let w = Watchdog::new(Duration::from_secs(1), Duration::from_secs(5))
            .with_park(Duration::from_millis(20));
        let _guard = w.request();
        let asked = AtomicUsize::new(0);
        let t0 = Instant::now();
        let kind = w
            .expired(true, || asked.fetch_add(1, Ordering::SeqCst) >= 2)
            .await;
        assert_eq!(kind, Expired::ClientGone);
        // Asked at each look from the first after the request was seen, the looks 20, 40 and
        // 80 ms apart (doubling while the request runs on); left at the third.
        assert_eq!(asked.load(Ordering::SeqCst), 3);
        assert_eq!(t0.elapsed(), Duration::from_millis(140));
    }

    #[tokio::test(start_paused = true)]
    async fn short_requests_clients_are_never_asked() {
        let w = Watchdog::new(Duration::from_secs(1), Duration::from_secs(5))
            .with_park(Duration::from_millis(20));
        let asked = AtomicUsize::new(0);
        let watch = w.clone();
        let requests = async {
            // A request every 15 ms, each over within 10: never the same one a tick later.
            for _ in 0..20 {
                let guard = w.request();
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(guard);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::select! {
            _ = requests => {}
            kind = watch.expired(true, || { asked.fetch_add(1, Ordering::SeqCst); true }) => {
                panic!("expired with {kind:?} while requests came and went")
            }
        }
        assert_eq!(asked.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_waits_the_send_timeout_ends_a_request_in_flight() {
        let w = Watchdog::new(Duration::from_secs(1), Duration::from_secs(5))
            .with_park(Duration::from_millis(20))
            .with_send(Duration::from_millis(300));
        let _guard = w.request();
        let t0 = Instant::now();
        let writes = async {
            // Blocked for 200 ms, then room: no cut. Blocked again from 400 ms, for good.
            w.write_blocked();
            tokio::time::sleep(Duration::from_millis(200)).await;
            w.wrote();
            tokio::time::sleep(Duration::from_millis(200)).await;
            w.write_blocked();
            std::future::pending::<()>().await;
        };
        let kind = tokio::select! {
            kind = w.expired(true, never) => kind,
            () = writes => unreachable!(),
        };
        assert_eq!(kind, Expired::Send);
        // Stuck from 400 ms, so due at 700; seen at the first look after, the looks 20, 40,
        // 80, 160, 320, 320 ms apart: at 940.
        assert_eq!(t0.elapsed(), Duration::from_millis(940));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_stays_as_it_was_is_looked_at_less_and_less_often() {
        let w = Watchdog::new(Duration::from_secs(10), Duration::from_secs(60))
            .with_park(Duration::from_millis(20));
        let _guard = w.request();
        let asked = AtomicUsize::new(0);
        let watch = w.clone();
        let counting = || {
            asked.fetch_add(1, Ordering::SeqCst);
            false
        };
        // Ten seconds of one long request: 20, 40, ... 320, then every 320 ms.
        let _ = tokio::time::timeout(Duration::from_secs(10), watch.expired(true, counting)).await;
        let n = asked.load(Ordering::SeqCst);
        assert!(
            (30..=34).contains(&n),
            "{n} looks in 10 s (every 20 ms was 500)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_expires_after_the_idle_timeout() {
        let w = Watchdog::new(Duration::from_secs(1), Duration::from_secs(5));
        let t0 = Instant::now();
        assert_eq!(w.expired(false, never).await, Expired::Idle);
        assert_eq!(t0.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_started_header_expires_after_the_header_timeout() {
        let w = Watchdog::new(Duration::from_secs(1), Duration::from_secs(5));
        w.state.enter(HEADER);
        let t0 = Instant::now();
        assert_eq!(w.expired(false, never).await, Expired::Header);
        assert_eq!(t0.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_header_started_while_idle_is_timed_from_its_start() {
        let w = Watchdog::new(Duration::from_secs(1), Duration::from_secs(60));
        let watch = w.clone();
        let expiry =
            tokio::spawn(async move { (watch.expired(false, never).await, Instant::now()) });
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let started = Instant::now();
        w.state.enter(HEADER);
        let (kind, at) = expiry.await.unwrap();
        assert_eq!(kind, Expired::Header);
        assert!(at >= started + Duration::from_secs(1) && at <= started + Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn an_active_request_is_never_cut_and_idle_restarts_after_it() {
        let w = Watchdog::new(Duration::from_secs(1), Duration::from_secs(5));
        let guard = w.request();
        let watch = w.clone();
        let expiry =
            tokio::spawn(async move { (watch.expired(false, never).await, Instant::now()) });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!expiry.is_finished());
        let ended = Instant::now();
        drop(guard);
        let (kind, at) = expiry.await.unwrap();
        assert_eq!(kind, Expired::Idle);
        assert!(
            at >= ended + Duration::from_secs(5),
            "idle clock restarted at the end"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_park_clock_runs_only_when_watched_and_restarts_with_each_request() {
        let w = Watchdog::new(Duration::from_secs(1), Duration::from_secs(5))
            .with_park(Duration::from_millis(500));
        let t0 = Instant::now();
        assert_eq!(w.expired(true, never).await, Expired::Park);
        assert_eq!(t0.elapsed(), Duration::from_millis(500));
        // Parked: only the idle clock, from the same start.
        assert_eq!(w.expired(false, never).await, Expired::Idle);
        assert_eq!(t0.elapsed(), Duration::from_secs(5));
        drop(w.request());
        let t1 = Instant::now();
        assert_eq!(w.expired(true, never).await, Expired::Park);
        assert_eq!(t1.elapsed(), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_parks_soon_after_a_long_request_ends() {
        let w = Watchdog::new(Duration::from_secs(10), Duration::from_secs(60))
            .with_park(Duration::from_millis(100));
        let guard = w.request();
        let watch = w.clone();
        let expiry =
            tokio::spawn(async move { (watch.expired(true, never).await, Instant::now()) });
        tokio::time::sleep(Duration::from_secs(30)).await;
        let ended = Instant::now();
        drop(guard);
        let (kind, at) = expiry.await.unwrap();
        assert_eq!(kind, Expired::Park);
        assert!(
            at <= ended + Duration::from_millis(200),
            "not a header timeout later"
        );
    }
}
