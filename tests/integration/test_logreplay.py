"""Log replay: an image the kernel left with a log tree (fsync, then a crash before the next commit) is replayed
by a read-write btrfs-fuse mount exactly as the kernel replays it.

Each scenario makes its own kernel-written log at test time: mkfs (256 MiB), a kernel mount with commit=300, a
committed base state (sync), then the scenario's changes with fsyncs of files and directories, and a copy of
the backing image taken with O_DIRECT while the kernel still has it mounted (before the next commit), so the
copy is what a power cut right after the last fsync leaves (dump-super shows log_root != 0).

Scenarios: new files (inline, regular, sparse, symlink, fifo), overwrite / extend / truncate, prealloc (also past
EOF), compression, renames (across directories, over an existing name), hard links, unlinks, mkdir / rmdir,
xattrs, a subvolume with its own log tree, many links of one inode, and seeded random workloads ("random" with
every operation, so often a short log after a full commit; "rich" without directory renames and removals, so logs
of hundreds of items), over several mkfs variants (no-holes off, 4K/8K nodes, xxhash/sha256, mixed groups).

The oracle is the kernel's own replay of an identical copy (mount, walk, unmount). Then btrfs-fuse -o rw mounts
the copy (replaying it) and must show the same tree (names, types, modes, owners, sizes, nlink, inode numbers,
st_blocks, mtimes, content hashes, xattrs, symlink targets; not atime, which reads change, nor ctime); after its
unmount the superblock has no log root, `btrfs check --readonly --check-data-csum` is clean, and the kernel
mounts the image without a BTRFS warning or error and shows the same tree again.

Plus: a default (read-only) mount of a log image shows the last commit with a warning and changes nothing, and
`nologreplay` is refused with -o rw; a log with a damaged block, a checksummed-but-nonsense item, or seeded damage
of every kind (hostile.py's mutations of log blocks) is refused with a message naming the log block and
`btrfs rescue zero-log`, or replayed, never a crash or a sanitizer report, and a refused mount leaves the image
untouched; an empty log is cleared. BTRFS_FUSE_SOAK=1 adds 240 random workloads and 120 damaged logs.

Needs root (loop mounts). $BTRFS_FUSE overrides ./btrfs-fuse.
"""

import hashlib
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "lib"))
import hostile  # noqa: E402
import mounts  # noqa: E402
import workload  # noqa: E402
import treecmp  # noqa: E402

BIN = os.path.abspath(os.environ.get("BTRFS_FUSE", os.path.join(REPO, "btrfs-fuse")))
ASAN = os.path.abspath(os.environ.get("BTRFS_FUSE_ASAN", os.path.join(REPO, "build-asan", "btrfs-fuse")))
IMG_SIZE = 256 << 20
IGNORE = ("atime", "ctime")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop mounts)"),
    pytest.mark.skipif(not os.access(BIN, os.X_OK), reason="btrfs-fuse binary not built: %s" % BIN),
    pytest.mark.skipif(shutil.which("mkfs.btrfs") is None, reason="mkfs.btrfs missing (btrfs-progs)"),
]


def run(argv, **kw):
    return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=600, **kw)


@pytest.fixture
def tmp():
    d = tempfile.mkdtemp(prefix="btrfs-logreplay-", dir=os.environ.get("BTRFS_FUSE_TMP", "/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def mkfs(path, opts):
    with open(path, "wb") as f:
        f.truncate(IMG_SIZE)
    p = run(["mkfs.btrfs", "-q", "-f"] + opts + [path])
    assert p.returncode == 0, "mkfs.btrfs %s failed: %s" % (" ".join(opts), p.stderr)


def log_root(img):
    return hostile.read_super(img)["log_root"]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def copy_sparse(src, dst):
    p = run(["cp", "--sparse=always", src, dst])
    assert p.returncode == 0, p.stderr


# ---------------------------------------------------------------- workloads

def fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path, data, off=0, fsync=False, trunc=False):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if trunc else 0), 0o644)
    try:
        os.pwrite(fd, data, off)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def rbytes(rng, n):
    return rng.randbytes(n)


