//! `godwit testbed`: two hosts on one machine, for migrations over a real
//! (shaped) network link.
//!
//! ```text
//!   netns godwit-src                          netns godwit-dst
//!   ┌──────────────────────┐   veth pair   ┌──────────────────────┐
//!   │ gw-src  10.77.0.1/24 ├───────────────┤ gw-dst  10.77.0.2/24 │
//!   │ root qdisc: tbf ──────────▶     ◀────────── root qdisc: tbf │
//!   └──────────────────────┘               └──────────────────────┘
//! ```
//!
//! Each veth end shapes its own egress with `tc qdisc ... tbf rate R`, so
//! both directions are limited to R (default 1 Gbit/s, the paper's Gigabit
//! LAN). Programs run inside a namespace with `ip netns exec NS ...`
//! ([`Testbed::command`]). Delay and loss would need `netem`, which this
//! machine's kernel does not have; asking for them is an error.
//!
//! The ports a migration crosses queue by priority under their tbf: a
//! `pfifo_fast` child (strict priority, three bands by the socket's
//! `SO_PRIORITY`), its length `txqueuelen` packets, set to tbf's byte bound
//! (rate × latency + burst) in 1500-byte packets. The engine marks its
//! fault connection priority 6, which goes first, so a demand reply does
//! not wait behind up to a millisecond of pushed pages (TCP hands the queue
//! 64 KiB bursts), as on a host whose NIC has traffic classes. The
//! migration's bulk and the VM network keep priority 0.
//!
//! **The VM network**, like a datacenter's: the guest's NIC is a TAP on a
//! bridge in its host, the hosts hang off one switch, and the guest's users
//! sit elsewhere on that switch.
//!
//! ```text
//!   netns godwit-src                 netns godwit-sw            netns godwit-dst
//!   ┌──────────────────┐          ┌───────────────────┐      ┌──────────────────┐
//!   │ gwtap0 ─┐        │  veth    │   bridge brsw     │ veth │        ┌─ gwtap0 │
//!   │ brvm ───┴─ gw-vm ├──────────┤ sw-src     sw-dst ├──────┤ gw-vm ─┴─── brvm │
//!   └──────────────────┘          │     sw-client     │      └──────────────────┘
//!                                 └─────────┬─────────┘
//!                       netns godwit-client │ veth
//!                       gw-client 10.77.1.100/24
//! ```
//!
//! - `gwtap0` is a persistent TAP (`ip tuntap add ... mode tap user U`, U
//!   the user who ran sudo, else ours) on `brvm`: a VMM in that namespace
//!   opens it by name with `TUNSETIFF` (`IFF_TAP | IFF_NO_PI`); it has no
//!   carrier until then.
//! - The guest is 10.77.1.10/24 on whichever host runs it, with the same
//!   MAC: after a migration something on the new host must announce it (a
//!   gratuitous ARP, as `arping -U`, or QEMU's RARP announce) so `brsw`
//!   learns its new port; until then frames for it still go to the old one.
//! - Both ends of every switch port (`gw-vm`/`sw-src`, `gw-vm`/`sw-dst`,
//!   `gw-client`/`sw-client`) are shaped with the link's tbf.
//! - `--shared-link`: no `gw-src`/`gw-dst` pair; each host's migration
//!   address (10.77.0.1, 10.77.0.2) sits on its `brvm`, so a migration
//!   crosses `gw-vm` → `brsw` → `gw-vm` and shares each host's one shaped
//!   port with the guest's traffic, as on hosts with a single NIC.
//!
//! [`Testbed`] is a guard: [`Testbed::up`] first removes whatever an earlier
//! run left behind, and dropping the guard (also on an error, a panic or
//! Ctrl-C, see [`catch_interrupts`]) removes the namespaces again (and with
//! them every veth, bridge and TAP: nothing is created outside them). An
//! advisory lock file keeps two users (a bench and a test, say) from
//! reshaping the testbed under each other.
//!
//! `probe-send` / `probe-recv` measure the link: a TCP bulk transfer and a
//! 4 KiB request/response ping-pong; `measure` does up, probe, down.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The source host's namespace, interface and address.
pub const SRC_NS: &str = "godwit-src";
/// The destination host's namespace, interface and address.
pub const DST_NS: &str = "godwit-dst";
const SRC_IF: &str = "gw-src";
const DST_IF: &str = "gw-dst";
pub const SRC_ADDR: &str = "10.77.0.1";
pub const DST_ADDR: &str = "10.77.0.2";
const PREFIX_LEN: u32 = 24;

/// The VM network's switch, and its bridge.
pub const SW_NS: &str = "godwit-sw";
const SW_BRIDGE: &str = "brsw";
/// The client host on the VM network, its interface and address.
pub const CLIENT_NS: &str = "godwit-client";
const CLIENT_IF: &str = "gw-client";
const CLIENT_PORT: &str = "sw-client";
pub const CLIENT_ADDR: &str = "10.77.1.100";
/// The guest's address on the VM network, the same on both hosts.
pub const GUEST_ADDR: &str = "10.77.1.10";
pub const VM_PREFIX_LEN: u32 = 24;
/// In each host: the bridge the VM's TAP hangs on, the TAP, and the host's
/// port to the switch (a veth whose other end is `sw-src` / `sw-dst`).
pub const VM_BRIDGE: &str = "brvm";
pub const TAP: &str = "gwtap0";
const UPLINK: &str = "gw-vm";
/// Every namespace of the testbed.
const NAMESPACES: [&str; 4] = [SRC_NS, DST_NS, SW_NS, CLIENT_NS];

