#!/usr/bin/python3
"""Walk directory trees into manifests and compare them.

A *manifest* is a JSON-able dict::

    {"version": N, "root": "/mnt/x", "btrfs": True, "ignore": [...],
     "entries": {"." : {...}, "dir/file": {...}, ...}}

Each entry holds lstat-based properties (never follows symlinks):

    type      dir reg lnk fifo sock chr blk (or "mount" for a skipped mountpoint)
    mode      permission bits incl. suid/sgid/sticky (int)
    uid gid size nlink ino
    atime mtime ctime   nanoseconds (int)
    blocks    st_blocks
    rdev      chr/blk only
    target    symlink target
    xattrs    {name: "hex:..." or "sha256:...:len=N"}
    sha256    regular files: SHA-256 of every byte (read in 1 MiB chunks)
    read_len  only when the number of bytes read != st_size
    link      hard-link group: the smallest path of all paths sharing the
              inode (subvolume-aware for btrfs trees), only for groups > 1
    dino      d_ino as returned by readdir (not for ".")
    nentries  dirs: number of names returned by readdir
    dup_names dirs: names readdir returned more than once
    dtype     only when readdir's d_type disagrees with lstat
    error     errors met while reading this entry (EIO etc.)

For btrfs trees (btrfs=True) a directory whose st_ino is 256 starts a new
subvolume; inode numbers restart there, so hard-link groups are keyed by
(subvolume root, ino), and entries below the walk root's own subvolume get
"_subvol" (path of their subvolume root; fields starting with "_" are
never compared).  st_dev is never compared (the kernel gives each
subvolume its own st_dev, FUSE one for all), and ino/dino are compared
only inside the mounted subvolume (objectids repeat across subvolumes, so
btrfs-fuse must number nested subvolumes' inodes differently).

Mountpoints below the root are not entered unless cross_mounts=True;
subvolumes are not mountpoints and are always walked.

CLI:  treecmp.py A B [--no-atime] [--no-ctime] [--no-blocks] [--ignore F]...
      treecmp.py --manifest DIR [-o FILE]
A and B may be directories or manifest JSON files.  Exit 1 on differences.
"""

import argparse
import concurrent.futures
import datetime
import errno
import hashlib
import json
import os
import stat
import sys
import threading

TREECMP_VERSION = 3
CHUNK = 1 << 20
BTRFS_FIRST_FREE_OBJECTID = 256
EMPTY_SUBVOL_DIR_INO = 2        # BTRFS_EMPTY_SUBVOL_DIR_OBJECTID

_TYPES = [
    (stat.S_ISDIR, "dir"), (stat.S_ISREG, "reg"), (stat.S_ISLNK, "lnk"),
    (stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "sock"), (stat.S_ISCHR, "chr"),
    (stat.S_ISBLK, "blk"),
]

# field order used in reports
FIELDS = ["error", "type", "mode", "uid", "gid", "size", "nlink", "ino", "dino",
          "rdev", "target", "link", "nentries", "dup_names", "dtype", "atime",
          "mtime", "ctime", "blocks", "xattrs", "read_len", "sha256"]


def ftype(mode):
    for pred, name in _TYPES:
        if pred(mode):
            return name
    return "unknown"


def _errstr(what, e):
    name = errno.errorcode.get(getattr(e, "errno", None) or 0, "")
    return "%s: %s%s" % (what, name + " " if name else "", e.strerror or e)


def _xval(v):
    if len(v) <= 128:
        return "hex:" + v.hex()
    return "sha256:%s:len=%d" % (hashlib.sha256(v).hexdigest(), len(v))


_NOATIME = getattr(os, "O_NOATIME", 0)


def _open_noatime(path, flags, dir_fd=None):
    """open with O_NOATIME (so walking never changes atimes), falling back."""
    try:
        return os.open(path, flags | _NOATIME, dir_fd=dir_fd)
    except PermissionError:
        return os.open(path, flags, dir_fd=dir_fd)


