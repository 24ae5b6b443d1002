//! Tests of the thin-pool generator, replay, shrinker and emitted scenario files, with a
//! deliberately broken model standing in for a real pool.

use super::generate::{generate_thin, MAX_ID};
use super::replay::{replay_thin, ReplayOptions, ThinReplay};
use super::*;
use crate::scenario::{parse_str, Action, ThinStep};
use layerspec_model::{
    BlockData, DriverError, PoolMode, PoolObservation, ThinOp, ThinOutcome, ThinValue,
};
use std::collections::BTreeMap;

/// How the broken model is broken.
#[derive(Clone, Copy, Debug)]
enum Flaw {
    /// A read of a block holding a partial write reports zeros for it.
    MisreadsPartialBlocks,
    /// Out of data space, the pool reports one data block more in use than it has.
    MiscountsWhenFull,
}

/// The model with one flaw.
struct Broken {
    pool: ThinPool,
    flaw: Flaw,
}

impl ThinDriver for Broken {
    fn backend(&self) -> &'static str {
        "broken"
    }

    fn apply(&mut self, step: usize, op: &ThinOp) -> Result<ThinOutcome, DriverError> {
        let out = self.pool.apply(step, op);
        Ok(match (self.flaw, out) {
            (Flaw::MisreadsPartialBlocks, Ok(ThinValue::Blocks(b))) => Ok(ThinValue::Blocks(
                b.into_iter()
                    .map(|d| match d {
                        BlockData::Pieces(_) => BlockData::Zero,
                        d => d,
                    })
                    .collect(),
            )),
            (_, out) => out,
        })
    }

    fn observe(&mut self) -> Result<PoolObservation, DriverError> {
        let mut o = self.pool.observe();
        if matches!(self.flaw, Flaw::MiscountsWhenFull) && o.mode == PoolMode::OutOfDataSpace {
            o.used_data_blocks += 1;
        }
        Ok(o)
    }
}

fn open_broken(
    flaw: Flaw,
) -> impl Fn(PoolParams) -> Result<Box<dyn ThinDriver + Send>, String> + Sync {
    move |p| {
        let pool = ThinPool::new(p).map_err(|e| e.to_string())?;
        Ok(Box::new(Broken { pool, flaw }) as Box<dyn ThinDriver + Send>)
    }
}

#[test]
fn same_seed_same_trace() {
    for i in 0..20 {
        let a = generate_thin(7, i, 60);
        assert_eq!(a, generate_thin(7, i, 60));
        assert_eq!(a.steps.len(), 60);
        assert_eq!(generate_thin(7, i, 20).steps, a.steps[..20].to_vec());
    }
    assert_ne!(generate_thin(7, 0, 60), generate_thin(7, 1, 60));
    assert_ne!(generate_thin(7, 0, 60), generate_thin(8, 0, 60));
}

