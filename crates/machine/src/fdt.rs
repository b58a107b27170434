//! The device tree handed to the kernel: the whole board in one place.

use crate::layout::*;
use vm_fdt::{FdtWriter, FdtWriterResult};

/// What the device tree describes beyond the fixed layout.
pub struct FdtConfig<'a> {
    pub ram_base: u64,
    pub ram_size: u64,
    pub harts: u32,
    pub bootargs: &'a str,
    pub initrd: Option<(u64, u64)>,
    /// Number of virtio-mmio slots populated (slot 0 first).
    pub virtio_slots: u32,
}

const PLIC_PHANDLE: u32 = 1;
const FINISHER_PHANDLE: u32 = 2;

/// The ISA every hart implements, in the old single-string form (Linux 6.1
/// and older read this) ...
pub const ISA_STRING: &str = "rv64imafdc_zicsr_zifencei_zicntr_sstc";
/// ... and as the base plus the list of extensions newer kernels and
/// OpenSBI prefer. Sstc: `stimecmp`, with `menvcfg.STCE` set by the
/// built-in SBI or by the firmware.
pub const ISA_EXTENSIONS: &[&str] = &[
    "i", "m", "a", "f", "d", "c", "zicsr", "zifencei", "zicntr", "sstc",
];
fn cpu_intc_phandle(hart: u32) -> u32 {
    16 + hart
}

