"""Tests of btrfs-fuse-inspect (binary: env BTRFS_FUSE_INSPECT, default ./btrfs-fuse-inspect).

* dump-tree parity: for images made here (default mkfs, -O ^no-holes with 4 KiB nodes, -O ^skinny-metadata,
  --csum xxhash, compressed data, RAID1 on two devices, RAID5 on three, subvolumes and snapshots) the text of
  `btrfs-fuse-inspect dump-tree` and of `btrfs inspect-internal dump-tree` are both parsed into
  (tree, block, slot, key, fields) tuples, which must be equal for every tree; --json must carry the same keys.
* map: for every regular file written, the physical bytes that `map --json` names (decompressed where
  needed) must be the file's content on every mirror, and the checksums must verify; a flipped data byte must
  be reported as a mismatch on exactly that mirror.
* tree-graph / diff-gen: SVG well formed (xmllint) and naming the blocks it should; diff-gen classifies a
  one-file change as the kernel makes it (COWed fs-tree and root-tree blocks, shared chunk tree).
* hostile: seeded damaged images (random bytes overwritten in live tree blocks, plus the shared hostile
  generator's cases) run through every subcommand under the ASan+UBSan build: no crash, no sanitizer report,
  no hang, and --json output still parses.

Images are built once per session in a temporary directory with mkfs.btrfs and kernel loop mounts.
"""

import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import zlib

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "lib"))
import hostile  # noqa: E402  (tests/lib)


def _binary(env, default):
    p = os.environ.get(env, default)
    return p if os.path.isabs(p) else os.path.join(REPO, p)


BIN = _binary("BTRFS_FUSE_INSPECT", "btrfs-fuse-inspect")
ASAN_BIN = _binary("BTRFS_FUSE_INSPECT_ASAN", "build-asan/btrfs-fuse-inspect")
TIMEOUT = 120
HOSTILE_SEEDS = int(os.environ.get("BTRFS_FUSE_INSPECT_HOSTILE", "36"))


def run(argv, timeout=TIMEOUT, check=True, env=None):
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout, env=env)
    if check and p.returncode != 0:
        raise AssertionError("command failed (exit %d): %s\n%s" % (
            p.returncode, " ".join(argv), p.stderr.decode(errors="replace")[-3000:]))
    return p


# ------------------------------------------------------------------ images

class Image:
    def __init__(self, name, paths, files, csum="crc32c"):
        self.name, self.paths, self.files, self.csum = name, paths, files, csum


def _mount(paths, mp, opts):
    loops = []
    try:
        for p in paths:
            loops.append(run(["losetup", "-f", "--show", p]).stdout.decode().strip())
        if len(loops) > 1:
            run(["btrfs", "device", "scan"] + loops)
        run(["mount", "-t", "btrfs"] + (["-o", opts] if opts else []) + [loops[0], mp])
    except Exception:
        for lo in loops:
            subprocess.run(["losetup", "-d", lo])
        raise
    return loops


def _umount(mp, loops):
    run(["umount", mp])
    for lo in loops:
        run(["losetup", "-d", lo])


def _write(files, root, rel, data):
    with open(os.path.join(root, rel), "wb") as f:
        f.write(data)
    files[rel] = data


