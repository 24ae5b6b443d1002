//! Unit tests of the generator, the replay, the shrinker and the emitted scenario files.

use super::emit::{scenario_text, Origin};
use super::generate::generate;
use super::replay::{replay, Phase, Replay};
use super::shrink::shrink;
use super::*;
use crate::runner::{self, Status};
use crate::scenario::{parse_str, Action};
use layerspec_model::{DriverError, Errno, FileOp, LayerSpec, Observation, Op, Outcome, Value};
use std::collections::BTreeSet;

const OPTS: OverlayOptions = OverlayOptions {
    redirect_dir: false,
    metacopy: false,
    index: false,
    xino: false,
};

/// A deliberately wrong driver: the model, except that a rename the model refuses with
/// EXDEV "succeeds" (and changes nothing).
struct Mutant(ModelDriver);

impl Mutant {
    fn boxed(kind: DriverKind) -> Box<dyn Driver + Send> {
        Box::new(Mutant(ModelDriver::new(kind, OPTS)))
    }
}

impl Driver for Mutant {
    fn kind(&self) -> DriverKind {
        self.0.kind()
    }
    fn backend(&self) -> &'static str {
        "mutant"
    }
    fn add_layer(&mut self, spec: &LayerSpec) -> Result<(), DriverError> {
        self.0.add_layer(spec)
    }
    fn apply(&mut self, op: &Op) -> Result<Outcome, DriverError> {
        let r = self.0.apply(op)?;
        let rename = matches!(
            op,
            Op::File {
                op: FileOp::Rename { .. },
                ..
            }
        );
        if rename && r == Err(Errno::EXDEV) {
            return Ok(Ok(Value::Unit));
        }
        Ok(r)
    }
    fn observe(&mut self) -> Result<Observation, DriverError> {
        self.0.observe()
    }
    fn kernel(&self) -> layerspec_model::KernelVersion {
        self.0.kernel()
    }
}

#[test]
fn same_seed_same_trace_byte_for_byte() {
    for i in 0..20 {
        let a = format!("{:?}", generate(DriverKind::Overlay2, OPTS, 7, i, 60));
        let b = format!("{:?}", generate(DriverKind::Overlay2, OPTS, 7, i, 60));
        assert_eq!(a, b, "trace {i}");
    }
    let a = generate(DriverKind::Overlay2, OPTS, 7, 0, 60);
    assert_eq!(a.steps.len(), 60);
    assert_ne!(a, generate(DriverKind::Overlay2, OPTS, 8, 0, 60));
    assert_ne!(a, generate(DriverKind::Overlay2, OPTS, 7, 1, 60));
    // A trace is the prefix of a longer one from the same stream only by accident; what
    // matters is that it never depends on other traces: generate out of order.
    let later = generate(DriverKind::Overlay2, OPTS, 7, 19, 60);
    let _ = generate(DriverKind::Overlay2, OPTS, 7, 3, 60);
    assert_eq!(later, generate(DriverKind::Overlay2, OPTS, 7, 19, 60));
}

#[test]
fn traces_cover_every_step_and_entry_kind() {
    let mut ops = BTreeSet::new();
    let mut entries = BTreeSet::new();
    for i in 0..150 {
        let t = generate(DriverKind::Overlay2, OPTS, 3, i, 50);
        for op in &t.steps {
            ops.insert(match op {
                Op::File { op, .. } => op.name(),
                Op::CreateContainer { .. } => "create_container",
                Op::RemoveContainer { .. } => "remove_container",
                Op::Commit { .. } => "commit",
                Op::Remount { .. } => "remount",
                Op::Changes { .. } => "changes",
            });
        }
        for l in &t.layers {
            for e in &l.entries {
                entries.insert(match &e.kind {
                    layerspec_model::EntryKind::File(_) => "file",
                    layerspec_model::EntryKind::Dir { opaque: true } => "opaque",
                    layerspec_model::EntryKind::Dir { opaque: false } => "dir",
                    layerspec_model::EntryKind::Symlink(_) => "symlink",
                    layerspec_model::EntryKind::HardLink(_) => "link",
                    layerspec_model::EntryKind::Whiteout => "whiteout",
                });
            }
        }
    }
    let all = [
        "create",
        "write",
        "append",
        "truncate",
        "read",
        "unlink",
        "mkdir",
        "rmdir",
        "rename",
        "link",
        "symlink",
        "readlink",
        "chmod",
        "stat",
        "readdir",
        "setxattr",
        "getxattr",
        "removexattr",
        "create_container",
        "remove_container",
        "commit",
        "remount",
        "changes",
    ];
    for op in all {
        assert!(ops.contains(op), "no `{op}` step in 150 traces");
    }
    for e in ["file", "opaque", "dir", "symlink", "link", "whiteout"] {
        assert!(entries.contains(e), "no `{e}` entry in 150 traces");
    }
}

