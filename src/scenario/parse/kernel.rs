//! The `kernel` key of a scenario file: the kernel versions whose behaviour the file states
//! (`">= 6.6"`, `"< 6.6"`, both comma-separated, or a table of them by driver).

use super::{Ctx, ParseError};
use crate::scenario::{KernelRange, PerDriver};
use layerspec_model::{DriverKind, KernelVersion};
use std::collections::BTreeMap;
use std::ops::Range;
use toml::Spanned;

/// `kernel = ">= 6.6"`, or a table of such ranges by driver name with an optional
/// `default` (`kernel = { overlay = ">= 6.6", overlay2 = ">= 6.6" }`: other drivers run on
/// any kernel). An error points at the comparison that is wrong.
pub(super) fn parse_kernel(
    ctx: &Ctx,
    v: &Spanned<toml::Value>,
) -> Result<PerDriver<KernelRange>, ParseError> {
    let span = v.span();
    match v.get_ref() {
        // The string's first character is after its opening quote.
        toml::Value::String(text) => {
            parse_range(ctx, text, span.start + 1, span).map(PerDriver::all)
        }
        toml::Value::Table(t) => {
            let mut out = PerDriver {
                default: None,
                by_name: BTreeMap::new(),
            };
            // toml gives no spans inside the table: find each key, and its value's opening
            // quote after it, in the table's text.
            let table = &ctx.text[span.clone()];
            for (k, val) in t {
                let key_at = table
                    .find(k.as_str())
                    .map_or(span.start, |i| span.start + i);
                let here = key_at..key_at + k.len();
                if k != "default" {
                    match k.parse::<DriverKind>() {
                        Ok(DriverKind::Thinpool) | Err(_) => {
                            return Err(ctx.err(
                                here,
                                format!(
                                    "`{k}`: a `kernel` table has keys default, aufs, overlay, \
                                     overlay2, devicemapper"
                                ),
                            ))
                        }
                        Ok(_) => {}
                    }
                }
                let toml::Value::String(text) = val else {
                    return Err(
                        ctx.err(here, format!("`{k}`: expected a string such as \">= 6.6\""))
                    );
                };
                let quote = ctx.text[key_at..span.end]
                    .find(['"', '\''])
                    .map_or(key_at, |i| key_at + i + 1);
                let range = parse_range(ctx, text, quote, here)?;
                if k == "default" {
                    out.default = Some(range);
                } else {
                    out.by_name.insert(k.clone(), range);
                }
            }
            Ok(out)
        }
        _ => Err(ctx.err(
            span,
            "`kernel`: expected a string such as \">= 6.6\", or a table of them by driver",
        )),
    }
}

/// `">= 6.6"`, `"< 6.6"` or both, comma-separated: each comparison `>=` or `<` and a
/// `major.minor` version. `start` is the text's offset in the file; `whole` what an error
/// about the range as a whole points at.
fn parse_range(
    ctx: &Ctx,
    text: &str,
    start: usize,
    whole: Range<usize>,
) -> Result<KernelRange, ParseError> {
    let expected = "expected `>= major.minor`, `< major.minor` or both, comma-separated \
                    (`\">= 5.12, < 6.6\"`)";
    let mut range = KernelRange {
        min: None,
        below: None,
    };
    let mut at = 0;
    for part in text.split(',') {
        let offset = start + at + (part.len() - part.trim_start().len());
        at += part.len() + 1;
        let here = offset..offset + part.trim().len();
        let part = part.trim();
        let (bound, version) = if part.starts_with("<=")
            || part.starts_with('=')
            || (part.starts_with('>') && !part.starts_with(">="))
        {
            return Err(ctx.err(
                here,
                format!(
                    "`{part}`: only `>=` and `<` (a kernel change lands in one release X: \
                     since X is `>= X`, before it `< X`)"
                ),
            ));
        } else if let Some(v) = part.strip_prefix(">=") {
            (&mut range.min, v)
        } else if let Some(v) = part.strip_prefix('<') {
            (&mut range.below, v)
        } else {
            return Err(ctx.err(here, format!("`{part}`: {expected}")));
        };
        let v = version.trim();
        let mut nums = v.split('.');
        let version = match (
            nums.next().and_then(|n| n.parse().ok()),
            nums.next().and_then(|n| n.parse().ok()),
            nums.next(),
        ) {
            (Some(major), Some(minor), None) => KernelVersion::new(major, minor),
            _ => {
                return Err(ctx.err(
                    here,
                    format!("`{part}`: `{v}` is not major.minor; {expected}"),
                ))
            }
        };
        if bound.replace(version).is_some() {
            return Err(ctx.err(here, format!("`{part}`: that bound is given twice")));
        }
    }
    if let (Some(m), Some(b)) = (range.min, range.below) {
        if m >= b {
            return Err(ctx.err(whole, format!("no kernel is `>= {m}` and `< {b}`")));
        }
    }
    Ok(range)
}
