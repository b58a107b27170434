//! The control socket: a QMP-shaped JSON protocol over a Unix stream socket.
//!
//! `godwit run --control PATH` and `godwit receive --control PATH` serve
//! [`ControlServer`] on `PATH`; `godwit migrate`, the benchmarks and the tests
//! talk to it with [`ControlClient`]. The wire format is modelled on QEMU's
//! QMP so that people who know QEMU or libvirt feel at home:
//!
//! - on connect the server sends one greeting line;
//! - then each line from the client is one request,
//!   `{"execute": NAME, "arguments": {...}, "id": ANY}` (`arguments` and `id`
//!   optional), and the server answers each with exactly one line, in order:
//!   `{"return": VALUE}` or `{"error": {"class": CLASS, "desc": TEXT}}`, with
//!   the request's `id` echoed when it had one.
//!
//! Unlike QEMU, `qmp_capabilities` is accepted but not required before other
//! commands. Commands are implemented by a [`ControlTarget`]; the server
//! itself only handles `qmp_capabilities` and malformed input.
//!
//! # Example exchange
//!
//! `S:` lines come from the server, `C:` lines from the client. Replies are
//! compact JSON whose keys come out sorted, so `id` may precede `return`.
//!
//! ```text
//! S: {"QMP":{"capabilities":[],"version":{"godwit":"0.1.0"}}}
//! C: {"execute": "qmp_capabilities"}
//! S: {"return":{}}
//! C: {"execute": "query-status", "id": 1}
//! S: {"id":1,"return":{"running":true,"status":"running"}}
//! C: {"execute": "migrate-set-parameters", "arguments": {"max-bandwidth": 125000000}, "id": "a"}
//! S: {"id":"a","return":{}}
//! C: {"execute": "query-balon"}
//! S: {"error":{"class":"CommandNotFound","desc":"The command query-balon has not been found"}}
//! C: {"execute": "stop"
//! S: {"error":{"class":"GenericError","desc":"invalid JSON: EOF while parsing an object at line 1 column 18"}}
//! ```
//!
//! Limits: a request line may be at most [`MAX_LINE_BYTES`] long (a longer
//! one gets an error reply and the connection is closed), and at most
//! [`MAX_CONNECTIONS`] clients may be connected at once (an extra one gets an
//! error line instead of the greeting and is closed). Each connection has its
//! own thread, so a command that blocks for long (a migration) only blocks the
//! connection that sent it.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};

/// Longest request line the server accepts, in bytes (without the newline).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Most client connections a [`ControlServer`] serves at once.
pub const MAX_CONNECTIONS: usize = 16;

/// Longest reply line a [`ControlClient`] accepts, in bytes.
const CLIENT_MAX_LINE_BYTES: usize = 64 << 20;

/// A connection whose client does not read its replies for this long is closed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`ControlServer::shutdown`] waits for connection threads to finish
/// (a command still running keeps its thread alive beyond that).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The error classes a command can fail with (the `class` of an error reply).
///
/// The names are QMP's where QMP has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Anything without a more specific class (QMP's catch-all).
    GenericError,
    /// No command of that name exists.
    CommandNotFound,
    /// The device the command needs exists but is not active (e.g. no balloon
    /// driver in the guest yet).
    DeviceNotActive,
    /// The device the command names does not exist.
    DeviceNotFound,
    /// The command cannot run while a migration is in progress.
    #[allow(dead_code)] // raised by the migration commands
    MigrationActive,
}

impl ErrorClass {
    /// Every class, for parsing and tests.
    pub const ALL: [ErrorClass; 5] = [
        ErrorClass::GenericError,
        ErrorClass::CommandNotFound,
        ErrorClass::DeviceNotActive,
        ErrorClass::DeviceNotFound,
        ErrorClass::MigrationActive,
    ];

