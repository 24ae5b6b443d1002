//! The thin-pool model over generated input: random op sequences never panic, keep every
//! named invariant (`THIN_INVARIANTS`) after every step, change nothing when a step fails
//! (except the kernel's out-of-space side effects), and the pure transition agrees with the
//! in-place one. Also: the `[pool]` table and thin steps are parsed with located errors.
//! `LAYERSPEC_PROPTEST_CASES` raises the case count.

use layerspec::runner::{run, Status};
use layerspec::scenario::parse_str;
use layerspec_model::*;
use proptest::prelude::*;

fn cases(default: u32) -> u32 {
    std::env::var("LAYERSPEC_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn dev() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 0u64..5, 1 => Just(1u64 << 24)]
}

fn op() -> impl Strategy<Value = ThinOp> {
    prop_oneof![
        2 => (dev(), prop::option::of(prop::sample::select(vec![128u64, 1024, 2048, 100])))
            .prop_map(|(dev, s)| ThinOp::CreateThin { dev, sectors: s.map(Sectors) }),
        2 => (dev(), dev()).prop_map(|(dev, origin)| ThinOp::CreateSnap { dev, origin }),
        1 => dev().prop_map(|dev| ThinOp::Delete { dev }),
        1 => (0u64..3, 0u64..3).prop_map(|(current, new)| ThinOp::SetTransactionId { current, new }),
        5 => (dev(), 0u64..20, 0u64..4).prop_map(|(dev, block, count)| ThinOp::WriteBlocks { dev, block, count }),
        3 => (dev(), 0u64..20 * 65536, 0u64..140_000).prop_map(|(dev, offset, len)| ThinOp::WriteBytes { dev, offset, len }),
        2 => (dev(), 0u64..20, 0u64..4).prop_map(|(dev, block, count)| ThinOp::ReadBlocks { dev, block, count }),
        2 => (dev(), 0u64..20, 0u64..6).prop_map(|(dev, block, count)| ThinOp::DiscardBlocks { dev, block, count }),
    ]
}

fn params() -> impl Strategy<Value = PoolParams> {
    (1u64..24, any::<[bool; 4]>(), 0u64..4).prop_map(|(data_blocks, f, low)| {
        let mut p = PoolParams::new(data_blocks);
        p.low_water_blocks = low;
        p.features = Features {
            skip_block_zeroing: f[0],
            ignore_discard: f[1],
            no_discard_passdown: f[2],
            error_if_no_space: f[3],
        };
        p
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(256)))]

    #[test]
    fn thin_ops_keep_the_invariants(p in params(), ops in prop::collection::vec(op(), 1..60)) {
        let mut pool = ThinPool::new(p).unwrap();
        for (i, op) in ops.iter().enumerate() {
            let before = pool.observe();
            let (next, pure) = pool.transition(i, op);
            let out = pool.apply(i, op);
            prop_assert_eq!(&out, &pure, "step {}: {:?}", i, op);
            prop_assert_eq!(next.observe(), pool.observe());
            let broken = check_thin_invariants(&pool);
            prop_assert!(broken.is_empty(), "step {} {:?} -> {:?}: {:?}", i, op, out, broken);
            if let Err(e) = out {
                // Out of space, a write keeps what it could write: ENOSPC from O_DIRECT,
                // EIO from the page cache's write-back.
                if e != Errno::ENOSPC && e != Errno::EIO {
                    prop_assert_eq!(before, pool.observe(), "step {} failed with {} yet changed the pool", i, e);
                }
            }
            if let (Ok(ThinValue::Blocks(b)), ThinOp::ReadBlocks { count, .. }) = (&out, op) {
                prop_assert!(b.len() as u64 <= *count);
            }
            let st = pool.status();
            prop_assert_eq!(st.to_string().parse::<PoolStatus>(), Ok(st));
            prop_assert!(st.used_data_blocks <= st.total_data_blocks);
        }
    }

    #[test]
    fn the_parser_never_panics_on_thin_files(body in "[a-z_ =0-9{},\\[\\]\"\n]{0,200}") {
        let text = format!("title = \"t\"\n[pool]\ndata_blocks = 4\n[trace]\nsteps = [\n{body}\n]\n");
        let _ = parse_str("p.toml".as_ref(), &text);
    }
}

#[test]
fn a_snapshot_chain_reads_through_one_lookup() {
    let mut pool = ThinPool::new(PoolParams::new(2048)).unwrap();
    pool.apply(
        0,
        &ThinOp::CreateThin {
            dev: 0,
            sectors: None,
        },
    )
    .unwrap();
    pool.apply(
        1,
        &ThinOp::WriteBlocks {
            dev: 0,
            block: 0,
            count: 1,
        },
    )
    .unwrap();
    for i in 1..=1000u64 {
        pool.apply(
            2,
            &ThinOp::CreateSnap {
                dev: i,
                origin: i - 1,
            },
        )
        .unwrap();
    }
    assert_eq!(pool.used_data_blocks(), 1);
    let deepest = pool.mapping(ThinId::new(1000).unwrap()).unwrap();
    assert_eq!(
        deepest.get(VirtBlock(0)).map(|b| b.block()),
        Some(PoolBlock(0))
    );
    // 1001 devices share one node: the snapshots copied nothing.
    let (mem, _, _) = pool.memory();
    assert_eq!(mem.nodes, 1);
    assert!(check_thin_invariants(&pool).is_empty());
}

