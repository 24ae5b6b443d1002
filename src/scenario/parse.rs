//! The scenario parser: TOML 1.1 through `toml` and serde, unknown keys rejected, and every
//! error located by file, line and column.

mod kernel;
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

/// The keys each op takes, besides `op`, `expect`, `returns`.
fn allowed_keys(op: &str) -> Option<&'static [&'static str]> {
    Some(match op {
        "create" | "mkdir" => &["container", "path", "mode"],
        "open" => &["container", "path", "flags", "mode"],
        "write" => &["container", "path", "offset", "data", "size"],
        "append" => &["container", "path", "data"],
        "truncate" => &["container", "path", "size"],
        "read" => &["container", "path", "offset", "len"],
        "unlink" | "rmdir" | "readlink" | "stat" | "readdir" => &["container", "path"],
        "rename" | "link" => &["container", "from", "to"],
        "symlink" => &["container", "target", "path"],
        "chmod" => &["container", "path", "mode"],
        "utimes" => &["container", "path", "atime", "mtime"],
        "chown" => &["container", "path", "uid", "gid"],
        "setxattr" => &["container", "path", "name", "value"],
        "getxattr" | "removexattr" => &["container", "path", "name"],
        "create_container" => &["id", "image"],
        "remove_container" => &["id"],
        "commit" => &["container", "layer"],
        "remount" | "changes" => &["container"],
        "check" => &[
            "container",
            "whiteout",
            "opaque",
            "in_upper",
            "not_in_upper",
            "copied_up_bytes",
            "inodes_used",
            "stat",
            "mark",
            "like",
            "same",
            "differ",
            "pool_data_blocks",
            "mapped_blocks",
            "shared_blocks",
        ],
        "create_thin" => &["dev", "sectors"],
        "snapshot" => &["origin", "dev"],
        "delete_thin" => &["dev"],
        "write_blocks" | "read_blocks" | "discard_blocks" => &["dev", "block", "count"],
        "write_bytes" => &["dev", "offset", "len"],
        "set_transaction_id" => &["current", "new"],
        _ => return None,
    })
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

fn present_keys(s: &StepDoc) -> Vec<&'static str> {
    let mut k = Vec::new();
    macro_rules! has {
        ($($f:ident),*) => { $( if s.$f.is_some() { k.push(stringify!($f)); } )* };
    }
    has!(
        container,
        path,
        offset,
        data,
        size,
        len,
        mode,
        from,
        to,
        target,
        name,
        value,
        id,
        image,
        layer,
        whiteout,
        opaque,
        in_upper,
        not_in_upper,
        copied_up_bytes,
        inodes_used,
        stat,
        mark,
        like,
        same,
        differ,
        atime,
        mtime,
        uid,
        gid,
        user,
        group,
        pool_data_blocks,
        mapped_blocks,
        shared_blocks,
        dev,
        origin,
        block,
        count,
        sectors,
        current,
        new
    );
    k
}

impl StepDoc {
    /// The first file-level assertion key the step has (`whiteout`, `in_upper`, ...).
    fn file_check_key(&self) -> Option<&'static str> {
        [
            (self.whiteout.is_some(), "whiteout"),
            (self.opaque.is_some(), "opaque"),
            (self.in_upper.is_some(), "in_upper"),
            (self.not_in_upper.is_some(), "not_in_upper"),
            (self.copied_up_bytes.is_some(), "copied_up_bytes"),
            (self.inodes_used.is_some(), "inodes_used"),
        ]
        .into_iter()
        .find_map(|(given, k)| given.then_some(k))
    }
}

