//! `netload` against the guest's own netserve, built natively from
//! guest/src with gcc (it runs as an ordinary process when it is not PID 1),
//! on loopback: a clean run, a stalled server (SIGSTOP/SIGCONT), a killed
//! one, and a fake stream server that corrupts a byte.

use godwit_bench::netload::{self, Config, Report, StreamMode};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The native netserve (`init` built from guest/src), built once per run.
fn netserve_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guest/src");
        let mut sources: Vec<PathBuf> = std::fs::read_dir(&src)
            .expect("guest/src")
            .map(|e| e.expect("guest/src entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "c"))
            .collect();
        sources.sort();
        // In cargo's temp folder for tests (not /tmp), one file renamed
        // into place: nothing accumulates and parallel runs do not clash.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(dir).expect("temp dir");
        let bin = dir.join("netserve");
        let building = dir.join(format!("netserve.{}", std::process::id()));
        let out = Command::new("gcc")
            .args(["-O2", "-Wall", "-Wextra", "-Werror", "-o"])
            .arg(&building)
            .args(&sources)
            .output()
            .expect("gcc is needed to build the native netserve (apt-get install gcc)");
        assert!(
            out.status.success(),
            "gcc failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(&building, &bin).expect("move the netserve binary into place");
        bin
    })
}

/// Two ports free right now (a race with other programs is possible, but
/// the kernel hands out ephemeral ports in turn).
fn free_ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind");
    (
        a.local_addr().expect("addr").port(),
        b.local_addr().expect("addr").port(),
    )
}

/// A native netserve, killed when dropped; its console lines on a channel.
struct Server {
    child: Child,
    lines: Receiver<String>,
    port: u16,
    stream_port: u16,
}

impl Server {
    fn start() -> Server {
        let (port, stream_port) = free_ports();
        let mut child = Command::new(netserve_binary())
            .arg("godwit.workload=netserve")
            .arg(format!("port={port}"))
            .arg(format!("stream_port={stream_port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the native netserve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut s = Server {
            child,
            lines,
            port,
            stream_port,
        };
        s.wait_line("GODWIT READY", Duration::from_secs(10));
        s
    }

    fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(_) => {}
                Err(e) => panic!("netserve printed no {prefix} line within {timeout:?}: {e}"),
            }
        }
    }

    /// Every console line printed so far.
    fn drain(&mut self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    fn config(&self) -> Config {
        let mut c = Config::new(SocketAddr::from(([127, 0, 0, 1], self.port)));
        c.stream_port = self.stream_port;
        c
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: signals our own child.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, sig) },
            0
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_for(config: Config, secs: f64) -> Report {
    let mut config = config;
    config.duration = Some(Duration::from_secs_f64(secs));
    netload::start(config).expect("start netload").wait()
}

fn assert_no_errors(r: &Report) {
    assert!(r.requests_sent > 0, "{r}");
    assert_eq!(r.answers_lost, 0, "{r}");
    assert_eq!(r.answers_wrong, 0, "{r}");
    assert_eq!(r.conn_failures, 0, "{r}");
    assert_eq!(r.answers_ok, r.requests_sent, "{r}");
    assert!(r.clean(), "{r}");
}

#[test]
fn clean_run_over_loopback() {
    let mut server = Server::start();
    let mut config = server.config();
    config.stream = StreamMode::Out;
    config.ping = true;
    let r = run_for(config, 1.5);
    print!("{r}");
    assert_no_errors(&r);
    assert_eq!(r.connections.len(), 4);
    // 4 connections × 1 per ms × 1.5 s, less what scheduling lost.
    assert!(r.requests_sent > 4000, "{r}");
    // Near 0: a loaded 2-core machine may deschedule us for a few ms.
    assert!(r.downtime_ms < 50.0, "downtime {} ms: {r}", r.downtime_ms);
    let s = r.stream.as_ref().expect("stream report");
    assert!(s.bytes > 1 << 20, "stream moved {} bytes", s.bytes);
    assert_eq!(s.corrupt, None);
    assert_eq!(s.error, None);
    let ping = r.ping.as_ref().expect("ping report");
    assert_eq!(ping.error, None, "{ping:?}");
    assert!(ping.sent > 50, "{ping:?}");
    assert_eq!(ping.lost, 0, "{ping:?}");
    let json = serde_json::to_value(&r).expect("JSON");
    assert_eq!(json["answers_lost"], 0);
    assert!(json["rtt_ms"]["p99"].as_f64().is_some());

    // The other direction: the guest checks what we send (it prints a
    // CORRUPT line and counts `bad` on a mismatch).
    let mut config = server.config();
    config.conns = 1;
    config.stream = StreamMode::In;
    let r = run_for(config, 1.0);
    assert_no_errors(&r);
    let sent = r.stream.as_ref().expect("stream").bytes;
    assert!(sent > 1 << 20, "sent {sent} bytes");
    // Once the stream's connection is closed, the guest has checked it all.
    let end = Instant::now() + Duration::from_secs(5);
    let hb = loop {
        let hb = server.wait_line("GODWIT HB", Duration::from_secs(5));
        if hb.contains("\"conns\":0,") || Instant::now() > end {
            break hb;
        }
    };
    let lines = server.drain();
    assert!(
        !lines.iter().chain([&hb]).any(|l| l.contains("CORRUPT")),
        "the guest found our stream corrupt: {lines:#?}"
    );
    assert!(hb.contains("\"bad\":0"), "{hb}");
}

