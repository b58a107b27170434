//! Godwit's benchmarks and the testbed they run on, as a library for the
//! `godwit` command (`godwit bench`, `bench-cpu`, `testbed`).
//!
//! - [`migration`]: the migration benchmark (`godwit bench`): every mode
//!   and pre-paging strategy on the same guest and link, QEMU beside it.
//! - [`cpu`]: boot time and CPU throughput next to QEMU (`godwit bench-cpu`),
//!   and the cost of dirty logging.
//! - [`debian`]: the Debian guest on Godwit next to QEMU (`godwit
//!   bench-debian`): boot time, fio in the guest, xz.
//! - [`qemu`]: driving QEMU (TCG) over QMP as the reference VMM.
//! - [`netload`]: load on a guest's netserve and what its users felt
//!   (answers lost or wrong, response times, client-observed downtime).
//! - [`testbed`]: two "hosts" in network namespaces joined by a shaped link.
//! - [`soak`]: one VM migrated back and forth many times, checked after
//!   every hop (`godwit soak`).
//! - [`stats`]: the statistics every table uses, defined once.

pub mod apps;
pub mod cpu;
pub mod debian;
pub mod migration;
pub mod netload;
pub mod qemu;
pub mod soak;
pub mod stats;
pub mod testbed;
