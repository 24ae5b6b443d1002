//! The thin-pool parts of the scenario parser: the `[pool]` table, the thin-pool steps and
//! their `check` keys, and what `read_blocks` returns (docs/SCENARIOS.md, "Thin-pool files").

use super::{Ctx, ParseError, PoolDoc, StepDoc};
use crate::scenario::{Expected, PerDriver, ThinStep};
use layerspec_model::{
    valid_sources, BlockSize, Features, PoolParams, Sectors, ThinCheck, ThinOp,
    DEFAULT_METADATA_BLOCKS,
};
use toml::Spanned;

/// The ops a thin-pool scenario runs besides `check`.
pub(super) const THIN_OPS: &[&str] = &[
    "create_thin",
    "snapshot",
    "delete_thin",
    "set_transaction_id",
    "write_blocks",
    "write_bytes",
    "read_blocks",
    "discard_blocks",
];

/// Whether `op` is a thin-pool step.
pub(super) fn is_thin_op(op: &str) -> bool {
    THIN_OPS.contains(&op)
}

/// The `[pool]` table as pool parameters, each bad value located at its key.
pub(super) fn parse_pool(
    ctx: &Ctx,
    doc: Option<PoolDoc>,
) -> Result<Option<PoolParams>, ParseError> {
    let Some(p) = doc else {
        return Ok(None);
    };
    let block_size = match &p.block_sectors {
        None => BlockSize::DEFAULT,
        Some(b) => BlockSize::new(*b.get_ref())
            .map_err(|e| ctx.err(b.span(), format!("[pool] block_sectors: {e}")))?,
    };
    let flag = |f: &Option<bool>| f.unwrap_or(false);
    let params = PoolParams {
        data_blocks: *p.data_blocks.get_ref(),
        block_size,
        metadata_blocks: p
            .metadata_blocks
            .as_ref()
            .map_or(DEFAULT_METADATA_BLOCKS, |m| *m.get_ref()),
        low_water_blocks: p.low_water_blocks.unwrap_or(0),
        features: Features {
            skip_block_zeroing: flag(&p.skip_block_zeroing),
            ignore_discard: flag(&p.ignore_discard),
            no_discard_passdown: !p.discard_passdown.unwrap_or(true),
            error_if_no_space: flag(&p.error_if_no_space),
        },
    };
    if let Err(e) = params.validate() {
        let span = match e.field {
            "metadata_blocks" => p.metadata_blocks.as_ref().map(Spanned::span),
            _ => None,
        }
        .unwrap_or_else(|| p.data_blocks.span());
        return Err(ctx.err(span, format!("[pool] {e}")));
    }
    Ok(Some(params))
}

/// A thin-pool step's op. `at` locates an error at the step.
pub(super) fn thin_op(
    opname: &str,
    d: &StepDoc,
    pool: &PoolParams,
    at: &dyn Fn(String) -> ParseError,
) -> Result<ThinStep, ParseError> {
    let need =
        |v: Option<u64>, what: &str| v.ok_or_else(|| at(format!("`{opname}` needs `{what}`")));
    let positive = |v: Option<u64>, what: &str| match need(v, what)? {
        0 => Err(at(format!("`{opname}`: `{what}` must be at least 1"))),
        n => Ok(n),
    };
    let op = match opname {
        "create_thin" => {
            let sectors = match d.sectors {
                None => None,
                Some(s) if s > 0 && s.is_multiple_of(pool.block_size.sectors()) => Some(Sectors(s)),
                Some(s) => {
                    return Err(at(format!(
                        "`sectors` = {s}: a thin device here is a positive whole number of \
                         pool blocks ({} sectors each)",
                        pool.block_size.sectors()
                    )))
                }
            };
            ThinOp::CreateThin {
                dev: need(d.dev, "dev")?,
                sectors,
            }
        }
        "snapshot" => ThinOp::CreateSnap {
            dev: need(d.dev, "dev")?,
            origin: need(d.origin, "origin")?,
        },
        "delete_thin" => ThinOp::Delete {
            dev: need(d.dev, "dev")?,
        },
        "set_transaction_id" => ThinOp::SetTransactionId {
            current: need(d.current, "current")?,
            new: need(d.new, "new")?,
        },
        "write_blocks" => ThinOp::WriteBlocks {
            dev: need(d.dev, "dev")?,
            block: need(d.block, "block")?,
            count: positive(d.count, "count")?,
        },
        "read_blocks" => ThinOp::ReadBlocks {
            dev: need(d.dev, "dev")?,
            block: need(d.block, "block")?,
            count: positive(d.count, "count")?,
        },
        "discard_blocks" => ThinOp::DiscardBlocks {
            dev: need(d.dev, "dev")?,
            block: need(d.block, "block")?,
            count: positive(d.count, "count")?,
        },
        "write_bytes" => ThinOp::WriteBytes {
            dev: need(d.dev, "dev")?,
            offset: need(d.offset, "offset")?,
            len: positive(d.len, "len")?,
        },
        other => return Err(at(format!("`{other}` is not a thin-pool step"))),
    };
    Ok(ThinStep::Op(op))
}

