//! Writes the seed corpus of every target into `corpus/TARGET/` (under the
//! current folder, normally `fuzz/`), made with Godwit's own encoders:
//!
//! ```text
//! cd fuzz && cargo run --example write_seeds
//! ```

fn main() -> std::io::Result<()> {
    let root = std::path::Path::new("corpus");
    let mut n = 0;
    for (target, name, bytes) in godwit_fuzz::seeds::all() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
        n += 1;
    }
    println!("wrote {n} seeds under {}", root.display());
    Ok(())
}
