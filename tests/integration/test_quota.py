"""Quota groups on images btrfs-fuse writes: counts marked inconsistent, as the kernel does.

Owns: test_quota_roundtrip (a kernel-made image with qgroups, subvolumes, a snapshot and a
limit: the same seeded workload through the kernel and through btrfs-fuse, then the qgroup
status item, `btrfs check`, a clean kernel mount, a rescan, and the counts compared with the
kernel's own), test_quota_untouched (a rw mount that writes nothing keeps the exact counts),
test_squota_readonly (simple quotas: read like the kernel, kept read-only under -o rw),
test_quota_rescan_in_progress_readonly (the status item's RESCAN flag, set on disk: read-only).

Key idea: btrfs-fuse does not count qgroup usage. Like the kernel when it cannot account a
change, the first commit that writes anything sets INCONSISTENT in the qgroup status item,
and every commit writes its transaction id into the item's generation (the kernel checks it
at mount). So `btrfs check` reports the counts as "expected" to differ (exit 0), the kernel
mounts the image without a warning, and `btrfs quota rescan -w` makes the counts right: the
same qgroups, limits and parents as the kernel's replay of the same operations, and byte
counts equal to what `btrfs check` recounts from the extent tree. (The byte counts cannot be
compared with the kernel's replay: the two drivers commit at different moments, so a file
written across a commit has differently split extents on each side.)
"""

import os
import re
import subprocess

import mounts
import workload
from test_write_diff import (DIFF_IGNORE, FUSE_RW, KERNEL_RW, LABEL, SAME_IGNORE, check_outcomes,
                             check_verify, compare, run_workload, walk)
from workload import MiB

SEED = int(os.environ.get("BTRFS_FUSE_QUOTA_SEED", "4242"))
NOPS = int(os.environ.get("BTRFS_FUSE_QUOTA_OPS", "300"))
LIMIT = 400 * MiB            # on subvolume sv: far above what the workload writes (btrfs-fuse does not enforce limits)
FLAG_ON, FLAG_RESCAN, FLAG_INCONSISTENT = 1, 2, 4
CHECK_EXPECTED = "a difference in qgroup accounting is expected"


def sh(ctx, argv):
    rc, out = workload.run_cmd(argv)
    if rc != 0:
        ctx.fail("%s failed (exit %d):\n%s" % (" ".join(argv), rc, out))
    return out


def make_quota_image(ctx, path):
    """mkfs, then with the kernel: quotas on, files, a subvolume with a limit, a snapshot of
    it (sharing its extents), a level-1 qgroup holding both, and a rescan so that the counts
    are exact and consistent."""
    workload.mkfs_image(path, 512 * MiB)
    with mounts.kernel_mount(path, KERNEL_RW) as k:
        root = os.fspath(k)
        sh(ctx, ["btrfs", "quota", "enable", root])
        os.makedirs(os.path.join(root, "top/deep"))
        with open(os.path.join(root, "top/a"), "wb") as f:
            f.write(os.urandom(3 * MiB))
        sh(ctx, ["btrfs", "subvolume", "create", os.path.join(root, "sv")])
        for i in range(20):
            with open(os.path.join(root, "sv", "f%d" % i), "wb") as f:
                f.write(os.urandom(1000 + 70000 * i))
        os.mkdir(os.path.join(root, "sv/dir"))
        sh(ctx, ["btrfs", "subvolume", "snapshot", os.path.join(root, "sv"), os.path.join(root, "snap")])
        sh(ctx, ["btrfs", "qgroup", "limit", str(LIMIT), os.path.join(root, "sv")])
        sh(ctx, ["btrfs", "qgroup", "create", "1/100", root])
        for sub in ("sv", "snap"):
            rc, out = workload.run_cmd(["btrfs", "qgroup", "assign", "--no-rescan",
                                        qgroupid(ctx, root, sub), "1/100", root])
            if rc not in (0, 1):
                ctx.fail("btrfs qgroup assign failed (exit %d):\n%s" % (rc, out))
        sh(ctx, ["btrfs", "quota", "rescan", "-w", root])


def qgroupid(ctx, root, sub):
    out = sh(ctx, ["btrfs", "subvolume", "show", os.path.join(root, sub)])
    m = re.search(r"Subvolume ID:\s*(\d+)", out)
    if not m:
        ctx.fail("no subvolume id in:\n" + out)
    return "0/" + m.group(1)


def qgroup_table(ctx, root):
    """{qgroupid: (referenced, exclusive, max_rfer, max_excl, parents)} after a sync."""
    sh(ctx, ["btrfs", "filesystem", "sync", root])
    out = sh(ctx, ["btrfs", "qgroup", "show", "-pre", "--raw", root])
    rows = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 6 and re.match(r"^\d+/\d+$", f[0]):
            rows[f[0]] = tuple(f[1:6])
    if not rows:
        ctx.fail("no qgroups in `btrfs qgroup show`:\n" + out)
    return rows


