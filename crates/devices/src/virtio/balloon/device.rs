//! The balloon device: host-side control and guest-side queue processing.

use super::super::queue::{DescriptorChain, SplitQueue};
use super::super::{device_id, DeviceEvents, DeviceState, VirtioDevice};
use super::state::*;
use crate::StateError;
use godwit_memory::{GuestRam, PAGE_SIZE};
use serde::{Deserialize, Serialize};

/// Feature bit: the host must be told before deflated pages are reused.
pub const VIRTIO_BALLOON_F_MUST_TELL_HOST: u32 = 0;
/// Feature bit: memory statistics queue.
pub const VIRTIO_BALLOON_F_STATS_VQ: u32 = 1;
/// Feature bit: the guest deflates on OOM without asking.
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u32 = 2;
/// Feature bit: free page hinting queue.
pub const VIRTIO_BALLOON_F_FREE_PAGE_HINT: u32 = 3;
/// Feature bit: the guest tells which value its free pages hold.
pub const VIRTIO_BALLOON_F_PAGE_POISON: u32 = 4;
/// Feature bit: free page reporting queue.
pub const VIRTIO_BALLOON_F_REPORTING: u32 = 5;

/// Hint command ID meaning "stop hinting" (also the initial value).
pub const CMD_ID_STOP: u32 = 0;
/// Hint command ID meaning "done: the guest may reuse its hinted pages".
pub const CMD_ID_DONE: u32 = 1;
/// First command ID handed out for a hinting run.
const FIRST_CMD_ID: u32 = 2;

/// Size of every balloon queue. The driver needs at least
/// `PAGE_REPORTING_CAPACITY` (32) entries on the reporting queue and 2 on
/// the hint queue; 128 is what QEMU offers.
pub const QUEUE_SIZE: u16 = 128;

/// The balloon protocol counts in 4 KiB pages whatever the guest page size.
const BALLOON_PFN_SHIFT: u32 = 12;
const BALLOON_PAGE: u64 = 1 << BALLOON_PFN_SHIFT;
// Balloon PFNs index guest RAM pages and the free map directly.
const _: () = assert!(PAGE_SIZE as u64 == BALLOON_PAGE);

/// Configuration space size: num_pages, actual, free_page_hint_cmd_id,
/// poison_val (all little-endian u32).
const CONFIG_SIZE: usize = 16;

/// PFN buffers are read in chunks of this many bytes, so a huge descriptor
/// length cannot make the device allocate huge buffers.
const PFN_CHUNK: usize = 4096;
/// Stats entries read from one buffer at most (Linux sends 10).
const MAX_STATS: usize = 64;
/// One stats entry: `{ le16 tag; le64 val }`, packed.
const STAT_SIZE: usize = 10;

/// Which optional balloon features the device offers.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct BalloonFeatures {
    /// VIRTIO_BALLOON_F_STATS_VQ.
    pub stats: bool,
    /// VIRTIO_BALLOON_F_DEFLATE_ON_OOM.
    pub deflate_on_oom: bool,
    /// VIRTIO_BALLOON_F_FREE_PAGE_HINT.
    pub free_page_hint: bool,
    /// VIRTIO_BALLOON_F_PAGE_POISON. Linux offers free page reporting only
    /// together with it when the guest poisons or zeroes freed pages; the
    /// device then keeps reported pages whose expected content is not zero
    /// (see [`Balloon`]).
    pub page_poison: bool,
    /// VIRTIO_BALLOON_F_REPORTING.
    pub reporting: bool,
}

impl Default for BalloonFeatures {
    /// Everything Godwit's self-ballooning uses; no deflate-on-OOM (as in
    /// QEMU's default), so the host target is authoritative.
    fn default() -> Self {
        BalloonFeatures {
            stats: true,
            deflate_on_oom: false,
            free_page_hint: true,
            page_poison: true,
            reporting: true,
        }
    }
}

impl BalloonFeatures {
    /// The feature bits.
    pub fn bits(&self) -> u64 {
        let mut b = 0u64;
        for (on, bit) in [
            (self.stats, VIRTIO_BALLOON_F_STATS_VQ),
            (self.deflate_on_oom, VIRTIO_BALLOON_F_DEFLATE_ON_OOM),
            (self.free_page_hint, VIRTIO_BALLOON_F_FREE_PAGE_HINT),
            (self.page_poison, VIRTIO_BALLOON_F_PAGE_POISON),
            (self.reporting, VIRTIO_BALLOON_F_REPORTING),
        ] {
            if on {
                b |= 1 << bit;
            }
        }
        b
    }
}

