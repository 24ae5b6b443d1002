//! `layerspec guest` (hidden): what runs inside the VM. It prints the [`protocol`] stream on
//! stdout, which `/init` sends to the results port.
//!
//! - `guest run [--driver a,b] [--backend kernel,docker] PATH...`: each scenario x driver
//!   x backend: the guest kernel's real drivers (`kernel` here, labelled `vm`; see
//!   [`crate::suite::run_real_as`]) and dockerd in the guest (`docker`), compared with the
//!   model's run made here too. One line per run:
//!   `{"scenario","file","driver","backend","status","detail","ms"}`.
//! - `guest fuzz <fuzz args> --backend vm`: `layerspec fuzz` on the guest kernel; one line
//!   `{"line": ...}` per summary line, and `{"file": <host path>, "content": ...}` per
//!   shrunk scenario for the host to write. For `--driver thinpool`, the lines of
//!   [`crate::fuzz::thin::guest_lines`] against dm-thin pools.
//!
//! [`protocol`]: super::protocol

use super::protocol::Writer;
use crate::fuzz::{self, FuzzArgs, TraceResult};
use crate::runner::Status;
use crate::suite;
use layerspec_model::DriverKind;
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

/// The guest's commands.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum GuestCmd {
    /// Run scenario files on the guest kernel.
    Run {
        /// Only these drivers (comma-separated).
        #[arg(long, value_delimiter = ',')]
        driver: Vec<String>,
        /// The guest's backends: `kernel` (reported as `vm`), `docker`.
        #[arg(long, value_delimiter = ',', default_value = "kernel")]
        backend: Vec<String>,
        /// Scenario files or directories.
        paths: Vec<PathBuf>,
    },
    /// Fuzz on the guest kernel.
    Fuzz(FuzzArgs),
}

/// Runs a guest command; returns the exit code (also sent in the end marker).
pub fn main(cmd: &GuestCmd) -> u8 {
    super::IN_GUEST.store(true, std::sync::atomic::Ordering::Relaxed);
    let stdout = std::io::stdout().lock();
    let mut w = match Writer::begin(stdout) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("layerspec guest: {e}");
            return 2;
        }
    };
    let code = match cmd {
        GuestCmd::Run {
            driver,
            backend,
            paths,
        } => run(&mut w, driver, backend, paths),
        GuestCmd::Fuzz(args) => fuzz(&mut w, args),
    };
    let code = code.unwrap_or_else(|e| {
        eprintln!("layerspec guest: {e}");
        2
    });
    if let Err(e) = w.end(code) {
        eprintln!("layerspec guest: {e}");
    }
    code
}

type W<'a> = Writer<std::io::StdoutLock<'a>>;

