//! The guest Godwit boots by default: where `guest/build.sh` leaves it, and
//! the kernel command line every guest gets; where `guest/debian/build.sh`
//! leaves the Debian guest.

use anyhow::{bail, Context, Result};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The cache folder `guest/build.sh` uses: `$GODWIT_CACHE`, else
/// `$XDG_CACHE_HOME/godwit`, else `~/.cache/godwit`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("GODWIT_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("godwit");
    }
    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/godwit")
}

/// Kernel and initrd to boot: the given ones, else the built default image.
pub fn resolve(
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
) -> Result<(PathBuf, Option<PathBuf>)> {
    let default = cache_dir().join("guest/default");
    let kernel = kernel.unwrap_or_else(|| default.join("Image"));
    let initrd = Some(initrd.unwrap_or_else(|| default.join("initramfs.cpio.gz")));
    for p in std::iter::once(&kernel).chain(initrd.iter()) {
        if !p.exists() {
            bail!("{} does not exist (build the guest image with guest/build.sh, or pass --kernel/--initrd)", p.display());
        }
    }
    Ok((kernel, initrd))
}

/// The kernel command line every Godwit guest gets before the user's words.
/// `earlycon` (no argument) starts the kernel's early console on the
/// device tree's `stdout-path`, the board's ns16550a, from the first
/// moments of boot, so a kernel that dies before its serial driver probes
/// (a panic on too many init arguments, say) still says why.
/// `page_reporting_order=0`: the guest reports free memory down to single
/// 4 KiB pages (the kernel's default is 2 MiB blocks), so as little free
/// memory as possible is ever migrated. Override it with `--append`.
pub const BASE_CMDLINE: &str = "console=ttyS0 earlycon page_reporting.page_reporting_order=0";

/// The full kernel command line for a workload and extra words.
pub fn cmdline(workload: Option<&str>, append: &str) -> String {
    let mut c = BASE_CMDLINE.to_string();
    if let Some(w) = workload {
        c.push_str(" godwit.workload=");
        c.push_str(w);
    }
    if !append.trim().is_empty() {
        c.push(' ');
        c.push_str(append.trim());
    }
    c
}

/// The Debian guest's files, as `guest/debian/build.sh` leaves them in
/// `<cache>/debian/default/`.
#[derive(Clone, Debug)]
pub struct DebianImage {
    /// The stock Debian kernel (an uncompressed RISC-V `Image`).
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The root file system: raw ext4, the whole of `/dev/vda`. Boot a copy
    /// of it (see [`sparse_copy`]): the guest writes to its disk.
    pub disk: PathBuf,
    /// OpenSBI's `fw_dynamic.bin` from the image.
    pub bios: PathBuf,
}

/// What the Debian guest needs on its kernel command line (as
/// `guest/debian/qemu-boot.sh` gives it).
pub const DEBIAN_APPEND: &str = "root=/dev/vda rw console=ttyS0";

/// The line the Debian guest prints on its console when it is up (followed
/// by JSON: `{"cpus":N,"mem_kb":M,"kernel":"..."}`).
pub const DEBIAN_READY: &str = "GODWIT DEBIAN READY ";

/// The built Debian guest, or an error naming what is missing and how to
/// build it.
pub fn debian_image() -> Result<DebianImage> {
    let dir = cache_dir().join("debian/default");
    let img = DebianImage {
        kernel: dir.join("Image"),
        initrd: dir.join("initrd.img"),
        disk: dir.join("disk.img"),
        bios: dir.join("fw_dynamic.bin"),
    };
    for p in [&img.kernel, &img.initrd, &img.disk, &img.bios] {
        if !p.is_file() {
            bail!(
                "the Debian guest is not built: {} is missing (run guest/debian/build.sh as root, about 10-13 minutes the first time; scripts/test.sh does)",
                p.display()
            );
        }
    }
    Ok(img)
}

