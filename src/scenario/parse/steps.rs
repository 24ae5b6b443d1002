//! The file steps of the scenario parser: which keys each op takes, a step table as a
//! [`Step`] (its op, `expect`, `returns`, and `check` with its stat relations), and the
//! per-driver tables those values may be (docs/SCENARIOS.md, "Steps").

use super::*;

/// The keys each op takes, besides `op`, `expect`, `returns`.
fn allowed_keys(op: &str) -> Option<&'static [&'static str]> {
    Some(match op {
        "create" | "mkdir" => &["container", "path", "mode"],
        "open" => &["container", "path", "flags", "mode"],
        "write" => &["container", "path", "offset", "data", "size"],
        "append" => &["container", "path", "data"],
        "truncate" => &["container", "path", "size"],
        "read" => &["container", "path", "offset", "len"],
        "unlink" | "rmdir" | "readlink" | "stat" | "readdir" => &["container", "path"],
        "rename" | "link" => &["container", "from", "to"],
        "symlink" => &["container", "target", "path"],
        "chmod" => &["container", "path", "mode"],
        "utimes" => &["container", "path", "atime", "mtime"],
        "chown" => &["container", "path", "uid", "gid"],
        "setxattr" => &["container", "path", "name", "value"],
        "getxattr" | "removexattr" => &["container", "path", "name"],
        "create_container" => &["id", "image"],
        "remove_container" => &["id"],
        "commit" => &["container", "layer"],
        "remount" | "changes" => &["container"],
        "check" => &[
            "container",
            "whiteout",
            "opaque",
            "in_upper",
            "not_in_upper",
            "copied_up_bytes",
            "inodes_used",
            "stat",
            "mark",
            "like",
            "same",
            "differ",
            "pool_data_blocks",
            "mapped_blocks",
            "shared_blocks",
        ],
        "create_thin" => &["dev", "sectors"],
        "snapshot" => &["origin", "dev"],
        "delete_thin" => &["dev"],
        "write_blocks" | "read_blocks" | "discard_blocks" => &["dev", "block", "count"],
        "write_bytes" => &["dev", "offset", "len"],
        "set_transaction_id" => &["current", "new"],
        _ => return None,
    })
}

fn present_keys(s: &StepDoc) -> Vec<&'static str> {
    let mut k = Vec::new();
    macro_rules! has {
        ($($f:ident),*) => { $( if s.$f.is_some() { k.push(stringify!($f)); } )* };
    }
    has!(
        container,
        path,
        offset,
        data,
        size,
        len,
        mode,
        from,
        to,
        target,
        name,
        value,
        id,
        image,
        layer,
        whiteout,
        opaque,
        in_upper,
        not_in_upper,
        copied_up_bytes,
        inodes_used,
        stat,
        mark,
        like,
        same,
        differ,
        atime,
        mtime,
        uid,
        gid,
        user,
        group,
        pool_data_blocks,
        mapped_blocks,
        shared_blocks,
        dev,
        origin,
        block,
        count,
        sectors,
        current,
        new
    );
    k
}

impl StepDoc {
    /// The first file-level assertion key the step has (`whiteout`, `in_upper`, ...).
    pub(super) fn file_check_key(&self) -> Option<&'static str> {
        [
            (self.whiteout.is_some(), "whiteout"),
            (self.opaque.is_some(), "opaque"),
            (self.in_upper.is_some(), "in_upper"),
            (self.not_in_upper.is_some(), "not_in_upper"),
            (self.copied_up_bytes.is_some(), "copied_up_bytes"),
            (self.inodes_used.is_some(), "inodes_used"),
        ]
        .into_iter()
        .find_map(|(given, k)| given.then_some(k))
    }
}

