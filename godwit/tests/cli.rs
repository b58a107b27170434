//! Bad input is a clear error before anything runs.

mod common;
use common::*;

fn stderr_of(args: &[&str]) -> (Option<i32>, String) {
    let out = godwit().args(args).output().expect("spawn godwit");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn missing_kernel_file() {
    let (code, err) = stderr_of(&[
        "run",
        "--kernel",
        "/nonexistent/Image",
        "--initrd",
        "/nonexistent/initrd",
    ]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("/nonexistent/Image") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn not_a_riscv_image() {
    let dir = std::env::temp_dir().join(format!("godwit-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bogus = dir.join("bogus");
    std::fs::write(&bogus, vec![0x7fu8; 4096]).unwrap();
    let b = bogus.to_str().unwrap();
    let (code, err) = stderr_of(&["run", "--kernel", b, "--initrd", b]);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(code, Some(1));
    assert!(err.contains("not a RISC-V Linux Image"), "{err}");
}

#[test]
fn bad_memory_sizes() {
    let (k, i) = guest_image();
    let (k, i) = (
        k.to_str().unwrap().to_string(),
        i.to_str().unwrap().to_string(),
    );
    let (code, err) = stderr_of(&["run", "--kernel", &k, "--initrd", &i, "--mem", "lots"]);
    assert_eq!(code, Some(2), "clap usage error");
    assert!(err.contains("not a size"), "{err}");
    let (code, err) = stderr_of(&["run", "--kernel", &k, "--initrd", &i, "--mem", "1M"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("out of range"), "{err}");
    let (code, err) = stderr_of(&["run", "--kernel", &k, "--initrd", &i, "--mem", "100000G"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("out of range"), "{err}");
}

#[test]
fn ctl_without_a_vm_and_with_bad_arguments() {
    let (code, err) = stderr_of(&["ctl", "/nonexistent/godwit.sock", "query-status"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("/nonexistent/godwit.sock") && err.contains("does not exist"),
        "{err}"
    );
    let (code, err) = stderr_of(&["ctl", "/nonexistent/godwit.sock", "snapshot", "[1]"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("must be a JSON object"), "{err}");
}

#[test]
fn restore_from_a_file_that_is_not_a_snapshot() {
    let dir = std::env::temp_dir().join(format!("godwit-cli-snap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bogus = dir.join("not-a-snapshot");
    std::fs::write(&bogus, b"hello\n").unwrap();
    let (code, err) = stderr_of(&["run", "--restore", bogus.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(code, Some(1));
    assert!(err.contains("not a Godwit snapshot"), "{err}");
}

/// More words than Linux passes to init (it panics before its console is
/// up) are refused before the VM boots, naming the kernel's limit.
#[test]
fn too_many_init_words_are_refused_before_boot() {
    guest_image();
    let envs: Vec<String> = (0..32).map(|i| format!("w{i}=1")).collect();
    // Bounded: without the check the guest hangs silently.
    let bounded = |append: &str| {
        let out = std::process::Command::new("timeout")
            .arg("20")
            .arg(env!("CARGO_BIN_EXE_godwit"))
            .args(["run", "--workload", "idle", "--append", append])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("spawn godwit");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let t = std::time::Instant::now();
    let (code, err) = bounded(&envs.join(" "));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("MAX_INIT_ENVS = 32") && err.contains("at `w31=1`"),
        "{err}"
    );
    let args: Vec<String> = (0..33).map(|i| format!("a{i}")).collect();
    let (code, err) = bounded(&args.join(" "));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("MAX_INIT_ARGS = 32") && err.contains("at `a32`"),
        "{err}"
    );
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t.elapsed()
    );
}