def populate(root, rng, files, subvols=False, many=300):
    """Files of every extent kind: inline, regular, compressible, sparse (holes), prealloc, hard links,
    symlinks, xattrs, a big directory; with subvols also subvolumes and snapshots."""
    _write(files, root, "tiny", b"hello\n")
    _write(files, root, "random", rng.randbytes(300000))
    _write(files, root, "text", (b"the quick brown fox %d\n" * 1) * 1 + b"".join(
        b"line %d of some compressible text\n" % i for i in range(20000)))
    sparse = bytearray(3 << 20)
    for off in (0, 1 << 20, (3 << 20) - 5000):
        blob = rng.randbytes(4000)
        sparse[off:off + len(blob)] = blob
    _write(files, root, "sparse", bytes(sparse))
    with open(os.path.join(root, "prealloc"), "wb") as f:
        os.posix_fallocate(f.fileno(), 0, 256 << 10)
        f.write(b"x" * 5000)
    files["prealloc"] = b"x" * 5000 + bytes((256 << 10) - 5000)
    os.link(os.path.join(root, "tiny"), os.path.join(root, "tiny-link"))
    os.symlink("tiny", os.path.join(root, "symlink"))
    os.setxattr(os.path.join(root, "tiny"), "user.colour", b"blue")
    os.mkdir(os.path.join(root, "dir"))
    for i in range(many):
        _write(files, root, "dir/f%04d" % i, b"%d\n" % i * rng.randint(1, 40))
    if subvols:
        run(["btrfs", "subvolume", "create", os.path.join(root, "sv")])
        _write(files, root, "sv/inner", rng.randbytes(70000))
        run(["btrfs", "subvolume", "snapshot", os.path.join(root, "sv"), os.path.join(root, "snap")])
        files["snap/inner"] = files["sv/inner"]
        _write(files, root, "snap/changed", b"after the snapshot\n")
        run(["btrfs", "subvolume", "snapshot", "-r", root, os.path.join(root, "ro-snap")])


SPECS = {
    # name: (mkfs options, number of devices, mount options, populate kwargs)
    "default": ([], 1, "", {}),
    "holes-4k": (["-O", "^no-holes", "-n", "4096"], 1, "", {"many": 600}),
    "fat-metadata": (["-O", "^skinny-metadata"], 1, "", {}),
    "xxhash": (["--csum", "xxhash"], 1, "", {}),
    "compressed": ([], 1, "compress-force=zlib", {}),
    "raid1": (["-d", "raid1", "-m", "raid1"], 2, "", {}),
    "raid5": (["-d", "raid5", "-m", "raid1"], 3, "", {}),
    "subvols": ([], 1, "", {"subvols": True}),
}


@pytest.fixture(scope="session")
def images():
    if os.geteuid() != 0:
        pytest.fail("the images are made with loop mounts: run as root", pytrace=False)
    if not os.path.exists(BIN):
        pytest.fail("%s is missing: run make" % BIN, pytrace=False)
    tmp = tempfile.mkdtemp(prefix="bf-inspect-")
    mp = os.path.join(tmp, "mnt")
    os.mkdir(mp)
    out = {}
    try:
        for seed, (name, (mkfs, ndev, opts, kw)) in enumerate(sorted(SPECS.items())):
            paths = [os.path.join(tmp, "%s-%d.img" % (name, i)) for i in range(ndev)]
            for p in paths:
                with open(p, "wb") as f:
                    f.truncate(320 << 20)
            run(["mkfs.btrfs", "-q", "-f"] + mkfs + paths)
            files = {}
            loops = _mount(paths, mp, opts)
            try:
                populate(mp, random.Random(seed), files, **kw)
            finally:
                _umount(mp, loops)
            out[name] = Image(name, paths, files, "xxhash" if "xxhash" in mkfs else "crc32c")
        out["log-tree"] = _log_tree_image(out["default"], tmp, mp)
        yield out
    finally:
        subprocess.run(["umount", mp], stderr=subprocess.DEVNULL)
        shutil.rmtree(tmp, ignore_errors=True)


def _log_tree_image(base, tmp, mp):
    """An image as a crash right after an fsync leaves it: the superblock names a log tree. Made by copying
    the image file while it is still mounted, after the fsync (the copy sees what the loop device wrote)."""
    work, crashed = os.path.join(tmp, "log-work.img"), os.path.join(tmp, "log-tree.img")
    hostile.copy_sparse(base.paths[0], work)
    loops = _mount([work], mp, "commit=300")
    try:
        os.sync()
        fd = os.open(os.path.join(mp, "fsynced"), os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, b"fsynced but not committed\n" * 50)
        os.fsync(fd)
        os.close(fd)
        hostile.copy_sparse(work, crashed)
    finally:
        _umount(mp, loops)
    return Image("log-tree", [crashed], {})


# ---------------------------------------------------------- dump-tree parser

