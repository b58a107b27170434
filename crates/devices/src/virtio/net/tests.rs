use super::*;
use crate::virtio::mmio::{VirtioMmio, INT_CONFIG_CHANGE, INT_USED_BUFFER};
use crate::virtio::testdrv::{ram, TestDriver, RAM_BASE};
use crate::virtio::{DeviceState, VirtioDevice};
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// Frames in and out of a fake backend, shared with the test.
#[derive(Default)]
struct Wire {
    to_guest: VecDeque<Vec<u8>>,
    from_guest: Vec<Vec<u8>>,
    recv_calls: u32,
    offloads: Option<(bool, bool, bool)>,
}

struct Fake(Arc<Mutex<Wire>>);

impl NetBackend for Fake {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut w = self.0.lock().unwrap();
        w.recv_calls += 1;
        match w.to_guest.pop_front() {
            Some(f) => {
                buf[..f.len()].copy_from_slice(&f);
                Ok(f.len())
            }
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.0.lock().unwrap().from_guest.push(frame.to_vec());
        Ok(())
    }
    fn fd(&self) -> Option<RawFd> {
        Some(99)
    }
    fn set_offloads(&mut self, csum: bool, tso4: bool, tso6: bool) -> io::Result<()> {
        self.0.lock().unwrap().offloads = Some((csum, tso4, tso6));
        Ok(())
    }
}

/// A frame with a header and `len` bytes of pattern.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; HDR_LEN];
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

fn net(offloads: bool) -> (TestDriver, Arc<Mutex<Wire>>) {
    let wire = Arc::new(Mutex::new(Wire::default()));
    let ram = ram();
    let dev = Net::new(
        NetConfig { mac: MAC, offloads },
        Box::new(Fake(wire.clone())),
    );
    (TestDriver::new(VirtioMmio::new(Box::new(dev), ram)), wire)
}

/// A driver that accepted everything offered, with queues rx, tx, ctrl.
fn up(offloads: bool) -> (TestDriver, Arc<Mutex<Wire>>) {
    let (mut d, w) = net(offloads);
    d.probe(u64::MAX, 3);
    (d, w)
}

fn net_dev(d: &TestDriver) -> &Net {
    d.dev.device_as::<Net>().unwrap()
}

#[test]
fn config_and_features() {
    let (mut d, w) = net(true);
    let f = d.probe(u64::MAX, 3);
    for b in [
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_CTRL_VQ,
        VIRTIO_NET_F_GUEST_ANNOUNCE,
        VIRTIO_NET_F_HOST_TSO4,
    ] {
        assert_ne!(f & (1 << b), 0, "feature {b}");
    }
    assert_eq!(d.r32(0x008), 1, "device id");
    let lo = d.config_read32(0).to_le_bytes();
    let hi = d.config_read32(4).to_le_bytes();
    assert_eq!([lo[0], lo[1], lo[2], lo[3], hi[0], hi[1]], MAC);
    assert_eq!(u16::from_le_bytes([hi[2], hi[3]]), VIRTIO_NET_S_LINK_UP);
    assert_eq!(w.lock().unwrap().offloads, Some((true, true, true)));
    let (mut d, w) = net(false);
    let f = d.probe(u64::MAX, 3);
    assert_eq!(f & (1 << VIRTIO_NET_F_HOST_TSO4), 0);
    assert_eq!(w.lock().unwrap().offloads, Some((false, false, false)));
}

#[test]
fn transmit_frames_and_drop_malformed_chains() {
    let (mut d, w) = up(true);
    let f = frame(1500, 3);
    let a = d.alloc(f.len() as u64, 8);
    d.ram.write(a, &f).unwrap();
    // Header and data in two buffers, as Linux sends them.
    d.add(
        1,
        &[
            (a, HDR_LEN as u32, false),
            (a + HDR_LEN as u64, 1500, false),
        ],
    );
    // Malformed: a device-writable buffer; shorter than a header; outside RAM.
    d.add(1, &[(a, 100, true)]);
    d.add(1, &[(a, 4, false)]);
    d.add(1, &[(RAM_BASE - 4096, 100, false)]);
    d.kick(1);
    assert_eq!(d.used(1).len(), 4, "every chain returned");
    assert_eq!(w.lock().unwrap().from_guest, vec![f]);
    let c = net_dev(&d).counters();
    assert_eq!((c.tx_frames, c.tx_dropped), (1, 3));
}

