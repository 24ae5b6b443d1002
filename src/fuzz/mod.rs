//! Generated traces replayed on the model and on a real backend (`layerspec fuzz`).
//!
//! Each trace is drawn from its own ChaCha8 stream seeded by (seed, trace index)
//! ([`mod@generate`]), replayed on a fresh model and a fresh driver of the backend under test,
//! comparing every step's outcome and the observations after every step ([`mod@replay`]). A
//! diverging trace is shrunk ([`mod@shrink`]) and written as a scenario file that states the
//! model's answers ([`mod@emit`]). Traces run in parallel; everything printed except the
//! `elapsed` line depends only on the arguments.
//!
//! ```
//! use layerspec::fuzz::{generate::generate, replay::{replay, Replay}};
//! use layerspec_model::{DriverKind, ModelDriver, OverlayOptions};
//!
//! let opts = OverlayOptions::default();
//! let trace = generate(DriverKind::Overlay2, opts, 1, 0, 30);
//! assert_eq!(trace, generate(DriverKind::Overlay2, opts, 1, 0, 30));
//! let mut other = ModelDriver::new(DriverKind::Overlay2, opts);
//! assert!(matches!(replay(&trace, &mut other), Replay::Agree { steps: 30, .. }));
//! ```

pub mod emit;
pub mod generate;
pub mod replay;
pub mod shrink;
mod steps;
pub mod thin;
mod view;

use generate::{generate_as, Trace};
use layerspec_model::{Driver, DriverKind, ModelDriver, OverlayOptions};
use rayon::prelude::*;
use replay::{replay, Divergence, Replay};
use shrink::{shrink, Shrunk};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

/// `layerspec fuzz` arguments.
#[derive(Clone, Debug, clap::Args)]
pub struct FuzzArgs {
    /// Driver: overlay2, overlay, aufs, devicemapper, or thinpool (block-level traces).
    #[arg(long)]
    pub driver: DriverKind,
    /// Seed of the run: the same seed gives the same traces.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Number of traces.
    #[arg(long, default_value_t = 100)]
    pub traces: u64,
    /// Steps per trace.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Replay only trace N of the run (the index a report names), to look at one
    /// divergence again; `--traces` is then ignored.
    #[arg(long, value_name = "N")]
    pub trace: Option<u64>,
    /// Backend compared with the model: kernel, fuse, vm (the kernel in the VM tier, one
    /// boot for the whole run), or model (a second model: a self-check of the harness).
    /// For thinpool: model here, vm through the VM tier.
    #[arg(long, default_value = "kernel")]
    pub backend: String,
    /// Where shrunk scenario files go.
    #[arg(long, default_value = "scenarios/regressions")]
    pub out: PathBuf,
    /// Most replays spent shrinking one divergence.
    #[arg(long, default_value_t = 400)]
    pub shrink_budget: usize,
    /// overlayfs options both sides mount with, comma-separated: `redirect_dir=on`,
    /// `index=on`, `metacopy=on`, `xino=on` (default: the kernel's defaults, all off).
    #[arg(long, value_delimiter = ',', value_parser = parse_overlay_option)]
    pub overlay: Vec<(String, bool)>,
    /// Give containers Docker's `-init` layer, as `[options] init = true` does (always so
    /// with `--backend docker`).
    #[arg(long)]
    pub init: bool,
    /// Put the driver root on an ext4 of SIZE (`16M`; `SIZE:INODES` for `-N`), as a
    /// scenario's `backing = "ext4"` does, on both sides: where its blocks and inodes run
    /// out (LS27) is then part of what is compared.
    #[arg(long, value_name = "SIZE[:INODES]", value_parser = parse_ext4, conflicts_with = "xfs")]
    pub ext4: Option<LoopRoot>,
    /// Put the driver root on an xfs of SIZE (at least `300M`), as a scenario's `backing =
    /// "xfs"` does, on both sides: where a write runs out (LS31) is then part of what is
    /// compared. Big writes, up to the whole filesystem, fill it.
    #[arg(long, value_name = "SIZE", value_parser = parse_xfs)]
    pub xfs: Option<LoopRoot>,
    /// Run half the file steps as other users (uid 1000 and 1001, groups 1000 and 50),
    /// with `chown` and `utimes` steps and layer files those users own: the kernel's
    /// permission checks (LS29) are then part of what is compared.
    #[arg(long)]
    pub users: bool,
    /// Options of `--driver thinpool`.
    #[command(flatten)]
    pub thin: thin::ThinArgs,
}

