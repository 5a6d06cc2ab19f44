//! The dynamic weight of a backend, from which `adaptive` and `p2c_ewma` pick:
//!
//! ```text
//! weight = static_weight × latency_factor × success_factor × slow_start_factor
//!          but never below min_weight_ratio × static_weight while in rotation
//!
//! latency_factor    = best effective latency in the pool / this backend's   (in (0, 1])
//! success_factor    = success_rate²                                         (in [0, 1])
//! slow_start_factor = 0.1 → 1 linearly over `slow_start` after a return     (in [0.1, 1])
//! effective latency = max(peak EWMA, age of the oldest outstanding request)
//! ```
//!
//! The success rate is squared so that a backend failing half its requests keeps a quarter of its
//! share, not half: failures cost clients more than slowness does. The effective latency is what
//! makes a hung backend look worse within milliseconds: it completes nothing, so its EWMA cannot
//! move, but the age of what it holds grows with every passing moment. The floor keeps a little
//! traffic flowing to every backend in rotation so that its estimates stay fresh and it can earn
//! its share back.

/// What the dynamic weight of one backend is made from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WeightInputs {
    /// The configured weight (> 0).
    pub static_weight: f64,
    /// This backend's effective latency, seconds.
    pub latency: f64,
    /// The lowest effective latency among the backends in rotation, seconds.
    pub best_latency: f64,
    /// The decaying success ratio, in [0, 1].
    pub success_rate: f64,
    /// The slow-start factor, in [0.1, 1].
    pub slow_start: f64,
}

/// The dynamic weight; see the module doc.
pub fn dynamic_weight(i: &WeightInputs, min_weight_ratio: f64) -> f64 {
    let latency_factor = if i.latency > 0.0 && i.best_latency > 0.0 {
        (i.best_latency / i.latency).min(1.0)
    } else {
        1.0
    };
    let success = i.success_rate.clamp(0.0, 1.0);
    let w = i.static_weight * latency_factor * success * success * i.slow_start;
    w.max(min_weight_ratio * i.static_weight)
}

/// The latency a backend is judged by: its EWMA, or the age of its oldest outstanding request
/// when that is longer.
pub fn effective_latency(ewma: f64, oldest_outstanding: f64) -> f64 {
    ewma.max(oldest_outstanding)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> WeightInputs {
        WeightInputs {
            static_weight: 2.0,
            latency: 0.010,
            best_latency: 0.010,
            success_rate: 1.0,
            slow_start: 1.0,
        }
    }

    #[test]
    fn the_best_healthy_backend_keeps_its_static_weight() {
        assert_eq!(dynamic_weight(&inputs(), 0.05), 2.0);
    }

    #[test]
    fn each_factor_scales_the_weight() {
        let slow = WeightInputs {
            latency: 0.040,
            ..inputs()
        };
        assert!((dynamic_weight(&slow, 0.05) - 0.5).abs() < 1e-9);
        let failing = WeightInputs {
            success_rate: 0.5,
            ..inputs()
        };
        assert!((dynamic_weight(&failing, 0.05) - 0.5).abs() < 1e-9);
        let ramping = WeightInputs {
            slow_start: 0.1,
            ..inputs()
        };
        assert!((dynamic_weight(&ramping, 0.05) - 0.2).abs() < 1e-9);
        let all = WeightInputs {
            latency: 0.020,
            success_rate: 0.9,
            slow_start: 0.5,
            ..inputs()
        };
        assert!((dynamic_weight(&all, 0.01) - 2.0 * 0.5 * 0.81 * 0.5).abs() < 1e-9);
    }

    #[test]
    fn never_below_the_floor() {
        let dire = WeightInputs {
            latency: 30.0,
            success_rate: 0.0,
            slow_start: 0.1,
            ..inputs()
        };
        assert!((dynamic_weight(&dire, 0.05) - 0.1).abs() < 1e-9);
    }

    #[test]
    fn an_outstanding_request_older_than_the_ewma_sets_the_latency() {
        assert_eq!(effective_latency(0.01, 0.0), 0.01);
        assert_eq!(effective_latency(0.01, 2.5), 2.5);
    }
}
