//! The x86-64 encodings the translator needs, and nothing else: moves,
//! integer ALU operations, shifts, multiplies, compares, conditional moves
//! and branches on 64- and 32-bit registers and `[base + index + disp]`
//! memory operands. Every encoding follows the Intel SDM's REX/ModRM/SIB
//! rules; `tests` checks them against bytes an assembler produced.

/// A general-purpose register (the encoding's register number).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum R {
    Rax = 0,
    Rcx = 1,
    Rdx = 2,
    Rsi = 6,
    Rdi = 7,
    R10 = 10,
}

/// A memory operand `[base + index + disp]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mem {
    pub base: R,
    pub index: Option<R>,
    pub disp: i32,
}

/// `[base + disp]`.
pub(crate) fn mem(base: R, disp: i32) -> Mem {
    Mem {
        base,
        index: None,
        disp,
    }
}

/// `[base + index + disp]`.
pub(crate) fn mem_ix(base: R, index: R, disp: i32) -> Mem {
    Mem {
        base,
        index: Some(index),
        disp,
    }
}

/// Two-operand integer operations sharing the classic encoding pattern.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Alu {
    Add = 0,
    Or = 1,
    And = 4,
    Sub = 5,
    Xor = 6,
    Cmp = 7,
}

/// Shifts (the ModRM `/n` of `C1`/`D3`).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Shift {
    Shl = 4,
    Shr = 5,
    Sar = 7,
}

/// Condition codes (the low nibble of `Jcc`/`SETcc`/`CMOVcc`).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Cc {
    B = 0x2,
    Ae = 0x3,
    E = 0x4,
    Ne = 0x5,
    A = 0x7,
    L = 0xc,
    Ge = 0xd,
}

/// A place in the code whose rel32 is patched once its target is known:
/// the offset just past the 4 bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fixup(pub usize);

/// A growing buffer of machine code.
#[derive(Default)]
pub(crate) struct Asm {
    pub buf: Vec<u8>,
}

impl Asm {
    fn b(&mut self, byte: u8) {
        self.buf.push(byte);
    }

    fn rex(&mut self, w: bool, reg: u8, index: u8, base: u8) {
        let rex =
            0x40 | (w as u8) << 3 | (reg >> 3 & 1) << 2 | (index >> 3 & 1) << 1 | (base >> 3 & 1);
        if rex != 0x40 {
            self.b(rex);
        }
    }

    /// ModRM (and SIB, displacement) for `reg` with a memory operand. Always
    /// uses a displacement (mod 01 or 10), so any base but RSP/R12 works.
    fn modrm_mem(&mut self, reg: u8, m: Mem) {
        let disp8 = (-128..=127).contains(&m.disp);
        let md = if disp8 { 0x40 } else { 0x80 };
        match m.index {
            None => self.b(md | (reg & 7) << 3 | (m.base as u8 & 7)),
            Some(ix) => {
                self.b(md | (reg & 7) << 3 | 4);
                self.b((ix as u8 & 7) << 3 | (m.base as u8 & 7));
            }
        }
        if disp8 {
            self.b(m.disp as i8 as u8);
        } else {
            self.buf.extend_from_slice(&m.disp.to_le_bytes());
        }
    }

    /// `[66] [REX] opcode modrm(reg, m)`.
    fn op_mem(&mut self, w: bool, p66: bool, opcode: &[u8], reg: u8, m: Mem) {
        if p66 {
            self.b(0x66);
        }
        let ix = m.index.map_or(0, |r| r as u8);
        self.rex(w, reg, ix, m.base as u8);
        self.buf.extend_from_slice(opcode);
        self.modrm_mem(reg, m);
    }

    /// `[REX] opcode modrm(reg, rm)` with a register operand.
    fn op_reg(&mut self, w: bool, opcode: &[u8], reg: u8, rm: u8) {
        self.rex(w, reg, 0, rm);
        self.buf.extend_from_slice(opcode);
        self.b(0xc0 | (reg & 7) << 3 | (rm & 7));
    }

    /// `mov dst, qword [m]`.
    pub fn load64(&mut self, dst: R, m: Mem) {
        self.op_mem(true, false, &[0x8b], dst as u8, m);
    }

    /// `mov qword [m], src`.
    pub fn store64(&mut self, m: Mem, src: R) {
        self.op_mem(true, false, &[0x89], src as u8, m);
    }

