"""-o trace=FILE: every line is one JSON object with time, transaction id and event; a read-only walk
records FUSE requests, tree searches and block reads; a read-write session also records copy-on-write,
splits, transactions and the commit."""
import json
import os
import subprocess
import tempfile
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("BTRFS_FUSE", os.path.join(REPO, "btrfs-fuse"))


def run(*cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True)


@pytest.fixture
def image(tmp_path):
    img = str(tmp_path / "t.img")
    with open(img, "wb") as f:
        f.truncate(300 << 20)
    run("mkfs.btrfs", "-q", "-f", "-n", "4096", img)
    return img


def events(path):
    with open(path) as f:
        lines = [json.loads(l) for l in f]
    for ev in lines:
        assert {"t", "transid", "event"} <= set(ev), ev
    return lines


def session(image, tmp_path, opts, work):
    mnt = tempfile.mkdtemp(dir=str(tmp_path))
    trace = str(tmp_path / ("trace-%s.json" % opts.replace(",", "_")))
    run(BIN, "-o", "%s,trace=%s" % (opts, trace), image, mnt)
    try:
        work(mnt)
    finally:
        run("fusermount3", "-u", mnt)
    return trace


def test_trace_read_and_write(image, tmp_path):
    def write(mnt):
        os.mkdir(os.path.join(mnt, "d"))
        for i in range(300):
            with open(os.path.join(mnt, "d", "file-%03d" % i), "w") as f:
                f.write("x" * 3000)
        with open(os.path.join(mnt, "big"), "wb") as f:
            f.write(os.urandom(1 << 20))

    trace = session(image, tmp_path, "rw", write)
    for _ in range(100):  # the final commit happens after fusermount3 returns
        if any(e["event"] == "commit" for e in events(trace)):
            break
        time.sleep(0.1)
    evs = events(trace)
    kinds = {e["event"] for e in evs}
    assert {"fuse", "search", "cow", "split", "alloc", "free", "ref", "transaction_start", "commit"} <= kinds, kinds
    data = [e for e in evs if e["event"] == "alloc" and e["kind"] == "data"]
    refs = [e for e in evs if e["event"] == "ref"]
    assert any(e["bytes"] == 1 << 20 for e in data), data
    assert any(r["extent"] == d["bytenr"] and r["delta"] == 1 for d in data for r in refs), (data, refs)
    ops = {e["op"] for e in evs if e["event"] == "fuse"}
    assert {"mkdir", "create", "write"} <= ops, ops
    cow = [e for e in evs if e["event"] == "cow"]
    assert all(e["old"] != e["new"] and e["transid"] >= 1 for e in cow)

    def read(mnt):
        names = os.listdir(os.path.join(mnt, "d"))
        assert len(names) == 300
        with open(os.path.join(mnt, "d", "file-007")) as f:
            assert f.read() == "x" * 3000

    trace = session(image, tmp_path, "ro", read)
    evs = events(trace)
    kinds = {e["event"] for e in evs}
    assert {"fuse", "search", "block_read"} <= kinds, kinds
    assert not kinds & {"cow", "commit", "split", "alloc", "free", "ref"}, kinds
    searches = [e for e in evs if e["event"] == "search"]
    assert all(len(e["key"]) == 3 and isinstance(e["found"], bool) for e in searches)
