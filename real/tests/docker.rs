//! The `docker` backend for real: a private dockerd runs a layer, a container, steps, a
//! commit and `docker diff`, and nothing of it outlives the driver, a panic or a SIGKILL
//! (then the sweeper kills the daemon the killed run left). Skipped, saying why, where the
//! backend is unavailable (no root, no overlay, no dockerd or static busybox).

use layerspec_model::*;
use layerspec_real::{backends_for, open_backend, sweep, PREFIX};
use std::process::Command;

fn skip_reason() -> Option<String> {
    backends_for(DriverKind::Overlay2)
        .into_iter()
        .find(|b| b.name == "docker")
        .and_then(|b| b.unavailable)
}

fn file(p: &str, d: &str) -> Entry {
    Entry {
        path: p.into(),
        kind: EntryKind::File(Content::Bytes(d.as_bytes().to_vec())),
        mode: None,
        xattrs: Default::default(),
        owner: None,
    }
}

fn fop(container: Option<&str>, op: FileOp) -> Op {
    Op::File {
        container: container.map(String::from),
        op,
    }
}

/// This process's (or `pid`'s) docker sandbox directories.
fn docker_dirs(pid: u32) -> Vec<std::path::PathBuf> {
    let prefix = format!("{PREFIX}{pid}-docker-");
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

fn base(d: &mut (dyn Driver + Send)) {
    d.add_layer(&LayerSpec {
        id: "base".into(),
        parent: None,
        entries: vec![file("/etc/os-release", "layerspec\n")],
    })
    .unwrap();
    d.apply(&Op::CreateContainer {
        id: "c1".into(),
        image: Some("base".into()),
    })
    .unwrap()
    .unwrap();
}

#[test]
fn a_container_on_docker_runs_steps_commits_and_leaves_nothing() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    {
        let mut d = open_backend(DriverKind::Overlay2, "docker", OverlayOptions::default())
            .expect("the probe said docker runs here");
        base(d.as_mut());
        d.apply(&fop(
            None,
            FileOp::Create {
                path: "/new".into(),
                mode: None,
            },
        ))
        .unwrap()
        .unwrap();
        let changes = d.apply(&Op::Changes { container: None }).unwrap().unwrap();
        assert_eq!(
            changes,
            Value::Changes(vec![Change {
                path: "/new".into(),
                kind: ChangeKind::A
            }])
        );
        d.apply(&Op::Commit {
            container: None,
            layer: "snap".into(),
        })
        .unwrap()
        .unwrap();
        d.apply(&Op::CreateContainer {
            id: "c2".into(),
            image: Some("snap".into()),
        })
        .unwrap()
        .unwrap();
        let read = d
            .apply(&fop(
                Some("c2"),
                FileOp::Read {
                    path: "/etc/os-release".into(),
                    offset: 0,
                    len: None,
                },
            ))
            .unwrap();
        assert!(
            matches!(read, Ok(Value::Bytes(ref b)) if b == b"layerspec\n"),
            "{read:?}"
        );
        let obs = d.observe().unwrap();
        // Docker's ids are shown as the model's; each container sits on its init layer.
        for p in [
            "overlay2/base/diff/etc/os-release",
            "overlay2/snap/diff/new",
            "overlay2/c1-init/diff/.dockerenv",
            "overlay2/c2/lower",
        ] {
            assert!(
                obs.storage.contains_key(p),
                "{p} in {:?}",
                obs.storage.keys()
            );
        }
        assert!(obs.merged["c2"].entries.contains_key("/new"));
        assert!(!docker_dirs(std::process::id()).is_empty());
    }
    assert!(docker_dirs(std::process::id()).is_empty());
}