#[test]
fn generated_traces_are_valid_and_model_agrees_with_itself() {
    for driver in DriverKind::FILE_LEVEL {
        let mut errnos = 0;
        let mut steps = 0;
        for i in 0..40 {
            let t = generate(driver, OPTS, 11, i, 40);
            let mut other = ModelDriver::new(driver, OPTS);
            assert_eq!(
                replay(&t, &mut other),
                Replay::Agree {
                    steps: 40,
                    no_space: 0
                },
                "{driver} trace {i}"
            );
            for o in replay::model_outcomes(&t, layerspec_model::KernelVersion::DEFAULT).unwrap() {
                steps += 1;
                errnos += usize::from(o.expect("no panic").is_err());
            }
        }
        // Mostly live paths: most steps succeed, but not all.
        assert!(
            errnos * 100 < steps * 60,
            "{driver}: {errnos} of {steps} failed"
        );
        assert!(
            errnos * 100 > steps * 5,
            "{driver}: {errnos} of {steps} failed"
        );
    }
}

#[test]
fn a_file_found_on_another_kernel_states_it_and_passes_on_the_model_there() {
    use layerspec_model::KernelVersion;
    let old = KernelVersion::new(6, 1);
    let mut with_xattrs = 0;
    for i in 0..25 {
        let t = generate(DriverKind::Overlay2, OPTS, 5, i, 40);
        let mut other = ModelDriver::new(DriverKind::Overlay2, OPTS).with_kernel(old);
        if let Replay::Diverged(_) = replay(&t, &mut other) {
            continue;
        }
        let origin = Origin {
            backend: "vm",
            command: "test",
            divergence: None,
            kernel: old,
        };
        let text = scenario_text(&t, &origin).unwrap();
        let s = parse_str("gen.toml".as_ref(), &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let range = s
            .kernel_range(DriverKind::Overlay2)
            .expect("a kernel range");
        assert!(
            range.contains(old) && !range.contains(KernelVersion::DEFAULT),
            "{range}"
        );
        let mut m = ModelDriver::new(DriverKind::Overlay2, OPTS).with_kernel(old);
        assert_eq!(
            runner::run(&s, &mut m).status,
            Status::Pass,
            "trace {i}\n{text}"
        );
        with_xattrs += usize::from(text.contains("EOPNOTSUPP"));
    }
    // 6.1's rules show in what the file expects.
    assert!(with_xattrs > 0);
}

#[test]
fn emitted_scenarios_parse_back_to_the_same_trace_and_pass_on_the_model() {
    for driver in DriverKind::FILE_LEVEL {
        let mut model_fails = 0;
        for i in 0..25 {
            let t = generate(driver, OPTS, 5, i, 40);
            // Emission is under test here, not the model: a trace on which the model itself
            // fails (a panic) is the model self-check's business (tests/differential.rs).
            let mut other = ModelDriver::new(driver, OPTS);
            if let Replay::Diverged(d) = replay(&t, &mut other) {
                assert_eq!(d.real.as_deref(), Some(replay::NOT_RUN), "{d:?}");
                model_fails += 1;
                continue;
            }
            let origin = Origin {
                backend: "model",
                command: "test",
                divergence: None,
                kernel: layerspec_model::KernelVersion::DEFAULT,
            };
            let text = scenario_text(&t, &origin).unwrap();
            let s = parse_str("gen.toml".as_ref(), &text)
                .unwrap_or_else(|e| panic!("{driver} trace {i}: {e}\n{text}"));
            assert_eq!(s.layers, t.layers, "{driver} trace {i}");
            let ops: Vec<Op> = s
                .steps
                .iter()
                .map(|st| match &st.action {
                    Action::Op(op) => op.clone(),
                    other => panic!("not an op: {other:?}"),
                })
                .collect();
            assert_eq!(ops, t.steps, "{driver} trace {i}");
            let mut m = ModelDriver::new(driver, OPTS);
            let r = runner::run(&s, &mut m);
            assert_eq!(r.status, Status::Pass, "{driver} trace {i}\n{text}");
        }
        assert!(
            model_fails < 5,
            "{driver}: the model fails on {model_fails} of 25"
        );
    }
}

/// The first of the first 200 traces of seed 1 on which the mutant diverges.
fn mutant_divergence() -> (generate::Trace, replay::Divergence) {
    for i in 0..200 {
        let t = generate(DriverKind::Overlay2, OPTS, 1, i, 50);
        if let Replay::Diverged(d) = replay(&t, &mut *Mutant::boxed(DriverKind::Overlay2)) {
            return (t, d);
        }
    }
    panic!("the mutant survived 200 traces");
}

#[test]
fn shrinking_a_mutant_divergence_leaves_a_handful_of_steps() {
    let (t, d) = mutant_divergence();
    assert!(matches!(d.phase, Phase::Step(_)), "{d:?}");
    let open = || Ok(Mutant::boxed(DriverKind::Overlay2));
    let s = shrink(&t, d, &open, 3000);
    assert!(!s.budget_exhausted, "{} replays", s.replays);
    assert!(s.trace.steps.len() <= 3, "{:#?}", s.trace.steps);
    assert!(s.trace.entry_count() <= 3, "{:#?}", s.trace.layers);
    let last = s.trace.steps.last().expect("a step");
    assert!(
        matches!(
            last,
            Op::File {
                op: FileOp::Rename { .. },
                ..
            }
        ),
        "{last:?}"
    );
    assert_eq!(s.divergence.model.as_deref(), Some("EXDEV"));
    assert_eq!(s.divergence.real.as_deref(), Some("ok"));
    // Shrinking is deterministic too.
    let (t2, d2) = mutant_divergence();
    let s2 = shrink(&t2, d2, &open, 3000);
    assert_eq!(s.trace, s2.trace);
}

#[test]
fn the_emitted_regression_parses_passes_on_the_model_and_fails_on_the_mutant() {
    let (t, d) = mutant_divergence();
    let open = || Ok(Mutant::boxed(DriverKind::Overlay2));
    let s = shrink(&t, d, &open, 3000);
    let dir = std::env::temp_dir().join(format!("layerspec-fuzz-test-{}", std::process::id()));
    let origin = Origin {
        backend: "mutant",
        command: "layerspec fuzz --driver overlay2 --seed 1 --traces 200 --steps 50",
        divergence: Some(&s.divergence),
        kernel: layerspec_model::KernelVersion::DEFAULT,
    };
    let path = emit::write(&dir, &s.trace, &origin).unwrap();
    assert_eq!(
        path.file_name().unwrap().to_string_lossy(),
        format!("overlay2-mutant-seed1-trace{}.toml", t.index)
    );
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(text.contains("# mutant: ok (the model: EXDEV)"), "{text}");
    assert!(text.contains("expect = \"EXDEV\""), "{text}");
    let scenario = parse_str(&path, &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(scenario.drivers, Some(vec![DriverKind::Overlay2]));
    assert_eq!(scenario.claims, vec![origin.command.to_string()]);
    // What `layerspec run --model-only` does with it.
    let outcomes = crate::suite::run_model(&scenario, None);
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].result.status, Status::Pass, "{text}");
    let mut mutant = Mutant::boxed(DriverKind::Overlay2);
    let r = runner::run(&scenario, mutant.as_mut());
    assert!(
        matches!(&r.status, Status::Fail(m) if m.contains("expected EXDEV, got ok")),
        "{:?}\n{text}",
        r.status
    );
}

