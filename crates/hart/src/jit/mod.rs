//! A block translator from RISC-V to x86-64 machine code.
//!
//! The interpreter stays the reference: the translator compiles only the
//! instructions whose every outcome it can produce on the fast path — the
//! RV64I/M integer subset (compressed forms included), loads and stores
//! that hit the TLB — and hands everything else back to it:
//!
//! * A block is a straight run of instructions in one guest page, ending at
//!   a branch or jump, at the first instruction it does not compile (CSR,
//!   FP, AMO, system, division), at the page end or after [`MAX_BLOCK`]
//!   instructions. It counts the run loop's step budget down in a register
//!   and jumps straight to the block at its target when that is in the same
//!   page (a page's blocks are dropped together, so a link never outlives
//!   its target); otherwise, or when the budget is spent, it returns the
//!   next `pc` and the budget left. `instret`, the budget and interrupts
//!   therefore behave as in the interpreter: no block spans a CSR write, a
//!   trap or an `ecall`, the only places a run slice can change them.
//! * A load or store that misses the TLB, crosses a page or needs
//!   bookkeeping (MMIO, dirty logging, a free page, a code page) *bails*:
//!   the block returns with `pc` at that instruction, which has not run,
//!   and the run loop executes it in the interpreter. Faults are therefore
//!   always raised by the interpreter, with the exact `pc` and `tval`.
//! * Guest registers live in the hart's `x` array (`rdi` points at it); the
//!   data TLB in use is in `rsi`, the budget in `r10`. Generated code
//!   touches nothing else but guest RAM through the TLB.
//!
//! Blocks are found by virtual `pc` *and* the host address the fetch TLB
//! maps it to, so two mappings of one page (shared libraries at different
//! addresses, address-space switches) never share a block, and a `satp`
//! write needs no flush here. Self-modifying code is caught by page: a
//! page with translated code never gets a cached write translation, so the
//! first store to it goes to the slow path, which drops the page's blocks.

pub(crate) mod asm;
#[cfg(test)]
mod tests;

use crate::hart::Hart;
use crate::mmu::{TlbEntry, NO_TAG, TLB_MASK};
use crate::rvc;
use asm::{mem, mem_ix, Alu, Asm, Cc, Fixup, Mem, Shift, R};
use godwit_memory::{GuestRam, PAGE_SHIFT, PAGE_SIZE};
use std::collections::HashMap;
use std::sync::Arc;

/// The most instructions one block holds.
pub(crate) const MAX_BLOCK: u32 = 64;
/// Executable memory for translated code; when it fills up, every block is
/// dropped and translation starts again.
const CODE_BYTES: usize = 32 << 20;
const FAST_SIZE: usize = 1 << 13;

/// What translated code returns (in RAX:RDX): the next `pc`, with bit 0
/// set when the instruction there must run in the interpreter next (a
/// bail), and how much of the step budget is left.
#[repr(C)]
pub(crate) struct BlockExit {
    pub pc: u64,
    pub left: u64,
}

/// The entry stub: moves `budget` into R10, where blocks count it down,
/// and jumps to `block`. `x` is the hart's register file (RDI), `tlb` the
/// data TLB in use (RSI).
type EntryFn = unsafe extern "sysv64" fn(
    x: *mut u64,
    tlb: *const TlbEntry,
    budget: u64,
    block: usize,
) -> BlockExit;

const _: () = assert!(std::mem::size_of::<TlbEntry>() == 32);
const TLB_READ: i32 = std::mem::offset_of!(TlbEntry, read) as i32;
const TLB_WRITE: i32 = std::mem::offset_of!(TlbEntry, write) as i32;
const TLB_ADDEND: i32 = std::mem::offset_of!(TlbEntry, addend) as i32;

/// Memory for translated code, mapped twice (W^X): blocks are written
/// through a read-write view and run from a read-execute view of the same
/// pages, so no page is ever writable and executable at once. It holds the
/// entry stub, then blocks appended one after another.
struct ExecMem {
    /// The writable view.
    rw: *mut u8,
    /// The executable view; code addresses are in this one.
    rx: *mut u8,
    cap: usize,
    used: usize,
    /// Bytes of the entry stub at the start.
    stub: usize,
}