#[test]
fn receive_into_one_buffer_and_merged_buffers() {
    let (mut d, w) = up(false);
    let small = frame(100, 1);
    let big = frame(3000, 2);
    w.lock()
        .unwrap()
        .to_guest
        .extend([small.clone(), big.clone()]);
    let bufs: Vec<u64> = (0..4).map(|_| d.alloc(2048, 8)).collect();
    for &b in &bufs {
        d.add(0, &[(b, 2048, true)]);
    }
    d.kick(0);
    let used = d.used(0);
    // The small frame in one buffer, the big one across two (MRG_RXBUF).
    assert_eq!(used.len(), 3, "{used:?}");
    assert_eq!(used[0].1 as usize, small.len());
    let mut got = vec![0u8; small.len()];
    d.ram.read(bufs[0], &mut got).unwrap();
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
    assert_eq!(got[HDR_LEN..], small[HDR_LEN..]);
    assert_eq!(used[1].1 + used[2].1, big.len() as u32);
    let mut got = vec![0u8; big.len()];
    d.ram.read(bufs[1], &mut got[..2048]).unwrap();
    d.ram.read(bufs[2], &mut got[2048..]).unwrap();
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 2, "num_buffers");
    assert_eq!(got[HDR_LEN..], big[HDR_LEN..]);
    assert_ne!(d.take_interrupts() & INT_USED_BUFFER, 0);
}

#[test]
fn a_guest_that_never_refills_holds_one_frame_and_costs_nothing() {
    let (mut d, w) = up(false);
    w.lock()
        .unwrap()
        .to_guest
        .extend([frame(500, 1), frame(600, 2), frame(700, 3)]);
    let b = d.alloc(2048, 8);
    d.add(0, &[(b, 2048, true)]);
    d.kick(0);
    assert_eq!(d.used(0).len(), 1);
    // The next frame is held; the backend is not polled any more.
    assert!(net_dev(&d).io_fds().is_empty());
    let calls = w.lock().unwrap().recv_calls;
    for _ in 0..10 {
        d.process();
    }
    assert_eq!(
        w.lock().unwrap().recv_calls,
        calls,
        "no polling while starved"
    );
    assert_eq!(net_dev(&d).saved().held_rx, Some(frame(600, 2)));
    // Buffers again: the held frame first, then the rest, in order.
    for _ in 0..2 {
        let b = d.alloc(2048, 8);
        d.add(0, &[(b, 2048, true)]);
    }
    d.kick(0);
    let used = d.used(0);
    assert_eq!(used.iter().map(|u| u.1).collect::<Vec<_>>(), vec![612, 712]);
    assert!(!net_dev(&d).io_fds().is_empty());
}

#[test]
fn without_merging_a_too_small_buffer_drops_the_frame() {
    let (mut d, w) = net(false);
    // Everything but MRG_RXBUF.
    d.probe(!(1 << VIRTIO_NET_F_MRG_RXBUF), 3);
    w.lock()
        .unwrap()
        .to_guest
        .extend([frame(3000, 1), frame(100, 2)]);
    for _ in 0..2 {
        let b = d.alloc(2048, 8);
        d.add(0, &[(b, 2048, true)]);
    }
    d.kick(0);
    let used = d.used(0);
    assert_eq!(used.iter().map(|u| u.1).collect::<Vec<_>>(), vec![0, 112]);
    assert_eq!(net_dev(&d).counters().rx_dropped, 1);
}

#[test]
fn control_queue_mac_and_announce() {
    let (mut d, _w) = up(false);
    let ack = d.alloc(1, 1);
    let mut cmd = vec![1u8, 1];
    cmd.extend([2, 0, 0, 0, 0, 9]);
    let c = d.alloc(8, 8);
    d.ram.write(c, &cmd).unwrap();
    d.add(2, &[(c, 8, false), (ack, 1, true)]);
    d.kick(2);
    assert_eq!(d.used(2), vec![(0, 1)]);
    assert_eq!(d.ram.read_le::<1>(ack).unwrap(), [0], "OK");
    assert_eq!(net_dev(&d).mac(), [2, 0, 0, 0, 0, 9]);
    // Announce: status bit and a configuration change, then the guest's ack.
    d.take_interrupts();
    assert!(d.dev.device_as_mut::<Net>().unwrap().announce());
    d.process();
    assert_eq!(d.take_interrupts(), INT_CONFIG_CHANGE);
    let st = (d.config_read32(4) >> 16) as u16;
    assert_eq!(st, VIRTIO_NET_S_LINK_UP | VIRTIO_NET_S_ANNOUNCE);
    d.ram.write(c, &[3, 0]).unwrap();
    d.add(2, &[(c, 2, false), (ack, 1, true)]);
    d.kick(2);
    assert_eq!(d.ram.read_le::<1>(ack).unwrap(), [0]);
    assert_eq!((d.config_read32(4) >> 16) as u16, VIRTIO_NET_S_LINK_UP);
    // Unknown class: ERR.
    d.ram.write(c, &[77, 0]).unwrap();
    d.add(2, &[(c, 2, false), (ack, 1, true)]);
    d.kick(2);
    assert_eq!(d.ram.read_le::<1>(ack).unwrap(), [1]);
}

