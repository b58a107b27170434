//! The migration wire protocol: a versioned handshake, then length-framed
//! messages over two TCP connections.
//!
//! ```text
//! frame   := len:u32le  type:u8  body[len-1]        (len <= MAX_FRAME)
//! page    := index:u32le kind:u8 [data: 4096 bytes if kind == DATA]
//! Pages   := count:u16le page*count crc32:u32le     (crc over all before it)
//! Packed  := codec:u8 raw_len:u32le data             (data unpacks to a Pages body)
//! ```
//!
//! A source that compresses (`Codec`) sends a page batch as `Packed` when
//! that is smaller; the destination unpacks it to the `Pages` body it
//! stands for, whose CRC then checks the pages end to end. Only the bulk
//! transfer is packed (pre-copy rounds, the stop-and-copy pass); a demand
//! reply never waits for a compressor.
//!
//! The source opens the **main** connection, then the **fault** connection,
//! each starting with `Hello` (same session id). The destination answers each
//! with `Accept` or `Refuse(reason)`; a refusal (protocol version, RAM size,
//! page size) reaches the source before the guest is paused. With bulk
//! channels (`Hello(main).bulk` = N), N bulk connections follow, each with
//! `Hello(Bulk(n))` answered `Accept`; they carry shares of the pre-copy
//! rounds' and the stop-and-copy pass's `Pages` (a page always on the same
//! one) and end with `BulkEnd` before `State` or `Switch` goes on main.
//!
//! ```text
//!  stop-and-copy / pre-copy                 post-copy / hybrid
//!  src                      dst             src                        dst
//!  Hello(main) ───────────▶                 Hello(main) ─────────────▶
//!            ◀─────────── Accept                       ◀───────────── Accept
//!  Hello(fault) ──────────▶                 Hello(fault) ────────────▶
//!            ◀─────────── Accept                       ◀───────────── Accept
//!  [pre-copy rounds, VM running]            [hybrid: pre-copy rounds]
//!  Pages ... RoundEnd(n) ─▶                 Pages ... RoundEnd(n) ───▶
//!  -- pause --                              -- pause --
//!  Pages (last dirty) ────▶                 Switch(state, pending map) ▶
//!  State(vm state) ───────▶                            ◀───────────── Ready
//!            ◀─────────── Ready             Go ──────────────────────▶  -- resume --
//!  Go ────────────────────▶ -- resume --    Pages (pushed) ──main────▶
//!            ◀─────────── Complete                    ◀──fault──────── Demand(page)
//!            ◀─────────── Report(json)      Pages (demand) ──fault───▶
//!                                           PushDone ────────────────▶
//!                                                      ◀───────────── Complete
//!                                                      ◀───────────── Report(json)
//! ```
//!
//! A post-copy protected by failover (`Protect` just before `Switch`) adds,
//! while the VM runs at the destination:
//!
//! ```text
//!                                ◀──main──── CkptPages ... CkptWrites ... Checkpoint(seq, released, state)   every interval
//!  CheckpointAck(seq) ──fault──▶                                   (also repeated as a heartbeat)
//!                                ◀──main──── Complete
//!  CheckpointAck(MAX) ──main───▶            the source will not resume the VM any more
//! ```
//!
//! Demand replies travel on their own connection, so they never wait behind
//! pushed pages in a socket buffer; the push connection is additionally paced
//! (`SO_MAX_PACING_RATE`) under the link rate so it never fills the link's
//! queue either. `Go` is the commit point: before it the source may resume
//! (cancel, error) and the destination discards what it got; after it only
//! the destination runs the guest.
//!
//! Decoding never trusts the peer: every length is bounded, every page index
//! is checked against the RAM size the handshake agreed on, and page batches
//! and the VM state carry a CRC-32 so a corruption is an error, not a guest
//! that silently runs on bad memory.

use std::io::{self, Read, Write};

/// Protocol version; both sides must speak exactly this one.
/// Version 2: the handshake carries the board description.
/// Version 3: `Frames` before `Go`.
/// Version 4: post-copy checkpoints back to the source (`Protect`,
/// `CkptPages`, `Checkpoint`, `CheckpointAck`).
/// Version 5: compressed page batches (`Packed`).
/// Version 6: bulk channels (`Hello::bulk`, `Channel::Bulk`, `BulkEnd`);
/// a checkpoint's disk writes (`CkptWrites`) and the epoch the destination
/// has on its disks (`Checkpoint::released`).
pub const VERSION: u32 = 6;

/// Most bulk connections beside the main one (`Params::channels` - 1).
pub const MAX_BULK: u8 = 15;
/// Handshake magic.
pub const MAGIC: [u8; 8] = *b"GODWITMG";
/// Guest page size on the wire.
pub const PAGE: usize = 4096;
/// Largest frame accepted (bytes after the length word).
pub const MAX_FRAME: usize = 64 << 20;
/// Most pages in one `Pages` frame.
pub const MAX_BATCH: usize = 256;

/// Page carries 4096 bytes of data.
pub const KIND_DATA: u8 = 0;
/// Page is all zeros; no data follows.
pub const KIND_ZERO: u8 = 1;

/// How the source compresses page batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// Pages as they are (zero pages are always sent as a header only).
    #[default]
    None,
    /// LZ4 block format (`lz4_flex`, pure Rust): fast, modest ratio.
    Lz4,
    /// Zstandard at level [`ZSTD_LEVEL`]: slower, better ratio.
    Zstd,
}

/// The zstd level the source packs with (1: the fastest regular level).
pub const ZSTD_LEVEL: i32 = 1;

impl Codec {
    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        }
    }
    fn byte(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Lz4 => 1,
            Codec::Zstd => 2,
        }
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Codec {
    type Err = String;
    fn from_str(s: &str) -> Result<Codec, String> {
        match s {
            "none" => Ok(Codec::None),
            "lz4" => Ok(Codec::Lz4),
            "zstd" => Ok(Codec::Zstd),
            _ => Err(format!("unknown compression {s:?} (none, lz4 or zstd)")),
        }
    }
}

