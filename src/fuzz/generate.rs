//! The trace generator: a few image layers, a container, and a sequence of steps, drawn from
//! one ChaCha8 stream per trace so that a trace depends only on (seed, trace index).
//!
//! The draw is biased toward what breaks union filesystems: a small pool of names shared by
//! every layer (so layers shadow, white out and make opaque each other's entries), whiteouts
//! followed by re-creation, renames over image entries, hard links that a later write copies
//! up, deep paths, symlinks with relative, absolute and `..` targets, and `rmdir` of
//! directories whose entries were just whited out. Paths come mostly from a rough set of live
//! paths the generator tracks itself (it never asks a driver), sometimes fresh ones.

use super::view::{comps, join, parent, View};
use layerspec_model::{
    seed_for_path, ContainerId, Content, DriverKind, Entry, EntryKind, Kind, LayerId, LayerSpec,
    Op, OverlayOptions,
};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};

/// The names every layer and step draws from: few, so that they collide.
pub const NAMES: &[&str] = &["a", "b", "c", "d", "etc", "x"];

/// Id of the container every trace starts with.
pub const FIRST_CONTAINER: &str = "c0";

/// One generated trace: image layers (a chain, each the parent of the next), a container on
/// the top one, and the steps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    /// The run's seed.
    pub seed: u64,
    /// The trace's index within the run.
    pub index: u64,
    /// The driver the trace is for.
    pub driver: DriverKind,
    /// overlayfs options both sides mount with.
    pub options: OverlayOptions,
    /// Whether containers get Docker's `-init` layer (`[options] init = true`).
    pub init: bool,
    /// The driver root's filesystem: an ext4 or xfs of this size (`--ext4`, `--xfs`),
    /// else a tmpfs.
    pub loop_root: Option<crate::fuzz::LoopRoot>,
    /// Image layers, lowest first; `parent` of each is the one before.
    pub layers: Vec<LayerSpec>,
    /// The container made before the first step, on the top layer.
    pub container: ContainerId,
    /// The steps.
    pub steps: Vec<Op>,
}

impl Trace {
    /// The image of the first container: the top layer, if any.
    pub fn image(&self) -> Option<LayerId> {
        self.layers.last().map(|l| l.id.clone())
    }

    /// Makes each layer the parent of the next again (after layers were removed).
    pub fn relink(&mut self) {
        let mut parent: Option<LayerId> = None;
        for l in &mut self.layers {
            l.parent = parent.clone();
            parent = Some(l.id.clone());
        }
    }

    /// Number of layer entries over all layers.
    pub fn entry_count(&self) -> usize {
        self.layers.iter().map(|l| l.entries.len()).sum()
    }
}

/// The generator's random stream for trace `index` of a run seeded with `seed`.
pub fn rng_for(seed: u64, index: u64) -> ChaCha8Rng {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    s[8..16].copy_from_slice(&index.to_le_bytes());
    s[16..24].copy_from_slice(b"layerspc");
    ChaCha8Rng::from_seed(s)
}

/// Generates trace `index` of the run seeded with `seed`: the same arguments give the same
/// trace, whatever else runs.
pub fn generate(
    driver: DriverKind,
    options: OverlayOptions,
    seed: u64,
    index: u64,
    steps: usize,
) -> Trace {
    generate_as(
        driver,
        options,
        false,
        Variety::default(),
        seed,
        index,
        steps,
    )
}

/// What a run draws besides the common steps. Each draws only when it is on, so a run
/// without them makes the traces it made before, draw for draw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Variety {
    /// Writes of up to 64 pages times this besides the short ones (0: none; `--ext4`: 1,
    /// so that blocks run out, not only inodes; `--xfs`: up to the filesystem's size).
    pub big_writes: u64,
    /// Other users (`--users`): half the file steps run as uid 1000 or 1001, some are a
    /// `chown` or a `utimes`, and some layer entries belong to those users.
    pub users: bool,
}

/// The users `--users` runs steps as, and the groups, owners their files get.
pub(super) const USERS: &[u32] = &[1000, 1001];
/// The groups of `--users`.
pub(super) const GROUPS: &[u32] = &[1000, 50];

