//! The balancing algorithms behind one small trait, [`Balancer`]. Each is a plain struct: no
//! actor, no I/O, no clock. The pool actor hands it the backends that may take a request now
//! ([`Candidate`]s, sorted by id) and a random source; it answers with an index into that slice.
//!
//! State that must survive between picks (round-robin cursors, smooth weighted round-robin's
//! current weights, the hash ring) is keyed by [`BackendId`], never by position, so a backend
//! leaving or returning does not shuffle everyone else.

mod hash;
mod p2c;
mod round_robin;
mod weighted;

pub use hash::ConsistentHash;
pub use p2c::PowerOfTwo;
pub use round_robin::{LeastConnections, RoundRobin};
pub use weighted::{SmoothWeighted, WeightedRandom};

use crate::config::Algorithm;
use rand::rngs::SmallRng;

/// A stable identity of a backend within its pool (not its position in any list).
pub type BackendId = u64;

/// What an algorithm may know of one backend at pick time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Stable identity; candidates arrive sorted by it.
    pub id: BackendId,
    /// Weight now in use (> 0): the static weight until adaptive weights scale it.
    pub weight: f64,
    /// Requests in flight to this backend.
    pub inflight: u32,
    /// Estimated latency in seconds (peak EWMA); the cost basis of the p2c algorithms.
    pub latency: f64,
    /// In its slow-start ramp: its estimate restarted at the pool's mean and decays while it
    /// is idle, so the p2c algorithms never let it win a duel by looking cheaper.
    pub ramping: bool,
    /// Whether the p2c algorithms may send it a request to measure it again, whatever it
    /// costs: see [`Explore`].
    pub explore: Explore,
}

/// Whether a backend may be sent a request to measure it again ([`PowerOfTwo`]'s exploring
/// picks). Only one with nothing in flight and whose last outcome was not a failure may: a hung
/// backend holds its requests, and a failing one comes back through its breaker's trials.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Explore {
    /// It may not.
    #[default]
    No,
    /// It may, and has gone this long without an answer, seconds.
    Idle(f64),
    /// Its last answer was far faster than its estimate: the next answer confirms it became
    /// fast again, so it is asked at once.
    Now,
}

/// A balancing algorithm: picks one of `candidates`.
pub trait Balancer: Send {
    /// Returns the index in `candidates` of the chosen backend, or `None` when it is empty.
    /// `key` is the request's affinity key (the client IP's hash) for algorithms that use one.
    fn pick(&mut self, candidates: &[Candidate], key: u64, rng: &mut SmallRng) -> Option<usize>;
}

/// The algorithm named in the config.
pub fn for_algorithm(algorithm: Algorithm) -> Box<dyn Balancer> {
    match algorithm {
        Algorithm::Adaptive => Box::new(PowerOfTwo::weighted()),
        Algorithm::P2cEwma => Box::new(PowerOfTwo::unweighted()),
        Algorithm::RoundRobin => Box::new(RoundRobin::default()),
        Algorithm::WeightedRoundRobin => Box::new(SmoothWeighted::default()),
        Algorithm::LeastConnections => Box::new(LeastConnections::default()),
        Algorithm::Random => Box::new(WeightedRandom),
        Algorithm::ConsistentHash => Box::new(ConsistentHash::default()),
    }
}

/// A 64-bit mix (splitmix64's finaliser): spreads nearby inputs over the whole range, so that
/// consecutive ports or addresses land far apart on a hash ring.
pub fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// FNV-1a over bytes, then [`mix64`]: a stable hash (the same in every build and process), which
/// a ring that must agree across restarts needs and `std`'s `DefaultHasher` does not promise.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix64(h)
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;
    use rand::SeedableRng;

    pub fn rng() -> SmallRng {
        SmallRng::seed_from_u64(7)
    }

    pub fn cands(weights: &[f64]) -> Vec<Candidate> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Candidate {
                id: i as u64,
                weight: *w,
                inflight: 0,
                latency: 0.01,
                ramping: false,
                explore: Explore::No,
            })
            .collect()
    }

    /// Picks `n` times and counts each candidate's picks (by index).
    pub fn counts(b: &mut dyn Balancer, c: &[Candidate], n: usize) -> Vec<usize> {
        let mut rng = rng();
        let mut out = vec![0; c.len()];
        for i in 0..n {
            let idx = b.pick(c, mix64(i as u64), &mut rng).unwrap();
            out[idx] += 1;
        }
        out
    }
}
