//! Instruction-class tests: small programs in guest RAM, run on a hart.

use crate::hart::{Hart, Priv};
use crate::{Bus, Exit};
use godwit_memory::GuestRam;
use std::sync::Arc;

const BASE: u64 = 0x8000_0000;

pub(crate) struct NoDevices;
impl Bus for NoDevices {
    fn load(&mut self, _: u64, _: u8) -> Option<u64> {
        None
    }
    fn store(&mut self, _: u64, _: u8, _: u64) -> bool {
        false
    }
    fn irq_lines(&mut self) -> u64 {
        0
    }
}

/// xorshift64*: a small deterministic generator for the random tests
/// (modules add the draws they need in their own `impl Rng`).
pub(crate) struct Rng(pub u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

// Encoders.
pub(crate) fn r(op: u32, f3: u32, f7: u32, rd: u32, rs1: u32, rs2: u32) -> u32 {
    (f7 << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op
}
pub(crate) fn i(op: u32, f3: u32, rd: u32, rs1: u32, imm: i32) -> u32 {
    ((imm as u32 & 0xfff) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op
}
pub(crate) fn s(f3: u32, rs1: u32, rs2: u32, imm: i32) -> u32 {
    let imm = imm as u32;
    (((imm >> 5) & 0x7f) << 25)
        | (rs2 << 20)
        | (rs1 << 15)
        | (f3 << 12)
        | ((imm & 0x1f) << 7)
        | 0x23
}
fn addi(rd: u32, rs1: u32, imm: i32) -> u32 {
    i(0x13, 0, rd, rs1, imm)
}
fn lui(rd: u32, imm20: u32) -> u32 {
    (imm20 << 12) | (rd << 7) | 0x37
}
fn csrrw(rd: u32, csr: u32, rs1: u32) -> u32 {
    (csr << 20) | (rs1 << 15) | (1 << 12) | (rd << 7) | 0x73
}
fn csrrs(rd: u32, csr: u32, rs1: u32) -> u32 {
    (csr << 20) | (rs1 << 15) | (2 << 12) | (rd << 7) | 0x73
}
fn amo(f5: u32, f3: u32, rd: u32, rs1: u32, rs2: u32) -> u32 {
    r(0x2f, f3, f5 << 2, rd, rs1, rs2)
}
const SRET: u32 = 0x1020_0073;

struct Machine {
    hart: Hart,
    ram: Arc<GuestRam>,
}

impl Machine {
    fn new() -> Machine {
        let ram = Arc::new(GuestRam::new(BASE, 4 << 20).unwrap());
        let hart = Hart::new(0, ram.clone(), BASE, 0);
        Machine { hart, ram }
    }
    fn load(&mut self, at: u64, prog: &[u32]) {
        let bytes: Vec<u8> = prog.iter().flat_map(|w| w.to_le_bytes()).collect();
        self.ram.write(at, &bytes).unwrap();
    }
    /// Loads `prog` at the hart's pc and runs exactly its length.
    fn run(&mut self, prog: &[u32]) {
        let pc = self.hart.pc;
        self.load(pc, prog);
        self.steps(prog.len() as u64);
    }
    fn steps(&mut self, n: u64) {
        assert_eq!(self.hart.run(&mut NoDevices, n), Exit::Budget);
    }
    fn x(&self, n: usize) -> u64 {
        self.hart.x[n]
    }
    fn set(&mut self, n: usize, v: u64) {
        self.hart.x[n] = v;
    }
}

#[test]
fn alu_and_w_sign_extension() {
    let mut m = Machine::new();
    m.set(1, 0x7fff_ffff);
    m.set(2, 1);
    m.set(3, u64::MAX);
    m.run(&[
        r(0x3b, 0, 0, 4, 1, 2),       // addw x4 = 0x7fffffff + 1 -> sign-extended
        r(0x33, 0, 0, 5, 1, 2),       // add
        i(0x13, 5, 6, 3, 0x400 | 63), // srai x6 = -1 >> 63
        i(0x13, 5, 7, 3, 63),         // srli x7 = 1
        i(0x1b, 1, 8, 1, 1),          // slliw x8 = 0x7fffffff << 1 -> 0xfffffffe sign-extended
        i(0x1b, 5, 9, 3, 0x400 | 31), // sraiw
        r(0x33, 2, 0, 10, 3, 2),      // slt -1 < 1
        r(0x33, 3, 0, 11, 3, 2),      // sltu
        addi(0, 0, 5),                // write to x0 is discarded
        i(0x1b, 0, 12, 3, 0),         // sext.w
    ]);
    assert_eq!(m.x(4), 0xffff_ffff_8000_0000);
    assert_eq!(m.x(5), 0x8000_0000);
    assert_eq!(m.x(6), u64::MAX);
    assert_eq!(m.x(7), 1);
    assert_eq!(m.x(8), 0xffff_ffff_ffff_fffe);
    assert_eq!(m.x(9), u64::MAX);
    assert_eq!((m.x(10), m.x(11)), (1, 0));
    assert_eq!(m.x(0), 0);
    assert_eq!(m.x(12), u64::MAX);
}

#[test]
fn mul_div_edge_cases() {
    let mut m = Machine::new();
    m.set(1, i64::MIN as u64);
    m.set(2, u64::MAX); // -1
    m.set(3, 0);
    m.set(4, 7);
    m.run(&[
        r(0x33, 4, 1, 5, 1, 2),  // div MIN / -1 = MIN
        r(0x33, 6, 1, 6, 1, 2),  // rem MIN % -1 = 0
        r(0x33, 4, 1, 7, 4, 3),  // div 7/0 = -1
        r(0x33, 5, 1, 8, 4, 3),  // divu 7/0 = max
        r(0x33, 6, 1, 9, 4, 3),  // rem 7%0 = 7
        r(0x33, 7, 1, 10, 4, 3), // remu 7%0 = 7
        r(0x33, 1, 1, 11, 2, 2), // mulh -1*-1 = 0 (high)
        r(0x33, 3, 1, 12, 2, 2), // mulhu max*max high = max-1
        r(0x33, 2, 1, 13, 2, 2), // mulhsu -1 * max(unsigned) high = -1
        r(0x3b, 4, 1, 14, 1, 2), // divw: low 32 of MIN is 0 -> 0 / -1 = 0
        r(0x3b, 7, 1, 15, 2, 3), // remuw 0xffffffff % 0 = sext(0xffffffff)
    ]);
    assert_eq!(m.x(5), i64::MIN as u64);
    assert_eq!(m.x(6), 0);
    assert_eq!(m.x(7), u64::MAX);
    assert_eq!(m.x(8), u64::MAX);
    assert_eq!((m.x(9), m.x(10)), (7, 7));
    assert_eq!(m.x(11), 0);
    assert_eq!(m.x(12), u64::MAX - 1);
    assert_eq!(m.x(13), u64::MAX);
    assert_eq!(m.x(14), 0);
    assert_eq!(m.x(15), u64::MAX);
    // divw overflow: 0x80000000 / -1 = 0x80000000 sign-extended; remw = 0.
    m.set(1, 0x8000_0000);
    m.run(&[r(0x3b, 4, 1, 16, 1, 2), r(0x3b, 6, 1, 17, 1, 2)]);
    assert_eq!(m.x(16), 0xffff_ffff_8000_0000);
    assert_eq!(m.x(17), 0);
}

#[test]
fn loads_stores_misaligned_and_page_crossing() {
    let mut m = Machine::new();
    let data = BASE + 0x1_0000;
    m.set(1, data);
    m.set(2, 0x8899_aabb_ccdd_eeff);
    m.run(&[
        s(3, 1, 2, 0),       // sd
        i(0x03, 0, 3, 1, 0), // lb  0xff -> -1
        i(0x03, 4, 4, 1, 0), // lbu
        i(0x03, 1, 5, 1, 1), // lh at +1 (misaligned): 0xddee -> negative
        i(0x03, 2, 6, 1, 3), // lw at +3 (misaligned)
        i(0x03, 6, 7, 1, 4), // lwu
    ]);
    assert_eq!(m.x(3), u64::MAX);
    assert_eq!(m.x(4), 0xff);
    assert_eq!(m.x(5), 0xffff_ffff_ffff_ddee);
    assert_eq!(m.x(6), 0xffff_ffff_99aa_bbcc);
    assert_eq!(m.x(7), 0x8899_aabb);
    // A store and a load crossing a 4 KiB page boundary.
    m.set(1, BASE + 0x2_0ffc);
    m.run(&[s(3, 1, 2, 0), i(0x03, 3, 8, 1, 0)]);
    assert_eq!(m.x(8), 0x8899_aabb_ccdd_eeff);
    assert_eq!(
        m.ram.read_le::<4>(BASE + 0x2_1000).unwrap(),
        [0xbb, 0xaa, 0x99, 0x88]
    );
}

#[test]
fn amo_and_lr_sc() {
    let mut m = Machine::new();
    let a = BASE + 0x1_0000;
    m.ram.write(a, &0xffff_fff0u32.to_le_bytes()).unwrap();
    m.set(1, a);
    m.set(2, 0x20);
    m.run(&[
        amo(0x00, 2, 3, 1, 2), // amoadd.w: old -16 (sign-extended), new 0x10
        amo(0x10, 2, 4, 1, 0), // amomin.w with 0 -> old 0x10, new 0
        amo(0x1c, 2, 5, 1, 2), // amomaxu.w -> old 0, new 0x20
        amo(0x01, 2, 6, 1, 0), // amoswap.w -> old 0x20, new 0
    ]);
    assert_eq!(m.x(3), 0xffff_ffff_ffff_fff0);
    assert_eq!(m.x(4), 0x10);
    assert_eq!(m.x(5), 0);
    assert_eq!(m.x(6), 0x20);
    // LR/SC: success, then failure without a reservation.
    m.set(7, 99);
    m.run(&[
        amo(0x02, 3, 8, 1, 0),
        amo(0x03, 3, 9, 1, 7),
        amo(0x03, 3, 10, 1, 7),
    ]);
    assert_eq!(m.x(9), 0, "sc after lr succeeds");
    assert_eq!(m.x(10), 1, "second sc fails");
    assert_eq!(m.ram.read_le::<8>(a).unwrap(), 99u64.to_le_bytes());
    // A misaligned AMO traps (store/AMO address misaligned, delegated to S).
    m.set(1, a + 2);
    m.hart.stvec = BASE + 0x3000;
    m.run(&[amo(0x00, 2, 3, 1, 2)]);
    assert_eq!(m.hart.scause, 6);
    assert_eq!(m.hart.stval, a + 2);
}

#[test]
fn compressed_instructions_execute() {
    let mut m = Machine::new();
    // c.li a0,5 ; c.addi a0,-1 ; c.mv a1,a0 ; c.slli a1,4 ; c.j +4 ; c.li a0,0 (skipped) ; c.addw a0,a1
    let halves: [u16; 7] = [0x4515, 0x157d, 0x85aa, 0x0592, 0xa011, 0x4501, 0x9d2d];
    let bytes: Vec<u8> = halves.iter().flat_map(|h| h.to_le_bytes()).collect();
    m.ram.write(BASE, &bytes).unwrap();
    m.steps(6);
    assert_eq!(m.x(11), 64);
    assert_eq!(m.x(10), 68);
    assert_eq!(m.hart.pc, BASE + 14);
}

#[test]
fn csr_permissions_and_satp_modes() {
    let mut m = Machine::new();
    m.hart.stvec = BASE + 0x3000;
    // S-mode reading mstatus is illegal.
    m.run(&[csrrs(1, 0x300, 0)]);
    assert_eq!(m.hart.scause, 2);
    assert_eq!(m.hart.pc, BASE + 0x3000);
    // Writing a read-only CSR (cycle) is illegal even from S.
    m.hart.pc = BASE;
    m.set(1, 5);
    m.run(&[csrrw(0, 0xc00, 1)]);
    assert_eq!(m.hart.scause, 2);
    // satp: Sv48 and Sv57 writes are ignored, Sv39 sticks. (Through the
    // CSR functions: an Sv39 satp would translate the next fetch.)
    m.hart.pc = BASE;
    m.set(1, (9 << 60) | 0x1234);
    m.run(&[csrrw(0, 0x180, 1), csrrs(3, 0x180, 0)]);
    assert_eq!(m.x(3), 0);
    m.hart.csr_write(0x180, (10 << 60) | 0x1234).unwrap();
    assert_eq!(m.hart.csr_read(0x180).unwrap(), 0);
    m.hart
        .csr_write(0x180, (8 << 60) | (0xffff << 44) | 0x1234)
        .unwrap();
    assert_eq!(
        m.hart.csr_read(0x180).unwrap(),
        (8 << 60) | 0x1234,
        "Sv39 sticks, ASID reads as zero"
    );
    m.hart.csr_write(0x180, 0).unwrap();
    // U-mode: sstatus is out of reach, `time` is readable (scounteren.TM).
    m.hart.pc = BASE + 0x100;
    m.hart.prv = Priv::U;
    m.hart.select_tlb();
    m.run(&[csrrs(5, 0xc01, 0)]);
    assert_eq!(m.hart.prv, Priv::U);
    m.run(&[csrrs(6, 0x100, 0)]);
    assert_eq!(m.hart.prv, Priv::S);
    assert_eq!(m.hart.scause, 2);
    assert_eq!(m.hart.sepc, BASE + 0x104);
}

/// Builds an Sv39 table mapping virtual page `va` to physical `pa` with
/// `flags` (V is added), using two levels of tables placed at `tables`.
fn map_page(m: &Machine, tables: u64, va: u64, pa: u64, flags: u64) {
    let (l2, l1, l0) = (tables, tables + 0x1000, tables + 0x2000);
    let vpn = |lvl: u64| (va >> (12 + 9 * lvl)) & 0x1ff;
    let pte = |next: u64, f: u64| ((next >> 12) << 10) | f | 1;
    m.ram
        .write(l2 + vpn(2) * 8, &pte(l1, 0).to_le_bytes())
        .unwrap();
    m.ram
        .write(l1 + vpn(1) * 8, &pte(l0, 0).to_le_bytes())
        .unwrap();
    m.ram
        .write(l0 + vpn(0) * 8, &pte(pa, flags).to_le_bytes())
        .unwrap();
}

#[test]
fn sv39_faults_permissions_and_ad_bits() {
    let mut m = Machine::new();
    let tables = BASE + 0x10_0000;
    let code_va = 0x4000_0000u64;
    // Code page: R X (kernel), data page: R only, user page: R W U.
    map_page(&m, tables, code_va, BASE, 0x2 | 0x8);
    map_page(&m, tables, 0x4000_1000, BASE + 0x2_0000, 0x2);
    map_page(&m, tables, 0x4000_2000, BASE + 0x2_1000, 0x2 | 0x4 | 0x10);
    m.hart.stvec = code_va + 0x800;
    m.hart.satp = (8 << 60) | (tables >> 12);
    m.hart.pc = code_va;
    m.set(1, 0x4000_1000);
    m.set(2, 0x4000_2000);
    m.set(3, 0x5000_0000);
    m.load(BASE, &[i(0x03, 3, 4, 1, 0), s(3, 1, 4, 0)]);
    m.steps(2);
    assert_eq!(m.hart.scause, 15, "store to a read-only page");
    assert_eq!(m.hart.stval, 0x4000_1000);
    let leaf = m.ram.read_le::<8>(tables + 0x2000 + 8).unwrap();
    assert_ne!(u64::from_le_bytes(leaf) & 0x40, 0, "the load set A");
    // Unmapped load -> load page fault; U page from S without SUM -> fault.
    m.hart.pc = code_va;
    m.load(BASE, &[i(0x03, 3, 4, 3, 0)]);
    m.steps(1);
    assert_eq!(m.hart.scause, 13);
    m.hart.pc = code_va;
    m.load(BASE, &[i(0x03, 3, 4, 2, 0)]);
    m.steps(1);
    assert_eq!(m.hart.scause, 13, "S touching a U page without SUM");
    // With SUM set the same store works and sets D.
    m.hart.pc = code_va;
    m.hart.mstatus |= crate::csr::mstatus::SUM;
    m.hart.select_tlb();
    m.load(BASE, &[s(3, 2, 1, 0)]);
    m.steps(1);
    assert_eq!(m.hart.pc, code_va + 4);
    let upte = u64::from_le_bytes(m.ram.read_le::<8>(tables + 0x2000 + 16).unwrap());
    assert_eq!(upte & 0xc0, 0xc0, "A and D set by the store");
    // Fetch from a non-executable page -> instruction page fault.
    m.hart.pc = 0x4000_1000;
    m.steps(1);
    assert_eq!(m.hart.scause, 12);
    assert_eq!(m.hart.stval, 0x4000_1000);
}

#[test]
fn the_hot_set_holds_the_tlb_pages_and_the_tables_that_map_them() {
    let mut m = Machine::new();
    let tables = BASE + 0x10_0000;
    let code_va = 0x4000_0000u64;
    map_page(&m, tables, code_va, BASE, 0xc0 | 0x2 | 0x8);
    map_page(&m, tables, 0x4000_1000, BASE + 0x2_0000, 0xc0 | 0x2);
    m.hart.satp = (8 << 60) | (tables >> 12);
    m.hart.pc = code_va;
    m.set(1, 0x4000_1000);
    m.load(BASE, &[i(0x03, 3, 4, 1, 0)]);
    m.steps(1);
    assert_eq!(m.hart.pc, code_va + 4, "the load ran");
    let page = |pa: u64| ((pa - BASE) >> 12) as usize;
    let mut want = vec![
        page(BASE),
        page(BASE + 0x2_0000),
        page(tables),
        page(tables + 0x1000),
        page(tables + 0x2000),
    ];
    want.sort_unstable();
    assert_eq!(m.hart.tlb_ram_pages(), want);
    // An empty TLB: nothing is hot.
    m.hart.tlb_flush();
    assert!(m.hart.tlb_ram_pages().is_empty());
}

#[test]
fn timer_interrupt_and_sret_to_user() {
    let mut m = Machine::new();
    m.hart.stvec = BASE + 0x1000;
    m.hart.mie = crate::irq::STIP;
    m.hart.sepc = BASE + 0x2000;
    m.hart.mstatus |= crate::csr::mstatus::SPIE; // SPP = U
    m.run(&[SRET]);
    assert_eq!(m.hart.prv, Priv::U);
    assert_eq!(m.hart.pc, BASE + 0x2000);
    assert_ne!(m.hart.mstatus & crate::csr::mstatus::SIE, 0);
    m.hart.set_timer(0); // deadline passed: STIP pending, enabled in U
    m.load(BASE + 0x2000, &[addi(1, 0, 1)]);
    m.steps(1);
    assert_eq!(m.hart.prv, Priv::S);
    assert_eq!(m.hart.scause, (1 << 63) | 5);
    assert_eq!(m.hart.sepc, BASE + 0x2000);
    assert_eq!(m.hart.pc, BASE + 0x1000);
}

#[test]
fn wfi_and_ecall_exits() {
    let mut m = Machine::new();
    m.load(BASE, &[0x1050_0073, 0x0000_0073]);
    assert_eq!(m.hart.run(&mut NoDevices, 10), Exit::Wfi);
    assert_eq!(m.hart.pc, BASE + 4);
    m.set(17, 0x10);
    assert_eq!(m.hart.run(&mut NoDevices, 10), Exit::Sbi);
    m.hart.sbi_return(0, 7);
    assert_eq!((m.x(10), m.x(11), m.hart.pc), (0, 7, BASE + 8));
}

#[test]
fn dirty_logging_sees_the_first_store_to_a_cached_page() {
    let mut m = Machine::new();
    m.set(1, BASE + 0x1_0000);
    m.run(&[s(3, 1, 0, 0), s(3, 1, 0, 8)]);
    m.ram.set_logging(true);
    m.hart.tlb_flush_writes();
    m.hart.pc = BASE;
    m.steps(2);
    let dirty = m.ram.dirty_log().take();
    let pages: Vec<usize> = godwit_memory::AtomicBitmap::iter_set(&dirty).collect();
    assert_eq!(pages, vec![0x10]);
}

#[test]
fn state_round_trip() {
    let mut m = Machine::new();
    m.run(&[addi(5, 0, 42), lui(6, 0x12345)]);
    let st = m.hart.state();
    let mut m2 = Machine::new();
    m2.hart.restore(&st);
    assert_eq!(m2.hart.state(), st);
    assert_eq!(m2.x(6), 0x1234_5000);
}

// ---------------------------------------------------------------------------
// Dirty log under the Sv39 TLB fast path

/// How one step of the dirty-log program stores to its page.
#[derive(Clone, Copy, Debug)]
enum Store {
    Sd,
    Sw,
    Sh,
    Sb,
    CSd,
    CSw,
    CSdsp,
    CFsd,
    AmoAddD,
    AmoSwapW,
    LrScD,
    Fsd,
    Fsw,
    /// A misaligned `sd` at offset 0xffc: it also writes the next page.
    Crossing,
    /// A loop storing every doubleword of the page (512 `sd`, all but the
    /// first through the TLB fast path).
    Sweep,
}

const STORES: [Store; 15] = [
    Store::Sd,
    Store::Sweep,
    Store::Sw,
    Store::CSd,
    Store::AmoAddD,
    Store::Sh,
    Store::Fsd,
    Store::Crossing,
    Store::CSw,
    Store::LrScD,
    Store::Sb,
    Store::CFsd,
    Store::AmoSwapW,
    Store::CSdsp,
    Store::Fsw,
];

/// Data pages the program can reach: virtual page `v` (0..DATA_PAGES) is at
/// `DATA_VA + v * 4096` and maps to a scattered RAM page (see `ram_page`).
const DATA_PAGES: u64 = 256;
const DATA_VA: u64 = 0x4001_0000;
const CODE_VA: u64 = 0x4000_0000;

/// RAM page index (from the start of RAM) behind data page `v`: a
/// permutation of pages 512..768, so neighbours in virtual memory are far
/// apart in the log.
fn ram_page(v: u64) -> usize {
    512 + ((v * 97 + 13) % DATA_PAGES) as usize
}

/// Guest-physical address of data page `v`.
fn data_pa(v: u64) -> u64 {
    BASE + ((ram_page(v) as u64) << 12)
}

/// Code as 16-bit parcels, so compressed instructions can sit anywhere.
#[derive(Default)]
struct Asm(Vec<u16>);

impl Asm {
    fn w(&mut self, insn: u32) {
        self.0.extend([insn as u16, (insn >> 16) as u16]);
    }
    fn c(&mut self, insn: u16) {
        self.0.push(insn);
    }
    /// `lui rd` with the base of data page `v`.
    fn page(&mut self, rd: u32, v: u64) {
        self.w(lui(rd, ((DATA_VA >> 12) + v) as u32));
    }
    /// Code for one store of `kind` to data page `v`; returns the data
    /// pages it writes. Registers: x6 value, x9 value for compressed
    /// stores, f1/f9 values for FP stores; x2, x5, x7, x8, x11, x12 scratch.
    fn store(&mut self, kind: Store, v: u64) -> Vec<u64> {
        match kind {
            Store::Sd => {
                self.page(5, v);
                self.w(s(3, 5, 6, 0x7f8));
            }
            Store::Sw => {
                self.page(5, v);
                self.w(s(2, 5, 6, 0x124));
            }
            Store::Sh => {
                self.page(5, v);
                self.w(addi(5, 5, 0x7ff));
                self.w(s(1, 5, 6, 3)); // offset 0x802
            }
            Store::Sb => {
                self.page(5, v);
                self.w(s(0, 5, 6, 0x333));
            }
            Store::CSd => {
                self.page(8, v);
                self.c(0xe804); // c.sd x9, 16(x8)
            }
            Store::CSw => {
                self.page(8, v);
                self.c(0xc044); // c.sw x9, 4(x8)
            }
            Store::CSdsp => {
                self.page(2, v);
                self.c(0xec1a); // c.sdsp x6, 24(sp)
            }
            Store::CFsd => {
                self.page(8, v);
                self.c(0xa404); // c.fsd f9, 8(x8)
            }
            Store::AmoAddD => {
                self.page(5, v);
                self.w(addi(5, 5, 0x108));
                self.w(amo(0x00, 3, 11, 5, 6));
            }
            Store::AmoSwapW => {
                self.page(5, v);
                self.w(addi(5, 5, 0x204));
                self.w(amo(0x01, 2, 11, 5, 6));
            }
            Store::LrScD => {
                self.page(5, v);
                self.w(addi(5, 5, 0x310));
                self.w(amo(0x02, 3, 11, 5, 0)); // lr.d x11, (x5)
                self.w(amo(0x03, 3, 12, 5, 6)); // sc.d x12, x6, (x5): succeeds
            }
            Store::Fsd => {
                self.page(5, v);
                self.w(s(3, 5, 1, 0x440) | 0x04); // fsd f1 (STORE-FP is 0x27)
            }
            Store::Fsw => {
                self.page(5, v);
                self.w(s(2, 5, 1, 0x55c) | 0x04); // fsw f1
            }
            Store::Crossing => {
                assert!(v + 1 < DATA_PAGES);
                self.page(5, v + 1);
                self.w(s(3, 5, 6, -4)); // sd x6, 0xffc(page v)
                return vec![v, v + 1];
            }
            Store::Sweep => {
                self.page(5, v);
                self.page(7, v + 1);
                self.w(s(3, 5, 6, 0)); // loop: sd x6, 0(x5)
                self.w(addi(5, 5, 8));
                self.w(b(6, 5, 7, -8)); // bltu x5, x7, loop
            }
        }
        vec![v]
    }
    /// `ld x10` from data page `v`: a read that must leave the page clean.
    fn read(&mut self, v: u64) {
        self.page(5, v);
        self.w(i(0x03, 3, 10, 5, 0x80));
    }
}

pub(crate) fn b(f3: u32, rs1: u32, rs2: u32, imm: i32) -> u32 {
    let imm = imm as u32;
    (((imm >> 12) & 1) << 31)
        | (((imm >> 5) & 0x3f) << 25)
        | (rs2 << 20)
        | (rs1 << 15)
        | (f3 << 12)
        | (((imm >> 1) & 0xf) << 8)
        | (((imm >> 11) & 1) << 7)
        | 0x63
}

/// Emits one phase: every page of `pages` once with the store kinds in
/// turn (starting at `first_kind`), then every third page again with an
/// `sd` (a TLB hit by then), then reads of `read_only`; ends with an
/// `ecall` so the hart returns to the test. Returns the data pages written.
fn phase(asm: &mut Asm, pages: &[u64], first_kind: usize, read_only: &[u64]) -> Vec<u64> {
    let mut written = Vec::new();
    for (n, &v) in pages.iter().enumerate() {
        written.extend(asm.store(STORES[(first_kind + n) % STORES.len()], v));
    }
    for &v in pages.iter().step_by(3) {
        written.extend(asm.store(Store::Sd, v));
    }
    for &v in read_only {
        asm.read(v);
    }
    asm.w(0x0000_0073); // ecall
    written.sort_unstable();
    written.dedup();
    assert!(read_only.iter().all(|v| !written.contains(v)));
    written
}

/// Runs the hart until the `ecall` that ends a phase.
fn run_phase(m: &mut Machine) {
    let exit = m.hart.run(&mut NoDevices, 100_000);
    assert_eq!(
        exit,
        Exit::Sbi,
        "the phase did not reach its ecall (pc {:#x}, scause {}, stval {:#x})",
        m.hart.pc,
        m.hart.scause,
        m.hart.stval
    );
    m.hart.sbi_return(0, 0);
}

/// Turns logging on or off the way `Vm::set_dirty_logging` does.
fn set_logging(m: &mut Machine, on: bool) {
    m.ram.set_logging(on);
    m.hart.tlb_flush_writes();
}

/// Takes the dirty log the way `Vm::take_dirty_log` does; returns the
/// dirty RAM page indices.
fn take_log(m: &mut Machine) -> Vec<usize> {
    let words = m.ram.dirty_log().take();
    m.hart.tlb_flush_writes();
    godwit_memory::AtomicBitmap::iter_set(&words).collect()
}

fn ram_pages(data_pages: &[u64]) -> Vec<usize> {
    let mut p: Vec<usize> = data_pages.iter().map(|&v| ram_page(v)).collect();
    p.sort_unstable();
    p
}

/// "A guest writing a known set of pages produces exactly that set", with
/// the MMU on so stores really go through the TLB fast path, over several
/// take rounds and a logging off/on cycle. Fails if the take or the
/// switch-on keeps the vCPU's cached write translations.
#[test]
fn dirty_log_is_exactly_the_pages_a_paged_guest_stored_to() {
    // The compressed encodings used above are what they claim to be.
    let expand = crate::rvc::expand_slow;
    assert_eq!(expand(0xe804), Some(s(3, 8, 9, 16)));
    assert_eq!(expand(0xc044), Some(s(2, 8, 9, 4)));
    assert_eq!(expand(0xec1a), Some(s(3, 2, 6, 24)));
    assert_eq!(expand(0xa404), Some(s(3, 8, 9, 8) | 0x04));

    let mut m = Machine::new();
    // Sv39, S-mode: code (R X) at CODE_VA -> RAM page 0.., data (R W) at
    // DATA_VA -> scattered RAM pages. A and D are preset so no page-table
    // page is written during the phases (a PTE update is a logged write).
    let tables = BASE + 0x10_0000;
    let (rx, rw) = (0xc0 | 0x8 | 0x2, 0xc0 | 0x4 | 0x2);
    for p in 0..4 {
        map_page(&m, tables, CODE_VA + p * 0x1000, BASE + p * 0x1000, rx);
    }
    for v in 0..DATA_PAGES {
        map_page(&m, tables, DATA_VA + v * 0x1000, data_pa(v), rw);
    }
    m.hart.satp = (8 << 60) | (tables >> 12);
    m.hart.mstatus |= crate::csr::mstatus::FS;
    m.hart.pc = CODE_VA;
    m.hart.fpu.f[1] = 0x4009_21fb_5444_2d18;
    m.hart.fpu.f[9] = 0x4005_bf0a_8b14_5769;
    m.set(6, 0x1122_3344_5566_7788);
    m.set(9, 0x0bad_cafe);

    // A: 40 irregular pages; B overlaps A (its stores to A's pages would
    // hit write translations cached in phase 1 if the take kept them);
    // C runs with logging off (every write translation gets cached); D
    // overlaps C and A.
    let set_a: [u64; 40] = [
        0, 1, 2, 5, 9, 10, 11, 12, 20, 21, 33, 34, 35, 47, 48, 60, 61, 62, 63, 64, 77, 90, 91, 100,
        120, 121, 122, 140, 141, 155, 170, 171, 190, 200, 201, 202, 230, 250, 251, 254,
    ];
    let set_b: [u64; 24] = [
        1, 2, 3, 4, 9, 11, 13, 21, 33, 47, 62, 63, 64, 70, 71, 90, 99, 121, 141, 170, 180, 200,
        202, 240,
    ];
    let set_c: [u64; 9] = [2, 5, 63, 64, 150, 151, 200, 241, 77];
    let set_d: [u64; 12] = [0, 2, 5, 7, 8, 63, 90, 150, 151, 201, 241, 252];
    let mut asm = Asm::default();
    let want_a = phase(&mut asm, &set_a, 0, &[3, 4, 111, 180]);
    let want_b = phase(&mut asm, &set_b, 5, &[0, 5, 10, 111]);
    phase(&mut asm, &set_c, 9, &[]);
    let want_d = phase(&mut asm, &set_d, 2, &[1, 3, 9, 65, 121]);
    assert!(asm.0.len() * 2 <= 0x4000, "the program fits its code pages");
    let code: Vec<u8> = asm.0.iter().flat_map(|h| h.to_le_bytes()).collect();
    m.ram.write(BASE, &code).unwrap();

    set_logging(&mut m, true);
    run_phase(&mut m);
    assert_eq!(take_log(&mut m), ram_pages(&want_a), "phase 1: exactly A");
    // The last store of page 1's sweep (a TLB hit) really landed.
    let last = m.ram.read_le::<8>(data_pa(1) + 0xff8).unwrap();
    assert_eq!(u64::from_le_bytes(last), 0x1122_3344_5566_7788);
    run_phase(&mut m);
    assert_eq!(take_log(&mut m), ram_pages(&want_b), "phase 2: exactly B");
    set_logging(&mut m, false);
    run_phase(&mut m);
    // Looked at, not taken: a take would drop the write translations phase
    // 3 cached, and turning logging back on must do that by itself.
    assert_eq!(m.ram.dirty_log().count(), 0, "phase 3: logging off");
    set_logging(&mut m, true);
    run_phase(&mut m);
    assert_eq!(take_log(&mut m), ram_pages(&want_d), "phase 4: exactly D");
    assert!(take_log(&mut m).is_empty(), "the take cleared the log");
}

fn csrrc(rd: u32, csr: u32, rs1: u32) -> u32 {
    (csr << 20) | (rs1 << 15) | (3 << 12) | (rd << 7) | 0x73
}

#[test]
fn mip_read_modify_write_does_not_latch_the_plic_line() {
    use crate::irq::{MEIP, SEIP, SSIP, STIP};
    const MIP: u32 = 0x344;
    let mut m = Machine::new();
    m.hart.prv = Priv::M;
    m.hart.builtin_sbi = false;
    m.hart.select_tlb();
    // The PLIC asserts SEIP (and MEIP) while M-mode sets and clears SSIP.
    m.hart.set_irq_lines(SEIP | MEIP);
    m.set(1, SSIP);
    m.run(&[csrrs(2, MIP, 1), csrrc(3, MIP, 1), csrrs(4, MIP, 1)]);
    assert_eq!(m.x(2), SEIP | MEIP, "csrrs reads the line");
    assert_eq!(m.x(3), SEIP | MEIP | SSIP);
    assert_eq!(m.x(4), SEIP | MEIP);
    // The line drops: SEIP is gone, SSIP (written) stays.
    m.hart.set_irq_lines(0);
    m.run(&[csrrs(5, MIP, 0)]);
    assert_eq!(
        m.x(5),
        SSIP,
        "SEIP must not have been latched by csrrs/csrrc"
    );
    // Software may still set SEIP itself, and clear it.
    m.set(1, SEIP);
    m.run(&[
        csrrs(0, MIP, 1),
        csrrs(6, MIP, 0),
        csrrc(0, MIP, 1),
        csrrs(7, MIP, 0),
    ]);
    assert_eq!(m.x(6), SSIP | SEIP);
    assert_eq!(m.x(7), SSIP);
    // With Sstc on (menvcfg.STCE), STIP is stimecmp's: writes leave it alone.
    m.hart.menvcfg = 1 << 63;
    m.hart.stimecmp = u64::MAX;
    m.set(1, STIP);
    m.run(&[csrrs(0, MIP, 1), csrrs(8, MIP, 0)]);
    assert_eq!(m.x(8) & STIP, 0, "STIP is read-only under Sstc");
    m.hart.menvcfg = 0;
    m.run(&[csrrs(9, MIP, 0)]);
    assert_eq!(
        m.x(9) & STIP,
        0,
        "the ignored write did not land in the software bit"
    );
}
