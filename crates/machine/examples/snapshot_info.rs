//! Prints what a snapshot file holds, for debugging a VM that was saved in
//! a bad state (`godwit ctl SOCK snapshot '{"path": ...}'`): the machine
//! state as JSON (the free-page map summarized) and, for every virtqueue,
//! the ring indices in guest memory beside the device's own.
//!
//! `cargo run --release -p godwit-machine --example snapshot_info -- FILE`

use godwit_machine::snapshot;
use serde_json::{json, Value};

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: snapshot_info FILE");
        std::process::exit(2);
    };
    let snap = match snapshot::load(std::path::Path::new(&path)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("snapshot_info: {e}");
            std::process::exit(1);
        }
    };
    let st = &snap.state;
    let base = godwit_machine::layout::RAM_BASE;
    // A little-endian u16 of guest memory, if its page is in the file.
    let u16_at = |gpa: u64| -> Value {
        let Some(off) = gpa.checked_sub(base) else {
            return Value::Null;
        };
        let (page, at) = ((off / 4096) as usize, (off % 4096) as usize);
        match snap.page(page) {
            Some(b) if at + 2 <= b.len() => json!(u16::from_le_bytes([b[at], b[at + 1]])),
            Some(_) => Value::Null,
            None => json!("page not stored (zero)"),
        }
    };
    let mut out = serde_json::to_value(st).unwrap_or(Value::Null);
    let free: u32 = st.free_pages.iter().map(|w| w.count_ones()).sum();
    out["free_pages"] = json!(format!("{free} pages free"));
    let mut rings = Vec::new();
    for (slot, d) in st.devices.iter().enumerate() {
        for (q, s) in d.queues.iter().enumerate() {
            if !s.ready || s.size == 0 {
                continue;
            }
            let n = u64::from(s.size);
            rings.push(json!({
                "slot": slot,
                "queue": q,
                "device_next_avail": s.next_avail,
                "device_next_used": s.next_used,
                "avail_flags": u16_at(s.avail_ring),
                "avail_idx": u16_at(s.avail_ring + 2),
                "used_event": u16_at(s.avail_ring + 4 + 2 * n),
                "used_flags": u16_at(s.used_ring),
                "used_idx": u16_at(s.used_ring + 2),
                "avail_event": u16_at(s.used_ring + 4 + 8 * n),
                "interrupt_status": d.interrupt_status,
                "pending_kicks": d.pending_kicks,
            }));
        }
    }
    out["rings"] = json!(rings);
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
}
