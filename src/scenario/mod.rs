//! Scenario files (`docs/SCENARIOS.md`): what they hold once parsed, and the parser.

pub mod limits;
mod parse;

pub use parse::{parse_file, parse_str, ParseError};

use layerspec_model::KernelVersion;
use layerspec_model::{
    Check, DriverKind, Errno, LayerSpec, Op, OverlayOptions, PoolParams, ThinCheck, ThinOp,
};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The most bytes an entry's or a `write`'s `size` may ask for: 64 GiB. Both sides make
/// them and digest them (about 1.5 s a GiB on the model), where a hole costs nothing: a
/// truncate's `size` and an `offset` may reach 2^63 - 1.
pub const MAX_DATA: u64 = 64 << 30;

pub(crate) fn too_much_data(n: u64) -> String {
    format!(
        "`size = {n}`: an entry or a write holds at most {MAX_DATA} bytes (64 GiB) of data; \
         a hole made with `truncate` or a far `offset` has no such limit"
    )
}

/// A parsed scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The file it came from.
    pub file: PathBuf,
    /// The one-line title.
    pub title: String,
    /// Claim ids and references it checks.
    pub claims: Vec<String>,
    /// Drivers named by the file (`None`: the default set).
    pub drivers: Option<Vec<DriverKind>>,
    /// `kernel`: the kernel versions whose behaviour the file states, for every driver or
    /// per driver (`None`: any).
    pub kernel: Option<PerDriver<KernelRange>>,
    /// `[options]`.
    pub options: Options,
    /// Image layers in file order.
    pub layers: Vec<LayerSpec>,
    /// `[[container]]` tables: id and image.
    pub containers: Vec<(String, Option<String>)>,
    /// The trace.
    pub steps: Vec<Step>,
}

/// `[options]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Backing filesystem of the driver root.
    pub backing: Backing,
    /// Inode count for ext4.
    pub inodes: Option<u64>,
    /// Backing filesystem size, as written (`"256M"`).
    pub size: Option<String>,
    /// overlayfs options.
    pub overlay: OverlayOptions,
    /// Whether `[options.overlay]` was given at all.
    pub overlay_given: bool,
    /// devicemapper: whether deletes reach the pool.
    pub discard: Option<bool>,
    /// Whether each container gets Docker's `-init` layer (`init = true`); off by default,
    /// as files written before it expect.
    pub init: bool,
    /// `[pool]`: the thin pool of a `thinpool` scenario.
    pub pool: Option<PoolParams>,
}

/// A scenario's `kernel = ">= 6.6"`: the kernel versions whose behaviour it states, as
/// comparisons that must all hold (`">= 5.12, < 6.6"`); per driver in a table. A backend
/// running another kernel skips the file, saying why, and so does the model when its kernel
/// is outside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelRange {
    /// At least this version (`>=`).
    pub min: Option<KernelVersion>,
    /// Below this version (`<`).
    pub below: Option<KernelVersion>,
}

impl KernelRange {
    /// Whether `k` lies in the range.
    pub fn contains(&self, k: KernelVersion) -> bool {
        self.min.is_none_or(|m| k >= m) && self.below.is_none_or(|b| k < b)
    }

    /// Why a run on `who` (`the model follows`, `backend vm runs`), whose kernel is `k`,
    /// does not take place; `None` when `k` lies in the range.
    pub fn skip_reason(&self, who: &str, k: KernelVersion) -> Option<String> {
        (!self.contains(k))
            .then(|| format!("the file states the behaviour of kernel {self}; {who} {k}"))
    }
}

impl std::fmt::Display for KernelRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.min, self.below) {
            (Some(m), Some(b)) => write!(f, ">= {m}, < {b}"),
            (Some(m), None) => write!(f, ">= {m}"),
            (None, Some(b)) => write!(f, "< {b}"),
            (None, None) => f.write_str("any"),
        }
    }
}

/// The filesystem under the driver root (the model's vocabulary).
pub use layerspec_model::Backing;