/// A driver root on a loop device (`--ext4`, `--xfs`): its filesystem, its size in bytes
/// and its inode count, if set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoopRoot {
    /// ext4 or xfs.
    pub fs: layerspec_model::Backing,
    /// Bytes.
    pub bytes: u64,
    /// `mkfs.ext4 -N`.
    pub inodes: Option<u64>,
}

impl LoopRoot {
    /// The filesystem's name, as a scenario's `backing` and the option say it.
    pub fn fs_name(&self) -> &'static str {
        match self.fs {
            layerspec_model::Backing::Xfs => "xfs",
            _ => "ext4",
        }
    }

    /// The command-line option that makes it.
    pub fn option(&self) -> String {
        format!("--{} {self}", self.fs_name())
    }
}

impl std::fmt::Display for LoopRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.bytes)?;
        if let Some(n) = self.inodes {
            write!(f, ":{n}")?;
        }
        Ok(())
    }
}

/// `--ext4 SIZE[:INODES]`, within the limits a scenario file has.
fn parse_ext4(s: &str) -> Result<LoopRoot, String> {
    let (size, inodes) = match s.split_once(':') {
        Some((a, b)) => (
            a,
            Some(b.parse::<u64>().map_err(|e| format!("`{b}`: {e}"))?),
        ),
        None => (s, None),
    };
    let bytes = crate::scenario::limits::backing_size(size, crate::scenario::limits::MAX_BACKING)?;
    layerspec_model::Ext4Geometry::new(bytes, inodes)
        .map_err(|e| format!("mkfs.ext4 would refuse this: {e}"))?;
    Ok(LoopRoot {
        fs: layerspec_model::Backing::Ext4,
        bytes,
        inodes,
    })
}

/// `--xfs SIZE`, within the limits a scenario file has.
fn parse_xfs(s: &str) -> Result<LoopRoot, String> {
    let bytes = crate::scenario::limits::backing_size(s, crate::scenario::limits::MAX_BACKING)?;
    layerspec_model::XfsGeometry::new(bytes)?;
    Ok(LoopRoot {
        fs: layerspec_model::Backing::Xfs,
        bytes,
        inodes: None,
    })
}

/// One `--overlay` option: `name=on|off` for redirect_dir, index, metacopy, xino.
fn parse_overlay_option(s: &str) -> Result<(String, bool), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected name=on or name=off"))?;
    if !["redirect_dir", "index", "metacopy", "xino"].contains(&k) {
        return Err(format!(
            "`{k}`: expected redirect_dir, index, metacopy or xino"
        ));
    }
    let on = match v {
        "on" => true,
        "off" => false,
        _ => return Err(format!("`{s}`: the value is on or off")),
    };
    Ok((k.to_string(), on))
}

impl FuzzArgs {
    /// The driver root's loop filesystem, if any (`--ext4`, `--xfs`).
    pub fn loop_root(&self) -> Option<LoopRoot> {
        self.ext4.or(self.xfs)
    }

    /// How many times 4 KiB a big write's pages are (0: no big writes): 1 on ext4 (up to
    /// 256 KiB, so that blocks run out, not only inodes), and on xfs a 64th of the
    /// filesystem (up to the whole of it: writes fill it in a step or two).
    pub fn big_writes(&self) -> u64 {
        match self.loop_root() {
            Some(r) if r.fs == layerspec_model::Backing::Xfs => r.bytes / 4096 / 64,
            Some(_) => 1,
            None => 0,
        }
    }

    /// Whether the traces' containers get Docker's `-init` layer: `--init`, or the docker
    /// backend (Docker makes one for every container).
    pub fn init_layers(&self) -> bool {
        self.init || self.backend == "docker"
    }

    /// The overlayfs options `--overlay` names.
    pub fn overlay_options(&self) -> OverlayOptions {
        let mut o = OverlayOptions::default();
        for (k, on) in &self.overlay {
            match k.as_str() {
                "redirect_dir" => o.redirect_dir = *on,
                "index" => o.index = *on,
                "metacopy" => o.metacopy = *on,
                "xino" => o.xino = *on,
                _ => unreachable!("parse_overlay_option accepts these only"),
            }
        }
        o
    }

