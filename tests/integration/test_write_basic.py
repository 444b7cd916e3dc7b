"""Read-write mounts: what btrfs-fuse writes is what the kernel writes.

For fresh images of several mkfs variants (default, single metadata, without
no-holes, without skinny-metadata, xxhash checksums), the same scripted
sequence of namespace operations (mkdir, creat, mknod, symlink, link - also
enough links in one directory for INODE_EXTREF -, unlink, rmdir, rename with
RENAME_NOREPLACE and RENAME_EXCHANGE, over files and empty directories, across
directories; chmod, chown, utimensat with UTIME_NOW / UTIME_OMIT; xattrs with
XATTR_CREATE / XATTR_REPLACE and the size limit; many entries for leaf splits)
and of small file writes runs once on a kernel mount of one image and once on
a `btrfs-fuse -o rw` mount of its twin. Then for the btrfs-fuse image:

* `btrfs check --readonly --check-data-csum` exits 0 and says "no error found";
* the kernel mounts it without BTRFS warning/error lines in dmesg, and the tree
  it shows equals the kernel-made twin (names, types, modes, owners, nlink,
  sizes, inode numbers, xattrs, symlink targets, data; not times) and the
  errno of every refused operation is the kernel's;
* the kernel then changes it further, and btrfs-fuse (read-write again) shows
  exactly the kernel's result; btrfs check still passes.

Plus: several commits in one mount (sync), a file unlinked while open and the
daemon killed (the orphan is cleaned at the next read-write mount), an aborted
operation never reaching the image, and the read-only fallbacks.

Needs root (loop mounts, mknod). $BTRFS_FUSE overrides ./btrfs-fuse.
"""

import contextlib
import ctypes
import errno
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "lib"))
import mounts  # noqa: E402
import workload  # noqa: E402
import treecmp  # noqa: E402

BIN = os.path.abspath(os.environ.get("BTRFS_FUSE", os.path.join(REPO, "btrfs-fuse")))
ASAN = os.path.abspath(os.environ.get("BTRFS_FUSE_ASAN", os.path.join(REPO, "build-asan", "btrfs-fuse")))
IMG_SIZE = 1 << 30

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop mounts, mknod)"),
    pytest.mark.skipif(not os.access(BIN, os.X_OK), reason="btrfs-fuse binary not built: %s" % BIN),
    pytest.mark.skipif(shutil.which("mkfs.btrfs") is None, reason="mkfs.btrfs missing (btrfs-progs)"),
]

VARIANTS = {
    "default": [],
    "single-meta": ["-m", "single"],
    "no-no-holes": ["-O", "^no-holes"],
    "no-skinny": ["-O", "^skinny-metadata"],
    "xxhash": ["--csum", "xxhash"],
    "nodesize-4k": ["-n", "4096"],
    "nodesize-64k": ["-n", "65536"],
}

# Times cannot be compared between two runs; st_blocks of directories is 0 on both.
IGNORE = ("atime", "mtime", "ctime")

# ------------------------------------------------------------------ helpers

_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def renameat2(old, new, flags):
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), old)


def utimensat(path, atime, mtime):
    ts = (_Timespec * 2)(_Timespec(*atime), _Timespec(*mtime))
    if _libc.utimensat(AT_FDCWD, os.fsencode(path), ts, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)


def run(argv, **kw):
    return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=600, **kw)


def mkfs(path, opts):
    with open(path, "wb") as f:
        f.truncate(IMG_SIZE)
    p = run(["mkfs.btrfs", "-q", "-f"] + opts + [path])
    assert p.returncode == 0, "mkfs.btrfs %s failed: %s" % (" ".join(opts), p.stderr)


class Recorder:
    """Runs operations and records each one's errno (0 = success), so that the kernel's and btrfs-fuse's
    refusals can be compared as well as their results."""

    def __init__(self, root):
        self.root = root
        self.log = []

    def p(self, *parts):
        return os.path.join(self.root, *parts)

    def __call__(self, what, fn, *args, **kw):
        try:
            fn(*args, **kw)
            self.log.append((what, 0))
        except OSError as e:
            self.log.append((what, e.errno))