/// A value that may differ per driver: `x` or `{ default = x, overlay2 = y }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PerDriver<T> {
    /// The value for drivers not named.
    pub default: Option<T>,
    /// Values by driver or backend name.
    pub by_name: BTreeMap<String, T>,
}

impl<T> PerDriver<T> {
    /// The same value for every driver.
    pub fn all(v: T) -> Self {
        PerDriver {
            default: Some(v),
            by_name: BTreeMap::new(),
        }
    }

    /// The value for `driver` on `backend` (backend keys win over driver keys).
    pub fn get(&self, driver: DriverKind, backend: &str) -> Option<&T> {
        self.by_name
            .get(&format!("{}.{backend}", driver.name()))
            .or_else(|| self.by_name.get(backend))
            .or_else(|| self.by_name.get(driver.name()))
            .or(self.default.as_ref())
    }
}

/// What a step must end in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Success.
    Ok,
    /// This errno.
    Errno(Errno),
}

/// What a step must return.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expected {
    /// Bytes read, a symlink target or an xattr value, as text.
    Text(String),
    /// Some `stat` fields.
    Stat {
        /// `file`, `dir`, ...
        kind: Option<String>,
        /// `st_size`.
        size: Option<u64>,
        /// Permission bits.
        mode: Option<u32>,
        /// `st_nlink`.
        nlink: Option<u32>,
        /// `st_uid`.
        uid: Option<u32>,
        /// `st_gid`.
        gid: Option<u32>,
    },
    /// Sorted names (readdir).
    Names(Vec<String>),
    /// Docker's change list.
    Changes(Vec<(String, String)>),
    /// Per block: the step index whose write it holds, or `"zero"` (thin pool).
    Blocks(Vec<String>),
}

/// What a step does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// An operation run by the driver.
    Op(Op),
    /// Assertions on the observation.
    Check {
        /// The container they concern (`None`: the current one).
        container: Option<String>,
        /// The assertions.
        checks: Vec<Check>,
    },
    /// A thin-pool step (block level).
    Thin(ThinStep),
    /// A `check` of `stat` relations.
    Relate(StatRelation),
}

/// A `check` with `stat`: `lstat` of a path in a container, remembered as `mark` and
/// compared with the earlier mark `like`: the fields in `same` must be equal to its, those
/// in `differ` not. Each side compares with itself (the model's inode numbers, devices
/// and times are its own names for them), so the relation is what is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatRelation {
    /// The container (`None`: the current one).
    pub container: Option<String>,
    /// The path looked at (not following a last symlink).
    pub path: String,
    /// The name this look is remembered by.
    pub mark: Option<String>,
    /// The earlier mark compared with.
    pub like: Option<String>,
    /// Fields that must equal the mark's: `dev`, `ino`, `mtime` (per driver or backend).
    pub same: PerDriver<Vec<String>>,
    /// Fields that must differ from the mark's.
    pub differ: PerDriver<Vec<String>>,
}

/// A step of a thin-pool scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ThinStep {
    /// An operation on the pool or a thin device.
    Op(ThinOp),
    /// Assertions on the pool's observation.
    Check(Vec<ThinCheck>),
}

/// One step of a trace.
#[derive(Clone, Debug)]
pub struct Step {
    /// Index from 0 in file order.
    pub index: usize,
    /// The step as written in the file.
    pub text: String,
    /// Line of the step in the file (1-based).
    pub line: usize,
    /// What it does.
    pub action: Action,
    /// Outcome it must have.
    pub expect: PerDriver<Expect>,
    /// Value it must return, if stated.
    pub returns: Option<PerDriver<Expected>>,
}

impl Step {
    /// The assertions of a file-level `check` step (none for any other step).
    pub fn checks(&self) -> &[Check] {
        match &self.action {
            Action::Check { checks, .. } => checks,
            _ => &[],
        }
    }
}

