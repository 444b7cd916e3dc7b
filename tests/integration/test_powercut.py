"""Power cuts: no state a disk can be left in after losing power loses committed or fsynced data.

Owns: the power-cut replay tests (test_powercut), the check that the I/O record holds every device
write (test_record_is_complete), and the check that the promise checker itself catches a lost fsync
(test_checker_catches_lost_fsync).

Key idea: a seeded workload (tests/lib/crashcheck.TrackedWorkload: creates, writes, overwrites,
truncates, renames, links, xattrs, fsyncs, forced commits) runs on `btrfs-fuse -o rw,iorecord=REC`.
The record holds every device write with its bytes and every flush; tests/lib/iorec.py rebuilds from the
image as it was at mount time the device state at every flush, right after superblock writes, and at
random cut points between flushes, where each unflushed write is lost, kept, or torn at 4 KiB or
512-byte sectors (a disk's volatile cache at a power cut; iorec.py's docstring has the model).  Every state must pass `btrfs check --readonly
--check-data-csum`, and btrfs-fuse's view of it (tests/lib/crashcheck.recovered_manifest) must keep the
promise (crashcheck.History.check): the last committed transaction, plus every file fsynced before the
cut with its content, size and name.  A few states are also mounted by the kernel, which must show the
same tree.

Environment:
  BTRFS_FUSE_SOAK=1              more seeds, operations and cut points
  BTRFS_FUSE_POWERCUT_SEEDS=a,b  exactly these seeds
  BTRFS_FUSE_POWERCUT_OPS=N      operations per seed (default 300, soak 1500)
  BTRFS_FUSE_POWERCUT_CUTS=N     random cut points per seed (default 50, soak 400)
  BTRFS_FUSE_POWERCUT_SUPER=N    most cut points right after superblock writes per seed (default 24,
                                 soak all; every flush point is always checked)
"""

import os
import random
import subprocess
import tempfile

import pytest

import crashcheck
import iorec
import mounts
import workload
from workload import MiB

SOAK = os.environ.get("BTRFS_FUSE_SOAK", "0") not in ("", "0")
SEEDS = ([int(s) for s in os.environ["BTRFS_FUSE_POWERCUT_SEEDS"].split(",") if s.strip()]
         if os.environ.get("BTRFS_FUSE_POWERCUT_SEEDS") else
         list(range(3000, 3000 + (12 if SOAK else 4))))
NOPS = int(os.environ.get("BTRFS_FUSE_POWERCUT_OPS", "1500" if SOAK else "300"))
NCUTS = int(os.environ.get("BTRFS_FUSE_POWERCUT_CUTS", "400" if SOAK else "50"))
# states right after superblock writes (before the flush that completes the commit): all, or this many
# chosen at random (the states at flushes are always all checked)
MAX_SUPER = int(os.environ.get("BTRFS_FUSE_POWERCUT_SUPER", "100000" if SOAK else "24"))
KERNEL_STATES = 8 if SOAK else 2
IMAGE_SIZE = 256 * MiB
# (mkfs options, devices) by seed % len: the last one is a two-device RAID1, where each device has its own
# flushes and superblocks
VARIANTS = [([], 1), (["-n", "4096", "-m", "single"], 1), (["--csum", "xxhash", "-O", "^no-holes"], 1),
            (["-m", "raid1", "-d", "raid1"], 2)]
FUSE_RW = "rw,nodev,nosuid,commit=86400"
REPLAY = os.path.join(workload.REPO, "tests", "tools", "iorec-replay")
MAX_REPORTED = 6
ASAN = os.path.abspath(os.environ.get("BTRFS_FUSE_ASAN",
                                      os.path.join(workload.REPO, "build-asan", "btrfs-fuse")))

pytestmark = pytest.mark.skipif(workload.SELFTEST, reason="the I/O record is btrfs-fuse's")


def _run_recorded(ctx, seed, d, nops, binary=None):
    """mkfs, keep the mount-time image, run the workload with the recorder (binary: btrfs-fuse by
    default); returns (image, base image, record path, workload)."""
    opts, ndev = VARIANTS[seed % len(VARIANTS)]
    img = [os.path.join(d, "fs%d.img" % i) for i in range(ndev)]
    base = [os.path.join(d, "base%d.img" % i) for i in range(ndev)]
    rec = os.path.join(d, "io.rec")
    crashcheck.mkfs_images(img, IMAGE_SIZE, opts)
    for a, b in zip(img, base):
        iorec.copy_sparse(a, b)
    wl = crashcheck.TrackedWorkload(seed, crashcheck.record_clock(rec))
    ctx.workload = wl
    try:
        with mounts.fuse_mount(binary or workload.BINARY, img, FUSE_RW + ",iorecord=" + rec) as m:
            ctx.mount = m
            with workload.Watchdog(m, 600) as dog:
                wl.begin(m)
                wl.run_ops(m, nops)
                ev = wl.unmount_event()
            if dog.fired:
                ctx.fail("the workload hung (connection aborted after 600s)")
    except (mounts.MountError, mounts.FuseDaemonError) as e:
        ctx.fail("btrfs-fuse (%s): %s" % (binary or workload.BINARY, e))
    ev.end = wl.clock()
    return img, base, rec, wl


