//! Property tests for the migration wire protocol (`godwit_migration::wire`):
//! every valid message round-trips exactly, streams decode in order, a cut
//! frame is an error, a flipped byte in a checksummed frame is caught, and
//! hostile bytes never panic nor yield a message that breaks the bounds.
//!
//! Bulk bytes (page data, the pending bitmap) come from a seeded xorshift so
//! a case stays cheap to generate; proptest drives the structure.

use std::io::{self, Read};

use godwit_migration::wire::{
    self, Channel, DiskOp, DiskWrite, Hello, Msg, Page, WireError, KIND_DATA, MAX_BATCH, MAX_FRAME,
    PAGE,
};
use proptest::collection::vec;
use proptest::prelude::*;

/// Mirrors the decoder's private bound on a text's length in bytes.
const MAX_TEXT: usize = 1 << 20;
/// Hello's last byte (`resume`) is the one byte the decoder reads
/// loosely (non-zero is `true`).
/// Largest RAM (in pages) for which `Switch` and `Resume` are generated:
/// their bitmaps are `pages / 8` bytes.
const SWITCH_MAX_PAGES: usize = 1 << 20;

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn fill_page(seed: u64, mode: u8) -> Box<[u8; PAGE]> {
    let mut d = Box::new([0u8; PAGE]);
    match mode {
        // An all-zero page sent as data must stay data, not become `None`.
        0 => {}
        1 => d.fill(0xff),
        _ => {
            let mut x = seed | 1;
            for chunk in d.chunks_mut(8) {
                chunk.copy_from_slice(&xorshift(&mut x).to_le_bytes());
            }
        }
    }
    d
}

/// A bitmap of `pages` bits with the tail beyond `pages` clear.
fn bitmap(pages: usize, seed: u64, density: u8) -> Vec<u64> {
    let mut x = seed | 1;
    let mut words: Vec<u64> = (0..pages.div_ceil(64))
        .map(|_| match density {
            0 => 0,
            1 => u64::MAX,
            _ => xorshift(&mut x),
        })
        .collect();
    if let Some(last) = words.last_mut() {
        if !pages.is_multiple_of(64) {
            *last &= (1u64 << (pages % 64)) - 1;
        }
    }
    words
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => vec(any::<char>(), 0..24),
        1 => vec(any::<char>(), 0..3000),
    ]
    .prop_map(String::from_iter)
}

fn page(pages: usize) -> impl Strategy<Value = Page> {
    let top = u32::try_from(pages - 1).unwrap_or(u32::MAX);
    let index = prop_oneof![0..=top, Just(top), Just(0)];
    let data = prop_oneof![
        3 => Just(None),
        1 => (any::<u64>(), 0u8..6).prop_map(|(s, m)| Some(fill_page(s, m))),
    ];
    (index, data).prop_map(|(index, data)| Page { index, data })
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        any::<u32>(),
        any::<bool>(),
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        text(),
        text(),
        any::<bool>(),
        (0u8..=16, 0u8..=wire::MAX_BULK),
    )
        .prop_map(
            |(version, fault, session, ram_bytes, page_size, board, mode, resume, (ch, bulk))| {
                Hello {
                    version,
                    channel: match (fault, ch) {
                        (true, _) => Channel::Fault,
                        (false, c) if c < wire::MAX_BULK => Channel::Bulk(c),
                        _ => Channel::Main,
                    },
                    session,
                    ram_bytes,
                    page_size,
                    board,
                    mode,
                    resume,
                    bulk,
                }
            },
        )
}

fn disk_write() -> impl Strategy<Value = DiskWrite> {
    (
        any::<u16>(),
        any::<u64>(),
        prop_oneof![
            vec(any::<u8>(), 0..1024).prop_map(DiskOp::Write),
            any::<u64>().prop_map(DiskOp::Discard),
        ],
    )
        .prop_map(|(slot, off, op)| DiskWrite { slot, off, op })
}

