//! The hostile-input suite (issue 9): scenario files are untrusted input to a root process.
//!
//! Every file under `tests/hostile/` is one attack, a template (`@CANARY@`: a canary
//! directory outside every sandbox; `@UP@`: a `../` chain long enough to reach `/` from
//! any sandbox directory) whose first line says what must come of it:
//!
//! - `# expect: invalid`: `layerspec check` exits 2 with a located first line
//!   (`file:line:col: message`), and `layerspec run` exits 2 too;
//! - `# expect: runs`: `check` exits 0 and `run --json --backend model,kernel,fuse` exits 0
//!   or 1 (pass or fail, never a panic, a signal or a hang), with a model row, and no real
//!   row passing where the model's row of the same driver failed.
//!
//! Either way the canary must be unchanged byte for byte (content, modes, owners, links,
//! xattrs, mtime and ctime), and the child's `TMPDIR` empty after it: no sandbox directory
//! left behind, nothing escaped into it. Each file is its own test; `special/*` tests feed
//! `check` and `run` things that are not files (a FIFO, `/dev/zero`, a huge sparse file).
//! The backends that really ran are printed per test and at the end (a machine without
//! overlayfs or fuse-overlayfs shows them as skip rows). Two more tests run every
//! `# expect: runs` file at once on the backends that take a whole run: `vm` (one boot of
//! the VM tier) and `docker` (private dockerds; each file given `init = true`, as Docker
//! makes an `-init` layer for every container), with the same canary and checks.

mod hostile_kit;

use hostile_kit::{
    backends_ran, diff, failed_rows, layerspec, located, passes_over_failed_model, snapshot, Case,
    CHECK_TIMEOUT,
};
use layerspec_model::DriverKind;
use libtest_mimic::{Arguments, Failed, Trial};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// Deadline of a `run`.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Peak memory of a `check` or `run` that refuses a special file.
const SPECIAL_RSS_KIB: u64 = 256 << 10;

/// Per test: the backends that ran.
static RAN: Mutex<BTreeMap<String, Vec<String>>> = Mutex::new(BTreeMap::new());

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Invalid,
    Runs,
}

