//! Malformed scenario files get one located line and exit status 2 (issue 2, "Must show").

use std::io::Write;
use std::process::Command;

fn check(text: &str) -> (i32, String) {
    // One directory per call, removed after it: tests run in parallel, and nothing a test
    // makes may outlive it.
    static CASE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("layerspec-bad-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("case.toml");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_layerspec"))
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (
        out.status.code().unwrap_or(-1),
        stderr.replace(&path.display().to_string(), "FILE"),
    )
}

fn assert_located(text: &str, line: usize, needle: &str) {
    let (code, err) = check(text);
    assert_eq!(code, 2, "exit status for {text:?}: {err}");
    let first = err.lines().next().unwrap_or("");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        first.starts_with(&format!("FILE:{line}:")),
        "located at line {line}: {first}"
    );
    assert!(
        first.contains(needle),
        "{first:?} should mention {needle:?}"
    );
}

const HEAD: &str = "title = \"t\"\n[[layer]]\nid = \"base\"\n";

#[test]
fn wrong_type() {
    assert_located("title = 3\n", 1, "string");
}

#[test]
fn unknown_top_level_key() {
    assert_located("title = \"t\"\ncolour = \"red\"\n", 2, "colour");
}

#[test]
fn unknown_entry_key() {
    assert_located(
        &format!("{HEAD}entries = [{{ path = \"/a\", colour = 1 }}]\n"),
        4,
        "colour",
    );
}

#[test]
fn unknown_op() {
    let t = format!("{HEAD}[[container]]\nid = \"c\"\nimage = \"base\"\n[trace]\nsteps = [\n  {{ op = \"frobnicate\", path = \"/a\" }},\n]\n");
    assert_located(&t, 9, "unknown op `frobnicate`");
}

#[test]
fn bad_errno_name() {
    let t = format!(
        "{HEAD}[trace]\nsteps = [\n  {{ op = \"stat\", path = \"/a\", expect = \"ENOPE\" }},\n]\n"
    );
    assert_located(&t, 6, "unknown errno name `ENOPE`");
}

#[test]
fn data_past_64_gib() {
    assert_located(
        &format!("{HEAD}entries = [{{ path = \"/a\", size = 9223372036854775807 }}]\n"),
        4,
        "at most 68719476736 bytes",
    );
    let t = format!(
        "{HEAD}[trace]\nsteps = [\n  {{ op = \"write\", path = \"/a\", size = 68719476737 }},\n]\n"
    );
    assert_located(&t, 6, "at most 68719476736 bytes");
    // Holes have no such limit.
    let t = format!(
        "{HEAD}entries = [{{ path = \"/a\", size = 68719476736 }}]\n[[container]]\nid = \"c\"\nimage = \"base\"\n[trace]\nsteps = [\n  {{ op = \"truncate\", path = \"/a\", size = 9223372036854775807 }},\n  {{ op = \"write\", path = \"/a\", offset = 9223372036854775806, data = \"x\" }},\n]\n"
    );
    assert_eq!(check(&t).0, 0);
}

#[test]
fn duplicate_layer_id() {
    assert_located(
        &format!("{HEAD}[[layer]]\nid = \"base\"\n"),
        5,
        "duplicate layer id",
    );
}

#[test]
fn missing_parent() {
    assert_located(
        &format!("{HEAD}[[layer]]\nid = \"app\"\nparent = \"nope\"\n"),
        6,
        "parent `nope`",
    );
}

#[test]
fn dotdot_path() {
    let t = format!(
        "{HEAD}[trace]\nsteps = [\n  {{ op = \"stat\", path = \"/a/../../etc/passwd\" }},\n]\n"
    );
    assert_located(&t, 6, "..");
}

#[test]
fn field_of_another_op() {
    let t = format!(
        "{HEAD}[trace]\nsteps = [\n  {{ op = \"unlink\", path = \"/a\", mode = 0o644 }},\n]\n"
    );
    assert_located(&t, 6, "`mode` is not a field of `unlink`");
}

