//! The guest's initramfs, made on the fly: an uncompressed `newc` cpio archive (the kernel
//! unpacks it as it is; no cpio or gzip program needed) holding busybox, the kernel
//! modules, the layerspec binary, the helper programs the real drivers run, their shared
//! libraries, the input files and `/init`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};

/// One entry of the archive.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    Dir,
    /// A host file's content, with this mode.
    File(PathBuf, u32),
    /// Literal content, with this mode.
    Data(Vec<u8>, u32),
    Symlink(String),
    CharDev(u32, u32),
}

/// The archive's entries by path (relative, no leading `/`): sorted, so every directory
/// comes before what it holds.
#[derive(Clone, Debug, Default)]
pub struct Archive {
    entries: BTreeMap<PathBuf, Entry>,
}

/// `/a/b` or `a/b` -> `a/b`; `..` is refused.
fn rel(path: &Path) -> io::Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            _ => {
                return Err(io::Error::other(format!(
                    "{}: no `..` in a guest path",
                    path.display()
                )))
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(io::Error::other("an empty guest path"));
    }
    Ok(out)
}

impl Archive {
    fn put(&mut self, at: &Path, e: Entry) -> io::Result<()> {
        let at = rel(at)?;
        for a in at.ancestors().skip(1) {
            if !a.as_os_str().is_empty() {
                self.entries.entry(a.to_path_buf()).or_insert(Entry::Dir);
            }
        }
        self.entries.insert(at, e);
        Ok(())
    }

    /// A directory (parents are added for every entry anyway).
    pub fn dir(&mut self, at: &Path) -> io::Result<()> {
        self.put(at, Entry::Dir)
    }

    /// A copy of host file `from` (symlinks followed) at `at`, with `from`'s mode.
    pub fn file(&mut self, at: &Path, from: &Path) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(from)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", from.display())))?;
        self.put(
            at,
            Entry::File(from.to_path_buf(), meta.permissions().mode() & 0o7777),
        )
    }

    /// A file with `data` and `mode`.
    pub fn data(&mut self, at: &Path, data: impl Into<Vec<u8>>, mode: u32) -> io::Result<()> {
        self.put(at, Entry::Data(data.into(), mode))
    }

    /// A symbolic link.
    pub fn symlink(&mut self, at: &Path, target: &str) -> io::Result<()> {
        self.put(at, Entry::Symlink(target.to_string()))
    }

    /// A character device node (`/dev/console` before devtmpfs is mounted).
    pub fn char_dev(&mut self, at: &Path, major: u32, minor: u32) -> io::Result<()> {
        self.put(at, Entry::CharDev(major, minor))
    }

    /// Whether the archive has an entry at `at`.
    pub fn has(&self, at: &Path) -> bool {
        rel(at).is_ok_and(|r| self.entries.contains_key(&r))
    }

    /// Writes the archive to `path`; returns its size in bytes.
    pub fn write(&self, path: &Path) -> io::Result<u64> {
        let mut w = Counting {
            inner: BufWriter::new(File::create(path)?),
            n: 0,
        };
        for (ino, (name, e)) in self.entries.iter().enumerate() {
            let name = name.to_string_lossy();
            let ino = ino as u32 + 1;
            match e {
                Entry::Dir => header(&mut w, &name, ino, 0o040755, 2, 0, (0, 0))?,
                Entry::CharDev(maj, min) => {
                    header(&mut w, &name, ino, 0o020600, 1, 0, (*maj, *min))?
                }
                Entry::Symlink(t) => {
                    header(&mut w, &name, ino, 0o120777, 1, t.len() as u64, (0, 0))?;
                    w.write_all(t.as_bytes())?;
                    pad(&mut w)?;
                }
                Entry::Data(d, mode) => {
                    header(
                        &mut w,
                        &name,
                        ino,
                        0o100000 | mode,
                        1,
                        d.len() as u64,
                        (0, 0),
                    )?;
                    w.write_all(d)?;
                    pad(&mut w)?;
                }
                Entry::File(from, mode) => {
                    let mut f = File::open(from)?;
                    let len = f.metadata()?.len();
                    header(&mut w, &name, ino, 0o100000 | mode, 1, len, (0, 0))?;
                    let copied = io::copy(&mut (&mut f).take(len), &mut w)?;
                    if copied != len {
                        return Err(io::Error::other(format!(
                            "{} changed while being copied",
                            from.display()
                        )));
                    }
                    pad(&mut w)?;
                }
            }
        }
        header(&mut w, "TRAILER!!!", 0, 0, 1, 0, (0, 0))?;
        w.inner.flush()?;
        Ok(w.n)
    }
}

