//! The scenario parser: TOML 1.1 through `toml` and serde, unknown keys rejected, and every
//! error located by file, line and column.

mod kernel;
mod steps;
mod thin;

use super::limits::{
    backing_size, DEFAULT_LOOP, DEFAULT_TMPFS, MAX_BACKING, MAX_CONTAINERS, MAX_DEPTH, MAX_ENTRIES,
    MAX_FILE_BYTES, MAX_LAYERS, MAX_OFFSET, MAX_STEPS, MAX_TMPFS,
};
use super::{
    too_much_data, Action, Backing, Expect, Expected, Options, PerDriver, Scenario, StatRelation,
    Step, MAX_DATA,
};
use layerspec_model::{
    seed_for_path, validate_scenario_path, BlockRange, Check, Content, DriverKind, Entry,
    EntryKind, Errno, FileOp, Identity, LayerSpec, Op, OverlayOptions,
};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

use steps::parse_step;

/// A located problem in a scenario file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// The file.
    pub file: PathBuf,
    /// Line, 1-based.
    pub line: usize,
    /// Column, 1-based.
    pub column: usize,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

impl std::error::Error for ParseError {}

/// Reads and parses one scenario file.
/// Only a regular file is read (a FIFO would block, a device never end), and only up to
/// [`MAX_FILE_BYTES`].
pub fn parse_file(path: &Path) -> Result<Scenario, ParseError> {
    let fail = |message: String| ParseError {
        file: path.to_path_buf(),
        line: 1,
        column: 1,
        message,
    };
    let text = read_bounded(path).map_err(fail)?;
    parse_str(path, &text)
}

/// The text of `path`, which must be a regular file of at most [`MAX_FILE_BYTES`]. The file
/// is opened without blocking (`O_NONBLOCK`: opening a FIFO would wait for a writer) and
/// checked on the open descriptor, so what is read is what was checked.
fn read_bounded(path: &Path) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_nonblock())
        .open(path)
        .map_err(|e| format!("cannot read: {e}"))?;
    let meta = f.metadata().map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file: a scenario is a regular `.toml` file".into());
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "the file is {} bytes, more than the limit of {MAX_FILE_BYTES}",
            meta.len()
        ));
    }
    let mut buf = Vec::new();
    f.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read: {e}"))?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "the file grew past the limit of {MAX_FILE_BYTES} bytes"
        ));
    }
    String::from_utf8(buf).map_err(|e| format!("not UTF-8 text: {e}"))
}

