//! The SBI, implemented in the VMM: an `ecall` from S-mode lands here
//! instead of in M-mode firmware (as semu and kvmtool do).
//!
//! Extensions (SBI spec 1.0): BASE, TIME, IPI, RFENCE, HSM, SRST, and the
//! legacy console putchar/getchar, set_timer and shutdown calls.

use godwit_hart::Hart;

const EXT_BASE: u64 = 0x10;
const EXT_TIME: u64 = 0x5449_4d45;
const EXT_IPI: u64 = 0x0073_5049;
const EXT_RFENCE: u64 = 0x5246_4e43;
const EXT_HSM: u64 = 0x0048_534d;
const EXT_SRST: u64 = 0x5352_5354;
const LEGACY_SET_TIMER: u64 = 0x00;
const LEGACY_PUTCHAR: u64 = 0x01;
const LEGACY_GETCHAR: u64 = 0x02;
const LEGACY_SHUTDOWN: u64 = 0x08;

const SUCCESS: i64 = 0;
const ERR_NOT_SUPPORTED: i64 = -2;
const ERR_INVALID_PARAM: i64 = -3;
const ERR_ALREADY_AVAILABLE: i64 = -6;

/// HSM `hart_get_status` values.
const HSM_STATUS_STARTED: u64 = 0;
const HSM_STATUS_STOPPED: u64 = 1;

/// SBI implementation id reported by `sbi_get_impl_id` (not an assigned one).
pub const IMPL_ID: u64 = 0x676f_6477;

/// What the machine provides to the SBI: the console.
pub trait SbiHost {
    /// Legacy console output.
    fn console_putchar(&mut self, byte: u8);
    /// Legacy console input, if a byte is waiting.
    fn console_getchar(&mut self) -> Option<u8>;
}

/// A remote fence the guest asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteFence {
    /// `fence.i` on the target harts.
    FenceI,
    /// `sfence.vma` (any range, any ASID: all of it) on the target harts.
    SfenceVma,
}

/// Why `hart_start` failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HsmError {
    /// No such hart.
    InvalidParam,
    /// The hart is already started (or starting).
    AlreadyAvailable,
}

/// What the machine provides to the SBI: the other harts.
pub trait SbiHarts {
    /// Number of harts.
    fn count(&self) -> usize;
    /// Raises a supervisor software interrupt on `harts` (the caller, `me`,
    /// may be among them).
    fn send_ipi(&mut self, me: &mut Hart, harts: &[usize]);
    /// Runs `fence` on `harts` and returns once every one of them did.
    fn remote_fence(&mut self, me: &mut Hart, harts: &[usize], fence: RemoteFence);
    /// Whether `hart` is started (`None`: no such hart).
    fn status(&self, hart: usize) -> Option<bool>;
    /// Starts a stopped hart at `addr` in S-mode with `a0` = its id and
    /// `a1` = `opaque`.
    fn start(&mut self, hart: usize, addr: u64, opaque: u64) -> Result<(), HsmError>;
    /// Stops the calling hart (it waits for a `hart_start`).
    fn stop_self(&mut self);
}

/// How the guest asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetRequest {
    /// Power off; `failure` when the guest gave "system failure" as reason.
    Shutdown { failure: bool },
    /// Cold or warm reboot; `failure` as for `Shutdown`.
    Reboot { failure: bool },
}

