"""File data writes: btrfs-fuse lays out file data as the kernel does.

Scripted data scenarios (inline files at and around max_inline=2048 and the
4 KiB sector, growing an inline file into regular extents, writes far past
EOF, truncates up and down - to an inline size, inside an extent, twice up -,
overwrites that split extents, many small writes merged by delayed
allocation, appends, sparse files past 4 GiB, writes into holes below EOF, a
NODATACOW file) run once on a
kernel mount of one image and once on a `btrfs-fuse -o rw` mount of its twin,
with fsync where the script says. Then, for each mkfs variant (default,
-O ^no-holes, --csum sha256, -m dup -d dup):

* st_blocks after every step (buffered data not yet given extents counts only
  where it fills a hole, as the kernel's delalloc-new bytes) is the kernel's;
* the btrfs-fuse image passes `btrfs check --readonly --check-data-csum`;
* the kernel mounts it without BTRFS warnings and reads the same bytes
  (sha256 of every file) and sizes as from the kernel-made twin;
* every file's extent items match the twin's one by one: key offset, type
  (inline / regular / hole), num_bytes, ram_bytes, extent offset,
  disk_num_bytes, compression; the inode's size and nbytes; the total of
  checksum bytes (btrfs check's "total csum bytes") - so inline decisions,
  hole items, extent splits, nbytes and checksums are the kernel's. Disk
  addresses are not compared. Known differences, left out of the comparison:
  the NODATACOW file (the kernel overwrites its extents in place, btrfs-fuse
  writes every change copy-on-write) and adjacent hole items (btrfs-fuse merges
  a new hole item with an adjacent one, as the kernel's fill_holes; the
  kernel's btrfs_cont_expand inserts one item per truncate-up) - hole runs are
  compared after merging adjacent hole items.
* `btrfs scrub start -B` on a kernel mount finds no error.

Needs root (loop mounts). $BTRFS_FUSE overrides ./btrfs-fuse.
"""

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "lib"))
import mounts  # noqa: E402
import workload  # noqa: E402

BIN = os.path.abspath(os.environ.get("BTRFS_FUSE", os.path.join(REPO, "btrfs-fuse")))
IMG_SIZE = 3 << 30
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (loop mounts)"),
    pytest.mark.skipif(not os.access(BIN, os.X_OK), reason="btrfs-fuse binary not built: %s" % BIN),
    pytest.mark.skipif(shutil.which("mkfs.btrfs") is None, reason="mkfs.btrfs missing (btrfs-progs)"),
]

VARIANTS = {
    "default": [],
    "holes": ["-O", "^no-holes"],
    "sha256": ["--csum", "sha256"],
    "dup": ["-m", "dup", "-d", "dup"],
}


def w(off, n):
    return ("w", off, n)


def t(size):
    return ("t", size)


S = ("s",)

# name -> operations; "s" is an fsync (a commit on btrfs-fuse, writeback + log on the kernel).
SCENARIOS = {
    "inline100": [w(0, 100), S],
    "inline2048": [w(0, 2048), S],
    "inline2049": [w(0, 2049), S],
    "sector4096": [w(0, 4096), S],
    "inline_grows": [w(0, 100), S, w(100, 3000), S],
    "inline_rewritten": [w(0, 1000), S, w(10, 20), S],
    "inline_then_far": [w(0, 100), S, w(10000, 10), S],
    "inline_appends": [w(0, 1000), S, w(1000, 1000), S, w(2000, 100), S],
    "trunc_up": [w(0, 100), S, t(MiB), S],
    "trunc_up_twice": [w(0, 5000), S, t(10000), S, t(50000), S],
    "trunc_to_inline": [w(0, 8192), S, t(100), S],
    "trunc_mid_extent": [w(0, MiB), S, t(500000), S],
    "trunc_zero_regrow": [w(0, 300000), S, t(0), S, w(0, 700), S],
    "overwrite_splits": [w(0, MiB), S, w(100000, 5000), S, w(300000, 4096), S],
    "small_writes": [w(i * 1000, 1000) for i in range(100)] + [S],
    "appends": [w(0, 5000), S, w(5000, 5000), S, w(10000, 123), S],
    "sparse": [w(10 * MiB, 5000), S, w(20 * MiB + 1, 3), S],
    "past_4g": [w(5 * GiB, 70000), S, w(5 * GiB - 4096, 10), S],
    "unsynced_mix": [w(0, 100), t(50000), w(60000, 10), t(30000), w(20000, 20000), S],
    "hole_writes": [w(0, 8192), t(64 * MiB), S, w(8618557, 2047), w(8622557, 200), w(16 * MiB, 4096), S,
                    w(4096, 3 * 4096), w(100, 50), S, w(64 * MiB - 100, 5000), w(32 * MiB + 7, 10),
                    t(32 * MiB + 3), t(32 * MiB - 3), t(40 * MiB + 1), S],
}
NOCOW = {"nocow": [w(0, 64 * KiB), S, w(4096, 4096), S, w(60000, 9000), S]}