HEADER_RE = re.compile(r"^(root tree|chunk tree|log root tree|block group tree|.+ tree key \(.*\) )$")
BLOCK_RE = re.compile(r"^(leaf|node) (\d+) (?:level (\d+) )?items (\d+) free space (-?\d+) generation (\d+) "
                      r"owner (\S+)$")
ITEM_RE = re.compile(r"^\titem (\d+) key (\(.*\)) itemoff (\d+) itemsize (\d+)$")
PTR_RE = re.compile(r"^\tkey (\(.*\)) block (\d+) gen (\d+)$")
TRAILER_RE = re.compile(r"^(total bytes|bytes used|uuid) ")


def parse_dump(text):
    """dump-tree text -> list of tuples: ("block", tree, header...), ("item", tree, block, slot, key, off,
    size, payload lines), ("ptr", tree, block, key, blockptr, gen). Unknown top-level lines fail."""
    out, tree, block, item = [], None, None, None
    for line in text.split("\n"):
        if line.startswith("btrfs-progs v") or line == "":
            continue
        if line.startswith("\t\t"):
            assert item is not None, "payload line outside an item: %r" % line
            item[-1].append(line.strip())
            continue
        m = ITEM_RE.match(line)
        if m:
            item = ["item", tree, block, int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4)), []]
            out.append(item)
            continue
        m = PTR_RE.match(line)
        if m:
            item = None
            out.append(("ptr", tree, block, m.group(1), int(m.group(2)), int(m.group(3))))
            continue
        m = BLOCK_RE.match(line)
        if m:
            item, block = None, int(m.group(2))
            out.append(("block", tree) + m.groups())
            continue
        if HEADER_RE.match(line):
            item, tree = None, line.strip()
            continue
        if re.match(r"^(leaf|node) \d+ flags |^fs uuid |^chunk uuid ", line):
            out.append(("hdr", tree, block, line))
            continue
        if TRAILER_RE.match(line):
            out.append(("trailer", line))
            continue
        raise AssertionError("unrecognised dump-tree line: %r" % line)
    return [tuple(x[:-1]) + (tuple(x[-1]),) if x[0] == "item" else tuple(x) for x in out]


def first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return "entry %d:\n  progs: %r\n  inspect: %r" % (i, x, y)
    return "lengths differ: progs %d entries, inspect %d" % (len(a), len(b))


def progs_dump(paths, *args):
    return run(["btrfs", "inspect-internal", "dump-tree"] + list(args) + paths).stdout.decode(
        "utf-8", "surrogateescape")


def inspect_dump(paths, *args):
    return run([BIN, "dump-tree"] + list(args) + paths).stdout.decode("utf-8", "surrogateescape")


@pytest.mark.parametrize("name", sorted(SPECS))
def test_dump_tree_parity_all_trees(images, name):
    img = images[name]
    want, got = parse_dump(progs_dump(img.paths)), parse_dump(inspect_dump(img.paths))
    assert sum(1 for x in want if x[0] == "item") > 50
    assert want == got, "%s: %s" % (name, first_difference(want, got))


@pytest.mark.parametrize("tree", ["root", "chunk", "extent", "dev", "fs", "csum", "uuid", "free-space"])
def test_dump_tree_parity_single_tree(images, tree):
    img = images["subvols"]
    progs_tree = {"free-space": "free_space"}.get(tree, tree)
    want, got = parse_dump(progs_dump(img.paths, "-t", progs_tree)), parse_dump(inspect_dump(img.paths, "-t", tree))
    assert want and want == got, first_difference(want, got)


def test_dump_tree_parity_log_tree(images):
    img = images["log-tree"]
    assert hostile.read_super(img.paths[0])["log_root"], "the image should have a log tree"
    for args in ([], ["-t", "log"]):
        want = parse_dump(progs_dump(img.paths, *[a.replace("log", "tree_log") for a in args]))
        got = parse_dump(inspect_dump(img.paths, *args))
        assert any(x[0] == "item" and x[1] == "log root tree" for x in got)
        assert want == got, first_difference(want, got)


