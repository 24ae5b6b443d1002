#!/usr/bin/env python3
"""What a dm-thin pool with 64 KiB blocks allocates under Docker's devicemapper driver on
ext4, measured without device-mapper: ext4 on loop devices over sparse files.

Method. A thin device allocates a pool block the first time anything is written into one
of its 64 KiB chunks; a snapshot shares all of its origin's blocks, and its first write into
a chunk allocates one new block whether the chunk was shared or unmapped (THIN4, THIN7).
Here every thin device is a sparse file on tmpfs attached to a loop device:
- the base device's blocks after mkfs are the 64 KiB chunks of its file holding data
  (SEEK_DATA / SEEK_HOLE);
- a snapshot is a sparse copy of its origin's file; the blocks it has allocated are the
  chunks written since the copy: after every step (and `sync`), each chunk whose bytes
  differ from the previous state, or that now holds data where it held none, joins the set.
  Rewrites with identical bytes are not seen (this can only undercount);
- the pool's used data blocks are the base device's plus every live snapshot's set; a
  removed container's device is deleted with its set (Docker discards then deletes it).

mkfs is Docker's (moby daemon/graphdriver/devmapper/deviceset.go, createFilesystem):
`mkfs.ext4 -E nodiscard,lazy_itable_init=0,lazy_journal_init=0`, then `tune2fs -c -1 -i 0`,
on a 10 GiB device (defaultBaseFsSize). UNIX_IO_NOZEROOUT=1 makes mke2fs write its zeroes
(inode tables, journal) as data, as it has to on dm-thin, which takes no write-zeroes
requests; on a loop device they would become holes. Mounts take no options (Docker's
dm.mountopt is empty by default: ext4, relatime). Docker's Get makes `rootfs/` and writes
the `id` file once; a layer is a snapshot of its parent (the lowest: of the base device),
its files written under rootfs/, then unmounted (Put); a container is a snapshot of its
image, mounted (Get) for its whole life; removing it unmounts, discards and deletes.

Run as root: `python3 tests/measure/dm_ext4_chunks.py [--settle] [runs] [scenario...]`.
Without --settle every step ends with `sync` (data and the journal on disk, metadata not
yet checkpointed in place); with it, with `fsfreeze -f; fsfreeze -u` first, which
checkpoints the journal, as the unmount or jbd2 later would. It replays the traces of the
scenarios under scenarios/devicemapper/ that state pool figures and prints, per `check`,
the figure (absolute, or the change since the step named) over the runs.
"""
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

CHUNK = 64 * 1024
SETTLE = False
SIZE = 10 * 1024**3


def sh(*args, env=None):
    return subprocess.run(args, check=True, capture_output=True, text=True, env=env).stdout