/// What a queue is for, once the features are known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Inflate,
    Deflate,
    Stats,
    FreePage,
    Reporting,
}

/// The queue roles in index order for the negotiated `features`.
fn roles(features: u64) -> Vec<Role> {
    let mut r = vec![Role::Inflate, Role::Deflate];
    for (bit, role) in [
        (VIRTIO_BALLOON_F_STATS_VQ, Role::Stats),
        (VIRTIO_BALLOON_F_FREE_PAGE_HINT, Role::FreePage),
        (VIRTIO_BALLOON_F_REPORTING, Role::Reporting),
    ] {
        if features & 1 << bit != 0 {
            r.push(role);
        }
    }
    r
}

/// The virtio-balloon device.
///
/// Inflate: the PFNs the guest gives up are discarded from host memory
/// (they read as zero afterwards) and marked free. Deflate: they leave the
/// balloon; the guest writes them again before use, which clears their free
/// bit. Free page reporting: each reported range is discarded and marked
/// free the same way. Free page hinting: hinted pages are only marked free,
/// never discarded (see [`Balloon::start_free_page_hint`]).
///
/// Page poisoning: when the guest negotiated PAGE_POISON and wrote a
/// non-zero `poison_val`, its free pages must keep that pattern, and a
/// discarded page would read as zero; reported pages are then left alone
/// (counted in [`ReportingStatus::pages_kept`]). Inflated and hinted pages
/// are not affected: the guest allocated them, and it re-poisons them when
/// it frees them again, which is a write.
pub struct Balloon {
    offered: BalloonFeatures,
    acked: u64,
    roles: Vec<Role>,
    num_pages: u32,
    actual: u32,
    cmd_id: u32,
    poison_val: u32,
    ram_base: u64,
    ram_pages: u64,
    inflated: Vec<u64>,
    inflated_count: u64,
    stats: BalloonStats,
    stats_buffer: Option<u16>,
    stats_requested: bool,
    hint: HintStatus,
    next_cmd_id: u32,
    reporting: ReportingStatus,
    reported_unread: u64,
    config_pending: bool,
    free_map_changed: bool,
    /// Requests that marked pages free, held until every vCPU dropped its
    /// cached write translations: (queue, head).
    held: Vec<(u16, u16)>,
}

impl Balloon {
    /// A balloon for `ram` offering `features`, with a target of 0 pages.
    pub fn new(features: BalloonFeatures, ram: &GuestRam) -> Self {
        let ram_pages = ram.pages() as u64;
        Balloon {
            offered: features,
            acked: 0,
            roles: Vec::new(),
            num_pages: 0,
            actual: 0,
            cmd_id: CMD_ID_STOP,
            poison_val: 0,
            ram_base: ram.base(),
            ram_pages,
            inflated: vec![0; ram_pages.div_ceil(64) as usize],
            inflated_count: 0,
            stats: BalloonStats::default(),
            stats_buffer: None,
            stats_requested: false,
            hint: HintStatus {
                phase: HintPhase::Idle,
                cmd_id: 0,
                blocks: 0,
                pages: 0,
                pages_total: 0,
            },
            next_cmd_id: FIRST_CMD_ID,
            reporting: ReportingStatus::default(),
            reported_unread: 0,
            config_pending: false,
            free_map_changed: false,
            held: Vec::new(),
        }
    }

    // ---- host-side control (the VMM calls these, then `VirtioMmio::poll`)

    /// Asks the guest to hold `pages` 4 KiB pages in the balloon (config
    /// `num_pages`) and raises a configuration-change interrupt at the next
    /// poll.
    pub fn set_target_pages(&mut self, pages: u32) {
        self.num_pages = pages;
        self.config_pending = true;
    }

    /// The host's current target in 4 KiB pages.
    pub fn target_pages(&self) -> u32 {
        self.num_pages
    }

    /// The guest's own count of pages in the balloon (config `actual`).
    pub fn actual_pages(&self) -> u32 {
        self.actual
    }

    /// Pages the device has seen inflated and not deflated.
    pub fn inflated_pages(&self) -> u64 {
        self.inflated_count
    }

    /// Asks the guest for fresh statistics: the device returns the stats
    /// buffer it holds (at the next poll), and the guest answers with a new
    /// one. [`BalloonStats::updates`] grows when it arrives.
    pub fn request_stats(&mut self) {
        self.stats_requested = true;
    }

