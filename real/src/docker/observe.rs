//! The observation of a Docker driver root: `<data root>/<driver>` listed as the kernel
//! backend lists its own, with Docker's random names replaced by the model's:
//! - image layers: the model layer on top of an image is the layer whose chain id the
//!   image's diff ids give; its directory is the layer store's `cache-id` for that chain
//!   (`image/<driver>/layerdb/sha256/<chain id>/cache-id`);
//! - containers: `image/<driver>/layerdb/mounts/<container>/mount-id` is the container's
//!   directory and `init-id` its init layer's, shown as `<model id>-init`;
//! - overlay2's short names: each directory's `link` names it in `l/`; shown as the model's
//!   `short_name` of the mapped id.
//!
//! - devicemapper: the same layer and mount ids are device hashes, shown as the model's
//!   `device_hash` of the mapped id (`<model id>-init` for the init device).
//!
//! The names are replaced wherever they occur: paths, `link`, `lower` and `lower-id`
//! contents, `l/` symlink targets, devicemapper's metadata JSON; a file's size follows its
//! replaced text. devicemapper's pool and dm devices are observed as the `vm` backend
//! observes its own (`crate::devmapper::observe_docker_pool`), and the containers' roots
//! through a read-only `noatime` bind mount, which writes nothing to their devices.

use super::daemon::Daemon;
use super::image::chain_ids;
use crate::observe;
use crate::sys;
use layerspec_model::devmapper::{device_hash, DISCARDED_LAYER};
use layerspec_model::{
    content_text, init_layer_id, short_name, Accounting, DriverKind, Observation,
};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::PathBuf;

/// The mount ids of Docker's container `docker_id`: its own and its init layer's
/// (`image/<driver>/layerdb/mounts/<id>/{mount-id,init-id}`).
pub fn mount_ids(d: &Daemon, kind: DriverKind, docker_id: &str) -> io::Result<(String, String)> {
    let m = d
        .data_root
        .join("image")
        .join(kind.name())
        .join("layerdb/mounts")
        .join(docker_id);
    d.sandbox.run(move |_| -> io::Result<(String, String)> {
        let read = |f: &str| {
            fs::read_to_string(m.join(f))
                .map(|s| s.trim().to_string())
                .map_err(|e| io::Error::other(format!("{}: {e}", m.join(f).display())))
        };
        Ok((read("mount-id")?, read("init-id")?))
    })
}