/// Any valid message for a RAM of `pages` pages.
fn msg(pages: usize) -> BoxedStrategy<Msg> {
    let batch = if pages == 0 {
        Just(Vec::new()).boxed()
    } else {
        prop_oneof![
            4 => vec(page(pages), 0..=8),
            1 => vec(page(pages), 0..=MAX_BATCH),
        ]
        .boxed()
    };
    let demand = if pages == 0 {
        Just(Vec::new()).boxed()
    } else {
        let top = u32::try_from(pages - 1).unwrap_or(u32::MAX);
        vec(prop_oneof![0..=top, Just(top)], 0..=MAX_BATCH).boxed()
    };
    let state = prop_oneof![vec(any::<u8>(), 0..64), vec(any::<u8>(), 0..8192)];
    let mut all = vec![
        hello().prop_map(Msg::Hello).boxed(),
        Just(Msg::Accept).boxed(),
        text().prop_map(Msg::Refuse).boxed(),
        batch.clone().prop_map(Msg::Pages).boxed(),
        batch.prop_map(Msg::CkptPages).boxed(),
        (any::<u32>(), any::<u32>())
            .prop_map(|(interval_ms, fence_ms)| Msg::Protect {
                interval_ms,
                fence_ms,
            })
            .boxed(),
        (any::<u64>(), any::<u64>(), state.clone())
            .prop_map(|(seq, released, state)| Msg::Checkpoint {
                seq,
                released,
                state,
            })
            .boxed(),
        vec(disk_write(), 0..8).prop_map(Msg::CkptWrites).boxed(),
        Just(Msg::BulkEnd).boxed(),
        any::<u64>().prop_map(Msg::CheckpointAck).boxed(),
        any::<u32>().prop_map(Msg::RoundEnd).boxed(),
        state.clone().prop_map(Msg::State).boxed(),
        Just(Msg::Ready).boxed(),
        Just(Msg::Go).boxed(),
        demand.prop_map(Msg::Demand).boxed(),
        Just(Msg::PushDone).boxed(),
        Just(Msg::Complete).boxed(),
        text().prop_map(Msg::Report).boxed(),
        text().prop_map(Msg::Cancel).boxed(),
        text().prop_map(Msg::Error).boxed(),
    ];
    if pages <= SWITCH_MAX_PAGES {
        all.push(
            (state, any::<u64>(), 0u8..4)
                .prop_map(move |(state, seed, density)| Msg::Switch {
                    state,
                    pending: bitmap(pages, seed, density),
                })
                .boxed(),
        );
        all.push(
            (any::<u64>(), 0u8..4)
                .prop_map(move |(seed, density)| Msg::Resume(bitmap(pages, seed, density)))
                .boxed(),
        );
    }
    proptest::strategy::Union::new(all).boxed()
}

/// A RAM size, with the edges (0, 1, word boundaries, 4 GiB pages) likely.
fn ram_pages() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => 0usize..=200,
        2 => prop_oneof![Just(1usize), Just(63), Just(64), Just(65), Just(128)],
        2 => 1usize..=200_000,
        1 => Just(1usize << 32),
    ]
}

fn sized_msg() -> impl Strategy<Value = (usize, Msg)> {
    ram_pages().prop_flat_map(|p| (Just(p), msg(p)))
}

/// Only the checksummed messages.
fn checksummed_msg() -> impl Strategy<Value = (usize, Msg)> {
    sized_msg().prop_filter("a checksummed message", |(_, m)| {
        matches!(
            m,
            Msg::Pages(_)
                | Msg::CkptPages(_)
                | Msg::State(_)
                | Msg::Switch { .. }
                | Msg::Resume(_)
                | Msg::Checkpoint { .. }
                | Msg::CkptWrites(_)
        )
    })
}

fn recv_bytes(bytes: &[u8], pages: usize) -> Result<Msg, WireError> {
    wire::recv(&mut &bytes[..], pages)
}