struct Counting<W: Write> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Zero bytes up to the next multiple of 4.
fn pad<W: Write>(w: &mut Counting<W>) -> io::Result<()> {
    let k = (4 - (w.n % 4) as usize) % 4;
    w.write_all(&[0u8; 3][..k])
}

/// A `newc` header ("070701", thirteen 8-digit hex fields) and the name, padded.
fn header<W: Write>(
    w: &mut Counting<W>,
    name: &str,
    ino: u32,
    mode: u32,
    nlink: u32,
    size: u64,
    rdev: (u32, u32),
) -> io::Result<()> {
    let size = u32::try_from(size).map_err(|_| io::Error::other(format!("{name}: over 4 GiB")))?;
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        size,
        0, // dev major
        0, // dev minor
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0, // check
    ];
    let mut h = String::from("070701");
    for f in fields {
        h.push_str(&format!("{f:08X}"));
    }
    w.write_all(h.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad(w)
}

/// The shared libraries `bin` loads, as `ldd` lists them (absolute paths, the program
/// interpreter included); empty for a static binary.
pub fn shared_libs(bin: &Path) -> io::Result<Vec<PathBuf>> {
    let out = std::process::Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("running ldd: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // `ldd` says "not a dynamic executable" (exit 1) for static binaries.
        let err = String::from_utf8_lossy(&out.stderr);
        if text.contains("not a dynamic") || err.contains("not a dynamic") {
            return Ok(Vec::new());
        }
        return Err(io::Error::other(format!(
            "ldd {}: {}",
            bin.display(),
            err.trim()
        )));
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        if line.contains("not found") {
            return Err(io::Error::other(format!(
                "ldd {}: {}",
                bin.display(),
                line.trim()
            )));
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or
        // `/lib64/ld-linux-x86-64.so.2 (0x...)`; vdso lines have no path.
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout() {
        let dir = std::env::temp_dir().join(format!("layerspec-{}-cpio-test", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut a = Archive::default();
        a.data(Path::new("/etc/x"), "hello", 0o644).unwrap();
        a.symlink(Path::new("bin/sh"), "busybox").unwrap();
        a.char_dev(Path::new("/dev/console"), 5, 1).unwrap();
        let path = dir.join("a.cpio");
        let n = a.write(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(n as usize, bytes.len());
        assert_eq!(bytes.len() % 4, 0);
        let text = String::from_utf8_lossy(&bytes);
        // Parents first: bin, bin/sh, dev, dev/console, etc, etc/x, then the trailer.
        let order: Vec<usize> = [
            "bin\0",
            "bin/sh\0",
            "dev\0",
            "dev/console\0",
            "etc\0",
            "etc/x\0",
            "TRAILER!!!\0",
        ]
        .iter()
        .map(|n| text.find(n).unwrap_or_else(|| panic!("{n:?} missing")))
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
        assert!(text.starts_with("070701"));
        assert!(text.contains("hello"));
        // etc/x: mode 0100644, size 5.
        let at = text.find("etc/x\0").unwrap() - 110;
        assert_eq!(&text[at + 14..at + 22], "000081A4");
        assert_eq!(&text[at + 54..at + 62], "00000005");
    }

    #[test]
    fn no_dotdot() {
        let mut a = Archive::default();
        assert!(a.dir(Path::new("a/../b")).is_err());
    }

    #[test]
    fn this_test_binary_has_libc() {
        let libs = shared_libs(&std::env::current_exe().unwrap()).unwrap();
        if !libs.is_empty() {
            assert!(
                libs.iter().any(|l| l.to_string_lossy().contains("libc.so")),
                "{libs:?}"
            );
        }
    }
}
