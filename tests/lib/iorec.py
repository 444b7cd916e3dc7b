#!/usr/bin/python3
"""Read the I/O record of `btrfs-fuse -o iorecord=FILE` and rebuild device states from it.

Owns: the record format's reader (read_record), the power-cut model (Cut, random_cuts) and the replayer
(Replayer) that turns the images as they were at mount time plus the record into the device state at any
cut; also the command line tool (tests/tools/iorec-replay runs main()).

The record (alloc/iorec.c writes it): a 16-byte header "BFIOREC1" + u32 version + u32 header size, then
records of a 32-byte head (u32 magic "BREC", u32 type 1 = write / 2 = flush, u64 devid, u64 physical,
u32 len, u32 sequence) followed by len data bytes for a write.  Each record is appended with one writev
after the device call succeeded, so the file's size at any moment is how far the device state was
recorded; a record the file does not hold in full (the daemon was killed while appending) is ignored.

The power-cut model.  A disk with a volatile write cache keeps what it was sent until a flush completes:
after a power cut, every write before the device's last completed flush is on the media; each write
after it may be there, missing, or -- torn -- present in some of its sectors only (`sector`, 4096 or
512, is the unit a device writes atomically; a superblock is never torn below 4096 bytes: btrfs, like
the kernel's, relies on a 4 KiB superblock write being atomic, and checks it with its checksum).  A Cut names the point (records before index `at` were
issued) and which of the unflushed writes survive:
    flush   the point right after a flush (nothing is unflushed);
    all     every unflushed write reached the media (also what kill -9 leaves: the page cache survives);
    none    every unflushed write was lost;
    subset  a random subset reached the media (in any order: a cache reorders);
    torn    a random subset, and some of those only in some of their sectors;
    keep    exactly the unflushed writes whose record indexes are in `keep`.

The Replayer keeps one working copy of each device: the flushed prefix is applied once and only grows
(cuts are visited in order), the unflushed writes of one cut are applied on top with the old bytes
saved, and undone afterwards.  So each state costs only its own writes, whatever the image size.

CLI:
    iorec-replay info RECORD
    iorec-replay build RECORD --image DEVID=BASE:OUT [...] --at N|--flush K|--end
                 [--mode all|none|subset|torn|keep] [--keep I,J...] [--seed S] [--sector 4096]
"""

import argparse
import os
import random
import struct
import subprocess
import sys

MAGIC = b"BFIOREC1"
REC_MAGIC = 0x43455242
WRITE, FLUSH = 1, 2
_HEAD = struct.Struct("<IIQQII")


class RecordError(Exception):
    pass


class Rec:
    __slots__ = ("index", "type", "devid", "physical", "length", "data_off", "end")

    def __init__(self, index, typ, devid, physical, length, data_off, end):
        self.index, self.type, self.devid, self.physical = index, typ, devid, physical
        self.length, self.data_off, self.end = length, data_off, end

    def __repr__(self):
        if self.type == FLUSH:
            return "#%d flush devid %d (record bytes ..%d)" % (self.index, self.devid, self.end)
        return "#%d write devid %d at %d len %d (record bytes ..%d)" % (
            self.index, self.devid, self.physical, self.length, self.end)


class Record:
    """The parsed record: recs (list of Rec), data (bytes of the file), size (bytes of whole records)."""

    def __init__(self, path, limit=None):
        with open(path, "rb") as f:
            self.data = f.read() if limit is None else f.read(limit)
        self.path = path
        d = self.data
        if len(d) < 16 or d[:8] != MAGIC:
            raise RecordError("%s: not an I/O record (no BFIOREC1 header)" % path)
        ver, hsize = struct.unpack_from("<II", d, 8)
        if ver != 1 or hsize != 16:
            raise RecordError("%s: unknown record version %d / header size %d" % (path, ver, hsize))
        self.recs = []
        off = 16
        while off + _HEAD.size <= len(d):
            magic, typ, devid, phys, length, seq = _HEAD.unpack_from(d, off)
            if magic != REC_MAGIC or typ not in (WRITE, FLUSH) or seq != len(self.recs) & 0xffffffff:
                raise RecordError("%s: bad record head at byte %d (record #%d)" % (path, off, len(self.recs)))
            end = off + _HEAD.size + length
            if end > len(d):
                break                      # the append the daemon was killed in
            self.recs.append(Rec(len(self.recs), typ, devid, phys, length, off + _HEAD.size, end))
            off = end
        self.size = off                    # bytes of whole records (header included)

    def payload(self, r):
        return memoryview(self.data)[r.data_off:r.data_off + r.length]

    def index_at(self, nbytes):
        """Number of whole records within the first nbytes of the file."""
        lo, hi = 0, len(self.recs)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.recs[mid].end <= nbytes:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def flushes(self):
        return [r for r in self.recs if r.type == FLUSH]

    def devids(self):
        return sorted({r.devid for r in self.recs})

    def summary(self):
        w = [r for r in self.recs if r.type == WRITE]
        return "%d records: %d writes (%d bytes), %d flushes, devids %s, %d bytes" % (
            len(self.recs), len(w), sum(r.length for r in w), len(self.recs) - len(w),
            self.devids(), self.size)