/// A run of `traces` x `steps` of seed `seed` against a second model, writing nothing.
fn model_args(driver: DriverKind, seed: u64, traces: u64, steps: usize) -> FuzzArgs {
    FuzzArgs {
        driver,
        seed,
        traces,
        steps,
        trace: None,
        backend: "model".into(),
        out: std::env::temp_dir().join("layerspec-fuzz-never-written"),
        shrink_budget: 10,
        thin: Default::default(),
        overlay: Vec::new(),
        init: false,
        ext4: None,
        xfs: None,
        users: false,
    }
}

#[test]
fn a_model_run_finds_nothing_and_says_the_same_twice() {
    let args = model_args(DriverKind::Overlay, 9, 30, 30);
    let a = run(&args, OPTS, false).unwrap();
    let b = run(&args, OPTS, false).unwrap();
    assert_eq!(a.lines(&args), b.lines(&args));
    assert_eq!(a.divergences().count(), 0);
    assert_eq!(a.errors().count(), 0);
    assert_eq!(a.steps(), 900);
    assert!(a.lines(&args).contains(&"divergences: 0".to_string()));
}

#[test]
fn an_unknown_backend_cannot_run() {
    let args = FuzzArgs {
        driver: DriverKind::Overlay2,
        seed: 1,
        traces: 1,
        steps: 5,
        trace: None,
        backend: "nonesuch".into(),
        out: std::env::temp_dir(),
        shrink_budget: 10,
        thin: Default::default(),
        overlay: Vec::new(),
        init: false,
        ext4: None,
        xfs: None,
        users: false,
    };
    let e = run(&args, OPTS, false).unwrap_err();
    assert!(e.contains("nonesuch"), "{e}");
}

