//! Writing a trace as a scenario file (`docs/SCENARIOS.md`): its layers, its container,
//! and every step with `expect`/`returns` as the model answers (the spec's answer), plus a
//! comment on the diverging step saying what the other driver did.

use super::generate::Trace;
use super::replay::{describe, model_outcomes, Divergence, Phase, NOT_RUN};
use layerspec_model::{
    seed_for_path, Content, Entry, EntryKind, FileOp, KernelVersion, Kind, Op, OverlayOptions,
    Value,
};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// What a scenario file is written for: the trace, and where it came from.
pub struct Origin<'a> {
    /// The backend compared with the model.
    pub backend: &'a str,
    /// The command that finds it again (the file's claim).
    pub command: &'a str,
    /// The divergence, if there is one.
    pub divergence: Option<&'a Divergence>,
    /// The kernel the backend ran: the file's expectations are the model's at it.
    pub kernel: KernelVersion,
}

/// `<driver>-<backend>-seed<S>-trace<N>.toml` under `dir`.
pub fn file_name(dir: &Path, trace: &Trace, backend: &str) -> PathBuf {
    dir.join(format!(
        "{}-{backend}-seed{}-trace{}.toml",
        trace.driver.name(),
        trace.seed,
        trace.index
    ))
}

/// A TOML basic string.
pub fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn text(bytes: &[u8], what: &str) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what}: bytes are not UTF-8"))
}

fn entry(e: &Entry) -> Result<String, String> {
    let mut f = vec![format!("path = {}", toml_str(&e.path))];
    match &e.kind {
        EntryKind::File(Content::Bytes(b)) => {
            f.push(format!("data = {}", toml_str(&text(b, &e.path)?)))
        }
        EntryKind::File(Content::Random { len, seed }) if *seed == seed_for_path(&e.path) => {
            f.push(format!("size = {len}"))
        }
        EntryKind::File(Content::Random { .. }) => {
            return Err(format!(
                "{}: random contents not seeded by the path",
                e.path
            ))
        }
        EntryKind::Dir { opaque } => {
            f.push("dir = true".into());
            if *opaque {
                f.push("opaque = true".into());
            }
        }
        EntryKind::Symlink(t) => f.push(format!("symlink = {}", toml_str(t))),
        EntryKind::HardLink(t) => f.push(format!("link = {}", toml_str(t))),
        EntryKind::Whiteout => f.push("whiteout = true".into()),
    }
    if let Some(m) = e.mode {
        f.push(format!("mode = 0o{m:o}"));
    }
    if !e.xattrs.is_empty() {
        let kv: Result<Vec<String>, String> = e
            .xattrs
            .iter()
            .map(|(k, v)| Ok(format!("{} = {}", toml_str(k), toml_str(&text(v, k)?))))
            .collect();
        f.push(format!("xattrs = {{ {} }}", kv?.join(", ")));
    }
    Ok(format!("{{ {} }}", f.join(", ")))
}

