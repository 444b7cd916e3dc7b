"""fsync through the log tree: what btrfs-fuse logs, the kernel replays.

Each test makes a fresh image, mounts it with `btrfs-fuse -o rw` (periodic commits off, an event trace on),
commits a base state (an fsync of a directory commits), then changes files - creates, appends, overwrites,
truncates (down and up), hard links, xattrs set and removed, fdatasync - and fsyncs them, records the state of
every fsynced file right after its last fsync, and kills the daemon with SIGKILL (a crash right after fsync
returned). Then:

* `btrfs inspect-internal dump-super` shows log_root set (the fsyncs wrote a log, not a commit), and the trace
  shows no commit after the base one where the log can express the change (and exactly the fallback commit
  where it cannot: a rename in the running transaction, a directory fsync, a file in a new directory);
* the kernel mounts the image read-write, replays the log with no BTRFS warning or error in dmesg (lines of
  this test's loop device), and shows each fsynced file as it was at its fsync: names (every hard link), size,
  mode, content hash, xattrs; files of the base commit are there too;
* `btrfs check --readonly --check-data-csum` is clean after the kernel's replay.

A failure names the scenario, the path and the field. Needs root (loop mounts).
"""

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "lib"))
import mounts  # noqa: E402
import workload  # noqa: E402

BIN = os.path.abspath(os.environ.get("BTRFS_FUSE", os.path.join(REPO, "btrfs-fuse")))
IMG_SIZE = 512 << 20

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop mounts)"),
    pytest.mark.skipif(not os.access(BIN, os.X_OK), reason="btrfs-fuse binary not built: %s" % BIN),
    pytest.mark.skipif(shutil.which("mkfs.btrfs") is None, reason="mkfs.btrfs missing (btrfs-progs)"),
]


def run(argv):
    return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=600)


def super_field(img, name):
    p = run(["btrfs", "inspect-internal", "dump-super", img])
    assert p.returncode == 0, p.stderr
    m = re.search(r"^%s\s+(\d+)" % re.escape(name), p.stdout, re.M)
    assert m, "dump-super has no %s:\n%s" % (name, p.stdout)
    return int(m.group(1))


def state(path):
    """What an fsync must keep of one file: mode, size, nlink, content hash, xattrs."""
    st = os.lstat(path)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    xattrs = {n: os.getxattr(path, n, follow_symlinks=False) for n in os.listxattr(path, follow_symlinks=False)}
    return {"mode": oct(st.st_mode), "size": st.st_size, "nlink": st.st_nlink, "sha256": digest, "xattrs": xattrs}


def fsync_path(path, data=False):
    fd = os.open(path, os.O_RDONLY)
    try:
        (os.fdatasync if data else os.fsync)(fd)
    finally:
        os.close(fd)


def data(seed, n):
    out = bytearray()
    h = hashlib.sha256(b"%d" % seed).digest()
    while len(out) < n:
        out += h
        h = hashlib.sha256(h).digest()
    return bytes(out[:n])


def write_file(path, payload, mode=0o644, flags=os.O_CREAT | os.O_WRONLY | os.O_TRUNC, offset=None):
    fd = os.open(path, flags, mode)
    try:
        if offset is not None:
            os.pwrite(fd, payload, offset)
        else:
            os.write(fd, payload)
    finally:
        os.close(fd)


def commits(trace):
    with open(trace) as f:
        return sum(1 for l in f if '"event":"commit"' in l)


def log_syncs(trace):
    with open(trace) as f:
        return sum(1 for l in f if '"event":"log_sync"' in l)


class Scenario:
    """One crash test: base() runs and is committed, work(s) runs and records expectations through s.expect."""

    def __init__(self, root):
        self.root = root
        self.expected = {}   # relative path -> state at its last fsync
        self.present = []    # relative paths the base commit guarantees

    def p(self, rel):
        return os.path.join(self.root, rel)

    def fsync(self, rel, also=(), datasync=False):
        fsync_path(self.p(rel), datasync)
        for r in (rel,) + tuple(also):
            self.expected[r] = state(self.p(r))


