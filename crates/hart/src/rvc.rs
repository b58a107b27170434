//! The C extension: every 16-bit instruction is expanded once into the
//! 32-bit instruction it stands for, through a 64 Ki-entry table built at
//! start-up, so the executor only knows 32-bit encodings and an expansion
//! costs one load.

use std::sync::OnceLock;

/// The 32-bit equivalent of compressed instruction `c`, or 0 (an illegal
/// encoding) when `c` is reserved or illegal.
#[inline]
pub fn expand(c: u16) -> u32 {
    static TABLE: OnceLock<Box<[u32]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|c| expand_slow(c).unwrap_or(0))
            .collect()
    })[c as usize]
}

fn r_type(f7: u32, rs2: u32, rs1: u32, f3: u32, rd: u32, op: u32) -> u32 {
    (f7 << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op
}
fn i_type(imm: i32, rs1: u32, f3: u32, rd: u32, op: u32) -> u32 {
    (((imm as u32) & 0xfff) << 20) | (rs1 << 15) | (f3 << 12) | (rd << 7) | op
}
fn s_type(imm: i32, rs2: u32, rs1: u32, f3: u32, op: u32) -> u32 {
    let imm = imm as u32;
    (((imm >> 5) & 0x7f) << 25) | (rs2 << 20) | (rs1 << 15) | (f3 << 12) | ((imm & 0x1f) << 7) | op
}
fn b_type(imm: i32, rs2: u32, rs1: u32, f3: u32) -> u32 {
    let i = imm as u32;
    (((i >> 12) & 1) << 31)
        | (((i >> 5) & 0x3f) << 25)
        | (rs2 << 20)
        | (rs1 << 15)
        | (f3 << 12)
        | (((i >> 1) & 0xf) << 8)
        | (((i >> 11) & 1) << 7)
        | 0x63
}
fn j_type(imm: i32, rd: u32) -> u32 {
    let i = imm as u32;
    (((i >> 20) & 1) << 31)
        | (((i >> 1) & 0x3ff) << 21)
        | (((i >> 11) & 1) << 20)
        | (((i >> 12) & 0xff) << 12)
        | (rd << 7)
        | 0x6f
}

/// Sign-extends the low `bits` bits of `v`.
fn sext(v: u32, bits: u32) -> i32 {
    ((v << (32 - bits)) as i32) >> (32 - bits)
}

fn bit(c: u32, n: u32) -> u32 {
    (c >> n) & 1
}

const OP_IMM: u32 = 0x13;
const OP_IMM32: u32 = 0x1b;
const OP: u32 = 0x33;
const OP32: u32 = 0x3b;
const LOAD: u32 = 0x03;
const STORE: u32 = 0x23;
const LOAD_FP: u32 = 0x07;
const STORE_FP: u32 = 0x27;

/// Expands one compressed instruction (RV64C with the D loads/stores).
pub fn expand_slow(c: u16) -> Option<u32> {
    let c = c as u32;
    let rd = (c >> 7) & 31;
    let rs2 = (c >> 2) & 31;
    let rdp = 8 + ((c >> 2) & 7); // rd' / rs2' in bits 4:2
    let rs1p = 8 + ((c >> 7) & 7); // rs1' / rd' in bits 9:7
    let f3 = c >> 13;
    let imm6 = sext((bit(c, 12) << 5) | ((c >> 2) & 0x1f), 6);
    let uimm_ld = ((c >> 7) & 0x38) | ((c << 1) & 0xc0); // C.LD/C.SD/C.FLD/C.FSD
    let uimm_lw = ((c >> 7) & 0x38) | ((c >> 4) & 0x4) | ((c << 1) & 0x40); // C.LW/C.SW
    match (c & 3, f3) {
        (0, 0) => {
            let imm = ((c >> 7) & 0x30) | ((c >> 1) & 0x3c0) | ((c >> 4) & 0x4) | ((c >> 2) & 0x8);
            (imm != 0).then(|| i_type(imm as i32, 2, 0, rdp, OP_IMM))
        }
        (0, 1) => Some(i_type(uimm_ld as i32, rs1p, 3, rdp, LOAD_FP)),
        (0, 2) => Some(i_type(uimm_lw as i32, rs1p, 2, rdp, LOAD)),
        (0, 3) => Some(i_type(uimm_ld as i32, rs1p, 3, rdp, LOAD)),
        (0, 5) => Some(s_type(uimm_ld as i32, rdp, rs1p, 3, STORE_FP)),
        (0, 6) => Some(s_type(uimm_lw as i32, rdp, rs1p, 2, STORE)),
        (0, 7) => Some(s_type(uimm_ld as i32, rdp, rs1p, 3, STORE)),
        (1, 0) => Some(i_type(imm6, rd, 0, rd, OP_IMM)), // C.NOP / C.ADDI (hints included)
        (1, 1) => (rd != 0).then(|| i_type(imm6, rd, 0, rd, OP_IMM32)),
        (1, 2) => Some(i_type(imm6, 0, 0, rd, OP_IMM)),
        (1, 3) if rd == 2 => {
            let imm = (bit(c, 12) << 9)
                | (bit(c, 6) << 4)
                | (bit(c, 5) << 6)
                | (((c >> 3) & 3) << 7)
                | (bit(c, 2) << 5);
            (imm != 0).then(|| i_type(sext(imm, 10), 2, 0, 2, OP_IMM))
        }
        (1, 3) => (imm6 != 0).then_some(((imm6 as u32) << 12) | (rd << 7) | 0x37),
        (1, 4) => {
            let shamt = (bit(c, 12) << 5) | ((c >> 2) & 0x1f);
            match (c >> 10) & 3 {
                0 => Some(i_type(shamt as i32, rs1p, 5, rs1p, OP_IMM)),
                1 => Some(i_type((shamt | 0x400) as i32, rs1p, 5, rs1p, OP_IMM)),
                2 => Some(i_type(imm6, rs1p, 7, rs1p, OP_IMM)),
                _ => match (bit(c, 12), (c >> 5) & 3) {
                    (0, 0) => Some(r_type(0x20, rdp, rs1p, 0, rs1p, OP)),
                    (0, 1) => Some(r_type(0, rdp, rs1p, 4, rs1p, OP)),
                    (0, 2) => Some(r_type(0, rdp, rs1p, 6, rs1p, OP)),
                    (0, 3) => Some(r_type(0, rdp, rs1p, 7, rs1p, OP)),
                    (1, 0) => Some(r_type(0x20, rdp, rs1p, 0, rs1p, OP32)),
                    (1, 1) => Some(r_type(0, rdp, rs1p, 0, rs1p, OP32)),
                    _ => None,
                },
            }
        }
        (1, 5) => {
            let imm = (bit(c, 12) << 11)
                | (bit(c, 11) << 4)
                | (((c >> 9) & 3) << 8)
                | (bit(c, 8) << 10)
                | (bit(c, 7) << 6)
                | (bit(c, 6) << 7)
                | (((c >> 3) & 7) << 1)
                | (bit(c, 2) << 5);
            Some(j_type(sext(imm, 12), 0))
        }
        (1, 6) | (1, 7) => {
            let imm = (bit(c, 12) << 8)
                | (((c >> 10) & 3) << 3)
                | (((c >> 5) & 3) << 6)
                | (((c >> 3) & 3) << 1)
                | (bit(c, 2) << 5);
            Some(b_type(sext(imm, 9), 0, rs1p, f3 - 6))
        }
        (2, 0) => {
            let shamt = (bit(c, 12) << 5) | ((c >> 2) & 0x1f);
            Some(i_type(shamt as i32, rd, 1, rd, OP_IMM))
        }
        (2, 1) => {
            let imm = (bit(c, 12) << 5) | ((c >> 2) & 0x18) | ((c << 4) & 0x1c0);
            Some(i_type(imm as i32, 2, 3, rd, LOAD_FP))
        }
        (2, 2) => {
            let imm = (bit(c, 12) << 5) | ((c >> 2) & 0x1c) | ((c << 4) & 0xc0);
            (rd != 0).then(|| i_type(imm as i32, 2, 2, rd, LOAD))
        }
        (2, 3) => {
            let imm = (bit(c, 12) << 5) | ((c >> 2) & 0x18) | ((c << 4) & 0x1c0);
            (rd != 0).then(|| i_type(imm as i32, 2, 3, rd, LOAD))
        }
        (2, 4) => match (bit(c, 12), rd, rs2) {
            (0, 0, 0) => None,
            (0, _, 0) => Some(i_type(0, rd, 0, 0, 0x67)),
            (0, _, _) => Some(r_type(0, rs2, 0, 0, rd, OP)),
            (1, 0, 0) => Some(0x0010_0073),
            (1, _, 0) => Some(i_type(0, rd, 0, 1, 0x67)),
            _ => Some(r_type(0, rs2, rd, 0, rd, OP)),
        },
        (2, 5) => {
            let imm = ((c >> 7) & 0x38) | ((c >> 1) & 0x1c0);
            Some(s_type(imm as i32, rs2, 2, 3, STORE_FP))
        }
        (2, 6) => {
            let imm = ((c >> 7) & 0x3c) | ((c >> 1) & 0xc0);
            Some(s_type(imm as i32, rs2, 2, 2, STORE))
        }
        (2, 7) => {
            let imm = ((c >> 7) & 0x38) | ((c >> 1) & 0x1c0);
            Some(s_type(imm as i32, rs2, 2, 3, STORE))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected encodings are what `riscv64-linux-gnu-as` assembles the
    // uncompressed form to (checked with objdump).
    #[test]
    fn expands_common_forms() {
        assert_eq!(expand(0x0000), 0, "all-zero halfword is illegal");
        assert_eq!(expand(0x1141), 0xff010113); // c.addi sp,sp,-16 -> addi sp,sp,-16
        assert_eq!(expand(0xe406), 0x00113423); // c.sdsp ra,8(sp) -> sd ra,8(sp)
        assert_eq!(expand(0x60a2), 0x00813083); // c.ldsp ra,8(sp) -> ld ra,8(sp)
        assert_eq!(expand(0x8082), 0x00008067); // c.jr ra -> ret
        assert_eq!(expand(0x852e), 0x00b00533); // c.mv a0,a1 -> add a0,x0,a1
        assert_eq!(expand(0x4501), 0x00000513); // c.li a0,0
        assert_eq!(expand(0x9002), 0x00100073); // c.ebreak
        assert_eq!(expand(0x0001), 0x00000013); // c.nop
        assert_eq!(expand(0x6105), 0x02010113); // c.addi16sp sp,32
        assert_eq!(expand(0x0808), 0x01010513); // c.addi4spn a0,sp,16
        assert_eq!(expand(0x6789), 0x000027b7); // c.lui a5,0x2
        assert_eq!(expand(0x8d1d), 0x40f50533); // c.sub a0,a0,a5
        assert_eq!(expand(0x9d3d), 0x00f5053b); // c.addw a0,a0,a5
        assert_eq!(expand(0x357d), 0xfff5051b); // c.addiw a0,a0,-1
    }

    #[test]
    fn reserved_forms_are_illegal() {
        assert_eq!(expand(0x6001), 0, "c.lui x0/c.addi16sp with zero immediate");
        assert_eq!(expand(0x8002), 0, "c.jr x0");
        assert_eq!(expand(0x2001), 0, "c.addiw x0");
        assert_eq!(expand(0x4002), 0, "c.lwsp x0");
    }
}