/// What a model run of many generated traces goes through: the biases reach what they aim
/// at.
#[test]
fn the_generator_reaches_the_corners() {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut note = |k: &str| *seen.entry(k.to_string()).or_default() += 1;
    for i in 0..200 {
        let t = generate_thin(1, i, 50);
        let p = t.params;
        note(&format!("block_sectors {}", p.block_size.sectors()));
        assert!((16..=64).contains(&p.data_blocks));
        let mut pool = ThinPool::new(p).unwrap();
        let mut full = false;
        let mut deleted = std::collections::BTreeSet::new();
        let mut origins: BTreeMap<u64, u64> = BTreeMap::new();
        for (s, op) in t.steps.iter().enumerate() {
            let shared_before = pool.observe().devices.values().any(|d| d.shared_blocks > 0);
            let out = pool.apply(s, op);
            note(&format!("op {}", op.name()));
            if out.is_ok() {
                match *op {
                    ThinOp::CreateThin { dev, .. } | ThinOp::CreateSnap { dev, .. }
                        if deleted.contains(&dev) =>
                    {
                        note("reused a deleted id")
                    }
                    ThinOp::CreateSnap { dev, origin } => {
                        if origins.contains_key(&origin) {
                            note("snapshot of a snapshot");
                        }
                        origins.insert(dev, origin);
                    }
                    ThinOp::Delete { dev } => {
                        if origins.values().any(|o| *o == dev) {
                            note("deleted an origin before its snapshot");
                        }
                        origins.remove(&dev);
                        origins.retain(|_, o| *o != dev);
                        deleted.insert(dev);
                    }
                    _ => {}
                }
            }
            match (&out, op) {
                (Err(e), _) => note(&format!("{} {}", op.name(), e.name())),
                (Ok(ThinValue::Blocks(b)), ThinOp::ReadBlocks { count, .. }) => {
                    if (b.len() as u64) < *count {
                        note("read past the end");
                    }
                    if b.iter().any(|d| matches!(d, BlockData::Pieces(_))) {
                        note("read a partly written block");
                    }
                }
                (Ok(_), ThinOp::CreateThin { dev, .. } | ThinOp::CreateSnap { dev, .. })
                    if *dev >= MAX_ID - 7 =>
                {
                    note("device id near 2^24")
                }
                (Ok(_), ThinOp::WriteBytes { offset, len, .. })
                    if offset % p.block_size.bytes() + len > p.block_size.bytes() =>
                {
                    note("partial write across blocks")
                }
                (Ok(_), ThinOp::WriteBlocks { .. } | ThinOp::WriteBytes { .. })
                    if shared_before =>
                {
                    note("write while blocks are shared")
                }
                _ => {}
            }
            let o = pool.observe();
            if o.mode == PoolMode::OutOfDataSpace {
                if !full {
                    note("pool out of data space");
                }
                full = true;
            } else if full {
                note("recovered from out of data space");
                full = false;
            }
        }
    }
    for k in [
        "block_sectors 128",
        "block_sectors 256",
        "block_sectors 1024",
        "create_thin EEXIST",
        "create_thin EINVAL",
        "snapshot ENODATA",
        "delete_thin ENODATA",
        "write_blocks ENOSPC",
        "write_bytes ENOSPC",
        "discard_blocks EINVAL",
        "discard_blocks EOPNOTSUPP",
        "set_transaction_id EINVAL",
        "read past the end",
        "read a partly written block",
        "device id near 2^24",
        "reused a deleted id",
        "snapshot of a snapshot",
        "deleted an origin before its snapshot",
        "partial write across blocks",
        "write while blocks are shared",
        "pool out of data space",
        "recovered from out of data space",
    ] {
        assert!(
            seen.get(k).copied().unwrap_or(0) > 0,
            "never: {k}\n{seen:#?}"
        );
    }
}

/// The bounded property test: the model against itself, invariants after every step.
#[test]
fn one_trace_replays_as_it_does_in_the_whole_run() {
    // `fuzz --trace N`: the trace a report names, alone, with the same outcome.
    let cfg = ThinFuzzConfig::new(5, 6, 40, "model");
    let whole = run_traces(&cfg, &open_broken(Flaw::MisreadsPartialBlocks));
    let mut one = cfg.clone();
    one.only = Some(4);
    let alone = run_traces(&one, &open_broken(Flaw::MisreadsPartialBlocks));
    assert_eq!(alone.results.len(), 1);
    assert_eq!(
        format!("{:?}", alone.results[0]),
        format!("{:?}", whole.results[4])
    );
    assert!(alone.lines()[0].contains("trace 4 x 40 steps"), "{alone}");
    assert!(one.guest_args().windows(2).any(|w| w == ["--trace", "4"]));
    // A trace that cannot run is reported under its own index, not its position.
    let no_pool = |_: PoolParams| -> Result<Box<dyn ThinDriver + Send>, String> {
        Err("no pools here".into())
    };
    let failed = run_traces(&one, &no_pool);
    assert_eq!(failed.errors().map(|(i, _)| i).collect::<Vec<_>>(), vec![4]);
}

#[test]
fn the_model_agrees_with_itself_and_keeps_its_invariants() {
    let mut cfg = ThinFuzzConfig::new(3, 40, 50, "model");
    cfg.observe_every = 1;
    let report = run_traces(&cfg, &open_model);
    assert_eq!(report.divergences().count(), 0, "{report}");
    assert_eq!(report.errors().count(), 0, "{report}");
    assert_eq!(report.steps(), 2000);
    assert_eq!(report.observations(), 2000);
    assert_eq!(report.exit_code(), 0);
}