/// Copies `from` to a new file `to`, leaving holes where `from` has runs
/// of zeros (4 KiB granules), so a copy of a mostly empty disk image takes
/// only the space of its data. `to` must not exist.
pub fn sparse_copy(from: &Path, to: &Path) -> Result<()> {
    const CHUNK: usize = 1 << 20;
    const GRANULE: usize = 4096;
    let mut src =
        std::fs::File::open(from).with_context(|| format!("cannot open {}", from.display()))?;
    let len = src.metadata()?.len();
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .with_context(|| format!("cannot create {}", to.display()))?;
    let mut buf = vec![0u8; CHUNK];
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(CHUNK as u64) as usize;
        src.read_exact(&mut buf[..n])
            .with_context(|| format!("cannot read {}", from.display()))?;
        // Runs of granules with data, each written with one call.
        let granules = n.div_ceil(GRANULE);
        let mut i = 0;
        while i < granules {
            let has_data = |g: usize| {
                buf[g * GRANULE..((g + 1) * GRANULE).min(n)]
                    .iter()
                    .any(|&b| b != 0)
            };
            if !has_data(i) {
                i += 1;
                continue;
            }
            let start = i;
            while i < granules && has_data(i) {
                i += 1;
            }
            let (from_b, to_b) = (start * GRANULE, (i * GRANULE).min(n));
            dst.seek(SeekFrom::Start(at + from_b as u64))?;
            dst.write_all(&buf[from_b..to_b])
                .with_context(|| format!("cannot write {}", to.display()))?;
        }
        at += n as u64;
    }
    dst.set_len(len)?;
    Ok(())
}

/// Linux hands the words of its command line that it does not recognise to
/// init: `NAME=VALUE` as environment variables, other words as arguments
/// (`init/main.c`, `unknown_bootoption`; everything after a bare `--` is an
/// argument). Each list has room for `CONFIG_INIT_ENV_ARG_LIMIT` (32, every
/// kernel Godwit knows) entries besides the first, and one more is a panic
/// ("Too many boot env vars") before the console is up.
pub const MAX_INIT_ARGS: usize = 32;
/// See [`MAX_INIT_ARGS`]; `HOME=/` and `TERM=linux` come first, so 31
/// environment variables are left for the command line.
pub const MAX_INIT_ENVS: usize = 32;

/// How the kernel takes one of its parameters: `__setup("NAME=")` only
/// with a value, `__setup("NAME")` only bare (its handler refuses a value),
/// `early_param` and `core_param` either way.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Takes {
    Value,
    Bare,
    Either,
}

/// Parameters every Linux kernel recognises itself (core code, built
/// whatever the configuration, as declared in Linux 6.1): they never reach
/// init. A name with a dot is a module's parameter and never reaches init
/// either.
const KERNEL_PARAMS: &[(&str, Takes)] = &[
    ("console", Takes::Value),
    ("earlycon", Takes::Either),
    ("root", Takes::Value),
    ("rootfstype", Takes::Value),
    ("rootflags", Takes::Value),
    ("rootwait", Takes::Bare),
    ("rootdelay", Takes::Value),
    ("ro", Takes::Bare),
    ("rw", Takes::Bare),
    ("init", Takes::Value),
    ("rdinit", Takes::Value),
    ("initrd", Takes::Either),
    ("noinitrd", Takes::Bare),
    ("quiet", Takes::Either),
    ("debug", Takes::Either),
    ("loglevel", Takes::Either),
    ("ignore_loglevel", Takes::Either),
    ("log_buf_len", Takes::Either),
    ("keep_bootcon", Takes::Either),
    ("no_console_suspend", Takes::Either),
    ("panic", Takes::Either),
    ("panic_on_warn", Takes::Either),
    ("pause_on_oops", Takes::Either),
    ("oops", Takes::Either),
    ("mem", Takes::Either),
    ("maxcpus", Takes::Either),
    ("nosmp", Takes::Either),
    ("nr_cpus", Takes::Either),
    ("initcall_debug", Takes::Either),
    ("lpj", Takes::Value),
    ("reboot", Takes::Value),
    ("mitigations", Takes::Either),
    // Aliases of sysctls (fs/proc/proc_sysctl.c).
    ("hardlockup_all_cpu_backtrace", Takes::Either),
    ("hung_task_panic", Takes::Either),
    ("numa_zonelist_order", Takes::Either),
    ("softlockup_all_cpu_backtrace", Takes::Either),
];

/// What Linux passes to init from a command line: its extra arguments and
/// environment variables, in the kernel's order, and the word at which it
/// would panic for want of room, if any.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct InitWords {
    pub args: Vec<String>,
    pub envs: Vec<String>,
    /// `("env" | "init", word)`: the kernel's "Too many boot %s vars at `%s'".
    pub overflow: Option<(&'static str, String)>,
}