    /// The name used on the wire (`"GenericError"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
            ErrorClass::DeviceNotActive => "DeviceNotActive",
            ErrorClass::DeviceNotFound => "DeviceNotFound",
            ErrorClass::MigrationActive => "MigrationActive",
        }
    }

    /// The class with this wire name, if any.
    pub fn from_name(name: &str) -> Option<ErrorClass> {
        ErrorClass::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed command: what the `error` member of a reply carries.
///
/// [`ControlClient::execute`] returns it inside its `anyhow::Error`, so callers
/// can `downcast_ref::<CommandError>()` to look at the class. Displays as
/// `CLASS: desc`.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandError {
    /// The error class.
    pub class: ErrorClass,
    /// A human-readable description.
    pub desc: String,
}

impl CommandError {
    /// An error of class `class`.
    pub fn new(class: ErrorClass, desc: impl Into<String>) -> Self {
        CommandError {
            class,
            desc: desc.into(),
        }
    }

    /// A `GenericError`.
    pub fn generic(desc: impl Into<String>) -> Self {
        CommandError::new(ErrorClass::GenericError, desc)
    }

    /// The `CommandNotFound` error for command `name` (QEMU's wording).
    pub fn not_found(name: &str) -> Self {
        CommandError::new(
            ErrorClass::CommandNotFound,
            format!("The command {name} has not been found"),
        )
    }
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class, self.desc)
    }
}

impl std::error::Error for CommandError {}

/// Lets a [`ControlTarget`] use `?` on `anyhow` results: the error becomes a
/// `GenericError` whose desc is the whole context chain.
impl From<anyhow::Error> for CommandError {
    fn from(e: anyhow::Error) -> Self {
        CommandError::generic(format!("{e:#}"))
    }
}

/// What the control socket drives. Implemented by the VMM for a running VM.
///
/// `execute` is called from the connection's own thread, possibly from
/// several connections at once, and may block for as long as the command
/// takes (only that connection waits). A panic in `execute` is caught and
/// answered with a `GenericError`.
pub trait ControlTarget: Send + Sync + 'static {
    /// Handles one command (already parsed): `name` is the `execute` string,
    /// `args` the `arguments` object (or an empty object). Returns the
    /// `return` value or an error (class, desc). Unknown names should get
    /// [`CommandError::not_found`].
    fn execute(&self, name: &str, args: &Map<String, Value>) -> Result<Value, CommandError>;
}

/// A listening control socket; accepting runs on its own thread. Dropping it
/// (or calling shutdown) stops the thread and removes the socket file.
///
/// Connections still open at shutdown are told to stop reading; a command
/// running on one of them still sends its reply (so a `quit` command can
/// answer before the VMM exits). Shutdown waits up to one second for them.
pub struct ControlServer {
    path: PathBuf,
    /// Device and inode of the socket file we created, so that we only ever
    /// remove our own file.
    file_id: (u64, u64),
    shared: Arc<Shared>,
    /// Closing this wakes the accept loop.
    waker: Option<UnixStream>,
    accept_thread: Option<JoinHandle<()>>,
    stopped: bool,
}

/// State shared by the server handle, the accept loop and the connections.
struct Shared {
    stopping: AtomicBool,
    /// Open connections (clones of their streams), by connection number.
    conns: Mutex<HashMap<u64, UnixStream>>,
    conns_changed: Condvar,
}

