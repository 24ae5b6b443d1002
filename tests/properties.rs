//! Properties over generated input: the parser never panics on any text, and the model's
//! transition never panics, keeps its named invariants, and changes nothing when a step
//! fails. `LAYERSPEC_PROPTEST_CASES` raises the case count (the closing note's fuzz runs).

use layerspec_model::*;
use proptest::prelude::*;

fn cases(default: u32) -> u32 {
    std::env::var("LAYERSPEC_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const NAMES: &[&str] = &["a", "b", "etc", "d", ".wh.a", "x"];

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(NAMES), 1..4)
        .prop_map(|v| format!("/{}", v.join("/")))
}

fn file_op() -> impl Strategy<Value = FileOp> {
    prop_oneof![
        (path(), any::<bool>()).prop_map(|(path, m)| FileOp::Create {
            path,
            mode: m.then_some(0o600)
        }),
        (
            path(),
            prop::collection::vec(prop::sample::select(&OpenFlags::NAMES[..]), 0..4)
        )
            .prop_map(|(path, names)| {
                let mut flags = OpenFlags::default();
                for n in names {
                    flags.set(n);
                }
                FileOp::Open {
                    path,
                    flags,
                    mode: None,
                }
            }),
        (path(), 0u64..8, "[a-z]{0,6}").prop_map(|(path, offset, d)| FileOp::Write {
            path,
            offset,
            data: Content::Bytes(d.into_bytes())
        }),
        (path(), "[a-z]{1,4}").prop_map(|(path, d)| FileOp::Append {
            path,
            data: d.into_bytes()
        }),
        (path(), 0u64..16).prop_map(|(path, size)| FileOp::Truncate { path, size }),
        path().prop_map(|path| FileOp::Read {
            path,
            offset: 0,
            len: None
        }),
        path().prop_map(|path| FileOp::Unlink { path }),
        path().prop_map(|path| FileOp::Mkdir { path, mode: None }),
        path().prop_map(|path| FileOp::Rmdir { path }),
        (path(), path()).prop_map(|(from, to)| FileOp::Rename { from, to }),
        (path(), path()).prop_map(|(from, to)| FileOp::Link { from, to }),
        (
            prop::sample::select(vec!["a", "/etc", "../..", "/a/b", "x/../a", "/"]),
            path()
        )
            .prop_map(|(t, path)| FileOp::Symlink {
                target: t.to_string(),
                path
            }),
        path().prop_map(|path| FileOp::Readlink { path }),
        (path(), 0u32..0o1000).prop_map(|(path, mode)| FileOp::Chmod { path, mode }),
        path().prop_map(|path| FileOp::Stat { path }),
        path().prop_map(|path| FileOp::Readdir { path }),
        path().prop_map(|path| FileOp::Setxattr {
            path,
            name: "user.k".into(),
            value: b"v".to_vec()
        }),
        path().prop_map(|path| FileOp::Removexattr {
            path,
            name: "user.k".into()
        }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => file_op().prop_map(|op| Op::File { container: None, op }),
        1 => Just(Op::Remount { container: None }),
        1 => Just(Op::Changes { container: None }),
        1 => (0u8..4).prop_map(|i| Op::Commit { container: None, layer: format!("L{i}") }),
        1 => (0u8..3, prop::option::of(0u8..4)).prop_map(|(i, l)| Op::CreateContainer {
            id: format!("c{i}"),
            image: l.map(|l| format!("L{l}"))
        }),
    ]
}

fn image(driver: DriverKind, options: OverlayOptions) -> ModelDriver {
    let mut d = ModelDriver::new(driver, options);
    let file = |p: &str, s: &str| Entry {
        path: p.into(),
        kind: EntryKind::File(Content::Bytes(s.as_bytes().to_vec())),
        mode: None,
        xattrs: Default::default(),
        owner: None,
    };
    let mut linked = file("/etc/b", "");
    linked.kind = EntryKind::HardLink("/etc/a".into());
    d.add_layer(&LayerSpec {
        id: "base".into(),
        parent: None,
        entries: vec![file("/etc/a", "one"), linked, file("/a", "top")],
    })
    .unwrap();
    let mut wh = file("/a", "");
    wh.kind = EntryKind::Whiteout;
    let mut dir = file("/d", "");
    dir.kind = EntryKind::Dir { opaque: true };
    d.add_layer(&LayerSpec {
        id: "app".into(),
        parent: Some("base".into()),
        entries: vec![wh, dir, file("/d/x", "x"), file("/b", "b")],
    })
    .unwrap();
    d.apply(&Op::CreateContainer {
        id: "c".into(),
        image: Some("app".into()),
    })
    .unwrap()
    .unwrap();
    d
}

fn drivers() -> impl Strategy<Value = (DriverKind, OverlayOptions)> {
    (
        prop::sample::select(DriverKind::FILE_LEVEL.to_vec()),
        any::<(bool, bool, bool)>(),
    )
        .prop_map(|(d, (r, m, i))| {
            (
                d,
                OverlayOptions {
                    redirect_dir: r,
                    metacopy: m,
                    index: i,
                    xino: false,
                },
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    /// regression: issue 2, item 8 — the model's step execution never panics, keeps its
    /// invariants, and an errno leaves the observation unchanged.
    #[test]
    fn model_steps_never_panic_and_errors_change_nothing(
        (driver, options) in drivers(),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let mut d = image(driver, options);
        for op in &ops {
            let before = d.clone();
            if let Ok(Err(e)) = d.apply(op) {
                {
                    prop_assert_eq!(before.store().containers().count(), d.store().containers().count());
                    let (a, b) = (observe_store(before.store()), observe_store(d.store()));
                    // The one documented exception: overlayfs marks a directory opaque
                    // before the upper filesystem refuses to rename it onto a non-empty
                    // one (dir.rs). What the container shows does not change.
                    let renamed_onto_nonempty = matches!(op, Op::File { op: FileOp::Rename { .. }, .. })
                        && e == Errno::ENOTEMPTY;
                    if renamed_onto_nonempty {
                        prop_assert!(a.merged == b.merged, "{:?} failed but changed the merged view", op);
                    } else {
                        prop_assert!(a == b, "{:?} failed but changed the state", op);
                    }
                }
            }
            let v = check_invariants(d.store());
            prop_assert!(v.is_empty(), "after {:?}: {:?}", op, v);
        }
    }

    /// regression: issue 2, item 8 — the scenario parser never panics, on any bytes.
    #[test]
    fn parser_never_panics_on_any_text(text in ".{0,400}") {
        let _ = layerspec::scenario::parse_str("fuzz.toml".as_ref(), &text);
    }

    /// The parser never panics on mutations of a real scenario file.
    #[test]
    fn parser_never_panics_on_mutated_scenarios(cut in 0usize..2000, insert in "[\\[\\]{}=\",a-z0-9 \n]{0,12}") {
        let text = include_str!("../scenarios/examples/scenarios_md_example.toml");
        let at = text.char_indices().map(|(i, _)| i).nth(cut % text.chars().count()).unwrap_or(0);
        let mutated = format!("{}{}{}", &text[..at], insert, &text[at..]);
        let _ = layerspec::scenario::parse_str("fuzz.toml".as_ref(), &mutated);
    }
}
