"""Degraded and damaged multi-device filesystems: btrfs-fuse must read the right bytes
from the redundancy that is left, say in its log what it repaired, and return EIO --
never wrong data -- when no good copy is left.

Owns: missing devices (refusal naming the devids without -o degraded; full, correct
reads with it), flipped bytes in one copy of a data extent and of a metadata block
(correct reads plus a log line naming the repair), damage beyond the redundancy and
single/RAID0 data (EIO on that file only).

Images: the corpus profile images (tests/lib/corpus.py: profile-raid1, -raid1c3,
-raid1c4, -raid10, -raid5, -raid6, -dup-data, -single-2dev, -raid0).  The expected
content is a kernel read-only mount's manifest (treecmp: SHA-256 of every file and
every lstat field); data addresses come from FIEMAP (filefrag) under that kernel
mount, and are mapped to (devid, physical) with the chunk tree and the kernel's
striping rules (tests/lib/hostile.py map_logical / map_parity).  Damage is always
done on copies of the image files.

A mirrored profile is run once per copy, damaging only that copy: whichever mirror
btrfs-fuse reads first, every run must give the right bytes, and at least one run
must log the repair with the logical address.
"""

import os
import re
import shutil
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "lib"))

import corpus  # noqa: E402
import hostile  # noqa: E402
import mounts  # noqa: E402
import treecmp  # noqa: E402

BIN = os.environ.get("BTRFS_FUSE", os.path.join(REPO, "btrfs-fuse"))
ASAN = os.environ.get("BTRFS_FUSE_ASAN", os.path.join(REPO, "build-asan", "btrfs-fuse"))
IGNORE = [f for f in os.environ.get("BTRFS_FUSE_IGNORE", "").split(",") if f]

# corpus image -> how many devices may be missing
REDUNDANT = {
    "profile-raid1": 1, "profile-raid1c3": 2, "profile-raid1c4": 3, "profile-raid10": 1,
    "profile-raid5": 1, "profile-raid6": 2, "profile-dup-data": 0,
}
NOT_REDUNDANT = ["profile-single-2dev", "profile-raid0"]
DATA_FILE = "bulk/mid_0"          # 3 MiB of random bytes: never inline, never compressed
REPAIR_WORDS = re.compile(r"repair|mirror|rebuil|parity|recover|copy", re.I)


def binary():
    """The ASan+UBSan build when it exists (repair paths are where memory bugs hide)."""
    for b in (ASAN, BIN):
        if os.access(b, os.X_OK):
            return b
    pytest.skip("btrfs-fuse is not built")


class Ref:
    """What the kernel reads from one corpus image, and where things live."""

    def __init__(self, name, images):
        self.name = name
        self.images = images
        self.devids = {hostile.devid_of(i): i for i in images}
        self.chunks = hostile.chunk_map(images)
        self.roots = hostile.tree_roots(images)
        self.root_tree = hostile.read_super(images[0])["root"]
        self.nodesize = hostile.read_super(images[0])["nodesize"]
        with mounts.kernel_mount(images, options="ro") as m:
            self.manifest = treecmp.walk(m.path)
            self.extents = {f: hostile.file_extents(os.path.join(m.path, f))
                            for f in (DATA_FILE,)}

    def data_logical(self, path=DATA_FILE):
        """(logical address of a sector inside the file's first extent, extent start,
        extent length)."""
        off, logical, length, flags = self.extents[path][0]
        assert not {"inline", "encoded", "unknown_loc", "delalloc"} & set(flags), \
            "%s: %s is not a plain extent: %s" % (self.name, path, self.extents[path])
        assert length > 3 * 4096, self.extents[path]
        return logical + 8192, logical, length     # a sector inside, not the first

    def has_parity(self, logical):
        return hostile.find_chunk(self.chunks, logical).profile in ("RAID5", "RAID6")


_refs = {}


@pytest.fixture
def ref(request, corpus_manifests):
    name = request.param
    if name not in _refs:
        man = corpus_manifests[name]
        _refs[name] = Ref(name, corpus.image_paths(None, man))
    return _refs[name]