/// Handles the SBI call the hart stopped at; `Some` when the guest asked
/// for the system to stop.
pub fn handle(
    hart: &mut Hart,
    host: &mut dyn SbiHost,
    harts: &mut dyn SbiHarts,
) -> Option<ResetRequest> {
    let ext = hart.reg(17);
    let fid = hart.reg(16);
    let a0 = hart.reg(10);
    let a1 = hart.reg(11);
    let n = harts.count();
    match ext {
        EXT_BASE => {
            let (err, val) = match fid {
                0 => (SUCCESS, 1 << 24), // spec version 1.0
                1 => (SUCCESS, IMPL_ID),
                2 => (SUCCESS, 1),
                3 => (SUCCESS, probe(a0) as u64),
                4..=6 => (SUCCESS, 0),
                _ => (ERR_NOT_SUPPORTED, 0),
            };
            hart.sbi_return(err, val);
        }
        EXT_TIME if fid == 0 => {
            hart.set_timer(a0);
            hart.sbi_return(SUCCESS, 0);
        }
        EXT_IPI if fid == 0 => match targets(a0, a1, n) {
            Some(t) => {
                harts.send_ipi(hart, &t);
                hart.sbi_return(SUCCESS, 0);
            }
            None => hart.sbi_return(ERR_INVALID_PARAM, 0),
        },
        EXT_RFENCE if fid <= 2 => match targets(a0, a1, n) {
            // remote fence.i, sfence.vma and sfence.vma.asid: a full flush
            // is a superset of any range or ASID asked for.
            Some(t) => {
                let fence = if fid == 0 {
                    RemoteFence::FenceI
                } else {
                    RemoteFence::SfenceVma
                };
                harts.remote_fence(hart, &t, fence);
                hart.sbi_return(SUCCESS, 0);
            }
            None => hart.sbi_return(ERR_INVALID_PARAM, 0),
        },
        EXT_HSM => {
            let (err, val) = match fid {
                // hart_start(hartid, start_addr, opaque)
                0 => match harts.start(a0 as usize, a1, hart.reg(12)) {
                    Ok(()) => (SUCCESS, 0),
                    Err(HsmError::InvalidParam) => (ERR_INVALID_PARAM, 0),
                    Err(HsmError::AlreadyAvailable) => (ERR_ALREADY_AVAILABLE, 0),
                },
                // hart_stop(): does not return on success.
                1 => {
                    harts.stop_self();
                    (SUCCESS, 0)
                }
                // hart_get_status(hartid)
                2 => match harts.status(a0 as usize) {
                    Some(true) => (SUCCESS, HSM_STATUS_STARTED),
                    Some(false) => (SUCCESS, HSM_STATUS_STOPPED),
                    None => (ERR_INVALID_PARAM, 0),
                },
                // hart_suspend(type, ...): a retentive suspend (type 0) is
                // a `wfi` that returns at once; non-retentive ones are not
                // offered.
                3 if a0 as u32 == 0 => (SUCCESS, 0),
                _ => (ERR_NOT_SUPPORTED, 0),
            };
            hart.sbi_return(err, val);
        }
        EXT_SRST if fid == 0 => {
            let req = match a0 {
                0 => Some(ResetRequest::Shutdown { failure: a1 == 1 }),
                1 | 2 => Some(ResetRequest::Reboot { failure: a1 == 1 }),
                _ => None,
            };
            match req {
                Some(r) => {
                    hart.sbi_return(SUCCESS, 0);
                    return Some(r);
                }
                None => hart.sbi_return(ERR_INVALID_PARAM, 0),
            }
        }
        LEGACY_SET_TIMER => {
            hart.set_timer(a0);
            legacy_return(hart, 0);
        }
        LEGACY_PUTCHAR => {
            host.console_putchar(a0 as u8);
            legacy_return(hart, 0);
        }
        LEGACY_GETCHAR => {
            let v = host.console_getchar().map(u64::from).unwrap_or(u64::MAX);
            legacy_return(hart, v);
        }
        LEGACY_SHUTDOWN => {
            legacy_return(hart, 0);
            return Some(ResetRequest::Shutdown { failure: false });
        }
        _ => hart.sbi_return(ERR_NOT_SUPPORTED, 0),
    }
    None
}

fn probe(ext: u64) -> bool {
    matches!(
        ext,
        EXT_BASE
            | EXT_TIME
            | EXT_IPI
            | EXT_RFENCE
            | EXT_HSM
            | EXT_SRST
            | LEGACY_SET_TIMER
            | LEGACY_PUTCHAR
            | LEGACY_GETCHAR
            | LEGACY_SHUTDOWN
    )
}

/// The harts an SBI hart mask names (`mask`, `base`; base = -1 means all
/// harts), or `None` when it names a hart that does not exist.
fn targets(mask: u64, base: u64, harts: usize) -> Option<Vec<usize>> {
    if base == u64::MAX {
        return Some((0..harts).collect());
    }
    let mut out = Vec::new();
    for bit in 0..64u64 {
        if mask & (1 << bit) != 0 {
            let h = base.checked_add(bit)?;
            if h >= harts as u64 {
                return None;
            }
            out.push(h as usize);
        }
    }
    Some(out)
}

/// Legacy calls return only `a0`.
fn legacy_return(hart: &mut Hart, a0: u64) {
    let a1 = hart.reg(11);
    hart.sbi_return(a0 as i64, a1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hart_masks() {
        assert_eq!(targets(1, 0, 1), Some(vec![0]));
        assert_eq!(targets(2, 0, 1), None, "hart 1 does not exist");
        assert_eq!(targets(0, u64::MAX, 3), Some(vec![0, 1, 2]));
        assert_eq!(targets(0b101, 1, 4), Some(vec![1, 3]));
        assert_eq!(targets(1, 1, 1), None);
        assert_eq!(targets(0, 0, 2), Some(vec![]));
        assert_eq!(targets(1 << 63, u64::MAX - 1, 2), None, "overflows");
    }
}
