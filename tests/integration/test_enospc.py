"""A full filesystem: btrfs-fuse must answer ENOSPC, stay writable and leave a clean image.

Owns: the ENOSPC tests of the write path (test_enospc_data, test_enospc_metadata).

Key idea: fill a fresh 256 MiB image until the filesystem says ENOSPC -- once through
data (big files of seeded 1 MiB chunks, then small files and xattrs into what metadata
space is left) and once through metadata alone (many small inline files with xattrs) --
while recording exactly what every system call acknowledged.  The only error allowed
while filling is ENOSPC (never EIO, EROFS...).  Then, on the full filesystem, deleting
must work and free space, and writing must work again.  After unmount the image must pass
`btrfs check`, the kernel must mount it without complaint, and it must hold exactly what
was acknowledged (every byte, every xattr, no entry whose creation failed).  The same
fill runs on the kernel first: btrfs-fuse must fit at least half as much.

Runs by default (`make test`); BTRFS_FUSE_SELFTEST=1 puts a kernel mount on the btrfs-fuse
side.
"""

import errno
import os
import random

import pytest

import mounts
import workload
from workload import MiB

IMAGE_SIZE = 256 * MiB
CHUNK = MiB
FILE_CHUNKS = 32                  # big files of up to 32 MiB
SMALL_PER_DIR = 500
MAX_SMALL_FILES = 400000          # no ENOSPC by then: space is not being accounted
KERNEL_RW = "rw,nodev,nosuid"
FUSE_RW = "rw,nodev,nosuid"
MIN_RATIO = 0.5                   # of what the kernel fits
PHASE_TIMEOUT = 1200
LABEL = workload.side_label()


class Unexpected(Exception):
    """A system call failed with something other than ENOSPC."""


NOSPC = object()                  # what Filler.call returns for ENOSPC


def chunk(fileno, i):
    return random.Random(fileno * 1000003 + i).randbytes(CHUNK)


