//! The layerspec specification: Docker's classic storage drivers (aufs, overlay, overlay2,
//! devicemapper) and the union mechanisms under them, as a pure, deterministic state machine.
//!
//! A [`Store`] is the state of one driver root: image layers and containers. [`Store::apply`]
//! is the transition: it runs one [`Op`] and returns the step's [`Outcome`] (a [`Value`] or
//! an [`Errno`]), changing nothing when the outcome is an errno (one exception, as the
//! kernel does it: a directory renamed onto a non-empty one may be left marked opaque). [`ModelDriver`] wraps it in
//! the [`Driver`] trait the real, kernel-backed drivers implement too, so the harness can run
//! both side by side and compare their [`Observation`]s.
//!
//! The union code (lookup, copy-up, whiteouts, opaque directories, readdir) is shared by all
//! file-level drivers; they differ only in [`Policy`] and in their on-disk encoding. Rules
//! that changed between kernels ask the [`KernelVersion`] the model follows
//! ([`ModelDriver::with_kernel`]; default 6.18).
//!
//! ```
//! use layerspec_model::*;
//!
//! let mut d = ModelDriver::new(DriverKind::Overlay2, OverlayOptions::default());
//! d.add_layer(&LayerSpec {
//!     id: "base".into(),
//!     parent: None,
//!     entries: vec![Entry {
//!         path: "/etc/hosts".into(),
//!         kind: EntryKind::File(Content::Bytes(b"127.0.0.1 localhost\n".to_vec())),
//!         mode: None,
//!         xattrs: Default::default(),
//!         owner: None,
//!     }],
//! })
//! .unwrap();
//! d.apply(&Op::CreateContainer { id: "c1".into(), image: Some("base".into()) }).unwrap();
//! let unlink = Op::File { container: None, op: FileOp::Unlink { path: "/etc/hosts".into() } };
//! assert_eq!(d.apply(&unlink).unwrap(), Ok(Value::Unit));
//! let stat = Op::File { container: None, op: FileOp::Stat { path: "/etc/hosts".into() } };
//! assert_eq!(d.apply(&stat).unwrap(), Err(Errno::ENOENT));
//! // The container's diff now holds an overlayfs whiteout: a character device 0:0.
//! let obs = d.observe().unwrap();
//! assert_eq!(obs.storage["overlay2/c1/diff/etc/hosts"].kind, "whiteout");
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod changes;
mod check;
mod container;
mod copy_up;
mod data;
pub mod devmapper;
mod digest;
mod dir;
mod driver;
mod errno;
mod init_layer;
mod inode;
mod invariants;
mod layout;
mod lower;
mod namei;
mod observe;
mod params;
mod path;
mod perm;
mod readdir;
mod space;
mod start;
mod step;
mod store;
mod thin;
mod tree;

pub use check::{
    applies as check_applies, evaluate as evaluate_check, evaluate_since as evaluate_check_since,
    pool_data_blocks, upper_dir, BlockRange, Check,
};
pub use container::{Container, Dentry};
pub use data::FileData;
pub use digest::{
    content_digest, pseudo_random, pseudo_random_at, seed_for_path, short_name, ContentHasher,
    DIGEST_PAGE, SPARSE_DIGEST_MIN,
};
pub use driver::{observe_store, Driver, DriverError, ModelDriver};
pub use errno::{Errno, UnknownErrno};
pub use init_layer::{init_layer_id, setup as init_layer_setup};
pub use inode::{write_calls, WRITE_PIECE};
pub use invariants::{check as check_invariants, Violation, INVARIANTS};
pub use layout::{
    mount_data, overlay2_readonly_mount_data, overlay_mount_data, DATA_ROOT, PAGE_SIZE,
};
pub use lower::{Layer, LowerStack};
pub use observe::{
    content_text, owner_text, Accounting, MergedEntry, MergedView, Observation, StorageEntry,
};
pub use params::{
    Backing, BadKernelVersion, DirRename, DriverKind, KernelVersion, OverlayOptions, Policy,
    EXT4_MAX_FILE_SIZE, MAX_LFS_FILESIZE,
};
pub use path::{
    check_id, validate_scenario_path, BadId, BadPath, ID_MAX, MAX_SYMLINKS, NAME_MAX, PATH_MAX,
};
/// The directories the real side makes on a fresh xfs so that every allocation group has
/// inode chunks before a scenario runs (see [`XfsGeometry`]).
pub use space::xfs::PREMADE_DIRS as XFS_PREMADE_DIRS;
pub use space::{Ext4Geometry, XfsGeometry};
pub use start::{
    refused as container_start_refused, start as container_start, StartError, DEV_SYMLINK,
};
pub use step::{
    Change, ChangeKind, ContainerId, Content, Cred, Entry, EntryKind, FileOp, Identity, Kind,
    LayerId, LayerSpec, Op, OpenFlags, Outcome, StatInfo, Value,
};
pub use store::{check_op_ids, validate_layer, StepError, Store, NAIVE_DIFF_WITH_INIT};
pub use thin::units::{self as thin_units, BlockSize, PoolBlock, Sectors, ThinId, VirtBlock};
pub use thin::{
    check_thin_invariants, valid_sources, BadParams, BlockData, BlockTime, DeviceObservation,
    DiscardMode, Features, MappedRange, Mapping, MappingMemory, NoSpaceMode, Piece, PoolMode,
    PoolObservation, PoolParams, PoolStatus, Stamp, StatusError, ThinCheck, ThinDriver, ThinOp,
    ThinOutcome, ThinPool, ThinStatus, ThinValue, DEFAULT_METADATA_BLOCKS, DEFAULT_THIN_SECTORS,
    THIN_INVARIANTS,
};
pub use tree::{Body, Ino, Inode, Origin, Tree, MAX_UTIME};