/// Packs page batches for the wire with one codec (it keeps the zstd
/// context between batches).
pub enum Packer {
    None,
    Lz4,
    Zstd(Box<zstd::bulk::Compressor<'static>>),
}

impl Packer {
    pub fn new(codec: Codec) -> io::Result<Packer> {
        Ok(match codec {
            Codec::None => Packer::None,
            Codec::Lz4 => Packer::Lz4,
            Codec::Zstd => Packer::Zstd(Box::new(zstd::bulk::Compressor::new(ZSTD_LEVEL)?)),
        })
    }

    pub fn codec(&self) -> Codec {
        match self {
            Packer::None => Codec::None,
            Packer::Lz4 => Codec::Lz4,
            Packer::Zstd(_) => Codec::Zstd,
        }
    }

    /// The frame for `m`: a `Pages` batch packed when the codec makes it
    /// smaller, anything else (and a batch that does not shrink) as
    /// [`Msg::encode`] makes it. Also returns the plain frame's length.
    pub fn encode(&mut self, m: &Msg) -> io::Result<(Vec<u8>, usize)> {
        let plain = m.encode();
        let n = plain.len();
        if !matches!(m, Msg::Pages(_)) {
            return Ok((plain, n));
        }
        // The Pages body after the length word and the type byte.
        let raw = &plain[5..];
        let data = match self {
            Packer::None => return Ok((plain, n)),
            Packer::Lz4 => lz4_flex::block::compress(raw),
            Packer::Zstd(z) => z.compress(raw)?,
        };
        if data.len() + 5 >= raw.len() {
            return Ok((plain, n));
        }
        let mut b = Vec::with_capacity(10 + data.len());
        b.extend_from_slice(&((6 + data.len()) as u32).to_le_bytes());
        b.push(T_PAGES_PACKED);
        b.push(self.codec().byte());
        b.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        b.extend_from_slice(&data);
        Ok((b, n))
    }
}

/// Which connection a `Hello` opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    Main,
    Fault,
    /// Bulk connection `n` (0-based) of the pre-copy and stop-and-copy
    /// pages, beside the main one.
    Bulk(u8),
}

/// The handshake a source sends first on each connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub version: u32,
    pub channel: Channel,
    pub session: u64,
    pub ram_bytes: u64,
    pub page_size: u32,
    /// The board the VM runs on, as the VMM describes it (opaque to the
    /// engine: the destination's VMM compares it with its own).
    pub board: String,
    /// The migration mode's name, for the destination's log.
    pub mode: String,
    /// Reconnecting a post-copy whose link broke (same session).
    pub resume: bool,
    /// On the main connection: how many bulk connections follow the fault
    /// connection (0..=[`MAX_BULK`]).
    pub bulk: u8,
}

/// A guest's write to a disk, held at the destination for a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskWrite {
    /// The disk's virtio slot (the two boards are the same).
    pub slot: u16,
    /// Byte offset on the image.
    pub off: u64,
    pub op: DiskOp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskOp {
    Write(Vec<u8>),
    /// Discard (or write zeroes over) this many bytes.
    Discard(u64),
}

impl DiskWrite {
    /// Bytes it takes on the wire.
    pub fn wire_len(&self) -> usize {
        15 + match &self.op {
            DiskOp::Write(d) => 4 + d.len(),
            DiskOp::Discard(_) => 8,
        }
    }
}

/// Most bytes of disk writes in one `CkptWrites` frame (a single write
/// may be larger: it goes alone).
pub const MAX_WRITES_BYTES: usize = 4 << 20;

/// One page in a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    pub index: u32,
    /// `None`: a zero page.
    pub data: Option<Box<[u8; PAGE]>>,
}

/// Every message of the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    Hello(Hello),
    Accept,
    Refuse(String),
    Pages(Vec<Page>),
    RoundEnd(u32),
    /// Stop-and-copy / pre-copy: the VM state (encoded by the VMM).
    State(Vec<u8>),
    /// Post-copy: the VM state and the pages the destination must fetch
    /// (bitmap words); every other page is present or free.
    Switch {
        state: Vec<u8>,
        pending: Vec<u64>,
    },
    Ready,
    Go,
    Demand(Vec<u32>),
    PushDone,
    Complete,
    Report(String),
    Cancel(String),
    Error(String),
    /// Post-copy recovery: the pages the destination has (bitmap words).
    Resume(Vec<u64>),
    /// Just before `Go`: frames that reached the source's NICs after the
    /// VM paused (NIC ordinal, frame with its virtio-net header), for the
    /// destination to deliver to the guest before anything newer.
    Frames(Vec<(u16, Vec<u8>)>),
    /// Before `Switch`: protect the post-copy with checkpoints. The
    /// destination takes one every `interval_ms` and sends it back; it holds
    /// the VM's network output until the source has one that covers it, and
    /// stops the VM for good if it cannot reach the source for `fence_ms`
    /// (the source then resumes it from its last checkpoint).
    Protect {
        interval_ms: u32,
        fence_ms: u32,
    },
    /// Destination to source: pages the guest wrote at the destination,
    /// part of the checkpoint the next `Checkpoint` ends.
    CkptPages(Vec<Page>),
    /// Destination to source: the disk writes the guest made since the
    /// checkpoint before (after a broken link: since the last confirmed
    /// one), in order, part of the checkpoint the next `Checkpoint` ends.
    CkptWrites(Vec<DiskWrite>),
    /// Destination to source: ends checkpoint `seq` (the VM state taken in
    /// the same pause as its pages). Every disk write of the checkpoints up
    /// to `released` is on the images (flushed).
    Checkpoint {
        seq: u64,
        released: u64,
        state: Vec<u8>,
    },
    /// Source to destination: checkpoint `seq` is complete at the source.
    CheckpointAck(u64),
    /// On a bulk connection: its last message (every page it carried is
    /// sent before it).
    BulkEnd,
}

