//! Migration connections: TCP, with mutual TLS (rustls) unless plain TCP is
//! asked for explicitly.
//!
//! Each side holds an identity: a CA certificate, its own certificate
//! signed by that CA, and its private key (PEM files `ca.pem`, `cert.pem`,
//! `key.pem` in one folder; `godwit tls-gen` makes a set). The source
//! verifies the destination's certificate and the destination verifies the
//! source's, both against the CA, for the fixed name [`SERVER_NAME`]: being
//! allowed to migrate means holding a certificate from that CA. A peer
//! without one is refused during the handshake, before any VM state moves.
//!
//! A [`Conn`] is shared by two threads (one reads, one writes: demand
//! requests and replies in post-copy), so TLS runs over a non-blocking
//! socket with the rustls state behind a short-held lock, and waits happen
//! in `poll` outside it.

use anyhow::{anyhow, bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The name every migration certificate carries and every peer checks.
pub const SERVER_NAME: &str = "godwit-migration";

/// How connections are protected.
#[derive(Clone)]
pub enum Security {
    /// Plain TCP: no authentication, no encryption (asked for explicitly).
    Plain,
    /// Mutual TLS with the identity loaded from a folder.
    Tls(Arc<TlsIdentity>),
}

impl Security {
    /// `Plain`, or TLS from the identity in `dir`.
    pub fn from_dir(dir: Option<&Path>) -> Result<Security> {
        Ok(match dir {
            None => Security::Plain,
            Some(d) => Security::Tls(Arc::new(TlsIdentity::load(d)?)),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Security::Plain => "plain TCP",
            Security::Tls(_) => "TLS",
        }
    }
}

/// Client and server TLS configurations built from one identity.
pub struct TlsIdentity {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsIdentity {
    /// Loads `ca.pem`, `cert.pem` and `key.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<TlsIdentity> {
        let file = |n: &str| dir.join(n);
        let read_certs = |p: &Path| -> Result<Vec<CertificateDer<'static>>> {
            let certs = CertificateDer::pem_file_iter(p)
                .with_context(|| format!("cannot read {}", p.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("{} is not a PEM certificate file", p.display()))?;
            if certs.is_empty() {
                bail!("{} holds no certificate", p.display());
            }
            Ok(certs)
        };
        let ca = read_certs(&file("ca.pem"))?;
        let chain = read_certs(&file("cert.pem"))?;
        let key_path = file("key.pem");
        let key = PrivateKeyDer::from_pem_file(&key_path)
            .with_context(|| format!("cannot read a private key from {}", key_path.display()))?;
        let mut roots = RootCertStore::empty();
        for c in ca {
            roots
                .add(c)
                .context("the CA certificate (ca.pem) is not usable")?;
        }
        let roots = Arc::new(roots);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .context("cannot build the client certificate verifier")?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .context("cert.pem and key.pem do not form a usable identity")?;
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .context("cert.pem and key.pem do not form a usable identity")?;
        Ok(TlsIdentity {
            client: Arc::new(client),
            server: Arc::new(server),
        })
    }
}

/// One migration connection, readable and writable from two threads at once
/// through `&Conn`.
pub struct Conn {
    tcp: TcpStream,
    tls: Option<Mutex<rustls::Connection>>,
    /// Read timeout in µs for the TLS path (0: none).
    read_timeout_us: AtomicU64,
}

/// Time allowed for a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A write that cannot make progress for this long fails.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

impl Conn {
    /// The client side (source): TLS handshake as configured.
    pub fn client(tcp: TcpStream, sec: &Security) -> Result<Conn> {
        match sec {
            Security::Plain => Ok(Conn::plain(tcp)),
            Security::Tls(id) => {
                let name = ServerName::try_from(SERVER_NAME).map_err(|e| anyhow!("{e}"))?;
                let c = ClientConnection::new(id.client.clone(), name)
                    .context("cannot start a TLS session")?;
                Conn::handshake(tcp, c.into()).map_err(|e| {
                    e.context("TLS handshake with the destination failed (does it run with --tls-dir and a certificate from the same CA?)")
                })
            }
        }
    }

    /// The server side (destination).
    pub fn server(tcp: TcpStream, sec: &Security) -> Result<Conn> {
        match sec {
            Security::Plain => {
                // A TLS ClientHello starts with a handshake record (0x16 0x03).
                let mut first = [0u8; 2];
                tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
                if tcp.peek(&mut first).ok() == Some(2) && first == [0x16, 0x03] {
                    bail!(
                        "the source speaks TLS but this destination was started with --tls-plain"
                    );
                }
                Ok(Conn::plain(tcp))
            }
            Security::Tls(id) => {
                let s = ServerConnection::new(id.server.clone())
                    .context("cannot start a TLS session")?;
                Conn::handshake(tcp, s.into()).map_err(|e| {
                    e.context("TLS handshake with the source failed (it needs --tls-dir with a certificate from this destination's CA)")
                })
            }
        }
    }

    fn plain(tcp: TcpStream) -> Conn {
        Conn {
            tcp,
            tls: None,
            read_timeout_us: AtomicU64::new(0),
        }
    }

    fn handshake(mut tcp: TcpStream, mut c: rustls::Connection) -> Result<Conn> {
        tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        tcp.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
        while c.is_handshaking() {
            c.complete_io(&mut tcp).map_err(|e| match e.kind() {
                io::ErrorKind::InvalidData => anyhow!("{e}"),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => {
                    anyhow!("the peer closed the connection during the handshake (it refused our certificate, or does not speak TLS)")
                }
                _ => anyhow!(e),
            })?;
        }
        // Flush what the handshake left (e.g. the client's Finished).
        while c.wants_write() {
            c.write_tls(&mut tcp)?;
        }
        tcp.set_nonblocking(true)?;
        Ok(Conn {
            tcp,
            tls: Some(Mutex::new(c)),
            read_timeout_us: AtomicU64::new(0),
        })
    }

    /// The TCP socket (for socket options).
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Sets socket option `option` of `level` to the integer `value`.
    pub fn set_option<T: Copy>(
        &self,
        level: libc::c_int,
        option: libc::c_int,
        value: T,
    ) -> io::Result<()> {
        // SAFETY: setsockopt with a pointer to a live `T` and its size; the
        // callers pass the integer type the option takes (`c_int` for most,
        // a 64-bit value for `SO_MAX_PACING_RATE`).
        let rc = unsafe {
            libc::setsockopt(
                self.tcp.as_raw_fd(),
                level,
                option,
                (&value as *const T).cast(),
                std::mem::size_of::<T>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Bytes written to the socket that the peer has not acknowledged yet
    /// (Linux `SIOCOUTQ`): what is still queued on this host or on the link.
    pub fn unacked_bytes(&self) -> io::Result<usize> {
        let mut n: libc::c_int = 0;
        // SAFETY: SIOCOUTQ (= TIOCOUTQ) on a TCP socket stores one c_int
        // through the pointer, which points at a live c_int.
        let rc = unsafe { libc::ioctl(self.tcp.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n.max(0) as usize)
    }

    /// Marks the connection as the fault path: its packets carry the
    /// interactive priority (`SO_PRIORITY` 6, `TC_PRIO_INTERACTIVE`), which
    /// a host's priority queueing (Linux's `pfifo_fast` and `prio` map it
    /// to their first band; a NIC's traffic classes likewise) sends ahead
    /// of the bulk push. Unprivileged: priorities 0–6 need no capability.
    pub fn mark_fault_path(&self) -> io::Result<()> {
        self.set_option(libc::SOL_SOCKET, libc::SO_PRIORITY, 6)
    }

    /// Whether this connection is TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match &self.tls {
            None => self.tcp.set_read_timeout(t),
            Some(_) => {
                let us = t.map(|d| d.as_micros().clamp(1, u64::MAX as u128) as u64);
                self.read_timeout_us
                    .store(us.unwrap_or(0), Ordering::Relaxed);
                Ok(())
            }
        }
    }

    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match &self.tls {
            None => self.tcp.set_write_timeout(t),
            Some(_) => Ok(()), // the TLS path bounds writes with WRITE_TIMEOUT
        }
    }

    pub fn shutdown(&self, how: Shutdown) {
        let _ = self.tcp.shutdown(how);
    }

    fn lock(&self) -> Option<MutexGuard<'_, rustls::Connection>> {
        self.tls
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn tls_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let timeout = match self.read_timeout_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Instant::now() + Duration::from_micros(us)),
        };
        loop {
            {
                let Some(mut c) = self.lock() else {
                    return Ok(0);
                };
                match c.reader().read(buf) {
                    Ok(n) => return Ok(n), // 0: the peer closed cleanly
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                match c.read_tls(&mut &self.tcp) {
                    Ok(0) => return Ok(0),
                    Ok(_) => {
                        c.process_new_packets()
                            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            let wait = match timeout {
                None => -1,
                Some(t) => {
                    let left = t.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out"));
                    }
                    left.as_millis().clamp(1, i32::MAX as u128) as i32
                }
            };
            poll_fd(&self.tcp, libc::POLLIN, wait)?;
        }
    }

    fn tls_write(&self, buf: &[u8]) -> io::Result<usize> {
        let Some(mut c) = self.lock() else {
            return Ok(0);
        };
        let deadline = Instant::now() + WRITE_TIMEOUT;
        let mut done = 0;
        loop {
            // rustls buffers a bounded amount: hand it what it takes,
            // send, and repeat until all of `buf` is out.
            if done < buf.len() {
                done += c.writer().write(&buf[done..])?;
            }
            let mut blocked = false;
            while c.wants_write() {
                match c.write_tls(&mut &self.tcp) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        blocked = true;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if done == buf.len() && !c.wants_write() {
                return Ok(buf.len());
            }
            if blocked {
                // Wait for room without holding the lock for the reader.
                drop(c);
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "write timed out"));
                }
                poll_fd(
                    &self.tcp,
                    libc::POLLOUT,
                    left.as_millis().clamp(1, 60_000) as i32,
                )?;
                c = match self.lock() {
                    Some(c) => c,
                    None => return Ok(0),
                };
            }
        }
    }
}

fn poll_fd(s: &TcpStream, events: libc::c_short, timeout_ms: i32) -> io::Result<()> {
    let mut p = libc::pollfd {
        fd: s.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack for the duration of the call.
    let rc = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

impl Read for &Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.tls {
            None => (&self.tcp).read(buf),
            Some(_) => self.tls_read(buf),
        }
    }
}

impl Write for &Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &self.tls {
            None => (&self.tcp).write(buf),
            Some(_) => self.tls_write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