def _ctx(seed, what):
    opts, ndev = VARIANTS[seed % len(VARIANTS)]
    return workload.TestCtx(
        "%s: seed=%d, %d operations, mkfs.btrfs %s (%d x %d MiB)" % (
            what, seed, NOPS, " ".join(opts) or "(defaults)", ndev, IMAGE_SIZE // MiB),
        "BTRFS_FUSE_POWERCUT_SEEDS=%d BTRFS_FUSE_POWERCUT_OPS=%d BTRFS_FUSE_POWERCUT_CUTS=%d "
        "BTRFS_FUSE_POWERCUT_SUPER=%d /usr/bin/python3 -m pytest -q tests/integration/test_powercut.py"
        % (seed, NOPS, NCUTS, MAX_SUPER))


def _repro(d, cut, ndev):
    imgs = " ".join("--image %d=%s:state%d.img" % (i + 1, os.path.join(d, "base%d.img" % i), i)
                    for i in range(ndev))
    return ("%s build %s %s --at %d --mode %s --seed %d --sector %d   (then: btrfs check --readonly "
            "state0.img%s)"
            % (REPLAY, os.path.join(d, "io.rec"), imgs, cut.at,
               "all" if cut.mode == "flush" else cut.mode, cut.seed, cut.sector,
               ", after losetup and btrfs device scan of every state image" if ndev > 1 else ""))


def _ops_before(wl, hist, nbytes):
    """The last operations before the cut (by the events' clock)."""
    seq = max([e.seq for e in hist.events if e.start < nbytes] or [0])
    return wl.tail(12, upto=seq)


def _check_state(ctx, d, wl, hist, record, cut, work, kernel):
    """Problems of one state (empty list: fine)."""
    nbytes = cut.nbytes(record)
    ok, report = crashcheck.btrfs_check(work)
    if not ok:
        return ["btrfs check rejects the state:\n" + report]
    try:
        man = crashcheck.recovered_manifest(work, d)
    except (mounts.MountError, mounts.FuseDaemonError) as e:
        return ["btrfs-fuse cannot mount the state: %s" % e]
    probs = hist.check(man, nbytes)
    if kernel and not probs:
        kman = crashcheck.kernel_manifest(ctx, work, d, "at %s" % cut)
        probs += ["kernel vs btrfs-fuse: " + m for m in crashcheck.same_tree(kman, man)[:20]]
    return probs


@pytest.mark.parametrize("seed", SEEDS, ids=["seed-%d" % s for s in SEEDS])
def test_powercut(seed):
    ctx = _ctx(seed, "power-cut replay")
    rng = random.Random(seed * 7919)
    with workload.workdir("powercut-%d" % seed) as d:
        img, base, rec, wl = _run_recorded(ctx, seed, d, NOPS)
        record = iorec.Record(rec)
        hist = crashcheck.History(wl.events)
        fixed = iorec.flush_cuts(record)
        supers = iorec.superblock_cuts(record, rng)
        fixed += rng.sample(supers, min(len(supers), max(10, MAX_SUPER)))
        cuts = fixed + iorec.random_cuts(record, NCUTS, rng)
        cuts.sort(key=lambda c: c.at)
        kernel_at = set(rng.sample(range(len(cuts)), min(KERNEL_STATES, len(cuts))))
        ctx.notes.append("record: %s; %d states (%d at flushes and superblock writes, %d random)" % (
            record.summary(), len(cuts), len(fixed), NCUTS))
        failures = []
        work = [os.path.join(d, "state%d.img" % i) for i in range(len(img))]
        with iorec.Replayer(record, {i + 1: (base[i], work[i]) for i in range(len(img))}) as rp:
            for n, cut in enumerate(cuts):
                undo, desc = rp.apply(cut)
                probs = _check_state(ctx, d, wl, hist, record, cut, work, n in kernel_at)
                if probs:
                    failures.append((cut, desc, probs))
                rp.undo(undo)
        if failures:
            lines = ["%d of %d states break the promise" % (len(failures), len(cuts))]
            for cut, desc, probs in failures[:MAX_REPORTED]:
                nb = cut.nbytes(record)
                lines += ["", "== %s: %s" % (cut.describe(record), desc),
                          "   " + hist.describe(nb),
                          "   rebuild it: " + _repro(d, cut, len(img))]
                lines += ["   " + p for p in probs[:15]]
                lines += ["   last operations before the cut:"] + [
                    "     " + o for o in _ops_before(wl, hist, nb)]
            ctx.fail("\n".join(lines), ops=False)


def test_record_is_complete():
    """Replaying the whole record onto the mount-time image with the command-line tool gives the image
    byte for byte.  The daemon is the ASan+UBSan build when there is one (the recorder under the
    sanitizers; it must exit cleanly)."""
    seed = next((s for s in SEEDS if VARIANTS[s % len(VARIANTS)][1] > 1), SEEDS[0])   # two devices
    ctx = _ctx(seed, "I/O record completeness")
    binary = ASAN if os.access(ASAN, os.X_OK) else None
    with workload.workdir("iorecord-%d" % seed) as d:
        img, base, rec, wl = _run_recorded(ctx, seed, d, 120, binary)
        record = iorec.Record(rec)
        if not record.flushes():
            ctx.fail("the record has no flush: %s" % record.summary())
        out = [os.path.join(d, "replayed%d.img" % i) for i in range(len(img))]
        argv = [REPLAY, "build", rec, "--end"]
        for i in range(len(img)):
            argv += ["--image", "%d=%s:%s" % (i + 1, base[i], out[i])]
        p = subprocess.run(argv, capture_output=True, text=True)
        if p.returncode != 0:
            ctx.fail("iorec-replay failed (exit %d): %s%s" % (p.returncode, p.stdout, p.stderr))
        for a, b in zip(img, out):
            c = subprocess.run(["cmp", a, b], capture_output=True, text=True)
            if c.returncode != 0:
                ctx.fail("replaying the whole record (%s) does not give the image %s: %s" % (
                    record.summary(), a, c.stdout + c.stderr))


def test_checker_catches_lost_fsync():
    """The promise checker is not blind: the tree from before an fsync, presented as the state after
    it returned, is reported (when the fsync changed the fsynced file since the last commit)."""
    seed = SEEDS[0]
    ctx = _ctx(seed, "promise checker self-test")
    with workload.workdir("checker-%d" % seed) as d:
        _img, _base, _rec, wl = _run_recorded(ctx, seed, d, NOPS)
        hist = crashcheck.History(wl.events)
        tried = 0
        for i, e in enumerate(wl.events):
            if e.kind != "fsync" or e.end is None or i == 0:
                continue
            before = wl.events[i - 1].manifest["entries"].get(e.path)
            now = e.manifest["entries"].get(e.path)
            if crashcheck._what(before) == crashcheck._what(now) or e.path == ".":
                continue
            tried += 1
            if not hist.check(wl.events[i - 1].manifest, e.end):
                ctx.fail("the checker accepts the tree of %s as the state after %s returned"
                         % (wl.events[i - 1], e))
        if not tried:
            ctx.fail("the workload made no fsync that changed its file: nothing to check the checker with")


def test_mirror_superblock_newer_than_primary():
    """The kernel and btrfs-fuse show the same tree of a power-cut state in which, of the last commit's
    superblock writes, only the 64 MiB copy's reached the media (the primary keeps the commit before)."""
    seed = SEEDS[0]
    ctx = _ctx(seed, "superblock copies that disagree")
    with tempfile.TemporaryDirectory(prefix="btrfs-mirror-super-") as d:
        img, base, rec, wl = _run_recorded(ctx, seed, d, 100)
        record = iorec.Record(rec)
        supers = [r for r in record.recs if iorec.is_super(r) and r.devid == 1]
        pair = next(((a, b) for a, b in zip(supers[-2::-1], supers[::-1])
                     if a.physical == iorec.SUPER_OFFSETS[0] and b.physical == iorec.SUPER_OFFSETS[1]
                     and b.index == a.index + 1), None)
        if pair is None:
            ctx.fail("no commit wrote the primary and the 64 MiB copy back to back: %s" % record.summary())
        cut = iorec.Cut(pair[1].index + 1, "keep", keep=[pair[1].index])
        work = [os.path.join(d, "state%d.img" % i) for i in range(len(img))]
        with iorec.Replayer(record, {i + 1: (base[i], work[i]) for i in range(len(img))}) as rp:
            rp.apply(cut)
            if not crashcheck.mirror_newer_than_primary(work):
                ctx.fail("the state of %s does not have a copy newer than the primary" % cut)
            ok, report = crashcheck.btrfs_check(work)
            if not ok:
                ctx.fail("btrfs check rejects %s:\n%s" % (cut, report))
            fman = crashcheck.recovered_manifest(work, d)
            kman = crashcheck.kernel_manifest(ctx, work, d, "at %s" % cut)
            hist = crashcheck.History(wl.events)
            for who, man in (("btrfs-fuse", fman), ("kernel", kman)):
                probs = hist.check(man, cut.nbytes(record))
                if probs:
                    ctx.fail("%s breaks the promise at %s:\n  %s" % (who, cut, "\n  ".join(probs[:20])))
            diffs = crashcheck.same_tree(kman, fman)
            if diffs:
                ctx.fail("at %s, the kernel and btrfs-fuse show different trees:\n  %s" % (
                    cut, "\n  ".join(diffs[:20])), ops=False)
