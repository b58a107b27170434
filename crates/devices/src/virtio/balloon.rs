//! virtio-balloon (device ID 5) as Linux 6.1's `virtio_balloon.c` uses it:
//! inflate/deflate, memory statistics, free page hinting and free page
//! reporting. This is the device side of Godwit's self-ballooning
//! (DESIGN.md): pages the guest gives back are `madvise(MADV_DONTNEED)`'d
//! and marked in the guest RAM free map, so no migration mode sends them.
//!
//! Queue numbering follows the driver's `init_vqs`: inflateq and deflateq
//! always exist; statsq, free_page_vq and reporting_vq follow in that order,
//! each present only if its feature was negotiated, and *the indexes close
//! up* (virtio-mmio's `vm_find_vqs` skips absent queues without consuming an
//! index). So with STATS_VQ and REPORTING but no FREE_PAGE_HINT the
//! reporting queue is queue 3, not 4.
//!
//! After this device sets bits in the free map (inflate, reporting, hints)
//! the VMM must make the vCPU drop its cached write translations for guest
//! RAM (see [`Balloon::take_free_map_changed`]): a page marked free must
//! clear its free bit on the next guest store, which only happens when the
//! store goes through `GuestRam::note_write`.

use super::queue::{DescriptorChain, SplitQueue};
use super::{device_id, DeviceEvents, VirtioDevice};
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

/// The guest's latest memory statistics (`None`: the guest never sent that
/// tag). Byte counts are bytes, as the guest reports them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct BalloonStats {
    /// Bytes swapped in (tag 0).
    pub swap_in: Option<u64>,
    /// Bytes swapped out (tag 1).
    pub swap_out: Option<u64>,
    /// Major page faults (tag 2).
    pub major_faults: Option<u64>,
    /// Minor page faults (tag 3).
    pub minor_faults: Option<u64>,
    /// Free memory in bytes (tag 4).
    pub free_memory: Option<u64>,
    /// Total memory in bytes (tag 5).
    pub total_memory: Option<u64>,
    /// Available memory in bytes, as `MemAvailable` (tag 6).
    pub available_memory: Option<u64>,
    /// Page cache bytes (tag 7).
    pub disk_caches: Option<u64>,
    /// Hugetlb allocations (tag 8).
    pub hugetlb_allocations: Option<u64>,
    /// Hugetlb allocation failures (tag 9).
    pub hugetlb_failures: Option<u64>,
    /// How many stats buffers the guest has sent so far: compare before and
    /// after [`Balloon::request_stats`] to know fresh numbers arrived.
    pub updates: u64,
}

impl BalloonStats {
    fn set(&mut self, tag: u16, val: u64) {
        let slot = match tag {
            0 => &mut self.swap_in,
            1 => &mut self.swap_out,
            2 => &mut self.major_faults,
            3 => &mut self.minor_faults,
            4 => &mut self.free_memory,
            5 => &mut self.total_memory,
            6 => &mut self.available_memory,
            7 => &mut self.disk_caches,
            8 => &mut self.hugetlb_allocations,
            9 => &mut self.hugetlb_failures,
            _ => return,
        };
        *slot = Some(val);
    }
}

/// Where a free page hinting run stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HintPhase {
    /// No run yet (or the driver reset the device).
    Idle,
    /// The host published a command ID; the guest has not answered yet.
    Requested,
    /// The guest echoed the command ID and is sending free blocks.
    Running,
    /// The guest sent STOP: it has hinted everything it could.
    Stopped,
    /// The host said DONE: the guest got its hinted pages back.
    Done,
}

/// Free page hinting progress, from [`Balloon::hint_status`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct HintStatus {
    /// Phase of the current (or last) run.
    pub phase: HintPhase,
    /// Command ID of the current run (0 before the first).
    pub cmd_id: u32,
    /// Free blocks hinted in the current run.
    pub blocks: u64,
    /// 4 KiB pages marked free in the current run.
    pub pages: u64,
    /// 4 KiB pages marked free over all runs.
    pub pages_total: u64,
}

