//! A private `dockerd` per driver: data root and exec root on the sandbox's backing
//! filesystem (inside its mount namespace), the API socket and the daemon's log and pid in
//! the sandbox's marked host directory (`layerspec-<pid>-docker-<n>`).
//!
//! The daemon is started from the sandbox thread, so it and the containerd it manages live
//! in the sandbox's private mount namespace: their mounts (the containers' merged roots,
//! runc's) die with it. It gets SIGKILL when that thread dies (`PR_SET_PDEATHSIG`); after
//! a SIGKILL of layerspec itself, [`crate::sweep`] kills a daemon whose directory's lock
//! is free (its pid is in [`PID_FILE`]).
//!
//! One daemon per driver instance: starting one takes about 1.1 s here and stopping it
//! (SIGTERM, wait) about 1.0 s, against some 0.3 s for a scenario's images and
//! containers; a daemon shared by a process would save those 2 s per scenario but carry
//! images, layer ids and the driver root from scenario to scenario, and the observation
//! is the whole driver root.

use crate::sandbox::{BackingFs, Sandbox};
use bollard::{ClientVersion, Docker};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The file in the sandbox's host directory that holds the daemon's pid.
pub const PID_FILE: &str = "dockerd.pid";

/// Engine API 1.41: Docker 20.10's (bollard's default is newer).
const API: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// A running daemon and the client talking to it.
pub struct Daemon {
    /// The sandbox whose namespace the daemon lives in (dropped last).
    pub sandbox: Sandbox,
    /// The API client.
    pub client: Docker,
    /// The runtime the client's futures run on.
    pub rt: tokio::runtime::Runtime,
    /// The daemon's data root, as the sandbox thread sees it.
    pub data_root: PathBuf,
    child: Arc<Mutex<Option<Child>>>,
}

impl Daemon {
    /// Starts `dockerd --storage-driver <driver>` on `backing` and waits until it answers.
    pub fn start(driver: &str, backing: BackingFs) -> io::Result<Daemon> {
        let sandbox = Sandbox::new_tagged(backing, "docker-")?;
        let host = sandbox.host_dir().to_path_buf();
        let socket = host.join("docker.sock");
        let child: Arc<Mutex<Option<Child>>> = Arc::new(Mutex::new(None));
        let (driver_s, host2, sock2, child2) = (
            driver.to_string(),
            host.clone(),
            socket.clone(),
            Arc::clone(&child),
        );
        let data_root = sandbox.run(move |inside| -> io::Result<PathBuf> {
            let data = inside.root.join("data");
            let exec = inside.root.join("exec");
            std::fs::create_dir(&data)?;
            std::fs::create_dir(&exec)?;
            let log = std::fs::File::create(host2.join("dockerd.log"))?;
            let mut cmd =
                Command::new(crate::probe::dockerd().ok_or_else(|| {
                    io::Error::other("dockerd is not installed (Debian: docker.io)")
                })?);
            cmd.arg("--data-root")
                .arg(&data)
                .arg("--exec-root")
                .arg(&exec)
                .arg("-H")
                .arg(format!("unix://{}", sock2.display()))
                .arg("--pidfile")
                .arg(exec.join("docker.pid"))
                .args(["--storage-driver", &driver_s])
                .args(storage_opts(&driver_s))
                .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
                .args(["--ip-masq=false", "--userland-proxy=false"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            crate::kill_with_parent(&mut cmd);
            inside.log.note(format!("{cmd:?}"));
            let c = cmd.spawn()?;
            std::fs::write(host2.join(PID_FILE), format!("{}\n", c.id()))?;
            *child2.lock().expect("child") = Some(c);
            Ok(data)
        })?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut daemon = None;
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < Duration::from_secs(30) {
            if let Some(status) = child
                .lock()
                .expect("child")
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                last = format!("dockerd exited ({status}): {}", log_tail(&host));
                break;
            }
            if socket.exists() {
                match Docker::connect_with_unix(&socket.display().to_string(), 120, &API) {
                    Ok(d) => match rt.block_on(d.ping()) {
                        Ok(_) => {
                            daemon = Some(d);
                            break;
                        }
                        Err(e) => last = e.to_string(),
                    },
                    Err(e) => last = e.to_string(),
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let d = Daemon {
            sandbox,
            client: match daemon {
                Some(d) => d,
                None => {
                    let err = io::Error::other(format!(
                        "dockerd did not answer on {}: {last}; log: {}",
                        socket.display(),
                        log_tail(&host)
                    ));
                    stop(&child);
                    return Err(err);
                }
            },
            rt,
            data_root,
            child,
        };
        Ok(d)
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child
            .lock()
            .expect("child")
            .as_ref()
            .map(std::process::Child::id)
    }

    /// The daemon's log, its last lines.
    pub fn log_tail(&self) -> String {
        log_tail(self.sandbox.host_dir())
    }
}

/// The driver's `--storage-opt`s. devicemapper (loop-lvm, Docker's defaults otherwise):
/// `dm.override_udev_sync_check`, which Docker documents for setups without udev (the
/// guest has none; libdevmapper then creates the device nodes itself), and `dm.fs=ext4`,
/// the filesystem the model states: without it dockerd takes xfs wherever `mkfs.xfs`
/// exists and xfs is loaded (moby `determineDefaultFS`; seen in the guest once a scenario
/// on xfs had loaded it: `BaseDeviceFilesystem` `xfs`).
fn storage_opts(driver: &str) -> Vec<&'static str> {
    match driver {
        "devicemapper" => vec![
            "--storage-opt",
            "dm.override_udev_sync_check=true",
            "--storage-opt",
            "dm.fs=ext4",
        ],
        _ => Vec::new(),
    }
}

fn log_tail(host: &Path) -> String {
    let log = std::fs::read_to_string(host.join("dockerd.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

/// SIGTERM, then SIGKILL after 10 s; waits for the daemon.
fn stop(child: &Mutex<Option<Child>>) {
    let Some(mut c) = child.lock().expect("child").take() else {
        return;
    };
    let _ = crate::sys::kill(c.id(), libc::SIGTERM);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        if c.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
}

impl Drop for Daemon {
    fn drop(&mut self) {
        stop(&self.child);
        let _ = std::fs::remove_file(self.sandbox.host_dir().join(PID_FILE));
    }
}
