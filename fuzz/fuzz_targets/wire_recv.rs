//! `wire::recv`: the framed stream a migration peer sends, read message
//! by message until an error or the end, as the destination and the
//! source read their connections.
//!
//! Input: `sel:u8 pages:u16 stream...` (`pages` scaled by 2^12 when
//! `sel & 1`). Oracle: no panic; each `recv` holds no more heap than the
//! bytes it consumed justify, however long a frame its length word
//! announces.
#![no_main]

use godwit_fuzz::alloc;
use godwit_fuzz::input::Input;
use godwit_migration::wire::{self, Msg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let (_, pages) = input.selector_and_pages();
    let mut stream = input.rest();
    loop {
        let before = stream.len();
        // A body is read in steps that at most double what arrived (the
        // first 64 KiB), then decoded: a few times what arrived.
        let limit = (256 << 10) + 4 * before + 3 * wire::MAX_PACKED_RAW;
        let got: Result<Msg, _> =
            alloc::bounded("wire::recv", limit, || wire::recv(&mut stream, pages));
        if got.is_err() || stream.len() == before {
            break;
        }
    }
});