def crash_run(name, base, work, tmp_path, expect_commits=0, prep=None, mkfs_opts=()):
    img = str(tmp_path / ("%s.img" % name))
    trace = str(tmp_path / ("%s.trace" % name))
    with open(img, "wb") as f:
        f.truncate(IMG_SIZE)
    p = run(["mkfs.btrfs", "-q", "-f"] + list(mkfs_opts) + [img])
    assert p.returncode == 0, p.stderr
    if prep:
        with mounts.kernel_mount(img, options="rw") as k:
            prep(k.path)
    with mounts.fuse_mount(BIN, img, options="rw,commit=3600,trace=%s" % trace, check_exit=False) as m:
        s = Scenario(m.path)
        base(s)
        fsync_path(m.path)  # a directory fsync commits: the base state
        base_commits = commits(trace)
        work(s)
        after = commits(trace)
        os.kill(m.proc.pid, signal.SIGKILL)
        m.proc.wait(timeout=10)
    assert after - base_commits == expect_commits, (
        "%s: %d commits after the base commit, expected %d (fsync should %s)" % (
            name, after - base_commits, expect_commits, "write a log" if expect_commits == 0 else "commit"))
    if expect_commits == 0:
        assert super_field(img, "log_root") != 0, "%s: no log_root in the superblock after fsync" % name
    marker = mounts.dmesg_marker()
    with mounts.kernel_mount(img, options="rw") as k:
        for rel, want in sorted(s.expected.items()):
            path = os.path.join(k.path, rel)
            assert os.path.lexists(path), "%s: %s is gone after the kernel's log replay" % (name, rel)
            got = state(path)
            for field in want:
                assert got[field] == want[field], "%s: %s: %s is %r after replay, %r at fsync" % (
                    name, rel, field, got[field], want[field])
        for rel in s.present:
            assert os.path.lexists(os.path.join(k.path, rel)), "%s: committed %s is gone" % (name, rel)
        loops = list(k.loops)
    errs = mounts.dmesg_btrfs_errors(marker, devices=loops)
    assert not errs, "%s: kernel log after replay:\n%s" % (name, "\n".join(errs))
    assert super_field(img, "log_root") == 0
    workload.assert_check_clean(img, "%s: the kernel's replay" % name)


# ------------------------------------------------------------------ scenarios

def base_dirs(s):
    os.mkdir(s.p("d"))
    os.mkdir(s.p("e"))
    write_file(s.p("d/old"), data(1, 300000))
    write_file(s.p("d/big"), data(2, 1 << 20))
    write_file(s.p("d/xa"), data(3, 5000))
    os.setxattr(s.p("d/xa"), "user.keep", b"k")
    os.setxattr(s.p("d/xa"), "user.gone", b"g")
    s.present += ["d/old", "d/big", "d/xa", "e"]


def test_create_write_xattr(tmp_path):
    def work(s):
        write_file(s.p("d/tiny"), b"tiny file\n", 0o600)              # inline
        s.fsync("d/tiny")
        write_file(s.p("d/one"), data(10, 4096), 0o640)
        write_file(s.p("d/multi"), data(11, 700001), 0o755)
        os.setxattr(s.p("d/multi"), "user.a", b"1" * 100)
        os.setxattr(s.p("d/multi"), "user.b", b"")
        s.fsync("d/one")
        s.fsync("d/multi")
        write_file(s.p("e/empty"), b"")
        s.fsync("e/empty")
    crash_run("create", base_dirs, work, tmp_path)


def test_extend_overwrite(tmp_path):
    def work(s):
        write_file(s.p("d/old"), data(20, 50000), flags=os.O_WRONLY | os.O_APPEND)
        s.fsync("d/old")
        write_file(s.p("d/big"), data(21, 10000), flags=os.O_WRONLY, offset=123456)
        s.fsync("d/big")
        write_file(s.p("d/old"), data(22, 7), flags=os.O_WRONLY, offset=5)   # a second fsync adds to the log
        s.fsync("d/old", datasync=True)
    crash_run("extend", base_dirs, work, tmp_path)