impl ExecMem {
    fn new(cap: usize) -> Option<ExecMem> {
        if !cfg!(target_arch = "x86_64") {
            return None;
        }
        // SAFETY: creates a new file descriptor; the name is a C string.
        let fd = unsafe { libc::memfd_create(c"godwit-code".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        let map = |prot| {
            // SAFETY: a fresh shared mapping of our own memfd; no existing
            // memory is affected.
            let p = unsafe { libc::mmap(std::ptr::null_mut(), cap, prot, libc::MAP_SHARED, fd, 0) };
            (p != libc::MAP_FAILED).then_some(p as *mut u8)
        };
        // SAFETY: `fd` is ours; sizing it before mapping it.
        let sized = unsafe { libc::ftruncate(fd, cap as libc::off_t) } == 0;
        let rw = sized
            .then(|| map(libc::PROT_READ | libc::PROT_WRITE))
            .flatten();
        let rx = rw.and_then(|_| map(libc::PROT_READ | libc::PROT_EXEC));
        // SAFETY: the mappings keep the memory; the descriptor is not needed.
        unsafe { libc::close(fd) };
        let (Some(rw), Some(rx)) = (rw, rx) else {
            if let Some(rw) = rw {
                // SAFETY: unmaps the view mapped just above.
                unsafe { libc::munmap(rw as *mut libc::c_void, cap) };
            }
            return None;
        };
        let mut m = ExecMem {
            rw,
            rx,
            cap,
            used: 0,
            stub: 0,
        };
        let mut a = Asm::default();
        a.mov_rr(R::R10, R::Rdx);
        a.jmp_reg(R::Rcx);
        m.push(&a.buf)?;
        m.stub = m.used;
        Some(m)
    }

    /// Drops every block (the entry stub stays).
    fn clear(&mut self) {
        self.used = self.stub;
    }

    /// Points the `jmp rel32` whose displacement ends at code address
    /// `site` to code address `target`.
    fn patch_jump(&mut self, site: usize, target: usize) {
        let base = self.rx as usize;
        assert!(
            site >= base + 4 && site <= base + self.used,
            "jump site outside code"
        );
        let rel = (target as i64 - site as i64) as i32;
        // SAFETY: the 4 bytes before `site` are the displacement of a jump
        // this mapping holds (checked to lie inside it), written through
        // the writable view; no code runs while the hart translates.
        unsafe {
            let at = self.rw.add(site - 4 - base);
            std::ptr::write_unaligned(at as *mut [u8; 4], rel.to_le_bytes());
        }
    }

    /// Copies `code` in; its code address, or `None` when full.
    fn push(&mut self, code: &[u8]) -> Option<usize> {
        let start = (self.used + 15) & !15;
        if start + code.len() > self.cap {
            return None;
        }
        // SAFETY: `start + len <= cap`, inside the mapping, and no block
        // in that range exists yet (space is only reused after a flush).
        unsafe {
            std::ptr::copy_nonoverlapping(code.as_ptr(), self.rw.add(start), code.len());
        }
        self.used = start + code.len();
        Some(self.rx as usize + start)
    }
}

impl Drop for ExecMem {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the two views made in `new`; no block runs
        // once the hart that owns them is dropped.
        unsafe {
            libc::munmap(self.rw as *mut libc::c_void, self.cap);
            libc::munmap(self.rx as *mut libc::c_void, self.cap);
        }
    }
}

/// A block cache entry: `code` 0 means "no block here, interpret".
#[derive(Clone, Copy)]
struct Entry {
    pc: u64,
    host: usize,
    code: usize,
    len: u32,
}

const NO_ENTRY: Entry = Entry {
    pc: 1, // never a pc: instructions are 2-byte aligned
    host: 0,
    code: 0,
    len: 0,
};

/// Counters, for benchmarks and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JitStats {
    /// Blocks translated.
    pub blocks: u64,
    /// Pages whose blocks were dropped because the guest wrote to them.
    pub invalidations: u64,
    /// Times every block was dropped (code memory full, RAM discarded, restore).
    pub flushes: u64,
    /// `fence.i` instructions executed.
    pub fence_i: u64,
    /// Translated pages compared with their bytes as translated (pages
    /// other harts could store to unseen; see `jit_fence_i`).
    pub code_checks: u64,
}

/// The translated-code cache of one hart.
pub(crate) struct Jit {
    mem: Option<ExecMem>,
    enabled: bool,
    fast: Box<[Entry]>,
    blocks: HashMap<(u64, usize), (usize, u32)>,
    /// Blocks by the RAM page they were translated from (pages marked
    /// with [`GuestRam::mark_code`]).
    page_blocks: HashMap<usize, Vec<(u64, usize)>>,
    /// Jumps from blocks to a block of the same page not translated yet
    /// (they exit to the run loop until it is): where to patch.
    pending: HashMap<(u64, usize), Vec<usize>>,
    ram: Arc<GuestRam>,
    /// The hart id, for the code marks in guest RAM.
    hart: usize,
    seen_code_epoch: u64,
    /// Pages translated while another hart might still store to them
    /// unseen, through a write translation it cached before the page was
    /// marked: their bytes as translated, checked at `fence.i` until every
    /// other hart has dropped such translations.
    unsettled: Vec<Unsettled>,
    pub stats: JitStats,
}