def test_dump_tree_parity_subvolume_ids(images):
    img = images["subvols"]
    for tid in ("256", "257", "258"):
        want, got = parse_dump(progs_dump(img.paths, "-t", tid)), parse_dump(inspect_dump(img.paths, "-t", tid))
        assert want and want == got, "tree %s: %s" % (tid, first_difference(want, got))


def test_dump_tree_json_matches_text(images):
    img = images["holes-4k"]
    text = parse_dump(inspect_dump(img.paths))
    blocks = json.loads(inspect_dump(img.paths, "--json"))
    items = [(b["bytenr"], it["slot"], it["key"]["text"], it["itemoff"], it["itemsize"])
             for b in blocks if b.get("kind") == "leaf" for it in b["items"]]
    want = [(x[2], x[3], x[4], x[5], x[6]) for x in text if x[0] == "item"]
    assert items == want
    assert any(b.get("level", 0) > 0 for b in blocks), "a 4 KiB-node image should have internal nodes"
    inodes = [it for b in blocks if b.get("kind") == "leaf" for it in b["items"] if it["key"]["type"] == 1]
    assert inodes and all("mode" in it and "size" in it for it in inodes)


def test_dump_tree_block_option(images):
    img = images["default"]
    text = inspect_dump(img.paths, "-t", "fs")
    bytenr = int(re.search(r"^(?:leaf|node) (\d+) ", text, re.M).group(1))
    want = parse_dump(progs_dump(img.paths, "-b", str(bytenr)))
    got = parse_dump(inspect_dump(img.paths, "--block", str(bytenr)))
    assert want == got, first_difference(want, got)


# -------------------------------------------------------------- dump-super

def test_dump_super_all_copies(images):
    img = images["default"]
    out = run([BIN, "dump-super", "--all-copies", img.paths[0]]).stdout.decode()
    assert out.count("valid: yes") == 2          # 64 KiB and 64 MiB copies fit in 320 MiB
    assert "incompat_flags" in out and "no-holes" in out and "SYSTEM|DUP" in out
    js = json.loads(run([BIN, "dump-super", "--json", img.paths[0]]).stdout)
    progs = run(["btrfs", "inspect-internal", "dump-super", img.paths[0]]).stdout.decode()
    assert js[0]["generation"] == int(re.search(r"^generation\s+(\d+)", progs, re.M).group(1))
    assert js[0]["root"] == int(re.search(r"^root\s+(\d+)", progs, re.M).group(1))


def test_dump_super_bad_primary(images, tmp_path):
    img = images["default"]
    copy = str(tmp_path / "bad.img")
    hostile.copy_sparse(img.paths[0], copy)
    with open(copy, "r+b") as f:
        f.seek(0x10000 + 0x100)
        f.write(b"\xff" * 8)
    out = run([BIN, "dump-super", "--all-copies", copy], check=False)
    text = out.stdout.decode()
    assert out.returncode == 1 and "valid: NO" in text and "valid: yes" in text


# --------------------------------------------------------------------- map

def _read_phys(path, off, n):
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(n)


def _decompress(kind, data, size):
    if kind == "none":
        return data
    if kind == "zlib":
        return zlib.decompressobj().decompress(data)[:size]
    if kind == "zstd":
        p = subprocess.run(["zstd", "-d", "-c", "-q"], input=data.rstrip(b"\0"), stdout=subprocess.PIPE)
        return p.stdout[:size]
    pytest.skip("no %s decoder in the test" % kind)


def _copies_bytes(piece):
    """The bytes of one mapped piece from each copy holding the data (RAID5/6 parity stripes excluded)."""
    return [_read_phys(c["device"], c["physical"], piece["length"]) for c in piece["copies"]
            if c["role"] in ("copy", "data")]


