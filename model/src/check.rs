//! `check` assertions, evaluated on an [`Observation`], so the model and a real driver are
//! judged by the same code from what each shows.

use crate::observe::Observation;
use crate::params::DriverKind;
use std::collections::BTreeMap;
use std::fmt;

/// An expected count of thin-pool data blocks: exact or a range, of the pool's figure or of
/// its change since an earlier `check` step. Where a rule decides the figure a scenario
/// states it exactly; where a filesystem's allocator does (devicemapper), as a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRange {
    /// Least value allowed.
    pub min: Option<i64>,
    /// Greatest value allowed.
    pub max: Option<i64>,
    /// Index of an earlier `check` step that observed the pool: the figure checked is the
    /// change since then (negative when blocks were freed).
    pub since: Option<usize>,
}

impl BlockRange {
    /// Exactly `n` blocks in use.
    pub fn exactly(n: u64) -> BlockRange {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        BlockRange {
            min: Some(n),
            max: Some(n),
            since: None,
        }
    }

    /// Whether `v` is allowed.
    pub fn contains(&self, v: i64) -> bool {
        self.min.is_none_or(|m| v >= m) && self.max.is_none_or(|m| v <= m)
    }
}

impl fmt::Display for BlockRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.min, self.max, self.since) {
            (Some(a), Some(b), None) if a == b => write!(f, "{a}"),
            _ => {
                let mut parts = Vec::new();
                if let Some(s) = self.since {
                    parts.push(format!("since = {s}"));
                }
                if let Some(m) = self.min {
                    parts.push(format!("min = {m}"));
                }
                if let Some(m) = self.max {
                    parts.push(format!("max = {m}"));
                }
                write!(f, "{{ {} }}", parts.join(", "))
            }
        }
    }
}

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
    /// Thin-pool data blocks in use, or their change since an earlier check.
    PoolDataBlocks(BlockRange),
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
            Check::PoolDataBlocks(r) => write!(f, "pool_data_blocks = {r}"),
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

/// The thin pool's data blocks in use, if the driver has a pool.
pub fn pool_data_blocks(obs: &Observation) -> Option<u64> {
    obs.accounting.pool.as_ref().map(|p| p.used_data_blocks)
}

/// Evaluates `check` for `container`; `Err` says what was found instead. A check of the
/// change since an earlier step needs [`evaluate_since`].
pub fn evaluate(
    obs: &Observation,
    driver: DriverKind,
    container: &str,
    has_image: bool,
    check: &Check,
) -> Result<(), String> {
    evaluate_since(obs, driver, container, has_image, check, &BTreeMap::new())
}

/// [`evaluate`], with the pool figures ([`pool_data_blocks`]) earlier check steps observed,
/// by step index.
pub fn evaluate_since(
    obs: &Observation,
    driver: DriverKind,
    container: &str,
    has_image: bool,
    check: &Check,
    earlier: &BTreeMap<usize, u64>,
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
        Check::PoolDataBlocks(r) => {
            let got = pool_data_blocks(obs).ok_or_else(|| format!("{driver} has no thin pool"))?;
            let got = i64::try_from(got).unwrap_or(i64::MAX);
            let (v, what) = match r.since {
                None => (got, format!("it is {got}")),
                Some(k) => {
                    let before = earlier
                        .get(&k)
                        .ok_or_else(|| format!("step {k} observed no pool figure"))?;
                    let v = got - i64::try_from(*before).unwrap_or(i64::MAX);
                    (v, format!("it is {got}, {v:+} since step {k}"))
                }
            };
            if r.contains(v) {
                Ok(())
            } else {
                Err(what)
            }
        }
    }
}