_ZERO = memoryview(bytes(CHUNK))
BIG_FILE = 64 * CHUNK          # pipelined read+hash above this size
BIG_BUF = 4 * CHUNK


def _fill(fd, buf):
    """read until buf is full or EOF; returns the byte count."""
    mv = memoryview(buf)
    got = 0
    while got < len(buf):
        n = os.readv(fd, [mv[got:]])
        if n == 0:
            break
        got += n
    return got


def _drop_cache(fd):
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except (OSError, AttributeError):
        pass


def _hash_seek(fd, size, h):
    """Hash using SEEK_DATA/SEEK_HOLE: holes are hashed as zeros without
    being read.  Only for the reference (kernel / source) side."""
    pos = total = 0
    buf = bytearray(CHUNK)
    mv = memoryview(buf)
    while pos < size:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno != errno.ENXIO:
                raise
            data = size
        data = min(data, size)
        while pos < data:
            n = min(CHUNK, data - pos)
            h.update(_ZERO[:n])
            pos += n
            total += n
        if pos >= size:
            break
        hole = min(os.lseek(fd, pos, os.SEEK_HOLE), size)
        while pos < hole:
            n = os.preadv(fd, [mv[:min(CHUNK, hole - pos)]], pos)
            if n == 0:
                return total
            h.update(mv[:n])
            pos += n
            total += n
    # anything beyond st_size (there should be nothing)
    while True:
        n = os.preadv(fd, [mv], pos)
        if n == 0:
            return total
        h.update(mv[:n])
        pos += n
        total += n


def _hash_pipelined(fd, h):
    """Read every byte; the next chunk is read while the last one is hashed."""
    bufs = [bytearray(BIG_BUF), bytearray(BIG_BUF)]
    total = 0
    since_drop = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as ex:
        fut = ex.submit(_fill, fd, bufs[0])
        i = 0
        while True:
            n = fut.result()
            if n == 0:
                break
            fut = ex.submit(_fill, fd, bufs[1 - i])
            h.update(memoryview(bufs[i])[:n])
            total += n
            since_drop += n
            if since_drop >= 256 * CHUNK:      # keep the page cache small
                _drop_cache(fd)
                since_drop = 0
            i = 1 - i
    _drop_cache(fd)
    return total


def hash_file(path, dir_fd=None, seek_holes=False):
    """(sha256 hex, bytes read) over every byte of a regular file.

    seek_holes=True skips reading holes (SEEK_DATA/SEEK_HOLE) but still
    hashes their zeros; use it only on the trusted reference side.
    """
    fd = _open_noatime(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                       dir_fd=dir_fd)
    try:
        h = hashlib.sha256()
        size = os.fstat(fd).st_size
        if seek_holes:
            total = _hash_seek(fd, size, h)
        elif size >= BIG_FILE:
            total = _hash_pipelined(fd, h)
        else:
            buf = bytearray(CHUNK)
            mv = memoryview(buf)
            total = 0
            while True:
                n = os.readv(fd, [buf])
                if n == 0:
                    break
                h.update(mv[:n])
                total += n
        return h.hexdigest(), total
    finally:
        os.close(fd)


def _mounts_below(root):
    try:
        from mounts import mounts_below   # same directory
    except ImportError:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from mounts import mounts_below
    return set(mounts_below(root))