# ------------------------------------------------------------------ cuts

class Cut:
    """A power cut after records [0, at): mode in flush/all/none/subset/torn; seed drives the choice."""

    def __init__(self, at, mode, seed=0, sector=4096, keep=()):
        self.at, self.mode, self.seed, self.sector = at, mode, seed, sector
        self.keep = frozenset(keep)        # mode "keep": the indexes of the unflushed writes that survive

    def __repr__(self):
        if self.mode == "keep":
            return "cut at record %d (keeping unflushed writes %s)" % (self.at, sorted(self.keep))
        return "cut at record %d (%s, seed %d%s)" % (self.at, self.mode, self.seed,
                                                     ", %d-byte sectors" % self.sector
                                                     if self.mode == "torn" else "")

    def nbytes(self, rec):
        """The record-file size at the cut (the crash clock)."""
        return rec.recs[self.at - 1].end if self.at else 16

    def describe(self, rec):
        return "%s, record bytes %d" % (self, self.nbytes(rec))


def flush_cuts(rec):
    """A cut right after each flush; a flush that follows another flush (the next device's, nothing
    written in between) gives the same state as that one and is left out."""
    return [Cut(r.index + 1, "flush") for r in rec.flushes()
            if r.index == 0 or rec.recs[r.index - 1].type != FLUSH]


SUPER_OFFSETS = (64 << 10, 64 << 20, 256 << 30)


def is_super(r):
    return r.type == WRITE and r.physical in SUPER_OFFSETS and r.length == 4096


def superblock_cuts(rec, rng):
    """Cuts right after each superblock write, before the flush that ends the commit: the copies
    written so far survive in any combination."""
    return [Cut(r.index + 1, mode, seed=rng.randrange(1 << 30)) for r in rec.recs if is_super(r)
            for mode in ("subset", "none")]


def random_cuts(rec, n, rng, modes=("none", "subset", "torn", "all", "subset", "torn")):
    """n cuts at random record positions that have unflushed writes behind them."""
    last_flush, cands = {}, []
    for r in rec.recs:
        if r.type == FLUSH:
            last_flush[r.devid] = r.index
        elif r.type == WRITE:
            cands.append(r.index + 1)      # a cut right after this write: it is unflushed
    if not cands:
        return []
    out = []
    for i in range(n):
        mode = modes[i % len(modes)]
        sector = 512 if mode == "torn" and rng.random() < 0.5 else 4096
        out.append(Cut(rng.choice(cands), mode, seed=rng.randrange(1 << 30), sector=sector))
    return out


# ------------------------------------------------------------------ replay

def copy_sparse(src, dst):
    subprocess.run(["cp", "--sparse=always", src, dst], check=True)