/// A decoding error: the peer sent something this side cannot accept.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    #[error("the peer closed the connection")]
    Closed,
    #[error("malformed message from the peer: {0}")]
    Malformed(String),
}

fn bad<T>(why: impl Into<String>) -> Result<T, WireError> {
    Err(WireError::Malformed(why.into()))
}

const T_HELLO: u8 = 1;
const T_ACCEPT: u8 = 2;
const T_REFUSE: u8 = 3;
const T_PAGES: u8 = 4;
const T_ROUND_END: u8 = 5;
const T_STATE: u8 = 6;
const T_SWITCH: u8 = 7;
const T_READY: u8 = 8;
const T_GO: u8 = 9;
const T_DEMAND: u8 = 10;
const T_PUSH_DONE: u8 = 11;
const T_COMPLETE: u8 = 12;
const T_REPORT: u8 = 13;
const T_CANCEL: u8 = 14;
const T_ERROR: u8 = 15;
const T_RESUME: u8 = 16;
const T_FRAMES: u8 = 17;
const T_PROTECT: u8 = 18;
const T_CKPT_PAGES: u8 = 19;
const T_CHECKPOINT: u8 = 20;
const T_CHECKPOINT_ACK: u8 = 21;
const T_PAGES_PACKED: u8 = 22;
const T_BULK_END: u8 = 23;
const T_CKPT_WRITES: u8 = 24;

/// Largest unpacked body of a `Packed` batch: a full batch of data pages.
/// A packed batch costs at most this much memory to unpack, whatever its
/// size on the wire (zstd shrinks a batch of uniform pages a thousandfold).
pub const MAX_PACKED_RAW: usize = 2 + MAX_BATCH * (5 + PAGE) + 4;

/// Most frames in one `Frames` message.
pub const MAX_FRAMES: usize = 8192;
/// Longest frame in a `Frames` message (a TSO segment and its header).
pub const MAX_NET_FRAME: usize = 65_562;

/// Longest string (reason, report) accepted.
const MAX_TEXT: usize = 1 << 20;

