//! The SBI, implemented in the VMM: an `ecall` from S-mode lands here
//! instead of in M-mode firmware (as semu and kvmtool do).
//!
//! Extensions: BASE (spec 1.0), TIME, IPI, RFENCE, HSM, SRST, and the legacy
//! console putchar/getchar, set_timer and shutdown calls.

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

/// SBI implementation id reported by `sbi_get_impl_id` (not an assigned one).
pub const IMPL_ID: u64 = 0x676f_6477;

/// What the machine provides to the SBI.
pub trait SbiHost {
    /// Legacy console output.
    fn console_putchar(&mut self, byte: u8);
    /// Legacy console input, if a byte is waiting.
    fn console_getchar(&mut self) -> Option<u8>;
}

/// How the guest asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetRequest {
    /// Power off; `failure` when the guest gave "system failure" as reason.
    Shutdown { failure: bool },
    /// Cold or warm reboot.
    Reboot,
}

/// Handles the SBI call the hart stopped at; `Some` when the guest asked
/// for the system to stop.
pub fn handle(hart: &mut Hart, host: &mut dyn SbiHost) -> Option<ResetRequest> {
    let ext = hart.reg(17);
    let fid = hart.reg(16);
    let a0 = hart.reg(10);
    let a1 = hart.reg(11);
    let hartid = 0u64; // one hart today; masks below are checked against it
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
        EXT_IPI if fid == 0 => {
            if targets(a0, a1, hartid) {
                hart.set_software_interrupt();
            }
            hart.sbi_return(SUCCESS, 0);
        }
        EXT_RFENCE if fid <= 6 => {
            // remote fence.i / sfence.vma(.asid) / hypervisor fences: the
            // only hart flushes everything (a superset of any request).
            if fid >= 3 {
                hart.sbi_return(ERR_NOT_SUPPORTED, 0);
            } else {
                if targets(a0, a1, hartid) {
                    hart.tlb_flush();
                }
                hart.sbi_return(SUCCESS, 0);
            }
        }
        EXT_HSM => {
            let (err, val) = match fid {
                0 if a0 == hartid => (ERR_ALREADY_AVAILABLE, 0), // hart_start
                0 => (ERR_INVALID_PARAM, 0),
                2 if a0 == hartid => (SUCCESS, 0), // hart_get_status: STARTED
                2 => (ERR_INVALID_PARAM, 0),
                // hart_stop of the last hart, or a retentive suspend: treat
                // the suspend as a `wfi` that returns at once.
                3 if a0 == 0 => (SUCCESS, 0),
                _ => (ERR_NOT_SUPPORTED, 0),
            };
            hart.sbi_return(err, val);
        }
        EXT_SRST if fid == 0 => {
            let req = match a0 {
                0 => Some(ResetRequest::Shutdown { failure: a1 == 1 }),
                1 | 2 => Some(ResetRequest::Reboot),
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

/// Whether hart `id` is in the SBI hart mask (`mask`, `base`; base = -1 means all).
fn targets(mask: u64, base: u64, id: u64) -> bool {
    if base == u64::MAX {
        return true;
    }
    id.checked_sub(base)
        .is_some_and(|bit| bit < 64 && mask & (1 << bit) != 0)
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
        assert!(targets(1, 0, 0));
        assert!(!targets(2, 0, 0));
        assert!(targets(0, u64::MAX, 0));
        assert!(!targets(1, 1, 0));
    }
}
