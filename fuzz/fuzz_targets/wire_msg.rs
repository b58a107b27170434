//! `Msg::decode`: one frame body from a migration peer.
//!
//! Input: `sel:u8 pages:u16 body...`. `pages` (scaled up by 2^12 when
//! `sel & 1`) is the RAM size the handshake agreed; when `sel & 2` the
//! target first rewrites the body's CRC so the input reaches the checks
//! behind it. Oracle: no panic; a decoded message respects the protocol's
//! bounds and re-encodes to a frame that decodes to the same message; the
//! decoder holds no more heap than the body justifies.
#![no_main]

use godwit_fuzz::alloc;
use godwit_fuzz::input::Input;
use godwit_migration::wire::{self, Msg, MAX_BATCH, MAX_FRAMES, MAX_NET_FRAME};
use libfuzzer_sys::fuzz_target;

/// Rewrites the CRC of the message types that carry one (as a peer that
/// computes it over garbage would).
fn fix_crc(body: &mut [u8]) {
    let n = body.len();
    match body.first() {
        // State: crc:u32 right after the type, over the rest.
        Some(6) if n >= 5 => {
            let c = crc32fast_hash(&body[5..]);
            body[1..5].copy_from_slice(&c.to_le_bytes());
        }
        // Pages, Switch, Resume, Frames: a trailing crc over everything
        // between the type and it.
        Some(4 | 7 | 16 | 17) if n >= 5 => {
            let c = crc32fast_hash(&body[1..n - 4]);
            body[n - 4..].copy_from_slice(&c.to_le_bytes());
        }
        _ => {}
    }
}

/// CRC-32 (IEEE), as the wire uses, without a dependency of our own.
fn crc32fast_hash(b: &[u8]) -> u32 {
    let mut c = !0u32;
    for &x in b {
        c ^= u32::from(x);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xedb8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn check(msg: &Msg, pages: usize) {
    match msg {
        Msg::Pages(p) | Msg::CkptPages(p) => {
            assert!(p.len() <= MAX_BATCH);
            assert!(p.iter().all(|p| (p.index as usize) < pages));
        }
        Msg::Demand(p) => {
            assert!(p.len() <= MAX_BATCH);
            assert!(p.iter().all(|&p| (p as usize) < pages));
        }
        Msg::Switch { pending: w, .. } | Msg::Resume(w) => {
            assert_eq!(w.len(), pages.div_ceil(64));
        }
        Msg::Frames(f) => {
            assert!(f.len() <= MAX_FRAMES);
            assert!(f.iter().all(|(_, f)| f.len() <= MAX_NET_FRAME));
        }
        _ => {}
    }
    let again = msg.encode();
    let back = wire::recv(&mut &again[..], pages).expect("a decoded message re-encodes");
    assert_eq!(&back, msg, "re-encoded message decodes differently");
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let (sel, pages) = input.selector_and_pages();
    let mut body = input.rest().to_vec();
    if sel & 2 != 0 {
        fix_crc(&mut body);
    }
    // Decoding copies at most the body (a page's box per 4101 bytes, a
    // state, frames), a list with room for what the body can hold (32
    // bytes a frame of at least 6) and an error message; a packed batch
    // unpacks to at most MAX_PACKED_RAW bytes and their pages, whatever
    // its size (zstd shrinks uniform pages a thousandfold).
    let limit = 16 * 1024 + 8 * body.len() + 3 * wire::MAX_PACKED_RAW;
    let got = alloc::bounded("Msg::decode", limit, || Msg::decode(&body, pages));
    if let Ok(msg) = got {
        check(&msg, pages);
    }
});