def test_truncate(tmp_path):
    def work(s):
        os.truncate(s.p("d/big"), 10000)
        s.fsync("d/big")
        os.truncate(s.p("d/big"), 1 << 20)      # up again: the committed extents there must read as zeros
        write_file(s.p("d/big"), b"tail", flags=os.O_WRONLY, offset=900000)
        s.fsync("d/big")
        os.truncate(s.p("d/old"), 900000)       # up: a trailing hole
        write_file(s.p("d/old"), b"end", flags=os.O_WRONLY, offset=899997)
        os.truncate(s.p("d/old"), 2000000)
        s.fsync("d/old")
        write_file(s.p("e/grow"), data(30, 9000))
        os.truncate(s.p("e/grow"), 100)
        s.fsync("e/grow")
    crash_run("truncate", base_dirs, work, tmp_path)


def test_hardlink_xattr_removal(tmp_path):
    def work(s):
        write_file(s.p("d/new"), data(40, 20000))
        os.link(s.p("d/new"), s.p("e/new-link"))
        os.link(s.p("d/old"), s.p("e/old-link"))
        os.removexattr(s.p("d/xa"), "user.gone")
        os.setxattr(s.p("d/xa"), "user.added", b"a" * 300)
        s.fsync("d/new", also=("e/new-link",))
        s.fsync("d/old", also=("e/old-link",))
        s.fsync("d/xa")
    crash_run("hardlink", base_dirs, work, tmp_path)


def test_many_files_one_log(tmp_path):
    def work(s):
        for i in range(60):
            write_file(s.p("d/f%02d" % i), data(100 + i, 1000 * i + 1))
            s.fsync("d/f%02d" % i)
        for i in range(0, 60, 7):
            write_file(s.p("d/f%02d" % i), data(200 + i, 3333), flags=os.O_WRONLY | os.O_APPEND)
            s.fsync("d/f%02d" % i)
    crash_run("many", base_dirs, work, tmp_path)


def test_rename_falls_back_to_commit(tmp_path):
    def work(s):
        os.rename(s.p("d/old"), s.p("e/renamed"))
        write_file(s.p("e/renamed"), data(50, 100), flags=os.O_WRONLY | os.O_APPEND)
        s.fsync("e/renamed")                       # a rename in the transaction: commit
        s.present.remove("d/old")
    crash_run("rename", base_dirs, work, tmp_path, expect_commits=1)


def test_new_directory_falls_back_to_commit(tmp_path):
    def work(s):
        os.mkdir(s.p("d/sub"))
        write_file(s.p("d/sub/f"), data(60, 12345))
        s.fsync("d/sub/f")                         # its parent is not in the last commit: commit
        write_file(s.p("d/sub/g"), data(61, 999))  # ... after which the directory is, and fsync logs
        s.fsync("d/sub/g")
    crash_run("newdir", base_dirs, work, tmp_path, expect_commits=1)


def test_log_after_commit(tmp_path):
    def work(s):
        write_file(s.p("d/a"), data(70, 40000))
        s.fsync("d/a")                             # log of transaction N
        os.mkdir(s.p("d/c1"))
        fsync_path(s.p("d/c1"))                    # fsync of a new directory commits N (log_root cleared)
        write_file(s.p("d/a"), data(71, 4096), flags=os.O_WRONLY | os.O_APPEND)
        write_file(s.p("e/b"), data(72, 5000))
        s.fsync("d/a")                             # a new log, of transaction N + 1
        s.fsync("e/b")
    crash_run("aftercommit", base_dirs, work, tmp_path, expect_commits=1)


