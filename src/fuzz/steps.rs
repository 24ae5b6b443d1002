//! Drawing a trace's steps: single file steps on mostly live paths, short combinations aimed
//! at the weak spots of union filesystems, and driver steps (commit, remount, new containers
//! on committed layers, changes).

use super::generate::{Gen, XATTRS};
use super::view::{join, parent, View};
use layerspec_model::{Content, DriverKind, FileOp, Kind, Op};

fn create(path: String) -> FileOp {
    FileOp::Create { path, mode: None }
}

fn mkdir(path: String) -> FileOp {
    FileOp::Mkdir { path, mode: None }
}

fn write(path: String, data: Vec<u8>) -> FileOp {
    FileOp::Write {
        path,
        offset: 0,
        data: Content::Bytes(data),
    }
}

fn read(path: String) -> FileOp {
    FileOp::Read {
        path,
        offset: 0,
        len: None,
    }
}

fn stat(path: String) -> FileOp {
    FileOp::Stat { path }
}

fn readdir(path: String) -> FileOp {
    FileOp::Readdir { path }
}

fn rename(from: String, to: String) -> FileOp {
    FileOp::Rename { from, to }
}

impl Gen {
    fn current(&self) -> String {
        self.order.last().cloned().unwrap_or_default()
    }

    fn view(&self, c: &str) -> View {
        self.views.get(c).cloned().unwrap_or_else(View::empty)
    }

    /// Pushes a file step on container `c` (`None`: the current one) and tracks it.
    fn file(&mut self, c: Option<&str>, op: FileOp) {
        let id = c.map_or_else(|| self.current(), str::to_string);
        if let Some(v) = self.views.get_mut(&id) {
            v.apply(&op);
        }
        self.steps.push(Op::File {
            container: c.map(str::to_string),
            op,
        });
    }

    /// A file step on the current container.
    fn step(&mut self, op: FileOp) {
        self.file(None, op);
    }

    fn existing(&mut self, v: &View, want: impl Fn(&str, Kind) -> bool) -> Option<String> {
        let paths = v.paths(want);
        self.pick(&paths)
    }

    /// A path that does not exist (probably): a removed one, or a pool name under a live
    /// directory; now and then under a file or a symlink.
    fn fresh(&mut self, v: &View) -> String {
        let gone: Vec<String> = v.gone.iter().cloned().collect();
        if !gone.is_empty() && self.chance(40) {
            return self.pick(&gone).expect("not empty");
        }
        let parent = match self.below(20) {
            0 => self.existing(v, |p, k| k != Kind::Dir && p != "/"),
            1 => self.existing(v, |_, k| k == Kind::Symlink),
            _ => self.existing(v, |_, k| k == Kind::Dir),
        }
        .unwrap_or_else(|| "/".to_string());
        join(&parent, &self.name())
    }

    /// Mostly a live path (of the wanted kind when there is one), sometimes a fresh one.
    fn target(&mut self, v: &View, kind: Option<Kind>) -> String {
        if self.chance(80) {
            let want = |p: &str, k: Kind| p != "/" && kind.is_none_or(|w| w == k);
            if let Some(p) = self.existing(v, want) {
                return p;
            }
            if let Some(p) = self.existing(v, |p, _| p != "/") {
                return p;
            }
        }
        self.fresh(v)
    }

    fn fresh_or_live(&mut self, v: &View, fresh_percent: u32) -> String {
        if self.chance(fresh_percent) {
            self.fresh(v)
        } else {
            self.target(v, None)
        }
    }

    fn xattr(&mut self) -> String {
        XATTRS[self.below(XATTRS.len())].to_string()
    }

    /// Draws steps until there are at least `m`.
    pub(super) fn steps_up_to(&mut self, m: usize) {
        while self.steps.len() < m {
            match self.below(100) {
                0..=77 => self.file_step(),
                78..=89 => self.combo(),
                _ => self.driver_step(),
            }
        }
    }

    /// The container for a file step: usually the default one, sometimes named.
    fn pick_container(&mut self) -> Option<String> {
        if self.order.len() > 1 && self.chance(25) {
            let order = self.order.clone();
            self.pick(&order)
        } else {
            None
        }
    }

