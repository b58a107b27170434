//! Seed inputs for every target, made with the real encoders (written by
//! `cargo run --example write_seeds`; nothing binary is committed).

use crate::fakes::{MemDisk, NullNet};
use crate::input::Output;
use crate::virtio::{op, probed, Program};
use godwit_devices::virtio::block::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use godwit_devices::{Balloon, BalloonFeatures, Block, Clint, Net, NetConfig, Plic, Uart16550};
use godwit_hart::{GuestClock, Hart};
use godwit_machine::state::{HartRun, SavedHart};
use godwit_machine::{BoardConfig, DeviceConfig, VmState};
use godwit_memory::GuestRam;
use godwit_migration::wire::{Channel, Codec, DiskOp, DiskWrite, Hello, Msg, Packer, Page, VERSION};
use std::sync::Arc;

/// Seeds by target: `(target, name, bytes)`.
pub fn all() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut add = |t: &'static str, name: &str, b: Vec<u8>| out.push((t, name.to_string(), b));
    for (name, m, pages) in messages() {
        let frame = m.encode();
        let mut b = Output::default();
        b.u8(2).u16(pages as u16).bytes(&frame[4..]);
        add("wire_msg", name, b.0);
    }
    // Page batches packed by the source's own packer, each codec.
    for codec in [Codec::Lz4, Codec::Zstd] {
        let batch = Msg::Pages(
            (0..8)
                .map(|i| Page {
                    index: i * 7,
                    data: Some(Box::new([i as u8; 4096])),
                })
                .collect(),
        );
        if let Ok((frame, _)) = Packer::new(codec).and_then(|mut p| p.encode(&batch)) {
            let mut b = Output::default();
            b.u8(2).u16(100).bytes(&frame[4..]);
            add("wire_msg", &format!("packed-{codec}"), b.0);
            let mut b = Output::default();
            b.u8(0).u16(100).bytes(&frame);
            add("wire_recv", &format!("packed-{codec}"), b.0);
        }
    }
    // The streams a destination reads: the handshake, pre-copy, post-copy.
    let ms = messages();
    let mut stream = Output::default();
    stream.u8(0).u16(100);
    for (_, m, pages) in &ms {
        if *pages == 100 {
            stream.bytes(&m.encode());
        }
    }
    add("wire_recv", "session", stream.0);
    for (name, m, pages) in ms.into_iter().take(6) {
        let mut b = Output::default();
        b.u8(0)
            .u16(pages as u16)
            .bytes(&m.encode())
            .bytes(&Msg::Go.encode());
        add("wire_recv", name, b.0);
    }
    for (name, s) in control_streams() {
        let mut b = vec![3u8];
        b.extend_from_slice(s.as_bytes());
        add("control_request", name, b);
    }
    let state = sample_state(1 << 20);
    add("vm_state", "board", state.encode());
    let mut bare = sample_state(64 << 20);
    bare.devices.clear();
    bare.board.devices.clear();
    add("vm_state", "bare", bare.encode());
    add(
        "snapshot_file",
        "two-pages",
        snapshot(&state, &[0, 0, 0, 1 << 63 | 1], 2),
    );
    add("snapshot_file", "empty", snapshot(&state, &[0; 4], 0));
    for (name, b) in loader_inputs() {
        add("loader", name, b);
    }
    for (t, name, b) in virtio_programs() {
        add(t, name, b);
    }
    out
}

fn hello(channel: Channel, resume: bool) -> Msg {
    Msg::Hello(Hello {
        version: VERSION,
        channel,
        session: 7,
        ram_bytes: 100 * 4096,
        page_size: 4096,
        board: r#"{"harts":1,"ram_bytes":409600,"devices":[]}"#.into(),
        mode: "postcopy".into(),
        resume,
        bulk: 0,
    })
}

