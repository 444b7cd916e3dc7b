"""Round trips through btrfs-fuse on every image of the corpus.

Owns: test_roundtrip (one case per corpus image) and test_roundtrip_covers_corpus (no image
is left out without a reason).

Key idea: each image of tests/lib/corpus.py (every profile, every mkfs feature option,
compression, subvolumes, checksums, node and sector sizes, qgroups) is copied twice; the
kernel first snapshots the top-level subvolume on the copy (so every write below meets tree
blocks and data extents shared with a snapshot), then the same seeded workload
(tests/lib/workload.py, short: ROUNDTRIP_OPS operations) runs through a kernel mount of one
copy and a `btrfs-fuse -o rw` mount of the other. The outcomes of every system call and the
trees must agree; the btrfs-fuse copy must then pass `btrfs check --readonly
--check-data-csum`, mount with the kernel without a BTRFS warning or error on its loop
devices, show the same tree there and scrub clean.

Images that cannot take that path are still tested, differently, and the reason is asserted:
- RAID5/RAID6 images are read-only by design: `-o rw` must mount them read-only, say why,
  refuse writes with EROFS and leave the image untouched;
- images with a sector size above the page size (16K, 64K on 4K pages), which this kernel
  cannot mount, run the kernel's side on their 4K-sector twin (same mkfs --rootdir content),
  and the btrfs-fuse copy is checked with `btrfs check` and by a second btrfs-fuse mount
  instead of a kernel mount; that the sector size is above the page size is asserted.

Environment: BTRFS_FUSE_ROUNDTRIP_OPS=N (default 150, soak 2000); the BTRFS_FUSE_SELFTEST,
BTRFS_FUSE_IGNORE and BTRFS_FUSE_KEEP_FAILED variables of test_write_diff.py.
"""

import errno
import hashlib
import os
import subprocess

import pytest

import corpus
import mounts
import treecmp
import workload
from test_write_diff import (DIFF_IGNORE, FUSE_RW, KERNEL_RW, LABEL, SAME_IGNORE, SOAK, check_outcomes,
                             check_verify, compare, copy_images, run_workload, walk)

OPS = int(os.environ.get("BTRFS_FUSE_ROUNDTRIP_OPS", "2000" if SOAK else "150"))
SNAPSHOT = "rt-snap"

# Images btrfs-fuse keeps read-only under -o rw by design, and the words its message must hold.
READ_ONLY = {
    "profile-raid5": "RAID5/RAID6",
    "profile-raid6": "RAID5/RAID6",
}


def case_kind(name):
    """"read-only" (RAID5/6), "twin" (a sector size this kernel cannot mount: mkfs --rootdir images compared
    with their source, which have a 4K twin), or "kernel" (the full round trip)."""
    spec = corpus.SPEC_BY_NAME[name]
    if name in READ_ONLY:
        return "read-only"
    if spec.kind == "rootdir" and spec.compare_with == "source":
        return "twin"
    return "kernel"


def _cases():
    for spec in corpus.SPECS:
        yield pytest.param(spec.name, id=spec.name)


def test_roundtrip_covers_corpus():
    """Every corpus image has a case; exactly the RAID5/6 images are exempt from writing."""
    raid56 = sorted(s.name for s in corpus.SPECS if s.profile in ("RAID5", "RAID6"))
    assert raid56 and raid56 == sorted(READ_ONLY), \
        "RAID5/6 images of the corpus %s vs the read-only cases %s" % (raid56, sorted(READ_ONLY))
    kinds = {s.name: case_kind(s.name) for s in corpus.SPECS}
    writes = [n for n, k in kinds.items() if k != "read-only"]
    assert len(writes) == len(corpus.SPECS) - len(READ_ONLY) >= 30, kinds


def file_hashes(paths):
    out = []
    for p in paths:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(4 << 20), b""):
                h.update(block)
        out.append(h.hexdigest())
    return out


