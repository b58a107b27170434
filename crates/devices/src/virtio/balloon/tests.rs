use super::*;
use crate::virtio::mmio::{VirtioMmio, INT_CONFIG_CHANGE, INT_USED_BUFFER};
use crate::virtio::status;
use crate::virtio::testdrv::{ram, TestDriver, RAM_BASE};
use crate::virtio::DeviceState;
use crate::MmioDevice;
use godwit_memory::{GuestRam, PAGE_SIZE};
use std::sync::Arc;

const PAGE: u64 = PAGE_SIZE as u64;
const ALL: u64 = (1 << 32) | 0x3f;

fn balloon(features: BalloonFeatures) -> TestDriver {
    let ram = ram();
    let dev = VirtioMmio::new(Box::new(Balloon::new(features, &ram)), ram);
    TestDriver::new(dev)
}

/// A driver that negotiated everything offered; queues 0..=4 are
/// inflate, deflate, stats, free page, reporting.
fn full() -> TestDriver {
    let mut d = balloon(BalloonFeatures::default());
    let f = d.probe(ALL, 5);
    assert_eq!(f, (1 << 32) | 0b11_1010);
    d
}

fn pfn(page: u64) -> u32 {
    ((RAM_BASE + page * PAGE) >> 12) as u32
}

fn pfn_bytes(pages: &[u64]) -> Vec<u8> {
    pages.iter().flat_map(|&p| pfn(p).to_le_bytes()).collect()
}

fn fill(d: &TestDriver, page: u64, n: u64) {
    for p in page..page + n {
        d.ram.write(RAM_BASE + p * PAGE, &[0xab; 4096]).unwrap();
    }
}

fn page_is_zero(d: &TestDriver, page: u64) -> bool {
    let mut b = vec![0u8; 4096];
    d.ram.read(RAM_BASE + page * PAGE, &mut b).unwrap();
    b.iter().all(|&x| x == 0)
}

#[test]
fn probe_layout_and_config() {
    let mut d = full();
    assert_eq!(d.r32(0x008), 5);
    assert_eq!(d.status() & status::DRIVER_OK, status::DRIVER_OK);
    d.w32(0x030, 5);
    assert_eq!(d.r32(0x034), 0, "only five queues");
    // Config: the host target reaches the guest with an interrupt.
    d.balloon_mut().set_target_pages(300);
    let gen = d.r32(0x0fc);
    assert!(!d.dev.irq_level());
    d.process();
    assert!(d.dev.irq_level());
    assert_eq!(d.take_interrupts(), INT_CONFIG_CHANGE);
    assert!(!d.dev.irq_level());
    assert_ne!(d.r32(0x0fc), gen, "generation bumped");
    assert_eq!(d.config_read32(0), 300);
    // The guest writes `actual`; it cannot write num_pages or cmd id.
    d.config_write32(4, 120);
    d.config_write32(0, 7);
    d.config_write32(8, 7);
    assert_eq!(d.balloon().actual_pages(), 120);
    assert_eq!(d.config_read32(0), 300);
    assert_eq!(d.config_read32(8), CMD_ID_STOP);
    // Byte and odd-size config access, past the end too.
    assert_eq!(d.dev.read(0x104, 1), 120);
    assert_eq!(d.dev.read(0x100, 8), 300 | 120 << 32);
    assert_eq!(d.dev.read(0x10e, 4), 0);
    assert_eq!(d.dev.read(0x1f0, 8), 0);
    d.dev.write(0x1ff, 8, u64::MAX);
    d.dev.write(u64::MAX, 8, u64::MAX);
    assert_eq!(d.dev.read(u64::MAX, 8), 0);
}