/// Free page reporting counters, from [`Balloon::reporting_status`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReportingStatus {
    /// Report requests (buffers) the guest sent.
    pub requests: u64,
    /// 4 KiB pages discarded and marked free, in total.
    pub pages_total: u64,
    /// 4 KiB pages reported but kept because the guest expects a non-zero
    /// poison value in free pages.
    pub pages_kept: u64,
}

/// The saved state of a [`Balloon`] (the transport saves the queues).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct BalloonState {
    /// Features offered.
    pub offered: BalloonFeatures,
    /// Features the driver accepted (0 until `DRIVER_OK`).
    pub acked_features: u64,
    /// Config: the host's target, in 4 KiB pages.
    pub num_pages: u32,
    /// Config: pages the guest says are in the balloon.
    pub actual: u32,
    /// Config: free page hint command ID.
    pub free_page_hint_cmd_id: u32,
    /// Config: the value the guest expects in free pages.
    pub poison_val: u32,
    /// First guest-physical address of RAM the state was taken with.
    pub ram_base: u64,
    /// Number of 4 KiB RAM pages the state was taken with.
    pub ram_pages: u64,
    /// Inflated pages as runs `(first page index from RAM base, count)`.
    pub inflated: Vec<(u64, u64)>,
    /// Latest guest statistics.
    pub stats: BalloonStats,
    /// Head of the stats buffer the device holds, if any.
    pub stats_buffer: Option<u16>,
    /// The host asked for fresh stats and has not got them yet.
    pub stats_requested: bool,
    /// Hinting progress.
    pub hint: HintStatus,
    /// Command ID the next hinting run gets.
    pub next_cmd_id: u32,
    /// Reporting counters.
    pub reporting: ReportingStatus,
    /// Reported pages not yet returned by [`Balloon::take_reported_pages`].
    pub reported_unread: u64,
    /// The host changed the config and the guest has not been told yet.
    pub config_pending: bool,
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

    /// True (once) when the device set bits in the guest RAM free map since
    /// the last call. The VMM must then make the vCPU drop its cached write
    /// translations before the guest runs on, or a store through a stale
    /// translation would leave a reused page marked free, and migration
    /// would skip data the guest wrote.
    pub fn take_free_map_changed(&mut self) -> bool {
        std::mem::take(&mut self.free_map_changed)
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
    /// the free bit (and sets the dirty bit), provided the vCPU dropped its
    /// cached write translations ([`take_free_map_changed`]); the dirty-log
    /// check is the engine's guard that does not depend on that ordering.
    ///
    /// [`take_free_map_changed`]: Self::take_free_map_changed
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
    type State = BalloonState;

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

    fn notify(&mut self, queue: u16, q: &mut SplitQueue, ram: &GuestRam) -> bool {
        let Some(&role) = self.roles.get(usize::from(queue)) else {
            return false;
        };
        let mut used = false;
        // pop() stops after at most `size` chains per call (the available
        // index cannot run further ahead) or when the queue breaks.
        while let Some(chain) = q.pop(ram) {
            match role {
                Role::Inflate => self.inflate(&chain, ram),
                Role::Deflate => self.deflate(&chain, ram),
                Role::Reporting => self.report(&chain, ram),
                Role::FreePage => self.free_page_hint(&chain, ram),
                Role::Stats => {
                    // Held until the host wants fresh numbers.
                    self.stats_buffer(&chain, q, ram);
                    continue;
                }
            }
            q.add_used(ram, chain.head, 0);
            used = true;
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

    fn state(&self) -> BalloonState {
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

    fn restore(&mut self, s: &BalloonState) -> Result<(), StateError> {
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::mmio::{VirtioMmio, INT_CONFIG_CHANGE, INT_USED_BUFFER};
    use crate::virtio::status;
    use crate::virtio::testdrv::{ram, TestDriver, RAM_BASE};
    use crate::MmioDevice;
    use std::sync::Arc;

    const PAGE: u64 = PAGE_SIZE as u64;
    const ALL: u64 = (1 << 32) | 0x3f;

    fn balloon(features: BalloonFeatures) -> TestDriver<Balloon> {
        let ram = ram();
        let dev = VirtioMmio::new(Balloon::new(features, &ram), ram);
        TestDriver::new(dev)
    }

    /// A driver that negotiated everything offered; queues 0..=4 are
    /// inflate, deflate, stats, free page, reporting.
    fn full() -> TestDriver<Balloon> {
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

    fn fill(d: &TestDriver<Balloon>, page: u64, n: u64) {
        for p in page..page + n {
            d.ram.write(RAM_BASE + p * PAGE, &[0xab; 4096]).unwrap();
        }
    }

    fn page_is_zero(d: &TestDriver<Balloon>, page: u64) -> bool {
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
        d.dev.device_mut().set_target_pages(300);
        let gen = d.r32(0x0fc);
        assert!(!d.dev.irq_level());
        d.dev.poll();
        assert!(d.dev.irq_level());
        assert_eq!(d.take_interrupts(), INT_CONFIG_CHANGE);
        assert!(!d.dev.irq_level());
        assert_ne!(d.r32(0x0fc), gen, "generation bumped");
        assert_eq!(d.config_read32(0), 300);
        // The guest writes `actual`; it cannot write num_pages or cmd id.
        d.config_write32(4, 120);
        d.config_write32(0, 7);
        d.config_write32(8, 7);
        assert_eq!(d.dev.device().actual_pages(), 120);
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
        assert_eq!(d.dev.device().reporting_status().pages_total, 2);
        // No optional features at all: just inflate and deflate.
        let mut d = balloon(BalloonFeatures::default());
        d.probe(1 << 32, 2);
        let bytes = pfn_bytes(&[3]);
        d.add_out_bytes(0, &bytes);
        d.kick(0);
        assert_eq!(d.dev.device().inflated_pages(), 1);
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
        assert_eq!(d.dev.device().inflated_pages(), 3);
        assert!(d.dev.device_mut().take_free_map_changed());
        assert!(!d.dev.device_mut().take_free_map_changed());
        // Deflate two; they stay free until the guest writes them.
        d.add_out_bytes(1, &pfn_bytes(&[100, 102, 999]));
        d.kick(1);
        assert_eq!(d.used(1).len(), 1);
        assert_eq!(d.dev.device().inflated_pages(), 1);
        assert!(d.ram.free_map().get(100));
        d.ram.write(RAM_BASE + 100 * PAGE, &[1]).unwrap();
        assert!(!d.ram.free_map().get(100));
        let s = d.dev.device().state();
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
        let resident =
            |d: &TestDriver<Balloon>| (first..first + n).filter(|&p| !page_is_zero(d, p)).count();
        assert_eq!(resident(&d), n as usize);
        for chunk in (first..first + n).collect::<Vec<_>>().chunks(256) {
            d.add_out_bytes(0, &pfn_bytes(chunk));
            d.kick(0);
            d.used(0);
        }
        assert_eq!(resident(&d), 0);
        assert_eq!(d.ram.free_map().count(), n as usize);
        assert_eq!(d.dev.device().inflated_pages(), n);
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
        let r = d.dev.device().reporting_status();
        assert_eq!(r.pages_total, 8 + 3 + 4);
        assert_eq!(r.requests, 1);
        assert_eq!(d.dev.device_mut().take_reported_pages(), 15);
        assert_eq!(d.dev.device_mut().take_reported_pages(), 0);
        assert_eq!(
            d.dev.device().inflated_pages(),
            0,
            "reports are not inflation"
        );
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
        assert_eq!(d.dev.device().reporting_status().pages_kept, 2);
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
        assert_eq!(d.dev.device().stats().updates, 0, "not live yet");
        d.w32(
            0x070,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        let s = d.dev.device().stats();
        assert_eq!(s.updates, 1);
        assert_eq!(s.free_memory, Some(100 << 20));
        assert_eq!(s.total_memory, Some(512 << 20));
        assert_eq!(s.available_memory, Some(300 << 20));
        assert_eq!(s.minor_faults, Some(42));
        assert_eq!(s.swap_in, None);
        assert!(d.used(2).is_empty(), "buffer held by the device");
        assert!(!d.dev.irq_level());
        // The host asks: the buffer comes back, the guest refills.
        d.dev.device_mut().request_stats();
        d.dev.poll();
        assert_eq!(d.used(2), vec![(u32::from(head), 0)]);
        assert_eq!(d.take_interrupts(), INT_USED_BUFFER);
        stats[2..10].copy_from_slice(&(50u64 << 20).to_le_bytes());
        d.add_out_bytes(2, &stats);
        d.kick(2);
        assert_eq!(d.dev.device().stats().free_memory, Some(50 << 20));
        assert_eq!(d.dev.device().stats().updates, 2);
        // A request with no held buffer waits for the next one.
        d.dev.device_mut().request_stats();
        d.dev.poll();
        assert_eq!(d.used(2).len(), 1);
        d.dev.device_mut().request_stats();
        d.dev.poll();
        assert!(d.used(2).is_empty());
        d.add_out_bytes(2, &stats);
        d.kick(2);
        d.dev.poll();
        assert_eq!(d.used(2).len(), 1);
    }

    #[test]
    fn free_page_hinting() {
        let mut d = full();
        // Linux's free_page_vq has no callback: interrupts suppressed.
        d.set_avail_flags(3, 1);
        fill(&d, 512, 256);
        assert_eq!(d.dev.device().hint_status().phase, HintPhase::Idle);
        assert!(d.dev.device().free_page_hint_negotiated());
        let id = d.dev.device_mut().start_free_page_hint();
        assert!(id >= 2);
        d.dev.poll();
        assert_eq!(d.take_interrupts(), INT_CONFIG_CHANGE);
        assert_eq!(d.config_read32(8), id);
        assert_eq!(d.dev.device().hint_status().phase, HintPhase::Requested);
        // A block before the echo is not a hint for this run.
        d.add(3, &[(RAM_BASE + 512 * PAGE, 4 * PAGE as u32, true)]);
        d.kick(3);
        assert_eq!(d.dev.device().hint_status().pages, 0);
        // Echo, then two blocks of 1 MiB, then STOP.
        d.add_out_bytes(3, &id.to_le_bytes());
        d.kick(3);
        assert_eq!(d.dev.device().hint_status().phase, HintPhase::Running);
        d.add(3, &[(RAM_BASE + 512 * PAGE, 256 * PAGE as u32, true)]);
        d.kick(3);
        d.add_out_bytes(3, &CMD_ID_STOP.to_le_bytes());
        d.kick(3);
        assert_eq!(d.used(3).len(), 4, "every buffer returned");
        assert_eq!(d.take_interrupts(), 0, "suppressed");
        let h = d.dev.device().hint_status();
        assert_eq!(h.phase, HintPhase::Stopped);
        assert_eq!((h.blocks, h.pages, h.cmd_id), (1, 256, id));
        // Marked free but not discarded: the content is still there.
        assert!(d.ram.free_map().get(600));
        assert!(!page_is_zero(&d, 600));
        assert!(d.dev.device_mut().take_free_map_changed());
        // The guest reuses one: its write clears the free bit.
        d.ram.write(RAM_BASE + 600 * PAGE, &[5]).unwrap();
        assert!(!d.ram.free_map().get(600));
        // DONE.
        d.dev.device_mut().stop_free_page_hint();
        d.dev.poll();
        assert_eq!(d.take_interrupts(), INT_CONFIG_CHANGE);
        assert_eq!(d.config_read32(8), CMD_ID_DONE);
        assert_eq!(d.dev.device().hint_status().phase, HintPhase::Done);
        // A stale echo of the old ID does not restart the run.
        d.add_out_bytes(3, &id.to_le_bytes());
        d.kick(3);
        assert_eq!(d.dev.device().hint_status().phase, HintPhase::Done);
        let id2 = d.dev.device_mut().start_free_page_hint();
        assert!(id2 > id);
        assert_eq!(d.dev.device().hint_status().pages_total, 256);
    }

    #[test]
    fn malformed_chains_do_not_panic() {
        // Each case breaks the queue: DEVICE_NEEDS_RESET plus a config
        // interrupt, and further kicks are ignored until reset.
        type Case = fn(&mut TestDriver<Balloon>);
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
            d.dev.poll();
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
        assert_eq!(d.dev.device().reporting_status().pages_total, 0);
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
        d.dev.device_mut().set_target_pages(77);
        let id = d.dev.device_mut().start_free_page_hint();
        d.config_write32(4, 3);
        let saved = d.dev.state();
        let json = serde_json::to_string(&saved).unwrap();

        // Restore into a fresh device on the same RAM (as after migration,
        // where the destination's RAM holds the same bytes).
        let ram2: Arc<GuestRam> = d.ram.clone();
        let mut fresh = VirtioMmio::new(Balloon::new(BalloonFeatures::default(), &ram2), ram2);
        fresh
            .restore(&serde_json::from_str(&json).unwrap())
            .unwrap();
        assert_eq!(fresh.state(), saved);
        let mut d2 = TestDriver::new(fresh);
        d2.queues = std::mem::take(&mut d.queues);
        d2.next_alloc = d.next_alloc;
        assert_eq!(d2.dev.device().inflated_pages(), 3);
        assert_eq!(d2.config_read32(0), 77);
        assert_eq!(d2.config_read32(4), 3);
        assert_eq!(d2.config_read32(8), id);
        // The unacknowledged used-buffer interrupt survives, and the
        // pending config change is delivered.
        assert!(d2.dev.irq_level());
        d2.dev.poll();
        assert_eq!(d2.take_interrupts(), INT_USED_BUFFER | INT_CONFIG_CHANGE);
        // The held stats buffer is still ours to return.
        d2.dev.device_mut().request_stats();
        d2.dev.poll();
        assert_eq!(d2.used(2), vec![(u32::from(stats_head), 0)]);
        // Queues continue where they were: inflate more, deflate old ones.
        d2.used(0);
        d2.add_out_bytes(0, &pfn_bytes(&[12]));
        d2.kick(0);
        d2.add_out_bytes(1, &pfn_bytes(&[10]));
        d2.kick(1);
        assert_eq!(d2.used(0).len(), 1);
        assert_eq!(d2.used(1).len(), 1);
        assert_eq!(d2.dev.device().state().inflated, vec![(11, 3)]);
        // The hint run continues with the same ID.
        d2.add_out_bytes(3, &id.to_le_bytes());
        d2.kick(3);
        assert_eq!(d2.dev.device().hint_status().phase, HintPhase::Running);

        // Mismatched RAM or features are refused, leaving the device as is.
        let small = Arc::new(GuestRam::new(RAM_BASE, 1 << 20).unwrap());
        let mut other = VirtioMmio::new(Balloon::new(BalloonFeatures::default(), &small), small);
        assert!(other.restore(&saved).is_err());
        let ram3 = ram();
        let no_hint = BalloonFeatures {
            free_page_hint: false,
            ..Default::default()
        };
        let mut other = VirtioMmio::new(Balloon::new(no_hint, &ram3), ram3);
        assert!(other.restore(&saved).is_err());
        let mut bad = saved.clone();
        bad.device.inflated.push((u64::MAX, 2));
        let ram4 = ram();
        let mut other = VirtioMmio::new(Balloon::new(BalloonFeatures::default(), &ram4), ram4);
        assert!(other.restore(&bad).is_err());
        assert_eq!(other.status(), 0);
    }

    #[test]
    fn driver_reset_forgets_the_balloon() {
        let mut d = full();
        d.dev.device_mut().set_target_pages(10);
        d.add_out_bytes(0, &pfn_bytes(&[1, 2]));
        d.kick(0);
        d.w32(0x070, 0);
        assert_eq!(d.dev.device().inflated_pages(), 0);
        assert_eq!(d.dev.device().target_pages(), 10, "host target kept");
        assert!(!d.dev.irq_level());
        assert!(d.dev.queues().iter().all(|q| !q.ready()));
    }
}