    /// A load of `size` bytes into `dst`, sign- or zero-extended to 64 bits.
    pub fn load_ext(&mut self, dst: R, m: Mem, size: u8, signed: bool) {
        let d = dst as u8;
        match (size, signed) {
            (1, false) => self.op_mem(false, false, &[0x0f, 0xb6], d, m),
            (2, false) => self.op_mem(false, false, &[0x0f, 0xb7], d, m),
            (4, false) => self.op_mem(false, false, &[0x8b], d, m),
            (1, true) => self.op_mem(true, false, &[0x0f, 0xbe], d, m),
            (2, true) => self.op_mem(true, false, &[0x0f, 0xbf], d, m),
            (4, true) => self.op_mem(true, false, &[0x63], d, m),
            _ => self.load64(dst, m),
        }
    }

    /// A store of the low `size` bytes of `src` (RAX..RDX for byte stores).
    pub fn store_sized(&mut self, m: Mem, src: R, size: u8) {
        let s = src as u8;
        match size {
            1 => self.op_mem(false, false, &[0x88], s, m),
            2 => self.op_mem(false, true, &[0x89], s, m),
            4 => self.op_mem(false, false, &[0x89], s, m),
            _ => self.store64(m, src),
        }
    }

    /// `op dst, [m]` (64-bit when `w`, else 32-bit).
    pub fn alu_mem(&mut self, op: Alu, w: bool, dst: R, m: Mem) {
        self.op_mem(w, false, &[(op as u8) << 3 | 3], dst as u8, m);
    }

    /// `op dst, src` (64-bit when `w`, else 32-bit).
    pub fn alu_rr(&mut self, op: Alu, w: bool, dst: R, src: R) {
        self.op_reg(w, &[(op as u8) << 3 | 3], dst as u8, src as u8);
    }

    /// `op dst, imm` with a sign-extended 32-bit immediate.
    pub fn alu_ri(&mut self, op: Alu, w: bool, dst: R, imm: i32) {
        if (-128..=127).contains(&imm) {
            self.op_reg(w, &[0x83], op as u8, dst as u8);
            self.b(imm as i8 as u8);
        } else {
            self.op_reg(w, &[0x81], op as u8, dst as u8);
            self.buf.extend_from_slice(&imm.to_le_bytes());
        }
    }

    /// `op dst, imm32` in the long form; returns the offset of the
    /// immediate so it can be patched.
    pub fn alu_ri32(&mut self, op: Alu, dst: R, imm: i32) -> usize {
        self.op_reg(true, &[0x81], op as u8, dst as u8);
        let at = self.buf.len();
        self.buf.extend_from_slice(&imm.to_le_bytes());
        at
    }

    /// Rewrites a 32-bit immediate emitted by [`alu_ri32`](Self::alu_ri32).
    pub fn patch_imm32(&mut self, at: usize, imm: i32) {
        self.buf[at..at + 4].copy_from_slice(&imm.to_le_bytes());
    }

    /// `lea dst, [m]`.
    pub fn lea(&mut self, dst: R, m: Mem) {
        self.op_mem(true, false, &[0x8d], dst as u8, m);
    }

    /// `jmp src` (64-bit register).
    pub fn jmp_reg(&mut self, src: R) {
        self.op_reg(false, &[0xff], 4, src as u8);
    }

    /// `mov dst, imm` in the shortest form that produces the 64-bit value.
    pub fn mov_ri(&mut self, dst: R, imm: u64) {
        let d = dst as u8;
        if imm <= u32::MAX as u64 {
            self.rex(false, 0, 0, d);
            self.b(0xb8 | (d & 7));
            self.buf.extend_from_slice(&(imm as u32).to_le_bytes());
        } else if imm as i64 == imm as i32 as i64 {
            self.op_reg(true, &[0xc7], 0, d);
            self.buf.extend_from_slice(&(imm as i32).to_le_bytes());
        } else {
            self.rex(true, 0, 0, d);
            self.b(0xb8 | (d & 7));
            self.buf.extend_from_slice(&imm.to_le_bytes());
        }
    }

    /// `mov dst, src` (64-bit).
    pub fn mov_rr(&mut self, dst: R, src: R) {
        self.op_reg(true, &[0x8b], dst as u8, src as u8);
    }

    /// `shift dst, imm` (64-bit when `w`).
    pub fn shift_ri(&mut self, op: Shift, w: bool, dst: R, imm: u8) {
        self.op_reg(w, &[0xc1], op as u8, dst as u8);
        self.b(imm);
    }

    /// `shift dst, cl` (64-bit when `w`; the count is masked like RISC-V's).
    pub fn shift_cl(&mut self, op: Shift, w: bool, dst: R) {
        self.op_reg(w, &[0xd3], op as u8, dst as u8);
    }

    /// `movsxd dst, src32`: sign-extends a 32-bit result to 64 bits.
    pub fn movsxd(&mut self, dst: R, src: R) {
        self.op_reg(true, &[0x63], dst as u8, src as u8);
    }