    /// The latest statistics the guest sent.
    pub fn stats(&self) -> BalloonStats {
        self.stats.clone()
    }

    /// Free page reporting counters.
    pub fn reporting_status(&self) -> ReportingStatus {
        self.reporting
    }

    /// Pages discarded by free page reporting since the last call.
    pub fn take_reported_pages(&mut self) -> u64 {
        std::mem::take(&mut self.reported_unread)
    }

    /// Whether the driver accepted `VIRTIO_BALLOON_F_FREE_PAGE_HINT`.
    pub fn free_page_hint_negotiated(&self) -> bool {
        self.roles.contains(&Role::FreePage)
    }

    /// Starts a free page hinting run: publishes a new command ID (never 0
    /// = STOP or 1 = DONE) and raises a configuration-change interrupt at
    /// the next poll. Returns the ID.
    ///
    /// The guest answers with the ID, then one buffer per free block it
    /// allocated (4 MiB blocks on RISC-V), then STOP. Hinted pages are
    /// marked in the free map but **never discarded**: Linux holds them
    /// only until the host says DONE *or until its shrinker wants them back
    /// under memory pressure*, which it does without telling the host; and
    /// the specification forbids the device to change a hinted page the
    /// guest wrote after the hint, or any hinted page after DONE. A
    /// discard would zero pages the guest may be using by then. So a hint
    /// only says "this page's content at hint time is garbage".
    ///
    /// The migration engine may therefore skip a hinted page only if it has
    /// not been dirtied since dirty logging began, and a run must be started
    /// after logging is turned on. Here hints are processed synchronously
    /// in the guest's kick, so a guest write after the hint always clears
    /// the free bit (and sets the dirty bit), provided the vCPUs dropped their
    /// cached write translations ([`take_free_map_changed`]); the dirty-log
    /// check is the engine's guard that does not depend on that ordering.
    ///
    /// [`take_free_map_changed`]: VirtioDevice::take_free_map_changed
    pub fn start_free_page_hint(&mut self) -> u32 {
        let id = self.next_cmd_id.max(FIRST_CMD_ID);
        self.next_cmd_id = id.checked_add(1).unwrap_or(FIRST_CMD_ID);
        self.cmd_id = id;
        self.hint.phase = HintPhase::Requested;
        self.hint.cmd_id = id;
        self.hint.blocks = 0;
        self.hint.pages = 0;
        self.config_pending = true;
        id
    }

    /// Ends hinting: publishes DONE so the guest frees the blocks it holds
    /// (a configuration-change interrupt at the next poll).
    pub fn stop_free_page_hint(&mut self) {
        self.cmd_id = CMD_ID_DONE;
        if self.hint.phase != HintPhase::Idle {
            self.hint.phase = HintPhase::Done;
        }
        self.config_pending = true;
    }

    /// Free page hinting progress.
    pub fn hint_status(&self) -> HintStatus {
        self.hint
    }

    // ---- guest-side processing

    fn queue_index(&self, role: Role) -> Option<usize> {
        self.roles.iter().position(|&r| r == role)
    }

    fn page_index(&self, gpa: u64) -> Option<u64> {
        let off = gpa.checked_sub(self.ram_base)?;
        let page = off / BALLOON_PAGE;
        (page < self.ram_pages).then_some(page)
    }

    fn inflated_bit(&mut self, page: u64, on: bool) {
        let (w, m) = ((page / 64) as usize, 1u64 << (page % 64));
        let Some(word) = self.inflated.get_mut(w) else {
            return;
        };
        let was = *word & m != 0;
        if on && !was {
            *word |= m;
            self.inflated_count += 1;
        } else if !on && was {
            *word &= !m;
            self.inflated_count -= 1;
        }
    }

    /// Calls `f` for every PFN in the chain's readable buffers, reading
    /// them in bounded chunks. Stops at a buffer outside RAM.
    fn for_each_pfn(chain: &DescriptorChain, ram: &GuestRam, mut f: impl FnMut(u32)) {
        let mut buf = [0u8; PFN_CHUNK];
        for d in chain.readable() {
            let len = u64::from(d.len) & !3;
            let mut off = 0u64;
            while off < len {
                let n = (len - off).min(PFN_CHUNK as u64) as usize;
                let Some(addr) = d.addr.checked_add(off) else {
                    return;
                };
                if ram.read(addr, &mut buf[..n]).is_err() {
                    return;
                }
                for pfn in buf[..n].chunks_exact(4) {
                    f(u32::from_le_bytes([pfn[0], pfn[1], pfn[2], pfn[3]]));
                }
                off += n as u64;
            }
        }
    }