/// A `check` with `stat`: the path, the name it is remembered by, and the relations to an
/// earlier one ([`StatRelation`]).
fn stat_relation(
    ctx: &Ctx,
    d: &StepDoc,
    container: Option<String>,
    at: &dyn Fn(String) -> ParseError,
) -> Result<Action, ParseError> {
    let pool = d.pool_data_blocks.is_some().then_some("pool_data_blocks");
    if let Some(k) = d.file_check_key().or(pool) {
        return Err(at(format!(
            "a `check` with `stat` takes `mark`, `like`, `same` and `differ`, not `{k}`: \
             make it a step of its own"
        )));
    }
    let path = match &d.stat {
        Some(p) => check_path(ctx, p)?,
        None => {
            return Err(at(
                "`mark` and `like` need `stat`, the path to look at".into()
            ))
        }
    };
    let name = |v: &Option<Spanned<String>>| -> Result<Option<String>, ParseError> {
        v.as_ref()
            .map(|n| {
                layerspec_model::check_id(n.get_ref())
                    .map(|_| n.get_ref().clone())
                    .map_err(|e| ctx.err(n.span(), format!("a mark's name: {e}")))
            })
            .transpose()
    };
    let fields = |v: &Option<Spanned<toml::Value>>| -> Result<PerDriver<Vec<String>>, ParseError> {
        let Some(v) = v else {
            return Ok(PerDriver::all(Vec::new()));
        };
        per_driver(ctx, v, &|x| {
            let list = x
                .as_array()
                .ok_or("expected a list of stat fields, e.g. [\"ino\", \"mtime\"]")?;
            list.iter()
                .map(|f| match f.as_str() {
                    Some(f) if Identity::FIELDS.contains(&f) => Ok(f.to_string()),
                    _ => Err(format!(
                        "unknown stat field {f} (expected {})",
                        Identity::FIELDS.join(", ")
                    )),
                })
                .collect()
        })
    };
    let rel = StatRelation {
        container,
        path,
        mark: name(&d.mark)?,
        like: name(&d.like)?,
        same: fields(&d.same)?,
        differ: fields(&d.differ)?,
    };
    let listed = |p: &PerDriver<Vec<String>>| {
        p.default
            .iter()
            .chain(p.by_name.values())
            .any(|v| !v.is_empty())
    };
    let compares = listed(&rel.same) || listed(&rel.differ);
    if rel.like.is_some() != compares {
        return Err(at(if compares {
            "`same` and `differ` compare with an earlier mark: name it with `like`".into()
        } else {
            "`like` needs `same` or `differ`: the fields to compare".into()
        }));
    }
    if rel.mark.is_none() && rel.like.is_none() {
        return Err(at("a `check` with `stat` needs `mark` or `like`".into()));
    }
    Ok(Action::Relate(rel))
}

