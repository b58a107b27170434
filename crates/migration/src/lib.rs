//! Live migration engine for Godwit.
//!
//! Knows nothing about RISC-V: it sees guest RAM as a host mapping plus the
//! dirty log and the free-page map (`godwit-memory`), and the VM as
//! pause / resume / save-state / load-state.

pub mod prepaging;
pub mod uffd;