impl Msg {
    /// Encodes the message as one frame, length word included.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0, 0, 0, 0];
        match self {
            Msg::Hello(h) => {
                b.push(T_HELLO);
                b.extend_from_slice(&MAGIC);
                b.extend_from_slice(&h.version.to_le_bytes());
                b.push(match h.channel {
                    Channel::Main => 0,
                    Channel::Fault => 1,
                    Channel::Bulk(n) => 2u8.saturating_add(n),
                });
                b.extend_from_slice(&h.session.to_le_bytes());
                b.extend_from_slice(&h.ram_bytes.to_le_bytes());
                b.extend_from_slice(&h.page_size.to_le_bytes());
                put_text(&mut b, &h.board);
                put_text(&mut b, &h.mode);
                b.push(h.resume as u8);
                b.push(h.bulk);
            }
            Msg::Accept => b.push(T_ACCEPT),
            Msg::Refuse(s) => {
                b.push(T_REFUSE);
                put_text(&mut b, s);
            }
            Msg::Pages(pages) | Msg::CkptPages(pages) => {
                debug_assert!(
                    pages.len() <= MAX_BATCH,
                    "batch larger than the protocol allows"
                );
                b.push(if matches!(self, Msg::Pages(_)) {
                    T_PAGES
                } else {
                    T_CKPT_PAGES
                });
                let start = b.len();
                b.extend_from_slice(&(pages.len() as u16).to_le_bytes());
                for p in pages {
                    b.extend_from_slice(&p.index.to_le_bytes());
                    match &p.data {
                        Some(d) => {
                            b.push(KIND_DATA);
                            b.extend_from_slice(&d[..]);
                        }
                        None => b.push(KIND_ZERO),
                    }
                }
                let crc = crc32fast::hash(&b[start..]);
                b.extend_from_slice(&crc.to_le_bytes());
            }
            Msg::RoundEnd(n) => {
                b.push(T_ROUND_END);
                b.extend_from_slice(&n.to_le_bytes());
            }
            Msg::State(state) => {
                b.push(T_STATE);
                b.extend_from_slice(&crc32fast::hash(state).to_le_bytes());
                b.extend_from_slice(state);
            }
            Msg::Switch { state, pending } => {
                b.push(T_SWITCH);
                let start = b.len();
                b.extend_from_slice(&(state.len() as u32).to_le_bytes());
                b.extend_from_slice(state);
                for w in pending {
                    b.extend_from_slice(&w.to_le_bytes());
                }
                let crc = crc32fast::hash(&b[start..]);
                b.extend_from_slice(&crc.to_le_bytes());
            }
            Msg::Ready => b.push(T_READY),
            Msg::Go => b.push(T_GO),
            Msg::Demand(pages) => {
                b.push(T_DEMAND);
                b.extend_from_slice(&(pages.len() as u16).to_le_bytes());
                for p in pages {
                    b.extend_from_slice(&p.to_le_bytes());
                }
            }
            Msg::PushDone => b.push(T_PUSH_DONE),
            Msg::BulkEnd => b.push(T_BULK_END),
            Msg::Complete => b.push(T_COMPLETE),
            Msg::Report(s) => {
                b.push(T_REPORT);
                put_text(&mut b, s);
            }
            Msg::Cancel(s) => {
                b.push(T_CANCEL);
                put_text(&mut b, s);
            }
            Msg::Error(s) => {
                b.push(T_ERROR);
                put_text(&mut b, s);
            }
            Msg::Resume(words) => {
                b.push(T_RESUME);
                let start = b.len();
                for w in words {
                    b.extend_from_slice(&w.to_le_bytes());
                }
                let crc = crc32fast::hash(&b[start..]);
                b.extend_from_slice(&crc.to_le_bytes());
            }
            Msg::Frames(frames) => {
                b.push(T_FRAMES);
                let start = b.len();
                b.extend_from_slice(&(frames.len() as u16).to_le_bytes());
                for (nic, f) in frames {
                    b.extend_from_slice(&nic.to_le_bytes());
                    b.extend_from_slice(&(f.len() as u32).to_le_bytes());
                    b.extend_from_slice(f);
                }
                let crc = crc32fast::hash(&b[start..]);
                b.extend_from_slice(&crc.to_le_bytes());
            }
            Msg::Protect {
                interval_ms,
                fence_ms,
            } => {
                b.push(T_PROTECT);
                b.extend_from_slice(&interval_ms.to_le_bytes());
                b.extend_from_slice(&fence_ms.to_le_bytes());
            }
            Msg::Checkpoint {
                seq,
                released,
                state,
            } => {
                b.push(T_CHECKPOINT);
                b.extend_from_slice(&seq.to_le_bytes());
                b.extend_from_slice(&released.to_le_bytes());
                let mut h = crc32fast::Hasher::new();
                h.update(&seq.to_le_bytes());
                h.update(&released.to_le_bytes());
                h.update(state);
                b.extend_from_slice(&h.finalize().to_le_bytes());
                b.extend_from_slice(state);
            }
            Msg::CkptWrites(list) => {
                b.push(T_CKPT_WRITES);
                let start = b.len();
                b.extend_from_slice(&(list.len() as u32).to_le_bytes());
                for w in list {
                    b.extend_from_slice(&w.slot.to_le_bytes());
                    b.extend_from_slice(&w.off.to_le_bytes());
                    match &w.op {
                        DiskOp::Write(d) => {
                            b.push(0);
                            b.extend_from_slice(&(d.len() as u32).to_le_bytes());
                            b.extend_from_slice(d);
                        }
                        DiskOp::Discard(len) => {
                            b.push(1);
                            b.extend_from_slice(&len.to_le_bytes());
                        }
                    }
                }
                let crc = crc32fast::hash(&b[start..]);
                b.extend_from_slice(&crc.to_le_bytes());
            }
            Msg::CheckpointAck(seq) => {
                b.push(T_CHECKPOINT_ACK);
                b.extend_from_slice(&seq.to_le_bytes());
            }
        }
        let len = (b.len() - 4) as u32;
        b[..4].copy_from_slice(&len.to_le_bytes());
        b
    }

    /// Decodes one frame body (type byte first). `pages` is the RAM size in
    /// pages agreed in the handshake (0 before it): page indices and bitmap
    /// lengths are checked against it.
    pub fn decode(body: &[u8], pages: usize) -> Result<Msg, WireError> {
        let mut r = Reader { b: body, at: 0 };
        let t = r.u8()?;
        let msg = match t {
            T_HELLO => {
                if r.take(8)? != MAGIC {
                    return bad("not a Godwit migration stream (wrong magic)");
                }
                let version = r.u32()?;
                let channel = match r.u8()? {
                    0 => Channel::Main,
                    1 => Channel::Fault,
                    c if c - 2 < MAX_BULK => Channel::Bulk(c - 2),
                    c => return bad(format!("unknown channel {c}")),
                };
                Msg::Hello(Hello {
                    version,
                    channel,
                    session: r.u64()?,
                    ram_bytes: r.u64()?,
                    page_size: r.u32()?,
                    board: r.text()?,
                    mode: r.text()?,
                    resume: r.u8()? != 0,
                    bulk: match r.u8()? {
                        n if n <= MAX_BULK => n,
                        n => return bad(format!("{n} bulk connections (at most {MAX_BULK})")),
                    },
                })
            }
            T_ACCEPT => Msg::Accept,
            T_REFUSE => Msg::Refuse(r.text()?),
            T_PAGES | T_CKPT_PAGES => {
                let (out, used) = read_batch(&body[1..], pages)?;
                r.at += used;
                if t == T_PAGES {
                    Msg::Pages(out)
                } else {
                    Msg::CkptPages(out)
                }
            }
            T_PAGES_PACKED => {
                let codec = r.u8()?;
                let raw_len = r.u32()? as usize;
                if raw_len > MAX_PACKED_RAW {
                    return bad(format!(
                        "packed batch of {raw_len} bytes (most is {MAX_PACKED_RAW})"
                    ));
                }
                let data = r.rest();
                let raw = match codec {
                    1 => lz4_flex::block::decompress(data, raw_len)
                        .map_err(|e| WireError::Malformed(format!("bad LZ4 batch: {e}")))?,
                    2 => zstd::bulk::decompress(data, raw_len)
                        .map_err(|e| WireError::Malformed(format!("bad zstd batch: {e}")))?,
                    c => return bad(format!("unknown compression {c}")),
                };
                if raw.len() != raw_len {
                    return bad(format!(
                        "packed batch unpacks to {} bytes, not the {raw_len} announced",
                        raw.len()
                    ));
                }
                let (out, used) = read_batch(&raw, pages)?;
                if used != raw.len() {
                    return bad(format!(
                        "{} stray bytes in a packed batch",
                        raw.len() - used
                    ));
                }
                Msg::Pages(out)
            }
            T_PROTECT => Msg::Protect {
                interval_ms: r.u32()?,
                fence_ms: r.u32()?,
            },
            T_CHECKPOINT => {
                let seq = r.u64()?;
                let released = r.u64()?;
                let crc = r.u32()?;
                let state = r.rest().to_vec();
                let mut h = crc32fast::Hasher::new();
                h.update(&seq.to_le_bytes());
                h.update(&released.to_le_bytes());
                h.update(&state);
                if h.finalize() != crc {
                    return bad("checkpoint checksum mismatch (corrupted in transit)");
                }
                Msg::Checkpoint {
                    seq,
                    released,
                    state,
                }
            }
            T_CKPT_WRITES => {
                let start = r.at;
                let n = r.u32()? as usize;
                // At least 15 bytes a write: room for what the bytes left
                // can hold, not for what the count claims.
                let mut list = Vec::with_capacity(n.min(r.left() / 15));
                for _ in 0..n {
                    let slot = r.u16()?;
                    let off = r.u64()?;
                    let op = match r.u8()? {
                        0 => {
                            let len = r.u32()? as usize;
                            DiskOp::Write(r.take(len)?.to_vec())
                        }
                        1 => DiskOp::Discard(r.u64()?),
                        k => return bad(format!("unknown disk operation {k}")),
                    };
                    list.push(DiskWrite { slot, off, op });
                }
                let covered = &body[start..r.at];
                let crc = r.u32()?;
                if crc32fast::hash(covered) != crc {
                    return bad("disk writes checksum mismatch (corrupted in transit)");
                }
                Msg::CkptWrites(list)
            }
            T_CHECKPOINT_ACK => Msg::CheckpointAck(r.u64()?),
            T_ROUND_END => Msg::RoundEnd(r.u32()?),
            T_STATE => {
                let crc = r.u32()?;
                let state = r.rest().to_vec();
                if crc32fast::hash(&state) != crc {
                    return bad("VM state checksum mismatch (corrupted in transit)");
                }
                Msg::State(state)
            }
            T_SWITCH => {
                let start = r.at;
                let len = r.u32()? as usize;
                let state = r.take(len)?.to_vec();
                let pending = r.words(pages.div_ceil(64))?;
                let covered = &body[start..r.at];
                let crc = r.u32()?;
                if crc32fast::hash(covered) != crc {
                    return bad("switch message checksum mismatch (corrupted in transit)");
                }
                if let Some(last) = pending.last() {
                    let tail = pages % 64;
                    if tail != 0 && last >> tail != 0 {
                        return bad("pending map names pages beyond the end of RAM");
                    }
                }
                Msg::Switch { state, pending }
            }
            T_READY => Msg::Ready,
            T_GO => Msg::Go,
            T_DEMAND => {
                let n = r.u16()? as usize;
                if n > MAX_BATCH {
                    return bad(format!("demand for {n} pages (most is {MAX_BATCH})"));
                }
                let mut out = Vec::with_capacity(n.min(r.left() / 4));
                for _ in 0..n {
                    let p = r.u32()?;
                    if p as usize >= pages {
                        return bad(format!("demand for page {p} outside RAM of {pages} pages"));
                    }
                    out.push(p);
                }
                Msg::Demand(out)
            }
            T_PUSH_DONE => Msg::PushDone,
            T_BULK_END => Msg::BulkEnd,
            T_COMPLETE => Msg::Complete,
            T_REPORT => Msg::Report(r.text()?),
            T_CANCEL => Msg::Cancel(r.text()?),
            T_ERROR => Msg::Error(r.text()?),
            T_RESUME => {
                let start = r.at;
                let words = r.words(pages.div_ceil(64))?;
                let covered = &body[start..r.at];
                let crc = r.u32()?;
                if crc32fast::hash(covered) != crc {
                    return bad("resume map checksum mismatch (corrupted in transit)");
                }
                if let Some(last) = words.last() {
                    let tail = pages % 64;
                    if tail != 0 && last >> tail != 0 {
                        return bad("resume map names pages beyond the end of RAM");
                    }
                }
                Msg::Resume(words)
            }
            T_FRAMES => {
                let start = r.at;
                let n = r.u16()? as usize;
                if n > MAX_FRAMES {
                    return bad(format!("{n} frames (most is {MAX_FRAMES})"));
                }
                // At least 6 bytes a frame (NIC, length): room for what the
                // bytes left can hold, not for what the count claims.
                let mut frames = Vec::with_capacity(n.min(r.left() / 6));
                for _ in 0..n {
                    let nic = r.u16()?;
                    let len = r.u32()? as usize;
                    if len > MAX_NET_FRAME {
                        return bad(format!("a frame of {len} bytes (most is {MAX_NET_FRAME})"));
                    }
                    frames.push((nic, r.take(len)?.to_vec()));
                }
                let covered = &body[start..r.at];
                let crc = r.u32()?;
                if crc32fast::hash(covered) != crc {
                    return bad("frames checksum mismatch (corrupted in transit)");
                }
                Msg::Frames(frames)
            }
            t => return bad(format!("unknown message type {t}")),
        };
        if r.at != body.len() {
            return bad(format!(
                "{} stray bytes after message type {t}",
                body.len() - r.at
            ));
        }
        Ok(msg)
    }

    /// A short name for error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Msg::Hello(_) => "Hello",
            Msg::Accept => "Accept",
            Msg::Refuse(_) => "Refuse",
            Msg::Pages(_) => "Pages",
            Msg::RoundEnd(_) => "RoundEnd",
            Msg::State(_) => "State",
            Msg::Switch { .. } => "Switch",
            Msg::Ready => "Ready",
            Msg::Go => "Go",
            Msg::Demand(_) => "Demand",
            Msg::PushDone => "PushDone",
            Msg::BulkEnd => "BulkEnd",
            Msg::Complete => "Complete",
            Msg::Report(_) => "Report",
            Msg::Cancel(_) => "Cancel",
            Msg::Error(_) => "Error",
            Msg::Resume(_) => "Resume",
            Msg::Frames(_) => "Frames",
            Msg::Protect { .. } => "Protect",
            Msg::CkptPages(_) => "CkptPages",
            Msg::Checkpoint { .. } => "Checkpoint",
            Msg::CkptWrites(_) => "CkptWrites",
            Msg::CheckpointAck(_) => "CheckpointAck",
        }
    }
}

