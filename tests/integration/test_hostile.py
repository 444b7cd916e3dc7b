"""Robustness of btrfs-fuse against images that are not btrfs, damaged, or hostile.

Owns: refusal of non-btrfs and truncated images (clean exit, message, nothing left
behind), superblock fallback to a copy, refusal of unknown incompat features, and
the seeded corruption loop.

The seeded loop: random.Random(seed) picks one of a few small kernel-made base
images (tests/lib/hostile.py BASES: 4 KiB nodes, compression, xattrs, inline files,
subvolumes) and damages it -- bytes of live tree blocks with or without a fixed-up
checksum, header and item fields, item payloads, transplanted blocks, superblock
fields and the system chunk array (checksum recomputed), truncation, data bytes.
Each image is mounted with the ASan+UBSan build in the foreground and walked
completely (lstat, readlink, xattrs, every byte of every file) under a time limit.
Errors on damaged paths and refusals with a message are fine; a sanitizer report,
death by a signal, or a hang fails and names the seed.  A failing image is kept
under build/hostile/failures/ and the report says how to reproduce it (a seed gives
the same image only with the same cached base images in build/hostile/bases-v1/:
the kernel does not lay out two builds identically).

Environment: BTRFS_FUSE, BTRFS_FUSE_ASAN (binaries), BTRFS_FUSE_SOAK=1 (2000 images,
random first seed), BTRFS_FUSE_HOSTILE_COUNT (number of images, default 200),
BTRFS_FUSE_HOSTILE_SEED (first seed), BTRFS_FUSE_HOSTILE_JOBS (parallel mounts,
default 2), BTRFS_FUSE_HOSTILE_TIMEOUT (seconds per image, default 20).
"""

import concurrent.futures
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "lib"))

import hostile  # noqa: E402
import mounts  # noqa: E402
import treecmp  # noqa: E402

BIN = os.environ.get("BTRFS_FUSE", os.path.join(REPO, "btrfs-fuse"))
ASAN = os.environ.get("BTRFS_FUSE_ASAN", os.path.join(REPO, "build-asan", "btrfs-fuse"))
SOAK = os.environ.get("BTRFS_FUSE_SOAK", "0") == "1"
COUNT = int(os.environ.get("BTRFS_FUSE_HOSTILE_COUNT") or (2000 if SOAK else 200))
FIRST_SEED = int(os.environ.get("BTRFS_FUSE_HOSTILE_SEED")
                 or (random.SystemRandom().randrange(1, 1 << 31) if SOAK else 1000))
JOBS = int(os.environ.get("BTRFS_FUSE_HOSTILE_JOBS") or 2)
TIMEOUT = float(os.environ.get("BTRFS_FUSE_HOSTILE_TIMEOUT") or 20)
BATCH = 20
REFUSE_WITHIN = 5.0        # seconds a refusal may take
FAILURES = os.path.join(hostile.default_cache(), "failures")

BINARIES = [pytest.param(BIN, id="normal"), pytest.param(ASAN, id="asan")]


def need(binary):
    if not os.access(binary, os.X_OK):
        pytest.skip("%s is not built" % binary)
    return binary


@pytest.fixture(scope="session")
def bases():
    return hostile.base_images()


@pytest.fixture
def workdir():
    d = tempfile.mkdtemp(prefix="btrfs-hostile-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------ refusals

def expect_refusal(binary, images, foreground=False, options=None):
    """Run the mount command on images that cannot be mounted: it must exit non-zero
    (not by a signal) with a message within REFUSE_WITHIN seconds, without sanitizer
    reports, and leave no mount and no daemon.  Returns the message."""
    mp = tempfile.mkdtemp(prefix="btrfs-refuse-")
    argv = [binary] + (["-f"] if foreground else []) + (["-o", options] if options else [])
    argv += list(images) + [mp]
    env = dict(os.environ, **hostile.SANITIZER_ENV)
    # stderr to a file: a daemon that wrongly stays would keep a pipe open forever
    with tempfile.TemporaryFile() as errf:
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=errf, stderr=errf,
                                env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=REFUSE_WITHIN + 10)
        except subprocess.TimeoutExpired:
            rc = None
        elapsed = time.monotonic() - t0
        mounted = mounts.is_fuse_mount(mp)
        leftover = [p for p in mounts._find_daemon_pids(binary, mp) if p != proc.pid]
        if mounted:
            subprocess.run(["fusermount3", "-u", "-z", mp], stderr=subprocess.DEVNULL)
        for pid in leftover + ([proc.pid] if rc is None else []):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        errf.seek(0)
        msg = errf.read().decode("utf-8", "replace")
    os.rmdir(mp)
    cmd = " ".join(argv)
    assert rc is not None, "%s: still running after %.0fs\n%s" % (cmd, elapsed, msg)
    assert not mounted, "%s: mounted a filesystem it should refuse\n%s" % (cmd, msg)
    assert not leftover, "%s: left daemon(s) %s behind\n%s" % (cmd, leftover, msg)
    assert rc > 0, "%s: exit status %d (%s)\n%s" % (
        cmd, rc, "signal %s" % signal.Signals(-rc).name if rc < 0 else "success", msg)
    assert not hostile.sanitizer_lines(msg), "%s: sanitizer report\n%s" % (cmd, msg)
    assert msg.strip(), "%s: exit status %d without any message" % (cmd, rc)
    assert elapsed < REFUSE_WITHIN, "%s: took %.1fs to refuse" % (cmd, elapsed)
    return msg