/// Held (flock) by whoever sets the testbed up or tears it down.
const LOCK_PATH: &str = "/run/godwit-testbed.lock";
/// How long `up`/`down` wait for another user's lock.
const LOCK_WAIT: Duration = Duration::from_secs(120);
/// Every `ip` / `tc` invocation is killed after this long.
const TOOL_TIMEOUT: Duration = Duration::from_secs(20);
/// TCP port of the link probe.
const PROBE_PORT: u16 = 7700;
/// Size of a probe request and of its response.
const RR_BYTES: usize = 4096;

/// One end of the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Src,
    Dst,
}

impl Side {
    pub fn netns(self) -> &'static str {
        match self {
            Side::Src => SRC_NS,
            Side::Dst => DST_NS,
        }
    }

    pub fn addr(self) -> &'static str {
        match self {
            Side::Src => SRC_ADDR,
            Side::Dst => DST_ADDR,
        }
    }

    fn ifname(self) -> &'static str {
        match self {
            Side::Src => SRC_IF,
            Side::Dst => DST_IF,
        }
    }

    /// The switch's end of this host's port on the VM network.
    fn switch_port(self) -> &'static str {
        match self {
            Side::Src => "sw-src",
            Side::Dst => "sw-dst",
        }
    }
}

// ---------------------------------------------------------------------------
// Command line

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: TestbedCommand,
}

#[derive(clap::Subcommand)]
enum TestbedCommand {
    /// Create the two hosts, the shaped link and the VM network (removes
    /// leftovers first).
    Up(LinkArgs),
    /// Remove the namespaces and everything in them.
    Down,
    /// Show whether the testbed is up: addresses, bridge ports, TAPs, qdiscs.
    Status,
    /// Up, measure the link (bulk rate, 4 KiB request/response latency), down.
    Measure(MeasureArgs),
    /// Link probe, receiving end: serve bulk and request/response connections.
    ProbeRecv(ProbeRecvArgs),
    /// Link probe, sending end: prints one JSON line with the figures.
    ProbeSend(ProbeSendArgs),
}

/// How the link is shaped.
#[derive(clap::Args, Clone, Debug)]
pub struct LinkArgs {
    /// Rate of each direction, tc style: 1gbit, 100mbit, 500kbit, or bits/s.
    #[arg(long, default_value = "1gbit", value_parser = parse_rate)]
    pub rate: u64,
    /// tbf bucket size in bytes (K/M suffixes allowed); default 1 ms of the
    /// rate, at least 16 KiB.
    #[arg(long, value_parser = godwit_vmm::size::parse_size)]
    pub burst: Option<u64>,
    /// tbf `latency`: longest a packet may wait in the queue, ms (this sets
    /// the queue length: rate × latency + burst).
    #[arg(long, default_value_t = 5)]
    pub latency_ms: u32,
    /// Not available: needs netem, which this kernel lacks.
    #[arg(long)]
    pub delay: Option<String>,
    /// Not available: needs netem, which this kernel lacks.
    #[arg(long)]
    pub loss: Option<String>,
    /// One port per host for everything, as a host with one NIC: no direct
    /// link between the hosts; each host's migration address sits on its
    /// `brvm`, so the migration and the VM's traffic share the host's one
    /// shaped port to the switch.
    #[arg(long)]
    pub shared_link: bool,
}

impl LinkArgs {
    /// The link the arguments describe; delay or loss is an error.
    pub fn config(&self) -> Result<LinkConfig> {
        if self.delay.is_some() || self.loss.is_some() {
            bail!(
                "--delay/--loss are not available: they need tc's netem qdisc, and this machine's kernel has no netem \
                 (only tbf and htb). Delay or loss must come from a user-space relay (see DESIGN.md, Testbed)"
            );
        }
        let mut link = LinkConfig::new(self.rate, self.burst, self.latency_ms)?;
        link.shared_link = self.shared_link;
        Ok(link)
    }
}

#[derive(clap::Args)]
struct MeasureArgs {
    #[command(flatten)]
    link: LinkArgs,
    /// MiB sent in the bulk transfer.
    #[arg(long, default_value_t = 64)]
    bulk_mb: u64,
    /// Request/response round trips of 4 KiB each.
    #[arg(long, default_value_t = 2000)]
    rr: u32,
}

