use super::*;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::Shutdown;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A unique scratch directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("godwit-ctl-{}-{name}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn sock(&self) -> PathBuf {
        self.0.join("ctl.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Records every call; implements a few commands.
#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<(String, Map<String, Value>)>>,
}

impl Fake {
    fn calls(&self) -> Vec<(String, Map<String, Value>)> {
        self.calls.lock().expect("calls").clone()
    }
}

impl ControlTarget for Fake {
    fn execute(&self, name: &str, args: &Map<String, Value>) -> Result<Value, CommandError> {
        self.calls
            .lock()
            .expect("calls")
            .push((name.to_string(), args.clone()));
        match name {
            "echo" => Ok(Value::Object(args.clone())),
            "query-status" => Ok(json!({"status": "running", "running": true})),
            "migrate-set-parameters" => Ok(json!({})),
            "fail" => Err(CommandError::new(
                ErrorClass::MigrationActive,
                "a migration is already running",
            )),
            "anyhow" => Err(anyhow::anyhow!("disk full")
                .context("snapshot failed")
                .into()),
            "sleep" => {
                let ms = args.get("ms").and_then(Value::as_u64).unwrap_or(0);
                thread::sleep(Duration::from_millis(ms));
                Ok(json!({"slept_ms": ms}))
            }
            "panic" => panic!("fake target panics on purpose"),
            _ => Err(CommandError::not_found(name)),
        }
    }
}

fn start(dir: &TempDir) -> (ControlServer, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let server = ControlServer::start(&dir.sock(), fake.clone()).expect("start server");
    (server, fake)
}

/// A hand-driven client that speaks raw lines.
struct Raw {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Raw {
    /// Connects without reading the greeting.
    fn connect_no_greeting(path: &Path) -> Raw {
        let stream = UnixStream::connect(path).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        Raw { stream, reader }
    }

    /// Connects, checks the greeting and negotiates capabilities.
    fn connect(path: &Path) -> Raw {
        let mut raw = Raw::connect_no_greeting(path);
        let greeting = raw.recv();
        assert!(greeting.get("QMP").is_some(), "greeting: {greeting}");
        let r = raw.call(r#"{"execute":"qmp_capabilities"}"#);
        assert_eq!(r, json!({"return": {}}));
        raw
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\n").as_bytes());
    }

    fn recv(&mut self) -> Value {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("recv");
        assert!(n > 0, "connection closed");
        serde_json::from_str(&line).expect("reply is JSON")
    }

    fn call(&mut self, line: &str) -> Value {
        self.send(line);
        self.recv()
    }

    /// True if the server closed the connection: EOF, or a reset when the
    /// server closed with some of our bytes unread (Linux then reports
    /// ECONNRESET after the data it did send).
    fn closed(&mut self) -> bool {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => true,
            Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    }
}

fn error_of(reply: &Value) -> (String, String) {
    let error = reply
        .get("error")
        .unwrap_or_else(|| panic!("not an error reply: {reply}"));
    (
        error["class"].as_str().expect("class").to_string(),
        error["desc"].as_str().expect("desc").to_string(),
    )
}

/// Replays the exchange shown in the module documentation, byte for byte.
#[test]
fn module_doc_example_is_accurate() {
    let dir = TempDir::new("doc");
    let (_server, _fake) = start(&dir);
    let mut raw = Raw::connect_no_greeting(&dir.sock());
    let mut line = String::new();
    let mut expected_greeting = String::new();
    for doc_line in include_str!("mod.rs").lines() {
        let Some(doc_line) = doc_line.strip_prefix("//! ") else {
            continue;
        };
        if let Some(request) = doc_line.strip_prefix("C: ") {
            raw.send(request);
        } else if let Some(reply) = doc_line.strip_prefix("S: ") {
            let reply = reply.replace("0.1.0", env!("CARGO_PKG_VERSION"));
            if expected_greeting.is_empty() {
                expected_greeting = reply.clone();
            }
            line.clear();
            raw.reader.read_line(&mut line).expect("recv");
            assert_eq!(line.trim_end(), reply);
        }
    }
    assert!(expected_greeting.starts_with("{\"QMP\""));
}

#[test]
fn greeting_names_version_and_capabilities() {
    let dir = TempDir::new("greeting");
    let (_server, _fake) = start(&dir);
    let mut raw = Raw::connect_no_greeting(&dir.sock());
    let greeting = raw.recv();
    let v: Vec<u64> = env!("CARGO_PKG_VERSION")
        .split('.')
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(
        greeting,
        json!({"QMP": {
            "version": {
                "qemu": {"major": v[0], "minor": v[1], "micro": v[2]},
                "package": format!("godwit {}", env!("CARGO_PKG_VERSION")),
            },
            "capabilities": []
        }})
    );
}

#[test]
fn qmp_capabilities_is_handled_by_the_server() {
    let dir = TempDir::new("caps");
    let (_server, fake) = start(&dir);
    let mut raw = Raw::connect_no_greeting(&dir.sock());
    raw.recv();
    // Before negotiation, as QEMU: nothing else runs.
    let (class, desc) = error_of(&raw.call(r#"{"execute": "echo", "id": 1}"#));
    assert_eq!(class, "CommandNotFound");
    assert_eq!(
        desc,
        "Expecting capabilities negotiation with 'qmp_capabilities'"
    );
    // A capability that was not offered is refused, and negotiation stays open.
    let (class, desc) =
        error_of(&raw.call(r#"{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}"#));
    assert_eq!(class, "GenericError");
    assert!(desc.contains("oob"), "{desc}");
    assert_eq!(
        raw.call(r#"{"execute": "qmp_capabilities", "arguments": {"enable": []}, "id": 7}"#),
        json!({"return": {}, "id": 7})
    );
    // Only once.
    let (class, _) = error_of(&raw.call(r#"{"execute": "qmp_capabilities"}"#));
    assert_eq!(class, "CommandNotFound");
    assert!(fake.calls().is_empty());
    assert_eq!(raw.call(r#"{"execute": "echo"}"#), json!({"return": {}}));
}

#[test]
fn command_with_arguments_and_id_echo() {
    let dir = TempDir::new("args");
    let (_server, fake) = start(&dir);
    let mut raw = Raw::connect(&dir.sock());
    let reply =
        raw.call(r#"{"execute": "echo", "arguments": {"path": "/tmp/x", "n": 3}, "id": "abc"}"#);
    assert_eq!(
        reply,
        json!({"return": {"path": "/tmp/x", "n": 3}, "id": "abc"})
    );
    // Any id value is echoed as is; no id, no echo.
    let reply = raw.call(r#"{"id": {"seq": [1, 2]}, "execute": "query-status"}"#);
    assert_eq!(
        reply,
        json!({"return": {"status": "running", "running": true}, "id": {"seq": [1, 2]}})
    );
    let reply = raw.call(r#"{"execute": "echo"}"#);
    assert_eq!(reply, json!({"return": {}}));
    let calls = fake.calls();
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[0].0, "echo");
    assert_eq!(
        Value::Object(calls[0].1.clone()),
        json!({"path": "/tmp/x", "n": 3})
    );
    assert_eq!(calls[1].0, "query-status");
    assert!(calls[2].1.is_empty());
}

#[test]
fn command_error_reply() {
    let dir = TempDir::new("cmderr");
    let (_server, _fake) = start(&dir);
    let mut raw = Raw::connect(&dir.sock());
    let reply = raw.call(r#"{"execute": "fail", "id": 5}"#);
    assert_eq!(
        reply,
        json!({"error": {"class": "MigrationActive", "desc": "a migration is already running"}, "id": 5})
    );
    // anyhow errors become GenericError with the whole chain.
    let (class, desc) = error_of(&raw.call(r#"{"execute": "anyhow"}"#));
    assert_eq!(class, "GenericError");
    assert_eq!(desc, "snapshot failed: disk full");
}

#[test]
fn unknown_command() {
    let dir = TempDir::new("unknown");
    let (_server, fake) = start(&dir);
    let mut raw = Raw::connect(&dir.sock());
    let reply = raw.call(r#"{"execute": "query-balon", "id": 1}"#);
    assert_eq!(
        reply,
        json!({"error": {"class": "CommandNotFound", "desc": "The command query-balon has not been found"}, "id": 1})
    );
    assert_eq!(fake.calls().len(), 1);
}

#[test]
fn invalid_json_gets_an_error_and_the_connection_survives() {
    let dir = TempDir::new("badjson");
    let (_server, fake) = start(&dir);
    let mut raw = Raw::connect(&dir.sock());
    for bad in [
        r#"{"execute": "stop"]"#,
        "nonsense",
        r#"{"execute": "stop",}"#,
        "}",
    ] {
        let reply = raw.call(bad);
        let (class, desc) = error_of(&reply);
        assert_eq!(class, "GenericError");
        assert!(desc.starts_with("invalid JSON: "), "{desc}");
        assert!(reply.get("id").is_none());
    }
    assert_eq!(raw.call(r#"{"execute": "echo"}"#), json!({"return": {}}));
    assert_eq!(fake.calls().len(), 1);
}

#[test]
fn non_object_requests() {
    let dir = TempDir::new("nonobj");
    let (_server, fake) = start(&dir);
    let mut raw = Raw::connect(&dir.sock());
    for (bad, what) in [
        (r#"["execute", "stop"]"#, "an array"),
        (r#""stop""#, "a string"),
        ("42", "a number"),
        ("null", "null"),
        ("true", "a boolean"),
    ] {
        let (class, desc) = error_of(&raw.call(bad));
        assert_eq!(class, "GenericError");
        assert!(desc.contains("must be a JSON object"), "{desc}");
        assert!(desc.ends_with(what), "{desc}");
    }
    assert!(fake.calls().is_empty());
}

#[test]
fn missing_or_non_string_execute() {
    let dir = TempDir::new("noexec");
    let (_server, fake) = start(&dir);
    let mut raw = Raw::connect(&dir.sock());
    let reply = raw.call(r#"{"arguments": {}, "id": 3}"#);
    let (class, desc) = error_of(&reply);
    assert_eq!(class, "GenericError");
    assert!(desc.contains("no \"execute\""), "{desc}");
    assert_eq!(reply["id"], json!(3));
    let (_, desc) = error_of(&raw.call("{}"));
    assert!(desc.contains("no \"execute\""), "{desc}");
    let (_, desc) = error_of(&raw.call(r#"{"execute": 5}"#));
    assert!(desc.contains("\"execute\" must be a string"), "{desc}");
    let (_, desc) = error_of(&raw.call(r#"{"execute": null}"#));
    assert!(desc.contains("\"execute\" must be a string"), "{desc}");
    // Unknown members are refused (a typo like "argument" is not ignored).
    let (_, desc) = error_of(&raw.call(r#"{"execute": "echo", "argument": {}}"#));
    assert!(desc.contains("unexpected member \"argument\""), "{desc}");
    assert!(fake.calls().is_empty());
}

#[test]
fn arguments_not_an_object() {
    let dir = TempDir::new("argsobj");
    let (_server, fake) = start(&dir);
    let mut raw = Raw::connect(&dir.sock());
    for bad in ["[1]", "\"x\"", "null", "1"] {
        let reply = raw.call(&format!(
            r#"{{"execute": "echo", "arguments": {bad}, "id": 9}}"#
        ));
        let (class, desc) = error_of(&reply);
        assert_eq!(class, "GenericError");
        assert!(
            desc.contains("\"arguments\" of echo must be a JSON object"),
            "{desc}"
        );
        assert_eq!(reply["id"], json!(9));
    }
    assert!(fake.calls().is_empty());
}

#[test]
fn overlong_line_is_refused_and_the_connection_closed() {
    let dir = TempDir::new("long");
    let (_server, fake) = start(&dir);
    let mut raw = Raw::connect(&dir.sock());
    // Write more than the limit from another thread: the server stops
    // reading, so this write may fail with a broken pipe.
    let mut writer = raw.stream.try_clone().expect("clone");
    let sender = thread::spawn(move || {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..(MAX_LINE_BYTES / chunk.len() + 16) {
            if writer.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let (class, desc) = error_of(&raw.recv());
    assert_eq!(class, "GenericError");
    assert!(desc.contains("longer than 1048576 bytes"), "{desc}");
    assert!(raw.closed());
    sender.join().expect("sender");
    assert!(fake.calls().is_empty());
    // A line of exactly the limit is still fine (it is just not JSON).
    let mut raw = Raw::connect(&dir.sock());
    let mut line = vec![b' '; MAX_LINE_BYTES - 1];
    line[0] = b'[';
    line[MAX_LINE_BYTES - 2] = b']';
    line.extend_from_slice(b"\r\n");
    assert_eq!(line.len(), MAX_LINE_BYTES + 1);
    let mut writer = raw.stream.try_clone().expect("clone");
    let sender = thread::spawn(move || writer.write_all(&line).is_ok());
    let (_, desc) = error_of(&raw.recv());
    assert!(desc.contains("must be a JSON object"), "{desc}");
    assert!(sender.join().expect("sender"));
    assert_eq!(raw.call(r#"{"execute": "echo"}"#), json!({"return": {}}));
}

#[test]
fn non_utf8_and_blank_lines() {
    let dir = TempDir::new("utf8");
    let (_server, fake) = start(&dir);
    let mut raw = Raw::connect(&dir.sock());
    raw.send_raw(b"{\"execute\": \"e\xffcho\"}\n");
    let (class, desc) = error_of(&raw.recv());
    assert_eq!(class, "GenericError");
    assert!(desc.contains("not valid UTF-8"), "{desc}");
    // Blank lines get no reply; CRLF is fine.
    raw.send_raw(b"\n\r\n   \n{\"execute\": \"echo\", \"id\": 1}\r\n");
    assert_eq!(raw.recv(), json!({"return": {}, "id": 1}));
    assert_eq!(fake.calls().len(), 1);
}

#[test]
fn commands_on_one_connection_are_answered_in_order() {
    let dir = TempDir::new("order");
    let (_server, _fake) = start(&dir);
    let mut raw = Raw::connect(&dir.sock());
    raw.send_raw(
        concat!(
            r#"{"execute": "sleep", "arguments": {"ms": 100}, "id": 1}"#,
            "\n",
            r#"{"execute": "echo", "id": 2}"#,
            "\n",
            r#"{"execute": "nope", "id": 3}"#,
            "\n"
        )
        .as_bytes(),
    );
    assert_eq!(raw.recv()["id"], json!(1));
    assert_eq!(raw.recv()["id"], json!(2));
    assert_eq!(raw.recv()["id"], json!(3));
}

#[test]
fn two_clients_at_once_and_a_slow_command_blocks_only_its_own() {
    let dir = TempDir::new("two");
    let (_server, fake) = start(&dir);
    let mut slow = Raw::connect(&dir.sock());
    let mut quick = Raw::connect(&dir.sock());
    slow.send(r#"{"execute": "sleep", "arguments": {"ms": 1500}, "id": "slow"}"#);
    // Wait until the slow command is running.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fake.calls().iter().any(|(n, _)| n == "sleep") {
        assert!(Instant::now() < deadline, "sleep never started");
        thread::sleep(Duration::from_millis(5));
    }
    let t0 = Instant::now();
    assert_eq!(
        quick.call(r#"{"execute": "echo", "id": "quick"}"#),
        json!({"return": {}, "id": "quick"})
    );
    assert!(
        t0.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(
        slow.recv(),
        json!({"return": {"slept_ms": 1500}, "id": "slow"})
    );
}

#[test]
fn client_disconnecting_mid_line() {
    let dir = TempDir::new("midline");
    let (_server, fake) = start(&dir);
    {
        let mut raw = Raw::connect(&dir.sock());
        raw.send_raw(br#"{"execute": "ec"#);
    } // dropped: the server sees EOF after an incomplete request
    {
        let mut raw = Raw::connect_no_greeting(&dir.sock());
        raw.send_raw(br#"{"execute": "echo", "argu"#);
    } // gone before even reading the greeting
    let mut raw = Raw::connect(&dir.sock());
    assert_eq!(raw.call(r#"{"execute": "echo"}"#), json!({"return": {}}));
    assert_eq!(fake.calls().len(), 1);
}

#[test]
fn unterminated_last_request_before_half_close_is_answered() {
    let dir = TempDir::new("halfclose");
    let (_server, _fake) = start(&dir);
    let mut raw = Raw::connect(&dir.sock());
    raw.send_raw(br#"{"execute": "echo", "id": 4}"#);
    raw.stream.shutdown(Shutdown::Write).expect("half close");
    assert_eq!(raw.recv(), json!({"return": {}, "id": 4}));
    assert!(raw.closed());
}

#[test]
fn panicking_command_gets_an_error() {
    let dir = TempDir::new("panic");
    let (_server, _fake) = start(&dir);
    let mut raw = Raw::connect(&dir.sock());
    let (class, desc) = error_of(&raw.call(r#"{"execute": "panic"}"#));
    assert_eq!(class, "GenericError");
    assert!(
        desc.contains("panicked: fake target panics on purpose"),
        "{desc}"
    );
    assert_eq!(raw.call(r#"{"execute": "echo"}"#), json!({"return": {}}));
}

#[test]
fn connection_limit() {
    let dir = TempDir::new("limit");
    let (_server, _fake) = start(&dir);
    let mut clients: Vec<Raw> = (0..MAX_CONNECTIONS)
        .map(|_| Raw::connect(&dir.sock()))
        .collect();
    let mut extra = Raw::connect_no_greeting(&dir.sock());
    let (class, desc) = error_of(&extra.recv());
    assert_eq!(class, "GenericError");
    assert!(desc.contains("too many control connections"), "{desc}");
    assert!(extra.closed());
    let err = ControlClient::connect(&dir.sock()).expect_err("over the limit");
    assert!(format!("{err:#}").contains("too many"), "{err:#}");
    // All the admitted ones still work; closing one makes room.
    for c in &mut clients {
        assert_eq!(c.call(r#"{"execute": "echo"}"#), json!({"return": {}}));
    }
    drop(clients.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ControlClient::connect(&dir.sock()) {
            Ok(mut client) => {
                assert_eq!(
                    client.execute("echo", Value::Null).expect("echo"),
                    json!({})
                );
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "no room: {e:#}"),
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn socket_file_is_private() {
    let dir = TempDir::new("mode");
    let (_server, _fake) = start(&dir);
    let meta = fs::symlink_metadata(dir.sock()).expect("stat");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}

#[test]
fn refuses_to_overwrite_a_regular_file() {
    let dir = TempDir::new("regular");
    fs::write(dir.sock(), b"precious").expect("write");
    let err =
        ControlServer::start(&dir.sock(), Arc::new(Fake::default())).expect_err("must refuse");
    assert!(format!("{err:#}").contains("not a socket"), "{err:#}");
    assert_eq!(fs::read(dir.sock()).expect("read"), b"precious");
    // Nor a directory, nor a symlink.
    let sub = dir.0.join("subdir");
    fs::create_dir(&sub).expect("mkdir");
    assert!(ControlServer::start(&sub, Arc::new(Fake::default())).is_err());
    assert!(sub.is_dir());
    let link = dir.0.join("link");
    std::os::unix::fs::symlink(dir.sock(), &link).expect("symlink");
    assert!(ControlServer::start(&link, Arc::new(Fake::default())).is_err());
    assert_eq!(fs::read(dir.sock()).expect("read"), b"precious");
}

#[test]
fn replaces_a_stale_socket_but_not_a_live_one() {
    let dir = TempDir::new("stale");
    drop(UnixListener::bind(dir.sock()).expect("bind"));
    assert!(fs::symlink_metadata(dir.sock())
        .expect("stat")
        .file_type()
        .is_socket());
    let (server, _fake) = start(&dir);
    let mut raw = Raw::connect(&dir.sock());
    assert_eq!(raw.call(r#"{"execute": "echo"}"#), json!({"return": {}}));

    let err =
        ControlServer::start(&dir.sock(), Arc::new(Fake::default())).expect_err("live socket");
    assert!(format!("{err:#}").contains("in use"), "{err:#}");
    // The first server is unharmed.
    assert_eq!(raw.call(r#"{"execute": "echo"}"#), json!({"return": {}}));
    assert_eq!(server.path(), dir.sock());
    drop(raw);
    server.shutdown();
}

#[test]
fn shutdown_removes_the_file_and_stops_accepting() {
    let dir = TempDir::new("shutdown");
    let (server, _fake) = start(&dir);
    let mut idle = Raw::connect(&dir.sock());
    let t0 = Instant::now();
    server.shutdown();
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    assert!(
        fs::symlink_metadata(dir.sock()).is_err(),
        "socket file left behind"
    );
    assert!(UnixStream::connect(dir.sock()).is_err());
    assert!(idle.closed(), "idle connection not closed");
    // The path can be reused right away.
    let (_server, _fake) = start(&dir);
    Raw::connect(&dir.sock());
}

#[test]
fn shutdown_lets_a_running_command_reply() {
    let dir = TempDir::new("quit");
    let (server, fake) = start(&dir);
    let mut raw = Raw::connect(&dir.sock());
    raw.send(r#"{"execute": "sleep", "arguments": {"ms": 300}, "id": "quit"}"#);
    let deadline = Instant::now() + Duration::from_secs(10);
    while fake.calls().is_empty() {
        assert!(Instant::now() < deadline, "command never started");
        thread::sleep(Duration::from_millis(5));
    }
    server.shutdown();
    assert_eq!(
        raw.recv(),
        json!({"return": {"slept_ms": 300}, "id": "quit"})
    );
    assert!(raw.closed());
}

#[test]
fn shutdown_leaves_a_replaced_file_alone() {
    let dir = TempDir::new("replaced");
    let (server, _fake) = start(&dir);
    fs::remove_file(dir.sock()).expect("rm");
    fs::write(dir.sock(), b"someone else's").expect("write");
    drop(server);
    assert_eq!(fs::read(dir.sock()).expect("read"), b"someone else's");
}

#[test]
fn client_round_trip_and_error_mapping() {
    let dir = TempDir::new("client");
    let (_server, fake) = start(&dir);
    // connect() negotiated already.
    let mut client = ControlClient::connect(&dir.sock()).expect("connect");
    assert!(client.execute("qmp_capabilities", Value::Null).is_err());
    assert_eq!(
        client
            .execute("echo", json!({"max-bandwidth": 125_000_000u64}))
            .expect("echo"),
        json!({"max-bandwidth": 125_000_000u64})
    );
    assert_eq!(
        client.execute("query-status", json!({})).expect("status"),
        json!({"status": "running", "running": true})
    );

    let err = client.execute("fail", Value::Null).expect_err("fail");
    let text = err.to_string();
    assert!(text.contains("MigrationActive"), "{text}");
    assert!(text.contains("a migration is already running"), "{text}");
    assert_eq!(
        err.downcast_ref::<CommandError>(),
        Some(&CommandError::new(
            ErrorClass::MigrationActive,
            "a migration is already running"
        ))
    );
    let text = client
        .execute("nope", Value::Null)
        .expect_err("nope")
        .to_string();
    assert_eq!(text, "CommandNotFound: The command nope has not been found");

    let err = client.execute("echo", json!([1])).expect_err("bad args");
    assert!(err.to_string().contains("must be a JSON object"), "{err}");
    // Still in sync after all that.
    client
        .set_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    assert_eq!(
        client.execute("echo", json!({"a": 1})).expect("echo"),
        json!({"a": 1})
    );
    assert_eq!(fake.calls().len(), 5);
}

#[test]
fn client_connect_errors_are_clear() {
    let dir = TempDir::new("clienterr");
    let err = ControlClient::connect(&dir.sock()).expect_err("missing");
    assert!(format!("{err:#}").contains("does not exist"), "{err:#}");
    drop(UnixListener::bind(dir.sock()).expect("bind"));
    let err = ControlClient::connect(&dir.sock()).expect_err("stale");
    assert!(
        format!("{err:#}").contains("refuses connections"),
        "{err:#}"
    );
    // A server that dies under the client.
    let _ = fs::remove_file(dir.sock());
    let (server, _fake) = start(&dir);
    let mut client = ControlClient::connect(&dir.sock()).expect("connect");
    server.shutdown();
    let err = client.execute("echo", Value::Null).expect_err("closed");
    assert!(format!("{err:#}").contains("echo"), "{err:#}");
}

#[test]
fn read_line_bounded_edges() {
    let read =
        |input: &[u8], max| read_line_bounded(&mut io::Cursor::new(input), max).expect("read");
    assert_eq!(read(b"", 4), Line::Eof);
    assert_eq!(read(b"abcd\nrest", 4), Line::Complete(b"abcd".to_vec()));
    assert_eq!(read(b"abcde\n", 4), Line::TooLong);
    assert_eq!(read(b"abc", 4), Line::Unterminated(b"abc".to_vec()));
    assert_eq!(read(b"abcd", 4), Line::Unterminated(b"abcd".to_vec()));
}

#[test]
fn requests_are_a_json_stream() {
    let read = |input: &[u8]| {
        let mut c = io::Cursor::new(input.to_vec());
        let mut out = Vec::new();
        loop {
            match read_request(&mut c, 64).expect("read") {
                Line::Eof => return out,
                l => out.push(l),
            }
        }
    };
    let c = |s: &str| Line::Complete(s.as_bytes().to_vec());
    // No newlines (QEMU's client library), several per line, split objects.
    assert_eq!(
        read(br#"{"a":1}{"b":"}{"}  {"c":[1,{"d":2}]}"#),
        vec![
            c(r#"{"a":1}"#),
            c(r#"{"b":"}{"}"#),
            c(r#"{"c":[1,{"d":2}]}"#)
        ]
    );
    assert_eq!(
        read(b"{\"a\":\n 1}\n42\nnonsense \"s\\\"q\""),
        vec![c("{\"a\":\n 1}"), c("42"), c("nonsense"), c("\"s\\\"q\"")]
    );
    assert_eq!(
        read(b"{\"open\": "),
        vec![Line::Unterminated(b"{\"open\": ".to_vec())]
    );
    // (The server closes the connection after a request that is too long.)
    assert_eq!(read(&[b'['; 100])[0], Line::TooLong);
    assert_eq!(read(b"  \n\n"), vec![]);
}

#[test]
fn an_incomplete_request_gets_an_error_at_end_of_stream() {
    let dir = TempDir::new("incomplete");
    let (_server, _fake) = start(&dir);
    let mut raw = Raw::connect(&dir.sock());
    raw.send(r#"{"execute": "stop""#);
    raw.stream.shutdown(Shutdown::Write).expect("half close");
    let (class, desc) = error_of(&raw.recv());
    assert_eq!(class, "GenericError");
    assert!(desc.starts_with("invalid JSON: EOF"), "{desc}");
}

#[test]
fn error_class_names_round_trip() {
    for class in ErrorClass::ALL {
        assert_eq!(ErrorClass::from_name(class.as_str()), Some(class));
    }
    assert_eq!(ErrorClass::from_name("KVMMissingCap"), None);
    let e = parse_error(&json!({"class": "KVMMissingCap", "desc": "no"}));
    assert_eq!(e, CommandError::generic("[KVMMissingCap] no"));
    assert_eq!(CommandError::generic("x").to_string(), "GenericError: x");
}

#[test]
fn idle_connections_are_closed_and_make_room() {
    let dir = TempDir::new("idle");
    let (server, _fake) = start(&dir);
    server.set_idle_timeout(Duration::from_millis(300));
    let mut clients: Vec<Raw> = (0..MAX_CONNECTIONS)
        .map(|_| Raw::connect(&dir.sock()))
        .collect();
    // A client that keeps talking stays; the silent ones are closed.
    let t = Instant::now();
    for _ in 0..5 {
        thread::sleep(Duration::from_millis(150));
        assert_eq!(
            clients[0].call(r#"{"execute": "echo"}"#),
            json!({"return": {}})
        );
    }
    for c in &mut clients[1..] {
        assert!(c.closed(), "an idle connection stayed open");
    }
    assert!(t.elapsed() < Duration::from_secs(5));
    // Their slots are free again.
    let mut fresh: Vec<Raw> = (1..MAX_CONNECTIONS)
        .map(|_| Raw::connect(&dir.sock()))
        .collect();
    assert_eq!(
        fresh[0].call(r#"{"execute": "echo"}"#),
        json!({"return": {}})
    );
}

#[test]
fn serve_bytes_answers_as_a_connection_does() {
    let fake = Fake {
        calls: Mutex::new(Vec::new()),
    };
    let input = b"{\"execute\":\"query-status\"}\n{\"execute\":\"qmp_capabilities\"}\
        {\"execute\":\"echo\",\"arguments\":{\"a\":1},\"id\":7}\n\n[1] {\"execute\":\"query-status\"";
    let replies = serve_bytes(input, MAX_LINE_BYTES, &fake);
    assert_eq!(replies.len(), 5, "{replies:?}");
    assert_eq!(error_of(&replies[0]).0, "CommandNotFound");
    assert_eq!(replies[1], json!({"return": {}}));
    assert_eq!(replies[2], json!({"id": 7, "return": {"a": 1}}));
    assert_eq!(error_of(&replies[3]).0, "GenericError");
    // The unterminated last request is answered too (as an invalid one).
    assert_eq!(error_of(&replies[4]).0, "GenericError");
    // A request over the limit ends the stream with an error.
    let replies = serve_bytes(
        b"{\"execute\":\"echo\",\"arguments\":{\"x\":\"long\"}}",
        16,
        &fake,
    );
    assert_eq!(replies.len(), 1);
    assert!(error_of(&replies[0]).1.contains("longer than 16 bytes"));
    assert_eq!(fake.calls().len(), 1);
}
