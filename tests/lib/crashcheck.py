"""What a crash may and may not do to a btrfs-fuse filesystem: the shared part of the crash tests.

Owns: TrackedWorkload (the seeded workload of tests/lib/workload.py, plus a forced commit, with every
durability point recorded), History.check (the promise, checked against a recovered tree), and the
helpers that read a crashed image: recovered_manifest (btrfs-fuse, replaying a log tree if there is
one), kernel_manifest, has_log_tree.

The promise.  After a crash the filesystem is its last committed transaction, plus what fsync made
durable since.  The tests check that promise, not how it is kept: today fsync commits the whole
transaction; once fsync writes a log tree, the same checks must still pass.  So the workload records
*durability events*: the mount itself (the image at mount time), each forced commit (BTRFS_IOC_SYNC on
the mount root: `btrfs filesystem sync`), each fsync and fdatasync, and the unmount.  For each it keeps
the tree as it was when the event began (a treecmp manifest of the live mount: fsync changes nothing,
so this is the state it makes durable) and two positions on a clock: when it began and when it
returned.  The clock is the size of the I/O record (-o iorecord): the crash point is a position on the
same clock (the record size at kill -9, or the replayed prefix of a power cut).

At a crash point `cut`, B is the last commit event (mount, sync, unmount) that returned before `cut`;
the candidates are B and every later event that began before `cut` or returned by then (any of them
may have reached the disk, in whole or, for a log, in part; one that wrote nothing begins and ends at
the same position).  Then for every path of the recovered tree and of the
candidates' trees:
  * what the path is -- type, size, content (SHA-256), symlink target, device number; for directories
    only the type -- must be what it was at one candidate event at or after its floor: B, or the last
    fsync/fdatasync of this path (or of a path below it: its directories) that returned before the cut.
    So a committed or fsynced file is present with its content, size and name, and nothing appears that
    the workload never had at a durability point;
  * each of mode, uid, gid and the xattrs must be a value the path had at one candidate event at or after
    B, or after its last fsync (fdatasync promises the data only);
  * an inode that every candidate has (whatever its names: renames) must be in the recovered tree;
  * if B is the only candidate, the whole tree must be exactly B's (every field but atime and st_blocks):
    the last committed transaction, nothing more, nothing less.
Periodic commits are turned off (-o commit=86400) and the workload keeps its data small, so nothing else
commits; a commit outside an event would show up as an unexpected state and fail.
"""

import contextlib
import errno
import fcntl
import os
import re
import signal
import struct
import time

import mounts
import treecmp
import workload
from workload import KiB, MiB, _O_RD, _q

BTRFS_IOC_SYNC = 0x9408                  # _IO(0x94, 8)
COMMIT_EVENTS = ("mount", "sync", "unmount")
META_FIELDS = ("mode", "uid", "gid", "xattrs")
WHOLE_IGNORE = ["atime", "blocks"]
GONE_ERRORS = ("ENOTCONN", "ECONNABORTED")   # what the calls of a dead daemon's mount fail with


class DaemonGone(Exception):
    """The daemon died (testkill or kill -9): the round of operations ends."""


class Event:
    __slots__ = ("kind", "path", "start", "end", "manifest", "seq", "desc")

    def __init__(self, kind, path, start, manifest, seq, desc):
        self.kind, self.path, self.start, self.manifest = kind, path, start, manifest
        self.end = None                   # None: never returned (the crash came first)
        self.seq, self.desc = seq, desc

    def __repr__(self):
        return "%s (op %d, clock %s..%s)" % (self.desc, self.seq, self.start,
                                              "never" if self.end is None else self.end)


# ------------------------------------------------------------------ the workload