/// A `check` with `stat`: the path, the name it is remembered by, and the relations to an
/// earlier one ([`StatRelation`]).
fn stat_relation(
    ctx: &Ctx,
    d: &StepDoc,
    container: Option<String>,
    at: &dyn Fn(String) -> ParseError,
) -> Result<Action, ParseError> {
    let pool = d.pool_data_blocks.is_some().then_some("pool_data_blocks");
    if let Some(k) = d.file_check_key().or(pool) {
        return Err(at(format!(
            "a `check` with `stat` takes `mark`, `like`, `same` and `differ`, not `{k}`: \
             make it a step of its own"
        )));
    }
    let path = match &d.stat {
        Some(p) => check_path(ctx, p)?,
        None => {
            return Err(at(
                "`mark` and `like` need `stat`, the path to look at".into()
            ))
        }
    };
    let name = |v: &Option<Spanned<String>>| -> Result<Option<String>, ParseError> {
        v.as_ref()
            .map(|n| {
                layerspec_model::check_id(n.get_ref())
                    .map(|_| n.get_ref().clone())
                    .map_err(|e| ctx.err(n.span(), format!("a mark's name: {e}")))
            })
            .transpose()
    };
    let fields = |v: &Option<Spanned<toml::Value>>| -> Result<PerDriver<Vec<String>>, ParseError> {
        let Some(v) = v else {
            return Ok(PerDriver::all(Vec::new()));
        };
        per_driver(ctx, v, &|x| {
            let list = x
                .as_array()
                .ok_or("expected a list of stat fields, e.g. [\"ino\", \"mtime\"]")?;
            list.iter()
                .map(|f| match f.as_str() {
                    Some(f) if Identity::FIELDS.contains(&f) => Ok(f.to_string()),
                    _ => Err(format!(
                        "unknown stat field {f} (expected {})",
                        Identity::FIELDS.join(", ")
                    )),
                })
                .collect()
        })
    };
    let rel = StatRelation {
        container,
        path,
        mark: name(&d.mark)?,
        like: name(&d.like)?,
        same: fields(&d.same)?,
        differ: fields(&d.differ)?,
    };
    let listed = |p: &PerDriver<Vec<String>>| {
        p.default
            .iter()
            .chain(p.by_name.values())
            .any(|v| !v.is_empty())
    };
    let compares = listed(&rel.same) || listed(&rel.differ);
    if rel.like.is_some() != compares {
        return Err(at(if compares {
            "`same` and `differ` compare with an earlier mark: name it with `like`".into()
        } else {
            "`like` needs `same` or `differ`: the fields to compare".into()
        }));
    }
    if rel.mark.is_none() && rel.like.is_none() {
        return Err(at("a `check` with `stat` needs `mark` or `like`".into()));
    }
    Ok(Action::Relate(rel))
}

