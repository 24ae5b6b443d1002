//! The VM tier end to end, through the `layerspec` binary: one boot running the overlay2
//! suites of several topics as backend `vm` on kernel 6.1 (the model paired with them
//! follows 6.1's rules), and the failure paths that need no complete boot (the skip when
//! the tier cannot run, the timeout, a guest kernel panic). When the VM cannot run here (no
//! qemu, no kernel image readable, no busybox-static) each test prints `skipped: <reason>`
//! (run with `--nocapture` to see it) and passes, as the real-backend tests do.

use std::path::PathBuf;
use std::process::{Command, Output};

/// Small scenarios for the failure-path tests, where what runs does not matter.
const PASSING: &[&str] = &[
    "scenarios/containers/empty_image_container.toml",
    "scenarios/errno/enametoolong_path.toml",
];

/// What the overlay2 and overlay runs on the VM cover: whole topics (about 200 runs, about
/// a minute with the debug binary under TCG), the commit/rename ESTALE both kernels give,
/// and the file that pins 6.1's own behaviour. The full suite is `layerspec run --backend
/// vm --driver overlay2,overlay` (README, "The VM tier").
const VM_SUITE: &[&str] = &[
    "scenarios/whiteout",
    "scenarios/opaque",
    "scenarios/rename",
    "scenarios/link",
    "scenarios/options",
    "scenarios/commit",
    "scenarios/remount",
    "scenarios/changes",
    "scenarios/xattr",
    "scenarios/containers",
    "scenarios/symlink",
    "scenarios/errno",
    "scenarios/regressions/overlay_commit_relinks_lower_rename_estale.toml",
    "scenarios/regressions/tmpfs_user_xattrs_before_6_6.toml",
];

fn vm_ready() -> Result<(), String> {
    layerspec_real::vm_kit().map(|_| ())
}

