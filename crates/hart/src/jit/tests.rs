//! The translator against the interpreter: random programs run on two
//! harts, one with translation and one without, must leave identical
//! registers, `pc`, `instret` and memory after every run slice. Plus the
//! cases a block cache gets wrong when it is wrong: self-modifying code,
//! host writes to code, and one page mapped at two addresses.

use crate::hart::Hart;
use crate::tests::{b, i, r, s, NoDevices, Rng};
use crate::Exit;
use godwit_memory::GuestRam;
use std::sync::Arc;

const BASE: u64 = 0x8000_0000;
const DATA: u64 = BASE + 0x10_0000;
const DATA_LEN: usize = 0x3000;

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
}

fn jal(rd: u32, off: i32) -> u32 {
    let o = off as u32;
    ((o >> 20 & 1) << 31)
        | ((o >> 1 & 0x3ff) << 21)
        | ((o >> 11 & 1) << 20)
        | (o & 0xff000)
        | (rd << 7)
        | 0x6f
}

/// One generated instruction; jumps are resolved after layout.
#[derive(Clone, Copy)]
enum Item {
    W(u32),
    C(u16),
    /// A conditional branch `f3 rs1 rs2` over the next `skip` items.
    Branch(u32, u32, u32, usize),
    /// `jal rd` over the next `skip` items.
    Jal(u32, usize),
    /// `jalr rd, 0(x13)` with x13 pointing `skip` items past the next one
    /// (set by an `auipc`/`addi` pair emitted in front of it).
    Jalr(u32, usize),
    /// Back to item `to` (a loop) while x14 counts down.
    Loop(usize),
}

/// Registers random instructions may write: everything but the data
/// pointers x10..x12 and x13/x14, which jumps and loops use.
fn dest(g: &mut Rng) -> u32 {
    loop {
        let r = g.below(32) as u32;
        if !(10..=14).contains(&r) {
            return r;
        }
    }
}

fn reg(g: &mut Rng) -> u32 {
    g.below(32) as u32
}

/// A base register and offset for a load or store: often x12 (just below
/// a page boundary) with a small offset, so accesses cross pages.
fn near_page_end(g: &mut Rng, imm: i32) -> (u32, i32) {
    match g.below(3) {
        0 => (12, g.below(16) as i32 - 8),
        _ => (g.pick(&[10, 11, 12]), imm),
    }
}