#[test]
fn queue_indexes_close_up_without_features() {
    // STATS and REPORTING only: reporting is queue 3.
    let mut d = balloon(BalloonFeatures::default());
    let want = (1 << 32) | 1 << VIRTIO_BALLOON_F_STATS_VQ | 1 << VIRTIO_BALLOON_F_REPORTING;
    d.probe(want, 4);
    fill(&d, 10, 2);
    d.add(3, &[(RAM_BASE + 10 * PAGE, 2 * PAGE as u32, true)]);
    d.kick(3);
    assert_eq!(d.used(3).len(), 1);
    assert!(page_is_zero(&d, 10) && page_is_zero(&d, 11));
    assert_eq!(d.balloon().reporting_status().pages_total, 2);
    // No optional features at all: just inflate and deflate.
    let mut d = balloon(BalloonFeatures::default());
    d.probe(1 << 32, 2);
    let bytes = pfn_bytes(&[3]);
    d.add_out_bytes(0, &bytes);
    d.kick(0);
    assert_eq!(d.balloon().inflated_pages(), 1);
}

#[test]
fn feature_negotiation_rules() {
    let mut d = balloon(BalloonFeatures::default());
    d.w32(0x070, status::ACKNOWLEDGE | status::DRIVER);
    // Without VERSION_1 the device refuses FEATURES_OK.
    d.w32(0x024, 0);
    d.w32(0x020, 0x2);
    d.w32(0x024, 1);
    d.w32(0x020, 0);
    d.w32(
        0x070,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(d.status() & status::FEATURES_OK, 0);
    // Features the device did not offer are refused too.
    d.w32(0x020, 1 | 1 << 1);
    d.w32(
        0x070,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(d.status() & status::FEATURES_OK, 0);
    d.w32(0x020, 1);
    d.w32(
        0x070,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_ne!(d.status() & status::FEATURES_OK, 0);
    // Frozen after FEATURES_OK.
    d.w32(0x020, 3);
    assert_eq!(d.dev.acked_features() >> 32, 1);
    // No offered bit above 32 besides VERSION_1, none of the ring features.
    d.w32(0x014, 1);
    assert_eq!(d.r32(0x010), 1);
    d.w32(0x014, 0);
    assert_eq!(d.r32(0x010) & (1 << 28 | 1 << 29), 0);
    d.w32(0x014, 7);
    assert_eq!(d.r32(0x010), 0);
    // Reset clears everything.
    d.w32(0x070, 0);
    assert_eq!(d.status(), 0);
    assert_eq!(d.dev.acked_features(), 0);
    // Non-32-bit register accesses are ignored.
    assert_eq!(d.dev.read(0, 2), 0);
    d.dev.write(0x070, 1, 4);
    assert_eq!(d.status(), 0);
}

#[test]
fn inflate_and_deflate() {
    let mut d = full();
    fill(&d, 100, 4);
    let before = d.ram.free_map().count();
    // 100, 101, 102 coalesce into one discard; 5000 is outside RAM and
    // u32::MAX far outside; both are skipped.
    let mut bytes = pfn_bytes(&[100, 101, 102]);
    bytes.extend(5000u32.to_le_bytes());
    bytes.extend(u32::MAX.to_le_bytes());
    let head = d.add_out_bytes(0, &bytes);
    d.kick(0);
    assert_eq!(d.used(0), vec![(u32::from(head), 0)]);
    assert_eq!(d.take_interrupts(), INT_USED_BUFFER);
    for p in 100..103 {
        assert!(page_is_zero(&d, p));
        assert!(d.ram.free_map().get(p as usize));
    }
    assert!(!page_is_zero(&d, 103));
    assert_eq!(d.ram.free_map().count(), before + 3);
    assert_eq!(d.balloon().inflated_pages(), 3);
    assert!(std::mem::take(&mut d.barriers) > 0);
    assert_eq!(d.barriers, 0);
    // Deflate two; they stay free until the guest writes them.
    d.add_out_bytes(1, &pfn_bytes(&[100, 102, 999]));
    d.kick(1);
    assert_eq!(d.used(1).len(), 1);
    assert_eq!(d.balloon().inflated_pages(), 1);
    assert!(d.ram.free_map().get(100));
    d.ram.write(RAM_BASE + 100 * PAGE, &[1]).unwrap();
    assert!(!d.ram.free_map().get(100));
    let s = d.balloon().saved();
    assert_eq!(s.inflated, vec![(101, 1)]);
}

#[test]
fn inflate_releases_host_memory() {
    // 2 MiB of touched pages, then inflated: the host pages are dropped
    // (they read as zero again) and all are marked free.
    let mut d = full();
    let first = 64u64;
    let n = 512u64;
    fill(&d, first, n);
    let resident = |d: &TestDriver| (first..first + n).filter(|&p| !page_is_zero(d, p)).count();
    assert_eq!(resident(&d), n as usize);
    for chunk in (first..first + n).collect::<Vec<_>>().chunks(256) {
        d.add_out_bytes(0, &pfn_bytes(chunk));
        d.kick(0);
        d.used(0);
    }
    assert_eq!(resident(&d), 0);
    assert_eq!(d.ram.free_map().count(), n as usize);
    assert_eq!(d.balloon().inflated_pages(), n);
}

#[test]
fn free_page_reporting() {
    let mut d = full();
    fill(&d, 200, 40);
    // A scatterlist of three ranges like page_reporting_drain builds,
    // one unaligned (only its whole pages count), one past RAM's end.
    let ranges = [
        (RAM_BASE + 200 * PAGE, 8 * PAGE as u32, true),
        (RAM_BASE + 220 * PAGE + 100, 4 * PAGE as u32, true),
        (RAM_BASE + 1020 * PAGE, 64 * PAGE as u32, true),
    ];
    d.add(4, &ranges);
    d.kick(4);
    assert_eq!(d.used(4).len(), 1);
    assert_eq!(d.take_interrupts(), INT_USED_BUFFER);
    for p in 200..208 {
        assert!(page_is_zero(&d, p) && d.ram.free_map().get(p as usize));
    }
    assert!(!page_is_zero(&d, 220), "partial first page kept");
    for p in 221..224 {
        assert!(page_is_zero(&d, p));
    }
    assert!(!page_is_zero(&d, 224), "partial last page kept");
    let r = d.balloon().reporting_status();
    assert_eq!(r.pages_total, 8 + 3 + 4);
    assert_eq!(r.requests, 1);
    assert_eq!(d.balloon_mut().take_reported_pages(), 15);
    assert_eq!(d.balloon_mut().take_reported_pages(), 0);
    assert_eq!(d.balloon().inflated_pages(), 0, "reports are not inflation");
}

#[test]
fn reporting_with_poison_keeps_pages() {
    let mut d = full();
    d.config_write32(12, 0xaaaa_aaaa);
    fill(&d, 300, 2);
    d.add(4, &[(RAM_BASE + 300 * PAGE, 2 * PAGE as u32, true)]);
    d.kick(4);
    assert_eq!(d.used(4).len(), 1, "buffers still returned");
    assert!(!page_is_zero(&d, 300));
    assert!(!d.ram.free_map().get(300));
    assert_eq!(d.balloon().reporting_status().pages_kept, 2);
    // Zero poison (init_on_free): zero pages are what the guest expects.
    d.config_write32(12, 0);
    d.add(4, &[(RAM_BASE + 300 * PAGE, 2 * PAGE as u32, true)]);
    d.kick(4);
    assert!(page_is_zero(&d, 300));
}

#[test]
fn stats_protocol() {
    let mut d = balloon(BalloonFeatures::default());
    // Like init_vqs: the stats buffer is queued and kicked during probe,
    // before DRIVER_OK; the device takes it once DRIVER_OK is set.
    let want = ALL;
    d.w32(0x070, 0);
    d.w32(0x070, status::ACKNOWLEDGE | status::DRIVER);
    d.w32(0x024, 1);
    d.w32(0x020, 1);
    d.w32(0x024, 0);
    d.w32(0x020, want as u32 & 0x3a);
    d.w32(
        0x070,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    for q in 0..5 {
        d.setup_queue(q);
    }
    let mut stats = Vec::new();
    for (tag, val) in [
        (4u16, 100u64 << 20),
        (5, 512 << 20),
        (6, 300 << 20),
        (3, 42),
        (77, 1),
    ] {
        stats.extend(tag.to_le_bytes());
        stats.extend(val.to_le_bytes());
    }
    let head = d.add_out_bytes(2, &stats);
    d.kick(2);
    assert_eq!(d.balloon().stats().updates, 0, "not live yet");
    d.w32(
        0x070,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );
    let s = d.balloon().stats();
    assert_eq!(s.updates, 1);
    assert_eq!(s.free_memory, Some(100 << 20));
    assert_eq!(s.total_memory, Some(512 << 20));
    assert_eq!(s.available_memory, Some(300 << 20));
    assert_eq!(s.minor_faults, Some(42));
    assert_eq!(s.swap_in, None);
    assert!(d.used(2).is_empty(), "buffer held by the device");
    assert!(!d.dev.irq_level());
    // The host asks: the buffer comes back, the guest refills.
    d.balloon_mut().request_stats();
    d.process();
    assert_eq!(d.used(2), vec![(u32::from(head), 0)]);
    assert_eq!(d.take_interrupts(), INT_USED_BUFFER);
    stats[2..10].copy_from_slice(&(50u64 << 20).to_le_bytes());
    d.add_out_bytes(2, &stats);
    d.kick(2);
    assert_eq!(d.balloon().stats().free_memory, Some(50 << 20));
    assert_eq!(d.balloon().stats().updates, 2);
    // A request with no held buffer waits for the next one.
    d.balloon_mut().request_stats();
    d.process();
    assert_eq!(d.used(2).len(), 1);
    d.balloon_mut().request_stats();
    d.process();
    assert!(d.used(2).is_empty());
    d.add_out_bytes(2, &stats);
    d.kick(2);
    d.process();
    assert_eq!(d.used(2).len(), 1);
}

#[test]
fn free_page_hinting() {
    let mut d = full();
    // Linux's free_page_vq has no callback: interrupts suppressed.
    d.set_avail_flags(3, 1);
    fill(&d, 512, 256);
    assert_eq!(d.balloon().hint_status().phase, HintPhase::Idle);
    assert!(d.balloon().free_page_hint_negotiated());
    let id = d.balloon_mut().start_free_page_hint();
    assert!(id >= 2);
    d.process();
    assert_eq!(d.take_interrupts(), INT_CONFIG_CHANGE);
    assert_eq!(d.config_read32(8), id);
    assert_eq!(d.balloon().hint_status().phase, HintPhase::Requested);
    // A block before the echo is not a hint for this run.
    d.add(3, &[(RAM_BASE + 512 * PAGE, 4 * PAGE as u32, true)]);
    d.kick(3);
    assert_eq!(d.balloon().hint_status().pages, 0);
    // Echo, then two blocks of 1 MiB, then STOP.
    d.add_out_bytes(3, &id.to_le_bytes());
    d.kick(3);
    assert_eq!(d.balloon().hint_status().phase, HintPhase::Running);
    d.add(3, &[(RAM_BASE + 512 * PAGE, 256 * PAGE as u32, true)]);
    d.kick(3);
    d.add_out_bytes(3, &CMD_ID_STOP.to_le_bytes());
    d.kick(3);
    assert_eq!(d.used(3).len(), 4, "every buffer returned");
    assert_eq!(d.take_interrupts(), 0, "suppressed");
    let h = d.balloon().hint_status();
    assert_eq!(h.phase, HintPhase::Stopped);
    assert_eq!((h.blocks, h.pages, h.cmd_id), (1, 256, id));
    // Marked free but not discarded: the content is still there.
    assert!(d.ram.free_map().get(600));
    assert!(!page_is_zero(&d, 600));
    assert!(d.barriers > 0, "hints change the free map: a barrier first");
    // The guest reuses one: its write clears the free bit.
    d.ram.write(RAM_BASE + 600 * PAGE, &[5]).unwrap();
    assert!(!d.ram.free_map().get(600));
    // DONE.
    d.balloon_mut().stop_free_page_hint();
    d.process();
    assert_eq!(d.take_interrupts(), INT_CONFIG_CHANGE);
    assert_eq!(d.config_read32(8), CMD_ID_DONE);
    assert_eq!(d.balloon().hint_status().phase, HintPhase::Done);
    // A stale echo of the old ID does not restart the run.
    d.add_out_bytes(3, &id.to_le_bytes());
    d.kick(3);
    assert_eq!(d.balloon().hint_status().phase, HintPhase::Done);
    let id2 = d.balloon_mut().start_free_page_hint();
    assert!(id2 > id);
    assert_eq!(d.balloon().hint_status().pages_total, 256);
}

#[test]
fn malformed_chains_do_not_panic() {
    // Each case breaks the queue: DEVICE_NEEDS_RESET plus a config
    // interrupt, and further kicks are ignored until reset.
    type Case = fn(&mut TestDriver);
    let cases: [(&str, Case); 6] = [
        ("loop", |d| {
            d.write_desc(0, 0, RAM_BASE, 4, 1, 1);
            d.write_desc(0, 1, RAM_BASE, 4, 1, 0);
            d.publish(0, 0);
        }),
        ("next out of range", |d| {
            d.write_desc(0, 0, RAM_BASE, 4, 1, 5000);
            d.publish(0, 0);
        }),
        ("head out of range", |d| d.publish(0, 1000)),
        ("indirect", |d| {
            d.write_desc(0, 0, RAM_BASE, 16, 4, 0);
            d.publish(0, 0);
        }),
        ("avail index runs ahead", |d| {
            let avail = d.queues[0].avail;
            d.ram.write(avail + 2, &500u16.to_le_bytes()).unwrap();
        }),
        ("used ring moved out of RAM", |d| {
            // Corrupt the transport's view by re-enabling with a bad
            // used ring address.
            d.w32(0x030, 0);
            d.w32(0x044, 0);
            d.w32(0x0a0, 0x1000);
            d.w32(0x0a4, 0);
            d.w32(0x044, 1);
        }),
    ];
    for (name, case) in cases {
        let mut d = full();
        case(&mut d);
        d.kick(0);
        assert_ne!(d.status() & status::DEVICE_NEEDS_RESET, 0, "{name}");
        assert_ne!(d.take_interrupts() & INT_CONFIG_CHANGE, 0, "{name}");
        d.kick(0);
        d.process();
        // The driver's reset brings it back.
        d.w32(0x070, 0);
        assert_eq!(d.status(), 0);
        d.queues.clear();
        d.probe(ALL, 5);
        d.add_out_bytes(0, &pfn_bytes(&[7]));
        d.kick(0);
        assert_eq!(d.used(0).len(), 1, "{name}: works after reset");
    }
}

#[test]
fn bad_buffers_are_skipped() {
    let mut d = full();
    // Buffers outside RAM, huge lengths, address overflow: handled as
    // "nothing to do"; the chains are returned and the device lives on.
    d.add(0, &[(u64::MAX - 2, u32::MAX, false)]);
    d.add(0, &[(RAM_BASE + (4 << 20) - 8, u32::MAX, false)]);
    d.add(1, &[(0, 400, false)]);
    d.add(2, &[(u64::MAX, 10, false)]);
    d.add(
        4,
        &[
            (u64::MAX - 4096, u32::MAX, true),
            (0, 8192, true),
            (RAM_BASE, 0, true),
        ],
    );
    d.add(3, &[(u64::MAX - 1, 4, false)]);
    for q in 0..5 {
        d.kick(q);
    }
    assert_eq!(d.status() & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(d.used(0).len(), 2);
    assert_eq!(d.used(4).len(), 1);
    assert_eq!(d.balloon().reporting_status().pages_total, 0);
    // Kicks of queues that do not exist or are not set up are ignored.
    d.w32(0x050, 9);
    d.w32(0x050, u32::MAX);
    // Queue setup with invalid sizes is refused at enable time.
    let mut e = balloon(BalloonFeatures::default());
    e.w32(0x070, status::ACKNOWLEDGE | status::DRIVER);
    e.w32(0x030, 0);
    e.w32(0x038, 100);
    for (reg, addr) in [
        (0x080, RAM_BASE),
        (0x090, RAM_BASE + 0x1000),
        (0x0a0, RAM_BASE + 0x2000),
    ] {
        e.w32(reg, addr as u32);
        e.w32(reg + 4, (addr >> 32) as u32);
    }
    e.w32(0x044, 1);
    assert_ne!(
        e.status() & status::DEVICE_NEEDS_RESET,
        0,
        "size not a power of two"
    );
}

#[test]
fn state_round_trip() {
    let mut d = full();
    fill(&d, 10, 4);
    d.add_out_bytes(0, &pfn_bytes(&[10, 11, 13]));
    d.kick(0);
    let mut stats = Vec::new();
    stats.extend(4u16.to_le_bytes());
    stats.extend(123u64.to_le_bytes());
    let stats_head = d.add_out_bytes(2, &stats);
    d.kick(2);
    d.balloon_mut().set_target_pages(77);
    let id = d.balloon_mut().start_free_page_hint();
    d.config_write32(4, 3);
    let saved = d.dev.state();
    let json = serde_json::to_string(&saved).unwrap();

    // Restore into a fresh device on the same RAM (as after migration,
    // where the destination's RAM holds the same bytes).
    let ram2: Arc<GuestRam> = d.ram.clone();
    let mut fresh = VirtioMmio::new(
        Box::new(Balloon::new(BalloonFeatures::default(), &ram2)),
        ram2,
    );
    fresh
        .restore(&serde_json::from_str(&json).unwrap())
        .unwrap();
    assert_eq!(fresh.state(), saved);
    let mut d2 = TestDriver::new(fresh);
    d2.queues = std::mem::take(&mut d.queues);
    d2.next_alloc = d.next_alloc;
    assert_eq!(d2.balloon().inflated_pages(), 3);
    assert_eq!(d2.config_read32(0), 77);
    assert_eq!(d2.config_read32(4), 3);
    assert_eq!(d2.config_read32(8), id);
    // The unacknowledged used-buffer interrupt survives, and the
    // pending config change is delivered.
    assert!(d2.dev.irq_level());
    d2.process();
    assert_eq!(d2.take_interrupts(), INT_USED_BUFFER | INT_CONFIG_CHANGE);
    // The held stats buffer is still ours to return.
    d2.balloon_mut().request_stats();
    d2.process();
    assert_eq!(d2.used(2), vec![(u32::from(stats_head), 0)]);
    // Queues continue where they were: inflate more, deflate old ones.
    d2.used(0);
    d2.add_out_bytes(0, &pfn_bytes(&[12]));
    d2.kick(0);
    d2.add_out_bytes(1, &pfn_bytes(&[10]));
    d2.kick(1);
    assert_eq!(d2.used(0).len(), 1);
    assert_eq!(d2.used(1).len(), 1);
    assert_eq!(d2.balloon().saved().inflated, vec![(11, 3)]);
    // The hint run continues with the same ID.
    d2.add_out_bytes(3, &id.to_le_bytes());
    d2.kick(3);
    assert_eq!(d2.balloon().hint_status().phase, HintPhase::Running);

    // Mismatched RAM or features are refused, leaving the device as is.
    let small = Arc::new(GuestRam::new(RAM_BASE, 1 << 20).unwrap());
    let mut other = VirtioMmio::new(
        Box::new(Balloon::new(BalloonFeatures::default(), &small)),
        small,
    );
    assert!(other.restore(&saved).is_err());
    let ram3 = ram();
    let no_hint = BalloonFeatures {
        free_page_hint: false,
        ..Default::default()
    };
    let mut other = VirtioMmio::new(Box::new(Balloon::new(no_hint, &ram3)), ram3);
    assert!(other.restore(&saved).is_err());
    let mut bad = saved.clone();
    let DeviceState::Balloon(b) = &mut bad.device else {
        panic!("a balloon state");
    };
    b.inflated.push((u64::MAX, 2));
    let ram4 = ram();
    let mut other = VirtioMmio::new(
        Box::new(Balloon::new(BalloonFeatures::default(), &ram4)),
        ram4,
    );
    assert!(other.restore(&bad).is_err());
    assert_eq!(other.status(), 0);
}

#[test]
fn driver_reset_forgets_the_balloon() {
    let mut d = full();
    d.balloon_mut().set_target_pages(10);
    d.add_out_bytes(0, &pfn_bytes(&[1, 2]));
    d.kick(0);
    d.w32(0x070, 0);
    assert_eq!(d.balloon().inflated_pages(), 0);
    assert_eq!(d.balloon().target_pages(), 10, "host target kept");
    assert!(!d.dev.irq_level());
    assert!(d.dev.queues().iter().all(|q| !q.ready()));
}
