//! File steps run for real. The sandbox thread chroots into the container's merged root
//! first, so every path (and every symlink in it, absolute targets and `..` included)
//! resolves inside the container, exactly as for a process in it.

use crate::content::{hash_range, write_content};
use crate::sys;
use layerspec_model::{
    Content, Errno, FileOp, Identity, OpenFlags, Outcome, StatInfo, Value, SPARSE_DIGEST_MIN,
};
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

fn errno(e: io::Error) -> Errno {
    // An errno outside the spec's list is reported as EIO so the difference still shows.
    sys::errno_of(&e).unwrap_or(Errno::EIO)
}

/// The `open(2)` flag bits of an `open` step's flags.
pub fn open_bits(flags: OpenFlags) -> libc::c_int {
    let mut f = match (flags.write, flags.read_write) {
        (true, true) => libc::O_RDWR,
        (true, false) => libc::O_WRONLY,
        _ => libc::O_RDONLY,
    };
    for (on, bit) in [
        (flags.creat, libc::O_CREAT),
        (flags.excl, libc::O_EXCL),
        (flags.trunc, libc::O_TRUNC),
        (flags.append, libc::O_APPEND),
        (flags.nofollow, libc::O_NOFOLLOW),
        (flags.directory, libc::O_DIRECTORY),
    ] {
        if on {
            f |= bit;
        }
    }
    f
}

/// Runs one file step in the current (chrooted) root.
pub fn run(op: &FileOp) -> Outcome {
    run_io(op).map_err(errno)
}

fn run_io(op: &FileOp) -> io::Result<Value> {
    let p = |s: &String| Path::new(s).to_path_buf();
    Ok(match op {
        FileOp::Create { path, mode } => {
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode.unwrap_or(0o644))
                .open(p(path))?;
            Value::Unit
        }
        FileOp::Open { path, flags, mode } => {
            sys::open_close(&p(path), open_bits(*flags), mode.unwrap_or(0o644))?;
            Value::Unit
        }
        FileOp::Write { path, offset, data } => {
            let mut f = fs::OpenOptions::new().write(true).open(p(path))?;
            f.seek(SeekFrom::Start(*offset))?;
            write_content(&mut f, data, false)?;
            sys::close(f)?;
            Value::Unit
        }
        FileOp::Append { path, data } => {
            let mut f = fs::OpenOptions::new().append(true).open(p(path))?;
            write_content(&mut f, &Content::Bytes(data.clone()), true)?;
            sys::close(f)?;
            Value::Unit
        }
        FileOp::Truncate { path, size } => {
            // truncate(2), not an open: the spec's truncate step.
            let c = std::ffi::CString::new(path.as_bytes())
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            truncate(&c, *size)?;
            Value::Unit
        }
        FileOp::Read { path, offset, len } => {
            let mut f = fs::File::open(p(path))?;
            f.seek(SeekFrom::Start(*offset))?;
            // What the read returns: to the end of the file, at most `len`.
            let size = f.metadata()?.len();
            let n = len.unwrap_or(u64::MAX).min(size.saturating_sub(*offset));
            if n > SPARSE_DIGEST_MIN {
                Value::Digest(hash_range(&f, *offset, n)?.text())
            } else {
                let mut buf = Vec::new();
                f.take(n).read_to_end(&mut buf)?;
                Value::Bytes(buf)
            }
        }
        FileOp::Unlink { path } => {
            fs::remove_file(p(path))?;
            Value::Unit
        }
        FileOp::Mkdir { path, mode } => {
            fs::DirBuilder::new()
                .mode(mode.unwrap_or(0o755))
                .create(p(path))?;
            Value::Unit
        }
        FileOp::Rmdir { path } => {
            fs::remove_dir(p(path))?;
            Value::Unit
        }
        FileOp::Rename { from, to } => {
            fs::rename(p(from), p(to))?;
            Value::Unit
        }
        FileOp::Link { from, to } => {
            fs::hard_link(p(from), p(to))?;
            Value::Unit
        }
        FileOp::Symlink { target, path } => {
            std::os::unix::fs::symlink(target, p(path))?;
            Value::Unit
        }
        FileOp::Readlink { path } => {
            Value::Target(fs::read_link(p(path))?.to_string_lossy().into_owned())
        }
        FileOp::Chmod { path, mode } => {
            fs::set_permissions(p(path), fs::Permissions::from_mode(*mode))?;
            Value::Unit
        }
        FileOp::Utimes { path, atime, mtime } => {
            sys::utimes(&p(path), *atime as i64, *mtime as i64)?;
            Value::Unit
        }
        FileOp::Chown { path, uid, gid } => {
            std::os::unix::fs::chown(p(path), *uid, *gid)?;
            Value::Unit
        }
        FileOp::AsUser { cred, op } => {
            return sys::as_user(cred.uid, cred.gid, || run_io(op))?;
        }
        FileOp::Stat { path } => {
            let m = fs::symlink_metadata(p(path))?;
            let kind = crate::observe::kind_of(&m);
            Value::Stat(StatInfo {
                kind,
                size: m.size(),
                mode: m.mode() & 0o7777,
                nlink: m.nlink() as u32,
                uid: m.uid(),
                gid: m.gid(),
                id: Identity {
                    dev: m.dev(),
                    ino: m.ino(),
                    mtime: (m.mtime() as u64)
                        .wrapping_mul(1_000_000_000)
                        .wrapping_add(m.mtime_nsec() as u64),
                },
            })
        }
        FileOp::Readdir { path } => {
            let mut names: Vec<String> = fs::read_dir(p(path))?
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<Result<_, _>>()?;
            names.sort();
            Value::Names(names)
        }
        FileOp::Setxattr { path, name, value } => {
            sys::setxattr(&p(path), name, Some(value))?;
            Value::Unit
        }
        FileOp::Getxattr { path, name } => Value::Bytes(sys::getxattr(&p(path), name, true)?),
        FileOp::Removexattr { path, name } => {
            sys::setxattr(&p(path), name, None)?;
            Value::Unit
        }
    })
}

fn truncate(path: &std::ffi::CStr, size: u64) -> io::Result<()> {
    sys::truncate(path, size)
}