def walk(root, hash_files=True, btrfs=True, cross_mounts=False, xattrs=True,
         threads=2, seek_holes=False):
    """Walk `root` and return a manifest (see module doc).

    seek_holes: hash holes without reading them (reference side only; the
    side under test must always be read byte by byte).
    """
    root = os.path.realpath(os.fspath(root))
    entries = {}
    skip = set() if cross_mounts else _mounts_below(root)
    linkkeys = {}              # key -> [paths]
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, threads)) if hash_files else None
    futures = []
    lock = threading.Lock()
    rootfd = _open_noatime(root, os.O_RDONLY | os.O_DIRECTORY)

    def add_error(props, msg):
        with lock:
            if "error" in props:
                props["error"] += "; " + msg
            else:
                props["error"] = msg

    def hash_job(rel, props):
        try:
            digest, n = hash_file(rel, dir_fd=rootfd, seek_holes=seek_holes)
            props["sha256"] = digest
            if n != props.get("size"):
                props["read_len"] = n
        except OSError as e:
            add_error(props, _errstr("read", e))

    def describe(rel, st, dirfd, name, subvol):
        t = ftype(st.st_mode)
        p = {
            "type": t, "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid,
            "gid": st.st_gid, "size": st.st_size, "nlink": st.st_nlink,
            "ino": st.st_ino, "atime": st.st_atime_ns, "mtime": st.st_mtime_ns,
            "ctime": st.st_ctime_ns, "blocks": st.st_blocks,
        }
        if t in ("chr", "blk"):
            p["rdev"] = [os.major(st.st_rdev), os.minor(st.st_rdev)]
        if t == "lnk":
            try:
                p["target"] = os.readlink(name, dir_fd=dirfd)
            except OSError as e:
                add_error(p, _errstr("readlink", e))
        if xattrs:
            # /proc/self/fd/N/name keeps the path short for deep trees
            xp = "/proc/self/fd/%d/%s" % (dirfd, name) if dirfd is not None else root
            try:
                names = os.listxattr(xp, follow_symlinks=False)
                xd = {}
                for n in sorted(names):
                    try:
                        xd[n] = _xval(os.getxattr(xp, n, follow_symlinks=False))
                    except OSError as e:
                        xd[n] = "<%s>" % _errstr("getxattr", e)
                if xd:
                    p["xattrs"] = xd
            except OSError as e:
                if e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                    add_error(p, _errstr("listxattr", e))
        if btrfs and subvol != ".":
            p["_subvol"] = subvol       # not compared; see compare_detailed()
        if t != "dir":
            key = (subvol, st.st_ino) if btrfs else (st.st_dev, st.st_ino)
            linkkeys.setdefault(key, []).append(rel)
        if t == "reg" and hash_files:
            futures.append(pool.submit(hash_job, rel, p))
        return p

    try:
        st = os.lstat(root)
        rootprops = describe(".", st, None, root, ".")
        entries["."] = rootprops
        stack = [(".", rootprops, ".")]
        while stack:
            rel, props, subvol = stack.pop()
            absdir = root if rel == "." else root + "/" + rel
            try:
                dfd = _open_noatime(rel if rel != "." else ".",
                                    os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                    dir_fd=rootfd)
            except OSError as e:
                add_error(props, _errstr("opendir", e))
                continue
            try:
                listing = []
                try:
                    with os.scandir(dfd) as it:
                        for de in it:
                            try:
                                if de.is_symlink():
                                    dt = "lnk"
                                elif de.is_dir(follow_symlinks=False):
                                    dt = "dir"
                                elif de.is_file(follow_symlinks=False):
                                    dt = "reg"
                                else:
                                    dt = "other"
                            except OSError:
                                dt = "?"
                            listing.append((de.name, de.inode(), dt))
                except OSError as e:
                    add_error(props, _errstr("readdir", e))
                names = [n for n, _, _ in listing]
                props["nentries"] = len(names)
                if len(set(names)) != len(names):
                    seen, dups = set(), set()
                    for n in names:
                        if n in seen:
                            dups.add(n)
                        seen.add(n)
                    props["dup_names"] = sorted(dups)
                done = set()
                for name, dino, dt in listing:
                    if name in done:
                        continue
                    done.add(name)
                    crel = name if rel == "." else rel + "/" + name
                    try:
                        cst = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    except OSError as e:
                        entries[crel] = {"error": _errstr("lstat", e), "dino": dino}
                        continue
                    csub = subvol
                    if btrfs and stat.S_ISDIR(cst.st_mode) and cst.st_ino == BTRFS_FIRST_FREE_OBJECTID:
                        csub = crel
                    cp = describe(crel, cst, dfd, name, csub)
                    cp["dino"] = dino
                    lt = cp["type"]
                    if (dt == "other" and lt in ("dir", "reg", "lnk")) or \
                            (dt in ("dir", "reg", "lnk") and dt != lt):
                        cp["dtype"] = "readdir d_type=%s" % dt
                    entries[crel] = cp
                    if lt == "dir":
                        if (absdir + "/" + name) in skip:
                            cp["type"] = "mount"
                            continue
                        stack.append((crel, cp, csub))
            finally:
                os.close(dfd)
        if pool:
            for f in futures:
                f.result()
    finally:
        if pool:
            pool.shutdown(wait=True)
        os.close(rootfd)

    for key, paths in linkkeys.items():
        if len(paths) > 1 or entries[paths[0]].get("nlink", 1) > 1:
            canon = min(paths)
            for p in paths:
                entries[p]["link"] = canon
    return {"version": TREECMP_VERSION, "root": root, "btrfs": bool(btrfs),
            "ignore": [], "entries": entries}