def data(name, off, n):
    """Deterministic bytes for a write of scenario `name` at `off`."""
    seed = hashlib.sha256(("%s:%d" % (name, off)).encode()).digest()
    reps = n // len(seed) + 1
    return (seed * reps)[:n]


def run_ops(root, scenarios):
    """Run the scenarios; returns {name: [st_blocks after each step]}."""
    blocks = {}
    for name, ops in scenarios.items():
        fd = os.open(os.path.join(root, name), os.O_WRONLY)
        blocks[name] = []
        try:
            for op in ops:
                if op[0] == "w":
                    assert os.pwrite(fd, data(name, op[1], op[2]), op[1]) == op[2]
                elif op[0] == "t":
                    os.ftruncate(fd, op[1])
                else:
                    os.fsync(fd)
                blocks[name].append(os.fstat(fd).st_blocks)
        finally:
            os.close(fd)
    return blocks


def run(argv):
    return subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=600)


def mkfs(path, opts, names, nocow):
    with open(path, "wb") as f:
        f.truncate(IMG_SIZE)
    p = run(["mkfs.btrfs", "-q", "-f"] + opts + [path])
    assert p.returncode == 0, "mkfs.btrfs %s failed: %s" % (" ".join(opts), p.stderr)
    with mounts.kernel_mount(path, options="rw") as k:
        for n in names:
            open(os.path.join(k.path, n), "wb").close()
        for n in nocow:
            assert run(["chattr", "+C", os.path.join(k.path, n)]).returncode == 0


def check(img):
    """btrfs check must pass; returns its 'total csum bytes'."""
    m = re.search(r"total csum bytes: (\d+)", workload.assert_check_clean(img, "writing " + img))
    return int(m.group(1)) if m else None


def layout(img):
    """{inode: {"size", "nbytes", "extents": [(offset, type, num, ram, extent offset, disk num, compression)]}}
    from the fs tree, as btrfs inspect-internal dump-tree prints it."""
    p = run(["btrfs", "inspect-internal", "dump-tree", "-t", "5", img])
    assert p.returncode == 0, p.stderr
    inodes, cur = {}, None
    for line in p.stdout.splitlines():
        m = re.search(r"key \((\d+) (\w+) (\d+)\)", line)
        if m:
            ino, typ, off = int(m.group(1)), m.group(2), int(m.group(3))
            cur = (ino, typ, off)
            inodes.setdefault(ino, {"extents": []})
            continue
        if cur is None:
            continue
        ino, typ, off = cur
        rec = inodes[ino]
        m = re.search(r"generation \d+ transid \d+ size (\d+) nbytes (\d+)", line)
        if typ == "INODE_ITEM" and m:
            rec["size"], rec["nbytes"] = int(m.group(1)), int(m.group(2))
        m = re.search(r"type \d+ \((\w+)\)", line)
        if typ == "EXTENT_DATA" and m:
            rec["extents"].append({"off": off, "type": m.group(1)})
        e = rec["extents"][-1] if typ == "EXTENT_DATA" and rec["extents"] else None
        if e is None:
            continue
        m = re.search(r"inline extent data size (\d+) ram_bytes (\d+) compression (\d+)", line)
        if m:
            e.update(num=int(m.group(2)), ram=int(m.group(2)), comp=int(m.group(3)))
        m = re.search(r"extent data disk byte (\d+) nr (\d+)", line)
        if m:
            e.update(hole=int(m.group(1)) == 0, disk_nr=int(m.group(2)))
        m = re.search(r"extent data offset (\d+) nr (\d+) ram (\d+)", line)
        if m:
            e.update(eoff=int(m.group(1)), num=int(m.group(2)), ram=int(m.group(3)))
        m = re.search(r"extent compression (\d+)", line)
        if m:
            e["comp"] = int(m.group(1))
    return inodes