#[test]
fn a_misread_is_found_shrunk_and_written_up() {
    let mut cfg = ThinFuzzConfig::new(1, 30, 40, "broken");
    cfg.shrink_budget = 300;
    let open = open_broken(Flaw::MisreadsPartialBlocks);
    let report = run_traces(&cfg, &open);
    let found: Vec<&ThinFound> = report.divergences().collect();
    assert!(!found.is_empty(), "{report}");
    for f in &found {
        let s = &f.shrunk;
        assert!(s.trace.steps.len() <= 4, "{report}\n{:?}", s.trace);
        assert!(s.divergence.model.is_some(), "{:?}", s.divergence);
        let text = f.scenario.as_ref().unwrap();
        assert_eq!(f.passes_on_model, Ok(()), "{text}");
        assert!(text.contains("op = \"write_bytes\""), "{text}");
        assert!(text.contains("op = \"read_blocks\""), "{text}");
        // The file holds the flaw: the broken pool fails it at the read.
        let scenario = parse_str(Path::new(&f.file), text).unwrap();
        let params = scenario.options.pool.unwrap();
        let mut broken = open(params).unwrap();
        let r = crate::runner::run_thin(&scenario, broken.as_mut());
        assert!(
            matches!(&r.status, Status::Fail(m) if m.contains("read_blocks")),
            "{:?}\n{text}",
            r.status
        );
    }
    // Deterministic, parallel or not.
    let mut serial = cfg.clone();
    serial.parallel = false;
    let again = run_traces(&serial, &open);
    assert_eq!(report.to_string(), again.to_string());
    assert_eq!(report.scenarios(), again.scenarios());
    assert_eq!(report.exit_code(), 1);
}

#[test]
fn a_miscount_when_full_is_found_and_checked_at_the_end() {
    let mut cfg = ThinFuzzConfig::new(2, 30, 50, "broken");
    cfg.observe_every = 5;
    let open = open_broken(Flaw::MiscountsWhenFull);
    let report = run_traces(&cfg, &open);
    let f = report
        .divergences()
        .next()
        .unwrap_or_else(|| panic!("{report}"));
    let d = &f.shrunk.divergence;
    assert!(
        d.diff
            .iter()
            .any(|l| l.starts_with("used_data_blocks: model ")),
        "{d:?}"
    );
    let text = f.scenario.as_ref().unwrap();
    assert_eq!(f.passes_on_model, Ok(()), "{text}");
    let scenario = parse_str(Path::new(&f.file), text).unwrap();
    let last = scenario.steps.iter().rev().find(|s| {
        matches!(&s.action, Action::Thin(ThinStep::Check(c))
            if c.iter().any(|c| matches!(c, layerspec_model::ThinCheck::PoolDataBlocks(_))))
    });
    assert!(last.is_some(), "{text}");
    let mut broken = open(scenario.options.pool.unwrap()).unwrap();
    let r = crate::runner::run_thin(&scenario, broken.as_mut());
    assert!(
        matches!(&r.status, Status::Fail(m) if m.contains("pool_data_blocks")),
        "{:?}\n{text}",
        r.status
    );
}