def status_item(ctx, image):
    """(flags, generation) of the qgroup status item, and the superblock generation."""
    out = sh(ctx, ["btrfs", "inspect-internal", "dump-tree", "-t", "quota", image])
    m = re.search(r"key \(0 QGROUP_STATUS 0\).*\n\s*version (\d+) generation (\d+) flags (\S+) scan", out)
    if not m:
        ctx.fail("no qgroup status item in the quota tree:\n" + out[:3000])
    names = {"ON": FLAG_ON, "RESCAN": FLAG_RESCAN, "SCANNING": FLAG_RESCAN, "INCONSISTENT": FLAG_INCONSISTENT}
    flags = 0
    for n in m.group(3).split("|"):
        flags |= names.get(n, 0)
    sup = sh(ctx, ["btrfs", "inspect-internal", "dump-super", image])
    g = re.search(r"^generation\s+(\d+)", sup, re.M)
    return flags, int(m.group(2)), int(g.group(1))


def check_report(ctx, image, when):
    """`btrfs check --readonly --check-data-csum`: clean (exit 0, no error line); returns its output."""
    ok, report = workload.btrfs_check(image)
    if not ok:
        ctx.fail("btrfs check of the image %s found problems:\n%s" % (when, report))
    return report


def test_quota_roundtrip():
    repro = ("BTRFS_FUSE_QUOTA_SEED=%d BTRFS_FUSE_QUOTA_OPS=%d /usr/bin/python3 -m pytest -q "
             "tests/integration/test_quota.py::test_quota_roundtrip" % (SEED, NOPS))
    ctx = workload.TestCtx("quota round trip: seed=%d, %d operations, side under test: %s" % (SEED, NOPS, LABEL),
                           repro, kernel_mount="-o " + KERNEL_RW, fuse_mount="-o " + FUSE_RW)
    with workload.workdir("quota-roundtrip") as d:
        base, kimg, fimg = (os.path.join(d, n) for n in ("base.img", "kernel.img", "fuse.img"))
        make_quota_image(ctx, base)
        flags0, gen0, sgen0 = status_item(ctx, base)
        assert flags0 & FLAG_ON and not flags0 & (FLAG_INCONSISTENT | FLAG_RESCAN) and gen0 == sgen0, \
            "the kernel-made image's qgroups are not on and consistent: flags %#x, generation %d (super %d)" % (
                flags0, gen0, sgen0)
        for img in (kimg, fimg):
            subprocess.run(["cp", "--sparse=always", base, img], check=True)

        # 1. the reference: the kernel runs the workload and counts exactly
        kwl = workload.Workload(SEED, data_budget=60 * MiB)
        with mounts.kernel_mount(kimg, KERNEL_RW) as k:
            kwl.adopt(k)
            run_workload(ctx, kwl, k, NOPS)
            kman = walk(ctx, k, reference=True)
            kernel_counts = qgroup_table(ctx, os.fspath(k))
        kstatus = status_item(ctx, kimg)
        assert not kstatus[0] & FLAG_INCONSISTENT, "the kernel's own replay left the qgroups inconsistent " \
            "(flags %#x): the reference counts are not exact" % kstatus[0]

        # 2. the same workload through btrfs-fuse
        fwl = workload.Workload(SEED, data_budget=60 * MiB)
        ctx.workload = fwl
        with workload.under_test(ctx, mounts, fimg, FUSE_RW) as f:
            fwl.adopt(f, like=kwl)
            run_workload(ctx, fwl, f, NOPS)
            check_outcomes(ctx, kwl.log, fwl.log)
            fman = walk(ctx, f, reference=False)
            check_verify(ctx, fwl, f, LABEL)
        compare(ctx, kwl.time_filter(kman), kwl.time_filter(fman), ("kernel", LABEL), DIFF_IGNORE,
                "kernel copy vs %s copy of the quota image" % LABEL)

        # 3. the status item says: counts inconsistent, as of the last commit
        flags, gen, sgen = status_item(ctx, fimg)
        if not (flags & FLAG_ON and flags & FLAG_INCONSISTENT and not flags & FLAG_RESCAN) or gen != sgen:
            ctx.fail("after the %s workload the qgroup status item has flags %#x and generation %d (superblock "
                     "generation %d); expected ON|INCONSISTENT and the superblock's generation" % (
                         LABEL, flags, gen, sgen))

        # 4. btrfs check accepts it: the differences are expected, exit 0
        report = check_report(ctx, fimg, "written by " + LABEL)
        if CHECK_EXPECTED not in report:
            ctx.fail("btrfs check did not see the qgroups as inconsistent (no %r):\n%s" % (CHECK_EXPECTED, report))

        # 5. the kernel mounts it without a word, sees the same tree, and a rescan makes the counts right
        with workload.kernel_clean(ctx, mounts, fimg, KERNEL_RW, "written by " + LABEL) as k:
            compare(ctx, fman, walk(ctx, k, reference=True), (LABEL, "kernel"), SAME_IGNORE,
                    "image written by %s, as %s showed it vs as the kernel shows it" % (LABEL, LABEL))
            sh(ctx, ["btrfs", "quota", "rescan", "-w", os.fspath(k)])
            fuse_counts = qgroup_table(ctx, os.fspath(k))
            workload.scrub_clean(ctx, k)
        # the same qgroups, limits and parents as the kernel's replay; the byte counts themselves depend on
        # how each driver laid out extents and tree blocks (commit timing splits extents differently), so they
        # are checked against btrfs check's own recount below instead
        shape = lambda t: {q: v[2:] for q, v in t.items()}
        if shape(fuse_counts) != shape(kernel_counts):
            ctx.fail("qgroups (max_rfer, max_excl, parents) differ from the kernel's replay of the same "
                     "operations:\n  kernel: %s\n  %s after rescan: %s" % (kernel_counts, LABEL, fuse_counts))
        flags, gen, sgen = status_item(ctx, fimg)
        if flags & FLAG_INCONSISTENT or gen != sgen:
            ctx.fail("after the kernel's rescan the status item has flags %#x, generation %d (super %d)" % (
                flags, gen, sgen))
        report = check_report(ctx, fimg, "after the kernel's rescan")
        if CHECK_EXPECTED in report or "are different" in report:
            ctx.fail("after the kernel's rescan btrfs check still finds qgroup differences:\n" + report)


