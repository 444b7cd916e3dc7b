"""Seeded random filesystem workload for the write tests, and the helpers those tests share.

Owns: the workload generator (Workload), its model of the tree (Model, Node), the outcome
log and its comparison (first_divergence, format_divergence), the per-entry time filter for
manifests (Workload.time_filter), and small write-test helpers (mkfs_image, btrfs_check,
scrub, mount_under_test, Watchdog).

Key idea: the generator never lists the directory it works on to choose what to do next.
It keeps a model of the tree (directories, names, hard links, file sizes, xattr names,
which times were set explicitly) and draws every choice -- operation, target, name, offset,
size, data -- from one random.Random(seed) and that model.  After each operation the model
is updated from the operation's *outcome* (success: apply the POSIX semantics; failure: no
change), so it follows the filesystem exactly, and two runs with the same seed on two
filesystems that behave the same issue the very same sequence of system calls.  Each
operation's outcome ("ok ...", or the errno name) is appended to an outcome log; two logs
are compared entry by entry and the first difference, with the operations before it, is
the report.  All paths are relative to a directory fd of the root, so the mountpoint's own
path never changes a result (PATH_MAX, ENAMETOOLONG).

Safety: device nodes get unassigned/local major numbers, and nothing is ever opened unless
the model says it is a regular file (opened with O_NOFOLLOW|O_NONBLOCK and checked with
fstat before any write); mount with nodev as well.

    wl = Workload(seed)            # same seed on both sides
    wl.run(mountpoint, 2000)       # -> wl.log: [(seq, op description, outcome)]
    wl.verify(mountpoint)          # model vs. what the mount shows -> [problems]
    wl.time_filter(manifest)       # drop the times the workload did not set explicitly
"""

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import random
import re
import shlex
import stat
import subprocess
import threading
import time

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

# --------------------------------------------------------------- syscalls (ctypes)

_libc = ctypes.CDLL(None, use_errno=True)
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
AT_SYMLINK_NOFOLLOW = 0x100
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
_O_RD = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_O_WR = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _check(rc, what):
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, "%s: %s" % (what, os.strerror(e)))


def renameat2(olddirfd, old, newdirfd, new, flags):
    _check(_libc.renameat2(olddirfd, os.fsencode(old), newdirfd, os.fsencode(new),
                           ctypes.c_uint(flags)), "renameat2")


def utimensat(dirfd, path, atime_ns, mtime_ns):
    """lutimes with ns precision; None = UTIME_OMIT, "now" = UTIME_NOW."""
    ts = (_Timespec * 2)()
    for i, v in enumerate((atime_ns, mtime_ns)):
        if v is None:
            ts[i].tv_sec, ts[i].tv_nsec = 0, UTIME_OMIT
        elif v == "now":
            ts[i].tv_sec, ts[i].tv_nsec = 0, UTIME_NOW
        else:
            ts[i].tv_sec, ts[i].tv_nsec = v // 10**9, v % 10**9
    _check(_libc.utimensat(dirfd, os.fsencode(path), ts, AT_SYMLINK_NOFOLLOW), "utimensat")


def syncfs(fd):
    _check(_libc.syncfs(fd), "syncfs")


def errname(e):
    return errno.errorcode.get(e.errno, "E%s" % e.errno) if isinstance(e, OSError) else repr(e)


def _short_hash(data):
    return hashlib.sha1(data).hexdigest()[:12]


# ------------------------------------------------------------------------- model

class Node:
    """One inode of the model. links: [(parent Node, name)] (dirs: at most one)."""

    __slots__ = ("nid", "kind", "size", "alloc", "links", "children", "xattrs", "target",
                 "ex_atime", "ex_mtime", "pristine", "pinned", "hidden", "ro")

    def __init__(self, nid, kind, size=0, target=None, pristine=False):
        self.nid = nid
        self.kind = kind                  # reg dir lnk fifo chr blk sock
        self.size = size                  # reg: st_size, lnk: len(target)
        self.alloc = size                 # reg: estimate of bytes with data (not holes)
        self.links = []
        self.children = {} if kind == "dir" else None   # name -> Node (insertion order)
        self.xattrs = {}                  # user.* name -> value size (insertion ordered)
        self.target = target
        self.ex_atime = False             # atime/mtime last set by an explicit utime
        self.ex_mtime = False
        self.pristine = pristine          # adopted and never touched: every time compares
        self.pinned = False               # subvolume root / placeholder: never moved
        self.hidden = False               # never chosen at all (placeholder of a subvolume)
        self.ro = False                   # in a read-only snapshot (dirs: entries never change)


class IndexedSet:
    """Nodes with O(1) add, remove and a deterministic random choice."""

    def __init__(self):
        self.items, self.pos = [], {}

    def add(self, n):
        if n.nid not in self.pos:
            self.pos[n.nid] = len(self.items)
            self.items.append(n)

    def discard(self, n):
        i = self.pos.pop(n.nid, None)
        if i is None:
            return
        last = self.items.pop()
        if i < len(self.items):
            self.items[i] = last
            self.pos[last.nid] = i

    def __len__(self):
        return len(self.items)

    def choice(self, rng):
        return self.items[rng.randrange(len(self.items))] if self.items else None


class Model:
    """The tree as the workload believes it is."""

    def __init__(self):
        self.next_id = 1
        self.root = self.new("dir")
        self.dirs = IndexedSet()
        self.files = IndexedSet()          # regular files
        self.others = IndexedSet()         # symlinks, fifos, devices, sockets
        self.dirs.add(self.root)

    def new(self, kind, **kw):
        n = Node(self.next_id, kind, **kw)
        self.next_id += 1
        return n

    def _index(self, n):
        return self.dirs if n.kind == "dir" else self.files if n.kind == "reg" else self.others

    def path(self, parent, name=None):
        """Relative path ('.' for the root) of `parent`, or of name inside it."""
        parts = [] if name is None else [name]
        n = parent
        while n.links:
            p, nm = n.links[0]
            parts.append(nm)
            n = p
        return "/".join(reversed(parts)) if parts else "."

    def node_path(self, n):
        return "." if not n.links else self.path(*n.links[0])

    def depth(self, n):
        d = 0
        while n.links:
            n = n.links[0][0]
            d += 1
        return d

    def add_link(self, parent, name, n):
        parent.children[name] = n
        n.links.append((parent, name))
        if not n.hidden:
            self._index(n).add(n)

    def remove_link(self, parent, name):
        n = parent.children.pop(name)
        n.links.remove((parent, name))
        if not n.links:
            self._index(n).discard(n)       # a renamed node is added back by add_link
        return n

    def is_ancestor(self, a, b):
        """a is b or an ancestor of b (both dirs)."""
        while True:
            if a is b:
                return True
            if not b.links:
                return False
            b = b.links[0][0]

    def all_nodes(self):
        return self.dirs.items + self.files.items + self.others.items

    def data_bytes(self):
        return sum(n.alloc for n in self.files.items)

    def logical_bytes(self):
        return sum(n.size for n in self.files.items)


# --------------------------------------------------------------------- choosing

XATTR_REPLACE_BUDGET = 3000     # old + new value size when an xattr is set again

_SAFE_MAJORS = [0] + list(range(240, 255)) + [3000, 4095]   # local/experimental/unassigned


def rand_time_ns(rng):
    r = rng.random()
    if r < 0.7:
        sec = rng.randrange(10**9, 2 * 10**9)          # 2001 .. 2033
    elif r < 0.8:
        sec = rng.randrange(-2 * 10**9, 0)             # before 1970
    elif r < 0.9:
        sec = rng.randrange(2**31, 2**34)              # after 2038
    else:
        sec = rng.choice([0, 1, 2**31 - 1, 2**31, 2**32 - 1, -1])
    ns = rng.choice([0, 999999999, rng.randrange(10**9), rng.randrange(10**9)])
    return sec * 10**9 + ns


