//! The client side: connect, negotiate, send commands, read replies.

use super::*;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// Client side, used by `godwit migrate`, the benchmarks and tests: connect
/// (greeting and capabilities negotiation), send a command, read its reply;
/// events that arrive meanwhile are skipped.
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
        client
            .execute("qmp_capabilities", Value::Null)
            .with_context(|| format!("capabilities negotiation with {shown} failed"))?;
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
