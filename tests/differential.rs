//! Bounded differential property tests: generated traces (`layerspec fuzz`) replayed on the
//! model and on each real backend, every step's outcome and every observation compared. A
//! divergence fails the test with the shrunk scenario file in the message.
//!
//! When a backend cannot run on this machine the test prints `skipped: <reason>` (run with
//! `--nocapture` to see it) and passes. The model-vs-model self-checks always run, so the
//! generator, replay and shrinker are exercised everywhere.
//!
//! `LAYERSPEC_DIFF_TRACES` raises the trace count of every test here (default: 36 traces of
//! 40 steps for real backends, 50 for the self-checks); `LAYERSPEC_DIFF_SEED` changes the
//! seed (default 1).

use layerspec::fuzz::{self, FuzzArgs, TraceResult};
use layerspec_model::{DriverKind, OverlayOptions};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn differential(driver: DriverKind, backend: &str, default_traces: u64, steps: usize) {
    differential_as(driver, backend, default_traces, steps, false);
}

fn differential_as(
    driver: DriverKind,
    backend: &str,
    default_traces: u64,
    steps: usize,
    users: bool,
) {
    let args = FuzzArgs {
        driver,
        seed: env_u64("LAYERSPEC_DIFF_SEED", 1),
        traces: env_u64("LAYERSPEC_DIFF_TRACES", default_traces),
        steps,
        trace: None,
        backend: backend.into(),
        out: std::env::temp_dir().join("layerspec-differential-not-written"),
        shrink_budget: 300,
        thin: Default::default(),
        overlay: Vec::new(),
        init: false,
        ext4: None,
        xfs: None,
        users,
    };
    let summary = match fuzz::run(&args, OverlayOptions::default(), false) {
        Ok(s) => s,
        Err(why) => {
            eprintln!("{driver} on {backend}: skipped: {why}");
            return;
        }
    };
    let mut failures = Vec::new();
    for r in &summary.results {
        match r {
            TraceResult::Agree(..) => {}
            TraceResult::Error(i, e) => failures.push(format!("trace {i}: error: {e}")),
            TraceResult::Stopped(i, _, _, why) => failures.push(format!("trace {i}: stopped: {why}")),
            TraceResult::Diverged(f) => failures.push(format!(
                "trace {}: {}\n--- shrunk scenario (scenarios/regressions/{}-{backend}-seed{}-trace{}.toml) ---\n{}",
                f.index,
                f.shrunk.divergence.summary(),
                driver,
                args.seed,
                f.index,
                f.scenario.clone().unwrap_or_else(|e| format!("(none: {e})"))
            )),
        }
    }
    eprintln!(
        "{driver} on {backend}: {} traces, {} steps, {} divergences",
        summary.results.len(),
        summary.steps(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "`{}` found {} problem(s):\n\n{}",
        fuzz::command(&args),
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn overlay2_kernel_differential() {
    differential(DriverKind::Overlay2, "kernel", 36, 40);
}

#[test]
#[ignore = "fuse-overlayfs differs from the kernel overlayfs semantics the model specifies \
            (hard links kept on copy-up, `.wh..wh..opq` files, directory timestamps, lookups \
            below re-made directories); `cargo test --test differential -- --ignored` lists \
            them, each shrunk to a scenario"]
fn overlay2_fuse_differential() {
    differential(DriverKind::Overlay2, "fuse", 36, 40);
}

#[test]
fn overlay_kernel_differential() {
    differential(DriverKind::Overlay, "kernel", 36, 40);
}

#[test]
fn overlay_fuse_differential() {
    differential(DriverKind::Overlay, "fuse", 36, 40);
}

/// Steps as other users (LS29): the kernel's permission checks against the model's.
#[test]
fn overlay2_kernel_differential_with_users() {
    differential_as(DriverKind::Overlay2, "kernel", 36, 40, true);
}

#[test]
fn overlay2_model_self_check() {
    differential(DriverKind::Overlay2, "model", 50, 40);
}

#[test]
fn overlay_model_self_check() {
    differential(DriverKind::Overlay, "model", 50, 40);
}

#[test]
fn devicemapper_model_self_check() {
    differential(DriverKind::Devicemapper, "model", 50, 40);
}

/// regression: an indexed (pseudo-linked) copy-up whose last name was unlinked was freed
/// while the index still pointed at it (`layerspec fuzz --driver aufs --seed 5`).
#[test]
fn aufs_model_self_check() {
    differential(DriverKind::Aufs, "model", 50, 40);
}

/// A written regression file goes through `layerspec run --model-only` and passes: the file
/// states the model's answers, the divergence only as a comment.
#[test]
fn an_emitted_scenario_passes_layerspec_run_model_only() {
    use layerspec::fuzz::emit::{self, Origin};
    use layerspec::fuzz::generate::generate;
    use layerspec::fuzz::replay::{Divergence, Phase};

    let trace = generate(DriverKind::Overlay2, OverlayOptions::default(), 4, 2, 30);
    let divergence = Divergence {
        phase: Phase::Step(29),
        model: Some("ok".into()),
        real: Some("EIO".into()),
        diff: Vec::new(),
    };
    let origin = Origin {
        backend: "kernel",
        command: "layerspec fuzz --driver overlay2 --seed 4 --traces 3 --steps 30",
        divergence: Some(&divergence),
        kernel: layerspec_model::KernelVersion::DEFAULT,
    };
    let dir = std::env::temp_dir().join(format!("layerspec-emit-cli-{}", std::process::id()));
    let path = emit::write(&dir, &trace, &origin).expect("written");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_layerspec"))
        .args(["run", "--model-only"])
        .arg(&path)
        .output()
        .expect("layerspec runs");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::remove_dir_all(&dir).ok();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("# kernel: EIO (the model: ok)"), "{text}");
    assert!(stdout.contains("pass"), "{stdout}");
}
