//! The host's side of `layerspec run --backend vm` and `layerspec fuzz --backend vm`: one
//! boot for the whole command, results merged into the report, timings on stderr.

use super::{guest_path, run_guest, timeout_or, Failure, GuestOutput, VmError};
use crate::fuzz::FuzzArgs;
use crate::runner::{RunResult, Status};
use crate::scenario::Scenario;
use crate::suite::Outcome;
use layerspec_model::DriverKind;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The default time a `run` boot may take: two minutes to boot and for the slowest run
/// (a thin pool of 1 GiB blocks zeroes 2 GiB: a minute under TCG), 30 s per scenario x
/// driver on the guest kernel (most take well under 1 s; on ext4 or xfs a few seconds),
/// and 120 s per run on dockerd (about 30 s under TCG: the daemon's start with its pool
/// and base device, `docker load`, a container's start).
pub fn run_timeout(kernel_jobs: usize, docker_jobs: usize) -> Duration {
    timeout_or(Duration::from_secs(
        120 + 30 * kernel_jobs as u64 + 120 * docker_jobs as u64,
    ))
}

/// The guest backend that runs the host's `backend` in the VM: `vm` is the guest kernel's
/// `kernel` backend; `docker` is dockerd in the guest.
fn guest_backend(backend: &str) -> &str {
    if backend == "vm" {
        "kernel"
    } else {
        backend
    }
}

/// Runs each `(scenario, driver, backend)` in the VM, all in one boot: backend `vm` (the
/// guest kernel's real drivers) and `docker` (dockerd in the guest, for devicemapper).
/// Returns one outcome per job, in the jobs' order: the guest's result, or a failure
/// saying why there is none (the VM error is printed in full once, on stderr), or a skip
/// when the VM tier cannot run here. Prints the boot and per-run times on stderr.
pub fn run_scenarios(jobs: &[(&Scenario, DriverKind, String)]) -> Vec<Outcome> {
    if jobs.is_empty() {
        return Vec::new();
    }
    let mut files: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut drivers: Vec<DriverKind> = Vec::new();
    let mut backends: Vec<&str> = Vec::new();
    for (s, d, b) in jobs {
        if !files.iter().any(|(h, _)| h == &s.file) {
            files.push((s.file.clone(), guest_path(&s.file)));
        }
        if !drivers.contains(d) {
            drivers.push(*d);
        }
        if !backends.contains(&guest_backend(b)) {
            backends.push(guest_backend(b));
        }
    }
    let docker = backends.contains(&"docker");
    let docker_jobs = jobs.iter().filter(|(_, _, b)| b == "docker").count();
    let mut args = vec![
        "run".to_string(),
        "--driver".into(),
        drivers
            .iter()
            .map(|d| d.name())
            .collect::<Vec<_>>()
            .join(","),
        "--backend".into(),
        backends.join(","),
    ];
    args.extend(files.iter().map(|(_, g)| g.display().to_string()));
    eprintln!(
        "vm: booting for {} scenario(s) x driver x backend ({} file(s))",
        jobs.len(),
        files.len()
    );
    let got = run_guest(
        &args,
        &files,
        run_timeout(jobs.len() - docker_jobs, docker_jobs),
        docker,
    );
    let (lines, error): (&[Value], Option<&VmError>) = match &got {
        Ok(out) => (&out.lines, None),
        Err(e) => (&e.partial, Some(e)),
    };
    // guest file path + driver + backend -> the line.
    let by_key: BTreeMap<(String, String, String), &Value> = lines
        .iter()
        .filter_map(|l| {
            Some((
                (
                    l["file"].as_str()?.to_string(),
                    l["driver"].as_str()?.to_string(),
                    l["backend"].as_str()?.to_string(),
                ),
                l,
            ))
        })
        .collect();
    let guest_of: BTreeMap<&PathBuf, String> = files
        .iter()
        .map(|(h, g)| (h, g.display().to_string()))
        .collect();
    let mut timed: Vec<(String, String, Duration)> = Vec::new();
    let mut out = Vec::new();
    for (s, d, b) in jobs {
        let key = (guest_of[&s.file].clone(), d.name().to_string(), b.clone());
        let status = match (by_key.get(&key), error) {
            (Some(l), _) => {
                let detail = l["detail"].as_str().unwrap_or_default().to_string();
                // Skips cost nothing and are left out of the figures.
                if let (Some(ms), false) = (l["ms"].as_u64(), l["status"] == "skip") {
                    timed.push((
                        format!("{} [{d}, {b}]", s.name()),
                        b.clone(),
                        Duration::from_millis(ms),
                    ));
                }
                match l["status"].as_str() {
                    Some("pass") => Status::Pass,
                    Some("skip") => Status::Skip(detail),
                    Some("fail") => Status::Fail(detail),
                    other => Status::Fail(format!("the VM sent status {other:?}: {l}")),
                }
            }
            (None, Some(e)) if e.failure == Failure::Unavailable => Status::Skip(e.message.clone()),
            (None, Some(e)) => Status::Fail(format!(
                "not run: the VM run failed ({}; the error is on stderr)",
                short(&e.failure)
            )),
            (None, None) => Status::Fail("the VM sent no result for it".into()),
        };
        out.push(Outcome {
            scenario: s.name(),
            driver: *d,
            backend: b.clone(),
            result: RunResult {
                status,
                observation: None,
            },
            kernel: got
                .as_ref()
                .ok()
                .map(|o| o.kernel.trim().to_string())
                .filter(|k| !k.is_empty() && k != "?"),
        });
    }
    match &got {
        Ok(o) => eprintln!("{}", timing(o, &timed)),
        Err(e) if e.failure == Failure::Unavailable => {}
        Err(e) => eprintln!("vm: {e}"),
    }
    out
}