fn random_item(g: &mut Rng, n_after: usize) -> Item {
    let rd = dest(g);
    let (rs1, rs2) = (reg(g), reg(g));
    let imm = g.below(4096) as i32 - 2048;
    match g.below(20) {
        0..=3 => {
            let (f7, f3) = g.pick(&[
                (0, 0),
                (0x20, 0),
                (0, 1),
                (0, 2),
                (0, 3),
                (0, 4),
                (0, 5),
                (0x20, 5),
                (0, 6),
                (0, 7),
                (1, 0),
                (1, 1),
                (1, 2),
                (1, 3),
                (1, 4),
                (1, 5),
                (1, 6),
                (1, 7),
            ]);
            Item::W(r(0x33, f3, f7, rd, rs1, rs2))
        }
        4 => {
            let (f7, f3) = g.pick(&[
                (0, 0),
                (0x20, 0),
                (0, 1),
                (0, 5),
                (0x20, 5),
                (1, 0),
                (1, 4),
                (1, 5),
                (1, 6),
                (1, 7),
            ]);
            Item::W(r(0x3b, f3, f7, rd, rs1, rs2))
        }
        5..=7 => {
            let f3 = g.below(8) as u32;
            let imm = match f3 {
                1 => g.below(64) as i32,
                5 => g.below(64) as i32 | if g.below(2) == 0 { 0x400 } else { 0 },
                _ => imm,
            };
            Item::W(i(0x13, f3, rd, rs1, imm))
        }
        8 => {
            let f3 = g.pick(&[0, 1, 5]);
            let imm = match f3 {
                1 => g.below(32) as i32,
                5 => g.below(32) as i32 | if g.below(2) == 0 { 0x400 } else { 0 },
                _ => imm,
            };
            Item::W(i(0x1b, f3, rd, rs1, imm))
        }
        9 => Item::W((g.next() as u32 & 0xffff_f000) | rd << 7 | g.pick(&[0x37, 0x17])),
        10..=11 => {
            let (base, imm) = near_page_end(g, imm);
            Item::W(i(0x03, g.pick(&[0, 1, 2, 3, 4, 5, 6]), rd, base, imm))
        }
        12..=13 => {
            let (base, imm) = near_page_end(g, imm);
            Item::W(s(g.below(4) as u32, base, rs2, imm))
        }
        14 => {
            let skip = g.below(4.min(n_after as u64 + 1)) as usize;
            match g.below(6) {
                0 => Item::Jal(rd, skip),
                1 => Item::Jalr(rd, skip),
                _ => Item::Branch(g.pick(&[0, 1, 4, 5, 6, 7]), rs1, rs2, skip),
            }
        }
        15..=16 => {
            // Compressed: c.addi, c.li, c.mv, c.add, c.slli, c.sub/xor/or/and,
            // c.addw/subw, c.lw/c.ld/c.sw/c.sd off x10.
            // x8, x9 or x15: x10..x14 are pointers and counters.
            let rdc = g.pick(&[0u16, 1, 7]);
            let full = rdc as u32 + 8;
            let nz = |g: &mut Rng| g.below(31) as u16 + 1;
            Item::C(match g.below(9) {
                0 => 0x0001 | (full as u16) << 7 | (nz(g) & 0x1f) << 2,
                1 => 0x4001 | (full as u16) << 7 | (g.below(32) as u16) << 2,
                2 => 0x8002 | (full as u16) << 7 | ((rs2.max(1)) as u16) << 2,
                3 => 0x9002 | (full as u16) << 7 | ((rs2.max(1)) as u16) << 2,
                4 => 0x0002 | (full as u16) << 7 | nz(g) << 2,
                5 => 0x8c01 | rdc << 7 | (g.below(4) as u16) << 5 | (g.below(8) as u16) << 2,
                6 => 0x9c01 | rdc << 7 | (g.below(2) as u16) << 5 | (g.below(8) as u16) << 2,
                // c.ld rd', 8*k(x10) / c.sd rs2', 8*k(x10)
                7 => 0x6000 | 2 << 7 | (g.below(8) as u16) << 10 | rdc << 2,
                _ => 0xe000 | 2 << 7 | (g.below(8) as u16) << 10 | (g.below(8) as u16) << 2,
            })
        }
        17 => Item::W(match g.below(5) {
            0 => 0x0ff0_000f,                                // fence
            1 => 0x0000_100f,                                // fence.i
            2 => (0xc02 << 20) | (2 << 12) | rd << 7 | 0x73, // csrr rd, instret
            // amoadd.d / amoswap.w on x10 (aligned)
            3 => r(0x2f, 3, 0, rd, 10, rs2),
            _ => r(0x2f, 2, 1 << 2, rd, 10, rs2),
        }),
        _ => Item::W(i(0x13, 0, rd, rs1, imm)),
    }
}

/// A program: random items, a counted loop over a stretch of them, and a
/// closing `j .`.
fn program(g: &mut Rng, len: usize) -> Vec<Item> {
    let mut items = Vec::new();
    let loop_start = len / 3;
    let mut body = 0;
    for k in 0..len {
        if k == loop_start {
            items.push(Item::W(i(0x13, 0, 14, 0, 1 + g.below(5) as i32)));
            body = items.len();
        }
        let it = random_item(g, len - k);
        // Keep jumps out of the loop body so it always terminates.
        let in_loop = k >= loop_start && k < loop_start + 8;
        if in_loop && matches!(it, Item::Branch(..) | Item::Jal(..) | Item::Jalr(..)) {
            items.push(Item::W(i(0x13, 0, 15, 15, 1)));
        } else {
            items.push(it);
        }
        if k == loop_start + 8 {
            items.push(Item::W(i(0x13, 0, 14, 14, -1)));
            items.push(Item::Loop(body));
        }
    }
    items.push(Item::W(jal(0, 0)));
    items
}