def namespace_ops(root, nodesize=16384):
    """The scripted namespace changes; returns the (operation, errno) log."""
    r = Recorder(root)
    P = r.p
    r("mkdir d1", os.mkdir, P("d1"))
    r("mkdir d2", os.mkdir, P("d2"), 0o700)
    r("mkdir -p d1/sub/deep", os.makedirs, P("d1", "sub", "deep"))
    for i in range(6):
        r("creat d1/f%d" % i, lambda i=i: open(P("d1", "f%d" % i), "w").close())
    r("mknod fifo", os.mknod, P("fifo"), 0o600 | stat.S_IFIFO)
    r("mknod chr", os.mknod, P("chr"), 0o644 | stat.S_IFCHR, os.makedev(1, 3))
    r("mknod blk", os.mknod, P("blk"), 0o640 | stat.S_IFBLK, os.makedev(259, 70000))
    r("mknod sock", os.mknod, P("sock"), 0o755 | stat.S_IFSOCK)
    r("symlink sl", os.symlink, "d1/f0", P("sl"))
    r("symlink longsl", os.symlink, "x" * 4000, P("longsl"))
    r("symlink d2/abs", os.symlink, "/abs/path", P("d2", "abs"))
    r("mkdir exists", os.mkdir, P("d1"))
    r("creat excl exists", lambda: os.close(os.open(P("d1", "f0"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)))
    r("mkdir name too long", os.mkdir, P("n" * 256))
    # hard links, and enough of them in one directory to overflow the INODE_REF item (extref)
    r("link d2/f0link", os.link, P("d1", "f0"), P("d2", "f0link"))
    r("link d1/f0b", os.link, P("d1", "f0"), P("d1", "f0b"))
    r("link dir", os.link, P("d1"), P("dirlink"))
    r("mkdir links", os.mkdir, P("links"))
    for i in range(80):
        r("link links/L%d" % i, os.link, P("d1", "f1"), P("links", "L%03d" % i + "y" * 240))
    for i in range(0, 80, 7):
        r("unlink links/L%d" % i, os.unlink, P("links", "L%03d" % i + "y" * 240))
    # many entries: leaf splits and merges
    r("mkdir many", os.mkdir, P("many"))
    for i in range(400):
        r("creat many/%d" % i, lambda i=i: open(P("many", "file-%04d-%s" % (i, "z" * (i % 50))), "w").close())
    for i in range(0, 400, 3):
        r("unlink many/%d" % i, os.unlink, P("many", "file-%04d-%s" % (i, "z" * (i % 50))))
    # renames
    r("rename same dir", os.rename, P("d1", "f2"), P("d1", "f2-renamed"))
    r("rename across", os.rename, P("d1", "f3"), P("d2", "f3-moved"))
    r("rename over file", os.rename, P("d1", "f4"), P("d2", "f3-moved"))
    r("mkdir emptydir", os.mkdir, P("emptydir"))
    r("rename dir over empty dir", os.rename, P("d1", "sub"), P("emptydir"))
    r("rename dir over non-empty dir", os.rename, P("d2"), P("emptydir"))
    r("rename dir over file", os.rename, P("emptydir"), P("d1", "f5"))
    r("rename file over dir", os.rename, P("d1", "f5"), P("emptydir"))
    r("rename dir across", os.rename, P("emptydir"), P("d2", "subdir-moved"))
    r("rename into own child", os.rename, P("d2"), P("d2", "subdir-moved", "x"))
    r("renameat2 noreplace", renameat2, P("d1", "f0b"), P("d2", "nr"), RENAME_NOREPLACE)
    r("renameat2 noreplace exists", renameat2, P("d2", "nr"), P("d2", "f0link"), RENAME_NOREPLACE)
    r("renameat2 exchange file dir", renameat2, P("d2", "nr"), P("d2", "subdir-moved"), RENAME_EXCHANGE)
    r("renameat2 exchange across", renameat2, P("d1", "f1"), P("d2", "f3-moved"), RENAME_EXCHANGE)
    r("renameat2 exchange missing", renameat2, P("d1", "f1"), P("d2", "nothing"), RENAME_EXCHANGE)
    r("rename hard links of one inode", os.rename, P("d1", "f0"), P("d2", "f0link"))
    r("rename missing", os.rename, P("d1", "nothing"), P("d1", "other"))
    # unlink, rmdir
    r("unlink", os.unlink, P("d1", "f2-renamed"))
    r("rmdir non-empty", os.rmdir, P("d2", "nr"))
    r("rmdir", os.rmdir, P("d2", "nr", "deep"))
    r("rmdir file", os.rmdir, P("fifo"))
    r("unlink dir", os.unlink, P("d2", "nr"))
    r("unlink missing", os.unlink, P("d1", "nothing"))
    # attributes
    r("chmod", os.chmod, P("d1", "f1"), 0o4755)
    r("chown", os.chown, P("d1", "f1"), 1234, 5678)
    r("utime", os.utime, P("d1", "f1"), ns=(1_000_000_000_123, 2_000_000_000_456))
    r("utimensat omit", utimensat, P("d2", "f0link"), (0, UTIME_OMIT), (1_500_000_000, 789))
    r("utimensat now", utimensat, P("d1", "f0b") if os.path.exists(P("d1", "f0b")) else P("sl"),
      (0, UTIME_NOW), (0, UTIME_OMIT))
    r("chown dir", os.chown, P("d2"), 0, 4321)
    r("chmod setgid dir", os.chmod, P("d2"), 0o2775)
    r("mkdir in setgid dir", os.mkdir, P("d2", "sgid-sub"), 0o755)
    r("creat in setgid dir", lambda: open(P("d2", "sgid-file"), "w").close())
    r("lchown symlink", os.lchown, P("sl"), 42, 43)
    # xattrs
    r("setxattr", os.setxattr, P("d1", "f1"), "user.a", b"1")
    r("setxattr replace", os.setxattr, P("d1", "f1"), "user.a", b"22", os.XATTR_REPLACE)
    r("setxattr create exists", os.setxattr, P("d1", "f1"), "user.a", b"3", os.XATTR_CREATE)
    r("setxattr replace missing", os.setxattr, P("d1", "f1"), "user.b", b"3", os.XATTR_REPLACE)
    r("setxattr dir", os.setxattr, P("d1"), "user.dir", b"v")
    r("setxattr trusted", os.setxattr, P("d1", "f1"), "trusted.t", b"x" * 3000)
    r("setxattr security", os.setxattr, P("d2", "sgid-file"), "security.s", b"label")
    r("setxattr empty", os.setxattr, P("d2", "sgid-file"), "user.empty", b"")
    r("setxattr bad namespace", os.setxattr, P("d1", "f1"), "foo.bar", b"1")
    r("setxattr on symlink", os.setxattr, P("sl"), "user.x", b"1", follow_symlinks=False)
    r("setxattr btrfs.compression", os.setxattr, P("d1"), "btrfs.compression", b"zstd")
    r("setxattr btrfs bad", os.setxattr, P("d1"), "btrfs.nosuchprop", b"1")
    r("creat in compressed dir", lambda: open(P("d1", "inherits"), "w").close())
    for i in range(40):
        r("setxattr many %d" % i, os.setxattr, P("d2", "sgid-file"), "user.many.%02d" % i, b"v" * i)
    r("removexattr", os.removexattr, P("d2", "sgid-file"), "user.many.07")
    r("removexattr missing", os.removexattr, P("d2", "sgid-file"), "user.many.07")
    limit = nodesize - 101 - 25 - 30  # BTRFS_MAX_XATTR_SIZE
    r("setxattr at the limit", os.setxattr, P("d1", "f5") if os.path.exists(P("d1", "f5")) else P("fifo"),
      "user.big", b"B" * (limit - len("user.big")))
    r("setxattr over the limit", os.setxattr, P("d2", "sgid-file"), "user.big",
      b"B" * (limit - len("user.big") + 1))
    r("setxattr grow", os.setxattr, P("d1", "f1"), "user.a", b"G" * 5000)
    r("setxattr shrink", os.setxattr, P("d1", "f1"), "user.a", b"s")
    # names whose btrfs name hashes (crc32c) collide share one DIR_ITEM / XATTR_ITEM, their records chained
    a, b, c, d = "c1371838", "c2000402", "c1371839", "c2000403"  # a~b, c~d
    r("mkdir collide", os.mkdir, P("collide"))
    r("creat collide a", lambda: open(P("collide", a), "w").close())
    r("creat collide b", lambda: open(P("collide", b), "w").close())
    r("creat collide b again", lambda: os.close(os.open(P("collide", b), os.O_CREAT | os.O_EXCL | os.O_WRONLY)))
    r("unlink collide a", os.unlink, P("collide", a))
    r("creat collide a back", lambda: open(P("collide", a), "w").close())
    r("rename collide b c", os.rename, P("collide", b), P("collide", c))
    r("mkdir collide d", os.mkdir, P("collide", d))
    r("rename collide over c", os.rename, P("collide", a), P("collide", c))
    r("rename collide d to b", os.rename, P("collide", d), P("collide", b))
    xa, xb = "user.x1371838", "user.x2000402"  # colliding xattr names
    f = P("collide", c)
    r("setxattr collide a", os.setxattr, f, xa, b"first")
    r("setxattr collide b", os.setxattr, f, xb, b"second")
    r("setxattr collide b create", os.setxattr, f, xb, b"x", os.XATTR_CREATE)
    r("setxattr collide a replace packed", os.setxattr, f, xa, b"replaced-longer-value")
    r("setxattr collide b replace packed", os.setxattr, f, xb, b"s2")
    r("removexattr collide a", os.removexattr, f, xa)
    r("setxattr collide a back", os.setxattr, f, xa, b"back")
    # POSIX ACLs: inheritance from a default ACL (posix_acl_create), chmod of an ACL (posix_acl_chmod), and an
    # access ACL the mode says all of (not stored; the mode follows it)
    r("mkdir acl", os.mkdir, P("acl"), 0o755)
    r("set default acl", os.setxattr, P("acl"), "system.posix_acl_default",
      acl([(1, 7, None), (2, 5, 1000), (4, 5, None), (0x10, 7, None), (0x20, 4, None)]))
    r("creat under default acl", lambda: os.close(os.open(P("acl", "file"), os.O_CREAT | os.O_WRONLY, 0o666)))
    r("mkdir under default acl", os.mkdir, P("acl", "sub"), 0o777)
    r("chmod with acl", os.chmod, P("acl", "file"), 0o640)
    r("set access acl", os.setxattr, P("d2", "sgid-file"), "system.posix_acl_access",
      acl([(1, 6, None), (4, 4, None), (0x20, 0, None)]))
    r("set access acl with mask", os.setxattr, P("d1", "f1"), "system.posix_acl_access",
      acl([(1, 7, None), (4, 5, None), (0x10, 1, None), (0x20, 1, None)]))
    return r.log


def acl(entries):
    """A POSIX ACL xattr value: version 2, then (tag, perm, id) entries (id None for the owner, group, mask and
    other entries)."""
    import struct
    out = struct.pack("<I", 2)
    for tag, perm, ident in entries:
        out += struct.pack("<HHI", tag, perm, 0xFFFFFFFF if ident is None else ident)
    return out


def data_ops(root):
    """Small file writes (inline extents, regular extents, appends, overwrites, truncation, holes)."""
    r = Recorder(root)
    P = r.p

    def write(name, data, off=None, mode="wb"):
        with open(P(name), mode) as f:
            if off is not None:
                f.seek(off)
            f.write(data)

    r("mkdir data", os.mkdir, P("data"))
    r("write tiny", write, "data/tiny", b"hello\n")
    r("write 2k", write, "data/two-k", bytes(range(256)) * 8)
    r("write 5k", write, "data/five-k", b"5" * 5000)
    r("write 300k", write, "data/big", bytes((i * 7) % 251 for i in range(300 * 1024)))
    r("append", write, "data/tiny", b"more\n", None, "ab")
    r("overwrite middle", write, "data/big", b"X" * 10000, 100000, "r+b")
    r("sparse", write, "data/sparse", b"end", 1 << 20)
    r("truncate down", os.truncate, P("data/big"), 12345)
    r("truncate up", os.truncate, P("data/five-k"), 70000)
    r("truncate zero", os.truncate, P("data/two-k"), 0)
    r("write after truncate", write, "data/two-k", b"again", None, "ab")
    r("rewrite", write, "data/rewritten", b"first version " * 100)
    r("rewrite 2", write, "data/rewritten", b"second")
    r("write then unlink", write, "data/gone", b"g" * 20000)
    r("unlink written", os.unlink, P("data/gone"))
    return r.log


def manifest(root):
    return treecmp.walk(os.fspath(root), hash_files=True, btrfs=True, xattrs=True)


def diff(a, b, labels, ignore=IGNORE):
    return treecmp.compare(a, b, ignore=ignore, labels=labels)


@contextlib.contextmanager
def fuse_rw(img, extra="", check_exit=True, binary=BIN):
    opts = "rw" + ("," + extra if extra else "")
    with mounts.fuse_mount(binary, img, options=opts, check_exit=check_exit) as m:
        assert "read-write" in m.stderr_text(), "btrfs-fuse did not mount read-write:\n" + m.stderr_text()
        yield m


@pytest.fixture
def tmp(tmp_path):
    yield str(tmp_path)


# ------------------------------------------------------------------ the main comparison

def _kernel_reference(img, opts, ops):
    mkfs(img, opts)
    with mounts.kernel_mount(img, options="rw") as k:
        log = [f(k.path) for f in ops]
    with mounts.kernel_mount(img, options="ro") as k:
        man = manifest(k.path)
    return log, man


def _kernel_shows(img):
    marker = mounts.dmesg_marker()
    with mounts.kernel_mount(img, options="ro") as k:
        man = manifest(k.path)
        loops = list(k.loops)
    errs = mounts.dmesg_btrfs_errors(marker, devices=loops)
    assert not errs, "the kernel complained mounting the btrfs-fuse image:\n" + "\n".join(errs)
    return man


def _kernel_more(root):
    os.mkdir(os.path.join(root, "kernel-dir"))
    with open(os.path.join(root, "kernel-dir", "file"), "wb") as f:
        f.write(b"written by the kernel\n" * 100)
    os.rename(os.path.join(root, "d1"), os.path.join(root, "kernel-dir", "d1-moved"))
    os.unlink(os.path.join(root, "sl"))
    os.link(os.path.join(root, "d2", "sgid-file"), os.path.join(root, "kernel-dir", "link"))
    os.setxattr(os.path.join(root, "kernel-dir"), "user.k", b"kernel")
    for name in os.listdir(os.path.join(root, "many"))[:50]:
        os.unlink(os.path.join(root, "many", name))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_write_matches_kernel(variant, tmp):
    _matches_kernel(variant, tmp, BIN)


def test_write_matches_kernel_under_sanitizers(tmp):
    """The default variant with the ASan+UBSan build of the daemon (any report makes it exit non-zero)."""
    if not os.access(ASAN, os.X_OK):
        pytest.skip("no sanitizer build at %s (make asan)" % ASAN)
    _matches_kernel("default", tmp, ASAN)


def _matches_kernel(variant, tmp, binary):
    opts = VARIANTS[variant]
    kimg, fimg = os.path.join(tmp, "kernel.img"), os.path.join(tmp, "fuse.img")
    nodesize = int(opts[1]) if opts[:1] == ["-n"] else 16384
    ops = [lambda root: namespace_ops(root, nodesize), data_ops]
    klog, kman = _kernel_reference(kimg, opts, ops)

    mkfs(fimg, opts)
    with fuse_rw(fimg, binary=binary) as m:
        flog = [f(m.path) for f in ops]
        fman_live = manifest(m.path)
    assert m.returncode == 0, "btrfs-fuse exited with %s:\n%s" % (m.returncode, m.stderr_text())
    for (kl, fl) in zip(klog, flog):
        bad = [(a, b) for a, b in zip(kl, fl) if a != b]
        assert not bad, "operations ended differently (kernel, btrfs-fuse): %s" % bad[:10]
    problems = diff(kman, fman_live, ("kernel", "btrfs-fuse live"))
    assert not problems, "btrfs-fuse showed a different tree while mounted:\n" + "\n".join(problems[:40])

    workload.assert_check_clean(fimg, "btrfs-fuse's writes (%s)" % variant)
    shown = _kernel_shows(fimg)
    problems = diff(kman, shown, ("kernel-made", "btrfs-fuse-made"))
    assert not problems, "the kernel shows a different tree:\n" + "\n".join(problems[:40])

    # The kernel changes the btrfs-fuse image; btrfs-fuse must show exactly that.
    marker = mounts.dmesg_marker()
    with mounts.kernel_mount(fimg, options="rw") as k:
        _kernel_more(k.path)
        loops = list(k.loops)
    with mounts.kernel_mount(fimg, options="ro") as k:
        after = manifest(k.path)
        loops += k.loops
    errs = mounts.dmesg_btrfs_errors(marker, devices=loops)
    assert not errs, "the kernel complained changing the btrfs-fuse image:\n" + "\n".join(errs)
    workload.assert_check_clean(fimg, "the kernel's changes on top (%s)" % variant)
    with fuse_rw(fimg, binary=binary) as m:
        seen = manifest(m.path)
    problems = diff(after, seen, ("kernel", "btrfs-fuse"), ignore=("atime",))
    assert not problems, "btrfs-fuse does not show the kernel's changes:\n" + "\n".join(problems[:40])
    workload.assert_check_clean(fimg, "a second read-write mount (%s)" % variant)


# ------------------------------------------------------------------ item by item

def fs_tree_items(img):
    """The items of subvolume 5 as `btrfs inspect-internal dump-tree` prints them, without what differs between
    two runs of the same operations: leaf layout (item slots, offsets, block headers), times, transids and
    generations, sequence numbers (the kernel's also move when someone merely queries the change cookie)."""
    out = run(["btrfs", "inspect-internal", "dump-tree", "-t", "5", img]).stdout
    items, cur = [], None
    for line in out.splitlines():
        m = re.match(r"\s*item \d+ key \((.*)\) itemoff \d+ itemsize (\d+)", line)
        if m:
            cur = ["key (%s) size %s" % (m.group(1), m.group(2))]
            items.append(cur)
            continue
        if cur is None or re.search(r"time |^\S|^leaf |^node |uuid", line):
            continue
        line = re.sub(r"\b(generation|transid|sequence) \d+", r"\1 N", line.strip())
        cur.append(line)
    return ["\n".join(i) for i in items]


def test_items_match_kernel(tmp):
    """Every item the namespace operations leave in the subvolume tree - keys (name hashes, directory indexes,
    extref hashes), sizes, inode fields, back references, entries, xattrs, symlink extents - equals the kernel's."""
    kimg, fimg = os.path.join(tmp, "kernel.img"), os.path.join(tmp, "fuse.img")
    mkfs(kimg, [])
    with mounts.kernel_mount(kimg, options="rw") as k:
        namespace_ops(k.path)
    mkfs(fimg, [])
    with fuse_rw(fimg) as m:
        namespace_ops(m.path)
    ki, fi = fs_tree_items(kimg), fs_tree_items(fimg)
    assert len(ki) > 500, "the dump of the kernel's tree looks wrong (%d items)" % len(ki)
    if ki != fi:
        import difflib
        d = list(difflib.unified_diff(ki, fi, "kernel", "btrfs-fuse", lineterm="", n=1))
        pytest.fail("subvolume tree items differ from the kernel's:\n" + "\n".join(d[:80]))


# ------------------------------------------------------------------ subvolumes, several devices

def _check_multi(imgs, what):
    """btrfs check of a filesystem on several image files (through loop devices it can scan)."""
    loops = [mounts.losetup_attach(i) for i in imgs]
    try:
        run(["btrfs", "device", "scan"] + loops)
        return workload.assert_check_clean(loops[0], what)
    finally:
        for l in loops:
            run(["btrfs", "device", "scan", "--forget", l])
            mounts.losetup_detach(l)


def _fuse_matches_kernel(imgs, change, what):
    """Change the filesystem through btrfs-fuse; the kernel must show what btrfs-fuse showed."""
    with fuse_rw(imgs) as m:
        change(m.path)
        live = manifest(m.path)
    if len(imgs) == 1:
        workload.assert_check_clean(imgs[0], what)
    else:
        _check_multi(imgs, what)
    marker = mounts.dmesg_marker()
    with mounts.kernel_mount(imgs, options="ro") as k:
        shown = manifest(k.path)
        loops = list(k.loops)
    errs = mounts.dmesg_btrfs_errors(marker, devices=loops)
    assert not errs, "the kernel complained (%s):\n%s" % (what, "\n".join(errs))
    problems = diff(live, shown, ("btrfs-fuse", "kernel"), ignore=("atime",))
    assert not problems, "the kernel shows something else (%s):\n%s" % (what, "\n".join(problems[:40]))


def _subvol_changes(root):
    P = lambda *a: os.path.join(root, *a)
    open(P("sv", "a"), "w").close()
    open(P("snap", "b"), "w").close()
    os.makedirs(P("sv", "inner", "deep"))
    with open(P("sv", "inner", "deep", "f"), "wb") as f:
        f.write(b"data" * 1000)
    os.rename(P("sv", "a"), P("sv", "inner", "a2"))
    with pytest.raises(OSError) as e:
        os.link(P("sv", "inner", "a2"), P("top"))
    assert e.value.errno == errno.EXDEV
    with pytest.raises(OSError) as e:
        os.rename(P("sv", "inner", "a2"), P("top"))
    assert e.value.errno == errno.EXDEV
    os.unlink(P("snap", "inner", "kept"))
    for i in range(200):
        open(P("snap", "many-%d" % i), "w").close()


def test_subvolume_and_snapshot_writes(tmp):
    img = os.path.join(tmp, "fs.img")
    mkfs(img, [])
    with mounts.kernel_mount(img, options="rw") as k:
        run(["btrfs", "subvolume", "create", os.path.join(k.path, "sv")])
        os.makedirs(os.path.join(k.path, "sv", "inner"))
        open(os.path.join(k.path, "sv", "inner", "kept"), "w").close()
        run(["btrfs", "subvolume", "snapshot", os.path.join(k.path, "sv"), os.path.join(k.path, "snap")])
    _fuse_matches_kernel([img], _subvol_changes, "writes in a subvolume and its snapshot")
    # the subvolume mounted by itself
    with mounts.fuse_mount(BIN, img, options="rw,subvol=sv") as m:
        os.mkdir(os.path.join(m.path, "from-subvol-mount"))
    workload.assert_check_clean(img, "a subvol= mount")
    with mounts.kernel_mount(img, options="ro") as k:
        assert os.path.isdir(os.path.join(k.path, "sv", "from-subvol-mount"))


@pytest.mark.parametrize("profile", ["raid1", "dup-single"])
def test_two_devices(profile, tmp):
    imgs = [os.path.join(tmp, "d%d.img" % i) for i in range(2)]
    for i in imgs:
        with open(i, "wb") as f:
            f.truncate(IMG_SIZE)
    opts = ["-m", "raid1", "-d", "raid1"] if profile == "raid1" else ["-m", "dup", "-d", "single"]
    p = run(["mkfs.btrfs", "-q", "-f"] + opts + imgs)
    assert p.returncode == 0, p.stderr

    def change(root):
        namespace_ops(root)
        data_ops(root)
        with open(os.path.join(root, "large"), "wb") as f:
            f.write(bytes(range(256)) * 40000)

    _fuse_matches_kernel(imgs, change, "two devices, %s" % profile)


# ------------------------------------------------------------------ many writers at once

def _worker(root, w, n):
    d = os.path.join(root, "w%d" % w)
    os.mkdir(d)
    for i in range(n):
        f = os.path.join(d, "f%d" % i)
        with open(f, "wb") as fh:
            fh.write(b"%d %d\n" % (w, i) * (1 + i % 300))
        os.rename(f, os.path.join(d, "g%d" % i))
        if i % 3 == 0:
            os.unlink(os.path.join(d, "g%d" % i))
        elif i > 1 and i % 3 == 2:
            os.link(os.path.join(d, "g%d" % (i - 1)), os.path.join(d, "h%d" % i))
            os.setxattr(os.path.join(d, "g%d" % (i - 1)), "user.i", b"%d" % i)
        os.listdir(d)


def test_parallel_changes_with_periodic_commits(tmp):
    """Six writers through FUSE's threads while the commit thread commits every second."""
    import threading
    img = os.path.join(tmp, "fs.img")
    mkfs(img, [])
    errors = []

    def run_worker(root, w):
        try:
            _worker(root, w, 250)
        except Exception as e:  # reported below
            errors.append("worker %d: %r" % (w, e))

    gen0 = _super_field(img, "generation")
    with fuse_rw(img, "commit=1") as m:
        threads = [threading.Thread(target=run_worker, args=(m.path, w)) for w in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(2.5)
        live = manifest(m.path)
        committed = _super_field(img, "generation")
    assert not errors, errors
    assert committed > gen0, "the commit thread did not commit while mounted (generation %d)" % committed
    workload.assert_check_clean(img, "parallel writers")
    with mounts.kernel_mount(img, options="ro") as k:
        shown = manifest(k.path)
    problems = diff(live, shown, ("btrfs-fuse", "kernel"), ignore=("atime",))
    assert not problems, "\n".join(problems[:40])


# ------------------------------------------------------------------ commits, orphans, aborts, fallbacks

def test_several_commits_and_backup_roots(tmp):
    img = os.path.join(tmp, "fs.img")
    mkfs(img, [])
    gen0 = _super_field(img, "generation")
    with fuse_rw(img) as m:
        for i in range(6):
            os.mkdir(os.path.join(m.path, "dir%d" % i))
            fd = os.open(m.path, os.O_RDONLY)
            os.fsync(fd)  # a full commit
            os.close(fd)
    gen = _super_field(img, "generation")
    assert gen >= gen0 + 6, "six fsyncs made only %d commits" % (gen - gen0)
    out = run(["btrfs", "inspect-internal", "dump-super", "-f", img]).stdout
    gens = sorted(int(g) for g in re.findall(r"backup_tree_root:\s+\d+\s+gen:\s+(\d+)", out))
    assert gens == [gen - 3, gen - 2, gen - 1, gen], "backup roots are not the last four commits: %s" % gens
    workload.assert_check_clean(img, "six commits")
    with mounts.kernel_mount(img, options="ro") as k:
        assert sorted(os.listdir(k.path)) == ["dir%d" % i for i in range(6)]


def _super_field(img, name):
    out = run(["btrfs", "inspect-internal", "dump-super", img]).stdout
    return int(re.search(r"^%s\s+(\d+)" % name, out, re.M).group(1))


def _orphans(img):
    out = run(["btrfs", "inspect-internal", "dump-tree", "-t", "5", img]).stdout
    return re.findall(r"key \(ORPHAN ORPHAN_ITEM (\d+)\)", out)


def test_unlinked_open_file_and_orphan_cleanup(tmp):
    img = os.path.join(tmp, "fs.img")
    mkfs(img, [])
    with fuse_rw(img, check_exit=False) as m:
        path = os.path.join(m.path, "victim")
        with open(path, "wb") as f:
            f.write(b"v" * 100000)
        keep = os.open(path, os.O_RDONLY)
        os.unlink(path)
        assert os.read(keep, 5) == b"vvvvv", "an unlinked open file must stay readable"
        os.fsync(keep)  # commits the unlink with its orphan item
        assert _orphans(img), "no ORPHAN_ITEM for a file unlinked while open"
        # the daemon dies without releasing the file
        for pid in mounts._find_daemon_pids(BIN, m.path) or [m.proc.pid]:
            os.kill(pid, signal.SIGKILL)
        m.proc.wait(timeout=10)
        os.close(keep)
        run(["fusermount3", "-u", "-z", m.path])
    workload.assert_check_clean(img, "a kill with an orphan")
    with fuse_rw(img) as m:
        assert os.listdir(m.path) == []
    assert not _orphans(img), "the orphan was not cleaned up at the next read-write mount"
    workload.assert_check_clean(img, "orphan cleanup")
    out = run(["btrfs", "inspect-internal", "dump-tree", "-t", "5", img]).stdout
    assert "(257 INODE_ITEM" not in out, "the orphan inode's items are still there:\n" + out


def test_release_deletes_unlinked_file(tmp):
    img = os.path.join(tmp, "fs.img")
    mkfs(img, [])
    with fuse_rw(img) as m:
        path = os.path.join(m.path, "f")
        f = open(path, "wb")
        f.write(b"x" * 50000)
        f.flush()
        os.unlink(path)
        f.close()
    assert not _orphans(img)
    workload.assert_check_clean(img, "unlink while open, then close")
    out = run(["btrfs", "inspect-internal", "dump-tree", "-t", "5", img]).stdout
    assert "(257 " not in out, "the released inode's items are still there"


def test_signal_commits(tmp):
    img = os.path.join(tmp, "fs.img")
    mkfs(img, [])
    for sig in (signal.SIGTERM, signal.SIGINT):
        with fuse_rw(img, check_exit=False) as m:
            os.mkdir(os.path.join(m.path, "by-%d" % sig))
            m.proc.send_signal(sig)
            m.proc.wait(timeout=30)
            assert m.proc.returncode == 0, m.stderr_text()
    workload.assert_check_clean(img, "SIGTERM and SIGINT")
    with mounts.kernel_mount(img, options="ro") as k:
        assert sorted(os.listdir(k.path)) == sorted("by-%d" % s for s in (signal.SIGTERM, signal.SIGINT))


def test_default_is_read_only(tmp):
    img = os.path.join(tmp, "fs.img")
    mkfs(img, [])
    with mounts.fuse_mount(BIN, img) as m:
        with pytest.raises(OSError) as e:
            os.mkdir(os.path.join(m.path, "x"))
        assert e.value.errno == errno.EROFS


def test_log_tree_is_replayed(tmp):
    """-o rw replays a log tree (tests/integration/test_logreplay.py compares with the kernel's replay); the
    default read-only mount shows the last commit."""
    img = os.path.join(tmp, "fs.img")
    mkfs(img, [])
    # make the kernel leave a log tree: fsync, then drop the device without a commit
    with mounts.kernel_mount(img, options="rw,commit=3600") as k:
        with open(os.path.join(k.path, "f"), "wb") as f:
            f.write(b"x")
            f.flush()
            os.fsync(f.fileno())
        run(["dmsetup", "--version"])
        subprocess.run(["sh", "-c", "echo 3 > /proc/sys/vm/drop_caches"])
        out = run(["btrfs", "inspect-internal", "dump-super", k.loops[0]]).stdout
        log_root = int(re.search(r"^log_root\s+(\d+)", out, re.M).group(1))
        if not log_root:
            pytest.skip("the kernel committed before the test could catch its log tree")
        # copy the image as it is now (with the log tree), while the kernel still has it mounted
        shutil.copyfile(img, img + ".log")
    with mounts.fuse_mount(BIN, img + ".log") as m:
        text = m.stderr_text()
        assert "log tree" in text and "-o rw" in text, text
        assert not os.path.exists(os.path.join(m.path, "f")), "a read-only mount shows the last commit"
    with mounts.fuse_mount(BIN, img + ".log", options="rw") as m:
        text = m.stderr_text()
        assert "log tree replayed" in text, text
        with open(os.path.join(m.path, "f"), "rb") as f:
            assert f.read() == b"x"
        os.mkdir(os.path.join(m.path, "x"))
    workload.assert_check_clean(img + ".log", "log replay")
