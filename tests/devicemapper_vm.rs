//! The real devicemapper graphdriver on the VM's kernel (dm-thin, ext4), through the
//! `layerspec` binary: one boot running a few devicemapper scenarios as backend `vm` —
//! Docker's names and JSON, a container's removal giving its blocks back, a commit chain,
//! a change list — and a scenario whose pool range no pool can meet, which must fail; and
//! dockerd's own devicemapper in the guest (backend `docker`). When the VM cannot run here
//! each test prints `skipped: <reason>` (run with `--nocapture` to see it) and passes, as
//! `tests/vm.rs` does.

use std::path::Path;
use std::process::Command;

const PASSING: &[&str] = &[
    "scenarios/devicemapper/pool_names_and_metadata.toml",
    "scenarios/devicemapper/remove_container_frees_blocks.toml",
    "scenarios/commit/commit_chain.toml",
    "scenarios/changes/delete_image_dir_tree.toml",
];

/// A range below what mkfs alone writes (3664 blocks): no real pool meets it.
const IMPOSSIBLE: &str = r#"title = "a pool range no real pool meets"
drivers = ["devicemapper"]

[[container]]
id = "c1"

[trace]
steps = [{ op = "check", pool_data_blocks = { min = 0, max = 10 } }]
"#;

#[test]
fn devicemapper_scenarios_run_on_the_vm_kernel() {
    if let Err(why) = layerspec_real::vm_kit() {
        eprintln!("vm: skipped: {why}");
        return;
    }
    let dir = std::env::temp_dir().join(format!("layerspec-{}-dmtest", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let impossible = dir.join("impossible.toml");
    std::fs::write(&impossible, IMPOSSIBLE).expect("scenario written");
    let mut args: Vec<&str> = vec![
        "run",
        "--backend",
        "vm",
        "--driver",
        "devicemapper",
        "--json",
    ];
    args.extend(PASSING);
    args.push(impossible.to_str().expect("utf-8 path"));
    let out = Command::new(env!("CARGO_BIN_EXE_layerspec"))
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("layerspec runs");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(lines.len(), PASSING.len() + 1, "{lines:?}\n{stderr}");
    // Lines come in scenario-name order.
    let line = |name: &str| {
        lines
            .iter()
            .find(|l| l["scenario"] == name)
            .unwrap_or_else(|| panic!("no result for {name}: {lines:?}"))
    };
    for file in PASSING {
        let name = Path::new(file)
            .strip_prefix("scenarios")
            .unwrap()
            .with_extension("");
        let l = line(&name.to_string_lossy());
        assert_eq!(l["driver"], "devicemapper");
        assert_eq!(l["backend"], "vm");
        assert_eq!(l["status"], "pass", "{l}\n{stderr}");
    }
    // The model's run fails the check (its pool holds mkfs's 3664 blocks and more), so the
    // row is a failure and the real side is not run: never a pass that was not compared.
    let last = line(&impossible.with_extension("").to_string_lossy());
    assert_eq!(last["status"], "fail", "{last}");
    let detail = last["detail"].as_str().unwrap_or_default();
    let got: u64 = detail
        .rsplit("it is ")
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no figure in {detail}"));
    assert!((3664..3700).contains(&got), "{detail}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    eprintln!("{}", stderr.trim());
}

#[test]
fn the_host_kernel_backend_says_why_it_cannot_run() {
    let facts = layerspec_real::HostFacts::read();
    let kernel = layerspec_real::backends_for(layerspec_model::DriverKind::Devicemapper)
        .into_iter()
        .find(|b| b.name == "kernel")
        .expect("a kernel backend is listed");
    if !facts.device_mapper {
        assert_eq!(
            kernel.unavailable.as_deref(),
            Some("/proc/misc has no device-mapper on this kernel")
        );
    } else if !facts.root {
        assert!(kernel.unavailable.unwrap().contains("root"));
    } else if !facts.thin_pool {
        assert!(kernel.unavailable.unwrap().contains("thin-pool"));
    } else {
        eprintln!(
            "this host runs devicemapper itself: {:?}",
            kernel.unavailable
        );
    }
}

/// Backend `docker` for devicemapper: dockerd's own driver in the VM's guest (issue 10). A
/// scenario passes there: Docker's devices, transaction ids, metadata JSON and dm tables
/// (read from the pool dockerd made) were compared with the model's and agreed.
#[test]
fn dockerd_devicemapper_runs_in_the_vm_guest() {
    let docker = layerspec_real::backends_for(layerspec_model::DriverKind::Devicemapper)
        .into_iter()
        .find(|b| b.name == "docker")
        .expect("a docker backend is listed");
    if let Some(why) = docker.unavailable {
        eprintln!("docker: skipped: {why}");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_layerspec"))
        .args([
            "run",
            "--backend",
            "docker",
            "--driver",
            "devicemapper",
            "--json",
        ])
        .arg("scenarios/init/devicemapper_init_device.toml")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("layerspec runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}\n{stderr}");
    let l = &lines[0];
    assert_eq!(l["scenario"], "init/devicemapper_init_device", "{l}");
    assert_eq!(l["backend"], "docker", "{l}");
    assert_eq!(l["status"], "pass", "{l}\n{stderr}");
    assert!(
        stderr.contains("docker: 1 in"),
        "the guest ran it on dockerd: {stderr}"
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    eprintln!("{}", stderr.trim());
}
