//! Generated hostile scenarios (issue 9): layer entries whose paths come from a small
//! alphabet with `.`, empty and over-long components, often below an earlier entry of the
//! same layer; kinds file, dir (with a mode), symlink (to the canary, absolute or through a
//! `../` chain, or relative without `..`), hard link, whiteout, opaque dir; xattrs in odd
//! namespaces; and ids that are names, paths or neither. Each case: `check`; exit 2 must
//! come with a located first line, exit 0 leads to `run --backend model,kernel`, which must
//! exit 0 or 1; either way the canary (see `hostile_kit`) is unchanged and nothing is left
//! in the child's `TMPDIR`.
//!
//! 64 cases by default, well under a minute; `PROPTEST_CASES` sets another count.
//!
//! Every symlink target points into the canary or stays below the directory holding the
//! symlink: a generated chain of relative `..` targets could otherwise climb, hop by hop,
//! from the driver root to the host's `/` on a build that writes through symlinks.

mod hostile_kit;

use hostile_kit::{diff, layerspec, located, snapshot, Case, CHECK_TIMEOUT};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use std::ffi::OsStr;
use std::time::Duration;

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn config() -> ProptestConfig {
    let mut c = ProptestConfig {
        max_shrink_iters: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = 64;
    }
    c
}

fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        24 => prop::sample::select(vec!["a", "b", "c", "x"]).prop_map(String::from),
        1 => Just(".".to_string()),
        1 => Just("..".to_string()),
        1 => Just(String::new()),
        1 => Just(".wh.a".to_string()),
        1 => Just("n".repeat(255)),
        1 => Just("m".repeat(256)),
    ]
}

const TARGETS: &[&str] = &[
    "@CANARY@",
    "@CANARY@/dir0700",
    "@CANARY@/victim",
    "@CANARY@/file.txt",
    "@CANARY@/fifo",
    "@UP@@CANARY@",
    "@UP@@CANARY@/dir0755",
    "a",
    "x/y",
    ".",
];

const XATTRS: &[&str] = &[
    "user.p",
    "trusted.p",
    "trusted.overlay.opaque",
    "trusted.overlay.redirect",
    "security.capability",
    "system.posix_acl_access",
];

const IDS: &[&str] = &[
    "base",
    "l2",
    "c2",
    "",
    ".",
    "..",
    "a/b",
    "../../../escaped",
    "@CANARY@/id",
    "@UP@@CANARY@/id",
    "c1/merged/a",
    "x\ny",
    "x\u{0}y",
    "caf\u{e9}",
    "iiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiii",
];

#[derive(Clone, Debug)]
enum Kind {
    File,
    Dir(Option<u32>),
    Opaque,
    Symlink(&'static str),
    /// A hard link to an earlier entry (or, for the first, to a path of its own).
    Link(Index),
    Whiteout,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        1 => Just(Kind::File),
        1 => prop::option::of(prop::sample::select(vec![0o777u32, 0o000, 0o4755])).prop_map(Kind::Dir),
        1 => Just(Kind::Opaque),
        2 => prop::sample::select(TARGETS).prop_map(Kind::Symlink),
        1 => any::<Index>().prop_map(Kind::Link),
        1 => Just(Kind::Whiteout),
    ]
}

#[derive(Clone, Debug)]
struct GenEntry {
    /// Below an earlier entry's path (chosen by the index), or from the root.
    below: Option<Index>,
    components: Vec<String>,
    kind: Kind,
    xattr: Option<&'static str>,
}

fn entry() -> impl Strategy<Value = GenEntry> {
    (
        prop::option::weighted(0.4, any::<Index>()),
        prop::collection::vec(component(), 1..3),
        kind(),
        prop::option::weighted(0.2, prop::sample::select(XATTRS)),
    )
        .prop_map(|(below, components, kind, xattr)| GenEntry {
            below,
            components,
            kind,
            xattr,
        })
}

#[derive(Clone, Debug)]
struct Gen {
    layer: &'static str,
    entries: Vec<GenEntry>,
    new_container: &'static str,
    commit_as: &'static str,
}

fn scenario() -> impl Strategy<Value = Gen> {
    (
        prop_oneof![4 => Just("base"), 1 => prop::sample::select(IDS)],
        prop::collection::vec(entry(), 1..5),
        // Mostly names, so that a good share of the cases passes `check` and runs on the
        // kernel; hostile ids otherwise.
        prop_oneof![3 => Just("c2"), 1 => prop::sample::select(IDS)],
        prop_oneof![3 => Just("l2"), 1 => prop::sample::select(IDS)],
    )
        .prop_map(|(layer, entries, new_container, commit_as)| Gen {
            layer,
            entries,
            new_container,
            commit_as,
        })
}