def _zeros(path, size):
    with open(path, "wb") as f:
        f.write(bytes(min(size, 1 << 20)))
        f.truncate(size)


def _text_file(path):
    with open(path, "w") as f:
        for i in range(20000):
            f.write("line %d: this is a text file, not a btrfs filesystem\n" % i)


def _ext4(path):
    _zeros(path, 32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", path], check=True, stdout=subprocess.DEVNULL)


def _truncated_btrfs(path, bases):
    with open(bases["n4k-single-zstd"]["image"], "rb") as src, open(path, "wb") as dst:
        dst.write(src.read(1 << 20))


NOT_BTRFS = {
    "zeros-1MiB": lambda p, b: _zeros(p, 1 << 20),
    "zeros-300MiB": lambda p, b: _zeros(p, 300 << 20),
    "text": lambda p, b: _text_file(p),
    "ext4": lambda p, b: _ext4(p),
    "empty": lambda p, b: open(p, "wb").close(),
    "truncated-btrfs-1MiB": _truncated_btrfs,
}


@pytest.mark.parametrize("foreground", [False, True], ids=["background", "foreground"])
@pytest.mark.parametrize("binary", BINARIES)
@pytest.mark.parametrize("kind", sorted(NOT_BTRFS))
def test_refuses_non_btrfs(kind, binary, foreground, bases, workdir):
    need(binary)
    img = os.path.join(workdir, kind + ".img")
    NOT_BTRFS[kind](img, bases)
    msg = expect_refusal(binary, [img], foreground=foreground)
    if kind != "truncated-btrfs-1MiB":
        assert os.path.basename(img) in msg, "the message does not name the image:\n" + msg


@pytest.mark.parametrize("binary", BINARIES)
def test_refuses_missing_path_and_directory(binary, workdir):
    need(binary)
    missing = os.path.join(workdir, "no-such-image")
    assert "no-such-image" in expect_refusal(binary, [missing])
    expect_refusal(binary, [workdir])


# ------------------------------------------------------------ superblocks

@pytest.fixture(scope="module")
def big_image():
    """A 256 MiB image (so mkfs writes the copy at 64 MiB) and its kernel manifest."""
    d = tempfile.mkdtemp(prefix="btrfs-hostile-sb-")
    img = os.path.join(d, "sb.img")
    hostile.mkfs([img], "-L", "sbtest", size=256 << 20)
    with mounts.kernel_mount(img, options="compress=zstd") as m:
        hostile.populate(m.path, random.Random(7), nfiles=30, bigdir=100, subvol=False)
    with mounts.kernel_mount(img, options="ro") as m:
        manifest = treecmp.walk(m.path)
    assert hostile.super_copies(img) == [65536, 64 << 20], hostile.super_copies(img)
    yield img, manifest
    shutil.rmtree(d, ignore_errors=True)


def _damage_primary(img, how):
    if how == "zeroed":
        hostile.write_at(img, hostile.SUPER_INFO_OFFSET, bytes(4096))
    elif how == "bad-checksum":
        hostile.flip_bytes(img, hostile.SUPER_INFO_OFFSET + 0x100, 4)
    elif how == "bad-magic":
        hostile.patch_super(img, raw={0x40: b"_BHRfS_X"}, copies=[hostile.SUPER_INFO_OFFSET])


@pytest.mark.parametrize("how", ["zeroed", "bad-checksum", "bad-magic"])
def test_primary_superblock_damaged_uses_copy(how, big_image, workdir):
    binary = need(ASAN if os.access(ASAN, os.X_OK) else BIN)
    src, expected = big_image
    img = os.path.join(workdir, "sb.img")
    hostile.copy_sparse(src, img)
    _damage_primary(img, how)
    with mounts.fuse_mount(binary, img, options="ro",
                           env=dict(os.environ, **hostile.SANITIZER_ENV)) as m:
        got = treecmp.walk(m.path)
        log = m.stderr_text()
    diffs = treecmp.compare(expected, got, ignore=["atime"], labels=("kernel", "btrfs-fuse"))
    assert not diffs, "content differs after falling back to the copy:\n" + "\n".join(diffs[:50])
    assert "copy" in log.lower() and "superblock" in log.lower(), \
        "stderr does not say a superblock copy was used:\n" + log
    assert not hostile.sanitizer_lines(m.stderr_text())


@pytest.mark.parametrize("binary", BINARIES)
def test_all_superblocks_damaged_refused(binary, big_image, workdir):
    need(binary)
    img = os.path.join(workdir, "sb.img")
    hostile.copy_sparse(big_image[0], img)
    for off in hostile.SUPER_OFFSETS[:2]:
        hostile.write_at(img, off, bytes(4096))
    expect_refusal(binary, [img])


@pytest.mark.parametrize("bit,names", [
    (40, ["unknown-bit-40", "bit 40", "bit40", "0x10000000000"]),
    (63, ["unknown-bit-63", "bit 63", "bit63", "0x8000000000000000"]),
    (13, ["extent-tree-v2", "extent_tree_v2"]),
])
@pytest.mark.parametrize("binary", BINARIES)
def test_unknown_incompat_feature_refused(binary, bit, names, big_image, workdir):
    need(binary)
    img = os.path.join(workdir, "feat.img")
    hostile.copy_sparse(big_image[0], img)
    flags = hostile.read_super(img)["incompat_flags"] | (1 << bit)
    copies = hostile.patch_super(img, fields={"incompat_flags": flags})
    assert len(copies) == 2
    for off in copies:
        assert hostile.csum_ok(bytearray(hostile.read_at(img, off, 4096)))
    msg = expect_refusal(binary, [img])
    low = msg.lower()
    assert any(n.lower() in low for n in names), \
        "the refusal does not name the feature (expected one of %s):\n%s" % (names, msg)


def test_crc32c_matches_mkfs(bases):
    """The Python CRC32C agrees with mkfs.btrfs on the superblock and every tree block."""
    assert hostile.crc32c(b"123456789") == 0xE3069283
    for meta in bases.values():
        img = meta["image"]
        assert hostile.csum_ok(bytearray(hostile.read_at(img, hostile.SUPER_INFO_OFFSET, 4096)))
        for blk in meta["blocks"][:20]:
            for _dev, phys in blk["copies"]:
                assert hostile.csum_ok(bytearray(hostile.read_at(img, phys, meta["nodesize"])))


# -------------------------------------------------------------- seeded loop

@pytest.mark.parametrize("name", sorted(hostile.BASES))
def test_base_image_walks_clean(name, bases, workdir):
    """Control for the loop: every undamaged base image mounts and reads without errors."""
    need(ASAN)
    img = os.path.join(workdir, "base.img")
    hostile.copy_sparse(bases[name]["image"], img)
    v = hostile.run_image(ASAN, [img], timeout=60)
    assert not v.failed, v.report("undamaged base image " + name)
    assert v.status == "mounted", v.report("undamaged base image %s was refused" % name)
    assert v.walk["errors"] == 0 and v.walk["entries"] > 300, v.report(
        "undamaged base image %s: read errors" % name)


def _run_seed(seed, bases):
    d = tempfile.mkdtemp(prefix="btrfs-seed-%d-" % seed)
    try:
        img = os.path.join(d, "seed-%d.img" % seed)
        try:
            what = hostile.make_case(seed, bases, img)
        except Exception as e:        # a harness bug, reported with the seed
            return seed, "seed %d: could not build the image: %r" % (seed, e), None
        v = hostile.run_image(ASAN, [img], timeout=TIMEOUT)
        if not v.failed:
            return seed, what, v
        os.makedirs(FAILURES, exist_ok=True)
        kept = os.path.join(FAILURES, os.path.basename(img))
        shutil.move(img, kept)
        what += ("\n  image kept: %s\n  reproduce: %s -f -o ro %s /mnt   "
                 "(or: python3 tests/lib/hostile.py run %d)" % (kept, ASAN, kept, seed))
        return seed, what, v
    finally:
        shutil.rmtree(d, ignore_errors=True)


NBATCH = (COUNT + BATCH - 1) // BATCH


@pytest.mark.parametrize("batch", range(NBATCH))
def test_seeded_corruption(batch, bases):
    need(ASAN)
    seeds = range(FIRST_SEED + batch * BATCH, FIRST_SEED + min(COUNT, (batch + 1) * BATCH))
    with concurrent.futures.ThreadPoolExecutor(max_workers=JOBS) as ex:
        results = list(ex.map(lambda s: _run_seed(s, bases), seeds))
    failures = []
    tally = {}
    for seed, what, v in results:
        if v is None:
            failures.append(what)
            continue
        tally[v.status] = tally.get(v.status, 0) + 1
        if v.failed:
            failures.append(v.report(what))
    print("seeds %d..%d: %s" % (seeds[0], seeds[-1], tally))
    assert not failures, "%d of %d damaged images failed (first seed %d):\n\n%s" % (
        len(failures), len(seeds), FIRST_SEED, "\n\n".join(failures))