/// `O_NONBLOCK` (Linux, every architecture Rust's std supports there).
fn libc_nonblock() -> i32 {
    0o4000
}

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Ctx<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> ParseError {
        let (line, column) = line_col(self.text, span.start);
        ParseError {
            file: self.file.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    title: Spanned<String>,
    #[serde(default)]
    claims: Vec<String>,
    drivers: Option<Vec<Spanned<String>>>,
    kernel: Option<Spanned<toml::Value>>,
    options: Option<OptionsDoc>,
    #[serde(default)]
    layer: Vec<Spanned<LayerDoc>>,
    #[serde(default)]
    container: Vec<Spanned<ContainerDoc>>,
    trace: Option<TraceDoc>,
    pool: Option<PoolDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OptionsDoc {
    backing: Option<Spanned<String>>,
    inodes: Option<Spanned<u64>>,
    size: Option<Spanned<String>>,
    overlay: Option<OverlayDoc>,
    discard: Option<bool>,
    init: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OverlayDoc {
    redirect_dir: Option<Spanned<String>>,
    metacopy: Option<bool>,
    index: Option<bool>,
    xino: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolDoc {
    data_blocks: Spanned<u64>,
    block_sectors: Option<Spanned<u64>>,
    metadata_blocks: Option<Spanned<u64>>,
    low_water_blocks: Option<u64>,
    error_if_no_space: Option<bool>,
    discard_passdown: Option<bool>,
    skip_block_zeroing: Option<bool>,
    ignore_discard: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LayerDoc {
    id: Spanned<String>,
    parent: Option<Spanned<String>>,
    #[serde(default)]
    entries: Vec<Spanned<EntryDoc>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryDoc {
    path: Spanned<String>,
    data: Option<String>,
    size: Option<u64>,
    dir: Option<bool>,
    symlink: Option<String>,
    link: Option<String>,
    whiteout: Option<bool>,
    mode: Option<u32>,
    opaque: Option<bool>,
    xattrs: Option<BTreeMap<String, String>>,
    uid: Option<u32>,
    gid: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContainerDoc {
    id: Spanned<String>,
    image: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TraceDoc {
    #[serde(default)]
    steps: Vec<Spanned<StepDoc>>,
}

/// Every key any step may have; which ones an op takes is checked by hand.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StepDoc {
    op: Option<Spanned<String>>,
    container: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    offset: Option<u64>,
    data: Option<String>,
    size: Option<u64>,
    len: Option<u64>,
    mode: Option<u32>,
    flags: Option<Spanned<Vec<String>>>,
    from: Option<Spanned<String>>,
    to: Option<Spanned<String>>,
    target: Option<String>,
    name: Option<String>,
    value: Option<String>,
    id: Option<String>,
    image: Option<String>,
    layer: Option<String>,
    expect: Option<Spanned<toml::Value>>,
    returns: Option<Spanned<toml::Value>>,
    // check
    whiteout: Option<Spanned<String>>,
    opaque: Option<Spanned<String>>,
    in_upper: Option<Spanned<String>>,
    not_in_upper: Option<Spanned<String>>,
    copied_up_bytes: Option<u64>,
    inodes_used: Option<u64>,
    // check of stat relations
    stat: Option<Spanned<String>>,
    mark: Option<Spanned<String>>,
    like: Option<Spanned<String>>,
    same: Option<Spanned<toml::Value>>,
    differ: Option<Spanned<toml::Value>>,
    // utimes
    atime: Option<u64>,
    mtime: Option<u64>,
    // chown
    uid: Option<u32>,
    gid: Option<u32>,
    // who runs a file step
    user: Option<u32>,
    group: Option<u32>,
    pool_data_blocks: Option<Spanned<toml::Value>>,
    mapped_blocks: Option<toml::Value>,
    shared_blocks: Option<toml::Value>,
    // thin pool
    dev: Option<u64>,
    origin: Option<u64>,
    block: Option<u64>,
    count: Option<u64>,
    sectors: Option<u64>,
    current: Option<u64>,
    new: Option<u64>,
}

const OPS: &str =
    "create, open, write, append, truncate, read, unlink, mkdir, rmdir, rename, link, \
symlink, readlink, chmod, utimes, chown, stat, readdir, setxattr, getxattr, removexattr, create_container, \
remove_container, commit, remount, changes, check, create_thin, snapshot, delete_thin, \
set_transaction_id, write_blocks, write_bytes, read_blocks, discard_blocks";

/// Parses scenario text; `file` names it in errors.
pub fn parse_str(file: &Path, text: &str) -> Result<Scenario, ParseError> {
    let ctx = Ctx { file, text };
    let doc: Doc = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        ctx.err(span, e.message().trim().to_string())
    })?;
    let title = doc.title.get_ref().trim().to_string();
    if title.is_empty() || title.contains('\n') {
        return Err(ctx.err(doc.title.span(), "`title` must be one non-empty line"));
    }
    let drivers = match &doc.drivers {
        None => None,
        Some(list) => {
            let mut out = Vec::new();
            for d in list {
                let k: DriverKind = d
                    .get_ref()
                    .parse()
                    .map_err(|e: String| ctx.err(d.span(), e))?;
                out.push(k);
            }
            if out.is_empty() {
                return Err(ctx.err(0..0, "`drivers` must name at least one driver"));
            }
            Some(out)
        }
    };
    let kernel = match &doc.kernel {
        None => None,
        Some(k) => Some(kernel::parse_kernel(&ctx, k)?),
    };
    let mut options = parse_options(&ctx, doc.options)?;
    options.pool = thin::parse_pool(&ctx, doc.pool)?;
    if options.pool.is_some() {
        if let Some(l) = doc.layer.first() {
            return Err(ctx.err(
                l.span(),
                "a thin-pool scenario (`[pool]`) has no layers: it runs block-level steps",
            ));
        }
        if let Some(c) = doc.container.first() {
            return Err(ctx.err(
                c.span(),
                "a thin-pool scenario (`[pool]`) has no containers: it runs block-level steps",
            ));
        }
    }
    if let (Some(k), Some(_)) = (&doc.kernel, &options.pool) {
        return Err(ctx.err(
            k.span(),
            "`kernel` applies to file-level scenarios; a thin-pool scenario (`[pool]`) runs \
             the same on every kernel with dm-thin",
        ));
    }
    if let Some(list) = &doc.drivers {
        for d in list {
            let thin = d.get_ref() == "thinpool";
            if thin != options.pool.is_some() {
                return Err(ctx.err(
                    d.span(),
                    if thin {
                        "the `thinpool` driver needs a `[pool]` table"
                    } else {
                        "a scenario with a `[pool]` table runs on `thinpool` only"
                    },
                ));
            }
        }
    }

    let mut layer_ids = BTreeSet::new();
    let mut layers = Vec::new();
    if let Some(l) = doc.layer.get(MAX_LAYERS) {
        return Err(ctx.err(l.span(), format!("more than {MAX_LAYERS} layers")));
    }
    let entries: usize = doc.layer.iter().map(|l| l.get_ref().entries.len()).sum();
    if entries > MAX_ENTRIES {
        return Err(ctx.err(
            doc.layer[0].span(),
            format!("{entries} layer entries, more than the limit of {MAX_ENTRIES}"),
        ));
    }
    let commits = count_ops(doc.trace.as_ref(), "commit");
    let mut depth: BTreeMap<String, usize> = BTreeMap::new();
    for l in &doc.layer {
        let ld = l.get_ref();
        let id = ld.id.get_ref();
        check_id(&ctx, &ld.id, "layer id")?;
        if let Some(p) = &ld.parent {
            if !layer_ids.contains(p.get_ref()) {
                return Err(ctx.err(
                    p.span(),
                    format!("parent `{}` is not a layer defined above", p.get_ref()),
                ));
            }
        }
        if !layer_ids.insert(id.clone()) {
            return Err(ctx.err(ld.id.span(), format!("duplicate layer id `{id}`")));
        }
        let d = 1 + ld.parent.as_ref().map_or(0, |p| depth[p.get_ref()]);
        if d + commits > MAX_DEPTH {
            return Err(ctx.err(
                ld.id.span(),
                format!(
                    "layer `{id}` is {d} deep{}: a chain holds at most {MAX_DEPTH} layers \
                     (Docker's overlay2 limit)",
                    if commits > 0 {
                        format!(" and {commits} commit steps may stack on it")
                    } else {
                        String::new()
                    }
                ),
            ));
        }
        depth.insert(id.clone(), d);
        let mut entries = Vec::new();
        let mut seen = BTreeSet::new();
        for e in &ld.entries {
            let entry = parse_entry(&ctx, e)?;
            if !seen.insert(entry.path.clone()) {
                return Err(ctx.err(
                    e.get_ref().path.span(),
                    format!("`{}` is listed twice in layer `{id}`", entry.path),
                ));
            }
            if let EntryKind::HardLink(to) = &entry.kind {
                if !seen.contains(to) || to == &entry.path {
                    return Err(ctx.err(
                        e.span(),
                        format!(
                            "`link = \"{to}\"` must name an entry listed earlier in this layer"
                        ),
                    ));
                }
            }
            entries.push(entry);
        }
        let spec = LayerSpec {
            id: id.clone(),
            parent: ld.parent.as_ref().map(|p| p.get_ref().clone()),
            entries,
        };
        // The model's own check of the layer's shape, located at the entry it names: a
        // layer the model cannot build is refused here, before any backend runs it.
        if let Err(e) = layerspec_model::validate_layer(&spec) {
            let span = match &e {
                layerspec_model::StepError::BadEntry { entry, .. } => ld.entries[*entry].span(),
                _ => ld.id.span(),
            };
            return Err(ctx.err(span, e.to_string()));
        }
        layers.push(spec);
    }

    let mut containers = Vec::new();
    let mut container_ids = BTreeSet::new();
    let created = count_ops(doc.trace.as_ref(), "create_container");
    if doc.container.len() + created > MAX_CONTAINERS {
        return Err(ctx.err(
            0..0,
            format!("more than {MAX_CONTAINERS} containers (tables and create_container steps)"),
        ));
    }
    for c in &doc.container {
        let cd = c.get_ref();
        check_id(&ctx, &cd.id, "container id")?;
        if layer_ids.contains(cd.id.get_ref()) || !container_ids.insert(cd.id.get_ref().clone()) {
            return Err(ctx.err(cd.id.span(), format!("duplicate id `{}`", cd.id.get_ref())));
        }
        if let Some(i) = &cd.image {
            if !layer_ids.contains(i.get_ref()) {
                return Err(ctx.err(
                    i.span(),
                    format!("image `{}` is not a layer defined above", i.get_ref()),
                ));
            }
        }
        containers.push((
            cd.id.get_ref().clone(),
            cd.image.as_ref().map(|i| i.get_ref().clone()),
        ));
    }

    let mut steps = Vec::new();
    if let Some(t) = doc.trace {
        if let Some(s) = t.steps.get(MAX_STEPS) {
            return Err(ctx.err(s.span(), format!("more than {MAX_STEPS} steps")));
        }
        for (i, s) in t.steps.into_iter().enumerate() {
            let span = s.span();
            let step = parse_step(&ctx, i, s, options.pool.as_ref())?;
            if let Action::Relate(r) = &step.action {
                if let Some(like) = &r.like {
                    let marked = steps.iter().any(|e: &Step| {
                        matches!(&e.action, Action::Relate(p) if p.mark.as_ref() == Some(like))
                    });
                    if !marked {
                        return Err(ctx.err(
                            span.clone(),
                            format!("step {i}: `like = \"{like}\"`: no earlier step has `mark = \"{like}\"`"),
                        ));
                    }
                }
            }
            for c in step.checks() {
                if let Check::PoolDataBlocks(BlockRange { since: Some(k), .. }) = c {
                    let observed = steps.get(*k).is_some_and(|e: &Step| {
                        e.checks()
                            .iter()
                            .any(|c| matches!(c, Check::PoolDataBlocks(_)))
                    });
                    if !observed {
                        return Err(ctx.err(
                            span,
                            format!(
                                "step {i}: `pool_data_blocks` since step {k}, which is not a \
                                 `check` with `pool_data_blocks`"
                            ),
                        ));
                    }
                }
            }
            steps.push(step);
        }
    }
    Ok(Scenario {
        file: file.to_path_buf(),
        title,
        claims: doc.claims,
        drivers,
        kernel,
        options,
        layers,
        containers,
        steps,
    })
}

/// How many steps of the trace are `op`.
fn count_ops(trace: Option<&TraceDoc>, op: &str) -> usize {
    trace.map_or(0, |t| {
        t.steps
            .iter()
            .filter(|s| s.get_ref().op.as_ref().is_some_and(|o| o.get_ref() == op))
            .count()
    })
}

fn check_id(ctx: &Ctx, id: &Spanned<String>, what: &str) -> Result<(), ParseError> {
    layerspec_model::check_id(id.get_ref()).map_err(|e| ctx.err(id.span(), format!("{what}: {e}")))
}

/// `pool_data_blocks = N`, or `{ min = a, max = b, since = k }` (at least one bound; with
/// `since`, the change since check step `k`, which must come earlier).
fn block_range(
    ctx: &Ctx,
    v: &Spanned<toml::Value>,
    index: usize,
) -> Result<BlockRange, ParseError> {
    let err = |msg: String| ctx.err(v.span(), format!("`pool_data_blocks`: {msg}"));
    let int = |x: &toml::Value, key: &str| -> Result<i64, ParseError> {
        x.as_integer()
            .ok_or_else(|| err(format!("`{key}` must be an integer")))
    };
    match v.get_ref() {
        toml::Value::Integer(n) if *n >= 0 => Ok(BlockRange::exactly(*n as u64)),
        toml::Value::Table(t) => {
            let mut r = BlockRange {
                min: None,
                max: None,
                since: None,
            };
            for (k, x) in t {
                match k.as_str() {
                    "min" => r.min = Some(int(x, k)?),
                    "max" => r.max = Some(int(x, k)?),
                    "since" => {
                        let s = int(x, k)?;
                        if s < 0 || s as usize >= index {
                            return Err(err(format!(
                                "`since = {s}` must name an earlier step (this is step {index})"
                            )));
                        }
                        r.since = Some(s as usize);
                    }
                    other => {
                        return Err(err(format!(
                            "unknown key `{other}` (expected min, max, since)"
                        )))
                    }
                }
            }
            if r.min.is_none() && r.max.is_none() {
                return Err(err("give `min`, `max` or both".into()));
            }
            if let (Some(a), Some(b)) = (r.min, r.max) {
                if a > b {
                    return Err(err(format!("min {a} is above max {b}")));
                }
            }
            Ok(r)
        }
        _ => Err(err(
            "expected a block count or a table `{ min = .., max = .., since = .. }`".into(),
        )),
    }
}

fn check_path(ctx: &Ctx, p: &Spanned<String>) -> Result<String, ParseError> {
    validate_scenario_path(p.get_ref())
        .map_err(|e| ctx.err(p.span(), format!("`{}`: {e}", p.get_ref())))?;
    Ok(p.get_ref().clone())
}

fn parse_options(ctx: &Ctx, o: Option<OptionsDoc>) -> Result<Options, ParseError> {
    let Some(o) = o else {
        return Ok(Options::default());
    };
    let backing = match o.backing.as_ref().map(|b| (b.get_ref().as_str(), b.span())) {
        None | Some(("tmpfs", _)) => Backing::Tmpfs,
        Some(("ext4", _)) => Backing::Ext4,
        Some(("xfs", _)) => Backing::Xfs,
        Some((other, span)) => {
            return Err(ctx.err(
                span,
                format!("backing `{other}`: expected \"tmpfs\", \"ext4\" or \"xfs\""),
            ))
        }
    };
    let mut overlay = OverlayOptions::default();
    let overlay_given = o.overlay.is_some();
    if let Some(ov) = o.overlay {
        if let Some(r) = ov.redirect_dir {
            overlay.redirect_dir = match r.get_ref().as_str() {
                "on" => true,
                "off" | "nofollow" | "follow" => false,
                other => {
                    return Err(ctx.err(
                        r.span(),
                        format!("redirect_dir `{other}`: expected \"on\", \"off\", \"follow\" or \"nofollow\""),
                    ))
                }
            };
        }
        overlay.metacopy = ov.metacopy.unwrap_or(false);
        overlay.index = ov.index.unwrap_or(false);
        if let Some(x) = ov.xino {
            overlay.xino = match x.get_ref().as_str() {
                "on" | "auto" => true,
                "off" => false,
                other => {
                    return Err(ctx.err(
                        x.span(),
                        format!("xino `{other}`: expected \"on\", \"off\" or \"auto\""),
                    ))
                }
            };
        }
    }
    let max = match backing {
        Backing::Tmpfs => MAX_TMPFS,
        _ => MAX_BACKING,
    };
    let size_bytes = match &o.size {
        Some(sz) => backing_size(sz.get_ref(), max).map_err(|e| ctx.err(sz.span(), e))?,
        None => backing_size(
            if backing == Backing::Tmpfs {
                DEFAULT_TMPFS
            } else {
                DEFAULT_LOOP
            },
            max,
        )
        .expect("the defaults are within the limits"),
    };
    if let Some(n) = &o.inodes {
        if backing != Backing::Ext4 {
            return Err(ctx.err(
                n.span(),
                "`inodes` sets ext4's inode count: it needs `backing = \"ext4\"`",
            ));
        }
        let most = size_bytes / 1024;
        if !(16..=most).contains(n.get_ref()) {
            return Err(ctx.err(
                n.span(),
                format!(
                    "inodes = {}: ext4 of {size_bytes} bytes holds 16 to {most} inodes (one per KiB)",
                    n.get_ref()
                ),
            ));
        }
    }
    if backing == Backing::Ext4 {
        // What mkfs.ext4 refuses to lay out (too small, too many inodes for the size).
        let inodes = o.inodes.as_ref().map(|n| *n.get_ref());
        if let Err(e) = layerspec_model::Ext4Geometry::new(size_bytes, inodes) {
            let span = match (&o.inodes, &o.size) {
                (Some(n), _) => n.span(),
                (None, Some(sz)) => sz.span(),
                (None, None) => 0..0,
            };
            return Err(ctx.err(span, format!("mkfs.ext4 would refuse this: {e}")));
        }
    }
    if backing == Backing::Xfs {
        if let Err(e) = layerspec_model::XfsGeometry::new(size_bytes) {
            let span = match (&o.size, &o.backing) {
                (Some(sz), _) => sz.span(),
                (None, Some(b)) => b.span(),
                (None, None) => 0..0,
            };
            return Err(ctx.err(span, format!("backing xfs: {e}")));
        }
    }
    Ok(Options {
        backing,
        inodes: o.inodes.map(Spanned::into_inner),
        size: o.size.map(Spanned::into_inner),
        overlay,
        overlay_given,
        discard: o.discard,
        init: o.init.unwrap_or(false),
        pool: None,
    })
}

fn parse_entry(ctx: &Ctx, e: &Spanned<EntryDoc>) -> Result<Entry, ParseError> {
    let d = e.get_ref();
    let path = check_path(ctx, &d.path)?;
    let kinds = [
        d.data.is_some(),
        d.size.is_some(),
        d.dir == Some(true),
        d.symlink.is_some(),
        d.link.is_some(),
        d.whiteout == Some(true),
    ];
    let n = kinds.iter().filter(|k| **k).count();
    if n > 1 {
        return Err(ctx.err(
            e.span(),
            "an entry has one of data, size, dir, symlink, link, whiteout",
        ));
    }
    let kind = if let Some(data) = &d.data {
        EntryKind::File(Content::Bytes(data.as_bytes().to_vec()))
    } else if let Some(size) = d.size {
        if size > MAX_DATA {
            return Err(ctx.err(e.span(), too_much_data(size)));
        }
        EntryKind::File(Content::Random {
            len: size,
            seed: seed_for_path(&path),
        })
    } else if d.dir == Some(true) {
        EntryKind::Dir {
            opaque: d.opaque.unwrap_or(false),
        }
    } else if let Some(t) = &d.symlink {
        if t.is_empty() {
            return Err(ctx.err(e.span(), "`symlink` target must not be empty"));
        }
        EntryKind::Symlink(t.clone())
    } else if let Some(l) = &d.link {
        validate_scenario_path(l).map_err(|b| ctx.err(e.span(), format!("link `{l}`: {b}")))?;
        EntryKind::HardLink(l.clone())
    } else if d.whiteout == Some(true) {
        EntryKind::Whiteout
    } else {
        // An entry with only a path is an empty file.
        EntryKind::File(Content::Bytes(Vec::new()))
    };
    if d.opaque == Some(true) && !matches!(kind, EntryKind::Dir { .. }) {
        return Err(ctx.err(e.span(), "`opaque = true` needs `dir = true`"));
    }
    if let Some(m) = d.mode {
        if m > 0o7777 {
            return Err(ctx.err(
                e.span(),
                format!("mode 0o{m:o} is not permission bits (at most 0o7777)"),
            ));
        }
    }
    Ok(Entry {
        path,
        kind,
        mode: d.mode,
        xattrs: d
            .xattrs
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect(),
        owner: Some((d.uid.unwrap_or(0), d.gid.unwrap_or(0))).filter(|&o| o != (0, 0)),
    })
}