#[derive(clap::Args)]
struct ProbeRecvArgs {
    /// Address to listen on, e.g. 10.77.0.2:7700.
    #[arg(long)]
    listen: SocketAddr,
    /// Exit after serving this many connections.
    #[arg(long, default_value_t = 2)]
    connections: u32,
    /// Exit after this many seconds whatever happens.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

#[derive(clap::Args)]
struct ProbeSendArgs {
    /// The receiver, e.g. 10.77.0.2:7700 (retried for 10 s until it listens).
    #[arg(long)]
    to: SocketAddr,
    /// MiB sent in the bulk transfer (0: skip it).
    #[arg(long, default_value_t = 64)]
    bulk_mb: u64,
    /// Request/response round trips of 4 KiB each (0: skip them).
    #[arg(long, default_value_t = 2000)]
    rr: u32,
}

pub fn run(args: Args) -> Result<i32> {
    match args.command {
        TestbedCommand::Up(link) => {
            let link = link.config()?;
            require_root("godwit testbed up")?;
            catch_interrupts();
            Testbed::up(&link)?.leave_up();
            eprintln!(
                "testbed: up: {SRC_NS} {SRC_ADDR}/{PREFIX_LEN} <-> {DST_NS} {DST_ADDR}/{PREFIX_LEN}{}, {link}",
                if link.shared_link { " (through the switch)" } else { "" }
            );
            eprintln!(
                "testbed: VM network: {TAP} on {VM_BRIDGE} in both hosts, switch {SW_NS}, client {CLIENT_NS} \
                 {CLIENT_ADDR}/{VM_PREFIX_LEN}; the guest is {GUEST_ADDR}/{VM_PREFIX_LEN}"
            );
            eprintln!("testbed: run things with `ip netns exec {SRC_NS} ...`; remove it with `godwit testbed down`");
            Ok(0)
        }
        TestbedCommand::Down => {
            require_root("godwit testbed down")?;
            let _lock = TestbedLock::acquire()?;
            teardown()?;
            eprintln!("testbed: down");
            Ok(0)
        }
        TestbedCommand::Status => status(),
        TestbedCommand::Measure(args) => {
            let link = args.link.config()?;
            require_root("godwit testbed measure")?;
            catch_interrupts();
            let m = measure(&link, args.bulk_mb, args.rr)?;
            println!("{m}");
            Ok(0)
        }
        TestbedCommand::ProbeRecv(args) => {
            catch_interrupts();
            probe_recv(&args)?;
            Ok(0)
        }
        TestbedCommand::ProbeSend(args) => {
            let figures = probe_send(&args)?;
            println!("{figures}");
            Ok(0)
        }
    }
}

/// Parses a tc-style rate into bits per second (decimal units, as tc).
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let (digits, scale) = if let Some(d) = t.strip_suffix("gbit") {
        (d, 1_000_000_000)
    } else if let Some(d) = t.strip_suffix("mbit") {
        (d, 1_000_000)
    } else if let Some(d) = t.strip_suffix("kbit") {
        (d, 1_000)
    } else if let Some(d) = t.strip_suffix("bit") {
        (d, 1)
    } else {
        (t.as_str(), 1)
    };
    let bad = || format!("'{s}' is not a rate (expected e.g. 1gbit, 100mbit, 500kbit or bits/s)");
    let n: f64 = digits.trim().parse().map_err(|_| bad())?;
    let bits = n * scale as f64;
    if !(8_000.0..=1e12).contains(&bits) {
        return Err(format!("rate '{s}' is out of range (8kbit..1000gbit)"));
    }
    Ok(bits as u64)
}

/// A rate in bits/s, written for people (`1 Gbit/s`).
pub fn show_rate(bits_per_s: u64) -> String {
    let b = bits_per_s as f64;
    if b >= 1e9 {
        format!("{} Gbit/s", trim_float(b / 1e9))
    } else if b >= 1e6 {
        format!("{} Mbit/s", trim_float(b / 1e6))
    } else {
        format!("{} kbit/s", trim_float(b / 1e3))
    }
}

fn trim_float(x: f64) -> String {
    let s = format!("{x:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!("{what} needs root (network namespaces and tc); run it with sudo");
    }
    Ok(())
}

/// Whether this process may create namespaces and shape links.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

// ---------------------------------------------------------------------------
// The link and the guard

/// The shaping of each direction of the link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkConfig {
    pub rate_bits_per_s: u64,
    pub burst_bytes: u64,
    pub latency_ms: u32,
    /// Migration and VM traffic share each host's port (`--shared-link`).
    pub shared_link: bool,
}

impl LinkConfig {
    pub fn new(rate_bits_per_s: u64, burst: Option<u64>, latency_ms: u32) -> Result<LinkConfig> {
        let burst_bytes = burst.unwrap_or((rate_bits_per_s / 8 / 1000).max(16 << 10));
        if burst_bytes < 2048 {
            bail!("--burst {burst_bytes} is smaller than a packet: use at least 2K");
        }
        if latency_ms == 0 {
            bail!("--latency-ms must be at least 1");
        }
        Ok(LinkConfig {
            rate_bits_per_s,
            burst_bytes,
            latency_ms,
            shared_link: false,
        })
    }

    /// Bytes per second of one direction.
    pub fn bytes_per_s(&self) -> u64 {
        self.rate_bits_per_s / 8
    }

    pub fn to_json(&self) -> Value {
        json!({
            "qdisc": "tbf",
            "migration_ports_queue": "pfifo_fast under tbf (strict priority; the fault connection has SO_PRIORITY 6)",
            "rate_bits_per_s": self.rate_bits_per_s,
            "burst_bytes": self.burst_bytes,
            "latency_ms": self.latency_ms,
            "shared_link": self.shared_link,
        })
    }
}

