//! Model throughput: steps per second replaying a generated trace on a 128-layer image of
//! 10,000 files (issue 2, item 9). Run: `cargo bench --bench model`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use layerspec_model::*;

const LAYERS: usize = 128;
const FILES: usize = 10_000;
const STEPS: usize = 10_000;

/// splitmix64: a fixed, seeded sequence, so every run replays the same trace.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn file_path(i: usize) -> String {
    format!("/usr/share/d{:02}/s{:02}/f{i:05}", i % 50, (i / 50) % 20)
}

fn image() -> ModelDriver {
    let mut d = ModelDriver::new(DriverKind::Overlay2, OverlayOptions::default());
    let per_layer = FILES / LAYERS + 1;
    for l in 0..LAYERS {
        let entries = (l * per_layer..((l + 1) * per_layer).min(FILES))
            .map(|i| Entry {
                path: file_path(i),
                kind: EntryKind::File(Content::Bytes(format!("file {i}\n").into_bytes())),
                mode: None,
                xattrs: Default::default(),
                owner: None,
            })
            .collect();
        d.add_layer(&LayerSpec {
            id: format!("l{l:03}"),
            parent: (l > 0).then(|| format!("l{:03}", l - 1)),
            entries,
        })
        .unwrap();
    }
    d.apply(&Op::CreateContainer {
        id: "c".into(),
        image: Some(format!("l{:03}", LAYERS - 1)),
    })
    .unwrap()
    .unwrap();
    d
}

fn trace() -> Vec<Op> {
    let mut rng = Rng(1);
    (0..STEPS)
        .map(|_| {
            let path = file_path(rng.below(FILES));
            let op = match rng.below(10) {
                0..=3 => FileOp::Stat { path },
                4..=5 => FileOp::Read {
                    path,
                    offset: 0,
                    len: None,
                },
                6 => FileOp::Write {
                    path,
                    offset: 2,
                    data: Content::Bytes(b"xy".to_vec()),
                },
                7 => FileOp::Chmod { path, mode: 0o600 },
                8 => FileOp::Unlink { path },
                _ => FileOp::Readdir {
                    path: layerspec_model_parent(&path),
                },
            };
            Op::File {
                container: None,
                op,
            }
        })
        .collect()
}

fn layerspec_model_parent(p: &str) -> String {
    p[..p.rfind('/').unwrap()].to_string()
}

fn bench(c: &mut Criterion) {
    let base = image();
    let ops = trace();
    let mut g = c.benchmark_group("model");
    g.throughput(Throughput::Elements(STEPS as u64));
    g.sample_size(20);
    g.bench_function("replay_128_layers_10k_files", |b| {
        b.iter_batched(
            || base.clone(),
            |mut d| {
                for op in &ops {
                    let _ = d.apply(op).unwrap();
                }
                d
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