#[test]
fn child_holding_a_docker_driver() {
    if std::env::var_os("LAYERSPEC_KILL_DOCKER_CHILD").is_none() {
        return;
    }
    let mut d = open_backend(DriverKind::Overlay2, "docker", OverlayOptions::default()).unwrap();
    base(d.as_mut());
    println!("READY");
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn sigkill_leaves_no_daemon_after_a_sweep() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_holding_a_docker_driver",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("LAYERSPEC_KILL_DOCKER_CHILD", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    use std::io::BufRead;
    while out.read_line(&mut line).unwrap() > 0 && !line.contains("READY") {}
    assert!(line.contains("READY"), "the child started its daemon");
    let dirs = docker_dirs(pid);
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let daemon: u32 = std::fs::read_to_string(dirs[0].join("dockerd.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // What dockerd started: containerd and the containers' shims (detached: a killed
    // daemon leaves them), found by the directory their command lines name, and the
    // containers' processes under the shims.
    let needle = dirs[0].display().to_string();
    let mut started: Vec<u32> = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if p != daemon && String::from_utf8_lossy(&cmd).contains(&needle) {
            started.push(p);
        }
    }
    assert!(
        !started.is_empty(),
        "dockerd started nothing naming {needle}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // Gone, or a zombie nobody has reaped yet (it holds nothing).
    let gone = |p: u32| {
        std::fs::read_to_string(format!("/proc/{p}/stat")).map_or(true, |s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
    };
    for _ in 0..200 {
        sweep().unwrap();
        if gone(daemon) && started.iter().all(|p| gone(*p)) && docker_dirs(pid).is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(gone(daemon), "dockerd {daemon} outlived its killed run");
    let left: Vec<&u32> = started.iter().filter(|p| !gone(**p)).collect();
    assert!(
        left.is_empty(),
        "processes dockerd started outlived the sweep: {left:?}"
    );
    assert!(docker_dirs(pid).is_empty(), "{:?}", docker_dirs(pid));
}

/// A listing of `dir` (path, type and mode, size of files, symlink target), recursively;
/// empty when it does not exist.
fn listing(dir: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let size = if m.is_file() { m.len() } else { 0 };
            let target = std::fs::read_link(&p).map(|t| t.display().to_string());
            out.push(format!(
                "{} {:o} {size} {}",
                p.display(),
                m.mode(),
                target.unwrap_or_default()
            ));
            if m.is_dir() {
                todo.push(p);
            }
        }
    }
    out.sort();
    out
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// A user's own Docker: a canary dockerd with its own data root and socket, outside any
/// layerspec directory, plus the machine's default paths. A docker run of layerspec (a
/// layer, a container, a write, a commit, the driver dropped) and a sweep leave the
/// canary running, answering on its socket, its data root as it was, and `/var/lib/docker`
/// and `/run/docker.sock` as they were.
#[test]
fn the_machines_own_docker_is_untouched() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let t = std::env::temp_dir().join(format!("canary-docker-{}", std::process::id()));
    std::fs::create_dir_all(&t).unwrap();
    let sock = t.join("sock");
    // In a mount namespace of its own, as a user's daemon would have its own mounts.
    let mut canary = Command::new("unshare")
        .args(["-m", "--propagation", "private", "dockerd"])
        .arg("--data-root")
        .arg(t.join("data"))
        .arg("--exec-root")
        .arg(t.join("exec"))
        .arg("--pidfile")
        .arg(t.join("pid"))
        .arg("-H")
        .arg(format!("unix://{}", sock.display()))
        .args([
            "--storage-driver",
            "overlay2",
            "--iptables=false",
            "--ip6tables=false",
        ])
        .arg("--bridge=none")
        .stdout(std::fs::File::create(t.join("log")).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let cleanup = |canary: &mut std::process::Child| {
        let _ = Command::new("kill").arg(canary.id().to_string()).status();
        for _ in 0..400 {
            if matches!(canary.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = canary.kill();
        let _ = canary.wait();
        // Its containerd, named by the canary's directory.
        let needle = t.display().to_string();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmd).contains(&needle) {
                let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
            }
        }
        let _ = std::fs::remove_dir_all(&t);
    };
    let mut up = false;
    for _ in 0..400 {
        if sock.exists() {
            up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    if !up {
        cleanup(&mut canary);
        panic!("the canary dockerd did not start");
    }
    // Let it settle: its data root is written at start.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let daemon_pid: u32 = std::fs::read_to_string(t.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let canary_before = listing(&t.join("data"));
    let default_root = std::path::Path::new("/var/lib/docker");
    let machine_before = (listing(default_root), default_root.exists());
    let sock_before = std::path::Path::new("/run/docker.sock").exists();
    let run = std::panic::catch_unwind(|| {
        let mut d =
            open_backend(DriverKind::Overlay2, "docker", OverlayOptions::default()).unwrap();
        base(d.as_mut());
        let write = FileOp::Write {
            path: "/etc/os-release".into(),
            offset: 0,
            data: Content::Bytes(b"X".to_vec()),
        };
        d.apply(&fop(None, write)).unwrap().unwrap();
        d.apply(&Op::Commit {
            container: None,
            layer: "k".into(),
        })
        .unwrap()
        .unwrap();
        drop(d);
        sweep().expect("the sweep runs");
    });
    let canary_alive = alive(daemon_pid);
    let canary_after = listing(&t.join("data"));
    let answers = std::os::unix::net::UnixStream::connect(&sock).is_ok();
    let machine_after = (listing(default_root), default_root.exists());
    let sock_after = std::path::Path::new("/run/docker.sock").exists();
    cleanup(&mut canary);
    run.unwrap();
    assert!(canary_alive, "the canary dockerd was killed");
    assert!(answers, "the canary dockerd's socket does not answer");
    assert_eq!(
        canary_before, canary_after,
        "the canary's data root changed"
    );
    assert_eq!(machine_before, machine_after, "/var/lib/docker changed");
    assert_eq!(sock_before, sock_after, "/run/docker.sock appeared or went");
}

/// runc makes `/dev/ptmx` through a `/dev` symlink as the host resolves it: the backend
/// refuses such a start before Docker runs it, and nothing appears at the symlink's target
/// on the host. A failed start (here `/etc` a file) is the errno, the container stopped:
/// file steps refused, `docker diff` and removal still work.
#[test]
fn a_start_through_a_dev_symlink_is_refused_and_a_failed_start_stops_the_container() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let canary = std::env::temp_dir().join(format!("ls-canary-{}", std::process::id()));
    std::fs::create_dir_all(&canary).unwrap();
    {
        let mut d = open_backend(DriverKind::Overlay2, "docker", OverlayOptions::default())
            .expect("the probe said docker runs here");
        d.set_init_layers(true).unwrap();
        base(d.as_mut());
        let step = |op| fop(None, op);
        for op in [
            FileOp::Rmdir {
                path: "/dev/pts".into(),
            },
            FileOp::Rmdir {
                path: "/dev/shm".into(),
            },
            FileOp::Unlink {
                path: "/dev/console".into(),
            },
            FileOp::Rmdir {
                path: "/dev".into(),
            },
            FileOp::Symlink {
                target: canary.display().to_string(),
                path: "/dev".into(),
            },
        ] {
            assert_eq!(d.apply(&step(op)).unwrap(), Ok(Value::Unit));
        }
        let r = d.apply(&Op::Remount { container: None });
        assert!(
            matches!(r, Err(DriverError::Step(StepError::Unsupported(ref w))) if w == DEV_SYMLINK),
            "{r:?}"
        );
        // Still running: the start was not tried. Make it fail on `/etc` instead.
        for path in [
            "/etc/hosts",
            "/etc/hostname",
            "/etc/resolv.conf",
            "/etc/mtab",
            "/etc/os-release",
        ] {
            d.apply(&step(FileOp::Unlink { path: path.into() }))
                .unwrap()
                .unwrap();
        }
        d.apply(&step(FileOp::Unlink {
            path: "/dev".into(),
        }))
        .unwrap()
        .unwrap();
        d.apply(&step(FileOp::Rmdir {
            path: "/etc".into(),
        }))
        .unwrap()
        .unwrap();
        d.apply(&step(FileOp::Create {
            path: "/etc".into(),
            mode: None,
        }))
        .unwrap()
        .unwrap();
        let r = d.apply(&Op::Remount { container: None }).unwrap();
        assert_eq!(r, Err(Errno::ENOTDIR));
        let r = d.apply(&step(FileOp::Stat { path: "/".into() }));
        assert!(
            matches!(r, Err(DriverError::Step(StepError::NotRunning(_)))),
            "{r:?}"
        );
        assert!(matches!(
            d.apply(&Op::Changes { container: None }),
            Ok(Ok(Value::Changes(_)))
        ));
        let obs = d.observe().unwrap();
        assert!(
            !obs.merged.contains_key("c1"),
            "a stopped container has no merged view"
        );
        d.apply(&Op::RemoveContainer { id: "c1".into() })
            .unwrap()
            .unwrap();
    }
    let left: Vec<_> = std::fs::read_dir(&canary).unwrap().flatten().collect();
    std::fs::remove_dir(&canary).unwrap();
    assert!(left.is_empty(), "written at the symlink's target: {left:?}");
}
