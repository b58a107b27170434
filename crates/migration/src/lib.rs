//! Live migration engine for Godwit.
//!
//! Knows nothing about RISC-V: it sees guest RAM as a host mapping plus the
//! dirty log and the free-page map (`godwit-memory`), and the VM as
//! pause / resume / save-state / load-state ([`SourceVm`], [`DestVm`]), so a
//! KVM backend could use it unchanged.
//!
//! - [`source::migrate`] runs on the source VMM (stop-and-copy, pre-copy,
//!   post-copy, hybrid);
//! - [`dest::Incoming`] on the destination: accepts the two connections,
//!   checks the handshake, then receives into a fresh VM.
//!
//! The protocol is in [`wire`], the post-copy push order in [`prepaging`],
//! the `userfaultfd` wrapper in [`uffd`].

pub mod converge;
pub mod dest;
pub mod prepaging;
pub mod source;
pub mod stats;
pub mod transport;
pub mod uffd;
pub mod wire;

use godwit_memory::GuestRam;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

pub use prepaging::Strategy;
pub use stats::{Committed, Progress, Report, Status};
pub use transport::Security;

/// The source VM, as the engine needs it. All methods are called from the
/// migration thread while the vCPU runs on its own.
pub trait SourceVm: Send + Sync {
    /// Guest RAM (shared with the vCPU).
    fn ram(&self) -> Arc<GuestRam>;
    /// The board the VM runs on, described by the VMM (the handshake
    /// carries it; the destination refuses a board that differs from its
    /// own before the source pauses).
    fn board(&self) -> String;
    /// Stops the vCPU; returns how long that took.
    fn pause(&self) -> anyhow::Result<Duration>;
    /// Lets the vCPU run again (after a cancelled or failed migration).
    fn resume(&self) -> anyhow::Result<()>;
    /// The complete machine state (not RAM) as bytes; the VM is paused.
    fn save_state(&self) -> anyhow::Result<Vec<u8>>;
    /// Dirty logging on (cleared) or off.
    fn set_dirty_logging(&self, on: bool) -> anyhow::Result<()>;
    /// Fetch-and-clear of the dirty log (bitmap words).
    fn take_dirty_log(&self) -> anyhow::Result<Vec<u64>>;
    /// Asks the guest to hint its free pages (virtio-balloon free page
    /// hinting); false if the VM or the guest cannot.
    fn start_free_page_hints(&self) -> anyhow::Result<bool>;
    /// Ends a hinting run: the guest may reuse its hinted pages.
    fn stop_free_page_hints(&self) -> anyhow::Result<()>;
    /// Pages the paused vCPU used last (RAM page indices), pushed first in
    /// post-copy. None known: empty.
    fn hot_pages(&self) -> anyhow::Result<Vec<usize>> {
        Ok(Vec::new())
    }
    /// Frames that reached the paused VM's NICs from the network and were
    /// not delivered (NIC ordinal, frame with its virtio-net header), taken
    /// once the destination has announced the VM (just before `Go`). The
    /// destination delivers them first, so nothing sent to the VM around
    /// the switch is lost. No NICs: empty.
    fn take_host_frames(&self) -> anyhow::Result<Vec<(u16, Vec<u8>)>> {
        Ok(Vec::new())
    }
    /// Throttles the vCPUs for pre-copy's auto-converge: `permille` of
    /// their time asleep instead of running (0: off, at most
    /// [`converge::MAX_THROTTLE`]). Returns the time the vCPUs slept for
    /// the throttle so far, summed over vCPUs.
    fn set_throttle(&self, permille: u32) -> anyhow::Result<Duration>;
    /// Post-copy with failover: the destination was lost, and the paused VM
    /// (its RAM already holding the checkpoint's pages) takes the state of
    /// the last complete checkpoint, which the destination saved. It is
    /// resumed with [`resume`](Self::resume) after. Its clock must not go
    /// back: wait until it has reached the checkpoint's time.
    fn load_checkpoint(&self, state: &[u8]) -> anyhow::Result<()> {
        let _ = state;
        anyhow::bail!("this VM cannot be resumed from a checkpoint")
    }
    /// After [`load_checkpoint`](Self::load_checkpoint): takes the disks
    /// back, makes `writes` (the confirmed checkpoints' disk writes, in
    /// order, some perhaps made already by the destination) on them and
    /// resumes, as [`resume`](Self::resume) does.
    fn resume_with_disk_writes(&self, writes: &[wire::DiskWrite]) -> anyhow::Result<()> {
        if !writes.is_empty() {
            anyhow::bail!("this VM cannot replay disk writes");
        }
        self.resume()
    }
}

