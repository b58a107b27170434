//! The control socket: a QMP-shaped JSON protocol over a Unix stream socket.
//!
//! `godwit run --control PATH` and `godwit receive --control PATH` serve
//! [`ControlServer`] on `PATH`; `godwit migrate`, the benchmarks and the tests
//! talk to it with [`ControlClient`]. The wire format is modelled on QEMU's
//! QMP so that people who know QEMU or libvirt feel at home:
//!
//! - on connect the server sends one greeting line;
//! - then each JSON object from the client is one request (a newline after
//!   it is optional, as QEMU's parser takes a stream of JSON values),
//!   `{"execute": NAME, "arguments": {...}, "id": ANY}` (`arguments` and `id`
//!   optional), and the server answers each with exactly one line, in order:
//!   `{"return": VALUE}` or `{"error": {"class": CLASS, "desc": TEXT}}`, with
//!   the request's `id` echoed when it had one.
//!
//! As in QEMU, a connection starts in *capabilities negotiation* mode: the
//! only command accepted is `qmp_capabilities` (anything else gets
//! `CommandNotFound`, "Expecting capabilities negotiation with
//! 'qmp_capabilities'"); after it, every command is, and the server sends
//! the connection asynchronous events (`{"event": NAME, "data": {...},
//! "timestamp": {"seconds": S, "microseconds": U}}`): `STOP`, `RESUME`,
//! `SHUTDOWN` and `MIGRATION` (`{"status": ...}`). The greeting names
//! Godwit's version in QEMU's shape (`version.qemu.{major,minor,micro}`,
//! `version.package`), so QMP clients such as QEMU's own `qemu.qmp` drive
//! Godwit unchanged. Commands are implemented by a [`ControlTarget`] and
//! parsed into the typed [`crate::commands::Command`]; the server itself
//! only handles `qmp_capabilities` and malformed input.
//!
//! # Example exchange
//!
//! `S:` lines come from the server, `C:` lines from the client. Replies are
//! compact JSON whose keys come out sorted, so `id` may precede `return`.
//!
//! ```text
//! S: {"QMP":{"capabilities":[],"version":{"package":"godwit 0.1.0","qemu":{"major":0,"micro":0,"minor":1}}}}
//! C: {"execute": "query-status"}
//! S: {"error":{"class":"CommandNotFound","desc":"Expecting capabilities negotiation with 'qmp_capabilities'"}}
//! C: {"execute": "qmp_capabilities"}
//! S: {"return":{}}
//! C: {"execute": "query-status", "id": 1}
//! S: {"id":1,"return":{"running":true,"status":"running"}}
//! C: {"execute": "migrate-set-parameters", "arguments": {"max-bandwidth": 125000000}, "id": "a"}
//! S: {"id":"a","return":{}}
//! C: {"execute": "query-balon"}
//! S: {"error":{"class":"CommandNotFound","desc":"The command query-balon has not been found"}}
//! C: {"execute": "stop",}
//! S: {"error":{"class":"GenericError","desc":"invalid JSON: trailing comma at line 1 column 20"}}
//! ```
//!
//! Limits: a request may be at most [`MAX_LINE_BYTES`] long (a longer
//! one gets an error reply and the connection is closed), and at most
//! [`MAX_CONNECTIONS`] clients may be connected at once (an extra one gets an
//! error line instead of the greeting and is closed). Each connection has its
//! own thread, so a command that blocks for long (a migration) only blocks the
//! connection that sent it.

mod client;
mod server;
#[cfg(test)]
mod tests;

pub use client::ControlClient;
pub use server::{ControlServer, EventSender};