    /// `--overlay` as it is written on a command line (for the VM tier's guest).
    pub fn overlay_arg(&self) -> Option<String> {
        (!self.overlay.is_empty()).then(|| {
            self.overlay
                .iter()
                .map(|(k, on)| format!("{k}={}", if *on { "on" } else { "off" }))
                .collect::<Vec<_>>()
                .join(",")
        })
    }
}

/// The indices of the traces a run replays: all `traces` of them, or only `only`.
pub fn trace_indices(traces: u64, only: Option<u64>) -> Vec<u64> {
    match only {
        Some(i) => vec![i],
        None => (0..traces).collect(),
    }
}

/// Opens a fresh driver: a [`ModelDriver`] for backend `model`, else a real one in its own
/// sandbox through [`layerspec_real::open_backend`].
/// Model `m` with its driver root on `root`, if given ([`FuzzArgs::ext4`],
/// [`FuzzArgs::xfs`]).
pub fn on_loop(m: ModelDriver, root: Option<LoopRoot>) -> Result<ModelDriver, String> {
    match root {
        Some(r) if r.fs == layerspec_model::Backing::Xfs => m.with_backing(r.fs).with_xfs(r.bytes),
        Some(r) => m.with_backing(r.fs).with_ext4(r.bytes, r.inodes),
        None => Ok(m),
    }
}

/// `root`: on an ext4 or xfs driver root ([`FuzzArgs::ext4`], [`FuzzArgs::xfs`]).
pub fn open(
    driver: DriverKind,
    backend: &str,
    options: OverlayOptions,
    root: Option<LoopRoot>,
) -> Result<Box<dyn Driver + Send>, String> {
    if backend == "model" {
        return Ok(Box::new(on_loop(ModelDriver::new(driver, options), root)?));
    }
    // Inside the VM, backend `vm` is the guest kernel's.
    let backend = if backend == "vm" && crate::vm::in_guest() {
        "kernel"
    } else {
        backend
    };
    let backing = match root {
        Some(r) if r.fs == layerspec_model::Backing::Xfs => layerspec_real::BackingFs::Xfs {
            size: r.bytes.to_string(),
        },
        Some(r) => layerspec_real::BackingFs::Ext4 {
            size: r.bytes.to_string(),
            inodes: r.inodes,
        },
        None => layerspec_real::BackingFs::tmpfs(),
    };
    layerspec_real::open_backend_on(driver, backend, options, backing)
}

/// A divergence found, shrunk and (maybe) written.
#[derive(Clone, Debug)]
pub struct Found {
    /// The trace's index.
    pub index: u64,
    /// The divergence of the generated trace.
    pub first: Divergence,
    /// Steps in the generated trace.
    pub steps: usize,
    /// Layer entries in the generated trace.
    pub entries: usize,
    /// The shrunk trace.
    pub shrunk: Shrunk,
    /// The scenario file's text, or why there is none.
    pub scenario: Result<String, String>,
    /// Where it was written (`None`: not asked to write, or writing failed: see `scenario`).
    pub file: Option<PathBuf>,
}

/// How one trace went.
#[derive(Clone, Debug)]
pub enum TraceResult {
    /// Model and backend agreed; the steps run, and how many of them were ENOSPC.
    Agree(usize, usize),
    /// They differed.
    Diverged(Box<Found>),
    /// Trace `.0` could not be run: the model rejected it, or the backend failed to open.
    Error(u64, String),
    /// Trace `.0` agreed for `.1` steps (`.2` of them ENOSPC), then reached a step whose
    /// outcome the model does not predict (`.3`: why).
    Stopped(u64, usize, usize, String),
}

/// What a run found, in trace order.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Every trace's result, in trace order.
    pub results: Vec<TraceResult>,
}

impl Summary {
    /// Steps replayed over all traces (up to and including a diverging step).
    pub fn steps(&self) -> usize {
        self.results
            .iter()
            .map(|r| match r {
                TraceResult::Agree(n, _) | TraceResult::Stopped(_, n, _, _) => *n,
                TraceResult::Diverged(f) => match f.first.phase {
                    replay::Phase::Step(k) => k + 1,
                    _ => 0,
                },
                TraceResult::Error(..) => 0,
            })
            .sum()
    }

