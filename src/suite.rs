//! A suite: scenario files found under paths, run on every driver and backend that applies.

use crate::runner::{run, RunResult, Status};
use crate::scenario::{parse_file, ParseError, Scenario};
use layerspec_model::{
    Driver, DriverError, DriverKind, KernelVersion, LayerSpec, ModelDriver, Observation, Op,
    Outcome as ModelOutcome, PoolObservation, ThinDriver, ThinOp, ThinOutcome,
};
use std::path::{Path, PathBuf};

/// Every `.toml` file under `paths` (files are taken as they are), sorted.
pub fn discover(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out).map_err(|e| format!("{}: {e}", p.display()))?;
        } else if p.exists() {
            out.push(p.clone());
        } else {
            return Err(format!("{}: no such file or directory", p.display()));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "toml") {
            out.push(p);
        }
    }
    Ok(())
}

/// Parses every file; all errors are returned, not just the first.
pub fn load(files: &[PathBuf]) -> (Vec<Scenario>, Vec<ParseError>) {
    let mut ok = Vec::new();
    let mut errs = Vec::new();
    for f in files {
        match parse_file(f) {
            Ok(s) => ok.push(s),
            Err(e) => errs.push(e),
        }
    }
    (ok, errs)
}

/// One line of a suite's results.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Scenario name (path below `scenarios/`).
    pub scenario: String,
    /// Driver.
    pub driver: DriverKind,
    /// Backend.
    pub backend: String,
    /// Result.
    pub result: RunResult,
    /// The kernel the run followed, where known: for the model the version whose rules it
    /// followed (`6.18`), for a real backend the release it ran on (`uname -r`).
    pub kernel: Option<String>,
}

/// The release of the kernel this process runs on (`uname -r`; inside the VM tier, the
/// guest's), read once.
pub fn running_kernel() -> Option<String> {
    static RELEASE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    RELEASE
        .get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|r| r.trim().to_string())
                .filter(|r| !r.is_empty())
        })
        .clone()
}

/// Runs one scenario on the model for every driver it applies to (or the `only` ones), at
/// the kernel the model follows by default ([`KernelVersion::DEFAULT`]).
pub fn run_model(s: &Scenario, only: Option<&[DriverKind]>) -> Vec<Outcome> {
    run_model_at(s, only, KernelVersion::DEFAULT)
}

/// Like [`run_model`], the model following the rules of `kernel`. A file whose `kernel`
/// range leaves `kernel` out is skipped, saying why.
pub fn run_model_at(
    s: &Scenario,
    only: Option<&[DriverKind]>,
    kernel: KernelVersion,
) -> Vec<Outcome> {
    s.drivers()
        .into_iter()
        .filter(|d| only.is_none_or(|o| o.contains(d)))
        .map(|d| Outcome {
            scenario: s.name(),
            driver: d,
            backend: "model".into(),
            result: model_result(s, d, kernel),
            kernel: Some(kernel.to_string()),
        })
        .collect()
}

/// One model run of `s` on `driver` at `kernel`.
fn model_result(s: &Scenario, driver: DriverKind, kernel: KernelVersion) -> RunResult {
    if let Some(why) = s
        .kernel_range(driver)
        .and_then(|r| r.skip_reason("the model follows", kernel))
    {
        return RunResult {
            status: Status::Skip(why),
            observation: None,
        };
    }
    run(s, &mut model_driver(s, driver, kernel))
}

/// The model of `s` on `driver` at `kernel`: its overlay options, its backing filesystem
/// and its size (tmpfs pages, ext4 blocks and inodes, and xfs blocks run out as
/// predicted).
pub fn model_driver(s: &Scenario, driver: DriverKind, kernel: KernelVersion) -> ModelDriver {
    let m = ModelDriver::new(driver, s.options.overlay)
        .with_backing(s.options.backing)
        .with_kernel(kernel)
        .with_init_layers(s.options.init);
    let bytes = s.options.backing_bytes();
    match s.options.backing {
        crate::scenario::Backing::Tmpfs => m.with_tmpfs_size(bytes),
        crate::scenario::Backing::Ext4 => m
            .with_ext4(bytes, s.options.inodes)
            .expect("mkfs.ext4's limits are checked when parsed"),
        crate::scenario::Backing::Xfs => m
            .with_xfs(bytes)
            .expect("mkfs.xfs's limits are checked when parsed"),
    }
}