#[test]
fn stopped_server_shows_as_downtime_not_loss() {
    let server = Server::start();
    let handle = netload::start(server.config()).expect("start netload");
    std::thread::sleep(Duration::from_millis(600));
    handle.mark("SIGSTOP");
    server.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(300));
    server.signal(libc::SIGCONT);
    handle.mark("SIGCONT");
    std::thread::sleep(Duration::from_millis(600));
    let r = handle.stop();
    print!("{r}");
    assert_no_errors(&r);
    assert!(
        (250.0..=450.0).contains(&r.downtime_ms),
        "client-observed downtime {} ms for a 300 ms stop: {r}",
        r.downtime_ms
    );
    // Every connection saw it, where it happened, and requests kept going
    // out during the stop (about 300 per connection were waiting).
    let (stop, cont) = (r.marks[0].t_ms, r.marks[1].t_ms);
    for c in &r.connections {
        assert!(c.downtime_ms > 200.0, "{c:?}");
        let at = c.max_gap_at_ms.expect("a gap");
        assert!(
            at > stop - 50.0 && at < cont,
            "gap at {at} ms, stop {stop}..{cont}"
        );
        assert!(
            c.max_backlog > 200,
            "backlog {} during the stop",
            c.max_backlog
        );
    }
}

#[test]
fn killed_server_is_a_failure() {
    let mut server = Server::start();
    let handle = netload::start(server.config()).expect("start netload");
    std::thread::sleep(Duration::from_millis(400));
    server.signal(libc::SIGKILL);
    let _ = server.child.wait();
    std::thread::sleep(Duration::from_millis(200));
    let r = handle.stop();
    print!("{r}");
    assert!(r.conn_failures > 0, "{r}");
    assert_eq!(r.conn_failures, 4, "every connection failed: {r}");
    assert!(!r.clean());
    for c in &r.connections {
        let e = c.error.as_deref().expect("the failure is reported");
        assert!(
            e.contains("closed") || e.contains("reset") || e.contains("failed"),
            "{e}"
        );
    }
    // Nobody listens any more: a new run fails to connect, and says so.
    let r = run_for(server.config(), 0.2);
    assert_eq!(r.conn_failures, 4, "{r}");
    assert!(r.connections[0]
        .error
        .as_deref()
        .is_some_and(|e| e.contains("cannot connect")));
}

#[test]
fn stream_checker_catches_a_corrupted_byte() {
    const BAD_AT: usize = 300_001;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    // A fake netserve stream port: mode R, the pattern with one byte flipped.
    let fake = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let mut mode = [0u8];
        s.read_exact(&mut mode).expect("mode byte");
        assert_eq!(mode[0], b'R');
        let mut data = vec![0u8; 1 << 20];
        netload::fill_stream(0, &mut data);
        data[BAD_AT] ^= 0x40;
        // Then keep the connection open until the client goes.
        s.write_all(&data).expect("send the stream");
        let _ = s.read(&mut mode);
    });
    let mut config = Config::new(SocketAddr::from(([127, 0, 0, 1], 1)));
    config.conns = 0;
    config.stream_port = port;
    config.stream = StreamMode::Out;
    let r = run_for(config, 0.5);
    fake.join().expect("fake server");
    print!("{r}");
    let s = r.stream.as_ref().expect("stream");
    let c = s.corrupt.as_ref().expect("the corruption is found");
    assert_eq!(c.offset, BAD_AT as u64);
    assert_eq!(c.found, c.expected ^ 0x40);
    assert_eq!(s.bytes, 1 << 20);
    assert!(!r.clean());
}
