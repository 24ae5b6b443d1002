//! One generated trace replayed on the model, on the kernel through the harness, and as bare
//! system calls (issue 3, item 8). Run: `cargo bench --bench replay`.
//!
//! The trace comes from the fuzz generator (`layerspec::fuzz::generate`): overlay2, seed 1,
//! the first trace index whose image has at least three layers, with its driver steps
//! (commit, remount, new and removed containers, changes) dropped and cut to [`STEPS`] file
//! steps on the first container, so that every measured step is one the bare side can issue
//! too. Group `replay/overlay2`, each sample one whole trace on a fresh driver:
//!
//! - `model`: the steps on a [`ModelDriver`] with the layers built and the container made
//!   (a clone of a prepared one; the clone is not timed).
//! - `kernel`: the steps through the [`Driver`] trait on the real overlay2 driver that
//!   `layerspec fuzz` opens ([`layerspec::fuzz::open`], backend `kernel`): per step a hop to
//!   the sandbox thread, the copy-up watch, a chroot into the merged root and back, the
//!   system calls, and the outcome turned into a [`layerspec_model::Value`] or errno. Outcomes
//!   only: unlike the fuzz replay, no observation after each step. Opening the driver,
//!   building the layers and mounting the container are not timed, nor is tearing it down.
//! - `bare`: the same steps as the fewest plain system calls (`open`/`pwrite`/`pread`/
//!   `close`, `truncate`, `unlink`, `mkdir`, `rename`, `link`, `symlink`, `readlink`,
//!   `chmod`, `lstat`, `opendir`/`readdir`, `setxattr`, ...), paths and data prepared
//!   beforehand, issued in one go on the sandbox thread of a real overlay2 driver prepared the
//!   same way (same layers, a fresh upper and work directory, the same mount), chrooted once
//!   into its merged root ([`OverlayDriver::run_in_container`]). Only the calls are timed.
//! - `hop`: [`STEPS`] empty round trips to a sandbox thread, the part of `kernel`'s overhead
//!   that is only the thread hop each step makes (it depends on the scheduler: on a busy
//!   machine a wake-up on the other core can wait for a time slice).
//!
//! After the group, a summary on stderr: the median time per trace of each (over every timed
//! trace, warm-up included), the model's steps per second, the ratio kernel/model, and the
//! harness's overhead over the bare calls, (kernel - bare) / bare. The three sides must fail
//! the same number of steps (an errno is an outcome); the summary says so or warns.
//!
//! Without root or without overlayfs in `/proc/filesystems`, `kernel`, `hop` and `bare`
//! each print `replay/overlay2/kernel: skipped: <why>` and the model still runs.

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, SamplingMode};
use criterion::{measurement::WallTime, Throughput};
use layerspec::fuzz::generate::{generate, Trace, FIRST_CONTAINER};
use layerspec::fuzz::replay::{replay, Replay};
use layerspec_model::{Driver, DriverKind, FileOp, ModelDriver, Op, OverlayOptions};
use layerspec_real::{BackingFs, Implementation, OverlayDriver, Sandbox};
use std::cell::RefCell;
use std::ffi::CString;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DRIVER: DriverKind = DriverKind::Overlay2;
const SEED: u64 = 1;
/// File steps measured.
const STEPS: usize = 300;
/// The trace is the first of the run whose image has at least this many layers.
const MIN_LAYERS: usize = 3;

/// The trace: see the crate docs.
fn trace() -> Trace {
    let opts = OverlayOptions::default();
    // Layers are drawn before the steps, so a one-step trace shows the image.
    let index = (0..64)
        .find(|&i| generate(DRIVER, opts, SEED, i, 1).layers.len() >= MIN_LAYERS)
        .expect("a trace with enough layers among the first 64");
    let mut t = generate(DRIVER, opts, SEED, index, 2 * STEPS);
    t.steps.retain(|op| {
        matches!(op, Op::File { container, .. }
            if container.as_deref().is_none_or(|c| c == FIRST_CONTAINER))
    });
    assert!(t.steps.len() >= STEPS, "too few file steps drawn");
    t.steps.truncate(STEPS);
    t
}