/// The trace of `fuzz --driver overlay --backend docker --seed 1`, trace 180, shrunk: `/etc`
/// made a file, then a remount (Docker's start fails), then file steps.
fn failed_start_trace(driver: DriverKind) -> generate::Trace {
    let file = |op| Op::File {
        container: None,
        op,
    };
    generate::Trace {
        seed: 1,
        index: 180,
        driver,
        options: OPTS,
        init: true,
        loop_root: None,
        layers: vec![LayerSpec {
            id: "l0".into(),
            parent: None,
            entries: vec![layerspec_model::Entry {
                path: "/a".into(),
                kind: layerspec_model::EntryKind::File(layerspec_model::Content::Bytes(
                    b"9t\n".to_vec(),
                )),
                mode: None,
                xattrs: Default::default(),
                owner: None,
            }],
        }],
        container: "c0".into(),
        steps: vec![
            file(FileOp::Rename {
                from: "/etc".into(),
                to: "/x".into(),
            }),
            file(FileOp::Link {
                from: "/a".into(),
                to: "/etc".into(),
            }),
            Op::Remount { container: None },
            file(FileOp::Stat { path: "/a".into() }),
            Op::Changes { container: None },
            Op::Remount { container: None },
        ],
    }
}

#[test]
fn a_failed_start_is_an_errno_and_later_file_steps_are_refused_on_both_sides() {
    let t = failed_start_trace(DriverKind::Overlay);
    let mut model = ModelDriver::new(DriverKind::Overlay, OPTS).with_init_layers(true);
    let mut other = ModelDriver::new(DriverKind::Overlay, OPTS).with_init_layers(true);
    match replay::replay(&t, &mut other) {
        Replay::Agree { steps, .. } => assert_eq!(steps, 6),
        r => panic!("{r:?}"),
    }
    model.add_layer(&t.layers[0]).unwrap();
    let create = Op::CreateContainer {
        id: "c0".into(),
        image: Some("l0".into()),
    };
    assert!(matches!(model.apply(&create), Ok(Ok(Value::Unit))));
    let outcomes: Vec<_> = t.steps.iter().map(|op| model.apply(op)).collect();
    assert!(
        matches!(outcomes[2], Ok(Err(Errno::ENOTDIR))),
        "{:?}",
        outcomes[2]
    );
    assert!(
        matches!(
            outcomes[3],
            Err(DriverError::Step(layerspec_model::StepError::NotRunning(_)))
        ),
        "{:?}",
        outcomes[3]
    );
    assert!(matches!(outcomes[4], Ok(Ok(Value::Changes(_)))));
    assert!(
        matches!(outcomes[5], Ok(Err(Errno::ENOTDIR))),
        "{:?}",
        outcomes[5]
    );
}