fn short(f: &Failure) -> &'static str {
    match f {
        Failure::Unavailable => "the VM tier cannot run here",
        Failure::Setup => "setting it up failed",
        Failure::NotStarted => "qemu did not start",
        Failure::Panic => "the guest kernel panicked",
        Failure::NoResults => "the guest sent nothing",
        Failure::Cut => "the guest stopped before the end",
        Failure::TimedOut => "timed out",
    }
}

/// `vm: kernel K: boot 4.4 s; N run(s) in T s (vm: n in t s, mean m s; docker: ...);
/// slowest: ...; total T s`: the runs that were not skipped, per backend.
pub fn timing(o: &GuestOutput, runs: &[(String, String, Duration)]) -> String {
    let sum: Duration = runs.iter().map(|(_, _, d)| *d).sum();
    let mut backends: Vec<&str> = runs.iter().map(|(_, b, _)| b.as_str()).collect();
    backends.sort();
    backends.dedup();
    let per: Vec<String> = backends
        .iter()
        .map(|b| {
            let mine: Vec<Duration> = runs
                .iter()
                .filter(|(_, x, _)| x == b)
                .map(|(_, _, d)| *d)
                .collect();
            let t: Duration = mine.iter().sum();
            format!(
                "{b}: {} in {:.1} s, mean {:.2} s",
                mine.len(),
                t.as_secs_f64(),
                t.as_secs_f64() / mine.len() as f64
            )
        })
        .collect();
    let mut slow: Vec<&(String, String, Duration)> = runs.iter().collect();
    slow.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    let slowest: Vec<String> = slow
        .iter()
        .take(5)
        .map(|(n, _, d)| format!("{n} {:.2} s", d.as_secs_f64()))
        .collect();
    format!(
        "vm: kernel {}: boot {:.1} s; {} run(s) in {:.1} s ({}); slowest: {}; total {:.1} s",
        o.kernel,
        o.boot.as_secs_f64(),
        runs.len(),
        sum.as_secs_f64(),
        if per.is_empty() {
            "-".into()
        } else {
            per.join("; ")
        },
        if slowest.is_empty() {
            "-".into()
        } else {
            slowest.join(", ")
        },
        o.total.as_secs_f64()
    )
}

/// The default time a `fuzz` boot may take: five minutes, and half a second per step
/// (replay, observation after every step, shrinking), on the guest's CPUs; on the guest's
/// dockerd, much more per trace.
pub fn fuzz_timeout(args: &FuzzArgs) -> Duration {
    if args.backend == "docker" {
        // dockerd in the guest: a daemon per trace (and per shrinking replay, for one
        // divergence's worth), some 10-30 s under TCG, and a second a step.
        let traces = args.traces + args.shrink_budget as u64;
        return timeout_or(Duration::from_secs(300 + traces * (30 + args.steps as u64)));
    }
    timeout_or(Duration::from_secs(
        300 + (args.traces * args.steps as u64) / 2,
    ))
}

