//! Device-mapper through its ioctls on `/dev/mapper/control` (include/uapi/linux/dm-ioctl.h,
//! interface 4): create, load a table, suspend, resume, remove, send a target message, read
//! the status and list devices. The `dm_ioctl` header and `dm_target_spec` records are
//! encoded and decoded here byte by byte; the one raw call is `sys::dm_ioctl`. No udev: the
//! caller makes its own device node from the `dev` the kernel returns.
//!
//! Every device this crate creates is named `layerspec-<pid>-...`, so [`sweep`] can remove
//! what a killed run left (thin devices before their pool).

use crate::sys::{self, Log, DM_IOCTL_SIZE};
use std::fmt;
use std::fs::File;
use std::io;

// Commands (enum in dm-ioctl.h).
const DM_LIST_DEVICES: u8 = 2;
const DM_DEV_CREATE: u8 = 3;
const DM_DEV_REMOVE: u8 = 4;
const DM_DEV_SUSPEND: u8 = 6;
const DM_TABLE_LOAD: u8 = 9;
const DM_TABLE_STATUS: u8 = 12;
const DM_TARGET_MSG: u8 = 14;

// Flags.
const DM_SUSPEND_FLAG: u32 = 1 << 1;
const DM_STATUS_TABLE_FLAG: u32 = 1 << 4;
const DM_BUFFER_FULL_FLAG: u32 = 1 << 8;
const DM_NOFLUSH_FLAG: u32 = 1 << 11;
const DM_DATA_OUT_FLAG: u32 = 1 << 16;

/// `sizeof(struct dm_target_spec)`.
const TARGET_SPEC_SIZE: usize = 40;
/// `DM_NAME_LEN`.
const NAME_LEN: usize = 128;

/// A failed device-mapper call: what was asked, and the kernel's errno.
#[derive(Debug)]
pub struct DmError {
    /// The call, as `dmsetup` would spell it.
    pub what: String,
    /// The error.
    pub source: io::Error,
}

impl DmError {
    /// The errno, when the kernel gave one.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

impl fmt::Display for DmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.source)
    }
}

impl std::error::Error for DmError {}

/// What the kernel says of a device in a `dm_ioctl` answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Its `dev_t` (huge encoding, as `makedev` reads it).
    pub dev: u64,
    /// Open count.
    pub open_count: i32,
    /// Event counter: bumped by `dm_table_event` (for a pool: the low-water event, mode
    /// changes).
    pub event_nr: u32,
    /// Flags (`DM_SUSPEND_FLAG`, ...).
    pub flags: u32,
}

/// One line of a table or of a status: `<start> <length> <type> <params>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// First sector.
    pub start: u64,
    /// Sectors.
    pub length: u64,
    /// Target type (`thin-pool`, `thin`).
    pub kind: String,
    /// Table parameters, or the status line.
    pub params: String,
}

/// An open `/dev/mapper/control`.
pub struct Control {
    file: File,
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_ne_bytes());
}

fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// A `dm_ioctl` buffer of `size` bytes for device `name`: interface version 4.0.0 (the
/// kernel accepts any older minor), the payload starting right after the header.
fn request(name: &str, flags: u32, size: usize) -> io::Result<Vec<u8>> {
    if name.len() >= NAME_LEN {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    let mut b = vec![0u8; size.max(DM_IOCTL_SIZE)];
    put_u32(&mut b, 0, 4);
    let len = b.len() as u32;
    put_u32(&mut b, 12, len);
    put_u32(&mut b, 16, DM_IOCTL_SIZE as u32);
    put_u32(&mut b, 28, flags);
    b[48..48 + name.len()].copy_from_slice(name.as_bytes());
    Ok(b)
}

fn info_of(b: &[u8]) -> DeviceInfo {
    DeviceInfo {
        open_count: get_u32(b, 24) as i32,
        flags: get_u32(b, 28),
        event_nr: get_u32(b, 32),
        dev: get_u64(b, 40),
    }
}

impl Control {
    /// Opens the control node.
    pub fn open() -> io::Result<Control> {
        Ok(Control {
            file: std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/mapper/control")?,
        })
    }

    fn call(&self, nr: u8, buf: &mut [u8], what: impl Fn() -> String) -> Result<(), DmError> {
        sys::dm_ioctl(&self.file, nr, buf).map_err(|source| DmError {
            what: what(),
            source,
        })
    }

    /// Calls `nr` with an output payload, growing the buffer while the kernel says it was
    /// too small.
    fn call_out(
        &self,
        nr: u8,
        name: &str,
        flags: u32,
        what: impl Fn() -> String,
    ) -> Result<Vec<u8>, DmError> {
        let mut size = 16 * 1024;
        loop {
            let mut b = request(name, flags, size).map_err(|source| DmError {
                what: what(),
                source,
            })?;
            self.call(nr, &mut b, &what)?;
            if get_u32(&b, 28) & DM_BUFFER_FULL_FLAG == 0 {
                return Ok(b);
            }
            size *= 4;
        }
    }

    /// `dmsetup create <name> --notable`.
    pub fn create(&self, log: &mut Log, name: &str) -> Result<DeviceInfo, DmError> {
        let what = || format!("dmsetup create {name}");
        log.note(what());
        let mut b = request(name, 0, DM_IOCTL_SIZE).map_err(|source| DmError {
            what: what(),
            source,
        })?;
        self.call(DM_DEV_CREATE, &mut b, what)?;
        Ok(info_of(&b))
    }

    /// `dmsetup load <name> --table ...`: the inactive table, made live by [`resume`].
    ///
    /// [`resume`]: Control::resume
    pub fn load(&self, log: &mut Log, name: &str, targets: &[Target]) -> Result<(), DmError> {
        let lines: Vec<String> = targets
            .iter()
            .map(|t| format!("{} {} {} {}", t.start, t.length, t.kind, t.params))
            .collect();
        let what = || format!("dmsetup load {name} --table {:?}", lines.join("\\n"));
        log.note(what());
        let payload: usize = targets
            .iter()
            .map(|t| TARGET_SPEC_SIZE + align8(t.params.len() + 1))
            .sum();
        let mut b = request(name, 0, DM_IOCTL_SIZE + payload).map_err(|source| DmError {
            what: what(),
            source,
        })?;
        put_u32(&mut b, 20, targets.len() as u32);
        let mut at = DM_IOCTL_SIZE;
        for t in targets {
            if t.kind.len() >= 16 {
                return Err(DmError {
                    what: what(),
                    source: io::Error::from_raw_os_error(libc::EINVAL),
                });
            }
            let next = TARGET_SPEC_SIZE + align8(t.params.len() + 1);
            put_u64(&mut b, at, t.start);
            put_u64(&mut b, at + 8, t.length);
            // On input `next` counts from this spec (populate_table / next_target).
            put_u32(&mut b, at + 20, next as u32);
            b[at + 24..at + 24 + t.kind.len()].copy_from_slice(t.kind.as_bytes());
            let p = at + TARGET_SPEC_SIZE;
            b[p..p + t.params.len()].copy_from_slice(t.params.as_bytes());
            at += next;
        }
        self.call(DM_TABLE_LOAD, &mut b, what)
    }

    fn suspend_call(&self, log: &mut Log, name: &str, flags: u32) -> Result<DeviceInfo, DmError> {
        let verb = if flags & DM_SUSPEND_FLAG != 0 {
            "suspend"
        } else {
            "resume"
        };
        let what = || format!("dmsetup {verb} {name}");
        log.note(what());
        let mut b = request(name, flags, DM_IOCTL_SIZE).map_err(|source| DmError {
            what: what(),
            source,
        })?;
        self.call(DM_DEV_SUSPEND, &mut b, what)?;
        Ok(info_of(&b))
    }

    /// `dmsetup resume <name>`: makes a loaded table live.
    pub fn resume(&self, log: &mut Log, name: &str) -> Result<DeviceInfo, DmError> {
        self.suspend_call(log, name, 0)
    }

    /// `dmsetup suspend <name>` (flushing).
    pub fn suspend(&self, log: &mut Log, name: &str) -> Result<(), DmError> {
        self.suspend_call(log, name, DM_SUSPEND_FLAG).map(|_| ())
    }

    /// `dmsetup remove <name>`.
    pub fn remove(&self, log: &mut Log, name: &str) -> Result<(), DmError> {
        let what = || format!("dmsetup remove {name}");
        log.note(what());
        let mut b = request(name, 0, DM_IOCTL_SIZE).map_err(|source| DmError {
            what: what(),
            source,
        })?;
        self.call(DM_DEV_REMOVE, &mut b, what)
    }

    /// `dmsetup message <name> <sector> <message>`; the target's answer, if it gave one.
    pub fn message(
        &self,
        log: &mut Log,
        name: &str,
        sector: u64,
        message: &str,
    ) -> Result<Option<String>, DmError> {
        let what = || format!("dmsetup message {name} {sector} {message}");
        log.note(what());
        let size = (DM_IOCTL_SIZE + 8 + message.len() + 1).max(DM_IOCTL_SIZE + 4096);
        let mut b = request(name, 0, size).map_err(|source| DmError {
            what: what(),
            source,
        })?;
        put_u64(&mut b, DM_IOCTL_SIZE, sector);
        let m = DM_IOCTL_SIZE + 8;
        b[m..m + message.len()].copy_from_slice(message.as_bytes());
        self.call(DM_TARGET_MSG, &mut b, what)?;
        if get_u32(&b, 28) & DM_DATA_OUT_FLAG == 0 {
            return Ok(None);
        }
        let start = get_u32(&b, 16) as usize;
        Ok(Some(c_string(&b[start..])))
    }

    /// `dmsetup status <name>` (or `dmsetup table <name>` with `table`). A thin pool
    /// commits its metadata before it answers (`pool_status` without noflush).
    pub fn status(&self, name: &str, table: bool) -> Result<(DeviceInfo, Vec<Target>), DmError> {
        let verb = if table { "table" } else { "status" };
        let what = || format!("dmsetup {verb} {name}");
        let flags = if table { DM_STATUS_TABLE_FLAG } else { 0 };
        let b = self.call_out(DM_TABLE_STATUS, name, flags, what)?;
        let info = info_of(&b);
        let start = get_u32(&b, 16) as usize;
        let count = get_u32(&b, 20) as usize;
        let mut targets = Vec::with_capacity(count);
        let mut at = start;
        for _ in 0..count {
            if at + TARGET_SPEC_SIZE > b.len() {
                break;
            }
            targets.push(Target {
                start: get_u64(&b, at),
                length: get_u64(&b, at + 8),
                kind: c_string(&b[at + 24..at + 40]),
                params: c_string(&b[at + TARGET_SPEC_SIZE..]),
            });
            // On output `next` counts from the start of the payload (retrieve_status).
            at = start + get_u32(&b, at + 20) as usize;
        }
        Ok((info, targets))
    }

    /// `dmsetup status --noflush <name>`: the status without the commit a pool makes
    /// before it answers. Returns the first target's status line.
    pub fn status_noflush(&self, name: &str) -> Result<String, DmError> {
        let what = || format!("dmsetup status --noflush {name}");
        let b = self.call_out(DM_TABLE_STATUS, name, DM_NOFLUSH_FLAG, what)?;
        let start = get_u32(&b, 16) as usize;
        if get_u32(&b, 20) == 0 || start + TARGET_SPEC_SIZE > b.len() {
            return Ok(String::new());
        }
        Ok(c_string(&b[start + TARGET_SPEC_SIZE..]))
    }

    /// `dmsetup ls`: every device's name and `dev_t`, sorted by name.
    pub fn list(&self) -> Result<Vec<(String, u64)>, DmError> {
        let b = self.call_out(DM_LIST_DEVICES, "", 0, || "dmsetup ls".to_string())?;
        let mut at = get_u32(&b, 16) as usize;
        let mut out = Vec::new();
        // struct dm_name_list { __u64 dev; __u32 next; char name[]; }; dev 0: no devices.
        while at + 12 < b.len() {
            let dev = get_u64(&b, at);
            if dev == 0 {
                break;
            }
            out.push((c_string(&b[at + 12..]), dev));
            let next = get_u32(&b, at + 8) as usize;
            if next == 0 {
                break;
            }
            at += next;
        }
        out.sort();
        Ok(out)
    }
}

/// Removes the device-mapper devices of dead layerspec processes (`layerspec-<pid>-...`
/// with no such pid): thin devices first, then their pools. Returns their names. Without
/// device-mapper there is nothing to sweep.
pub fn sweep() -> Vec<String> {
    let Ok(ctl) = Control::open() else {
        return Vec::new();
    };
    let Ok(devices) = ctl.list() else {
        return Vec::new();
    };
    let dead = |name: &str| {
        name.strip_prefix(crate::PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|pid| !sys::pid_alive(pid))
    };
    let mut log = Log::default();
    let mut removed = Vec::new();
    let (pools, thins): (Vec<_>, Vec<_>) = devices
        .into_iter()
        .filter(|(n, _)| dead(n))
        .partition(|(n, _)| n.ends_with("-pool"));
    for (name, _) in thins.into_iter().chain(pools) {
        if ctl.remove(&mut log, &name).is_ok() {
            removed.push(name);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_is_the_kernels() {
        let b = request("pool", DM_SUSPEND_FLAG, 400).unwrap();
        assert_eq!(b.len(), 400);
        assert_eq!(get_u32(&b, 0), 4, "interface major");
        assert_eq!(get_u32(&b, 12), 400, "data_size");
        assert_eq!(get_u32(&b, 16), 312, "data_start");
        assert_eq!(get_u32(&b, 28), DM_SUSPEND_FLAG);
        assert_eq!(c_string(&b[48..176]), "pool");
        assert!(request(&"x".repeat(128), 0, 0).is_err());
    }
}