def rebuild_from_map(m, size):
    """Reassemble a file from map --json; returns (content, list of problems)."""
    out, problems = bytearray(size), []
    for ext in m["extents"]:
        off, length, kind = ext["file_offset"], ext["length"], ext["type"]
        if kind in ("hole", "prealloc") or kind.startswith("hole"):
            continue
        pieces = ext["pieces"]
        copies = [_copies_bytes(p) for p in pieces]
        for p, cs in zip(pieces, copies):
            if any(c != cs[0] for c in cs):
                problems.append("copies of logical %d differ" % p["logical"])
        disk = b"".join(cs[0] for cs in copies)
        if kind == "inline":
            raw = disk[ext["leaf_offset"]:ext["leaf_offset"] + ext["inline_size"]]
            data = _decompress(ext["compression"], raw, length)
        elif ext["compression"] != "none":
            data = _decompress(ext["compression"], disk, ext["ram_bytes"])[ext["offset"]:ext["offset"] + length]
        else:
            data = disk[:length]
        end = min(size, off + length)
        out[off:end] = data[:end - off]
        cs = ext.get("csums")
        if cs and (cs["with_csum"] != cs["sectors"] or
                   any(cs.get("mirror%d_verified" % i, cs["with_csum"]) != cs["with_csum"] for i in (1, 2))):
            problems.append("checksums of extent at file offset %d: %r" % (off, cs))
    return bytes(out), problems


def map_json(paths, rel, *extra, check=True):
    p = run([BIN, "map", "--json"] + list(extra) + paths + [rel], check=check)
    return json.loads(p.stdout), p.returncode


@pytest.mark.parametrize("name", sorted(SPECS))
def test_map_gives_file_content(images, name):
    img = images[name]
    kinds = set()
    for rel, data in sorted(img.files.items()):
        if rel.startswith("dir/f") and not rel.endswith("7"):
            continue                                    # a sample of the many small files
        m, _ = map_json(img.paths, rel)
        assert m["size"] == len(data), rel
        got, problems = rebuild_from_map(m, len(data))
        assert not problems, "%s: %s" % (rel, problems)
        assert got == data, "%s: the bytes map names are not the file's content" % rel
        kinds |= {(e["type"], e.get("compression")) for e in m["extents"]}
    if name == "compressed":
        assert ("regular", "zlib") in kinds
    if name == "default":
        assert {"inline", "regular", "prealloc"} <= {k for k, _ in kinds}


def test_map_subvolume_options(images):
    img = images["subvols"]
    a, _ = map_json(img.paths, "inner", "--subvol", "sv")
    b, _ = map_json(img.paths, "sv/inner")
    c, _ = map_json(img.paths, "inner", "--subvolid", str(b["subvolume"]))
    assert a["subvolume"] == b["subvolume"] == c["subvolume"] >= 256
    assert a["extents"] == b["extents"] == c["extents"]
    s, _ = map_json(img.paths, "snap/inner")
    assert s["subvolume"] != b["subvolume"]
    assert [e["disk_bytenr"] for e in s["extents"]] == [e["disk_bytenr"] for e in b["extents"]]


@pytest.mark.parametrize("name", ["default", "raid1"])
def test_map_reports_bad_checksum_on_its_mirror(images, name, tmp_path):
    img = images[name]
    paths = []
    for p in img.paths:
        paths.append(str(tmp_path / os.path.basename(p)))
        hostile.copy_sparse(p, paths[-1])
    m, _ = map_json(paths, "random")
    ext = next(e for e in m["extents"] if e["type"] == "regular")
    copy = ext["pieces"][0]["copies"][0]
    with open(copy["device"], "r+b") as f:
        f.seek(copy["physical"] + 100)
        b = f.read(1)
        f.seek(copy["physical"] + 100)
        f.write(bytes([b[0] ^ 0xff]))
    m2, rc = map_json(paths, "random", check=False)
    assert rc == 1
    cs = next(e for e in m2["extents"] if e["file_offset"] == ext["file_offset"])["csums"]
    assert cs["mirror1_verified"] == cs["with_csum"] - 1
    if name == "raid1":
        assert cs["mirror2_verified"] == cs["with_csum"]
    bad = [x for it in cs["items"] for x in it["mismatches"]]
    assert bad and bad[0]["mirror"] == 1


def test_map_missing_path(images):
    p = run([BIN, "map", images["default"].paths[0], "no/such/file"], check=False)
    assert p.returncode == 1 and b"no/such/file" in p.stderr