class Scenario:
    """base(root, rng) is committed (sync); logged(root, rng) runs after it and ends with an fsync."""

    def __init__(self, name, base, logged):
        self.name, self.base, self.logged = name, base, logged


def base_files(root, rng):
    os.mkdir(os.path.join(root, "d"))
    write_file(os.path.join(root, "d", "keep"), rbytes(rng, 5000))


def logged_files(root, rng):
    p = lambda *a: os.path.join(root, *a)  # noqa: E731
    write_file(p("small"), b"tiny file", fsync=True)                       # inline extent
    write_file(p("mid"), rbytes(rng, 20000), fsync=True)
    write_file(p("big"), rbytes(rng, 3 << 20), fsync=True)                  # several extents, many csums
    write_file(p("sparse"), rbytes(rng, 4096))
    write_file(p("sparse"), rbytes(rng, 8192), off=1 << 20, fsync=True)    # a hole in between
    write_file(p("d", "grow"), b"x" * 700, fsync=True)                      # inline, then regular
    write_file(p("d", "grow"), rbytes(rng, 10000), off=700, fsync=True)
    os.symlink("d/grow", p("link"))
    os.mkfifo(p("fifo"))
    fsync_path(root)


def base_overwrite(root, rng):
    for name, n in (("a", 1 << 20), ("b", 300000), ("c", 5000), ("e", 2 << 20), ("f", 40000), ("g", 100)):
        write_file(os.path.join(root, name), rbytes(rng, n))


def logged_overwrite(root, rng):
    p = lambda *a: os.path.join(root, *a)  # noqa: E731
    write_file(p("a"), rbytes(rng, 100000), off=300000, fsync=True)        # overwrite in the middle
    with open(p("b"), "ab") as f:                                          # extend
        f.write(rbytes(rng, 123457))
        f.flush()
        os.fsync(f.fileno())
    os.truncate(p("c"), 100)                                               # shrink
    fsync_path(p("c"))
    os.truncate(p("e"), 0)                                                 # truncate to 0 and write again
    write_file(p("e"), rbytes(rng, 10000), fsync=True)
    os.truncate(p("f"), 1 << 20)                                           # grow by truncate
    fsync_path(p("f"))
    write_file(p("g"), rbytes(rng, 50), off=20, fsync=True)                # inline overwrite


def base_names(root, rng):
    p = lambda *a: os.path.join(root, *a)  # noqa: E731
    for d in ("d1", "d2", "gone"):
        os.mkdir(p(d))
    for f in ("x", "y", "z", "w"):
        write_file(p("d1", f), rbytes(rng, 3000))
    write_file(p("t"), rbytes(rng, 200))
    write_file(p("d2", "old"), b"old")


def logged_names(root, rng):
    p = lambda *a: os.path.join(root, *a)  # noqa: E731
    os.rename(p("d1", "x"), p("d2", "x2"))                                 # rename across directories
    fsync_path(p("d2", "x2"))
    os.link(p("d1", "y"), p("d2", "ylink"))                                # a new hard link
    fsync_path(p("d1", "y"))
    os.link(p("t"), p("d1", "tl"))                                         # link, then unlink the other name
    os.unlink(p("t"))
    fsync_path(p("d1", "tl"))
    os.unlink(p("d1", "z"))                                                # unlink, then fsync the directory
    fsync_path(p("d1"))
    os.mkdir(p("d3"))                                                      # mkdir + a file inside
    write_file(p("d3", "new"), rbytes(rng, 9000))
    fsync_path(p("d3", "new"))
    fsync_path(p("d3"))
    os.rename(p("d1", "w"), p("d2", "old"))                                # rename over an existing name
    fsync_path(p("d2", "old"))
    os.rmdir(p("gone"))
    fsync_path(root)