/// The backing filesystem a scenario asks for, for the real side.
pub fn backing(s: &Scenario) -> layerspec_real::BackingFs {
    use crate::scenario::limits::{DEFAULT_LOOP, DEFAULT_TMPFS};
    use crate::scenario::Backing;
    let size = |default: &str| s.options.size.clone().unwrap_or_else(|| default.into());
    match s.options.backing {
        Backing::Tmpfs => layerspec_real::BackingFs::Tmpfs {
            size: size(DEFAULT_TMPFS),
        },
        Backing::Ext4 => layerspec_real::BackingFs::Ext4 {
            size: size(DEFAULT_LOOP),
            inodes: s.options.inodes,
        },
        Backing::Xfs => layerspec_real::BackingFs::Xfs {
            size: size(DEFAULT_LOOP),
        },
    }
}

/// Runs one scenario on a real backend: the file's expectations first, then the real
/// final observation against the model's at the real side's kernel: `model` (from
/// [`run_model`], at [`KernelVersion::DEFAULT`]) when the real driver runs that kernel,
/// else (or when `model` is `None`) a model run made here at the real driver's kernel.
pub fn run_real(
    s: &Scenario,
    driver: DriverKind,
    backend: &str,
    model: Option<&RunResult>,
) -> Outcome {
    run_real_as(s, driver, backend, None, model)
}