pub(super) fn parse_step(
    ctx: &Ctx,
    index: usize,
    s: Spanned<StepDoc>,
    pool: Option<&layerspec_model::PoolParams>,
) -> Result<Step, ParseError> {
    let span = s.span();
    let text = ctx.text[span.clone()].trim().to_string();
    let (line, _) = line_col(ctx.text, span.start);
    let d = s.into_inner();
    let at = |msg: String| ctx.err(span.clone(), format!("step {index}: {msg}"));
    let Some(op) = &d.op else {
        return Err(at("missing `op`".into()));
    };
    let opname = op.get_ref().as_str();
    let Some(allowed) = allowed_keys(opname) else {
        return Err(ctx.err(
            op.span(),
            format!("step {index}: unknown op `{opname}` (expected one of {OPS})"),
        ));
    };
    let file_op = (allowed.contains(&"path") || allowed.contains(&"from"))
        && !matches!(opname, "check" | "create_container");
    for k in present_keys(&d) {
        if !(allowed.contains(&k) || file_op && matches!(k, "user" | "group")) {
            return Err(at(format!(
                "`{k}` is not a field of `{opname}` (it takes {})",
                allowed.join(", ")
            )));
        }
    }
    match pool {
        Some(_) if opname != "check" && !thin::is_thin_op(opname) => {
            return Err(at(format!(
                "`{opname}` is a file step; a thin-pool scenario (`[pool]`) runs {} and check",
                thin::THIN_OPS.join(", ")
            )))
        }
        None if thin::is_thin_op(opname) => {
            return Err(at(format!(
                "`{opname}` is a thin-pool step: it needs a `[pool]` table"
            )))
        }
        _ => {}
    }
    let need_path = |p: &Option<Spanned<String>>, what: &str| -> Result<String, ParseError> {
        match p {
            Some(p) => check_path(ctx, p),
            None => Err(at(format!("`{opname}` needs `{what}`"))),
        }
    };
    let need =
        |v: Option<u64>, what: &str| v.ok_or_else(|| at(format!("`{opname}` needs `{what}`")));
    let need_s = |v: &Option<String>, what: &str| {
        v.clone()
            .ok_or_else(|| at(format!("`{opname}` needs `{what}`")))
    };
    let id_ok = |v: &str| -> Result<(), ParseError> {
        layerspec_model::check_id(v).map_err(|e| at(e.to_string()))
    };
    if let Some(c) = &d.container {
        layerspec_model::check_id(c.get_ref())
            .map_err(|e| ctx.err(c.span(), format!("step {index}: {e}")))?;
    }
    for v in [&d.id, &d.image, &d.layer].into_iter().flatten() {
        id_ok(v)?;
    }
    let off = |v: Option<u64>, what: &str| -> Result<(), ParseError> {
        match v {
            Some(n) if n > MAX_OFFSET => Err(at(format!(
                "`{what} = {n}` is past the largest file offset ({MAX_OFFSET})"
            ))),
            _ => Ok(()),
        }
    };
    if d.dev.is_none() {
        // File steps: offsets and sizes are `off_t`s (thin-pool steps check their own).
        off(d.offset, "offset")?;
        off(d.size, "size")?;
        off(d.len, "len")?;
        // `offset + len` past `i64::MAX` is the kernel's to refuse (rw_verify_area:
        // EINVAL), and the model predicts it: `scenarios/bounds/`.
    }
    let container = d.container.as_ref().map(|c| c.get_ref().clone());
    if d.group.is_some() && d.user.is_none() {
        return Err(at(
            "`group` goes with `user`: the step runs as `user`, in `group` \
                       (default: the same number)"
                .into(),
        ));
    }
    // A step as another user: its uid, and its gid (the uid's number unless given).
    let cred = d.user.map(|uid| layerspec_model::Cred {
        uid,
        gid: d.group.unwrap_or(uid),
    });
    let file = |op: FileOp| {
        let op = match cred {
            Some(cred) => FileOp::AsUser {
                cred,
                op: Box::new(op),
            },
            None => op,
        };
        Action::Op(Op::File {
            container: container.clone(),
            op,
        })
    };
    let action = match opname {
        "create" => file(FileOp::Create {
            path: need_path(&d.path, "path")?,
            mode: d.mode,
        }),
        "mkdir" => file(FileOp::Mkdir {
            path: need_path(&d.path, "path")?,
            mode: d.mode,
        }),
        "open" => {
            let list = d.flags.as_ref().ok_or_else(|| {
                at("`open` needs `flags`, e.g. [\"O_WRONLY\", \"O_CREAT\"]".into())
            })?;
            let mut flags = layerspec_model::OpenFlags::default();
            let mut access = 0;
            for name in list.get_ref() {
                if !flags.set(name) {
                    return Err(ctx.err(
                        list.span(),
                        format!(
                            "step {index}: unknown open flag `{name}`: expected one of {}",
                            layerspec_model::OpenFlags::NAMES.join(", ")
                        ),
                    ));
                }
                access += usize::from(matches!(name.as_str(), "O_RDONLY" | "O_WRONLY" | "O_RDWR"));
            }
            if access > 1 {
                return Err(ctx.err(
                    list.span(),
                    format!("step {index}: one access mode at most: O_RDONLY, O_WRONLY or O_RDWR"),
                ));
            }
            file(FileOp::Open {
                path: need_path(&d.path, "path")?,
                flags,
                mode: d.mode,
            })
        }
        "write" => {
            let path = need_path(&d.path, "path")?;
            let data = match (&d.data, d.size) {
                (Some(s), None) => Content::Bytes(s.as_bytes().to_vec()),
                (None, Some(n)) if n > MAX_DATA => return Err(at(too_much_data(n))),
                (None, Some(n)) => Content::Random {
                    len: n,
                    seed: seed_for_path(&path) ^ index as u64,
                },
                _ => return Err(at("`write` needs one of `data` or `size`".into())),
            };
            file(FileOp::Write {
                path,
                offset: d.offset.unwrap_or(0),
                data,
            })
        }
        "append" => file(FileOp::Append {
            path: need_path(&d.path, "path")?,
            data: need_s(&d.data, "data")?.into_bytes(),
        }),
        "truncate" => file(FileOp::Truncate {
            path: need_path(&d.path, "path")?,
            size: need(d.size, "size")?,
        }),
        "read" => file(FileOp::Read {
            path: need_path(&d.path, "path")?,
            offset: d.offset.unwrap_or(0),
            len: d.len,
        }),
        "unlink" => file(FileOp::Unlink {
            path: need_path(&d.path, "path")?,
        }),
        "rmdir" => file(FileOp::Rmdir {
            path: need_path(&d.path, "path")?,
        }),
        "readlink" => file(FileOp::Readlink {
            path: need_path(&d.path, "path")?,
        }),
        "stat" => file(FileOp::Stat {
            path: need_path(&d.path, "path")?,
        }),
        "readdir" => file(FileOp::Readdir {
            path: need_path(&d.path, "path")?,
        }),
        "rename" => file(FileOp::Rename {
            from: need_path(&d.from, "from")?,
            to: need_path(&d.to, "to")?,
        }),
        "link" => file(FileOp::Link {
            from: need_path(&d.from, "from")?,
            to: need_path(&d.to, "to")?,
        }),
        "symlink" => file(FileOp::Symlink {
            target: need_s(&d.target, "target")?,
            path: need_path(&d.path, "path")?,
        }),
        "chmod" => {
            let mode = d.mode.ok_or_else(|| at("`chmod` needs `mode`".into()))?;
            file(FileOp::Chmod {
                path: need_path(&d.path, "path")?,
                mode,
            })
        }
        "utimes" => {
            let mtime = need(d.mtime, "mtime")?;
            let atime = d.atime.unwrap_or(mtime);
            for (what, v) in [("atime", atime), ("mtime", mtime)] {
                if v > layerspec_model::MAX_UTIME {
                    return Err(at(format!(
                        "`{what} = {v}` is past the largest time a step sets ({} seconds)",
                        layerspec_model::MAX_UTIME
                    )));
                }
            }
            file(FileOp::Utimes {
                path: need_path(&d.path, "path")?,
                atime,
                mtime,
            })
        }
        "chown" => {
            if d.uid.is_none() && d.gid.is_none() {
                return Err(at("`chown` needs `uid`, `gid` or both".into()));
            }
            file(FileOp::Chown {
                path: need_path(&d.path, "path")?,
                uid: d.uid,
                gid: d.gid,
            })
        }
        "setxattr" => file(FileOp::Setxattr {
            path: need_path(&d.path, "path")?,
            name: need_s(&d.name, "name")?,
            value: d.value.clone().unwrap_or_default().into_bytes(),
        }),
        "getxattr" => file(FileOp::Getxattr {
            path: need_path(&d.path, "path")?,
            name: need_s(&d.name, "name")?,
        }),
        "removexattr" => file(FileOp::Removexattr {
            path: need_path(&d.path, "path")?,
            name: need_s(&d.name, "name")?,
        }),
        "create_container" => Action::Op(Op::CreateContainer {
            id: need_s(&d.id, "id")?,
            image: d.image.clone(),
        }),
        "remove_container" => Action::Op(Op::RemoveContainer {
            id: need_s(&d.id, "id")?,
        }),
        "commit" => Action::Op(Op::Commit {
            container,
            layer: need_s(&d.layer, "layer")?,
        }),
        "remount" => Action::Op(Op::Remount { container }),
        "changes" => Action::Op(Op::Changes { container }),
        "check" if pool.is_some() => Action::Thin(thin::thin_check(&d, &at)?),
        "check" if d.stat.is_some() || d.mark.is_some() || d.like.is_some() => {
            stat_relation(ctx, &d, container, &at)?
        }
        "check" => {
            let mut checks = Vec::new();
            for (v, f) in [
                (&d.whiteout, Check::Whiteout as fn(String) -> Check),
                (&d.opaque, Check::Opaque),
                (&d.in_upper, Check::InUpper),
                (&d.not_in_upper, Check::NotInUpper),
            ] {
                if let Some(p) = v {
                    checks.push(f(check_path(ctx, p)?));
                }
            }
            if let Some(n) = d.copied_up_bytes {
                checks.push(Check::CopiedUpBytes(n));
            }
            if let Some(n) = d.inodes_used {
                checks.push(Check::InodesUsed(n));
            }
            if let Some(v) = &d.pool_data_blocks {
                checks.push(Check::PoolDataBlocks(block_range(ctx, v, index)?));
            }
            if d.mapped_blocks.is_some() || d.shared_blocks.is_some() {
                return Err(at(
                    "`mapped_blocks` and `shared_blocks` are thin-pool checks: they need a \
                     `[pool]` table"
                        .into(),
                ));
            }
            if checks.is_empty() {
                return Err(at("`check` needs at least one assertion key".into()));
            }
            Action::Check { container, checks }
        }
        thin => match pool {
            Some(p) => Action::Thin(thin::thin_op(thin, &d, p, &at)?),
            None => return Err(at(format!("`{thin}` needs a `[pool]` table"))),
        },
    };
    let expect = match &d.expect {
        None => PerDriver::all(Expect::Ok),
        Some(v) => per_driver(ctx, v, &|val: &toml::Value| match val {
            toml::Value::String(s) if s == "ok" => Ok(Expect::Ok),
            toml::Value::String(s) => s
                .parse::<Errno>()
                .map(Expect::Errno)
                .map_err(|e| e.to_string()),
            _ => Err("`expect` is \"ok\" or an errno name such as \"ENOENT\"".into()),
        })?,
    };
    let returns = match &d.returns {
        None => None,
        Some(v) => Some(per_driver(ctx, v, &|val| expected(opname, val))?),
    };
    if let Action::Thin(t) = &action {
        thin::check_returns(t, &returns, &at)?;
    }
    if returns.is_some()
        && !matches!(
            opname,
            "read" | "readlink" | "stat" | "readdir" | "getxattr" | "changes" | "read_blocks"
        )
    {
        return Err(at(format!(
            "`{opname}` returns nothing to compare: drop `returns`"
        )));
    }
    Ok(Step {
        index,
        text,
        line,
        action,
        expect,
        returns,
    })
}

