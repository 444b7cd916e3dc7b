"""kill -9: a daemon killed at any point loses nothing that was committed or fsynced.

Owns: the kill tests (test_kill; test_kill_asan: one seed with the ASan+UBSan daemon).

Key idea: a seeded workload (tests/lib/crashcheck.TrackedWorkload: creates, writes, overwrites,
truncates, renames, links, xattrs, fsyncs, forced commits through BTRFS_IOC_SYNC) runs on
`btrfs-fuse -o rw`, and the daemon is killed with SIGKILL, several times per image (rounds): either
just before its N-th device write (-o testkill=N: mid-commit, at an exact and reproducible point), or by
the test with kill -9 after a chosen operation.  The dead FUSE mount is cleaned up (fusermount3 -u, lazy
if need be), then:
  * `btrfs check --readonly --check-data-csum` finds nothing;
  * the kernel (on a copy: it would replay a log tree) mounts it without a BTRFS warning and shows
    the same tree as btrfs-fuse (tests/lib/treecmp, every field but atime);
  * btrfs-fuse's view keeps the promise (crashcheck.History.check): the last commit, plus every file
    fsynced before the kill with its fsynced content, size and name.
The next round mounts the recovered image read-write again and goes on from there.  The crash clock is
the size of the I/O record (-o iorecord), so "before the kill" is exact.

Environment:
  BTRFS_FUSE_SOAK=1            more seeds and rounds
  BTRFS_FUSE_CRASH_SEEDS=a,b   exactly these seeds
  BTRFS_FUSE_CRASH_ROUNDS=N    kill points per seed (default 6, soak 25)
  BTRFS_FUSE_CRASH_OPS=N       most operations per round (default 120, soak 400)
"""

import os
import random

import pytest

import crashcheck
import mounts
import workload
from workload import MiB

SOAK = os.environ.get("BTRFS_FUSE_SOAK", "0") not in ("", "0")
SEEDS = ([int(s) for s in os.environ["BTRFS_FUSE_CRASH_SEEDS"].split(",") if s.strip()]
         if os.environ.get("BTRFS_FUSE_CRASH_SEEDS") else
         list(range(4000, 4000 + (24 if SOAK else 9))))
ROUNDS = int(os.environ.get("BTRFS_FUSE_CRASH_ROUNDS", "25" if SOAK else "6"))
NOPS = int(os.environ.get("BTRFS_FUSE_CRASH_OPS", "400" if SOAK else "120"))
IMAGE_SIZE = 256 * MiB
# (mkfs options, devices) by seed % len
VARIANTS = [([], 1), (["-n", "4096", "-m", "single"], 1), (["--csum", "xxhash", "-O", "^no-holes"], 1),
            (["-m", "raid1", "-d", "raid1"], 2)]
FUSE_RW = "rw,nodev,nosuid,commit=86400"
ASAN = os.path.abspath(os.environ.get("BTRFS_FUSE_ASAN",
                                      os.path.join(workload.REPO, "build-asan", "btrfs-fuse")))

pytestmark = pytest.mark.skipif(workload.SELFTEST, reason="kills btrfs-fuse's daemon")


def _plan(rng, nops):
    """How this round ends: ('write', N) = testkill before device write N; ('op', K) = kill -9 after
    operation K (0-based)."""
    if rng.random() < 0.75:
        return "write", rng.randrange(1, 64)   # a round writes some 20-150 times
    return "op", rng.randrange(nops)