def test_two_subvolumes(tmp_path):
    def prep(k):
        subprocess.run(["btrfs", "subvolume", "create", os.path.join(k, "sv")], check=True,
                       stdout=subprocess.DEVNULL)
        os.mkdir(os.path.join(k, "sv", "in"))
        write_file(os.path.join(k, "sv", "in", "old"), data(80, 70000))

    def base(s):
        base_dirs(s)
        s.present.append("sv/in/old")

    def work(s):
        write_file(s.p("sv/in/old"), data(81, 3000), flags=os.O_WRONLY | os.O_APPEND)
        write_file(s.p("sv/in/new"), data(82, 66000))
        os.setxattr(s.p("sv/in/new"), "user.sv", b"256")
        s.fsync("sv/in/old")                       # subvolume 256's log tree
        s.fsync("sv/in/new")
        write_file(s.p("d/top"), data(83, 100))
        s.fsync("d/top")                           # subvolume 5's log tree, same log root tree
        write_file(s.p("rootfile"), data(84, 5000))
        fsync_path(s.p(""))                        # the top directory, which names subvolume sv, is logged
        s.expected["rootfile"] = state(s.p("rootfile"))
        s.present.append("sv")
    crash_run("subvols", base, work, tmp_path, prep=prep)


# ------------------------------------------------------------------ randomized

SEEDS = range(int(os.environ.get("BTRFS_FUSE_LOG_SEEDS", "40" if os.environ.get("BTRFS_FUSE_SOAK") else "3")))


class Model:
    """What a crash must keep: for each path, its state at the last point it became durable (its fsync, or a
    commit - seen in the trace), as long as nothing changed it since. A path changed after that point (or
    renamed or unlinked) has no expectation until it is durable again."""

    def __init__(self, root, trace):
        self.root, self.trace = root, trace
        self.expected, self.dirty = {}, set()
        self.commits = commits(trace)

    def paths(self):
        out = []
        for d, _dirs, files in os.walk(self.root):
            out += [os.path.relpath(os.path.join(d, f), self.root) for f in files]
        return out

    def names_of(self, rel):
        ino = os.lstat(os.path.join(self.root, rel)).st_ino
        return [p for p in self.paths() if os.lstat(os.path.join(self.root, p)).st_ino == ino]

    def changed(self, rels):
        for r in rels:
            self.dirty.add(r)
            self.expected.pop(r, None)

    def durable(self, rels):
        n = commits(self.trace)
        if n != self.commits:  # a commit: everything is durable
            self.commits = n
            rels = self.paths()
        for r in rels:
            self.expected[r] = state(os.path.join(self.root, r))
            self.dirty.discard(r)


def random_work(rng, m, nops):
    files = ["d/old", "d/big", "d/xa"]
    dirs = ["d", "e"]
    for op in range(nops):
        live = [f for f in files if os.path.exists(m.p(f))]
        kind = rng.choice(["create", "append", "overwrite", "truncate", "link", "xattr", "rmxattr", "fsync",
                           "fsync", "fsync", "fdatasync", "rename", "unlink", "dirsync"])
        what = "seed op %d: %s" % (op, kind)
        if kind == "create" or not live:
            rel = "%s/n%d" % (rng.choice(dirs), op)
            write_file(m.p(rel), data(rng.randrange(1 << 30), rng.choice([0, 5, 3000, 4096, 70000, 300000])))
            files.append(rel)
            m.changed([rel])
            continue
        rel = rng.choice(live)
        names = m.names_of(rel)
        if kind == "append":
            write_file(m.p(rel), data(op, rng.randrange(1, 50000)), flags=os.O_WRONLY | os.O_APPEND)
        elif kind == "overwrite":
            write_file(m.p(rel), data(op, rng.randrange(1, 20000)), flags=os.O_WRONLY,
                       offset=rng.randrange(0, 400000))
        elif kind == "truncate":
            os.truncate(m.p(rel), rng.randrange(0, 600000))
        elif kind == "link":
            new = "%s/l%d" % (rng.choice(dirs), op)
            os.link(m.p(rel), m.p(new))
            files.append(new)
            names.append(new)
        elif kind == "xattr":
            os.setxattr(m.p(rel), "user.k%d" % rng.randrange(4), data(op, rng.randrange(0, 200)))
        elif kind == "rmxattr":
            have = os.listxattr(m.p(rel))
            if not have:
                continue
            os.removexattr(m.p(rel), rng.choice(have))
        elif kind in ("fsync", "fdatasync"):
            fsync_path(m.p(rel), kind == "fdatasync")
            m.durable(names)
            continue
        elif kind == "dirsync":
            d = rng.choice(dirs)
            before = log_syncs(m.trace)
            fsync_path(m.p(d))
            if log_syncs(m.trace) == before:
                m.durable([])  # a commit (all durable), or the directory was unchanged: its names are committed
                continue
            # logged with the directory: every file it names (changed ones in full), with all their names
            m.durable(sorted({n for f in os.listdir(m.p(d)) if os.path.isfile(m.p(os.path.join(d, f)))
                              for n in m.names_of(os.path.join(d, f))}))
            continue
        elif kind == "rename":
            new = "%s/r%d" % (rng.choice(dirs), op)
            os.rename(m.p(rel), m.p(new))
            files.append(new)
            names.append(new)
        elif kind == "unlink":
            os.unlink(m.p(rel))
        m.changed(names)
        assert what