/// Builds the trace's layers and its container on `d`.
fn prepare(d: &mut dyn Driver, t: &Trace) -> Result<(), String> {
    for l in &t.layers {
        d.add_layer(l)
            .map_err(|e| format!("layer `{}`: {e}", l.id))?;
    }
    let create = Op::CreateContainer {
        id: t.container.clone(),
        image: t.image(),
    };
    match d.apply(&create) {
        Ok(Ok(_)) => Ok(()),
        other => Err(format!("creating the container: {other:?}")),
    }
}

/// Runs the steps on `d`; returns how many failed with an errno.
fn run_steps(d: &mut dyn Driver, steps: &[Op]) -> usize {
    steps
        .iter()
        .map(|op| match d.apply(op) {
            Ok(o) => usize::from(black_box(o).is_err()),
            Err(e) => panic!("{op:?}: {e}"),
        })
        .sum()
}

// ----- the bare side -----

/// A file step as system-call arguments, prepared before timing.
enum Bare {
    Create(CString, u32),
    Open(CString, libc::c_int, u32),
    Write(CString, u64, Vec<u8>),
    Append(CString, Vec<u8>),
    Truncate(CString, u64),
    Read(CString, u64, Option<u64>),
    Unlink(CString),
    Mkdir(CString, u32),
    Rmdir(CString),
    Rename(CString, CString),
    Link(CString, CString),
    Symlink(CString, CString),
    Readlink(CString),
    Chmod(CString, u32),
    Utimes(CString, [libc::timespec; 2]),
    Stat(CString),
    Readdir(CString),
    Setxattr(CString, CString, Vec<u8>),
    Getxattr(CString, CString),
    Removexattr(CString, CString),
}

fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL in generated paths")
}

fn bare_op(op: &FileOp) -> Bare {
    match op {
        FileOp::Create { path, mode } => Bare::Create(c(path), mode.unwrap_or(0o644)),
        FileOp::Open { path, flags, mode } => Bare::Open(
            c(path),
            layerspec_real::open_bits(*flags),
            mode.unwrap_or(0o644),
        ),
        FileOp::Write { path, offset, data } => Bare::Write(c(path), *offset, data.materialize()),
        FileOp::Append { path, data } => Bare::Append(c(path), data.clone()),
        FileOp::Truncate { path, size } => Bare::Truncate(c(path), *size),
        FileOp::Read { path, offset, len } => Bare::Read(c(path), *offset, *len),
        FileOp::Unlink { path } => Bare::Unlink(c(path)),
        FileOp::Mkdir { path, mode } => Bare::Mkdir(c(path), mode.unwrap_or(0o755)),
        FileOp::Rmdir { path } => Bare::Rmdir(c(path)),
        FileOp::Rename { from, to } => Bare::Rename(c(from), c(to)),
        FileOp::Link { from, to } => Bare::Link(c(from), c(to)),
        FileOp::Symlink { target, path } => Bare::Symlink(c(target), c(path)),
        FileOp::Readlink { path } => Bare::Readlink(c(path)),
        FileOp::Chmod { path, mode } => Bare::Chmod(c(path), *mode),
        FileOp::Chown { .. } | FileOp::AsUser { .. } => {
            unreachable!("fuzz traces have no chown and no other users")
        }
        FileOp::Utimes { path, atime, mtime } => {
            let t = |s: u64| libc::timespec {
                tv_sec: s as libc::time_t,
                tv_nsec: 0,
            };
            Bare::Utimes(c(path), [t(*atime), t(*mtime)])
        }
        FileOp::Stat { path } => Bare::Stat(c(path)),
        FileOp::Readdir { path } => Bare::Readdir(c(path)),
        FileOp::Setxattr { path, name, value } => Bare::Setxattr(c(path), c(name), value.clone()),
        FileOp::Getxattr { path, name } => Bare::Getxattr(c(path), c(name)),
        FileOp::Removexattr { path, name } => Bare::Removexattr(c(path), c(name)),
    }
}