def base_prealloc(root, rng):
    write_file(os.path.join(root, "p2"), rbytes(rng, 70000))


def logged_prealloc(root, rng):
    p = lambda *a: os.path.join(root, *a)  # noqa: E731
    fd = os.open(p("p1"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, 1 << 20)                                 # prealloc, then part of it written
        os.pwrite(fd, rbytes(rng, 10000), 200000)
        os.fsync(fd)
    finally:
        os.close(fd)
    p_ = run(["fallocate", "-n", "-o", "0", "-l", str(3 << 20), p("p2")])  # prealloc past EOF (keep size)
    assert p_.returncode == 0, p_.stderr
    fsync_path(p("p2"))


def base_subvol(root, rng):
    p_ = run(["btrfs", "subvolume", "create", os.path.join(root, "sv")])
    assert p_.returncode == 0, p_.stderr
    write_file(os.path.join(root, "sv", "committed"), rbytes(rng, 9000))
    write_file(os.path.join(root, "top"), rbytes(rng, 100))


def logged_subvol(root, rng):
    p = lambda *a: os.path.join(root, *a)  # noqa: E731
    write_file(p("sv", "new"), rbytes(rng, 50000), fsync=True)             # the subvolume's own log tree
    os.link(p("sv", "committed"), p("sv", "hard"))
    fsync_path(p("sv", "committed"))
    write_file(p("top"), rbytes(rng, 30000), off=100, fsync=True)          # and subvolume 5's


def base_replace(root, rng):
    p = lambda *a: os.path.join(root, *a)  # noqa: E731
    os.mkdir(p("r"))
    write_file(p("r", "src"), rbytes(rng, 7000))
    write_file(p("r", "victim"), rbytes(rng, 300))   # the highest inode number


def logged_replace(root, rng):
    """The file a rename replaces is logged as existing with no links, and is the last inode of the log."""
    p = lambda *a: os.path.join(root, *a)  # noqa: E731
    write_file(p("r", "src"), rbytes(rng, 5000), off=7000)
    os.rename(p("r", "src"), p("r", "victim"))
    fsync_path(p("r", "victim"))


def base_links(root, rng):
    p = lambda *a: os.path.join(root, *a)  # noqa: E731
    os.mkdir(p("h"))
    write_file(p("h", "f"), rbytes(rng, 3000))
    for i in range(20):
        os.link(p("h", "f"), p("h", "old-link-%03d" % i))


def logged_links(root, rng):
    """Many names of one inode in one directory (a long INODE_REF item; an inode with INODE_EXTREFs makes the
    kernel's fsync a full commit, so no kernel log holds extrefs)."""
    p = lambda *a: os.path.join(root, *a)  # noqa: E731
    for i in range(0, 20, 4):
        os.unlink(p("h", "old-link-%03d" % i))
    for i in range(120):
        os.link(p("h", "f"), p("h", "new-link-%03d-%s" % (i, "n" * 50)))
    fsync_path(p("h", "f"))


def base_xattrs(root, rng):
    p = lambda *a: os.path.join(root, *a)  # noqa: E731
    os.mkdir(p("dx"))
    write_file(p("fx"), rbytes(rng, 1000))
    for path in (p("fx"), p("dx")):
        os.setxattr(path, "user.a", b"A" * 10)
        os.setxattr(path, "user.b", b"B" * 300)


def logged_xattrs(root, rng):
    p = lambda *a: os.path.join(root, *a)  # noqa: E731
    for path in (p("fx"), p("dx")):
        os.setxattr(path, "user.a", b"new value")                          # replace
        os.removexattr(path, "user.b")                                     # remove
        os.setxattr(path, "user.c", rbytes(rng, 2000))                     # add
        fsync_path(path)
    write_file(p("fy"), b"data")
    os.setxattr(p("fy"), "user.only", b"1")
    fsync_path(p("fy"))


ALL_OPS = ["create", "create", "write", "write", "append", "truncate", "rename", "rename_over", "link", "unlink",
           "mkdir", "rmdir", "rename_dir", "symlink", "setxattr", "removexattr", "fsync", "fsync", "fsync_dir"]


def logged_random(root, rng, nops=120, ops=ALL_OPS):
    """Seeded random changes over a small tree, with fsyncs of random files and directories."""
    dirs, files = [""], []

    def rel_new(parent):
        return os.path.join(parent, "n%d" % rng.randrange(10 ** 6))

    for _ in range(nops):
        op = rng.choice(ops)
        try:
            if op == "create" or not files and op in ("write", "append", "truncate", "rename", "link", "unlink",
                                                      "setxattr", "removexattr", "fsync"):
                rel = rel_new(rng.choice(dirs))
                write_file(os.path.join(root, rel), rbytes(rng, rng.choice([0, 10, 1500, 5000, 70000, 300000])))
                files.append(rel)
            elif op == "write":
                rel = rng.choice(files)
                write_file(os.path.join(root, rel), rbytes(rng, rng.randrange(1, 100000)),
                           off=rng.randrange(0, 400000))
            elif op == "append":
                with open(os.path.join(root, rng.choice(files)), "ab") as f:
                    f.write(rbytes(rng, rng.randrange(1, 50000)))
            elif op == "truncate":
                os.truncate(os.path.join(root, rng.choice(files)), rng.randrange(0, 500000))
            elif op == "rename":
                rel = rng.choice(files)
                new = rel_new(rng.choice(dirs))
                os.rename(os.path.join(root, rel), os.path.join(root, new))
                files = [new if f == rel else f for f in files]
            elif op == "rename_over" and len(files) > 1:
                a, b = rng.sample(files, 2)
                os.rename(os.path.join(root, a), os.path.join(root, b))
                files.remove(a)
                if os.path.exists(os.path.join(root, a)):
                    files.append(a)  # a and b were hard links of one inode: rename did nothing
            elif op == "rmdir" and len(dirs) > 1:
                rel = rng.choice(dirs[1:])
                os.rmdir(os.path.join(root, rel))  # fails (ENOTEMPTY) unless empty
                dirs.remove(rel)
            elif op == "rename_dir" and len(dirs) > 1:
                rel = rng.choice(dirs[1:])
                new = rel_new(rng.choice(dirs))
                os.rename(os.path.join(root, rel), os.path.join(root, new))  # EINVAL into itself
                dirs = [new + d[len(rel):] if d == rel or d.startswith(rel + "/") else d for d in dirs]
                files = [new + f[len(rel):] if f.startswith(rel + "/") else f for f in files]
            elif op == "symlink":
                os.symlink("t" * rng.randrange(1, 300), os.path.join(root, rel_new(rng.choice(dirs))))
            elif op == "link":
                new = rel_new(rng.choice(dirs))
                os.link(os.path.join(root, rng.choice(files)), os.path.join(root, new))
                files.append(new)
            elif op == "unlink":
                rel = rng.choice(files)
                os.unlink(os.path.join(root, rel))
                files.remove(rel)
            elif op == "mkdir":
                rel = rel_new(rng.choice(dirs))
                os.mkdir(os.path.join(root, rel))
                dirs.append(rel)
            elif op == "setxattr":
                os.setxattr(os.path.join(root, rng.choice(files)), "user.x%d" % rng.randrange(3),
                            rbytes(rng, rng.randrange(1, 200)))
            elif op == "removexattr":
                os.removexattr(os.path.join(root, rng.choice(files)), "user.x%d" % rng.randrange(3))
            elif op == "fsync":
                fsync_path(os.path.join(root, rng.choice(files)))
            elif op == "fsync_dir":
                fsync_path(os.path.join(root, rng.choice(dirs)))
        except OSError:
            pass  # e.g. removexattr of an absent name: the same on every run of the seed
    # Some changes (a directory renamed, say) make the kernel's next fsync a full commit for the rest of the
    # transaction; the first fsync below then commits, and the second one is logged in the next transaction.
    for _ in range(2):
        write_file(os.path.join(root, rel_new("")), rbytes(rng, 4000), fsync=True)


def base_random(root, rng):
    for i in range(8):
        write_file(os.path.join(root, "b%d" % i), rbytes(rng, rng.choice([100, 4096, 50000, 400000])))
    os.mkdir(os.path.join(root, "bd"))
    write_file(os.path.join(root, "bd", "inner"), rbytes(rng, 6000))


def logged_random_with_base(root, rng):
    # the committed files take part in the random changes too
    logged_random(root, rng)


# Renaming or removing directories makes the kernel's later fsyncs in that transaction full commits, so logs of
# "random" are often short: "rich" leaves those out and gets logs of hundreds of items.
RICH_OPS = [op for op in ALL_OPS if op not in ("rename_dir", "rmdir")]


def logged_rich(root, rng):
    logged_random(root, rng, nops=300, ops=RICH_OPS)


SCENARIOS = {
    "files": Scenario("files", base_files, logged_files),
    "overwrite": Scenario("overwrite", base_overwrite, logged_overwrite),
    "names": Scenario("names", base_names, logged_names),
    "xattrs": Scenario("xattrs", base_xattrs, logged_xattrs),
    "random": Scenario("random", base_random, logged_random_with_base),
    "rich": Scenario("rich", base_random, logged_rich),
    "prealloc": Scenario("prealloc", base_prealloc, logged_prealloc),
    "replace": Scenario("replace", base_replace, logged_replace),
    "links": Scenario("links", base_links, logged_links),
    "subvol": Scenario("subvol", base_subvol, logged_subvol),
    "one": Scenario("one", base_files, lambda root, rng: write_file(os.path.join(root, "new"), rbytes(rng, 70000),
                                                                    fsync=True)),
}


def make_log_image(tmp, scenario, seed, mkfs_opts=(), mount_opts=""):
    """The kernel's image right after the scenario's last fsync (a copy taken before any commit), and the time
    (ns) before the copy: every change of the scenario is older, every replay's "now" newer."""
    img = os.path.join(tmp, "kernel.img")
    copy = os.path.join(tmp, "log.img")
    mkfs(img, list(mkfs_opts))
    rng = random.Random(seed)
    with mounts.kernel_mount(img, options="rw,commit=300" + (("," + mount_opts) if mount_opts else "")) as k:
        scenario.base(k.path, rng)
        os.sync()
        scenario.logged(k.path, rng)
        when = time.time_ns()
        p = run(["dd", "if=" + img, "of=" + copy, "bs=1M", "iflag=direct", "conv=sparse", "status=none"])
        assert p.returncode == 0, p.stderr
    os.unlink(img)
    assert log_root(copy), ("scenario %s seed %d: the kernel committed before the copy, so there is no log tree "
                            "to replay" % (scenario.name, seed))
    time.sleep(0.05)  # replays happen strictly after `when`, even with a coarse kernel clock
    return copy, when


def kernel_replay_manifest(tmp, copy):
    """The oracle: what the kernel shows after replaying an identical copy."""
    kimg = os.path.join(tmp, "oracle.img")
    copy_sparse(copy, kimg)
    with mounts.kernel_mount(kimg, options="rw") as k:
        man = treecmp.walk(k.path)
    os.unlink(kimg)
    return man


def assert_same(expected, got, what, ctx, when):
    diffs = treecmp.compare(expected, got, ignore=IGNORE, labels=("kernel-replay", what))
    assert not diffs, "%s: %s differs from the kernel's replay (%d differences; log copied at %d):\n%s" % (
        ctx, what, len(diffs), when, "\n".join(diffs[:40]))


def replay_and_verify(tmp, copy, when, ctx, binary=BIN):
    expected = kernel_replay_manifest(tmp, copy)
    with mounts.fuse_mount(binary, copy, options="rw") as m:
        got = treecmp.walk(m.path)
        text = m.stderr_text()
    assert "log tree replayed" in text, "%s: no replay message:\n%s" % (ctx, text)
    assert not hostile.sanitizer_lines(m.stderr_text()), "%s: sanitizer report:\n%s" % (ctx, m.stderr_text())
    assert_same(expected, got, "btrfs-fuse's replay", ctx, when)
    assert log_root(copy) == 0, "%s: the superblock still names a log tree after the replay" % ctx
    workload.assert_check_clean(copy, "the replay (%s)" % ctx)
    marker = mounts.dmesg_marker()
    with mounts.kernel_mount(copy, options="rw") as k:
        again = treecmp.walk(k.path)
        loops = list(k.loops)
    errs = mounts.dmesg_btrfs_errors(marker, devices=loops)
    assert not errs, "%s: kernel messages mounting the replayed image:\n%s" % (ctx, "\n".join(errs))
    assert_same(expected, again, "the kernel's view of btrfs-fuse's replay", ctx, when)


# ---------------------------------------------------------------- tests

SOAK = os.environ.get("BTRFS_FUSE_SOAK") == "1"
# (scenario, seed, mkfs options, kernel mount options)
CASES = [
    ("files", 1, (), ""),
    ("overwrite", 2, (), ""),
    ("names", 3, (), ""),
    ("xattrs", 4, (), ""),
    ("names", 5, ("-O", "^no-holes"), ""),
    ("overwrite", 6, ("-O", "^no-holes", "--csum", "xxhash"), ""),
    ("files", 7, (), "compress=zstd"),
    ("prealloc", 8, (), ""),
    ("subvol", 9, (), ""),
    ("replace", 10, (), ""),
    ("links", 15, (), ""),
    ("random", 16, ("--mixed",), ""),
    ("rich", 17, (), ""),
    ("rich", 18, ("-n", "4096"), ""),
    ("rich", 19, ("-O", "^no-holes", "-n", "8192"), "compress=zstd"),
    ("rich", 648, ("-m", "single"), ""),  # found by the soak: a new name logged only as a directory index
    ("random", 11, (), ""),
    ("random", 12, ("-O", "^no-holes"), ""),
    ("random", 13, ("-m", "single", "--csum", "sha256"), ""),
    ("random", 14, ("-n", "4096"), "compress=lzo"),
] + ([(name, seed, opts, mo) for name in ("random", "rich") for seed in range(100, 140)
      for opts, mo in (((), ""), (("-O", "^no-holes"), ""), (("-n", "4096"), "compress=zstd"))] if SOAK else [])


@pytest.mark.parametrize("name,seed,opts,mount_opts", CASES,
                         ids=["%s-seed%d%s%s" % (n, s, "".join(o).replace("-", "_"), "-" + m if m else "")
                              for n, s, o, m in CASES])
def test_replay_matches_kernel(tmp, name, seed, opts, mount_opts):
    ctx = "scenario %s, seed %d, mkfs %s, kernel mount %s" % (name, seed, " ".join(opts) or "defaults",
                                                               mount_opts or "defaults")
    copy, when = make_log_image(tmp, SCENARIOS[name], seed, opts, mount_opts)
    replay_and_verify(tmp, copy, when, ctx)


def test_read_only_mount_shows_last_commit(tmp):
    copy, _ = make_log_image(tmp, SCENARIOS["one"], 21)
    before = sha256(copy)
    with mounts.fuse_mount(BIN, copy) as m:
        names = sorted(os.listdir(m.path))
        text = m.stderr_text()
    assert names == ["d"], "the read-only mount should show the last commit only, got %s" % names
    assert "log tree" in text and "-o rw" in text, "no warning about the log:\n%s" % text
    assert sha256(copy) == before, "a read-only mount changed the image"
    assert log_root(copy), "a read-only mount dropped the log"
    # nologreplay, as with the kernel: fine read-only, refused read-write
    with mounts.fuse_mount(BIN, copy, options="ro,nologreplay") as m:
        assert sorted(os.listdir(m.path)) == ["d"]
    mp = tempfile.mkdtemp(prefix="btrfs-fmnt-", dir=tmp)
    p = run([BIN, "-f", "-o", "rw,nologreplay", copy, mp])
    os.rmdir(mp)
    assert p.returncode != 0 and "nologreplay needs a read-only mount" in p.stderr, p.stdout + p.stderr
    assert sha256(copy) == before, "a refused mount changed the image"


def log_leaf_copies(img):
    """(logical, [(devid, physical)...]) of the first subvolume log tree's root block."""
    out = hostile.dump_tree([img], "-b", str(log_root(img)))
    m = re.search(r"key \(TREE_LOG ROOT_ITEM \d+\).*?bytenr (\d+)", out, re.S)
    assert m, "no log root item in:\n%s" % out
    logical = int(m.group(1))
    return logical, hostile.map_logical(hostile.chunk_map([img]), logical)


def refused(tmp, copy, ctx):
    """Mount -o rw must fail with a clear message, leaving the image as it was."""
    before = sha256(copy)
    binary = ASAN if os.access(ASAN, os.X_OK) else BIN
    mp = tempfile.mkdtemp(prefix="btrfs-fmnt-", dir=tmp)
    p = run([binary, "-f", "-o", "rw", copy, mp])
    os.rmdir(mp)
    text = p.stdout + p.stderr
    assert p.returncode != 0, "%s: the mount should be refused:\n%s" % (ctx, text)
    assert not hostile.sanitizer_lines(text), "%s: sanitizer report:\n%s" % (ctx, text)
    assert "log" in text and "log block" in text and "zero-log" in text, "%s: unclear message:\n%s" % (ctx, text)
    assert sha256(copy) == before, "%s: the refused mount changed the image" % ctx
    return text


def test_damaged_log_block_is_refused(tmp):
    copy, _ = make_log_image(tmp, SCENARIOS["one"], 31)
    logical, copies = log_leaf_copies(copy)
    for _dev, phys in copies:  # every mirror, or the read would repair from the other
        hostile.flip_bytes(copy, phys + 200, 8)
    text = refused(tmp, copy, "log block %d damaged" % logical)
    assert str(logical) in text, text


def test_nonsense_log_item_is_refused(tmp):
    """A log leaf whose checksum is right but whose file extent names a data extent outside every block group."""
    copy, _ = make_log_image(tmp, SCENARIOS["one"], 32)
    logical, copies = log_leaf_copies(copy)
    nodesize = hostile.read_super(copy)["nodesize"]
    for _dev, phys in copies:
        blk = bytearray(hostile.read_at(copy, phys, nodesize))
        assert blk[100] == 0, "the log tree of block %d is not a single leaf" % logical
        nritems = struct.unpack_from("<I", blk, 96)[0]
        patched = False
        for i in range(nritems):
            off = 101 + i * 25
            _obj, typ, _koff, ioff, isize = struct.unpack_from("<QBQII", blk, off)
            if typ == 108 and isize >= 53 and blk[101 + ioff + 20] != 0:  # a regular EXTENT_DATA item
                struct.pack_into("<Q", blk, 101 + ioff + 21, (1 << 62) + 4096 * i)
                patched = True
        assert patched, "no regular file extent item in log leaf %d" % logical
        hostile.fix_csum(blk)
        hostile.write_at(copy, phys, bytes(blk))
    text = refused(tmp, copy, "nonsense file extent in log block %d" % logical)
    assert "data extent" in text, text


def test_empty_log_is_cleared(tmp):
    """A log root tree that names no log tree: nothing to replay, but the commit still clears log_root."""
    copy, _ = make_log_image(tmp, SCENARIOS["one"], 33)
    logical = log_root(copy)
    nodesize = hostile.read_super(copy)["nodesize"]
    for _dev, phys in hostile.map_logical(hostile.chunk_map([copy]), logical):
        blk = bytearray(hostile.read_at(copy, phys, nodesize))
        struct.pack_into("<I", blk, 96, 0)  # nritems
        hostile.fix_csum(blk)
        hostile.write_at(copy, phys, bytes(blk))
    with mounts.fuse_mount(BIN, copy, options="rw") as m:
        assert sorted(os.listdir(m.path)) == ["d"]
    assert log_root(copy) == 0, "the superblock still names the (empty) log"
    workload.assert_check_clean(copy, "replaying an empty log")


def log_blocks(img):
    """Every block of the log root tree and of the log trees it names: hostile's block list format."""
    chunks = hostile.chunk_map([img])
    roots = [log_root(img)]
    out = hostile.dump_tree([img], "-b", str(roots[0]))
    roots += [int(b) for b in re.findall(r"key \(TREE_LOG ROOT_ITEM \d+\).*?bytenr (\d+)", out, re.S)]
    blocks = []
    for r in roots:
        text = hostile.dump_tree([img], "-b", str(r), "--follow")
        for kind, logical, level in re.findall(r"^(leaf|node) (\d+) (?:level (\d+) )?items", text, re.M):
            blocks.append({"logical": int(logical), "level": int(level or 0), "owner": "TREE_LOG",
                           "copies": hostile.map_logical(chunks, int(logical))})
    return blocks


FUZZ_COUNT = int(os.environ.get("BTRFS_FUSE_LOGFUZZ_COUNT", "120" if SOAK else "24"))


def test_damaged_logs_never_crash(tmp):
    """Seeded damage to log blocks (bytes, headers, item headers, payloads and fields, checksums fixed or not):
    the read-write mount either replays and works, or is refused with a message naming the log; never a crash, a
    hang or a sanitizer report (the ASan+UBSan build when it is there); a refused mount leaves the image as it
    was."""
    base, _ = make_log_image(tmp, SCENARIOS["rich"], 41, ("-n", "4096"))  # a long log in small nodes
    blocks = log_blocks(base)
    meta = {"nodesize": hostile.read_super(base)["nodesize"], "blocks": blocks}
    binary = ASAN if os.access(ASAN, os.X_OK) else BIN
    failures = []
    outcomes = {"mounted": 0, "refused": 0}
    for case in range(FUZZ_COUNT):
        img = os.path.join(tmp, "fuzz.img")
        copy_sparse(base, img)
        what = hostile._mut_tree_block(random.Random(1000 + case), meta, img)
        before = sha256(img)
        v = hostile.run_image(binary, [img], options="rw", timeout=60)
        ctx = "case %d (seed %d): %s" % (case, 1000 + case, what)
        if v.failed:
            failures.append(v.report(ctx))
        elif v.status == "mounted" and log_root(img):
            failures.append("%s: replayed, but the superblock still names the log" % ctx)
        elif v.status == "refused":
            if "zero-log" not in v.output and "log tree" not in v.output:
                failures.append("%s: refused without naming the log:\n%s" % (ctx, v.output[-3000:]))
            elif sha256(img) != before:
                failures.append("%s: the refused mount changed the image" % ctx)
        outcomes[v.status] = outcomes.get(v.status, 0) + 1
        os.unlink(img)
    assert not failures, "%d of %d damaged logs went wrong:\n%s" % (len(failures), FUZZ_COUNT,
                                                                     "\n\n".join(failures[:5]))
    print("damaged logs: %s" % outcomes)

