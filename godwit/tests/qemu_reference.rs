//! The reference check: the same guest image boots to `GODWIT READY` under
//! `qemu-system-riscv64 -M virt` (guest/qemu-boot.sh), with each workload.

use std::process::Command;

fn qemu_boot(args: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest/qemu-boot.sh");
    let out = Command::new(script)
        .args(["--timeout", "180"])
        .args(args)
        .output()
        .expect("run guest/qemu-boot.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tail: Vec<&str> = stdout.lines().rev().take(15).collect();
    assert!(
        out.status.success(),
        "qemu-boot.sh {args:?} failed: {}\n{:?}",
        String::from_utf8_lossy(&out.stderr),
        tail
    );
    assert!(stdout.contains("GODWIT READY"), "{tail:?}");
}

#[test]
fn qemu_boots_memtouch() {
    qemu_boot(&["memtouch", "wws_mb=16", "duration_s=4"]);
}

#[test]
fn qemu_boots_quicksort() {
    qemu_boot(&["quicksort", "procs=2", "array_mb=1", "duration_s=4"]);
}

#[test]
fn qemu_boots_idle() {
    qemu_boot(&["idle", "duration_s=2"]);
}

#[test]
fn qemu_boots_alloc_free() {
    qemu_boot(&[
        "alloc-free",
        "alloc_mb=32",
        "hold_ms=500",
        "free_ms=500",
        "cycles=1",
    ]);
}