def rand_size(rng):
    r = rng.random()
    if r < 0.25:
        return rng.randrange(1, 100)
    if r < 0.45:
        return rng.choice([2047, 2048, 2049, 4095, 4096, 4097, 8191, 8192, 8193]) + rng.randrange(-2, 3)
    if r < 0.75:
        return rng.randrange(100, 16 * KiB)
    if r < 0.96:
        return rng.randrange(16 * KiB, 300 * KiB)
    return rng.randrange(MiB, 4 * MiB)


def rand_data(rng, n):
    r = rng.random()
    if r < 0.6:
        return rng.randbytes(n)
    if r < 0.85:
        pat = rng.randbytes(rng.randrange(1, 64))
        return (pat * (n // len(pat) + 1))[:n]
    return bytes(n)


_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-."
_UNI = "äöüßéñçøåæ日本語中文한국어😀🎉ΩЖ"


def rand_name(rng):
    """A directory entry name (occasionally 256 bytes long: ENAMETOOLONG)."""
    r = rng.random()
    if r < 0.55:
        return "%s%d" % (rng.choice(["f", "d", "x", "file", "a b", "ü"]), rng.randrange(300))
    if r < 0.80:
        name = "".join(rng.choice(_ALNUM) for _ in range(rng.randrange(1, 30)))
    elif r < 0.90:
        name = "".join(rng.choice(_ALNUM + _UNI) for _ in range(rng.randrange(1, 60)))
    elif r < 0.96:
        name = "".join(rng.choice(_ALNUM) for _ in range(rng.randrange(200, 256)))
    elif r < 0.98:
        name = "n" * 255 + rng.choice(["x", "é"])[:1]        # 256 or 257 bytes
    else:
        name = rng.choice(["...", " lead", "trail ", "new\nline", "tab\there", "-dash",
                           "ü" * 127, "😀" * 63, "%s", "\\back"])
    if name in (".", ".."):
        name += "_"
    return name


def _fits(model, parent, name, limit=3800):
    return len(os.fsencode(model.path(parent, name))) < limit


# Read-only snapshots: only single-reason failures.
#
# An operation that changes a directory inside a read-only snapshot fails with EROFS.  If
# it would also fail for a second reason that the VFS itself checks, the two drivers
# answer differently, and neither is wrong: the kernel's btrfs refuses in
# btrfs_permission (called from may_delete / may_create, before the VFS looks at the file
# types), while FUSE with default_permissions answers that permission check from the
# mode bits alone (the mount is rw, so no EROFS there); the VFS then finds the type
# mismatch and fails before the daemon ever hears of the operation, so no daemon can
# answer EROFS first.  These VFS-checked second reasons are:
#   rename (not EXCHANGE) over an existing entry of the other type (EISDIR / ENOTDIR),
#   unlink of a directory (EISDIR), rmdir of a non-directory (ENOTDIR),
#   link of a directory (EPERM).
# So when the source or target directory is inside a read-only snapshot the generator
# does not issue these.  Every reason the filesystem decides itself (EROFS against EXDEV,
# ENOTEMPTY, ...) and every reason found during the lookup (ENOENT, EEXIST,
# ENAMETOOLONG, on both drivers before any permission check) is still issued and
# compared exactly, as is everything outside read-only snapshots.

def _ro_double_fault(sparent, node, dparent, dst, flags):
    """A rename touching a read-only snapshot that would also fail the VFS type check."""
    if not (sparent.ro or dparent.ro) or flags == RENAME_EXCHANGE:
        return False
    if dst is None or dst is node:                 # same inode: 0 before any check
        return False
    return (node.kind == "dir") != (dst.kind == "dir")


def _subvol_readonly(path):
    """The BTRFS_SUBVOL_RDONLY flag of the subvolume whose root is `path` (kernel mounts)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        buf = fcntl.ioctl(fd, _BTRFS_IOC_SUBVOL_GETFLAGS, bytes(8))
    finally:
        os.close(fd)
    return bool(int.from_bytes(buf, "little") & _BTRFS_SUBVOL_RDONLY)


_BTRFS_IOC_SUBVOL_GETFLAGS = 0x80089419          # _IOR(0x94, 25, __u64)
_BTRFS_SUBVOL_RDONLY = 1 << 1


# ------------------------------------------------------------------------ workload

class Workload:
    """Seeded random operations on a mounted directory; see the module docstring.

    seed: int; history: how many operations tail() shows by default;
    data_budget: bytes of file data (not holes) the workload keeps below;
    logical_budget: sum of file sizes (holes included) it keeps below;
    bigdir: (min, max) entries of a big-directory burst.
    """

    def __init__(self, seed, history=40, data_budget=120 * MiB, logical_budget=256 * MiB,
                 bigdir=(500, 3000)):
        self.seed = seed
        self.rng = random.Random(seed)
        self.model = Model()
        self.log = []                     # [(seq, description, outcome)]
        self.history = history
        self.data_budget = data_budget
        self.logical_budget = logical_budget
        self.bigdir = bigdir
        self.seq = 0
        self.fd = None
        self.pinned_paths = []            # adopt(): subvolume roots, placeholders
        self.hidden_paths = []            # adopt(): placeholders
        self.ro_paths = []                # adopt(): roots of read-only subvolumes (snapshots)
        self.ops = [
            (self.op_create, 8), (self.op_create_trunc, 2), (self.op_write, 16),
            (self.op_truncate, 5), (self.op_mkdir, 5), (self.op_mknod, 2), (self.op_symlink, 3),
            (self.op_link, 4), (self.op_unlink, 6), (self.op_rmdir, 3), (self.op_rename, 7),
            (self.op_rename_noreplace, 2), (self.op_exchange, 2), (self.op_chmod, 2),
            (self.op_chown, 2), (self.op_utime, 3), (self.op_setxattr, 4),
            (self.op_removexattr, 2), (self.op_fsync, 2), (self.op_stat, 4), (self.op_read, 4),
            (self.op_readdir, 2), (self.op_getxattr, 2), (self.op_utime_many, 0.4),
            (self.op_bigdir, 0.12),
            (self.op_bulk_unlink, 0.12),
        ]

    # ----------------------------------------------------------------- running

    def run(self, root, nops, seed=None):
        """Run nops operations on the directory `root`.  seed: continue with a new random
        sequence (the model carries over).  Returns the outcome log (all runs so far)."""
        if seed is not None:
            self.seed = seed
            self.rng = random.Random(seed)
        funcs = [f for f, _w in self.ops]
        weights = [w for _f, w in self.ops]
        self.fd = os.open(os.fspath(root), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for _ in range(nops):
                self.rng.choices(funcs, weights)[0]()
        finally:
            os.close(self.fd)
            self.fd = None
        return self.log

    def _do(self, desc, fn):
        """Run fn(); record its outcome. Returns (ok, fn's result)."""
        self.seq += 1
        try:
            res = fn()
        except OSError as e:
            self.log.append((self.seq, desc, errname(e)))
            return False, None
        self.log.append((self.seq, desc, "ok" if res is None else "ok " + str(res)))
        return True, res

    def tail(self, n=None, upto=None):
        """The last n operations (up to seq `upto`), one per line."""
        n = self.history if n is None else n
        entries = [e for e in self.log if upto is None or e[0] <= upto][-n:]
        return [format_entry(e) for e in entries]

    # ----------------------------------------------------------------- choosing

    def _p(self, parent, name=None):
        return self.model.path(parent, name)

    def pick_dir(self, deep=False):
        m, rng = self.model, self.rng
        if deep and len(m.dirs) > 1:
            cands = [m.dirs.choice(rng) for _ in range(6)]
            return max(cands, key=lambda d: (m.depth(d), -d.nid))
        return m.dirs.choice(rng)

    def pick_entry(self, kinds=None):
        """(parent, name, node) of an existing entry, or None."""
        m, rng = self.model, self.rng
        for _ in range(8):
            if rng.random() < 0.5:
                pool = (m.files if kinds == ("reg",) else
                        m.dirs if kinds == ("dir",) else None)
                if pool is None:
                    r = rng.randrange(len(m.dirs) + len(m.files) + len(m.others))
                    pool = (m.dirs if r < len(m.dirs) else
                            m.files if r < len(m.dirs) + len(m.files) else m.others)
                n = pool.choice(rng)
                if n is None or not n.links:
                    continue
                parent, name = n.links[rng.randrange(len(n.links))]
            else:
                parent = m.dirs.choice(rng)
                if not parent.children:
                    continue
                names = list(parent.children)
                name = names[rng.randrange(len(names))]
                n = parent.children[name]
            if (kinds is None or n.kind in kinds) and not n.hidden:
                return parent, name, n
        return None

    def new_name(self, parent):
        """A name for a new entry in parent: usually free, sometimes taken (EEXIST...)."""
        rng = self.rng
        if parent.children and rng.random() < 0.12:
            names = list(parent.children)
            return names[rng.randrange(len(names))]
        return rand_name(rng)

    def pick_new_place(self, deep=False):
        parent = self.pick_dir(deep)
        name = self.new_name(parent)
        if not _fits(self.model, parent, name):
            parent = self.model.root
        return parent, name

    # ------------------------------------------------------------ model updates

    def _touch_dir(self, d):
        d.ex_mtime = False
        d.pristine = False

    def _add(self, parent, name, node):
        self.model.add_link(parent, name, node)
        self._touch_dir(parent)

    def _remove(self, parent, name):
        n = self.model.remove_link(parent, name)
        n.pristine = False
        self._touch_dir(parent)
        return n

    # --------------------------------------------------------------- operations

    def op_create(self, excl=True):
        rng = self.rng
        parent, name = self.pick_new_place()
        mode = rng.choice([0o644, 0o600, 0o755, 0o777, 0o640, 0o4755, 0o2755, 0o1777, 0])
        data = rand_data(rng, rand_size(rng)) if rng.random() < 0.4 else b""
        rel = self._p(parent, name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        flags |= os.O_EXCL if excl else os.O_TRUNC

        def fn():
            fd = os.open(rel, flags, mode, dir_fd=self.fd)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError(errno.EINVAL, "not a regular file (model out of step)")
                return _write_all(fd, data, 0) if data else None
            finally:
                os.close(fd)
        ok, res = self._do("%s %s mode=%o len=%d data=%s" % (
            "create" if excl else "create_trunc", _q(rel), mode, len(data),
            _short_hash(data)), fn)
        if not ok:
            return
        n = parent.children.get(name)          # not None: O_TRUNC of an existing file
        if n is None:
            n = self.model.new("reg")
            self._add(parent, name, n)
        n.size = n.alloc = _written(res)
        n.ex_mtime = n.pristine = False

    def op_create_trunc(self):
        self.op_create(excl=False)

    def op_mkdir(self):
        rng = self.rng
        parent, name = self.pick_new_place(deep=rng.random() < 0.5)
        mode = rng.choice([0o755, 0o700, 0o777, 0o2775, 0o1777, 0o555])
        rel = self._p(parent, name)
        r = rng.random()
        if r < 0.03 and self.model.files.items:            # a file as a path component
            f = self.model.files.choice(rng)
            if f.links:
                rel = self._p(*f.links[0]) + "/x"
                parent = None
        elif r < 0.06:
            rel = self._p(parent, "nonexistent_%d" % rng.randrange(100)) + "/x"
            parent = None
        ok, _ = self._do("mkdir %s mode=%o" % (_q(rel), mode),
                         lambda: os.mkdir(rel, mode, dir_fd=self.fd))
        if ok and parent is not None:
            self._add(parent, name, self.model.new("dir"))

    def op_mknod(self):
        rng = self.rng
        parent, name = self.pick_new_place()
        kind = rng.choice(["fifo", "fifo", "chr", "blk"])
        dev = os.makedev(rng.choice(_SAFE_MAJORS), rng.choice([0, 1, 255, 256, 65535, 1048575,
                                                              rng.randrange(1 << 20)]))
        fmt = {"fifo": stat.S_IFIFO, "chr": stat.S_IFCHR, "blk": stat.S_IFBLK}[kind]
        mode = fmt | rng.choice([0o644, 0o600, 0o666, 0o4644])
        rel = self._p(parent, name)
        if kind == "fifo":
            dev = 0
        ok, _ = self._do("mknod %s %s mode=%o rdev=%d:%d" % (
            _q(rel), kind, mode, os.major(dev), os.minor(dev)),
            lambda: os.mknod(rel, mode, dev, dir_fd=self.fd))
        if ok:
            self._add(parent, name, self.model.new(kind))

    def rand_target(self):
        rng = self.rng
        r = rng.random()
        if r < 0.3:
            e = self.pick_entry()
            if e:
                return "../" * rng.randrange(3) + self._p(e[0], e[1])
        if r < 0.7:
            return "/".join(rand_name(rng)[:20] for _ in range(rng.randrange(1, 5)))
        if r < 0.85:
            return "/nonexistent/" + "".join(rng.choice(_ALNUM) for _ in range(rng.randrange(1, 50)))
        if r < 0.98:
            n = rng.choice([rng.randrange(100, 4096), 4095, 3900, 3990, 2048, 2049])
            return ("abcdefghij/" * 400)[:n]
        return "y" * 4096                               # > PATH_MAX - 1: ENAMETOOLONG

    def op_symlink(self):
        parent, name = self.pick_new_place()
        target = self.rand_target()
        rel = self._p(parent, name)
        ok, _ = self._do("symlink %s -> %s (len %d)" % (_q(rel), _q(target[:80]),
                                                        len(os.fsencode(target))),
                         lambda: os.symlink(target, rel, dir_fd=self.fd))
        if ok:
            self._add(parent, name, self.model.new("lnk", size=len(os.fsencode(target)),
                                                   target=target))

    def op_link(self):
        rng = self.rng
        m = self.model
        r = rng.random()
        if r < 0.03:
            src = self.pick_entry(("dir",))
        elif r < 0.35:                                  # grow an existing hard-link group
            multi = [n for n in (m.files.choice(rng) for _ in range(8)) if n and len(n.links) > 1]
            src = (multi[0].links[0] + (multi[0],)) if multi else self.pick_entry(("reg",))
        else:
            src = self.pick_entry(("reg", "lnk", "fifo", "chr", "blk", "sock"))
        if not src:
            return self.op_create()
        sparent, sname, node = src
        parent, name = self.pick_new_place()
        if parent.ro and node.kind == "dir":
            return                                      # EROFS and EPERM: see _ro_double_fault
        srel, rel = self._p(sparent, sname), self._p(parent, name)
        ok, _ = self._do("link %s %s" % (_q(srel), _q(rel)),
                         lambda: os.link(srel, rel, src_dir_fd=self.fd, dst_dir_fd=self.fd,
                                         follow_symlinks=False))
        if ok:
            self._add(parent, name, node)
            node.pristine = False

    def op_unlink(self):
        rng = self.rng
        r = rng.random()
        if r < 0.05:
            e = self.pick_entry(("dir",))
        elif r < 0.12:
            d = self.pick_dir()
            e = (d, "missing_%d" % rng.randrange(1000), None)
        else:
            e = self.pick_entry(("reg", "lnk", "fifo", "chr", "blk", "sock"))
        if not e or (e[2] is not None and e[2].pinned):
            return
        parent, name, n = e
        if parent.ro and n is not None and n.kind == "dir":
            return                                      # EROFS and EISDIR: see _ro_double_fault
        rel = self._p(parent, name)
        ok, _ = self._do("unlink %s" % _q(rel), lambda: os.unlink(rel, dir_fd=self.fd))
        if ok:
            self._remove(parent, name)

    def op_rmdir(self):
        rng = self.rng
        m = self.model
        r = rng.random()
        e = None
        if r < 0.5:
            empty = [d for d in (m.dirs.choice(rng) for _ in range(10))
                     if d.links and not d.children]
            if empty:
                e = empty[0].links[0] + (empty[0],)
        elif r < 0.55:
            e = self.pick_entry(("reg",))
        if e is None:
            e = self.pick_entry(("dir",))
        if not e or e[2].pinned:
            return
        parent, name, n = e
        if parent.ro and n.kind != "dir":
            return                                      # EROFS and ENOTDIR: see _ro_double_fault
        rel = self._p(parent, name)
        ok, _ = self._do("rmdir %s" % _q(rel), lambda: os.rmdir(rel, dir_fd=self.fd))
        if ok:
            self._remove(parent, name)

    def _rename_dest(self, sparent, sname, node):
        """Where a rename of (sparent, sname) goes: new names, taken names, own subtree,
        the same inode's other link, itself."""
        rng, m = self.rng, self.model
        r = rng.random()
        if r < 0.4:
            return self.pick_new_place()
        if r < 0.7:
            e = self.pick_entry()
            if e:
                return e[0], e[1]
        if r < 0.8 and sparent.children:
            names = list(sparent.children)
            return sparent, names[rng.randrange(len(names))]
        if r < 0.9 and node.kind == "dir":
            d = m.dirs.choice(rng)                      # maybe inside its own subtree
            if m.is_ancestor(node, d):
                return d, rand_name(rng)
            return node, rand_name(rng)
        if r < 0.95 and len(node.links) > 1:
            return node.links[rng.randrange(len(node.links))]
        if r < 0.97:
            return sparent, sname
        return self.pick_new_place()

    def _pick_rename_src(self):
        r = self.rng.random()
        e = self.pick_entry(("dir",) if r < 0.3 else None)
        if not e or e[2].pinned:
            return None
        return e

    def op_rename(self, flags=0):
        src = self._pick_rename_src()
        if not src:
            return
        sparent, sname, node = src
        dparent, dname = self._rename_dest(sparent, sname, node)
        dst = dparent.children.get(dname)
        if dst is not None and dst.pinned:
            return
        if flags == RENAME_EXCHANGE and dst is None and self.rng.random() < 0.7:
            e = self.pick_entry()
            if not e or e[2].pinned:
                return
            dparent, dname, dst = e
        if _ro_double_fault(sparent, node, dparent, dst, flags):
            return
        srel, drel = self._p(sparent, sname), self._p(dparent, dname)
        name = {0: "rename", RENAME_NOREPLACE: "rename_noreplace",
                RENAME_EXCHANGE: "rename_exchange"}[flags]
        if flags == 0 and self.rng.random() < 0.5:
            fn = lambda: os.rename(srel, drel, src_dir_fd=self.fd, dst_dir_fd=self.fd)  # noqa: E731
        else:
            fn = lambda: renameat2(self.fd, srel, self.fd, drel, flags)  # noqa: E731
        ok, _ = self._do("%s %s %s" % (name, _q(srel), _q(drel)), fn)
        if ok:
            self._apply_rename(sparent, sname, dparent, dname, flags)

    def _apply_rename(self, sparent, sname, dparent, dname, flags):
        src = sparent.children[sname]
        dst = dparent.children.get(dname)
        if flags == RENAME_EXCHANGE:
            if dst is not src:
                self._swap(sparent, sname, dparent, dname)
            return
        if dst is src:                  # same inode (or same name): POSIX says do nothing
            return
        if dst is not None:
            self._remove(dparent, dname)
        self._remove(sparent, sname)
        self._add(dparent, dname, src)
        src.pristine = False
        if src.kind == "dir":
            src.ex_mtime = False        # conservative: its ".." changed

    def _swap(self, ap, an, bp, bn):
        a, b = ap.children[an], bp.children[bn]
        for n, (p, nm), (np_, nn) in ((a, (ap, an), (bp, bn)), (b, (bp, bn), (ap, an))):
            n.links[n.links.index((p, nm))] = (np_, nn)
            n.pristine = False
            if n.kind == "dir":
                n.ex_mtime = False
        ap.children[an], bp.children[bn] = b, a
        self._touch_dir(ap)
        self._touch_dir(bp)

    def op_rename_noreplace(self):
        self.op_rename(RENAME_NOREPLACE)

    def op_exchange(self):
        self.op_rename(RENAME_EXCHANGE)

    def _pick_reg(self):
        e = self.pick_entry(("reg",))
        return e if e else None

    def op_write(self):
        rng = self.rng
        e = self._pick_reg()
        if not e:
            return self.op_create()
        parent, name, node = e
        over = self.model.data_bytes() > self.data_budget
        size = rand_size(rng) if not over else rng.randrange(1, 4096)
        mode, off = self._write_offset(node, size, over)
        data = rand_data(rng, size)
        rel = self._p(parent, name)
        flags = _O_WR | (os.O_APPEND if mode == "append" else 0)

        def fn():
            fd = os.open(rel, flags, dir_fd=self.fd)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError(errno.EINVAL, "not a regular file (model out of step)")
                if mode == "append":
                    return _append_all(fd, data)
                return _write_all(fd, data, off)
            finally:
                os.close(fd)
        ok, res = self._do("write %s %s off=%s len=%d data=%s" % (
            _q(rel), mode, off if mode != "append" else "EOF", size, _short_hash(data)), fn)
        if not ok:
            return
        n = _written(res)
        start = node.size if mode == "append" else off
        if n:
            node.size = max(node.size, start + n)
            node.alloc = min(node.size, node.alloc + n)
            node.ex_mtime = node.pristine = False

    def _write_offset(self, node, size, over):
        rng = self.rng
        r = rng.random()
        if r < 0.3 and node.size:
            return "overwrite", rng.randrange(node.size)
        if r < 0.5:
            return "append", None
        if r < 0.6:
            return "at_eof", node.size
        if r < 0.7 and not over and self.model.logical_bytes() < self.logical_budget:
            gap = rng.choice([rng.randrange(1, 8192), rng.randrange(MiB, 16 * MiB),
                              rng.randrange(16 * MiB, 96 * MiB)])
            return "sparse", node.size + gap
        if r < 0.85:
            return "boundary", max(0, rng.choice([2048, 4096, 8192, 131072]) + rng.randrange(-40, 40))
        return "random", rng.randrange(max(1, node.size + 8192))

    def op_truncate(self):
        rng = self.rng
        e = self._pick_reg()
        if not e:
            return
        parent, name, node = e
        r = rng.random()
        if r < 0.1:
            new = 0
        elif r < 0.45:
            new = rng.randrange(node.size + 1)
        elif r < 0.7:
            new = node.size + rng.randrange(1, 70000)
        elif r < 0.8 and self.model.logical_bytes() < self.logical_budget:
            new = node.size + rng.randrange(MiB, 64 * MiB)
        else:
            new = rng.choice([2047, 2048, 2049, 4095, 4096, 4097, 65536, 131073])
        how = "otrunc" if new == 0 and rng.random() < 0.5 else "ftruncate"
        rel = self._p(parent, name)

        def fn():
            fd = os.open(rel, _O_WR | (os.O_TRUNC if how == "otrunc" else 0), dir_fd=self.fd)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError(errno.EINVAL, "not a regular file (model out of step)")
                if how == "ftruncate":
                    os.ftruncate(fd, new)
            finally:
                os.close(fd)
        ok, _ = self._do("truncate %s %s size=%d" % (_q(rel), how, new), fn)
        if ok:
            node.size = new
            node.alloc = min(node.alloc, new)
            node.ex_mtime = node.pristine = False

    def op_chmod(self):
        rng = self.rng
        e = self.pick_entry(("reg", "dir", "fifo", "chr", "blk"))
        if not e:
            return
        mode = rng.choice([rng.randrange(0o10000), 0o755, 0o644, 0o2775, 0o1777, 0o4755, 0o000])
        rel = self._p(e[0], e[1])
        ok, _ = self._do("chmod %s %o" % (_q(rel), mode),
                         lambda: os.chmod(rel, mode, dir_fd=self.fd))
        if ok:
            e[2].pristine = False

    def op_chown(self):
        rng = self.rng
        e = self.pick_entry()
        if not e:
            return

        def ident():
            return rng.choice([-1, 0, 1000, 65534, rng.randrange(65536),
                               rng.randrange(100000, 4294967295)])
        uid, gid = ident(), ident()
        rel = self._p(e[0], e[1])
        ok, _ = self._do("chown %s %d:%d" % (_q(rel), uid, gid),
                         lambda: os.chown(rel, uid, gid, dir_fd=self.fd, follow_symlinks=False))
        if ok:
            e[2].pristine = False

    def op_utime(self, omit=True):
        rng = self.rng
        e = self.pick_entry()
        if not e:
            return
        node = e[2]
        at, mt = rand_time_ns(rng), rand_time_ns(rng)
        r = rng.random() if omit else 1.0
        if r < 0.1:
            at = None
        elif r < 0.2:
            mt = None
        elif r < 0.25:
            at = "now"
        rel = self._p(e[0], e[1])
        ok, _ = self._do("utime %s atime=%s mtime=%s" % (_q(rel), at, mt),
                         lambda: utimensat(self.fd, rel, at, mt))
        if not ok:
            return
        node.pristine = False
        if at is not None:
            # a symlink's atime changes when the tree walk reads it: never compared
            node.ex_atime = isinstance(at, int) and node.kind != "lnk"
        if mt is not None:
            node.ex_mtime = isinstance(mt, int)

    def op_utime_many(self):
        """Explicit times on a few dozen entries at once (so that many times survive to
        the final comparison)."""
        for _ in range(self.rng.randrange(10, 60)):
            self.op_utime(omit=False)

    def _xattr_target(self):
        r = self.rng.random()
        return self.pick_entry(("reg", "dir") if r < 0.85 else None)

    def _xattr_path(self, parent, name):
        """/proc/self/fd/N/name: the xattr calls have no dir_fd."""
        return os.path.join("/proc/self/fd/%d" % self.fd, self._p(parent, name))

    def _xattr_name(self, node, existing):
        rng = self.rng
        if existing and node.xattrs:
            names = list(node.xattrs)
            return names[rng.randrange(len(names))]
        r = rng.random()
        if r < 0.02:
            return "user." + "z" * rng.choice([249, 250, 251])   # 254..256 bytes: ERANGE at 256
        return "user." + rand_name(rng)[:rng.choice([8, 30, 120])].replace("\0", "")

    def op_setxattr(self):
        rng = self.rng
        e = self._xattr_target()
        if not e:
            return
        parent, name, node = e
        xname = self._xattr_name(node, rng.random() < 0.4)
        flags = rng.choice([0, 0, 0, os.XATTR_CREATE, os.XATTR_REPLACE])
        r = rng.random()
        size = (0 if r < 0.05 else rng.randrange(1, 100) if r < 0.6 else
                rng.randrange(100, 2100) if r < 0.85 else rng.randrange(3000, 4100) if r < 0.97
                else rng.choice([16100, 16200, 16300, 65536, 65537]))
        old = node.xattrs.get(xname)
        if old is not None and flags != os.XATTR_CREATE:
            # Growing an existing xattr in place fails with ENOSPC when its leaf has no room
            # for the old and the new item together -- a matter of tree layout, which no
            # two drivers share: keep old + new small enough to always fit in a 4K leaf.
            size = min(size, max(0, XATTR_REPLACE_BUDGET - old))
        value = rand_data(rng, size)
        rel = self._p(parent, name)
        path = self._xattr_path(parent, name)
        ok, _ = self._do("setxattr %s %s len=%d flags=%d data=%s" % (
            _q(rel), _q(xname), size, flags, _short_hash(value)),
            lambda: os.setxattr(path, xname, value, flags, follow_symlinks=False))
        if ok:
            node.xattrs[xname] = size
            node.pristine = False

    def op_removexattr(self):
        rng = self.rng
        e = self._xattr_target()
        if not e:
            return
        parent, name, node = e
        xname = self._xattr_name(node, rng.random() < 0.8)
        rel = self._p(parent, name)
        path = self._xattr_path(parent, name)
        ok, _ = self._do("removexattr %s %s" % (_q(rel), _q(xname)),
                         lambda: os.removexattr(path, xname, follow_symlinks=False))
        if ok:
            node.xattrs.pop(xname, None)
            node.pristine = False

    def op_getxattr(self):
        rng = self.rng
        e = self._xattr_target()
        if not e:
            return
        parent, name, node = e
        rel = self._p(parent, name)
        path = self._xattr_path(parent, name)
        if rng.random() < 0.5:
            def fn():
                names = sorted(x for x in os.listxattr(path, follow_symlinks=False)
                               if x.startswith("user."))
                bad = "" if names == sorted(node.xattrs) else " MODEL-MISMATCH"
                return "%d names %s%s" % (len(names), _short_hash("\0".join(names).encode()), bad)
            self._do("listxattr %s" % _q(rel), fn)
        else:
            xname = self._xattr_name(node, rng.random() < 0.8)

            def fn():
                v = os.getxattr(path, xname, follow_symlinks=False)
                return "len=%d %s" % (len(v), _short_hash(v))
            self._do("getxattr %s %s" % (_q(rel), _q(xname)), fn)

    def op_fsync(self):
        rng = self.rng
        r = rng.random()
        if r < 0.1:
            self._do("syncfs", lambda: syncfs(self.fd))
            return
        e = self.pick_entry(("dir",) if r < 0.3 else ("reg",))
        if not e:
            return
        rel = self._p(e[0], e[1])
        kind = e[2].kind
        data_only = rng.random() < 0.3

        def fn():
            fd = os.open(rel, _O_RD | (os.O_DIRECTORY if kind == "dir" else 0), dir_fd=self.fd)
            try:
                (os.fdatasync if data_only else os.fsync)(fd)
            finally:
                os.close(fd)
        self._do("%s %s" % ("fdatasync" if data_only else "fsync", _q(rel)), fn)

    def op_stat(self):
        e = self.pick_entry()
        if not e or self.rng.random() < 0.05:
            d = self.pick_dir()
            e = (d, "missing_%d" % self.rng.randrange(100), None)
        parent, name, node = e
        rel = self._p(parent, name)

        def fn():
            st = os.stat(rel, dir_fd=self.fd, follow_symlinks=False)
            s = "%s mode=%o uid=%d gid=%d size=%d nlink=%d" % (
                _kind(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                st.st_size, st.st_nlink)
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                s += " rdev=%d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev))
            if node is not None:
                if node.ex_atime:
                    s += " atime=%d" % st.st_atime_ns
                if node.ex_mtime:
                    s += " mtime=%d" % st.st_mtime_ns
                s += _model_check(node, st)
            return s
        self._do("stat %s" % _q(rel), fn)

    def op_read(self):
        rng = self.rng
        e = self._pick_reg()
        if not e:
            return
        parent, name, node = e
        off = rng.choice([0, 0, rng.randrange(node.size + 1), max(0, node.size - 100),
                          node.size + 10])
        length = rng.choice([1, 100, 4096, rand_size(rng)])
        rel = self._p(parent, name)

        def fn():
            fd = os.open(rel, _O_RD, dir_fd=self.fd)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError(errno.EINVAL, "not a regular file (model out of step)")
                data = _read_all(fd, length, off)
            finally:
                os.close(fd)
            want = max(0, min(length, node.size - off))
            bad = "" if len(data) == want else " MODEL-MISMATCH(model len %d)" % want
            return "len=%d %s%s" % (len(data), _short_hash(data), bad)
        ok, _ = self._do("read %s off=%d len=%d" % (_q(rel), off, length), fn)
        if ok:
            node.ex_atime = node.pristine = False

    def op_readdir(self):
        e = self.pick_entry(("dir",))
        d = e[2] if e and self.rng.random() < 0.8 else self.model.root
        rel = self.model.node_path(d)

        def fn():
            fd = os.open(rel, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.fd)
            try:
                names = sorted(os.listdir(fd))
            finally:
                os.close(fd)
            bad = "" if names == sorted(d.children) else " MODEL-MISMATCH"
            return "%d names %s%s" % (len(names), _short_hash("\0".join(names).encode(
                "utf-8", "surrogateescape")), bad)
        ok, _ = self._do("readdir %s" % _q(rel), fn)
        if ok:
            d.ex_atime = d.pristine = False

    def op_bigdir(self):
        """A burst: a new directory with hundreds to thousands of entries."""
        rng = self.rng
        parent = self.pick_dir()
        name = "big%d_%d" % (self.seq, rng.randrange(1000))
        if not _fits(self.model, parent, name, 3000):
            parent = self.model.root
        count = rng.randrange(*self.bigdir)
        every = rng.choice([0, 7, 50])
        rel = self._p(parent, name)
        ok, _ = self._do("mkdir %s mode=755 (bigdir)" % _q(rel),
                         lambda: os.mkdir(rel, 0o755, dir_fd=self.fd))
        if not ok:
            return
        d = self.model.new("dir")
        self._add(parent, name, d)
        made = []

        def fn():
            for i in range(count):
                ename = "e%05d_%s" % (i, "x" * (i % 37))
                fd = os.open(rel + "/" + ename, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                             0o644, dir_fd=self.fd)
                try:
                    n = _write_all(fd, b"%d\n" % i * (i % 300), 0) if every and i % every == 0 else 0
                finally:
                    os.close(fd)
                made.append((ename, n))
            return "%d entries" % count
        self._do("bigdir %s %d entries, data every %d" % (_q(rel), count, every), fn)
        for ename, n in made:
            f = self.model.new("reg", size=n)
            self.model.add_link(d, ename, f)

    def op_bulk_unlink(self):
        """Remove a random part of the biggest directory (found from the model)."""
        rng = self.rng
        sample = [self.model.dirs.choice(rng) for _ in range(12)]
        d = max(sample, key=lambda x: (len(x.children), -x.nid))
        victims = [nm for nm, n in d.children.items() if n.kind != "dir"]
        if len(victims) < 20:
            return
        victims = rng.sample(victims, rng.randrange(len(victims) // 4, len(victims)))
        base = self.model.node_path(d)
        done = []

        def fn():
            for nm in victims:
                os.unlink(base + "/" + nm if base != "." else nm, dir_fd=self.fd)
                done.append(nm)
            return "%d removed" % len(done)
        self._do("bulk_unlink %s %d of %d entries" % (_q(base), len(victims), len(d.children)), fn)
        for nm in done:
            self._remove(d, nm)

    # ------------------------------------------------------------------ adopt

    def adopt(self, root, like=None):
        """Build the model from an existing tree (sorted, so both sides agree).

        Subvolume roots (btrfs inode 256) are pinned: never moved or removed.  The empty
        placeholder directories that stand for nested subvolumes in snapshots (inode 2)
        are hidden: never chosen (the kernel makes them up in memory: a chmod or utime on
        one succeeds and is forgotten).  Both are detected from inode numbers, which only a
        kernel mount shows: adopt the kernel side first and pass it as `like` to the other.
        Likewise the read-only flag of subvolumes (an ioctl only the kernel answers): every
        inode of a read-only snapshot is marked ro (see "Read-only snapshots" above)."""
        m = self.model
        if like is not None:
            pinned, hidden = set(like.pinned_paths), set(like.hidden_paths)
            ro_roots = set(like.ro_paths)
        ids = {}
        stack = [(os.fspath(root), m.root, ".", ".", False)]
        m.root.pristine = True
        while stack:
            apath, dnode, rel, subvol, ro = stack.pop()
            for name in sorted(_listdir_noatime(apath)):
                p = os.path.join(apath, name)
                crel = name if rel == "." else rel + "/" + name
                st = os.lstat(p)
                kind = _kind(st.st_mode)
                key = (subvol, st.st_ino)     # not st_dev: FUSE has one for all subvolumes
                if kind != "dir" and key in ids:
                    m.add_link(dnode, name, ids[key])
                    continue
                n = m.new(kind, size=st.st_size, pristine=True,
                          target=os.readlink(p) if kind == "lnk" else None)
                n.ro = ro
                n.xattrs = {x: len(os.getxattr(p, x, follow_symlinks=False))
                            for x in sorted(os.listxattr(p, follow_symlinks=False))
                            if x.startswith("user.")}
                ids[key] = n
                csub = subvol
                if kind == "dir":
                    if like is None:
                        n.pinned, n.hidden = st.st_ino in (2, 256), st.st_ino == 2
                    else:
                        n.pinned, n.hidden = crel in pinned, crel in hidden
                    if n.pinned:
                        self.pinned_paths.append(crel)
                        csub = crel
                    if n.pinned and not n.hidden:    # a subvolume root: its own flag
                        n.ro = (_subvol_readonly(p) if like is None else crel in ro_roots)
                        if n.ro:
                            self.ro_paths.append(crel)
                    if n.hidden:
                        self.hidden_paths.append(crel)
                m.add_link(dnode, name, n)
                if kind == "dir" and not n.hidden:
                    stack.append((p, n, crel, csub, n.ro))
        self.pinned_paths.sort()
        self.hidden_paths.sort()
        self.ro_paths.sort()
        return self

    # -------------------------------------------------------------- checking

    def verify(self, root):
        """Compare the model with the tree at root: names, types, sizes, link counts,
        symlink targets, user xattr names.  Returns a list of problems."""
        m = self.model
        bad = []
        stack = [(os.fspath(root), m.root, ".")]
        while stack:
            apath, dnode, rel = stack.pop()
            try:
                names = sorted(_listdir_noatime(apath))
            except OSError as e:
                bad.append("%s: readdir: %s" % (rel, errname(e)))
                continue
            if names != sorted(dnode.children):
                extra = sorted(set(names) - set(dnode.children))[:5]
                missing = sorted(set(dnode.children) - set(names))[:5]
                bad.append("%s: entries differ from the model: extra %r, missing %r"
                           % (rel, extra, missing))
            for name in names:
                n = dnode.children.get(name)
                if n is None:
                    continue
                p = os.path.join(apath, name)
                crel = name if rel == "." else rel + "/" + name
                try:
                    st = os.lstat(p)
                except OSError as e:
                    bad.append("%s: lstat: %s" % (crel, errname(e)))
                    continue
                msg = _model_check(n, st)
                if msg:
                    bad.append("%s:%s" % (crel, msg))
                if n.kind == "lnk" and n.target is not None and os.readlink(p) != n.target:
                    bad.append("%s: symlink target differs from the model" % crel)
                if n.kind in ("reg", "dir"):
                    xs = sorted(x for x in os.listxattr(p, follow_symlinks=False)
                                if x.startswith("user."))
                    if xs != sorted(n.xattrs):
                        bad.append("%s: xattrs %r, model %r" % (crel, xs[:5], sorted(n.xattrs)[:5]))
                if n.kind == "dir" and stat.S_ISDIR(st.st_mode):
                    stack.append((p, n, crel))
        return bad

    def time_rules(self):
        """{path: (compare atime, compare mtime, compare ctime)} for every path."""
        out = {}
        for n in self.model.all_nodes():
            rule = (True, True, True) if n.pristine else (n.ex_atime, n.ex_mtime, False)
            if n.kind == "lnk":
                rule = (False,) + rule[1:]      # reading a symlink (walk, adopt) sets its atime
            if not n.links:
                out["."] = rule
            for parent, name in n.links:
                out[self.model.path(parent, name)] = rule
        return out

    def time_filter(self, manifest):
        """A copy of a treecmp manifest without the times this workload cannot predict:
        only explicitly set atimes/mtimes stay (and every time of untouched adopted
        entries).  Use on both manifests before treecmp.compare()."""
        rules = self.time_rules()
        ents = {}
        for path, props in manifest["entries"].items():
            ca, cm, cc = rules.get(path, (False, False, False))
            p = dict(props)
            for f, keep in (("atime", ca), ("mtime", cm), ("ctime", cc)):
                if not keep:
                    p.pop(f, None)
            ents[path] = p
        out = dict(manifest)
        out["entries"] = ents
        return out

    def stats(self):
        m = self.model
        return "%d dirs, %d files, %d other, %.1f MiB data, %.1f MiB logical" % (
            len(m.dirs), len(m.files), len(m.others), m.data_bytes() / MiB,
            m.logical_bytes() / MiB)


# --------------------------------------------------------------------- helpers

def _q(path):
    s = repr(path)
    return s if len(s) < 140 else s[:100] + "...(%d bytes)'" % len(os.fsencode(path))


def _kind(mode):
    for pred, name in ((stat.S_ISDIR, "dir"), (stat.S_ISREG, "reg"), (stat.S_ISLNK, "lnk"),
                       (stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "chr"), (stat.S_ISBLK, "blk"),
                       (stat.S_ISSOCK, "sock")):
        if pred(mode):
            return name
    return "unknown"


def _model_check(node, st):
    """'' if lstat agrees with the model node, else ' MODEL-MISMATCH(...)'."""
    why = []
    if _kind(st.st_mode) != node.kind:
        why.append("type %s, model %s" % (_kind(st.st_mode), node.kind))
    elif node.kind in ("reg", "lnk") and st.st_size != node.size:
        why.append("size %d, model %d" % (st.st_size, node.size))
    if node.kind != "dir" and st.st_nlink != len(node.links):
        why.append("nlink %d, model %d" % (st.st_nlink, len(node.links)))
    return " MODEL-MISMATCH(%s)" % ", ".join(why) if why else ""


def _write_all(fd, data, off):
    """pwrite everything; returns bytes written, or 'short N ERR' after a partial write."""
    done = 0
    mv = memoryview(data)
    while done < len(data):
        try:
            n = os.pwrite(fd, mv[done:], off + done)
        except OSError as e:
            if done == 0:
                raise
            return "short %d %s" % (done, errname(e))
        if n == 0:
            return "short %d zero-write" % done
        done += n
    return done


def _listdir_noatime(path):
    """os.listdir that leaves the directory's atime alone (the checks must not change
    what they check)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | getattr(os, "O_NOATIME", 0))
    try:
        return os.listdir(fd)
    finally:
        os.close(fd)


def _written(res):
    """Bytes written according to _write_all/_append_all's result (None: nothing)."""
    if res is None:
        return 0
    return res if isinstance(res, int) else int(str(res).split()[1])


def _append_all(fd, data):
    done = 0
    mv = memoryview(data)
    while done < len(data):
        try:
            n = os.write(fd, mv[done:])
        except OSError as e:
            if done == 0:
                raise
            return "short %d %s" % (done, errname(e))
        if n == 0:
            return "short %d zero-write" % done
        done += n
    return done


def _read_all(fd, length, off):
    out = bytearray()
    while len(out) < length:
        b = os.pread(fd, length - len(out), off + len(out))
        if not b:
            break
        out += b
    return bytes(out)


# ------------------------------------------------------------- outcome logs

def format_entry(e):
    seq, desc, out = e
    return "#%-5d %s -> %s" % (seq, desc, out)


def first_divergence(a, b):
    """Index of the first entry where two outcome logs differ, or None."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def format_divergence(a, b, labels=("kernel", "btrfs-fuse"), context=40):
    """Readable report of the first difference between two outcome logs."""
    i = first_divergence(a, b)
    if i is None:
        return None
    lines = ["outcome logs differ at operation %d (of %d / %d):" % (i + 1, len(a), len(b))]
    lines.append("last %d operations before it (identical on both sides):" % min(i, context))
    lines += ["    " + format_entry(e) for e in a[max(0, i - context):i]]
    for lab, log in zip(labels, (a, b)):
        lines.append("  %-11s %s" % (lab + ":", format_entry(log[i]) if i < len(log) else "<log ends>"))
    return "\n".join(lines)


def model_mismatches(log, limit=10):
    """Operations whose outcome says the filesystem disagreed with the model."""
    return [format_entry(e) for e in log if "MODEL-MISMATCH" in e[2]][:limit]


# ==================================================== helpers for the write tests

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SELFTEST = os.environ.get("BTRFS_FUSE_SELFTEST", "") not in ("", "0")
BINARY = os.environ.get("BTRFS_FUSE") or os.path.join(REPO, "btrfs-fuse")


def run_cmd(argv, timeout=600):
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=timeout)
    return p.returncode, p.stdout


def mkfs_image(path, size, options=()):
    """A fresh sparse image made with mkfs.btrfs OPTIONS."""
    with open(path, "wb") as f:
        f.truncate(size)
    rc, out = run_cmd(["mkfs.btrfs", "-q", "-f"] + list(options) + [path])
    if rc != 0:
        raise RuntimeError("mkfs.btrfs %s %s failed (exit %d):\n%s" % (
            " ".join(options), path, rc, out))


_CHECK_OK = re.compile(r"\bno errors? found\b", re.I)


_SCAN_ERROR = re.compile(r"^ERROR: cannot scan (/dev/\S+): ")


def _foreign_scan_error(line, ours):
    """check scans every block device for the filesystem's other members; on a shared machine another
    session's loop device may be going away meanwhile ("ERROR: cannot scan /dev/loop4: Input/output
    error").  Such a line about a device that is not ours says nothing about our image."""
    m = _SCAN_ERROR.match(line)
    return m is not None and m.group(1) not in ours


def btrfs_check(images):
    """Run `btrfs check --readonly --check-data-csum` on an unmounted filesystem; returns
    (ok, report).  ok: exit code 0 and no line mentioning an error (other than "no error
    found").  Several image files are attached to loop devices so that check finds them."""
    images = [os.fspath(i) for i in ([images] if isinstance(images, (str, os.PathLike)) else images)]
    loops = []
    try:
        if len(images) > 1:
            for img in images:
                rc, out = run_cmd(["losetup", "-f", "--show", "-r", img])
                if rc != 0:
                    return False, "losetup %s failed: %s" % (img, out)
                loops.append(out.strip())
            run_cmd(["btrfs", "device", "scan"] + loops)
        target = loops[0] if loops else images[0]
        argv = ["btrfs", "check", "--readonly", "--check-data-csum", target]
        rc, out = run_cmd(argv)
    finally:
        for dev in loops:
            run_cmd(["btrfs", "device", "scan", "--forget", dev])
            run_cmd(["losetup", "-d", dev])
    bad = [line for line in out.splitlines()
           if re.search(r"error", line, re.I) and not _CHECK_OK.search(line)
           and not _foreign_scan_error(line, loops)]
    ok = rc == 0 and not bad
    return ok, "%s (exit %d)%s\n%s" % (" ".join(shlex.quote(a) for a in argv), rc,
                                       "" if ok else "; error lines: %r" % bad[:10], out[-6000:])


def assert_check_clean(img, what):
    """`btrfs check --readonly --check-data-csum IMG` must exit 0, say "no error found" and print no line about
    an error, mismatch, or a wrong, missing or invalid item (a scan error of some other block device is not
    ours); otherwise the test fails naming `what`. Returns check's output."""
    rc, out = run_cmd(["btrfs", "check", "--readonly", "--check-data-csum", os.fspath(img)])
    bad = [l for l in out.splitlines() if re.search(r"\berror\b|ERROR|mismatch|wrong|missing|invalid", l)
           and "no error found" not in l and not re.match(r"ERROR: cannot scan /dev/", l)]
    assert rc == 0 and "no error found" in out and not bad, (
        "btrfs check after %s failed (exit %d):\n%s" % (what, rc, out))
    return out


def scrub(mountpoint):
    """`btrfs scrub start -B` on a kernel mount; returns (ok, output)."""
    rc, out = run_cmd(["btrfs", "scrub", "start", "-B", os.fspath(mountpoint)])
    ok = rc == 0 and re.search(r"no errors found", out) is not None
    return ok, "btrfs scrub start -B (exit %d):\n%s" % (rc, out)


@contextlib.contextmanager
def mount_under_test(images, options, mounts):
    """The side under test: `btrfs-fuse -f -o OPTIONS`, or with BTRFS_FUSE_SELFTEST=1 a
    kernel mount (to check the tests themselves).  Yields a mounts.Mount."""
    if SELFTEST:
        with mounts.kernel_mount(images, options) as m:
            yield m
        return
    if not os.access(BINARY, os.X_OK):
        raise mounts.MountError("btrfs-fuse binary not found at %s: build it (make) or set "
                                "BTRFS_FUSE=PATH (BTRFS_FUSE_SELFTEST=1 checks the tests with "
                                "a second kernel mount)" % BINARY)
    with mounts.fuse_mount(BINARY, images, options=options) as m:
        yield m


def side_label():
    return "selftest-kernel" if SELFTEST else "btrfs-fuse"


class TestCtx:
    """What a write test's failure message holds: the test, how to reproduce it, the
    last operations of its workload and the daemon's output."""

    def __init__(self, what, repro, **kv):
        self.head = "%s\n%s\nreproduce: %s" % (
            what, "  ".join("%s=%s" % item for item in kv.items()), repro)
        self.mount = None         # the side under test, for its stderr
        self.workload = None      # for the last operations
        self.notes = []           # extra lines (progress so far)

    def fail(self, msg, ops=True):
        import pytest
        parts = [self.head] + self.notes + [msg]
        if ops and self.workload is not None:
            parts.append("last operations (%s):\n  %s" % (
                self.workload.stats(), "\n  ".join(self.workload.tail())))
        if self.mount is not None and self.mount.kind == "fuse":
            err = self.mount.stderr_text()
            if err.strip():
                parts.append("btrfs-fuse output (tail):\n" + err[-4000:])
        pytest.fail("\n".join(parts), pytrace=False)


KEEP_FAILED = os.environ.get("BTRFS_FUSE_KEEP_FAILED", "1") not in ("", "0")
FAIL_DIR = os.path.join(REPO, "build", "write-failures")


@contextlib.contextmanager
def workdir(name):
    """A scratch directory; moved to build/write-failures/NAME if the body fails (unless
    BTRFS_FUSE_KEEP_FAILED=0), so that the images can be examined."""
    import shutil
    import tempfile
    d = tempfile.mkdtemp(prefix="btrfs-write-%s-" % name)
    ok = False
    try:
        yield d
        ok = True
    finally:
        if ok or not KEEP_FAILED:
            shutil.rmtree(d, ignore_errors=True)
        else:
            keep = os.path.join(FAIL_DIR, name)
            shutil.rmtree(keep, ignore_errors=True)
            os.makedirs(FAIL_DIR, exist_ok=True)
            shutil.move(d, keep)
            print("images of the failed test kept in %s" % keep)


def check_image(ctx, images, when):
    ok, report = btrfs_check(images)
    if not ok:
        ctx.fail("btrfs check of the image %s found problems:\n%s" % (when, report))


def _our_kernel_errors(mounts, marker, loops):
    """BTRFS warnings/errors since marker that concern our loop devices."""
    return mounts.dmesg_btrfs_errors(marker, devices=loops)


@contextlib.contextmanager
def kernel_clean(ctx, mounts, images, options, when):
    """A kernel mount that must succeed and leave no BTRFS warning/error in the log."""
    marker = mounts.dmesg_marker()
    loops = []
    try:
        with mounts.kernel_mount(images, options) as m:
            loops = list(m.loops)
            errs = _our_kernel_errors(mounts, marker, loops)
            if errs:
                ctx.fail("the kernel complained mounting the image %s:\n  %s" % (
                    when, "\n  ".join(errs)))
            yield m
    except mounts.MountError as e:
        ctx.fail("the kernel cannot mount the image %s:\n%s" % (when, e))
    errs = _our_kernel_errors(mounts, marker, loops)
    if errs:
        ctx.fail("the kernel complained about the image %s:\n  %s" % (when, "\n  ".join(errs)))


@contextlib.contextmanager
def under_test(ctx, mounts, images, options):
    """The btrfs-fuse side (or its selftest stand-in); a failed mount and a daemon that
    crashes or exits non-zero fail the test."""
    try:
        with mount_under_test(images, options, mounts) as m:
            ctx.mount = m
            yield m
    except (mounts.MountError, mounts.FuseDaemonError) as e:
        ctx.fail("%s: %s" % (side_label(), e))


def scrub_clean(ctx, mnt):
    ok, out = scrub(mnt)
    if not ok:
        ctx.fail("scrub of the image written by %s found problems:\n%s" % (side_label(), out))


class Watchdog:
    """If the body runs longer than `seconds`, abort the FUSE connection of `mount`
    (its hung system calls then fail with ENOTCONN) and kill its daemon, so that a
    hang becomes a test failure.  `fired` tells whether it did."""

    def __init__(self, mount, seconds):
        self.mount, self.seconds = mount, seconds
        self.fired = False
        self._timer = None

    def _fire(self):
        self.fired = True
        m = self.mount
        if m.kind != "fuse":
            return
        minor = _mount_dev_minor(m.path)          # stat() of a hung mount would hang
        if minor is not None:
            try:
                with open("/sys/fs/fuse/connections/%d/abort" % minor, "w") as f:
                    f.write("1")
            except OSError:
                pass
        if m.proc is not None and m.proc.poll() is None:
            m.proc.kill()

    def __enter__(self):
        self._timer = threading.Timer(self.seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc):
        self._timer.cancel()
        return False


def _mount_dev_minor(path):
    """Minor device number of the mount at `path`, from /proc/self/mountinfo."""
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split(" ")
            if len(fields) > 4 and fields[4] == path:
                return int(fields[2].split(":")[1])
    return None


def elapsed(t0):
    return "%.1fs" % (time.monotonic() - t0)