/// Like [`run_real`], opening backend `open` and running it as backend `label`: inside
/// the VM (`layerspec guest`), the guest kernel's `kernel` backend runs as `vm`, so a
/// file's `vm` keys apply there and the result is labelled `vm`.
pub fn run_real_as(
    s: &Scenario,
    driver: DriverKind,
    open: &str,
    label: Option<&'static str>,
    model: Option<&RunResult>,
) -> Outcome {
    let backend = label.unwrap_or(open);
    let outcome = |status| Outcome {
        scenario: s.name(),
        driver,
        backend: backend.to_string(),
        result: RunResult {
            status,
            observation: None,
        },
        kernel: running_kernel(),
    };
    // The model run at the real side's kernel, when that is not the default.
    let mut paired: Option<RunResult> = None;
    let result = if let Some(params) = &s.options.pool {
        // A thin-pool scenario: the bare pool, block level.
        if open != "kernel" {
            return outcome(Status::Skip(format!("no thin pool on the {open} backend")));
        }
        // The backend was found available before this call: failing to make the pool
        // now is a failure, not a skip.
        let mut pool = match layerspec_real::open_thin(*params) {
            Ok(p) => p,
            Err(why) => return outcome(Status::Fail(why)),
        };
        if let Some(label) = label {
            pool = Box::new(Relabel {
                inner: pool,
                backend: label,
            });
        }
        if model.is_none() {
            paired = Some(model_result(s, driver, KernelVersion::DEFAULT));
        }
        if let Some(stop) = model_stops(paired.as_ref().or(model)) {
            return outcome(stop);
        }
        crate::runner::run_thin(s, pool.as_mut())
    } else {
        if open == "fuse" && s.largest_file() > FUSE_LARGEST_FILE {
            return outcome(Status::Skip(format!(
                "fuse-overlayfs answers no SEEK_DATA (FUSE_LSEEK): a file of up to {} bytes \
                 would be read whole through the mount",
                s.largest_file()
            )));
        }
        if open == "fuse" && loop_space_stated(s) && !s.states_for("fuse") {
            return outcome(Status::Skip(FUSE_LOOP_SPACE.into()));
        }
        if let Some(why) = (open == "docker").then(|| docker_cannot_run(s)).flatten() {
            return outcome(Status::Skip(why));
        }
        let mut real =
            match layerspec_real::open_backend_on(driver, open, s.options.overlay, backing(s)) {
                Ok(d) => d,
                // A backend this machine lacks is a skip; one it has that fails to start
                // (a backing filesystem that cannot be made) is a failure.
                Err(why)
                    if layerspec_real::cannot_run(driver, open, s.options.overlay).is_some() =>
                {
                    return outcome(Status::Skip(why))
                }
                Err(why) => return outcome(Status::Fail(format!("cannot start: {why}"))),
            };
        if let Some(label) = label {
            real = Box::new(Relabel {
                inner: real,
                backend: label,
            });
        }
        if let Err(why) = real.set_init_layers(s.options.init) {
            return outcome(Status::Skip(why));
        }
        let kernel = real.kernel();
        if let Some(why) = s
            .kernel_range(driver)
            .and_then(|r| r.skip_reason(&format!("backend {backend} runs"), kernel))
        {
            return outcome(Status::Skip(why));
        }
        if kernel != KernelVersion::DEFAULT || model.is_none() {
            // The differential run pairs the real side with the model at its kernel.
            paired = Some(model_result(s, driver, kernel));
        }
        if let Some(stop) = model_stops(paired.as_ref().or(model)) {
            return outcome(stop);
        }
        let result = run(s, real.as_mut());
        drop(real);
        result
    };
    let model = paired.as_ref().or(model);
    let (Status::Pass, Some(obs)) = (&result.status, &result.observation) else {
        return Outcome {
            scenario: s.name(),
            driver,
            backend: backend.to_string(),
            result,
            kernel: running_kernel(),
        };
    };
    // Where the file states that this backend differs from the model on some step, the
    // end states differ by design; the stated steps are what is checked then.
    let states_difference = s.states_for(backend);
    if states_difference {
        return Outcome {
            scenario: s.name(),
            driver,
            backend: backend.to_string(),
            result,
            kernel: running_kernel(),
        };
    }
    let Some(m) = model.and_then(|m| m.observation.as_ref()) else {
        // Never a pass that was not compared.
        return outcome(Status::Fail(
            "the model gave no end state to compare the real one with".into(),
        ));
    };
    {
        let diff = crate::compare::diff_observations_on(backend, m, obs);
        if !diff.is_empty() {
            let mut msg = format!(
                "the real observation differs from the model's at the end ({} differences):",
                diff.len()
            );
            for d in diff.iter().take(12) {
                msg.push_str("\n    ");
                msg.push_str(d);
            }
            return outcome(Status::Fail(msg));
        }
    }
    Outcome {
        scenario: s.name(),
        driver,
        backend: backend.to_string(),
        result,
        kernel: running_kernel(),
    }
}

/// What a real row is when the model's run of the same file, at the same kernel, did not
/// pass: the real side is not run (a file the model refuses may be hostile, and its end
/// state could not be compared), and the row is a failure, or a skip where the model
/// skipped. `None` when the model passed and the real side runs.
fn model_stops(model: Option<&RunResult>) -> Option<Status> {
    match model.map(|m| &m.status) {
        Some(Status::Pass) => None,
        Some(Status::Skip(why)) => Some(Status::Skip(format!("the model skipped it: {why}"))),
        Some(Status::Fail(why)) => Some(Status::Fail(format!(
            "the model's run failed, so the real side was not run (nothing to compare it \
             with): {why}"
        ))),
        None => Some(Status::Fail(
            "no model run to compare with, so the real side was not run".into(),
        )),
    }
}

/// A real driver (file level or a thin pool) that answers `backend()` with another name.
struct Relabel<D: ?Sized> {
    inner: Box<D>,
    backend: &'static str,
}

impl ThinDriver for Relabel<dyn ThinDriver + Send> {
    fn backend(&self) -> &'static str {
        self.backend
    }
    fn apply(&mut self, step: usize, op: &ThinOp) -> Result<ThinOutcome, DriverError> {
        self.inner.apply(step, op)
    }
    fn observe(&mut self) -> Result<PoolObservation, DriverError> {
        self.inner.observe()
    }
}