use std::fmt;
use std::io::{self, BufRead, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::{json, Map, Value};

/// Longest request line the server accepts, in bytes (without the newline).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Most client connections a [`ControlServer`] serves at once.
pub const MAX_CONNECTIONS: usize = 16;

/// Longest reply line a [`ControlClient`] accepts, in bytes.
pub(crate) const CLIENT_MAX_LINE_BYTES: usize = 64 << 20;

/// A connection whose client sends no request for this long is closed, so
/// that forgotten clients do not hold the [`MAX_CONNECTIONS`] slots (a
/// client that only listens for events sends `query-status` now and then).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// A connection whose client does not read its replies for this long is closed.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`ControlServer::shutdown`] waits for connection threads to finish
/// (a command still running keeps its thread alive beyond that).
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

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

/// Serves `input` as the byte stream of one connection that has not
/// negotiated yet, with requests of at most `max` bytes, as the server
/// does, and returns the replies in order (for the fuzz targets in
/// `fuzz/`).
#[doc(hidden)]
pub fn serve_bytes(input: &[u8], max: usize, target: &dyn ControlTarget) -> Vec<Value> {
    let mut replies = Vec::new();
    let negotiated = std::sync::atomic::AtomicBool::new(false);
    server::serve_requests(
        &mut &input[..],
        max,
        target,
        &negotiated,
        || false,
        |reply| {
            replies.push(reply.clone());
            true
        },
    );
    replies
}

/// One line read by [`read_line_bounded`].
#[derive(Debug, PartialEq)]
pub(crate) enum Line {
    /// End of stream before any byte.
    Eof,
    /// A line, without its `\n`.
    Complete(Vec<u8>),
    /// Bytes followed by end of stream instead of `\n`.
    Unterminated(Vec<u8>),
    /// More than the limit without a `\n` (the rest is left unread).
    TooLong,
}

/// Reads one request: a JSON value as a stream of bytes, as QEMU's QMP
/// parser takes it, with or without a newline after it (QEMU's own client
/// library sends none). An object or array ends at the bracket that closes
/// it, a top-level scalar at the next whitespace, and an incomplete value
/// goes on across lines; whitespace between values is skipped. At most
/// `max` bytes.
pub(crate) fn read_request<R: BufRead>(reader: &mut R, max: usize) -> io::Result<Line> {
    let mut buf = Vec::new();
    let (mut depth, mut in_str, mut esc, mut scalar) = (0u32, false, false, false);
    loop {
        let avail = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok(if buf.is_empty() {
                Line::Eof
            } else {
                Line::Unterminated(buf)
            });
        }
        let mut used = 0;
        let mut done = false;
        for &b in avail {
            used += 1;
            if in_str {
                buf.push(b);
                if esc {
                    esc = false;
                } else if b == b'\\' {
                    esc = true;
                } else if b == b'"' {
                    in_str = false;
                    if depth == 0 {
                        done = true;
                        break;
                    }
                }
            } else {
                match b {
                    b'{' | b'[' => {
                        depth += 1;
                        buf.push(b);
                    }
                    b'}' | b']' => {
                        buf.push(b);
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            done = true;
                            break;
                        }
                    }
                    b'"' => {
                        in_str = true;
                        buf.push(b);
                    }
                    b' ' | b'\t' | b'\r' | b'\n' => {
                        if depth == 0 && scalar {
                            done = true;
                            break;
                        }
                        if depth > 0 {
                            buf.push(b);
                        }
                    }
                    _ => {
                        scalar |= depth == 0;
                        buf.push(b);
                    }
                }
            }
            if buf.len() > max {
                break;
            }
        }
        reader.consume(used);
        if buf.len() > max {
            return Ok(Line::TooLong);
        }
        if done {
            return Ok(Line::Complete(buf));
        }
    }
}

/// Reads one `\n`-terminated line of at most `max` bytes (plus the `\n`).
pub(crate) fn read_line_bounded<R: BufRead>(reader: &mut R, max: usize) -> io::Result<Line> {
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

pub(crate) fn make_reply(result: Result<Value, CommandError>, id: Option<Value>) -> Value {
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
pub(crate) fn kind(value: &Value) -> &'static str {
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
pub(crate) fn send_line(stream: &UnixStream, value: &Value) -> io::Result<()> {
    let mut line = value.to_string();
    line.push('\n');
    send_bytes(stream, line.as_bytes())
}

fn send_bytes(stream: &UnixStream, mut buf: &[u8]) -> io::Result<()> {
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

/// Like [`send_line`], but a socket whose buffer is full drops the line
/// instead of blocking (the line is never cut: a partly sent line is
/// finished, blocking).
pub(crate) fn send_line_nowait(stream: &UnixStream, value: &Value) -> io::Result<()> {
    let mut line = value.to_string();
    line.push('\n');
    let buf = line.as_bytes();
    // SAFETY: `buf` is valid for `buf.len()` bytes for the whole call.
    let n = unsafe {
        libc::send(
            stream.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let rest = buf.get(n as usize..).unwrap_or_default();
    if rest.is_empty() {
        return Ok(());
    }
    send_bytes(stream, rest)
}

/// Reads the `error` member of a reply; tolerates a malformed one.
pub(crate) fn parse_error(error: &Value) -> CommandError {
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