fn run(
    w: &mut W,
    driver: &[String],
    backends: &[String],
    paths: &[PathBuf],
) -> std::io::Result<u8> {
    let only: Option<Vec<DriverKind>> = if driver.is_empty() {
        None
    } else {
        match driver.iter().map(|d| d.parse()).collect() {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("layerspec guest: {e}");
                return Ok(2);
            }
        }
    };
    let files = suite::discover(paths).map_err(std::io::Error::other)?;
    let (scenarios, errs) = suite::load(&files);
    for e in &errs {
        // The host has parsed the same files: this does not happen unless the copy differs.
        eprintln!("layerspec guest: {e}");
    }
    if scenarios
        .iter()
        .any(|s| s.options.backing == crate::scenario::Backing::Xfs)
    {
        load_xfs();
    }
    let mut failed = false;
    let mut reported: Vec<String> = Vec::new();
    for s in &scenarios {
        for m in suite::run_model(s, only.as_deref()) {
            for open in backends {
                let label = match open.as_str() {
                    "kernel" => "vm",
                    "docker" => "docker",
                    other => {
                        eprintln!("layerspec guest: no backend `{other}` in the guest");
                        return Ok(2);
                    }
                };
                if label == "docker" && m.driver != DriverKind::Devicemapper {
                    // The host's own dockerd judges the overlay drivers.
                    continue;
                }
                let start = Instant::now();
                // A panic fails this run only: the others still run and report.
                let o = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    suite::run_real_as(s, m.driver, open, Some(label), Some(&m.result))
                }))
                .unwrap_or_else(|p| {
                    let msg = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    suite::Outcome {
                        scenario: s.name(),
                        driver: m.driver,
                        backend: label.into(),
                        result: crate::runner::RunResult {
                            status: Status::Fail(format!("layerspec panicked in the guest: {msg}")),
                            observation: None,
                        },
                        kernel: suite::running_kernel(),
                    }
                });
                // Nothing a run makes may outlive it: a dm or loop device it left fails it
                // (each one is blamed on the first run after which it was seen).
                let mut o = o;
                let left: Vec<String> = layerspec_real::leftovers()
                    .into_iter()
                    .filter(|l| !reported.contains(l))
                    .collect();
                if !left.is_empty() {
                    let was = match &o.result.status {
                        Status::Fail(d) => format!("; and: {d}"),
                        _ => String::new(),
                    };
                    o.result.status = Status::Fail(format!(
                        "left behind after the run: {}{was}",
                        left.join(", ")
                    ));
                    reported.extend(left);
                }
                let (status, detail) = match &o.result.status {
                    Status::Pass => ("pass", ""),
                    Status::Fail(d) => {
                        failed = true;
                        ("fail", d.as_str())
                    }
                    Status::Skip(d) => ("skip", d.as_str()),
                };
                w.line(&json!({
                    "scenario": o.scenario,
                    "file": s.file,
                    "driver": o.driver.name(),
                    "backend": o.backend,
                    "status": status,
                    "detail": detail,
                    "ms": start.elapsed().as_millis() as u64,
                }))?;
            }
        }
    }
    layerspec_real::remove_devmapper_base();
    Ok(if !errs.is_empty() {
        2
    } else {
        u8::from(failed)
    })
}

/// Where `/init` finds the modules xfs needs beyond those loaded at boot.
pub const XFS_MODULES: &str = "/etc/layerspec-modules-xfs";

/// Loads xfs (left out of the boot: it takes about a second under TCG). A failure shows in
/// the console, and as the mount error of the scenarios on xfs.
fn load_xfs() {
    let list = std::fs::read_to_string(XFS_MODULES).unwrap_or_default();
    for ko in list.lines().filter(|l| !l.is_empty()) {
        match std::process::Command::new("insmod").arg(ko).status() {
            Ok(s) if s.success() => {}
            other => eprintln!("layerspec guest: insmod {ko}: {other:?}"),
        }
    }
}

fn fuzz(w: &mut W, args: &FuzzArgs) -> std::io::Result<u8> {
    if args.driver == DriverKind::Thinpool {
        // Block-level traces against dm-thin pools on this kernel (fuzz::thin's protocol:
        // the host reads the lines back with `finish_from_guest`).
        let mut code = 2;
        for l in fuzz::thin::guest_lines(args, &layerspec_real::open_thin) {
            if l["thin_fuzz"] == "summary" {
                code = l["exit"].as_u64().map_or(2, |e| e.min(255) as u8);
            }
            w.line(&l)?;
        }
        return Ok(code);
    }
    let start = Instant::now();
    if args.xfs.is_some() {
        load_xfs();
    }
    let mut summary = match fuzz::run(args, args.overlay_options(), false) {
        Ok(s) => s,
        Err(why) => {
            w.line(&json!({
                "line": format!("fuzz: {} on {}: cannot run: {why}", args.driver, args.backend)
            }))?;
            return Ok(2);
        }
    };
    // The files are written on the host, where `args.out` is.
    let mut files = Vec::new();
    for r in summary.results.iter_mut() {
        if let TraceResult::Diverged(f) = r {
            if let Ok(text) = &f.scenario {
                let path = fuzz::emit::file_name(&args.out, &f.shrunk.trace, &args.backend);
                files.push((path.clone(), text.clone()));
                f.file = Some(path);
            }
        }
    }
    for l in summary.lines(args) {
        w.line(&json!({ "line": l }))?;
    }
    for (path, content) in files {
        w.line(&json!({ "file": path, "content": content }))?;
    }
    w.line(&json!({ "guest_seconds": start.elapsed().as_secs_f64() }))?;
    Ok(if summary.divergences().next().is_some() {
        1
    } else if summary.errors().next().is_some() {
        2
    } else {
        0
    })
}