impl Shared {
    fn conns(&self) -> MutexGuard<'_, HashMap<u64, UnixStream>> {
        // The map stays consistent even if a holder panicked.
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ControlServer {
    /// Binds `path` (removes a stale socket file first only if it is a socket
    /// nobody listens on; refuses to overwrite a regular file or a live socket
    /// with a clear error) and serves connections on a background thread.
    ///
    /// The socket file is created with mode 0600 (atomically, not chmod-ed
    /// after the fact).
    pub fn start(path: &Path, target: Arc<dyn ControlTarget>) -> anyhow::Result<ControlServer> {
        clear_stale_socket(path)?;
        let listener = bind_private(path)
            .with_context(|| format!("cannot create control socket {}", path.display()))?;
        let meta = fs::symlink_metadata(path)
            .with_context(|| format!("control socket {} vanished", path.display()))?;
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            conns_changed: Condvar::new(),
        });
        // From here on, dropping `server` removes the socket file.
        let mut server = ControlServer {
            path: path.to_path_buf(),
            file_id: (meta.dev(), meta.ino()),
            shared: Arc::clone(&shared),
            waker: None,
            accept_thread: None,
            stopped: false,
        };
        // Already 0600 on Linux (see bind_private); this covers the rest.
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot chmod control socket {}", path.display()))?;
        listener
            .set_nonblocking(true)
            .context("control socket: set_nonblocking")?;
        let (waker, wake_rx) = UnixStream::pair().context("control socket: socketpair")?;
        server.waker = Some(waker);
        let thread = thread::Builder::new()
            .name("godwit-control".into())
            .spawn(move || accept_loop(listener, wake_rx, shared, target))
            .context("cannot start the control socket thread")?;
        server.accept_thread = Some(thread);
        Ok(server)
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, closes idle connections, removes the socket file.
    /// Same as dropping the server.
    pub fn shutdown(self) {
        drop(self);
    }

    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.shared.stopping.store(true, Ordering::SeqCst);
        drop(self.waker.take()); // the accept loop sees the hang-up
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
        // The listener is closed now; remove the file, if it is still ours.
        if let Ok(meta) = fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.file_id {
                let _ = fs::remove_file(&self.path);
            }
        }
        // Wake connections blocked reading a request. Shutting down only the
        // read side lets a command in progress still send its reply.
        let mut conns = self.shared.conns();
        for stream in conns.values() {
            let _ = stream.shutdown(Shutdown::Read);
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while !conns.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            conns = match self.shared.conns_changed.wait_timeout(conns, left) {
                Ok((guard, _)) => guard,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl fmt::Debug for ControlServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlServer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Makes room for binding `path`: nothing there is fine, a socket nobody
/// listens on is removed, anything else is refused.
fn clear_stale_socket(path: &Path) -> anyhow::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot inspect {}", path.display()));
        }
    };
    if !meta.file_type().is_socket() {
        bail!(
            "refusing to replace {} with the control socket: it exists and is not a socket",
            path.display()
        );
    }
    match UnixStream::connect(path) {
        Ok(_) => bail!(
            "control socket {} is in use (another godwit is listening on it)",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => fs::remove_file(path)
            .with_context(|| format!("cannot remove stale control socket {}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| {
            format!(
                "{} exists and cannot be checked for a listener; not replacing it",
                path.display()
            )
        }),
    }
}

/// Creates a listening Unix socket at `path` whose file has mode 0600 from
/// the start: Linux gives the file the socket inode's mode (minus umask), so
/// the mode is set on the socket before `bind`.
fn bind_private(path: &Path) -> io::Result<UnixListener> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path contains a NUL byte",
        ));
    }
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "socket path must be 1 to {} bytes long, it is {}",
                addr.sun_path.len() - 1,
                bytes.len()
            ),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;

    // SAFETY: plain system calls on a descriptor we own; the address pointer
    // and length describe `addr`, which outlives the call.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        if libc::fchmod(fd.as_raw_fd(), 0o600) < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
        if libc::listen(fd.as_raw_fd(), 64) < 0 {
            let e = io::Error::last_os_error();
            let _ = fs::remove_file(path);
            return Err(e);
        }
        Ok(UnixListener::from(fd))
    }
}

/// Blocks until the listener has a connection (`true`) or the waker hung up
/// (`false`).
fn wait_for_connection(listener: &UnixListener, wake: &UnixStream) -> io::Result<bool> {
    let mut fds = [
        libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfd for the whole call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents != 0 {
            return Ok(false);
        }
        if fds[0].revents != 0 {
            return Ok(true);
        }
    }
}

fn accept_loop(
    listener: UnixListener,
    wake: UnixStream,
    shared: Arc<Shared>,
    target: Arc<dyn ControlTarget>,
) {
    let mut next_conn: u64 = 0;
    loop {
        match wait_for_connection(&listener, &wake) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                eprintln!("godwit: control socket: poll failed: {e}");
                thread::sleep(Duration::from_millis(100));
            }
        }
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::Interrupted
                        | io::ErrorKind::ConnectionAborted
                ) =>
            {
                continue
            }
            Err(e) => {
                // E.g. out of descriptors: do not spin.
                eprintln!("godwit: control socket: accept failed: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let id = next_conn;
        next_conn += 1;
        start_connection(stream, id, &shared, &target);
    }
}