/// The destination VM: built empty with the RAM size from the handshake,
/// paused until the engine resumes it.
pub trait DestVm: Send + Sync {
    /// Guest RAM (the engine writes pages into it or serves its faults).
    fn ram(&self) -> Arc<GuestRam>;
    /// Loads the machine state the source saved.
    fn load_state(&self, state: &[u8]) -> anyhow::Result<()>;
    /// Starts the vCPU. In post-copy it must not wait for anything that
    /// touches guest memory (a device, a vCPU): pages arrive only once
    /// this returns and the engine reads on.
    fn resume(&self) -> anyhow::Result<()>;
    /// Turns dirty logging on or off (post-copy uses it to count pushed pages
    /// the guest then wrote: pre-paging hits).
    fn set_dirty_logging(&self, on: bool) -> anyhow::Result<()>;
    /// Fetch-and-clear of the dirty log.
    fn take_dirty_log(&self) -> anyhow::Result<Vec<u64>>;
    /// The frames the source took from its NICs after the pause
    /// ([`SourceVm::take_host_frames`]); called before `resume`.
    fn deliver_host_frames(&self, frames: Vec<(u16, Vec<u8>)>) -> anyhow::Result<()> {
        let _ = frames;
        Ok(())
    }
    /// Where the incoming migration is, for `query-migrate` at the
    /// destination (`active`, `device`, `postcopy-active`,
    /// `postcopy-paused`, `postcopy-recover`, `completed`, `failed`).
    fn set_status(&self, _status: Status) {}
    /// Whether the destination's operator ended the migration (`quit`): the
    /// engine then gives up at once, whatever it was waiting for.
    fn aborted(&self) -> bool {
        false
    }
    /// Post-copy with checkpoints: pauses the VM for one (vCPUs and devices
    /// stopped within `limit`). False: they did not stop in time (a vCPU
    /// waits for a page) and the VM runs again; no checkpoint now.
    fn pause_checkpoint(&self, limit: Duration) -> anyhow::Result<bool> {
        let _ = limit;
        anyhow::bail!("this VM cannot take checkpoints")
    }
    /// The machine state of the VM paused by
    /// [`pause_checkpoint`](Self::pause_checkpoint).
    fn save_state(&self) -> anyhow::Result<Vec<u8>> {
        anyhow::bail!("this VM cannot take checkpoints")
    }
    /// Ends a checkpoint's pause.
    fn resume_checkpoint(&self) -> anyhow::Result<()> {
        Ok(())
    }
    /// From now on the VM's output waits, tagged by epoch (0 first), until
    /// released: its NICs' frames and its writable disks' writes.
    fn hold_output(&self) -> anyhow::Result<()> {
        Ok(())
    }
    /// In a checkpoint's pause: output from now on belongs to `epoch`.
    fn mark_output(&self, epoch: u64) {
        let _ = epoch;
    }
    /// Sends the held output of epochs before `epoch` (its checkpoint is
    /// safe at the source); `None`: all of it, and output is not held any
    /// more.
    fn release_output(&self, epoch: Option<u64>) {
        let _ = epoch;
    }
    /// In a checkpoint's pause: copies of the disk writes held with epochs
    /// `from..to`, in order per disk, for the source to keep.
    fn held_disk_writes(&self, from: u64, to: u64) -> Vec<wire::DiskWrite> {
        let _ = (from, to);
        Vec::new()
    }
    /// What holding output did, for the report.
    fn held_output(&self) -> Value {
        Value::Null
    }
    /// The source may resume the VM from a checkpoint now: stop it here
    /// for good (what it sent since the last safe checkpoint is dropped).
    fn fence(&self) {}
}

/// How the VM moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    StopAndCopy,
    Precopy,
    Postcopy,
    Hybrid,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        Ok(match s {
            "stop-and-copy" => Mode::StopAndCopy,
            "precopy" | "pre-copy" => Mode::Precopy,
            "postcopy" | "post-copy" => Mode::Postcopy,
            "hybrid" => Mode::Hybrid,
            _ => {
                return Err(format!(
                "unknown migration mode '{s}' (choose stop-and-copy, precopy, postcopy or hybrid)"
            ))
            }
        })
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::StopAndCopy => "stop-and-copy",
            Mode::Precopy => "precopy",
            Mode::Postcopy => "postcopy",
            Mode::Hybrid => "hybrid",
        })
    }
}