    fn inflate(&mut self, chain: &DescriptorChain, ram: &GuestRam) {
        let mut pages = Vec::new();
        Self::for_each_pfn(chain, ram, |pfn| pages.push(pfn));
        // Coalesce runs of consecutive pages into one madvise each.
        let mut run: Option<(u64, u64)> = None;
        for pfn in pages {
            let Some(page) = self.page_index(u64::from(pfn) << BALLOON_PFN_SHIFT) else {
                continue;
            };
            self.inflated_bit(page, true);
            run = match run {
                Some((start, n)) if start + n == page => Some((start, n + 1)),
                other => {
                    if let Some((start, n)) = other {
                        self.discard(ram, start, n);
                    }
                    Some((page, 1))
                }
            };
        }
        if let Some((start, n)) = run {
            self.discard(ram, start, n);
        }
    }

    fn deflate(&mut self, chain: &DescriptorChain, ram: &GuestRam) {
        let mut pages = Vec::new();
        Self::for_each_pfn(chain, ram, |pfn| pages.push(pfn));
        for pfn in pages {
            if let Some(page) = self.page_index(u64::from(pfn) << BALLOON_PFN_SHIFT) {
                // The page stays marked free until the guest writes it.
                self.inflated_bit(page, false);
            }
        }
    }

    fn discard(&mut self, ram: &GuestRam, first: u64, count: u64) {
        // Inside RAM by construction; a failing madvise leaves the page in
        // place and unmarked, which is always safe.
        if ram.discard(first as usize, count as usize).is_ok() {
            self.free_map_changed = true;
        }
    }

    /// The whole pages of `addr..addr+len` that lie inside RAM, as
    /// `(first page index, count)`.
    fn whole_pages(&self, addr: u64, len: u32) -> Option<(u64, u64)> {
        let end = addr.checked_add(u64::from(len))?;
        let ram_end = self.ram_base + self.ram_pages * BALLOON_PAGE;
        let start = addr
            .max(self.ram_base)
            .checked_next_multiple_of(BALLOON_PAGE)?;
        let end = end.min(ram_end) / BALLOON_PAGE * BALLOON_PAGE;
        (end > start).then(|| {
            (
                (start - self.ram_base) / BALLOON_PAGE,
                (end - start) / BALLOON_PAGE,
            )
        })
    }

    fn keep_reported_pages(&self) -> bool {
        self.acked & 1 << VIRTIO_BALLOON_F_PAGE_POISON != 0 && self.poison_val != 0
    }

    fn report(&mut self, chain: &DescriptorChain, ram: &GuestRam) {
        self.reporting.requests += 1;
        let keep = self.keep_reported_pages();
        for d in &chain.descriptors {
            let Some((first, count)) = self.whole_pages(d.addr, d.len) else {
                continue;
            };
            if keep {
                self.reporting.pages_kept += count;
                continue;
            }
            if ram.discard(first as usize, count as usize).is_ok() {
                self.free_map_changed = true;
                self.reporting.pages_total += count;
                self.reported_unread += count;
            }
        }
    }

    fn free_page_hint(&mut self, chain: &DescriptorChain, ram: &GuestRam) {
        // A device-readable buffer carries a command ID (the start echo or
        // STOP); device-writable ones are free blocks.
        if let Some(d) = chain.readable().next() {
            if d.len >= 4 {
                if let Ok(b) = ram.read_le::<4>(d.addr) {
                    let id = u32::from_le_bytes(b);
                    if id == CMD_ID_STOP {
                        if self.hint.phase == HintPhase::Running {
                            self.hint.phase = HintPhase::Stopped;
                        }
                    } else if id == self.cmd_id
                        && id >= FIRST_CMD_ID
                        && self.hint.phase == HintPhase::Requested
                    {
                        self.hint.phase = HintPhase::Running;
                    }
                    // Any other ID is from an older run: ignored.
                }
            }
        }
        if self.hint.phase != HintPhase::Running {
            // Blocks from a stale run (or before the echo) are not hints
            // for this run; the guest gets them back at DONE anyway.
            return;
        }
        for d in chain.writable() {
            let Some((first, count)) = self.whole_pages(d.addr, d.len) else {
                continue;
            };
            ram.free_map()
                .set_range(first as usize, (first + count) as usize);
            self.free_map_changed = true;
            self.hint.blocks += 1;
            self.hint.pages += count;
            self.hint.pages_total += count;
        }
    }