impl std::fmt::Display for LinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tbf rate {} burst {} B latency {} ms, each direction{}",
            show_rate(self.rate_bits_per_s),
            self.burst_bytes,
            self.latency_ms,
            if self.shared_link {
                ", one port per host shared by migration and VM traffic"
            } else {
                ""
            }
        )
    }
}

/// The testbed, up while this guard lives; dropping it tears it down.
pub struct Testbed {
    armed: bool,
    /// Released after the teardown in `drop` (fields drop after `drop`).
    _lock: TestbedLock,
}

impl Testbed {
    /// Removes leftovers, then creates the namespaces and the shaped link.
    /// On failure whatever was created is removed again.
    pub fn up(link: &LinkConfig) -> Result<Testbed> {
        let lock = TestbedLock::acquire()?;
        teardown().context("cannot remove an earlier testbed")?;
        let testbed = Testbed {
            armed: true,
            _lock: lock,
        };
        // On an error `testbed` is dropped here, which tears down.
        create(link)?;
        Ok(testbed)
    }

    /// A command that runs `program` inside `side`'s namespace.
    pub fn command(&self, side: Side, program: impl AsRef<std::ffi::OsStr>) -> Command {
        in_netns(side, program)
    }

    /// Tears down now, reporting errors (dropping does the same quietly).
    pub fn down(mut self) -> Result<()> {
        self.armed = false;
        teardown()
    }

    /// Keeps the testbed up after this guard (for `godwit testbed up`).
    fn leave_up(mut self) {
        self.armed = false;
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = teardown() {
                eprintln!("testbed: warning: teardown failed: {e:#}; run `godwit testbed down`");
            }
        }
    }
}

/// `ip netns exec NS program`: `ip` enters the namespace and then execs
/// `program` in the same process, so killing the child kills `program`.
pub fn in_netns(side: Side, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", side.netns()]).arg(program);
    c
}