fn parse_step(
    ctx: &Ctx,
    index: usize,
    s: Spanned<StepDoc>,
    pool: Option<&layerspec_model::PoolParams>,
) -> Result<Step, ParseError> {
    let span = s.span();
    let text = ctx.text[span.clone()].trim().to_string();
    let (line, _) = line_col(ctx.text, span.start);
    let d = s.into_inner();
    let at = |msg: String| ctx.err(span.clone(), format!("step {index}: {msg}"));
    let Some(op) = &d.op else {
        return Err(at("missing `op`".into()));
    };
    let opname = op.get_ref().as_str();
    let Some(allowed) = allowed_keys(opname) else {
        return Err(ctx.err(
            op.span(),
            format!("step {index}: unknown op `{opname}` (expected one of {OPS})"),
        ));
    };
    let file_op = (allowed.contains(&"path") || allowed.contains(&"from"))
        && !matches!(opname, "check" | "create_container");
    for k in present_keys(&d) {
        if !(allowed.contains(&k) || file_op && matches!(k, "user" | "group")) {
            return Err(at(format!(
                "`{k}` is not a field of `{opname}` (it takes {})",
                allowed.join(", ")
            )));
        }
    }
    match pool {
        Some(_) if opname != "check" && !thin::is_thin_op(opname) => {
            return Err(at(format!(
                "`{opname}` is a file step; a thin-pool scenario (`[pool]`) runs {} and check",
                thin::THIN_OPS.join(", ")
            )))
        }
        None if thin::is_thin_op(opname) => {
            return Err(at(format!(
                "`{opname}` is a thin-pool step: it needs a `[pool]` table"
            )))
        }
        _ => {}
    }
    let need_path = |p: &Option<Spanned<String>>, what: &str| -> Result<String, ParseError> {
        match p {
            Some(p) => check_path(ctx, p),
            None => Err(at(format!("`{opname}` needs `{what}`"))),
        }
    };
    let need =
        |v: Option<u64>, what: &str| v.ok_or_else(|| at(format!("`{opname}` needs `{what}`")));
    let need_s = |v: &Option<String>, what: &str| {
        v.clone()
            .ok_or_else(|| at(format!("`{opname}` needs `{what}`")))
    };
    let id_ok = |v: &str| -> Result<(), ParseError> {
        layerspec_model::check_id(v).map_err(|e| at(e.to_string()))
    };
    if let Some(c) = &d.container {
        layerspec_model::check_id(c.get_ref())
            .map_err(|e| ctx.err(c.span(), format!("step {index}: {e}")))?;
    }
    for v in [&d.id, &d.image, &d.layer].into_iter().flatten() {
        id_ok(v)?;
    }
    let off = |v: Option<u64>, what: &str| -> Result<(), ParseError> {
        match v {
            Some(n) if n > MAX_OFFSET => Err(at(format!(
                "`{what} = {n}` is past the largest file offset ({MAX_OFFSET})"
            ))),
            _ => Ok(()),
        }
    };
    if d.dev.is_none() {
        // File steps: offsets and sizes are `off_t`s (thin-pool steps check their own).
        off(d.offset, "offset")?;
        off(d.size, "size")?;
        off(d.len, "len")?;
        // `offset + len` past `i64::MAX` is the kernel's to refuse (rw_verify_area:
        // EINVAL), and the model predicts it: `scenarios/bounds/`.
    }
    let container = d.container.as_ref().map(|c| c.get_ref().clone());
    if d.group.is_some() && d.user.is_none() {
        return Err(at(
            "`group` goes with `user`: the step runs as `user`, in `group` \
                       (default: the same number)"
                .into(),
        ));
    }
    // A step as another user: its uid, and its gid (the uid's number unless given).
    let cred = d.user.map(|uid| layerspec_model::Cred {
        uid,
        gid: d.group.unwrap_or(uid),
    });
    let file = |op: FileOp| {
        let op = match cred {
            Some(cred) => FileOp::AsUser {
                cred,
                op: Box::new(op),
            },
            None => op,
        };
        Action::Op(Op::File {
            container: container.clone(),
            op,
        })
    };
    let action = match opname {
        "create" => file(FileOp::Create {
            path: need_path(&d.path, "path")?,
            mode: d.mode,
        }),
        "mkdir" => file(FileOp::Mkdir {
            path: need_path(&d.path, "path")?,
            mode: d.mode,
        }),
        "open" => {
            let list = d.flags.as_ref().ok_or_else(|| {
                at("`open` needs `flags`, e.g. [\"O_WRONLY\", \"O_CREAT\"]".into())
            })?;
            let mut flags = layerspec_model::OpenFlags::default();
            let mut access = 0;
            for name in list.get_ref() {
                if !flags.set(name) {
                    return Err(ctx.err(
                        list.span(),
                        format!(
                            "step {index}: unknown open flag `{name}`: expected one of {}",
                            layerspec_model::OpenFlags::NAMES.join(", ")
                        ),
                    ));
                }
                access += usize::from(matches!(name.as_str(), "O_RDONLY" | "O_WRONLY" | "O_RDWR"));
            }
            if access > 1 {
                return Err(ctx.err(
                    list.span(),
                    format!("step {index}: one access mode at most: O_RDONLY, O_WRONLY or O_RDWR"),
                ));
            }
            file(FileOp::Open {
                path: need_path(&d.path, "path")?,
                flags,
                mode: d.mode,
            })
        }
        "write" => {
            let path = need_path(&d.path, "path")?;
            let data = match (&d.data, d.size) {
                (Some(s), None) => Content::Bytes(s.as_bytes().to_vec()),
                (None, Some(n)) if n > MAX_DATA => return Err(at(too_much_data(n))),
                (None, Some(n)) => Content::Random {
                    len: n,
                    seed: seed_for_path(&path) ^ index as u64,
                },
                _ => return Err(at("`write` needs one of `data` or `size`".into())),
            };
            file(FileOp::Write {
                path,
                offset: d.offset.unwrap_or(0),
                data,
            })
        }
        "append" => file(FileOp::Append {
            path: need_path(&d.path, "path")?,
            data: need_s(&d.data, "data")?.into_bytes(),
        }),
        "truncate" => file(FileOp::Truncate {
            path: need_path(&d.path, "path")?,
            size: need(d.size, "size")?,
        }),
        "read" => file(FileOp::Read {
            path: need_path(&d.path, "path")?,
            offset: d.offset.unwrap_or(0),
            len: d.len,
        }),
        "unlink" => file(FileOp::Unlink {
            path: need_path(&d.path, "path")?,
        }),
        "rmdir" => file(FileOp::Rmdir {
            path: need_path(&d.path, "path")?,
        }),
        "readlink" => file(FileOp::Readlink {
            path: need_path(&d.path, "path")?,
        }),
        "stat" => file(FileOp::Stat {
            path: need_path(&d.path, "path")?,
        }),
        "readdir" => file(FileOp::Readdir {
            path: need_path(&d.path, "path")?,
        }),
        "rename" => file(FileOp::Rename {
            from: need_path(&d.from, "from")?,
            to: need_path(&d.to, "to")?,
        }),
        "link" => file(FileOp::Link {
            from: need_path(&d.from, "from")?,
            to: need_path(&d.to, "to")?,
        }),
        "symlink" => file(FileOp::Symlink {
            target: need_s(&d.target, "target")?,
            path: need_path(&d.path, "path")?,
        }),
        "chmod" => {
            let mode = d.mode.ok_or_else(|| at("`chmod` needs `mode`".into()))?;
            file(FileOp::Chmod {
                path: need_path(&d.path, "path")?,
                mode,
            })
        }
        "utimes" => {
            let mtime = need(d.mtime, "mtime")?;
            let atime = d.atime.unwrap_or(mtime);
            for (what, v) in [("atime", atime), ("mtime", mtime)] {
                if v > layerspec_model::MAX_UTIME {
                    return Err(at(format!(
                        "`{what} = {v}` is past the largest time a step sets ({} seconds)",
                        layerspec_model::MAX_UTIME
                    )));
                }
            }
            file(FileOp::Utimes {
                path: need_path(&d.path, "path")?,
                atime,
                mtime,
            })
        }
        "chown" => {
            if d.uid.is_none() && d.gid.is_none() {
                return Err(at("`chown` needs `uid`, `gid` or both".into()));
            }
            file(FileOp::Chown {
                path: need_path(&d.path, "path")?,
                uid: d.uid,
                gid: d.gid,
            })
        }
        "setxattr" => file(FileOp::Setxattr {
            path: need_path(&d.path, "path")?,
            name: need_s(&d.name, "name")?,
            value: d.value.clone().unwrap_or_default().into_bytes(),
        }),
        "getxattr" => file(FileOp::Getxattr {
            path: need_path(&d.path, "path")?,
            name: need_s(&d.name, "name")?,
        }),
        "removexattr" => file(FileOp::Removexattr {
            path: need_path(&d.path, "path")?,
            name: need_s(&d.name, "name")?,
        }),
        "create_container" => Action::Op(Op::CreateContainer {
            id: need_s(&d.id, "id")?,
            image: d.image.clone(),
        }),
        "remove_container" => Action::Op(Op::RemoveContainer {
            id: need_s(&d.id, "id")?,
        }),
        "commit" => Action::Op(Op::Commit {
            container,
            layer: need_s(&d.layer, "layer")?,
        }),
        "remount" => Action::Op(Op::Remount { container }),
        "changes" => Action::Op(Op::Changes { container }),
        "check" if pool.is_some() => Action::Thin(thin::thin_check(&d, &at)?),
        "check" if d.stat.is_some() || d.mark.is_some() || d.like.is_some() => {
            stat_relation(ctx, &d, container, &at)?
        }
        "check" => {
            let mut checks = Vec::new();
            for (v, f) in [
                (&d.whiteout, Check::Whiteout as fn(String) -> Check),
                (&d.opaque, Check::Opaque),
                (&d.in_upper, Check::InUpper),
                (&d.not_in_upper, Check::NotInUpper),
            ] {
                if let Some(p) = v {
                    checks.push(f(check_path(ctx, p)?));
                }
            }
            if let Some(n) = d.copied_up_bytes {
                checks.push(Check::CopiedUpBytes(n));
            }
            if let Some(n) = d.inodes_used {
                checks.push(Check::InodesUsed(n));
            }
            if let Some(v) = &d.pool_data_blocks {
                checks.push(Check::PoolDataBlocks(block_range(ctx, v, index)?));
            }
            if d.mapped_blocks.is_some() || d.shared_blocks.is_some() {
                return Err(at(
                    "`mapped_blocks` and `shared_blocks` are thin-pool checks: they need a \
                     `[pool]` table"
                        .into(),
                ));
            }
            if checks.is_empty() {
                return Err(at("`check` needs at least one assertion key".into()));
            }
            Action::Check { container, checks }
        }
        thin => match pool {
            Some(p) => Action::Thin(thin::thin_op(thin, &d, p, &at)?),
            None => return Err(at(format!("`{thin}` needs a `[pool]` table"))),
        },
    };
    let expect = match &d.expect {
        None => PerDriver::all(Expect::Ok),
        Some(v) => per_driver(ctx, v, &|val: &toml::Value| match val {
            toml::Value::String(s) if s == "ok" => Ok(Expect::Ok),
            toml::Value::String(s) => s
                .parse::<Errno>()
                .map(Expect::Errno)
                .map_err(|e| e.to_string()),
            _ => Err("`expect` is \"ok\" or an errno name such as \"ENOENT\"".into()),
        })?,
    };
    let returns = match &d.returns {
        None => None,
        Some(v) => Some(per_driver(ctx, v, &|val| expected(opname, val))?),
    };
    if let Action::Thin(t) = &action {
        thin::check_returns(t, &returns, &at)?;
    }
    if returns.is_some()
        && !matches!(
            opname,
            "read" | "readlink" | "stat" | "readdir" | "getxattr" | "changes" | "read_blocks"
        )
    {
        return Err(at(format!(
            "`{opname}` returns nothing to compare: drop `returns`"
        )));
    }
    Ok(Step {
        index,
        text,
        line,
        action,
        expect,
        returns,
    })
}

