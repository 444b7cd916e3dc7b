"""btrfs-fuse must write what the kernel writes: differential random workloads.

Owns: the seeded kernel-vs-btrfs-fuse write tests (test_write_diff) and the round trips
on kernel-made corpus images (test_corpus_roundtrip).

Key idea: the same seeded workload (tests/lib/workload.py) runs on two identical fresh
images, one mounted by the kernel and one by `btrfs-fuse -o rw`.  Every system call's
outcome must be the same on both sides (errors included), the trees must be the same
(treecmp manifests: names, types, modes, owners, sizes, nlink, xattrs, symlink targets,
rdev, contents; times only where the workload set them explicitly), and the image
btrfs-fuse wrote must be a healthy btrfs: `btrfs check --readonly --check-data-csum`
finds nothing, the kernel mounts it without complaint, shows the same tree, scrubs it
clean, writes more to it, and btrfs-fuse then shows exactly what the kernel wrote.

These tests run by default (`make test`); the default size (20 seeds x 2000 operations
and 4 corpus images) takes a few minutes.

Environment:
  BTRFS_FUSE=PATH              binary under test (default <repo>/btrfs-fuse)
  BTRFS_FUSE_SELFTEST=1        check the tests: the btrfs-fuse side is a kernel mount
  BTRFS_FUSE_SOAK=1            many more seeds and operations, all corpus images
  BTRFS_FUSE_WRITE_SEED=N      first seed (default 1000); seeds are N, N+1, ...
  BTRFS_FUSE_WRITE_SEEDS=K     number of seeds (default 20, soak 200)
  BTRFS_FUSE_WRITE_SEED_LIST=a,b  exactly these seeds
  BTRFS_FUSE_WRITE_OPS=N       operations per seed (default 2000, soak 20000)
  BTRFS_FUSE_IGNORE=f1,f2      manifest fields not to compare (e.g. blocks,atime)
  BTRFS_FUSE_KEEP_FAILED=0     do not keep the images of a failed test (default: kept in
                               build/write-failures/<test>/)
"""

import os
import subprocess
import time

import pytest

import corpus
import mounts
import treecmp
import workload
from workload import MiB

SOAK = os.environ.get("BTRFS_FUSE_SOAK", "0") not in ("", "0")
BASE_SEED = int(os.environ.get("BTRFS_FUSE_WRITE_SEED", "1000"))
NSEEDS = int(os.environ.get("BTRFS_FUSE_WRITE_SEEDS", "200" if SOAK else "20"))
NOPS = int(os.environ.get("BTRFS_FUSE_WRITE_OPS", "20000" if SOAK else "2000"))
SEEDS = ([int(s) for s in os.environ["BTRFS_FUSE_WRITE_SEED_LIST"].split(",") if s.strip()]
         if os.environ.get("BTRFS_FUSE_WRITE_SEED_LIST") else
         list(range(BASE_SEED, BASE_SEED + NSEEDS)))
IGNORE = [f for f in os.environ.get("BTRFS_FUSE_IGNORE", "").split(",") if f]
IMAGE_SIZE = 512 * MiB
FOLLOWUP_OPS = 300 if not SOAK else 2000
CORPUS_OPS = 800 if not SOAK else 5000
MAX_DIFFS = 60

# mkfs options by seed (seed % len): each one feature the write path must honour
VARIANTS = [
    [],
    ["-O", "^no-holes"],
    ["--csum", "xxhash"],
    ["-m", "single"],
    ["-n", "4096"],
    ["-O", "^no-holes", "-n", "4096"],
    ["--csum", "xxhash", "-m", "single"],
    ["-n", "4096", "-m", "single", "-O", "^no-holes"],
]

KERNEL_RW = "rw,nodev,nosuid"
FUSE_RW = "rw,nodev,nosuid"
LABEL = workload.side_label()
# different images, different natural times and inode numbers
DIFF_IGNORE = ["ino", "dino", "blocks"]
# one image seen by two drivers: everything but the atime of symlinks (walking reads them)
SAME_IGNORE = ["lnk:atime"]


# ------------------------------------------------------------------ helpers

def compare(ctx, a, b, labels, ignore, what):
    detailed = treecmp.compare_detailed(a, b, ignore=list(ignore) + IGNORE, labels=labels)
    if detailed:
        lines = ["%s: %d difference(s) (%s vs %s; %d entries) by field: %s" % (
            what, len(detailed), labels[0], labels[1], len(a["entries"]),
            treecmp.summarize(detailed))]
        lines += ["  " + m for _p, _f, m in detailed[:MAX_DIFFS]]
        if len(detailed) > MAX_DIFFS:
            lines.append("  ... and %d more" % (len(detailed) - MAX_DIFFS))
        ctx.fail("\n".join(lines))


