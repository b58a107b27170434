//! The guest console as the VMM sees it: bytes go to our stdout unchanged,
//! and the guest's `GODWIT HB {json}` heartbeats are kept (with the host time
//! each line arrived) so a migration report can say what the guest saw:
//! throughput before, during and after, its largest stall, and the gap in
//! heartbeats across the switch.

use godwit_migration::unix_ns;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Heartbeats kept (10 minutes at the default 100 ms period, twice over).
const KEEP: usize = 12_000;
/// Longest console line parsed; longer ones are passed through unparsed.
const MAX_LINE: usize = 4096;

/// One heartbeat: host arrival time (Unix ns) and its JSON.
#[derive(Clone)]
pub struct Beat {
    pub at_ns: u128,
    pub json: Value,
}

/// The heartbeats seen so far; shared with whoever reports.
#[derive(Clone, Default)]
pub struct Heartbeats(Arc<Mutex<VecDeque<Beat>>>);

impl Heartbeats {
    fn push(&self, b: Beat) {
        let mut q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() == KEEP {
            q.pop_front();
        }
        q.push_back(b);
    }

    /// Beats that arrived in `[from, to)` (Unix ns).
    pub fn between(&self, from: u128, to: u128) -> Vec<Beat> {
        let q = self.0.lock().unwrap_or_else(|e| e.into_inner());
        q.iter()
            .filter(|b| b.at_ns >= from && b.at_ns < to)
            .cloned()
            .collect()
    }
}

/// A console writer that tees heartbeats into [`Heartbeats`].
pub struct ConsoleTee<W: Write> {
    out: W,
    line: Vec<u8>,
    beats: Heartbeats,
    /// Set at the guest's first byte (for the silent-guest watchdog).
    spoke: Option<Arc<AtomicBool>>,
}

impl<W: Write> ConsoleTee<W> {
    pub fn new(out: W, beats: Heartbeats) -> Self {
        ConsoleTee {
            out,
            line: Vec::new(),
            beats,
            spoke: None,
        }
    }

    /// Also sets `spoke` when the guest writes its first byte.
    pub fn noting_output(mut self, spoke: Arc<AtomicBool>) -> Self {
        self.spoke = Some(spoke);
        self
    }

    fn end_line(&mut self) {
        let line = String::from_utf8_lossy(&self.line);
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("GODWIT HB ") {
            if let Ok(json) = serde_json::from_str::<Value>(rest) {
                self.beats.push(Beat {
                    at_ns: unix_ns(),
                    json,
                });
            }
        }
        self.line.clear();
    }
}

impl<W: Write> Write for ConsoleTee<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(s) = self.spoke.take() {
            s.store(true, Ordering::Release);
        }
        for &b in buf {
            if b == b'\n' {
                self.end_line();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
        self.out.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The workload's throughput figure in a heartbeat, and its unit.
pub fn throughput(b: &Value) -> Option<(f64, &'static str)> {
    for key in ["pages_per_s", "elems_per_s", "wakeups_per_s"] {
        if let Some(v) = b.get(key).and_then(Value::as_f64) {
            return Some((v, key));
        }
    }
    None
}

/// Mean throughput over some beats (`null` when there are none).
pub fn mean_throughput(beats: &[Beat]) -> Value {
    let v: Vec<(f64, &str)> = beats.iter().filter_map(|b| throughput(&b.json)).collect();
    if v.is_empty() {
        return Value::Null;
    }
    json!(v.iter().map(|x| x.0).sum::<f64>() / v.len() as f64)
}

/// What the source VMM saw of the guest around a migration that started at
/// `start` and paused the guest at `paused` (Unix ns).
pub fn source_view(beats: &Heartbeats, start: u128, paused: u128) -> Value {
    let before = beats.between(start.saturating_sub(3_000_000_000), start);
    let during = beats.between(start, paused.max(start));
    let last = beats.between(0, paused.max(start)).pop();
    json!({
        "throughput_before": mean_throughput(&before),
        "throughput_during_source": mean_throughput(&during),
        "throughput_unit": before.iter().chain(during.iter()).find_map(|b| throughput(&b.json)).map(|t| t.1),
        "last_hb_unix_ns": last.as_ref().map(|b| b.at_ns.to_string()),
        "max_stall_ms_before": last.as_ref().and_then(|b| b.json.get("max_stall_ms").cloned()),
        "bad_before": last.as_ref().and_then(|b| b.json.get("bad").cloned()),
        "hb_period_ms": hb_period_ms(&before),
    })
}

/// What the destination VMM saw: resumed at `resumed`, every page there at
/// `completed`, now is the end of the "after" window.
pub fn dest_view(beats: &Heartbeats, resumed: u128, completed: u128) -> Value {
    let now = unix_ns();
    let during = beats.between(resumed, completed);
    let after = beats.between(completed, now + 1);
    let all: Vec<Beat> = beats.between(resumed, now + 1);
    let first = all.first();
    let last = all.last();
    json!({
        "throughput_during_destination": mean_throughput(&during),
        "throughput_after": mean_throughput(&after),
        "first_hb_unix_ns": first.map(|b| b.at_ns.to_string()),
        "max_stall_ms": last.and_then(|b| b.json.get("max_stall_ms").cloned()),
        "bad": last.and_then(|b| b.json.get("bad").cloned()),
        "beats": all.len(),
    })
}

/// The median gap between consecutive beats, in ms.
fn hb_period_ms(beats: &[Beat]) -> Value {
    let mut gaps: Vec<f64> = beats
        .windows(2)
        .map(|w| (w[1].at_ns.saturating_sub(w[0].at_ns)) as f64 / 1e6)
        .collect();
    if gaps.is_empty() {
        return Value::Null;
    }
    gaps.sort_by(f64::total_cmp);
    json!(gaps[gaps.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_are_kept_and_output_passes_through() {
        let beats = Heartbeats::default();
        let mut out = Vec::new();
        {
            let mut t = ConsoleTee::new(&mut out, beats.clone());
            t.write_all(b"boot\nGODWIT HB {\"bad\":0,\"pages_per_s\":5}\r\nGODWIT HB {bro")
                .unwrap();
            t.write_all(b"ken\nGODWIT HB {\"bad\":1,\"pages_per_s\":7}\n")
                .unwrap();
        }
        assert!(String::from_utf8(out)
            .unwrap()
            .starts_with("boot\nGODWIT HB"));
        let all = beats.between(0, u128::MAX);
        assert_eq!(all.len(), 2);
        assert_eq!(mean_throughput(&all), json!(6.0));
    }
}