class TrackedWorkload(workload.Workload):
    """workload.Workload with durability events.  clock(): the current crash-clock position.
    alive(): False once the daemon is gone (the round stops).  Small data, few big directories:
    each event walks the whole tree."""

    def __init__(self, seed, clock, alive=lambda: True, data_budget=6 * MiB,
                 logical_budget=48 * MiB):
        super().__init__(seed, history=25, data_budget=data_budget, logical_budget=logical_budget,
                         bigdir=(20, 60))
        self.clock, self.alive = clock, alive
        self.events = []
        self.root = None
        self.ops = [(f, w) for f, w in self.ops if f.__name__ != "op_fsync"]
        self.ops += [(self.op_fsync, 6), (self.op_sync, 3)]

    def snapshot(self):
        """The live tree; DaemonGone if the daemon died under the walk, an error if it met any other."""
        man = treecmp.walk(self.root, threads=2)
        errs = ["%s: %s" % (p, e["error"]) for p, e in man["entries"].items() if "error" in e]
        if any(g in e for e in errs for g in GONE_ERRORS):
            raise DaemonGone()
        if errs:
            raise RuntimeError("walking the live mount %s failed: %s" % (self.root, "; ".join(errs[:5])))
        return man

    def begin(self, root, kind="mount", start=0):
        """The state at mount: an event that began at `start` and has returned now."""
        self.root = os.fspath(root)
        ev = Event(kind, None, start, self.snapshot(), self.seq, kind)
        ev.end = self.clock()
        self.events.append(ev)
        return ev

    def unmount_event(self):
        """Call before unmounting; set .end once the daemon has exited."""
        ev = Event("unmount", None, self.clock(), self.snapshot(), self.seq, "unmount")
        self.events.append(ev)
        return ev

    def run_ops(self, root, nops, seed=None, after_op=None):
        """Like Workload.run, but stops when the daemon is gone; after_op(i) runs after the i-th
        operation (a test kills the daemon there).  Returns the number of operations run."""
        if seed is not None:
            self.seed = seed
            self.rng = workload.random.Random(seed)
        self.root = os.fspath(root)
        funcs = [f for f, _w in self.ops]
        weights = [w for _f, w in self.ops]
        self.fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        done = 0
        try:
            for i in range(nops):
                try:
                    self.rng.choices(funcs, weights)[0]()
                except DaemonGone:
                    break
                done += 1
                if after_op:
                    after_op(i)
                if not self.alive() or (self.log and self.log[-1][2] in GONE_ERRORS):
                    break
        finally:
            os.close(self.fd)
            self.fd = None
        return done

    def _event(self, kind, path, desc, fn):
        """Run a durability operation as an event."""
        try:
            snap = self.snapshot()
        except OSError as e:
            if e.errno in (errno.ENOTCONN, errno.ECONNABORTED):
                raise DaemonGone() from e
            raise
        ev = Event(kind, path, self.clock(), snap, self.seq + 1, desc)
        self.events.append(ev)
        ok, _res = self._do(desc, fn)
        if ok:
            ev.end = self.clock()

    def op_sync(self):
        self._event("sync", None, "BTRFS_IOC_SYNC (commit)",
                    lambda: fcntl.ioctl(self.fd, BTRFS_IOC_SYNC))

    def op_fsync(self):
        rng = self.rng
        e = self.pick_entry(("dir",) if rng.random() < 0.2 else ("reg",))
        if not e:
            return
        rel = self._p(e[0], e[1])
        kind = e[2].kind
        data_only = kind == "reg" and rng.random() < 0.3

        def fn():
            fd = os.open(rel, _O_RD | (os.O_DIRECTORY if kind == "dir" else 0), dir_fd=self.fd)
            try:
                (os.fdatasync if data_only else os.fsync)(fd)
            finally:
                os.close(fd)
        name = "fdatasync" if data_only else "fsync"
        self._event(name, rel, "%s %s" % (name, _q(rel)), fn)


# ------------------------------------------------------------------ the promise

def _what(props):
    if props is None:
        return None
    if props.get("type") == "dir":
        return ("dir",)
    return tuple(props.get(f) for f in ("type", "size", "sha256", "target", "rdev"))


def _fmt_what(w):
    if w is None:
        return "absent"
    if w == ("dir",):
        return "directory"
    t, size, sha, target, rdev = w
    s = "%s size %s" % (t, size)
    if sha:
        s += " sha256 %s" % sha[:12]
    if target is not None:
        s += " -> %r" % target
    if rdev:
        s += " rdev %s" % (rdev,)
    return s


