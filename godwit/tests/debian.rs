//! The Debian guest (guest/debian) on Godwit: OpenSBI, the stock Debian
//! kernel and initramfs, root on virtio-blk (a sparse copy of the built
//! image), a virtio-net NIC on a TAP in a private network namespace, two
//! vCPUs, 512 MiB. Waits for the guest's boot-complete marker, checks it
//! sees both CPUs, fetches a page the test wrote through the serial console
//! from its nginx and talks to its redis from the namespace, then powers it
//! off with `systemctl poweroff` and requires a clean exit (status 0).
//!
//! Needs root (network namespaces and TAPs) and the built image
//! (guest/debian/build.sh; scripts/test.sh builds it); fails with the
//! reason otherwise.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// The guest's address (guest/debian/rootfs/etc/systemd/network).
const GUEST: [u8; 4] = [10, 77, 1, 10];
/// The namespace side of the TAP.
const HOST_ADDR: &str = "10.77.1.1/24";
const TAP: &str = "gwdeb0";
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(180);

/// Runs a command to completion, killed by `timeout` after `secs`.
fn bounded(secs: u32, program: &str, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg(secs.to_string())
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn ip_ok(args: &[&str]) {
    let out = bounded(20, "ip", args);
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private namespace with the TAP in it; removed (with the TAP) on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let ns = Netns(format!("gwdeb-t{}", std::process::id()));
        let _ = bounded(20, "ip", &["netns", "del", &ns.0]);
        ip_ok(&["netns", "add", &ns.0]);
        ip_ok(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ip_ok(&["-n", &ns.0, "tuntap", "add", TAP, "mode", "tap"]);
        ip_ok(&["-n", &ns.0, "addr", "add", HOST_ADDR, "dev", TAP]);
        ip_ok(&["-n", &ns.0, "link", "set", TAP, "up"]);
        ns
    }

    /// Runs `f` on a thread that entered the namespace (setns moves only
    /// the calling thread).
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns on a namespace file we hold open; it affects
            // only this thread, which ends after `f`.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("the thread in the namespace panicked")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = bounded(20, "ip", &["netns", "del", &self.0]);
    }
}

/// A temporary folder, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The running VMM: its console input, and its output as lines.
struct Guest {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Guest {
    fn tail(&self) -> String {
        let n = self.seen.len().saturating_sub(40);
        self.seen[n..].join("\n")
    }

    /// Waits (bounded) for a line containing `what`; returns it.
    fn wait_for(&mut self, what: &str, timeout: Duration) -> Option<String> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(what) {
                        return Some(l);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Types `line` at the guest's root shell on ttyS0.
    fn type_line(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| self.stdin.flush())
            .expect("write to the console");
    }