# ------------------------------------------------------------ expectations

SOURCE_IGNORE = ["atime", "ctime", "blocks", "@root:mtime", "@root:atime",
                 "@root:ctime", "@root:dino"]


# btrfs-progs 6.2 mkfs --rootdir uses objectid = st_ino + 256 for everything
# below the root (verified at corpus build time against a kernel mount).
ROOTDIR_INO_OFFSET = 256


def expect_btrfs_from_source(manifest, ino_offset=ROOTDIR_INO_OFFSET):
    """Turn a manifest of a plain source directory (mkfs.btrfs --rootdir input)
    into what a btrfs image made from it must show:

    * directories: st_size = 2 * sum(len(child name in bytes)), nlink = 1
    * the root directory has inode 256 and mkfs-time timestamps
    * atime (mkfs read the files), ctime and st_blocks cannot match
    Everything else (mode, uid, gid, sizes, contents, xattrs, symlinks,
    hard links, rdev, mtime) must be identical; inode numbers are expected
    to be st_ino + ino_offset (btrfs-progs 6.2 behaviour; None: not compared,
    i.e. ino/dino are added to the manifest's ignore list).
    """
    ents = {k: dict(v) for k, v in manifest["entries"].items()}
    namelen = {}
    for path in ents:
        if path == ".":
            continue
        parent, _, name = path.rpartition("/")
        parent = parent or "."
        namelen[parent] = namelen.get(parent, 0) + len(os.fsencode(name))
    for path, p in ents.items():
        if p.get("type") == "dir":
            p["size"] = 2 * namelen.get(path, 0)
            p["nlink"] = 1
    for path, p in ents.items():
        if path == ".":
            p["ino"] = BTRFS_FIRST_FREE_OBJECTID
            continue
        if ino_offset is not None:
            for f in ("ino", "dino"):
                if f in p:
                    p[f] += ino_offset
    out = dict(manifest)
    out["entries"] = ents
    out["expectation"] = "btrfs-from-source"
    out["ignore"] = sorted(set(manifest.get("ignore", [])) | set(SOURCE_IGNORE)
                           | ({"ino", "dino"} if ino_offset is None else set()))
    return out


# ---------------------------------------------------------------- compare

def show_path(p):
    """path for messages: as is if printable UTF-8, else repr()."""
    try:
        p.encode("utf-8")
    except UnicodeEncodeError:
        return repr(p)
    return p if p.isprintable() else repr(p)


