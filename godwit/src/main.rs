//! `godwit`: the command line of the Godwit VMM.

mod guest_image;
mod size;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use godwit_machine::{Vm, VmConfig};
use std::io::Read;
use std::path::PathBuf;

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
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Kernel `Image` (default: the built guest image, see guest/build.sh).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs (default: the built guest image).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Guest RAM size: bytes, or with a K/M/G suffix (512M, 1G).
    #[arg(long, default_value = "512M", value_parser = size::parse_size)]
    mem: u64,
    /// Guest workload (adds `godwit.workload=NAME` to the kernel command line).
    #[arg(long)]
    workload: Option<String>,
    /// Extra kernel command line words, e.g. "wws_mb=64 pages_per_s=0".
    #[arg(long, default_value = "")]
    append: String,
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run(args) => run(args),
    };
    match code {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("godwit: error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// The kernel command line every Godwit guest gets before the user's words.
const BASE_CMDLINE: &str = "console=ttyS0 earlycon=sbi";

fn cmdline(workload: Option<&str>, append: &str) -> String {
    let mut c = BASE_CMDLINE.to_string();
    if let Some(w) = workload {
        c.push_str(" godwit.workload=");
        c.push_str(w);
    }
    if !append.trim().is_empty() {
        c.push(' ');
        c.push_str(append.trim());
    }
    c
}

fn run(args: RunArgs) -> Result<i32> {
    let (kernel, initrd) = guest_image::resolve(args.kernel, args.initrd)?;
    let mut vm = Vm::new(VmConfig {
        kernel,
        initrd,
        mem_bytes: args.mem,
        cmdline: cmdline(args.workload.as_deref(), &args.append),
        console: Box::new(std::io::stdout()),
    })
    .context("cannot start the VM")?;
    let input = vm.input();
    std::thread::Builder::new()
        .name("console-in".into())
        .spawn(move || {
            let mut buf = [0u8; 256];
            let mut stdin = std::io::stdin();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 {
                    break;
                }
                input.push(&buf[..n]);
            }
        })
        .context("cannot start the console input thread")?;
    let exit = vm.run();
    eprintln!("godwit: guest ended: {exit:?}");
    Ok(exit.status())
}