def run_workload(ctx, wl, mnt, nops, seed=None, timeout=None):
    """wl.run on a mount under a watchdog; a hang or a crash of the daemon fails."""
    timeout = timeout or max(300, nops * 0.3)
    t0 = time.monotonic()
    with workload.Watchdog(mnt, timeout) as dog:
        try:
            wl.run(mnt, nops, seed=seed)
        except OSError as e:
            ctx.fail("the workload could not open the mount root: %s" % e)
    if dog.fired:
        ctx.fail("the workload on %s did not finish within %.0fs (hung; connection "
                 "aborted)" % (mnt.describe(), timeout))
    return time.monotonic() - t0


def walk(ctx, mnt, reference):
    with workload.Watchdog(mnt, 600) as dog:
        try:
            man = treecmp.walk(mnt, seek_holes=reference)
        except OSError as e:
            ctx.fail("walking %s failed: %s" % (mnt.describe(), e))
    if dog.fired:
        ctx.fail("walking %s hung (connection aborted after 600s)" % mnt.describe())
    return man


def check_outcomes(ctx, klog, flog):
    bad = workload.model_mismatches(klog)
    if bad:
        ctx.fail("the workload's model disagrees with the KERNEL (a bug in "
                 "tests/lib/workload.py, not in btrfs-fuse):\n  " + "\n  ".join(bad))
    msg = workload.format_divergence(klog, flog, labels=("kernel", LABEL))
    if msg:
        ctx.fail(msg, ops=False)


def check_verify(ctx, wl, mnt, label):
    bad = wl.verify(mnt)
    if bad:
        ctx.fail("%s does not show what the workload did (model check):\n  %s" % (
            label, "\n  ".join(bad[:30])))


# ------------------------------------------------------------------ seeds

def variant(seed):
    return VARIANTS[seed % len(VARIANTS)]


@pytest.mark.parametrize("seed", SEEDS, ids=["seed-%d" % s for s in SEEDS])
def test_write_diff(seed):
    opts = variant(seed)
    repro = ("BTRFS_FUSE_WRITE_SEED_LIST=%d BTRFS_FUSE_WRITE_OPS=%d "
             "%s/usr/bin/python3 -m pytest -q tests/integration/test_write_diff.py"
             % (seed, NOPS, "BTRFS_FUSE_SELFTEST=1 " if workload.SELFTEST else ""))
    ctx = workload.TestCtx("write diff: seed=%d, %d operations, mkfs.btrfs %s (512 MiB), side under test: %s"
              % (seed, NOPS, " ".join(opts) or "(defaults)", LABEL), repro,
              kernel_mount="-o " + KERNEL_RW, fuse_mount="-o " + FUSE_RW)
    with workload.workdir("seed-%d" % seed) as d:
        kimg, fimg = os.path.join(d, "kernel.img"), os.path.join(d, "fuse.img")
        workload.mkfs_image(kimg, IMAGE_SIZE, opts)
        workload.mkfs_image(fimg, IMAGE_SIZE, opts)

        # 1. the reference: the kernel
        kwl = workload.Workload(seed)
        with mounts.kernel_mount(kimg, KERNEL_RW) as k:
            run_workload(ctx, kwl, k, NOPS)
            kman = walk(ctx, k, reference=True)

        # 2. the same workload through btrfs-fuse
        fwl = workload.Workload(seed)
        ctx.workload = fwl
        with workload.under_test(ctx, mounts, fimg, FUSE_RW) as f:
            run_workload(ctx, fwl, f, NOPS)
            check_outcomes(ctx, kwl.log, fwl.log)
            fman = walk(ctx, f, reference=False)
            check_verify(ctx, fwl, f, LABEL)
        compare(ctx, kwl.time_filter(kman), kwl.time_filter(fman), ("kernel", LABEL),
                DIFF_IGNORE, "kernel image vs %s image" % LABEL)

        # 3. the image btrfs-fuse wrote is healthy, and the kernel sees what btrfs-fuse saw
        workload.check_image(ctx, fimg, "after the %s workload" % LABEL)
        with workload.kernel_clean(ctx, mounts, fimg, KERNEL_RW, "written by " + LABEL) as k:
            compare(ctx, fman, walk(ctx, k, reference=True), (LABEL, "kernel"), SAME_IGNORE,
                    "image written by %s, as %s showed it vs as the kernel shows it" % (LABEL, LABEL))
            workload.scrub_clean(ctx, k)
            # 4. the kernel writes more ...
            run_workload(ctx, fwl, k, FOLLOWUP_OPS, seed=seed + 10**6)
            kman2 = walk(ctx, k, reference=True)
        workload.check_image(ctx, fimg, "after the kernel wrote to the image %s wrote" % LABEL)

        # 5. ... and btrfs-fuse shows exactly that, and can mount it rw and leave it clean
        with workload.under_test(ctx, mounts, fimg, FUSE_RW) as f:
            compare(ctx, kman2, walk(ctx, f, reference=False), ("kernel", LABEL), SAME_IGNORE,
                    "after the kernel's changes: kernel vs %s on the same image" % LABEL)
            check_verify(ctx, fwl, f, LABEL)
        workload.check_image(ctx, fimg, "after %s mounted it again" % LABEL)