fn create(link: &LinkConfig) -> Result<()> {
    for ns in NAMESPACES {
        ip(&["netns", "add", ns])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    if !link.shared_link {
        // Both ends are born inside their namespaces: nothing appears on the host.
        veth((SRC_NS, SRC_IF), (DST_NS, DST_IF))?;
        for side in [Side::Src, Side::Dst] {
            let (ns, dev) = (side.netns(), side.ifname());
            let cidr = format!("{}/{PREFIX_LEN}", side.addr());
            ip(&["-n", ns, "addr", "add", &cidr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            shape(ns, dev, link, Queue::Priority)?;
        }
    }
    create_vm_network(link)?;
    wait_links_up(&links_to_wait_for(link))
}

/// The VM network: the switch, each host's bridge with its TAP and its
/// shaped port to the switch, and the client.
fn create_vm_network(link: &LinkConfig) -> Result<()> {
    bridge(SW_NS, SW_BRIDGE)?;
    let owner = tap_owner().to_string();
    for side in [Side::Src, Side::Dst] {
        let ns = side.netns();
        bridge(ns, VM_BRIDGE)?;
        veth((ns, UPLINK), (SW_NS, side.switch_port()))?;
        attach(ns, UPLINK, VM_BRIDGE)?;
        attach(SW_NS, side.switch_port(), SW_BRIDGE)?;
        // The ports a migration crosses get the priority queue.
        let q = if link.shared_link {
            Queue::Priority
        } else {
            Queue::Fifo
        };
        shape(ns, UPLINK, link, q)?;
        shape(SW_NS, side.switch_port(), link, q)?;
        // Persistent, so it outlives the VMM that opens it; owned by the
        // user who runs the testbed, so that user's VMM may open it.
        ip(&[
            "-n", ns, "tuntap", "add", "dev", TAP, "mode", "tap", "user", &owner,
        ])?;
        attach(ns, TAP, VM_BRIDGE)?;
        if link.shared_link {
            // The host itself on its bridge: migrations take the same port.
            let cidr = format!("{}/{PREFIX_LEN}", side.addr());
            ip(&["-n", ns, "addr", "add", &cidr, "dev", VM_BRIDGE])?;
        }
    }
    veth((CLIENT_NS, CLIENT_IF), (SW_NS, CLIENT_PORT))?;
    attach(SW_NS, CLIENT_PORT, SW_BRIDGE)?;
    shape(SW_NS, CLIENT_PORT, link, Queue::Fifo)?;
    shape(CLIENT_NS, CLIENT_IF, link, Queue::Fifo)?;
    let cidr = format!("{CLIENT_ADDR}/{VM_PREFIX_LEN}");
    ip(&["-n", CLIENT_NS, "addr", "add", &cidr, "dev", CLIENT_IF])?;
    ip(&["-n", CLIENT_NS, "link", "set", CLIENT_IF, "up"])?;
    Ok(())
}

/// The user the TAPs belong to: whoever ran sudo, else this process's.
fn tap_owner() -> u32 {
    std::env::var("SUDO_UID")
        .ok()
        .and_then(|u| u.parse().ok())
        // SAFETY: geteuid has no preconditions.
        .unwrap_or_else(|| unsafe { libc::geteuid() })
}

/// A veth pair with each end born in its namespace.
fn veth(a: (&str, &str), b: (&str, &str)) -> Result<()> {
    ip(&[
        "link", "add", a.1, "netns", a.0, "type", "veth", "peer", "name", b.1, "netns", b.0,
    ])?;
    Ok(())
}

/// A bridge (no STP: ports forward at once), up.
fn bridge(ns: &str, name: &str) -> Result<()> {
    ip(&["-n", ns, "link", "add", name, "type", "bridge"])?;
    ip(&["-n", ns, "link", "set", name, "up"])?;
    Ok(())
}

/// Puts `dev` on `bridge` and brings it up.
fn attach(ns: &str, dev: &str, bridge: &str) -> Result<()> {
    ip(&["-n", ns, "link", "set", dev, "master", bridge, "up"])?;
    Ok(())
}

/// How a shaped port queues what waits for the shaper.
#[derive(Clone, Copy, PartialEq)]
enum Queue {
    /// One FIFO (tbf's own, bounded by its `latency`).
    Fifo,
    /// Strict priority by the packet's socket priority: tbf's queue is a
    /// `pfifo_fast` (three bands; `SO_PRIORITY` 6, the migration's fault
    /// connection, goes first), as a host NIC's traffic classes. Its bands
    /// hold `txqueuelen` packets: set to tbf's byte bound in MTU packets.
    Priority,
}

/// Shapes `dev`'s egress with tbf as `link` says, and checks it took.
fn shape(ns: &str, dev: &str, link: &LinkConfig, queue: Queue) -> Result<()> {
    let (rate, burst, latency) = (
        format!("{}bit", link.rate_bits_per_s),
        link.burst_bytes.to_string(),
        format!("{}ms", link.latency_ms),
    );
    tool(
        "tc",
        &[
            "-n", ns, "qdisc", "replace", "dev", dev, "root", "handle", "1:", "tbf", "rate", &rate,
            "burst", &burst, "latency", &latency,
        ],
    )?;
    if queue == Queue::Priority {
        let bytes = link.bytes_per_s() * link.latency_ms as u64 / 1000 + link.burst_bytes;
        let packets = (bytes / 1500).clamp(16, 10_000).to_string();
        ip(&["-n", ns, "link", "set", "dev", dev, "txqueuelen", &packets])?;
        tool(
            "tc",
            &[
                "-n",
                ns,
                "qdisc",
                "add",
                "dev",
                dev,
                "parent",
                "1:1",
                "handle",
                "10:",
                "pfifo_fast",
            ],
        )?;
    }
    let shown = tool("tc", &["-n", ns, "qdisc", "show", "dev", dev])?;
    if !shown.contains("tbf") || (queue == Queue::Priority && !shown.contains("pfifo_fast")) {
        bail!("tc did not install tbf on {dev} in {ns}: {shown}");
    }
    Ok(())
}

/// Every interface that must be UP before the testbed is: the links and
/// the bridges (the TAPs have no carrier until a VMM opens them).
fn links_to_wait_for(link: &LinkConfig) -> Vec<(&'static str, &'static str)> {
    let mut v = Vec::new();
    if !link.shared_link {
        v.extend([(SRC_NS, SRC_IF), (DST_NS, DST_IF)]);
    }
    for side in [Side::Src, Side::Dst] {
        v.extend([(side.netns(), UPLINK), (side.netns(), VM_BRIDGE)]);
        v.push((SW_NS, side.switch_port()));
    }
    v.extend([
        (SW_NS, CLIENT_PORT),
        (SW_NS, SW_BRIDGE),
        (CLIENT_NS, CLIENT_IF),
    ]);
    v
}

/// Waits (at most 5 s) until every interface of `links` reports
/// operational state UP, so the first connection does not race the carrier.
fn wait_links_up(links: &[(&str, &str)]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut down = Vec::new();
        for (ns, dev) in links {
            let out = ip(&["-n", ns, "-br", "link", "show", "dev", dev])?;
            let state = out.split_whitespace().nth(1).unwrap_or("?");
            if state != "UP" {
                down.push(format!("{dev} in {ns}: {state}"));
            }
        }
        if down.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("links did not come up within 5 s: {}", down.join(", "));
        }
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The testbed's namespaces that exist now.
pub fn namespaces() -> Result<Vec<String>> {
    let list = ip(&["netns", "list"])?;
    Ok(list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| NAMESPACES.contains(n))
        .map(String::from)
        .collect())
}

/// Removes every namespace (which removes the veths, bridges, TAPs and
/// qdiscs in them). Removing what is not there is not an error.
pub fn teardown() -> Result<()> {
    for ns in namespaces()? {
        // Explicitly, though the namespace takes them along: a TAP must not
        // outlive it in a namespace kept alive by a straggling process.
        if matches!(ns.as_str(), SRC_NS | DST_NS) && ip(&["-n", &ns, "link", "show", TAP]).is_ok() {
            ip(&["-n", &ns, "tuntap", "del", "dev", TAP, "mode", "tap"])?;
        }
        ip(&["netns", "del", &ns])?;
    }
    // A veth left in the host namespace by a half-finished setup.
    for ifname in [
        SRC_IF,
        DST_IF,
        UPLINK,
        CLIENT_IF,
        CLIENT_PORT,
        Side::Src.switch_port(),
        Side::Dst.switch_port(),
    ] {
        if ip(&["link", "show", ifname]).is_ok() {
            ip(&["link", "del", ifname])?;
        }
    }
    let left = namespaces()?;
    if !left.is_empty() {
        bail!(
            "namespaces still present after teardown: {}",
            left.join(", ")
        );
    }
    Ok(())
}

fn status() -> Result<i32> {
    let present = namespaces()?;
    if present.is_empty() {
        println!("testbed: down (no {} namespaces)", NAMESPACES.join(" / "));
        return Ok(0);
    }
    let complete = present.len() == NAMESPACES.len();
    println!(
        "testbed: {} ({})",
        if complete {
            "up"
        } else {
            "PARTIAL: run `godwit testbed up` or `down`"
        },
        present.join(", ")
    );
    for ns in NAMESPACES {
        if !present.iter().any(|p| p == ns) {
            continue;
        }
        println!("{ns}:");
        for line in ip(&["-n", ns, "-br", "addr", "show"])?.lines() {
            println!("  {line}");
        }
        let bridge = match ns {
            SW_NS => Some(SW_BRIDGE),
            SRC_NS | DST_NS => Some(VM_BRIDGE),
            _ => None,
        };
        if let Some(br) = bridge {
            match ip(&["-n", ns, "-br", "link", "show", "master", br]) {
                Ok(ports) => ports.lines().for_each(|l| println!("  {br} port: {l}")),
                Err(e) => println!("  no bridge {br}: {e:#}"),
            }
        }
        if matches!(ns, SRC_NS | DST_NS) {
            match ip(&["-n", ns, "-d", "link", "show", TAP]) {
                Ok(d) => {
                    let tun = d.lines().find(|l| l.trim_start().starts_with("tun "));
                    println!("  {TAP}: {}", tun.map_or("?", str::trim));
                }
                Err(_) => println!("  {TAP}: MISSING"),
            }
        }
        // Every shaped interface of the namespace.
        let devs = ip(&["-n", ns, "-br", "link", "show"])?;
        for dev in devs.lines().filter_map(|l| l.split_whitespace().next()) {
            let dev = dev.split('@').next().unwrap_or(dev);
            if let Ok(q) = tool("tc", &["-n", ns, "-s", "qdisc", "show", "dev", dev]) {
                if q.contains("tbf") {
                    q.lines().for_each(|l| println!("  {dev}: {l}"));
                }
            }
        }
    }
    Ok(0)
}

/// Bytes the source has sent on the migration link so far (its veth end's
/// counter: every frame, headers included, whatever the VMM's own count).
pub fn link_tx_bytes() -> Result<u64> {
    let out = ip(&["-n", SRC_NS, "-s", "-j", "link", "show", SRC_IF])?;
    let v: serde_json::Value =
        serde_json::from_str(&out).context("`ip -s -j link` printed no JSON")?;
    v[0]["stats64"]["tx"]["bytes"]
        .as_u64()
        .context("`ip -s -j link` gave no tx byte count for the migration link")
}

fn ip(args: &[&str]) -> Result<String> {
    tool("ip", args)
}

/// Runs a short tool, bounded by TOOL_TIMEOUT; its stdout, or an error with
/// its stderr.
fn tool(program: &str, args: &[&str]) -> Result<String> {
    let shown = format!("{program} {}", args.join(" "));
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut p = match Process::spawn(program, cmd) {
        Ok(p) => p,
        Err(e) => {
            return Err(e.context(format!(
                "cannot run `{shown}` (is iproute2 installed? `apt-get install iproute2`)"
            )))
        }
    };
    // Outputs are small (well under a pipe buffer), so read after the exit.
    let status = match p.wait_bounded(TOOL_TIMEOUT)? {
        Some(s) => s,
        None => bail!("`{shown}` did not finish within {TOOL_TIMEOUT:?}; killed it"),
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = p.child.stdout.take() {
        o.read_to_string(&mut out).ok();
    }
    if let Some(mut e) = p.child.stderr.take() {
        e.read_to_string(&mut err).ok();
    }
    if !status.success() {
        bail!("`{shown}` failed ({status}): {}", err.trim());
    }
    Ok(out)
}

/// An exclusive advisory lock on [`LOCK_PATH`], released on drop.
struct TestbedLock {
    _file: File,
}

impl TestbedLock {
    fn acquire() -> Result<TestbedLock> {
        let path = Path::new(LOCK_PATH);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open the testbed lock {}", path.display()))?;
        let deadline = Instant::now() + LOCK_WAIT;
        let mut said = false;
        loop {
            if file.try_lock().is_ok() {
                break;
            }
            let holder = std::fs::read_to_string(path).unwrap_or_default();
            if Instant::now() >= deadline {
                bail!(
                    "the testbed is in use by process {} (lock {}); waited {} s",
                    holder.trim(),
                    path.display(),
                    LOCK_WAIT.as_secs()
                );
            }
            if !said {
                eprintln!(
                    "testbed: waiting for process {} to release the testbed",
                    holder.trim()
                );
                said = true;
            }
            check_interrupted()?;
            std::thread::sleep(Duration::from_millis(100));
        }
        file.set_len(0).ok();
        writeln!(file, "{}", std::process::id()).ok();
        Ok(TestbedLock { _file: file })
    }
}

// ---------------------------------------------------------------------------
// Interrupts and child processes (used by the bench too)

/// Set by SIGINT/SIGTERM; every wait loop polls it.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns Ctrl-C / SIGTERM into an error at the next wait, so the guards
/// stop the children and tear the testbed down. Further signals change
/// nothing: wrappers such as `timeout` forward a Ctrl-C the process already
/// got, and every wait and cleanup step is bounded anyway.
pub fn catch_interrupts() {
    let handler = on_signal as extern "C" fn(libc::c_int) as *const () as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted (Ctrl-C or SIGTERM): stopping children and cleaning up");
    }
    Ok(())
}

/// A child process in its own process group, killed (with everything it
/// started) when dropped. Children do not see the terminal's Ctrl-C: we
/// decide when they stop. They die with us if we die (`PR_SET_PDEATHSIG`,
/// which fires when the spawning *thread* ends: spawn from the main thread).
pub struct Process {
    pub name: String,
    pub child: Child,
}

impl Process {
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Process> {
        // SAFETY: setpgid and prctl are async-signal-safe; nothing else runs
        // in the child before exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setpgid(0, 0) == -1
                    || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(Process {
            name: name.to_string(),
            child,
        })
    }

    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .with_context(|| format!("cannot wait for {}", self.name))
    }

    /// Waits up to `timeout` for the exit; None if it still runs. Fails at
    /// once on Ctrl-C.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        self.wait_until(Instant::now() + timeout, true)
    }

    /// Like `wait_timeout`, but deaf to Ctrl-C: for the short tools that
    /// clean up after one.
    fn wait_bounded(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        self.wait_until(Instant::now() + timeout, false)
    }

    fn wait_until(&mut self, deadline: Instant, interruptible: bool) -> Result<Option<ExitStatus>> {
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(Some(s));
            }
            if interruptible {
                check_interrupted()?;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(20)));
        }
    }

    /// SIGKILLs the process group and reaps the child (waits at most 5 s).
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(s)) = self.child.try_wait() {
            return Some(s);
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signals our own child's process group (pgid = its pid).
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        let _ = self.child.kill();
        for _ in 0..250 {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "warning: {} (pid {pid}) did not die after SIGKILL",
            self.name
        );
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// Measuring the link

/// Up, one probe from src to dst, down. Returns the probe's figures plus the
/// link's configuration.
fn measure(link: &LinkConfig, bulk_mb: u64, rr: u32) -> Result<Value> {
    let exe = std::env::current_exe().context("cannot find the godwit executable")?;
    let testbed = Testbed::up(link)?;
    eprintln!("testbed: up, {link}; probing {DST_ADDR}:{PROBE_PORT} from {SRC_NS}");
    let to = format!("{DST_ADDR}:{PROBE_PORT}");
    let mut recv = testbed.command(Side::Dst, &exe);
    recv.args(["testbed", "probe-recv", "--listen", &to, "--timeout", "600"])
        .stdin(Stdio::null());
    let mut recv = Process::spawn("probe-recv", recv)?;
    let mut send = testbed.command(Side::Src, &exe);
    send.args(["testbed", "probe-send", "--to", &to])
        .args(["--bulk-mb", &bulk_mb.to_string(), "--rr", &rr.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut send = Process::spawn("probe-send", send)?;
    // At 8 kbit/s... nobody does that; allow for slow links generously.
    let bound = Duration::from_secs(60)
        + Duration::from_secs_f64((bulk_mb << 20) as f64 * 8.0 / link.rate_bits_per_s as f64 * 3.0);
    let status = send
        .wait_timeout(bound)?
        .with_context(|| format!("probe-send did not finish within {bound:?}"))?;
    let mut out = String::new();
    if let Some(mut o) = send.child.stdout.take() {
        o.read_to_string(&mut out).ok();
    }
    if !status.success() {
        bail!("probe-send failed ({status})");
    }
    let mut figures: Value = serde_json::from_str(out.trim())
        .with_context(|| format!("probe-send printed no JSON: {out}"))?;
    recv.wait_timeout(Duration::from_secs(10))?;
    drop(recv);
    testbed.down()?;
    eprintln!("testbed: down");
    if let Some(bits) = figures["bulk_bits_per_s"].as_f64() {
        figures["bulk_fraction_of_rate"] = json!(bits / link.rate_bits_per_s as f64);
        eprintln!(
            "testbed: bulk {:.1} Mbit/s ({:.1} MB/s, {:.1}% of the tbf rate); 4 KiB request/response p50 {:.0} µs, p99 {:.0} µs",
            bits / 1e6,
            bits / 8e6,
            bits / link.rate_bits_per_s as f64 * 100.0,
            figures["rr_us_p50"].as_f64().unwrap_or(f64::NAN),
            figures["rr_us_p99"].as_f64().unwrap_or(f64::NAN),
        );
    }
    figures["link"] = link.to_json();
    Ok(figures)
}

/// Connection kinds of the probe (first byte the sender writes).
const PROBE_BULK: u8 = b'B';
const PROBE_RR: u8 = b'R';

fn probe_recv(args: &ProbeRecvArgs) -> Result<()> {
    let listener = TcpListener::bind(args.listen)
        .with_context(|| format!("probe-recv: cannot listen on {}", args.listen))?;
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut served = 0;
    while served < args.connections {
        check_interrupted()?;
        if Instant::now() >= deadline {
            bail!(
                "probe-recv: only {served} of {} connections within {} s",
                args.connections,
                args.timeout
            );
        }
        match listener.accept() {
            Ok((stream, _)) => {
                serve_probe(stream)?;
                served += 1;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(e).context("probe-recv: accept failed"),
        }
    }
    Ok(())
}

fn serve_probe(mut s: TcpStream) -> Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut kind = [0u8];
    s.read_exact(&mut kind)
        .context("probe-recv: no connection kind")?;
    match kind[0] {
        PROBE_BULK => {
            let mut buf = vec![0u8; 1 << 20];
            let mut total: u64 = 0;
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e).context("probe-recv: bulk read failed"),
                }
            }
            s.write_all(&total.to_le_bytes())?;
        }
        PROBE_RR => {
            s.set_nodelay(true)?;
            let mut buf = [0u8; RR_BYTES];
            loop {
                match s.read_exact(&mut buf) {
                    Ok(()) => s.write_all(&buf)?,
                    Err(e) if e.kind() == ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e).context("probe-recv: request read failed"),
                }
            }
        }
        k => bail!("probe-recv: unknown connection kind {k}"),
    }
    Ok(())
}