# ------------------------------------------------------ tree-graph, diff-gen

def _svg_titles(path):
    run(["xmllint", "--noout", path])
    with open(path) as f:
        return set(re.findall(r"<title>b(\d+)</title>", f.read()))


def test_tree_graph_svg_names_every_block(images, tmp_path):
    img = images["holes-4k"]
    out = str(tmp_path / "fs.svg")
    run([BIN, "tree-graph"] + img.paths + ["-t", "fs", "--format", "svg", "-o", out])
    text = inspect_dump(img.paths, "-t", "fs")
    blocks = set(re.findall(r"^(?:leaf|node) (\d+) (?:level|items)", text, re.M))
    assert len(blocks) > 3 and _svg_titles(out) == blocks
    out0 = str(tmp_path / "root.dot")
    run([BIN, "tree-graph"] + img.paths + ["-t", "fs", "--depth", "0", "--format", "dot", "-o", out0])
    with open(out0) as f:
        assert f.read().count("[label=") == 1


def test_diff_gen_one_file_write(images, tmp_path):
    img = images["default"]
    before, after = str(tmp_path / "before.img"), str(tmp_path / "after.img")
    hostile.copy_sparse(img.paths[0], before)
    hostile.copy_sparse(img.paths[0], after)
    mp = str(tmp_path / "mnt")
    os.mkdir(mp)
    loops = _mount([after], mp, "")
    try:
        with open(os.path.join(mp, "new-file"), "wb") as f:
            f.write(b"one new file\n")
    finally:
        _umount(mp, loops)
    svg = str(tmp_path / "diff.svg")
    p = run([BIN, "diff-gen", before, after, "--format", "svg", "-o", svg, "--list"])
    text = p.stdout.decode()
    rows = {line.split()[0]: [int(x) for x in line.split()[1:]] for line in text.splitlines()
            if re.match(r"^\S+\s+\d+\s+\d+\s+\d+\s+\d+\s+\d+$", line)}
    assert rows["FS_TREE"][1] + rows["FS_TREE"][2] >= 1, text      # COWed or new
    assert rows["ROOT_TREE"][1] >= 1, text
    assert rows["CHUNK_TREE"][1:4] == [0, 0, 0], text              # the chunk tree is untouched
    titles = _svg_titles(svg)
    new_fs_root = re.search(r"^(?:leaf|node) (\d+) ", inspect_dump([after], "-t", "fs"), re.M).group(1)
    assert new_fs_root in titles
    with open(svg) as f:
        s = f.read()
    assert "legend" in s and "COWed" in s
    same = run([BIN, "diff-gen", before, before]).stdout.decode()
    assert re.search(r"^total\s+\d+\s+0\s+0\s+0\s+0$", same, re.M), same


def test_help_for_every_command():
    for cmd in ("dump-super", "dump-tree", "map", "tree-graph", "diff-gen"):
        p = run([BIN, cmd, "--help"])
        assert p.stdout.startswith(b"usage: btrfs-fuse-inspect " + cmd.encode())
    assert run([BIN, "--help"]).stdout.startswith(b"usage:")
    assert run([BIN, "frobnicate"], check=False).returncode == 2


# ----------------------------------------------------------------- hostile

def _damage_tree_blocks(rng, meta, out):
    """Overwrite 1-6 runs of random bytes in 1-3 live tree blocks (all copies alike); the checksum is fixed
    in most cases so the damage reaches the structural checks and the decoders."""
    steps = []
    for _ in range(rng.randint(1, 3)):
        blk = rng.choice(meta["blocks"])
        fix = rng.random() < 0.8
        edits = []
        for _ in range(rng.randint(1, 6)):
            n = rng.choice([1, 1, 2, 4, 8, 17, 33])
            off = rng.randrange(32 if fix else 0, meta["nodesize"] - n)
            edits.append((off, rng.randbytes(n)))
        for _dev, phys in blk["copies"]:
            buf = bytearray(hostile.read_at(out, phys, meta["nodesize"]))
            for off, data in edits:
                buf[off:off + len(data)] = data
            if fix:
                hostile.fix_csum(buf)
            hostile.write_at(out, phys, bytes(buf))
        steps.append("block %d: %d runs%s" % (blk["logical"], len(edits), " (csum fixed)" if fix else ""))
    return "; ".join(steps)


