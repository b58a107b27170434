//! Helpers shared by the integration tests: the guest image, running
//! `godwit`, and reading the guest's status lines.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// The default guest image built by `guest/build.sh`.
pub fn guest_image() -> (PathBuf, PathBuf) {
    let cache = match std::env::var_os("GODWIT_CACHE") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cache/godwit"),
    };
    let dir = cache.join("guest/default");
    let (k, i) = (dir.join("Image"), dir.join("initramfs.cpio.gz"));
    assert!(
        k.exists() && i.exists(),
        "guest image missing under {}: run guest/build.sh first (scripts/test.sh does)",
        dir.display()
    );
    (k, i)
}

pub fn godwit() -> Command {
    Command::new(env!("CARGO_BIN_EXE_godwit"))
}

/// Runs `godwit run` with a workload and parameters, bounded by `timeout_s`.
pub fn run_workload(workload: &str, append: &str, timeout_s: u32) -> Output {
    let out = Command::new("timeout")
        .arg(timeout_s.to_string())
        .arg(env!("CARGO_BIN_EXE_godwit"))
        .args([
            "run",
            "--mem",
            "256M",
            "--workload",
            workload,
            "--append",
            append,
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("spawn godwit");
    out
}

/// The JSON of every console line starting with `GODWIT <kind> `.
pub fn status_lines(stdout: &str, kind: &str) -> Vec<serde_json::Value> {
    let prefix = format!("GODWIT {kind} ");
    stdout
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix(prefix.as_str()))
        .map(|j| serde_json::from_str(j).unwrap_or_else(|e| panic!("bad status JSON {j:?}: {e}")))
        .collect()
}

/// Asserts a finished run: exit 0, READY once, DONE with bad = 0, no corruption lines.
pub fn assert_clean_run(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tail: String = stdout
        .lines()
        .rev()
        .take(30)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        out.status.code(),
        Some(0),
        "godwit exit status; stderr: {}\nconsole tail:\n{tail}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        status_lines(&stdout, "READY").len(),
        1,
        "one READY line\n{tail}"
    );
    assert!(
        status_lines(&stdout, "CORRUPT").is_empty(),
        "guest reported corruption:\n{tail}"
    );
    assert!(
        status_lines(&stdout, "ERROR").is_empty(),
        "guest reported an error:\n{tail}"
    );
    let hbs = status_lines(&stdout, "HB");
    assert!(!hbs.is_empty(), "no heartbeats\n{tail}");
    assert!(
        hbs.iter().all(|h| h["bad"] == 0),
        "a heartbeat reported bad pages\n{tail}"
    );
    let done = status_lines(&stdout, "DONE");
    assert_eq!(done.len(), 1, "one DONE line\n{tail}");
    assert_eq!(done[0]["bad"], 0, "integrity errors at the end\n{tail}");
    done[0].clone()
}