impl Options {
    /// The size of the driver root's filesystem in bytes, checked when the file was parsed.
    pub fn backing_bytes(&self) -> u64 {
        let (default, max) = match self.backing {
            Backing::Tmpfs => (limits::DEFAULT_TMPFS, limits::MAX_TMPFS),
            _ => (limits::DEFAULT_LOOP, limits::MAX_BACKING),
        };
        let size = self.size.as_deref().unwrap_or(default);
        limits::backing_size(size, max).expect("checked when parsed")
    }
}

impl Scenario {
    /// Whether a container is made without an image, by a `[[container]]` table or a step
    /// (Docker makes none: every container has an image).
    pub fn has_imageless_container(&self) -> bool {
        self.containers.iter().any(|(_, image)| image.is_none())
            || self.steps.iter().any(|s| {
                matches!(
                    &s.action,
                    Action::Op(Op::CreateContainer { image: None, .. })
                )
            })
    }

    /// Whether a step states an outcome or a value for driver or backend `name` (or a
    /// `<driver>.<name>` key).
    pub fn states_for(&self, name: &str) -> bool {
        let named = |k: &String| k == name || k.ends_with(&format!(".{name}"));
        self.steps.iter().any(|st| {
            st.expect.by_name.keys().any(named)
                || st
                    .returns
                    .as_ref()
                    .is_some_and(|r| r.by_name.keys().any(named))
                || matches!(&st.action, Action::Relate(r)
                    if r.same.by_name.keys().chain(r.differ.by_name.keys()).any(named))
        })
    }

    /// Whether a step of the file expects `errno`, for some driver or backend.
    pub fn expects_errno(&self, errno: layerspec_model::Errno) -> bool {
        self.steps.iter().any(|st| {
            st.expect
                .default
                .iter()
                .chain(st.expect.by_name.values())
                .any(|e| *e == Expect::Errno(errno))
        })
    }

    /// The largest file length the scenario can make: entries' sizes, and the end of every
    /// `write` and `truncate` (appends add little and are left out).
    pub fn largest_file(&self) -> u64 {
        use layerspec_model::{EntryKind, FileOp};
        let entries = self
            .layers
            .iter()
            .flat_map(|l| &l.entries)
            .map(|e| match &e.kind {
                EntryKind::File(c) => c.len(),
                _ => 0,
            });
        let steps = self.steps.iter().map(|s| match &s.action {
            Action::Op(Op::File { op, .. }) => match op {
                FileOp::Write { offset, data, .. } => offset.saturating_add(data.len()),
                FileOp::Truncate { size, .. } => *size,
                _ => 0,
            },
            _ => 0,
        });
        entries.chain(steps).max().unwrap_or(0).min(i64::MAX as u64)
    }

    /// The drivers this scenario runs on: those it names, else every file-level driver
    /// whose capabilities cover its steps.
    pub fn drivers(&self) -> Vec<DriverKind> {
        if let Some(d) = &self.drivers {
            return d.clone();
        }
        if self.options.pool.is_some()
            || self
                .steps
                .iter()
                .any(|s| matches!(s.action, Action::Thin(_)))
        {
            return vec![DriverKind::Thinpool];
        }
        DriverKind::FILE_LEVEL
            .into_iter()
            .filter(|&d| {
                if self.options.overlay_given && !d.is_overlayfs() {
                    return false;
                }
                self.steps.iter().all(|s| match &s.action {
                    Action::Check { checks, .. } => {
                        checks.iter().all(|c| layerspec_model::check_applies(d, c))
                    }
                    _ => true,
                })
            })
            .collect()
    }

    /// The kernel versions whose behaviour the file states for `driver` (`None`: any).
    pub fn kernel_range(&self, driver: DriverKind) -> Option<&KernelRange> {
        let k = self.kernel.as_ref()?;
        k.by_name.get(driver.name()).or(k.default.as_ref())
    }

    /// The scenario's name: its path below `scenarios/`, without `.toml`.
    pub fn name(&self) -> String {
        let s = self.file.to_string_lossy().replace('\\', "/");
        let s = s.strip_suffix(".toml").unwrap_or(&s);
        match s.rfind("scenarios/") {
            Some(i) => s[i + "scenarios/".len()..].to_string(),
            None => s.to_string(),
        }
    }
}