/// What a successfully decoded `body` must satisfy, whatever the bytes were:
/// bounds and page indices hold, and re-encoding gives back the same body
/// (the wire format is canonical but for Hello's resume flag), so it
/// decodes to the same message.
fn assert_valid(m: &Msg, body: &[u8], pages: usize) {
    match m {
        Msg::Pages(list) | Msg::CkptPages(list) => {
            assert!(list.len() <= MAX_BATCH);
            assert!(list.iter().all(|p| (p.index as usize) < pages));
        }
        Msg::Demand(list) => {
            assert!(list.len() <= MAX_BATCH);
            assert!(list.iter().all(|&p| (p as usize) < pages));
        }
        Msg::Switch { pending, .. } => {
            assert_eq!(pending.len(), pages.div_ceil(64));
            if let Some(last) = pending.last() {
                assert!(pages.is_multiple_of(64) || last >> (pages % 64) == 0);
            }
        }
        // Resume's tail bits are not checked by the decoder (see the ignored
        // test below), so only its size is asserted here.
        Msg::Resume(words) => assert_eq!(words.len(), pages.div_ceil(64)),
        Msg::Hello(h) => assert!(h.mode.len() <= MAX_TEXT && h.board.len() <= MAX_TEXT),
        Msg::Refuse(s) | Msg::Report(s) | Msg::Cancel(s) | Msg::Error(s) => {
            assert!(s.len() <= MAX_TEXT)
        }
        _ => {}
    }
    let again = m.encode();
    assert!(again.len() - 4 <= MAX_FRAME);
    let mut canon = body.to_vec();
    if matches!(m, Msg::Hello(_)) {
        // The resume flag, before the bulk count (the last byte).
        let flag = canon.len() - 2;
        canon[flag] = u8::from(canon[flag] != 0);
    }
    assert_eq!(&again[4..], &canon[..], "decode/encode is not canonical");
    assert_eq!(
        &Msg::decode(&again[4..], pages).expect("re-encoding decodes"),
        m
    );
}

/// Where a byte of a checksummed frame's body sits.
#[derive(Debug, PartialEq)]
enum Region {
    /// The type byte, outside every checksum.
    Type,
    /// A count, kind or length: a change reshapes the frame, so what the
    /// checksum covers moves too; the decoder can only be expected not to
    /// return the original message (a CRC-32 collision is 2^-32).
    Shape,
    /// Page data, an index, the state, the bitmap or the CRC itself: the
    /// frame keeps its shape and CRC-32 detects every error burst of up to 32
    /// bits, so a flip here is always an error.
    Covered,
}

fn region(m: &Msg, at: usize) -> Region {
    if at == 0 {
        return Region::Type;
    }
    match m {
        Msg::Pages(list) | Msg::CkptPages(list) => {
            if at < 3 {
                return Region::Shape;
            }
            let mut off = 3;
            for p in list {
                // index (4), kind (1), data
                if at == off + 4 {
                    return Region::Shape;
                }
                off += 5 + if p.data.is_some() { PAGE } else { 0 };
                if at < off {
                    return Region::Covered;
                }
            }
            Region::Covered
        }
        Msg::State(_) | Msg::Checkpoint { .. } => Region::Covered,
        // Counts, kinds and lengths at every entry: held to the weaker
        // promise throughout.
        Msg::CkptWrites(_) => Region::Shape,
        Msg::Switch { .. } if at < 5 => Region::Shape,
        Msg::Switch { .. } | Msg::Resume(_) => Region::Covered,
        _ => unreachable!("not a checksummed message"),
    }
}

/// Flips body byte `at` of `frame` by `xor` and checks the verdict.
fn check_flip(m: &Msg, frame: &[u8], pages: usize, at: usize, xor: u8) {
    assert_ne!(xor, 0);
    let mut bad = frame.to_vec();
    bad[4 + at] ^= xor;
    let got = recv_bytes(&bad, pages);
    match (region(m, at), got) {
        (_, Err(_)) => {}
        (Region::Covered, Ok(g)) => panic!(
            "flip {xor:#04x} at body byte {at} of {} went unnoticed: {}",
            m.name(),
            g.name()
        ),
        (Region::Shape, Ok(g)) => {
            assert_ne!(&g, m, "flip at body byte {at} gave back the original");
            assert_valid(&g, &bad[4..], pages);
        }
        (Region::Type, Ok(g)) => {
            assert_ne!(g.name(), m.name(), "type byte flip kept the type");
            assert_valid(&g, &bad[4..], pages);
        }
    }
}