/// Observes the daemon's driver root: `layers` are (model id, diff ids), `containers`
/// (model id, Docker id, merged root (`None`: not running), bytes copied up), `removed`
/// (model id, its mount ids) of the containers removed, whose names Docker may still
/// write (devicemapper's last transaction).
pub fn observe(
    d: &Daemon,
    kind: DriverKind,
    layers: &[(String, Vec<String>)],
    containers: &[(String, String, Option<PathBuf>, u64)],
    removed: &[(String, (String, String))],
) -> io::Result<Observation> {
    let removed = removed.to_vec();
    let data = d.data_root.clone();
    let mountinfo = d
        .pid()
        .map(|p| PathBuf::from(format!("/proc/{p}/mountinfo")));
    let layers = layers.to_vec();
    let containers = containers.to_vec();
    d.sandbox.run(move |inside| -> io::Result<Observation> {
        let name = kind.name();
        let db = data.join("image").join(name).join("layerdb");
        let read = |p: PathBuf| -> io::Result<String> {
            fs::read_to_string(&p)
                .map(|s| s.trim().to_string())
                .map_err(|e| io::Error::other(format!("{}: {e}", p.display())))
        };
        // Docker's directory name -> the model's id.
        let mut ids: Vec<(String, String)> = Vec::new();
        for (id, diff_ids) in &layers {
            let chain = chain_ids(diff_ids);
            let top = chain.last().expect("an image has a layer");
            let cache = read(db.join("sha256").join(&top[7..]).join("cache-id"))?;
            // An image committed without changes has its parent's layer: the layer keeps
            // the name of the image that made it.
            if !ids.iter().any(|(c, _)| *c == cache) {
                ids.push((cache, id.clone()));
            }
        }
        for (id, docker_id, _, _) in &containers {
            let m = db.join("mounts").join(docker_id);
            ids.push((read(m.join("mount-id"))?, id.clone()));
            ids.push((read(m.join("init-id"))?, init_layer_id(id)));
        }
        let dm = kind == DriverKind::Devicemapper;
        // Only devicemapper names a removed container again (its last transaction); the
        // union drivers' directories of it are gone.
        for (id, (mount, init)) in removed.iter().filter(|_| dm) {
            ids.push((mount.clone(), id.clone()));
            ids.push((init.clone(), init_layer_id(id)));
        }
        if dm {
            for (_, model) in ids.iter_mut() {
                *model = device_hash(model);
            }
        }
        let top = data.join(name);
        let mut names: Vec<(String, String)> = ids.clone();
        if kind == DriverKind::Overlay2 {
            for (docker, model) in &ids {
                names.push((read(top.join(docker).join("link"))?, short_name(model)));
            }
        }
        // Longest first: `<id>-init` before `<id>`.
        names.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        let replace = |s: &str| {
            let mut s = s.to_string();
            for (from, to) in &names {
                if s.contains(from.as_str()) {
                    s = s.replace(from.as_str(), to);
                }
            }
            if dm {
                s = name_discarded(&s);
            }
            s
        };
        // The directory as it is on disk, without the containers' mounts.
        let view = inside.root.parent().expect("sandbox dir").join("view");
        if fs::symlink_metadata(&view).is_err() {
            fs::create_dir(&view)?;
        }
        sys::bind(&mut inside.log, &data, &view)?;
        let listed = observe::storage(&view.join(name), name).and_then(|(raw, n)| {
            // The driver's own files naming layers, read whole (`lower` may be too long
            // for the listing to show as text).
            let mut named = BTreeMap::new();
            for (path, e) in &raw {
                let parts: Vec<&str> = path.split('/').collect();
                let driver_file = parts.len() == 3
                    && matches!(parts[2], "link" | "lower" | "lower-id")
                    || dm && parts.len() == 3 && parts[1] == "metadata" && e.kind == "file";
                if driver_file {
                    let text = fs::read_to_string(view.join(path))?;
                    named.insert(path.clone(), replace(&text));
                }
            }
            Ok((raw, n, named))
        });
        sys::umount(&mut inside.log, &view, false)?;
        let (raw, inodes_used, named) = listed?;
        // Renamed, then inode groups numbered again in the new path order.
        let mut renamed = BTreeMap::new();
        // devicemapper: the base filesystem's UUID (random, mkfs's) as the model writes it.
        let uuid = named
            .get("devicemapper/metadata/deviceset-metadata")
            .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
            .and_then(|v| v["BaseDeviceUUID"].as_str().map(str::to_string));
        for (path, mut e) in raw {
            if let Some(text) = named.get(&path) {
                e.size = Some(text.len() as u64);
                e.content = Some(match (&uuid, dm) {
                    (Some(u), true) => format!("text:{}", text.replace(u.as_str(), "<uuid>")),
                    _ => content_text(text.as_bytes()),
                });
            }
            if let Some(t) = &e.target {
                let t = replace(t);
                e.size = Some(t.len() as u64);
                e.target = Some(t);
            }
            renamed.insert(replace(&path), e);
        }
        let mut numbers: BTreeMap<u32, u32> = BTreeMap::new();
        let mut storage = BTreeMap::new();
        for (path, mut e) in renamed {
            let n = numbers.len() as u32 + 1;
            e.inode = *numbers.entry(e.inode).or_insert(n);
            storage.insert(path, e);
        }
        let mut merged = BTreeMap::new();
        let mut accounting = Accounting {
            inodes_used,
            ..Accounting::default()
        };
        let mounts = match &mountinfo {
            Some(p) => fs::read_to_string(p)?,
            None => String::new(),
        };
        for (id, _, root, copied) in &containers {
            accounting.copied_up_bytes.insert(id.clone(), *copied);
            // A container Docker could not start has no merged root.
            let Some(root) = root else { continue };
            if dm {
                let quiet = inside.root.parent().expect("sandbox dir").join("quiet");
                let seen =
                    crate::devmapper::quietly(&mut inside.log, root, &quiet, observe::merged_view)?;
                merged.insert(id.clone(), seen);
                continue;
            }
            merged.insert(id.clone(), observe::merged_view(root)?);
            let data_root = data.display().to_string();
            if let Some(len) = mount_data_len(&mounts, kind, root, &data_root, &replace) {
                accounting.mount_data_len.insert(id.clone(), len);
            }
        }
        if dm {
            // Last: the pool after a sync of everything above.
            let (pool, tables) = crate::devmapper::observe_docker_pool(&mut inside.log, &top)?;
            accounting.pool = Some(pool);
            accounting.dm_tables = tables.into_iter().map(|(k, v)| (replace(&k), v)).collect();
        }
        Ok(Observation {
            merged,
            storage,
            accounting,
        })
    })
}

