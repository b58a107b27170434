//! Address translation: Sv39 page walks with A/D updates, and the software
//! TLB whose entries hold a host pointer offset so a hit is one compare and
//! one host load or store.
//!
//! There is one TLB per translation context (U, S with SUM clear, S with SUM
//! set, M) so that switching privilege or toggling SUM — which Linux does on
//! every system call and user copy — costs nothing. Each entry caches read,
//! write and execute permission separately. A write translation is cached
//! only once the page's PTE is dirty and guest RAM no longer needs to hear
//! about writes to it (dirty logging, free-page tracking): the first store
//! to such a page takes the slow path, which records it.

use crate::csr::mstatus;
use crate::hart::{Hart, Priv, Trap};
use crate::Bus;
use godwit_memory::PAGE_SHIFT;

pub(crate) const TLB_SIZE: usize = 512;
pub(crate) const TLB_MASK: usize = TLB_SIZE - 1;
/// A tag no virtual page number can have (VPNs are at most 52 bits).
pub(crate) const NO_TAG: u64 = u64::MAX;

/// One cached translation of a 4 KiB virtual page to host memory. The
/// layout is fixed: translated code reads the tags and the addend.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub(crate) struct TlbEntry {
    pub read: u64,
    pub write: u64,
    pub exec: u64,
    /// Host address minus guest virtual address, for any byte of the page.
    pub addend: usize,
}

impl TlbEntry {
    pub const EMPTY: TlbEntry = TlbEntry {
        read: NO_TAG,
        write: NO_TAG,
        exec: NO_TAG,
        addend: 0,
    };
}

/// The kind of access being translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write,
    Exec,
}

impl Access {
    fn page_fault(self) -> u64 {
        match self {
            Access::Exec => 12,
            Access::Read => 13,
            Access::Write => 15,
        }
    }
    pub fn access_fault(self) -> u64 {
        match self {
            Access::Exec => 1,
            Access::Read => 5,
            Access::Write => 7,
        }
    }
}

const PTE_V: u64 = 1;
const PTE_R: u64 = 2;
const PTE_W: u64 = 4;
const PTE_X: u64 = 8;
const PTE_U: u64 = 16;
const PTE_A: u64 = 64;
const PTE_D: u64 = 128;

/// What a translation found.
pub(crate) struct Translation {
    pub pa: u64,
    /// Accesses this context may cache for the page: bit 0 read, 1 write, 2 exec.
    pub allow: u8,
}

impl Hart {
    /// TLB index for a translation context.
    fn context(prv: Priv, sum: bool) -> usize {
        match (prv, sum) {
            (Priv::U, _) => 0,
            (Priv::S, false) => 1,
            (Priv::S, true) => 2,
            (Priv::M, _) => 3,
        }
    }

    /// Privilege used for loads and stores (MPRV makes M-mode use MPP's).
    pub(crate) fn data_priv(&self) -> Priv {
        if self.prv == Priv::M && self.mstatus & mstatus::MPRV != 0 {
            Priv::from_bits((self.mstatus & mstatus::MPP) >> mstatus::MPP_SHIFT)
        } else {
            self.prv
        }
    }

    /// Picks the TLBs for the current privilege and SUM.
    pub(crate) fn select_tlb(&mut self) {
        let sum = self.mstatus & mstatus::SUM != 0;
        self.tlb_data = Self::context(self.data_priv(), sum);
        self.tlb_exec = Self::context(self.prv, sum);
    }

    /// Forgets every cached translation (satp write, sfence.vma, MXR).
    pub fn tlb_flush(&mut self) {
        for t in self.tlbs.iter_mut() {
            t.fill(TlbEntry::EMPTY);
        }
        self.writes_dropped();
    }

    /// Forgets cached write permissions only, so the next store to every
    /// page is seen by guest RAM's dirty log and free map again.
    pub fn tlb_flush_writes(&mut self) {
        for t in self.tlbs.iter_mut() {
            for e in t.iter_mut() {
                e.write = NO_TAG;
            }
        }
        self.writes_dropped();
    }

