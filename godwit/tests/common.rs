//! Helpers shared by the integration tests: the guest image, running
//! `godwit`, and reading the guest's status lines.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The default guest image built by `guest/build.sh`.
pub fn guest_image() -> (PathBuf, PathBuf) {
    // The same lookup as `godwit run` (GODWIT_CACHE, XDG_CACHE_HOME, ~/.cache).
    let dir = godwit_vmm::guest::cache_dir().join("guest/default");
    let (k, i) = (dir.join("Image"), dir.join("initramfs.cpio.gz"));
    assert!(
        k.exists() && i.exists(),
        "guest image missing under {}: run guest/build.sh first (scripts/test.sh does)",
        dir.display()
    );
    (k, i)
}

pub fn godwit() -> Command {
    Command::new(env!("CARGO_BIN_EXE_godwit"))
}

/// Runs `godwit run` with a workload and parameters, bounded by `timeout_s`.
pub fn run_workload(workload: &str, append: &str, timeout_s: u32) -> Output {
    run_workload_with(&[], workload, append, timeout_s)
}

/// [`run_workload`] with extra `godwit run` arguments (`--cpus 4`).
pub fn run_workload_with(extra: &[&str], workload: &str, append: &str, timeout_s: u32) -> Output {
    Command::new("timeout")
        .arg(timeout_s.to_string())
        .arg(env!("CARGO_BIN_EXE_godwit"))
        .args(["run", "--mem", "256M"])
        .args(extra)
        .args(["--workload", workload, "--append", append])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("spawn godwit")
}

/// The JSON of every console line starting with `GODWIT <kind> `.
pub fn status_lines(stdout: &str, kind: &str) -> Vec<serde_json::Value> {
    let prefix = format!("GODWIT {kind} ");
    stdout
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix(prefix.as_str()))
        .map(|j| serde_json::from_str(j).unwrap_or_else(|e| panic!("bad status JSON {j:?}: {e}")))
        .collect()
}

/// Asserts a finished run: exit 0, READY once, DONE with bad = 0, no corruption lines.
pub fn assert_clean_run(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tail: String = stdout
        .lines()
        .rev()
        .take(30)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        out.status.code(),
        Some(0),
        "godwit exit status; stderr: {}\nconsole tail:\n{tail}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        status_lines(&stdout, "READY").len(),
        1,
        "one READY line\n{tail}"
    );
    assert!(
        status_lines(&stdout, "CORRUPT").is_empty(),
        "guest reported corruption:\n{tail}"
    );
    assert!(
        status_lines(&stdout, "ERROR").is_empty(),
        "guest reported an error:\n{tail}"
    );
    let hbs = status_lines(&stdout, "HB");
    assert!(!hbs.is_empty(), "no heartbeats\n{tail}");
    assert!(
        hbs.iter().all(|h| h["bad"] == 0),
        "a heartbeat reported bad pages\n{tail}"
    );
    let done = status_lines(&stdout, "DONE");
    assert_eq!(done.len(), 1, "one DONE line\n{tail}");
    assert_eq!(done[0]["bad"], 0, "integrity errors at the end\n{tail}");
    done[0].clone()
}

/// A `godwit` process whose console is read line by line on a thread.
pub struct Running {
    pub child: std::process::Child,
    pub lines: std::sync::mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Running {
    /// Starts `godwit` with `args`. Its console (stdout) and its messages
    /// (stderr, also copied to ours) both arrive as lines.
    pub fn start(args: &[&str]) -> Running {
        Running::spawn(godwit().args(args))
    }

    /// As [`start`](Self::start), in network namespace `ns` (`ip netns
    /// exec`, which becomes the `godwit` process).
    pub fn start_in(ns: &str, args: &[&str]) -> Running {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_godwit")])
            .args(args);
        Running::spawn(&mut c)
    }

    fn spawn(cmd: &mut Command) -> Running {
        use std::io::BufRead;
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn godwit");
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("{line}");
                if tx2.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) for a console line starting with `prefix`; returns it.
    pub fn wait_for(&mut self, prefix: &str, timeout: std::time::Duration) -> String {
        match self.try_wait_for(prefix, timeout) {
            Some(l) => l,
            None => {
                let _ = self.child.kill();
                panic!("{}", self.no_line(prefix, timeout));
            }
        }
    }

    /// As [`wait_for`](Self::wait_for), but `None` on the timeout (the
    /// process keeps running, to be inspected).
    pub fn try_wait_for(&mut self, prefix: &str, timeout: std::time::Duration) -> Option<String> {
        let end = std::time::Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            let l = self.lines.recv_timeout(left).ok()?;
            self.seen.push(l.clone());
            if l.starts_with(prefix) {
                return Some(l);
            }
        }
    }

