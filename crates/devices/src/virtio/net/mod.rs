//! virtio-net (device ID 1) as Linux's `virtio_net.c` drives it, on a host
//! backend that carries whole Ethernet frames with their virtio-net header
//! (a TAP device opened with `IFF_VNET_HDR`, see `godwit-machine`'s `tap`).
//!
//! Offered: VERSION_1, MAC, STATUS (link up), MRG_RXBUF, CTRL_VQ (rx mode
//! and MAC commands are accepted; the device does not filter, like a TAP
//! on a bridge), GUEST_ANNOUNCE, and — unless turned off — the checksum
//! and TSO offloads (CSUM, GUEST_CSUM, HOST_TSO4/6, GUEST_TSO4/6), which
//! the TAP carries in the header, so large segments cross the host once.
//!
//! Queues: 0 receive, 1 transmit, 2 control. Everything runs on the
//! device's event thread:
//!
//! - **Transmit**: every chain the guest made available is one frame
//!   (header + data, device-readable); it is written to the backend whole,
//!   then returned. A malformed chain (too short, device-writable buffers,
//!   longer than 64 KiB + header) is dropped and counted, never sent.
//! - **Receive**: while the backend has frames and the guest has buffers,
//!   each frame goes into one buffer or, with MRG_RXBUF, as many as it
//!   takes (`num_buffers` in the header). A frame read when no buffer is
//!   left is held (one at most) and the backend is not polled until the
//!   guest adds buffers, so a guest that never refills its receive queue
//!   costs no host CPU and loses nothing but what the backend drops.
//! - **Announce**: [`Net::announce`] sets `VIRTIO_NET_S_ANNOUNCE` and raises
//!   a configuration change; the guest sends its gratuitous ARPs and acks
//!   with `VIRTIO_NET_CTRL_ANNOUNCE_ACK`. The VMM also sends RARP frames
//!   for the MAC itself ([`rarp_frame`]), as QEMU's announce-self does.
//!
//! The device's state ([`state::NetState`]) holds the MAC, the features,
//! the status and a held frame, so a migration loses no frame the device
//! had taken from the host.

mod device;
mod state;
#[cfg(test)]
mod tests;

pub use device::*;
pub use state::*;
