//! Rise and fall of active health checks (HAProxy's `rise`/`fall`): a backend in rotation goes
//! out after `fall` failed probes in a row, and one out comes back after `rise` passes in a row.
//! A backend starts in rotation, as in nginx and HAProxy: probes take it out, not a cold start.

/// Consecutive probe results of one backend.
#[derive(Debug, Clone)]
pub struct RiseFall {
    rise: u32,
    fall: u32,
    healthy: bool,
    streak: u32,
}

impl RiseFall {
    /// In rotation, with thresholds `rise` (passes to return) and `fall` (failures to leave).
    pub fn new(rise: u32, fall: u32) -> Self {
        RiseFall {
            rise: rise.max(1),
            fall: fall.max(1),
            healthy: true,
            streak: 0,
        }
    }

    /// Takes the thresholds of a reload, keeping the state and the streak.
    pub fn retune(&mut self, rise: u32, fall: u32) {
        self.rise = rise.max(1);
        self.fall = fall.max(1);
    }

    /// Whether the probes keep this backend in rotation.
    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// Out of rotation, with passes counted toward the rise: the last result passed.
    pub fn rising(&self) -> bool {
        !self.healthy && self.streak > 0
    }

    /// Sets the state outright (a restarted actor resumes what the probes had found).
    pub fn force(&mut self, healthy: bool) {
        self.healthy = healthy;
        self.streak = 0;
    }

    /// Records one probe; returns the new state when it changed.
    pub fn record(&mut self, pass: bool) -> Option<bool> {
        // A result that agrees with the current state resets the streak against it.
        if pass == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.healthy { self.fall } else { self.rise };
        if self.streak >= needed {
            self.healthy = pass;
            self.streak = 0;
            Some(pass)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_after_fall_failures_in_a_row_and_rises_after_rise_passes() {
        let mut rf = RiseFall::new(2, 3);
        assert_eq!(rf.record(false), None);
        assert_eq!(rf.record(false), None);
        assert_eq!(rf.record(false), Some(false));
        assert!(!rf.healthy());
        assert!(!rf.rising());
        assert_eq!(rf.record(true), None);
        assert!(rf.rising(), "one pass of two");
        assert_eq!(rf.record(true), Some(true));
        assert!(rf.healthy());
        assert!(!rf.rising());
    }

    #[test]
    fn an_interrupted_streak_starts_over() {
        let mut rf = RiseFall::new(2, 3);
        rf.record(false);
        rf.record(false);
        assert_eq!(rf.record(true), None);
        assert!(!rf.rising(), "a healthy backend is not rising");
        assert_eq!(rf.record(false), None);
        assert_eq!(rf.record(false), None);
        assert!(rf.healthy());
        assert_eq!(rf.record(false), Some(false));
    }
}