    /// Moves the lines already received to `seen`.
    pub fn drain(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
    }

    /// Drops the console line that a failover splices together; call it
    /// once every line the source printed before the switch was received.
    ///
    /// A source that resumes its VM from a checkpoint taken at the
    /// destination prints on from where that checkpoint's guest was: the
    /// first line it completes is the start of the line it was printing at
    /// the switch joined to the end of the line the checkpoint was printing
    /// (either part may be empty). That line belongs to neither run: a
    /// heartbeat parsed from it can have fields of two beats, or lack some.
    pub fn skip_failover_splice(&mut self, timeout: std::time::Duration) {
        match self.lines.recv_timeout(timeout) {
            Ok(l) => self.seen.push(l),
            Err(_) => panic!("{}", self.no_line("", timeout)),
        }
    }

    /// What a wait for `prefix` that timed out says, with the last lines.
    pub fn no_line(&self, prefix: &str, timeout: std::time::Duration) -> String {
        let tail: Vec<&String> = self.seen.iter().rev().take(20).collect();
        format!("no line starting with {prefix:?} within {timeout:?}; last lines: {tail:#?}")
    }

    /// Waits (bounded) for the process to end; returns its exit code.
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> Option<i32> {
        let end = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < end {
            if let Ok(Some(st)) = self.child.try_wait() {
                while let Ok(l) = self
                    .lines
                    .recv_timeout(std::time::Duration::from_millis(200))
                {
                    self.seen.push(l);
                }
                return st.code();
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("godwit did not exit within {timeout:?}");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one QMP-style command on a control socket and returns the reply.
pub fn qmp(sock: &std::path::Path, execute: &str, args: serde_json::Value) -> serde_json::Value {
    qmp_raw(
        sock,
        &serde_json::json!({"execute": execute, "arguments": args}).to_string(),
    )
}

/// Sends one raw line on a control socket and returns the parsed reply.
pub fn qmp_raw(sock: &std::path::Path, line: &str) -> serde_json::Value {
    use std::io::{BufRead, Write};
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let stream = loop {
        match std::os::unix::net::UnixStream::connect(sock) {
            Ok(s) => break s,
            Err(e) if std::time::Instant::now() < end => {
                let _ = e;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => panic!("cannot connect to {}: {e}", sock.display()),
        }
    };
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut r = std::io::BufReader::new(stream.try_clone().unwrap());
    let mut greeting = String::new();
    r.read_line(&mut greeting).unwrap();
    let mut w = stream;
    // Capabilities negotiation first, as with QEMU.
    writeln!(w, r#"{{"execute":"qmp_capabilities"}}"#).unwrap();
    let mut caps = String::new();
    r.read_line(&mut caps).unwrap();
    assert!(caps.contains("\"return\""), "negotiation failed: {caps}");
    // One write: the server takes a request as soon as its JSON is complete
    // (a `quit` may end the process before a separate newline arrives).
    w.write_all(format!("{line}\n").as_bytes()).unwrap();
    // Skip asynchronous events: the reply is the first line without "event".
    loop {
        let mut reply = String::new();
        r.read_line(&mut reply).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&reply).unwrap_or_else(|e| panic!("bad reply {reply:?}: {e}"));
        if v.get("event").is_none() {
            return v;
        }
    }
}

/// A fresh temporary folder for one test. Tests that fail leave theirs
/// behind to be looked at; the folders of test runs whose process is gone
/// are removed here, so they do not pile up.
pub fn temp_dir(name: &str) -> PathBuf {
    let tmp = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for e in entries.flatten() {
            let file = e.file_name();
            let Some(rest) = file.to_str().and_then(|f| f.strip_prefix("godwit-test-")) else {
                continue;
            };
            let Some(pid) = rest.rsplit('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let d = tmp.join(format!("godwit-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The JSON of a `GODWIT <kind> {...}` line.
///
/// The last `GODWIT ` in the line counts: a source that stopped its guest in
/// the middle of a line and later runs it again (a failover from a
/// checkpoint) has the start of that line, printed before the switch, in
/// front of the first line the guest writes after it.
pub fn line_json(line: &str) -> serde_json::Value {
    let line_from = line.rfind("GODWIT ").map_or(line, |at| &line[at..]);
    let j = line_from
        .split_once(' ')
        .and_then(|(_, rest)| rest.split_once(' '))
        .map(|(_, j)| j)
        .unwrap_or("");
    serde_json::from_str(j).unwrap_or_else(|e| panic!("bad status JSON in {line:?}: {e}"))
}

/// A loopback port nobody listens on right now, and that nobody in this
/// process will be handed again.
///
/// Ports come from below the kernel's ephemeral range (32768 up by default):
/// a port asked of the kernel with `bind(:0)` and then closed can be handed
/// out again at once to a relay or an outgoing connection of a test running
/// beside this one, and a receiver that later listens on it then fails or, worse,
/// another test's migration reaches it. Each call takes the next port of a
/// counter that starts at a place derived from the process id (test binaries
/// run one at a time, but a stale process may still hold ports) and skips
/// any that a bind shows taken.
#[allow(dead_code)]
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20000;
    const SPAN: u32 = 12000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id() * 97) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN);
}

/// Polls `query-migrate` on `sock` until its status is one of `want` or
/// `timeout` passes; returns the last reply.
#[allow(dead_code)]
pub fn wait_migration(
    sock: &std::path::Path,
    want: &[&str],
    timeout: std::time::Duration,
) -> serde_json::Value {
    let end = std::time::Instant::now() + timeout;
    loop {
        let q = qmp(sock, "query-migrate", serde_json::json!({}));
        let status = q["return"]["status"].as_str().unwrap_or("");
        if want.contains(&status) || std::time::Instant::now() > end {
            return q;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Runs a command to completion, killed by `timeout` after `secs`.
pub fn bounded(secs: u32, program: &str, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg(secs.to_string())
        .arg(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// A TCP relay standing in for the network between the hosts: `cut` breaks
/// every connection through it at once (as a failed link would).
pub struct Relay {
    pub port: u16,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    pub fn start(to: &str) -> Relay {
        use std::sync::atomic::Ordering;
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (c2, s2, to) = (conns.clone(), stop.clone(), to.to_string());
        std::thread::spawn(move || {
            while !s2.load(Ordering::SeqCst) {
                let Ok((a, _)) = l.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                };
                a.set_nonblocking(false).unwrap();
                let Ok(b) = std::net::TcpStream::connect(&to) else {
                    continue;
                };
                for (mut from, mut into) in [
                    (a.try_clone().unwrap(), b.try_clone().unwrap()),
                    (b.try_clone().unwrap(), a.try_clone().unwrap()),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut into);
                        let _ = into.shutdown(std::net::Shutdown::Both);
                    });
                }
                let mut c = c2.lock().unwrap();
                c.push(a);
                c.push(b);
            }
        });
        Relay { port, conns, stop }
    }

    pub fn cut(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// `godwit run` of `workload` (256 MiB, `cpus` vCPUs) with a control socket
/// at `sock`, once it is ready and has beaten three times.
pub fn start_vm(sock: &Path, workload: &str, cpus: &str, append: &str) -> Running {
    let mut vm = Running::start(&[
        "run",
        "--mem",
        "256M",
        "--cpus",
        cpus,
        "--control",
        sock.to_str().unwrap(),
        "--workload",
        workload,
        "--append",
        append,
    ]);
    vm.wait_for("GODWIT READY", std::time::Duration::from_secs(60));
    for _ in 0..3 {
        vm.wait_for("GODWIT HB", std::time::Duration::from_secs(30));
    }
    vm
}

/// `godwit receive` on `to` over plain TCP, control socket at `sock`,
/// reporting 300 ms after completion.
pub fn start_receiver(to: &str, sock: &Path) -> Running {
    Running::start(&[
        "receive",
        "--listen",
        to,
        "--control",
        sock.to_str().unwrap(),
        "--tls-plain",
        "--report-after-ms",
        "300",
    ])
}

/// Sets `params` on the source VMM at `sock`, migrates it to `to` through a
/// new [`Relay`] (the link a test may cut) and waits until post-copy is
/// under way; returns the relay.
pub fn postcopy_through_relay(sock: &Path, to: &str, params: serde_json::Value) -> Relay {
    let link = Relay::start(to);
    let r = qmp(sock, "migrate-set-parameters", params);
    assert!(r.get("return").is_some(), "{r}");
    let r = qmp(
        sock,
        "migrate",
        serde_json::json!({ "uri": format!("tcp:127.0.0.1:{}", link.port) }),
    );
    assert!(r.get("return").is_some(), "{r}");
    let q = wait_migration(
        sock,
        &["postcopy-active", "completed", "failed"],
        std::time::Duration::from_secs(60),
    );
    assert_eq!(q["return"]["status"], "postcopy-active", "{q}");
    link
}

/// Waits for `n` more heartbeats of `vm`, each with its checks clean
/// (`bad` 0); `what` says where, for the message.
pub fn clean_beats(vm: &mut Running, n: usize, what: &str) {
    for _ in 0..n {
        let hb = line_json(&vm.wait_for("GODWIT HB", std::time::Duration::from_secs(30)));
        assert_eq!(hb["bad"], 0, "corruption {what}: {hb}");
    }
}
