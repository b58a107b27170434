//! `--drive file=PATH[,readonly][,id=NAME]`: a disk on the board and the
//! image behind it on this host.

use anyhow::{anyhow, bail, Result};
use godwit_machine::{BlockBackend, DeviceConfig, FileDisk, HostDevice};
use std::path::{Path, PathBuf};

/// Longest disk id (the virtio-blk device ID string).
const ID_BYTES: usize = 20;

/// A `--drive` as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveSpec {
    pub path: PathBuf,
    pub readonly: bool,
    pub id: String,
}

/// Splits at single commas; `,,` stands for a comma.
fn split_options(spec: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ',' if chars.peek() == Some(&',') => {
                chars.next();
                cur.push(',');
            }
            ',' => parts.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    parts.push(cur);
    parts
}

/// The file name, cut to [`ID_BYTES`] at a character boundary.
fn default_id(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut end = name.len().min(ID_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

/// Parses `file=PATH[,readonly][,id=NAME]`.
pub fn parse_drive(spec: &str) -> Result<DriveSpec> {
    let bad = |why: String| anyhow!("--drive {spec}: {why}");
    let mut path: Option<PathBuf> = None;
    let mut readonly = false;
    let mut id: Option<String> = None;
    if spec.is_empty() {
        return Err(bad("no file=PATH".into()));
    }
    for part in split_options(spec) {
        match part.split_once('=') {
            Some(("file", v)) => {
                if v.is_empty() {
                    return Err(bad("file= needs a path".into()));
                }
                if path.replace(PathBuf::from(v)).is_some() {
                    return Err(bad("file= given twice".into()));
                }
            }
            Some(("id", v)) => {
                if v.is_empty() || v.len() > ID_BYTES || v.contains('\0') {
                    return Err(bad(format!(
                        "id {v:?}: an id is 1 to {ID_BYTES} bytes, without NUL"
                    )));
                }
                if id.replace(v.to_string()).is_some() {
                    return Err(bad("id= given twice".into()));
                }
            }
            Some(("readonly", v)) => {
                readonly = match v {
                    "on" | "true" | "yes" | "1" => true,
                    "off" | "false" | "no" | "0" => false,
                    _ => return Err(bad(format!("readonly={v}: expected on or off"))),
                }
            }
            None if part == "readonly" => readonly = true,
            _ if part.is_empty() => return Err(bad("an empty option".into())),
            _ => {
                return Err(bad(format!(
                    "unknown option {part:?} (options: file=PATH, readonly, id=NAME)"
                )))
            }
        }
    }
    let path = path.ok_or_else(|| bad("no file=PATH".into()))?;
    let id = match id {
        Some(id) => id,
        None => default_id(&path),
    };
    Ok(DriveSpec { path, readonly, id })
}

/// What a destination expects of each `--drive` before it may open them
/// (the source still holds their locks): the board device its file makes,
/// from the file's size.
pub fn expected_devices(specs: &[DriveSpec]) -> Result<Vec<DeviceConfig>> {
    specs
        .iter()
        .map(|d| {
            let meta = std::fs::metadata(&d.path)
                .map_err(|e| anyhow!("--drive file={}: {e}", d.path.display()))?;
            if !meta.is_file() {
                bail!("--drive file={}: not a regular file", d.path.display());
            }
            Ok(DeviceConfig::Block {
                bytes: meta.len(),
                readonly: d.readonly,
                id: d.id.clone(),
            })
        })
        .collect()
}

/// Opens the images of `specs` (locked), in order.
pub fn open_images(specs: &[DriveSpec]) -> Result<Vec<HostDevice>> {
    specs
        .iter()
        .map(|d| {
            let disk = FileDisk::open(&d.path, d.readonly)
                .map_err(|e| anyhow!("--drive file={}: {e}", d.path.display()))?;
            Ok(HostDevice::Disk(Box::new(disk)))
        })
        .collect()
}

/// Parses every `--drive` and opens its image (locked): every error, from
/// a malformed spec to an image in use, comes before the VM starts.
pub fn open_drives(specs: &[String]) -> Result<Vec<(DeviceConfig, HostDevice)>> {
    let parsed = specs
        .iter()
        .map(|s| parse_drive(s))
        .collect::<Result<Vec<_>>>()?;
    for (i, a) in parsed.iter().enumerate() {
        if parsed[..i].iter().any(|b| b.id == a.id) {
            bail!(
                "--drive {}: id {:?} is taken by another drive (give one with id=NAME)",
                specs[i],
                a.id
            );
        }
    }
    parsed
        .into_iter()
        .zip(specs)
        .map(|(d, spec)| {
            let disk =
                FileDisk::open(&d.path, d.readonly).map_err(|e| anyhow!("--drive {spec}: {e}"))?;
            let config = DeviceConfig::Block {
                bytes: disk.len(),
                readonly: d.readonly,
                id: d.id,
            };
            Ok((config, HostDevice::Disk(Box::new(disk))))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drive_specs() {
        let d = parse_drive("file=/img/root.raw").unwrap();
        assert_eq!(
            d,
            DriveSpec {
                path: "/img/root.raw".into(),
                readonly: false,
                id: "root.raw".into()
            }
        );
        let d = parse_drive("readonly,id=data,file=a,,b").unwrap();
        assert_eq!(
            (d.path, d.readonly, d.id),
            ("a,b".into(), true, "data".into())
        );
        assert_eq!(parse_drive("file=a,,").unwrap().path, PathBuf::from("a,"));
        assert!(!parse_drive("file=x,readonly=off").unwrap().readonly);
        assert!(parse_drive("file=x,readonly=on").unwrap().readonly);
        // The default id is the file name cut to 20 bytes (whole characters).
        assert_eq!(
            parse_drive("file=/a/abcdefghijklmnopqrstuvwxyz.img")
                .unwrap()
                .id,
            "abcdefghijklmnopqrst"
        );
        assert_eq!(parse_drive("file=/a/ééééééééééé").unwrap().id, "éééééééééé");
        for (bad, want) in [
            ("", "no file=PATH"),
            ("readonly", "no file=PATH"),
            ("file=", "needs a path"),
            ("file=a,file=b", "given twice"),
            ("file=a,", "an empty option"),
            ("file=a,format=raw", "unknown option \"format=raw\""),
            ("file=a,id=", "an id is 1 to 20 bytes"),
            ("file=a,id=123456789012345678901", "an id is 1 to 20 bytes"),
            ("file=a,readonly=maybe", "expected on or off"),
        ] {
            let e = parse_drive(bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad:?}: {e}");
            assert!(e.starts_with(&format!("--drive {bad}:")), "{e}");
        }
    }
}