impl InitWords {
    /// `unknown_bootoption`'s environment case, on a list that starts with
    /// `HOME=/` and `TERM=linux`: the slot of the same name, else a new one.
    fn env(&mut self, name: &str, word: String) {
        let mut all = vec!["HOME=/".to_string(), "TERM=linux".to_string()];
        all.append(&mut self.envs);
        let mut i = 0;
        while i < all.len() {
            if i == MAX_INIT_ENVS && self.overflow.is_none() {
                self.overflow = Some(("env", word.clone()));
            }
            if all[i].split_once('=').map(|(n, _)| n) == Some(name) {
                break;
            }
            i += 1;
        }
        if i < all.len() {
            all[i] = word;
        } else {
            all.push(word);
        }
        self.envs = all.split_off(2);
    }

    /// An argument after `init` (argv[0]).
    fn arg(&mut self, word: String) {
        if 1 + self.args.len() > MAX_INIT_ARGS && self.overflow.is_none() {
            self.overflow = Some(("init", word.clone()));
        }
        self.args.push(word);
    }
}

/// Splits a command line as the kernel's `next_arg` (lib/cmdline.c) does:
/// words end at white space outside double quotes; a word may start with
/// a quote, a value too. Returns (name, value) pairs without the quotes.
fn kernel_words(cmdline: &str) -> Vec<(String, Option<String>)> {
    let b = cmdline.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let space = |c: u8| c.is_ascii_whitespace();
    while i < b.len() && space(b[i]) {
        i += 1;
    }
    while i < b.len() {
        let mut start = i;
        let mut in_quote = false;
        let quoted = b[i] == b'"';
        if quoted {
            start += 1;
            in_quote = true;
        }
        let mut j = start;
        let mut equals = None;
        while j < b.len() {
            if space(b[j]) && !in_quote {
                break;
            }
            if equals.is_none() && b[j] == b'=' {
                equals = Some(j);
            }
            if b[j] == b'"' {
                in_quote = !in_quote;
            }
            j += 1;
        }
        let strip_end = |from: usize| {
            let mut end = j;
            if end > from && b[end - 1] == b'"' {
                end -= 1;
            }
            end
        };
        let word = match equals {
            None => {
                let end = if quoted { strip_end(start) } else { j };
                (String::from_utf8_lossy(&b[start..end]).into_owned(), None)
            }
            Some(e) => {
                let mut v = e + 1;
                let end = if v < j && b[v] == b'"' {
                    v += 1;
                    strip_end(v)
                } else if quoted {
                    strip_end(v)
                } else {
                    j
                };
                (
                    String::from_utf8_lossy(&b[start..e]).into_owned(),
                    Some(String::from_utf8_lossy(&b[v..end.max(v)]).into_owned()),
                )
            }
        };
        out.push(word);
        i = j;
        while i < b.len() && space(b[i]) {
            i += 1;
        }
    }
    out
}

/// Whether the kernel itself takes `name` (with a value or bare; dashes
/// and underscores are the same to it).
fn kernel_takes(name: &str, with_value: bool) -> bool {
    let name = name.replace('-', "_");
    name.contains('.')
        || name.starts_with("BOOT_IMAGE")
        || name.starts_with("kexec")
        || KERNEL_PARAMS.iter().any(|&(n, t)| {
            n == name
                && match t {
                    Takes::Value => with_value,
                    Takes::Bare => !with_value,
                    Takes::Either => true,
                }
        })
}

/// The init arguments and environment variables Linux makes of `cmdline`,
/// as `init/main.c` does (an environment variable given twice is one).
pub fn init_words(cmdline: &str) -> InitWords {
    let mut w = InitWords::default();
    let mut words = kernel_words(cmdline).into_iter();
    for (name, val) in words.by_ref() {
        match val {
            None if name == "--" => break,
            None if !kernel_takes(&name, false) => w.arg(name),
            Some(v) if !kernel_takes(&name, true) => {
                let word = format!("{name}={v}");
                w.env(&name, word)
            }
            _ => {}
        }
    }
    // After `--` every word is an argument of init, with its value.
    for (name, val) in words {
        match val {
            None if name == "--" => break,
            None => w.arg(name),
            Some(v) => w.arg(format!("{name}={v}")),
        }
    }
    w
}