/// Like [`generate`], for containers with Docker's `-init` layer (`init`): as Docker makes
/// them, every container has an image (a trace without layers gets one), and overlay's
/// `commit`, which the model does not answer with an init layer, becomes a remount.
/// Without `init` the traces are [`generate`]'s, draw for draw.
pub fn generate_as(
    driver: DriverKind,
    options: OverlayOptions,
    init: bool,
    variety: Variety,
    seed: u64,
    index: u64,
    steps: usize,
) -> Trace {
    let mut g = Gen {
        docker: init.then_some(driver),
        big_writes: variety.big_writes,
        users: variety.users,
        rng: rng_for(seed, index),
        views: BTreeMap::new(),
        order: Vec::new(),
        images: BTreeMap::new(),
        committed: Vec::new(),
        base: None,
        next_container: 1,
        steps: Vec::new(),
    };
    let mut layers = g.layers();
    if init && layers.is_empty() {
        layers.push(LayerSpec {
            id: "l0".into(),
            parent: None,
            entries: vec![Entry {
                path: "/etc/os-release".into(),
                kind: EntryKind::File(Content::Bytes(b"ID=layerspec\n".to_vec())),
                mode: None,
                xattrs: Default::default(),
                owner: None,
            }],
        });
        g.images.insert("l0".into(), View::empty());
    }
    g.base = layers.last().map(|l| l.id.clone());
    let base = g
        .base
        .as_ref()
        .and_then(|b| g.images.get(b).cloned())
        .unwrap_or_else(View::empty);
    g.views.insert(FIRST_CONTAINER.to_string(), base);
    g.order.push(FIRST_CONTAINER.to_string());
    g.steps_up_to(steps);
    g.steps.truncate(steps);
    Trace {
        seed,
        index,
        driver,
        options,
        init,
        loop_root: None,
        layers,
        container: FIRST_CONTAINER.to_string(),
        steps: g.steps,
    }
}

/// What a layer being built lists, to keep every entry buildable.
#[derive(Default)]
struct LayerPlan {
    entries: Vec<Entry>,
    /// Listed paths and whether each is a directory.
    listed: BTreeMap<String, bool>,
    /// Directories made implicitly as parents of listed entries.
    implied: BTreeSet<String>,
    /// Listed regular files (hard-link targets).
    files: Vec<String>,
}

impl LayerPlan {
    fn accepts(&self, path: &str, is_dir: bool) -> bool {
        if path == "/" || self.listed.contains_key(path) || (self.implied.contains(path) && !is_dir)
        {
            return false;
        }
        let mut p = path;
        while p != "/" {
            p = parent(p);
            if self.listed.get(p) == Some(&false) {
                return false;
            }
        }
        true
    }

    fn push(&mut self, e: Entry) {
        let is_dir = matches!(e.kind, EntryKind::Dir { .. });
        let mut p = parent(&e.path);
        while p != "/" {
            if !self.listed.contains_key(p) {
                self.implied.insert(p.to_string());
            }
            p = parent(p);
        }
        if matches!(e.kind, EntryKind::File(_)) {
            self.files.push(e.path.clone());
        }
        self.listed.insert(e.path.clone(), is_dir);
        self.entries.push(e);
    }
}

pub(super) struct Gen {
    /// With init layers (`generate_as`): the driver, whose limits the steps keep to.
    pub(super) docker: Option<DriverKind>,
    /// Big writes' scale ([`Variety::big_writes`]).
    pub(super) big_writes: u64,
    /// Steps as other users ([`Variety::users`]).
    pub(super) users: bool,
    pub(super) rng: ChaCha8Rng,
    /// Each live container's rough merged view.
    pub(super) views: BTreeMap<ContainerId, View>,
    /// Containers in creation order (the last is the default for steps).
    pub(super) order: Vec<ContainerId>,
    /// Each image layer's rough merged view.
    pub(super) images: BTreeMap<LayerId, View>,
    pub(super) committed: Vec<LayerId>,
    /// The top layer of the generated image.
    pub(super) base: Option<LayerId>,
    pub(super) next_container: u32,
    pub(super) steps: Vec<Op>,
}

pub(super) const MODES: &[u32] = &[0o644, 0o600, 0o755, 0o700, 0o640, 0o444, 0o750];
pub(super) const XATTRS: &[&str] = &["user.a", "user.b"];

