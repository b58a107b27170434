//! The snapshot file reader (`godwit restore`, `snapshot::load`), on the
//! file's bytes (`snapshot::decode`). Oracle: no panic; the reader holds
//! no more heap than the file justifies, whatever sizes its header, state
//! and bitmap claim; a snapshot that reads is copied into RAM of the size
//! it claims (when small) without a panic.
#![no_main]

use godwit_fuzz::alloc;
use godwit_machine::snapshot;
use godwit_memory::GuestRam;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limit = (4 << 20) + 64 * data.len();
    let Ok(snap) = alloc::bounded("snapshot::decode", limit, || snapshot::decode(data)) else {
        return;
    };
    let ram_bytes = snap.state.board.ram_bytes;
    if (4096..=16 << 20).contains(&ram_bytes) && ram_bytes % 4096 == 0 {
        let ram = GuestRam::new(0x8000_0000, ram_bytes as usize).expect("small RAM");
        let _ = snap.fill_ram(&ram);
    }
});
