//! `godwit migrate`: drive a migration through the source VM's control
//! socket, show its progress, print a summary and write the JSON report.

use anyhow::{bail, Context, Result};
use godwit_vmm::control::ControlClient;
use serde_json::{json, Value};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// The source VM's control socket (`godwit run --control PATH`).
    #[arg(long)]
    control: PathBuf,
    /// The destination (`godwit receive --listen HOST:PORT`).
    #[arg(long)]
    to: String,
    /// stop-and-copy, precopy, postcopy or hybrid.
    #[arg(long, default_value = "postcopy")]
    mode: String,
    /// Post-copy push order: none, forward, dual, multi-pivot[:K].
    #[arg(long, default_value = "dual")]
    prepaging: String,
    /// Wire bandwidth limit in bytes/s (0: none). In post-copy it paces the
    /// push only; set it a little under the link rate.
    #[arg(long)]
    max_bandwidth: Option<u64>,
    /// Pre-copy downtime target in ms.
    #[arg(long)]
    downtime_limit: Option<u64>,
    /// Pre-copy round limit.
    #[arg(long)]
    max_rounds: Option<u64>,
    /// Hybrid: pre-copy rounds before post-copy.
    #[arg(long)]
    hybrid_rounds: Option<u64>,
    /// Do not ask the guest for free page hints.
    #[arg(long)]
    no_free_page_hints: bool,
    /// Post-copy: do not push the vCPU's last-used pages first.
    #[arg(long)]
    no_hot_pages_first: bool,
    /// Post-copy: do not send the vCPUs' pages ahead, while the VM still
    /// runs (they are still pushed first after the resume).
    #[arg(long)]
    no_hot_pages_ahead: bool,
    /// Pre-copy and hybrid: throttle the vCPUs while the guest dirties
    /// memory faster than the link sends it (auto-converge).
    #[arg(long)]
    auto_converge: bool,
    /// Post-copy and hybrid: protect the VM against the loss of the
    /// destination. The destination sends checkpoints back; if it is
    /// silent this many ms (and no --resume reconnects it in that time),
    /// the VM resumes here from the last one. 0: off.
    #[arg(long, value_name = "MS")]
    failover_timeout: Option<u64>,
    /// With --failover-timeout: ms between the destination's checkpoints.
    #[arg(long, value_name = "MS")]
    checkpoint_interval: Option<u64>,
    /// Compress the bulk page transfer (pre-copy rounds, the stop-and-copy
    /// pass): none, lz4 or zstd. Demand replies are never compressed.
    #[arg(long, default_value = "none", value_parser = ["none", "lz4", "zstd"])]
    compress: String,
    /// Spread the bulk page transfer over N connections, each with its own
    /// sending thread (compression and TLS run on each): QEMU's multifd.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=godwit_migration::MAX_CHANNELS as i64))]
    channels: u32,
    /// TLS identity folder (`godwit tls-gen`), as seen by the source VMM.
    #[arg(long, required_unless_present = "tls_plain")]
    tls_dir: Option<PathBuf>,
    /// Migrate over plain TCP (no authentication, no encryption).
    #[arg(long, conflicts_with = "tls_dir")]
    tls_plain: bool,
    /// Write the report here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Reconnect a post-copy whose link broke (status postcopy-paused) to
    /// the destination at --to, and finish it.
    #[arg(long)]
    resume: bool,
    /// Leave the (paused) source VMM running after success.
    #[arg(long)]
    keep_source: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

pub fn run(args: Args) -> Result<i32> {
    let mut c = ControlClient::connect(&args.control)?;
    c.set_timeout(Some(Duration::from_secs(30)))?;
    if args.resume {
        c.execute(
            "migrate",
            json!({ "uri": format!("tcp:{}", args.to), "resume": true }),
        )
        .context("the source could not resume the migration")?;
        return follow(&mut c, &args);
    }
    let mut params = json!({ "mode": args.mode, "prepaging": args.prepaging });
    let set = |p: &mut Value, k: &str, v: Option<u64>| {
        if let Some(v) = v {
            p[k] = json!(v);
        }
    };
    set(&mut params, "max-bandwidth", args.max_bandwidth);
    set(&mut params, "downtime-limit", args.downtime_limit);
    set(&mut params, "max-rounds", args.max_rounds);
    set(&mut params, "hybrid-rounds", args.hybrid_rounds);
    set(&mut params, "failover-timeout", args.failover_timeout);
    set(&mut params, "checkpoint-interval", args.checkpoint_interval);
    match &args.tls_dir {
        Some(d) => {
            let abs = std::path::absolute(d).unwrap_or_else(|_| d.clone());
            params["tls-creds"] = json!(abs.to_string_lossy());
            params["tls-plain"] = json!(false);
        }
        None => {
            params["tls-creds"] = json!("");
            params["tls-plain"] = json!(args.tls_plain);
        }
    }
    params["compress"] = json!(args.compress);
    params["channels"] = json!(args.channels);
    params["hot-pages-first"] = json!(!args.no_hot_pages_first);
    params["hot-pages-ahead"] = json!(!args.no_hot_pages_ahead);
    if args.auto_converge {
        params["auto-converge"] = json!(true);
    }
    if args.no_free_page_hints {
        params["free-page-hints"] = json!(false);
    }
    c.execute("migrate-set-parameters", params)
        .context("the source refused the migration parameters")?;
    c.execute("migrate", json!({ "uri": format!("tcp:{}", args.to) }))
        .context("the source could not start the migration")?;
    follow(&mut c, &args)
}