fn bare_ops(t: &Trace) -> Vec<Bare> {
    t.steps
        .iter()
        .map(|op| match op {
            Op::File { op, .. } => bare_op(op),
            other => unreachable!("only file steps are kept: {other:?}"),
        })
        .collect()
}

/// `pwrite` all of `data` at `off`.
fn pwrite_all(fd: libc::c_int, mut data: &[u8], mut off: u64) -> bool {
    while !data.is_empty() {
        // SAFETY: `data` is a live slice of `data.len()` bytes.
        let n = unsafe { libc::pwrite(fd, data.as_ptr().cast(), data.len(), off as libc::off_t) };
        if n <= 0 {
            return false;
        }
        data = &data[n as usize..];
        off += n as u64;
    }
    true
}

/// `write` all of `data` (an `O_APPEND` descriptor).
fn write_all(fd: libc::c_int, mut data: &[u8]) -> bool {
    while !data.is_empty() {
        // SAFETY: as in `pwrite_all`.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n <= 0 {
            return false;
        }
        data = &data[n as usize..];
    }
    true
}

/// `open` + `f(fd)` + `close`; false when the open or `f` fails.
fn with_fd(
    path: &CString,
    flags: libc::c_int,
    mode: u32,
    f: impl FnOnce(libc::c_int) -> bool,
) -> bool {
    // SAFETY: `path` is NUL-terminated; the descriptor is closed below.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) };
    if fd < 0 {
        return false;
    }
    let ok = f(fd);
    // SAFETY: `fd` was opened above and is closed once.
    unsafe { libc::close(fd) };
    ok
}

/// Issues the calls of one step; false when one fails.
fn bare_step(op: &Bare, buf: &mut [u8]) -> bool {
    // SAFETY (every call below): the paths and names are NUL-terminated `CString`s, and the
    // buffers are live slices passed with their own lengths.
    unsafe {
        match op {
            Bare::Create(p, mode) => with_fd(
                p,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                *mode,
                |_| true,
            ),
            Bare::Open(p, flags, mode) => with_fd(p, *flags, *mode, |_| true),
            Bare::Write(p, off, data) => {
                with_fd(p, libc::O_WRONLY, 0, |fd| pwrite_all(fd, data, *off))
            }
            Bare::Append(p, data) => with_fd(p, libc::O_WRONLY | libc::O_APPEND, 0, |fd| {
                write_all(fd, data)
            }),
            Bare::Truncate(p, size) => libc::truncate(p.as_ptr(), *size as libc::off_t) == 0,
            Bare::Read(p, off, len) => with_fd(p, libc::O_RDONLY, 0, |fd| {
                let (mut off, mut left) = (*off, len.unwrap_or(u64::MAX));
                while left > 0 {
                    let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let n = libc::pread(fd, buf.as_mut_ptr().cast(), want, off as libc::off_t);
                    match n {
                        0 => break,
                        n if n < 0 => return false,
                        n => {
                            off += n as u64;
                            left -= n as u64;
                        }
                    }
                }
                true
            }),
            Bare::Unlink(p) => libc::unlink(p.as_ptr()) == 0,
            Bare::Mkdir(p, mode) => libc::mkdir(p.as_ptr(), *mode as libc::mode_t) == 0,
            Bare::Rmdir(p) => libc::rmdir(p.as_ptr()) == 0,
            Bare::Rename(a, b) => libc::rename(a.as_ptr(), b.as_ptr()) == 0,
            Bare::Link(a, b) => libc::link(a.as_ptr(), b.as_ptr()) == 0,
            Bare::Symlink(t, p) => libc::symlink(t.as_ptr(), p.as_ptr()) == 0,
            Bare::Readlink(p) => {
                libc::readlink(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) >= 0
            }
            Bare::Chmod(p, mode) => libc::chmod(p.as_ptr(), *mode as libc::mode_t) == 0,
            Bare::Utimes(p, t) => libc::utimensat(libc::AT_FDCWD, p.as_ptr(), t.as_ptr(), 0) == 0,
            Bare::Stat(p) => {
                let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
                libc::lstat(p.as_ptr(), st.as_mut_ptr()) == 0
            }
            Bare::Readdir(p) => {
                let d = libc::opendir(p.as_ptr());
                if d.is_null() {
                    return false;
                }
                let mut n = 0usize;
                while !libc::readdir(d).is_null() {
                    n += 1;
                }
                black_box(n);
                libc::closedir(d);
                true
            }
            Bare::Setxattr(p, n, v) => {
                libc::setxattr(p.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) == 0
            }
            Bare::Getxattr(p, n) => {
                libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) >= 0
            }
            Bare::Removexattr(p, n) => libc::removexattr(p.as_ptr(), n.as_ptr()) == 0,
        }
    }
}

