//! Generated thin-pool traces (`layerspec fuzz --driver thinpool`): block-level traces
//! replayed on the model's [`ThinPool`] and on a second [`ThinDriver`], shrunk to scenario
//! files on divergence.
//!
//! - [`mod@generate`]: pool parameters and steps per trace, from one ChaCha8 stream seeded by
//!   (seed, trace index);
//! - [`mod@replay`]: model and other driver side by side, each step's outcome compared, the
//!   observations every `observe_every` steps and at the end, the model's invariants after
//!   every step;
//! - [`mod@shrink`]: a diverging trace made small;
//! - [`mod@emit`]: the shrunk trace as a thin-pool scenario file stating the model's answers,
//!   checked to parse and pass on the model before it is reported.
//!
//! The other driver comes from a factory ([`OpenThin`]): a second model for the self-check
//! (`--backend model`), a deliberately broken model in the tests, or
//! `layerspec_real::open_thin` inside the VM. For `--backend vm` the host runs
//! `layerspec` + [`ThinFuzzConfig::guest_args`] (`guest fuzz --driver thinpool ...
//! --serial`) in one guest boot; the guest parses them as [`FuzzArgs`] and prints each of
//! [`guest_lines`]`(&args, &layerspec_real::open_thin)` as a JSON line; the host hands the
//! lines back to [`finish_from_guest`], which prints the summary, writes the scenario files
//! under `--out` and gives the exit code. Everything in a report depends only on the
//! configuration.
//!
//! ```
//! use layerspec::fuzz::thin::{open_model, run_traces, ThinFuzzConfig};
//!
//! let cfg = ThinFuzzConfig::new(1, 4, 30, "model");
//! let report = run_traces(&cfg, &open_model);
//! assert_eq!(report.divergences().count(), 0);
//! assert_eq!(report.to_string(), run_traces(&cfg, &open_model).to_string());
//! ```

pub mod emit;
pub mod generate;
pub mod replay;
pub mod shrink;
#[cfg(test)]
mod tests;

use super::replay::{Divergence, Phase};
use super::FuzzArgs;
use crate::runner::Status;
use crate::scenario::parse_str;
use emit::{file_name, scenario_text, ThinOrigin};
use generate::{generate_thin, ThinTrace};
use layerspec_model::{PoolParams, ThinDriver, ThinPool};
use rayon::prelude::*;
use replay::{replay_thin, ReplayOptions, ThinReplay};
use serde_json::json;
use shrink::{shrink_thin, ThinShrunk};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Opens a fresh pool made with the given parameters on the backend under test.
pub type OpenThin<'a> =
    dyn Fn(PoolParams) -> Result<Box<dyn ThinDriver + Send>, String> + Sync + 'a;

/// The thin-pool options of `layerspec fuzz` (used with `--driver thinpool` only).
#[derive(Clone, Debug, clap::Args)]
pub struct ThinArgs {
    /// thinpool: compare the pools' observations every this many steps and after the last
    /// (0: after the last only); on a real pool each costs a thin_dump.
    #[arg(long, default_value_t = 10)]
    pub observe_every: usize,
    /// thinpool: run one trace at a time (a real backend that cannot run pools side by
    /// side).
    #[arg(long)]
    pub serial: bool,
}

impl Default for ThinArgs {
    fn default() -> Self {
        ThinArgs {
            observe_every: 10,
            serial: false,
        }
    }
}

/// What a thin-pool fuzz run does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThinFuzzConfig {
    /// Seed of the run: the same seed gives the same traces.
    pub seed: u64,
    /// Number of traces.
    pub traces: u64,
    /// Only this trace of the run (`--trace`).
    pub only: Option<u64>,
    /// Steps per trace.
    pub steps: usize,
    /// The backend's name (`vm`, `model`, ...): it names the files and the report.
    pub backend: String,
    /// Compare observations every this many steps (0: at the end only).
    pub observe_every: usize,
    /// Check the model's invariants after every step.
    pub check_invariants: bool,
    /// Run traces in parallel (rayon), one pool per trace.
    pub parallel: bool,
    /// Most replays spent shrinking one divergence.
    pub shrink_budget: usize,
}