/// Shows progress until the migration ends (or its post-copy link breaks),
/// then prints and saves the report.
fn follow(c: &mut ControlClient, args: &Args) -> Result<i32> {
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last_line = Instant::now();
    let q = loop {
        let q = c.execute("query-migrate", Value::Null)?;
        let status = q["status"].as_str().unwrap_or("?").to_string();
        if matches!(status.as_str(), "completed" | "failed" | "cancelled") {
            break q;
        }
        if status == "postcopy-paused" && q["failover_armed"] == true {
            // Not for good: the source resumes the VM from its last
            // checkpoint unless --resume reconnects the destination first.
            if last_line.elapsed() >= Duration::from_secs(1) {
                eprintln!(
                    "godwit: post-copy paused: {}; waiting for --resume or the failover timeout",
                    q["error"].as_str().unwrap_or("the link broke")
                );
                last_line = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        if status == "postcopy-paused" {
            if tty {
                eprintln!();
            }
            bail!(
                "post-copy paused: {}. The VM waits at the destination for the pages it lacks; \
                 when the link is back run: godwit migrate --control {} --to HOST:PORT --resume",
                q["error"].as_str().unwrap_or("the link broke"),
                args.control.display()
            );
        }
        if tty || last_line.elapsed() >= Duration::from_secs(1) {
            progress_line(&q, started, tty);
            last_line = Instant::now();
        }
        if started.elapsed() > Duration::from_secs(args.timeout) {
            if let Err(e) = c.execute("migrate-cancel", Value::Null) {
                bail!(
                    "the migration took longer than {} s and cannot be cancelled: {e:#}",
                    args.timeout
                );
            }
            bail!(
                "the migration took longer than {} s; cancelled",
                args.timeout
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if tty {
        eprintln!();
    }
    if q["status"] != "completed" {
        if let (Some(path), true) = (&args.json, q["report"].is_object()) {
            // A failover's report: what the checkpoints cost and how long
            // the VM was away.
            std::fs::write(path, serde_json::to_string_pretty(&q["report"])? + "\n")
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        bail!(
            "migration {}: {} (the source VM keeps running)",
            q["status"].as_str().unwrap_or("failed"),
            q["error"].as_str().unwrap_or("no reason given")
        );
    }
    let report = q["report"].clone();
    // Written before anything else, so a closed stdout cannot lose it.
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{}", summary(&report));
    if args.json.is_none() {
        let _ = writeln!(out, "{report}");
    }
    if !args.keep_source {
        c.execute("quit", Value::Null)
            .context("cannot end the source VMM")?;
    }
    Ok(0)
}

fn progress_line(q: &Value, started: Instant, tty: bool) {
    let g = |k: &str| q[k].as_u64().unwrap_or(0);
    let total = g("pages_total").max(1);
    let moved = g("pages_precopy") + g("pages_stop_copy") + g("pages_pushed") + g("pages_demand");
    let frac = (moved as f64 / total as f64).min(1.0);
    let width = 30;
    let fill = (frac * width as f64) as usize;
    let secs = started.elapsed().as_secs_f64();
    let line = format!(
        "[{}{}] {:>5.1}% {} {} pages, round {}, {:.1} MB sent ({:.1} MB/s), {:.1} s",
        "#".repeat(fill),
        ".".repeat(width - fill),
        frac * 100.0,
        q["status"].as_str().unwrap_or("?"),
        moved,
        g("rounds"),
        g("bytes_sent") as f64 / 1e6,
        g("bytes_sent") as f64 / 1e6 / secs.max(1e-3),
        secs
    );
    let mut e = std::io::stderr();
    if tty {
        let _ = write!(e, "\r{line}");
    } else {
        let _ = writeln!(e, "{line}");
    }
}

/// The fault path's steps (p50/p99 µs), one line per way a faulted page
/// came; empty when nothing faulted over the network.
fn fault_path(b: &Value, in_flight: u64) -> String {
    let pq = |v: &Value| {
        format!(
            "{:.0}/{:.0}",
            v["p50"].as_f64().unwrap_or(0.0),
            v["p99"].as_f64().unwrap_or(0.0)
        )
    };
    let mut s = String::new();
    let reply = &b["by_reply"];
    if reply["faults"].as_u64().unwrap_or(0) > 0 {
        s += &format!(
            "  fault path, {} answered by the reply (p50/p99 us): request written {}, until the reply is read {} (source serves in {}), UFFDIO_COPY {}; total {}\n",
            reply["faults"], pq(&reply["request_us"]), pq(&reply["wait_us"]),
            pq(&b["source_service_us"]), pq(&reply["install_us"]), pq(&reply["total_us"])
        );
    }
    let push = &b["by_push"];
    if push["faults"].as_u64().unwrap_or(0) > 0 {
        s += &format!(
            "  fault path, {} answered by the push ({in_flight} requests found the page already sent): until the page is read {}, UFFDIO_COPY {}; total {}\n",
            push["faults"], pq(&push["wait_us"]), pq(&push["install_us"]), pq(&push["total_us"])
        );
    }
    s
}

/// The report for people.
pub fn summary(r: &Value) -> String {
    let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
    let u = |k: &str| r[k].as_u64().unwrap_or(0);
    let opt = |k: &str| match r[k].as_f64() {
        Some(v) => format!("{v:.1}"),
        None => "n/a".into(),
    };
    let mut s = format!(
        "migration {} ({}): total {:.0} ms, downtime {:.1} ms (VMMs), guest stall {} ms, guest downtime (console) {} ms\n",
        r["mode"].as_str().unwrap_or("?"),
        r["prepaging"].as_str().unwrap_or("?"),
        f("total_ms"),
        f("downtime_ms"),
        opt("guest_max_stall_ms"),
        opt("guest_downtime_console_ms"),
    );
    s += &format!(
        "  pages: pre-copy {} (rounds {}{}), stop-copy {}, pushed {}, demand {}, zero {}, free skipped {}, duplicates {}; state {} bytes; {:.1} MB on the wire\n",
        u("pages_precopy"), u("rounds"),
        match u("pages_hot_ahead") {
            0 => String::new(),
            n => format!("; the vCPUs' hot pages ahead: {n}"),
        },
        u("pages_stop_copy"), u("pages_pushed"), u("pages_demand"),
        u("pages_zero"), u("pages_free_skipped"), u("duplicate_pages"), u("state_bytes"),
        f("bytes_sent") / 1e6
    );
    s += &format!(
        "  faults: network {}, local {}, served by push {}; latency p50 {:.0} us, p99 {:.0} us, max {:.0} us; pre-paging hits {}\n",
        u("network_faults"), u("local_faults"), u("faults_served_by_push"),
        f("fault_latency_us_p50"), f("fault_latency_us_p99"), f("fault_latency_us_max"), u("prepaging_hits")
    );
    if r["auto_converge"].as_bool() == Some(true) {
        let steps: Vec<String> = r["throttle_steps"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|t| {
                        format!(
                            "round {} {:.1}%",
                            t["round"],
                            t["permille"].as_f64().unwrap_or(0.0) / 10.0
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        s += &format!(
            "  auto-converge: throttle max {:.1}% ({}), vCPU time lost {:.0} ms\n",
            f("throttle_max_permille") / 10.0,
            if steps.is_empty() {
                "never needed".into()
            } else {
                steps.join(", ")
            },
            f("throttled_vcpu_ms"),
        );
    }
    if u("channels") > 1 {
        s += &format!("  bulk transfer over {} connections\n", u("channels"));
    }
    if let Some(codec) = r["compress"].as_str().filter(|c| *c != "none") {
        let plain = f("compress_plain_bytes");
        s += &format!(
            "  compression: {codec}, page batches {:.1} MB -> {:.1} MB on the wire ({:.2}x), {:.0} ms of source CPU\n",
            plain / 1e6,
            f("compress_wire_bytes") / 1e6,
            plain / f("compress_wire_bytes").max(1.0),
            f("compress_ms"),
        );
    }
    s += &fault_path(&r["fault_breakdown"], u("demands_in_flight"));
    s += &format!(
        "  guest throughput ({}): before {}, during {}, after {}; guest bad pages {}",
        r["throughput_unit"].as_str().unwrap_or("?"),
        opt("throughput_before"),
        opt("throughput_during"),
        opt("throughput_after"),
        r["guest_bad"]
    );
    s
}