def _round(ctx, seed, r, img, d, rng, binary, before):
    """One round: mount, work, get killed. before: btrfs-fuse's view of the image at the start (the
    last round's recovered tree; None for a fresh image). Returns (events, cut, how the daemon died)."""
    rec = os.path.join(d, "io-%d.rec" % r)
    clock = crashcheck.record_clock(rec)
    how, n = _plan(rng, NOPS)
    opts = FUSE_RW + ",iorecord=" + rec + (",testkill=%d" % n if how == "write" else "")
    ctx.notes[1:] = ["round %d: %s %d (mount options %s)" % (r, "testkill before device write"
                     if how == "write" else "kill -9 after operation", n, opts)]
    wl = crashcheck.TrackedWorkload(seed * 1000 + r, clock)
    ctx.workload = wl
    try:
        with mounts.fuse_mount(binary, img, options=opts, check_exit=False) as m:
            ctx.mount = m
            wl.alive = lambda: crashcheck.daemon_alive(m)
            with workload.Watchdog(m, 300) as dog:
                wl.adopt(m)
                wl.begin(m)
                wl.run_ops(m, NOPS, after_op=(lambda i: crashcheck.kill_daemon(m) if i == n else None)
                           if how == "op" else None)
                died = "killed by testkill at device write %d" % n if how == "write" else \
                       "kill -9 after operation %d" % n
                if crashcheck.daemon_alive(m):
                    crashcheck.kill_daemon(m)
                    died = "kill -9 after the round's last operation (write %d not reached)" % n
            if dog.fired:
                ctx.fail("round %d hung (connection aborted after 300s)" % r)
            if not crashcheck.wait_gone(m):
                ctx.fail("the daemon did not die")
            rc = m.proc.returncode
        if rc != -9:
            ctx.fail("round %d: the daemon ended with status %s, not SIGKILL (%s)" % (r, rc, died))
    except mounts.MountError as e:
        # testkill may strike while the mount itself writes (a log replay, once there is one): a crash
        # like any other, with the tree at the start as the one commit that counts
        if how != "write" or "status -9 " not in str(e) or before is None:
            ctx.fail("round %d: btrfs-fuse cannot mount the image after the previous kill: %s" % (r, e))
        ev = crashcheck.Event("mount", None, 0, before, 0, "the image before the mount killed in it")
        ev.end = 0
        return [ev], clock(), "killed by testkill at device write %d, during the mount" % n
    return wl.events, clock(), died


def _check(ctx, events, cut, died, img, d, r):
    """The crashed image: btrfs check, kernel vs btrfs-fuse, the promise. Returns btrfs-fuse's view."""
    hist = crashcheck.History(events)
    where = "after round %d (%s, record bytes %d)" % (r, died, cut)
    ok, report = crashcheck.btrfs_check(img)
    if not ok:
        ctx.fail("btrfs check rejects the image %s:\n%s\n%s" % (where, hist.describe(cut), report))
    kman = crashcheck.kernel_manifest(ctx, img, d, where)
    try:
        fman = crashcheck.recovered_manifest(img, d)
    except (mounts.MountError, mounts.FuseDaemonError) as e:
        ctx.fail("btrfs-fuse cannot mount the image %s: %s" % (where, e))
    diffs = crashcheck.same_tree(kman, fman)
    if diffs:
        ctx.fail("the kernel and btrfs-fuse show different trees %s:\n  %s" % (
            where, "\n  ".join(diffs[:30])))
    probs = hist.check(fman, cut)
    if probs:
        ctx.fail("the image %s breaks the promise:\n  %s\n  %s" % (
            where, hist.describe(cut), "\n  ".join(probs[:30])))
    return fman


def _kill_test(seed, binary, label):
    opts, ndev = VARIANTS[seed % len(VARIANTS)]
    ctx = workload.TestCtx(
        "kill -9 (%s): seed=%d, %d rounds of at most %d operations, mkfs.btrfs %s (%d x %d MiB)" % (
            label, seed, ROUNDS, NOPS, " ".join(opts) or "(defaults)", ndev, IMAGE_SIZE // MiB),
        "BTRFS_FUSE_CRASH_SEEDS=%d BTRFS_FUSE_CRASH_ROUNDS=%d BTRFS_FUSE_CRASH_OPS=%d "
        "/usr/bin/python3 -m pytest -q tests/integration/test_crash.py -k %s" % (
            seed, ROUNDS, NOPS, "asan" if label == "asan" else "'not asan'"))
    ctx.notes = ["", ""]
    rng = random.Random(seed)
    with workload.workdir("crash-%d" % seed) as d:
        img = [os.path.join(d, "fs%d.img" % i) for i in range(ndev)]
        crashcheck.mkfs_images(img, IMAGE_SIZE, opts)
        ctx.notes[0] = "images %s" % " ".join(img)
        before = None
        for r in range(ROUNDS):
            events, cut, died = _round(ctx, seed, r, img, d, rng, binary, before)
            before = _check(ctx, events, cut, died, img, d, r)
            ctx.mount = None


@pytest.mark.parametrize("seed", SEEDS, ids=["seed-%d" % s for s in SEEDS])
def test_kill(seed):
    _kill_test(seed, workload.BINARY, "btrfs-fuse")


@pytest.mark.skipif(not os.access(ASAN, os.X_OK), reason="no ASan build (make asan)")
def test_kill_asan():
    """One seed with the ASan+UBSan daemon: a sanitizer report ends it before the kill (a status
    other than SIGKILL fails the round)."""
    _kill_test(SEEDS[0], ASAN, "asan")