/// Migration parameters (`migrate-set-parameters` and `migrate` arguments).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Params {
    pub mode: Mode,
    pub prepaging: Strategy,
    /// Bytes per second on the wire, 0 for no limit. In post-copy it paces
    /// the push only; demand replies are never held back.
    pub max_bandwidth: u64,
    /// Pre-copy stops iterating when the rest fits in this many ms.
    pub downtime_limit_ms: u64,
    /// Pre-copy gives up iterating after this many rounds.
    pub max_rounds: u32,
    /// Hybrid: pre-copy rounds before switching to post-copy.
    pub hybrid_rounds: u32,
    /// Ask the guest for free page hints when migration starts.
    pub free_page_hints: bool,
    /// How long the destination watches the guest after completion before
    /// it sends its report (for "throughput after").
    pub after_window_ms: u64,
    /// Folder with the TLS identity (`ca.pem`, `cert.pem`, `key.pem`).
    pub tls_creds: Option<std::path::PathBuf>,
    /// Plain TCP, explicitly: no authentication, no encryption.
    pub tls_plain: bool,
    /// Post-copy: push the pages the vCPU used last before anything else.
    pub hot_pages_first: bool,
    /// Post-copy (with `hot_pages_first`): also send the pages the vCPUs
    /// use while the VM still runs, before the pause (with the dirty log on,
    /// so only those written since are sent again).
    pub hot_pages_ahead: bool,
    /// Pre-copy and hybrid: throttle the vCPUs while the guest dirties
    /// memory faster than the rounds send it (see [`converge`]).
    pub auto_converge: bool,
    /// Post-copy and hybrid: protect the VM against the loss of the
    /// destination. After the switch the destination sends checkpoints
    /// back; if the source hears nothing from it for this many ms (and no
    /// `migrate --resume` reconnects within that time), the source resumes
    /// the VM from the last complete checkpoint. 0: off.
    pub failover_ms: u64,
    /// With `failover_ms`: ms between the destination's checkpoints.
    pub checkpoint_ms: u64,
    /// How page batches of the bulk transfer (pre-copy rounds, the
    /// stop-and-copy pass) are compressed on the wire.
    pub compress: wire::Codec,
    /// Connections (and sending threads) the bulk transfer is spread over,
    /// 1..=[`MAX_CHANNELS`]: each page always travels on the same one, so
    /// its copies arrive in order; compression and TLS run on each
    /// channel's own thread. Post-copy's push and demand stay on the main
    /// connection.
    pub channels: u32,
}

/// Most bulk channels (the main connection and [`wire::MAX_BULK`] more).
pub const MAX_CHANNELS: u32 = wire::MAX_BULK as u32 + 1;

impl Params {
    /// The connection security these parameters ask for; one of TLS
    /// credentials or an explicit plain TCP is required.
    pub fn security(&self) -> anyhow::Result<Security> {
        match (&self.tls_creds, self.tls_plain) {
            (Some(_), true) => anyhow::bail!("tls-creds and tls-plain exclude each other"),
            (Some(dir), false) => Security::from_dir(Some(dir)),
            (None, true) => Ok(Security::Plain),
            (None, false) => anyhow::bail!(
                "a migration needs TLS credentials (tls-creds: a folder made by `godwit tls-gen`) or an explicit tls-plain"
            ),
        }
    }
}

impl Default for Params {
    fn default() -> Params {
        Params {
            mode: Mode::Postcopy,
            prepaging: Strategy::Dual,
            max_bandwidth: 0,
            downtime_limit_ms: 300,
            max_rounds: 30,
            hybrid_rounds: 1,
            free_page_hints: true,
            after_window_ms: 1000,
            tls_creds: None,
            tls_plain: false,
            hot_pages_first: true,
            hot_pages_ahead: true,
            auto_converge: false,
            failover_ms: 0,
            checkpoint_ms: 50,
            compress: wire::Codec::None,
            channels: 1,
        }
    }
}

/// ORs the bitmap words `more` into `acc` (as far as both go).
pub(crate) fn or_into(acc: &mut [u64], more: &[u64]) {
    for (a, b) in acc.iter_mut().zip(more) {
        *a |= b;
    }
}

/// Host wall-clock time in Unix nanoseconds (0 if the clock is before
/// 1970). Both VMMs of a testbed share one clock, so the source's pause and
/// the destination's resume can be compared.
pub fn unix_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Runs the calling thread at a higher scheduling priority (nice -10) if
/// the host allows it: the post-copy fault path (demand requests and
/// replies) must not wait for a core behind the bulk push threads. Without
/// the privilege the thread keeps its priority; nothing else changes.
pub(crate) fn fault_path_priority() {
    // SAFETY: gettid and setpriority take plain integers and touch no memory.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, -10);
    }
}