def small_content(i):
    return (b"%08d:" % i) * (1500 // 9)


def small_xattrs(i):
    rng = random.Random(i)
    return {"user.a": rng.randbytes(700), "user.b": rng.randbytes(rng.randrange(100, 1500))}


class Filler:
    """Fills a mounted filesystem and records what was acknowledged.

    big[name] = [acknowledged bytes, durable bytes (fsync'd), an fsync failed?]
    small[name] = [acknowledged bytes, {xattr: value}]
    """

    def __init__(self, root):
        self.root = os.fspath(root)
        self.big = {}
        self.small = {}
        self.enospc = []             # where ENOSPC came: "write data/big003 @ 67108864"
        self.nsmall = 0

    def p(self, rel):
        return os.path.join(self.root, rel)

    def call(self, what, fn, *args):
        """fn(*args); ENOSPC -> NOSPC (recorded), other errors -> Unexpected."""
        try:
            return fn(*args)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                self.enospc.append(what)
                return NOSPC
            raise Unexpected("%s failed with %s (%s); only success or ENOSPC is acceptable"
                             % (what, workload.errname(e), e.strerror))

    # ------------------------------------------------------------ data

    def fill_data(self):
        """Big files until a write says ENOSPC.  Returns bytes acknowledged."""
        self.call("mkdir data", os.mkdir, self.p("data"))
        self.call("mkdir after", os.mkdir, self.p("after"))   # for refill_data
        fileno = 0
        while not self.enospc:
            if self.total_big() > 2 * IMAGE_SIZE:
                raise Unexpected("no ENOSPC after %d MiB written to a %d MiB filesystem"
                                 % (self.total_big() // MiB, IMAGE_SIZE // MiB))
            self.write_big("data/big%03d" % fileno, fileno)
            fileno += 1
        return self.total_big()

    def write_big(self, name, fileno, nchunks=FILE_CHUNKS):
        fd = self.call("create " + name, os.open, self.p(name),
                       os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        if fd is NOSPC:
            return False
        rec = self.big[name] = [0, 0, False, fileno]
        try:
            for i in range(nchunks):
                data = chunk(fileno, i)
                while rec[0] < (i + 1) * CHUNK:
                    n = self.call("write %s @ %d" % (name, rec[0]), os.write, fd,
                                  memoryview(data)[rec[0] - i * CHUNK:])
                    if n is NOSPC or n == 0:
                        return False
                    rec[0] += n
                if i % 8 == 7:
                    self.fsync(fd, name, rec)
            return self.fsync(fd, name, rec)
        finally:
            self.close(fd, name, rec)

    def fsync(self, fd, name, rec):
        if self.call("fsync " + name, os.fsync, fd) is NOSPC:
            rec[2] = True
            return False
        rec[1] = rec[0]
        return True

    def close(self, fd, name, rec):
        try:
            os.close(fd)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise Unexpected("close %s failed with %s" % (name, workload.errname(e)))
            rec[2] = True

    def total_big(self):
        return sum(r[0] for r in self.big.values())

    # ------------------------------------------------------------ metadata

    def fill_small(self, limit=MAX_SMALL_FILES, until_enospc=True):
        """Small inline files with two xattrs each, until ENOSPC (or `limit` files)."""
        start = len(self.enospc)
        made = 0
        while made < limit and (len(self.enospc) == start or not until_enospc):
            i = self.nsmall
            self.nsmall += 1
            made += 1
            d = "meta/d%04d" % (i // SMALL_PER_DIR)
            if i % SMALL_PER_DIR == 0 or not os.path.isdir(self.p(d)):
                self.call("mkdir meta", _mkdir_p, self.p("meta"))
                if self.call("mkdir " + d, _mkdir_p, self.p(d)) is NOSPC:
                    continue
            self.make_small("%s/f%06d" % (d, i), i)
        if until_enospc and len(self.enospc) == start:
            raise Unexpected("no ENOSPC after %d small files with xattrs on a %d MiB filesystem"
                             % (made, IMAGE_SIZE // MiB))
        return made

    def make_small(self, name, i):
        fd = self.call("create " + name, os.open, self.p(name),
                       os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        if fd is NOSPC:
            return False
        rec = self.small[name] = [0, {}]
        try:
            data = small_content(i)
            n = self.call("write " + name, os.write, fd, data)
            if n is NOSPC:
                return False
            rec[0] = n
            for xname, value in small_xattrs(i).items():
                if self.call("setxattr %s %s" % (name, xname), os.setxattr, fd, xname,
                             value) is NOSPC:
                    return False
                rec[1][xname] = value
            return True
        finally:
            os.close(fd)

    def more_metadata(self, n=300):
        """After ENOSPC: more creates/xattrs; success or ENOSPC both fine."""
        self.fill_small(limit=n, until_enospc=False)

    # ------------------------------------------------------------ freeing

    def delete(self, names, table):
        for name in names:
            try:
                os.unlink(self.p(name))
            except OSError as e:
                raise Unexpected("unlink %s on the full filesystem failed with %s: deleting "
                                 "must always work" % (name, workload.errname(e)))
            del table[name]
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            workload.syncfs(fd)
        except OSError as e:
            raise Unexpected("syncfs after deleting failed with %s" % workload.errname(e))
        finally:
            os.close(fd)


def _mkdir_p(path):
    try:
        os.mkdir(path)
    except FileExistsError:
        pass
    return True


# --------------------------------------------------------------- checking

def verify_contents(ctx, root, f):
    """The image holds exactly what was acknowledged."""
    root = os.fspath(root)
    bad = []
    for name, (ack, durable, fsync_failed, fileno) in sorted(f.big.items()):
        p = os.path.join(root, name)
        try:
            size = os.stat(p).st_size
        except OSError as e:
            bad.append("%s: %s (acknowledged %d bytes)" % (name, workload.errname(e), ack))
            continue
        if size != ack and not (fsync_failed and durable <= size <= ack):
            bad.append("%s: size %d, acknowledged %d (durable %d)" % (name, size, ack, durable))
        with open(p, "rb") as fh:
            for i in range((size + CHUNK - 1) // CHUNK):
                got = fh.read(CHUNK)
                if got != chunk(fileno, i)[:len(got)]:
                    bad.append("%s: wrong data in MiB %d" % (name, i))
                    break
    on_disk = set()
    if os.path.isdir(os.path.join(root, "meta")):
        for d in os.listdir(os.path.join(root, "meta")):
            for n in os.listdir(os.path.join(root, "meta", d)):
                on_disk.add("meta/%s/%s" % (d, n))
    for name in sorted(on_disk - set(f.small))[:20]:
        bad.append("%s: exists, but its creation was not acknowledged or it was deleted" % name)
    for name, (ack, xattrs) in sorted(f.small.items()):
        p = os.path.join(root, name)
        if name not in on_disk:
            bad.append("%s: missing" % name)
            continue
        i = int(name.rsplit("/f", 1)[1])
        with open(p, "rb") as fh:
            data = fh.read()
        if data != small_content(i)[:ack]:
            bad.append("%s: %d bytes, acknowledged %d (or wrong data)" % (name, len(data), ack))
        got = {x: os.getxattr(p, x) for x in os.listxattr(p) if x.startswith("user.")}
        if got != xattrs:
            bad.append("%s: xattrs %s, acknowledged %s" % (name, sorted(got), sorted(xattrs)))
        if len(bad) > 40:
            break
    if bad:
        ctx.fail("after unmount, the image does not hold what was acknowledged:\n  "
                 + "\n  ".join(bad[:40]))


def expect(ctx, f, fn, *args):
    try:
        return fn(*args)
    except Unexpected as e:
        msg = str(e)
    ctx.fail("%s\nENOSPC seen at: %s" % (msg, ", ".join(f.enospc[:5]) or "nowhere yet"))


def phase(ctx, mnt, fn, *args):
    with workload.Watchdog(mnt, PHASE_TIMEOUT) as dog:
        res = fn(*args)
    if dog.fired:
        ctx.fail("%s hung (no answer within %ds; connection aborted)" % (LABEL, PHASE_TIMEOUT))
    return res


def statfs_line(ctx, root):
    try:
        st = os.statvfs(root)
    except OSError as e:
        st = e
    if isinstance(st, OSError):
        ctx.fail("statfs of the full filesystem failed with %s (%s)" % (workload.errname(st),
                                                                     st.strerror))
    return "statfs: %d of %d blocks of %d bytes available" % (st.f_bavail, st.f_blocks, st.f_bsize)


# --------------------------------------------------------------- the tests

def reference_capacity(d, fill):
    """What the kernel fits with the same fill on the same kind of image."""
    img = os.path.join(d, "kernel.img")
    workload.mkfs_image(img, IMAGE_SIZE)
    with mounts.kernel_mount(img, KERNEL_RW) as k:
        f = Filler(k)
        try:
            return fill(f)
        except Unexpected as e:
            pytest.fail("the KERNEL does not behave as this test expects (test bug?): %s" % e,
                        pytrace=False)


def run_full(name, fill, refill):
    ctx = workload.TestCtx(
        "ENOSPC test %s: 256 MiB image, default mkfs, side under test: %s" % (name, LABEL),
        "%s/usr/bin/python3 -m pytest -q "
        "tests/integration/test_enospc.py -k %s" % (
            "BTRFS_FUSE_SELFTEST=1 " if workload.SELFTEST else "", name),
        fuse_mount="-o " + FUSE_RW)
    with workload.workdir("enospc-" + name) as d:
        kernel_amount = reference_capacity(d, fill)
        img = os.path.join(d, "fuse.img")
        workload.mkfs_image(img, IMAGE_SIZE)
        with workload.under_test(ctx, mounts, img, FUSE_RW) as m:
            f = Filler(m)
            amount = phase(ctx, m, expect, ctx, f, fill, f)
            ctx.notes.append("filled: %d (kernel: %d); ENOSPC first at %s; %s" % (
                amount, kernel_amount, f.enospc[0], statfs_line(ctx, m.path)))
            if amount < MIN_RATIO * kernel_amount:
                ctx.fail("%s said ENOSPC far too early: %d, the kernel fits %d (same fill, same "
                         "image size)" % (LABEL, amount, kernel_amount))
            phase(ctx, m, expect, ctx, f, refill, f)
        workload.check_image(ctx, img, "after filling it until ENOSPC")
        with workload.kernel_clean(ctx, mounts, img, "ro", "after ENOSPC") as k:
            verify_contents(ctx, k, f)


def fill_data(f):
    return f.fill_data() // MiB


def refill_data(f):
    f.more_metadata()                     # metadata into what is left: ok or ENOSPC
    f.delete(sorted(x for x in f.big if x.startswith("data/"))[::2], f.big)
    before = len(f.enospc)
    f.write_big("after/refill", 999)
    if len(f.enospc) != before:
        raise Unexpected("writing 32 MiB after deleting half of the data failed: ENOSPC at %s"
                         % f.enospc[before])
    f.fill_small(limit=100, until_enospc=False)
    if len(f.enospc) != before or not _all_small_ok(f, 100):
        raise Unexpected("creating small files after deleting failed: ENOSPC at %s"
                         % f.enospc[before:before + 3])


def _all_small_ok(f, n):
    last = sorted(f.small)[-n:]
    return all(f.small[x][0] == len(small_content(int(x.rsplit("/f", 1)[1])))
               and len(f.small[x][1]) == 2 for x in last)


def fill_metadata(f):
    f.fill_small()
    return len(f.small)


def refill_metadata(f):
    f.more_metadata(5)
    f.delete(sorted(f.small)[::3], f.small)
    before = len(f.enospc)
    f.fill_small(limit=200, until_enospc=False)
    if len(f.enospc) != before or not _all_small_ok(f, 200):
        raise Unexpected("creating 200 small files after deleting a third failed: ENOSPC at %s"
                         % f.enospc[before:before + 3])


def test_enospc_data():
    """Data full: big files until ENOSPC, then metadata into the rest, delete, rewrite."""
    run_full("data", fill_data, refill_data)


def test_enospc_metadata():
    """Metadata full: small inline files with xattrs until ENOSPC, delete, recreate."""
    run_full("metadata", fill_metadata, refill_metadata)