    /// The divergences.
    pub fn divergences(&self) -> impl Iterator<Item = &Found> {
        self.results.iter().filter_map(|r| match r {
            TraceResult::Diverged(f) => Some(f.as_ref()),
            _ => None,
        })
    }

    /// The trace errors, with their indexes.
    pub fn errors(&self) -> impl Iterator<Item = (u64, &str)> {
        self.results.iter().filter_map(|r| match r {
            TraceResult::Error(i, e) => Some((*i, e.as_str())),
            _ => None,
        })
    }

    /// Scenario files written, sorted.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut f: Vec<PathBuf> = self.divergences().filter_map(|d| d.file.clone()).collect();
        f.sort();
        f
    }

    /// The summary lines (deterministic: no timing).
    pub fn lines(&self, args: &FuzzArgs) -> Vec<String> {
        let which = match args.trace {
            Some(i) => format!("trace {i}"),
            None => format!("{} traces", args.traces),
        };
        let mut out = vec![format!(
            "fuzz: {} on {} against the model, seed {}, {which} x {} steps",
            args.driver, args.backend, args.seed, args.steps
        )];
        for f in self.divergences() {
            out.push(format!(
                "divergence: trace {}: {} (shrunk from {} steps, {} entries to {} steps, {} entries in {} replays{})",
                f.index,
                f.shrunk.divergence.summary(),
                f.steps,
                f.entries,
                f.shrunk.trace.steps.len(),
                f.shrunk.trace.entry_count(),
                f.shrunk.replays,
                if f.shrunk.budget_exhausted { ", budget used up" } else { "" }
            ));
            if let Err(e) = &f.scenario {
                out.push(format!("  no scenario file: {e}"));
            }
        }
        for (i, e) in self.errors() {
            out.push(format!("error: trace {i}: {e}"));
        }
        for r in &self.results {
            if let TraceResult::Stopped(i, steps, _, why) = r {
                out.push(format!("stopped: trace {i} after {steps} steps: {why}"));
            }
        }
        let files = self.files();
        out.push(format!("traces: {}", self.results.len()));
        out.push(format!("steps: {}", self.steps()));
        out.push(format!("divergences: {}", self.divergences().count()));
        out.push(format!("errors: {}", self.errors().count()));
        let stopped = self
            .results
            .iter()
            .filter(|r| matches!(r, TraceResult::Stopped(..)))
            .count();
        let no_space: usize = self
            .results
            .iter()
            .map(|r| match r {
                TraceResult::Agree(_, n) | TraceResult::Stopped(_, _, n, _) => *n,
                _ => 0,
            })
            .sum();
        if no_space > 0 {
            out.push(format!("ENOSPC outcomes agreed on: {no_space}"));
        }
        if stopped > 0 {
            out.push(format!(
                "stopped where the model does not predict the space: {stopped}"
            ));
        }
        out.push(format!("files written: {}", files.len()));
        out.extend(files.iter().map(|f| format!("  {}", f.display())));
        out
    }
}

/// The command that finds a run's traces again (the claim of the files it writes).
pub fn command(args: &FuzzArgs) -> String {
    let init = if args.init { " --init" } else { "" };
    let root = args
        .loop_root()
        .map(|r| format!(" {}", r.option()))
        .unwrap_or_default();
    let users = if args.users { " --users" } else { "" };
    format!(
        "layerspec fuzz --driver {} --seed {} --traces {} --steps {} --backend {}{init}{root}{users}",
        args.driver, args.seed, args.traces, args.steps, args.backend
    )
}