/// Prepares a real overlay2 driver as `kernel` does, then issues the bare calls chrooted in
/// its container; returns the time of the calls and how many failed.
fn bare_trace(t: &Trace, ops: &Arc<Vec<Bare>>) -> Result<(Duration, usize), String> {
    let mut d = OverlayDriver::new(
        DRIVER,
        Implementation::Kernel,
        t.options,
        BackingFs::tmpfs(),
    )
    .map_err(|e| format!("cannot start a kernel sandbox: {e}"))?;
    prepare(&mut d, t)?;
    let ops = Arc::clone(ops);
    d.run_in_container(None, move || {
        let mut buf = vec![0u8; 1 << 16];
        let start = Instant::now();
        let failed = ops.iter().filter(|op| !bare_step(op, &mut buf)).count();
        (start.elapsed(), failed)
    })
    .map_err(|e| e.to_string())
}

// ----- the benchmark -----

/// Every timed trace of one side.
#[derive(Default)]
struct Times(RefCell<Vec<Duration>>);

impl Times {
    fn push(&self, d: Duration) -> Duration {
        self.0.borrow_mut().push(d);
        d
    }

    fn median(&self) -> Option<Duration> {
        let mut v = self.0.borrow().clone();
        v.sort();
        v.get(v.len() / 2).copied()
    }
}

fn opened_kernel(t: &Trace) -> Result<Box<dyn Driver + Send>, String> {
    let mut d = layerspec::fuzz::open(DRIVER, "kernel", t.options, None)?;
    prepare(d.as_mut(), t)?;
    Ok(d)
}