# ------------------------------------------------------------------ corpus

CORPUS_IMAGES = ["subvol", "compress-zstd", "profile-raid1", "feat-no-holes-off"]


# Kernel bugs the selftest (kernel on both sides) runs into; not btrfs-fuse's business.
KERNEL_BUGS_IN_SELFTEST = {
    "feat-no-holes-off": "kernel 6.18 bug: with -O ^no-holes, a pwrite past EOF into a "
                         "KEEP_SIZE preallocated range followed by an O_APPEND write loses "
                         "the i_size update on unmount (sparse/falloc_keep: 28191 bytes live, "
                         "16384 after remount)",
}


def _soak_corpus():
    return [s.name for s in corpus.SPECS if s.kind == "kernel" and s.name not in CORPUS_IMAGES]


def copy_images(ctx, images, dest_dir):
    """Copies of a corpus image's devices with a new fsid (so that they never meet the
    originals, which other tests may have mounted)."""
    os.makedirs(dest_dir, exist_ok=True)
    out = []
    for img in images:
        dst = os.path.join(dest_dir, os.path.basename(img))
        subprocess.run(["cp", "--sparse=always", img, dst], check=True)
        out.append(dst)
    loops = []
    try:
        if len(out) > 1:
            loops = [mounts.losetup_attach(p) for p in out]
            workload.run_cmd(["btrfs", "device", "scan"] + loops)
        rc, text = workload.run_cmd(["btrfstune", "-f", "-u", loops[0] if loops else out[0]])
    finally:
        for dev in loops:
            workload.run_cmd(["btrfs", "device", "scan", "--forget", dev])
            mounts.losetup_detach(dev)
    if rc != 0:
        ctx.fail("btrfstune -u on the copy of %s failed:\n%s" % (images, text))
    return out


def _corpus_cases():
    for name in CORPUS_IMAGES + (_soak_corpus() if SOAK else []):
        marks = ()
        if workload.SELFTEST and name in KERNEL_BUGS_IN_SELFTEST:
            marks = pytest.mark.xfail(reason=KERNEL_BUGS_IN_SELFTEST[name], strict=False)
        yield pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", list(_corpus_cases()))
def test_corpus_roundtrip(name, corpus_manifests):
    man = corpus_manifests[name]
    seed = man["seed"] % 100000
    images = corpus.image_paths(None, man)
    kopts, fopts = KERNEL_RW + ",subvolid=5", FUSE_RW + ",subvolid=5"
    repro = ("%s/usr/bin/python3 -m pytest -q "
             "'tests/integration/test_write_diff.py::test_corpus_roundtrip[%s]'"
             % ("BTRFS_FUSE_SELFTEST=1 " if workload.SELFTEST else "", name))
    ctx = workload.TestCtx("corpus round trip: image=%s (%s), workload seed=%d, %d operations, side under "
              "test: %s" % (name, " ".join(corpus.SPEC_BY_NAME[name].mkfs) or "default mkfs",
                            seed, CORPUS_OPS, LABEL), repro,
              kernel_mount="-o " + kopts, fuse_mount="-o " + fopts)
    with workload.workdir("corpus-" + name) as d:
        kimgs = copy_images(ctx, images, os.path.join(d, "kernel"))
        fimgs = [os.path.join(d, "fuse", os.path.basename(p)) for p in kimgs]
        os.makedirs(os.path.join(d, "fuse"))
        for a, b in zip(kimgs, fimgs):
            subprocess.run(["cp", "--sparse=always", a, b], check=True)

        kwl = workload.Workload(seed, bigdir=(200, 800))
        with mounts.kernel_mount(kimgs, kopts) as k:
            kwl.adopt(k)
            run_workload(ctx, kwl, k, CORPUS_OPS)
            kman = walk(ctx, k, reference=True)

        fwl = workload.Workload(seed, bigdir=(200, 800))
        ctx.workload = fwl
        with workload.under_test(ctx, mounts, fimgs, fopts) as f:
            fwl.adopt(f, like=kwl)
            run_workload(ctx, fwl, f, CORPUS_OPS)
            check_outcomes(ctx, kwl.log, fwl.log)
            fman = walk(ctx, f, reference=False)
            check_verify(ctx, fwl, f, LABEL)
        compare(ctx, kwl.time_filter(kman), kwl.time_filter(fman), ("kernel", LABEL),
                DIFF_IGNORE, "kernel copy vs %s copy of %s" % (LABEL, name))

        workload.check_image(ctx, fimgs, "after the %s workload" % LABEL)
        with workload.kernel_clean(ctx, mounts, fimgs, kopts, "written by " + LABEL) as k:
            compare(ctx, fman, walk(ctx, k, reference=True), (LABEL, "kernel"), SAME_IGNORE,
                    "image written by %s, as %s showed it vs as the kernel shows it" % (LABEL, LABEL))
            workload.scrub_clean(ctx, k)

