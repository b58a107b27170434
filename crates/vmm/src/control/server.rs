//! The server side: accepting, one thread per connection, negotiation,
//! replies and events.

use super::*;
use std::collections::HashMap;
use std::fs;
use std::io::BufReader;
use std::net::Shutdown;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use anyhow::{bail, Context};

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
    /// A connection that sends no request for this long (ms) is closed.
    idle_ms: AtomicU64,
    /// Open connections, by connection number.
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    conns_changed: Condvar,
}

impl Shared {
    fn conns(&self) -> MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        // The map stays consistent even if a holder panicked.
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One client connection.
struct Conn {
    stream: UnixStream,
    /// Replies and events are whole lines: one writer at a time.
    write: Mutex<()>,
    /// `qmp_capabilities` done: commands accepted, events sent.
    negotiated: AtomicBool,
}

impl Conn {
    fn send(&self, value: &Value) -> io::Result<()> {
        let _g = self.write.lock().unwrap_or_else(|p| p.into_inner());
        send_line(&self.stream, value)
    }
}

/// Sends asynchronous events to every negotiated connection of a
/// [`ControlServer`]. Cheap to clone; does nothing once the server is gone.
#[derive(Clone)]
pub struct EventSender {
    shared: std::sync::Weak<Shared>,
}

impl EventSender {
    /// A sender connected to no server (events go nowhere).
    pub fn none() -> EventSender {
        EventSender {
            shared: std::sync::Weak::new(),
        }
    }

    /// Broadcasts `{"event": name, "data": data, "timestamp": ...}`. A client
    /// that does not read its socket loses events rather than stalling the
    /// sender (its socket buffer holds hundreds of them).
    pub fn emit(&self, name: &str, data: Value) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let event = json!({
            "event": name,
            "data": data,
            "timestamp": { "seconds": now.as_secs(), "microseconds": now.subsec_micros() },
        });
        let conns: Vec<Arc<Conn>> = shared.conns().values().cloned().collect();
        for c in conns {
            if c.negotiated.load(Ordering::SeqCst) {
                let _g = c.write.lock().unwrap_or_else(|p| p.into_inner());
                let _ = send_line_nowait(&c.stream, &event);
            }
        }
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
            idle_ms: AtomicU64::new(IDLE_TIMEOUT.as_millis() as u64),
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

    /// Closes connections that send no request for `limit` from now on
    /// (default [`IDLE_TIMEOUT`]; it applies to connections opened after).
    pub fn set_idle_timeout(&self, limit: Duration) {
        self.shared
            .idle_ms
            .store(limit.as_millis().max(1) as u64, Ordering::SeqCst);
    }

    /// What sends events to this server's clients.
    pub fn events(&self) -> EventSender {
        EventSender {
            shared: Arc::downgrade(&self.shared),
        }
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
        for conn in conns.values() {
            let _ = conn.stream.shutdown(Shutdown::Read);
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
        conns.insert(
            id,
            Arc::new(Conn {
                stream: clone,
                write: Mutex::new(()),
                negotiated: AtomicBool::new(false),
            }),
        );
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
            let conn = thread_shared.conns().get(&id).cloned();
            if let Some(conn) = conn {
                serve_connection(&stream, &conn, &*target, &thread_shared);
            }
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

/// The first line of every connection, in QEMU's shape: Godwit's version
/// as `version.qemu` (clients read these three numbers), and its name in
/// `version.package`.
fn greeting() -> Value {
    let v = |i: usize| -> u64 {
        env!("CARGO_PKG_VERSION")
            .split('.')
            .nth(i)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    json!({
        "QMP": {
            "version": {
                "qemu": { "major": v(0), "minor": v(1), "micro": v(2) },
                "package": concat!("godwit ", env!("CARGO_PKG_VERSION")),
            },
            "capabilities": []
        }
    })
}

fn serve_connection(stream: &UnixStream, conn: &Conn, target: &dyn ControlTarget, shared: &Shared) {
    let idle = Duration::from_millis(shared.idle_ms.load(Ordering::SeqCst));
    if stream.set_nonblocking(false).is_err()
        || stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err()
        || stream.set_read_timeout(Some(idle)).is_err()
        || conn.send(&greeting()).is_err()
    {
        return;
    }
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    serve_requests(
        &mut reader,
        MAX_LINE_BYTES,
        target,
        &conn.negotiated,
        || shared.stopping.load(Ordering::SeqCst),
        |reply| conn.send(reply).is_ok(),
    );
}

/// Reads requests from `reader` (at most `max` bytes each) and hands each
/// reply to `send`, until end of stream, a read error, a request too long,
/// `stopping()`, or `send` returning false.
pub(super) fn serve_requests<R: BufRead>(
    reader: &mut R,
    max: usize,
    target: &dyn ControlTarget,
    negotiated: &AtomicBool,
    stopping: impl Fn() -> bool,
    mut send: impl FnMut(&Value) -> bool,
) {
    loop {
        let line = match read_request(reader, max) {
            Ok(line) => line,
            Err(_) => return,
        };
        if stopping() {
            return;
        }
        let (bytes, last) = match line {
            Line::Eof => return,
            Line::TooLong => {
                let desc = format!("request longer than {max} bytes; closing the connection");
                send(&make_reply(Err(CommandError::generic(desc)), None));
                return;
            }
            Line::Complete(bytes) => (bytes, false),
            // The client closed (or half-closed) after an unterminated line:
            // answer it if it is a whole request, then stop.
            Line::Unterminated(bytes) => (bytes, true),
        };
        if let Some(reply) = handle_line(&bytes, target, negotiated) {
            if !send(&reply) {
                return;
            }
        }
        if last {
            return;
        }
    }
}

/// Turns one request line into its reply; `None` for a blank line.
fn handle_line(bytes: &[u8], target: &dyn ControlTarget, negotiated: &AtomicBool) -> Option<Value> {
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
    Some(handle_request(request, target, negotiated))
}

fn handle_request(request: Value, target: &dyn ControlTarget, negotiated: &AtomicBool) -> Value {
    let Value::Object(mut request) = request else {
        let desc = format!(
            "a request must be a JSON object like {{\"execute\": \"NAME\"}}, not {}",
            kind(&request)
        );
        return make_reply(Err(CommandError::generic(desc)), None);
    };
    let id = request.remove("id");
    let result = dispatch(request, target, negotiated);
    make_reply(result, id)
}

/// Validates a request object (without its `id`) and runs the command.
fn dispatch(
    mut request: Map<String, Value>,
    target: &dyn ControlTarget,
    negotiated: &AtomicBool,
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
    // Capabilities negotiation, as QEMU: nothing but qmp_capabilities
    // before it, and qmp_capabilities only once.
    if name == "qmp_capabilities" {
        if negotiated.load(Ordering::SeqCst) {
            return Err(CommandError::new(
                ErrorClass::CommandNotFound,
                "Capabilities negotiation is already complete, command ignored",
            ));
        }
        let r = qmp_capabilities(&args)?;
        negotiated.store(true, Ordering::SeqCst);
        return Ok(r);
    }
    if !negotiated.load(Ordering::SeqCst) {
        return Err(CommandError::new(
            ErrorClass::CommandNotFound,
            "Expecting capabilities negotiation with 'qmp_capabilities'",
        ));
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

/// `qmp_capabilities`: no capabilities are offered (the greeting lists
/// none), so only an empty `enable` list is accepted, as QEMU does for a
/// capability it did not offer.
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