/// Connects, retrying for up to 10 s while the receiver starts.
fn connect_retrying(to: SocketAddr) -> Result<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect_timeout(&to, Duration::from_secs(5)) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                s.set_write_timeout(Some(Duration::from_secs(30)))?;
                return Ok(s);
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).with_context(|| format!("probe-send: cannot connect to {to}")),
        }
    }
}

fn probe_send(args: &ProbeSendArgs) -> Result<Value> {
    let mut figures = json!({ "to": args.to.to_string() });
    if args.bulk_mb > 0 {
        let bytes = args.bulk_mb << 20;
        let mut s = connect_retrying(args.to)?;
        let chunk = vec![0x5au8; 256 << 10];
        let started = Instant::now();
        s.write_all(&[PROBE_BULK])?;
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            s.write_all(&chunk[..n])
                .context("probe-send: bulk write failed")?;
            left -= n as u64;
        }
        s.shutdown(Shutdown::Write)?;
        let mut ack = [0u8; 8];
        s.read_exact(&mut ack)
            .context("probe-send: no byte count from the receiver")?;
        let secs = started.elapsed().as_secs_f64();
        let got = u64::from_le_bytes(ack);
        if got != bytes {
            bail!("probe-send: sent {bytes} bytes, the receiver counted {got}");
        }
        figures["bulk_bytes"] = json!(bytes);
        figures["bulk_s"] = json!(secs);
        figures["bulk_bits_per_s"] = json!(bytes as f64 * 8.0 / secs);
    }
    if args.rr > 0 {
        let mut s = connect_retrying(args.to)?;
        s.set_nodelay(true)?;
        s.write_all(&[PROBE_RR])?;
        let mut buf = [0x33u8; RR_BYTES];
        let warmup = 50;
        let mut us = Vec::with_capacity(args.rr as usize);
        for i in 0..warmup + args.rr {
            let t = Instant::now();
            s.write_all(&buf)?;
            s.read_exact(&mut buf)
                .context("probe-send: no response from the receiver")?;
            if i >= warmup {
                us.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
        s.shutdown(Shutdown::Write)?;
        us.sort_by(f64::total_cmp);
        figures["rr_count"] = json!(us.len());
        figures["rr_bytes"] = json!(RR_BYTES);
        figures["rr_us_p50"] = json!(percentile(&us, 0.50));
        figures["rr_us_p99"] = json!(percentile(&us, 0.99));
        figures["rr_us_max"] = json!(us.last().copied().unwrap_or(0.0));
    }
    Ok(figures)
}

pub use crate::stats::percentile;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("1gbit"), Ok(1_000_000_000));
        assert_eq!(parse_rate("1Gbit"), Ok(1_000_000_000));
        assert_eq!(parse_rate("100mbit"), Ok(100_000_000));
        assert_eq!(parse_rate("2.5gbit"), Ok(2_500_000_000));
        assert_eq!(parse_rate("500kbit"), Ok(500_000));
        assert_eq!(parse_rate("125000000"), Ok(125_000_000));
        assert!(parse_rate("1gbps").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("1bit").is_err());
        assert_eq!(show_rate(1_000_000_000), "1 Gbit/s");
        assert_eq!(show_rate(2_500_000_000), "2.5 Gbit/s");
        assert_eq!(show_rate(100_000_000), "100 Mbit/s");
    }

    #[test]
    fn link_defaults_and_netem_refusal() {
        let l = LinkConfig::new(1_000_000_000, None, 5).unwrap();
        assert_eq!(l.burst_bytes, 125_000);
        assert_eq!(l.bytes_per_s(), 125_000_000);
        let slow = LinkConfig::new(10_000_000, None, 5).unwrap();
        assert_eq!(slow.burst_bytes, 16 << 10);
        let args = LinkArgs {
            rate: 1_000_000_000,
            burst: None,
            latency_ms: 5,
            delay: Some("10ms".into()),
            loss: None,
            shared_link: false,
        };
        let e = args.config().unwrap_err().to_string();
        assert!(e.contains("netem"), "{e}");
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert!(percentile(&[], 0.5).is_nan());
    }
}