/// Every message kind, with the RAM size (pages) it is decoded against.
pub fn messages() -> Vec<(&'static str, Msg, usize)> {
    let page = |f: u8| Some(Box::new([f; 4096]));
    vec![
        ("hello-main", hello(Channel::Main, false), 0),
        ("hello-fault", hello(Channel::Fault, true), 0),
        ("accept", Msg::Accept, 100),
        ("refuse", Msg::Refuse("RAM size differs".into()), 100),
        (
            "pages",
            Msg::Pages(vec![
                Page {
                    index: 3,
                    data: page(0xa5),
                },
                Page {
                    index: 99,
                    data: None,
                },
            ]),
            100,
        ),
        ("round-end", Msg::RoundEnd(2), 100),
        ("state", Msg::State(sample_state(1 << 20).encode()), 100),
        (
            "switch",
            Msg::Switch {
                state: vec![1, 2, 3, 4],
                pending: vec![u64::MAX, 0xf],
            },
            100,
        ),
        ("ready", Msg::Ready, 100),
        ("go", Msg::Go, 100),
        ("demand", Msg::Demand(vec![5, 42, 99]), 100),
        ("push-done", Msg::PushDone, 100),
        ("complete", Msg::Complete, 100),
        ("report", Msg::Report(r#"{"downtime_ms":12}"#.into()), 100),
        ("cancel", Msg::Cancel("operator".into()), 100),
        ("error", Msg::Error("disk full".into()), 100),
        ("resume", Msg::Resume(vec![0xff00, 0x1]), 100),
        (
            "protect",
            Msg::Protect {
                interval_ms: 50,
                fence_ms: 1000,
            },
            100,
        ),
        (
            "checkpoint",
            Msg::Checkpoint {
                seq: 3,
                released: 2,
                state: vec![5; 64],
            },
            100,
        ),
        (
            "ckpt-writes",
            Msg::CkptWrites(vec![
                DiskWrite {
                    slot: 1,
                    off: 4096,
                    op: DiskOp::Write(vec![7; 512]),
                },
                DiskWrite {
                    slot: 1,
                    off: 1 << 20,
                    op: DiskOp::Discard(8192),
                },
            ]),
            100,
        ),
        ("checkpoint-ack", Msg::CheckpointAck(3), 100),
        (
            "frames",
            Msg::Frames(vec![(0, vec![0; 12 + 60]), (1, vec![0xab; 12 + 1514])]),
            100,
        ),
    ]
}

fn control_streams() -> Vec<(&'static str, String)> {
    let caps = r#"{"execute":"qmp_capabilities"}"#;
    let cmds = [
        ("status", r#"{"execute":"query-status","id":1}"#),
        ("stop-cont", r#"{"execute":"stop"} {"execute":"cont","id":"x"}"#),
        ("snapshot", r#"{"execute":"snapshot","arguments":{"path":"/tmp/s"}}"#),
        ("balloon", r#"{"execute":"balloon","arguments":{"value":268435456}}"#),
        (
            "migrate",
            r#"{"execute":"migrate","arguments":{"uri":"tcp:10.0.0.2:4444","resume":false,"mode":"postcopy","prepaging":"dual","max-bandwidth":125000000}}"#,
        ),
        (
            "set-parameters",
            r#"{"execute":"migrate-set-parameters","arguments":{"mode":"hybrid","downtime-limit":300,"max-rounds":5,"hybrid-rounds":2,"after-window-ms":0,"free-page-hints":true,"tls-creds":"","tls-plain":true,"hot-pages-first":true,"auto-converge":true}}"#,
        ),
        (
            "queries",
            "{\"execute\":\"query-migrate\"}\n{\"execute\":\"query-migrate-parameters\"}\r\n{\"execute\":\"query-commands\"}{\"execute\":\"query-version\"}{\"execute\":\"query-balloon\"}",
        ),
        ("cancel-quit", r#"{"execute":"migrate-cancel"}{"execute":"migrate-start-postcopy"}{"execute":"quit"}"#),
        ("bad", r#"{"execute":"stop",} [1,2] "str" 42 {"execute":7} {"arguments":[]}"#),
    ];
    let mut out: Vec<(&'static str, String)> = cmds
        .iter()
        .map(|(n, c)| (*n, format!("{caps}\n{c}\n")))
        .collect();
    out.push(("no-caps", r#"{"execute":"query-status"}"#.into()));
    out
}

/// A state as a machine with two harts, a balloon, a NIC and a disk saves
/// it (devices negotiated, queues set up).
pub fn sample_state(ram_bytes: u64) -> VmState {
    let ram = Arc::new(GuestRam::new(0x8000_0000, 1 << 20).expect("RAM"));
    let net = NetConfig {
        mac: [0x52, 0x54, 0, 1, 2, 3],
        offloads: true,
    };
    let disk = Block::new(Box::new(MemDisk::new(64 << 10)), false, "seed").expect("disk");
    let devices = vec![
        probed(
            Box::new(Balloon::new(BalloonFeatures::default(), &ram)),
            &ram,
        )
        .state(),
        probed(Box::new(Net::new(net, Box::new(NullNet))), &ram).state(),
        probed(Box::new(disk), &ram).state(),
    ];
    VmState {
        board: BoardConfig {
            harts: 2,
            ram_bytes,
            devices: vec![
                DeviceConfig::Balloon,
                DeviceConfig::Net {
                    mac: net.mac,
                    offloads: true,
                },
                DeviceConfig::Block {
                    bytes: 64 << 10,
                    readonly: false,
                    id: "seed".into(),
                },
            ],
        },
        harts: (0..2)
            .map(|i| SavedHart {
                cpu: Hart::new(i, ram.clone(), 0x8020_0000, 0x8000_0000 + (1 << 20) - 65536)
                    .state(),
                run: if i == 0 {
                    HartRun::Started
                } else {
                    HartRun::Stopped
                },
            })
            .collect(),
        clock: GuestClock::reading(123_456_789).save(),
        uart: Uart16550::new(Box::new(std::io::sink())).state(),
        plic: Plic::new(godwit_machine::layout::PLIC_SOURCES, 4).state(),
        clint: Clint::new(2, Box::new(|| 42)).state(),
        devices,
        free_pages: vec![0; (ram_bytes as usize / 4096).div_ceil(64).min(1024)],
        cmdline: "console=ttyS0 earlycon".into(),
    }
}

/// A snapshot file of `state` with bitmap `words` and `pages` pages.
pub fn snapshot(state: &VmState, words: &[u64], pages: usize) -> Vec<u8> {
    let state = state.encode();
    let mut f = b"GODWIT-SNAPSHOT\n".to_vec();
    f.extend_from_slice(br#"{"format":1,"godwit":"0.1.0","ram_bytes":1048576,"pages_stored":2}"#);
    f.push(b'\n');
    f.extend_from_slice(&(state.len() as u64).to_le_bytes());
    f.extend_from_slice(&state);
    f.extend_from_slice(&(words.len() as u64).to_le_bytes());
    for w in words {
        f.extend_from_slice(&w.to_le_bytes());
    }
    for p in 0..pages {
        f.extend(std::iter::repeat_n(p as u8 + 1, 4096));
    }
    f
}

/// A riscv64 `Image` of `len` bytes claiming `image_size`.
pub fn image(len: usize, text_offset: u64, image_size: u64) -> Vec<u8> {
    let mut v = vec![0x13u8; len.max(64)];
    v[8..16].copy_from_slice(&text_offset.to_le_bytes());
    v[16..24].copy_from_slice(&image_size.to_le_bytes());
    v[24..48].fill(0);
    v[48..56].copy_from_slice(b"RISCV\0\0\0");
    v[56..60].copy_from_slice(b"RSC\x05");
    v
}

fn loader_inputs() -> Vec<(&'static str, Vec<u8>)> {
    let with = |ram: u8, flags: u8, kernel: &[u8], initrd: &[u8]| {
        let mut o = Output::default();
        o.u8(ram)
            .u8(flags)
            .u16(kernel.len() as u16)
            .bytes(kernel)
            .bytes(initrd);
        o.0
    };
    vec![
        ("kernel", with(1, 0, &image(512, 2 << 20, 512), &[])),
        (
            "kernel-initrd",
            with(2, 1, &image(256, 2 << 20, 1 << 20), &[7; 300]),
        ),
        ("odd-offset", with(0, 1, &image(128, 12345, 0), &[1; 64])),
        ("firmware", with(0, 2, &[0x73u8; 600], &[])),
    ]
}

fn virtio_programs() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut out = Vec::new();
    // Balloon: inflate PFNs 10..14, deflate 10, stats buffer, a free page
    // report, a free page hint round.
    let mut p = Program::new(u64::MAX, 0);
    let pfns: Vec<u8> = (10u32..14).flat_map(|n| n.to_le_bytes()).collect();
    p.host(0, 4, &[])
        .poke(0x1000, &pfns)
        .chain(0, &[(0x1000, 16, false)])
        .poke(0x2000, &10u32.to_le_bytes())
        .chain(1, &[(0x2000, 4, false)])
        .host(1, 0, &[])
        .chain(2, &[(0x3000, 60, false)])
        .chain(4, &[(0x8000, 4096, true)])
        .host(2, 0, &[])
        .poke(0x4000, &1u32.to_le_bytes())
        .chain(3, &[(0x4000, 4, false)])
        .chain(3, &[(0x10000, 4096, true)])
        .op(op::ACK, &[])
        .op(op::SAVE_RESTORE, &[]);
    out.push(("virtio_balloon", "inflate-stats-hints", p.bytes()));
    // Net: a receive buffer and a frame from the wire, a transmitted frame,
    // a control-queue MAC set and announce ack.
    let mut p = Program::new(u64::MAX, 0);
    let mut tx = vec![0u8; 12];
    tx.extend_from_slice(&[0xff; 6]);
    tx.extend_from_slice(&[0x52, 0x54, 0, 1, 2, 3, 0x08, 0x06]);
    tx.resize(12 + 60, 0x11);
    p.chain(0, &[(0x1000, 2048, true)])
        .host(0, 80, &[0; 28])
        .poke(0x3000, &tx)
        .chain(1, &[(0x3000, 12, false), (0x300c, 60, false)])
        .poke(0x5000, &[1, 1, 0x52, 0x54, 0, 9, 9, 9])
        .chain(
            2,
            &[(0x5000, 2, false), (0x5002, 6, false), (0x5100, 1, true)],
        )
        .host(2, 0, &[])
        .poke(0x5200, &[3, 0])
        .chain(2, &[(0x5200, 2, false), (0x5300, 1, true)])
        .host(1, 100, &[0; 28])
        .chain(0, &[(0x6000, 4096, true)])
        .op(op::SAVE_RESTORE, &[]);
    out.push(("virtio_net", "rx-tx-ctrl", p.bytes()));
    // Blk: write sector 3, read it back, flush, get the ID, each a header,
    // a data buffer and a status byte.
    let hdr = |t: u32, sector: u64| {
        let mut h = t.to_le_bytes().to_vec();
        h.extend_from_slice(&[0; 4]);
        h.extend_from_slice(&sector.to_le_bytes());
        h
    };
    let mut p = Program::new(u64::MAX, 2);
    p.poke(0x1000, &hdr(VIRTIO_BLK_T_OUT, 3))
        .poke(0x2000, &[0xc3; 512])
        .chain(
            0,
            &[(0x1000, 16, false), (0x2000, 512, false), (0x1f00, 1, true)],
        )
        .poke(0x1100, &hdr(VIRTIO_BLK_T_IN, 3))
        .chain(
            0,
            &[(0x1100, 16, false), (0x3000, 1024, true), (0x1f01, 1, true)],
        )
        .poke(0x1200, &hdr(VIRTIO_BLK_T_FLUSH, 0))
        .chain(0, &[(0x1200, 16, false), (0x1f02, 1, true)])
        .poke(0x1300, &hdr(VIRTIO_BLK_T_GET_ID, 0))
        .chain(
            0,
            &[(0x1300, 16, false), (0x4000, 20, true), (0x1f03, 1, true)],
        )
        .poke(0x1400, &hdr(11, 0))
        .poke(0x1410, &[8, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0])
        .chain(
            0,
            &[(0x1400, 16, false), (0x1410, 16, false), (0x1f04, 1, true)],
        )
        .host(0, 0, &[])
        .chain(
            0,
            &[(0x1100, 16, false), (0x3000, 512, true), (0x1f05, 1, true)],
        )
        .host(1, 0, &[])
        .op(op::SAVE_RESTORE, &[]);
    out.push(("virtio_blk", "rw-flush-id-discard", p.bytes()));
    let mut ro = Program::new(u64::MAX, 1);
    ro.poke(0x1000, &hdr(VIRTIO_BLK_T_OUT, 0)).chain(
        0,
        &[(0x1000, 16, false), (0x2000, 512, false), (0x1f00, 1, true)],
    );
    out.push(("virtio_blk", "read-only-write", ro.bytes()));
    out
}