@pytest.fixture
def workdir():
    d = tempfile.mkdtemp(prefix="btrfs-repair-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def copy_images(ref, workdir):
    """Copies of the image files; returns {devid: path} in device order."""
    out = {}
    for devid, src in sorted(ref.devids.items()):
        dst = os.path.join(workdir, os.path.basename(src))
        hostile.copy_sparse(src, dst)
        out[devid] = dst
    return out


def damage(devs, where, n=64, skip=512):
    """Flip n bytes `skip` bytes into each (devid, physical) of `where`."""
    for devid, phys in where:
        hostile.flip_bytes(devs[devid], phys + skip, n)


def read_with_fuse(images, options="ro"):
    """Mount, walk everything, unmount: (manifest, daemon log).  Fails on sanitizer
    reports and abnormal exits (fuse_mount's check_exit)."""
    env = dict(os.environ, **hostile.SANITIZER_ENV)
    with mounts.fuse_mount(binary(), images, options=options, env=env) as m:
        got = treecmp.walk(m.path)
    log = m.stderr_text(limit=1 << 20)
    san = hostile.sanitizer_lines(log)
    assert not san, "sanitizer report (%s):\n%s" % (m.describe(), log[-8000:])
    return got, log


def diffs_except(ref, got, bad_paths=()):
    exp = dict(ref.manifest, entries={k: v for k, v in ref.manifest["entries"].items()
                                       if k not in bad_paths})
    got2 = dict(got, entries={k: v for k, v in got["entries"].items() if k not in bad_paths})
    return treecmp.compare(exp, got2, ignore=IGNORE, labels=("kernel", "btrfs-fuse"))


def lines_naming(log, lo, hi, words=None):
    """Log lines with a number (decimal or 0x hex) in [lo, hi), and matching words."""
    out = []
    for line in log.splitlines():
        if words is not None and not words.search(line):
            continue
        for num in re.findall(r"\b(?:0x[0-9a-fA-F]+|\d+)\b", line):
            v = int(num, 16) if num.startswith("0x") else int(num)
            if lo <= v < hi:
                out.append(line)
                break
    return out


def repair_lines(log, lo, hi):
    return lines_naming(log, lo, hi, REPAIR_WORDS)


def one_per_copy(ref, workdir, where_of, lo, hi, what):
    """Damage each copy in turn; all reads must be right and one run must log the repair."""
    copies = where_of()
    logs = []
    for k in range(len(copies)):
        run_dir = os.path.join(workdir, "copy%d" % k)
        os.mkdir(run_dir)
        devs = copy_images(ref, run_dir)
        damage(devs, [copies[k]])
        got, log = read_with_fuse(list(devs.values()))
        d = diffs_except(ref, got)
        assert not d, "%s: %s damaged in copy %d of %d %s: wrong reads:\n%s\nlog:\n%s" % (
            ref.name, what, k, len(copies), copies[k], "\n".join(d[:30]), log[-6000:])
        logs.append(log)
        shutil.rmtree(run_dir)
    assert any(repair_lines(log, lo, hi) for log in logs), \
        "%s: %s at logical %d was damaged in each of its %d copies in turn %s, reads were " \
        "right, but no log line names a repair of it; logs:\n%s" % (
            ref.name, what, lo, len(copies), copies,
            "\n---\n".join(log[-3000:] for log in logs))


# ------------------------------------------------------------ missing devices

MULTI = sorted(n for n, tol in REDUNDANT.items() if tol > 0)


@pytest.mark.parametrize("ref", MULTI, indirect=True)
def test_missing_device_refused_without_degraded(ref):
    devids = sorted(ref.devids)
    missing = devids[:1]
    present = [ref.devids[d] for d in devids if d not in missing]
    v = hostile.run_image(binary(), present, options="ro")
    assert not v.failed, v.report("%s without devid %s" % (ref.name, missing))
    assert v.status == "refused", v.report("%s: mounted without devid %s and without -o degraded"
                                           % (ref.name, missing))
    lines = [ln for ln in v.output.splitlines() if "missing" in ln.lower()]
    assert lines and all(re.search(r"\b%d\b" % d, " ".join(lines)) for d in missing), \
        "%s: the refusal does not name missing devid %s:\n%s" % (ref.name, missing, v.output)


def _degraded_cases():
    out = []
    for name in MULTI:
        for n in sorted({1, REDUNDANT[name]}):
            out.append(pytest.param(name, n, id="%s-%dmissing" % (name, n)))
    return out


@pytest.mark.parametrize("ref,nmissing", _degraded_cases(), indirect=["ref"])
def test_degraded_reads_everything(ref, nmissing):
    devids = sorted(ref.devids)
    for missing in (devids[:nmissing], devids[-nmissing:]):
        present = [ref.devids[d] for d in devids if d not in missing]
        got, log = read_with_fuse(present, options="ro,degraded")
        d = diffs_except(ref, got)
        assert not d, "%s -o degraded without devid %s: differences from the kernel:\n%s\nlog:\n%s" \
            % (ref.name, missing, "\n".join(d[:40]), log[-6000:])


TOO_MANY = {"profile-raid5": 2, "profile-raid6": 3, "profile-raid0": 1}


@pytest.mark.parametrize("ref", sorted(TOO_MANY), indirect=True)
def test_too_many_missing_degraded(ref):
    """More devices missing than the profile tolerates, with -o degraded: a refusal with a
    message, or a mount where the lost data reads as errors -- never as wrong bytes."""
    devids = sorted(ref.devids)
    missing = devids[:TOO_MANY[ref.name]]
    present = [ref.devids[d] for d in devids if d not in missing]
    env = dict(os.environ, **hostile.SANITIZER_ENV)
    try:
        with mounts.fuse_mount(binary(), present, options="ro,degraded", env=env) as m:
            got = treecmp.walk(m.path)
    except mounts.MountError as e:
        assert "missing" in str(e).lower() and not hostile.sanitizer_lines(str(e)), str(e)
        return
    log = m.stderr_text(limit=1 << 20)
    assert not hostile.sanitizer_lines(log), log[-8000:]
    bad = {k for k, v in got["entries"].items() if "error" in v}
    assert bad, "%s: every read succeeded without devids %s" % (ref.name, missing)
    d = diffs_except(ref, got, bad_paths=bad)
    assert not d, "%s without devids %s: reads without an error differ from the kernel:\n%s" % (
        ref.name, missing, "\n".join(d[:30]))


# ---------------------------------------------------------------- damage

@pytest.mark.parametrize("ref", sorted(REDUNDANT), indirect=True)
def test_data_copy_damaged_is_repaired(ref, workdir):
    logical, start, length = ref.data_logical()
    one_per_copy(ref, workdir, lambda: hostile.map_logical(ref.chunks, logical, 4096),
                 start, start + length, "data of %s" % DATA_FILE)


@pytest.mark.parametrize("tree", ["FS_TREE", "ROOT_TREE"])
@pytest.mark.parametrize("ref", sorted(REDUNDANT), indirect=True)
def test_metadata_copy_damaged_is_repaired(ref, tree, workdir):
    logical = ref.root_tree if tree == "ROOT_TREE" else ref.roots["FS_TREE"]
    one_per_copy(ref, workdir, lambda: hostile.map_logical(ref.chunks, logical, ref.nodesize),
                 logical, logical + ref.nodesize, "%s root block" % tree)


@pytest.mark.parametrize("ref", ["profile-raid6"], indirect=True)
def test_raid6_data_and_p_damaged_rebuilt_from_q(ref, workdir):
    logical, start, length = ref.data_logical()
    devs = copy_images(ref, workdir)
    data = hostile.map_logical(ref.chunks, logical, 4096)
    p = hostile.map_parity(ref.chunks, logical, 4096)[:1]
    damage(devs, data + p)
    got, log = read_with_fuse(list(devs.values()))
    d = diffs_except(ref, got)
    assert not d, "raid6 data %s and P %s damaged: wrong reads:\n%s\nlog:\n%s" % (
        data, p, "\n".join(d[:30]), log[-6000:])
    assert repair_lines(log, start, start + length), \
        "no log line names the rebuild of %d:\n%s" % (logical, log[-6000:])


def expect_eio_only(ref, got, log, path, start, length):
    e = got["entries"].get(path, {})
    assert "EIO" in e.get("error", ""), "%s: %s should fail with EIO, got %s\nlog:\n%s" % (
        ref.name, path, e, log[-6000:])
    d = diffs_except(ref, got, bad_paths={path})
    assert not d, "%s: files other than %s read wrong:\n%s" % (ref.name, path, "\n".join(d[:30]))
    assert lines_naming(log, start, start + length), \
        "%s: no log line names the bad extent at logical %d:\n%s" % (ref.name, start, log[-6000:])


@pytest.mark.parametrize("ref", NOT_REDUNDANT, indirect=True)
def test_unredundant_data_damaged_gives_eio(ref, workdir):
    logical, start, length = ref.data_logical()
    devs = copy_images(ref, workdir)
    damage(devs, hostile.map_logical(ref.chunks, logical, 4096))
    got, log = read_with_fuse(list(devs.values()))
    expect_eio_only(ref, got, log, DATA_FILE, start, length)


@pytest.mark.parametrize("ref", sorted(REDUNDANT), indirect=True)
def test_every_copy_damaged_gives_eio(ref, workdir):
    """Beyond the redundancy: every data copy (and for RAID5/6 the parity too) is bad."""
    logical, start, length = ref.data_logical()
    devs = copy_images(ref, workdir)
    where = hostile.map_logical(ref.chunks, logical, 4096)
    if ref.has_parity(logical):
        where += hostile.map_parity(ref.chunks, logical, 4096)
    damage(devs, where)
    got, log = read_with_fuse(list(devs.values()))
    expect_eio_only(ref, got, log, DATA_FILE, start, length)