fn parse_err(pool: &str, steps: &str) -> (usize, String) {
    let text = format!(
        "title = \"t\"\ndrivers = [\"thinpool\"]\n[pool]\n{pool}\n[trace]\nsteps = [\n{steps}\n]\n"
    );
    let e = parse_str("x.toml".as_ref(), &text).unwrap_err();
    (e.line, e.message)
}

#[test]
fn bad_block_sizes_are_located_parse_errors() {
    for bad in ["64", "200", "0", "2097280", "4194304"] {
        let (line, msg) = parse_err(&format!("data_blocks = 4\nblock_sectors = {bad}"), "");
        assert_eq!(line, 5, "{msg}");
        assert!(
            msg.contains("block_sectors") && msg.contains("multiple of 128"),
            "{msg}"
        );
    }
    for good in ["128", "384", "2097152"] {
        let text = format!(
            "title = \"t\"\n[pool]\ndata_blocks = 1\nblock_sectors = {good}\n[trace]\nsteps = []\n"
        );
        assert!(parse_str("x.toml".as_ref(), &text).is_ok(), "{good}");
    }
    let (line, msg) = parse_err("data_blocks = 0", "");
    assert_eq!(line, 4);
    assert!(msg.contains("data_blocks"), "{msg}");
}

#[test]
fn thin_steps_are_checked_when_parsed() {
    let cases = [
        (
            "{ op = \"write_blocks\", dev = 0, block = 0 }",
            "needs `count`",
        ),
        (
            "{ op = \"write_blocks\", dev = 0, block = 0, count = 0 }",
            "at least 1",
        ),
        (
            "{ op = \"create_thin\", dev = 0, sectors = 100 }",
            "whole number of pool blocks",
        ),
        (
            "{ op = \"read_blocks\", dev = 0, block = 0, count = 1, returns = [\"one\"] }",
            "step whose",
        ),
        (
            "{ op = \"read_blocks\", dev = 0, block = 0, count = 1, returns = [1, 2] }",
            "only `count`",
        ),
        (
            "{ op = \"check\", mapped_blocks = { dev = 0 } }",
            "needs `count`",
        ),
        (
            "{ op = \"check\", shared_blocks = { a = 0, b = 1, n = 2 } }",
            "no key `n`",
        ),
        (
            "{ op = \"check\", copied_up_bytes = 0 }",
            "file-level check",
        ),
        ("{ op = \"unlink\", path = \"/a\" }", "file step"),
        ("{ op = \"snapshot\", dev = 1 }", "needs `origin`"),
        (
            "{ op = \"set_transaction_id\", current = 0 }",
            "needs `new`",
        ),
    ];
    for (step, needle) in cases {
        let (line, msg) = parse_err("data_blocks = 4", step);
        assert_eq!(line, 7, "{step}: {msg}");
        assert!(
            msg.contains(needle),
            "{step}: {msg:?} should mention {needle:?}"
        );
    }
    let no_pool = "title = \"t\"\n[trace]\nsteps = [\n{ op = \"create_thin\", dev = 0 },\n]\n";
    let e = parse_str("x.toml".as_ref(), no_pool).unwrap_err();
    assert!(e.message.contains("[pool]"), "{}", e.message);
    let wrong_driver = "title = \"t\"\ndrivers = [\"overlay2\"]\n[pool]\ndata_blocks = 1\n";
    let e = parse_str("x.toml".as_ref(), wrong_driver).unwrap_err();
    assert_eq!(e.line, 2);
}

#[test]
fn a_thin_scenario_runs_on_the_model_and_skips_elsewhere() {
    let text = "title = \"t\"\n[pool]\ndata_blocks = 2\n[trace]\nsteps = [\n\
        { op = \"create_thin\", dev = 0 },\n\
        { op = \"write_blocks\", dev = 0, block = 0, count = 3, expect = \"ENOSPC\" },\n\
        { op = \"read_blocks\", dev = 0, block = 0, count = 3, returns = [1, 1, \"zero\"] },\n\
        { op = \"check\", pool_data_blocks = 2 },\n]\n";
    let s = parse_str("x.toml".as_ref(), text).unwrap();
    assert_eq!(s.drivers(), vec![DriverKind::Thinpool]);
    let r = run(
        &s,
        &mut ModelDriver::new(DriverKind::Thinpool, OverlayOptions::default()),
    );
    assert_eq!(r.status, Status::Pass);
    let pool = r.observation.unwrap().accounting.pool.unwrap();
    assert_eq!(pool.mode, PoolMode::OutOfDataSpace);
    let wrong = text.replace(
        "returns = [1, 1, \"zero\"]",
        "returns = [1, \"zero\", \"zero\"]",
    );
    let s = parse_str("x.toml".as_ref(), &wrong).unwrap();
    let r = run(
        &s,
        &mut ModelDriver::new(DriverKind::Thinpool, OverlayOptions::default()),
    );
    assert!(matches!(r.status, Status::Fail(m) if m.contains("step 2")));
}