    /// `imul dst, [m]` (64-bit when `w`).
    pub fn imul_mem(&mut self, w: bool, dst: R, m: Mem) {
        self.op_mem(w, false, &[0x0f, 0xaf], dst as u8, m);
    }

    /// `mul qword [m]` (unsigned) or `imul qword [m]` (signed): RDX:RAX = RAX * [m].
    pub fn mul_wide_mem(&mut self, signed: bool, m: Mem) {
        self.op_mem(true, false, &[0xf7], if signed { 5 } else { 4 }, m);
    }

    /// `setcc dst8` (RAX..RDX only).
    pub fn setcc(&mut self, cc: Cc, dst: R) {
        self.buf.extend_from_slice(&[0x0f, 0x90 | cc as u8]);
        self.b(0xc0 | (dst as u8 & 7));
    }

    /// `jcc rel32` to a target patched later.
    pub fn jcc(&mut self, cc: Cc) -> Fixup {
        self.buf
            .extend_from_slice(&[0x0f, 0x80 | cc as u8, 0, 0, 0, 0]);
        Fixup(self.buf.len())
    }

    /// `jmp rel32` to a target patched later.
    pub fn jmp(&mut self) -> Fixup {
        self.buf.extend_from_slice(&[0xe9, 0, 0, 0, 0]);
        Fixup(self.buf.len())
    }

    /// Points a `jcc`/`jmp` at the current position.
    pub fn bind(&mut self, f: Fixup) {
        let here = self.buf.len();
        self.bind_to(f, here);
    }

    /// Points a `jcc`/`jmp` at `target` (an offset in this buffer).
    pub fn bind_to(&mut self, f: Fixup, target: usize) {
        let rel = (target as i64 - f.0 as i64) as i32;
        self.buf[f.0 - 4..f.0].copy_from_slice(&rel.to_le_bytes());
    }