@pytest.mark.parametrize("seed", SEEDS)
def test_random_crash(tmp_path, seed):
    import random
    rng = random.Random(seed)
    name = "random-seed%d" % seed
    img = str(tmp_path / "r.img")
    trace = str(tmp_path / "r.trace")
    with open(img, "wb") as f:
        f.truncate(IMG_SIZE)
    assert run(["mkfs.btrfs", "-q", "-f", img]).returncode == 0
    with mounts.fuse_mount(BIN, img, options="rw,commit=3600,trace=%s" % trace, check_exit=False) as mt:
        s = Scenario(mt.path)
        base_dirs(s)
        fsync_path(mt.path)
        m = Model(mt.path, trace)
        m.p = s.p
        m.durable([])
        random_work(rng, m, 120)
        os.kill(mt.proc.pid, signal.SIGKILL)
        mt.proc.wait(timeout=10)
    with open(trace) as f:
        logs = sum(1 for l in f if '"event":"log_sync"' in l)
    assert logs > 0, "%s: no fsync wrote a log" % name
    marker = mounts.dmesg_marker()
    with mounts.kernel_mount(img, options="rw") as k:
        for rel, want in sorted(m.expected.items()):
            path = os.path.join(k.path, rel)
            assert os.path.lexists(path), "%s: %s (durable) is gone after the kernel's log replay" % (name, rel)
            got = state(path)
            for field in ("mode", "size", "sha256", "xattrs"):
                assert got[field] == want[field], "%s: %s: %s is %r after replay, %r when durable" % (
                    name, rel, field, got[field], want[field])
        loops = list(k.loops)
    errs = mounts.dmesg_btrfs_errors(marker, devices=loops)
    assert not errs, "%s: kernel log after replay:\n%s" % (name, "\n".join(errs))
    workload.assert_check_clean(img, "%s: the kernel's replay" % name)


# ------------------------------------------------------------------ our replay vs the kernel's

def view(root, rels):
    """The states of rels under root: state() for files, the mode for directories, None where absent."""
    out = {}
    for r in rels:
        path = os.path.join(root, r)
        if not os.path.lexists(path):
            out[r] = None
        elif os.path.isdir(path):
            out[r] = {"mode": oct(os.lstat(path).st_mode)}
        else:
            out[r] = state(path)
    return out


def fuse_view(img, rels, options):
    """view() of rels as btrfs-fuse shows img."""
    with mounts.fuse_mount(BIN, img, options=options) as m:
        return view(m.path, rels)


