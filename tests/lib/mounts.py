"""Mount helpers for the btrfs-fuse test harness.

* kernel_mount(images, options='ro')   -- loop devices + the in-kernel btrfs
* fuse_mount(binary, images, options='') -- btrfs-fuse under test
* dmesg_marker() / dmesg_btrfs_errors(marker) -- kernel log checks

Both context managers yield a Mount object, which is os.PathLike (and has
.path); use it wherever a path is expected.  Everything is cleaned up on
exceptions: mounts are unmounted (lazily as a last resort), loop devices
detached, FUSE daemons killed if they do not exit by themselves.

Never mount the same image with the kernel and with btrfs-fuse at the same
time (btrfs-fuse locks its images; the kernel would also be confused): mount
one, take a manifest (treecmp.walk), unmount, then the other.
"""

import contextlib
import fcntl
import hashlib
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

__all__ = [
    "image_lock", "MountError", "FuseDaemonError", "Mount", "kernel_mount", "fuse_mount",
    "mountinfo", "mount_fstype", "is_fuse_mount", "dmesg_marker",
    "dmesg_btrfs_errors", "BENIGN_KERNEL_MESSAGES",
]


class MountError(RuntimeError):
    """A mount could not be set up. str() carries the command and its output."""


class FuseDaemonError(RuntimeError):
    """The FUSE daemon exited abnormally (crash / non-zero status)."""


def _run(argv, check=True, timeout=120):
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise MountError("command failed (exit %d): %s\n%s%s" % (
            p.returncode, " ".join(shlex.quote(a) for a in argv),
            p.stdout, p.stderr))
    return p


# ---------------------------------------------------------------- mountinfo