def normalized(rec):
    """The extent list with adjacent hole items merged (ram_bytes and offset of a hole carry no meaning then)."""
    out = []
    for e in rec["extents"]:
        e = dict(e)
        if e.get("hole"):
            e.update(ram=None, eoff=None)
            if out and out[-1].get("hole") and out[-1]["off"] + out[-1]["num"] == e["off"]:
                out[-1]["num"] += e["num"]
                continue
        out.append(e)
    return [tuple(sorted(e.items(), key=lambda kv: kv[0])) for e in out]


def inode_numbers(root, names):
    return {n: os.stat(os.path.join(root, n)).st_ino for n in names}


def contents(root, names):
    res = {}
    for n in names:
        h = hashlib.sha256()
        with open(os.path.join(root, n), "rb") as f:
            while True:
                b = f.read(4 * MiB)
                if not b:
                    break
                h.update(b)
        st = os.stat(os.path.join(root, n))
        res[n] = (st.st_size, h.hexdigest())
    return res


NOTE_TIMEOUT = 10


def wait_for_output(mnt, text, timeout=NOTE_TIMEOUT):
    """The daemon's log gets `text`: the mount works before the daemon's note reaches its
    log file, so poll for it (up to timeout seconds) instead of reading it once."""
    deadline = time.monotonic() + timeout
    while text not in mnt.stderr_text():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def scrub(img):
    with mounts.kernel_mount(img, options="rw") as k:
        p = run(["btrfs", "scrub", "start", "-B", k.path])
    assert p.returncode == 0 and "no errors found" in p.stdout, "scrub:\n" + p.stdout + p.stderr


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_data_layout_matches_kernel(variant, tmp_path):
    allsc = dict(SCENARIOS, **NOCOW)
    names = sorted(allsc)
    kimg, fimg = str(tmp_path / "kernel.img"), str(tmp_path / "fuse.img")
    mkfs(kimg, VARIANTS[variant], names, NOCOW)
    shutil.copyfile(kimg, fimg)

    with mounts.kernel_mount(kimg, options="rw") as k:
        kblocks = run_ops(k.path, allsc)
    with mounts.fuse_mount(BIN, fimg, options="rw") as m:
        assert wait_for_output(m, "read-write"), \
            "no 'read-write' note from the daemon within %ds:\n%s" % (NOTE_TIMEOUT, m.stderr_text())
        fblocks = run_ops(m.path, allsc)
    bdiff = ["%s: kernel %s, btrfs-fuse %s" % (n, kblocks[n], fblocks[n]) for n in names if kblocks[n] != fblocks[n]]
    assert not bdiff, "st_blocks after each step differs from the kernel's:\n" + "\n".join(bdiff)

    kcsum = check(kimg)
    fcsum = check(fimg)
    with mounts.kernel_mount(kimg, options="ro") as k:
        want = contents(k.path, names)
        inos = inode_numbers(k.path, names)
    marker = mounts.dmesg_marker("test-write-data")
    with mounts.kernel_mount(fimg, options="ro") as k:
        got = contents(k.path, names)
        ours = [os.path.basename(d) for d in k.loops]
    # other tests may mount other images meanwhile: messages naming another device are theirs
    errs = mounts.dmesg_btrfs_errors(marker, devices=ours)
    assert not errs, "kernel messages on the btrfs-fuse image:\n" + "\n".join(errs)
    assert got == want, "file sizes or contents differ: %s" % (
        {n: (want[n], got[n]) for n in names if want[n] != got[n]})

    klay, flay = layout(kimg), layout(fimg)
    diffs = []
    for n in sorted(SCENARIOS):
        ki, fi = klay[inos[n]], flay[inos[n]]
        if (ki["size"], ki["nbytes"]) != (fi["size"], fi["nbytes"]):
            diffs.append("%s: size/nbytes kernel %s, btrfs-fuse %s" % (
                n, (ki["size"], ki["nbytes"]), (fi["size"], fi["nbytes"])))
        if normalized(ki) != normalized(fi):
            diffs.append("%s: extents\n  kernel     %s\n  btrfs-fuse %s" % (n, normalized(ki), normalized(fi)))
    assert not diffs, "layouts differ from the kernel's:\n" + "\n".join(diffs)
    assert kcsum == fcsum, "total csum bytes: kernel %s, btrfs-fuse %s" % (kcsum, fcsum)
    scrub(fimg)