/// Registers and spawns the thread for a newly accepted connection, or
/// rejects it when the server is full.
fn start_connection(
    stream: UnixStream,
    id: u64,
    shared: &Arc<Shared>,
    target: &Arc<dyn ControlTarget>,
) {
    {
        let mut conns = shared.conns();
        if conns.len() >= MAX_CONNECTIONS {
            drop(conns);
            reject(
                &stream,
                &format!("too many control connections (at most {MAX_CONNECTIONS} at once)"),
            );
            return;
        }
        let Ok(clone) = stream.try_clone() else {
            reject(
                &stream,
                "cannot serve this connection (out of descriptors?)",
            );
            return;
        };
        conns.insert(id, clone);
    }
    let thread_shared = Arc::clone(shared);
    let target = Arc::clone(target);
    let spawned = thread::Builder::new()
        .name(format!("godwit-control-{id}"))
        .spawn(move || {
            let _registration = Registration {
                shared: &thread_shared,
                id,
            };
            serve_connection(&stream, &*target, &thread_shared);
        });
    if spawned.is_err() {
        // The closure, and with it the stream, is gone already.
        let mut conns = shared.conns();
        conns.remove(&id);
        shared.conns_changed.notify_all();
    }
}

/// Removes a connection from the registry when its thread ends, however it
/// ends.
struct Registration<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut conns = self.shared.conns();
        conns.remove(&self.id);
        self.shared.conns_changed.notify_all();
    }
}

/// Sends one error line to a connection we will not serve.
fn reject(stream: &UnixStream, desc: &str) {
    let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
    let reply = make_reply(Err(CommandError::generic(desc)), None);
    let _ = send_line(stream, &reply);
}

/// The first line of every connection.
fn greeting() -> Value {
    json!({
        "QMP": {
            "version": { "godwit": env!("CARGO_PKG_VERSION") },
            "capabilities": []
        }
    })
}

fn serve_connection(stream: &UnixStream, target: &dyn ControlTarget, shared: &Shared) {
    if stream.set_nonblocking(false).is_err()
        || stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err()
        || send_line(stream, &greeting()).is_err()
    {
        return;
    }
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    loop {
        let line = match read_line_bounded(&mut reader, MAX_LINE_BYTES) {
            Ok(line) => line,
            Err(_) => return,
        };
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let (bytes, last) = match line {
            Line::Eof => return,
            Line::TooLong => {
                let desc = format!(
                    "request line longer than {MAX_LINE_BYTES} bytes; closing the connection"
                );
                let _ = send_line(stream, &make_reply(Err(CommandError::generic(desc)), None));
                return;
            }
            Line::Complete(bytes) => (bytes, false),
            // The client closed (or half-closed) after an unterminated line:
            // answer it if it is a whole request, then stop.
            Line::Unterminated(bytes) => (bytes, true),
        };
        if let Some(reply) = handle_line(&bytes, target) {
            if send_line(stream, &reply).is_err() {
                return;
            }
        }
        if last {
            return;
        }
    }
}

/// One line read by [`read_line_bounded`].
#[derive(Debug, PartialEq)]
enum Line {
    /// End of stream before any byte.
    Eof,
    /// A line, without its `\n`.
    Complete(Vec<u8>),
    /// Bytes followed by end of stream instead of `\n`.
    Unterminated(Vec<u8>),
    /// More than the limit without a `\n` (the rest is left unread).
    TooLong,
}

/// Reads one `\n`-terminated line of at most `max` bytes (plus the `\n`).
fn read_line_bounded<R: BufRead>(reader: &mut R, max: usize) -> io::Result<Line> {
    let mut buf = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    let n = reader.by_ref().take(limit).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(Line::Eof);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        return Ok(Line::Complete(buf));
    }
    if buf.len() > max {
        return Ok(Line::TooLong);
    }
    Ok(Line::Unterminated(buf))
}

