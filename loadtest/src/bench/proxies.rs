//! The proxies the bench compares, each started as its own process in front of the same
//! backends and configured alike: round robin, keep-alive connections to the backends, access
//! logs off, the same headers added to what they forward (what fulcrum adds by default:
//! `X-Forwarded-For`, `-Proto` and `-Host`, `Via` and a request id to the request; `Via` and the
//! request id to the response), and either one worker (one thread or process) or the proxy's
//! own default worker count. fulcrum is the binary beside this program; nginx and HAProxy are
//! whatever is installed, found on PATH or in the sbin folders Debian puts them in.

use super::procfs::Tree;
use crate::run::{command_under, Fulcrum};
use nix::sys::signal::Signal;
use std::ffi::OsString;
use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::time::Instant;

/// Which proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// This project's balancer.
    Fulcrum,
    /// nginx, with an `upstream` block and `keepalive`.
    Nginx,
    /// HAProxy in HTTP mode.
    Haproxy,
}

impl Kind {
    /// The name printed in the tables and accepted by `--against`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Fulcrum => "fulcrum",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
        }
    }

    /// Parses one `--against` item.
    pub fn parse(s: &str) -> Option<Kind> {
        match s.trim().to_ascii_lowercase().as_str() {
            "nginx" => Some(Kind::Nginx),
            "haproxy" => Some(Kind::Haproxy),
            _ => None,
        }
    }

    /// How to install it on Debian or Ubuntu.
    pub fn install_hint(self) -> &'static str {
        match self {
            Kind::Fulcrum => "cargo build --release",
            Kind::Nginx => "sudo apt-get install -y nginx",
            Kind::Haproxy => "sudo apt-get install -y haproxy",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How many workers a proxy runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// One: `runtime.worker_threads = 1`, `worker_processes 1`, `nbthread 1`.
    One,
    /// Whatever the proxy chooses when not told (one per core for all three).
    Default,
}

/// Finds `program` on PATH, then in /usr/sbin and /usr/local/sbin (not on every user's PATH).
pub fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// A running proxy.
pub struct Running {
    /// The process whose tree is measured.
    pub pid: u32,
    /// Where clients connect.
    pub addr: SocketAddr,
    process: Process,
}

enum Process {
    Fulcrum(Fulcrum),
    Other(tokio::process::Child),
    Stopped,
}

impl Running {
    /// Stops it with SIGTERM, on which nginx's master also stops its workers (a SIGKILL would
    /// leave them running, orphaned, to skew the next measure); whatever of the tree is left
    /// after 5 s is killed.
    pub async fn stop(mut self) {
        let tree = Tree::new(self.pid).pids();
        match std::mem::replace(&mut self.process, Process::Stopped) {
            Process::Fulcrum(f) => {
                f.stop().await;
            }
            Process::Other(mut c) => {
                terminate(self.pid, Signal::SIGTERM);
                if tokio::time::timeout(Duration::from_secs(5), c.wait())
                    .await
                    .is_err()
                {
                    let _ = c.kill().await;
                }
            }
            Process::Stopped => {}
        }
        for pid in tree {
            terminate(pid, Signal::SIGKILL);
        }
    }
}

impl Drop for Running {
    /// A bench that ends early (an error, Ctrl-C) still stops its proxies, workers and all.
    fn drop(&mut self) {
        if !matches!(self.process, Process::Stopped) {
            terminate(self.pid, Signal::SIGTERM);
        }
    }
}

fn terminate(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

/// What a proxy needs to start.
pub struct Setup<'a> {
    /// The backends to balance over.
    pub backends: &'a [SocketAddr],
    /// A folder of its own for config, logs and temp files.
    pub dir: &'a Path,
    /// Workers.
    pub workers: Workers,
    /// Client connections it must accept at once (the idle-connection measure).
    pub max_connections: usize,
    /// The open-file limit it inherits.
    pub files: u64,
    /// Run under valgrind's callgrind to count its instructions (see `instructions`); `None`
    /// runs it bare.
    pub counted: Option<&'a Callgrind>,
}

/// valgrind's callgrind, found installed, and where it writes a proxy's counts.
#[derive(Debug, Clone)]
pub struct Callgrind {
    /// The `valgrind` program.
    pub valgrind: PathBuf,
    /// `callgrind_control`, which switches counting on and off in a running process.
    pub control: PathBuf,
    /// The counts' file (`--callgrind-out-file`); a dump adds `.1`, `.2`, ... to its name.
    pub out: PathBuf,
}

impl Callgrind {
    /// The command that runs a program under callgrind, counting nothing until switched on.
    pub fn wrapper(&self) -> Vec<OsString> {
        let mut out = OsString::from("--callgrind-out-file=");
        out.push(&self.out);
        vec![
            self.valgrind.clone().into_os_string(),
            "--tool=callgrind".into(),
            "--instr-atstart=no".into(),
            // Counts per instruction, not only per line: the atomic ones are told apart.
            "--dump-instr=yes".into(),
            out,
        ]
    }
}