#[test]
fn emitted_files_state_errors_reads_and_the_pool() {
    let mut p = PoolParams::new(2);
    p.features.error_if_no_space = true;
    p.features.no_discard_passdown = true;
    let trace = generate::ThinTrace {
        seed: 5,
        index: 9,
        params: p,
        steps: vec![
            ThinOp::CreateThin {
                dev: 0,
                sectors: Some(layerspec_model::Sectors(128 * 4)),
            },
            ThinOp::WriteBlocks {
                dev: 0,
                block: 0,
                count: 3,
            },
            ThinOp::WriteBytes {
                dev: 0,
                offset: 10,
                len: 5,
            },
            ThinOp::ReadBlocks {
                dev: 0,
                block: 0,
                count: 6,
            },
            ThinOp::CreateThin {
                dev: MAX_ID + 1,
                sectors: None,
            },
        ],
    };
    let origin = emit::ThinOrigin {
        backend: "vm",
        command: "layerspec fuzz --driver thinpool --seed 5",
        divergence: None,
    };
    let text = emit::scenario_text(&trace, &origin).unwrap();
    let want = r#"title = "fuzz: generated thin-pool trace (seed 5, trace 9)"
claims = ["layerspec fuzz --driver thinpool --seed 5"]
drivers = ["thinpool"]

[pool]
data_blocks = 2
block_sectors = 128
error_if_no_space = true
discard_passdown = false

[trace]
steps = [
  { op = "create_thin", dev = 0, sectors = 512 },  # 0: create_thin 0 (512 sectors)
  { op = "write_blocks", dev = 0, block = 0, count = 3, expect = "ENOSPC" },  # 1: write_blocks dev 0 blocks 0+3
  { op = "write_bytes", dev = 0, offset = 10, len = 5 },  # 2: write_bytes dev 0 bytes 10+5
  { op = "read_blocks", dev = 0, block = 0, count = 6, returns = ["1+2", 1, "zero", "zero"] },  # 3: read_blocks dev 0 blocks 0+6
  { op = "create_thin", dev = 16777216, expect = "EINVAL" },  # 4: create_thin 16777216
  { op = "check", pool_data_blocks = 2 },
  { op = "check", mapped_blocks = { dev = 0, count = 2 } },
]
"#;
    assert_eq!(text, want);
    assert_eq!(passes_on_model("x.toml", &text), Ok(()));
    assert_eq!(
        emit::file_name(&trace, "vm"),
        "thinpool-vm-seed5-trace9.toml"
    );
}

#[test]
fn a_guest_report_comes_back_on_the_host() {
    let cfg = ThinFuzzConfig::new(1, 10, 40, "broken");
    let report = run_traces(&cfg, &open_broken(Flaw::MisreadsPartialBlocks));
    let n = report.scenarios().len();
    assert!(n > 0, "{report}");
    // What the guest prints and the host reads back.
    let lines: Vec<serde_json::Value> = report
        .json_lines()
        .iter()
        .map(|v| serde_json::from_str(&v.to_string()).unwrap())
        .collect();
    let dir = std::env::temp_dir().join(format!("layerspec-thinfuzz-{}", std::process::id()));
    assert_eq!(finish_from_guest(&lines, &dir), 1);
    let mut written: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    let mut want: Vec<String> = report.scenarios().into_iter().map(|(f, _)| f).collect();
    want.sort();
    assert_eq!(written, want);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(finish_from_guest(&[], &dir), 2);
}

#[test]
fn the_guest_parses_what_the_host_asks_for() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }
    #[derive(clap::Subcommand)]
    enum Cmd {
        Guest {
            #[command(subcommand)]
            what: What,
        },
    }
    #[derive(clap::Subcommand)]
    enum What {
        Fuzz(FuzzArgs),
    }
    let mut cfg = ThinFuzzConfig::new(4, 7, 9, "vm");
    cfg.observe_every = 3;
    cfg.shrink_budget = 50;
    let argv = std::iter::once("layerspec".to_string()).chain(cfg.guest_args());
    let Cmd::Guest {
        what: What::Fuzz(args),
    } = Cli::try_parse_from(argv).unwrap().cmd;
    let mut back = ThinFuzzConfig::from_args(&args);
    assert!(!back.parallel);
    back.parallel = true;
    assert_eq!(back, cfg);
    let lines = guest_lines(&args, &open_model);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["exit"], 0);
}

#[test]
fn a_backend_that_cannot_open_is_an_error() {
    let cfg = ThinFuzzConfig::new(1, 3, 10, "nowhere");
    let report = run_traces(&cfg, &|_| Err("no device-mapper".to_string()));
    assert_eq!(report.errors().count(), 3);
    assert_eq!(report.exit_code(), 2);
    assert!(report.to_string().contains("no device-mapper"));
}

#[test]
fn the_model_failing_is_reported_as_such() {
    let mut bad = generate_thin(1, 0, 10);
    bad.params.data_blocks = 0;
    let mut other = ThinPool::new(PoolParams::new(4)).unwrap();
    match replay_thin(&bad, &mut other, ReplayOptions::default()) {
        ThinReplay::Diverged(d) => {
            assert_eq!(d.real.as_deref(), Some(super::super::replay::NOT_RUN));
            assert!(d.summary().contains("the model fails"), "{}", d.summary());
        }
        other => panic!("{other:?}"),
    }
}
