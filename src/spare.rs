//! Header maps and write buffers kept for reuse, a few per thread. A request's map, once its
//! last try is over, holds the next backend response's headers, and a response's map, once its
//! head is written, the next request's, as hyper keeps one per connection: a new map cost two
//! allocations and their frees (its index and its entries), four per proxied request. A
//! backend request's write buffer is used again by the next one.

use http::HeaderMap;
use std::cell::RefCell;
use std::ops::{Deref, DerefMut};
use std::thread::LocalKey;

/// Maps kept per thread; more are freed.
const KEPT: usize = 16;

/// A map with room for more entries than this is freed, not kept: an odd request with many
/// headers should not pin its memory.
const LARGEST: usize = 64;

/// A write buffer with more room than this is freed, not kept.
const LARGEST_BUFFER: usize = 16 * 1024;

thread_local! {
    static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
    static BUFFERS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A kept one from `spares`, if any.
fn take<T: 'static>(spares: &'static LocalKey<RefCell<Vec<T>>>) -> Option<T> {
    spares.try_with(|s| s.borrow_mut().pop()).ok().flatten()
}

/// Keeps `item` in `spares` unless it holds enough already. During the thread's teardown the
/// item is simply freed.
fn keep<T: 'static>(spares: &'static LocalKey<RefCell<Vec<T>>>, item: T) {
    let _ = spares.try_with(|s| {
        let mut kept = s.borrow_mut();
        if kept.len() < KEPT {
            kept.push(item);
        }
    });
}

/// An empty map with room for `n` entries: a kept one when there is one.
pub fn header_map(n: usize) -> HeaderMap {
    match take(&SPARE) {
        Some(mut map) => {
            map.reserve(n);
            map
        }
        None => HeaderMap::with_capacity(n),
    }
}

/// Keeps `map`, emptied, for a later [`header_map`] on this thread.
pub fn recycle(mut map: HeaderMap) {
    let room = map.capacity();
    if room == 0 || room > LARGEST {
        return;
    }
    map.clear();
    keep(&SPARE, map);
}

/// An empty write buffer with room for `n` bytes, which goes back to the spares when dropped.
pub fn buffer(n: usize) -> Buffer {
    let mut kept = take(&BUFFERS).unwrap_or_default();
    kept.reserve(n);
    Buffer(kept)
}

/// A write buffer from [`buffer`].
#[derive(Debug)]
pub struct Buffer(Vec<u8>);

impl Deref for Buffer {
    type Target = Vec<u8>;

    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        if buf.capacity() == 0 || buf.capacity() > LARGEST_BUFFER {
            return;
        }
        buf.clear();
        keep(&BUFFERS, buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn a_kept_map_comes_back_empty_with_its_room() {
        let mut map = header_map(4);
        map.insert("x-a", HeaderValue::from_static("1"));
        map.append("x-a", HeaderValue::from_static("2"));
        let room = map.capacity();
        recycle(map);
        let again = header_map(2);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), room);
    }

    #[test]
    fn a_write_buffer_comes_back_empty_with_its_room() {
        let mut buf = buffer(100);
        buf.extend_from_slice(b"hello");
        let room = buf.capacity();
        drop(buf);
        let again = buffer(10);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), room);
        drop(again);
        let big = buffer(LARGEST_BUFFER + 1);
        drop(big);
        assert!(buffer(1).capacity() < LARGEST_BUFFER);
    }

    #[test]
    fn a_large_map_is_not_kept() {
        let mut big = HeaderMap::with_capacity(LARGEST * 2);
        big.insert("x-a", HeaderValue::from_static("1"));
        recycle(big);
        // Only small maps in the spares: none has the big one's room.
        while let Some(map) = SPARE.with(|s| s.borrow_mut().pop()) {
            assert!(map.capacity() <= LARGEST);
        }
    }
}