class Replayer:
    """Device states from base images (as at mount time) plus the record.

    images: {devid: (base path, working path)}.  The working copies are made here and rebuilt in place:
    state(cut) yields with the working images holding the state at that cut (undone afterwards).
    Cuts must come in increasing `at` order (a smaller one restarts from the base copies)."""

    def __init__(self, rec, images):
        self.rec = rec
        self.images = dict(images)
        missing = [d for d in rec.devids() if d not in self.images]
        if missing:
            raise RecordError("the record writes to devids %s, for which no image was given" % missing)
        self.fds = {}
        self._reset()

    def _reset(self):
        self.close()
        for devid, (base, work) in self.images.items():
            copy_sparse(base, work)
            self.fds[devid] = os.open(work, os.O_RDWR | os.O_CLOEXEC)
        self.done = {d: 0 for d in self.images}   # d's writes with index < done[d] are applied
        self.pos = 0                               # `at` of the last state

    def close(self):
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def durable_limit(self, at):
        """{devid: 1 + index of its last flush before record `at`} (0: no flush yet)."""
        lim = {d: 0 for d in self.images}
        for r in self.rec.recs[:at]:
            if r.type == FLUSH:
                lim[r.devid] = r.index + 1
        return lim

    def _write(self, r, lo=0, hi=None):
        hi = r.length if hi is None else hi
        os.pwrite(self.fds[r.devid], self.rec.payload(r)[lo:hi], r.physical + lo)

    def choose(self, cut, volatile):
        """[(rec, lo, hi)]: what of the unflushed writes reaches the media at this cut."""
        if cut.mode in ("flush", "all"):
            return [(r, 0, r.length) for r in volatile]
        if cut.mode == "none":
            return []
        if cut.mode == "keep":
            return [(r, 0, r.length) for r in volatile if r.index in cut.keep]
        rng = random.Random(cut.seed)
        out = []
        for r in volatile:
            if rng.random() < 0.5:
                continue
            unit = max(cut.sector, 4096) if is_super(r) else cut.sector
            if cut.mode == "torn" and r.length > unit and rng.random() < 0.5:
                out += [(r, s, min(r.length, s + unit)) for s in range(0, r.length, unit)
                        if rng.random() < 0.5]
            else:
                out.append((r, 0, r.length))
        return out

    def apply(self, cut):
        """Bring the working images to the state at cut.  Returns (undo list, description of what
        was applied of the unflushed writes)."""
        if cut.at < self.pos:
            self._reset()
        self.pos = cut.at
        lim = self.durable_limit(cut.at)
        volatile = []
        for r in self.rec.recs[min(self.done.values(), default=0):cut.at]:
            if r.type != WRITE:
                continue
            if self.done[r.devid] <= r.index < lim[r.devid]:
                self._write(r)                     # durable: before the device's last flush
            elif r.index >= lim[r.devid]:
                volatile.append(r)
        self.done = {d: max(self.done[d], lim[d]) for d in self.done}
        chosen = self.choose(cut, volatile)
        undo = []
        for r, lo, hi in chosen:
            undo.append((r.devid, r.physical + lo, os.pread(self.fds[r.devid], hi - lo, r.physical + lo)))
            self._write(r, lo, hi)
        whole = {r.index for r, lo, hi in chosen if lo == 0 and hi == r.length}
        torn = {r.index for r, lo, hi in chosen} - whole
        desc = "%d unflushed writes: %d applied whole, %d torn (%s)" % (
            len(volatile), len(whole), len(torn),
            ", ".join("#%d" % i for i in sorted(torn)[:8]) or "-")
        return undo, desc

    def undo(self, undo):
        for devid, off, old in reversed(undo):
            os.pwrite(self.fds[devid], old, off)

    def fsync(self):
        for fd in self.fds.values():
            os.fsync(fd)


# ------------------------------------------------------------------ CLI

def _parse_images(specs):
    out = {}
    for s in specs:
        devid, _, rest = s.partition("=")
        base, _, work = rest.partition(":")
        if not devid.isdigit() or not base or not work:
            raise SystemExit("--image wants DEVID=BASE:OUT, got %r" % s)
        out[int(devid)] = (base, work)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="iorec-replay", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("info", help="summarize a record")
    a.add_argument("record")
    a.add_argument("-v", action="store_true", help="list every record")
    b = sub.add_parser("build", help="write the device state at a cut to OUT images")
    b.add_argument("record")
    b.add_argument("--image", action="append", required=True, metavar="DEVID=BASE:OUT")
    g = b.add_mutually_exclusive_group(required=True)
    g.add_argument("--at", type=int, help="cut after this many records")
    g.add_argument("--bytes", type=int, help="cut after the records within this many record-file bytes")
    g.add_argument("--flush", type=int, help="cut right after the K-th flush (1-based)")
    g.add_argument("--end", action="store_true", help="every record applied")
    b.add_argument("--mode", default="all", choices=["all", "none", "subset", "torn", "keep"])
    b.add_argument("--keep", default="", help="with --mode keep: record indexes of the unflushed writes "
                   "that survive, comma-separated")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--sector", type=int, default=4096)
    args = ap.parse_args(argv)
    rec = Record(args.record)
    if args.cmd == "info":
        print(rec.summary())
        if args.v:
            for r in rec.recs:
                print(r)
        return 0
    if args.end:
        at = len(rec.recs)
    elif args.bytes is not None:
        at = rec.index_at(args.bytes)
    elif args.flush is not None:
        fl = rec.flushes()
        if not 1 <= args.flush <= len(fl):
            raise SystemExit("the record has %d flushes" % len(fl))
        at = fl[args.flush - 1].index + 1
    else:
        at = args.at
    if not 0 <= at <= len(rec.recs):
        raise SystemExit("the record has %d records" % len(rec.recs))
    keep = [int(i) for i in args.keep.split(",") if i.strip()]
    cut = Cut(at, args.mode, args.seed, args.sector, keep)
    with Replayer(rec, _parse_images(args.image)) as rp:
        _undo, desc = rp.apply(cut)
        rp.fsync()
    print("%s: %s" % (cut.describe(rec), desc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
