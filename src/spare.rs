//! Header maps kept for reuse, a few per thread: a request's map, once its last try is over,
//! holds the next backend response's headers, and a response's map, once its head is written,
//! the next request's, as hyper keeps one per connection. A new map cost two allocations and
//! their frees (its index and its entries), four per proxied request.

use http::HeaderMap;
use std::cell::RefCell;

/// Maps kept per thread; more are freed.
const KEPT: usize = 16;

/// A map with room for more entries than this is freed, not kept: an odd request with many
/// headers should not pin its memory.
const LARGEST: usize = 64;

thread_local! {
    static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map with room for `n` entries: a kept one when there is one.
pub fn header_map(n: usize) -> HeaderMap {
    match SPARE.try_with(|s| s.borrow_mut().pop()).ok().flatten() {
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
    // During the thread's teardown the map is simply freed.
    let _ = SPARE.try_with(|s| {
        let mut spare = s.borrow_mut();
        if spare.len() < KEPT {
            spare.push(map);
        }
    });
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
