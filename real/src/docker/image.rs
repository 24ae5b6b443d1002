//! Images for `docker load`: a scenario layer becomes one layer tar in the OCI/AUFS whiteout
//! encoding (whiteouts `.wh.<name>`, opaque directories `.wh..wh..opq`, hard links as tar
//! links, modes, `user.*` xattrs as PAX `SCHILY.xattr.` records), inside a `docker save`
//! archive: `manifest.json`, the image config with `rootfs.diff_ids`, `<diff id>/layer.tar`.
//! Layers the daemon has already (the parent's) are named by diff id and not sent again:
//! moby image/tarexport/load.go `loadLayer` is only reached for a chain id the layer store
//! does not have.

use layerspec_model::{Entry, EntryKind, LayerSpec};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io;

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    let mut s = String::from("sha256:");
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The chain ids of a list of diff ids (OCI image spec: `ChainID(L0) = DiffID(L0)`,
/// `ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))`).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => sha256(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// The entry's owner in the header (the applier `Lchown`s each entry to it).
fn owned(h: &mut tar::Header, e: Option<&Entry>) {
    if let Some((uid, gid)) = e.and_then(|e| e.owner) {
        h.set_uid(uid.into());
        h.set_gid(gid.into());
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn pax_xattrs(
    b: &mut tar::Builder<Vec<u8>>,
    xattrs: &std::collections::BTreeMap<String, Vec<u8>>,
) -> io::Result<()> {
    if xattrs.is_empty() {
        return Ok(());
    }
    let recs: Vec<(String, &[u8])> = xattrs
        .iter()
        .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
        .collect();
    b.append_pax_extensions(recs.iter().map(|(k, v)| (k.as_str(), *v)))
}

/// A directory header (and its opaque marker right after it: the applier empties what
/// lower layers have there when it meets the marker, moby pkg/archive/diff.go
/// `UnpackLayer`, before this layer's own children).
fn dir_header(b: &mut tar::Builder<Vec<u8>>, rel: &str, e: Option<&Entry>) -> io::Result<()> {
    let empty: &[u8] = &[];
    let (mode, opaque) = match e {
        Some(e) => {
            pax_xattrs(b, &e.xattrs)?;
            (
                e.mode.unwrap_or(0o755),
                matches!(e.kind, EntryKind::Dir { opaque: true }),
            )
        }
        None => (0o755, false),
    };
    let mut h = header(tar::EntryType::Directory, mode, 0);
    owned(&mut h, e);
    b.append_data(&mut h, format!("{rel}/"), empty)?;
    if opaque {
        let mut h = header(tar::EntryType::Regular, 0o644, 0);
        b.append_data(&mut h, format!("{rel}/.wh..wh..opq"), empty)?;
    }
    Ok(())
}

/// One layer's tar, as `docker save` writes it. Each path once (the applier refuses a
/// tar with a path twice: "duplicates of file paths not supported"), parents first: a
/// directory the layer lists after its children is written where its first child needs
/// it. A hard link's header carries its target's mode, as a tar made from the disk does
/// (the applier chmods the new name to the header's mode: moby pkg/archive/archive.go
/// `createTarFile`).
pub fn layer_tar(spec: &LayerSpec) -> io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let explicit: BTreeMap<String, &Entry> = spec
        .entries
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::Dir { .. }))
        .map(|e| (e.path.trim_start_matches('/').to_string(), e))
        .collect();
    let modes: BTreeMap<String, u32> = spec
        .entries
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::File(_)))
        .map(|e| {
            (
                e.path.trim_start_matches('/').to_string(),
                e.mode.unwrap_or(0o644),
            )
        })
        .collect();
    // A hard link's header carries its inode's owner too.
    let owners: BTreeMap<String, &Entry> = spec
        .entries
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::File(_) | EntryKind::Symlink(_)))
        .map(|e| (e.path.trim_start_matches('/').to_string(), e))
        .collect();
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    let empty: &[u8] = &[];
    for e in &spec.entries {
        let rel = e.path.trim_start_matches('/').to_string();
        if rel.is_empty() {
            pax_xattrs(&mut b, &e.xattrs)?;
            let mut h = header(tar::EntryType::Directory, e.mode.unwrap_or(0o755), 0);
            owned(&mut h, Some(e));
            b.append_data(&mut h, "./", empty)?;
            continue;
        }
        let comps: Vec<&str> = rel.split('/').collect();
        for i in 1..comps.len() {
            let parent = comps[..i].join("/");
            if dirs.insert(parent.clone()) {
                dir_header(&mut b, &parent, explicit.get(&parent).copied())?;
            }
        }
        let (dir, base) = match rel.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n.to_string()),
            None => (String::new(), rel.clone()),
        };
        match &e.kind {
            EntryKind::File(content) => {
                pax_xattrs(&mut b, &e.xattrs)?;
                let (len, r) = crate::layer::content_reader(content);
                let mut h = header(tar::EntryType::Regular, e.mode.unwrap_or(0o644), len);
                owned(&mut h, Some(e));
                b.append_data(&mut h, &rel, r)?;
            }
            EntryKind::Dir { .. } => {
                if dirs.insert(rel.clone()) {
                    dir_header(&mut b, &rel, Some(e))?;
                }
            }
            EntryKind::Symlink(t) => {
                let mut h = header(tar::EntryType::Symlink, e.mode.unwrap_or(0o777), 0);
                owned(&mut h, Some(e));
                if t.len() <= 100 {
                    // As written: `append_link` normalises the target as a path (`/` became
                    // `//`, found by `fuzz --backend docker --seed 1`, trace 3).
                    h.set_link_name_literal(t)?;
                    b.append_data(&mut h, &rel, std::io::empty())?;
                } else {
                    b.append_link(&mut h, &rel, t)?;
                }
            }
            EntryKind::HardLink(to) => {
                let to = to.trim_start_matches('/');
                let mode = modes.get(to).copied().unwrap_or(0o777);
                let mut h = header(tar::EntryType::Link, mode, 0);
                owned(&mut h, owners.get(to).copied());
                b.append_link(&mut h, &rel, to)?;
            }
            EntryKind::Whiteout => {
                let mut h = header(tar::EntryType::Regular, 0o644, 0);
                b.append_data(&mut h, format!("{dir}.wh.{base}"), empty)?;
            }
        }
    }
    b.into_inner()
}

