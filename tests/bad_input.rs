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

// Issue 9: scenario files are untrusted input to a root process. Every class of hostile
// input below is refused by `check` with one located line, before anything runs.

fn steps_file(steps: &str) -> String {
    format!(
        "{HEAD}entries = [{{ path = \"/a\", data = \"x\" }}]\n[[container]]\nid = \"c\"\nimage = \"base\"\n[trace]\nsteps = [\n{steps}]\n"
    )
}

#[test]
fn ids_that_are_paths_are_refused_in_steps() {
    for (step, needle) in [
        (
            "{ op = \"create_container\", id = \"/abs/dir\" }",
            "/abs/dir",
        ),
        ("{ op = \"create_container\", id = \"../../x\" }", "../../x"),
        (
            "{ op = \"create_container\", id = \"ca/merged/x\" }",
            "ca/merged/x",
        ),
        ("{ op = \"create_container\", id = \"..\" }", "`..`"),
        ("{ op = \"create_container\", id = \".\" }", "`.`"),
        ("{ op = \"create_container\", id = \"\" }", "id ``"),
        (
            "{ op = \"commit\", container = \"c\", layer = \"../l\" }",
            "../l",
        ),
        ("{ op = \"remove_container\", id = \"/tmp\" }", "/tmp"),
        (
            "{ op = \"create_container\", id = \"x\", image = \"a/b\" }",
            "a/b",
        ),
    ] {
        assert_located(&steps_file(&format!("  {step},\n")), 10, needle);
    }
    // `container =` on any step is located at its value.
    let (code, err) = check(&steps_file(
        "  { op = \"stat\", path = \"/a\", container = \"../c\" },\n",
    ));
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("FILE:10:43:"), "{err}");
    let long = "a".repeat(65);
    assert_located(
        &steps_file(&format!(
            "  {{ op = \"create_container\", id = \"{long}\" }},\n"
        )),
        10,
        "1-64 characters",
    );
}

#[test]
fn dot_components_in_paths_are_refused_like_dotdot() {
    assert_located(
        &steps_file("  { op = \"stat\", path = \"/a/./b\" },\n"),
        10,
        "`.` components",
    );
    assert_located(
        &steps_file("  { op = \"stat\", path = \"/.\" },\n"),
        10,
        "`.` components",
    );
    assert_located(
        &format!("{HEAD}entries = [{{ path = \"/a/.\", dir = true, mode = 0o777 }}]\n"),
        4,
        "`.` components",
    );
}

#[test]
fn entries_below_a_symlink_entry_are_refused_with_the_models_error() {
    for kind in [
        "data = \"PWNED\"",
        "dir = true, mode = 0o777",
        "dir = true, opaque = true",
        "whiteout = true",
        "xattrs = { \"user.k\" = \"v\" }",
    ] {
        let t = format!(
            "{HEAD}entries = [\n  {{ path = \"/a\", symlink = \"/tmp\" }},\n  {{ path = \"/a/x\", {kind} }},\n]\n"
        );
        assert_located(&t, 6, "a parent of `/a/x` is not a directory");
    }
    // Below a file, and deeper below a symlink.
    let t = format!(
        "{HEAD}entries = [\n  {{ path = \"/f\", data = \"x\" }},\n  {{ path = \"/f/y/z\", data = \"x\" }},\n]\n"
    );
    assert_located(&t, 6, "a parent of `/f/y/z` is not a directory");
    // A hard link to a directory entry.
    let t = format!(
        "{HEAD}entries = [\n  {{ path = \"/d\", dir = true }},\n  {{ path = \"/l\", link = \"/d\" }},\n]\n"
    );
    assert_located(&t, 6, "cannot hard-link `/d`");
}