const PER_DRIVER_KEYS: &[&str] = &[
    "default",
    "aufs",
    "overlay",
    "overlay2",
    "devicemapper",
    "thinpool",
    "model",
    "kernel",
    "fuse",
    "vm",
];

fn is_per_driver_key(k: &str) -> bool {
    let base = k.split('.').next().unwrap_or(k);
    PER_DRIVER_KEYS.contains(&base) && k.split('.').count() <= 2
}

fn per_driver<T>(
    ctx: &Ctx,
    v: &Spanned<toml::Value>,
    one: &dyn Fn(&toml::Value) -> Result<T, String>,
) -> Result<PerDriver<T>, ParseError> {
    let err = |m: String| ctx.err(v.span(), m);
    if let toml::Value::Table(t) = v.get_ref() {
        let stat_keys = ["kind", "size", "mode", "nlink", "uid", "gid"];
        let looks_per_driver = !t.is_empty() && t.keys().all(|k| is_per_driver_key(k));
        if looks_per_driver {
            let mut out = PerDriver {
                default: None,
                by_name: BTreeMap::new(),
            };
            for (k, val) in t {
                let parsed = one(val).map_err(|m| err(format!("`{k}`: {m}")))?;
                if k == "default" {
                    out.default = Some(parsed);
                } else {
                    out.by_name.insert(k.clone(), parsed);
                }
            }
            return Ok(out);
        }
        if let Some(bad) = t.keys().find(|k| !stat_keys.contains(&k.as_str())) {
            return Err(err(format!(
                "unknown key `{bad}`: a per-driver table has keys {}; a stat table has {}",
                PER_DRIVER_KEYS.join(", "),
                stat_keys.join(", ")
            )));
        }
    }
    one(v.get_ref()).map(PerDriver::all).map_err(err)
}

