//! `VmState::decode`: the machine state a migration source (or a snapshot
//! file) hands over. Oracle: no panic; the decoder holds no more heap than
//! the input justifies (postcard with serde's cautious preallocation);
//! a decoded state re-encodes to bytes that decode to the same encoding;
//! and every part then restores into fresh devices as `Vm::restore` does,
//! or is refused, without a panic, including a virtio transport whose
//! restored queues are served once.
#![no_main]

use godwit_devices::{
    Balloon, BalloonFeatures, Block, Clint, Net, NetConfig, Plic, Uart16550, VirtioDevice,
    VirtioMmio,
};
use godwit_fuzz::alloc;
use godwit_fuzz::fakes::{MemDisk, NullNet};
use godwit_hart::Hart;
use godwit_machine::layout::PLIC_SOURCES;
use godwit_machine::{DeviceConfig, VmState};
use godwit_memory::GuestRam;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

const RAM_BASE: u64 = 0x8000_0000;

fuzz_target!(|data: &[u8]| {
    let limit = (4 << 20) + 64 * data.len();
    let Ok(state) = alloc::bounded("VmState::decode", limit, || VmState::decode(data)) else {
        return;
    };
    let bytes = state.encode();
    let again = VmState::decode(&bytes).expect("an encoded state decodes");
    assert_eq!(again.encode(), bytes, "state does not re-encode the same");
    let _ = state.board.validate();

    let ram = Arc::new(GuestRam::new(RAM_BASE, 1 << 20).expect("1 MiB of RAM"));
    let n = state.board.harts.clamp(1, 8);
    for (i, h) in state.harts.iter().take(8).enumerate() {
        let mut hart = Hart::new(i as u64, ram.clone(), RAM_BASE, 0);
        hart.restore(&h.cpu);
    }
    Uart16550::new(Box::new(std::io::sink())).restore(&state.uart);
    let _ = Plic::new(PLIC_SOURCES, 2 * n).restore(&state.plic);
    let _ = Clint::new(n, Box::new(|| 0)).restore(&state.clint);
    for (cfg, saved) in state.board.devices.iter().zip(&state.devices).take(8) {
        let dev: Box<dyn VirtioDevice> = match cfg {
            DeviceConfig::Balloon => Box::new(Balloon::new(BalloonFeatures::default(), &ram)),
            DeviceConfig::Net { mac, offloads } => Box::new(Net::new(
                NetConfig {
                    mac: *mac,
                    offloads: *offloads,
                },
                Box::new(NullNet),
            )),
            DeviceConfig::Block {
                bytes,
                readonly,
                id,
            } => {
                if *bytes > 1 << 20 {
                    continue;
                }
                let disk = MemDisk::new(*bytes as usize);
                match Block::new(Box::new(disk), *readonly, id) {
                    Ok(b) => Box::new(b),
                    Err(_) => continue,
                }
            }
        };
        let mut mmio = VirtioMmio::new(dev, ram.clone());
        if mmio.restore(saved).is_ok() {
            mmio.process();
            mmio.release_held();
        }
    }
});