const PER_DRIVER_KEYS: &[&str] = &[
    "default",
    "aufs",
    "overlay",
    "overlay2",
    "devicemapper",
    "thinpool",
    "model",
    "kernel",
    "fuse",
    "vm",
];

fn is_per_driver_key(k: &str) -> bool {
    let base = k.split('.').next().unwrap_or(k);
    PER_DRIVER_KEYS.contains(&base) && k.split('.').count() <= 2
}

fn per_driver<T>(
    ctx: &Ctx,
    v: &Spanned<toml::Value>,
    one: &dyn Fn(&toml::Value) -> Result<T, String>,
) -> Result<PerDriver<T>, ParseError> {
    let err = |m: String| ctx.err(v.span(), m);
    if let toml::Value::Table(t) = v.get_ref() {
        let stat_keys = ["kind", "size", "mode", "nlink", "uid", "gid"];
        let looks_per_driver = !t.is_empty() && t.keys().all(|k| is_per_driver_key(k));
        if looks_per_driver {
            let mut out = PerDriver {
                default: None,
                by_name: BTreeMap::new(),
            };
            for (k, val) in t {
                let parsed = one(val).map_err(|m| err(format!("`{k}`: {m}")))?;
                if k == "default" {
                    out.default = Some(parsed);
                } else {
                    out.by_name.insert(k.clone(), parsed);
                }
            }
            return Ok(out);
        }
        if let Some(bad) = t.keys().find(|k| !stat_keys.contains(&k.as_str())) {
            return Err(err(format!(
                "unknown key `{bad}`: a per-driver table has keys {}; a stat table has {}",
                PER_DRIVER_KEYS.join(", "),
                stat_keys.join(", ")
            )));
        }
    }
    one(v.get_ref()).map(PerDriver::all).map_err(err)
}