    /// `ret`.
    pub fn ret(&mut self) {
        self.b(0xc3);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(f: impl FnOnce(&mut Asm)) -> Vec<u8> {
        let mut a = Asm::default();
        f(&mut a);
        a.buf
    }

    // Expected bytes are from GNU as (x86-64, Intel syntax).
    #[test]
    fn encodings_match_the_assembler() {
        // mov rax, [rdi+0x10]
        assert_eq!(
            enc(|a| a.load64(R::Rax, mem(R::Rdi, 0x10))),
            [0x48, 0x8b, 0x47, 0x10]
        );
        // mov [rdi+0xf8], rcx
        assert_eq!(
            enc(|a| a.store64(mem(R::Rdi, 0xf8), R::Rcx)),
            [0x48, 0x89, 0x8f, 0xf8, 0, 0, 0]
        );
        // cmp rcx, [rsi+rdx*1+0x0]
        assert_eq!(
            enc(|a| a.alu_mem(Alu::Cmp, true, R::Rcx, mem_ix(R::Rsi, R::Rdx, 0))),
            [0x48, 0x3b, 0x4c, 0x16, 0x00]
        );
        // add rax, [rsi+rdx*1+0x18]
        assert_eq!(
            enc(|a| a.alu_mem(Alu::Add, true, R::Rax, mem_ix(R::Rsi, R::Rdx, 0x18))),
            [0x48, 0x03, 0x44, 0x16, 0x18]
        );
        // movsx rax, byte [rax+0x0]
        assert_eq!(
            enc(|a| a.load_ext(R::Rax, mem(R::Rax, 0), 1, true)),
            [0x48, 0x0f, 0xbe, 0x40, 0x00]
        );
        // movzx eax, word [rax+0x0]
        assert_eq!(
            enc(|a| a.load_ext(R::Rax, mem(R::Rax, 0), 2, false)),
            [0x0f, 0xb7, 0x40, 0x00]
        );
        // movsxd rax, dword [rax+0x0]
        assert_eq!(
            enc(|a| a.load_ext(R::Rax, mem(R::Rax, 0), 4, true)),
            [0x48, 0x63, 0x40, 0x00]
        );
        // mov word [rax+0x0], cx
        assert_eq!(
            enc(|a| a.store_sized(mem(R::Rax, 0), R::Rcx, 2)),
            [0x66, 0x89, 0x48, 0x00]
        );
        // mov byte [rax+0x0], cl
        assert_eq!(
            enc(|a| a.store_sized(mem(R::Rax, 0), R::Rcx, 1)),
            [0x88, 0x48, 0x00]
        );
        // add rax, 0x7f / add rax, 0x80 / and ecx, 0xfff
        assert_eq!(
            enc(|a| a.alu_ri(Alu::Add, true, R::Rax, 0x7f)),
            [0x48, 0x83, 0xc0, 0x7f]
        );
        assert_eq!(
            enc(|a| a.alu_ri(Alu::Add, true, R::Rax, 0x80)),
            [0x48, 0x81, 0xc0, 0x80, 0, 0, 0]
        );
        assert_eq!(
            enc(|a| a.alu_ri(Alu::And, false, R::Rcx, 0xfff)),
            [0x81, 0xe1, 0xff, 0x0f, 0, 0]
        );
        // mov eax, 0x12345678 / mov rax, -2 / movabs rax, 0x123456789
        assert_eq!(
            enc(|a| a.mov_ri(R::Rax, 0x1234_5678)),
            [0xb8, 0x78, 0x56, 0x34, 0x12]
        );
        assert_eq!(
            enc(|a| a.mov_ri(R::Rax, (-2i64) as u64)),
            [0x48, 0xc7, 0xc0, 0xfe, 0xff, 0xff, 0xff]
        );
        assert_eq!(
            enc(|a| a.mov_ri(R::Rcx, 0x1_2345_6789)),
            [0x48, 0xb9, 0x89, 0x67, 0x45, 0x23, 0x01, 0, 0, 0]
        );
        // mov r10d, 1 / shr rcx, 12 / sar eax, cl / movsxd rax, eax
        assert_eq!(enc(|a| a.mov_ri(R::R10, 1)), [0x41, 0xba, 1, 0, 0, 0]);
        assert_eq!(
            enc(|a| a.shift_ri(Shift::Shr, true, R::Rcx, 12)),
            [0x48, 0xc1, 0xe9, 0x0c]
        );
        assert_eq!(enc(|a| a.shift_cl(Shift::Sar, false, R::Rax)), [0xd3, 0xf8]);
        assert_eq!(enc(|a| a.movsxd(R::Rax, R::Rax)), [0x48, 0x63, 0xc0]);
        // imul rax, [rdi+0x8] / imul eax, [rdi+0x8] / mul qword [rdi+0x8]
        assert_eq!(
            enc(|a| a.imul_mem(true, R::Rax, mem(R::Rdi, 8))),
            [0x48, 0x0f, 0xaf, 0x47, 0x08]
        );
        assert_eq!(
            enc(|a| a.imul_mem(false, R::Rax, mem(R::Rdi, 8))),
            [0x0f, 0xaf, 0x47, 0x08]
        );
        assert_eq!(
            enc(|a| a.mul_wide_mem(false, mem(R::Rdi, 8))),
            [0x48, 0xf7, 0x67, 0x08]
        );
        assert_eq!(
            enc(|a| a.mul_wide_mem(true, mem(R::Rdi, 8))),
            [0x48, 0xf7, 0x6f, 0x08]
        );
        // setl cl / xor ecx, ecx / cmp rax, r10 / mov r10, rdx
        assert_eq!(enc(|a| a.setcc(Cc::L, R::Rcx)), [0x0f, 0x9c, 0xc1]);
        assert_eq!(
            enc(|a| a.alu_rr(Alu::Xor, false, R::Rcx, R::Rcx)),
            [0x33, 0xc9]
        );
        assert_eq!(
            enc(|a| a.alu_rr(Alu::Cmp, true, R::Rax, R::R10)),
            [0x49, 0x3b, 0xc2]
        );
        assert_eq!(enc(|a| a.mov_rr(R::R10, R::Rdx)), [0x4c, 0x8b, 0xd2]);
        // cmp r10, 0x40 (long form) / lea rdx, [r10+0x7] / jmp rcx
        assert_eq!(
            enc(|a| {
                a.alu_ri32(Alu::Cmp, R::R10, 0x40);
            }),
            [0x49, 0x81, 0xfa, 0x40, 0, 0, 0]
        );
        assert_eq!(
            enc(|a| a.lea(R::Rdx, mem(R::R10, 7))),
            [0x49, 0x8d, 0x52, 0x07]
        );
        assert_eq!(enc(|a| a.jmp_reg(R::Rcx)), [0xff, 0xe1]);
        // mov rax, [rdi+0x100] (disp32)
        assert_eq!(
            enc(|a| a.load64(R::Rax, mem(R::Rdi, 0x100))),
            [0x48, 0x8b, 0x87, 0x00, 0x01, 0, 0]
        );
    }

    #[test]
    fn branches_are_patched_relative_to_their_end() {
        let mut a = Asm::default();
        let f = a.jcc(Cc::Ne);
        a.ret();
        a.bind(f);
        assert_eq!(a.buf, [0x0f, 0x85, 1, 0, 0, 0, 0xc3]);
        let mut a = Asm::default();
        a.ret();
        let f = a.jmp();
        a.bind_to(f, 0);
        assert_eq!(a.buf, [0xc3, 0xe9, 0xfa, 0xff, 0xff, 0xff]);
    }
}