/// A page whose translation another hart's stores may not reach
/// ([`Jit::unsettled`]).
struct Unsettled {
    page: usize,
    /// Guest RAM's code-mark epoch when this hart marked it.
    epoch: u64,
    bytes: Box<[u8; PAGE_SIZE]>,
}

impl Jit {
    pub fn new(ram: Arc<GuestRam>, hart: usize) -> Jit {
        let mem = ExecMem::new(CODE_BYTES);
        ram.register_code_hart(hart);
        Jit {
            enabled: mem.is_some(),
            mem,
            fast: vec![NO_ENTRY; FAST_SIZE].into_boxed_slice(),
            blocks: HashMap::new(),
            page_blocks: HashMap::new(),
            pending: HashMap::new(),
            seen_code_epoch: ram.code_epoch(),
            unsettled: Vec::new(),
            ram,
            hart,
            stats: JitStats::default(),
        }
    }

    /// Drops every block.
    pub fn flush(&mut self) {
        self.fast.fill(NO_ENTRY);
        self.blocks.clear();
        for &page in self.page_blocks.keys() {
            self.ram.clear_code(page, self.hart);
        }
        self.page_blocks.clear();
        self.pending.clear();
        self.unsettled.clear();
        if let Some(m) = &mut self.mem {
            m.clear();
        }
        self.stats.flushes += 1;
    }

    /// Drops the blocks translated from RAM page `page` (the guest wrote to it).
    pub fn invalidate_page(&mut self, page: usize) {
        self.ram.clear_code(page, self.hart);
        for key in self.page_blocks.remove(&page).unwrap_or_default() {
            self.blocks.remove(&key);
            let f = &mut self.fast[fast_index(key.0)];
            if (f.pc, f.host) == key {
                *f = NO_ENTRY;
            }
        }
        // Jumps only link blocks of one page, so the page's pending jumps
        // went with its blocks.
        let ram_host = self.ram.host_ptr() as usize;
        self.pending
            .retain(|k, _| k.1.wrapping_sub(ram_host) >> PAGE_SHIFT != page);
        self.unsettled.retain(|u| u.page != page);
        self.stats.invalidations += 1;
    }