def state(path):
    """Chunk index -> digest, for every 64 KiB chunk holding data."""
    out = {}
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        off = 0
        while off < size:
            try:
                d = os.lseek(fd, off, os.SEEK_DATA)
            except OSError:
                break
            h = os.lseek(fd, d, os.SEEK_HOLE)
            for c in range(d // CHUNK, (h + CHUNK - 1) // CHUNK):
                out[c] = hashlib.blake2b(os.pread(fd, CHUNK, c * CHUNK), digest_size=16).digest()
            off = ((h + CHUNK - 1) // CHUNK) * CHUNK
    finally:
        os.close(fd)
    return out


def runs(chunks):
    out = []
    for c in sorted(chunks):
        if out and out[-1][0] + out[-1][1] == c:
            out[-1][1] += 1
        else:
            out.append([c, 1])
    return out


def pseudo(n, seed):
    out = bytearray()
    x = seed.to_bytes(8, "little")
    while len(out) < n:
        x = hashlib.blake2b(x, digest_size=64).digest()
        out += x
    return bytes(out[:n])


class Dev:
    """A thin device: a sparse file on a loop device, and the chunks written since it was
    snapshotted."""

    def __init__(self, tmp, name, origin=None):
        self.img = os.path.join(tmp, name + ".img")
        self.mnt = os.path.join(tmp, name + ".mnt")
        os.mkdir(self.mnt)
        if origin is None:
            with open(self.img, "wb") as f:
                f.truncate(SIZE)
        else:
            sh("cp", "--sparse=always", origin.img, self.img)
        self.loop = sh("losetup", "-f", "--show", self.img).strip()
        ATTACHED.append(self)
        self.mounted = False
        self.prev = state(self.img)
        self.written = set()

    def mkfs(self):
        env = dict(os.environ, UNIX_IO_NOZEROOUT="1")
        sh("mkfs.ext4", "-q", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0", self.loop, env=env)
        sh("tune2fs", "-c", "-1", "-i", "0", self.loop)
        self.update()

    def update(self):
        if self.mounted and SETTLE:
            # fsfreeze flushes the journal: every metadata block is written in place, as
            # the checkpoint would later (or the unmount) do.
            sh("fsfreeze", "-f", self.mnt)
            sh("fsfreeze", "-u", self.mnt)
        os.sync()
        if not self.mounted:
            sh("blockdev", "--flushbufs", self.loop)
        cur = state(self.img)
        for c, h in cur.items():
            if self.prev.get(c) != h:
                self.written.add(c)
        self.prev = cur

    def mount(self):
        sh("mount", "-t", "ext4", self.loop, self.mnt)
        self.mounted = True

    def umount(self):
        sh("umount", self.mnt)
        self.mounted = False

    def get(self, docker_id):
        """Docker's Get: mount, `rootfs/`, the `id` file if there is none yet."""
        self.mount()
        os.makedirs(self.p("/rootfs"), mode=0o755, exist_ok=True)
        idf = self.p("/id")
        if not os.path.exists(idf):
            with open(idf, "w") as f:
                f.write(docker_id)
            os.chmod(idf, 0o600)

    def p(self, rel):
        return os.path.join(self.mnt, rel.lstrip("/"))

    def close(self):
        if self.mounted:
            subprocess.run(["umount", self.mnt], capture_output=True)
            self.mounted = False
        subprocess.run(["losetup", "-d", self.loop], capture_output=True)
        if os.path.exists(self.img):
            os.unlink(self.img)


# Every device attached and not yet detached: `main` detaches them after each replay,
# whatever happened in it.
ATTACHED = []


def detach_all():
    while ATTACHED:
        ATTACHED.pop().close()


def put_file(dev, rel, data):
    path = dev.p("/rootfs" + rel)
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def content(path, spec):
    return spec if isinstance(spec, bytes) else pseudo(spec, sum(path.encode()))


def replay(sc, tmp):
    """Replays one scenario; returns {check step: figure}."""
    devs = {}
    base = Dev(tmp, "_base_device")
    base.mkfs()
    mkfs = len(base.prev)
    for lid, parent, files in sc["layers"]:
        d = Dev(tmp, lid, devs[parent] if parent else base)
        d.get(lid)
        for path, spec in files:
            put_file(d, path, content(path, spec))
        d.umount()
        d.update()
        devs[lid] = d

    def create_container(cid, image):
        d = Dev(tmp, cid, devs[image] if image else base)
        d.get(cid)
        d.update()
        devs[cid] = d

    for cid, image in sc["containers"]:
        create_container(cid, image)
    layers = {l[0] for l in sc["layers"]}

    def used():
        return mkfs + sum(len(d.written) for d in devs.values())

    figures, marks = {}, {}
    for i, step in enumerate(sc["steps"]):
        op = step[0]
        if op == "check":
            since = step[1]
            now = used()
            marks[i] = now
            figures[i] = now - marks[since] if since is not None else now
            continue
        if op == "create_container":
            create_container(step[1], step[2])
            continue
        if op == "remove_container":
            d = devs.pop(step[1])
            d.close()
            continue
        cid, path = step[1], step[2]
        d = devs[cid]
        full = d.p("/rootfs" + path)
        if op == "create":
            open(full, "xb").close()
        elif op == "write":
            off, data = step[3], step[4]
            data = content(path, data)
            with open(full, "r+b") as f:
                f.seek(off)
                f.write(data)
        elif op == "read":
            with open(full, "rb") as f:
                f.read(step[3])
        elif op == "unlink":
            os.unlink(full)
        elif op == "stat":
            os.path.lexists(full)
        else:
            raise ValueError(op)
        d.update()
    for d in devs.values():
        d.close()
    base.close()
    return mkfs, figures


# The traces of scenarios/devicemapper/*.toml that check pool figures, step for step
# (steps that change nothing on disk, such as stat or readdir, are left out; their indices
# are kept). ("check", since) is a check step: absolute when since is None.
SCENARIOS = {
    "pool_names_and_metadata": {
        "layers": [
            ("base", None, [("/etc/hosts", b"127.0.0.1 localhost\n")]),
            ("app", "base", [("/etc/app.conf", b"x=1\n")]),
        ],
        "containers": [("c1", "app"), ("plain", None)],
        "steps": [("check", None)],  # step 1, readdir, writes nothing here
    },
    "reads_share_image_blocks": {
        "layers": [
            ("base", None, [("/opt/data.bin", 1048576)]),
            ("app", "base", [("/etc/app.conf", b"x=1\n")]),
        ],
        "containers": [("c1", "app"), ("c2", "app")],
        "steps": [
            ("check", None),
            ("read", "c1", "/opt/data.bin", 4),
            ("check", 0),
            ("read", "c1", "/opt/data.bin", 4),
            ("check", 2),
            ("read", "c2", "/opt/data.bin", 4),
            ("check", 4),
        ],
    },
    "container_writes_allocate": {
        "layers": [("base", None, [("/var/log/big.log", 4194304)])],
        "containers": [("c1", "base")],
        "steps": [
            ("check", None),
            ("create", "c1", "/new.bin"),
            ("write", "c1", "/new.bin", 0, 1048576),
            ("check", 0),
            ("write", "c1", "/var/log/big.log", 100000, b"0123456789"),
            ("check", 3),
            ("write", "c1", "/var/log/big.log", 100010, b"abcdefghij"),
            ("check", 5),
        ],
    },
    "remove_container_frees_blocks": {
        "layers": [("base", None, [("/etc/hosts", b"127.0.0.1 localhost\n")])],
        "containers": [("c1", "base")],
        "steps": [
            ("check", None),
            ("create_container", "c2", "base"),
            ("create", "c2", "/data.bin"),
            ("write", "c2", "/data.bin", 0, 1048576),
            ("check", 0),
            ("remove_container", "c2"),
            ("check", 0),
        ],
    },
    "unlink_keeps_blocks_without_discard": {
        "layers": [("base", None, [("/etc/hosts", b"127.0.0.1 localhost\n")])],
        "containers": [("c1", "base")],
        "steps": [
            ("check", None),
            ("create", "c1", "/big.bin"),
            ("write", "c1", "/big.bin", 0, 1048576),
            ("check", 0),
            ("unlink", "c1", "/big.bin"),
            ("stat", "c1", "/big.bin"),
            ("check", 3),
        ],
    },
}


def main():
    global SETTLE
    args = sys.argv[1:]
    if args and args[0] == "--settle":
        SETTLE = True
        args = args[1:]
    n = int(args[0]) if args else 3
    only = args[1:]
    print(f"# {n} runs{' settled (fsfreeze after every step)' if SETTLE else ' (sync after every step)'}; "
          f"{sh('uname', '-r').strip()}; "
          f"{subprocess.run(['mke2fs', '-V'], capture_output=True, text=True).stderr.splitlines()[0]}")
    for name, sc in SCENARIOS.items():
        if only and name not in only:
            continue
        results = []
        for _ in range(n):
            tmp = tempfile.mkdtemp(dir="/dev/shm")
            try:
                results.append(replay(sc, tmp))
            finally:
                detach_all()
                shutil.rmtree(tmp, ignore_errors=True)
        print(f"{name}: mkfs {sorted({r[0] for r in results})}")
        for step in results[0][1]:
            vals = [r[1][step] for r in results]
            since = sc["steps"][step][1]
            what = "absolute" if since is None else f"since step {since}"
            print(f"  step {step} ({what}): min {min(vals)} max {max(vals)} {vals}")


if __name__ == "__main__":
    main()