/// A page batch body (count, pages, CRC) at the start of `b`; returns the
/// pages and the bytes it took.
fn read_batch(b: &[u8], pages: usize) -> Result<(Vec<Page>, usize), WireError> {
    let mut r = Reader { b, at: 0 };
    let n = r.u16()? as usize;
    if n > MAX_BATCH {
        return bad(format!("batch of {n} pages (most is {MAX_BATCH})"));
    }
    // Room for what the bytes left can hold (5 bytes a page at least), not
    // for what the count claims.
    let mut out = Vec::with_capacity(n.min(r.left() / 5));
    for _ in 0..n {
        let index = r.u32()?;
        if index as usize >= pages {
            return bad(format!("page {index} outside RAM of {pages} pages"));
        }
        let data = match r.u8()? {
            KIND_DATA => {
                let mut d = Box::new([0u8; PAGE]);
                d.copy_from_slice(r.take(PAGE)?);
                Some(d)
            }
            KIND_ZERO => None,
            k => return bad(format!("unknown page kind {k}")),
        };
        out.push(Page { index, data });
    }
    let covered = &b[..r.at];
    let crc = r.u32()?;
    if crc32fast::hash(covered) != crc {
        return bad("page batch checksum mismatch (corrupted in transit)");
    }
    Ok((out, r.at))
}