/// Starts `kind` from `program`; Ok once it accepts connections.
pub async fn start(kind: Kind, program: &Path, setup: &Setup<'_>) -> Result<Running, String> {
    std::fs::create_dir_all(setup.dir).map_err(|e| format!("{}: {e}", setup.dir.display()))?;
    let wrapper = setup.counted.map(Callgrind::wrapper).unwrap_or_default();
    if kind == Kind::Fulcrum {
        let config = setup.dir.join("fulcrum.toml");
        write(&config, &fulcrum_config(setup))?;
        let f = Fulcrum::start_under(&wrapper, program, &config, &setup.dir.join("fulcrum.log"))
            .await
            .map_err(|e| e.to_string())?;
        return Ok(Running {
            pid: f.pid,
            addr: f.proxy,
            process: Process::Fulcrum(f),
        });
    }
    let addr = free_port()?;
    let mut cmd = command_under(&wrapper, program);
    match kind {
        Kind::Nginx => {
            let config = setup.dir.join("nginx.conf");
            write(&config, &nginx_config(setup, addr))?;
            cmd.arg("-p").arg(setup.dir).arg("-c").arg(&config);
            cmd.arg("-e").arg(setup.dir.join("error.log"));
        }
        Kind::Haproxy => {
            let config = setup.dir.join("haproxy.cfg");
            write(&config, &haproxy_config(setup, addr))?;
            cmd.arg("-db").arg("-f").arg(&config);
        }
        Kind::Fulcrum => unreachable!("started above"),
    }
    let log = std::fs::File::create(setup.dir.join("stderr.log"))
        .map_err(|e| format!("{}: {e}", setup.dir.display()))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{}: {e}", program.display()))?;
    let pid = child.id().ok_or(format!("{kind} exited at once"))?;
    // They print nothing when ready: ready is when the port answers. Under valgrind they
    // take a few seconds more to start.
    let wait = if setup.counted.is_some() { 30 } else { 10 };
    let deadline = Instant::now() + Duration::from_secs(wait);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(Running {
                pid,
                addr,
                process: Process::Other(child),
            });
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{kind} exited ({status}); see {}",
                setup.dir.join("stderr.log").display()
            ));
        }
        if Instant::now() > deadline {
            let _ = child.kill().await;
            return Err(format!("{kind} did not listen on {addr} within {wait} s"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// A loopback port free now. nginx and HAProxy cannot report an ephemeral port they bound.
fn free_port() -> Result<SocketAddr, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr().map_err(|e| e.to_string())
}

/// fulcrum: round robin, access log off, ephemeral listeners.
pub fn fulcrum_config(s: &Setup<'_>) -> String {
    let threads = match s.workers {
        Workers::One => 1,
        Workers::Default => 0,
    };
    let mut out = format!(
        "[listen]\naddress = \"127.0.0.1:0\"\nmax_connections = {max}\n\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\n\
         [runtime]\nworker_threads = {threads}\n\n\
         [log]\naccess = false\n\n\
         [[upstreams]]\nname = \"bench\"\nalgorithm = \"round_robin\"\n",
        max = s.max_connections,
    );
    for b in s.backends {
        out.push_str(&format!("[[upstreams.backends]]\naddress = \"{b}\"\n"));
    }
    out
}

/// nginx: one `upstream` with a keep-alive pool, HTTP/1.1 to it, no access log, and enough
/// requests per keep-alive connection that none is closed during a run (nginx's default closes
/// each client connection after 1000 requests). It adds fulcrum's headers as an nginx user
/// would: the client's request id kept, else `$request_id` (32 hex digits, as fulcrum's), and
/// `Via` appended to the client's. Counted under callgrind, without its master process: the
/// process started is then the one that serves.
pub fn nginx_config(s: &Setup<'_>, addr: SocketAddr) -> String {
    let workers = match s.workers {
        Workers::One => "1",
        Workers::Default => "auto",
    };
    let master = if s.counted.is_some() { "off" } else { "on" };
    let dir = s.dir.display();
    let servers: String = s
        .backends
        .iter()
        .map(|b| format!("        server {b};\n"))
        .collect();
    format!(
        "daemon off;\n\
         master_process {master};\n\
         worker_processes {workers};\n\
         worker_rlimit_nofile {files};\n\
         pid {dir}/nginx.pid;\n\
         error_log {dir}/error.log warn;\n\
         events {{\n    worker_connections {conns};\n}}\n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   client_body_temp_path {dir}/client_body;\n\
         \x20   proxy_temp_path {dir}/proxy;\n\
         \x20   fastcgi_temp_path {dir}/fastcgi;\n\
         \x20   uwsgi_temp_path {dir}/uwsgi;\n\
         \x20   scgi_temp_path {dir}/scgi;\n\
         \x20   keepalive_requests 1000000;\n\
         \x20   map $http_x_request_id $bench_request_id {{\n\
         \x20       \"\" $request_id;\n\
         \x20       default $http_x_request_id;\n\
         \x20   }}\n\
         \x20   map $http_via $bench_via {{\n\
         \x20       \"\" \"1.1 nginx\";\n\
         \x20       default \"$http_via, 1.1 nginx\";\n\
         \x20   }}\n\
         \x20   upstream backends {{\n{servers}        keepalive 256;\n        keepalive_requests 1000000;\n    }}\n\
         \x20   server {{\n\
         \x20       listen {addr};\n\
         \x20       location / {{\n\
         \x20           proxy_pass http://backends;\n\
         \x20           proxy_http_version 1.1;\n\
         \x20           proxy_set_header Connection \"\";\n\
         \x20           proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
         \x20           proxy_set_header X-Forwarded-Proto $scheme;\n\
         \x20           proxy_set_header X-Forwarded-Host $http_host;\n\
         \x20           proxy_set_header Via $bench_via;\n\
         \x20           proxy_set_header X-Request-Id $bench_request_id;\n\
         \x20           add_header Via \"1.1 nginx\" always;\n\
         \x20           add_header X-Request-Id $bench_request_id always;\n\
         \x20       }}\n\
         \x20   }}\n\
         }}\n",
        files = s.max_connections * 2 + 1024,
        conns = s.max_connections * 2 + 512,
    )
}

/// HAProxy: HTTP mode, round robin, idle server connections reused (its default `http-reuse
/// safe`), no logging. It adds fulcrum's headers as an HAProxy user would: `option forwardfor`,
/// the client's request id kept, else a `uuid`. Its `ulimit-n` is the inherited limit, and
/// `no strict-limits` lets it start below the two descriptors per `maxconn` it asks for: idle
/// clients hold one each.
pub fn haproxy_config(s: &Setup<'_>, addr: SocketAddr) -> String {
    let threads = match s.workers {
        Workers::One => "    nbthread 1\n",
        Workers::Default => "",
    };
    let servers: String = s
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("    server b{i} {b}\n"))
        .collect();
    format!(
        "global\n{threads}    maxconn {conns}\n    ulimit-n {files}\n    no strict-limits\n\n\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 60s\n\
         \x20   timeout server 60s\n    timeout http-keep-alive 60s\n\n\
         frontend bench\n    bind {addr}\n\
         \x20   option forwardfor\n\
         \x20   http-request set-header X-Forwarded-Proto http\n\
         \x20   http-request set-header X-Forwarded-Host %[req.hdr(host)] if {{ req.hdr(host) -m found }}\n\
         \x20   http-request set-header X-Request-Id %[uuid] unless {{ req.hdr(x-request-id) -m found }}\n\
         \x20   http-request set-var(txn.request_id) req.hdr(x-request-id)\n\
         \x20   http-request add-header Via \"1.1 haproxy\"\n\
         \x20   http-response add-header Via \"1.1 haproxy\"\n\
         \x20   http-response set-header X-Request-Id %[var(txn.request_id)]\n\
         \x20   default_backend backends\n\n\
         backend backends\n    balance roundrobin\n{servers}",
        conns = s.max_connections + 512,
        files = s.files,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A setup of 100 connections over `backends`, not counted.
    fn setup<'a>(backends: &'a [SocketAddr], dir: &'a Path, workers: Workers) -> Setup<'a> {
        Setup {
            backends,
            dir,
            workers,
            max_connections: 100,
            files: 20_000,
            counted: None,
        }
    }

    #[test]
    fn every_proxy_gets_every_backend_and_the_worker_count() {
        let backends: Vec<SocketAddr> = vec![
            "127.0.0.1:9001".parse().unwrap(),
            "127.0.0.1:9002".parse().unwrap(),
        ];
        let dir = PathBuf::from("/tmp/bench");
        let one = setup(&backends, &dir, Workers::One);
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let n = nginx_config(&one, addr);
        assert!(n.contains("worker_processes 1;"), "{n}");
        assert!(n.contains("server 127.0.0.1:9002;") && n.contains("keepalive 256;"));
        assert!(n.contains("listen 127.0.0.1:8080;"));
        let callgrind = Callgrind {
            valgrind: "/usr/bin/valgrind".into(),
            control: "/usr/bin/callgrind_control".into(),
            out: dir.join("callgrind.out"),
        };
        let counted = nginx_config(
            &Setup {
                counted: Some(&callgrind),
                ..one
            },
            addr,
        );
        assert!(n.contains("master_process on;"), "{n}");
        assert!(
            counted.contains("master_process off;"),
            "counted, the process started serves: {counted}"
        );
        let h = haproxy_config(&one, addr);
        assert!(
            h.contains("nbthread 1") && h.contains("server b1 127.0.0.1:9002"),
            "{h}"
        );
        assert!(h.contains("ulimit-n 20000"), "{h}");
        let f = fulcrum_config(&one);
        assert!(
            f.contains("worker_threads = 1") && f.contains("round_robin"),
            "{f}"
        );
        let parsed: toml::Table = f.parse().expect("fulcrum's bench config is TOML");
        assert_eq!(
            parsed["upstreams"][0]["backends"][1]["address"].as_str(),
            Some("127.0.0.1:9002")
        );

        let defaults = Setup {
            workers: Workers::Default,
            ..one
        };
        assert!(nginx_config(&defaults, addr).contains("worker_processes auto;"));
        assert!(!haproxy_config(&defaults, addr).contains("nbthread"));
        assert!(fulcrum_config(&defaults).contains("worker_threads = 0"));
    }

    /// nginx and HAProxy add what fulcrum adds by default: the three forwarding headers, `Via`
    /// and a request id both ways. fulcrum's config says nothing of them: they are its defaults.
    #[test]
    fn the_others_add_the_headers_fulcrum_adds() {
        let backends: Vec<SocketAddr> = vec!["127.0.0.1:9001".parse().unwrap()];
        let dir = PathBuf::from("/tmp/bench");
        let one = setup(&backends, &dir, Workers::One);
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let n = nginx_config(&one, addr);
        for line in [
            "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
            "proxy_set_header X-Forwarded-Proto $scheme;",
            "proxy_set_header X-Forwarded-Host $http_host;",
            "proxy_set_header Via $bench_via;",
            "proxy_set_header X-Request-Id $bench_request_id;",
            "add_header Via \"1.1 nginx\" always;",
            "add_header X-Request-Id $bench_request_id always;",
            "\"\" $request_id;",
        ] {
            assert!(n.contains(line), "{line} missing from:\n{n}");
        }
        let h = haproxy_config(&one, addr);
        for line in [
            "    option forwardfor\n",
            "    http-request set-header X-Forwarded-Proto http\n",
            "    http-request set-header X-Forwarded-Host %[req.hdr(host)]",
            "    http-request set-header X-Request-Id %[uuid] unless",
            "    http-request add-header Via \"1.1 haproxy\"\n",
            "    http-response add-header Via \"1.1 haproxy\"\n",
            "    http-response set-header X-Request-Id %[var(txn.request_id)]\n",
        ] {
            assert!(h.contains(line), "{line:?} missing from:\n{h}");
        }
    }

    /// Where nginx or HAProxy is installed, it accepts the config the bench writes for it (the
    /// check each program has for its own config): a directive it did not know would otherwise
    /// surface only as a proxy that did not start in a run of the bench.
    #[test]
    fn installed_proxies_accept_their_configs() {
        let work =
            std::env::temp_dir().join(format!("fulcrum-bench-configs-{}", std::process::id()));
        std::fs::create_dir_all(&work).unwrap();
        let backends: Vec<SocketAddr> = vec!["127.0.0.1:9001".parse().unwrap()];
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        for workers in [Workers::One, Workers::Default] {
            let setup = setup(&backends, &work, workers);
            for (kind, text, file) in [
                (Kind::Nginx, nginx_config(&setup, addr), "nginx.conf"),
                (Kind::Haproxy, haproxy_config(&setup, addr), "haproxy.cfg"),
            ] {
                let Some(program) = find(kind.name()) else {
                    println!("{kind} is not installed: its config is not checked");
                    continue;
                };
                let path = work.join(file);
                std::fs::write(&path, &text).unwrap();
                let mut check = std::process::Command::new(&program);
                match kind {
                    Kind::Nginx => check.arg("-t").arg("-c").arg(&path),
                    _ => check.arg("-c").arg("-f").arg(&path),
                };
                let out = check.output().unwrap();
                assert!(
                    out.status.success(),
                    "{kind} refused its config:\n{text}\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let _ = std::fs::remove_dir_all(&work);
    }

    #[test]
    fn against_names_parse_and_unknown_ones_do_not() {
        assert_eq!(Kind::parse("nginx"), Some(Kind::Nginx));
        assert_eq!(Kind::parse(" HAProxy "), Some(Kind::Haproxy));
        assert_eq!(Kind::parse("envoy"), None);
        assert!(Kind::Nginx.install_hint().contains("apt-get install"));
    }

    #[test]
    fn a_missing_program_is_not_found() {
        assert_eq!(find("no-such-proxy-anywhere"), None);
        assert!(find("sh").is_some());
    }
}
