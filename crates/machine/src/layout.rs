//! The physical memory map, as QEMU's `virt` board lays it out.

/// `sifive,test0` power-off / reset register (QEMU `virt`'s "test").
pub const FINISHER_BASE: u64 = 0x0010_0000;
pub const FINISHER_SIZE: u64 = 0x1000;
/// CLINT (machine timer and software interrupts).
pub const CLINT_BASE: u64 = 0x0200_0000;
pub const CLINT_SIZE: u64 = 0x1_0000;
/// PLIC.
pub const PLIC_BASE: u64 = 0x0c00_0000;
pub const PLIC_SIZE: u64 = 0x60_0000;
/// Number of PLIC interrupt sources (1..=95; source 0 does not exist).
pub const PLIC_SOURCES: u32 = 96;
/// ns16550a UART.
pub const UART_BASE: u64 = 0x1000_0000;
pub const UART_SIZE: u64 = 0x100;
pub const UART_IRQ: u32 = 10;
/// virtio-mmio slots: slot `n` at `VIRTIO_BASE + n * VIRTIO_SIZE`, IRQ `1 + n`.
pub const VIRTIO_BASE: u64 = 0x1000_1000;
pub const VIRTIO_SIZE: u64 = 0x1000;
pub const VIRTIO_IRQ: u32 = 1;
/// Number of virtio-mmio slots (as QEMU `virt`).
pub const VIRTIO_SLOTS: u32 = 8;
/// Guest RAM. With `--bios`, the firmware sits at its start and the kernel
/// 2 MiB in (its `Image` header's text offset).
pub const RAM_BASE: u64 = 0x8000_0000;
/// Most bytes of firmware: it must end before the kernel's 2 MiB offset.
pub const MAX_FIRMWARE: u64 = 2 << 20;
/// Smallest RAM the guest can boot in.
pub const MIN_RAM: u64 = 32 << 20;
/// Largest RAM this board maps.
pub const MAX_RAM: u64 = 64 << 30;