    /// Types `cmd` and waits for it to have succeeded: it is followed by
    /// `&& echo` of a line the echoed input does not contain. Typed again
    /// if nothing comes (the getty may drop input typed while it starts).
    fn shell(&mut self, cmd: &str) {
        for _ in 0..5 {
            self.type_line(&format!("{cmd} && echo GODWIT-TEST-OK-$((40 + 2))"));
            if self
                .wait_for("GODWIT-TEST-OK-42", Duration::from_secs(30))
                .is_some()
            {
                return;
            }
        }
        panic!(
            "{cmd:?} did not succeed on the guest's shell:\n{}",
            self.tail()
        );
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(st)) = self.child.try_wait() {
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(l);
                }
                return st.code();
            }
            while let Ok(l) = self.lines.try_recv() {
                self.seen.push(l);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("godwit did not exit within {timeout:?}:\n{}", self.tail());
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `request` to the guest's `port` from the namespace; the whole reply.
fn talk(ns: &Netns, port: u16, request: Vec<u8>, until: fn(&[u8]) -> bool) -> Vec<u8> {
    ns.run(move || {
        let addr = SocketAddr::from((GUEST, port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(&request).expect("send");
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        while !until(&reply) {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => reply.extend_from_slice(&buf[..n]),
                Err(e) => panic!("read from {addr}: {e} (so far {reply:?})"),
            }
        }
        reply
    })
}

fn http_get(ns: &Netns, path: &str) -> (String, String) {
    let req = format!("GET {path} HTTP/1.0\r\nHost: godwit-debian\r\n\r\n");
    let reply = talk(ns, 80, req.into_bytes(), |_| false);
    let text = String::from_utf8_lossy(&reply).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP reply: {text:?}"));
    let status = head.lines().next().unwrap_or("").to_string();
    (status, body.to_string())
}

/// One RESP command to redis; its reply line.
fn redis(ns: &Netns, args: &[&str]) -> String {
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    // Simple and bulk replies used here end with their second CRLF at most.
    let reply = talk(ns, 6379, req.into_bytes(), |r| {
        let crlfs = r.windows(2).filter(|w| w == b"\r\n").count();
        crlfs >= if r.first() == Some(&b'$') { 2 } else { 1 }
    });
    String::from_utf8_lossy(&reply).into_owned()
}

#[test]
fn debian_boots_serves_http_and_redis_and_powers_off() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root (a network namespace and a TAP)"
    );
    let img = godwit_vmm::guest::debian_image().unwrap_or_else(|e| panic!("{e:#}"));

    let dir = TempDir(std::env::temp_dir().join(format!("gwdeb-test-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    let disk = dir.0.join("disk.img");
    godwit_vmm::guest::sparse_copy(&img.disk, &disk).expect("copy the disk image");

    let ns = Netns::new();
    let drive = format!("file={}", disk.display());
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.0, env!("CARGO_BIN_EXE_godwit"), "run"])
        .arg("--bios")
        .arg(&img.bios)
        .arg("--kernel")
        .arg(&img.kernel)
        .arg("--initrd")
        .arg(&img.initrd)
        .args(["--drive", &drive, "--net", &format!("tap={TAP}")])
        .args(["--mem", "512M", "--cpus", "2"])
        .args(["--append", godwit_vmm::guest::DEBIAN_APPEND])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn godwit");
    let stdin = child.stdin.take().expect("stdin");
    let (tx, lines) = mpsc::channel();
    for r in [
        Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().expect("stderr")),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(r).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
    }
    let mut g = Guest {
        child,
        stdin,
        lines,
        seen: Vec::new(),
    };

    let start = Instant::now();
    let ready = g
        .wait_for(godwit_vmm::guest::DEBIAN_READY, BOOT_TIMEOUT)
        .unwrap_or_else(|| panic!("no boot marker within {BOOT_TIMEOUT:?}:\n{}", g.tail()));
    let boot_s = start.elapsed().as_secs_f64();
    let json = &ready[ready.find(godwit_vmm::guest::DEBIAN_READY).unwrap()
        + godwit_vmm::guest::DEBIAN_READY.len()..];
    let info: serde_json::Value = serde_json::from_str(json.trim())
        .unwrap_or_else(|e| panic!("bad marker JSON {json:?}: {e}"));
    println!("Debian guest ready after {boot_s:.1} s: {info}");
    assert_eq!(info["cpus"], 2, "the guest should see 2 CPUs: {info}");
    let mem_kb = info["mem_kb"].as_u64().unwrap_or(0);
    assert!(
        (400_000..512 * 1024).contains(&mem_kb),
        "MemTotal of a 512 MiB guest: {info}"
    );

    // A page only this run knows, written through the console and served
    // by nginx; the same through redis.
    let token = format!(
        "godwit-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    g.shell(&format!("echo {token} > /var/www/html/godwit-test.txt"));
    let (status, body) = http_get(&ns, "/godwit-test.txt");
    assert!(status.contains(" 200 "), "HTTP status: {status:?}");
    assert_eq!(body, format!("{token}\n"));
    let (status, body) = http_get(&ns, "/");
    assert!(status.contains(" 200 "), "HTTP status: {status:?}");
    assert!(
        body.contains("<title>Welcome to nginx!</title>"),
        "nginx's default page: {body:?}"
    );
    assert_eq!(redis(&ns, &["PING"]), "+PONG\r\n");
    assert_eq!(redis(&ns, &["SET", "godwit-test", &token]), "+OK\r\n");
    assert_eq!(
        redis(&ns, &["GET", "godwit-test"]),
        format!("${}\r\n{token}\r\n", token.len())
    );

    g.type_line("systemctl poweroff");
    let code = g.wait_exit(POWEROFF_TIMEOUT);
    assert_eq!(
        code,
        Some(0),
        "godwit's exit status after poweroff:\n{}",
        g.tail()
    );
    assert!(
        g.seen.iter().any(|l| l.contains("reboot: Power down")),
        "the kernel powered off:\n{}",
        g.tail()
    );
}
