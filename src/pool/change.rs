//! Changes to a running pool, apart from the actor that applies them: the operator's switch on a
//! backend ([`AdminState`]), the plan of a reload's backend list against the running one
//! ([`plan`], pure), why an admin change is refused ([`ChangeError`]) and what a reload did
//! ([`Applied`]).
//!
//! A backend is the same backend across a reload when its address is (case aside); its weight
//! may change. That is what lets it keep its actor, its estimates, its breaker and the pooled
//! connections to it.

use serde::{Deserialize, Serialize};

/// The operator's switch on one backend, as HAProxy's `set server state` and the admin API set
/// it. Every backend starts `ready`; a reload sets every backend it lists back to `ready`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminState {
    /// Takes traffic as its health allows.
    #[default]
    Ready,
    /// Maintenance: takes no new requests and is not probed; in-flight requests finish.
    NotReady,
    /// Takes no new requests; in-flight requests finish; probes go on. `/status` shows when
    /// nothing is left in flight (`inflight` 0), the moment to stop the backend.
    Drain,
}

impl AdminState {
    /// Its name in the API, logs and `/status`.
    pub fn name(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::NotReady => "not_ready",
            AdminState::Drain => "drain",
        }
    }
}

/// Why an admin change to a pool was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// No backend of the upstream has that address.
    #[error("no backend {0} in this upstream")]
    UnknownBackend(String),
    /// A backend with that address is already in the upstream.
    #[error("backend {0} is already in this upstream")]
    DuplicateBackend(String),
    /// The backend is being removed; add it again to keep it.
    #[error("backend {0} is being removed")]
    Removing(String),
    /// The backend's actor could not be started.
    #[error("cannot start backend {address}: {reason}")]
    Spawn {
        /// The backend.
        address: String,
        /// What ractor said.
        reason: String,
    },
}

/// What a reload did to one upstream's backends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// Backends that joined, in slow start.
    pub added: Vec<String>,
    /// Backends now draining out of the pool.
    pub removed: Vec<String>,
    /// Backends kept with their actor, estimates, breaker and connections.
    pub kept: Vec<String>,
}

/// The plan of a reload for one upstream's backend list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Positions in the running list of backends that stay, with their new weight.
    pub keep: Vec<(usize, u32)>,
    /// Positions in the running list of backends that go.
    pub remove: Vec<usize>,
    /// Positions in the wanted list of backends that are new.
    pub add: Vec<usize>,
}

/// Plans the move from the `running` backends to the `wanted` ones, both as (address, weight).
/// Addresses compare without regard to case.
pub fn plan(running: &[(&str, u32)], wanted: &[(&str, u32)]) -> Plan {
    let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    let mut p = Plan::default();
    for (i, (addr, _)) in running.iter().enumerate() {
        match wanted.iter().find(|(w, _)| same(w, addr)) {
            Some(&(_, weight)) => p.keep.push((i, weight)),
            None => p.remove.push(i),
        }
    }
    for (j, (addr, _)) in wanted.iter().enumerate() {
        if !running.iter().any(|(r, _)| same(r, addr)) {
            p.add.push(j);
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_keeps_by_address_removes_the_missing_and_adds_the_new() {
        let running = [
            ("10.0.0.1:80", 1),
            ("10.0.0.2:80", 2),
            ("Web.Internal:80", 1),
        ];
        let wanted = [
            ("web.internal:80", 5),
            ("10.0.0.3:80", 1),
            ("10.0.0.1:80", 1),
        ];
        let p = plan(&running, &wanted);
        assert_eq!(p.keep, vec![(0, 1), (2, 5)]);
        assert_eq!(p.remove, vec![1]);
        assert_eq!(p.add, vec![1]);
    }

    #[test]
    fn an_unchanged_list_is_all_kept() {
        let list = [("a:1", 1), ("b:2", 3)];
        let p = plan(&list, &list);
        assert_eq!(p.keep, vec![(0, 1), (1, 3)]);
        assert!(p.remove.is_empty() && p.add.is_empty());
    }

    #[test]
    fn admin_states_read_and_print_as_the_api_names_them() {
        for s in [AdminState::Ready, AdminState::NotReady, AdminState::Drain] {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.name()));
            assert_eq!(serde_json::from_str::<AdminState>(&json).unwrap(), s);
        }
        assert!(serde_json::from_str::<AdminState>("\"maint\"").is_err());
    }
}