/// Runs trace `index`: generate, replay, and on a divergence shrink and write it up
/// (`write = false` keeps it in memory).
pub fn run_trace(args: &FuzzArgs, options: OverlayOptions, index: u64, write: bool) -> TraceResult {
    let mut trace: Trace = generate_as(
        args.driver,
        options,
        args.init_layers(),
        generate::Variety {
            big_writes: args.big_writes(),
            users: args.users,
        },
        args.seed,
        index,
        args.steps,
    );
    trace.loop_root = args.loop_root();
    let factory = || open(args.driver, &args.backend, options, args.loop_root());
    let mut other = match factory() {
        Ok(d) => d,
        Err(e) => return TraceResult::Error(index, format!("opening {}: {e}", args.backend)),
    };
    let first = match replay(&trace, other.as_mut()) {
        Replay::Agree { steps, no_space } => return TraceResult::Agree(steps, no_space),
        Replay::Invalid(e) => return TraceResult::Error(index, format!("invalid trace: {e}")),
        Replay::Stopped {
            steps,
            no_space,
            why,
        } => return TraceResult::Stopped(index, steps, no_space, why),
        Replay::Diverged(d) => d,
    };
    let kernel = other.kernel();
    drop(other);
    let shrunk = shrink(&trace, first.clone(), &factory, args.shrink_budget);
    let cmd = command(args);
    let origin = emit::Origin {
        backend: &args.backend,
        command: &cmd,
        divergence: Some(&shrunk.divergence),
        kernel,
    };
    let mut scenario = emit::scenario_text(&shrunk.trace, &origin);
    let mut file = None;
    if let (true, Ok(text)) = (write, &scenario) {
        let path = emit::file_name(&args.out, &shrunk.trace, &args.backend);
        match std::fs::create_dir_all(&args.out).and_then(|()| std::fs::write(&path, text)) {
            Ok(()) => file = Some(path),
            Err(e) => scenario = Err(format!("writing {}: {e}", path.display())),
        }
    }
    TraceResult::Diverged(Box::new(Found {
        index,
        first,
        steps: trace.steps.len(),
        entries: trace.entry_count(),
        shrunk,
        scenario,
        file,
    }))
}

/// Runs every trace of `args` in parallel (one driver per trace), with a progress bar on a
/// terminal. `Err` when the backend cannot run here, with the reason.
pub fn run(args: &FuzzArgs, options: OverlayOptions, write: bool) -> Result<Summary, String> {
    if let Some(r) = args.loop_root() {
        let name = r.fs_name();
        if !["kernel", "vm", "model"].contains(&args.backend.as_str()) {
            return Err(format!(
                "--{name} compares where the driver root's {name} runs out, which the model \
                 predicts for the kernel's overlayfs alone; on {} it is not the model's (LS28: \
                 fuse-overlayfs reports ENOSPC at close; Docker's data root shares the \
                 filesystem)",
                args.backend
            ));
        }
        if !args.driver.is_overlayfs() {
            return Err(format!(
                "--{name}: only overlay and overlay2 account for their driver root's space"
            ));
        }
    }
    open(args.driver, &args.backend, options, args.loop_root())?;
    let bar = if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(trace_indices(args.traces, args.trace).len() as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{pos}/{len} traces, {msg} {wide_bar} {elapsed}",
        ) {
            b.set_style(style);
        }
        b.set_message("0 divergences");
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let found = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<TraceResult> = trace_indices(args.traces, args.trace)
        .into_par_iter()
        .map(|i| {
            let r = run_trace(args, options, i, write);
            if matches!(r, TraceResult::Diverged(_)) {
                let n = found.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                bar.set_message(format!("{n} divergences"));
            }
            bar.inc(1);
            r
        })
        .collect();
    bar.finish_and_clear();
    Ok(Summary { results })
}

/// `layerspec fuzz`: prints the summary; returns the exit code (0 no divergence, 1
/// divergences, 2 when the backend cannot run or traces could not run).
pub fn main(args: &FuzzArgs) -> u8 {
    if crate::vm::runs_in_vm(&args.backend, args.driver) && !crate::vm::in_guest() {
        return crate::vm::host::fuzz(args);
    }
    if args.driver == DriverKind::Thinpool {
        return thin::main(args);
    }
    let start = Instant::now();
    let summary = match run(args, args.overlay_options(), true) {
        Ok(s) => s,
        Err(why) => {
            println!(
                "fuzz: {} on {}: cannot run: {why}",
                args.driver, args.backend
            );
            return 2;
        }
    };
    for l in summary.lines(args) {
        println!("{l}");
    }
    println!("elapsed: {:.2}s", start.elapsed().as_secs_f64());
    if summary.divergences().next().is_some() {
        1
    } else if summary.errors().next().is_some() {
        2
    } else {
        0
    }
}

#[cfg(test)]
mod tests;