def snapshot_top(ctx, images, opts):
    """With the kernel: a snapshot of the top-level subvolume, so the workload's writes meet shared blocks."""
    with mounts.kernel_mount(images, opts) as k:
        rc, out = workload.run_cmd(["btrfs", "subvolume", "snapshot", os.fspath(k),
                                    os.path.join(os.fspath(k), SNAPSHOT)])
        if rc != 0:
            ctx.fail("btrfs subvolume snapshot on the kernel copy failed:\n" + out)


def fresh_copies(ctx, man, images, dest):
    """Copies of the devices with a new fsid (copy_images); with the metadata_uuid feature, whose fsid
    btrfstune -u cannot rewrite, a new fsid in the superblock only (btrfstune -m)."""
    if "METADATA_UUID" not in man["expected"]["incompat"]:
        return copy_images(ctx, images, dest)
    assert len(images) == 1, images
    os.makedirs(dest, exist_ok=True)
    out = os.path.join(dest, os.path.basename(images[0]))
    subprocess.run(["cp", "--sparse=always", images[0], out], check=True)
    rc, text = workload.run_cmd(["btrfstune", "-f", "-m", out])
    if rc != 0:
        ctx.fail("btrfstune -m on the copy of %s failed:\n%s" % (images, text))
    return [out]


def two_copies(ctx, man, images, d, snapshot_opts):
    kimgs = fresh_copies(ctx, man, images, os.path.join(d, "kernel"))
    if snapshot_opts:
        snapshot_top(ctx, kimgs, snapshot_opts)
    os.makedirs(os.path.join(d, "fuse"))
    fimgs = [os.path.join(d, "fuse", os.path.basename(p)) for p in kimgs]
    for a, b in zip(kimgs, fimgs):
        subprocess.run(["cp", "--sparse=always", a, b], check=True)
    return kimgs, fimgs


def run_both(ctx, seed, kimgs, fimgs, kopts, fopts, ignore=()):
    """The same workload on a kernel mount of kimgs and a btrfs-fuse mount of fimgs; outcomes and trees
    compared (but the fields in ignore). Returns the btrfs-fuse side's manifest."""
    kwl = workload.Workload(seed, bigdir=(50, 200), data_budget=40 << 20)
    with mounts.kernel_mount(kimgs, kopts) as k:
        kwl.adopt(k)
        run_workload(ctx, kwl, k, OPS)
        kman = walk(ctx, k, reference=True)
    fwl = workload.Workload(seed, bigdir=(50, 200), data_budget=40 << 20)
    ctx.workload = fwl
    with workload.under_test(ctx, mounts, fimgs, fopts) as f:
        fwl.adopt(f, like=kwl)
        run_workload(ctx, fwl, f, OPS)
        check_outcomes(ctx, kwl.log, fwl.log)
        fman = walk(ctx, f, reference=False)
        check_verify(ctx, fwl, f, LABEL)
    compare(ctx, kwl.time_filter(kman), kwl.time_filter(fman), ("kernel", LABEL), DIFF_IGNORE + list(ignore),
            "kernel copy vs %s copy" % LABEL)
    return fman


def roundtrip_kernel(ctx, name, man, seed, d):
    kopts, fopts = KERNEL_RW + ",subvolid=5", FUSE_RW + ",subvolid=5"
    kimgs, fimgs = two_copies(ctx, man, corpus.image_paths(None, man), d, kopts)
    fman = run_both(ctx, seed, kimgs, fimgs, kopts, fopts)
    workload.check_image(ctx, fimgs, "after the %s workload" % LABEL)
    with workload.kernel_clean(ctx, mounts, fimgs, kopts, "written by " + LABEL) as k:
        compare(ctx, fman, walk(ctx, k, reference=True), (LABEL, "kernel"), SAME_IGNORE,
                "image written by %s, as %s showed it vs as the kernel shows it" % (LABEL, LABEL))
        workload.scrub_clean(ctx, k)