fn expected(op: &str, v: &toml::Value) -> Result<Expected, String> {
    use toml::Value as V;
    let strings = |a: &Vec<V>| -> Result<Vec<String>, String> {
        a.iter()
            .map(|x| {
                x.as_str()
                    .map(String::from)
                    .ok_or_else(|| "expected a list of strings".to_string())
            })
            .collect()
    };
    match (op, v) {
        ("read" | "readlink" | "getxattr", V::String(s)) => Ok(Expected::Text(s.clone())),
        ("stat", V::Table(t)) => {
            let int = |k: &str| -> Result<Option<u64>, String> {
                match t.get(k) {
                    None => Ok(None),
                    Some(V::Integer(i)) if *i >= 0 => Ok(Some(*i as u64)),
                    Some(_) => Err(format!("stat `{k}` must be a non-negative integer")),
                }
            };
            let kind = match t.get("kind") {
                None => None,
                Some(V::String(s))
                    if ["file", "dir", "symlink", "fifo", "char", "block"]
                        .contains(&s.as_str()) =>
                {
                    Some(s.clone())
                }
                Some(_) => {
                    return Err(
                        "stat `kind` is one of file, dir, symlink, fifo, char, block".into(),
                    )
                }
            };
            Ok(Expected::Stat {
                kind,
                size: int("size")?,
                mode: int("mode")?.map(|m| m as u32),
                nlink: int("nlink")?.map(|m| m as u32),
                uid: int("uid")?.map(|m| m as u32),
                gid: int("gid")?.map(|m| m as u32),
            })
        }
        ("readdir", V::Array(a)) => Ok(Expected::Names(strings(a)?)),
        ("read_blocks", V::Array(a)) => thin::expected_blocks(a),
        ("changes", V::Array(a)) => {
            let mut out = Vec::new();
            for item in a {
                let pair = item
                    .as_array()
                    .map(strings)
                    .transpose()?
                    .unwrap_or_default();
                match pair.as_slice() {
                    [k, p] if ["A", "C", "D"].contains(&k.as_str()) => {
                        out.push((k.clone(), p.clone()))
                    }
                    _ => {
                        return Err(
                            "`changes` returns a list of [kind, path] with kind A, C or D".into(),
                        )
                    }
                }
            }
            Ok(Expected::Changes(out))
        }
        ("read" | "readlink" | "getxattr", _) => Err(format!("`{op}` returns a string")),
        ("stat", _) => Err("`stat` returns a table { kind, size, mode, nlink, uid, gid }".into()),
        ("readdir", _) => Err("`readdir` returns a list of names".into()),
        ("changes", _) => Err("`changes` returns a list of [kind, path]".into()),
        ("read_blocks", _) => Err("`read_blocks` returns a list, one entry per block".into()),
        _ => Err(format!("`{op}` returns nothing to compare")),
    }
}
