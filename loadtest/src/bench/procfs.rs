//! What a proxy costs, read from /proc: the CPU time and the resident memory of a process and
//! all its descendants (nginx's workers are children of its master), so each proxy is measured
//! the same way whatever its process model.

use std::path::Path;

/// A process and its descendants, by the PID of the root.
#[derive(Debug, Clone, Copy)]
pub struct Tree {
    root: u32,
}

/// One reading of a process's `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    ppid: u32,
    /// utime, in clock ticks.
    user: u64,
    /// stime, in clock ticks.
    system: u64,
}

/// CPU time, in seconds, split as the kernel accounts it: a proxy's own code runs in user time,
/// the TCP stack it drives in system time.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Cpu {
    /// In the process's own code and its libraries.
    pub user: f64,
    /// In the kernel on the process's behalf.
    pub system: f64,
}

impl Cpu {
    /// User and system together.
    pub fn total(self) -> f64 {
        self.user + self.system
    }
}

impl std::ops::Add for Cpu {
    type Output = Cpu;

    fn add(self, other: Cpu) -> Cpu {
        Cpu {
            user: self.user + other.user,
            system: self.system + other.system,
        }
    }
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;

    fn sub(self, earlier: Cpu) -> Cpu {
        Cpu {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
        }
    }
}

impl Tree {
    /// The tree rooted at `root`.
    pub fn new(root: u32) -> Tree {
        Tree { root }
    }

    /// The PIDs of the tree now, the root first.
    pub fn pids(&self) -> Vec<u32> {
        let mut all: Vec<(u32, u32)> = Vec::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                if let Some(s) = read_stat(pid) {
                    all.push((pid, s.ppid));
                }
            }
        }
        let mut tree = vec![self.root];
        // Parents before children is not guaranteed by /proc order: grow until nothing joins.
        loop {
            let before = tree.len();
            for &(pid, ppid) in &all {
                if tree.contains(&ppid) && !tree.contains(&pid) {
                    tree.push(pid);
                }
            }
            if tree.len() == before {
                return tree;
            }
        }
    }

    /// CPU time the tree's live processes have used so far.
    pub fn cpu(&self) -> Cpu {
        let (user, system) = self
            .pids()
            .into_iter()
            .filter_map(read_stat)
            .fold((0u64, 0u64), |(u, s), stat| {
                (u + stat.user, s + stat.system)
            });
        let hz = ticks_per_second();
        Cpu {
            user: user as f64 / hz,
            system: system as f64 / hz,
        }
    }

    /// Open file descriptors of the tree's processes now (sockets included).
    pub fn fds(&self) -> usize {
        self.pids()
            .into_iter()
            .filter_map(|pid| std::fs::read_dir(format!("/proc/{pid}/fd")).ok())
            .map(|dir| dir.count())
            .sum()
    }

    /// The tree's resident memory now, in bytes.
    pub fn rss(&self) -> u64 {
        self.status_sum(|text| status_kib(text, "VmRSS:"))
    }

    /// The sum of each process's peak resident memory, in bytes. The kernel updates VmHWM
    /// lazily, so it may trail VmRSS: the larger of the two is the peak.
    pub fn peak_rss(&self) -> u64 {
        self.status_sum(|text| {
            let rss = status_kib(text, "VmRSS:")?;
            Some(status_kib(text, "VmHWM:").map_or(rss, |hwm| hwm.max(rss)))
        })
    }

    fn status_sum(&self, read: impl Fn(&str) -> Option<u64>) -> u64 {
        self.pids()
            .into_iter()
            .filter_map(|pid| read(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?))
            .sum::<u64>()
            * 1024
    }
}

fn read_stat(pid: u32) -> Option<Stat> {
    parse_stat(
        &std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?,
    )
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) may hold spaces and parentheses, so
/// the fields are counted from its last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) ... utime(14) stime(15).
    Some(Stat {
        ppid: f.get(1)?.parse().ok()?,
        user: f.get(11)?.parse().ok()?,
        system: f.get(12)?.parse().ok()?,
    })
}

/// A `Name:   1234 kB` line of `/proc/<pid>/status`, in KiB.
fn status_kib(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

fn ticks_per_second() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(n)) if n > 0 => n as f64,
        // USER_HZ, which Linux has fixed at 100 on every architecture it runs on.
        _ => 100.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let line = "4242 (a (b) c) S 17 4242 4242 0 -1 4194560 1 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                ppid: 17,
                user: 250,
                system: 75
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn status_fields_are_read_in_kib() {
        let text = "Name:\tnginx\nVmHWM:\t   10240 kB\nVmRSS:\t    8192 kB\n";
        assert_eq!(status_kib(text, "VmRSS:"), Some(8192));
        assert_eq!(status_kib(text, "VmHWM:"), Some(10240));
        assert_eq!(status_kib(text, "VmSwap:"), None);
    }

    #[test]
    fn this_process_is_its_own_tree_and_uses_memory() {
        let tree = Tree::new(std::process::id());
        assert_eq!(tree.pids().first(), Some(&std::process::id()));
        assert!(tree.rss() > 0);
        assert!(tree.peak_rss() > 0);
        // Burn a little CPU so the reading cannot be zero at 100 ticks per second.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        assert!(x != 1 && tree.cpu().total() > 0.0);
    }
}