def roundtrip_twin(ctx, name, man, seed, d):
    """Sector size above the page size: the kernel's side runs on the 4K twin."""
    if workload.SELFTEST:
        pytest.skip("the selftest's stand-in for btrfs-fuse (the kernel) cannot mount this sector size")
    src = corpus.image_paths(None, man)
    twin = os.path.join(corpus.corpus_dir(), name, man["twin_image"])
    os.makedirs(os.path.join(d, "fuse"))
    fimgs = [os.path.join(d, "fuse", os.path.basename(p)) for p in src]
    for a, b in zip(src, fimgs):
        subprocess.run(["cp", "--sparse=always", a, b], check=True)
    kimgs = fresh_copies(ctx, man, [twin], os.path.join(d, "kernel"))
    # no kernel mount attempt to prove it: its BTRFS error lines would land in the kernel log other tests on
    # this machine filter by loop device
    sectorsize, page = man["expected"]["sectorsize"], os.sysconf("SC_PAGE_SIZE")
    assert sectorsize > page, ("%s has sector size %d, not above the page size %d: the kernel mounts it, give it "
                               "the full round trip (case_kind)" % (name, sectorsize, page))
    # the twin is made from the source directory after the image: reading the source for the first image
    # moved some atimes, and mkfs gives the root directory the time of the mkfs run, so these times of
    # untouched entries differ between the two by construction
    fman = run_both(ctx, seed, kimgs, fimgs, KERNEL_RW, FUSE_RW, ignore=["atime", "@root:mtime", "@root:ctime"])
    workload.check_image(ctx, fimgs, "after the %s workload" % LABEL)
    with workload.under_test(ctx, mounts, fimgs, "ro") as f:
        compare(ctx, fman, walk(ctx, f, reference=False), (LABEL, LABEL + " remounted"), SAME_IGNORE,
                "image written by %s vs the same image mounted again" % LABEL)


def roundtrip_read_only(ctx, name, man, d):
    """RAID5/6: -o rw mounts read-only, says why, refuses writes and leaves the image as it was."""
    images = fresh_copies(ctx, man, corpus.image_paths(None, man), d)
    before = file_hashes(images)
    if workload.SELFTEST:
        pytest.skip("the selftest's kernel side writes RAID5/6")
    with workload.under_test(ctx, mounts, images, FUSE_RW) as f:
        try:
            open(os.path.join(os.fspath(f), "rt-new"), "w").close()
            ctx.fail("creating a file on %s under -o rw succeeded; it must stay read-only" % name)
        except OSError as e:
            if e.errno != errno.EROFS:
                ctx.fail("creating a file on %s: %s, expected EROFS" % (name, e))
        text = f.stderr_text()
    if "read-only" not in text or READ_ONLY[name] not in text:
        ctx.fail("btrfs-fuse did not say why %s mounts read-only (expected %r):\n%s" % (name, READ_ONLY[name], text))
    if file_hashes(images) != before:
        ctx.fail("the image changed under a mount that had to stay read-only")


@pytest.mark.parametrize("name", list(_cases()))
def test_roundtrip(name, corpus_manifests):
    man = corpus_manifests[name]
    seed = man["seed"] % 100000
    kind = case_kind(name)
    repro = ("%sBTRFS_FUSE_ROUNDTRIP_OPS=%d /usr/bin/python3 -m pytest -q "
             "'tests/integration/test_roundtrip.py::test_roundtrip[%s]'"
             % ("BTRFS_FUSE_SELFTEST=1 " if workload.SELFTEST else "", OPS, name))
    spec = corpus.SPEC_BY_NAME[name]
    ctx = workload.TestCtx("round trip (%s): image=%s (%s), workload seed=%d, %d operations, side under test: %s"
                           % (kind, name, " ".join(spec.mkfs) or "default mkfs", seed, OPS, LABEL), repro)
    with workload.workdir("roundtrip-" + name) as d:
        if kind == "read-only":
            roundtrip_read_only(ctx, name, man, d)
        elif kind == "twin":
            roundtrip_twin(ctx, name, man, seed, d)
        else:
            roundtrip_kernel(ctx, name, man, seed, d)