    fn file_step(&mut self) {
        let c = self.pick_container();
        let v = self.view(&c.clone().unwrap_or_else(|| self.current()));
        let file = Some(Kind::File);
        let op = match self.below(100) {
            0..=6 => FileOp::Create {
                path: self.fresh_or_live(&v, 80),
                mode: self.chance(30).then(|| self.mode()),
            },
            7..=16 if self.big_writes > 0 && self.chance(40) => {
                // `--xfs`: half the big writes go to a new file, which the upper layer
                // alone has (a copied-up file is a reflink clone whose copy-on-write the
                // model does not follow).
                let path = if self.big_writes > 1 && self.chance(50) {
                    let path = self.fresh(&v);
                    self.file(c.as_deref(), create(path.clone()));
                    path
                } else {
                    self.target(&v, file)
                };
                FileOp::Write {
                    offset: 4096 * self.below(32) as u64 + self.below(2) as u64 * 100,
                    data: Content::Random {
                        len: 4096 * (1 + self.below(64) as u64) * self.big_writes
                            - self.below(2) as u64 * 7,
                        // As a scenario file's `size` seeds it (the step's index).
                        seed: layerspec_model::seed_for_path(&path) ^ self.steps.len() as u64,
                    },
                    path,
                }
            }
            7..=16 => FileOp::Write {
                path: self.target(&v, file),
                offset: if self.chance(60) {
                    0
                } else {
                    self.below(20) as u64
                },
                data: Content::Bytes(self.data()),
            },
            17..=21 => FileOp::Append {
                path: self.target(&v, file),
                data: self.data(),
            },
            22..=25 => FileOp::Truncate {
                path: self.target(&v, file),
                size: self.below(30) as u64,
            },
            26..=31 => FileOp::Read {
                path: self.target(&v, file),
                offset: if self.chance(70) {
                    0
                } else {
                    self.below(8) as u64
                },
                len: self.chance(40).then(|| 1 + self.below(10) as u64),
            },
            32..=38 => FileOp::Unlink {
                path: self.target(&v, None),
            },
            39..=45 => FileOp::Mkdir {
                path: self.fresh_or_live(&v, 85),
                mode: self.chance(20).then(|| self.mode()),
            },
            46..=51 => FileOp::Rmdir {
                path: self.target(&v, Some(Kind::Dir)),
            },
            52..=61 => {
                let from = self.target(&v, None);
                let to = match self.below(10) {
                    0..=3 => self.target(&v, v.kind(&from)),
                    4 => join(&from, &self.name()),
                    _ => self.fresh(&v),
                };
                rename(from, to)
            }
            62..=67 => FileOp::Link {
                from: self.target(&v, file),
                to: self.fresh_or_live(&v, 85),
            },
            68..=72 => {
                let path = self.fresh(&v);
                FileOp::Symlink {
                    target: self.symlink_target(&v, &path),
                    path,
                }
            }
            73..=75 => FileOp::Readlink {
                path: self.target(&v, Some(Kind::Symlink)),
            },
            76..=79 => FileOp::Chmod {
                path: self.target(&v, None),
                mode: self.mode(),
            },
            80..=85 if self.chance(5) => stat("/".into()),
            80..=85 => stat(self.target(&v, None)),
            86..=91 if self.chance(15) => readdir("/".into()),
            86..=91 => readdir(self.target(&v, Some(Kind::Dir))),
            92..=94 => FileOp::Setxattr {
                path: self.target(&v, None),
                name: self.xattr(),
                value: self.data(),
            },
            95..=97 => FileOp::Getxattr {
                path: self.target(&v, None),
                name: self.xattr(),
            },
            _ => FileOp::Removexattr {
                path: self.target(&v, None),
                name: self.xattr(),
            },
        };
        let op = if self.users {
            self.as_someone(&v, op)
        } else {
            op
        };
        self.file(c.as_deref(), op);
    }

    /// `--users`: a step now and then becomes a `chown` or a `utimes`, and half of them
    /// run as another user.
    fn as_someone(&mut self, v: &View, op: FileOp) -> FileOp {
        use super::generate::{GROUPS, USERS};
        let op = match self.below(10) {
            0 => FileOp::Chown {
                path: self.target(v, None),
                uid: if self.chance(50) {
                    self.pick(USERS)
                } else {
                    None
                },
                gid: self.pick(GROUPS),
            },
            1 => FileOp::Utimes {
                path: self.target(v, None),
                atime: 1000,
                mtime: 1000 * self.below(3) as u64,
            },
            _ => op,
        };
        if !self.chance(50) {
            return op;
        }
        let cred = layerspec_model::Cred {
            uid: self.pick(USERS).unwrap_or(1000),
            gid: self.pick(GROUPS).unwrap_or(1000),
        };
        FileOp::AsUser {
            cred,
            op: Box::new(op),
        }
    }

    /// A few steps that together hit a known weak spot of union filesystems.
    fn combo(&mut self) {
        let v = self.view(&self.current());
        match self.below(6) {
            0 => self.whiteout_then_recreate(&v),
            1 => self.empty_and_remove_dir(&v),
            2 => self.link_then_copy_up(&v),
            3 => {
                // A new file renamed over an image entry.
                let (a, b, d) = (self.fresh(&v), self.target(&v, None), self.data());
                self.step(create(a.clone()));
                self.step(write(a.clone(), d));
                self.step(rename(a, b.clone()));
                self.step(stat(b));
            }
            4 => self.deep_path_then_move(&v),
            _ => {
                // A symlink, then steps through it.
                let p = self.fresh(&v);
                let target = self.symlink_target(&v, &p);
                self.step(FileOp::Symlink {
                    target,
                    path: p.clone(),
                });
                let through = join(&p, &self.name());
                let op = match self.below(4) {
                    0 => write(p.clone(), self.data()),
                    1 => readdir(p.clone()),
                    2 => create(through),
                    _ => stat(through),
                };
                self.step(op);
                self.step(FileOp::Readlink { path: p });
            }
        }
    }