def _fmt(field, v):
    if v is None:
        return "<absent>"
    if field == "mode":
        return "0o%04o" % v
    if field in ("atime", "mtime", "ctime"):
        try:
            d = datetime.datetime.fromtimestamp(v // 10**9, datetime.timezone.utc)
            return "%d (%s.%09dZ)" % (v, d.strftime("%Y-%m-%dT%H:%M:%S"), v % 10**9)
        except (OverflowError, OSError, ValueError):
            return str(v)
    if field == "rdev":
        return "%d:%d" % tuple(v)
    if isinstance(v, str):
        return repr(v) if len(v) < 300 else repr(v[:120]) + "...(%d chars)" % len(v)
    return repr(v)


def _ignored(ign, path, ptype, field):
    return (field in ign or ("%s:%s" % (ptype, field)) in ign
            or (path == "." and ("@root:" + field) in ign))


def compare(a, b, ignore=(), labels=("A", "B")):
    """Differences between manifests a and b as a list of readable strings
    ("PATH: FIELD: A=value B=value").

    ignore: field names ("atime"), type-specific ("dir:size") or root-only
    ("@root:mtime") fields to skip; each manifest's own "ignore" list is added.
    """
    return [msg for _p, _f, msg in compare_detailed(a, b, ignore, labels)]


def summarize(detailed):
    """'field: count, ...' for a compare_detailed() result, most frequent first."""
    counts = {}
    for _p, f, _m in detailed:
        counts[f] = counts.get(f, 0) + 1
    return ", ".join("%s: %d" % kv for kv in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def compare_detailed(a, b, ignore=(), labels=("A", "B")):
    """Like compare(), as [(path, field, message)]; field is "only-in-A"/
    "only-in-B" for missing entries and "xattr" for xattr differences."""
    la, lb = labels
    ign = set(ignore) | set(a.get("ignore", ())) | set(b.get("ignore", ()))
    ea, eb = a["entries"], b["entries"]
    diffs = []
    only_a = sorted(set(ea) - set(eb))
    only_b = sorted(set(eb) - set(ea))

    def report_only(paths, have, other):
        pset = set(paths)
        for p in paths:
            parent = p.rpartition("/")[0]
            # only report the top of a missing subtree
            if parent and parent in pset:
                continue
            below = sum(1 for q in paths if q.startswith(p + "/"))
            e = (ea if have == la else eb)[p]
            extra = " (and %d entries below it)" % below if below else ""
            diffs.append((p, "only-in-" + have, "%s: only in %s (type=%s, size=%s), missing in %s%s" % (
                show_path(p), have, e.get("type"), e.get("size"), other, extra)))

    report_only(only_a, la, lb)
    report_only(only_b, lb, la)
    btrfs = a.get("btrfs") or b.get("btrfs")
    for p in sorted(set(ea) & set(eb)):
        pa, pb = ea[p], eb[p]
        ptype = pa.get("type") or pb.get("type")
        # The kernel shows a subvolume that is not in a snapshot as an empty
        # directory with inode 2; it has no inode item, so the kernel makes
        # up its times when it instantiates it.  Those cannot be compared.
        placeholder = (btrfs and ptype == "dir" and EMPTY_SUBVOL_DIR_INO in
                       (pa.get("ino"), pb.get("ino")))
        # Inode numbers are only defined inside the mounted subvolume: the
        # kernel gives every subvolume its own st_dev and reuses objectids,
        # FUSE has one st_dev and must make them unique some other way.
        # Entries in (or the roots of) nested subvolumes: ino/dino skipped;
        # their hard-link structure ("link") is still compared.
        nested = btrfs and (pa.get("_subvol", ".") != "." or pb.get("_subvol", ".") != ".")
        for f in FIELDS:
            if _ignored(ign, p, ptype, f):
                continue
            if placeholder and f in ("atime", "mtime", "ctime"):
                continue
            # Its owner is copied from the directory it sits in when the kernel
            # first instantiates it and never updated after (a chown of that
            # directory shows only after a remount), so it depends on the
            # kernel's inode cache, not on the image.
            if placeholder and f in ("uid", "gid"):
                continue
            if nested and f in ("ino", "dino"):
                continue
            # A placeholder is a subvolume entry: the kernel's readdir gives the
            # subvolume id as d_ino, btrfs-fuse the placeholder's st_ino (FUSE's
            # readdirplus cannot give an entry a d_ino other than its st_ino).
            if placeholder and f == "dino":
                continue
            va, vb = pa.get(f), pb.get(f)
            if va == vb:
                continue
            if f == "xattrs":
                xa, xb = va or {}, vb or {}
                for n in sorted(set(xa) | set(xb)):
                    if _ignored(ign, p, ptype, "xattr:" + n):
                        continue
                    if xa.get(n) != xb.get(n):
                        diffs.append((p, "xattr", "%s: xattr %s: %s=%s %s=%s" % (
                            show_path(p), n, la, _fmt(f, xa.get(n)), lb, _fmt(f, xb.get(n)))))
                continue
            diffs.append((p, f, "%s: %s: %s=%s %s=%s" % (
                show_path(p), f, la, _fmt(f, va), lb, _fmt(f, vb))))
    return diffs


# -------------------------------------------------------------------- I/O

def save_manifest(manifest, path):
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
        json.dump(manifest, f, sort_keys=True)
    os.replace(tmp, path)


def load_manifest(path):
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return json.load(f)


def _load_or_walk(arg, args):
    if os.path.isfile(arg) and arg.endswith(".json"):
        return load_manifest(arg)
    return walk(arg, btrfs=not args.not_btrfs, cross_mounts=args.cross_mounts,
                hash_files=not args.no_hash, threads=args.threads)


def main(argv=None):
    ap = argparse.ArgumentParser(description="compare two directory trees (or manifests)")
    ap.add_argument("a", nargs="?")
    ap.add_argument("b", nargs="?")
    ap.add_argument("--manifest", metavar="DIR", help="write the manifest of DIR and exit")
    ap.add_argument("-o", "--output", help="with --manifest: output file (default stdout)")
    ap.add_argument("--no-atime", action="store_true")
    ap.add_argument("--no-ctime", action="store_true")
    ap.add_argument("--no-blocks", action="store_true")
    ap.add_argument("--no-ino", action="store_true", help="ignore ino, dino")
    ap.add_argument("--ignore", action="append", default=[],
                    help="field to ignore: FIELD, TYPE:FIELD or @root:FIELD (repeatable)")
    ap.add_argument("--no-hash", action="store_true", help="do not hash file contents")
    ap.add_argument("--cross-mounts", action="store_true")
    ap.add_argument("--not-btrfs", action="store_true",
                    help="trees are not btrfs (no subvolume detection)")
    ap.add_argument("--source", choices=["a", "b"],
                    help="that side is a mkfs --rootdir source dir: compare "
                         "with btrfs expectations (dir sizes, no atime/ctime...)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=200, help="max differences printed")
    args = ap.parse_args(argv)
    if args.manifest:
        m = walk(args.manifest, btrfs=not args.not_btrfs, cross_mounts=args.cross_mounts,
                 hash_files=not args.no_hash, threads=args.threads)
        if args.output:
            save_manifest(m, args.output)
        else:
            json.dump(m, sys.stdout, sort_keys=True, indent=1)
            print()
        return 0
    if not args.a or not args.b:
        ap.error("need A and B (or --manifest DIR)")
    ma = _load_or_walk(args.a, args)
    mb = _load_or_walk(args.b, args)
    if args.source == "a":
        ma = expect_btrfs_from_source(ma)
    elif args.source == "b":
        mb = expect_btrfs_from_source(mb)
    ign = list(args.ignore)
    if args.no_atime:
        ign.append("atime")
    if args.no_ctime:
        ign.append("ctime")
    if args.no_blocks:
        ign.append("blocks")
    if args.no_ino:
        ign += ["ino", "dino"]
    diffs = compare(ma, mb, ignore=ign, labels=("A", "B"))
    for d in diffs[:args.limit]:
        print(d)
    if len(diffs) > args.limit:
        print("... and %d more differences" % (len(diffs) - args.limit))
    n = len(ma["entries"])
    print("%d entries in A, %d in B, %d differences" % (n, len(mb["entries"]), len(diffs)),
          file=sys.stderr)
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