/// Builds the flattened device tree blob.
pub fn build(c: &FdtConfig) -> FdtWriterResult<Vec<u8>> {
    let mut f = FdtWriter::new()?;
    let root = f.begin_node("")?;
    f.property_u32("#address-cells", 2)?;
    f.property_u32("#size-cells", 2)?;
    f.property_string("compatible", "riscv-virtio")?;
    f.property_string("model", "godwit,virt")?;

    let chosen = f.begin_node("chosen")?;
    f.property_string("bootargs", c.bootargs)?;
    f.property_string("stdout-path", &format!("/soc/serial@{UART_BASE:x}"))?;
    if let Some((start, end)) = c.initrd {
        f.property_u64("linux,initrd-start", start)?;
        f.property_u64("linux,initrd-end", end)?;
    }
    f.end_node(chosen)?;

    let mem = f.begin_node(&format!("memory@{:x}", c.ram_base))?;
    f.property_string("device_type", "memory")?;
    f.property_array_u64("reg", &[c.ram_base, c.ram_size])?;
    f.end_node(mem)?;

    let cpus = f.begin_node("cpus")?;
    f.property_u32("#address-cells", 1)?;
    f.property_u32("#size-cells", 0)?;
    f.property_u32("timebase-frequency", godwit_hart::TIMEBASE_HZ as u32)?;
    for h in 0..c.harts {
        let cpu = f.begin_node(&format!("cpu@{h}"))?;
        f.property_string("device_type", "cpu")?;
        f.property_u32("reg", h)?;
        f.property_string("status", "okay")?;
        f.property_string("compatible", "riscv")?;
        f.property_string("riscv,isa", ISA_STRING)?;
        f.property_string("riscv,isa-base", "rv64i")?;
        f.property_string_list(
            "riscv,isa-extensions",
            ISA_EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        )?;
        f.property_string("mmu-type", "riscv,sv39")?;
        let intc = f.begin_node("interrupt-controller")?;
        f.property_u32("#interrupt-cells", 1)?;
        f.property_null("interrupt-controller")?;
        f.property_string("compatible", "riscv,cpu-intc")?;
        f.property_u32("phandle", cpu_intc_phandle(h))?;
        f.end_node(intc)?;
        f.end_node(cpu)?;
    }
    f.end_node(cpus)?;

    let soc = f.begin_node("soc")?;
    f.property_u32("#address-cells", 2)?;
    f.property_u32("#size-cells", 2)?;
    f.property_string("compatible", "simple-bus")?;
    f.property_null("ranges")?;

    let clint = f.begin_node(&format!("clint@{CLINT_BASE:x}"))?;
    f.property_string_list(
        "compatible",
        vec!["sifive,clint0".into(), "riscv,clint0".into()],
    )?;
    f.property_array_u64("reg", &[CLINT_BASE, CLINT_SIZE])?;
    let clint_irqs: Vec<u32> = (0..c.harts)
        .flat_map(|h| [cpu_intc_phandle(h), 3, cpu_intc_phandle(h), 7])
        .collect();
    f.property_array_u32("interrupts-extended", &clint_irqs)?;
    f.end_node(clint)?;

    let plic = f.begin_node(&format!("plic@{PLIC_BASE:x}"))?;
    f.property_string_list(
        "compatible",
        vec!["sifive,plic-1.0.0".into(), "riscv,plic0".into()],
    )?;
    f.property_array_u64("reg", &[PLIC_BASE, PLIC_SIZE])?;
    f.property_u32("#address-cells", 0)?;
    f.property_u32("#interrupt-cells", 1)?;
    f.property_null("interrupt-controller")?;
    f.property_u32("riscv,ndev", PLIC_SOURCES - 1)?;
    // Context 2h is hart h's M-mode (MEIP = 11), 2h+1 its S-mode (SEIP = 9).
    let plic_irqs: Vec<u32> = (0..c.harts)
        .flat_map(|h| [cpu_intc_phandle(h), 11, cpu_intc_phandle(h), 9])
        .collect();
    f.property_array_u32("interrupts-extended", &plic_irqs)?;
    f.property_u32("phandle", PLIC_PHANDLE)?;
    f.end_node(plic)?;

    // The power-off / reset register, as QEMU's virt: firmware and Linux
    // find it through the syscon nodes.
    let test = f.begin_node(&format!("test@{FINISHER_BASE:x}"))?;
    f.property_string_list(
        "compatible",
        vec![
            "sifive,test1".into(),
            "sifive,test0".into(),
            "syscon".into(),
        ],
    )?;
    f.property_array_u64("reg", &[FINISHER_BASE, FINISHER_SIZE])?;
    f.property_u32("phandle", FINISHER_PHANDLE)?;
    f.end_node(test)?;
    for (name, compatible, value) in [
        ("poweroff", "syscon-poweroff", 0x5555u32),
        ("reboot", "syscon-reboot", 0x7777),
    ] {
        let n = f.begin_node(name)?;
        f.property_string("compatible", compatible)?;
        f.property_u32("regmap", FINISHER_PHANDLE)?;
        f.property_u32("offset", 0)?;
        f.property_u32("value", value)?;
        f.end_node(n)?;
    }

    let uart = f.begin_node(&format!("serial@{UART_BASE:x}"))?;
    f.property_string("compatible", "ns16550a")?;
    f.property_array_u64("reg", &[UART_BASE, UART_SIZE])?;
    f.property_u32("clock-frequency", 3_686_400)?;
    f.property_u32("interrupt-parent", PLIC_PHANDLE)?;
    f.property_u32("interrupts", UART_IRQ)?;
    f.end_node(uart)?;

    for n in 0..c.virtio_slots {
        let base = VIRTIO_BASE + n as u64 * VIRTIO_SIZE;
        let v = f.begin_node(&format!("virtio_mmio@{base:x}"))?;
        f.property_string("compatible", "virtio,mmio")?;
        f.property_array_u64("reg", &[base, VIRTIO_SIZE])?;
        f.property_u32("interrupt-parent", PLIC_PHANDLE)?;
        f.property_u32("interrupts", VIRTIO_IRQ + n)?;
        f.end_node(v)?;
    }
    f.end_node(soc)?;
    f.end_node(root)?;
    f.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_blob_with_the_fdt_magic() {
        let blob = build(&FdtConfig {
            ram_base: RAM_BASE,
            ram_size: 128 << 20,
            harts: 1,
            bootargs: "console=ttyS0",
            initrd: Some((0x8400_0000, 0x8410_0000)),
            virtio_slots: 1,
        })
        .unwrap();
        assert_eq!(&blob[0..4], &[0xd0, 0x0d, 0xfe, 0xed]);
        let text = String::from_utf8_lossy(&blob);
        assert!(
            text.contains("console=ttyS0")
                && text.contains("ns16550a")
                && text.contains("virtio,mmio")
        );
    }
}