/// Turns one request line into its reply; `None` for a blank line.
fn handle_line(bytes: &[u8], target: &dyn ControlTarget) -> Option<Value> {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let desc = format!("request is not valid UTF-8: {e}");
            return Some(make_reply(Err(CommandError::generic(desc)), None));
        }
    };
    let text = text.trim(); // also drops a `\r` from CRLF clients
    if text.is_empty() {
        return None;
    }
    let request: Value = match serde_json::from_str(text) {
        Ok(request) => request,
        Err(e) => {
            let desc = format!("invalid JSON: {e}");
            return Some(make_reply(Err(CommandError::generic(desc)), None));
        }
    };
    Some(handle_request(request, target))
}

fn handle_request(request: Value, target: &dyn ControlTarget) -> Value {
    let Value::Object(mut request) = request else {
        let desc = format!(
            "a request must be a JSON object like {{\"execute\": \"NAME\"}}, not {}",
            kind(&request)
        );
        return make_reply(Err(CommandError::generic(desc)), None);
    };
    let id = request.remove("id");
    let result = dispatch(request, target);
    make_reply(result, id)
}

/// Validates a request object (without its `id`) and runs the command.
fn dispatch(
    mut request: Map<String, Value>,
    target: &dyn ControlTarget,
) -> Result<Value, CommandError> {
    let name = match request.remove("execute") {
        Some(Value::String(name)) => name,
        Some(other) => {
            return Err(CommandError::generic(format!(
                "\"execute\" must be a string (the command name), not {}",
                kind(&other)
            )))
        }
        None => {
            return Err(CommandError::generic(
                "the request has no \"execute\" member (the command name)",
            ))
        }
    };
    let args = match request.remove("arguments") {
        None => Map::new(),
        Some(Value::Object(args)) => args,
        Some(other) => {
            return Err(CommandError::generic(format!(
                "\"arguments\" of {name} must be a JSON object, not {}",
                kind(&other)
            )))
        }
    };
    if let Some(key) = request.keys().next() {
        return Err(CommandError::generic(format!(
            "unexpected member \"{key}\" in the request (expected \"execute\", \"arguments\", \"id\")"
        )));
    }
    if name == "qmp_capabilities" {
        return qmp_capabilities(&args);
    }
    match panic::catch_unwind(AssertUnwindSafe(|| target.execute(&name, &args))) {
        Ok(result) => result,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(CommandError::generic(format!(
                "internal error: command {name} panicked: {what}"
            )))
        }
    }
}

/// `qmp_capabilities`: no capabilities exist, so only an empty `enable` list
/// is accepted.
fn qmp_capabilities(args: &Map<String, Value>) -> Result<Value, CommandError> {
    for (key, value) in args {
        match (key.as_str(), value) {
            ("enable", Value::Array(caps)) => {
                if let Some(cap) = caps.first() {
                    return Err(CommandError::generic(format!(
                        "capability {cap} is not supported (none are)"
                    )));
                }
            }
            _ => {
                return Err(CommandError::generic(format!(
                    "qmp_capabilities: unexpected argument \"{key}\""
                )))
            }
        }
    }
    Ok(json!({}))
}

fn make_reply(result: Result<Value, CommandError>, id: Option<Value>) -> Value {
    let mut reply = Map::new();
    match result {
        Ok(value) => {
            reply.insert("return".into(), value);
        }
        Err(e) => {
            reply.insert(
                "error".into(),
                json!({ "class": e.class.as_str(), "desc": e.desc }),
            );
        }
    }
    if let Some(id) = id {
        reply.insert("id".into(), id);
    }
    Value::Object(reply)
}