@pytest.fixture(scope="session")
def hostile_bases():
    if not os.path.exists(ASAN_BIN):
        pytest.fail("%s is missing: make B=build-asan build-asan/btrfs-fuse-inspect" % ASAN_BIN, pytrace=False)
    return hostile.base_images()


def _commands(img, base):
    return [
        ["dump-super", "--all-copies", img],
        ["dump-tree", img],
        ["dump-tree", "--json", img],
        ["dump-tree", "-t", "fs", img],
        ["map", "--json", img, "prealloc"],
        ["map", img, "subvol/sfile0"],
        ["map", img, "bigdir"],
        ["tree-graph", img, "-t", "fs", "--format", "svg", "-o", img + ".svg"],
        ["tree-graph", img, "-t", "extent", "--format", "dot", "-o", img + ".dot"],
        ["diff-gen", base, img, "--format", "dot", "-o", img + ".diff.dot"],
        ["diff-gen", img, "--backup", "0"],
    ]


@pytest.mark.parametrize("seed", range(HOSTILE_SEEDS))
def test_hostile_every_subcommand(hostile_bases, seed, tmp_path):
    rng = random.Random(7000 + seed)
    name = sorted(hostile_bases)[seed % len(hostile_bases)]
    meta = hostile_bases[name]
    img = str(tmp_path / "damaged.img")
    if seed % 4 == 3:                       # the shared generator (superblock, truncation, data too)
        what = hostile.make_case(9000 + seed, hostile_bases, img)
        base = hostile_bases[re.search(r"base (\S+?):", what).group(1)]["image"]
    else:
        hostile.copy_sparse(meta["image"], img)
        what = "seed %d base %s: %s" % (seed, name, _damage_tree_blocks(rng, meta, img))
        base = meta["image"]
    env = dict(os.environ, **hostile.SANITIZER_ENV)
    for args in _commands(img, base):
        argv = [ASAN_BIN] + args
        try:
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               timeout=90, env=env)
        except subprocess.TimeoutExpired:
            pytest.fail("%s\nhang (90 s): %s" % (what, " ".join(args)))
        err = p.stderr.decode(errors="replace")
        san = hostile.sanitizer_lines(err)
        assert not san and p.returncode in (0, 1, 2), "%s\n%s\nexit %d\n%s" % (
            what, " ".join(args), p.returncode, "\n".join(san) or err[-2000:])
        if "--json" in args and p.stdout.strip():
            try:
                json.loads(p.stdout)
            except ValueError as e:
                pytest.fail("%s\n%s: output is not JSON: %s" % (what, " ".join(args), e))
        if args[0] == "tree-graph" and args[-1].endswith(".svg") and os.path.exists(args[-1]) and p.returncode != 2:
            if os.path.getsize(args[-1]):
                run(["xmllint", "--noout", args[-1]])


def test_map_raid5_parity_positions(images):
    """The P stripe map names for each full stripe is the XOR of the data stripes map names."""
    img = images["raid5"]
    m, _ = map_json(img.paths, "random")
    stripes = {}
    for ext in m["extents"]:
        for p in ext.get("pieces", []):
            data = next(c for c in p["copies"] if c["role"] == "data")
            par = next(c for c in p["copies"] if c["role"] == "P")
            stripes.setdefault((par["device"], par["physical"], p["length"]), []).append(data)
    full = {k: v for k, v in stripes.items() if len(v) == len(img.paths) - 1}
    assert full, "the 300 KB file should fill at least one full RAID5 stripe"
    for (dev, phys, length), datas in full.items():
        x = bytearray(length)
        for d in datas:
            for i, b in enumerate(_read_phys(d["device"], d["physical"], length)):
                x[i] ^= b
        assert bytes(x) == _read_phys(dev, phys, length)