/// The fields of a step, without `expect`/`returns`.
fn step_fields(op: &Op) -> Result<Vec<String>, String> {
    let mut f = Vec::new();
    let s = |k: &str, v: &str| format!("{k} = {}", toml_str(v));
    let container = |f: &mut Vec<String>, c: &Option<String>| {
        if let Some(c) = c {
            f.push(s("container", c));
        }
    };
    match op {
        Op::File { container: c, op } => {
            f.push(s("op", op.name()));
            container(&mut f, c);
            if let FileOp::AsUser { cred, .. } = op {
                f.push(format!("user = {}", cred.uid));
                f.push(format!("group = {}", cred.gid));
            }
            match op.bare() {
                FileOp::Create { path, mode } | FileOp::Mkdir { path, mode } => {
                    f.push(s("path", path));
                    if let Some(m) = mode {
                        f.push(format!("mode = 0o{m:o}"));
                    }
                }
                FileOp::Open { path, flags, mode } => {
                    f.push(s("path", path));
                    let names: Vec<String> = flags.names().iter().map(|n| toml_str(n)).collect();
                    f.push(format!("flags = [{}]", names.join(", ")));
                    if let Some(m) = mode {
                        f.push(format!("mode = 0o{m:o}"));
                    }
                }
                FileOp::Write { path, offset, data } => {
                    f.push(s("path", path));
                    if *offset != 0 {
                        f.push(format!("offset = {offset}"));
                    }
                    match data {
                        Content::Bytes(b) => f.push(s("data", &text(b, path)?)),
                        Content::Random { len, .. } => f.push(format!("size = {len}")),
                    }
                }
                FileOp::Append { path, data } => {
                    f.push(s("path", path));
                    f.push(s("data", &text(data, path)?));
                }
                FileOp::Truncate { path, size } => {
                    f.push(s("path", path));
                    f.push(format!("size = {size}"));
                }
                FileOp::Read { path, offset, len } => {
                    f.push(s("path", path));
                    if *offset != 0 {
                        f.push(format!("offset = {offset}"));
                    }
                    if let Some(l) = len {
                        f.push(format!("len = {l}"));
                    }
                }
                FileOp::Unlink { path }
                | FileOp::Rmdir { path }
                | FileOp::Readlink { path }
                | FileOp::Stat { path }
                | FileOp::Readdir { path } => f.push(s("path", path)),
                FileOp::Rename { from, to } | FileOp::Link { from, to } => {
                    f.push(s("from", from));
                    f.push(s("to", to));
                }
                FileOp::Symlink { target, path } => {
                    f.push(s("target", target));
                    f.push(s("path", path));
                }
                FileOp::Chmod { path, mode } => {
                    f.push(s("path", path));
                    f.push(format!("mode = 0o{mode:o}"));
                }
                FileOp::Utimes { path, atime, mtime } => {
                    f.push(s("path", path));
                    f.push(format!("atime = {atime}"));
                    f.push(format!("mtime = {mtime}"));
                }
                FileOp::Chown { path, uid, gid } => {
                    f.push(s("path", path));
                    if let Some(u) = uid {
                        f.push(format!("uid = {u}"));
                    }
                    if let Some(g) = gid {
                        f.push(format!("gid = {g}"));
                    }
                }
                FileOp::AsUser { .. } => unreachable!("bare() unwraps it"),
                FileOp::Setxattr { path, name, value } => {
                    f.push(s("path", path));
                    f.push(s("name", name));
                    f.push(s("value", &text(value, name)?));
                }
                FileOp::Getxattr { path, name } | FileOp::Removexattr { path, name } => {
                    f.push(s("path", path));
                    f.push(s("name", name));
                }
            }
        }
        Op::CreateContainer { id, image } => {
            f.push(s("op", "create_container"));
            f.push(s("id", id));
            if let Some(i) = image {
                f.push(s("image", i));
            }
        }
        Op::RemoveContainer { id } => {
            f.push(s("op", "remove_container"));
            f.push(s("id", id));
        }
        Op::Commit {
            container: c,
            layer,
        } => {
            f.push(s("op", "commit"));
            container(&mut f, c);
            f.push(s("layer", layer));
        }
        Op::Remount { container: c } => {
            f.push(s("op", "remount"));
            container(&mut f, c);
        }
        Op::Changes { container: c } => {
            f.push(s("op", "changes"));
            container(&mut f, c);
        }
    }
    Ok(f)
}

/// `returns = ...` for a value, when the format can state it (`None` otherwise).
fn returns(v: &Value) -> Option<String> {
    let list =
        |xs: &mut dyn Iterator<Item = String>| format!("[{}]", xs.collect::<Vec<_>>().join(", "));
    Some(match v {
        Value::Unit => return None,
        Value::Bytes(b) => toml_str(std::str::from_utf8(b).ok()?),
        Value::Target(t) | Value::Digest(t) => toml_str(t),
        Value::Stat(st) => {
            let mut f = vec![format!("kind = {}", toml_str(st.kind.name()))];
            if st.kind != Kind::Dir {
                // A directory's size is the backing filesystem's business.
                f.push(format!("size = {}", st.size));
            }
            f.push(format!("mode = 0o{:o}", st.mode));
            f.push(format!("nlink = {}", st.nlink));
            format!("{{ {} }}", f.join(", "))
        }
        Value::Names(n) => list(&mut n.iter().map(|x| toml_str(x))),
        Value::Changes(c) => list(&mut c.iter().map(|c| {
            format!(
                "[{}, {}]",
                toml_str(&format!("{:?}", c.kind)),
                toml_str(&c.path)
            )
        })),
    })
}

/// `trace` with each `write` of pseudo-random data seeded as a scenario file seeds a
/// `write` with `size` (its path's seed and the step's index), so that the file says the
/// same: a shrunk trace keeps the seeds of the steps' old places.
fn with_file_seeds(trace: &Trace) -> Trace {
    let mut t = trace.clone();
    for (i, op) in t.steps.iter_mut().enumerate() {
        if let Op::File {
            op:
                FileOp::Write {
                    path,
                    data: Content::Random { seed, .. },
                    ..
                },
            ..
        } = op
        {
            *seed = seed_for_path(path) ^ i as u64;
        }
    }
    t
}

fn comment(out: &mut String, indent: &str, lines: &[String]) {
    for l in lines {
        let _ = writeln!(out, "{indent}# {}", l.replace('\n', " "));
    }
}