/// Lays out `items` at `at` and returns the bytes.
fn layout(items: &[Item], at: u64) -> Vec<u8> {
    let size = |it: &Item| match it {
        Item::C(_) => 2,
        Item::Jalr(..) => 12,
        _ => 4,
    };
    let mut addr = Vec::with_capacity(items.len() + 1);
    let mut a = at;
    for it in items {
        addr.push(a);
        a += size(it);
    }
    addr.push(a);
    let mut out = Vec::new();
    for (k, it) in items.iter().enumerate() {
        let here = addr[k];
        let target = |skip: usize| addr[(k + 1 + skip).min(items.len() - 1)];
        let mut w = |v: u32| out.extend_from_slice(&v.to_le_bytes());
        match *it {
            Item::W(v) => w(v),
            Item::C(c) => out.extend_from_slice(&c.to_le_bytes()),
            Item::Branch(f3, rs1, rs2, skip) => w(b(f3, rs1, rs2, (target(skip) - here) as i32)),
            Item::Jal(rd, skip) => w(jal(rd, (target(skip) - here) as i32)),
            Item::Jalr(rd, skip) => {
                w(0x17 | 13 << 7); // auipc x13, 0
                w(i(0x13, 0, 13, 13, (target(skip) - here) as i32));
                w(i(0x67, 0, rd, 13, 1)); // bit 0 of the target is dropped
            }
            Item::Loop(to) => w(b(1, 14, 0, (addr[to] as i64 - here as i64) as i32)),
        }
    }
    out
}

fn hart_pair(code: &[u8], g: &mut Rng, logging: bool, paged: bool) -> [(Hart, Arc<GuestRam>); 2] {
    let mut regs = [0u64; 32];
    for v in regs.iter_mut().skip(1) {
        *v = match g.below(4) {
            0 => g.below(64),
            1 => g.next() as i32 as i64 as u64,
            _ => g.next(),
        };
    }
    regs[10] = DATA + 0x800;
    regs[11] = DATA + 0x800 + 8 * g.below(64);
    regs[12] = DATA + 0xff8 + g.below(8);
    let mut data = vec![0u8; DATA_LEN];
    for c in data.chunks_mut(8) {
        c.copy_from_slice(&g.next().to_le_bytes());
    }
    [true, false].map(|jit| {
        let ram = Arc::new(GuestRam::new(BASE, 2 << 20).unwrap());
        ram.write(BASE, code).unwrap();
        ram.write(DATA, &data).unwrap();
        if jit {
            ram.set_logging(logging);
        }
        let mut h = Hart::new(0, ram.clone(), BASE, 0);
        h.set_jit(jit);
        h.x = regs;
        if paged {
            // Code mapped at its own address; the data pages in reverse
            // order, so an access crossing pages must be split.
            for p in 0..2 {
                map(&ram, BASE + p * 0x1000, BASE + p * 0x1000);
            }
            for p in 0..3 {
                map(&ram, DATA + p * 0x1000, DATA + (2 - p) * 0x1000);
            }
            h.satp = (8 << 60) | (TABLES >> 12);
        }
        (h, ram)
    })
}

const TABLES: u64 = BASE + 0x18_0000;

/// Maps virtual page `va` to `pa` (read, write, execute, A and D set) in
/// the Sv39 tables at [`TABLES`]; every page used here shares one leaf table.
fn map(ram: &GuestRam, va: u64, pa: u64) {
    let (l2, l1, l0) = (TABLES, TABLES + 0x1000, TABLES + 0x2000);
    let vpn = |lvl: u64| (va >> (12 + 9 * lvl)) & 0x1ff;
    let pte = |next: u64, f: u64| ((next >> 12) << 10) | f | 1;
    ram.write(l2 + vpn(2) * 8, &pte(l1, 0).to_le_bytes())
        .unwrap();
    ram.write(l1 + vpn(1) * 8, &pte(l0, 0).to_le_bytes())
        .unwrap();
    ram.write(l0 + vpn(0) * 8, &pte(pa, 0xce).to_le_bytes())
        .unwrap();
}

fn assert_same(pair: &[(Hart, Arc<GuestRam>); 2], what: &str) {
    let (a, b) = (&pair[0].0, &pair[1].0);
    assert_eq!(a.pc, b.pc, "{what}: pc");
    assert_eq!(a.instret, b.instret, "{what}: instret");
    for k in 0..32 {
        assert_eq!(a.x[k], b.x[k], "{what}: x{k}");
    }
    assert_eq!(
        (a.scause, a.sepc, a.stval),
        (b.scause, b.sepc, b.stval),
        "{what}: trap"
    );
    let mut da = vec![0u8; DATA_LEN];
    let mut db = vec![0u8; DATA_LEN];
    pair[0].1.read(DATA, &mut da).unwrap();
    pair[1].1.read(DATA, &mut db).unwrap();
    assert!(da == db, "{what}: data memory differs");
}

