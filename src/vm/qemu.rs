//! Booting the guest: qemu under TCG, the console (`ttyS0`) and the results port (`ttyS1`)
//! each written to a file in the run's directory, watched until the guest powers off, the
//! stream ends, or the time runs out. The qemu process is killed when its guard drops
//! (errors, panics) and, through `PR_SET_PDEATHSIG`, when this thread dies.

use super::protocol::{Stream, BEGIN, END};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How to boot.
#[derive(Clone, Debug)]
pub struct Boot {
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// The kernel image.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: PathBuf,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub cpus: usize,
    /// Where the console and results files go.
    pub dir: PathBuf,
    /// Most time from qemu's start to the end marker.
    pub timeout: Duration,
}

/// How a boot ended.
#[derive(Debug)]
pub struct Ended {
    /// Everything the results port received.
    pub stream: Stream,
    /// The console's text.
    pub console: String,
    /// qemu's own error output.
    pub stderr: String,
    /// From qemu's start to the begin marker.
    pub boot: Option<Duration>,
    /// From qemu's start to the end.
    pub total: Duration,
    /// How: `Exited` (qemu ended by itself), `Done` (end marker seen; qemu stopped if it
    /// did not power off soon after), `TimedOut`.
    pub how: How,
}

/// See [`Ended::how`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum How {
    /// The stream ended with its marker.
    Done,
    /// qemu exited before the end marker, with this status.
    Exited(String),
    /// The timeout passed.
    TimedOut,
    /// qemu could not be started.
    NotStarted(String),
}

/// Kills and reaps qemu when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn read_lossy(p: &Path) -> String {
    std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Boots and watches the guest (polling the two files every 50 ms).
pub fn boot(b: &Boot) -> Ended {
    let console = b.dir.join("console.log");
    let results = b.dir.join("results.log");
    let stderr_path = b.dir.join("qemu.stderr");
    let accel = std::env::var("LAYERSPEC_VM_ACCEL").unwrap_or_else(|_| "tcg".into());
    let mut cmd = Command::new(&b.qemu);
    cmd.args(["-machine", &format!("q35,accel={accel}")])
        .args(["-cpu", if accel == "kvm" { "host" } else { "max" }])
        .args(["-m", &b.memory_mib.to_string()])
        .args(["-smp", &b.cpus.to_string()])
        .args(["-display", "none", "-nodefaults", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", results.display()))
        .arg("-kernel")
        .arg(&b.kernel)
        .arg("-initrd")
        .arg(&b.initrd)
        // panic=-1: a guest panic reboots at once, and -no-reboot turns that into qemu's exit.
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 quiet loglevel=3 rdinit=/init {}",
            std::env::var("LAYERSPEC_VM_APPEND").unwrap_or_default()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    match std::fs::File::create(&stderr_path) {
        Ok(f) => {
            cmd.stderr(f);
        }
        Err(_) => {
            cmd.stderr(Stdio::null());
        }
    }
    layerspec_real::kill_with_parent(&mut cmd);
    let start = Instant::now();
    let ended = |how: How, boot: Option<Duration>| Ended {
        stream: Stream::parse(&read_lossy(&results)),
        console: read_lossy(&console),
        stderr: read_lossy(&stderr_path),
        boot,
        total: start.elapsed(),
        how,
    };
    let mut guard = match cmd.spawn() {
        Ok(c) => Guard(c),
        Err(e) => {
            return ended(
                How::NotStarted(format!("starting {}: {e}", b.qemu.display())),
                None,
            )
        }
    };
    let mut boot_time = None;
    let mut done_at: Option<Instant> = None;
    // The results file as read so far (qemu appends to it).
    let mut seen: Vec<u8> = Vec::new();
    let mut file: Option<std::fs::File> = None;
    loop {
        // Read the exit status first: all output is in the file once qemu has exited.
        let status: Option<ExitStatus> = guard.0.try_wait().ok().flatten();
        if file.is_none() {
            file = std::fs::File::open(&results).ok();
        }
        if let Some(f) = file.as_mut() {
            let from = seen.len().saturating_sub(BEGIN.len().max(END.len()) + 1);
            if f.read_to_end(&mut seen).is_ok() && seen.len() > from {
                let new = String::from_utf8_lossy(&seen[from..]);
                if boot_time.is_none() && new.contains(BEGIN) {
                    boot_time = Some(start.elapsed());
                }
                if done_at.is_none() && new.contains(&format!("\n{END}")) {
                    done_at = Some(Instant::now());
                }
            }
        }
        if let Some(s) = status {
            let how = if done_at.is_some() {
                How::Done
            } else {
                How::Exited(s.to_string())
            };
            return ended(how, boot_time);
        }
        // After the end marker the guest powers off; give it a moment, then stop it.
        if done_at.is_some_and(|t| t.elapsed() > Duration::from_secs(10)) {
            drop(guard);
            return ended(How::Done, boot_time);
        }
        if start.elapsed() > b.timeout {
            drop(guard);
            return ended(How::TimedOut, boot_time);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