#[test]
fn state_round_trip_keeps_a_held_frame() {
    let (mut d, w) = up(false);
    w.lock().unwrap().to_guest.push_back(frame(200, 5));
    d.process();
    let s = d.dev.state();
    let DeviceState::Net(ns) = &s.device else {
        panic!()
    };
    assert_eq!(ns.held_rx, Some(frame(200, 5)));
    let (fresh, w2) = net(false);
    let mut fresh = fresh.dev;
    fresh.restore(&s).unwrap();
    assert_eq!(fresh.state(), s);
    let mut d2 = TestDriver::new(fresh);
    d2.queues = std::mem::take(&mut d.queues);
    d2.next_alloc = d.next_alloc;
    let b = d2.alloc(2048, 8);
    d2.add(0, &[(b, 2048, true)]);
    d2.kick(0);
    assert_eq!(d2.used(0), vec![(0, 212)]);
    assert!(w2.lock().unwrap().from_guest.is_empty());
    // Another configuration is refused.
    let (other, _) = net(true);
    let mut other = other.dev;
    assert!(other.restore(&s).is_err());
}

#[test]
fn rarp_announces_the_mac() {
    let f = rarp_frame(MAC);
    assert_eq!(f.len(), HDR_LEN + 60);
    let e = &f[HDR_LEN..];
    assert_eq!(&e[0..6], &[0xff; 6]);
    assert_eq!(&e[6..12], &MAC);
    assert_eq!(&e[12..14], &[0x80, 0x35]);
    assert_eq!(&e[20..22], &[0, 3], "reverse request");
    assert_eq!(&e[22..28], &MAC);
}

/// xorshift64*: deterministic junk.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn random_descriptors_never_panic() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for _ in 0..20 {
        let (mut d, w) = up(rng.next() & 1 == 0);
        for _ in 0..1500 {
            let r = rng.next();
            match r % 6 {
                0 => {
                    let qi = (r >> 8) as usize % 3;
                    let i = (r >> 16) as u16 % 256;
                    let addr = RAM_BASE
                        .wrapping_add(rng.next() % (8 << 20))
                        .wrapping_sub(1 << 20);
                    let len = if r & 1 << 40 != 0 {
                        rng.next() as u32
                    } else {
                        rng.next() as u32 % 70_000
                    };
                    d.write_desc(
                        qi,
                        i,
                        addr,
                        len,
                        (r >> 24) as u16 & 3,
                        (r >> 32) as u16 % 258,
                    );
                    d.publish(qi, i);
                }
                1 => d.w32(0x050, (r >> 8) as u32 % 4),
                2 => {
                    let n = (r >> 8) as usize % (MAX_FRAME - HDR_LEN);
                    w.lock().unwrap().to_guest.push_back(frame(n, r as u8));
                }
                3 => {
                    let _ = d.dev.device_as_mut::<Net>().unwrap().announce();
                    d.process();
                }
                _ => d.process(),
            }
        }
        let s = d.dev.state();
        let (fresh, _) = net(false);
        let mut fresh = fresh.dev;
        // Same offloads only; otherwise refused, which is also fine.
        let _ = fresh.restore(&s);
    }
}

