//! capstan's engine image: this binary with the dynamic loader and the shared libraries it runs
//! on, from scratch (see `capstan_engine::engine_image` for how pods use it).

use std::path::Path;

use capstan_engine::engine_image::{BINARY, LIB_DIR, LOADER};

use crate::ImageError;

/// The Dockerfile of the engine image.
pub fn dockerfile(tag: &str) -> String {
    format!(
        "# capstan's engine image, generated: do not edit\n\
         FROM scratch\n\
         COPY engine/ {dir}/\n\
         LABEL capstan.engine=\"{tag}\"\n",
        dir = capstan_engine::engine_image::DIR
    )
}

/// A shared object `ldd` lists: its path, and whether it is the dynamic loader.
#[derive(Debug, PartialEq, Eq)]
pub struct Library {
    pub path: String,
    pub loader: bool,
}

/// The libraries in `ldd`'s output: `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` for
/// a library, `/lib64/ld-linux-x86-64.so.2 (0x…)` for the loader; the kernel's vDSO has no
/// file and is left out.
pub fn parse_ldd(out: &str) -> Vec<Library> {
    out.lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.rsplit_once(" (0x").map_or(l, |(p, _)| p);
            match l.split_once(" => ") {
                Some((_, path)) if path.starts_with('/') => Some(Library {
                    path: path.to_string(),
                    loader: false,
                }),
                Some(_) => None,
                None if l.starts_with('/') => Some(Library {
                    path: l.to_string(),
                    loader: true,
                }),
                None => None,
            }
        })
        .collect()
}

/// The build context: the Dockerfile, the binary, its libraries and its loader (as
/// [`LOADER`], which any name can be run by).
pub fn context(exe: &Path, tag: &str) -> Result<Vec<(String, Vec<u8>)>, ImageError> {
    let fail = |what: String| ImageError::Bootstrap(format!("capstan's engine image: {what}"));
    let out = std::process::Command::new("ldd")
        .arg(exe)
        .output()
        .map_err(|e| {
            fail(format!(
                "cannot run ldd (Debian's libc-bin) on {}: {e}",
                exe.display()
            ))
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let libs = parse_ldd(&text);
    if !out.status.success() || !libs.iter().any(|l| l.loader) {
        return Err(fail(format!(
            "ldd does not list the dynamic loader of {}: {}{}",
            exe.display(),
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let read = |p: &str| std::fs::read(p).map_err(|e| fail(format!("cannot read {p}: {e}")));
    let mut files = vec![
        ("Dockerfile".to_string(), dockerfile(tag).into_bytes()),
        (format!("engine/{BINARY}"), read(&exe.to_string_lossy())?),
    ];
    for lib in libs {
        let name = if lib.loader {
            LOADER.to_string()
        } else {
            let file = Path::new(&lib.path)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            format!("{LIB_DIR}/{file}")
        };
        files.push((format!("engine/{name}"), read(&lib.path)?));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_libraries_and_the_loader() {
        let out = "\tlinux-vdso.so.1 (0x00007ffc2b5f2000)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f1c3c2a0000)\n\
                   \tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f1c3c1c0000)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f1c3bfdf000)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f1c3f8e4000)\n";
        let libs = parse_ldd(out);
        assert_eq!(
            libs.iter()
                .map(|l| (l.path.as_str(), l.loader))
                .collect::<Vec<_>>(),
            [
                ("/lib/x86_64-linux-gnu/libgcc_s.so.1", false),
                ("/lib/x86_64-linux-gnu/libm.so.6", false),
                ("/lib/x86_64-linux-gnu/libc.so.6", false),
                ("/lib64/ld-linux-x86-64.so.2", true),
            ]
        );
        // A library ldd cannot find has no path: left out here, and the loader refuses to
        // start the binary, which the image's build then shows.
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_empty());
    }

    #[test]
    fn this_binarys_context_holds_it_its_libraries_and_its_loader() {
        let exe = std::env::current_exe().unwrap();
        let files = context(&exe, "0.0.0-test").unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"engine/capstan"), "{names:?}");
        assert!(names.contains(&"engine/lib/ld.so"), "{names:?}");
        assert!(
            names.iter().any(|n| n.starts_with("engine/lib/libc.so")),
            "{names:?}"
        );
    }
}