    /// Whiteout, then re-create the name as something else.
    fn whiteout_then_recreate(&mut self, v: &View) {
        let p = self.target(v, Some(Kind::File));
        self.step(FileOp::Unlink { path: p.clone() });
        let op = match self.below(4) {
            0 => create(p.clone()),
            1 => mkdir(p.clone()),
            2 => FileOp::Symlink {
                target: self.symlink_target(v, &p),
                path: p.clone(),
            },
            _ => rename(self.target(v, None), p.clone()),
        };
        self.step(op);
        let last = if self.chance(50) {
            stat(p)
        } else {
            readdir(parent(&p).to_string())
        };
        self.step(last);
    }

    /// Empty a directory (whiteouts for its image entries), remove it, maybe make it again
    /// (an opaque directory) and list it.
    fn empty_and_remove_dir(&mut self, v: &View) {
        let Some(d) = self.existing(v, |p, k| k == Kind::Dir && p != "/") else {
            return self.file_step();
        };
        let below = format!("{d}/");
        let kids: Vec<(String, Kind)> = v
            .live
            .iter()
            .filter(|(p, _)| p.starts_with(&below))
            .map(|(p, k)| (p.clone(), *k))
            .collect();
        // Deepest names first.
        for (p, k) in kids.into_iter().rev().take(6) {
            self.step(if k == Kind::Dir {
                FileOp::Rmdir { path: p }
            } else {
                FileOp::Unlink { path: p }
            });
        }
        self.step(FileOp::Rmdir { path: d.clone() });
        if self.chance(60) {
            self.step(mkdir(d.clone()));
            self.step(readdir(d));
        }
    }

    /// A hard link, a change through one name (copy-up), then the other name.
    fn link_then_copy_up(&mut self, v: &View) {
        let f = self.target(v, Some(Kind::File));
        let g = self.fresh(v);
        self.step(FileOp::Link {
            from: f.clone(),
            to: g.clone(),
        });
        let (one, other) = if self.chance(50) { (f, g) } else { (g, f) };
        let op = match self.below(3) {
            0 => FileOp::Append {
                path: one,
                data: self.data(),
            },
            1 => FileOp::Chmod {
                path: one,
                mode: self.mode(),
            },
            _ => write(one, self.data()),
        };
        self.step(op);
        self.step(stat(other.clone()));
        self.step(read(other));
    }

    /// A deep path, a file at its bottom, then its top directory moved.
    fn deep_path_then_move(&mut self, v: &View) {
        let mut p = self
            .existing(v, |_, k| k == Kind::Dir)
            .unwrap_or_else(|| "/".into());
        let mut top = None;
        for _ in 0..2 + self.below(3) {
            p = join(&p, &self.name());
            top.get_or_insert_with(|| p.clone());
            self.step(mkdir(p.clone()));
        }
        let f = join(&p, &self.name());
        self.step(create(f.clone()));
        let data = self.data();
        self.step(FileOp::Append { path: f, data });
        let to = self.fresh(v);
        self.step(rename(top.unwrap_or_default(), to.clone()));
        self.step(readdir(to));
    }

    fn driver_step(&mut self) {
        let cur = self.current();
        // overlay with init layers: no `commit` (`generate_as`).
        let no_diff = self.docker == Some(DriverKind::Overlay);
        match self.below(100) {
            0..=24 if no_diff => {
                let container = self.chance(30).then_some(cur);
                self.steps.push(Op::Remount { container });
            }
            0..=24 => {
                let layer = format!("k{}", self.committed.len());
                let v = self.view(&cur);
                self.images.insert(layer.clone(), v);
                self.committed.push(layer.clone());
                let container = self.chance(30).then_some(cur);
                self.steps.push(Op::Commit { container, layer });
            }
            25..=49 => {
                let container = self.chance(30).then_some(cur);
                self.steps.push(Op::Remount { container });
            }
            50..=69 if self.order.len() < 4 => {
                let id = format!("c{}", self.next_container);
                self.next_container += 1;
                let committed = self.committed.clone();
                let image = match self.below(10) {
                    0..=5 if !committed.is_empty() => self.pick(&committed),
                    0..=8 => self.base.clone(),
                    // Docker makes no container without an image.
                    _ if self.docker.is_some() => self.base.clone(),
                    _ => None,
                };
                let view = image
                    .as_ref()
                    .and_then(|i| self.images.get(i).cloned())
                    .unwrap_or_else(View::empty);
                self.views.insert(id.clone(), view);
                self.order.push(id.clone());
                self.steps.push(Op::CreateContainer { id, image });
            }
            70..=74 if self.order.len() > 1 => {
                let others = self.order[..self.order.len() - 1].to_vec();
                let id = self.pick(&others).expect("not empty");
                self.order.retain(|c| c != &id);
                self.views.remove(&id);
                self.steps.push(Op::RemoveContainer { id });
            }
            _ => {
                let container = self.chance(30).then_some(cur);
                self.steps.push(Op::Changes { container });
            }
        }
    }
}