def test_replay_matches_kernel(tmp_path):
    """When btrfs-fuse replays logs itself: its view of a crashed image equals the kernel's after the kernel's
    replay. Skipped only while a real probe shows that btrfs-fuse does not replay: a file that exists only in
    the log is missing from its mount."""
    img = str(tmp_path / "crash.img")
    twin = str(tmp_path / "twin.img")
    with open(img, "wb") as f:
        f.truncate(IMG_SIZE)
    assert run(["mkfs.btrfs", "-q", "-f", img]).returncode == 0
    with mounts.fuse_mount(BIN, img, options="rw,commit=3600", check_exit=False) as m:
        s = Scenario(m.path)
        base_dirs(s)
        fsync_path(m.path)
        write_file(s.p("d/only-in-log"), data(90, 12345))
        s.fsync("d/only-in-log")
        write_file(s.p("d/old"), data(91, 777), flags=os.O_WRONLY | os.O_APPEND)
        os.truncate(s.p("d/big"), 5000)
        os.setxattr(s.p("d/xa"), "user.new", b"n")
        os.removexattr(s.p("d/xa"), "user.gone")
        s.fsync("d/old")
        s.fsync("d/big")
        s.fsync("d/xa")
        os.kill(m.proc.pid, signal.SIGKILL)
        m.proc.wait(timeout=10)
    assert super_field(img, "log_root") != 0
    rels = sorted(s.expected) + s.present
    ours, mode = None, None
    for opts in ("ro", "rw"):  # a replay in memory (read-only mount) or written to the image (read-write)
        assert run(["cp", "--sparse=always", "-f", img, twin]).returncode == 0
        try:
            view_ = fuse_view(twin, rels, opts)
        except mounts.MountError:
            continue
        if view_["d/only-in-log"] is not None:
            ours, mode = view_, opts
            break
    if ours is None:
        pytest.skip("btrfs-fuse does not replay logs yet (a file that only the log holds is missing from its "
                    "read-only and read-write mounts)")
    if mode == "rw":
        workload.assert_check_clean(twin, "btrfs-fuse's replay")
    with mounts.kernel_mount(img, options="rw") as k:
        kernel = view(k.path, rels)
    for r in rels:
        assert ours[r] == kernel[r], "replay (-o %s): %s is %r with btrfs-fuse, %r with the kernel" % (
            mode, r, ours[r], kernel[r])


def test_directory_fsync(tmp_path):
    def work(s):
        write_file(s.p("d/n1"), data(95, 30000), 0o600)   # new files, not fsynced themselves
        write_file(s.p("d/n2"), b"")
        os.link(s.p("e/../d/xa"), s.p("d/xa-link"))       # a new name of an old file
        write_file(s.p("d/old"), data(96, 100), flags=os.O_WRONLY | os.O_APPEND)
        fsync_path(s.p("d"))                              # logs d, n1, n2, xa, old
        for r in ("d/n1", "d/n2", "d/xa-link", "d/xa", "d/old", "d/big"):
            s.expected[r] = state(s.p(r))
    crash_run("dirsync", base_dirs, work, tmp_path)


def test_directory_fsync_with_new_subdir_commits(tmp_path):
    def work(s):
        os.mkdir(s.p("e/sub"))
        write_file(s.p("e/f"), data(97, 500))
        fsync_path(s.p("e"))                              # a new subdirectory: commit
        s.expected["e/f"] = state(s.p("e/f"))
        s.present.append("e/sub")
    crash_run("dirsync-subdir", base_dirs, work, tmp_path, expect_commits=1)


VARIANTS = {"no-no-holes": ["-O", "^no-holes"], "mixed-bg": ["--mixed"], "nodesize-4k": ["-n", "4096"],
            "xxhash": ["--csum", "xxhash"], "no-skinny": ["-O", "^skinny-metadata"], "single-meta": ["-m", "single"]}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_mkfs_variants(tmp_path, variant):
    def work(s):
        os.truncate(s.p("d/big"), 10000)
        os.truncate(s.p("d/big"), 1 << 20)
        write_file(s.p("d/big"), b"tail", flags=os.O_WRONLY, offset=900000)
        s.fsync("d/big")
        write_file(s.p("e/new"), data(98, 150000), 0o600)
        os.setxattr(s.p("e/new"), "user.v", b"x" * 50)
        s.fsync("e/new")
        write_file(s.p("d/old"), data(99, 4096), flags=os.O_WRONLY | os.O_APPEND)
        write_file(s.p("d/v-new"), data(100, 7000))
        fsync_path(s.p("d"))                        # d changed (a new entry): logged with d/old and d/v-new
        for r in ("d/old", "d/v-new"):
            s.expected[r] = state(s.p(r))
    crash_run("variant-" + variant, base_dirs, work, tmp_path, mkfs_opts=VARIANTS[variant])