/// "an array", "a string", ... for error messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Writes `value` as one line. Uses `send(MSG_NOSIGNAL)` so that a vanished
/// peer is an `EPIPE` error, never a `SIGPIPE`, whatever the process's signal
/// disposition.
fn send_line(stream: &UnixStream, value: &Value) -> io::Result<()> {
    let mut line = value.to_string();
    line.push('\n');
    let mut buf = line.as_bytes();
    while !buf.is_empty() {
        // SAFETY: `buf` is valid for `buf.len()` bytes for the whole call.
        let n = unsafe {
            libc::send(
                stream.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = buf.get(n as usize..).unwrap_or_default();
    }
    Ok(())
}

/// Client side, used by `godwit migrate`, the benchmarks and tests: connect,
/// send one command, read one reply.
///
/// One client is one connection; commands on it run one after the other.
/// Each request carries an `id` and the reply's `id` is checked.
#[derive(Debug)]
pub struct ControlClient {
    path: PathBuf,
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    next_id: u64,
}

impl ControlClient {
    /// Connects to the control socket at `path` and reads its greeting.
    ///
    /// Fails with a clear message if the socket is missing, nobody listens on
    /// it, or the server turns the connection away (too many clients).
    pub fn connect(path: &Path) -> anyhow::Result<ControlClient> {
        let shown = path.display();
        let stream = UnixStream::connect(path).map_err(|e| {
            let msg = match e.kind() {
                io::ErrorKind::NotFound => format!(
                    "control socket {shown} does not exist (is a godwit VM running with --control {shown}?)"
                ),
                io::ErrorKind::ConnectionRefused => format!(
                    "control socket {shown} refuses connections (nobody listens on it: the VMM has exited?)"
                ),
                io::ErrorKind::PermissionDenied => {
                    format!("no permission to connect to control socket {shown}")
                }
                _ => format!("cannot connect to control socket {shown}"),
            };
            anyhow::Error::new(e).context(msg)
        })?;
        let reader = BufReader::new(
            stream
                .try_clone()
                .context("control socket: cannot clone the stream")?,
        );
        let mut client = ControlClient {
            path: path.to_path_buf(),
            stream,
            reader,
            next_id: 1,
        };
        let greeting = client
            .read_message()
            .with_context(|| format!("no greeting from control socket {shown}"))?;
        if let Some(error) = greeting.get("error") {
            bail!(
                "control socket {shown} turned the connection away: {}",
                parse_error(error)
            );
        }
        if greeting.get("QMP").is_none() {
            bail!("control socket {shown} sent an unexpected greeting: {greeting}");
        }
        Ok(client)
    }

    /// Sets a timeout for sending a command and for waiting for its reply
    /// (`None`, the default, waits as long as the command takes). After a
    /// timeout the connection may be out of step: connect again.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> anyhow::Result<()> {
        self.stream
            .set_read_timeout(timeout)
            .and_then(|()| self.stream.set_write_timeout(timeout))
            .context("control socket: cannot set the timeout")
    }

    /// Sends `{"execute": name, "arguments": args}` and returns the `return`
    /// value, or an error carrying class and desc.
    ///
    /// `args` must be a JSON object, or `null` for none. A failed command's
    /// error is a [`CommandError`] (reachable with `downcast_ref`), displayed
    /// as `CLASS: desc`.
    pub fn execute(&mut self, name: &str, args: Value) -> anyhow::Result<Value> {
        let mut request = Map::new();
        request.insert("execute".into(), Value::String(name.into()));
        match args {
            Value::Null => {}
            Value::Object(args) => {
                request.insert("arguments".into(), Value::Object(args));
            }
            other => bail!(
                "the arguments of {name} must be a JSON object or null, not {}",
                kind(&other)
            ),
        }
        let id = self.next_id;
        self.next_id += 1;
        request.insert("id".into(), Value::from(id));
        send_line(&self.stream, &Value::Object(request)).with_context(|| {
            format!(
                "cannot send {name} to control socket {}",
                self.path.display()
            )
        })?;
        loop {
            let reply = self.read_message().with_context(|| {
                format!(
                    "no reply to {name} from control socket {}",
                    self.path.display()
                )
            })?;
            let Value::Object(mut reply) = reply else {
                bail!("control socket sent a reply that is not an object: {reply}");
            };
            if reply.contains_key("event") {
                continue; // asynchronous events are not for us
            }
            match reply.get("id") {
                None => {}
                Some(got) if got.as_u64() == Some(id) => {}
                Some(got) => bail!("control socket answered request {got}, expected {id}"),
            }
            if let Some(value) = reply.remove("return") {
                return Ok(value);
            }
            if let Some(error) = reply.get("error") {
                return Err(parse_error(error).into());
            }
            bail!(
                "control socket sent a reply with neither \"return\" nor \"error\": {}",
                Value::Object(reply)
            );
        }
    }

    /// Reads the next non-blank line as JSON.
    fn read_message(&mut self) -> anyhow::Result<Value> {
        loop {
            let bytes = match read_line_bounded(&mut self.reader, CLIENT_MAX_LINE_BYTES)? {
                Line::Complete(bytes) => bytes,
                Line::Eof | Line::Unterminated(_) => bail!("the connection was closed"),
                Line::TooLong => bail!("a reply is longer than {CLIENT_MAX_LINE_BYTES} bytes"),
            };
            if bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return serde_json::from_slice(&bytes).context("the reply is not valid JSON");
        }
    }
}

/// Reads the `error` member of a reply; tolerates a malformed one.
fn parse_error(error: &Value) -> CommandError {
    let class_name = error.get("class").and_then(Value::as_str).unwrap_or("");
    let desc = match error.get("desc") {
        Some(Value::String(desc)) => desc.clone(),
        Some(other) => other.to_string(),
        None => error.to_string(),
    };
    match ErrorClass::from_name(class_name) {
        Some(class) => CommandError::new(class, desc),
        None => CommandError::generic(format!("[{class_name}] {desc}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::atomic::AtomicU64;

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

        /// Connects and checks the greeting.
        fn connect(path: &Path) -> Raw {
            let mut raw = Raw::connect_no_greeting(path);
            let greeting = raw.recv();
            assert!(greeting.get("QMP").is_some(), "greeting: {greeting}");
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
        for doc_line in include_str!("control.rs").lines() {
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
        assert_eq!(
            greeting,
            json!({"QMP": {"version": {"godwit": env!("CARGO_PKG_VERSION")}, "capabilities": []}})
        );
    }

    #[test]
    fn qmp_capabilities_is_handled_by_the_server() {
        let dir = TempDir::new("caps");
        let (_server, fake) = start(&dir);
        let mut raw = Raw::connect(&dir.sock());
        assert_eq!(
            raw.call(r#"{"execute": "qmp_capabilities"}"#),
            json!({"return": {}})
        );
        assert_eq!(
            raw.call(r#"{"execute": "qmp_capabilities", "arguments": {"enable": []}, "id": 7}"#),
            json!({"return": {}, "id": 7})
        );
        let (class, desc) = error_of(
            &raw.call(r#"{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}"#),
        );
        assert_eq!(class, "GenericError");
        assert!(desc.contains("oob"), "{desc}");
        assert!(fake.calls().is_empty());
    }

    #[test]
    fn command_with_arguments_and_id_echo() {
        let dir = TempDir::new("args");
        let (_server, fake) = start(&dir);
        let mut raw = Raw::connect(&dir.sock());
        let reply = raw
            .call(r#"{"execute": "echo", "arguments": {"path": "/tmp/x", "n": 3}, "id": "abc"}"#);
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
            r#"{"execute": "stop""#,
            "nonsense",
            r#"{"execute": "stop",}"#,
            "{",
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
        let mut client = ControlClient::connect(&dir.sock()).expect("connect");
        assert_eq!(
            client
                .execute("qmp_capabilities", Value::Null)
                .expect("caps"),
            json!({})
        );
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
    fn error_class_names_round_trip() {
        for class in ErrorClass::ALL {
            assert_eq!(ErrorClass::from_name(class.as_str()), Some(class));
        }
        assert_eq!(ErrorClass::from_name("KVMMissingCap"), None);
        let e = parse_error(&json!({"class": "KVMMissingCap", "desc": "no"}));
        assert_eq!(e, CommandError::generic("[KVMMissingCap] no"));
        assert_eq!(CommandError::generic("x").to_string(), "GenericError: x");
    }
}