fn main() {
    let args = Arguments::from_args();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/hostile");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/hostile/ is readable")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut trials = Vec::new();
    for f in files {
        let name = format!(
            "hostile/{}",
            f.file_stem().unwrap_or_default().to_string_lossy()
        );
        let n = name.clone();
        trials.push(Trial::test(name, move || file_trial(&n, &f)));
    }
    trials.push(Trial::test("special/check_fifo", || {
        special("special/check_fifo", "check", Special::Fifo)
    }));
    trials.push(Trial::test("special/run_fifo", || {
        special("special/run_fifo", "run", Special::Fifo)
    }));
    trials.push(Trial::test("special/check_dev_zero", || {
        special("special/check_dev_zero", "check", Special::DevZero)
    }));
    trials.push(Trial::test(
        "special/check_dir_with_toml_symlink_to_dev_zero",
        || {
            special(
                "special/check_dir_with_toml_symlink_to_dev_zero",
                "check",
                Special::DirWithZeroLink,
            )
        },
    ));
    trials.push(Trial::test("special/check_2_gib_sparse_file", || {
        special("special/check_2_gib_sparse_file", "check", Special::Sparse)
    }));
    trials.push(Trial::test("vm/every_runs_file_in_one_boot", || {
        every_runs_file_trial("vm/every_runs_file_in_one_boot", "vm")
    }));
    trials.push(Trial::test("docker/every_runs_file_in_one_run", || {
        every_runs_file_trial("docker/every_runs_file_in_one_run", "docker")
    }));
    let conclusion = libtest_mimic::run(&args, trials);
    let ran = RAN.lock().expect("ran");
    if !ran.is_empty() {
        let all: BTreeSet<&String> = ran.values().flatten().collect();
        let mut by: BTreeMap<String, usize> = BTreeMap::new();
        for v in ran.values() {
            for b in v {
                *by.entry(b.clone()).or_default() += 1;
            }
        }
        eprintln!(
            "hostile: backends that ran: {} ({})",
            if all.is_empty() {
                "none".to_string()
            } else {
                all.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            by.iter()
                .map(|(b, n)| format!("{b} in {n} of {} files", ran.len()))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    conclusion.exit();
}

/// `template` with `init = true` in its `[options]` (Docker's `-init` layer), which the
/// `docker` backend needs to run a file: added to an `[options]` table, or as one before
/// the first table.
fn with_init(template: &str) -> String {
    let mut out = String::new();
    let mut done = false;
    for line in template.lines() {
        if !done && line.trim() == "[options]" {
            out.push_str(line);
            out.push_str("\ninit = true\n");
            done = true;
            continue;
        }
        if !done && line.trim_start().starts_with('[') && !line.contains("[options") {
            out.push_str("[options]\ninit = true\n\n");
            done = true;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !done {
        out.push_str("\n[options]\ninit = true\n");
    }
    out
}

/// Every `# expect: runs` file in one `run` on `backend`, against one canary on the host:
/// exit 0 or 1, no real row passing over a failed model row, the canary unchanged, nothing
/// left in the child's TMPDIR. `vm` is one boot of the VM tier (the guest kernel's overlay
/// drivers and the real devicemapper graphdriver on dm-thin); `docker` one private dockerd
/// per driver (issue 10). Where the backend cannot run here, the rows are skips and the
/// test says so.
fn every_runs_file_trial(name: &str, backend: &str) -> Result<(), Failed> {
    let case = Case::new();
    let before = snapshot(&case.canary);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/hostile");
    let mut n = 0;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    for f in files {
        let template = std::fs::read_to_string(&f).map_err(|e| e.to_string())?;
        if expectation(&template)? == Expect::Runs {
            // Docker runs only files stating its containers: each gets `init = true`.
            let template = if backend == "docker" {
                with_init(&template)
            } else {
                template
            };
            case.write_scenario(
                &f.file_name().unwrap_or_default().to_string_lossy(),
                &template,
            );
            n += 1;
        }
    }
    let scenarios = case.work.join("case");
    let mut args = vec![
        OsStr::new("run"),
        OsStr::new("--json"),
        OsStr::new("--backend"),
        OsStr::new(backend),
    ];
    if backend == "docker" && layerspec_real::docker_in_vm(DriverKind::Devicemapper) {
        // dockerd's devicemapper runs in the VM's guest, which cannot reach the host's
        // canary (the `vm` trial covers that boot); the host's own dockerd runs the rest.
        args.extend([OsStr::new("--driver"), OsStr::new("overlay2,overlay")]);
    }
    args.push(scenarios.as_os_str());
    let run =
        hostile_kit::layerspec_limited(&args, &case.child_tmp(), Duration::from_secs(1200), false);
    let mut problems = Vec::new();
    if !run.code.is_some_and(|c| c == 0 || c == 1) {
        problems.push(format!(
            "run --backend {backend}: expected exit 0 or 1, got {} after {:.0} s: {}",
            run.describe(),
            run.elapsed.as_secs_f64(),
            run.stderr_tail()
        ));
    }
    problems.extend(passes_over_failed_model(&run.stdout));
    problems.extend(changed(&case, &before, &format!("after the {backend} run")));
    if !run.timed_out {
        problems.extend(case.tmp_leftovers());
    }
    let (ran, _) = backends_ran(&run.stdout);
    if ran.iter().any(|b| b == backend) {
        let quoted = format!("\"{backend}\"");
        let rows = run.stdout.lines().filter(|l| l.contains(&quoted)).count();
        eprintln!(
            "{name}: {n} files, {rows} {backend} rows, {} failed, in {:.0} s",
            failed_rows(&run.stdout)
                .iter()
                .filter(|r| r.contains(backend))
                .count(),
            run.elapsed.as_secs_f64()
        );
    } else {
        eprintln!(
            "{name}: skipped, backend {backend} did not run here: {}",
            run.stderr_tail()
        );
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n").into())
    }
}

fn expectation(text: &str) -> Result<Expect, String> {
    match text.lines().next().map(str::trim) {
        Some("# expect: invalid") => Ok(Expect::Invalid),
        Some("# expect: runs") => Ok(Expect::Runs),
        other => Err(format!(
            "first line must be `# expect: invalid` or `# expect: runs`, not {other:?}"
        )),
    }
}

fn file_trial(name: &str, file: &Path) -> Result<(), Failed> {
    let template = std::fs::read_to_string(file).map_err(|e| format!("{e}"))?;
    let expect = expectation(&template)?;
    if !template.lines().any(|l| l.starts_with("title = ")) {
        return Err("a hostile file says its attack in `title`".into());
    }
    let case = Case::new();
    let before = snapshot(&case.canary);
    let path = case.write_scenario(
        &file.file_name().unwrap_or_default().to_string_lossy(),
        &template,
    );
    let mut problems = Vec::new();

    let check = layerspec(
        &[OsStr::new("check"), path.as_os_str()],
        &case.child_tmp(),
        CHECK_TIMEOUT,
    );
    let first = check.stderr.lines().next().unwrap_or("").to_string();
    match expect {
        Expect::Invalid => {
            if check.code != Some(2) {
                problems.push(format!(
                    "check: expected exit 2 (invalid), got {}{}",
                    check.describe(),
                    if check.code == Some(0) {
                        " (accepted)".to_string()
                    } else {
                        format!(": {}", check.stderr_tail())
                    }
                ));
            } else if !located(&first, &path) {
                problems.push(format!(
                    "check: exit 2, but the first line is not `file:line:col: message`: {first:?}"
                ));
            }
        }
        Expect::Runs => {
            if check.code != Some(0) {
                problems.push(format!(
                    "check: expected exit 0 (valid), got {}: {}",
                    check.describe(),
                    check.stderr_tail()
                ));
            }
        }
    }
    problems.extend(changed(&case, &before, "after check"));

    // `run` on every file: on an invalid one it must refuse (exit 2) before doing anything.
    let run = layerspec(
        &[
            OsStr::new("run"),
            OsStr::new("--json"),
            OsStr::new("--backend"),
            OsStr::new("model,kernel,fuse"),
            path.as_os_str(),
        ],
        &case.child_tmp(),
        RUN_TIMEOUT,
    );
    let (ran, bad) = backends_ran(&run.stdout);
    let ok_codes: &[i32] = match expect {
        Expect::Invalid => &[2],
        Expect::Runs => &[0, 1],
    };
    if !run.code.is_some_and(|c| ok_codes.contains(&c)) {
        problems.push(format!(
            "run: expected exit {}, got {} after {:.1} s: {}",
            ok_codes
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(" or "),
            run.describe(),
            run.elapsed.as_secs_f64(),
            run.stderr_tail()
        ));
    }
    if expect == Expect::Runs && run.code.is_some_and(|c| c < 2) {
        if !bad.is_empty() {
            problems.push(format!(
                "run --json: lines that are not result rows: {:?}",
                bad.iter().take(3).collect::<Vec<_>>()
            ));
        }
        if !ran.iter().any(|b| b == "model") {
            problems.push("run --json: no model row".to_string());
        }
        problems.extend(
            passes_over_failed_model(&run.stdout)
                .into_iter()
                .map(|p| format!("run --json: {p}")),
        );
    }
    problems.extend(changed(&case, &before, "after run"));
    // A run killed at the deadline leaves its sandbox directory (the next start sweeps it):
    // only a run that ended by itself must leave nothing.
    if !run.timed_out {
        problems.extend(case.tmp_leftovers());
    }
    let status = if run.code == Some(1) {
        " (a row failed)"
    } else {
        ""
    };
    println!(
        "{name}: check {}, run {}{status} in {:.1} s (peak {} MiB); backends that ran: {}",
        check.describe(),
        run.describe(),
        run.elapsed.as_secs_f64(),
        run.peak_rss_kib >> 10,
        if ran.is_empty() {
            "none".to_string()
        } else {
            ran.join(",")
        }
    );
    for row in failed_rows(&run.stdout) {
        println!("  {name}: failed row {row}");
    }
    RAN.lock().expect("ran").insert(name.to_string(), ran);
    drop(case);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{}:\n    {}", file.display(), problems.join("\n    ")).into())
    }
}

/// The canary's differences from `before`, prefixed with `when`, the first dozen.
fn changed(case: &Case, before: &hostile_kit::Snapshot, when: &str) -> Vec<String> {
    let d = diff(before, &snapshot(&case.canary));
    if d.is_empty() {
        return Vec::new();
    }
    let mut out = vec![format!(
        "the canary changed {when} ({} differences):",
        d.len()
    )];
    out.extend(d.iter().take(12).map(|l| format!("  {l}")));
    out
}

enum Special {
    /// A FIFO named `case.toml` (nobody writes to it: a reader blocks forever).
    Fifo,
    /// `/dev/zero` itself.
    DevZero,
    /// A directory holding `zero.toml -> /dev/zero`.
    DirWithZeroLink,
    /// A 2 GiB sparse `case.toml` (zeros: read whole, it is one string of NULs).
    Sparse,
}

/// `check`/`run` on something that is not a small regular file: an immediate located
/// error, exit 2, well within the deadline; the canary untouched.
fn special(name: &str, cmd: &str, what: Special) -> Result<(), Failed> {
    let case = Case::new();
    let before = snapshot(&case.canary);
    let dir = case.work.join("case");
    let (arg, file): (PathBuf, PathBuf) = match what {
        Special::Fifo => {
            let p = dir.join("case.toml");
            let c = std::ffi::CString::new(p.display().to_string()).expect("no NUL");
            // SAFETY: a valid NUL-terminated path.
            if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
                return Err(format!("mkfifo: {}", std::io::Error::last_os_error()).into());
            }
            (p.clone(), p)
        }
        Special::DevZero => (PathBuf::from("/dev/zero"), PathBuf::from("/dev/zero")),
        Special::DirWithZeroLink => {
            let p = dir.join("zero.toml");
            std::os::unix::fs::symlink("/dev/zero", &p).map_err(|e| e.to_string())?;
            (dir.clone(), p)
        }
        Special::Sparse => {
            let p = dir.join("case.toml");
            std::fs::File::create(&p)
                .and_then(|f| f.set_len(2 << 30))
                .map_err(|e| e.to_string())?;
            (p.clone(), p)
        }
    };
    let deadline = Duration::from_secs(20);
    let r = if cmd == "check" {
        layerspec(
            &[OsStr::new("check"), arg.as_os_str()],
            &case.child_tmp(),
            deadline,
        )
    } else {
        layerspec(
            &[
                OsStr::new("run"),
                OsStr::new("--json"),
                OsStr::new("--backend"),
                OsStr::new("model,kernel,fuse"),
                arg.as_os_str(),
            ],
            &case.child_tmp(),
            deadline,
        )
    };
    let mut problems = Vec::new();
    let first = r.stderr.lines().next().unwrap_or("").to_string();
    if r.code != Some(2) {
        problems.push(format!(
            "{cmd}: expected exit 2 at once, got {} after {:.1} s: {}",
            r.describe(),
            r.elapsed.as_secs_f64(),
            r.stderr_tail()
        ));
    } else if !located(&first, &file) {
        problems.push(format!(
            "{cmd}: exit 2, but the first line is not `{}:line:col: message`: {first:?}",
            file.display()
        ));
    }
    // Refusing is immediate: not after reading gigabytes (the child's address space is
    // capped at 4 GiB, so an unbounded read fails there instead of exhausting the machine).
    if r.peak_rss_kib > SPECIAL_RSS_KIB {
        problems.push(format!(
            "{cmd}: peak memory {} MiB (at most {} MiB to refuse a file): it read what it \
             should have refused",
            r.peak_rss_kib >> 10,
            SPECIAL_RSS_KIB >> 10
        ));
    }
    problems.extend(changed(&case, &before, &format!("after {cmd}")));
    if !r.timed_out {
        problems.extend(case.tmp_leftovers());
    }
    println!(
        "{name}: {cmd} {} in {:.1} s, peak {} MiB",
        r.describe(),
        r.elapsed.as_secs_f64(),
        r.peak_rss_kib >> 10
    );
    drop(case);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n    ").into())
    }
}