#[test]
fn random_programs_match_the_interpreter() {
    // The translator needs executable memory (a memfd mapped twice); an
    // x86-64 Linux host without it cannot run this test, which must then
    // fail rather than pass comparing nothing.
    assert!(
        Hart::new(0, Arc::new(GuestRam::new(BASE, 1 << 20).unwrap()), BASE, 0).jit_enabled(),
        "no executable memory for translated code on this host: the translator cannot be tested"
    );
    let mut translated = 0;
    for seed in 1..=400u64 {
        let mut g = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let len = 40 + g.below(160) as usize;
        let items = program(&mut g, len);
        let code = layout(&items, BASE);
        let mut pair = hart_pair(&code, &mut g, seed % 4 == 0, seed % 2 == 1);
        // Traps (a random load can still land anywhere through rd = x0
        // tricks) go to a `j .` at the end of the program.
        for (h, _) in pair.iter_mut() {
            h.stvec = BASE + code.len() as u64 - 4;
        }
        for slice in 0..40 {
            let budget = 1 + g.below(if slice % 2 == 0 { 8 } else { 200 });
            let ea = pair[0].0.run(&mut NoDevices, budget);
            let eb = pair[1].0.run(&mut NoDevices, budget);
            assert_eq!(ea, eb, "seed {seed} slice {slice}: exit");
            assert_eq!(ea, Exit::Budget);
            assert_same(&pair, &format!("seed {seed} slice {slice}"));
        }
        translated += pair[0].0.jit_stats().blocks;
        assert_eq!(pair[1].0.jit_stats().blocks, 0);
    }
    assert!(
        translated > 4000,
        "only {translated} blocks were translated"
    );
}

fn machine(prog: &[u32], jit: bool) -> (Hart, Arc<GuestRam>) {
    let ram = Arc::new(GuestRam::new(BASE, 2 << 20).unwrap());
    let bytes: Vec<u8> = prog.iter().flat_map(|w| w.to_le_bytes()).collect();
    ram.write(BASE, &bytes).unwrap();
    let mut h = Hart::new(0, ram.clone(), BASE, 0);
    h.set_jit(jit);
    (h, ram)
}

#[test]
fn stores_into_translated_code_are_executed() {
    // Ten passes over a loop whose body rewrites its own first instruction,
    // `addi x6, x6, k`, with the next k: x6 = 0 + 1 + ... + 9 only if every
    // rewrite reaches the next pass through the translated block.
    const PATCH: i32 = 24;
    let prog = [
        i(0x13, 0, 5, 0, 10),        // 0: li x5, 10 (passes)
        i(0x13, 0, 7, 0, 1),         // 4: li x7, 1 (next k)
        0x17 | 8 << 7,               // 8: auipc x8, 0
        i(0x13, 0, 8, 8, PATCH - 8), // 12: x8 = &PATCH
        0x0003_0000 | 9 << 7 | 0x37, // 16: lui x9, 0x30
        i(0x13, 0, 9, 9, 0x313),     // 20: x9 = addi x6, x6, 0
        i(0x13, 0, 6, 6, 0),         // 24 PATCH: addi x6, x6, k
        i(0x13, 1, 10, 7, 20),       // 28: slli x10, x7, 20
        r(0x33, 6, 0, 10, 10, 9),    // 32: or x10, x10, x9
        s(2, 8, 10, 0),              // 36: sw x10, 0(x8)
        i(0x13, 0, 7, 7, 1),         // 40: addi x7, x7, 1
        i(0x13, 0, 5, 5, -1),        // 44: addi x5, x5, -1
        b(1, 5, 0, PATCH - 48),      // 48: bnez x5, PATCH
        jal(0, 0),                   // 52: j .
    ];
    let mut results = Vec::new();
    for jit in [true, false] {
        let (mut h, _ram) = machine(&prog, jit);
        for _ in 0..50 {
            h.run(&mut NoDevices, 7);
        }
        assert_eq!(h.pc, BASE + 52);
        results.push((h.x[6], h.x[7], h.instret));
        if jit {
            assert!(h.jit_stats().invalidations >= 5, "{:?}", h.jit_stats());
        }
    }
    assert_eq!(results[0].0, 45);
    assert_eq!(results[0], results[1]);
}

#[test]
fn host_writes_to_translated_code_are_seen_at_the_next_run() {
    let (mut h, ram) = machine(
        &[i(0x13, 0, 5, 5, 1), i(0x13, 0, 5, 5, 1), jal(0, -8)],
        true,
    );
    h.run(&mut NoDevices, 1000);
    let before = h.x[5];
    assert!(before > 600, "{before}");
    let flushes = h.jit_stats().flushes;
    // Rewrite the loop to count by 100 (as a loader or DMA would).
    let bytes: Vec<u8> = [i(0x13, 0, 5, 5, 100), i(0x13, 0, 5, 5, 100), jal(0, -8)]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    ram.write(BASE, &bytes).unwrap();
    h.pc = BASE;
    h.x[5] = 0;
    h.run(&mut NoDevices, 300);
    assert_eq!(h.x[5], 200 * 100);
    assert_eq!(h.jit_stats().flushes, flushes + 1);
}