def _unescape_mountinfo(s):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def mountinfo():
    """List of (mountpoint, fstype, source, options) from /proc/self/mountinfo."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.rstrip("\n").partition(" - ")
            lf = left.split(" ")
            rf = right.split(" ")
            if len(lf) < 6 or len(rf) < 2:
                continue
            out.append((_unescape_mountinfo(lf[4]), rf[0],
                        _unescape_mountinfo(rf[1]), lf[5] + "," + (rf[2] if len(rf) > 2 else "")))
    return out


def mount_fstype(path):
    """fstype of the mount whose mountpoint is exactly `path` (last one wins), or None."""
    path = os.path.realpath(path)
    fstype = None
    for mp, fs, _src, _opts in mountinfo():
        if mp == path:
            fstype = fs
    return fstype


def is_fuse_mount(path):
    fs = mount_fstype(path)
    return fs is not None and fs.startswith("fuse")


def mounts_below(root):
    """Mountpoints strictly below `root` (realpath'd)."""
    root = os.path.realpath(root)
    pref = root.rstrip("/") + "/"
    return sorted({mp for mp, _fs, _s, _o in mountinfo() if mp.startswith(pref)})


# ---------------------------------------------------------------- Mount obj

class Mount(os.PathLike):
    """What kernel_mount / fuse_mount yield.  os.PathLike, str() is the path."""

    def __init__(self, path, kind, images, options):
        self.path = path
        self.kind = kind            # "kernel" or "fuse"
        self.images = list(images)
        self.options = options
        self.loops = []             # kernel: loop devices
        self.argv = None            # fuse: daemon command line
        self.proc = None            # fuse: Popen of the daemon (foreground)
        self.returncode = None      # fuse: daemon exit status after unmount
        self._log = None
        self._final_output = ""

    def __fspath__(self):
        return self.path

    def __str__(self):
        return self.path

    def __repr__(self):
        return "<Mount %s %s -o %r %s>" % (self.kind, self.path, self.options, self.images)

    def describe(self):
        if self.kind == "fuse":
            return "btrfs-fuse: %s" % " ".join(shlex.quote(a) for a in (self.argv or []))
        return "kernel: %s (%s)" % (" ".join(shlex.quote(a) for a in (self.argv or [])),
                                    " ".join(self.images))

    def stderr_text(self, limit=20000):
        """stderr/stdout of the FUSE daemon collected so far ('' for kernel mounts)."""
        if self._log:
            try:
                with open(self._log, "rb") as f:
                    text = f.read().decode("utf-8", "replace")
            except OSError:
                text = ""
        else:
            text = self._final_output

        if len(text) > limit:
            text = "[... %d bytes cut ...]\n" % (len(text) - limit) + text[-limit:]
        return text


def _as_list(images):
    if isinstance(images, (str, bytes, os.PathLike)):
        return [os.fspath(images)]
    return [os.fspath(i) for i in images]


def _split_opts(options):
    return [o for o in (options or "").split(",") if o]


# ------------------------------------------------------------ image locks
#
# Several test sessions may run on one machine at once (and share
# build/corpus).  The kernel and btrfs-fuse must never have the same image
# at the same time, so every mount made through this module holds an
# exclusive flock per image file for as long as it is mounted.  The lock
# file is NOT the image itself (btrfs-fuse flocks the image) but
# $BTRFS_FUSE_LOCKDIR (default /tmp/btrfs-fuse-test-locks)/<hash>.lock.
# Locks are re-entrant within a process, so a test may still mount an
# image twice on purpose (e.g. to check that btrfs-fuse refuses an image
# the kernel has mounted).

_locks = {}                  # lock path -> [fd, count]
_locks_mutex = threading.Lock()
LOCK_TIMEOUT = float(os.environ.get("BTRFS_FUSE_LOCK_TIMEOUT", "900"))


def _lockfile(image):
    d = os.environ.get("BTRFS_FUSE_LOCKDIR", "/tmp/btrfs-fuse-test-locks")
    os.makedirs(d, exist_ok=True)
    real = os.path.realpath(os.fspath(image))
    return os.path.join(d, hashlib.sha1(real.encode("utf-8", "surrogateescape")).hexdigest()[:20]
                        + ".lock")


def _lock_one(image, timeout):
    lp = _lockfile(image)
    with _locks_mutex:
        if lp in _locks:
            _locks[lp][1] += 1
            return lp
    deadline = time.monotonic() + timeout
    while True:
        fd = os.open(lp, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() > deadline:
                try:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                except OSError:
                    holder = "?"
                os.close(fd)
                raise MountError("image %s is still in use by another test after %.0fs "
                                 "(lock %s held by: %s)" % (image, timeout, lp, holder))
            os.close(fd)
            time.sleep(0.1)
            continue
        # the holder before us may have unlinked the file: lock the live one
        try:
            same = os.stat(lp).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, ("pid %d: %s\n" % (os.getpid(), " ".join(sys.argv)[:150])).encode(), 0)
    with _locks_mutex:
        _locks[lp] = [fd, 1]
    return lp


def _unlock_one(lp):
    with _locks_mutex:
        ent = _locks.get(lp)
        if not ent:
            return
        ent[1] -= 1
        if ent[1] > 0:
            return
        del _locks[lp]
    try:
        os.unlink(lp)         # while still locked: no clutter, no race
    except OSError:
        pass
    os.close(ent[0])          # releases the flock


@contextlib.contextmanager
def image_lock(images, timeout=None):
    """Hold the per-image test locks of all `images` (sorted: no deadlocks)."""
    held = []
    try:
        for img in sorted({os.path.realpath(os.fspath(i)) for i in _as_list(images)}):
            held.append(_lock_one(img, LOCK_TIMEOUT if timeout is None else timeout))
        yield
    finally:
        for lp in reversed(held):
            _unlock_one(lp)


# ------------------------------------------------------------- kernel side

def losetup_attach(image, readonly=False):
    argv = ["losetup", "-f", "--show"]
    if readonly:
        argv.append("-r")
    argv.append(os.fspath(image))
    # losetup -f can race with other users of loop devices: retry a few times.
    last = None
    for _ in range(5):
        p = _run(argv, check=False)
        if p.returncode == 0 and p.stdout.strip():
            return p.stdout.strip()
        last = p
        time.sleep(0.2)
    raise MountError("losetup failed for %s: %s%s" % (image, last.stdout, last.stderr))


def losetup_detach(dev):
    for _ in range(20):
        p = _run(["losetup", "-d", dev], check=False)
        if p.returncode == 0 or "No such device" in p.stderr:
            return
        time.sleep(0.1)


def _forget(dev):
    # drop the kernel's registration of this (unmounted) device, so that a
    # later user of the same loop number does not inherit a stale fsid.
    _run(["btrfs", "device", "scan", "--forget", dev], check=False)


def _umount(path, cmd):
    for i in range(50):
        p = _run(cmd + [path], check=False)
        if p.returncode == 0:
            return True
        if ("not mounted" in p.stderr or "not found" in p.stderr.lower()
                or "entry for" in p.stderr):
            return True
        time.sleep(0.1 if i < 20 else 0.3)
    return False


@contextlib.contextmanager
def kernel_mount(image_or_images, options="ro", mountpoint=None, lock=True):
    """Mount one or more image files with the in-kernel btrfs driver.

    Each image gets its own loop device (read-only if `ro` is in options);
    the extra devices are passed with -o device=...  Yields a Mount.
    lock: hold the per-image test locks while mounted (see image_lock).
    """
    images = _as_list(image_or_images)
    opts = _split_opts(options)
    readonly = "ro" in opts
    lock = image_lock(images) if lock else contextlib.nullcontext()
    lock.__enter__()
    own_mp = mountpoint is None
    mp = mountpoint or tempfile.mkdtemp(prefix="btrfs-kmnt-")
    mnt = Mount(os.path.realpath(mp), "kernel", images, options)
    mounted = False
    try:
        for img in images:
            mnt.loops.append(losetup_attach(img, readonly=readonly))
            _note_loop(mnt.loops[-1], True)
        allopts = list(opts)
        if len(mnt.loops) > 1:
            allopts += ["device=%s" % d for d in mnt.loops]
        argv = ["mount", "-t", "btrfs"]
        if allopts:
            argv += ["-o", ",".join(allopts)]
        argv += [mnt.loops[0], mnt.path]
        mnt.argv = argv
        p = _run(argv, check=False)
        if p.returncode != 0:
            raise MountError("kernel mount failed: %s\n%s%s" % (
                " ".join(shlex.quote(a) for a in argv), p.stdout, p.stderr))
        mounted = True
        yield mnt
    finally:
        if mounted:
            if not _umount(mnt.path, ["umount"]):
                _run(["umount", "-l", mnt.path], check=False)
        for dev in mnt.loops:
            _forget(dev)
            losetup_detach(dev)
            _note_loop(dev, False)
        lock.__exit__(None, None, None)
        if own_mp:
            try:
                os.rmdir(mnt.path)
            except OSError:
                pass


# --------------------------------------------------------------- fuse side

def _wait_for(cond, secs):
    end = time.monotonic() + secs
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def _proc_alive(proc):
    return proc is not None and proc.poll() is None


def _find_daemon_pids(binary, mp):
    """PIDs whose last command-line argument is the mountpoint `mp` (a fresh
    temporary directory, so unique): the daemon of a daemonized mount, even
    if `binary` exec'd something else."""
    pids = []
    me = os.getpid()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        argv = [a.decode("utf-8", "surrogateescape") for a in argv if a]
        if len(argv) >= 2 and argv[-1].rstrip("/") == mp.rstrip("/"):
            pids.append(int(d))
    return pids


@contextlib.contextmanager
def fuse_mount(binary, images, options="", foreground=True, mountpoint=None,
               timeout=30.0, check_exit=True, extra_args=(), env=None, lock=True):
    """Run `binary [-f] [-o options] IMAGE... MOUNTPOINT` and wait for the mount.

    Waits (polling /proc/self/mountinfo) until MOUNTPOINT is a FUSE mount, the
    daemon exits, or `timeout` seconds pass; raises MountError with the
    daemon's output in the latter two cases.  On exit: fusermount3 -u, wait
    for the daemon, SIGTERM/SIGKILL it if it lingers.  If check_exit and the
    body raised nothing, a daemon that died from a signal or exited non-zero
    raises FuseDaemonError (with its stderr).
    lock: hold the per-image test locks while mounted (see image_lock).
    """
    images = _as_list(images)
    binary = os.fspath(binary)
    lockcm = image_lock(images) if lock else contextlib.nullcontext()
    lockcm.__enter__()
    own_mp = mountpoint is None
    mp = mountpoint or tempfile.mkdtemp(prefix="btrfs-fmnt-")
    mnt = Mount(os.path.realpath(mp), "fuse", images, options)
    fd, mnt._log = tempfile.mkstemp(prefix="btrfs-fuse-", suffix=".log")
    log = os.fdopen(fd, "wb")
    argv = [binary]
    if foreground:
        argv.append("-f")
    argv += list(extra_args)
    if options:
        argv += ["-o", options]
    argv += images + [mnt.path]
    mnt.argv = argv
    mounted = False
    body_failed = False
    try:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
        except OSError as e:
            raise MountError("cannot start %s: %s" % (binary, e))
        mnt.proc = proc
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            if is_fuse_mount(mnt.path):
                mounted = True
                break
            rc = proc.poll()
            if rc is not None and (foreground or rc != 0):
                mnt.returncode = rc
                raise MountError("btrfs-fuse exited with status %s before mounting\n"
                                 "command: %s\noutput:\n%s" % (
                                     rc, " ".join(shlex.quote(a) for a in argv),
                                     mnt.stderr_text()))
            if time.monotonic() > deadline:
                raise MountError("btrfs-fuse did not mount %s within %.0fs\n"
                                 "command: %s\noutput:\n%s" % (
                                     mnt.path, timeout,
                                     " ".join(shlex.quote(a) for a in argv),
                                     mnt.stderr_text()))
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        try:
            yield mnt
        except BaseException:
            body_failed = True
            raise
    finally:
        if mounted or is_fuse_mount(mnt.path):
            if not _umount(mnt.path, ["fusermount3", "-u"]):
                _run(["fusermount3", "-u", "-z", mnt.path], check=False)
        pids = []
        if mnt.proc is not None and foreground:
            pids = [mnt.proc.pid]
        elif not foreground:
            pids = _find_daemon_pids(binary, mnt.path)

        def gone():
            if mnt.proc is not None and foreground:
                return not _proc_alive(mnt.proc)
            return not any(os.path.exists("/proc/%d" % p) for p in pids)

        if not _wait_for(gone, 10):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                for pid in pids:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
                if _wait_for(gone, 5):
                    break
        if mnt.proc is not None:
            try:
                mnt.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            mnt.returncode = mnt.proc.returncode
        log.close()
        lockcm.__exit__(None, None, None)
        mnt._final_output = mnt.stderr_text(limit=1 << 24)
        try:
            os.unlink(mnt._log)
        except OSError:
            pass
        mnt._log = None
        if own_mp:
            try:
                os.rmdir(mnt.path)
            except OSError:
                pass
    if check_exit and not body_failed and foreground and mnt.returncode not in (0, None):
        rc = mnt.returncode
        what = ("killed by signal %s" % signal.Signals(-rc).name if rc < 0
                else "exit status %d" % rc)
        raise FuseDaemonError("btrfs-fuse daemon ended with %s (expected: exit 0 after unmount)\ncommand: %s\noutput:\n%s"
                              % (what, " ".join(shlex.quote(a) for a in argv),
                                 mnt.stderr_text()))


# ------------------------------------------------------------------- dmesg

# kernel messages that are expected for some corpus images and are not errors
BENIGN_KERNEL_MESSAGES = [
    r"space cache v1 is being deprecated",
    r"RAID56 is experimental",
    r"raid56 is experimental",
    r"has skinny extents",
]


def dmesg_marker(tag="btrfs-fuse-test"):
    """Write a unique marker line into the kernel log and return it."""
    marker = "%s-marker-%s" % (tag, uuid.uuid4().hex)
    try:
        with open("/dev/kmsg", "w") as f:
            f.write(marker + "\n")
    except OSError:
        return None
    return marker


def _read_kmsg():
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return []
    recs = []
    try:
        while True:
            try:
                rec = os.read(fd, 16384)
            except BlockingIOError:
                break
            except BrokenPipeError:     # records overwritten while reading
                continue
            if not rec:
                break
            line = rec.decode("utf-8", "replace")
            head, _, msg = line.partition(";")
            msg = msg.split("\n", 1)[0]
            recs.append(msg)
    finally:
        os.close(fd)
    return recs


# Device-less kernel lines that other sessions' mounts cause (an option warning).
OTHERS_MESSAGES = [r"excessive commit interval"]


# Our uses of loop devices: basename -> [(attach marker, detach marker or None)], written into the kernel log
# around each kernel mount, so that a line naming loopN counts as ours only while we held loopN.
_LOOP_SPANS = {}


def _note_loop(dev, attached):
    spans = _LOOP_SPANS.setdefault(os.path.basename(dev), [])
    marker = dmesg_marker("loop-%s-%s" % ("attach" if attached else "detach", os.path.basename(dev)))
    if attached:
        spans.append([marker, None])
    elif spans and spans[-1][1] is None:
        spans[-1][1] = marker


def _held(recs, devices):
    """basename -> list of (first, end) record indexes during which we held that loop device; None where
    our markers are not in the log (then every line naming the device counts)."""
    where = {}
    for i, msg in enumerate(recs):
        if "loop-attach-" in msg or "loop-detach-" in msg:
            where[msg.strip()] = i
    out = {}
    for d in devices:
        base = os.path.basename(d)
        spans = []
        for a, b in _LOOP_SPANS.get(base, []):
            if a not in where:
                spans = None
                break
            spans.append((where[a], where.get(b, len(recs))))
        out[base] = spans or None
    return out


def _concerns(i, msg, held):
    """Whether kernel line i may concern one of our devices: the kernel log is shared with every other test
    running on this machine, so a line naming another device is theirs, and so is a line naming one of our
    loop devices from a time we did not hold it; so are the known device-less option warnings."""
    if any(re.search(b, msg) for b in OTHERS_MESSAGES):
        return False
    dev = re.search(r"\(device ([^)]+)\)", msg)
    if not dev:
        return True
    base = os.path.basename(dev.group(1))
    if base not in held:
        return False
    return held[base] is None or any(a < i < b for a, b in held[base])


def dmesg_btrfs_errors(since_marker, benign=BENIGN_KERNEL_MESSAGES,
                       levels=("warning", "error", "critical", "alert", "emerg"), devices=None):
    """BTRFS warning/error/critical kernel log lines written after the marker.

    Lines matching any regex in `benign` are dropped.  With `devices` (the loop devices of
    the mount being checked, Mount.loops), lines about other devices are dropped too.  If the marker is None
    (kmsg not writable) or not found (ring buffer wrapped), all BTRFS lines
    currently in the log are considered, prefixed with a note.
    """
    recs = _read_kmsg()
    start = 0
    found = False
    if since_marker:
        for i in range(len(recs) - 1, -1, -1):
            if since_marker in recs[i]:
                start = i + 1
                found = True
                break
    lvl = "|".join(levels)
    pat = re.compile(r"BTRFS[: ]\s*(%s)\b" % lvl, re.I)
    held = _held(recs, devices) if devices is not None else None
    out = []
    for i in range(start, len(recs)):
        msg = recs[i]
        if pat.search(msg) and not any(re.search(b, msg) for b in benign or ()):
            if held is None or _concerns(i, msg, held):
                out.append(msg)
    if out and not found:
        out.insert(0, "(marker %r not found in kernel log; showing all)" % since_marker)
    return out