/// A `docker save` archive of an image whose layers are `parent_diff_ids` (in the daemon
/// already) and `layer` on top, tagged `reference`. Returns the archive and the image's
/// diff ids.
pub fn save_archive(
    parent_diff_ids: &[String],
    layer: &[u8],
    reference: &str,
) -> io::Result<(Vec<u8>, Vec<String>)> {
    let diff = sha256(layer);
    let mut diff_ids = parent_diff_ids.to_vec();
    diff_ids.push(diff.clone());
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    })
    .to_string();
    let config_name = format!("{}.json", &sha256(config.as_bytes())[7..]);
    let layers: Vec<String> = diff_ids
        .iter()
        .map(|d| format!("{}/layer.tar", &d[7..]))
        .collect();
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": [reference],
        "Layers": layers,
    }])
    .to_string();
    let mut b = tar::Builder::new(Vec::new());
    let put = |b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]| {
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        b.append_data(&mut h, name, data)
    };
    put(&mut b, "manifest.json", manifest.as_bytes())?;
    put(&mut b, &config_name, config.as_bytes())?;
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    b.append_data(&mut h, format!("{}/", &diff[7..]), &[][..])?;
    put(&mut b, &format!("{}/layer.tar", &diff[7..]), layer)?;
    Ok((b.into_inner()?, diff_ids))
}

#[cfg(test)]
mod tests {
    use super::*;
    use layerspec_model::Content;

    fn entry(path: &str, kind: EntryKind, mode: Option<u32>) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode,
            xattrs: Default::default(),
            owner: None,
        }
    }

    fn names_and_modes(tar: &[u8]) -> Vec<(String, u32, Option<String>)> {
        let mut a = tar::Archive::new(tar);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let link = e
                    .link_name()
                    .unwrap()
                    .map(|l| l.to_string_lossy().into_owned());
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().mode().unwrap(),
                    link,
                )
            })
            .collect()
    }

    #[test]
    fn a_directory_listed_after_its_children_comes_first_once_with_its_marker() {
        let spec = LayerSpec {
            id: "app".into(),
            parent: None,
            entries: vec![
                entry(
                    "/etc/hostname",
                    EntryKind::File(Content::Bytes(b"new\n".to_vec())),
                    None,
                ),
                entry("/etc", EntryKind::Dir { opaque: true }, Some(0o750)),
                entry("/etc/gone", EntryKind::Whiteout, None),
            ],
        };
        let got = names_and_modes(&layer_tar(&spec).unwrap());
        let names: Vec<&str> = got.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["etc/", "etc/.wh..wh..opq", "etc/hostname", "etc/.wh.gone"]
        );
        assert_eq!(got[0].1, 0o750);
    }

    #[test]
    fn a_hard_link_header_carries_its_targets_mode() {
        let spec = LayerSpec {
            id: "l".into(),
            parent: None,
            entries: vec![
                entry(
                    "/bin/busybox",
                    EntryKind::File(Content::Bytes(b"ELF".to_vec())),
                    Some(0o755),
                ),
                entry("/bin/ls", EntryKind::HardLink("/bin/busybox".into()), None),
            ],
        };
        let got = names_and_modes(&layer_tar(&spec).unwrap());
        assert_eq!(
            got[2],
            ("bin/ls".to_string(), 0o755, Some("bin/busybox".to_string()))
        );
    }

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let d = [sha256(b"a"), sha256(b"b")];
        let c = chain_ids(&d);
        assert_eq!(c[0], d[0]);
        assert_eq!(c[1], sha256(format!("{} {}", d[0], d[1]).as_bytes()));
    }
}