impl Driver for Relabel<dyn Driver + Send> {
    fn kind(&self) -> DriverKind {
        self.inner.kind()
    }
    fn backend(&self) -> &'static str {
        self.backend
    }
    fn add_layer(&mut self, spec: &LayerSpec) -> Result<(), DriverError> {
        self.inner.add_layer(spec)
    }
    fn apply(&mut self, op: &Op) -> Result<ModelOutcome, DriverError> {
        self.inner.apply(op)
    }
    fn observe(&mut self) -> Result<Observation, DriverError> {
        self.inner.observe()
    }
    fn kernel(&self) -> KernelVersion {
        self.inner.kernel()
    }
    fn set_init_layers(&mut self, on: bool) -> Result<(), String> {
        self.inner.set_init_layers(on)
    }
}

/// Why the `docker` backend cannot run `s`, which the others can: what Docker never makes,
/// or a space limit the model predicts for the driver root alone.
fn docker_cannot_run(s: &Scenario) -> Option<String> {
    if !s.options.init {
        return Some(layerspec_real::NO_INIT_LAYER_ON_DOCKER.into());
    }
    if s.has_imageless_container() {
        return Some("Docker makes no container without an image".into());
    }
    if loop_space_stated(s) {
        return Some(
            "the model predicts where the driver root's ext4 or xfs runs out of space; \
             Docker's data root puts its image store, layer database and containers on the \
             same filesystem"
                .into(),
        );
    }
    if s.options.backing == crate::scenario::Backing::Tmpfs && s.options.size.is_some() {
        return Some(
            "the file sizes the driver root's tmpfs, where the model predicts ENOSPC for the \
             driver's own files; Docker's data root puts its image store, layer database and \
             containers on the same tmpfs"
                .into(),
        );
    }
    None
}

/// The real backends for `driver` and, for each one this machine cannot run, why.
pub fn real_backends(driver: DriverKind) -> Vec<(String, Status)> {
    layerspec_real::backends_for(driver)
        .into_iter()
        .map(|b| {
            // `Pass` here only means "can run": callers run it (see `run_real`).
            let status = match b.unavailable {
                Some(reason) => Status::Skip(reason),
                None => Status::Pass,
            };
            (b.name.to_string(), status)
        })
        .collect()
}

/// Whether `s` states where an ext4 or xfs driver root runs out of space (a step
/// expecting ENOSPC on a loop backing).
fn loop_space_stated(s: &Scenario) -> bool {
    s.options.backing != crate::scenario::Backing::Tmpfs
        && s.expects_errno(layerspec_model::Errno::ENOSPC)
}

/// Why fuse-overlayfs does not run the files that state where an ext4 or xfs runs out
/// (LS23).
const FUSE_LOOP_SPACE: &str = "fuse-overlayfs 1.10 takes a write past the upper filesystem's \
     space into the FUSE page cache, where it succeeds; ENOSPC comes at close, and the merged \
     file keeps the length written (LS28, space/fuse_overlayfs_enospc_at_close): where its \
     ext4 or xfs runs out is not the model's";

/// The largest file a scenario may make to run on fuse-overlayfs, which does not answer
/// `SEEK_DATA`: the kernel's fuse then reports every file as all data, so observing a sparse
/// file reads its holes too (4 GiB of zeros: seconds).
const FUSE_LARGEST_FILE: u64 = 4 << 30;

/// The real backends `layerspec run` runs `driver` on: `asked` names them (empty: every
/// real backend this machine can run). A plain `run` thus boots the VM once for
/// devicemapper and thinpool and for the overlay suites on the VM's kernel (6.1 beside the
/// host's; about 45 s more for some 260 runs under TCG).
pub fn run_backends(driver: DriverKind, asked: &[String]) -> Vec<(String, Status)> {
    real_backends(driver)
        .into_iter()
        .filter(|(b, _)| asked.is_empty() || asked.contains(b))
        .collect()
}