#[test]
fn one_page_at_two_addresses_gets_two_blocks() {
    // auipc x5, 0 ; jal x0, 0 — at two virtual addresses of one frame.
    let (mut h, ram) = machine(&[0x17 | 5 << 7, jal(0, 0)], true);
    map(&ram, 0x4000_0000, BASE);
    map(&ram, 0x4000_5000, BASE);
    h.satp = (8 << 60) | (TABLES >> 12);
    for va in [0x4000_0000u64, 0x4000_5000, 0x4000_0000] {
        h.pc = va;
        h.run(&mut NoDevices, 100);
        assert_eq!(h.x[5], va, "auipc at {va:#x}");
        assert_eq!(h.pc, va + 4);
    }
}

/// Two harts on one RAM, as vCPU threads share it (run here in turns).
fn two_harts(a_prog: &[u32], b_prog: &[u32]) -> (Hart, Hart, Arc<GuestRam>) {
    let ram = Arc::new(GuestRam::new(BASE, 2 << 20).unwrap());
    let put = |at: u64, p: &[u32]| {
        let bytes: Vec<u8> = p.iter().flat_map(|w| w.to_le_bytes()).collect();
        ram.write(at, &bytes).unwrap();
    };
    put(BASE, a_prog);
    put(BASE + 0x1000, b_prog);
    let mut a = Hart::new(0, ram.clone(), BASE, 0);
    let mut b = Hart::new(1, ram.clone(), BASE + 0x1000, 0);
    a.set_jit(true);
    b.set_jit(true);
    (a, b, ram)
}

#[test]
fn a_store_by_another_hart_into_translated_code_is_executed() {
    // Hart A counts by 1 in a translated loop; hart B's stores rewrite the
    // loop to count by 100; A must run the new code at its next slice.
    let (mut a, mut b, _ram) = two_harts(
        &[i(0x13, 0, 5, 5, 1), i(0x13, 0, 5, 5, 1), jal(0, -8)],
        &[s(2, 8, 9, 0), s(2, 8, 9, 4), jal(0, 0)],
    );
    a.run(&mut NoDevices, 1000);
    assert!(a.x[5] > 600, "{}", a.x[5]);
    assert!(a.jit_stats().blocks > 0, "the loop was translated");
    b.x[8] = BASE;
    b.x[9] = u64::from(i(0x13, 0, 5, 5, 100));
    b.run(&mut NoDevices, 3);
    assert_eq!(b.pc, BASE + 0x1008, "B's stores ran");
    a.pc = BASE;
    a.x[5] = 0;
    a.run(&mut NoDevices, 300);
    assert_eq!(a.x[5], 200 * 100, "A ran the code B wrote");
}

#[test]
fn fence_i_keeps_the_code_no_one_changed() {
    // Linux runs `fence.i` on every hart for each new executable page;
    // code no hart wrote to must stay translated across it.
    let (mut a, mut b, _ram) = two_harts(
        &[i(0x13, 0, 5, 5, 1), i(0x13, 0, 5, 5, 1), jal(0, -8)],
        &[jal(0, 0)],
    );
    b.run(&mut NoDevices, 10);
    // Whole loop turns (3 instructions), so every slice starts at BASE.
    a.run(&mut NoDevices, 999);
    a.run(&mut NoDevices, 300);
    let before = a.jit_stats();
    assert!(before.blocks > 0);
    for _ in 0..5 {
        a.fence_i();
        assert_eq!(a.pc, BASE);
        a.run(&mut NoDevices, 300);
    }
    let after = a.jit_stats();
    assert_eq!(after.blocks, before.blocks, "nothing translated again");
    assert_eq!(after.flushes, before.flushes);
    assert_eq!(after.invalidations, before.invalidations);
}

