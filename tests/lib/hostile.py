#!/usr/bin/python3
"""Hostile-image helpers for the robustness tests (test_hostile.py, test_repair.py).

Owns: btrfs checksums in Python (CRC32C), superblock patching, finding tree blocks
and mapping logical addresses to (device, physical offset) the way the kernel does,
building small base images with the kernel driver, the seeded corruption generator,
and running btrfs-fuse on one damaged image with a time limit.

Key ideas:
* Live tree blocks come from `btrfs inspect-internal dump-tree` ("leaf N"/"node N"
  lines give logical addresses); the chunk tree dump maps them to physical copies.
  Stale (COW'd) blocks are never chosen, so every corruption hits something the
  driver may read.  If dump-tree yields nothing, the image is scanned for blocks
  whose header fsid matches.
* A corruption case is a pure function of (seed, base image): random.Random(seed)
  picks the base, the kind of damage and its details, and a one-line description
  is kept for the report.  Failing images are kept under build/hostile/failures/.
* A run mounts with `-f`, walks the whole tree in a child process (lstat, readdir,
  readlink, xattrs, every file read up to READ_CAP: a damaged inode may claim an
  exabyte of holes), and judges: sanitizer report, death by
  signal, a hang (time limit), or a refusal without a message are failures;
  EIO/EUCLEAN on damaged paths and refusals with a message are fine.

CLI:  hostile.py walk MOUNTPOINT            (used by the tests: walk, print a JSON summary)
      hostile.py bases [DIR]                (build or reuse the base images)
      hostile.py case SEED OUT.img [DIR]    (write the damaged image of one seed)
      hostile.py run SEED [BINARY]          (run one seed like the test does, print the verdict)
"""

import fcntl
import json
import os
import random
import re
import shutil
import signal
import stat as stat_mod
import struct
import subprocess
import sys
import tempfile
import time

LIB = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(LIB))
if LIB not in sys.path:
    sys.path.insert(0, LIB)

import mounts  # noqa: E402  (tests/lib)

PYTHON = "/usr/bin/python3"
SUPER_INFO_OFFSET = 0x10000
SUPER_OFFSETS = (0x10000, 64 << 20, 256 << 30)
SUPER_SIZE = 4096
MAGIC = b"_BHRfS_M"
HEADER_SIZE = 0x65
ITEM_SIZE = 25          # leaf item: key (17) + offset (4) + size (4)
KEY_PTR_SIZE = 33       # node pointer: key (17) + blockptr (8) + generation (8)

SANITIZER_PATTERNS = ("AddressSanitizer", "runtime error", "LeakSanitizer",
                      "UndefinedBehaviorSanitizer", "ThreadSanitizer")
SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:allocator_may_return_null=1",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
    "LSAN_OPTIONS": "report_objects=0",
}


# --------------------------------------------------------------------- CRC32C

def _crc32c_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c_raw(crc, data):
    """CRC32C (Castagnoli, reflected poly 0x82F63B78) register update, no inversion."""
    t = _CRC_TABLE
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def crc32c(data):
    """The standard CRC32C of data (init ~0, final ~): crc32c(b"123456789") == 0xE3069283."""
    return crc32c_raw(0xFFFFFFFF, data) ^ 0xFFFFFFFF


def fix_csum(buf):
    """Recompute the crc32c checksum of a superblock or tree block held in a bytearray."""
    struct.pack_into("<I", buf, 0, crc32c(bytes(buf[32:])))
    buf[4:32] = bytes(28)


def csum_ok(buf):
    return struct.unpack_from("<I", buf, 0)[0] == crc32c(bytes(buf[32:]))


# ----------------------------------------------------------------- superblock

# name -> (offset, struct format) of the superblock fields the tests touch
SUPER_FIELDS = {
    "fsid": (0x20, "16s"), "bytenr": (0x30, "<Q"), "flags": (0x38, "<Q"),
    "magic": (0x40, "8s"), "generation": (0x48, "<Q"), "root": (0x50, "<Q"),
    "chunk_root": (0x58, "<Q"), "log_root": (0x60, "<Q"), "total_bytes": (0x70, "<Q"),
    "bytes_used": (0x78, "<Q"), "root_dir_objectid": (0x80, "<Q"),
    "num_devices": (0x88, "<Q"), "sectorsize": (0x90, "<I"), "nodesize": (0x94, "<I"),
    "leafsize": (0x98, "<I"), "stripesize": (0x9C, "<I"),
    "sys_chunk_array_size": (0xA0, "<I"), "chunk_root_generation": (0xA4, "<Q"),
    "compat_flags": (0xAC, "<Q"), "compat_ro_flags": (0xB4, "<Q"),
    "incompat_flags": (0xBC, "<Q"), "csum_type": (0xC4, "<H"), "root_level": (0xC6, "B"),
    "chunk_root_level": (0xC7, "B"), "log_root_level": (0xC8, "B"),
    "dev_devid": (0xC9, "<Q"), "dev_total_bytes": (0xD1, "<Q"),
    "dev_bytes_used": (0xD9, "<Q"), "metadata_uuid": (0x23B, "16s"),
    "nr_global_roots": (0x24B, "<Q"),
}
SYS_CHUNK_ARRAY = 0x32B
SYS_CHUNK_ARRAY_MAX = 2048


def super_copies(path):
    """Offsets of the superblock copies that exist in the file (magic present)."""
    out = []
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        for off in SUPER_OFFSETS:
            if off + SUPER_SIZE > size:
                continue
            f.seek(off + 0x40)
            if f.read(8) == MAGIC:
                out.append(off)
    return out


def read_super(path, off=SUPER_INFO_OFFSET):
    """Dict of SUPER_FIELDS of the superblock at byte `off`."""
    with open(path, "rb") as f:
        f.seek(off)
        buf = f.read(SUPER_SIZE)
    if len(buf) < SUPER_SIZE:
        raise ValueError("%s: no superblock at %d (file too short)" % (path, off))
    return {k: struct.unpack_from(fmt, buf, o)[0] for k, (o, fmt) in SUPER_FIELDS.items()}


def patch_super(path, fields=None, raw=None, copies=None, fix=True):
    """Set superblock fields ({name: value}) and/or raw bytes ({offset: bytes}) in the
    given copies (default: every copy present), recomputing the checksum if fix."""
    copies = super_copies(path) if copies is None else copies
    with open(path, "r+b") as f:
        for off in copies:
            f.seek(off)
            buf = bytearray(f.read(SUPER_SIZE))
            for name, value in (fields or {}).items():
                o, fmt = SUPER_FIELDS[name]
                struct.pack_into(fmt, buf, o, value)
            for o, data in (raw or {}).items():
                buf[o:o + len(data)] = data
            if fix:
                fix_csum(buf)
            f.seek(off)
            f.write(buf)
    return copies