/// The assertions of a `check` step in a thin-pool scenario.
pub(super) fn thin_check(
    d: &StepDoc,
    at: &dyn Fn(String) -> ParseError,
) -> Result<ThinStep, ParseError> {
    let container = d.container.is_some().then_some("container");
    if let Some(key) = d.file_check_key().or(container) {
        return Err(at(format!(
            "`{key}` is a file-level check; a thin-pool check takes pool_data_blocks, \
             mapped_blocks, shared_blocks"
        )));
    }
    let mut checks = Vec::new();
    if let Some(v) = &d.pool_data_blocks {
        match v.get_ref() {
            toml::Value::Integer(n) if *n >= 0 => checks.push(ThinCheck::PoolDataBlocks(*n as u64)),
            _ => {
                return Err(at(
                    "`pool_data_blocks` of a thin-pool check is an exact block count: block-level \
                     steps decide every block"
                        .into(),
                ))
            }
        }
    }
    if let Some(v) = &d.mapped_blocks {
        let [dev, count] = table_ints(v, "mapped_blocks", &["dev", "count"]).map_err(at)?;
        checks.push(ThinCheck::MappedBlocks { dev, count });
    }
    if let Some(v) = &d.shared_blocks {
        let [a, b, count] = table_ints(v, "shared_blocks", &["a", "b", "count"]).map_err(at)?;
        checks.push(ThinCheck::SharedBlocks { a, b, count });
    }
    if checks.is_empty() {
        return Err(at(
            "`check` needs at least one of pool_data_blocks, mapped_blocks, shared_blocks".into(),
        ));
    }
    Ok(ThinStep::Check(checks))
}

fn table_ints<const N: usize>(
    v: &toml::Value,
    key: &str,
    keys: &[&str; N],
) -> Result<[u64; N], String> {
    let shape = || {
        format!(
            "`{key}` is a table {{ {} }} of non-negative integers",
            keys.join(", ")
        )
    };
    let toml::Value::Table(t) = v else {
        return Err(shape());
    };
    if let Some(bad) = t.keys().find(|k| !keys.contains(&k.as_str())) {
        return Err(format!("`{key}` has no key `{bad}`: {}", shape()));
    }
    let mut out = [0u64; N];
    for (slot, k) in out.iter_mut().zip(keys) {
        match t.get(*k) {
            Some(toml::Value::Integer(i)) if *i >= 0 => *slot = *i as u64,
            Some(_) => return Err(shape()),
            None => return Err(format!("`{key}` needs `{k}`: {}", shape())),
        }
    }
    Ok(out)
}

/// What `read_blocks` returns: per block a step index, `"zero"`, or several joined by `+`
/// (`"2+5"`: step 2's block with step 5's bytes written into it).
pub(super) fn expected_blocks(a: &[toml::Value]) -> Result<Expected, String> {
    let shape = "`read_blocks` returns a list with, per block, the index of the step whose \
                 write it holds or \"zero\" (several as \"zero+3\", \"2+5\")";
    a.iter()
        .map(|x| match x {
            toml::Value::Integer(i) if *i >= 0 => Ok(i.to_string()),
            toml::Value::String(s) if valid_sources(s) => Ok(s.clone()),
            _ => Err(shape.to_string()),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Expected::Blocks)
}

/// A `read_blocks` step's `returns` lists at most one entry per block read (fewer when
/// the read runs past the device's end).
pub(super) fn check_returns(
    step: &ThinStep,
    returns: &Option<PerDriver<Expected>>,
    at: &dyn Fn(String) -> ParseError,
) -> Result<(), ParseError> {
    let (ThinStep::Op(ThinOp::ReadBlocks { count, .. }), Some(r)) = (step, returns) else {
        return Ok(());
    };
    for e in r.default.iter().chain(r.by_name.values()) {
        if let Expected::Blocks(b) = e {
            if b.len() as u64 > *count {
                return Err(at(format!(
                    "`returns` lists {} blocks but the step reads only `count` = {count}",
                    b.len()
                )));
            }
        }
    }
    Ok(())
}