#[test]
fn forwarded_frames_come_before_the_backend_and_bad_ones_are_dropped() {
    let (mut d, w) = up(false);
    let (a, b, c) = (frame(80, 1), frame(90, 2), frame(70, 3));
    w.lock().unwrap().to_guest.push_back(c.clone());
    {
        let n = d.dev.device_as_mut::<Net>().unwrap();
        n.deliver_forwarded(a.clone());
        n.deliver_forwarded(b.clone());
        n.deliver_forwarded(vec![0; HDR_LEN - 1]);
        n.deliver_forwarded(vec![0; MAX_FRAME + 1]);
    }
    let bufs: Vec<u64> = (0..3).map(|_| d.alloc(2048, 8)).collect();
    for &x in &bufs {
        d.add(0, &[(x, 2048, true)]);
    }
    d.kick(0);
    let used = d.used(0);
    assert_eq!(used.len(), 3, "{used:?}");
    for (i, want) in [&a, &b, &c].into_iter().enumerate() {
        let mut got = vec![0u8; want.len()];
        d.ram.read(bufs[i], &mut got).unwrap();
        assert_eq!(got[HDR_LEN..], want[HDR_LEN..], "frame {i} in order");
    }
    assert_eq!(net_dev(&d).counters().rx_dropped, 2);
    // A bounded queue: beyond MAX_FORWARDED frames are dropped.
    let n = d.dev.device_as_mut::<Net>().unwrap();
    for _ in 0..MAX_FORWARDED + 5 {
        n.deliver_forwarded(frame(10, 0));
    }
    assert_eq!(n.counters().rx_dropped, 7);
    // At a migration source: the backend's waiting frames, in order, bounded.
    w.lock()
        .unwrap()
        .to_guest
        .extend([frame(1, 1), frame(2, 2), frame(3, 3)]);
    assert_eq!(n.take_backend_frames(2), vec![frame(1, 1), frame(2, 2)]);
    assert_eq!(n.take_backend_frames(10), vec![frame(3, 3)]);
    assert!(n.take_backend_frames(10).is_empty());
}

#[test]
fn held_output_leaves_only_when_its_checkpoint_is_safe() {
    let (mut d, w) = up(false);
    let send = |d: &mut TestDriver, f: &[u8]| {
        let a = d.alloc(f.len() as u64, 8);
        d.ram.write(a, f).unwrap();
        d.add(1, &[(a, f.len() as u32, false)]);
        d.kick(1);
    };
    let (a, b, c) = (frame(60, 1), frame(61, 2), frame(62, 3));
    d.dev.device_as_mut::<Net>().unwrap().hold_output();
    send(&mut d, &a);
    // Checkpoint 1 is taken: `a` is covered by it, what follows is not.
    d.dev.device_as_mut::<Net>().unwrap().mark_output(1);
    send(&mut d, &b);
    d.dev.device_as_mut::<Net>().unwrap().mark_output(2);
    send(&mut d, &c);
    assert!(
        w.lock().unwrap().from_guest.is_empty(),
        "nothing leaves while held"
    );
    assert_eq!(d.used(1).len(), 3, "the guest got its buffers back");
    let n = d.dev.device_as_mut::<Net>().unwrap();
    n.release_output(Some(1));
    assert_eq!(w.lock().unwrap().from_guest, vec![a.clone()]);
    n.release_output(Some(1));
    assert_eq!(w.lock().unwrap().from_guest.len(), 1, "released once");
    n.release_output(Some(2));
    assert_eq!(w.lock().unwrap().from_guest, vec![a.clone(), b.clone()]);
    let s = n.held_stats();
    assert_eq!((s.released, s.waiting, s.dropped), (2, 1, 0));
    // The end of the hold lets everything go and sends at once after.
    n.release_output(None);
    assert_eq!(
        w.lock().unwrap().from_guest,
        vec![a.clone(), b.clone(), c.clone()]
    );
    send(&mut d, &a);
    assert_eq!(w.lock().unwrap().from_guest.len(), 4);
    let n = d.dev.device_as_mut::<Net>().unwrap();
    assert_eq!(n.held_stats().released, 3);
    assert_eq!(n.counters().tx_frames, 4);
    // Bounded: beyond MAX_HELD frames are dropped and counted.
    n.hold_output();
    let a = d.alloc(70, 8);
    d.ram.write(a, &frame(50, 9)).unwrap();
    for _ in 0..MAX_HELD + 3 {
        d.add(1, &[(a, 70, false)]);
        d.kick(1);
        let _ = d.used(1);
    }
    let n = d.dev.device_as_mut::<Net>().unwrap();
    assert_eq!(n.held_stats().dropped, 3);
    n.release_output(None);
    assert_eq!(w.lock().unwrap().from_guest.len(), 4 + MAX_HELD);
}