    /// Checks the unsettled pages against their bytes as translated:
    /// drops the blocks of those that changed, and forgets those that did
    /// not once no other hart can store to them unseen any more (`all`:
    /// check every one, as `fence.i` must; else only those).
    fn check_unsettled(&mut self, all: bool) {
        let mut now = [0u8; PAGE_SIZE];
        let mut i = 0;
        while i < self.unsettled.len() {
            let u = &self.unsettled[i];
            let settled = self.ram.code_writes_settled(self.hart, u.epoch);
            if !all && !settled {
                i += 1;
                continue;
            }
            let (page, changed) = match self.ram.read_page(u.page, &mut now) {
                Ok(()) => (u.page, now != *u.bytes),
                Err(_) => (u.page, true),
            };
            self.stats.code_checks += 1;
            if changed {
                // Removes every entry of the page, this one included.
                self.invalidate_page(page);
            } else if settled {
                self.unsettled.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }
}

#[inline(always)]
fn fast_index(pc: u64) -> usize {
    (pc >> 1) as usize & (FAST_SIZE - 1)
}

impl Hart {
    /// Turns the translator on or off (off: the interpreter runs everything).
    /// Returns whether it is on, which it cannot be where executable memory
    /// is unavailable.
    pub fn set_jit(&mut self, on: bool) -> bool {
        self.jit.flush();
        self.jit.enabled = on && self.jit.mem.is_some();
        self.jit.enabled
    }

    /// Whether translated code runs.
    pub fn jit_enabled(&self) -> bool {
        self.jit.enabled
    }

    /// Translator counters.
    pub fn jit_stats(&self) -> JitStats {
        self.jit.stats
    }

    /// The hart id the code marks in guest RAM use.
    pub(crate) fn jit_hart(&self) -> usize {
        self.jit.hart
    }

    /// `fence.i`: afterwards the hart runs the code now in memory. Its own
    /// stores to translated pages already dropped their blocks
    /// ([`note_ram_write`](Self::note_ram_write)), and so did other harts'
    /// stores seen at the code marks, once synchronized (`jit_sync`). What
    /// is left are stores by another hart through a write translation it
    /// cached before this hart marked the page: the pages still at risk of
    /// those are compared with their bytes as translated.
    pub(crate) fn jit_fence_i(&mut self) {
        self.jit_sync();
        self.jit.check_unsettled(true);
    }

    /// Notes a store to RAM page `page`: the dirty log and free map, and
    /// the blocks translated from it.
    #[inline]
    pub(crate) fn note_ram_write(&mut self, page: usize) {
        self.ram.note_write(page);
        if self.ram.is_code(page) && self.ram.note_hart_store(page, self.jit.hart) {
            self.jit.invalidate_page(page);
        }
    }

    /// At the start of every run slice: drop every block if a page with
    /// translated code was changed from outside the harts (device DMA, a
    /// host-side load, a balloon discard), and the blocks of pages other
    /// harts stored to. Like hardware, the hart sees such a change once it
    /// synchronizes, not mid-block; `fence.i` also checks the pages another
    /// hart may have stored to unseen ([`jit_fence_i`](Self::jit_fence_i)).
    ///
    /// And the other way round: when another hart marked a page since this
    /// one began caching write translations, this hart drops them, so its
    /// later stores to the page are seen.
    pub(crate) fn jit_sync(&mut self) {
        if self.writes_cached && self.ram.mark_epoch() != self.write_epoch {
            self.tlb_flush_writes();
        }
        if !self.jit.unsettled.is_empty() {
            self.jit.check_unsettled(false);
        }
        let epoch = self.ram.code_epoch();
        if epoch != self.jit.seen_code_epoch {
            self.jit.seen_code_epoch = epoch;
            self.jit.flush();
            let _ = self.ram.take_stale_code(self.jit.hart);
            return;
        }
        for page in self.ram.take_stale_code(self.jit.hart) {
            self.jit.invalidate_page(page);
        }
    }

    /// The block at `pc`, translating it if needed: its code and length.
    #[inline(always)]
    pub(crate) fn jit_block(&mut self) -> Option<(usize, u32)> {
        if !self.jit.enabled {
            return None;
        }
        let pc = self.pc;
        let vpn = pc >> PAGE_SHIFT;
        let e = &self.tlbs[self.tlb_exec & 3][vpn as usize & TLB_MASK];
        if e.exec != vpn {
            return None;
        }
        let host = e.addend.wrapping_add(pc as usize);
        let f = &self.jit.fast[fast_index(pc)];
        if f.pc == pc && f.host == host {
            return (f.code != 0).then_some((f.code, f.len));
        }
        self.jit_lookup(pc, host)
    }

    #[cold]
    fn jit_lookup(&mut self, pc: u64, host: usize) -> Option<(usize, u32)> {
        let (code, len) = match self.jit.blocks.get(&(pc, host)) {
            Some(&b) => b,
            None => self.jit_translate(pc, host),
        };
        self.jit.fast[fast_index(pc)] = Entry {
            pc,
            host,
            code,
            len,
        };
        (code != 0).then_some((code, len))
    }

    /// Runs translated code from the block at `code` for at most `budget`
    /// instructions.
    #[inline(always)]
    pub(crate) fn jit_call(&mut self, code: usize, budget: u64) -> BlockExit {
        let tlb = self.tlbs[self.tlb_data & 3].as_ptr();
        let Some(m) = &self.jit.mem else {
            return BlockExit {
                pc: self.pc | 1,
                left: budget,
            };
        };
        // SAFETY: the stub at the start of the mapping and `code`, a block
        // `jit_translate` emitted there and still cached (blocks are only
        // dropped while no code runs), follow the sysv64 ABI. Blocks, and
        // the blocks they jump to, read and write only the 32 registers at
        // `x` and guest RAM through TLB entries that hit (host pointers
        // into the RAM mapping, checked not to leave the page), and return.
        unsafe {
            let entry = std::mem::transmute::<*mut u8, EntryFn>(m.rx);
            entry(self.x.as_mut_ptr(), tlb, budget, code)
        }
    }

    /// Translates the block at `pc` (host address `host`, in RAM); returns
    /// (0, 0) when its first instruction is not one the translator compiles.
    fn jit_translate(&mut self, pc: u64, host: usize) -> (usize, u32) {
        let page_host = host & !0xfff;
        let Some(page) = page_host
            .checked_sub(self.ram_host as usize)
            .map(|o| o >> PAGE_SHIFT)
            .filter(|&p| p < self.ram.size() >> PAGE_SHIFT)
        else {
            return (0, 0);
        };
        // Mark the page before reading it, so a change from outside the
        // hart during translation is seen at the next `jit_sync`.
        let mark = self.ram.mark_code(page, self.jit.hart);
        if mark.before & (1 << (self.jit.hart % 8)) == 0 {
            self.drop_write_translations(page_host);
            if mark.advanced && self.writes_cached && mark.epoch == self.write_epoch + 1 {
                // No other hart marked a page meanwhile, and this one's
                // write translations for the page are gone: the rest need
                // not be dropped at the next slice.
                self.write_epoch = mark.epoch;
                self.ram
                    .advance_write_translations(self.jit.hart, mark.epoch);
            }
            if self.ram.other_code_harts(self.jit.hart) {
                // After the mark: its epoch, and the bytes the blocks are
                // made from (or newer ones, which `fence.i` then finds
                // changed, dropping the blocks: safe).
                let epoch = mark.epoch;
                let mut bytes = Box::new([0u8; PAGE_SIZE]);
                if self.ram.read_page(page, &mut bytes).is_ok() {
                    self.jit.unsettled.push(Unsettled { page, epoch, bytes });
                }
            }
        }
        let mut t = Translator::new(pc);
        let mut cur = pc;
        let page_end = (pc | 0xfff).wrapping_add(1);
        loop {
            if t.count == MAX_BLOCK {
                t.goto(cur);
                break;
            }
            let off = (cur - (pc & !0xfff)) as usize;
            let p = (page_host + off) as *const u8;
            // SAFETY: `off <= 0xffe` (cur is 2-aligned and below page_end),
            // inside the RAM page the fetch TLB maps.
            let lo = unsafe { crate::mmu::read_host(p, 2) } as u16;
            let (inst, len) = if lo & 3 != 3 {
                (rvc::expand(lo), 2)
            } else if cur + 4 <= page_end {
                // SAFETY: the 4 bytes are inside the same RAM page.
                (unsafe { crate::mmu::read_host(p, 4) } as u32, 4)
            } else {
                (0, 4)
            };
            match t.insn(inst, cur, len) {
                Flow::Next => {
                    t.count += 1;
                    cur += len;
                    if cur == page_end {
                        t.exit(cur);
                        break;
                    }
                }
                Flow::Ended => {
                    t.count += 1;
                    break;
                }
                Flow::Unsupported => {
                    if t.count == 0 {
                        return (0, 0);
                    }
                    t.exit(cur);
                    break;
                }
            }
        }
        let count = t.count;
        let (code, sites) = t.finish();
        let pushed = match self.jit.mem.as_mut().and_then(|m| m.push(&code)) {
            Some(a) => Some(a),
            None => {
                self.jit.flush();
                self.jit.mem.as_mut().and_then(|m| m.push(&code))
            }
        };
        let Some(addr) = pushed else {
            return (0, 0);
        };
        self.jit.blocks.insert((pc, host), (addr, count));
        self.jit
            .page_blocks
            .entry(page)
            .or_default()
            .push((pc, host));
        self.jit.stats.blocks += 1;
        // Link this block's jumps within the page, and jumps waiting for it.
        let jit = &mut self.jit;
        let Some(m) = jit.mem.as_mut() else {
            return (addr, count);
        };
        for (end, target) in sites {
            let key = (target, page_host + (target & 0xfff) as usize);
            match jit.blocks.get(&key) {
                Some(&(code, _)) => m.patch_jump(addr + end, code),
                None => jit.pending.entry(key).or_default().push(addr + end),
            }
        }
        for site in jit.pending.remove(&(pc, host)).unwrap_or_default() {
            m.patch_jump(site, addr);
        }
        (addr, count)
    }

    /// Forgets cached write permission for the RAM page at host address
    /// `page_host`, under every virtual address that maps it.
    fn drop_write_translations(&mut self, page_host: usize) {
        for t in self.tlbs.iter_mut() {
            for e in t.iter_mut() {
                if e.write != NO_TAG
                    && e.addend.wrapping_add((e.write << PAGE_SHIFT) as usize) == page_host
                {
                    e.write = NO_TAG;
                }
            }
        }
    }
}

/// How translating one instruction went.
enum Flow {
    /// Compiled; the block continues.
    Next,
    /// Compiled and it ends the block (a jump or branch).
    Ended,
    /// Not compiled: the block ends before it.
    Unsupported,
}

/// Emits one block. Its code:
///
/// ```text
///   cmp r10, LEN ; jb no_budget ; sub r10, LEN   // R10: budget left
///   body: one sequence per instruction
///   exits: `mov rax, pc ; mov rdx, r10 ; ret`, or a `jmp` to the block
///          at the target when it is in the same page (linked once known)
///   bails: `mov rax, pc|1 ; lea rdx, [r10 + LEN - k] ; ret`
/// ```
struct Translator {
    a: Asm,
    pc: u64,
    /// Instructions compiled so far.
    count: u32,
    /// Where LEN goes in the `cmp` and the `sub`.
    len_at: [usize; 2],
    no_budget: Fixup,
    /// Slow paths: a jump here for the instruction at `pc` (the k-th).
    bails: Vec<(Fixup, u64, u32)>,
    /// Jumps to a block of the same page.
    links: Vec<(Fixup, u64)>,
}

/// Guest register `r` in the register file.
fn x(r: u32) -> Mem {
    mem(R::Rdi, 8 * r as i32)
}

/// The shift of an OP or OP-32 instruction (shift amount in `rs2`).
fn reg_shift(f7: u32, f3: u32) -> Option<Shift> {
    match (f7, f3) {
        (0, 1) => Some(Shift::Shl),
        (0, 5) => Some(Shift::Shr),
        (0x20, 5) => Some(Shift::Sar),
        _ => None,
    }
}

fn imm_i(i: u32) -> i32 {
    (i as i32) >> 20
}
fn imm_s(i: u32) -> i32 {
    (((i as i32) >> 25) << 5) | ((i >> 7) & 0x1f) as i32
}
fn imm_b(i: u32) -> i64 {
    let v = (((i as i32) >> 31) << 12) as u32
        | ((i << 4) & 0x800)
        | ((i >> 20) & 0x7e0)
        | ((i >> 7) & 0x1e);
    v as i32 as i64
}
fn imm_j(i: u32) -> i64 {
    let v = (((i as i32) >> 31) << 20) as u32
        | (i & 0xff000)
        | ((i >> 9) & 0x800)
        | ((i >> 20) & 0x7fe);
    v as i32 as i64
}

impl Translator {
    fn new(pc: u64) -> Translator {
        let mut a = Asm::default();
        let cmp = a.alu_ri32(Alu::Cmp, R::R10, 0);
        let no_budget = a.jcc(Cc::B);
        let sub = a.alu_ri32(Alu::Sub, R::R10, 0);
        Translator {
            a,
            pc,
            count: 0,
            len_at: [cmp, sub],
            no_budget,
            bails: Vec::new(),
            links: Vec::new(),
        }
    }

    /// Returns to the run loop, which continues at `pc`.
    fn exit(&mut self, pc: u64) {
        self.a.mov_ri(R::Rax, pc);
        self.a.mov_rr(R::Rdx, R::R10);
        self.a.ret();
    }

    /// Continues at `pc`: a jump to its block when it is in this page,
    /// else an exit.
    fn goto(&mut self, pc: u64) {
        if pc >> PAGE_SHIFT == self.pc >> PAGE_SHIFT {
            let f = self.a.jmp();
            self.links.push((f, pc));
        } else {
            self.exit(pc);
        }
    }

    /// A branch to a bail-out for the current instruction at `pc`.
    fn bail_if(&mut self, cc: Cc, pc: u64) {
        let f = self.a.jcc(cc);
        self.bails.push((f, pc, self.count));
    }

    /// The code, and for each jump to a block of this page the offset just
    /// past its displacement and the target `pc`.
    fn finish(mut self) -> (Vec<u8>, Vec<(usize, u64)>) {
        let len = self.count as i32;
        self.a.patch_imm32(self.len_at[0], len);
        self.a.patch_imm32(self.len_at[1], len);
        self.a.bind(self.no_budget);
        self.exit(self.pc);
        for (f, pc, k) in std::mem::take(&mut self.bails) {
            self.a.bind(f);
            self.a.mov_ri(R::Rax, pc | 1);
            self.a.lea(R::Rdx, mem(R::R10, len - k as i32));
            self.a.ret();
        }
        let mut sites = Vec::new();
        for (f, pc) in std::mem::take(&mut self.links) {
            // Until linked, the jump goes to an exit.
            self.a.bind(f);
            self.exit(pc);
            sites.push((f.0, pc));
        }
        (self.a.buf, sites)
    }

    /// RAX = host address of the `size`-byte access at `x[rs1] + imm`, or a
    /// bail when the TLB (read or write tag at `tag`) misses or the access
    /// crosses the page.
    fn host_address(&mut self, rs1: u32, imm: i32, size: u8, tag: i32, pc: u64) {
        let a = &mut self.a;
        a.load64(R::Rax, x(rs1));
        if imm != 0 {
            a.alu_ri(Alu::Add, true, R::Rax, imm);
        }
        a.mov_rr(R::Rcx, R::Rax);
        a.shift_ri(Shift::Shr, true, R::Rcx, PAGE_SHIFT as u8);
        a.mov_rr(R::Rdx, R::Rcx);
        a.alu_ri(Alu::And, false, R::Rdx, TLB_MASK as i32);
        a.shift_ri(Shift::Shl, false, R::Rdx, 5);
        a.alu_mem(Alu::Cmp, true, R::Rcx, mem_ix(R::Rsi, R::Rdx, tag));
        self.bail_if(Cc::Ne, pc);
        if size > 1 {
            let a = &mut self.a;
            a.mov_rr(R::Rcx, R::Rax);
            a.alu_ri(Alu::And, false, R::Rcx, 0xfff);
            a.alu_ri(Alu::Cmp, false, R::Rcx, 0x1000 - size as i32);
            self.bail_if(Cc::A, pc);
        }
        self.a
            .alu_mem(Alu::Add, true, R::Rax, mem_ix(R::Rsi, R::Rdx, TLB_ADDEND));
    }

    /// `x[rd] = RAX`.
    fn set_rd(&mut self, rd: u32) {
        self.a.store64(x(rd), R::Rax);
    }

    /// `x[rd] = (x[rs1] <cc> rhs)` as 0 or 1, `rhs` set up by `cmp`.
    fn set_less(&mut self, rd: u32, rs1: u32, cc: Cc, cmp: impl FnOnce(&mut Asm)) {
        let a = &mut self.a;
        a.alu_rr(Alu::Xor, false, R::Rcx, R::Rcx);
        a.load64(R::Rax, x(rs1));
        cmp(a);
        a.setcc(cc, R::Rcx);
        a.store64(x(rd), R::Rcx);
    }

    fn insn(&mut self, i: u32, pc: u64, len: u64) -> Flow {
        let rd = (i >> 7) & 31;
        let rs1 = (i >> 15) & 31;
        let rs2 = (i >> 20) & 31;
        let f3 = (i >> 12) & 7;
        let f7 = i >> 25;
        let next = pc.wrapping_add(len);
        match i & 0x7f {
            0x37 | 0x17 => {
                if rd != 0 {
                    let imm = (i & 0xffff_f000) as i32 as i64 as u64;
                    let v = if i & 0x7f == 0x17 {
                        pc.wrapping_add(imm)
                    } else {
                        imm
                    };
                    self.a.mov_ri(R::Rax, v);
                    self.set_rd(rd);
                }
                Flow::Next
            }
            0x6f => {
                if rd != 0 {
                    self.a.mov_ri(R::Rax, next);
                    self.set_rd(rd);
                }
                self.goto(pc.wrapping_add(imm_j(i) as u64));
                Flow::Ended
            }
            0x67 if f3 == 0 => {
                let a = &mut self.a;
                a.load64(R::Rcx, x(rs1));
                a.alu_ri(Alu::Add, true, R::Rcx, imm_i(i));
                a.alu_ri(Alu::And, true, R::Rcx, -2);
                if rd != 0 {
                    a.mov_ri(R::Rax, next);
                    a.store64(x(rd), R::Rax);
                }
                a.mov_rr(R::Rax, R::Rcx);
                a.mov_rr(R::Rdx, R::R10);
                a.ret();
                Flow::Ended
            }
            0x63 => {
                let cc = match f3 {
                    0 => Cc::E,
                    1 => Cc::Ne,
                    4 => Cc::L,
                    5 => Cc::Ge,
                    6 => Cc::B,
                    7 => Cc::Ae,
                    _ => return Flow::Unsupported,
                };
                self.a.load64(R::Rax, x(rs1));
                self.a.alu_mem(Alu::Cmp, true, R::Rax, x(rs2));
                let taken = self.a.jcc(cc);
                self.goto(next);
                self.a.bind(taken);
                self.goto(pc.wrapping_add(imm_b(i) as u64));
                Flow::Ended
            }
            0x03 => {
                let (size, signed) = match f3 {
                    0 => (1, true),
                    1 => (2, true),
                    2 => (4, true),
                    3 => (8, false),
                    4 => (1, false),
                    5 => (2, false),
                    6 => (4, false),
                    _ => return Flow::Unsupported,
                };
                if rd == 0 {
                    return Flow::Unsupported;
                }
                self.host_address(rs1, imm_i(i), size, TLB_READ, pc);
                self.a.load_ext(R::Rax, mem(R::Rax, 0), size, signed);
                self.set_rd(rd);
                Flow::Next
            }
            0x23 => {
                let size = match f3 {
                    0 => 1,
                    1 => 2,
                    2 => 4,
                    3 => 8,
                    _ => return Flow::Unsupported,
                };
                self.host_address(rs1, imm_s(i), size, TLB_WRITE, pc);
                self.a.load64(R::Rcx, x(rs2));
                self.a.store_sized(mem(R::Rax, 0), R::Rcx, size);
                Flow::Next
            }
            0x13 => {
                let imm = imm_i(i);
                let shamt = ((i >> 20) & 0x3f) as u8;
                let op = match f3 {
                    0 => Some(Alu::Add),
                    4 => Some(Alu::Xor),
                    6 => Some(Alu::Or),
                    7 => Some(Alu::And),
                    _ => None,
                };
                let shift = match (f3, i >> 26) {
                    (1, 0) => Some(Shift::Shl),
                    (5, 0) => Some(Shift::Shr),
                    (5, 0x10) => Some(Shift::Sar),
                    _ => None,
                };
                if let Some(op) = op {
                    if rd != 0 {
                        self.a.load64(R::Rax, x(rs1));
                        if imm != 0 || !matches!(op, Alu::Add | Alu::Or | Alu::Xor) {
                            self.a.alu_ri(op, true, R::Rax, imm);
                        }
                        self.set_rd(rd);
                    }
                } else if let Some(s) = shift {
                    if rd != 0 {
                        self.a.load64(R::Rax, x(rs1));
                        self.a.shift_ri(s, true, R::Rax, shamt);
                        self.set_rd(rd);
                    }
                } else if f3 == 2 || f3 == 3 {
                    if rd != 0 {
                        let cc = if f3 == 2 { Cc::L } else { Cc::B };
                        self.set_less(rd, rs1, cc, |a| a.alu_ri(Alu::Cmp, true, R::Rax, imm));
                    }
                } else {
                    return Flow::Unsupported;
                }
                Flow::Next
            }
            0x1b => {
                let shamt = ((i >> 20) & 0x1f) as u8;
                let shift = match (f3, f7) {
                    (0, _) => None,
                    (1, 0) => Some(Shift::Shl),
                    (5, 0) => Some(Shift::Shr),
                    (5, 0x20) => Some(Shift::Sar),
                    _ => return Flow::Unsupported,
                };
                if rd != 0 {
                    self.a.load64(R::Rax, x(rs1));
                    match shift {
                        None => self.a.alu_ri(Alu::Add, false, R::Rax, imm_i(i)),
                        Some(s) => self.a.shift_ri(s, false, R::Rax, shamt),
                    }
                    self.a.movsxd(R::Rax, R::Rax);
                    self.set_rd(rd);
                }
                Flow::Next
            }
            0x33 => {
                let alu = match (f7, f3) {
                    (0, 0) => Some(Alu::Add),
                    (0x20, 0) => Some(Alu::Sub),
                    (0, 4) => Some(Alu::Xor),
                    (0, 6) => Some(Alu::Or),
                    (0, 7) => Some(Alu::And),
                    _ => None,
                };
                let shift = reg_shift(f7, f3);
                let supported = alu.is_some()
                    || shift.is_some()
                    || matches!((f7, f3), (0, 2) | (0, 3) | (1, 0) | (1, 1) | (1, 3));
                if !supported {
                    return Flow::Unsupported;
                }
                if rd == 0 {
                    return Flow::Next;
                }
                if let Some(op) = alu {
                    self.a.load64(R::Rax, x(rs1));
                    self.a.alu_mem(op, true, R::Rax, x(rs2));
                    self.set_rd(rd);
                } else if let Some(s) = shift {
                    self.a.load64(R::Rax, x(rs1));
                    self.a.load64(R::Rcx, x(rs2));
                    self.a.shift_cl(s, true, R::Rax);
                    self.set_rd(rd);
                } else {
                    match (f7, f3) {
                        (0, 2) => self.set_less(rd, rs1, Cc::L, |a| {
                            a.alu_mem(Alu::Cmp, true, R::Rax, x(rs2))
                        }),
                        (0, 3) => self.set_less(rd, rs1, Cc::B, |a| {
                            a.alu_mem(Alu::Cmp, true, R::Rax, x(rs2))
                        }),
                        (1, 0) => {
                            self.a.load64(R::Rax, x(rs1));
                            self.a.imul_mem(true, R::Rax, x(rs2));
                            self.set_rd(rd);
                        }
                        _ => {
                            // mulh (signed) / mulhu: the high half lands in RDX.
                            self.a.load64(R::Rax, x(rs1));
                            self.a.mul_wide_mem(f3 == 1, x(rs2));
                            self.a.store64(x(rd), R::Rdx);
                        }
                    }
                }
                Flow::Next
            }
            0x3b => {
                let alu = match (f7, f3) {
                    (0, 0) => Some(Alu::Add),
                    (0x20, 0) => Some(Alu::Sub),
                    _ => None,
                };
                let shift = reg_shift(f7, f3);
                let mul = (f7, f3) == (1, 0);
                if alu.is_none() && shift.is_none() && !mul {
                    return Flow::Unsupported;
                }
                if rd == 0 {
                    return Flow::Next;
                }
                self.a.load64(R::Rax, x(rs1));
                if let Some(op) = alu {
                    self.a.alu_mem(op, false, R::Rax, x(rs2));
                } else if let Some(s) = shift {
                    self.a.load64(R::Rcx, x(rs2));
                    self.a.shift_cl(s, false, R::Rax);
                } else {
                    self.a.imul_mem(false, R::Rax, x(rs2));
                }
                self.a.movsxd(R::Rax, R::Rax);
                self.set_rd(rd);
                Flow::Next
            }
            // FENCE: one hart, and stores to translated code are caught by
            // page, so ordering needs no code. FENCE.I goes to the interpreter.
            0x0f if f3 == 0 => Flow::Next,
            _ => Flow::Unsupported,
        }
    }
}