#[test]
fn valid_file_passes() {
    let (code, err) = check(&format!(
        "{HEAD}entries = [{{ path = \"/a\", data = \"x\" }}]\n"
    ));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn pool_data_blocks_ranges() {
    let steps = |s: &str| {
        format!(
            "{HEAD}entries = []\n[[container]]\nid = \"c\"\nimage = \"base\"\n[trace]\nsteps = [\n{s}]\n"
        )
    };
    assert_located(
        &steps("  { op = \"check\", pool_data_blocks = { min = 3, max = 2 } },\n"),
        10,
        "min 3 is above max 2",
    );
    assert_located(
        &steps("  { op = \"check\", pool_data_blocks = {} },\n"),
        10,
        "give `min`, `max` or both",
    );
    assert_located(
        &steps("  { op = \"check\", pool_data_blocks = { min = 1, most = 2 } },\n"),
        10,
        "unknown key `most`",
    );
    assert_located(
        &steps("  { op = \"check\", pool_data_blocks = { since = 0, min = 0 } },\n"),
        10,
        "must name an earlier step",
    );
    assert_located(
        &steps(
            "  { op = \"stat\", path = \"/\" },\n  { op = \"check\", pool_data_blocks = { since = 0, max = 0 } },\n",
        ),
        11,
        "not a `check` with `pool_data_blocks`",
    );
    assert_located(
        &steps("  { op = \"check\", pool_data_blocks = \"x\" },\n"),
        10,
        "expected a block count",
    );
    let ok = steps(
        "  { op = \"check\", pool_data_blocks = { min = 1 } },\n  { op = \"check\", pool_data_blocks = { since = 0, min = -5, max = 5 } },\n",
    );
    assert_eq!(check(&ok).0, 0, "{}", check(&ok).1);
    // A thin-pool scenario decides every block: exact counts only.
    assert_located(
        "title = \"t\"\ndrivers = [\"thinpool\"]\n[pool]\ndata_blocks = 4\n[trace]\nsteps = [\n  { op = \"check\", pool_data_blocks = { min = 0 } },\n]\n",
        7,
        "exact block count",
    );
}

#[test]
fn kernel_ranges_are_checked_and_located() {
    // Column of the bad comparison, not just the line: `kernel = ">= 6.6, <= 7"`.
    let (code, err) = check("title = \"t\"\nkernel = \">= 6.6, <= 7\"\n");
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("FILE:2:19:"), "{err}");
    assert!(err.contains("`<= 7`: only `>=` and `<`"), "{err}");
    assert_located("title = \"t\"\nkernel = \">= 6\"\n", 2, "not major.minor");
    assert_located(
        "title = \"t\"\nkernel = \"6.1\"\n",
        2,
        "expected `>= major.minor`",
    );
    assert_located(
        "title = \"t\"\nkernel = \">= 6.6, >= 6.8\"\n",
        2,
        "given twice",
    );
    assert_located(
        "title = \"t\"\nkernel = \">= 6.6, < 6.6\"\n",
        2,
        "no kernel is",
    );
    assert_located("title = \"t\"\nkernel = 6.6\n", 2, "string");
    assert_located(
        "title = \"t\"\nkernel = \">= 6.6\"\ndrivers = [\"thinpool\"]\n[pool]\ndata_blocks = 4\n",
        2,
        "thin-pool",
    );
    let (code, err) = check("title = \"t\"\nkernel = \">= 5.12, < 6.6\"\n");
    assert_eq!(code, 0, "{err}");
    // Per driver: the bad key, and the bad comparison inside a value, are located.
    let (code, err) = check("title = \"t\"\nkernel = { overlay2 = \">= 6.6\", zfs = \"< 6\" }\n");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.starts_with("FILE:2:33:") && err.contains("`zfs`"),
        "{err}"
    );
    let (code, err) = check("title = \"t\"\nkernel = { overlay = \">= 6.6, <= 7.0\" }\n");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.starts_with("FILE:2:31:") && err.contains("`<= 7.0`"),
        "{err}"
    );
    assert_located(
        "title = \"t\"\nkernel = { overlay = 6 }\n",
        2,
        "expected a string",
    );
    assert_located(
        "title = \"t\"\nkernel = [\">= 6.6\"]\n",
        2,
        "or a table of them",
    );
    let (code, err) =
        check("title = \"t\"\nkernel = { default = \">= 6.6\", devicemapper = \">= 4.0\" }\n");
    assert_eq!(code, 0, "{err}");
}