class History:
    """The events of one mount (a TrackedWorkload's .events) and the promise at a crash point."""

    def __init__(self, events):
        self.events = events

    def commit_base(self, cut):
        base = None
        for i, e in enumerate(self.events):
            if e.kind in COMMIT_EVENTS and e.end is not None and e.end <= cut:
                base = i
        if base is None:
            raise ValueError("no commit event before clock %d (the mount event is missing)" % cut)
        return base

    def candidates(self, cut):
        b = self.commit_base(cut)
        ev = self.events
        return b, [i for i in range(b, len(ev))
                   if i == b or ev[i].start < cut or (ev[i].end is not None and ev[i].end <= cut)]

    def floors(self, cut, base):
        """{path: (data floor, meta floor)} for paths a returned fsync/fdatasync covers."""
        out = {}
        for i, e in enumerate(self.events):
            if i <= base or e.kind not in ("fsync", "fdatasync") or e.end is None or e.end > cut:
                continue
            parts = e.path.split("/")
            for k in range(1, len(parts) + 1):
                p = "/".join(parts[:k])
                d, m = out.get(p, (base, base))
                d = max(d, i)
                if k == len(parts) and e.kind == "fsync":
                    m = max(m, i)
                out[p] = (d, m)
        return out

    def check(self, recovered, cut, limit=25):
        """Problems (strings) of the recovered manifest at crash point cut."""
        base, cands = self.candidates(cut)
        ev = self.events
        rec = recovered["entries"]
        probs = []
        if len(cands) == 1:
            diffs = treecmp.compare_detailed(ev[base].manifest, recovered, ignore=WHOLE_IGNORE,
                                             labels=("committed", "recovered"))
            probs += ["not the last committed state (%s): %s" % (ev[base].desc, m)
                      for _p, _f, m in diffs]
        floors = self.floors(cut, base)
        paths = set(rec)
        for i in cands:
            paths |= set(ev[i].manifest["entries"])
        for p in sorted(paths):
            got = rec.get(p)
            dfloor, mfloor = floors.get(p, (base, base))
            allowed = [(i, ev[i].manifest["entries"].get(p)) for i in cands if i >= dfloor]
            if _what(got) not in [_what(a) for _i, a in allowed]:
                why = ("fsynced by %s" % ev[dfloor].desc if dfloor != base
                       else "committed by %s" % ev[base].desc)
                probs.append("%s: recovered as %s; allowed (%s, or a later event before the crash): %s"
                             % (treecmp.show_path(p), _fmt_what(_what(got)), why,
                                "; ".join(sorted({_fmt_what(_what(a)) for _i, a in allowed}))))
                continue
            if got is None:
                continue
            metas = [ev[i].manifest["entries"].get(p) for i in cands if i >= mfloor]
            for f in META_FIELDS:
                vals = [m.get(f) for m in metas if m is not None and _what(m) == _what(got)]
                if vals and got.get(f) not in vals:
                    probs.append("%s: %s recovered as %r; the workload had %s at the events since %s"
                                 % (treecmp.show_path(p), f, got.get(f),
                                    " or ".join(repr(v) for v in vals[:4]), ev[mfloor].desc))
            if len(probs) > limit:
                break
        probs += self._lost_inodes(rec, [ev[i].manifest["entries"] for i in cands])
        return probs

    @staticmethod
    def _lost_inodes(rec, cand_entries):
        """An inode that every candidate has (under whatever names: renames since the commit) must be in
        the recovered tree under one of them; a rename may land or not, but never lose the file."""
        def inos(entries):
            return {e.get("ino"): p for p, e in entries.items() if e.get("ino") is not None}
        have = inos(rec)
        sets = [inos(c) for c in cand_entries]
        probs = []
        for ino in sorted(set.intersection(*[set(x) for x in sets]) - set(have)):
            names = sorted({x[ino] for x in sets})
            probs.append("inode %d, present at every event that may have reached the disk (as %s), is "
                         "missing" % (ino, ", ".join(treecmp.show_path(n) for n in names[:3])))
        return probs

    def describe(self, cut):
        base, cands = self.candidates(cut)
        return "last commit before the crash: %s; events that may have reached the disk: %s" % (
            self.events[base], ", ".join(repr(self.events[i]) for i in cands[1:]) or "none")


# ------------------------------------------------------------------ reading a crashed image

SUPER_OFFSET = 64 * KiB


def _images(images):
    return [os.fspath(images)] if isinstance(images, (str, os.PathLike)) else [os.fspath(i) for i in images]


def has_log_tree(images):
    """The first device's primary superblock has a log_root (a log waits for replay)."""
    with open(_images(images)[0], "rb") as f:
        f.seek(SUPER_OFFSET + 0x60)
        b = f.read(8)
    return len(b) == 8 and struct.unpack("<Q", b)[0] != 0


SUPER_COPIES = (64 * KiB, 64 * MiB, 256 * 1024 * MiB)