impl ThinFuzzConfig {
    /// A run of `traces` traces of `steps` steps against `backend`, with the defaults:
    /// observations every 10 steps, invariants checked, in parallel, shrink budget 400.
    pub fn new(seed: u64, traces: u64, steps: usize, backend: &str) -> ThinFuzzConfig {
        ThinFuzzConfig {
            seed,
            traces,
            only: None,
            steps,
            backend: backend.into(),
            observe_every: 10,
            check_invariants: true,
            parallel: true,
            shrink_budget: 400,
        }
    }

    /// The configuration `layerspec fuzz --driver thinpool` arguments ask for.
    pub fn from_args(args: &FuzzArgs) -> ThinFuzzConfig {
        ThinFuzzConfig {
            seed: args.seed,
            traces: args.traces,
            only: args.trace,
            steps: args.steps,
            backend: args.backend.clone(),
            observe_every: args.thin.observe_every,
            check_invariants: true,
            parallel: !args.thin.serial,
            shrink_budget: args.shrink_budget,
        }
    }

    /// The command that finds the run's traces again (the claim of the files it writes).
    pub fn command(&self) -> String {
        format!(
            "layerspec fuzz --driver thinpool --seed {} --traces {} --steps {} --backend {}",
            self.seed, self.traces, self.steps, self.backend
        )
    }

    /// The arguments after `layerspec` that run this configuration in a guest, one trace
    /// at a time: `guest fuzz --driver thinpool --seed S ... --serial`.
    pub fn guest_args(&self) -> Vec<String> {
        let mut a: Vec<String> = ["guest", "fuzz", "--driver", "thinpool"]
            .map(String::from)
            .to_vec();
        for (k, v) in [
            ("--seed", self.seed.to_string()),
            ("--traces", self.traces.to_string()),
            ("--steps", self.steps.to_string()),
            ("--backend", self.backend.clone()),
            ("--observe-every", self.observe_every.to_string()),
            ("--shrink-budget", self.shrink_budget.to_string()),
        ] {
            a.push(k.into());
            a.push(v);
        }
        if let Some(i) = self.only {
            a.push("--trace".into());
            a.push(i.to_string());
        }
        a.push("--serial".into());
        a
    }

    fn replay_options(&self) -> ReplayOptions {
        ReplayOptions {
            observe_every: self.observe_every,
            check_invariants: self.check_invariants,
        }
    }
}

/// Opens a model pool: the other side of the `--backend model` self-check.
pub fn open_model(params: PoolParams) -> Result<Box<dyn ThinDriver + Send>, String> {
    ThinPool::new(params)
        .map(|p| Box::new(p) as Box<dyn ThinDriver + Send>)
        .map_err(|e| e.to_string())
}

/// A divergence found, shrunk and written up.
#[derive(Clone, Debug)]
pub struct ThinFound {
    /// The trace's index.
    pub index: u64,
    /// The divergence of the generated trace.
    pub first: Divergence,
    /// Steps in the generated trace.
    pub steps: usize,
    /// The shrunk trace.
    pub shrunk: ThinShrunk,
    /// The scenario file's name (`thinpool-<backend>-seed<S>-trace<N>.toml`).
    pub file: String,
    /// The scenario file's text, or why there is none.
    pub scenario: Result<String, String>,
    /// Whether the file parses and passes on the model (`layerspec run --model-only`).
    pub passes_on_model: Result<(), String>,
}

/// How one trace went.
#[derive(Clone, Debug)]
pub enum ThinTraceResult {
    /// Model and backend agreed.
    Agree {
        /// Steps run.
        steps: usize,
        /// Observations compared.
        observations: usize,
    },
    /// They differed (or the model failed).
    Diverged(Box<ThinFound>),
    /// Trace `.0` could not run: the backend failed to open a pool.
    Error(u64, String),
}

/// What a thin-pool fuzz run found, in trace order.
#[derive(Clone, Debug)]
pub struct ThinFuzzReport {
    /// The run's configuration.
    pub config: ThinFuzzConfig,
    /// Every trace's result, by index.
    pub results: Vec<ThinTraceResult>,
}