def devid_of(image):
    return read_super(image)["dev_devid"]


# ---------------------------------------------------------------- chunk map

PROFILE_BITS = {
    "RAID0": 1 << 3, "RAID1": 1 << 4, "DUP": 1 << 5, "RAID10": 1 << 6, "RAID5": 1 << 7,
    "RAID6": 1 << 8, "RAID1C3": 1 << 9, "RAID1C4": 1 << 10,
}

_CHUNK_RE = re.compile(r"key \(FIRST_CHUNK_TREE CHUNK_ITEM (\d+)\)")
_CHUNK_LEN_RE = re.compile(r"length (\d+) owner \d+ stripe_len (\d+) type (\S+)")
_NSTRIPES_RE = re.compile(r"num_stripes (\d+) sub_stripes (\d+)")
_STRIPE_RE = re.compile(r"stripe (\d+) devid (\d+) offset (\d+)")


class Chunk:
    def __init__(self, start):
        self.start = start
        self.length = 0
        self.stripe_len = 65536
        self.type = ""
        self.num_stripes = 0
        self.sub_stripes = 1
        self.stripes = []           # [(devid, physical offset)]

    @property
    def profile(self):
        for p in self.type.split("|"):
            if p in PROFILE_BITS:
                return p
        return "SINGLE"

    def to_json(self):
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, d):
        c = cls(d["start"])
        c.__dict__.update(d)
        c.stripes = [tuple(s) for s in d["stripes"]]
        return c

    def __repr__(self):
        return "<Chunk %d+%d %s %s>" % (self.start, self.length, self.type, self.stripes)


def parse_chunk_dump(text):
    """Chunks from `btrfs inspect-internal dump-tree -t chunk` output."""
    chunks = []
    cur = None
    for line in text.splitlines():
        m = _CHUNK_RE.search(line)
        if m:
            cur = Chunk(int(m.group(1)))
            chunks.append(cur)
            continue
        if cur is None:
            continue
        m = _CHUNK_LEN_RE.search(line)
        if m:
            cur.length, cur.stripe_len, cur.type = int(m.group(1)), int(m.group(2)), m.group(3)
            continue
        m = _NSTRIPES_RE.search(line)
        if m:
            cur.num_stripes, cur.sub_stripes = int(m.group(1)), int(m.group(2))
            continue
        m = _STRIPE_RE.search(line)
        if m:
            cur.stripes.append((int(m.group(2)), int(m.group(3))))
        elif line.startswith(("leaf ", "node ")) or "key (" in line:
            cur = None
    return chunks


def dump_tree(images, *args):
    """Text of `btrfs inspect-internal dump-tree --noscan ARGS IMAGES`."""
    argv = ["btrfs", "inspect-internal", "dump-tree", "--noscan"] + list(args) + list(images)
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, errors="replace", timeout=300)
    if p.returncode != 0 and not p.stdout:
        raise RuntimeError("%s failed: %s" % (" ".join(argv), p.stderr))
    return p.stdout


def chunk_map(images):
    chunks = parse_chunk_dump(dump_tree(images, "-t", "chunk"))
    if not chunks:
        raise RuntimeError("no chunk items found in the chunk tree of %s" % images)
    return chunks


def find_chunk(chunks, logical):
    for c in chunks:
        if c.start <= logical < c.start + c.length:
            return c
    raise KeyError("logical %d is in no chunk" % logical)


def map_logical(chunks, logical, length=1):
    """Where the bytes [logical, logical+length) live: a list of copies, each a
    (devid, physical) pair; for RAID5/6 only the data copy (parity is not listed).
    The range must not cross a stripe element (the kernel's btrfs_map_block rules)."""
    c = find_chunk(chunks, logical)
    off = logical - c.start
    if off + length > c.length:
        raise ValueError("range %d+%d crosses the end of %r" % (logical, length, c))
    prof = c.profile
    if prof in ("DUP", "RAID1", "RAID1C3", "RAID1C4") or (prof == "SINGLE" and c.num_stripes == 1):
        return [(dev, phys + off) for dev, phys in c.stripes]
    stripe_nr, in_stripe = divmod(off, c.stripe_len)
    if in_stripe + length > c.stripe_len:
        raise ValueError("range %d+%d crosses a stripe boundary of %r" % (logical, length, c))
    n = c.num_stripes
    if prof in ("RAID0", "SINGLE"):
        row, idx = divmod(stripe_nr, n)
        idxs = [idx]
    elif prof == "RAID10":
        factor = n // c.sub_stripes
        row, col = divmod(stripe_nr, factor)
        idxs = [col * c.sub_stripes + i for i in range(c.sub_stripes)]
    elif prof in ("RAID5", "RAID6"):
        data = n - (1 if prof == "RAID5" else 2)
        row, col = divmod(stripe_nr, data)
        idxs = [(row + col) % n]
    else:
        raise ValueError("unknown profile %s" % c.type)
    return [(c.stripes[i][0], c.stripes[i][1] + row * c.stripe_len + in_stripe) for i in idxs]


def map_parity(chunks, logical, length=1):
    """RAID5/6: [(devid, physical)] of the P (and Q) bytes covering the data range."""
    c = find_chunk(chunks, logical)
    nparity = {"RAID5": 1, "RAID6": 2}.get(c.profile)
    if not nparity:
        raise ValueError("%r has no parity" % c)
    off = logical - c.start
    stripe_nr, in_stripe = divmod(off, c.stripe_len)
    if in_stripe + length > c.stripe_len:
        raise ValueError("range %d+%d crosses a stripe boundary of %r" % (logical, length, c))
    n = c.num_stripes
    data = n - nparity
    row = stripe_nr // data
    return [(c.stripes[(row + data + i) % n][0], c.stripes[(row + data + i) % n][1]
             + row * c.stripe_len + in_stripe) for i in range(nparity)]


_FIEMAP_RE = re.compile(r"^\s*\d+:\s*(\d+)\.\.\s*(\d+):\s*(\d+)\.\.\s*(\d+):\s*(\d+):\s*(\d*)\s*(\S*)$")


def file_extents(path):
    """[(file offset, logical, length, flags)] in bytes, from `filefrag -v` (FIEMAP) on a
    kernel mount; for btrfs the "physical" column is the logical address."""
    out = _run(["filefrag", "-v", path])
    m = re.search(r"\((\d+) blocks? of (\d+) bytes\)", out)
    bs = int(m.group(2)) if m else 4096
    ext = []
    for line in out.splitlines():
        m = _FIEMAP_RE.match(line)
        if m:
            ext.append((int(m.group(1)) * bs, int(m.group(3)) * bs, int(m.group(5)) * bs,
                        m.group(7).split(",") if m.group(7) else []))
    return ext


