//! `check` assertions, evaluated on an [`Observation`], so the model and a real driver are
//! judged by the same code from what each shows.

use crate::observe::Observation;
use crate::params::DriverKind;
use std::fmt;

/// One assertion of a `check` step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// The writable layer holds a whiteout for this path, in the driver's encoding.
    Whiteout(String),
    /// The writable layer holds this directory, marked opaque.
    Opaque(String),
    /// The writable layer holds this path (not as a whiteout).
    InUpper(String),
    /// The writable layer does not hold this path (or holds only a whiteout for it).
    NotInUpper(String),
    /// Bytes copied up into the container so far.
    CopiedUpBytes(u64),
    /// Inodes the driver's storage uses.
    InodesUsed(u64),
    /// Thin-pool data blocks in use.
    PoolDataBlocks(u64),
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Check::Whiteout(p) => write!(f, "whiteout = {p:?}"),
            Check::Opaque(p) => write!(f, "opaque = {p:?}"),
            Check::InUpper(p) => write!(f, "in_upper = {p:?}"),
            Check::NotInUpper(p) => write!(f, "not_in_upper = {p:?}"),
            Check::CopiedUpBytes(n) => write!(f, "copied_up_bytes = {n}"),
            Check::InodesUsed(n) => write!(f, "inodes_used = {n}"),
            Check::PoolDataBlocks(n) => write!(f, "pool_data_blocks = {n}"),
        }
    }
}

/// Where a container's writable layer lives in the driver's storage listing.
pub fn upper_dir(driver: DriverKind, container: &str, has_image: bool) -> Option<String> {
    match driver {
        DriverKind::Aufs => Some(format!("aufs/diff/{container}")),
        DriverKind::Overlay if has_image => Some(format!("overlay/{container}/upper")),
        DriverKind::Overlay => Some(format!("overlay/{container}/root")),
        DriverKind::Overlay2 => Some(format!("overlay2/{container}/diff")),
        DriverKind::Devicemapper | DriverKind::Thinpool => None,
    }
}

/// Whether this driver can answer the check at all.
pub fn applies(driver: DriverKind, check: &Check) -> bool {
    match check {
        Check::Whiteout(_) | Check::Opaque(_) | Check::InUpper(_) | Check::NotInUpper(_) => {
            upper_dir(driver, "c", true).is_some()
        }
        Check::CopiedUpBytes(_) | Check::InodesUsed(_) => driver != DriverKind::Thinpool,
        Check::PoolDataBlocks(_) => {
            matches!(driver, DriverKind::Thinpool | DriverKind::Devicemapper)
        }
    }
}

/// Evaluates `check` for `container`; `Err` says what was found instead.
pub fn evaluate(
    obs: &Observation,
    driver: DriverKind,
    container: &str,
    has_image: bool,
    check: &Check,
) -> Result<(), String> {
    let upper = || {
        upper_dir(driver, container, has_image)
            .ok_or_else(|| format!("{driver} has no writable layer to check"))
    };
    let at = |p: &str| -> Result<String, String> { Ok(format!("{}{}", upper()?, p)) };
    let kind_at = |p: &str| -> Result<Option<String>, String> {
        Ok(obs.storage.get(&at(p)?).map(|e| e.kind.clone()))
    };
    let aufs_whiteout = |p: &str| -> Result<bool, String> {
        let (dir, name) = p.rsplit_once('/').unwrap_or(("", p));
        Ok(obs
            .storage
            .contains_key(&format!("{}{dir}/.wh.{name}", upper()?)))
    };
    let has_whiteout = |p: &str| -> Result<bool, String> {
        if driver == DriverKind::Aufs {
            aufs_whiteout(p)
        } else {
            Ok(kind_at(p)?.as_deref() == Some("whiteout"))
        }
    };
    let found = |p: &str| -> Result<String, String> {
        Ok(match kind_at(p)? {
            Some(k) => format!("the writable layer has a {k} at {p}"),
            None => format!("the writable layer has nothing at {p}"),
        })
    };
    match check {
        Check::Whiteout(p) => {
            if has_whiteout(p)? {
                Ok(())
            } else {
                Err(found(p)?)
            }
        }
        Check::Opaque(p) => {
            let opaque = if driver == DriverKind::Aufs {
                obs.storage
                    .contains_key(&format!("{}/.wh..wh..opq", at(p)?))
            } else {
                obs.storage.get(&at(p)?).is_some_and(|e| {
                    e.xattrs.get("trusted.overlay.opaque").map(String::as_str) == Some("y")
                })
            };
            if opaque {
                Ok(())
            } else {
                Err(format!("{} (not opaque)", found(p)?))
            }
        }
        Check::InUpper(p) => match kind_at(p)? {
            Some(k) if k != "whiteout" => Ok(()),
            _ => Err(found(p)?),
        },
        Check::NotInUpper(p) => match kind_at(p)? {
            Some(k) if k != "whiteout" => Err(found(p)?),
            _ => Ok(()),
        },
        Check::CopiedUpBytes(n) => {
            let got = obs
                .accounting
                .copied_up_bytes
                .get(container)
                .copied()
                .unwrap_or(0);
            if got == *n {
                Ok(())
            } else {
                Err(format!("copied_up_bytes is {got}"))
            }
        }
        Check::InodesUsed(n) => {
            let got = obs.accounting.inodes_used;
            if got == *n {
                Ok(())
            } else {
                Err(format!("inodes_used is {got}"))
            }
        }
        Check::PoolDataBlocks(_) => Err(format!(
            "pool_data_blocks needs the thin-pool model, which {driver} does not have yet"
        )),
    }
}
