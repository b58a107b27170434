//! The `sifive,test0` device of QEMU's `virt` board: one register that
//! powers the machine off or resets it. M-mode firmware (OpenSBI) drives it
//! through the device tree's `syscon-poweroff` and `syscon-reboot` nodes to
//! carry out the SBI's system reset; the built-in SBI does not need it.

use crate::MmioDevice;

/// Size of the device's MMIO region.
pub const FINISHER_MMIO_SIZE: u64 = 0x1000;
/// Value (low 16 bits) that powers off.
pub const FINISHER_PASS: u32 = 0x5555;
/// Value (low 16 bits) that powers off reporting a failure (code in the
/// high 16 bits).
pub const FINISHER_FAIL: u32 = 0x3333;
/// Value (low 16 bits) that resets.
pub const FINISHER_RESET: u32 = 0x7777;

/// What the guest asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinisherRequest {
    /// Power off.
    PowerOff,
    /// Power off with a failure code.
    Fail(u16),
    /// Reset.
    Reset,
}

/// The device. It holds the first request until the machine takes it.
#[derive(Default)]
pub struct Finisher {
    request: Option<FinisherRequest>,
}

impl Finisher {
    /// The guest's request, once.
    pub fn take_request(&mut self) -> Option<FinisherRequest> {
        self.request.take()
    }
}

impl MmioDevice for Finisher {
    fn read(&mut self, _offset: u64, _size: u8) -> u64 {
        0
    }

    /// A 32-bit store at offset 0; other values and offsets are ignored.
    fn write(&mut self, offset: u64, size: u8, value: u64) {
        if offset != 0 || size != 4 {
            return;
        }
        let v = value as u32;
        let r = match v & 0xffff {
            FINISHER_PASS => FinisherRequest::PowerOff,
            FINISHER_FAIL => FinisherRequest::Fail((v >> 16) as u16),
            FINISHER_RESET => FinisherRequest::Reset,
            _ => return,
        };
        self.request.get_or_insert(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        let mut f = Finisher::default();
        f.write(0, 4, 0x1234);
        f.write(4, 4, u64::from(FINISHER_PASS));
        f.write(0, 2, u64::from(FINISHER_PASS));
        assert_eq!(f.take_request(), None);
        f.write(0, 4, u64::from(FINISHER_FAIL | 7 << 16));
        f.write(0, 4, u64::from(FINISHER_RESET));
        assert_eq!(f.take_request(), Some(FinisherRequest::Fail(7)));
        assert_eq!(f.take_request(), None);
        f.write(0, 4, u64::from(FINISHER_RESET));
        assert_eq!(f.take_request(), Some(FinisherRequest::Reset));
    }
}
