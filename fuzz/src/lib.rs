//! What Godwit's `cargo fuzz` targets share: an allocation meter (without a
//! sanitizer, an allocation out of proportion to the input is invisible to
//! libFuzzer), a cursor over the fuzz input, a hostile virtio driver, and
//! the seed inputs `examples/write_seeds.rs` writes. See `docs/fuzz.md`.

pub mod alloc;
pub mod fakes;
pub mod input;
pub mod seeds;
pub mod virtio;