fn expected(op: &str, v: &toml::Value) -> Result<Expected, String> {
    use toml::Value as V;
    let strings = |a: &Vec<V>| -> Result<Vec<String>, String> {
        a.iter()
            .map(|x| {
                x.as_str()
                    .map(String::from)
                    .ok_or_else(|| "expected a list of strings".to_string())
            })
            .collect()
    };
    match (op, v) {
        ("read" | "readlink" | "getxattr", V::String(s)) => Ok(Expected::Text(s.clone())),
        ("stat", V::Table(t)) => {
            let int = |k: &str| -> Result<Option<u64>, String> {
                match t.get(k) {
                    None => Ok(None),
                    Some(V::Integer(i)) if *i >= 0 => Ok(Some(*i as u64)),
                    Some(_) => Err(format!("stat `{k}` must be a non-negative integer")),
                }
            };
            let kind = match t.get("kind") {
                None => None,
                Some(V::String(s))
                    if ["file", "dir", "symlink", "fifo", "char", "block"]
                        .contains(&s.as_str()) =>
                {
                    Some(s.clone())
                }
                Some(_) => {
                    return Err(
                        "stat `kind` is one of file, dir, symlink, fifo, char, block".into(),
                    )
                }
            };
            Ok(Expected::Stat {
                kind,
                size: int("size")?,
                mode: int("mode")?.map(|m| m as u32),
                nlink: int("nlink")?.map(|m| m as u32),
                uid: int("uid")?.map(|m| m as u32),
                gid: int("gid")?.map(|m| m as u32),
            })
        }
        ("readdir", V::Array(a)) => Ok(Expected::Names(strings(a)?)),
        ("read_blocks", V::Array(a)) => thin::expected_blocks(a),
        ("changes", V::Array(a)) => {
            let mut out = Vec::new();
            for item in a {
                let pair = item
                    .as_array()
                    .map(strings)
                    .transpose()?
                    .unwrap_or_default();
                match pair.as_slice() {
                    [k, p] if ["A", "C", "D"].contains(&k.as_str()) => {
                        out.push((k.clone(), p.clone()))
                    }
                    _ => {
                        return Err(
                            "`changes` returns a list of [kind, path] with kind A, C or D".into(),
                        )
                    }
                }
            }
            Ok(Expected::Changes(out))
        }
        ("read" | "readlink" | "getxattr", _) => Err(format!("`{op}` returns a string")),
        ("stat", _) => Err("`stat` returns a table { kind, size, mode, nlink, uid, gid }".into()),
        ("readdir", _) => Err("`readdir` returns a list of names".into()),
        ("changes", _) => Err("`changes` returns a list of [kind, path]".into()),
        ("read_blocks", _) => Err("`read_blocks` returns a list, one entry per block".into()),
        _ => Err(format!("`{op}` returns nothing to compare")),
    }
}