    fn writes_dropped(&mut self) {
        if self.writes_cached {
            self.writes_cached = false;
            self.ram.note_write_translations(self.jit_hart());
        }
    }

    /// The guest RAM pages (indices from the start of RAM) the TLBs map
    /// right now: the pages the guest used last (code, stack, data), and
    /// the page-table pages a walk of each of them reads (a hart resumed
    /// elsewhere starts with an empty TLB, so those come first). A
    /// migration sends these first so a guest resumed elsewhere finds its
    /// hot pages there.
    pub fn tlb_ram_pages(&self) -> Vec<usize> {
        let base = self.ram.host_ptr() as usize;
        let size = self.ram.size();
        let mut out = Vec::new();
        for t in self.tlbs.iter() {
            for e in t.iter() {
                let tag = [e.read, e.exec, e.write].into_iter().find(|&t| t != NO_TAG);
                let Some(vpn) = tag else { continue };
                let host = e.addend.wrapping_add((vpn << PAGE_SHIFT) as usize);
                if host >= base && host < base + size {
                    out.push((host - base) >> PAGE_SHIFT);
                }
                self.table_pages(vpn << PAGE_SHIFT, &mut out);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Appends the RAM pages of the Sv39 tables a walk of `va` reads under
    /// the current `satp` (root first), without touching any PTE.
    fn table_pages(&self, va: u64, out: &mut Vec<usize>) {
        if self.satp >> 60 == 0 {
            return;
        }
        let mut table = (self.satp & ((1 << 44) - 1)) << PAGE_SHIFT;
        for level in (0..3).rev() {
            if !self.ram.contains(table, 1 << PAGE_SHIFT) {
                return;
            }
            out.push(((table - self.ram_base) >> PAGE_SHIFT) as usize);
            let vpn = (va >> (PAGE_SHIFT + 9 * level)) & 0x1ff;
            let Some(pte) = self.phys_read_u64(table + vpn * 8) else {
                return;
            };
            if pte & PTE_V == 0 || pte & (PTE_R | PTE_X) != 0 {
                return;
            }
            table = ((pte >> 10) & ((1 << 44) - 1)) << PAGE_SHIFT;
        }
    }

    /// Translates `va` for `access` at the data or fetch privilege.
    pub(crate) fn translate(&mut self, va: u64, access: Access) -> Result<Translation, Trap> {
        // Another hart may change a PTE between our read and our A/D
        // update; the update is a compare-and-swap, and a lost race walks
        // again from the root.
        loop {
            if let Some(t) = self.walk(va, access)? {
                return Ok(t);
            }
        }
    }

    /// One page walk; `None` when another hart changed a PTE it was about
    /// to set A/D in.
    fn walk(&mut self, va: u64, access: Access) -> Result<Option<Translation>, Trap> {
        let prv = if access == Access::Exec {
            self.prv
        } else {
            self.data_priv()
        };
        if prv == Priv::M || self.satp >> 60 == 0 {
            return Ok(Some(Translation { pa: va, allow: 7 }));
        }
        // Sv39: bits 63..39 must equal bit 38.
        if ((va as i64) << 25 >> 25) as u64 != va {
            return Err(Trap::new(access.page_fault(), va));
        }
        let fault = Trap::new(access.page_fault(), va);
        let mut table = (self.satp & ((1 << 44) - 1)) << PAGE_SHIFT;
        let mut level = 2;
        loop {
            let vpn = (va >> (PAGE_SHIFT + 9 * level)) & 0x1ff;
            let pte_addr = table + vpn * 8;
            let Some(mut pte) = self.phys_read_u64(pte_addr) else {
                return Err(Trap::new(access.access_fault(), va));
            };
            if pte & PTE_V == 0 || (pte & PTE_R == 0 && pte & PTE_W != 0) || pte >> 54 != 0 {
                return Err(fault);
            }
            let ppn = (pte >> 10) & ((1 << 44) - 1);
            if pte & (PTE_R | PTE_X) == 0 {
                if level == 0 {
                    return Err(fault);
                }
                level -= 1;
                table = ppn << PAGE_SHIFT;
                continue;
            }
            // A leaf: check permissions for this privilege.
            let mxr = self.mstatus & mstatus::MXR != 0;
            let sum = self.mstatus & mstatus::SUM != 0;
            let user = pte & PTE_U != 0;
            let priv_ok = match prv {
                Priv::U => user,
                _ => !user || (sum && access != Access::Exec),
            };
            let can_read = pte & PTE_R != 0 || (mxr && pte & PTE_X != 0);
            let ok = priv_ok
                && match access {
                    Access::Read => can_read,
                    Access::Write => pte & PTE_W != 0,
                    Access::Exec => pte & PTE_X != 0,
                };
            if !ok {
                return Err(fault);
            }
            // A superpage's low PPN fields must be zero.
            if level > 0 && ppn & ((1 << (9 * level)) - 1) != 0 {
                return Err(fault);
            }
            let want = PTE_A | if access == Access::Write { PTE_D } else { 0 };
            if pte & want != want {
                match self.phys_cas_u64(pte_addr, pte, pte | want) {
                    None => return Err(Trap::new(access.access_fault(), va)),
                    Some(false) => return Ok(None),
                    Some(true) => pte |= want,
                }
            }
            let offset_mask = (1u64 << (PAGE_SHIFT + 9 * level)) - 1;
            let pa = ((ppn << PAGE_SHIFT) & !offset_mask) | (va & offset_mask);
            let mut allow = 0u8;
            if priv_ok && can_read {
                allow |= 1;
            }
            if priv_ok && pte & PTE_W != 0 && pte & PTE_D != 0 {
                allow |= 2;
            }
            if pte & PTE_X != 0 && (prv == Priv::U || !user) {
                allow |= 4;
            }
            return Ok(Some(Translation { pa, allow }));
        }
    }

    fn phys_read_u64(&self, pa: u64) -> Option<u64> {
        if pa & 7 != 0 || !self.ram.contains(pa, 8) {
            return None;
        }
        let off = (pa - self.ram_base) as usize;
        // SAFETY: `contains` checked the 8 bytes lie inside guest RAM.
        Some(u64::from_le(unsafe {
            std::ptr::read_unaligned(self.ram_host.add(off) as *const u64)
        }))
    }

    /// Stores `new` in the PTE at `pa` if it still holds `old`: `None`
    /// when `pa` is not in RAM, `Some(false)` when another hart changed it.
    fn phys_cas_u64(&mut self, pa: u64, old: u64, new: u64) -> Option<bool> {
        if pa & 7 != 0 || !self.ram.contains(pa, 8) {
            return None;
        }
        let off = (pa - self.ram_base) as usize;
        // SAFETY: `contains` checked the 8 bytes lie inside guest RAM, and
        // `pa` is 8-aligned (RAM's base is page-aligned).
        let ok = unsafe {
            std::sync::atomic::AtomicU64::from_ptr(self.ram_host.add(off) as *mut u64)
                .compare_exchange(
                    old.to_le(),
                    new.to_le(),
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                )
                .is_ok()
        };
        if ok {
            self.note_ram_write(off >> PAGE_SHIFT);
        }
        Some(ok)
    }

    /// Host pointer for guest-physical `pa` when it is in RAM.
    #[inline]
    pub(crate) fn ram_ptr(&self, pa: u64, len: usize) -> Option<*mut u8> {
        if self.ram.contains(pa, len) {
            // SAFETY: in bounds of the RAM mapping (checked just above).
            Some(unsafe { self.ram_host.add((pa - self.ram_base) as usize) })
        } else {
            None
        }
    }

    /// Caches the translation of `va`'s page after a successful slow-path access.
    fn tlb_fill(&mut self, va: u64, t: &Translation, ctx: usize) {
        let page_pa = t.pa & !0xfff;
        let Some(host) = self.ram_ptr(page_pa, 4096) else {
            return;
        };
        let vpn = va >> PAGE_SHIFT;
        let ram_page = ((page_pa - self.ram_base) >> PAGE_SHIFT) as usize;
        let mut writable = t.allow & 2 != 0;
        if writable && !self.writes_cached {
            // Before the code mark is read below: another hart that marks
            // the page after this sees that this hart may cache writes.
            self.write_epoch = self.ram.begin_write_translations(self.jit_hart());
            self.writes_cached = true;
        }
        writable = writable && !self.ram.write_needs_note(ram_page) && !self.ram.is_code(ram_page);
        self.tlbs[ctx & 3][vpn as usize & TLB_MASK] = TlbEntry {
            read: if t.allow & 1 != 0 { vpn } else { NO_TAG },
            write: if writable { vpn } else { NO_TAG },
            exec: if t.allow & 4 != 0 { vpn } else { NO_TAG },
            addend: (host as usize).wrapping_sub((va & !0xfff) as usize),
        };
    }

    /// Slow path of a load of `size` bytes: translation, MMIO, page crossing.
    pub(crate) fn load_slow(&mut self, va: u64, size: u8, bus: &mut dyn Bus) -> Result<u64, Trap> {
        if (va & 0xfff) + size as u64 > 0x1000 {
            // Crosses a page: byte by byte, each byte translated.
            let mut v = 0u64;
            for i in 0..size as u64 {
                v |= self.load_slow(va.wrapping_add(i), 1, bus)? << (8 * i);
            }
            return Ok(v);
        }
        let t = self.translate(va, Access::Read)?;
        if let Some(p) = self.ram_ptr(t.pa, size as usize) {
            let ctx = self.tlb_data;
            self.tlb_fill(va, &t, ctx);
            // SAFETY: `ram_ptr` checked `size` bytes at `p` are inside RAM.
            return Ok(unsafe { read_host(p, size) });
        }
        let v = bus
            .load(t.pa, size)
            .ok_or(Trap::new(Access::Read.access_fault(), va));
        self.set_irq_lines(bus.irq_lines());
        v
    }

    /// Slow path of a store.
    pub(crate) fn store_slow(
        &mut self,
        va: u64,
        size: u8,
        v: u64,
        bus: &mut dyn Bus,
    ) -> Result<(), Trap> {
        if (va & 0xfff) + size as u64 > 0x1000 {
            // Check both pages before writing either, so a fault leaves memory unchanged.
            let second = (va | 0xfff).wrapping_add(1);
            self.translate(va, Access::Write)?;
            self.translate(second, Access::Write)?;
            for i in 0..size as u64 {
                self.store_slow(va.wrapping_add(i), 1, v >> (8 * i), bus)?;
            }
            return Ok(());
        }
        let t = self.translate(va, Access::Write)?;
        if let Some(p) = self.ram_ptr(t.pa, size as usize) {
            // SAFETY: `ram_ptr` checked `size` bytes at `p` are inside RAM.
            unsafe { write_host(p, size, v) };
            self.note_ram_write(((t.pa - self.ram_base) >> PAGE_SHIFT) as usize);
            let ctx = self.tlb_data;
            self.tlb_fill(va, &t, ctx);
            return Ok(());
        }
        let ok = bus.store(t.pa, size, v);
        self.set_irq_lines(bus.irq_lines());
        if !ok {
            return Err(Trap::new(Access::Write.access_fault(), va));
        }
        // A device (the balloon) may have released guest pages: drop write
        // translations so the next store to them is seen.
        let epoch = self.ram.discard_epoch();
        if epoch != self.seen_discard_epoch {
            self.seen_discard_epoch = epoch;
            self.tlb_flush_writes();
        }
        Ok(())
    }

    /// Host pointer for an aligned load of `size` bytes at `va` in RAM
    /// (LR: the reservation is on the physical location, which the host
    /// address names).
    pub(crate) fn read_ptr(&mut self, va: u64, size: u8) -> Result<*const u8, Trap> {
        if va & (size as u64 - 1) != 0 {
            return Err(Trap::new(4, va));
        }
        let vpn = va >> PAGE_SHIFT;
        let e = self.tlbs[self.tlb_data & 3][vpn as usize & TLB_MASK];
        if e.read == vpn {
            return Ok(e.addend.wrapping_add(va as usize) as *const u8);
        }
        let t = self.translate(va, Access::Read)?;
        let Some(p) = self.ram_ptr(t.pa, size as usize) else {
            return Err(Trap::new(Access::Read.access_fault(), va));
        };
        let ctx = self.tlb_data;
        self.tlb_fill(va, &t, ctx);
        Ok(p)
    }

    /// Host pointer for an aligned read-modify-write (AMO, SC) of `size` bytes at `va`.
    pub(crate) fn rmw_ptr(&mut self, va: u64, size: u8) -> Result<*mut u8, Trap> {
        if va & (size as u64 - 1) != 0 {
            return Err(Trap::new(6, va));
        }
        let vpn = va >> PAGE_SHIFT;
        let e = self.tlbs[self.tlb_data & 3][vpn as usize & TLB_MASK];
        if e.write == vpn {
            return Ok(e.addend.wrapping_add(va as usize) as *mut u8);
        }
        let t = self.translate(va, Access::Write)?;
        let Some(p) = self.ram_ptr(t.pa, size as usize) else {
            return Err(Trap::new(Access::Write.access_fault(), va));
        };
        self.note_ram_write(((t.pa - self.ram_base) >> PAGE_SHIFT) as usize);
        let ctx = self.tlb_data;
        self.tlb_fill(va, &t, ctx);
        Ok(p)
    }

    /// Slow path of an instruction fetch of 2 bytes at `va`.
    pub(crate) fn fetch_slow16(&mut self, va: u64) -> Result<u16, Trap> {
        let t = self.translate(va, Access::Exec)?;
        let Some(p) = self.ram_ptr(t.pa, 2) else {
            return Err(Trap::new(Access::Exec.access_fault(), va));
        };
        let ctx = self.tlb_exec;
        self.tlb_fill(va, &t, ctx);
        // SAFETY: `ram_ptr` checked the 2 bytes are inside RAM.
        Ok(unsafe { read_host(p, 2) } as u16)
    }
}

/// Reads `size` little-endian bytes at host pointer `p`.
///
/// # Safety
/// `p..p+size` must lie inside guest RAM.
#[inline(always)]
pub(crate) unsafe fn read_host(p: *const u8, size: u8) -> u64 {
    // SAFETY: guaranteed by the caller; unaligned reads are fine on the host.
    unsafe {
        match size {
            1 => *p as u64,
            2 => u16::from_le(std::ptr::read_unaligned(p as *const u16)) as u64,
            4 => u32::from_le(std::ptr::read_unaligned(p as *const u32)) as u64,
            _ => u64::from_le(std::ptr::read_unaligned(p as *const u64)),
        }
    }
}

/// Writes the low `size` bytes of `v` little-endian at host pointer `p`.
///
/// # Safety
/// `p..p+size` must lie inside guest RAM.
#[inline(always)]
pub(crate) unsafe fn write_host(p: *mut u8, size: u8, v: u64) {
    // SAFETY: guaranteed by the caller; unaligned writes are fine on the host.
    unsafe {
        match size {
            1 => *p = v as u8,
            2 => std::ptr::write_unaligned(p as *mut u16, (v as u16).to_le()),
            4 => std::ptr::write_unaligned(p as *mut u32, (v as u32).to_le()),
            _ => std::ptr::write_unaligned(p as *mut u64, v.to_le()),
        }
    }
}