fn put_text(b: &mut Vec<u8>, s: &str) {
    // Longer texts are cut, at a character boundary so they still decode.
    let mut end = s.len().min(MAX_TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let s = &s.as_bytes()[..end];
    b.extend_from_slice(&(s.len() as u32).to_le_bytes());
    b.extend_from_slice(s);
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len());
        let Some(end) = end else {
            return bad(format!("message truncated (wanted {n} more bytes)"));
        };
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    /// Bytes not read yet.
    fn left(&self) -> usize {
        self.b.len() - self.at
    }
    fn rest(&mut self) -> &'a [u8] {
        let s = &self.b[self.at..];
        self.at = self.b.len();
        s
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        let mut a = [0u8; 2];
        a.copy_from_slice(self.take(2)?);
        Ok(u16::from_le_bytes(a))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    /// `n` little-endian u64 words; the bytes are checked before anything
    /// is allocated.
    fn words(&mut self, n: usize) -> Result<Vec<u64>, WireError> {
        let bytes = self.take(n.saturating_mul(8))?;
        Ok(bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect())
    }

    fn text(&mut self) -> Result<String, WireError> {
        let n = self.u32()? as usize;
        if n > MAX_TEXT {
            return bad(format!("text of {n} bytes (most is {MAX_TEXT})"));
        }
        String::from_utf8(self.take(n)?.to_vec()).or_else(|_| bad("text is not valid UTF-8"))
    }
}

/// Writes one message.
pub fn send(w: &mut impl Write, msg: &Msg) -> io::Result<()> {
    w.write_all(&msg.encode())
}

/// The first step [`recv`] reads a frame body in.
const READ_STEP: usize = 64 << 10;

