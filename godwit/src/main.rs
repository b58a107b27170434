//! `godwit`: the command line of the Godwit VMM.

mod ctl;
mod migrate;
mod receive;
mod run;
mod tlsgen;

use godwit_bench::{
    cpu as cpubench, debian as debianbench, migration as bench, netload, soak, testbed,
};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "godwit",
    version,
    about = "A RISC-V VMM built for live migration"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a VM and print its console; exits with the guest's status
    /// (0 powered off, 1 powered off with a failure, 3 asked for a reboot).
    Run(run::RunArgs),
    /// Compare with QEMU (TCG) on the same guest: boot time and CPU-bound
    /// throughput, alternating runs.
    BenchCpu(cpubench::Args),
    /// The Debian guest next to QEMU (TCG), same firmware, kernel, disk:
    /// boot time, fio in the guest, xz; table and JSON (root).
    BenchDebian(debianbench::Args),
    /// Wait for an incoming migration and run the VM it brings.
    Receive(receive::Args),
    /// Migrate a running VM (through its control socket) to a `receive`.
    Migrate(migrate::Args),
    /// Make a TLS identity (and a CA) for authenticated migration.
    TlsGen(tlsgen::Args),
    /// Send one command to a running VM's control socket; prints the reply.
    Ctl(ctl::Args),
    /// Two network namespaces joined by a veth link shaped with tbf (root).
    Testbed(testbed::Args),
    /// Migrate the same guest with every mode and strategy; table, JSON, plots.
    Bench(bench::Args),
    /// Load a guest's netserve (requests, a stream, ping); what its users felt.
    Netload(netload::Args),
    /// Migrate one VM back and forth on loopback N times, every mode and
    /// strategy, plain and TLS, checking it after every hop.
    Soak(soak::Args),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run(args) => run::run(args),
        Command::BenchCpu(args) => cpubench::run(args),
        Command::BenchDebian(args) => debianbench::run(args),
        Command::Ctl(args) => ctl::run(args),
        Command::TlsGen(args) => tlsgen::run(args),
        Command::Receive(args) => receive::run(args),
        Command::Migrate(args) => migrate::run(args),
        Command::Testbed(args) => testbed::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Netload(args) => netload::run(args),
        Command::Soak(args) => soak::run(args),
    };
    match code {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("godwit: error: {e:#}");
            std::process::exit(1);
        }
    }
}