/// devicemapper: a 64-hex-digit name left after the known ones were replaced is the cache
/// id of a layer Docker registered and removed again in a commit that added no layer
/// (the model's `discarded_layer`), which no API call reports: shown as the model's
/// [`DISCARDED_LAYER`].
fn name_discarded(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let run = b[i..].iter().take_while(|c| c.is_ascii_hexdigit()).count();
        if run == 64 && (i == 0 || !b[i - 1].is_ascii_alphanumeric()) {
            out.push_str(DISCARDED_LAYER);
            i += run;
        } else if run > 0 {
            out.push_str(&text[i..i + run]);
            i += run;
        } else {
            let ch = text[i..].chars().next().expect("in bounds");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// The length of the mount data the daemon passed for the overlay mount at `root`, as it
/// would be under the model's data root ([`layerspec_model::DATA_ROOT`]): the directories
/// read from the daemon's `mountinfo` (the kernel prints them as given), with overlay2's
/// `index=off,` put back in front (moby `Get` passes it first; the kernel leaves out an
/// option equal to its default, seen with `strace` on dockerd 20.10.24), and the data root
/// replaced in absolute paths and Docker's names by the model's (`rename`). `None` when
/// no such mount is listed.
fn mount_data_len(
    mounts: &str,
    kind: DriverKind,
    root: &std::path::Path,
    data_root: &str,
    rename: &dyn Fn(&str) -> String,
) -> Option<usize> {
    let root = root.display().to_string();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(root.as_str()))?;
    let (_, sup) = line.split_once(" - ")?;
    let opts = sup.split(' ').nth(2)?;
    let dirs: Vec<&str> = opts
        .split(',')
        .filter(|o| {
            ["lowerdir=", "upperdir=", "workdir="]
                .iter()
                .any(|p| o.starts_with(p))
        })
        .collect();
    let data = rename(
        &dirs
            .join(",")
            .replace(data_root, layerspec_model::DATA_ROOT),
    );
    let index = if kind == DriverKind::Overlay2 {
        "index=off,".len()
    } else {
        0
    };
    Some(index + data.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unnamed_cache_id_is_the_discarded_layer() {
        let id = "e37dd2c3d559f9c7f3a631aebb2fa4429daaf37ea131d44c2e7dde38b78ff58a";
        let text =
            format!("{{\"open_transaction_id\":7,\"device_hash\":\"{id}\",\"device_id\":6}}");
        assert_eq!(
            name_discarded(&text),
            "{\"open_transaction_id\":7,\"device_hash\":\"<discarded-layer>\",\"device_id\":6}"
        );
        // Shorter or longer hex runs, and ones inside a word, stay.
        let other = format!("{}x {id}0 a{id}", &id[..63]);
        assert_eq!(name_discarded(&other), other);
    }
}