def test_quota_untouched():
    """A read-write mount that changes nothing commits nothing: the exact counts stay exact."""
    ctx = workload.TestCtx("quota image mounted rw by %s without changes" % LABEL,
                           "/usr/bin/python3 -m pytest -q tests/integration/test_quota.py::test_quota_untouched")
    with workload.workdir("quota-untouched") as d:
        img = os.path.join(d, "q.img")
        make_quota_image(ctx, img)
        before = status_item(ctx, img)
        with workload.under_test(ctx, mounts, img, FUSE_RW) as f:
            os.listdir(os.fspath(f))
            with open(os.path.join(os.fspath(f), "top/a"), "rb") as fh:
                fh.read(4096)
        after = status_item(ctx, img)
        if after != before:
            ctx.fail("the status item (flags, generation, super generation) changed from %s to %s" % (before, after))
        report = check_report(ctx, img, "after a rw mount without changes")
        if CHECK_EXPECTED in report or "are different" in report:
            ctx.fail("btrfs check finds qgroup differences:\n" + report)


BTRFS_IOC_QUOTA_CTL = 0xC0109428          # _IOWR(0x94, 40, struct btrfs_ioctl_quota_ctl_args)
BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA = 4   # btrfs-progs 6.2 has no `quota enable -s`: the ioctl directly


def file_hash(path):
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(4 * MiB), b""):
            h.update(block)
    return h.hexdigest()


def test_squota_readonly():
    """Simple quotas: the kernel never marks them inconsistent (their counts follow every extent
    allocation through owner references in the extent items), so btrfs-fuse reads such an image
    but keeps it read-only under -o rw, with a message saying why; the image is not touched."""
    import errno
    import fcntl
    import struct
    import treecmp
    ctx = workload.TestCtx("simple-quota image under %s -o rw" % LABEL,
                           "/usr/bin/python3 -m pytest -q tests/integration/test_quota.py::test_squota_readonly")
    with workload.workdir("squota") as d:
        img = os.path.join(d, "s.img")
        workload.mkfs_image(img, 512 * MiB)
        with mounts.kernel_mount(img, KERNEL_RW) as k:
            root = os.fspath(k)
            fd = os.open(root, os.O_RDONLY)
            try:
                fcntl.ioctl(fd, BTRFS_IOC_QUOTA_CTL, struct.pack("<QQ", BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA, 0))
            except OSError as e:
                import pytest
                pytest.skip("this kernel cannot enable simple quotas (%s)" % e)
            finally:
                os.close(fd)
            with open(os.path.join(root, "f"), "wb") as f:
                f.write(os.urandom(MiB + 123))
            sh(ctx, ["btrfs", "subvolume", "create", os.path.join(root, "sv")])
            with open(os.path.join(root, "sv/g"), "wb") as f:
                f.write(os.urandom(70000))
            sh(ctx, ["btrfs", "subvolume", "snapshot", os.path.join(root, "sv"), os.path.join(root, "snap")])
        with mounts.kernel_mount(img, "ro") as k:
            kman = treecmp.walk(k, seek_holes=True)
        before = file_hash(img)
        with workload.under_test(ctx, mounts, img, FUSE_RW) as f:
            fman = treecmp.walk(f)
            try:
                open(os.path.join(os.fspath(f), "new"), "w").close()
                ctx.fail("creating a file on the simple-quota image succeeded")
            except OSError as e:
                if e.errno != errno.EROFS:
                    ctx.fail("creating a file: %s, expected EROFS" % e)
        if "simple quotas" not in f.stderr_text():
            ctx.fail("btrfs-fuse did not say why the mount is read-only:\n" + f.stderr_text())
        diffs = treecmp.compare(kman, fman, ignore=["ino", "dino"], labels=("kernel", LABEL))
        if diffs:
            ctx.fail("the simple-quota image reads differently:\n  " + "\n  ".join(diffs[:30]))
        if file_hash(img) != before:
            ctx.fail("the image changed under a mount that had to stay read-only")


