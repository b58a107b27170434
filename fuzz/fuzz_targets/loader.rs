//! The kernel, initrd and firmware loaders (`godwit run --kernel --initrd
//! --bios`): `parse_image`, `check_firmware`, and `load` placing them in
//! guest RAM, then the firmware and its info page as `Vm::boot` writes
//! them.
//!
//! Input: `ram:u8 flags:u8 split:u16 bytes...`: RAM of 2, 4, 8 or 16 MiB;
//! the kernel is `bytes[..split]`, the initrd the rest when `flags & 1`,
//! the kernel is also tried as firmware when `flags & 2`. Oracle: no
//! panic, no overflow (built with `-a`: overflow checks on), and a
//! placement that keeps the kernel, the initrd and the device tree inside
//! RAM and apart.
#![no_main]

use godwit_fuzz::input::Input;
use godwit_machine::loader::{self, FirmwareInfo, DTB_RESERVE};
use godwit_memory::GuestRam;
use libfuzzer_sys::fuzz_target;

const RAM_BASE: u64 = 0x8000_0000;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let size = (2usize << 20) << (input.u8() % 4);
    let flags = input.u8();
    let split = usize::from(input.u16());
    let rest = input.rest();
    let (kernel, initrd) = rest.split_at(split.min(rest.len()));
    let initrd = (flags & 1 != 0).then_some(initrd);
    let _ = loader::parse_image("kernel", kernel);
    let fw_ok = loader::check_firmware("firmware", kernel).is_ok();
    let ram = GuestRam::new(RAM_BASE, size).expect("guest RAM");
    let Ok(p) = loader::load(&ram, "kernel", kernel, initrd) else {
        return;
    };
    let end = RAM_BASE + size as u64;
    assert!(p.kernel_entry >= RAM_BASE && p.kernel_entry <= p.kernel_end);
    assert!(p.kernel_end <= p.dtb, "kernel overlaps the device tree");
    assert!(p.dtb + DTB_RESERVE <= end, "device tree beyond RAM");
    if let Some((s, e)) = p.initrd {
        assert!(
            s >= p.kernel_end && s <= e && e <= p.dtb,
            "initrd misplaced"
        );
    }
    if flags & 2 != 0 && fw_ok {
        ram.write(RAM_BASE, kernel)
            .expect("firmware fits below the kernel");
        let info = FirmwareInfo {
            next_addr: p.kernel_entry,
        };
        ram.write(p.fw_info, &info.bytes())
            .expect("the info page is in RAM");
    }
});
