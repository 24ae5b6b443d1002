//! Writing a thin-pool trace as a scenario file (docs/SCENARIOS.md, "Thin-pool files"): the
//! `[pool]` table, every step with `expect`/`returns` as the model answers, a comment on
//! the diverging step saying what the other driver did, and a final `check` of the pool's
//! data blocks and each device's mapped blocks as the model has them.

use super::super::emit::toml_str;
use super::super::replay::{Divergence, Phase, NOT_RUN};
use super::generate::ThinTrace;
use super::replay::{describe, model_run};
use layerspec_model::{PoolParams, ThinOp, ThinValue, DEFAULT_METADATA_BLOCKS};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Where a scenario file comes from.
pub struct ThinOrigin<'a> {
    /// The backend compared with the model (`vm`, `model`, ...): it names the file.
    pub backend: &'a str,
    /// The command that finds it again (the file's claim).
    pub command: &'a str,
    /// The divergence, if there is one.
    pub divergence: Option<&'a Divergence>,
}

/// `thinpool-<backend>-seed<S>-trace<N>.toml`.
pub fn file_name(trace: &ThinTrace, backend: &str) -> String {
    format!(
        "thinpool-{backend}-seed{}-trace{}.toml",
        trace.seed, trace.index
    )
}

/// [`file_name`] under `dir`.
pub fn file_path(dir: &Path, trace: &ThinTrace, backend: &str) -> PathBuf {
    dir.join(file_name(trace, backend))
}

/// The `[pool]` table, stating only what differs from the format's defaults (except
/// `data_blocks` and `block_sectors`, always given).
pub fn pool_table(p: &PoolParams) -> String {
    let mut s = String::from("[pool]\n");
    let _ = writeln!(s, "data_blocks = {}", p.data_blocks);
    let _ = writeln!(s, "block_sectors = {}", p.block_size.sectors());
    if p.metadata_blocks != DEFAULT_METADATA_BLOCKS {
        let _ = writeln!(s, "metadata_blocks = {}", p.metadata_blocks);
    }
    if p.low_water_blocks != 0 {
        let _ = writeln!(s, "low_water_blocks = {}", p.low_water_blocks);
    }
    let f = p.features;
    if f.error_if_no_space {
        s.push_str("error_if_no_space = true\n");
    }
    if f.no_discard_passdown {
        s.push_str("discard_passdown = false\n");
    }
    if f.skip_block_zeroing {
        s.push_str("skip_block_zeroing = true\n");
    }
    if f.ignore_discard {
        s.push_str("ignore_discard = true\n");
    }
    s
}

/// The fields of a step, without `expect`/`returns`.
pub fn step_fields(op: &ThinOp) -> Vec<String> {
    let mut f = vec![format!("op = {}", toml_str(op.name()))];
    match *op {
        ThinOp::CreateThin { dev, sectors } => {
            f.push(format!("dev = {dev}"));
            if let Some(s) = sectors {
                f.push(format!("sectors = {}", s.0));
            }
        }
        ThinOp::CreateSnap { dev, origin } => {
            f.push(format!("origin = {origin}"));
            f.push(format!("dev = {dev}"));
        }
        ThinOp::Delete { dev } => f.push(format!("dev = {dev}")),
        ThinOp::SetTransactionId { current, new } => {
            f.push(format!("current = {current}"));
            f.push(format!("new = {new}"));
        }
        ThinOp::WriteBlocks { dev, block, count }
        | ThinOp::ReadBlocks { dev, block, count }
        | ThinOp::DiscardBlocks { dev, block, count } => {
            f.push(format!("dev = {dev}"));
            f.push(format!("block = {block}"));
            f.push(format!("count = {count}"));
        }
        ThinOp::WriteBytes { dev, offset, len } => {
            f.push(format!("dev = {dev}"));
            f.push(format!("offset = {offset}"));
            f.push(format!("len = {len}"));
        }
    }
    f
}

/// `returns = [...]` of a read: a step index as an integer, anything else as a string.
fn returns(v: &ThinValue) -> Option<String> {
    let ThinValue::Blocks(b) = v else {
        return None;
    };
    let items: Vec<String> = b
        .iter()
        .map(|d| {
            let s = d.sources();
            if s.chars().all(|c| c.is_ascii_digit()) {
                s
            } else {
                toml_str(&s)
            }
        })
        .collect();
    Some(format!("returns = [{}]", items.join(", ")))
}

fn comment(out: &mut String, indent: &str, lines: &[String]) {
    for l in lines {
        let _ = writeln!(out, "{indent}# {}", l.replace('\n', " "));
    }
}

/// The scenario file for `trace`, with every step's `expect`/`returns` as the model says
/// and a final `check` of the model's pool.
pub fn scenario_text(trace: &ThinTrace, origin: &ThinOrigin<'_>) -> Result<String, String> {
    let run = model_run(trace)?;
    let mut out = String::new();
    let title = match origin.divergence {
        Some(d) if d.real.as_deref() == Some(NOT_RUN) => format!(
            "fuzz: the thinpool model fails at {} (seed {}, trace {})",
            d.phase, trace.seed, trace.index
        ),
        Some(d) => format!(
            "fuzz: thinpool on {} differs from the model at {} (seed {}, trace {})",
            origin.backend, d.phase, trace.seed, trace.index
        ),
        None => format!(
            "fuzz: generated thin-pool trace (seed {}, trace {})",
            trace.seed, trace.index
        ),
    };
    let _ = writeln!(out, "title = {}", toml_str(&title));
    let _ = writeln!(out, "claims = [{}]", toml_str(origin.command));
    out.push_str("drivers = [\"thinpool\"]\n");
    if let Some(d) = origin.divergence {
        out.push('\n');
        comment(
            &mut out,
            "",
            &[format!("found against {}: {}", origin.backend, d.summary())],
        );
    }
    out.push('\n');
    out.push_str(&pool_table(&trace.params));
    out.push_str("\n[trace]\nsteps = [\n");
    for (i, op) in trace.steps.iter().enumerate() {
        if let Some(d) = origin.divergence.filter(|d| d.phase == Phase::Step(i)) {
            comment(&mut out, "  ", &d.real_lines(origin.backend, 12));
        }
        let mut f = step_fields(op);
        match run.outcomes.get(i) {
            Some(Err(panic)) => comment(&mut out, "  ", &[format!("the model: {panic}")]),
            Some(Ok(Err(e))) => f.push(format!("expect = {}", toml_str(e.name()))),
            Some(Ok(Ok(v))) => f.extend(returns(v)),
            None => {}
        }
        let _ = writeln!(out, "  {{ {} }},  # {i}: {}", f.join(", "), describe(op));
    }
    if let Some(end) = &run.end {
        let _ = writeln!(
            out,
            "  {{ op = \"check\", pool_data_blocks = {} }},",
            end.used_data_blocks
        );
        for (id, d) in &end.devices {
            let _ = writeln!(
                out,
                "  {{ op = \"check\", mapped_blocks = {{ dev = {id}, count = {} }} }},",
                d.mapped_blocks
            );
        }
    }
    out.push_str("]\n");
    Ok(out)
}