/// Runs `args` twice on the model: the same lines both times, no divergence, no error;
/// returns the ENOSPC outcomes both sides agreed on.
fn agreed_enospc_twice(args: &FuzzArgs) -> usize {
    let a = run(args, OPTS, false).unwrap();
    let b = run(args, OPTS, false).unwrap();
    let lines = a.lines(args);
    assert_eq!(lines, b.lines(args));
    assert_eq!(a.divergences().count(), 0, "{lines:?}");
    assert_eq!(a.errors().count(), 0, "{lines:?}");
    lines
        .iter()
        .find_map(|l| l.strip_prefix("ENOSPC outcomes agreed on: "))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0)
}

/// `--ext4`: model against model on a small ext4, whose inodes and blocks run out in many
/// traces; both sides agree on every ENOSPC, and the run says the same twice.
#[test]
fn an_ext4_model_run_agrees_on_every_enospc_and_says_the_same_twice() {
    let args = FuzzArgs {
        ext4: Some(crate::fuzz::LoopRoot {
            fs: layerspec_model::Backing::Ext4,
            bytes: 4 << 20,
            inodes: Some(96),
        }),
        ..model_args(DriverKind::Overlay2, 3, 100, 50)
    };
    assert!(agreed_enospc_twice(&args) >= 10);
}

/// `--xfs`: model against model on xfs's smallest size, filled by big writes; both sides
/// agree on every ENOSPC, the run says the same twice, and where the model does not follow
/// xfs (copy-on-write near full, reservations) the trace stops, saying so.
#[test]
fn an_xfs_model_run_agrees_on_every_enospc_and_says_the_same_twice() {
    let args = FuzzArgs {
        xfs: Some(crate::fuzz::LoopRoot {
            fs: layerspec_model::Backing::Xfs,
            bytes: 300 << 20,
            inodes: None,
        }),
        ..model_args(DriverKind::Overlay2, 1, 30, 40)
    };
    assert!(agreed_enospc_twice(&args) >= 3);
}

/// `--users` traces reach the permission checks: many steps run as another user, and a fair
/// share of those are refused (EACCES, EPERM) by the model; without `--users` none is.
#[test]
fn users_traces_meet_the_permission_checks() {
    use super::generate::{generate_as, Variety};
    for driver in [DriverKind::Overlay2, DriverKind::Overlay] {
        let (mut as_user, mut refused, mut chowns) = (0, 0, 0);
        for i in 0..40 {
            let users = Variety {
                big_writes: 0,
                users: true,
            };
            let t = generate_as(driver, OPTS, false, users, 12, i, 40);
            let outcomes =
                replay::model_outcomes(&t, layerspec_model::KernelVersion::DEFAULT).unwrap();
            for (op, o) in t.steps.iter().zip(outcomes) {
                let Op::File { op, .. } = op else { continue };
                chowns += usize::from(matches!(op.bare(), FileOp::Chown { .. }));
                if let FileOp::AsUser { .. } = op {
                    as_user += 1;
                    let o = o.expect("no panic");
                    refused += usize::from(matches!(o, Err(Errno::EACCES | Errno::EPERM)));
                }
            }
            let plain = generate(driver, OPTS, 12, i, 40);
            assert!(plain.steps.iter().all(|op| !matches!(
                op,
                Op::File {
                    op: FileOp::AsUser { .. } | FileOp::Chown { .. },
                    ..
                }
            )));
        }
        eprintln!("{driver}: {as_user} steps as another user, {refused} refused, {chowns} chowns");
        assert!(as_user > 300, "{driver}: {as_user} steps as another user");
        assert!(chowns > 50, "{driver}: {chowns} chowns");
        assert!(
            refused * 100 > as_user * 10,
            "{driver}: {refused} of {as_user} refused"
        );
    }
}