fn layerspec(args: &[&str], env: &[(&str, &str)]) -> (std::process::Child, u32) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_layerspec"));
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("layerspec starts");
    let pid = child.id();
    (child, pid)
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// Nothing of run `pid` is left: no run directory, no qemu.
fn assert_clean(pid: u32) {
    let prefix = format!("layerspec-{pid}-vm-");
    let left: Vec<PathBuf> = std::fs::read_dir(std::env::temp_dir())
        .expect("temp dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let qemus: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&prefix) && c.contains("qemu"))
        .collect();
    assert!(qemus.is_empty(), "qemu still running: {qemus:?}");
}

#[test]
fn overlay_suites_pass_on_the_vm_kernel_with_its_rules() {
    if let Err(why) = vm_ready() {
        eprintln!("vm: skipped: {why}");
        return;
    }
    let mut args = vec![
        "run",
        "--backend",
        "vm",
        "--driver",
        "overlay2,overlay",
        "--json",
    ];
    args.extend(VM_SUITE);
    let (child, pid) = layerspec(&args, &[]);
    let out = child.wait_with_output().expect("layerspec runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines = json_lines(&out);
    assert!(
        lines.len() >= 70,
        "{} runs: {lines:?}\n{stderr}",
        lines.len()
    );
    // `vm: kernel 6.1.0-56-cloud-amd64: boot ...`: the guest's release (Debian 12's is 6.1).
    let release = stderr
        .split("vm: kernel ")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .unwrap_or_else(|| panic!("no kernel reported: {stderr}"));
    let kernel = layerspec_model::KernelVersion::from_release(release).expect("a release");
    let before_6_6 = kernel < layerspec_model::KernelVersion::V6_6;
    let mut passed = 0;
    for l in &lines {
        assert!(l["driver"] == "overlay2" || l["driver"] == "overlay", "{l}");
        assert_eq!(l["backend"], "vm", "{l}");
        let scenario = l["scenario"].as_str().unwrap_or_default();
        let detail = l["detail"].as_str().unwrap_or_default();
        match l["status"].as_str() {
            Some("pass") => passed += 1,
            // Before 6.6 only the files that state 6.6's tmpfs user xattrs are left out,
            // saying so; from 6.6 on, only the one that pins the older behaviour.
            Some("skip") => assert!(
                if before_6_6 {
                    scenario.starts_with("xattr/") && detail.contains("kernel >= 6.6")
                } else {
                    scenario == "regressions/tmpfs_user_xattrs_before_6_6"
                } && detail.contains(&format!("backend vm runs {kernel}")),
                "{l}"
            ),
            _ => panic!("{l}\n{stderr}"),
        }
    }
    // 6.1's EOPNOTSUPP from tmpfs, pinned by a file the host kernel does not run.
    let pinned: Vec<_> = lines
        .iter()
        .filter(|l| l["scenario"] == "regressions/tmpfs_user_xattrs_before_6_6")
        .collect();
    assert_eq!(pinned.len(), 2, "{lines:?}");
    for p in pinned {
        assert_eq!(p["status"], if before_6_6 { "pass" } else { "skip" }, "{p}");
    }
    assert!(passed >= 140, "{passed} passed\n{stderr}");
    assert!(out.status.success(), "{stderr}");
    // The boot and per-run times are reported.
    assert!(stderr.contains(": boot "), "{stderr}");
    eprintln!("{}", stderr.trim());
    assert_clean(pid);
}

#[test]
fn without_a_kernel_the_vm_backend_is_skipped_with_the_reason() {
    let (child, pid) = layerspec(
        &["run", "--backend", "vm", "--json", PASSING[0]],
        &[("LAYERSPEC_VM_KERNEL", "no-such-release")],
    );
    let out = child.wait_with_output().expect("layerspec runs");
    let lines = json_lines(&out);
    assert!(!lines.is_empty());
    for l in &lines {
        assert_eq!(l["backend"], "vm");
        assert_eq!(l["status"], "skip", "{l}");
        let why = l["detail"].as_str().unwrap_or_default();
        // Whatever is missing first is named: here the kernel, unless qemu or busybox is.
        assert!(
            why.contains("LAYERSPEC_VM_KERNEL=no-such-release") || vm_ready().is_err(),
            "{why}"
        );
    }
    assert!(out.status.success());
    assert_clean(pid);
}

#[test]
fn a_timeout_fails_every_run_says_so_and_leaves_nothing() {
    if let Err(why) = vm_ready() {
        eprintln!("vm: skipped: {why}");
        return;
    }
    let (child, pid) = layerspec(
        &[
            "run",
            "--backend",
            "vm",
            "--driver",
            "overlay2",
            "--json",
            PASSING[0],
            PASSING[1],
        ],
        &[("LAYERSPEC_VM_TIMEOUT", "0.5")],
    );
    let out = child.wait_with_output().expect("layerspec runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2, "{lines:?}");
    for l in &lines {
        assert_eq!(l["status"], "fail", "{l}");
        assert!(l["detail"].as_str().unwrap().contains("timed out"), "{l}");
    }
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("did not finish within") && stderr.contains("LAYERSPEC_VM_TIMEOUT"),
        "{stderr}"
    );
    assert_clean(pid);
}

/// A boot that panics at once (a few seconds under TCG).
#[test]
fn a_guest_panic_is_reported() {
    if let Err(why) = vm_ready() {
        eprintln!("vm: skipped: {why}");
        return;
    }
    // No /init to run: the kernel panics ("No working init found").
    let (child, pid) = layerspec(
        &[
            "run",
            "--backend",
            "vm",
            "--driver",
            "overlay2",
            "--json",
            PASSING[0],
        ],
        &[(
            "LAYERSPEC_VM_APPEND",
            "rdinit=/no-such-init init=/no-such-init",
        )],
    );
    let out = child.wait_with_output().expect("layerspec runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines = json_lines(&out);
    assert_eq!(lines[0]["status"], "fail", "{lines:?}");
    assert!(
        lines[0]["detail"]
            .as_str()
            .unwrap()
            .contains("the guest kernel panicked"),
        "{lines:?}"
    );
    assert!(
        stderr.contains("panicked; its console ends with"),
        "{stderr}"
    );
    assert!(stderr.contains("Kernel panic"), "{stderr}");
    assert_clean(pid);
}
