"""The request loop (fuse/loop.c, fuse/qos.c): during a burst of requests the daemon holds a CPU latency
request (/dev/cpu_dma_latency), so that idle CPUs poll instead of halting, and takes it back 2 ms after the
last request; isolated requests never take it, -o cpu_latency=off never does, and a daemon that may not open
/dev/cpu_dma_latency (an ordinary user) works without it. Seen through -o trace (cpu_latency events) and, where
the machine has cpuidle statistics with a polling state, through the count of halting idle entries."""
import glob
import json
import os
import subprocess
import tempfile
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("BTRFS_FUSE", os.path.join(REPO, "btrfs-fuse"))
QUIET = 0.002  # fuse/loop.c QUIET_NS
BURST = 2000


def run(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


@pytest.fixture
def image(tmp_path):
    img = str(tmp_path / "t.img")
    with open(img, "wb") as f:
        f.truncate(300 << 20)
    run("mkfs.btrfs", "-q", "-f", img)
    return img


def events(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def halting_idle_entries():
    """Entries into idle states other than polling, summed over CPUs; None without such statistics."""
    total, seen_poll = 0, False
    for d in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpuidle/state[0-9]*"):
        with open(os.path.join(d, "name")) as f:
            name = f.read().strip()
        with open(os.path.join(d, "usage")) as f:
            usage = int(f.read())
        if name == "POLL":
            seen_poll = True
        else:
            total += usage
    return total if seen_poll else None


def burst(mnt, tag):
    """BURST empty files made in a new directory: requests (lookup, create, release) that each take the daemon
    long enough for the program's CPU to go idle while it waits."""
    d = os.path.join(mnt, tag)
    os.mkdir(d)
    for i in range(BURST):
        os.close(os.open(os.path.join(d, "f%d" % i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))


def session(image, tmp_path, opts, work):
    mnt = tempfile.mkdtemp(dir=str(tmp_path))
    trace = str(tmp_path / "trace.json")
    run(BIN, "-o", "rw,%s,trace=%s" % (opts, trace), image, mnt)
    try:
        work(mnt)
    finally:
        run("fusermount3", "-u", mnt)
    return events(trace)


def test_burst_holds_and_quiet_releases(image, tmp_path):
    seen = {}

    def work(mnt):
        os.stat(mnt)
        time.sleep(0.05)
        before = halting_idle_entries()
        t0 = time.monotonic()
        burst(mnt, "a")
        seen["burst_s"] = time.monotonic() - t0
        if before is not None:
            seen["halts"] = halting_idle_entries() - before
        time.sleep(0.05)
        for i in range(3):  # isolated requests, 50 ms apart: no burst
            assert not os.path.exists(os.path.join(mnt, "lonely-%d" % i))
            time.sleep(0.05)

    evs = session(image, tmp_path, "cpu_latency=0", work)
    qos = [e for e in evs if e["event"] == "cpu_latency"]
    assert [e["held"] for e in qos] == [True, False] * (len(qos) // 2) and qos, qos
    assert all(e["us"] == 0 for e in qos if e["held"]), qos
    windows = [(qos[i]["t"], qos[i + 1]["t"]) for i in range(0, len(qos), 2)]
    burst_t = sorted(e["t"] for e in evs if e["event"] == "fuse" and e["op"] == "create")
    lonely_t = sorted(e["t"] for e in evs if e["event"] == "fuse" and e["op"] == "lookup")[-3:]
    assert len(burst_t) == BURST and min(lonely_t) > burst_t[-1], (len(burst_t), lonely_t)
    held = [w for w in windows if w[0] <= burst_t[2] and burst_t[-1] < w[1]]
    assert held, "no latency request held through the burst: %s, burst %.6f-%.6f" % (
        windows, burst_t[0], burst_t[-1])
    release = held[0][1]
    assert release >= burst_t[-1] + QUIET, "released %.6f s after the last request" % (release - burst_t[-1])
    assert release <= burst_t[-1] + 0.5, "still held %.3f s after the last request" % (release - burst_t[-1])
    for t in lonely_t:
        assert not [w for w in windows if w[0] <= t <= w[1]], "isolated request at %.6f held it: %s" % (
            t, windows)
    if "halts" in seen:
        # Idle CPUs polled. Without the request this burst gives about one halt per four files here
        # (450-510 of them); other programs can only make fewer, by keeping CPUs busy.
        assert seen["halts"] < BURST // 20, "%d halting idle entries while making %d files (%.3f s)" % (
            seen["halts"], BURST, seen["burst_s"])


def test_cpu_latency_off_never_asks(image, tmp_path):
    evs = session(image, tmp_path, "cpu_latency=off", lambda mnt: burst(mnt, "b"))
    assert not [e for e in evs if e["event"] == "cpu_latency"]
    assert len([e for e in evs if e["event"] == "fuse" and e["op"] == "create"]) == BURST


def test_cpu_latency_value_passed(image, tmp_path):
    evs = session(image, tmp_path, "cpu_latency=20", lambda mnt: burst(mnt, "c"))
    qos = [e for e in evs if e["event"] == "cpu_latency"]
    assert qos and qos[0]["held"] and qos[0]["us"] == 20, qos


@pytest.mark.parametrize("value", ["-1", "1000001", "x", ""])
def test_cpu_latency_bad_value(image, tmp_path, value):
    mnt = tempfile.mkdtemp(dir=str(tmp_path))
    p = subprocess.run([BIN, "-o", "cpu_latency=" + value, image, mnt], capture_output=True, text=True)
    assert p.returncode != 0
    assert "invalid cpu_latency" in p.stderr, p.stderr