fn options(o: &OverlayOptions, init: bool, root: Option<crate::fuzz::LoopRoot>) -> Option<String> {
    let mut out = String::new();
    if init {
        out.push_str("init = true\n");
    }
    if let Some(e) = root {
        out.push_str(&format!(
            "backing = \"{}\"\nsize = \"{}\"\n",
            e.fs_name(),
            e.bytes
        ));
        if let Some(n) = e.inodes {
            out.push_str(&format!("inodes = {n}\n"));
        }
    }
    if *o != OverlayOptions::default() {
        out.push_str(&format!(
            "overlay = {{ redirect_dir = {}, metacopy = {}, index = {}, xino = {} }}\n",
            toml_str(if o.redirect_dir { "on" } else { "off" }),
            o.metacopy,
            o.index,
            toml_str(if o.xino { "on" } else { "off" }),
        ));
    }
    (!out.is_empty()).then(|| format!("[options]\n{out}"))
}

/// The scenario file for `trace`, with every step's `expect`/`returns` as the model says.
pub fn scenario_text(trace: &Trace, origin: &Origin<'_>) -> Result<String, String> {
    let trace = &with_file_seeds(trace);
    let outcomes = model_outcomes(trace, origin.kernel)?;
    let driver = trace.driver.name();
    let mut out = String::new();
    let title = match origin.divergence {
        Some(d) if d.real.as_deref() == Some(NOT_RUN) => format!(
            "fuzz: the {driver} model fails at {} (seed {}, trace {})",
            d.phase, trace.seed, trace.index
        ),
        Some(d) => format!(
            "fuzz: {driver} on {} differs from the model at {} (seed {}, trace {})",
            origin.backend, d.phase, trace.seed, trace.index
        ),
        None => format!(
            "fuzz: generated trace (seed {}, trace {})",
            trace.seed, trace.index
        ),
    };
    let _ = writeln!(out, "title = {}", toml_str(&title));
    let _ = writeln!(out, "claims = [{}]", toml_str(origin.command));
    let _ = writeln!(out, "drivers = [{}]", toml_str(driver));
    if origin.kernel != KernelVersion::DEFAULT {
        // The expectations below are the model's at the backend's kernel, not the default:
        // the file states that kernel's behaviour (widen the range where it holds longer).
        let k = origin.kernel;
        let next = KernelVersion::new(k.major, k.minor + 1);
        let _ = writeln!(out, "kernel = {}", toml_str(&format!(">= {k}, < {next}")));
    }
    if let Some(d) = origin.divergence {
        out.push('\n');
        let found = format!("found against {}: {}", origin.backend, d.summary());
        comment(&mut out, "", &[found]);
    }
    if let Some(o) = options(&trace.options, trace.init, trace.loop_root) {
        out.push('\n');
        out.push_str(&o);
    }
    let lines = |d: &Divergence| d.real_lines(origin.backend, 12);
    for (i, l) in trace.layers.iter().enumerate() {
        out.push('\n');
        if let Some(d) = origin.divergence.filter(|d| d.phase == Phase::Layer(i)) {
            comment(&mut out, "", &lines(d));
        }
        let _ = writeln!(out, "[[layer]]\nid = {}", toml_str(&l.id));
        if let Some(p) = &l.parent {
            let _ = writeln!(out, "parent = {}", toml_str(p));
        }
        if l.entries.is_empty() {
            out.push_str("entries = []\n");
        } else {
            out.push_str("entries = [\n");
            for e in &l.entries {
                let _ = writeln!(out, "  {},", entry(e)?);
            }
            out.push_str("]\n");
        }
    }
    out.push('\n');
    if let Some(d) = origin.divergence.filter(|d| d.phase == Phase::Setup) {
        comment(&mut out, "", &lines(d));
    }
    let _ = writeln!(out, "[[container]]\nid = {}", toml_str(&trace.container));
    if let Some(i) = trace.image() {
        let _ = writeln!(out, "image = {}", toml_str(&i));
    }
    out.push_str("\n[trace]\nsteps = [\n");
    for (i, (op, outcome)) in trace.steps.iter().zip(&outcomes).enumerate() {
        if let Some(d) = origin.divergence.filter(|d| d.phase == Phase::Step(i)) {
            comment(&mut out, "  ", &lines(d));
        }
        let mut f = step_fields(op)?;
        match outcome {
            Err(panic) => comment(&mut out, "  ", &[format!("the model: {panic}")]),
            Ok(Err(e)) => f.push(format!("expect = {}", toml_str(e.name()))),
            Ok(Ok(v)) => {
                if let Some(r) = returns(v) {
                    f.push(format!("returns = {r}"));
                }
            }
        }
        let _ = writeln!(
            out,
            "  {{ {} }},  # {i}: {}",
            f.join(", "),
            describe(op).replace('\n', " ")
        );
    }
    out.push_str("]\n");
    Ok(out)
}

/// Writes the scenario file for `trace` under `dir`; returns its path.
pub fn write(dir: &Path, trace: &Trace, origin: &Origin<'_>) -> Result<PathBuf, String> {
    let text = scenario_text(trace, origin)?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = file_name(dir, trace, origin.backend);
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}
