//! The ejection limit: the circuit breaker may take at most `max_ejection_percent` of an
//! upstream's backends out of rotation, counted after the ejection (Envoy's outlier detection
//! cap). With the default 50%, one of 1 backend can never go by the breaker alone, 1 of 2 and 3
//! can, 5 of 10 can; whatever the breaker says, at least half the pool keeps serving. Backends
//! out by the active probes are out regardless and do not count here.

/// How many of `backends` the breaker may eject at once.
pub fn breaker_cap(backends: usize, max_ejection_percent: u32) -> usize {
    backends * max_ejection_percent.min(100) as usize / 100
}

/// Which of the backends whose breaker is open are actually ejected: the first `cap` to have
/// opened. `opened` holds (when it opened, index) for each open breaker; returns the indices.
pub fn ejected<T: Ord + Copy>(mut opened: Vec<(T, usize)>, cap: usize) -> Vec<usize> {
    opened.sort();
    opened.into_iter().take(cap).map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_counts_after_the_ejection() {
        assert_eq!(breaker_cap(1, 50), 0);
        assert_eq!(breaker_cap(2, 50), 1);
        assert_eq!(breaker_cap(3, 50), 1);
        assert_eq!(breaker_cap(10, 50), 5);
        assert_eq!(breaker_cap(3, 100), 3);
        assert_eq!(breaker_cap(3, 0), 0);
        assert_eq!(breaker_cap(3, 250), 3);
    }

    #[test]
    fn the_first_to_open_are_ejected() {
        assert_eq!(ejected(vec![(30, 0), (10, 2), (20, 1)], 2), vec![2, 1]);
        assert_eq!(
            ejected(vec![(30, 0), (10, 2), (20, 1)], 0),
            Vec::<usize>::new()
        );
        assert_eq!(ejected(vec![(5, 4)], 5), vec![4]);
    }
}