_ROOT_KEY_RE = re.compile(r"key \((\S+) ROOT_ITEM (\d+)\)")
_ROOT_BYTENR_RE = re.compile(r"\bbytenr (\d+)\b.*")


def tree_roots(images):
    """{tree name or id (as dump-tree prints it): root block logical address}."""
    roots = {}
    cur = None
    for line in dump_tree(images, "-t", "root").splitlines():
        m = _ROOT_KEY_RE.search(line)
        if m:
            cur = m.group(1)
            continue
        m = _ROOT_BYTENR_RE.search(line)
        if m and cur is not None and "root_dirid" in line:
            roots.setdefault(cur, int(m.group(1)))
            cur = None
    return roots


# ---------------------------------------------------------------- tree blocks

_BLOCK_RE = re.compile(r"^(leaf|node) (\d+) (?:level (\d+) )?items (\d+) .*owner (\S+)")


def live_tree_blocks(images):
    """[(logical, level, owner)] of every tree block dump-tree reaches."""
    seen = {}
    for line in dump_tree(images).splitlines():
        m = _BLOCK_RE.match(line)
        if m:
            seen[int(m.group(2))] = (int(m.group(3) or 0), m.group(5))
    return [(bn, lvl, owner) for bn, (lvl, owner) in sorted(seen.items())]


def scan_tree_blocks(path, fsid, step=4096):
    """Physical offsets of step-aligned blocks whose header fsid is `fsid` (fallback)."""
    out = []
    skip = set(SUPER_OFFSETS)
    with open(path, "rb") as f:
        off = 0
        while True:
            f.seek(off)
            chunk = f.read(1 << 20)
            if not chunk:
                break
            for i in range(0, len(chunk) - 0x30, step):
                if chunk[i + 0x20:i + 0x30] == fsid and off + i not in skip:
                    out.append(off + i)
            off += len(chunk)
    return out


def read_at(path, off, n):
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(n)


def write_at(path, off, data):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)


def flip_bytes(path, off, n, rng=None):
    """XOR n bytes at off with non-zero values (so every byte changes)."""
    rng = rng or random.Random(off)
    old = read_at(path, off, n)
    new = bytes(b ^ rng.randint(1, 255) for b in old)
    write_at(path, off, new)
    return old


# ------------------------------------------------------------ image building

def _run(argv, **kw):
    kw.setdefault("timeout", 300)
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, **kw)
    if p.returncode != 0:
        raise RuntimeError("command failed (exit %d): %s\n%s%s" % (
            p.returncode, " ".join(argv), p.stdout, p.stderr))
    return p.stdout


def mkfs(images, *opts, size=128 << 20):
    for img in images:
        with open(img, "wb") as f:
            f.truncate(size)
    _run(["mkfs.btrfs", "-q", "-f"] + list(opts) + list(images))


def _rand_bytes(rng, n):
    return rng.getrandbits(8 * n).to_bytes(n, "little") if n else b""


def _text(rng, n):
    words = ["btrfs", "extent", "inode", "subvolume", "checksum", "chunk", "stripe",
             "leaf", "node", "generation", "transaction", "fuse", "\n"]
    out = []
    size = 0
    while size < n:
        w = rng.choice(words)
        out.append(w)
        size += len(w) + 1
    return (" ".join(out))[:n].encode()


