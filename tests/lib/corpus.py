"""Deterministic corpus of btrfs images for btrfs-fuse tests.

Every image is described by a Spec in SPECS.  build_corpus() makes each one
in <corpus dir>/<name>/ (default build/corpus, env BTRFS_FUSE_CORPUS), only
when it is missing or its fingerprint (GENERATOR_VERSION, seed, mkfs/mount
options, ...) changed.  Each image directory holds:

    dev0.img [dev1.img ...]   sparse image files (the devices, in order)
    manifest.json             what the image is (see below); written last
    source/                   rootdir images: the mkfs --rootdir input
    twin.img                  rootdir images with sectorsize > 4096: the same
                              source made with sectorsize 4096 (the kernel
                              can mount it; used by the harness self-test)

Images are populated through the kernel (mkfs.btrfs, loop mount, seeded
writes, unmount) or made with mkfs.btrfs --rootdir from a generated source
directory.  All contents, names, sizes, modes, owners, explicitly set times
and the filesystem UUID derive from the seed; natural timestamps (ctime,
untouched mtimes) and device UUIDs do not.

manifest.json keys: name, generator_version, fingerprint, seed, kind
("kernel" | "rootdir"), images (file names), mkfs_options, mount_options
(used while populating), compare_with ("kernel" | "source"), modes (list of
[mode id, mount options] the read test runs), files ([path, type, size] of
everything in the image, top-level subvolume view), notes ({path: why it is
there}), expected ({features, csum, nodesize, sectorsize, num_devices,
profiles, default_subvol {path, id}, subvolumes [...]}), build_seconds.

IMPORTANT: bump GENERATOR_VERSION whenever a populate function changes,
so that cached corpora are rebuilt.
"""

import concurrent.futures
import ctypes
import fcntl
import hashlib
import json
import os
import random
import re
import shutil
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import traceback
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mounts  # noqa: E402
import treecmp  # noqa: E402

GENERATOR_VERSION = 2
DEFAULT_SEED = 20240611
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

# mkfs options that btrfs-progs 6.2 rejects, with what the corpus does instead
UNSUPPORTED = {
    "-O block-group-tree": "not in btrfs-progs 6.2 (only experimental builds); image omitted",
    "-O ^free-space-tree": "free-space-tree is a runtime feature in 6.2: -R ^free-space-tree used",
}


def corpus_dir(path=None):
    return os.path.abspath(path or os.environ.get("BTRFS_FUSE_CORPUS")
                           or os.path.join(REPO, "build", "corpus"))


def base_seed():
    return int(os.environ.get("BTRFS_FUSE_CORPUS_SEED", DEFAULT_SEED))


class BuildError(RuntimeError):
    pass


def run(argv, **kw):
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, **kw)
    if p.returncode != 0:
        raise BuildError("command failed (exit %d): %s\n%s%s" % (
            p.returncode, " ".join(argv), p.stdout, p.stderr))
    return p.stdout


# ------------------------------------------------------------ low-level ops

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
FICLONERANGE = 0x4020940d


def fallocate(fd, mode, off, length):
    if _libc.fallocate(fd, mode, off, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def clone_range(src_fd, src_off, length, dst_fd, dst_off):
    fcntl.ioctl(dst_fd, FICLONERANGE, struct.pack("qQQQ", src_fd, src_off, length, dst_off))


def posix_acl(entries):
    """Binary system.posix_acl_* value; entries: [(tag, perm, id)], tag in
    user_obj user group_obj group mask other."""
    tags = {"user_obj": 1, "user": 2, "group_obj": 4, "group": 8, "mask": 0x10, "other": 0x20}
    out = struct.pack("<I", 2)
    for tag, perm, ident in sorted(entries, key=lambda e: (tags[e[0]], e[2])):
        out += struct.pack("<HHI", tags[tag], perm, ident if ident is not None else 0xFFFFFFFF)
    return out


def text_bytes(rng, n):
    """Compressible, word-like data."""
    if n <= 0:
        return b""
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(300)]
    out = bytearray()
    while len(out) < n:
        out += b" ".join(rng.choices(words, k=4096)) + b"\n"
    return bytes(out[:n])


def rand_bytes(rng, n):
    return rng.randbytes(n) if n > 0 else b""