impl Gen {
    pub(super) fn below(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n.max(1) as u32) as usize
    }

    pub(super) fn chance(&mut self, percent: u32) -> bool {
        self.rng.random_range(0..100u32) < percent
    }

    pub(super) fn pick<T: Clone>(&mut self, xs: &[T]) -> Option<T> {
        if xs.is_empty() {
            None
        } else {
            let i = self.below(xs.len());
            Some(xs[i].clone())
        }
    }

    pub(super) fn name(&mut self) -> String {
        let i = self.below(NAMES.len());
        NAMES[i].to_string()
    }

    /// Short printable ASCII.
    pub(super) fn data(&mut self) -> Vec<u8> {
        const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789 ";
        let n = 1 + self.below(10);
        let mut v: Vec<u8> = (0..n).map(|_| ALPHA[self.below(ALPHA.len())]).collect();
        if self.chance(15) {
            v.push(b'\n');
        }
        v
    }

    pub(super) fn mode(&mut self) -> u32 {
        self.pick(MODES).unwrap_or(0o644)
    }

    pub(super) fn symlink_target(&mut self, view: &View, at: &str) -> String {
        match self.below(8) {
            0 => self.name(),
            1 => format!("../{}", self.name()),
            2 => format!("../../{}/{}", self.name(), self.name()),
            3 => "/".to_string(),
            4 => comps(at).last().unwrap_or("a").to_string(), // itself: ELOOP
            5 => format!("./{}/../{}", self.name(), self.name()),
            _ => {
                let live = view.paths(|p, _| p != "/");
                self.pick(&live).unwrap_or_else(|| format!("/{}", NAMES[0]))
            }
        }
    }

    // ----- layers -----

    fn layers(&mut self) -> Vec<LayerSpec> {
        let n = match self.below(10) {
            0 | 1 => 1,
            2..=5 => 2,
            6..=8 => 3,
            _ => 4,
        };
        let mut union = View::empty();
        let mut out: Vec<LayerSpec> = Vec::new();
        for li in 0..n {
            let mut plan = LayerPlan::default();
            let want = 2 + self.below(6) + usize::from(li == 0);
            for _ in 0..want * 4 {
                if plan.entries.len() >= want {
                    break;
                }
                self.layer_entry(li, &union, &mut plan);
            }
            for e in &plan.entries {
                apply_entry(&mut union, e);
            }
            let id = format!("l{li}");
            self.images.insert(id.clone(), union.clone());
            out.push(LayerSpec {
                id,
                parent: out.last().map(|l| l.id.clone()),
                entries: plan.entries,
            });
        }
        out
    }

    /// Tries to add one entry to `plan` (skips it when the draw would not build).
    fn layer_entry(&mut self, li: usize, union: &View, plan: &mut LayerPlan) {
        let lower = union.paths(|p, _| p != "/");
        let reuse = li > 0 && !lower.is_empty() && self.chance(50);
        let path = if reuse {
            self.pick(&lower).expect("not empty")
        } else {
            let mut dirs = union.paths(|_, k| k == Kind::Dir);
            dirs.extend(
                plan.listed
                    .iter()
                    .filter(|(_, d)| **d)
                    .map(|(p, _)| p.clone()),
            );
            dirs.extend(plan.implied.iter().cloned());
            let mut p = self.pick(&dirs).unwrap_or_else(|| "/".to_string());
            let depth = if self.chance(15) {
                2 + self.below(3)
            } else {
                1
            };
            for _ in 0..depth {
                p = join(&p, &self.name());
            }
            p
        };
        let below_kind = union.kind(&path);
        let roll = self.below(100);
        let kind = if reuse && roll < 30 {
            EntryKind::Whiteout
        } else if below_kind == Some(Kind::Dir) && roll < 45 {
            EntryKind::Dir {
                opaque: li > 0 && self.chance(70),
            }
        } else if roll < 62 {
            EntryKind::File(Content::Bytes(self.data()))
        } else if roll < 65 {
            let len = 100 + self.below(6000) as u64;
            EntryKind::File(Content::Random {
                len,
                seed: seed_for_path(&path),
            })
        } else if roll < 78 {
            EntryKind::Dir {
                opaque: li > 0 && self.chance(25),
            }
        } else if roll < 89 {
            EntryKind::Symlink(self.symlink_target(union, &path))
        } else {
            match self.pick(&plan.files.clone()) {
                Some(t) if t != path => EntryKind::HardLink(t),
                _ => EntryKind::File(Content::Bytes(self.data())),
            }
        };
        let is_dir = matches!(kind, EntryKind::Dir { .. });
        if !plan.accepts(&path, is_dir) {
            return;
        }
        let mode = match kind {
            EntryKind::File(_) | EntryKind::Dir { .. } if self.chance(20) => Some(self.mode()),
            _ => None,
        };
        let mut xattrs = BTreeMap::new();
        if matches!(kind, EntryKind::File(_) | EntryKind::Dir { .. }) && self.chance(10) {
            let v = self.data();
            xattrs.insert(XATTRS[self.below(XATTRS.len())].to_string(), v);
        }
        let opaque = matches!(kind, EntryKind::Dir { opaque: true });
        let owner = match kind {
            EntryKind::HardLink(_) | EntryKind::Whiteout => None,
            _ if self.users && self.chance(30) => self.pick(USERS).zip(self.pick(GROUPS)),
            _ => None,
        };
        plan.push(Entry {
            path: path.clone(),
            kind,
            mode,
            xattrs,
            owner,
        });
        // An opaque directory usually holds a name its lower layers hold too.
        if opaque && self.chance(60) {
            let child = join(&path, &self.name());
            if plan.accepts(&child, false) {
                let data = self.data();
                plan.push(Entry {
                    path: child,
                    kind: EntryKind::File(Content::Bytes(data)),
                    mode: None,
                    xattrs: BTreeMap::new(),
                    owner: None,
                });
            }
        }
    }
}

/// Applies one layer entry to a rough merged view of the layers below.
fn apply_entry(union: &mut View, e: &Entry) {
    match &e.kind {
        EntryKind::Whiteout => union.remove_tree(&e.path),
        EntryKind::Dir { opaque } => {
            if *opaque || union.kind(&e.path).is_some_and(|k| k != Kind::Dir) {
                union.remove_tree(&e.path);
            }
            union.put(&e.path, Kind::Dir);
        }
        EntryKind::File(_) => union.put(&e.path, Kind::File),
        EntryKind::Symlink(_) => union.put(&e.path, Kind::Symlink),
        EntryKind::HardLink(t) => {
            let k = union.kind(t).unwrap_or(Kind::File);
            union.put(&e.path, k);
        }
    }
}