def _crc32c(data):
    table = _crc32c.table
    if table is None:
        table = _crc32c.table = []
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)
            table.append(c)
    crc = 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


_crc32c.table = None


def set_status_flags(ctx, image, add):
    """Set flag bits in the qgroup status item on disk, in every copy of its leaf (the quota tree of these
    images is one leaf), with the leaf's crc32c checksum recomputed."""
    import struct
    out = sh(ctx, ["btrfs", "inspect-internal", "dump-tree", "-t", "quota", image])
    m = re.search(r"^leaf (\d+) items", out, re.M)
    if not m:
        ctx.fail("the quota tree is not a single leaf:\n" + out[:2000])
    logical = int(m.group(1))
    maps = re.findall(r"mirror \d+ logical %d physical (\d+) device" % logical,
                      sh(ctx, ["btrfs-map-logical", "-c", "2", "-l", str(logical), image]))
    if not maps:
        ctx.fail("btrfs-map-logical found no copy of block %d" % logical)
    nodesize = 16384
    with open(image, "r+b") as f:
        for phys in sorted(set(int(p) for p in maps)):
            f.seek(phys)
            blk = bytearray(f.read(nodesize))
            hdr = 101
            objectid, typ, offset, itemoff, size = struct.unpack_from("<QBQII", blk, hdr)
            assert (objectid, typ, offset) == (0, 240, 0) and size >= 32, (objectid, typ, offset, size)
            pos = hdr + itemoff + 16
            flags, = struct.unpack_from("<Q", blk, pos)
            struct.pack_into("<Q", blk, pos, flags | add)
            struct.pack_into("<I", blk, 0, _crc32c(bytes(blk[32:])))
            f.seek(phys)
            f.write(blk)


def test_quota_rescan_in_progress_readonly():
    """An image whose qgroup rescan was interrupted stays read-only under -o rw: the kernel resumes the rescan
    at its next mount and would clear INCONSISTENT without counting what changed behind its cursor."""
    import errno
    ctx = workload.TestCtx("quota image with a rescan in progress under %s -o rw" % LABEL,
                           "/usr/bin/python3 -m pytest -q "
                           "tests/integration/test_quota.py::test_quota_rescan_in_progress_readonly")
    if workload.SELFTEST:
        import pytest
        pytest.skip("the selftest's kernel side resumes the rescan and writes")
    with workload.workdir("quota-rescan") as d:
        img = os.path.join(d, "r.img")
        make_quota_image(ctx, img)
        set_status_flags(ctx, img, FLAG_RESCAN)
        flags, _gen, _sgen = status_item(ctx, img)
        assert flags & FLAG_RESCAN, "the RESCAN flag did not stick: flags %#x" % flags
        ok, report = workload.btrfs_check(img)
        assert "Qgroup rescan is running" in report, "the patched leaf is not read as intended:\n" + report
        before = file_hash(img)
        with workload.under_test(ctx, mounts, img, FUSE_RW) as f:
            try:
                open(os.path.join(os.fspath(f), "new"), "w").close()
                ctx.fail("creating a file on an image with a rescan in progress succeeded")
            except OSError as e:
                if e.errno != errno.EROFS:
                    ctx.fail("creating a file: %s, expected EROFS" % e)
        if "rescan is in progress" not in f.stderr_text():
            ctx.fail("btrfs-fuse did not say why the mount is read-only:\n" + f.stderr_text())
        if file_hash(img) != before:
            ctx.fail("the image changed under a mount that had to stay read-only")