def rand_name(rng, n, alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"):
    return "".join(rng.choice(alphabet) for _ in range(n))


# ------------------------------------------------------------------ context

class Ctx:
    """Passed to populate functions: root dir, seeded rng, recorders."""

    def __init__(self, root, seed, spec, source_mode=False):
        self.root = root
        self.rng = random.Random(seed)
        self.spec = spec
        self.notes = {}
        self.expected = {}
        self.deferred_times = []     # (rel, atime_ns, mtime_ns)
        self.source_mode = source_mode   # populating a --rootdir source dir

    def p(self, rel):
        return os.path.join(self.root, rel)

    def note(self, rel, text):
        self.notes[rel] = text

    def mkdir(self, rel, mode=None):
        os.makedirs(self.p(rel), exist_ok=True)
        if mode is not None:
            os.chmod(self.p(rel), mode)
        return rel

    def write(self, rel, data, pieces=1, fsync=False, note=None):
        """Write data; pieces>1 writes it in that many seeded-size chunks, with
        fsync between them if asked (-> separate extents)."""
        path = self.p(rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            if pieces <= 1 or len(data) < 2:
                os.write(fd, data) if data else None
            else:
                cuts = sorted(self.rng.sample(range(1, len(data)), min(pieces - 1, len(data) - 1)))
                prev = 0
                for c in cuts + [len(data)]:
                    mv = memoryview(data)[prev:c]
                    while mv:
                        n = os.write(fd, mv)
                        mv = mv[n:]
                    prev = c
                    if fsync:
                        os.fsync(fd)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if note:
            self.note(rel, note)
        return rel

    def pwrite(self, rel, off, data, fsync=False):
        fd = os.open(self.p(rel), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, data, off)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def set_times(self, rel, atime_ns, mtime_ns):
        """Applied at the very end (deepest paths first), so that later
        changes to a directory's entries do not overwrite them."""
        self.deferred_times.append((rel, atime_ns, mtime_ns))

    def rand_time(self):
        # whole seconds in source mode: mkfs --rootdir drops nanoseconds
        ns = 0 if self.source_mode else self.rng.randrange(10**9)
        return self.rng.randrange(10**8, 2 * 10**9) * 10**9 + ns

    def finish(self):
        if self.source_mode:
            # mkfs --rootdir keeps whole seconds only: give every entry of a
            # source dir seeded whole-second times (explicit ones win)
            explicit = {rel for rel, _, _ in self.deferred_times}
            allp = []
            for dp, dns, fns in os.walk(self.root):
                for n in dns + fns:
                    allp.append(os.path.relpath(os.path.join(dp, n), self.root))
            for rel in sorted(allp):
                if rel not in explicit:
                    t = self.rand_time()
                    self.deferred_times.append((rel, t + self.rng.randrange(10**6) * 10**9, t))
        for rel, a, m in sorted(self.deferred_times, key=lambda t: -t[0].count("/")):
            os.utime(self.p(rel), ns=(a, m), follow_symlinks=False)

    def sub(self, *argv):
        return run(list(argv))


# ------------------------------------------------------- populate: pieces

def add_sparse(c, d, big=False):
    c.mkdir(d)
    rng = c.rng
    if big:
        f = d + "/big5g"
        fd = os.open(c.p(f), os.O_WRONLY | os.O_CREAT, 0o644)
        os.pwrite(fd, rand_bytes(rng, 3000), 0)
        os.pwrite(fd, rand_bytes(rng, 64 * KiB), 4 * GiB - 32 * KiB)   # straddles 2^32
        os.pwrite(fd, rand_bytes(rng, MiB), 5 * GiB - 3 * MiB + 123)
        os.ftruncate(fd, 5 * GiB + 12345)
        os.close(fd)
        c.note(f, ">4GiB sparse file, data at 0, across 4GiB and near 5GiB")
    c.write(d + "/hole_start", b"")
    c.pwrite(d + "/hole_start", 1 * MiB + 7, rand_bytes(rng, 5000))
    c.write(d + "/hole_end", rand_bytes(rng, 10000))
    os.truncate(c.p(d + "/hole_end"), 3 * MiB + 1)
    c.write(d + "/hole_middle", rand_bytes(rng, 70000))
    c.pwrite(d + "/hole_middle", 2 * MiB + 3, rand_bytes(rng, 70000))
    c.write(d + "/all_hole", b"")
    os.truncate(c.p(d + "/all_hole"), 10 * MiB + 5)
    c.write(d + "/holes_many", b"")
    for i in range(40):
        c.pwrite(d + "/holes_many", i * 64 * KiB + rng.randrange(8192), rand_bytes(rng, rng.randrange(1, 9000)))
    c.write(d + "/unaligned", b"")
    c.pwrite(d + "/unaligned", 10000, b"x" * 100)
    c.pwrite(d + "/unaligned", 70001, rand_bytes(rng, 333))
    c.note(d, "sparse files: holes at start/middle/end, many holes, unaligned data")


def add_fallocate(c, d):
    c.mkdir(d)
    rng = c.rng
    f = c.p(d + "/plain")
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
    fallocate(fd, 0, 0, MiB)
    os.pwrite(fd, rand_bytes(rng, 4096), 256 * KiB)
    os.pwrite(fd, rand_bytes(rng, 100), 700000)
    os.close(fd)
    f = c.p(d + "/keep_size")
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, rand_bytes(rng, 10000))
    fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 2 * MiB)
    os.pwrite(fd, rand_bytes(rng, 3000), 8192)
    os.close(fd)
    f = c.p(d + "/keep_size_beyond")
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, rand_bytes(rng, 1000))
    fallocate(fd, FALLOC_FL_KEEP_SIZE, 4096, MiB)
    os.pwrite(fd, rand_bytes(rng, 500), 2000)
    os.close(fd)
    f = c.p(d + "/prealloc_tail")
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, rand_bytes(rng, 3 * 4096))
    os.fsync(fd)
    fallocate(fd, 0, 3 * 4096, 5 * 4096 + 77)
    os.close(fd)
    f = c.p(d + "/punched")
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, rand_bytes(rng, MiB))
    os.fsync(fd)
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 100 * KiB, 200 * KiB)
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 5000, 2000)
    os.close(fd)
    f = c.p(d + "/zero_range")
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, rand_bytes(rng, 300000))
    os.fsync(fd)
    fallocate(fd, FALLOC_FL_ZERO_RANGE, 40000, 100000)
    os.close(fd)
    c.note(d, "fallocate: plain, KEEP_SIZE (partly written, beyond EOF), punch hole, zero range")


def add_sizes(c, d, sizes, gen=rand_bytes):
    c.mkdir(d)
    for n in sizes:
        c.write("%s/size_%d" % (d, n), gen(c.rng, n))


def add_hardlinks(c, d, many=0):
    c.mkdir(d + "/sub")
    c.mkdir(d + "/other")
    c.write(d + "/a", rand_bytes(c.rng, 5000))
    os.link(c.p(d + "/a"), c.p(d + "/b"))
    os.link(c.p(d + "/a"), c.p(d + "/sub/c"))
    os.link(c.p(d + "/a"), c.p(d + "/other/d"))
    c.write(d + "/two", b"two links\n")
    os.link(c.p(d + "/two"), c.p(d + "/other/two_again"))
    os.symlink("a", c.p(d + "/sym"))
    os.link(c.p(d + "/sym"), c.p(d + "/sub/sym_hardlink"), follow_symlinks=False)
    os.mkfifo(c.p(d + "/fifo"))
    os.link(c.p(d + "/fifo"), c.p(d + "/other/fifo_link"))
    c.note(d + "/a", "nlink=4 across directories")
    if many:
        c.mkdir(d + "/many")
        c.write(d + "/many/target", b"many links\n")
        for i in range(many):
            os.link(c.p(d + "/many/target"),
                    c.p("%s/many/%03d_%s" % (d, i, rand_name(c.rng, 190))))
        c.note(d + "/many", "%d hard links with long names in one dir (inode extrefs)" % many)


