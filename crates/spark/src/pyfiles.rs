//! The project's library as a zip for `--py-files`: Spark ships it to every executor and puts it
//! on their Python path, so a UDF can import the project's modules wherever it runs.
//!
//! Stored (uncompressed) entries and a fixed date: the archive is a few kilobytes of source, and
//! the same library always gives the same bytes.

use std::io;
use std::path::Path;

/// `dir`'s files, recursively, as a zip whose root is `dir` (what Python's zipimport expects).
pub fn zip_dir(dir: &Path) -> io::Result<Vec<u8>> {
    let mut files = Vec::new();
    collect(dir, "", &mut files)?;
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, bytes) in &files {
        let offset = u32::try_from(out.len()).map_err(|_| too_large())?;
        let size = u32::try_from(bytes.len()).map_err(|_| too_large())?;
        let crc = crc32(bytes);
        let name_len = u16::try_from(name.len()).map_err(|_| too_large())?;
        // Local file header: version 2.0, no flags, stored, 1980-01-01 00:00.
        out.extend(0x0403_4b50u32.to_le_bytes());
        for v in [20u16, 0, 0, 0, 0x21] {
            out.extend(v.to_le_bytes());
        }
        for v in [crc, size, size] {
            out.extend(v.to_le_bytes());
        }
        out.extend(name_len.to_le_bytes());
        out.extend(0u16.to_le_bytes());
        out.extend(name.as_bytes());
        out.extend(bytes);
        // Its central directory entry.
        central.extend(0x0201_4b50u32.to_le_bytes());
        for v in [20u16, 20, 0, 0, 0, 0x21] {
            central.extend(v.to_le_bytes());
        }
        for v in [crc, size, size] {
            central.extend(v.to_le_bytes());
        }
        for v in [name_len, 0, 0, 0, 0] {
            central.extend(v.to_le_bytes());
        }
        central.extend(0u32.to_le_bytes());
        central.extend(offset.to_le_bytes());
        central.extend(name.as_bytes());
    }
    let entries = u16::try_from(files.len()).map_err(|_| too_large())?;
    let central_offset = u32::try_from(out.len()).map_err(|_| too_large())?;
    let central_size = u32::try_from(central.len()).map_err(|_| too_large())?;
    out.extend(central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    for v in [0u16, 0, entries, entries] {
        out.extend(v.to_le_bytes());
    }
    out.extend(central_size.to_le_bytes());
    out.extend(central_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    Ok(out)
}

fn too_large() -> io::Error {
    io::Error::other("the project library is too large for a zip without ZIP64")
}

fn collect(dir: &Path, at: &str, out: &mut Vec<(String, Vec<u8>)>) -> io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = format!("{at}{}", e.file_name().to_string_lossy());
        let ty = e.file_type()?;
        if ty.is_dir() {
            // Bytecode is Python's own cache: the executors compile what they import.
            if e.file_name() == "__pycache__" {
                continue;
            }
            collect(&e.path(), &format!("{name}/"), out)?;
        } else if ty.is_file() {
            out.push((name, std::fs::read(e.path())?));
        }
    }
    Ok(())
}

/// CRC-32 (IEEE), as zip wants it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn python_imports_from_the_zip() {
        let dir = std::env::temp_dir().join(format!("capstan-pyfiles-{}", std::process::id()));
        let lib = dir.join("lib");
        std::fs::create_dir_all(lib.join("helpers")).unwrap();
        std::fs::write(
            lib.join("helpers/__init__.py"),
            "def double(x):\n    return 2 * x\n",
        )
        .unwrap();
        std::fs::write(lib.join("top.py"), "NAME = 'top'\n").unwrap();
        let zip = dir.join("lib.zip");
        std::fs::write(&zip, zip_dir(&lib).unwrap()).unwrap();
        let out = std::process::Command::new("python3")
            .args(["-c", "import sys; sys.path.insert(0, sys.argv[1]); import helpers, top; print(helpers.double(21), top.NAME)"])
            .arg(&zip)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "42 top\n",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