impl ThinFuzzReport {
    /// Steps replayed over all traces (up to and including a diverging step).
    pub fn steps(&self) -> usize {
        self.results
            .iter()
            .map(|r| match r {
                ThinTraceResult::Agree { steps, .. } => *steps,
                ThinTraceResult::Diverged(f) => match f.first.phase {
                    Phase::Step(k) => k + 1,
                    _ => 0,
                },
                ThinTraceResult::Error(..) => 0,
            })
            .sum()
    }

    /// Observations compared in agreeing traces.
    pub fn observations(&self) -> usize {
        self.results
            .iter()
            .map(|r| match r {
                ThinTraceResult::Agree { observations, .. } => *observations,
                _ => 0,
            })
            .sum()
    }

    /// The divergences.
    pub fn divergences(&self) -> impl Iterator<Item = &ThinFound> {
        self.results.iter().filter_map(|r| match r {
            ThinTraceResult::Diverged(f) => Some(f.as_ref()),
            _ => None,
        })
    }

    /// The trace errors, with their indexes.
    pub fn errors(&self) -> impl Iterator<Item = (u64, &str)> {
        self.results.iter().filter_map(|r| match r {
            ThinTraceResult::Error(i, e) => Some((*i, e.as_str())),
            _ => None,
        })
    }

    /// The scenario files' names and texts, by trace.
    pub fn scenarios(&self) -> Vec<(String, String)> {
        self.divergences()
            .filter_map(|f| {
                f.scenario
                    .as_ref()
                    .ok()
                    .map(|t| (f.file.clone(), t.clone()))
            })
            .collect()
    }

    /// The summary lines (deterministic: no timing).
    pub fn lines(&self) -> Vec<String> {
        let c = &self.config;
        let which = match c.only {
            Some(i) => format!("trace {i}"),
            None => format!("{} traces", c.traces),
        };
        let mut out = vec![format!(
            "fuzz: thinpool on {} against the model, seed {}, {which} x {} steps, observed every {} steps",
            c.backend, c.seed, c.steps, c.observe_every
        )];
        for f in self.divergences() {
            let s = &f.shrunk;
            out.push(format!(
                "divergence: trace {}: {} (shrunk from {} to {} steps in {} replays{})",
                f.index,
                clip(&s.divergence.summary(), 300),
                f.steps,
                s.trace.steps.len(),
                s.replays,
                if s.budget_exhausted {
                    ", budget used up"
                } else {
                    ""
                }
            ));
            match (&f.scenario, &f.passes_on_model) {
                (Err(e), _) => out.push(format!("  no scenario file: {e}")),
                (Ok(_), Ok(())) => out.push(format!("  scenario: {}", f.file)),
                (Ok(_), Err(e)) => out.push(format!(
                    "  scenario: {} (does not pass on the model: {e})",
                    f.file
                )),
            }
        }
        for (i, e) in self.errors() {
            out.push(format!("error: trace {i}: {e}"));
        }
        out.push(format!("traces: {}", self.results.len()));
        out.push(format!("steps: {}", self.steps()));
        out.push(format!("observations: {}", self.observations()));
        out.push(format!("divergences: {}", self.divergences().count()));
        out.push(format!("errors: {}", self.errors().count()));
        out
    }

    /// 0: no divergence; 1: divergences; 2: traces that could not run.
    pub fn exit_code(&self) -> u8 {
        if self.divergences().next().is_some() {
            1
        } else if self.errors().next().is_some() {
            2
        } else {
            0
        }
    }

    /// The report as JSON lines, for a guest to print and the host to read back with
    /// [`finish_from_guest`]: one `{"thin_fuzz": "scenario", "file", "text"}` per scenario
    /// file, then `{"thin_fuzz": "summary", "lines", "exit"}`.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        let mut out: Vec<serde_json::Value> = self
            .scenarios()
            .into_iter()
            .map(|(file, text)| json!({"thin_fuzz": "scenario", "file": file, "text": text}))
            .collect();
        out.push(json!({
            "thin_fuzz": "summary",
            "lines": self.lines(),
            "exit": self.exit_code(),
        }));
        out
    }

    /// Writes the scenario files under `dir`; returns their paths.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, String> {
        write_scenarios(dir, &self.scenarios())
    }
}