/// Refuses a command line on which Linux would panic before its console is
/// up: more init arguments or environment variables than it has room for.
pub fn check_init_words(cmdline: &str) -> Result<()> {
    let w = init_words(cmdline);
    match w.overflow {
        None => Ok(()),
        Some(("env", at)) => bail!(
            "too many words of the form NAME=VALUE on the kernel command line ({}, at `{at}`): Linux passes those it does not take itself to init as environment variables and has room for {} (MAX_INIT_ENVS = {MAX_INIT_ENVS}, with HOME and TERM); with more it panics before its console is up. Counted: {}",
            w.envs.len(),
            MAX_INIT_ENVS - 1,
            w.envs.join(" ")
        ),
        Some((_, at)) => bail!(
            "too many bare words on the kernel command line ({}, at `{at}`): Linux passes those it does not take itself, and everything after `--`, to init as arguments and has room for {MAX_INIT_ARGS} (MAX_INIT_ARGS = {MAX_INIT_ARGS}); with more it panics before its console is up. Counted: {}",
            w.args.len(),
            w.args.join(" ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn sparse_copy_keeps_data_and_leaves_holes() {
        let dir = std::env::temp_dir().join(format!("godwit-sparse-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        // 8 MiB: data at the start, one byte in the middle of a granule, a
        // partial granule at the end; zeros elsewhere.
        let mut data = vec![0u8; 8 << 20];
        data[..5000].fill(0xa5);
        data[3 << 20 | 1234] = 7;
        let n = data.len();
        data[n - 10..].fill(1);
        let odd = &data[..n - 100]; // not a multiple of 4096
        std::fs::write(&a, odd).unwrap();
        sparse_copy(&a, &b).unwrap();
        assert_eq!(std::fs::read(&b).unwrap(), odd);
        let blocks = std::fs::metadata(&b).unwrap().blocks() * 512;
        assert!(
            blocks < 1 << 20,
            "{blocks} bytes allocated for 4 granules of data"
        );
        assert!(
            sparse_copy(&a, &b).is_err(),
            "an existing file is not overwritten"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn words(n: usize, f: impl Fn(usize) -> String) -> String {
        (0..n).map(f).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn counts_what_the_kernel_passes_to_init() {
        let w = init_words(
            "console=ttyS0 earlycon page_reporting.page_reporting_order=0 godwit.workload=idle \
             duration_s=1 foo a=1 a=2 Rootwait -- x=1 y -- z",
        );
        assert_eq!(w.envs, vec!["duration_s=1", "a=2"]);
        assert_eq!(w.args, vec!["foo", "Rootwait", "x=1", "y"]);
        let w = init_words(r#"msg="a b c" "q=1 2" "bare word" e="x"#);
        assert_eq!(w.envs, vec!["msg=a b c", "q=1 2", "e=x"]);
        assert_eq!(w.args, vec!["bare word"]);
        assert_eq!(init_words("  ").args.len(), 0);
        assert_eq!(init_words("hung-task-panic=1 BOOT_IMAGE=/x").envs.len(), 0);
        // `__setup("root=")` takes only a value, `__setup("rootwait")` only
        // a bare word: the other form reaches init.
        let w = init_words("root=/dev/vda root rootwait rootwait=1 quiet quiet=1");
        assert_eq!(w.args, vec!["root"]);
        assert_eq!(w.envs, vec!["rootwait=1"]);
        // HOME and TERM are there already: setting them adds nothing.
        assert_eq!(
            init_words("HOME=/root TERM=vt100").envs,
            vec![] as Vec<String>
        );
    }

    #[test]
    fn refuses_more_than_linux_has_room_for() {
        let base = cmdline(Some("idle"), "");
        // 31 environment variables and 32 arguments fit (a real boot checks
        // the same boundary, godwit/tests/boot.rs).
        let envs = format!("{base} {}", words(31, |i| format!("w{i}=1")));
        check_init_words(&envs).unwrap();
        let e = check_init_words(&format!("{envs} one=more")).unwrap_err();
        assert!(e.to_string().contains("MAX_INIT_ENVS = 32"), "{e}");
        // The same name twice is one variable...
        check_init_words(&format!("{envs} w0=2")).unwrap();
        // ...unless the kernel reaches its last slot before finding it.
        let e = check_init_words(&format!("{envs} w30=2")).unwrap_err();
        assert!(e.to_string().contains("at `w30=2`"), "{e}");
        let args = format!("{base} {}", words(32, |i| format!("a{i}")));
        check_init_words(&args).unwrap();
        let e = check_init_words(&format!("{args} more")).unwrap_err();
        assert!(e.to_string().contains("MAX_INIT_ARGS"), "{e}");
        let e = check_init_words(&format!("{base} -- {}", words(33, |i| format!("k{i}=v"))))
            .unwrap_err();
        assert!(e.to_string().contains("MAX_INIT_ARGS"), "{e}");
        // Module parameters do not count.
        check_init_words(&format!("{base} {}", words(60, |i| format!("m.p{i}=1")))).unwrap();
    }
}