    fn stats_buffer(&mut self, chain: &DescriptorChain, q: &mut SplitQueue, ram: &GuestRam) {
        if let Some(old) = self.stats_buffer.take() {
            // A well-behaved driver has one buffer; give back any extra.
            q.add_used(ram, old, 0);
        }
        if let Some(bytes) = chain.read_readable(ram, MAX_STATS * STAT_SIZE) {
            for e in bytes.chunks_exact(STAT_SIZE) {
                let tag = u16::from_le_bytes([e[0], e[1]]);
                let mut v = [0u8; 8];
                v.copy_from_slice(&e[2..10]);
                self.stats.set(tag, u64::from_le_bytes(v));
            }
            self.stats.updates += 1;
        }
        self.stats_buffer = Some(chain.head);
    }

    fn config_bytes(&self) -> [u8; CONFIG_SIZE] {
        let mut c = [0u8; CONFIG_SIZE];
        for (i, v) in [self.num_pages, self.actual, self.cmd_id, self.poison_val]
            .iter()
            .enumerate()
        {
            c[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        c
    }

    fn bitmap_runs(&self) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (n, &w) in self.inflated.iter().enumerate() {
            let mut w = w;
            while w != 0 {
                let page = n as u64 * 64 + u64::from(w.trailing_zeros());
                w &= w - 1;
                match runs.last_mut() {
                    Some((start, count)) if *start + *count == page => *count += 1,
                    _ => runs.push((page, 1)),
                }
            }
        }
        runs
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        device_id::BALLOON
    }

    fn features(&self) -> u64 {
        self.offered.bits()
    }

    fn num_queues(&self) -> u16 {
        roles(self.offered.bits()).len() as u16
    }

    fn queue_max_size(&self, _index: u16) -> u16 {
        QUEUE_SIZE
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let c = self.config_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| c.get(o).copied())
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut c = self.config_bytes();
        for (i, &b) in data.iter().enumerate() {
            let o = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok());
            if let Some(slot) = o.and_then(|o| c.get_mut(o)) {
                *slot = b;
            }
        }
        // Only `actual` and `poison_val` belong to the driver.
        self.actual = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        self.poison_val = u32::from_le_bytes([c[12], c[13], c[14], c[15]]);
    }

    fn activate(&mut self, features: u64) {
        self.acked = features;
        self.roles = roles(features & self.offered.bits());
    }

    fn notify(&mut self, queue: u16, queues: &mut [SplitQueue], ram: &GuestRam) -> bool {
        let Some(&role) = self.roles.get(usize::from(queue)) else {
            return false;
        };
        let Some(q) = queues.get_mut(usize::from(queue)) else {
            return false;
        };
        let mut used = false;
        // pop() stops after at most `size` chains per call (the available
        // index cannot run further ahead) or when the queue breaks.
        while let Some(chain) = q.pop(ram) {
            let freed_before = self.free_map_changed;
            self.free_map_changed = false;
            match role {
                Role::Inflate => self.inflate(&chain, ram),
                Role::Deflate => self.deflate(&chain, ram),
                Role::Reporting => self.report(&chain, ram),
                Role::FreePage => self.free_page_hint(&chain, ram),
                Role::Stats => {
                    // Held until the host wants fresh numbers.
                    self.stats_buffer(&chain, q, ram);
                    self.free_map_changed = freed_before;
                    continue;
                }
            }
            if self.free_map_changed {
                // The guest may reuse these pages once it has the buffer
                // back: not before every vCPU forgot its write translations.
                self.held.push((queue, chain.head));
            } else {
                q.add_used(ram, chain.head, 0);
                used = true;
            }
            self.free_map_changed |= freed_before;
        }
        used
    }

    fn poll(&mut self, queues: &mut [SplitQueue], ram: &GuestRam) -> DeviceEvents {
        let mut ev = DeviceEvents::default();
        if std::mem::take(&mut self.config_pending) {
            ev.config_changed = true;
        }
        if self.stats_requested {
            if let (Some(head), Some(q)) = (
                self.stats_buffer,
                self.queue_index(Role::Stats)
                    .and_then(|i| queues.get_mut(i)),
            ) {
                q.add_used(ram, head, 0);
                self.stats_buffer = None;
                self.stats_requested = false;
            }
            // Without a held buffer the guest is already sending a fresh
            // one; the request stays until that one is returned.
        }
        ev
    }

    fn reset(&mut self) {
        // The driver forgets its balloon on reset, so the device does too;
        // the host's target stays.
        self.acked = 0;
        self.roles.clear();
        self.actual = 0;
        self.poison_val = 0;
        self.cmd_id = CMD_ID_STOP;
        self.inflated.iter_mut().for_each(|w| *w = 0);
        self.inflated_count = 0;
        self.stats_buffer = None;
        self.stats_requested = false;
        self.hint.phase = HintPhase::Idle;
        self.config_pending = false;
    }

    fn state(&self) -> DeviceState {
        DeviceState::Balloon(self.saved())
    }

    fn restore(&mut self, s: &DeviceState) -> Result<(), StateError> {
        let DeviceState::Balloon(s) = s else {
            return Err(StateError::new(
                "virtio-balloon",
                format!("a {} state is not a balloon's", s.kind()),
            ));
        };
        self.load(s)
    }

    fn take_free_map_changed(&mut self) -> bool {
        std::mem::take(&mut self.free_map_changed)
    }

    fn release_held(&mut self, queues: &mut [SplitQueue], ram: &GuestRam) -> bool {
        let held = std::mem::take(&mut self.held);
        let mut used = false;
        for (queue, head) in held {
            if let Some(q) = queues.get_mut(usize::from(queue)) {
                q.add_used(ram, head, 0);
                used = true;
            }
        }
        used
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Balloon {
    /// What the balloon remembers (see [`BalloonState`]).
    pub fn saved(&self) -> BalloonState {
        debug_assert!(self.held.is_empty(), "state taken with held requests");
        BalloonState {
            offered: self.offered,
            acked_features: self.acked,
            num_pages: self.num_pages,
            actual: self.actual,
            free_page_hint_cmd_id: self.cmd_id,
            poison_val: self.poison_val,
            ram_base: self.ram_base,
            ram_pages: self.ram_pages,
            inflated: self.bitmap_runs(),
            stats: self.stats.clone(),
            stats_buffer: self.stats_buffer,
            stats_requested: self.stats_requested,
            hint: self.hint,
            next_cmd_id: self.next_cmd_id,
            reporting: self.reporting,
            reported_unread: self.reported_unread,
            config_pending: self.config_pending,
        }
    }

    /// Loads a saved state; on error nothing is changed.
    pub fn load(&mut self, s: &BalloonState) -> Result<(), StateError> {
        let err = |r: String| Err(StateError::new("virtio-balloon", r));
        if s.ram_base != self.ram_base || s.ram_pages != self.ram_pages {
            return err(format!(
                "RAM {:#x}+{} pages saved, device has {:#x}+{}",
                s.ram_base, s.ram_pages, self.ram_base, self.ram_pages
            ));
        }
        if s.offered != self.offered {
            return err("offered features differ (queue layout would change)".into());
        }
        let mut inflated = vec![0u64; self.inflated.len()];
        let mut count = 0u64;
        for &(start, n) in &s.inflated {
            if start.checked_add(n).is_none_or(|end| end > self.ram_pages) {
                return err(format!("inflated run {start}+{n} outside RAM"));
            }
            for page in start..start + n {
                let (w, m) = ((page / 64) as usize, 1u64 << (page % 64));
                if inflated[w] & m == 0 {
                    inflated[w] |= m;
                    count += 1;
                }
            }
        }
        self.acked = s.acked_features;
        self.roles = if s.acked_features == 0 {
            Vec::new()
        } else {
            roles(s.acked_features & self.offered.bits())
        };
        self.num_pages = s.num_pages;
        self.actual = s.actual;
        self.cmd_id = s.free_page_hint_cmd_id;
        self.poison_val = s.poison_val;
        self.inflated = inflated;
        self.inflated_count = count;
        self.stats = s.stats.clone();
        self.stats_buffer = s.stats_buffer;
        self.stats_requested = s.stats_requested;
        self.hint = s.hint;
        self.next_cmd_id = s.next_cmd_id;
        self.reporting = s.reporting;
        self.reported_unread = s.reported_unread;
        self.config_pending = s.config_pending;
        self.free_map_changed = false;
        self.held.clear();
        Ok(())
    }
}