def super_generations(image):
    """[generation or None] of each superblock copy on one device (None: absent or no btrfs magic; the
    checksum is not verified)."""
    out = []
    with open(image, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        for off in SUPER_COPIES:
            if off + 4096 > size:
                break
            f.seek(off)
            b = f.read(0x50)
            out.append(struct.unpack_from("<Q", b, 0x48)[0] if b[0x40:0x48] == b"_BHRfS_M" else None)
    return out


def mirror_newer_than_primary(images):
    """Some device has a superblock copy newer than its primary (a power cut kept the copy's write and
    lost the primary's): the kernel mounts the primary, btrfs-fuse the newest copy (see
    test_powercut.test_mirror_superblock_newer_than_primary)."""
    for img in _images(images):
        g = super_generations(img)
        if g and g[0] is not None and any(x is not None and x > g[0] for x in g[1:]):
            return True
    return False


def mkfs_images(paths, size, options):
    """Sparse files of `size` bytes made into one filesystem with mkfs.btrfs OPTIONS."""
    for path in paths:
        with open(path, "wb") as f:
            f.truncate(size)
    rc, out = workload.run_cmd(["mkfs.btrfs", "-q", "-f"] + list(options) + list(paths))
    if rc != 0:
        raise RuntimeError("mkfs.btrfs %s failed (exit %d): %s" % (" ".join(list(options) + list(paths)),
                                                                   rc, out))


def fuse_binary():
    return workload.BINARY


@contextlib.contextmanager
def _copies(images, tmpdir, prefix):
    """Sparse copies of the images (same order), removed afterwards."""
    out = []
    try:
        for n, img in enumerate(_images(images)):
            out.append(os.path.join(tmpdir, "%s-%d.img" % (prefix, n)))
            workload.run_cmd(["cp", "--sparse=always", img, out[-1]])
        yield out
    finally:
        for c in out:
            with contextlib.suppress(OSError):
                os.unlink(c)


@contextlib.contextmanager
def recovered_mount(images, tmpdir):
    """btrfs-fuse's view of a crashed filesystem, as after a reboot: read-only; if a log tree waits, it
    is replayed by a read-write mount of copies (the images themselves stay as they are)."""
    if has_log_tree(images):
        with _copies(images, tmpdir, "replay") as cp, \
                mounts.fuse_mount(fuse_binary(), cp, options="rw,commit=86400") as m:
            yield m
    else:
        with mounts.fuse_mount(fuse_binary(), _images(images), options="ro") as m:
            yield m


def recovered_manifest(images, tmpdir):
    with recovered_mount(images, tmpdir) as m:
        return treecmp.walk(m, threads=2)


def kernel_manifest(ctx, images, tmpdir, when):
    """The kernel's view of copies of the crashed images; the kernel must mount them without a BTRFS
    warning or error.  Mounted read-write (noatime) on writable loop devices: a log tree left by an fsync
    is replayed at mount, which the kernel refuses on read-only media."""
    with _copies(images, tmpdir, "kernel") as cp, \
            workload.kernel_clean(ctx, mounts, cp, "rw,noatime,nodev,nosuid", when) as k:
        return treecmp.walk(k, threads=2, seek_holes=True)


_FOREIGN_SCAN = re.compile(r"^ERROR: cannot scan (/dev/\S+): ")
_CHECK_OK = re.compile(r"\bno errors? found\b", re.I)


def btrfs_check(images):
    """`btrfs check --readonly --check-data-csum` of a filesystem's images (several are attached to
    loop devices and scanned); returns (ok, report).  ok: exit 0 and no error line, other than those
    about scanning block devices that are not ours (other tests' loop devices on a shared machine)."""
    images = _images(images)
    loops = []
    try:
        if len(images) > 1:
            for img in images:
                rc, out = workload.run_cmd(["losetup", "-f", "--show", "-r", img])
                if rc != 0:
                    return False, "losetup %s failed: %s" % (img, out)
                loops.append(out.strip())
            workload.run_cmd(["btrfs", "device", "scan"] + loops)
        argv = ["btrfs", "check", "--readonly", "--check-data-csum", loops[0] if loops else images[0]]
        rc, out = workload.run_cmd(argv)
    finally:
        for dev in loops:
            workload.run_cmd(["btrfs", "device", "scan", "--forget", dev])
            workload.run_cmd(["losetup", "-d", dev])
    bad = []
    for line in out.splitlines():
        m = _FOREIGN_SCAN.match(line)
        if m and m.group(1) not in loops:
            continue
        if re.search(r"error", line, re.I) and not _CHECK_OK.search(line):
            bad.append(line)
    ok = rc == 0 and not bad
    return ok, "%s (exit %d)%s\n%s" % (" ".join(argv), rc, "" if ok else "; error lines: %r" % bad[:10],
                                       out[-4000:])


def same_tree(kman, fman):
    """kernel vs btrfs-fuse on one image: every field but atime."""
    return [m for _p, _f, m in treecmp.compare_detailed(kman, fman, ignore=["atime"],
                                                         labels=("kernel", "btrfs-fuse"))]


def kill_daemon(mnt, wait=10):
    """kill -9 the daemon of a foreground fuse mount and wait for it to be gone."""
    proc = mnt.proc
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=wait)
    except Exception:
        pass
    return proc.poll()


def daemon_alive(mnt):
    return mnt.proc is not None and mnt.proc.poll() is None


def record_clock(path):
    def clock():
        try:
            return os.stat(path).st_size
        except FileNotFoundError:
            return 0
    return clock


def wait_gone(mnt, secs=10):
    t = time.monotonic() + secs
    while daemon_alive(mnt) and time.monotonic() < t:
        time.sleep(0.01)
    return not daemon_alive(mnt)