/// A TOML basic string.
fn q(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The scenario template (`@CANARY@`, `@UP@` still in it).
fn render(g: &Gen) -> String {
    let mut paths: Vec<String> = Vec::new();
    let mut lines = Vec::new();
    for e in &g.entries {
        let base = match (&e.below, paths.is_empty()) {
            (Some(i), false) => paths[i.index(paths.len())].clone(),
            _ => String::new(),
        };
        let path = format!("{base}/{}", e.components.join("/"));
        let mut fields = vec![format!("path = {}", q(&path))];
        match &e.kind {
            Kind::File => fields.push(format!("data = {}", q("PWNED"))),
            Kind::Dir(mode) => {
                fields.push("dir = true".into());
                if let Some(m) = mode {
                    fields.push(format!("mode = 0o{m:o}"));
                }
            }
            Kind::Opaque => fields.push("dir = true, opaque = true".into()),
            Kind::Symlink(t) => fields.push(format!("symlink = {}", q(t))),
            Kind::Link(i) => {
                let to = if paths.is_empty() {
                    path.clone()
                } else {
                    paths[i.index(paths.len())].clone()
                };
                fields.push(format!("link = {}", q(&to)));
            }
            Kind::Whiteout => fields.push("whiteout = true".into()),
        }
        if let Some(x) = e.xattr {
            fields.push(format!("xattrs = {{ {} = \"y\" }}", q(x)));
        }
        lines.push(format!("  {{ {} }},", fields.join(", ")));
        paths.push(path);
    }
    format!(
        "title = \"generated hostile layer entries and ids\"\n\n[[layer]]\nid = {layer}\n\
         entries = [\n{entries}\n]\n\n[[container]]\nid = \"c1\"\nimage = {layer}\n\n[trace]\n\
         steps = [\n  {{ op = \"create_container\", id = {cid}, image = {layer} }},\n  \
         {{ op = \"commit\", container = \"c1\", layer = {lid} }},\n]\n",
        layer = q(g.layer),
        entries = lines.join("\n"),
        cid = q(g.new_container),
        lid = q(g.commit_as),
    )
}

fn one_case(g: &Gen) -> Result<(), TestCaseError> {
    let case = Case::new();
    let before = snapshot(&case.canary);
    let template = render(g);
    let path = case.write_scenario("generated.toml", &template);
    let mut problems = Vec::new();
    let check = layerspec(
        &[OsStr::new("check"), path.as_os_str()],
        &case.child_tmp(),
        CHECK_TIMEOUT,
    );
    let mut timed_out = check.timed_out;
    match check.code {
        Some(2) => {
            let first = check.stderr.lines().next().unwrap_or("");
            if !located(first, &path) {
                problems.push(format!(
                    "check: exit 2 without a located first line: {first:?}"
                ));
            }
        }
        Some(0) => {
            RAN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let run = layerspec(
                &[
                    OsStr::new("run"),
                    OsStr::new("--json"),
                    OsStr::new("--backend"),
                    OsStr::new("model,kernel"),
                    path.as_os_str(),
                ],
                &case.child_tmp(),
                RUN_TIMEOUT,
            );
            timed_out |= run.timed_out;
            if !matches!(run.code, Some(0 | 1)) {
                problems.push(format!(
                    "run: expected exit 0 or 1, got {}: {}",
                    run.describe(),
                    run.stderr_tail()
                ));
            }
        }
        _ => problems.push(format!(
            "check: expected exit 0 or 2, got {}: {}",
            check.describe(),
            check.stderr_tail()
        )),
    }
    let d = diff(&before, &snapshot(&case.canary));
    if !d.is_empty() {
        problems.push(format!(
            "the canary changed ({} differences):\n    {}",
            d.len(),
            d.iter().take(8).cloned().collect::<Vec<_>>().join("\n    ")
        ));
    }
    if !timed_out {
        problems.extend(case.tmp_leftovers());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(TestCaseError::fail(format!(
            "{}\nscenario:\n{template}",
            problems.join("\n")
        )))
    }
}

/// Cases that passed `check` and ran on the model and the kernel.
static RAN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[test]
fn hostile_layers_and_ids_stay_in_the_sandbox() {
    let cfg = config();
    let cases = cfg.cases;
    let mut runner = proptest::test_runner::TestRunner::new(cfg);
    if let Err(e) = runner.run(&scenario(), |g| one_case(&g)) {
        panic!("{e}");
    }
    let ran = RAN.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("hostile_props: {ran} of {cases} generated cases passed `check` and ran");
    // A generator whose cases all fail `check` would test the parser alone.
    assert!(ran > 0, "no generated case ran on a backend");
}