def populate(root, rng, nfiles=40, bigdir=300, subvol=True, lzo_files=False):
    """A few dozen files of every kind below root (a kernel mount); returns nothing.
    Contents depend only on rng, so the same seed gives the same tree."""
    dirs = [root]
    for i in range(6):
        d = os.path.join(rng.choice(dirs), "dir%d" % i)
        os.mkdir(d)
        dirs.append(d)
    for i in range(nfiles):
        d = rng.choice(dirs)
        p = os.path.join(d, "file%03d" % i)
        kind = rng.choice(["tiny", "tiny", "text", "random", "random", "sparse", "empty"])
        if lzo_files and kind in ("text", "tiny"):
            open(p, "wb").close()
            subprocess.run(["btrfs", "property", "set", p, "compression", "lzo"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(p, "wb") as f:
            if kind == "tiny":
                f.write(_text(rng, rng.randint(1, 3000)))
            elif kind == "text":
                f.write(_text(rng, rng.randint(5000, 300000)))
            elif kind == "random":
                f.write(_rand_bytes(rng, rng.randint(4097, 200000)))
            elif kind == "sparse":
                for _ in range(3):
                    f.seek(rng.randint(0, 1 << 20))
                    f.write(_rand_bytes(rng, rng.randint(1, 9000)))
                f.truncate(rng.randint(1 << 20, 2 << 20))
        if rng.random() < 0.4:
            os.setxattr(p, "user.small%d" % i, _text(rng, rng.randint(0, 40)))
        if rng.random() < 0.15:
            os.setxattr(p, "user.big", _rand_bytes(rng, rng.randint(500, 3000)))
        if rng.random() < 0.2:
            os.link(p, os.path.join(rng.choice(dirs), "hardlink%03d" % i))
        if rng.random() < 0.1:
            os.chmod(p, rng.choice([0o600, 0o755, 0o4755, 0o1777, 0o000]))
    pre = os.path.join(root, "prealloc")
    with open(pre, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, 256 << 10)
        f.write(_text(rng, 5000))
    for i in range(8):
        target = "x" * rng.randint(1, 1500) if i % 3 == 0 else "file%03d" % rng.randrange(nfiles)
        os.symlink(target, os.path.join(rng.choice(dirs), "link%d" % i))
    os.mkfifo(os.path.join(root, "fifo"))
    os.mknod(os.path.join(root, "null"), 0o20644, os.makedev(1, 3))
    big = os.path.join(root, "bigdir")
    os.mkdir(big)
    for i in range(bigdir):
        name = "entry-%05d-%s" % (i, "n" * rng.randint(0, 120))
        with open(os.path.join(big, name), "wb") as f:
            f.write(b"%d\n" % i)
    os.setxattr(root, "user.rootattr", b"root")
    if subvol:
        sv = os.path.join(root, "subvol")
        _run(["btrfs", "subvolume", "create", sv])
        for i in range(10):
            with open(os.path.join(sv, "sfile%d" % i), "wb") as f:
                f.write(_text(rng, rng.randint(10, 20000)))
        _run(["btrfs", "subvolume", "snapshot", sv, os.path.join(root, "snap")])
        with open(os.path.join(sv, "after-snapshot"), "wb") as f:
            f.write(b"new\n")


# name -> (mkfs options, mount options, populate kwargs, seed)
BASES = {
    "n4k-single-zstd": (["-n", "4096", "-m", "single", "-d", "single"], "compress=zstd",
                        {}, 11),
    "n4k-dup-zlib-lzo": (["-n", "4096", "-m", "dup", "-d", "single"], "compress=zlib",
                         {"lzo_files": True}, 12),
    "n16k-single-lzo-holes": (["-n", "16384", "-m", "single", "-d", "single", "-O", "^no-holes"],
                              "compress-force=lzo", {"nfiles": 60, "bigdir": 800}, 13),
}
BASES_VERSION = 1


def default_cache():
    return os.path.join(REPO, "build", "hostile")


def build_base(name, outdir):
    """Build one base image (kernel driver) and its metadata JSON; returns the meta dict."""
    mkfs_opts, mount_opts, pop_kw, seed = BASES[name]
    img = os.path.join(outdir, name + ".img")
    tmp = img + ".tmp"
    mkfs([tmp], "-L", name, *mkfs_opts)
    with mounts.kernel_mount(tmp, options=mount_opts) as m:
        populate(m.path, random.Random(seed), **pop_kw)
    meta = describe_image([tmp])
    meta["name"] = name
    os.replace(tmp, img)
    meta["image"] = img
    with open(os.path.join(outdir, name + ".json"), "w") as f:
        json.dump(meta, f)
    return meta


def describe_image(images):
    """fsid, sizes, chunk map and live tree blocks (with their physical copies)."""
    sb = read_super(images[0])
    chunks = chunk_map(images)
    blocks = []
    for logical, level, owner in live_tree_blocks(images):
        try:
            copies = map_logical(chunks, logical, sb["nodesize"])
        except (KeyError, ValueError):
            continue
        blocks.append({"logical": logical, "level": level, "owner": owner,
                       "copies": [[d, p] for d, p in copies]})
    if not blocks and len(images) == 1:
        for off in scan_tree_blocks(images[0], sb["fsid"]):
            lg = struct.unpack("<Q", read_at(images[0], off + 0x30, 8))[0]
            blocks.append({"logical": lg, "level": read_at(images[0], off + 0x64, 1)[0],
                           "owner": "?", "copies": [[sb["dev_devid"], off]]})
    return {"fsid": sb["fsid"].hex(), "nodesize": sb["nodesize"],
            "sectorsize": sb["sectorsize"], "size": os.path.getsize(images[0]),
            "chunks": [c.to_json() for c in chunks], "blocks": blocks}


def base_images(cache=None):
    """{name: meta} of the base images, building the missing ones."""
    cache = os.path.join(cache or default_cache(), "bases-v%d" % BASES_VERSION)
    os.makedirs(cache, exist_ok=True)
    out = {}
    with open(os.path.join(cache, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)        # one builder at a time
        for name in BASES:
            js = os.path.join(cache, name + ".json")
            img = os.path.join(cache, name + ".img")
            if os.path.exists(js) and os.path.exists(img):
                with open(js) as f:
                    out[name] = json.load(f)
                out[name]["image"] = img
            else:
                out[name] = build_base(name, cache)
    return out


def copy_sparse(src, dst):
    _run(["cp", "--sparse=always", "--reflink=auto", src, dst])


# --------------------------------------------------------- seeded corruption

EXTREME64 = [0, 1, 4095, 4096, 65536, 1 << 31, (1 << 32) - 1, 1 << 32, (1 << 63) - 1,
             1 << 63, (1 << 64) - 4096, (1 << 64) - 1]
EXTREME32 = [0, 1, 17, 25, 33, 101, 4095, 4096, 4097, 16384, 65536, 1 << 31, (1 << 32) - 1]


def _pick_value(rng, cur, bits):
    choices = EXTREME64 if bits == 64 else EXTREME32
    r = rng.random()
    if r < 0.5:
        v = rng.choice(choices)
    elif r < 0.75:
        v = cur + rng.choice([-2, -1, 1, 2, 4096, -4096])
    else:
        v = rng.getrandbits(bits)
    return v % (1 << bits)


class Block:
    """One tree block copy loaded from an image, for editing."""

    def __init__(self, path, phys, nodesize):
        self.path, self.phys, self.nodesize = path, phys, nodesize
        self.buf = bytearray(read_at(path, phys, nodesize))

    def u(self, fmt, off):
        return struct.unpack_from(fmt, self.buf, off)[0]

    def put(self, fmt, off, v):
        struct.pack_into(fmt, self.buf, off, v)

    @property
    def nritems(self):
        return self.u("<I", 0x60)

    @property
    def level(self):
        return self.buf[0x64]

    def item_slots(self):
        """Offsets of the item headers (leaf) or key pointers (node) that fit."""
        size = KEY_PTR_SIZE if self.level else ITEM_SIZE
        n = min(self.nritems, (self.nodesize - HEADER_SIZE) // size)
        return [HEADER_SIZE + i * size for i in range(n)]

    def save(self, fix):
        if fix:
            fix_csum(self.buf)
        write_at(self.path, self.phys, bytes(self.buf))


def _mut_block_bytes(rng, blk):
    """Random bytes anywhere past the checksum (header, items, payload)."""
    n = rng.randint(1, 16)
    spots = []
    hi = HEADER_SIZE + max(1, len(blk.item_slots())) * ITEM_SIZE
    for _ in range(n):
        off = rng.randint(32, hi if rng.random() < 0.6 else blk.nodesize - 1)
        off = min(off, blk.nodesize - 1)
        blk.buf[off] = rng.getrandbits(8)
        spots.append(off)
    return "bytes at %s" % sorted(spots)


def _mut_header(rng, blk):
    field = rng.choice(["nritems", "nritems", "level", "level", "bytenr", "generation",
                        "owner", "flags", "fsid"])
    if field == "nritems":
        v = _pick_value(rng, blk.nritems, 32)
        blk.put("<I", 0x60, v)
    elif field == "level":
        v = rng.choice([0, 1, 2, 3, 7, 8, 9, 255, (blk.level + 1) % 256, (blk.level - 1) % 256])
        blk.buf[0x64] = v
    elif field == "fsid":
        v = rng.getrandbits(8)
        blk.buf[0x20 + rng.randrange(16)] = v
    else:
        off = {"bytenr": 0x30, "generation": 0x50, "owner": 0x58, "flags": 0x38}[field]
        v = _pick_value(rng, blk.u("<Q", off), 64)
        blk.put("<Q", off, v)
    return "header %s=%d" % (field, v)


def _mut_item(rng, blk, others):
    slots = blk.item_slots()
    if not slots:
        return _mut_header(rng, blk)
    i = rng.randrange(len(slots))
    s = slots[i]
    if blk.level == 0:
        field = rng.choice(["offset", "size", "offset", "size", "type", "objectid", "keyoff",
                            "swap"])
    else:
        field = rng.choice(["blockptr", "blockptr", "blockptr", "ptrgen", "type", "objectid",
                            "keyoff", "swap"])
    if field == "offset":
        v = _pick_value(rng, blk.u("<I", s + 17), 32)
        blk.put("<I", s + 17, v)
    elif field == "size":
        v = _pick_value(rng, blk.u("<I", s + 21), 32)
        blk.put("<I", s + 21, v)
    elif field == "type":
        v = rng.choice([0, 1, 12, 13, 24, 48, 54, 60, 72, 84, 96, 108, 128, 132, 144, 156,
                        168, 169, 176, 178, 180, 192, 198, 204, 216, 228, 230, 240, 248, 255])
        blk.buf[s + 8] = v
    elif field == "objectid":
        v = _pick_value(rng, blk.u("<Q", s), 64)
        blk.put("<Q", s, v)
    elif field == "keyoff":
        v = _pick_value(rng, blk.u("<Q", s + 9), 64)
        blk.put("<Q", s + 9, v)
    elif field == "blockptr":
        r = rng.random()
        own = blk.u("<Q", 0x30)
        if r < 0.3 and others:
            v = rng.choice(others)          # another live block: wrong level/owner, or a cycle
        elif r < 0.45:
            v = own                         # points at itself
        else:
            v = _pick_value(rng, blk.u("<Q", s + 17), 64)
        blk.put("<Q", s + 17, v)
    elif field == "ptrgen":
        v = _pick_value(rng, blk.u("<Q", s + 25), 64)
        blk.put("<Q", s + 25, v)
    else:   # swap two items' headers: breaks key order
        j = rng.randrange(len(slots))
        size = KEY_PTR_SIZE if blk.level else ITEM_SIZE
        a, b = bytes(blk.buf[s:s + size]), bytes(blk.buf[slots[j]:slots[j] + size])
        blk.buf[s:s + size], blk.buf[slots[j]:slots[j] + size] = b, a
        v = j
    return "item %d %s=%d" % (i, field, v)


def _mut_payload(rng, blk):
    """Damage one leaf item's payload (inode, dir entry, extent, xattr, root item...)."""
    slots = blk.item_slots()
    if blk.level != 0 or not slots:
        return _mut_item(rng, blk, [])
    s = rng.choice(slots)
    off, size = blk.u("<I", s + 17), blk.u("<I", s + 21)
    start = HEADER_SIZE + off
    if size == 0 or start + size > blk.nodesize:
        return _mut_block_bytes(rng, blk)
    key = "(%d %d %d)" % (blk.u("<Q", s), blk.buf[s + 8], blk.u("<Q", s + 9))
    spots = []
    for _ in range(rng.randint(1, 4)):
        r = rng.random()
        if r < 0.4 and size >= 8:
            p = start + rng.randrange(size - 7)
            blk.put("<Q", p, rng.choice(EXTREME64))
        elif r < 0.7 and size >= 2:
            p = start + rng.randrange(size - 1)
            blk.put("<H", p, rng.choice([0, 1, 255, 256, 4095, 65535]))
        else:
            p = start + rng.randrange(size)
            blk.buf[p] = rng.getrandbits(8)
        spots.append(p - start)
    return "payload of item key %s at %s" % (key, spots)


# item type -> [(field, offset in the payload, struct format or "bytes")]
_DIR_FIELDS = [("loc_objectid", 0, "<Q"), ("loc_type", 8, "B"), ("loc_offset", 9, "<Q"),
               ("data_len", 25, "<H"), ("name_len", 27, "<H"), ("type", 29, "B"),
               ("name", 30, "bytes")]
ITEM_FIELDS = {
    1: [("size", 16, "<Q"), ("nbytes", 24, "<Q"), ("nlink", 40, "<I"), ("mode", 52, "<I"),
        ("rdev", 56, "<Q"), ("flags", 64, "<Q"), ("atime_nsec", 120, "<I")],       # INODE_ITEM
    12: [("index", 0, "<Q"), ("name_len", 8, "<H"), ("name", 10, "bytes")],     # INODE_REF
    13: [("parent", 0, "<Q"), ("index", 8, "<Q"), ("name_len", 16, "<H")],     # INODE_EXTREF
    24: _DIR_FIELDS, 84: _DIR_FIELDS, 96: _DIR_FIELDS,         # XATTR_ITEM, DIR_ITEM, DIR_INDEX
    108: [("ram_bytes", 8, "<Q"), ("compression", 16, "B"), ("encryption", 17, "B"),
          ("other_encoding", 18, "<H"), ("type", 20, "B"), ("disk_bytenr", 21, "<Q"),
          ("disk_num_bytes", 29, "<Q"), ("offset", 37, "<Q"), ("num_bytes", 45, "<Q"),
          ("inline", 21, "bytes")],                                              # EXTENT_DATA
    128: [("csum", 0, "bytes")],                                                 # EXTENT_CSUM
    132: [("root_dirid", 168, "<Q"), ("bytenr", 176, "<Q"), ("flags", 208, "<Q"),
          ("refs", 216, "<I"), ("level", 238, "B"), ("generation", 160, "<Q")],  # ROOT_ITEM
    144: [("dirid", 0, "<Q"), ("sequence", 8, "<Q"), ("name_len", 16, "<H")],   # ROOT_REF
    156: [("dirid", 0, "<Q"), ("sequence", 8, "<Q"), ("name_len", 16, "<H")],   # ROOT_BACKREF
    216: [("devid", 0, "<Q"), ("total_bytes", 8, "<Q"), ("sector_size", 28, "<I")],  # DEV_ITEM
    228: [("length", 0, "<Q"), ("stripe_len", 16, "<Q"), ("type", 24, "<Q"),
          ("sector_size", 40, "<I"), ("num_stripes", 44, "<H"), ("sub_stripes", 46, "<H"),
          ("stripe0_devid", 48, "<Q"), ("stripe0_offset", 56, "<Q")],           # CHUNK_ITEM
}
_SMALL = {"B": [0, 1, 2, 3, 4, 5, 7, 8, 127, 128, 255],
          "<H": [0, 1, 2, 255, 256, 4095, 4096, 16384, 65535]}


def _leaf_items(blk):
    """[(slot offset, type, payload start, payload size)] of the items whose payload
    lies inside the block."""
    out = []
    if blk.level != 0:
        return out
    for s in blk.item_slots():
        off, size = blk.u("<I", s + 17), blk.u("<I", s + 21)
        start = HEADER_SIZE + off
        if start + size <= blk.nodesize:
            out.append((s, blk.buf[s + 8], start, size))
    return out


def _mut_field(rng, blk, others):
    """Set one known field of one item (inode, dir entry, file extent, root, chunk...)
    to a hostile value; the structure around it stays valid."""
    items = [it for it in _leaf_items(blk) if it[1] in ITEM_FIELDS]
    if not items:
        return _mut_item(rng, blk, others)
    s, typ, start, size = rng.choice(items)
    fields = [f for f in ITEM_FIELDS[typ]
              if f[1] + (1 if f[2] == "bytes" else struct.calcsize(f[2])) <= size]
    if not fields:
        return _mut_payload(rng, blk)
    name, off, fmt = rng.choice(fields)
    key = "(%d %d %d)" % (blk.u("<Q", s), typ, blk.u("<Q", s + 9))
    p = start + off
    if fmt == "bytes":
        spots = sorted(rng.randrange(off, size) for _ in range(rng.randint(1, 8)))
        for o in spots:
            blk.buf[start + o] = rng.getrandbits(8)
        return "item %s %s bytes at %s" % (key, name, spots)
    cur = blk.u(fmt, p)
    if fmt in _SMALL and rng.random() < 0.7:
        v = rng.choice(_SMALL[fmt] + [(cur + 1) % 256 if fmt == "B" else (cur + 1) % 65536])
    elif name in ("disk_bytenr", "bytenr") and others and rng.random() < 0.4:
        v = rng.choice(others)
    elif name == "mode" and rng.random() < 0.5:
        v = (cur & 0o7777) | rng.choice([0o040000, 0o100000, 0o120000, 0o020000, 0o060000,
                                         0o010000, 0o140000, 0o170000, 0])
    else:
        v = _pick_value(rng, cur, struct.calcsize(fmt) * 8)
    blk.put(fmt, p, v)
    return "item %s %s=%d" % (key, name, v)


def _mut_transplant(rng, meta, img, target, nodesize):
    """Copy another live block over this one, rewriting its bytenr (valid checksum):
    a block appears where it does not belong (wrong owner/level, possible cycle)."""
    src = rng.choice(meta["blocks"])
    data = bytearray(read_at(img, src["copies"][0][1], nodesize))
    struct.pack_into("<Q", data, 0x30, target["logical"])
    fix_csum(data)
    for _dev, phys in target["copies"]:
        write_at(img, phys, bytes(data))
    return "transplant block %d over %d" % (src["logical"], target["logical"])


def _mut_tree_block(rng, meta, img):
    nodesize = meta["nodesize"]
    target = rng.choice(meta["blocks"])
    others = [b["logical"] for b in meta["blocks"]]
    kind = rng.choices(["bytes", "bytes-fixed", "header", "item", "payload", "field",
                        "transplant"], [1, 3, 2, 4, 3, 5, 1])[0]
    where = "block %d (level %d, %s)" % (target["logical"], target["level"], target["owner"])
    if kind == "transplant":
        return where + ": " + _mut_transplant(rng, meta, img, target, nodesize)
    copies = target["copies"]
    if len(copies) > 1 and rng.random() < 0.5:
        copies = [rng.choice(copies)]
        where += " copy at %d only" % copies[0][1]
    fix = kind != "bytes"
    descr = None
    sub_seed = rng.getrandbits(64)      # the same damage on every chosen copy
    for _dev, phys in copies:
        blk = Block(img, phys, nodesize)
        r = random.Random(sub_seed)
        if kind in ("bytes", "bytes-fixed"):
            d = _mut_block_bytes(r, blk)
        elif kind == "header":
            d = _mut_header(r, blk)
        elif kind == "item":
            d = _mut_item(r, blk, others)
        elif kind == "field":
            d = _mut_field(r, blk, others)
        else:
            d = _mut_payload(r, blk)
        blk.save(fix)
        descr = descr or d
    return "%s: %s%s" % (where, descr, " (checksum fixed)" if fix else "")


SUPER_MUTABLE = ["root", "chunk_root", "log_root", "total_bytes", "bytes_used",
                 "root_dir_objectid", "num_devices", "sectorsize", "nodesize", "leafsize",
                 "stripesize", "sys_chunk_array_size", "chunk_root_generation",
                 "compat_ro_flags", "incompat_flags", "csum_type", "root_level",
                 "chunk_root_level", "log_root_level", "dev_devid", "dev_total_bytes",
                 "generation", "flags", "nr_global_roots"]


def _mut_super(rng, meta, img):
    copies = super_copies(img)
    if len(copies) > 1 and rng.random() < 0.6:
        copies = copies[:1]
        which = "primary"
    else:
        which = "all copies"
    sb = read_super(img)
    if rng.random() < 0.3:
        # damage the system chunk array (chunk items that bootstrap the chunk tree)
        n = sb["sys_chunk_array_size"] or 1
        raw = {}
        for _ in range(rng.randint(1, 4)):
            o = rng.randrange(min(n, SYS_CHUNK_ARRAY_MAX))
            if rng.random() < 0.5 and o + 8 <= SYS_CHUNK_ARRAY_MAX:
                raw[SYS_CHUNK_ARRAY + o] = struct.pack("<Q", rng.choice(EXTREME64))
            else:
                raw[SYS_CHUNK_ARRAY + o] = bytes([rng.getrandbits(8)])
        patch_super(img, raw=raw, copies=copies)
        return "superblock (%s): sys_chunk_array at %s" % (
            which, sorted(k - SYS_CHUNK_ARRAY for k in raw))
    field = rng.choice(SUPER_MUTABLE)
    off, fmt = SUPER_FIELDS[field]
    bits = struct.calcsize(fmt) * 8
    if field == "incompat_flags":
        v = sb[field] | (1 << rng.choice([13, 14, 15, 16, 20, 40, 63]))
    elif field == "log_root":
        v = rng.choice([b["logical"] for b in meta["blocks"]] + EXTREME64)
    elif field in ("root", "chunk_root"):
        v = rng.choice([b["logical"] for b in meta["blocks"]] + EXTREME64)
    elif field == "csum_type":
        v = rng.choice([1, 2, 3, 4, 255, 65535])
    elif bits == 8:
        v = rng.choice([0, 1, 2, 7, 8, 9, 255])
    else:
        v = _pick_value(rng, sb[field], bits)
    patch_super(img, fields={field: v}, copies=copies)
    return "superblock (%s): %s=%d (checksum fixed)" % (which, field, v)


def _mut_truncate(rng, meta, img):
    size = os.path.getsize(img)
    n = rng.randint(SUPER_INFO_OFFSET + SUPER_SIZE, size - 1)
    if rng.random() < 0.5:
        n -= n % 4096
    with open(img, "r+b") as f:
        f.truncate(n)
    return "truncated to %d bytes" % n


def _mut_data(rng, meta, img):
    data = [Chunk.from_json(c) for c in meta["chunks"] if "DATA" in c["type"]]
    if not data:
        return _mut_truncate(rng, meta, img)
    c = rng.choice(data)
    dev, phys = rng.choice(c.stripes)
    off = phys + rng.randrange(min(c.length, 4 << 20))
    n = rng.randint(1, 64)
    flip_bytes(img, off, n, rng)
    return "data bytes %d+%d" % (off, n)


EXTENT_CSUM_KEY = (1 << 64) - 10       # BTRFS_EXTENT_CSUM_OBJECTID


def _leaf_copies(meta, img, owner):
    """(block meta, [Block per copy]) of every live leaf of one tree."""
    out = []
    for b in meta["blocks"]:
        if b["level"] == 0 and b["owner"] == owner:
            out.append((b, [Block(img, phys, meta["nodesize"]) for _d, phys in b["copies"]]))
    return out


def compressed_extents(meta, img):
    """[(disk_bytenr, disk_num_bytes, compression type)] of the regular compressed
    extents referenced from the fs trees' leaves."""
    out = set()
    for b in meta["blocks"]:
        if b["level"] != 0 or not (b["owner"] == "FS_TREE" or b["owner"].isdigit()):
            continue
        blk = Block(img, b["copies"][0][1], meta["nodesize"])
        for _s, typ, start, size in _leaf_items(blk):
            if typ != 108 or size < 53:
                continue
            comp, etype = blk.buf[start + 16], blk.buf[start + 20]
            bytenr, nbytes = blk.u("<Q", start + 21), blk.u("<Q", start + 29)
            if comp and etype == 1 and bytenr:
                out.add((bytenr, nbytes, comp))
    return sorted(out)


def _fix_data_csums(meta, img, sectors, chunks):
    """Store the crc32c of each data sector (logical address) in the csum tree leaf that
    covers it, and fix that leaf's checksum in every copy; returns the sectors fixed."""
    sec = meta["sectorsize"]
    fixed = []
    for b, copies in _leaf_copies(meta, img, "CSUM_TREE"):
        touched = False
        for s, typ, start, size in _leaf_items(copies[0]):
            if typ != 128 or copies[0].u("<Q", s) != EXTENT_CSUM_KEY:
                continue
            first = copies[0].u("<Q", s + 9)
            for lg in sectors:
                idx = (lg - first) // sec
                if lg < first or idx * 4 + 4 > size:
                    continue
                _dev, phys = map_logical(chunks, lg, sec)[0]
                crc = crc32c(read_at(img, phys, sec))
                for blk in copies:
                    blk.put("<I", start + idx * 4, crc)
                touched = True
                fixed.append(lg)
        if touched:
            for blk in copies:
                blk.save(True)
    return fixed


def _mut_compressed_data(rng, meta, img):
    """Damage the on-disk bytes of a compressed extent and recompute their data checksums,
    so the damaged stream reaches the decompressor (zlib, LZO framing, zstd)."""
    exts = compressed_extents(meta, img)
    if not exts:
        return _mut_data(rng, meta, img)
    bytenr, nbytes, comp = rng.choice(exts)
    chunks = [Chunk.from_json(c) for c in meta["chunks"]]
    sec = meta["sectorsize"]
    spots = []
    for _ in range(rng.randint(1, 6)):
        r = rng.random()
        if r < 0.3:
            o = rng.randrange(min(nbytes, 16))                   # stream / segment header
        elif r < 0.5 and nbytes > sec:
            o = rng.randrange(1, nbytes // sec + 1) * sec - rng.randrange(0, 8)  # LZO segments
            o = max(0, min(o, nbytes - 1))
        else:
            o = rng.randrange(nbytes)
        spots.append(o)
        for dev, phys in map_logical(chunks, bytenr + o, 1):
            write_at(img, phys, bytes([rng.getrandbits(8)]))
    sectors = sorted({(bytenr + o) // sec * sec for o in spots})
    fixed = _fix_data_csums(meta, img, sectors, chunks)
    return "compressed extent %d+%d (type %d): bytes at %s, data csums of %d sectors fixed" % (
        bytenr, nbytes, comp, sorted(spots), len(fixed))


MUTATORS = [(_mut_tree_block, 12), (_mut_super, 3), (_mut_truncate, 1), (_mut_data, 1),
            (_mut_compressed_data, 3)]


def make_case(seed, bases, out):
    """Write the damaged image of `seed` to out; returns a one-line description."""
    rng = random.Random(seed)
    name = rng.choice(sorted(bases))
    meta = bases[name]
    copy_sparse(meta["image"], out)
    fns = rng.choices([m for m, _ in MUTATORS], [w for _, w in MUTATORS],
                      k=rng.choice([1, 1, 1, 2, 3]))
    fns.sort(key=lambda fn: fn is _mut_truncate)     # truncation last: the others read blocks
    steps = [fn(rng, meta, out) for fn in fns]
    return "seed %d base %s: %s" % (seed, name, "; ".join(steps))


# ----------------------------------------------------------------- running

def sanitizer_lines(text):
    return [ln for ln in text.splitlines() if any(p in ln for p in SANITIZER_PATTERNS)]


READ_CAP = 64 << 20        # bytes read per file: a damaged i_size may claim exabytes of holes
MAX_ENTRIES = 200000


def _touch_entry(path, st, errors):
    """Everything a reader does with one entry: readlink, xattrs, read (capped)."""
    def err(what, e):
        errors.append("%s: %s: %s" % (path, what, e))
    if stat_mod.S_ISLNK(st.st_mode):
        try:
            os.readlink(path)
        except OSError as e:
            err("readlink", e)
    try:
        for name in os.listxattr(path, follow_symlinks=False):
            try:
                os.getxattr(path, name, follow_symlinks=False)
            except OSError as e:
                err("getxattr " + name, e)
    except OSError as e:
        err("listxattr", e)
    if stat_mod.S_ISREG(st.st_mode):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as e:
            err("open", e)
            return
        try:
            left = READ_CAP
            while left > 0:
                b = os.read(fd, min(left, 1 << 20))
                if not b:
                    break
                left -= len(b)
        except OSError as e:
            err("read", e)
        finally:
            os.close(fd)


def walk_main(mp):
    """Child process: walk the tree (lstat, readdir, readlink, xattrs, reading every file
    up to READ_CAP), print a JSON summary; errors are counted, not fatal.  A directory
    inode is entered once, so a damaged image cannot make the walk endless."""
    errors = []
    count = 0
    seen = set()
    stack = [mp]
    try:
        st = os.lstat(mp)
        _touch_entry(mp, st, errors)
        seen.add(st.st_ino)
    except OSError as e:
        print(json.dumps({"entries": 0, "errors": 1, "first_errors": [str(e)]}))
        return 0
    while stack and count < MAX_ENTRIES:
        d = stack.pop()
        try:
            names = sorted(os.listdir(d))
        except OSError as e:
            errors.append("%s: readdir: %s" % (d, e))
            continue
        for name in names:
            path = os.path.join(d, name)
            count += 1
            try:
                st = os.lstat(path)
            except OSError as e:
                errors.append("%s: lstat: %s" % (path, e))
                continue
            _touch_entry(path, st, errors)
            if stat_mod.S_ISDIR(st.st_mode) and st.st_ino not in seen:
                seen.add(st.st_ino)
                stack.append(path)
    print(json.dumps({"entries": count + 1, "errors": len(errors),
                      "first_errors": errors[:5], "capped": bool(stack)}))
    return 0


def _stacks(pid):
    """All thread backtraces of a (hung) process, via gdb; '' if not possible."""
    if not shutil.which("gdb"):
        return ""
    try:
        p = subprocess.run(["gdb", "-p", str(pid), "-batch", "-nx", "-ex",
                            "thread apply all bt 20"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           errors="replace", timeout=30)
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith(("#", "Thread"))]
        return "\n".join(lines[:200])
    except (subprocess.TimeoutExpired, OSError):
        return ""


def abort_fuse_connection(mp):
    """Abort the FUSE connection of mountpoint mp (releases processes stuck in requests
    to a hung daemon: killing them is not enough once a request was sent).  mp must
    be a real path already: resolving it would itself hang."""
    ctl = "/sys/fs/fuse/connections"
    if os.path.isdir(ctl) and mounts.mount_fstype(ctl) != "fusectl":
        subprocess.run(["mount", "-t", "fusectl", "none", ctl], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and fields[4] == mp:
                minor = fields[2].split(":")[1]
                try:
                    with open("/sys/fs/fuse/connections/%s/abort" % minor, "w") as a:
                        a.write("1")
                except OSError:
                    pass


class Verdict:
    """Outcome of one run: ok (walked), refused (clean refusal), or a failure."""

    def __init__(self):
        self.status = None       # "mounted", "refused", "FAIL"
        self.problems = []
        self.output = ""
        self.walk = None
        self.returncode = None
        self.seconds = 0.0

    @property
    def failed(self):
        return bool(self.problems)

    def report(self, what, limit=6000):
        out = self.output if len(self.output) <= limit else \
            "[...]\n" + self.output[-limit:]
        return "%s\n  problems: %s\n  exit status: %s\n  walk: %s\n  daemon output:\n%s" % (
            what, "; ".join(self.problems), self.returncode, self.walk,
            "    " + out.replace("\n", "\n    "))


def run_image(binary, images, options="ro", timeout=20.0, env_extra=None):
    """Mount images with `binary -f`, walk everything in a child process (limit:
    `timeout` seconds for mount + walk), unmount, and judge (see module doc)."""
    env = dict(os.environ)
    env.update(SANITIZER_ENV)
    env.update(env_extra or {})
    v = Verdict()
    t0 = time.monotonic()
    mnt = None
    try:
        with mounts.fuse_mount(binary, images, options=options, timeout=timeout,
                               check_exit=False, env=env) as mnt:
            v.status = "mounted"
            left = max(1.0, timeout - (time.monotonic() - t0))
            walker = subprocess.Popen([PYTHON, os.path.abspath(__file__), "walk", mnt.path],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
            try:
                out, err = walker.communicate(timeout=left)
                try:
                    v.walk = json.loads(out.strip().splitlines()[-1])
                except (ValueError, IndexError):
                    v.problems.append("walker failed: %s" % (err.strip()[-2000:] or out))
            except subprocess.TimeoutExpired:
                v.problems.append("HANG: mount + walk did not finish within %.0fs" % timeout)
                st = _stacks(mnt.proc.pid) if mnt.proc else ""
                if st:
                    v.problems.append("daemon threads:\n" + st)
                abort_fuse_connection(mnt.path)
                if mnt.proc:
                    try:
                        os.kill(mnt.proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                walker.kill()
                try:
                    walker.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    v.problems.append("walker pid %d stuck even after aborting the connection"
                                      % walker.pid)
    except mounts.MountError as e:
        v.status = "refused"
        v.output = str(e)
        m = re.search(r"exited with status (-?\d+)", v.output)
        if m:
            v.returncode = int(m.group(1))
        elif "did not mount" in v.output:
            v.problems.append("HANG: no mount and no exit within %.0fs" % timeout)
    v.seconds = time.monotonic() - t0
    if mnt is not None:
        v.output = mnt.stderr_text(limit=1 << 20)
        v.returncode = mnt.returncode
    judge(v, killed_by_us=any(p.startswith("HANG") for p in v.problems))
    return v


def judge(v, killed_by_us=False):
    san = sanitizer_lines(v.output)
    if san:
        v.problems.append("sanitizer report: " + san[0].strip())
    rc = v.returncode
    if rc is not None and rc < 0 and not killed_by_us:
        v.problems.append("daemon killed by signal %s" % signal.Signals(-rc).name)
    if v.status == "refused" and not killed_by_us:
        if rc == 0:
            v.problems.append("daemon exited with status 0 without mounting")
        body = v.output.split("output:", 1)[-1].strip()
        if not body:
            v.problems.append("refused without any message")


def main(argv):
    if len(argv) >= 2 and argv[0] == "walk":
        return walk_main(argv[1])
    if argv and argv[0] == "bases":
        b = base_images(argv[1] if len(argv) > 1 else None)
        for name, m in sorted(b.items()):
            print("%s: %s (%d live tree blocks)" % (name, m["image"], len(m["blocks"])))
        return 0
    if len(argv) >= 3 and argv[0] == "case":
        b = base_images(argv[3] if len(argv) > 3 else None)
        print(make_case(int(argv[1]), b, argv[2]))
        return 0
    if len(argv) >= 2 and argv[0] == "run":
        binary = argv[2] if len(argv) > 2 else os.environ.get(
            "BTRFS_FUSE_ASAN", os.path.join(REPO, "build-asan", "btrfs-fuse"))
        b = base_images()
        with tempfile.TemporaryDirectory(prefix="hostile-") as d:
            img = os.path.join(d, "case.img")
            what = make_case(int(argv[1]), b, img)
            v = run_image(binary, [img])
            print(v.report(what) if v.failed else "%s\n  ok: %s %s" % (what, v.status, v.walk))
        return 1 if v.failed else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