#[test]
fn fence_i_sees_a_store_through_a_write_translation_cached_before_the_mark() {
    // B caches a write translation for A's page (its first store there),
    // then A translates code on that page, then B stores new code through
    // the cached translation within the same slice, unseen by the code
    // marks. A's `fence.i` must still run the new code.
    const FLAG: u64 = DATA + 0x800;
    let b_prog = [
        s(2, 8, 10, 12),      // 0x00: sw x10, 12(x8): a data word on A's page
        i(0x03, 2, 5, 11, 0), // 0x04: lw x5, 0(x11): wait for the flag
        b(0, 5, 0, -4),       // 0x08: beq x5, x0, -4
        s(2, 8, 9, 0),        // 0x0c: rewrite A's loop to count by 100
        s(2, 8, 9, 4),        // 0x10
        i(0x03, 2, 6, 11, 4), // 0x14: lw x6, 4(x11): wait for "done"
        b(0, 6, 0, -4),       // 0x18: beq x6, x0, -4
        0x1050_0073,          // 0x1c: wfi: B's run ends
        jal(0, 0),
    ];
    let (mut a, mut b, ram) = two_harts(
        &[i(0x13, 0, 5, 5, 1), i(0x13, 0, 5, 5, 1), jal(0, -8)],
        &b_prog,
    );
    b.x[8] = BASE;
    b.x[9] = u64::from(i(0x13, 0, 5, 5, 100));
    b.x[10] = 0x5eed;
    b.x[11] = FLAG;
    let done = |ram: &GuestRam| ram.write(FLAG + 4, &1u32.to_le_bytes()).unwrap();
    let bt = std::thread::spawn(move || {
        // Bounded: the budget ends the slice if "done" never comes.
        let exit = b.run(&mut NoDevices, 20_000_000_000);
        (exit, b)
    });
    // Wait until B made its first store (it caches the write translation).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let word = |ram: &GuestRam, at: u64| {
        let mut w = [0u8; 4];
        ram.read(at, &mut w).unwrap();
        u32::from_le_bytes(w)
    };
    while word(&ram, BASE + 12) != 0x5eed {
        assert!(std::time::Instant::now() < deadline, "B did not start");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    a.run(&mut NoDevices, 1000);
    assert!(a.x[5] > 600, "{}", a.x[5]);
    ram.write(FLAG, &1u32.to_le_bytes()).unwrap();
    while word(&ram, BASE + 4) != i(0x13, 0, 5, 5, 100) {
        assert!(std::time::Instant::now() < deadline, "B did not store");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    a.pc = BASE;
    a.x[5] = 0;
    a.run(&mut NoDevices, 300);
    let unseen = a.x[5] == 200;
    a.fence_i();
    a.pc = BASE;
    a.x[5] = 0;
    a.run(&mut NoDevices, 300);
    let after_fence = a.x[5];
    done(&ram);
    let (exit, _b) = bt.join().unwrap();
    assert_eq!(exit, Exit::Wfi, "B ended in wfi, not on its budget");
    assert!(
        unseen,
        "B's stores were unseen before fence.i (the case under test)"
    );
    assert_eq!(
        after_fence,
        200 * 100,
        "after fence.i A ran the code B wrote"
    );
}

#[test]
fn a_store_by_another_hart_breaks_a_reservation() {
    let lr_w = |rd: u32, rs1: u32| (0b00010 << 27) | (rs1 << 15) | (2 << 12) | (rd << 7) | 0x2f;
    let sc_w = |rd: u32, rs1: u32, rs2: u32| {
        (0b00011 << 27) | (rs2 << 20) | (rs1 << 15) | (2 << 12) | (rd << 7) | 0x2f
    };
    let a_prog = [lr_w(6, 8), sc_w(7, 8, 9), jal(0, 0)];
    // B stores to the same word (a plain store: another hart's write to
    // the reservation set) or, in the control run, to the next one.
    for (offset, sc_fails) in [(0i32, true), (8, false)] {
        let (mut a, mut b, ram) = two_harts(&a_prog, &[s(2, 8, 10, offset), jal(0, 0)]);
        for h in [&mut a, &mut b] {
            h.x[8] = DATA;
            h.x[9] = 0x1234;
            h.x[10] = 0x77;
        }
        a.run(&mut NoDevices, 1); // lr.w: reserved
        b.run(&mut NoDevices, 1); // B's store
        a.run(&mut NoDevices, 1); // sc.w
        let mut word = [0u8; 4];
        ram.read(DATA, &mut word).unwrap();
        let word = u32::from_le_bytes(word);
        if sc_fails {
            assert_eq!(a.x[7], 1, "sc.w must fail after B's store");
            assert_eq!(word, 0x77, "B's value stays");
        } else {
            assert_eq!(a.x[7], 0, "sc.w succeeds when B wrote elsewhere");
            assert_eq!(word, 0x1234);
        }
    }
}
