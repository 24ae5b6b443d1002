//! The driver trait both sides implement, and the model's implementation of it.

use crate::observe::{Accounting, Observation};
use crate::params::{DriverKind, KernelVersion, OverlayOptions};
use crate::step::{LayerSpec, Op, Outcome};
use crate::store::{StepError, Store};
use std::fmt;

/// Why a driver could not run a step at all (as opposed to the step failing with an errno).
#[derive(Debug)]
pub enum DriverError {
    /// The scenario asked for something impossible (no such container, ...).
    Step(StepError),
    /// The backend failed (a mount, an ioctl, ...).
    Backend(String),
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DriverError::Step(e) => write!(f, "{e}"),
            DriverError::Backend(e) => write!(f, "backend error: {e}"),
        }
    }
}

impl std::error::Error for DriverError {}

impl From<StepError> for DriverError {
    fn from(e: StepError) -> Self {
        DriverError::Step(e)
    }
}

/// A storage driver that can build layers, run steps and be observed. The harness talks to
/// the model and to real drivers only through this.
pub trait Driver {
    /// Which driver this is.
    fn kind(&self) -> DriverKind;
    /// The backend name: `model`, `kernel`, `fuse` or `vm`.
    fn backend(&self) -> &'static str;
    /// Builds an image layer.
    fn add_layer(&mut self, spec: &LayerSpec) -> Result<(), DriverError>;
    /// Runs one step.
    fn apply(&mut self, op: &Op) -> Result<Outcome, DriverError>;
    /// Observes the whole driver.
    fn observe(&mut self) -> Result<Observation, DriverError>;
    /// The kernel whose rules the driver follows: the model's parameter, or the release
    /// the real driver runs on. A differential run builds its model with the real side's.
    fn kernel(&self) -> KernelVersion;
    /// Gives containers created from now on Docker's `-init` layer (`on`), or none (the
    /// default). A driver that cannot do as asked says why.
    fn set_init_layers(&mut self, on: bool) -> Result<(), String> {
        if on {
            Err(format!(
                "the {} backend makes no `-init` layer for {}",
                self.backend(),
                self.kind()
            ))
        } else {
            Ok(())
        }
    }
}

/// The specification as a [`Driver`].
#[derive(Clone, Debug)]
pub struct ModelDriver {
    store: Store,
}

impl ModelDriver {
    /// An empty driver root of `driver` with overlay `options`.
    pub fn new(driver: DriverKind, options: OverlayOptions) -> ModelDriver {
        ModelDriver {
            store: Store::new(driver, options),
        }
    }

    /// The same on a backing filesystem other than tmpfs.
    pub fn with_backing(mut self, backing: crate::params::Backing) -> ModelDriver {
        self.store.set_backing(backing);
        self
    }

    /// The same with the driver root on a tmpfs of `bytes`, whose pages run out
    /// ([`Store::set_tmpfs_size`]).
    pub fn with_tmpfs_size(mut self, bytes: u64) -> ModelDriver {
        self.store.set_tmpfs_size(bytes);
        self
    }

    /// The same with the driver root on an ext4 that `mkfs.ext4` made on `bytes`, with
    /// `inodes` if given, whose blocks and inodes run out ([`Store::set_ext4`]); `Err`
    /// where mkfs would refuse the size.
    pub fn with_ext4(mut self, bytes: u64, inodes: Option<u64>) -> Result<ModelDriver, String> {
        self.store.set_ext4(bytes, inodes)?;
        Ok(self)
    }

    /// The same with the driver root on an xfs that `mkfs.xfs` made on `bytes`, whose
    /// blocks run out ([`Store::set_xfs`]); `Err` where mkfs would refuse the size or the
    /// model does not follow it.
    pub fn with_xfs(mut self, bytes: u64) -> Result<ModelDriver, String> {
        self.store.set_xfs(bytes)?;
        Ok(self)
    }

    /// Gives containers created from now on Docker's `-init` layer ([`Store::set_init_layers`]).
    pub fn with_init_layers(mut self, on: bool) -> ModelDriver {
        self.store.set_init_layers(on);
        self
    }

    /// The same following the rules of `kernel` (default: [`KernelVersion::DEFAULT`]).
    pub fn with_kernel(mut self, kernel: KernelVersion) -> ModelDriver {
        self.store.set_kernel(kernel);
        self
    }

    /// The state machine behind it.
    pub fn store(&self) -> &Store {
        &self.store
    }
}

impl Driver for ModelDriver {
    fn kind(&self) -> DriverKind {
        self.store.driver()
    }

    fn backend(&self) -> &'static str {
        "model"
    }

    fn add_layer(&mut self, spec: &LayerSpec) -> Result<(), DriverError> {
        Ok(self.store.add_layer(spec)?)
    }

    fn apply(&mut self, op: &Op) -> Result<Outcome, DriverError> {
        Ok(self.store.apply(op)?)
    }

    fn set_init_layers(&mut self, on: bool) -> Result<(), String> {
        self.store.set_init_layers(on);
        Ok(())
    }

    fn observe(&mut self) -> Result<Observation, DriverError> {
        Ok(observe_store(&self.store))
    }

    fn kernel(&self) -> KernelVersion {
        self.store.kernel()
    }
}

/// The observation of a model store.
pub fn observe_store(store: &Store) -> Observation {
    let (storage, inodes_used) = crate::layout::render(store);
    let mut accounting = Accounting {
        inodes_used,
        ..Accounting::default()
    };
    if let Some(ds) = store.devmapper() {
        accounting.pool = Some(ds.observe());
        accounting.dm_tables = ds.tables();
    }
    let mut merged = std::collections::BTreeMap::new();
    for c in store.containers() {
        accounting
            .copied_up_bytes
            .insert(c.id.clone(), c.copied_up_bytes);
        if c.stopped {
            // Not mounted: no merged view, no mount data.
            continue;
        }
        merged.insert(c.id.clone(), c.merged_view());
        if let Some(data) = crate::layout::mount_data(store, c) {
            accounting.mount_data_len.insert(c.id.clone(), data.len());
        }
    }
    Observation {
        merged,
        storage,
        accounting,
    }
}
