//! The Debian guest (guest/debian) on Godwit, on the testbed: OpenSBI,
//! the stock Debian kernel and initramfs, root on virtio-blk (a sparse copy
//! of the built image, the same file for both hosts: shared storage), a
//! virtio-net NIC on the host's TAP, two vCPUs, 512 MiB. Boots in
//! `godwit-src`, waits for the guest's boot-complete marker, checks it sees
//! both CPUs, fetches a page the test wrote through the serial console from
//! its nginx and talks to its redis from `godwit-client`. Then migrates it
//! live (post-copy) to `godwit-dst` while the client fetches that page over
//! and over, checking every answer; afterwards the page, redis's key and a
//! file written on the disk before the migration are all there, and
//! `systemctl poweroff` at the destination ends its VMM with status 0.
//!
//! Needs root (network namespaces and TAPs) and the built image
//! (guest/debian/build.sh; scripts/test.sh builds it); fails with the
//! reason otherwise.

mod common;
use common::bounded;

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
/// The testbed's TAP in each host.
const TAP: &str = "gwtap0";
/// The migration's address at the destination.
const DST_LISTEN: &str = "10.77.0.2:7790";
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(180);

fn testbed(args: &[&str]) -> Output {
    let mut a = vec!["testbed"];
    a.extend_from_slice(args);
    bounded(120, env!("CARGO_BIN_EXE_godwit"), &a)
}

/// The testbed, up for the test and down however it ends.
struct Testbed;

impl Testbed {
    fn up() -> Testbed {
        let out = testbed(&["up", "--rate", "1gbit"]);
        assert!(
            out.status.success(),
            "godwit testbed up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Testbed
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let _ = testbed(&["down"]);
    }
}

/// A network namespace of the testbed, to run client code in.
#[derive(Clone, Copy)]
struct Ns(&'static str);

const CLIENT: Ns = Ns("godwit-client");

impl Ns {
    /// Runs `f` on a thread that entered the namespace (setns moves only
    /// the calling thread).
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f)
            .join()
            .expect("the thread in the namespace panicked")
    }

    fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns on a namespace file we hold open; it affects
            // only this thread, which ends after `f`.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
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
fn talk(ns: &Ns, port: u16, request: Vec<u8>, until: fn(&[u8]) -> bool) -> Vec<u8> {
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

fn http_get(ns: &Ns, path: &str) -> (String, String) {
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
fn redis(ns: &Ns, args: &[&str]) -> String {
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

/// Starts `godwit ARGS` in namespace `ns`, console in and out piped.
fn spawn_godwit(ns: &str, args: &[&str]) -> Guest {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_godwit")])
        .args(args)
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
    Guest {
        child,
        stdin,
        lines,
        seen: Vec::new(),
    }
}

/// What a client fetching one page over and over saw.
#[derive(Debug, Default)]
struct Fetches {
    ok: u64,
    wrong: Vec<String>,
    longest_gap_ms: f64,
}

/// Fetches `/godwit-test.txt` from the client namespace every 10 ms (a new
/// connection each, as a browser would), expecting `body`, until `stop`
/// (at most 120 s); a failed fetch is retried at once and counts as wrong
/// only if no answer comes within 30 s (what a user would call broken).
fn fetch_loop(body: String, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Fetches {
    use std::sync::atomic::Ordering;
    let mut f = Fetches::default();
    let start = Instant::now();
    let mut last_ok = Instant::now();
    while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(120) {
        let addr = SocketAddr::from((GUEST, 80));
        let got = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /godwit-test.txt HTTP/1.0\r\nHost: godwit-debian\r\n\r\n")?;
            let mut reply = Vec::new();
            s.read_to_end(&mut reply)?;
            Ok(reply)
        });
        match got {
            Ok(reply) => {
                let text = String::from_utf8_lossy(&reply);
                match text.split_once("\r\n\r\n") {
                    Some((head, b)) if head.contains(" 200 ") && b == body => {
                        f.ok += 1;
                        let gap = last_ok.elapsed().as_secs_f64() * 1e3;
                        f.longest_gap_ms = f.longest_gap_ms.max(gap);
                        last_ok = Instant::now();
                    }
                    _ => f.wrong.push(format!("{text:?}")),
                }
            }
            Err(e) if last_ok.elapsed() > Duration::from_secs(30) => {
                f.wrong.push(format!("no answer for 30 s: {e}"));
                last_ok = Instant::now();
            }
            Err(_) => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f
}

#[test]
fn debian_serves_migrates_with_its_disk_and_network_and_powers_off() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root (the testbed's network namespaces and TAPs)"
    );
    let img = godwit_vmm::guest::debian_image().unwrap_or_else(|e| panic!("{e:#}"));

    let dir = TempDir(std::env::temp_dir().join(format!("gwdeb-test-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    let disk = dir.0.join("disk.img");
    godwit_vmm::guest::sparse_copy(&img.disk, &disk).expect("copy the disk image");
    let _testbed = Testbed::up();
    let ns = CLIENT;
    let drive = format!("file={}", disk.display());
    let net = format!("tap={TAP}");
    let (src_sock, dst_sock) = (dir.0.join("src.sock"), dir.0.join("dst.sock"));
    let (bios, kernel, initrd) = (
        img.bios.display().to_string(),
        img.kernel.display().to_string(),
        img.initrd.display().to_string(),
    );
    let mut g = spawn_godwit(
        "godwit-src",
        &[
            "run",
            "--bios",
            &bios,
            "--kernel",
            &kernel,
            "--initrd",
            &initrd,
            "--drive",
            &drive,
            "--net",
            &net,
            "--mem",
            "512M",
            "--cpus",
            "2",
            "--control",
            src_sock.to_str().unwrap(),
            "--append",
            godwit_vmm::guest::DEBIAN_APPEND,
        ],
    );

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

    // On the disk, made durable: must be there after the migration.
    g.shell(&format!("echo {token} > /root/godwit-disk.txt && sync"));

    // Live migration to godwit-dst (post-copy, the same image file) while
    // the client keeps fetching the page.
    let mut d = spawn_godwit(
        "godwit-dst",
        &[
            "receive",
            "--listen",
            DST_LISTEN,
            "--tls-plain",
            "--control",
            dst_sock.to_str().unwrap(),
            "--drive",
            &drive,
            "--net",
            &net,
        ],
    );
    d.wait_for("godwit: waiting for a migration", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the destination does not listen:\n{}", d.tail()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let (body, stop) = (format!("{token}\n"), stop.clone());
        ns.spawn(move || fetch_loop(body, stop))
    };
    std::thread::sleep(Duration::from_secs(2));
    let report = dir.0.join("report.json");
    let out = bounded(
        300,
        "ip",
        &[
            "netns",
            "exec",
            "godwit-src",
            env!("CARGO_BIN_EXE_godwit"),
            "migrate",
            "--control",
            src_sock.to_str().unwrap(),
            "--to",
            DST_LISTEN,
            "--tls-plain",
            "--mode",
            "postcopy",
            "--json",
            report.to_str().unwrap(),
            "--timeout",
            "240",
        ],
    );
    assert!(
        out.status.success(),
        "godwit migrate: {}\nsource:\n{}",
        String::from_utf8_lossy(&out.stderr),
        g.tail()
    );
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        g.wait_exit(Duration::from_secs(60)),
        Some(0),
        "the source VMM"
    );
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let fetched = client.join().expect("the client thread panicked");
    println!(
        "client through the migration: {} pages fetched, {} wrong, longest gap {:.1} ms",
        fetched.ok,
        fetched.wrong.len(),
        fetched.longest_gap_ms
    );
    assert!(
        fetched.wrong.is_empty(),
        "wrong answers: {:?}",
        fetched.wrong
    );
    assert!(fetched.ok > 50, "too few answers: {fetched:?}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("JSON");
    assert_eq!(r["status"], "completed", "{r}");

    // Everything is there at the destination: nginx, redis's key, the file.
    let (status, body) = http_get(&ns, "/godwit-test.txt");
    assert!(status.contains(" 200 "), "HTTP status: {status:?}");
    assert_eq!(body, format!("{token}\n"));
    assert_eq!(
        redis(&ns, &["GET", "godwit-test"]),
        format!("${}\r\n{token}\r\n", token.len())
    );
    let mut g = d;
    g.shell(&format!("grep -qx {token} /root/godwit-disk.txt"));

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