impl fmt::Display for ThinFuzzReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for l in self.lines() {
            writeln!(f, "{l}")?;
        }
        Ok(())
    }
}

/// `s`, cut to about `max` bytes (on a character boundary) with `...` when longer.
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn write_scenarios(dir: &Path, files: &[(String, String)]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for (name, text) in files {
        if name.contains('/') || name.contains("..") || !name.ends_with(".toml") {
            return Err(format!("{name}: not a scenario file name"));
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        out.push(path);
    }
    Ok(out)
}

/// Whether a scenario text parses and passes on the model, as `layerspec run --model-only`
/// would run it.
pub fn passes_on_model(name: &str, text: &str) -> Result<(), String> {
    let scenario = parse_str(Path::new(name), text).map_err(|e| e.to_string())?;
    let outcomes = crate::suite::run_model(&scenario, None);
    if outcomes.is_empty() {
        return Err("it runs on no driver".into());
    }
    for o in outcomes {
        if o.result.status != Status::Pass {
            return Err(format!("{}: {:?}", o.driver, o.result.status));
        }
    }
    Ok(())
}

/// Runs trace `index` of `cfg`: generate, replay against a pool from `open_real`, and on a
/// divergence shrink it and write the scenario file's text.
pub fn run_trace(cfg: &ThinFuzzConfig, index: u64, open_real: &OpenThin<'_>) -> ThinTraceResult {
    let trace: ThinTrace = generate_thin(cfg.seed, index, cfg.steps);
    let mut other = match open_real(trace.params) {
        Ok(d) => d,
        Err(e) => {
            return ThinTraceResult::Error(index, format!("opening a pool on {}: {e}", cfg.backend))
        }
    };
    let first = match replay_thin(&trace, other.as_mut(), cfg.replay_options()) {
        ThinReplay::Agree {
            steps,
            observations,
        } => {
            return ThinTraceResult::Agree {
                steps,
                observations,
            }
        }
        ThinReplay::Diverged(d) => d,
    };
    drop(other);
    let shrunk = shrink_thin(
        &trace,
        first.clone(),
        open_real,
        cfg.replay_options(),
        cfg.shrink_budget,
    );
    let command = cfg.command();
    let origin = ThinOrigin {
        backend: &cfg.backend,
        command: &command,
        divergence: Some(&shrunk.divergence),
    };
    let file = file_name(&shrunk.trace, &cfg.backend);
    let scenario = scenario_text(&shrunk.trace, &origin);
    let passes = match &scenario {
        Ok(text) => passes_on_model(&file, text),
        Err(e) => Err(e.clone()),
    };
    ThinTraceResult::Diverged(Box::new(ThinFound {
        index,
        first,
        steps: trace.steps.len(),
        shrunk,
        file,
        scenario,
        passes_on_model: passes,
    }))
}

/// Runs every trace of `cfg` against pools from `open_real` (in parallel when
/// `cfg.parallel`), and reports in trace order.
pub fn run_traces(cfg: &ThinFuzzConfig, open_real: &OpenThin<'_>) -> ThinFuzzReport {
    let results = if cfg.parallel {
        super::trace_indices(cfg.traces, cfg.only)
            .into_par_iter()
            .map(|i| run_trace(cfg, i, open_real))
            .collect()
    } else {
        super::trace_indices(cfg.traces, cfg.only)
            .into_iter()
            .map(|i| run_trace(cfg, i, open_real))
            .collect()
    };
    ThinFuzzReport {
        config: cfg.clone(),
        results,
    }
}

/// In a guest (`layerspec guest fuzz --driver thinpool ...`): runs the traces `args` ask
/// for against pools from `open_real` (`layerspec_real::open_thin`), one at a time, and
/// returns the JSON lines to print for the host ([`ThinFuzzReport::json_lines`]).
pub fn guest_lines(args: &FuzzArgs, open_real: &OpenThin<'_>) -> Vec<serde_json::Value> {
    let mut cfg = ThinFuzzConfig::from_args(args);
    cfg.parallel = false;
    run_traces(&cfg, open_real).json_lines()
}

/// On the host: prints what a guest's [`ThinFuzzReport::json_lines`] say, writes the
/// scenario files under `out` (each checked to pass on the model first), and returns the
/// exit code the guest reported (2 when the lines hold no summary or a file cannot be
/// written).
pub fn finish_from_guest(lines: &[serde_json::Value], out: &Path) -> u8 {
    let mut files = Vec::new();
    let mut summary: Option<(Vec<String>, u8)> = None;
    let mut code = 0u8;
    for l in lines {
        match l.get("thin_fuzz").and_then(|k| k.as_str()) {
            Some("scenario") => {
                let (Some(file), Some(text)) = (
                    l.get("file").and_then(|v| v.as_str()),
                    l.get("text").and_then(|v| v.as_str()),
                ) else {
                    println!("fuzz: a scenario line without file or text: {l}");
                    code = 2;
                    continue;
                };
                if let Err(e) = passes_on_model(file, text) {
                    println!("fuzz: {file} does not pass on the model here: {e}");
                }
                files.push((file.to_string(), text.to_string()));
            }
            Some("summary") => {
                let text = l
                    .get("lines")
                    .and_then(|v| v.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                let exit = l.get("exit").and_then(|v| v.as_u64()).unwrap_or(2);
                summary = Some((text, u8::try_from(exit).unwrap_or(2)));
            }
            _ => {}
        }
    }
    let Some((text, exit)) = summary else {
        println!("fuzz: thinpool: the guest printed no summary");
        return 2;
    };
    for l in text {
        println!("{l}");
    }
    code = code.max(print_written(write_scenarios(out, &files)));
    exit.max(code)
}

/// Prints the scenario files written (or why they could not be); 2 on an error.
fn print_written(written: Result<Vec<PathBuf>, String>) -> u8 {
    match written {
        Ok(paths) => {
            println!("files written: {}", paths.len());
            for p in paths {
                println!("  {}", p.display());
            }
            0
        }
        Err(e) => {
            println!("fuzz: writing scenario files: {e}");
            2
        }
    }
}

/// `layerspec fuzz --driver thinpool`: runs the traces against `--backend model` (the
/// self-check) and prints the summary and the files written; the elapsed time goes to
/// stderr so that stdout depends only on the arguments. Other backends run elsewhere: the
/// VM tier runs the guest side with [`run_traces`] and `layerspec_real::open_thin`.
pub fn main(args: &FuzzArgs) -> u8 {
    let mut cfg = ThinFuzzConfig::from_args(args);
    let open_real: &OpenThin<'_> = match cfg.backend.clone().as_str() {
        "model" => &open_model,
        // dm-thin on this machine's kernel (where it has device-mapper, e.g. in the VM).
        "kernel" => {
            let verdict = layerspec_real::backends_for(layerspec_model::DriverKind::Thinpool)
                .into_iter()
                .find(|b| b.name == "kernel")
                .and_then(|b| b.unavailable);
            if let Some(why) = verdict {
                println!("fuzz: thinpool on kernel: cannot run here: {why}");
                return 2;
            }
            // Pools on one kernel are made one at a time.
            cfg.parallel = false;
            &layerspec_real::open_thin
        }
        other => {
            println!(
                "fuzz: thinpool on {other}: cannot run here: no thin-pool driver for that \
                 backend in this process (`--backend model` runs the model against itself; \
                 the VM tier runs `layerspec guest fuzz --driver thinpool ...`)"
            );
            return 2;
        }
    };
    let start = Instant::now();
    let report = run_traces(&cfg, open_real);
    print!("{report}");
    let code = report
        .exit_code()
        .max(print_written(report.write(&args.out)));
    eprintln!("elapsed: {:.2}s", start.elapsed().as_secs_f64());
    code
}