#[test]
fn offsets_and_sizes_past_off_t_are_refused() {
    assert_located(
        &steps_file(
            "  { op = \"write\", path = \"/a\", offset = 9223372036854775808, data = \"x\" },\n",
        ),
        10,
        "largest file offset",
    );
    assert_located(
        &steps_file("  { op = \"truncate\", path = \"/a\", size = 18446744073709551615 },\n"),
        10,
        "largest file offset",
    );
    assert_located(
        &format!("{HEAD}entries = [{{ path = \"/big\", size = 9223372036854775808 }}]\n"),
        4,
        "at most 68719476736 bytes (64 GiB) of data",
    );
    // At the limit itself: accepted (the model keeps such files sparse).
    let (code, err) = check(&steps_file(
        "  { op = \"write\", path = \"/a\", offset = 4611686018427387904, data = \"x\" },\n",
    ));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn backing_sizes_and_inode_counts_are_checked() {
    let opts = |o: &str| format!("title = \"t\"\n[options]\n{o}\n");
    assert_located(
        &opts("backing = \"ext4\"\nsize = \"abc\""),
        4,
        "expected a number",
    );
    assert_located(
        &opts("backing = \"ext4\"\nsize = \"99999999999G\""),
        4,
        "larger than the limit",
    );
    assert_located(&opts("size = \"64G\""), 3, "larger than the limit of 8G");
    assert_located(
        &opts("backing = \"ext4\"\ninodes = 4000000000"),
        4,
        "holds 16 to 262144 inodes",
    );
    assert_located(&opts("inodes = 100"), 3, "needs `backing = \"ext4\"`");
    let (code, err) = check(&opts("backing = \"ext4\"\nsize = \"64M\"\ninodes = 1000"));
    assert_eq!(code, 0, "{err}");
    // mkfs.xfs makes nothing under 300 MiB: the size, or the backing when the default
    // (256M) would be taken.
    assert_located(
        &opts("backing = \"xfs\"\nsize = \"299M\""),
        4,
        "no filesystem under 300 MiB",
    );
    assert_located(&opts("backing = \"xfs\""), 3, "no filesystem under 300 MiB");
    let (code, err) = check(&opts("backing = \"xfs\"\nsize = \"300M\""));
    assert_eq!(code, 0, "{err}");
}

#[test]
fn layer_chains_deeper_than_dockers_limit_are_refused() {
    let mut t = String::from("title = \"t\"\n");
    for i in 0..129 {
        t.push_str(&format!("[[layer]]\nid = \"l{i}\"\n"));
        if i > 0 {
            t.push_str(&format!("parent = \"l{}\"\n", i - 1));
        }
    }
    let (code, err) = check(&t);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`l128` is 129 deep"), "{err}");
}

#[test]
fn check_reads_only_regular_files() {
    let dir = std::env::temp_dir().join(format!("layerspec-bad-fifo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("f.toml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let run = |p: &std::path::Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_layerspec"))
            .arg("check")
            .arg(p)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // A FIFO with no writer: an error at once, not a hang.
    let (code, err) = run(&fifo);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not a regular file"), "{err}");
    let (code, err) = run(std::path::Path::new("/dev/zero"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not a regular file"), "{err}");
    // Too large.
    let big = dir.join("big.toml");
    std::fs::write(&big, " ".repeat((4 << 20) + 1)).unwrap();
    let (code, err) = run(&big);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("more than the limit"), "{err}");
}

#[test]
fn open_flags_are_names_and_one_access_mode() {
    // HEAD's 3 lines, the entries line, the container table (3), `[trace]`, `steps = [`:
    // the step is line 10.
    for (flags, needle) in [
        ("[\"O_SYNC\"]", "unknown open flag `O_SYNC`"),
        ("[\"O_RDONLY\", \"O_WRONLY\"]", "one access mode at most"),
    ] {
        let t = steps_file(&format!(
            "  {{ op = \"open\", path = \"/a\", flags = {flags} }},\n"
        ));
        assert_located(&t, 10, needle);
    }
    let t = steps_file("  { op = \"open\", path = \"/a\" },\n");
    assert_located(&t, 10, "`open` needs `flags`");
}

const STEPS: &str = "[trace]\nsteps = [\n";

#[test]
fn stat_relation_like_without_earlier_mark() {
    assert_located(
        &format!(
            "{HEAD}{STEPS}  {{ op = \"check\", stat = \"/a\", like = \"m\", same = [\"ino\"] }},\n  {{ op = \"check\", stat = \"/a\", mark = \"m\" }},\n]\n"
        ),
        6,
        "no earlier step has `mark = \"m\"`",
    );
}

#[test]
fn stat_relation_unknown_field() {
    assert_located(
        &format!(
            "{HEAD}{STEPS}  {{ op = \"check\", stat = \"/a\", mark = \"m\" }},\n  {{ op = \"check\", stat = \"/a\", like = \"m\", same = [\"atime\"] }},\n]\n"
        ),
        7,
        "unknown stat field \"atime\"",
    );
}

#[test]
fn stat_relation_needs_fields_and_keeps_to_itself() {
    let text = |step: &str| {
        format!("{HEAD}{STEPS}  {{ op = \"check\", stat = \"/a\", mark = \"m\" }},\n  {step},\n]\n")
    };
    assert_located(
        &text("{ op = \"check\", stat = \"/a\", like = \"m\" }"),
        7,
        "`like` needs `same` or `differ`",
    );
    assert_located(
        &text("{ op = \"check\", stat = \"/a\", same = [\"ino\"] }"),
        7,
        "name it with `like`",
    );
    assert_located(
        &text("{ op = \"check\", stat = \"/a\", mark = \"n\", in_upper = \"/a\" }"),
        7,
        "not `in_upper`",
    );
    assert_located(
        &text("{ op = \"check\", stat = \"/a\", mark = \"../x\" }"),
        7,
        "a mark's name",
    );
    assert_located(&text("{ op = \"check\", mark = \"n\" }"), 7, "need `stat`");
}

#[test]
fn utimes_past_the_largest_time() {
    assert_located(
        &format!("{HEAD}{STEPS}  {{ op = \"utimes\", path = \"/a\", mtime = 10000000000 }},\n]\n"),
        6,
        "past the largest time",
    );
    assert_located(
        &format!("{HEAD}{STEPS}  {{ op = \"utimes\", path = \"/a\" }},\n]\n"),
        6,
        "`utimes` needs `mtime`",
    );
}

#[test]
fn user_steps_and_chown_are_checked() {
    let one = |step: &str| format!("{HEAD}{STEPS}  {step},\n]\n");
    assert_located(
        &one("{ op = \"read\", path = \"/a\", group = 5 }"),
        6,
        "`group` goes with `user`",
    );
    assert_located(
        &one("{ op = \"chown\", path = \"/a\" }"),
        6,
        "`chown` needs `uid`, `gid` or both",
    );
    assert_located(
        &one("{ op = \"remount\", user = 1000 }"),
        6,
        "`user` is not a field of `remount`",
    );
    assert_located(
        &one("{ op = \"chown\", path = \"/a\", uid = -1 }"),
        6,
        "expected u32",
    );
}
