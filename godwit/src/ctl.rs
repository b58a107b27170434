//! `godwit ctl`: send one command to a running VM's control socket and print
//! the reply as JSON (the command line twin of a QMP client).

use anyhow::{bail, Context, Result};
use godwit_vmm::control::ControlClient;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// The VM's control socket (`godwit run --control PATH`).
    socket: PathBuf,
    /// Command name: query-status, stop, cont, snapshot, balloon,
    /// query-balloon, quit.
    command: String,
    /// Arguments as a JSON object, e.g. '{"path": "/tmp/vm.snap"}'.
    arguments: Option<String>,
    /// Give up waiting for the reply after this many seconds (0: wait).
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

pub fn run(args: Args) -> Result<i32> {
    let arguments = match &args.arguments {
        None => Value::Null,
        Some(text) => {
            let v: Value = serde_json::from_str(text)
                .with_context(|| format!("the arguments are not valid JSON: {text}"))?;
            if !v.is_object() {
                bail!("the arguments must be a JSON object, e.g. '{{\"path\": \"vm.snap\"}}'");
            }
            v
        }
    };
    let mut client = ControlClient::connect(&args.socket)?;
    let timeout = (args.timeout > 0).then(|| Duration::from_secs(args.timeout));
    client.set_timeout(timeout)?;
    let reply = client.execute(&args.command, arguments)?;
    println!("{reply}");
    Ok(0)
}
