//! virtio-net under a hostile driver (see `godwit_fuzz::virtio`): transmit
//! chains (virtio-net header and frame), receive buffers (mergeable or
//! not), control-queue commands, on an in-memory backend (no TAP): host
//! actions put frames on the "wire" for the guest, forward migrated
//! frames, announce, send host frames.
#![no_main]

use godwit_devices::virtio::net::{HDR_LEN, MAX_FRAME};
use godwit_devices::{Net, NetBackend, NetConfig, VirtioDevice, VirtioMmio};
use godwit_fuzz::input::Input;
use godwit_fuzz::virtio::{self, Rig};
use godwit_memory::GuestRam;
use libfuzzer_sys::fuzz_target;
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

/// Frames waiting for the guest, shared by the rig and its backend.
type Wire = Arc<Mutex<VecDeque<Vec<u8>>>>;

/// A backend in memory: receives what the rig queued, drops what is sent
/// (after checking it is a whole frame with its header).
struct MemBackend {
    rx: Wire,
}

impl NetBackend for MemBackend {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut rx = self.rx.lock().unwrap_or_else(|p| p.into_inner());
        let Some(f) = rx.pop_front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let n = f.len().min(buf.len());
        buf[..n].copy_from_slice(&f[..n]);
        Ok(n)
    }
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        assert!(
            frame.len() <= MAX_FRAME,
            "the device sent a frame of {} bytes (most is {MAX_FRAME})",
            frame.len()
        );
        Ok(())
    }
    fn fd(&self) -> Option<RawFd> {
        None
    }
    fn set_offloads(&mut self, _: bool, _: bool, _: bool) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Default)]
struct NetRig {
    wire: Wire,
}

impl Rig for NetRig {
    fn device(&mut self, _: &Arc<GuestRam>, flags: u8) -> Box<dyn VirtioDevice> {
        self.wire = Wire::default();
        let config = NetConfig {
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            offloads: flags & 1 == 0,
        };
        Box::new(Net::new(
            config,
            Box::new(MemBackend {
                rx: self.wire.clone(),
            }),
        ))
    }

    fn host(&mut self, dev: &mut VirtioMmio, what: u8, arg: u32, input: &mut Input) {
        // A frame: a virtio-net header from the input, then `arg` bytes
        // (up to a TSO segment) of the input repeated.
        let mut frame = || {
            let len = (arg as usize % (MAX_FRAME + 64)).max(1);
            let seed = input.bytes(HDR_LEN + 16);
            let mut f = vec![0u8; len];
            if !seed.is_empty() {
                for (i, b) in f.iter_mut().enumerate() {
                    *b = seed[i % seed.len()];
                }
            }
            f
        };
        match what % 5 {
            0 => {
                let f = frame();
                self.wire
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_back(f);
            }
            1 => {
                let f = frame();
                if let Some(n) = dev.device_as_mut::<Net>() {
                    n.deliver_forwarded(f);
                }
            }
            2 => {
                if let Some(n) = dev.device_as_mut::<Net>() {
                    n.announce();
                }
            }
            3 => {
                // The host's own frames (RARP announcements): well formed.
                let mut f = frame();
                f.truncate(MAX_FRAME);
                if let Some(n) = dev.device_as_mut::<Net>() {
                    let _ = n.send_host_frame(&f);
                }
            }
            _ => {
                if let Some(n) = dev.device_as_mut::<Net>() {
                    n.take_backend_frames(arg as usize % 8);
                    let _ = n.counters();
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| virtio::run(&mut NetRig::default(), data));