def add_symlinks(c, d, long_len=4000):
    c.mkdir(d)
    os.symlink("../files/one", c.p(d + "/short"))
    target = "/".join(rand_name(c.rng, 30) for _ in range(long_len // 31 + 1))[:long_len]
    os.symlink(target, c.p(d + "/long"))
    c.note(d + "/long", "symlink with a %d-byte target" % long_len)
    os.symlink("does/not/exist", c.p(d + "/dangling"))
    os.symlink("..", c.p(d + "/to_parent"))
    os.symlink("/etc/passwd", c.p(d + "/absolute"))
    os.symlink("ünïcödé/日本語/😀", c.p(d + "/unicode"))
    os.symlink("self", c.p(d + "/self"))
    os.symlink("x", c.p(d + "/s"))


def add_special(c, d, rdev=True):
    c.mkdir(d)
    os.mkfifo(c.p(d + "/fifo"))
    path = c.p(d + "/socket")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if len(path) < 100:
            s.bind(path)
        else:
            dfd = os.open(c.p(d), os.O_RDONLY | os.O_DIRECTORY)
            try:
                s.bind("/proc/self/fd/%d/socket" % dfd)
            finally:
                os.close(dfd)
    finally:
        s.close()
    # mkfs.btrfs 6.2 --rootdir drops st_rdev: sources only get 0:0 devices
    devs = [("chr_mem_null", stat.S_IFCHR, 1, 3), ("blk_loop", stat.S_IFBLK, 7, 200),
            ("chr_big", stat.S_IFCHR, 4095, 1048575), ("blk_nvme", stat.S_IFBLK, 259, 65543),
            ("chr_zero", stat.S_IFCHR, 0, 0)]
    for name, kind, ma, mi in devs:
        if not rdev:
            ma = mi = 0
        os.mknod(c.p("%s/%s" % (d, name)), kind | 0o640, os.makedev(ma, mi))


def add_xattrs(c, d, acl=True, trusted=True, security=True, capability=True, many=60,
               big=3000):
    c.mkdir(d)
    rng = c.rng
    f = c.write(d + "/file", b"xattrs\n")
    fp = c.p(f)
    os.setxattr(fp, "user.small", b"1")
    os.setxattr(fp, "user.empty", b"")
    os.setxattr(fp, "user.binary", rand_bytes(rng, 100))
    os.setxattr(fp, "user.big", rand_bytes(rng, big))
    os.setxattr(fp, "user.ünicode", "välue".encode())
    if trusted:
        os.setxattr(fp, "trusted.test", b"trusted value")
    if security:
        os.setxattr(fp, "security.test", b"security value")
    many_f = c.p(c.write(d + "/many", b""))
    for i in range(many):
        os.setxattr(many_f, "user.x%02d_%s" % (i, rand_name(rng, rng.randrange(1, 40))),
                    rand_bytes(rng, rng.randrange(0, 200 if many > 20 else 60)))
    dd = c.mkdir(d + "/dir")
    os.setxattr(c.p(dd), "user.on_dir", b"dir value")
    os.symlink("file", c.p(d + "/symlink"))
    if trusted:
        os.setxattr(c.p(d + "/symlink"), "trusted.on_symlink", b"lnk", follow_symlinks=False)
        os.mkfifo(c.p(d + "/fifo"))
        os.setxattr(c.p(d + "/fifo"), "trusted.on_fifo", b"fifo", follow_symlinks=False)
    if acl:
        a = c.p(c.write(d + "/acl", b"acl\n"))
        acl_val = posix_acl([("user_obj", 6, None), ("user", 7, 1000), ("user", 4, 2000),
                             ("group_obj", 4, None), ("group", 5, 100), ("mask", 7, None),
                             ("other", 4, None)])
        if shutil.which("setfacl"):
            run(["setfacl", "-m", "u:1000:rwx,u:2000:r,g:100:rx", a])
        else:
            os.setxattr(a, "system.posix_acl_access", acl_val)
        ad = c.p(c.mkdir(d + "/acl_default_dir"))
        if shutil.which("setfacl"):
            run(["setfacl", "-d", "-m", "u:1000:rx,g:100:r", ad])
        else:
            os.setxattr(ad, "system.posix_acl_default", posix_acl(
                [("user_obj", 7, None), ("user", 5, 1000), ("group_obj", 5, None),
                 ("group", 4, 100), ("mask", 5, None), ("other", 5, None)]))
        c.write(d + "/acl_default_dir/inherits", b"inherited acl\n")
        c.mkdir(d + "/acl_default_dir/subdir")
        c.note(d + "/acl_default_dir", "default ACL, children inherit access ACLs")
    if capability:
        cf = c.p(c.write(d + "/capability", b"#!/bin/sh\n"))
        # vfs_cap_data v2, effective, CAP_NET_BIND_SERVICE permitted
        os.setxattr(cf, "security.capability", struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0))


def add_btrfs_property(c, d):
    c.mkdir(d)
    f = c.write(d + "/compress_prop", text_bytes(c.rng, 50000))
    run(["btrfs", "property", "set", c.p(f), "compression", "zstd"])
    run(["btrfs", "property", "set", c.p(c.mkdir(d + "/dir_zlib")), "compression", "zlib"])
    c.write(d + "/dir_zlib/child", text_bytes(c.rng, 100000))
    c.note(d, "btrfs.compression property (xattr) on a file and a dir")


def add_bigdir(c, d, n, with_content_every=100):
    c.mkdir(d)
    rng = c.rng
    base = c.p(d)
    for i in range(n):
        name = "%05d-%s" % (i, rand_name(rng, rng.randrange(1, 60)))
        if i % 997 == 5:
            os.mkdir(os.path.join(base, name))
            continue
        if i % 1009 == 7:
            os.symlink("../" + name, os.path.join(base, name))
            continue
        fd = os.open(os.path.join(base, name), os.O_WRONLY | os.O_CREAT, 0o644)
        if i % with_content_every == 0:
            os.write(fd, rand_bytes(rng, rng.randrange(1, 3000)))
        os.close(fd)
    c.note(d, "directory with %d entries" % n)


def add_deep(c, d, levels):
    rng = c.rng
    parts = [d] + ["L%02d_%s" % (i, rand_name(rng, rng.randrange(5, 30))) for i in range(levels)]
    rel = "/".join(parts)
    c.mkdir(rel)
    c.write(rel + "/bottom", b"at the bottom\n")
    os.symlink("/".join([".."] * levels), c.p(rel + "/up"))
    c.note(rel, "%d levels deep" % levels)


def add_names(c, d):
    c.mkdir(d)
    rng = c.rng
    names = [
        rand_name(rng, 255),                        # 255 ASCII bytes
        "é" * 127 + "x",                            # 255 bytes, 2-byte chars
        "日" * 85,                                  # 255 bytes, 3-byte chars
        "😀" * 63 + "abc",                          # 255 bytes, 4-byte chars
        "with space", "tab\tname", "newline\nname", "back\\slash", "quote'\"",
        "-dash", ".hidden", "..dots", "...", "#hash", "*star?", "[br]{ce}",
        "nfc_\u00e9", "nfd_e\u0301", "\u02bbokina", "ctrl\x01char", "ＦＵＬＬ",
        "Ω≈ç√∫", "עברית", "ελληνικά", "한국어", "a" * 200 + "é",
        os.fsdecode(b"bad_utf8_\xff\xfe\x80"), os.fsdecode(b"latin1_caf\xe9"),
    ]
    for i, n in enumerate(names):
        if i % 5 == 4:
            os.mkdir(c.p(d + "/" + n))
            c.write(d + "/" + n + "/inside", n.encode("utf-8", "surrogateescape"))
        else:
            c.write(d + "/" + n, ("%d:" % i).encode() + n.encode("utf-8", "surrogateescape"))
    c.note(d, "255-byte, unicode, invalid-UTF-8 and odd-character names")


def add_modes(c, d, owners=True):
    c.mkdir(d)
    modes = [0, 0o777, 0o4755, 0o2755, 0o1777, 0o7777, 0o6000, 0o444, 0o111, 0o640]
    for m in modes:
        f = c.write("%s/mode_%04o" % (d, m), b"m")
        os.chmod(c.p(f), m)
    dm = c.mkdir(d + "/dir_0700")
    os.chmod(c.p(dm), 0o700)
    ds = c.mkdir(d + "/dir_sticky_1777")
    os.chmod(c.p(ds), 0o1777)
    d3 = c.mkdir(d + "/dir_2750")
    os.chmod(c.p(d3), 0o2750)
    if owners:
        for uid, gid in [(1000, 1000), (65534, 65534), (123456789, 987654321),
                         (4294967294, 4294967294), (0, 12345)]:
            f = c.write("%s/owner_%d_%d" % (d, uid, gid), b"o")
            os.chown(c.p(f), uid, gid)
        os.chown(c.p(dm), 1000, 1000)
        os.symlink("mode_0000", c.p(d + "/symlink_owned"))
        os.chown(c.p(d + "/symlink_owned"), 1234, 5678, follow_symlinks=False)
    c.note(d, "odd modes (suid/sgid/sticky/000) and uids/gids")


def add_times(c, d, source_mode=False):
    c.mkdir(d)
    times = [(0, 0), (1, 10**9 - 1), (2**31 - 1, 2**31 - 1), (2**31, 2**31 + 1),
             (2**33 + 5, 2**33), (1700000000, 1700000000)]
    if not source_mode:
        times += [(-1, -1), (-10**9 - 1, -(2**31))]     # 1969, 1938 / 1901
    for i, (a, m) in enumerate(times):
        if source_mode:
            a, m = a * 10**9, m * 10**9        # whole seconds
        elif i >= 2:
            a, m = a * 10**9 + 123456789, m * 10**9 + 987654321
        f = c.write("%s/t%d" % (d, i), b"t")
        c.set_times(f, a, m)
    c.mkdir(d + "/dir")
    c.set_times(d + "/dir", c.rand_time(), c.rand_time())
    os.symlink("t0", c.p(d + "/symlink"))
    c.set_times(d + "/symlink", c.rand_time(), c.rand_time())
    c.set_times(d, c.rand_time(), c.rand_time())
    c.note(d, "explicit times (ns, pre-1970, y2038, far future)")


def add_multi_extent(c, d, size=6 * MiB):
    c.mkdir(d)
    c.write(d + "/pieces_fsync", rand_bytes(c.rng, size), pieces=12, fsync=True,
            note="written in 12 unaligned pieces with fsync between")
    c.write(d + "/pieces_small", rand_bytes(c.rng, 300000), pieces=40, fsync=True)
    c.write(d + "/one_write", rand_bytes(c.rng, size + 4097))


# ------------------------------------------------------ populate: images

def populate_default(c):
    c.mkdir("files")
    c.write("files/empty", b"")
    c.write("files/one", b"1")
    for n in (100, 2047, 2048, 2049, 4095, 4096, 4097, 8191, 8193, 65536 + 3):
        c.write("files/size_%d" % n, rand_bytes(c.rng, n))
    c.write("files/text_10k", text_bytes(c.rng, 10000))
    c.note("files", "sizes around the inline limit (2048) and the sector size")
    add_multi_extent(c, "multi")
    add_sparse(c, "sparse", big=True)
    add_fallocate(c, "falloc")
    add_hardlinks(c, "hardlinks", many=300)
    add_symlinks(c, "symlinks", long_len=4000)
    add_special(c, "special")
    add_xattrs(c, "xattrs")
    add_btrfs_property(c, "property")
    add_bigdir(c, "bigdir", 10000)
    add_deep(c, "deep", 50)
    add_names(c, "names")
    add_modes(c, "modes")
    add_times(c, "times")
    # a subvolume, snapshotted, then overwritten in the middle
    c.sub("btrfs", "subvolume", "create", c.p("sv"))
    c.write("sv/data", rand_bytes(c.rng, 2 * MiB), pieces=3, fsync=True)
    c.write("sv/log", text_bytes(c.rng, 20000))
    c.write("sv/trunc", rand_bytes(c.rng, 300000))
    c.write("sv/removed", b"removed after snapshot\n")
    c.sub("btrfs", "subvolume", "snapshot", c.p("sv"), c.p("sv-snap"))
    c.pwrite("sv/data", MiB + 1234, rand_bytes(c.rng, 8192), fsync=True)
    c.pwrite("sv/data", 4096, rand_bytes(c.rng, 4096), fsync=True)
    with open(c.p("sv/log"), "ab") as f:
        f.write(text_bytes(c.rng, 3000))
    os.truncate(c.p("sv/trunc"), 100001)
    os.unlink(c.p("sv/removed"))
    c.write("sv/new", b"new after snapshot\n")
    c.note("sv/data", "overwritten in the middle after snapshot sv-snap")


def add_compressible_set(c, d):
    rng = c.rng
    c.mkdir(d)
    sizes = [1, 17, 100, 1000, 2047, 2048, 2049, 3000, 4000, 4095, 4096, 4097, 8191,
             8192, 12293, 65536, 131071, 131072, 131073, 200000, MiB, 3 * MiB + 17]
    kinds = {
        "text": lambda n: text_bytes(rng, n),
        "same": lambda n: bytes([rng.randrange(256)]) * n,
        "random": lambda n: rand_bytes(rng, n),
        "mixed": lambda n: (rand_bytes(rng, n // 3) + text_bytes(rng, n // 3)
                            + b"\0" * (n - 2 * (n // 3))),
    }
    for kind, gen in kinds.items():
        for n in sizes:
            if kind in ("random", "mixed") and n > MiB:
                continue
            c.write("%s/%s_%d" % (d, kind, n), gen(n))
    c.note(d, "sizes x {text, single-byte, random, mixed}; small compressible ones are inline-compressed")


def populate_compress(c):
    rng = c.rng
    add_compressible_set(c, "sizes")
    d = c.mkdir("partial")
    c.write(d + "/overwrite_middle", text_bytes(rng, MiB), fsync=True)
    c.pwrite(d + "/overwrite_middle", 300001, text_bytes(rng, 5000), fsync=True)
    c.write(d + "/overwrite_boundary", text_bytes(rng, MiB), fsync=True)
    c.pwrite(d + "/overwrite_boundary", 131072 - 100, rand_bytes(rng, 300), fsync=True)
    c.pwrite(d + "/overwrite_boundary", 5 * 131072 + 4096, text_bytes(rng, 4096), fsync=True)
    c.write(d + "/punched", text_bytes(rng, MiB), fsync=True)
    fd = os.open(c.p(d + "/punched"), os.O_RDWR)
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 200000, 200000)
    os.close(fd)
    c.write(d + "/truncated", text_bytes(rng, MiB), fsync=True)
    os.truncate(c.p(d + "/truncated"), 500001)
    c.write(d + "/truncated_grown", text_bytes(rng, 300000), fsync=True)
    os.truncate(c.p(d + "/truncated_grown"), 100003)
    os.truncate(c.p(d + "/truncated_grown"), 400000)
    # reflinks of parts of compressed extents
    c.write(d + "/clone_src", text_bytes(rng, MiB), fsync=True)
    c.write(d + "/clone_dst", rand_bytes(rng, 64 * KiB), fsync=True)
    s = os.open(c.p(d + "/clone_src"), os.O_RDWR)
    t = os.open(c.p(d + "/clone_dst"), os.O_RDWR)
    clone_range(s, 65536 + 4096, 3 * 4096, t, 3 * 4096)
    clone_range(s, 150 * 4096, 40 * 4096, t, 64 * KiB + 8192)
    clone_range(s, 0, 4096 * 2, s, 200 * 4096)          # within the same file
    os.fsync(t)
    os.fsync(s)
    os.close(s)
    os.close(t)
    c.note(d + "/clone_dst", "FICLONERANGE of parts of compressed extents (extent offset != 0)")
    c.write(d + "/appended", b"")
    fd = os.open(c.p(d + "/appended"), os.O_WRONLY | os.O_APPEND)
    for i in range(50):
        os.write(fd, text_bytes(rng, rng.randrange(100, 3000)))
        os.fsync(fd)
    os.close(fd)
    c.write(d + "/sparse_compressed", b"")
    for i in range(8):
        c.pwrite(d + "/sparse_compressed", i * 300000 + rng.randrange(5000),
                 text_bytes(rng, rng.randrange(1000, 150000)), fsync=True)
    c.note(d, "partially overwritten/punched/truncated/cloned compressed files")
    add_hardlinks(c, "hardlinks")
    add_xattrs(c, "xattrs", capability=False)
    c.write("inline_text_3000", text_bytes(rng, 3000))
    c.write("inline_text_4000", text_bytes(rng, 4000))


def populate_small(c, bigdir=400, long_symlink=1000, deep=10, source=False):
    """A small population covering every kind of object; used by feature
    variants, profiles and --rootdir sources (source=True: only what mkfs
    --rootdir can reproduce: no rdev, whole-second times)."""
    rng = c.rng
    c.write("files/empty", b"")
    c.write("files/one", b"1")
    for n in (100, 2048, 2049, 4095, 4096, 4097, 16383, 16384, 16385, 65535, 65536,
              65537, 200000):
        c.write("files/size_%d" % n, rand_bytes(rng, n))
    c.write("files/text", text_bytes(rng, 150000))
    c.write("files/multi", rand_bytes(rng, MiB + 3), pieces=6, fsync=not source)
    c.mkdir("sparse")
    c.write("sparse/hole_middle", rand_bytes(rng, 5000))
    c.pwrite("sparse/hole_middle", 2 * MiB + 100, rand_bytes(rng, 5000))
    c.write("sparse/hole_end", rand_bytes(rng, 7000))
    os.truncate(c.p("sparse/hole_end"), MiB + 5)
    c.write("sparse/hole_start", b"")
    c.pwrite("sparse/hole_start", 300000, rand_bytes(rng, 20000))
    c.write("sparse/empty_5m", b"")
    os.truncate(c.p("sparse/empty_5m"), 5 * MiB)
    if not source:
        fd = os.open(c.p(c.write("sparse/falloc_keep", rand_bytes(rng, 3000))), os.O_RDWR)
        fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 256 * KiB)
        os.close(fd)
    add_hardlinks(c, "hardlinks")
    c.mkdir("symlinks")
    os.symlink("../files/one", c.p("symlinks/short"))
    os.symlink(rand_name(rng, long_symlink, "abcdef/"), c.p("symlinks/long"))
    os.symlink("nowhere", c.p("symlinks/dangling"))
    add_special(c, "special", rdev=not source)
    # source dirs live on ext4 here: all xattrs of an inode must fit in 4 KiB
    add_xattrs(c, "xattrs", capability=not source, many=12 if source else 60,
               big=1500 if source else 3000)
    add_bigdir(c, "bigdir", bigdir, with_content_every=50)
    add_deep(c, "deep", deep)
    c.mkdir("names")
    for n in ("ünïcödé", "日本語", "😀", rand_name(rng, 255), "sp ace"):
        c.write("names/" + n, n.encode())
    add_modes(c, "modes")
    add_times(c, "times", source_mode=source)


def populate_profile(c):
    populate_small(c, bigdir=200)
    rng = c.rng
    c.mkdir("bulk")
    c.write("bulk/big_10m", rand_bytes(rng, 10 * MiB), pieces=5, fsync=True)
    for i in range(3):
        c.write("bulk/mid_%d" % i, rand_bytes(rng, 3 * MiB + rng.randrange(4096)))
    for i in range(6):
        c.write("bulk/small_%d" % i, rand_bytes(rng, rng.randrange(100 * KiB, MiB)))
    c.write("bulk/text_2m", text_bytes(rng, 2 * MiB))
    c.note("bulk", "~24 MiB of data spread over stripes/devices")


def _subvol_id(c, rel):
    out = run(["btrfs", "inspect-internal", "rootid", c.p(rel)])
    return int(out.strip())


def populate_subvol(c):
    rng = c.rng
    sv = lambda *a: c.sub("btrfs", "subvolume", *a)  # noqa: E731
    c.write("top/file", b"top-level file\n")
    c.mkdir("subvols")
    sv("create", c.p("subvols/a"))
    c.write("subvols/a/file1", rand_bytes(rng, 300000), pieces=3, fsync=True)
    c.write("subvols/a/inline", b"inline data in a\n")
    c.write("subvols/a/dir/x", b"x\n")
    c.write("subvols/a/hl1", b"hardlinked\n")
    os.link(c.p("subvols/a/hl1"), c.p("subvols/a/dir/hl2"))
    sv("create", c.p("subvols/a/nested"))
    c.write("subvols/a/nested/nfile", rand_bytes(rng, 5000))
    sv("create", c.p("subvols/a/nested/deeper"))
    c.write("subvols/a/nested/deeper/dfile", b"deeper\n")
    c.mkdir("subvols/a/nested/plain_dir")
    sv("snapshot", c.p("subvols/a"), c.p("subvols/snap_a"))
    c.note("subvols/snap_a/nested", "empty placeholder dir of a nested subvolume in a snapshot")
    # changes after the snapshot
    c.pwrite("subvols/a/file1", 100000, rand_bytes(rng, 10000), fsync=True)
    os.unlink(c.p("subvols/a/dir/x"))
    os.rename(c.p("subvols/a/inline"), c.p("subvols/a/renamed"))
    c.write("subvols/a/new_after_snap", b"new\n")
    c.write("subvols/snap_a/written_in_snapshot", b"snapshots are writable\n")
    sv("snapshot", "-r", c.p("subvols/a"), c.p("subvols/snap_a_ro"))
    sv("snapshot", c.p("subvols/snap_a"), c.p("subvols/snap_of_snap"))
    sv("create", c.p("subvols/default_sv"))
    c.write("subvols/default_sv/I_AM_DEFAULT", b"default subvolume\n")
    c.write("subvols/default_sv/data", rand_bytes(rng, 100000))
    sv("create", c.p("subvols/default_sv/inner"))
    c.write("subvols/default_sv/inner/f", b"inner\n")
    sv("create", c.p("subvols/tmp_deleted"))
    c.write("subvols/tmp_deleted/gone", b"gone\n")
    sv("delete", "-c", c.p("subvols/tmp_deleted"))
    sv("sync", c.root)
    sv("snapshot", c.root, c.p("snap_top"))
    default_id = _subvol_id(c, "subvols/default_sv")
    sv("set-default", str(default_id), c.root)
    c.expected["default_subvol"] = {"path": "subvols/default_sv", "id": default_id}
    c.note("subvols/default_sv", "the default subvolume (set-default)")


# ---------------------------------------------------------------- the specs

class Spec:
    def __init__(self, name, populate, mkfs=(), ndevs=1, dev_size=GiB, mount="",
                 kind="kernel", compare_with="kernel", modes=None, post=None,
                 profile=None, note=""):
        self.name = name
        self.populate = populate
        self.mkfs = list(mkfs)
        self.ndevs = ndevs
        self.dev_size = dev_size
        self.mount = mount
        self.kind = kind
        self.compare_with = compare_with
        self.modes = modes or [["default", ""]]
        self.post = post
        self.profile = profile       # expected data profile name, checked
        self.note = note

    def seed(self, base=None):
        base = base_seed() if base is None else base
        return int.from_bytes(hashlib.sha256(("%d:%s" % (base, self.name)).encode()).digest()[:6], "big")

    def fsid(self, base=None):
        return str(uuid.UUID(bytes=hashlib.sha256(("fsid:%d" % self.seed(base)).encode()).digest()[:16], version=4))

    def images(self):
        return ["dev%d.img" % i for i in range(self.ndevs)]

    def fingerprint(self, base=None):
        d = [GENERATOR_VERSION, self.name, self.mkfs, self.ndevs, self.dev_size, self.mount,
             self.kind, self.compare_with, self.modes, self.seed(base),
             self.populate.__name__, getattr(self.post, "__name__", None)]
        return hashlib.sha256(json.dumps(d).encode()).hexdigest()[:16]


def post_metadata_uuid(spec, paths, seed):
    new = str(uuid.UUID(bytes=hashlib.sha256(("muuid:%d" % seed).encode()).digest()[:16], version=4))
    run(["btrfstune", "-f", "-M", new, paths[0]])
    return {"metadata_uuid_set": new}


def _mk_specs():
    S = []
    S.append(Spec("default", populate_default,
                  note="default mkfs (DUP metadata, no-holes, free-space-tree), every kind of object"))
    for name, mopt in [("compress-zlib", "compress=zlib"), ("compress-lzo", "compress=lzo"),
                       ("compress-zstd", "compress=zstd"),
                       ("compress-force-zstd", "compress-force=zstd"),
                       ("compress-force-lzo", "compress-force=lzo"),
                       ("compress-zstd15", "compress=zstd:15")]:
        S.append(Spec(name, populate_compress, mount=mopt, note="populated with -o " + mopt))
    S.append(Spec("subvol", populate_subvol, note="nested subvolumes, snapshots, ro snapshot, default subvolume",
                  modes=[["default", ""], ["subvolid-5", "subvolid=5"],
                         ["subvol-default_sv", "subvol=subvols/default_sv"],
                         ["subvol-a/nested", "subvol=subvols/a/nested"],
                         ["subvol-snap_a_ro", "subvol=subvols/snap_a_ro"],
                         ["subvolid-of-a", "subvolid=@subvols/a"]]))
    feats = [
        ("feat-no-holes-off", ["-O", "^no-holes"], {}),
        ("feat-skinny-off", ["-O", "^skinny-metadata"], {}),
        ("feat-fst-off", ["-R", "^free-space-tree"], {}),
        ("feat-extref-off", ["-O", "^extref"], {}),
        ("feat-quota", ["-R", "quota"], {}),
        ("feat-mixed", ["-M"], {}),
        ("csum-xxhash", ["--csum", "xxhash"], {}),
        ("csum-sha256", ["--csum", "sha256"], {}),
        ("csum-blake2", ["--csum", "blake2"], {}),
        ("nodesize-4k", ["-n", "4096"], {"bigdir": 1500}),
        ("nodesize-64k", ["-n", "65536"], {"bigdir": 1500}),
        ("metadata-uuid", [], {}),
    ]
    for name, opts, kw in feats:
        def pop(c, kw=kw):
            populate_small(c, **kw)
        pop.__name__ = "populate_small"
        S.append(Spec(name, pop, mkfs=opts, dev_size=512 * MiB,
                      post=post_metadata_uuid if name == "metadata-uuid" else None,
                      note="small population, mkfs " + (" ".join(opts) or "+ btrfstune -M")))
    profiles = [
        ("raid1", 2, ["-m", "raid1", "-d", "raid1"], "RAID1"),
        ("raid1c3", 3, ["-m", "raid1c3", "-d", "raid1c3"], "RAID1C3"),
        ("raid1c4", 4, ["-m", "raid1c4", "-d", "raid1c4"], "RAID1C4"),
        ("raid10", 4, ["-m", "raid10", "-d", "raid10"], "RAID10"),
        ("raid0", 2, ["-m", "raid1", "-d", "raid0"], "RAID0"),
        ("raid5", 3, ["-m", "raid5", "-d", "raid5"], "RAID5"),
        ("raid6", 4, ["-m", "raid6", "-d", "raid6"], "RAID6"),
        ("dup-data", 1, ["-m", "dup", "-d", "dup"], "DUP"),
        ("single-2dev", 2, ["-m", "raid1", "-d", "single"], "single"),
    ]
    for name, n, opts, prof in profiles:
        S.append(Spec("profile-" + name, populate_profile, mkfs=opts, ndevs=n,
                      dev_size=320 * MiB, profile=prof,
                      note="%d devices, mkfs %s" % (n, " ".join(opts))))
    rootdirs = [
        ("rootdir-s16k", ["-s", "16384", "-n", "16384"], "source"),
        ("rootdir-s64k", ["-s", "65536", "-n", "65536"], "source"),
        ("rootdir-s16k-blake2", ["-s", "16384", "-n", "16384", "--csum", "blake2"], "source"),
        ("rootdir-csum-crc32c", ["--csum", "crc32c"], "kernel"),
        ("rootdir-csum-xxhash", ["--csum", "xxhash"], "kernel"),
        ("rootdir-csum-sha256", ["--csum", "sha256"], "kernel"),
        ("rootdir-csum-blake2", ["--csum", "blake2"], "kernel"),
    ]
    for name, opts, cw in rootdirs:
        def pop(c):
            populate_small(c, source=True, bigdir=300)
        pop.__name__ = "populate_small_source"
        S.append(Spec(name, pop, mkfs=opts, kind="rootdir", compare_with=cw, dev_size=256 * MiB,
                      note="mkfs --rootdir %s; compared with %s" % (" ".join(opts), cw)))
    return S


SPECS = _mk_specs()
SPEC_BY_NAME = {s.name: s for s in SPECS}


# ------------------------------------------------------------- inspection

def dump_super(path):
    out = run(["btrfs", "inspect-internal", "dump-super", path])
    info = {}
    cur = None
    for line in out.splitlines():
        m = re.match(r"^(\w[\w.]*)\s+(.*)$", line)
        if m:
            cur = m.group(1)
            info[cur] = m.group(2).strip()
        elif cur and line.startswith(("\t", " ")):
            info[cur] += " " + line.strip()
    def flags(key):
        return sorted(set(re.findall(r"\b([A-Z][A-Z0-9_]+)\b", info.get(key, "").split("(", 1)[-1]))
                      - {"X"})
    return {
        "csum": info.get("csum_type", "").split("(")[-1].rstrip(")"),
        "nodesize": int(info.get("nodesize", 0)),
        "sectorsize": int(info.get("sectorsize", 0)),
        "num_devices": int(info.get("num_devices", 0)),
        "fsid": info.get("fsid"),
        "metadata_uuid": info.get("metadata_uuid"),
        "incompat": flags("incompat_flags"),
        "compat_ro": flags("compat_ro_flags"),
        "generation": int(info.get("generation", 0)),
    }


def fs_profiles(mp):
    out = run(["btrfs", "filesystem", "df", mp])
    prof = {}
    for line in out.splitlines():
        m = re.match(r"^(Data|Metadata|System|Data\+Metadata), (\S+):", line)
        if m:
            prof.setdefault(m.group(1), []).append(m.group(2))
    return prof


def subvolumes(mp):
    out = run(["btrfs", "subvolume", "list", mp])
    ro = set(re.findall(r"^ID (\d+) ", run(["btrfs", "subvolume", "list", "-r", mp]), re.M))
    res = []
    for line in out.splitlines():
        m = re.match(r"^ID (\d+) gen \d+ top level (\d+) path (.*)$", line)
        if m:
            res.append({"id": int(m.group(1)), "parent": int(m.group(2)),
                        "path": m.group(3), "readonly": m.group(1) in ro})
    return res


def list_files(root):
    m = treecmp.walk(root, hash_files=False, xattrs=False)
    return [[p, e.get("type"), e.get("size")] for p, e in sorted(m["entries"].items())]


# ----------------------------------------------------------------- build

_print_lock = threading.Lock()


def _log(msg):
    with _print_lock:
        print(msg, flush=True)


def _mkfs(spec, paths, extra):
    argv = ["mkfs.btrfs", "-f", "-q", "-U", spec.fsid()] + spec.mkfs + extra + paths
    run(argv)
    return argv


def _sparse(path, size):
    with open(path, "wb") as f:
        f.truncate(size)


def verify_rootdir(image, source_manifest, what):
    """Kernel view of a (4K-sector) rootdir image must equal the source
    under the btrfs expectation rules; otherwise the rules (and so the
    compare_with: source tests) would be wrong."""
    with mounts.kernel_mount(image, "ro") as m:
        km = treecmp.walk(m.path)
    diffs = treecmp.compare(km, treecmp.expect_btrfs_from_source(source_manifest),
                            labels=("kernel", "source"))
    if diffs:
        raise BuildError("%s: kernel view of the --rootdir image differs from its source "
                         "(mkfs --rootdir rules in treecmp.expect_btrfs_from_source need "
                         "updating):\n  %s" % (what, "\n  ".join(diffs[:40])))


def build_image(spec, cdir, seed_base=None):
    t0 = time.monotonic()
    seed = spec.seed(seed_base)
    final = os.path.join(cdir, spec.name)
    work = final + ".building"
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    paths = [os.path.join(work, f) for f in spec.images()]
    for p in paths:
        _sparse(p, spec.dev_size)
    man = {
        "name": spec.name, "generator_version": GENERATOR_VERSION,
        "fingerprint": spec.fingerprint(seed_base), "seed": seed,
        "base_seed": base_seed() if seed_base is None else seed_base,
        "kind": spec.kind, "images": spec.images(), "mount_options": spec.mount,
        "compare_with": spec.compare_with, "modes": spec.modes, "note": spec.note,
        "dev_size": spec.dev_size, "expected": {},
    }
    if spec.kind == "kernel":
        man["mkfs_options"] = _mkfs(spec, paths, [])[1:-len(paths)]
        with mounts.kernel_mount(paths, spec.mount or "rw") as m:
            c = Ctx(m.path, seed, spec)
            os.chmod(m.path, 0o755)
            spec.populate(c)
            c.finish()
            os.sync()
            man["expected"]["profiles"] = fs_profiles(m.path)
            man["expected"]["subvolumes"] = subvolumes(m.path)
            man["files"] = list_files(m.path)
    else:
        src = os.path.join(work, "source")
        os.makedirs(src)
        os.chmod(src, 0o755)
        c = Ctx(src, seed, spec, source_mode=True)
        spec.populate(c)
        c.finish()
        man["mkfs_options"] = _mkfs(spec, paths, ["--rootdir", src])[1:-len(paths)]
        man["files"] = list_files(src)
        src_manifest = treecmp.walk(src, btrfs=False)
        sectorsize = dump_super(paths[0])["sectorsize"]
        if sectorsize > 4096:
            twin = os.path.join(work, "twin.img")
            _sparse(twin, spec.dev_size)
            tw_opts = [o for o in spec.mkfs]
            i = tw_opts.index("-s")
            tw_opts[i + 1] = "4096"
            run(["mkfs.btrfs", "-f", "-q", "-U", spec.fsid()] + tw_opts + ["--rootdir", src, twin])
            man["twin_image"] = "twin.img"
            man["twin_mkfs_options"] = tw_opts + ["--rootdir", src]
            man["kernel_mountable"] = False
            verify_rootdir(twin, src_manifest, spec.name + " (twin.img)")
        else:
            man["kernel_mountable"] = True
            verify_rootdir(paths[0], src_manifest, spec.name)
        with mounts.kernel_mount(paths[0], "ro") if sectorsize == 4096 else _null() as m:
            if m is not None:
                man["expected"]["profiles"] = fs_profiles(m.path)
    if spec.post:
        man["expected"].update(spec.post(spec, paths, seed) or {})
    man["expected"].update(dump_super(paths[0]))
    man["expected"].update(c.expected)
    man["notes"] = c.notes
    man.setdefault("kernel_mountable", True)
    if spec.profile:
        got = man["expected"].get("profiles", {}).get("Data", [])
        if spec.profile not in got:
            raise BuildError("%s: expected data profile %s, got %s" % (spec.name, spec.profile, got))
    # record the final location of the source dir, not the temporary one
    for k in ("mkfs_options", "twin_mkfs_options"):
        if k in man:
            man[k] = [a.replace(work + "/", final + "/") for a in man[k]]
    man["build_seconds"] = round(time.monotonic() - t0, 2)
    with open(os.path.join(work, "manifest.json"), "w") as f:
        json.dump(man, f, indent=1, sort_keys=True, ensure_ascii=True)
    # wait until no test (of any session) has the old image mounted
    with mounts.image_lock([os.path.join(final, f) for f in spec.images() + ["twin.img"]]):
        shutil.rmtree(final, ignore_errors=True)
        os.rename(work, final)
    return man


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def load_manifest(cdir, name):
    try:
        with open(os.path.join(cdir, name, "manifest.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_current(spec, cdir, seed_base=None):
    man = load_manifest(cdir, spec.name)
    if not man or man.get("generator_version") != GENERATOR_VERSION:
        return False
    if man.get("fingerprint") != spec.fingerprint(seed_base):
        return False
    return all(os.path.exists(os.path.join(cdir, spec.name, f)) for f in man["images"])


def build_corpus(cdir=None, only=None, force=False, jobs=2, seed_base=None, quiet=False):
    """Build (what is missing of) the corpus; returns {name: manifest}."""
    cdir = corpus_dir(cdir)
    os.makedirs(cdir, exist_ok=True)
    specs = [s for s in SPECS if not only or s.name in only]
    unknown = set(only or ()) - {s.name for s in SPECS}
    if unknown:
        raise BuildError("unknown image(s): %s" % ", ".join(sorted(unknown)))
    lockf = open(os.path.join(cdir, ".lock"), "w")
    fcntl.flock(lockf, fcntl.LOCK_EX)          # one builder at a time
    try:
        todo = [s for s in specs if force or not is_current(s, cdir, seed_base)]
        say = (lambda m: None) if quiet else _log
        if todo:
            say("corpus: %s: %d of %d images to build (seed %d, generator v%d, %d jobs)" % (
                cdir, len(todo), len(specs), base_seed() if seed_base is None else seed_base,
                GENERATOR_VERSION, jobs))
        t0 = time.monotonic()
        done = [0]
        errors = []

        def one(spec):
            t = time.monotonic()
            try:
                build_image(spec, cdir, seed_base)
            except Exception as e:   # noqa: BLE001
                errors.append((spec.name, "%s\n%s" % (e, traceback.format_exc())))
                say("corpus: [%d/%d] %-24s FAILED: %s" % (done[0] + 1, len(todo), spec.name,
                                                          str(e).splitlines()[0]))
                return
            finally:
                done[0] += 1
            say("corpus: [%d/%d] %-24s %5.1fs" % (done[0], len(todo), spec.name, time.monotonic() - t))

        # big images first, so that both workers stay busy
        todo.sort(key=lambda s: (s.name != "default", s.populate.__name__ != "populate_compress"))
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as ex:
            list(ex.map(one, todo))
        if todo:
            say("corpus: built %d images in %.1fs" % (len(todo) - len(errors), time.monotonic() - t0))
        if errors:
            raise BuildError("corpus build failed for %s:\n%s" % (
                ", ".join(n for n, _ in errors),
                "\n".join("--- %s:\n%s" % (n, e) for n, e in errors)))
        return {s.name: load_manifest(cdir, s.name) for s in specs}
    finally:
        fcntl.flock(lockf, fcntl.LOCK_UN)
        lockf.close()


def image_paths(cdir, man):
    return [os.path.join(corpus_dir(cdir), man["name"], f) for f in man["images"]]


def disk_usage(cdir=None):
    """Real (allocated) bytes used by the corpus directory."""
    total = 0
    for dp, dn, fn in os.walk(corpus_dir(cdir)):
        for f in fn:
            try:
                total += os.lstat(os.path.join(dp, f)).st_blocks * 512
            except OSError:
                pass
    return total