/// `layerspec fuzz --backend vm` (and `--backend docker` for devicemapper, dockerd in the
/// guest): the same fuzz run inside the VM on its kernel; the summary is printed and the
/// shrunk scenario files are written here. Returns the exit
/// code (the guest's: 0, 1 on divergences, 2 when it could not run).
pub fn fuzz(args: &FuzzArgs) -> u8 {
    if args.driver == DriverKind::Thinpool {
        return fuzz_thin(args);
    }
    let guest_args: Vec<String> = vec![
        "fuzz".into(),
        "--driver".into(),
        args.driver.name().into(),
        "--seed".into(),
        args.seed.to_string(),
        "--traces".into(),
        args.traces.to_string(),
        "--steps".into(),
        args.steps.to_string(),
        "--backend".into(),
        args.backend.clone(),
        "--out".into(),
        args.out.display().to_string(),
        "--shrink-budget".into(),
        args.shrink_budget.to_string(),
    ];
    let mut guest_args = guest_args;
    if let Some(i) = args.trace {
        guest_args.extend(["--trace".into(), i.to_string()]);
    }
    if let Some(o) = args.overlay_arg() {
        guest_args.extend(["--overlay".into(), o]);
    }
    if args.init {
        guest_args.push("--init".into());
    }
    if let Some(r) = args.loop_root() {
        let option = r.option();
        guest_args.extend(option.split(' ').map(String::from));
    }
    if args.users {
        guest_args.push("--users".into());
    }
    let docker = args.backend == "docker";
    let out = match run_guest(&guest_args, &[], fuzz_timeout(args), docker) {
        Ok(o) => o,
        Err(e) => {
            println!("fuzz: {} on {}: cannot run: {e}", args.driver, args.backend);
            return 2;
        }
    };
    let mut code = out.exit;
    let mut guest_seconds = None;
    for l in &out.lines {
        if let Some(text) = l["line"].as_str() {
            println!("{text}");
        } else if let (Some(path), Some(content)) = (l["file"].as_str(), l["content"].as_str()) {
            let path = PathBuf::from(path);
            let written = path
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&path, content));
            if let Err(e) = written {
                println!("error: writing {}: {e}", path.display());
                code = code.max(2);
            }
        } else if let Some(s) = l["guest_seconds"].as_f64() {
            guest_seconds = Some(s);
        }
    }
    println!("elapsed: {:.2}s", out.total.as_secs_f64());
    eprintln!(
        "vm: kernel {}: boot {:.1} s; fuzz in the guest {:.1} s; total {:.1} s",
        out.kernel,
        out.boot.as_secs_f64(),
        guest_seconds.unwrap_or_default(),
        out.total.as_secs_f64()
    );
    code
}

/// `layerspec fuzz --driver thinpool --backend vm`: [`crate::fuzz::thin`]'s traces against
/// dm-thin pools in the guest, one at a time; the host prints the report and writes the
/// files ([`crate::fuzz::thin::finish_from_guest`]).
fn fuzz_thin(args: &FuzzArgs) -> u8 {
    let cfg = crate::fuzz::thin::ThinFuzzConfig::from_args(args);
    // `guest_args` starts with `guest`: `run_guest` takes what follows it.
    let guest_args: Vec<String> = cfg.guest_args().into_iter().skip(1).collect();
    let out = match run_guest(&guest_args, &[], fuzz_timeout(args), false) {
        Ok(o) => o,
        Err(e) => {
            println!("fuzz: thinpool on {}: cannot run: {e}", args.backend);
            return 2;
        }
    };
    let code = crate::fuzz::thin::finish_from_guest(&out.lines, &args.out);
    eprintln!(
        "vm: kernel {}: boot {:.1} s; total {:.1} s",
        out.kernel,
        out.boot.as_secs_f64(),
        out.total.as_secs_f64()
    );
    code
}
