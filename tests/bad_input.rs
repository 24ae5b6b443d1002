//! Malformed scenario files get one located line and exit status 2 (issue 2, "Must show").

use std::io::Write;
use std::process::Command;

fn check(text: &str) -> (i32, String) {
    // One directory per case: cases run in parallel and each removes its own.
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("layerspec-bad-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!(
        "case{:x}.toml",
        layerspec_model::content_digest(text.as_bytes()).len() + text.len()
    ));
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