/// Hands out at most `chunk` bytes per read, as a socket may.
struct Trickle<'a> {
    bytes: &'a [u8],
    chunk: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.chunk).min(self.bytes.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Ok(n)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn every_valid_message_round_trips((pages, m) in sized_msg()) {
        let frame = m.encode();
        let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
        prop_assert_eq!(len, frame.len() - 4);
        prop_assert!((1..=MAX_FRAME).contains(&len));
        let mut sent = Vec::new();
        wire::send(&mut sent, &m).unwrap();
        prop_assert_eq!(&sent, &frame);

        let mut r = &frame[..];
        let got = wire::recv(&mut r, pages).expect("a valid frame decodes");
        prop_assert_eq!(&got, &m);
        prop_assert!(r.is_empty(), "recv left {} bytes", r.len());
        prop_assert_eq!(&Msg::decode(&frame[4..], pages).unwrap(), &m);
        assert_valid(&got, &frame[4..], pages);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn a_stream_of_messages_decodes_in_order(
        (pages, msgs) in ram_pages()
            .prop_filter("Switch needs a small RAM", |&p| p <= SWITCH_MAX_PAGES)
            .prop_flat_map(|p| (Just(p), vec(msg(p), 1..8))),
        chunk in prop_oneof![Just(usize::MAX), 1usize..16, 1usize..5000],
    ) {
        let stream: Vec<u8> = msgs.iter().flat_map(|m| m.encode()).collect();
        let mut r = Trickle { bytes: &stream, chunk };
        for (i, m) in msgs.iter().enumerate() {
            let got = wire::recv(&mut r, pages);
            prop_assert!(matches!(&got, Ok(g) if g == m), "message {i}: {got:?}");
        }
        prop_assert!(matches!(wire::recv(&mut r, pages), Err(WireError::Closed)));
    }

    #[test]
    fn a_cut_frame_is_an_error(
        (pages, m) in sized_msg(),
        cuts in vec(any::<prop::sample::Index>(), 16),
    ) {
        let frame = m.encode();
        // Every cut of a small frame, a sample of a large one.
        let all: Vec<usize> = if frame.len() <= 512 {
            (0..frame.len()).collect()
        } else {
            let mut c: Vec<usize> = cuts.iter().map(|i| i.index(frame.len())).collect();
            c.extend([0, 3, 4, 5, frame.len() - 1]);
            c
        };
        for cut in all {
            // Through recv the length word makes this certain.
            let got = recv_bytes(&frame[..cut], pages);
            prop_assert!(matches!(got, Err(WireError::Closed)), "cut {cut}: {got:?}");
            // A cut body handed to decode is also refused (for State this
            // rests on the CRC, the rest on the structure).
            if cut > 4 {
                let got = Msg::decode(&frame[4..cut], pages);
                prop_assert!(got.is_err(), "body cut at {cut}: {got:?}");
            }
        }
    }

    #[test]
    fn a_flipped_byte_in_a_checksummed_frame_is_caught(
        (pages, m) in checksummed_msg(),
        flips in vec((any::<prop::sample::Index>(), 1u8..=255), 48),
    ) {
        let frame = m.encode();
        let body = frame.len() - 4;
        for (at, xor) in flips {
            check_flip(&m, &frame, pages, at.index(body), xor);
        }
        // A single bit flipped in page data, wherever the first data page is.
        if let Msg::Pages(list) = &m {
            let mut off = 3;
            for p in list {
                if p.data.is_some() {
                    check_flip(&m, &frame, pages, off + 5, 0x01);
                    check_flip(&m, &frame, pages, off + 5 + PAGE - 1, 0x80);
                    break;
                }
                off += 5;
            }
        }
    }

    #[test]
    fn an_edited_length_word_never_yields_the_original(
        (pages, m) in checksummed_msg(),
        at in 0usize..4,
        xor in 1u8..=255,
    ) {
        let mut frame = m.encode();
        frame[at] ^= xor;
        if let Ok(g) = recv_bytes(&frame, pages) {
            prop_assert_ne!(&g, &m);
            let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
            assert_valid(&g, &frame[4..4 + len], pages);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(50_000))]

    #[test]
    fn arbitrary_bytes_never_panic_and_respect_pages(
        body in prop_oneof![
            vec(any::<u8>(), 0..64),
            (0u8..=16, vec(any::<u8>(), 0..600)).prop_map(|(t, mut b)| {
                b.insert(0, t);
                b
            }),
        ],
        pages in ram_pages().prop_filter("small", |&p| p <= SWITCH_MAX_PAGES),
    ) {
        if let Ok(m) = Msg::decode(&body, pages) {
            assert_valid(&m, &body, pages);
        }
    }

    #[test]
    fn arbitrary_streams_never_panic(
        len in prop_oneof![any::<u32>(), 0u32..700],
        rest in vec(any::<u8>(), 0..700),
        pages in 0usize..5000,
    ) {
        let mut stream = len.to_le_bytes().to_vec();
        stream.extend_from_slice(&rest);
        if let Ok(m) = recv_bytes(&stream, pages) {
            assert_valid(&m, &stream[4..4 + len as usize], pages);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn mutated_frames_never_panic_and_respect_pages(
        (pages, m) in sized_msg(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..6),
        decode_pages in prop_oneof![Just(None), (0usize..300).prop_map(Some)],
    ) {
        let mut body = m.encode().split_off(4);
        for (at, v, op) in edits {
            let i = at.index(body.len().max(1));
            match op {
                0 if i < body.len() => body[i] = v,
                1 => body.insert(i.min(body.len()), v),
                2 if i < body.len() => {
                    body.remove(i);
                }
                _ => body.truncate(i),
            }
        }
        // Also decode against another RAM size: indices must be checked
        // against the one given.
        let pages = decode_pages.unwrap_or(pages);
        if let Ok(g) = Msg::decode(&body, pages) {
            assert_valid(&g, &body, pages);
        }
    }
}

/// Every byte of small Pages, State and Switch frames, flipped three ways.
#[test]
fn every_single_byte_flip_of_small_checksummed_frames() {
    let frames = [
        (
            100,
            Msg::Pages(vec![
                Page {
                    index: 3,
                    data: None,
                },
                Page {
                    index: 99,
                    data: Some(fill_page(7, 2)),
                },
                Page {
                    index: 0,
                    data: Some(fill_page(0, 0)),
                },
            ]),
        ),
        (100, Msg::Pages(vec![])),
        (100, Msg::State((0..200).map(|i| i as u8).collect())),
        (100, Msg::State(vec![])),
        (
            130,
            Msg::Switch {
                state: vec![0x5a; 40],
                pending: bitmap(130, 9, 2),
            },
        ),
        (
            0,
            Msg::Switch {
                state: vec![],
                pending: vec![],
            },
        ),
        (130, Msg::Resume(bitmap(130, 5, 2))),
        (0, Msg::Resume(vec![])),
    ];
    for (pages, m) in frames {
        let frame = m.encode();
        for at in 0..frame.len() - 4 {
            for xor in [0x01, 0x80, 0xff, 0x5a] {
                check_flip(&m, &frame, pages, at, xor);
                // In these frames even a shape byte's flip is an error (no
                // CRC collision happens to exist for them).
                if at != 0 {
                    let mut bad = frame.clone();
                    bad[4 + at] ^= xor;
                    assert!(recv_bytes(&bad, pages).is_err(), "{} at {at}", m.name());
                }
            }
        }
    }
}

/// A page's data flipped in every bit position is always caught, and the
/// error names the checksum.
#[test]
fn every_bit_of_page_data_is_covered() {
    let m = Msg::Pages(vec![Page {
        index: 5,
        data: Some(fill_page(3, 2)),
    }]);
    let frame = m.encode();
    let data_at = 4 + 3 + 5;
    for i in 0..PAGE {
        for bit in 0..8 {
            let mut bad = frame.clone();
            bad[data_at + i] ^= 1 << bit;
            let e = recv_bytes(&bad, 8).unwrap_err().to_string();
            assert!(e.contains("checksum"), "byte {i} bit {bit}: {e}");
        }
    }
}

#[test]
fn full_batches_and_edge_indices_round_trip() {
    let pages = 1usize << 32;
    let list: Vec<Page> = (0..MAX_BATCH as u32)
        .map(|i| Page {
            index: u32::MAX - i,
            data: (i % 3 == 0).then(|| fill_page(u64::from(i), 2)),
        })
        .collect();
    for m in [
        Msg::Pages(list),
        Msg::Demand((0..MAX_BATCH as u32).map(|i| u32::MAX - i).collect()),
    ] {
        assert_eq!(recv_bytes(&m.encode(), pages).unwrap(), m);
        // One page less of RAM and the top index is out of range.
        assert!(recv_bytes(&m.encode(), pages - 1).is_err());
    }
    // One past the batch limit is refused.
    let over = Msg::Demand(vec![0; MAX_BATCH + 1]).encode();
    assert!(recv_bytes(&over, 1).is_err());
    let over = Msg::Pages(
        (0..=MAX_BATCH)
            .map(|_| Page {
                index: 0,
                data: None,
            })
            .collect(),
    )
    .encode();
    assert!(recv_bytes(&over, 1).is_err());
}

#[test]
fn a_switch_bitmap_of_the_wrong_size_or_with_tail_bits_is_refused() {
    for pages in [1usize, 63, 64, 65, 127, 128, 1000] {
        let good = Msg::Switch {
            state: vec![1, 2, 3],
            pending: bitmap(pages, 1, 1),
        };
        assert_eq!(recv_bytes(&good.encode(), pages).unwrap(), good);
        let Msg::Switch { state, mut pending } = good else {
            unreachable!()
        };
        if pages % 64 != 0 {
            let mut tail = pending.clone();
            *tail.last_mut().unwrap() |= 1 << (pages % 64);
            let m = Msg::Switch {
                state: state.clone(),
                pending: tail,
            };
            assert!(recv_bytes(&m.encode(), pages).is_err(), "tail bit, {pages}");
        }
        pending.push(0);
        let m = Msg::Switch { state, pending };
        assert!(
            recv_bytes(&m.encode(), pages).is_err(),
            "extra word, {pages}"
        );
        let mut words = bitmap(pages, 2, 2);
        let good = Msg::Resume(words.clone());
        assert_eq!(recv_bytes(&good.encode(), pages).unwrap(), good);
        words.push(0);
        let m = Msg::Resume(words);
        assert!(
            recv_bytes(&m.encode(), pages).is_err(),
            "extra word, {pages}"
        );
    }
}

#[test]
fn texts_up_to_the_limit_round_trip() {
    // Exactly MAX_TEXT bytes of 4-byte characters.
    let s: String = std::iter::repeat_n('\u{1F426}', MAX_TEXT / 4).collect();
    assert_eq!(s.len(), MAX_TEXT);
    for m in [
        Msg::Report(s.clone()),
        Msg::Refuse(s.clone()),
        Msg::Cancel(s.clone()),
        Msg::Error(s),
    ] {
        assert_eq!(recv_bytes(&m.encode(), 0).unwrap(), m);
    }
    // A length word claiming more than the limit is refused before reading.
    let mut body = vec![13u8];
    body.extend_from_slice(&((MAX_TEXT + 1) as u32).to_le_bytes());
    body.extend(std::iter::repeat_n(b'a', MAX_TEXT + 1));
    assert!(Msg::decode(&body, 0).is_err());
}

/// Documents a known encoder defect: `put_text` cuts a text longer than
/// MAX_TEXT at a byte offset, which can split a UTF-8 character, so the
/// frame it sends cannot be decoded (and a long `Report` is silently cut).
#[test]
fn an_over_long_text_still_decodes() {
    let s: String = std::iter::once('a')
        .chain(std::iter::repeat_n('\u{1F426}', MAX_TEXT / 4))
        .collect();
    assert!(s.len() > MAX_TEXT);
    let got = recv_bytes(&Msg::Report(s).encode(), 0);
    assert!(got.is_ok(), "{got:?}");
}

/// Documents a decoder gap: `Switch` refuses pending bits beyond the end of
/// RAM, but `Resume` accepts them, so a peer can name page indices >= pages.
#[test]
fn a_resume_bitmap_with_tail_bits_is_refused() {
    for pages in [1usize, 63, 65, 130] {
        let mut words = bitmap(pages, 3, 0);
        *words.last_mut().unwrap() |= 1 << (pages % 64);
        let got = recv_bytes(&Msg::Resume(words).encode(), pages);
        assert!(got.is_err(), "{pages} pages: {got:?}");
    }
}

#[test]
fn the_data_kind_is_what_carries_a_page() {
    // A zero page and a data page of zeros are different messages.
    let zero = Msg::Pages(vec![Page {
        index: 0,
        data: None,
    }]);
    let data = Msg::Pages(vec![Page {
        index: 0,
        data: Some(Box::new([0; PAGE])),
    }]);
    assert_ne!(zero.encode(), data.encode());
    assert_eq!(data.encode()[4 + 3 + 4], KIND_DATA);
    assert_eq!(recv_bytes(&data.encode(), 1).unwrap(), data);
    assert_eq!(recv_bytes(&zero.encode(), 1).unwrap(), zero);
}
