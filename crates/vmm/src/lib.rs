//! The Godwit VMM as a library: everything between the command line and the
//! crates below it.
//!
//! - [`runner`]: run a VM in this process (boot or restore), with its
//!   console and control socket.
//! - [`control`]: the QMP-shaped control socket, server and client;
//!   [`commands`]: its commands, typed; [`vm_control`]: what they do to a VM.
//! - [`outgoing`] and [`incoming`]: the two sides of a live migration, the
//!   glue between a VM and the migration engine.
//! - [`console`]: the guest console as the VMM sees it (heartbeats with
//!   host timestamps, for the migration report).
//! - [`netdev`]: `--net`: NICs and their TAPs; [`drive`]: `--drive`:
//!   disks and their images.
//! - [`guest`]: the default guest image and kernel command line;
//!   [`size`]: parsing `512M`.

pub mod commands;
pub mod console;
pub mod control;
pub mod drive;
pub mod guest;
pub mod incoming;
pub mod netdev;
pub mod outgoing;
pub mod runner;
pub mod size;
pub mod vm_control;