/// Reads one frame and decodes it (see [`Msg::decode`] for `pages`).
pub fn recv(r: &mut impl Read, pages: usize) -> Result<Msg, WireError> {
    let mut len = [0u8; 4];
    if let Err(e) = r.read_exact(&mut len) {
        return Err(match e.kind() {
            io::ErrorKind::UnexpectedEof => WireError::Closed,
            _ => WireError::Io(e),
        });
    }
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return bad(format!("frame of {len} bytes (must be 1..={MAX_FRAME})"));
    }
    // The body is read in steps that at most double what already arrived,
    // so a peer that announces a large frame and sends little costs memory
    // in proportion to what it sent, not to what it announced.
    let mut body = Vec::new();
    while body.len() < len {
        let at = body.len();
        let step = (len - at).min(at.max(READ_STEP));
        body.resize(at + step, 0);
        r.read_exact(&mut body[at..]).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => WireError::Closed,
            _ => WireError::Io(e),
        })?;
    }
    Msg::decode(&body, pages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    /// Counts the bytes each thread asks the allocator for, so a test can
    /// check what decoding an input costs (tests run on their own threads).
    struct CountingAlloc;

    thread_local! {
        static ALLOCATED: Cell<usize> = const { Cell::new(0) };
    }

    fn count(n: usize) {
        let _ = ALLOCATED.try_with(|a| a.set(a.get().saturating_add(n)));
    }

    // SAFETY: every call is forwarded unchanged to the system allocator;
    // the counting touches only a const-initialised thread-local `Cell`,
    // which never allocates.
    unsafe impl GlobalAlloc for CountingAlloc {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count(layout.size());
            // SAFETY: the caller's obligations are System's.
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            count(layout.size());
            // SAFETY: as above.
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            count(new_size.saturating_sub(layout.size()));
            // SAFETY: as above.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: as above.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static COUNTING: CountingAlloc = CountingAlloc;

    /// `f`'s result and the bytes it allocated on this thread.
    fn allocated_by<T>(f: impl FnOnce() -> T) -> (T, usize) {
        let before = ALLOCATED.with(Cell::get);
        let out = f();
        (out, ALLOCATED.with(Cell::get) - before)
    }

    fn round_trip(m: Msg, pages: usize) {
        let bytes = m.encode();
        let got = recv(&mut &bytes[..], pages).expect("decodes");
        assert_eq!(got, m);
    }

    fn page(fill: u8) -> Option<Box<[u8; PAGE]>> {
        Some(Box::new([fill; PAGE]))
    }

    #[test]
    fn every_message_round_trips() {
        round_trip(
            Msg::Hello(Hello {
                version: VERSION,
                channel: Channel::Fault,
                session: 7,
                ram_bytes: 1 << 29,
                page_size: 4096,
                board: r#"{"harts":2}"#.into(),
                mode: "postcopy".into(),
                resume: false,
                bulk: 0,
            }),
            0,
        );
        for (channel, bulk) in [(Channel::Main, MAX_BULK), (Channel::Bulk(MAX_BULK - 1), 0)] {
            round_trip(
                Msg::Hello(Hello {
                    version: VERSION,
                    channel,
                    session: 7,
                    ram_bytes: 1 << 29,
                    page_size: 4096,
                    board: String::new(),
                    mode: "precopy".into(),
                    resume: false,
                    bulk,
                }),
                0,
            );
        }
        for m in [
            Msg::Accept,
            Msg::Refuse("no".into()),
            Msg::RoundEnd(3),
            Msg::State(vec![1, 2, 3]),
            Msg::Ready,
            Msg::Go,
            Msg::PushDone,
            Msg::BulkEnd,
            Msg::Complete,
            Msg::Report("{}".into()),
            Msg::Cancel("user".into()),
            Msg::Error("boom".into()),
            Msg::Demand(vec![0, 99]),
            Msg::Resume(vec![7, 1 << 35]),
            Msg::Frames(vec![]),
            Msg::Frames(vec![(0, vec![0; 12]), (3, vec![0xab; 1514])]),
            Msg::Protect {
                interval_ms: 50,
                fence_ms: 1000,
            },
            Msg::Checkpoint {
                seq: 7,
                released: 5,
                state: vec![9; 100],
            },
            Msg::CkptWrites(vec![]),
            Msg::CkptWrites(vec![
                DiskWrite {
                    slot: 2,
                    off: u64::MAX - 511,
                    op: DiskOp::Write(vec![1; 512]),
                },
                DiskWrite {
                    slot: 0,
                    off: 0,
                    op: DiskOp::Discard(1 << 40),
                },
            ]),
            Msg::CkptPages(vec![Page {
                index: 3,
                data: None,
            }]),
            Msg::CheckpointAck(u64::MAX),
        ] {
            round_trip(m, 100);
        }
        round_trip(
            Msg::Pages(vec![
                Page {
                    index: 0,
                    data: page(1),
                },
                Page {
                    index: 99,
                    data: None,
                },
            ]),
            100,
        );
        round_trip(
            Msg::Switch {
                state: vec![9; 10],
                pending: vec![u64::MAX, 0xf],
            },
            68,
        );
    }

    #[test]
    fn hostile_input_is_an_error_not_a_panic() {
        let pages = 16;
        // Page index out of range.
        let m = Msg::Pages(vec![Page {
            index: 16,
            data: None,
        }])
        .encode();
        assert!(recv(&mut &m[..], pages).is_err());
        // Corrupted page data.
        let mut m = Msg::Pages(vec![Page {
            index: 1,
            data: page(3),
        }])
        .encode();
        m[100] ^= 1;
        let e = recv(&mut &m[..], pages).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
        // Oversized and zero lengths.
        let huge = ((MAX_FRAME + 1) as u32).to_le_bytes();
        assert!(recv(&mut &huge[..], pages).is_err());
        assert!(recv(&mut &[0u8, 0, 0, 0][..], pages).is_err());
        // Truncated frames: every prefix of every message fails cleanly.
        let m = Msg::Switch {
            state: vec![1; 5],
            pending: vec![1],
        }
        .encode();
        for cut in 0..m.len() {
            assert!(recv(&mut &m[..cut], 64).is_err());
        }
        // Pending bits beyond the end of RAM.
        let m = Msg::Switch {
            state: vec![],
            pending: vec![1 << 20],
        }
        .encode();
        assert!(recv(&mut &m[..], 16).is_err());
        // Demand out of range, unknown type, stray bytes, wrong magic.
        assert!(recv(&mut &Msg::Demand(vec![16]).encode()[..], pages).is_err());
        assert!(Msg::decode(&[200], pages).is_err());
        assert!(Msg::decode(&[T_GO, 0], pages).is_err());
        let mut h = Msg::Hello(Hello {
            version: 1,
            channel: Channel::Main,
            session: 1,
            ram_bytes: 1,
            page_size: 1,
            board: String::new(),
            mode: String::new(),
            resume: true,
            bulk: 0,
        })
        .encode();
        // A channel beyond the bulk ones, more bulk connections than allowed.
        for (at, v) in [(17, 2 + MAX_BULK), (h.len() - 1, MAX_BULK + 1)] {
            let mut b = h.clone();
            b[at] = v;
            assert!(recv(&mut &b[..], 0).is_err(), "byte {at} = {v}");
        }
        h[5] = b'X';
        assert!(recv(&mut &h[..], 0).is_err());
        // Frames: too many, too long, corrupted, truncated.
        let mut b = vec![T_FRAMES];
        b.extend_from_slice(&((MAX_FRAMES + 1) as u16).to_le_bytes());
        let e = Msg::decode(&b, pages).unwrap_err().to_string();
        assert!(e.contains("frames"), "{e}");
        let mut b = vec![T_FRAMES, 1, 0, 0, 0];
        b.extend_from_slice(&((MAX_NET_FRAME + 1) as u32).to_le_bytes());
        let e = Msg::decode(&b, pages).unwrap_err().to_string();
        assert!(e.contains("bytes"), "{e}");
        let mut m = Msg::Frames(vec![(1, vec![7; 60])]).encode();
        m[20] ^= 1;
        let e = recv(&mut &m[..], pages).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
        let m = Msg::Frames(vec![(1, vec![7; 60]), (0, vec![1; 3])]).encode();
        for cut in 0..m.len() {
            assert!(recv(&mut &m[..cut], pages).is_err());
        }
    }

    /// Found by fuzzing (issue 18 §4; the `wire_recv` target's allocation
    /// meter flags it): a 9-byte input that announced a frame of
    /// `MAX_FRAME` bytes made `recv` allocate 64 MiB before reading any.
    #[test]
    fn recv_allocates_by_what_arrives_not_by_what_is_announced() {
        let mut m = (MAX_FRAME as u32).to_le_bytes().to_vec();
        m.extend([T_STATE, 0, 0, 0, 0]);
        let (got, bytes) = allocated_by(|| recv(&mut &m[..], 16));
        assert!(matches!(got, Err(WireError::Closed)), "{got:?}");
        assert!(
            bytes <= 2 * READ_STEP,
            "{bytes} bytes allocated for 9 received"
        );
        // Frames longer than a step still arrive whole.
        for len in [READ_STEP - 5, READ_STEP, 3 * READ_STEP + 7, (1 << 20) + 3] {
            let state: Vec<u8> = (0..len).map(|i| i as u8).collect();
            round_trip(Msg::State(state), 16);
        }
    }

    /// Found by fuzzing (issue 18 §4; target `wire_msg`): a `Frames` body
    /// of three bytes announcing 8192 frames reserved room for 8192 of
    /// them (256 KiB); `Pages` and `Demand` reserved by their counts too.
    #[test]
    fn counts_do_not_reserve_beyond_the_bytes_that_follow() {
        for t in [T_FRAMES, T_PAGES, T_DEMAND] {
            let n = if t == T_FRAMES { MAX_FRAMES } else { MAX_BATCH } as u16;
            let mut b = vec![t];
            b.extend_from_slice(&n.to_le_bytes());
            let (got, bytes) = allocated_by(|| Msg::decode(&b, 1024));
            assert!(got.is_err());
            assert!(
                bytes < 512,
                "type {t}: {bytes} bytes allocated for 3 received"
            );
        }
    }

    /// A batch of pages a compressor can shrink: text-like, with repeats.
    fn compressible_pages(n: usize) -> Vec<Page> {
        (0..n)
            .map(|i| {
                let mut d = Box::new([0u8; PAGE]);
                for (j, b) in d.iter_mut().enumerate() {
                    *b = b"godwit page "[(j + i) % 12] ^ ((j / 512) as u8);
                }
                Page {
                    index: (i * 3) as u32,
                    data: Some(d),
                }
            })
            .collect()
    }

    #[test]
    fn packed_batches_round_trip_and_shrink() {
        for codec in [Codec::Lz4, Codec::Zstd] {
            let mut packer = Packer::new(codec).unwrap();
            let mut pages = compressible_pages(64);
            pages.push(Page {
                index: 7,
                data: None,
            });
            let m = Msg::Pages(pages);
            let (frame, plain) = packer.encode(&m).unwrap();
            assert_eq!(plain, m.encode().len());
            assert_eq!(frame[4], T_PAGES_PACKED, "{codec}");
            assert!(
                frame.len() * 4 < plain,
                "{codec}: {} of {plain}",
                frame.len()
            );
            assert_eq!(recv(&mut &frame[..], 1024).unwrap(), m, "{codec}");
        }
    }

    #[test]
    fn what_does_not_shrink_goes_plain() {
        // Pseudo-random page contents do not compress.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let pages: Vec<Page> = (0..8)
            .map(|i| {
                let mut d = Box::new([0u8; PAGE]);
                for b in d.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
                Page {
                    index: i,
                    data: Some(d),
                }
            })
            .collect();
        let m = Msg::Pages(pages);
        for codec in [Codec::None, Codec::Lz4, Codec::Zstd] {
            let (frame, plain) = Packer::new(codec).unwrap().encode(&m).unwrap();
            assert_eq!(frame, m.encode(), "{codec}");
            assert_eq!(plain, frame.len());
        }
        // Only page batches are packed.
        let state = Msg::State(vec![0; 64 << 10]);
        let (frame, _) = Packer::new(Codec::Zstd).unwrap().encode(&state).unwrap();
        assert_eq!(frame, state.encode());
    }

    #[test]
    fn bad_packed_batches_are_errors() {
        let m = Msg::Pages(compressible_pages(16));
        let (good, _) = Packer::new(Codec::Lz4).unwrap().encode(&m).unwrap();
        let body = &good[4..];
        let decode = |b: &[u8]| Msg::decode(b, 1024);
        // Unknown codec, an announced size too large or not matching.
        let mut b = body.to_vec();
        b[1] = 9;
        assert!(decode(&b).is_err());
        let mut b = body.to_vec();
        b[2..6].copy_from_slice(&((MAX_PACKED_RAW + 1) as u32).to_le_bytes());
        assert!(decode(&b).is_err());
        let mut b = body.to_vec();
        let raw = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        b[2..6].copy_from_slice(&(raw + 1).to_le_bytes());
        assert!(decode(&b).is_err());
        b[2..6].copy_from_slice(&(raw - 1).to_le_bytes());
        assert!(decode(&b).is_err());
        // A flipped bit in the compressed data: the codec or the CRC of
        // the pages inside says so.
        for at in [8, body.len() / 2, body.len() - 1] {
            let mut b = body.to_vec();
            b[at] ^= 0x10;
            assert!(decode(&b).is_err(), "bit flipped at {at}");
        }
        // A page outside RAM inside a packed batch.
        assert!(Msg::decode(body, 16).is_err());
        // Tiny input announcing the most: bounded by MAX_PACKED_RAW.
        let mut b = vec![T_PAGES_PACKED, 2];
        b.extend_from_slice(&(MAX_PACKED_RAW as u32).to_le_bytes());
        b.extend_from_slice(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0]);
        let (got, bytes) = allocated_by(|| Msg::decode(&b, 1024));
        assert!(got.is_err());
        assert!(bytes <= MAX_PACKED_RAW + (64 << 10), "{bytes} bytes");
    }

    #[test]
    fn codecs_parse_by_name() {
        for c in [Codec::None, Codec::Lz4, Codec::Zstd] {
            assert_eq!(c.name().parse::<Codec>(), Ok(c));
        }
        assert!("gzip".parse::<Codec>().is_err());
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 64) as usize;
            let body: Vec<u8> = (0..len).map(|i| (x >> (i % 8 * 8)) as u8).collect();
            let _ = Msg::decode(&body, 1024);
        }
    }
}