fn configure(g: &mut BenchmarkGroup<'_, WallTime>) {
    g.throughput(Throughput::Elements(STEPS as u64));
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(3));
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn bench(cr: &mut Criterion) {
    let t = trace();
    let ops = Arc::new(bare_ops(&t));
    eprintln!(
        "replay/overlay2: seed {SEED}, trace {}, {} layers ({} entries), {STEPS} file steps \
         (of the first {} drawn; driver steps dropped)",
        t.index,
        t.layers.len(),
        t.entry_count(),
        2 * STEPS
    );

    let mut base = ModelDriver::new(DRIVER, t.options);
    prepare(&mut base, &t).expect("the model takes the trace");
    let model_failed = run_steps(&mut base.clone(), &t.steps);

    let unavailable = layerspec_real::backends_for(DRIVER)
        .into_iter()
        .find(|b| b.name == "kernel")
        .map_or(Some("no kernel backend".to_string()), |b| b.unavailable);
    // The same trace through the fuzz replay (outcomes and observations after every step):
    // what is timed below must be a trace the kernel and the model agree on.
    let unavailable = unavailable.or_else(|| {
        let mut d = match layerspec::fuzz::open(DRIVER, "kernel", t.options, None) {
            Ok(d) => d,
            Err(e) => return Some(e),
        };
        match replay(&t, d.as_mut()) {
            Replay::Agree { steps, .. } => {
                eprintln!("replay/overlay2: model and kernel agree on all {steps} steps");
            }
            Replay::Diverged(div) => eprintln!(
                "replay/overlay2: warning: model and kernel diverge: {}",
                div.summary()
            ),
            Replay::Invalid(e) => return Some(format!("invalid trace: {e}")),
            Replay::Stopped { why, .. } => return Some(format!("stopped: {why}")),
        }
        None
    });

    let (model, kernel, bare) = (Times::default(), Times::default(), Times::default());
    let hop = Times::default();
    let (kernel_failed, bare_failed) = (RefCell::new(None), RefCell::new(None));
    let mut g = cr.benchmark_group("replay/overlay2");
    configure(&mut g);
    g.bench_function("model", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let mut d = base.clone();
                    let start = Instant::now();
                    for op in &t.steps {
                        let _ = black_box(d.apply(op).expect("the model takes the trace"));
                    }
                    model.push(start.elapsed())
                })
                .sum()
        })
    });
    match &unavailable {
        Some(why) => {
            for name in ["kernel", "hop", "bare"] {
                eprintln!("replay/overlay2/{name}: skipped: {why}");
            }
        }
        None => {
            g.bench_function("kernel", |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            let mut d = opened_kernel(&t).expect("kernel driver prepared");
                            let start = Instant::now();
                            let failed = run_steps(d.as_mut(), &t.steps);
                            let took = kernel.push(start.elapsed());
                            kernel_failed.replace(Some(failed));
                            took
                        })
                        .sum()
                })
            });
            g.bench_function("hop", |b| {
                b.iter_custom(|iters| {
                    let s = Sandbox::new(BackingFs::tmpfs()).expect("a sandbox");
                    (0..iters)
                        .map(|_| {
                            let start = Instant::now();
                            for _ in 0..STEPS {
                                s.run(|_| ());
                            }
                            hop.push(start.elapsed())
                        })
                        .sum()
                })
            });
            g.bench_function("bare", |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            let (took, failed) = bare_trace(&t, &ops).expect("bare trace runs");
                            bare_failed.replace(Some(failed));
                            bare.push(took)
                        })
                        .sum()
                })
            });
        }
    }
    g.finish();

    // ----- summary -----
    eprintln!("replay/overlay2 summary ({STEPS} steps; medians over every timed trace):");
    let model_fails = RefCell::new(Some(model_failed));
    let side = |name: &str, times: &Times, failed: &RefCell<Option<usize>>| {
        let Some(d) = times.median() else {
            match (&unavailable, name) {
                (Some(why), "kernel" | "bare") => eprintln!("  {name:6}  skipped: {why}"),
                _ => eprintln!("  {name:6}  not run (filtered out?)"),
            }
            return None;
        };
        let f = failed.borrow().expect("set with each time");
        eprintln!(
            "  {name:6}  {:9.1} us/trace  {:7.2} us/step  {:9.0} steps/s  ({f} steps fail)",
            us(d),
            us(d) / STEPS as f64,
            STEPS as f64 / d.as_secs_f64()
        );
        if f != model_failed {
            eprintln!("  warning: {name} fails {f} steps, the model {model_failed}");
        }
        Some(d)
    };
    let m = side("model", &model, &model_fails);
    let k = side("kernel", &kernel, &kernel_failed);
    let b = side("bare", &bare, &bare_failed);
    if let (Some(m), Some(k)) = (m, k) {
        eprintln!(
            "  ratio kernel/model: {:.1}x",
            k.as_secs_f64() / m.as_secs_f64()
        );
    }
    if let (Some(k), Some(b)) = (k, b) {
        eprintln!(
            "  harness overhead (kernel - bare) / bare: {:.1}x ({:.1} us/step over the bare calls)",
            (k.as_secs_f64() - b.as_secs_f64()) / b.as_secs_f64(),
            (us(k) - us(b)) / STEPS as f64
        );
    }
    if let Some(h) = hop.median() {
        eprintln!(
            "  of which the thread hop alone (an empty sandbox round trip): {:.1} us/step",
            us(h) / STEPS as f64
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
