//! The thin-pool model at scale (issue 4, item 6): a thin device of 1 TiB with 64 KiB blocks
//! (16M blocks) on a pool of the same size. Prints the memory per mapped block (counted from
//! the structures: mapping nodes, reference-count tables, the modelled data device), then
//! measures taking a snapshot of the fully mapped device, and a one-block read through a
//! 1,000-deep snapshot chain against the same read through one snapshot, beside a chain of
//! layers searched one by one (how dm-thin does *not* do it, S22).
//! Run: `cargo bench --bench thin`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use layerspec_model::*;
use std::collections::BTreeMap;
use std::hint::black_box;

const TIB_SECTORS: u64 = 1 << 31;
const BLOCKS: u64 = 1 << 24;
const DEPTH: u64 = 1000;

fn pool() -> ThinPool {
    ThinPool::new(PoolParams::new(BLOCKS)).expect("valid parameters")
}

fn apply(p: &mut ThinPool, op: ThinOp) {
    if let Err(e) = p.apply(0, &op) {
        panic!("{op:?}: {e}");
    }
}

/// Device 0: 1 TiB, every block written.
fn full_device() -> ThinPool {
    let mut p = pool();
    apply(
        &mut p,
        ThinOp::CreateThin {
            dev: 0,
            sectors: Some(Sectors(TIB_SECTORS)),
        },
    );
    apply(
        &mut p,
        ThinOp::WriteBlocks {
            dev: 0,
            block: 0,
            count: BLOCKS,
        },
    );
    p
}

fn report_memory(p: &ThinPool, what: &str) {
    let mapped = p
        .mapping(ThinId::new(0).unwrap())
        .map_or(0, |m| m.len())
        .max(1);
    let (mem, counts, data) = p.memory();
    let per = |b: u64| b as f64 / mapped as f64;
    println!(
        "thin/{what}: {mapped} blocks mapped; mapping {} nodes, {} bytes = {:.2} B/block; \
         count tables {:.2} B/block; modelled data device {:.2} B/block; total {:.2} B/block",
        mem.nodes,
        mem.bytes,
        per(mem.bytes),
        per(counts),
        per(data),
        per(mem.bytes + counts + data)
    );
}

/// A chain: device 0 with `base` blocks written, then `depth` snapshots each of the one
/// before, each writing one block of its own.
fn chain(base: u64, depth: u64) -> ThinPool {
    let mut p = pool();
    apply(
        &mut p,
        ThinOp::CreateThin {
            dev: 0,
            sectors: Some(Sectors(TIB_SECTORS)),
        },
    );
    apply(
        &mut p,
        ThinOp::WriteBlocks {
            dev: 0,
            block: 0,
            count: base,
        },
    );
    for i in 1..=depth {
        apply(
            &mut p,
            ThinOp::CreateSnap {
                dev: i,
                origin: i - 1,
            },
        );
        apply(
            &mut p,
            ThinOp::WriteBlocks {
                dev: i,
                block: base + i * 4096,
                count: 1,
            },
        );
    }
    p
}

/// The seed's picture (S22): each layer holds only what it wrote, and a read searches the
/// layers from the top down.
struct LayerChain(Vec<BTreeMap<u64, u64>>);

impl LayerChain {
    fn new(base: u64, depth: u64) -> LayerChain {
        let mut layers = vec![(0..base).map(|b| (b, b)).collect::<BTreeMap<_, _>>()];
        for i in 1..=depth {
            layers.push([(base + i * 4096, base + i)].into_iter().collect());
        }
        LayerChain(layers)
    }

    fn get(&self, v: u64) -> Option<u64> {
        self.0.iter().rev().find_map(|l| l.get(&v).copied())
    }
}

fn bench(c: &mut Criterion) {
    let full = full_device();
    report_memory(&full, "1TiB_fully_mapped");
    let mut sparse = pool();
    apply(
        &mut sparse,
        ThinOp::CreateThin {
            dev: 0,
            sectors: Some(Sectors(TIB_SECTORS)),
        },
    );
    for k in 0..(BLOCKS / 64) {
        apply(
            &mut sparse,
            ThinOp::WriteBlocks {
                dev: 0,
                block: k * 64,
                count: 1,
            },
        );
    }
    report_memory(&sparse, "1TiB_every_64th_block");
    drop(sparse);

    let mut g = c.benchmark_group("thin");
    g.sample_size(50);
    g.bench_function("snapshot_of_1TiB_fully_mapped", |b| {
        b.iter_batched(
            || full.clone(),
            |mut p| {
                apply(&mut p, ThinOp::CreateSnap { dev: 1, origin: 0 });
                p
            },
            BatchSize::LargeInput,
        )
    });
    drop(full);

    // A 1M-block origin (64 GiB written) under 1,000 snapshots, and under one.
    let base = 1 << 20;
    let deep = chain(base, DEPTH);
    let shallow = chain(base, 1);
    let probes: Vec<u64> = (0..1024u64).map(|i| (i * 7919) % base).collect();
    for (name, p, dev) in [
        ("read_depth_1000", &deep, DEPTH),
        ("read_depth_1", &shallow, 1),
    ] {
        let mut p = p.clone();
        g.bench_function(name, |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % probes.len();
                let op = ThinOp::ReadBlocks {
                    dev,
                    block: probes[i],
                    count: 1,
                };
                black_box(p.apply(0, &op))
            })
        });
    }
    for (name, p, dev) in [
        ("lookup_depth_1000", &deep, DEPTH),
        ("lookup_depth_1", &shallow, 1),
    ] {
        let m = p.mapping(ThinId::new(dev).unwrap()).expect("device exists");
        g.bench_function(name, |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % probes.len();
                black_box(m.get(VirtBlock(probes[i])))
            })
        });
    }
    for depth in [1, DEPTH] {
        let l = LayerChain::new(base, depth);
        g.bench_function(format!("naive_layer_chain_lookup_depth_{depth}"), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % probes.len();
                black_box(l.get(probes[i]))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
