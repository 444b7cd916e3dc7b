"""The btrfs-fuse daemon as a person or /etc/fstab runs it.

Covers argument handling (--help, --version, missing or bad arguments, with no
mount and no daemon left behind), background start (returns only once the
mount works), unmounting with fusermount3 ending the daemon, fstab-style
starts through mount(8) and mount.fuse3, an unprivileged user mounting an
image of their own, the default mount options as root (allow_other and
default_permissions: another user reads a world-readable file and is denied a
0600 one), read-only by default and writable with `-o rw` (also from an fstab
line without `ro`, as mount.fuse3 passes rw then), and the refusals: busy mountpoint, a second btrfs-fuse on the same
image, an image the kernel has mounted; and reads, fsyncs and changes at once,
with worker threads and with -s (every request answered, data intact after a
remount).

Needs root (mount, useradd, su). The binary is $BTRFS_FUSE, default
./btrfs-fuse at the repository root. Images are made in a temporary directory
with mkfs.btrfs --rootdir; a subvolume `vol` is added through the kernel.
"""

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "lib"))
import mounts  # noqa: E402

BIN = os.path.abspath(os.environ.get("BTRFS_FUSE", os.path.join(REPO, "btrfs-fuse")))
USER = "bfuser"
TIMEOUT = 60

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount, useradd, su)"),
    pytest.mark.skipif(not os.access(BIN, os.X_OK), reason="btrfs-fuse binary not built: %s" % BIN),
    pytest.mark.skipif(shutil.which("mkfs.btrfs") is None, reason="mkfs.btrfs missing (btrfs-progs)"),
]

FILES = {
    "hello.txt": (b"hello world\n", 0o644),
    "secret": (b"secret\n", 0o600),
    "sub/inner.txt": (b"inner\n", 0o644),
}


# ------------------------------------------------------------------ helpers

def run(argv, check=False, **kw):
    kw.setdefault("stdin", subprocess.DEVNULL)
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("timeout", TIMEOUT)
    p = subprocess.run(argv, text=True, **kw)
    if check and p.returncode != 0:
        raise AssertionError("%s exited %d\nstdout: %s\nstderr: %s" % (argv, p.returncode, p.stdout, p.stderr))
    return p


def su(cmd, **kw):
    return run(["su", USER, "-s", "/bin/sh", "-c", cmd], **kw)


def daemon_pids(mountpoint):
    """Live (not zombie) btrfs-fuse processes whose command line names mountpoint."""
    mp = os.path.realpath(mountpoint)
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % d, "rb") as f:
                argv = [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
            with open("/proc/%s/stat" % d) as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state in ("Z", "X") or not argv:
            continue
        names_us = os.path.basename(argv[0]) in ("btrfs-fuse", os.path.basename(BIN))
        if names_us and any(os.path.realpath(a) == mp for a in argv[1:] if a.startswith("/")):
            pids.append(int(d))
    return pids


def wait_until(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def mount_options(mountpoint):
    """(fstype, source, options set) of the mount at mountpoint, or None."""
    mp = os.path.realpath(mountpoint)
    found = None
    for m, fstype, src, opts in mounts.mountinfo():
        if m == mp:
            found = (fstype, src, set(opts.split(",")))
    return found


def cleanup_mount(mountpoint):
    """Unmount whatever is left at mountpoint and end its daemons (tests must leave nothing behind)."""
    for _ in range(3):
        if not mounts.is_fuse_mount(mountpoint):
            break
        if run(["fusermount3", "-u", mountpoint]).returncode != 0:
            run(["fusermount3", "-u", "-z", mountpoint])
    for pid in daemon_pids(mountpoint):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if not wait_until(lambda: not daemon_pids(mountpoint), 5):
        for pid in daemon_pids(mountpoint):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def assert_nothing_left(mountpoint):
    assert not mounts.is_fuse_mount(mountpoint), "a mount was left at %s" % mountpoint
    assert wait_until(lambda: not daemon_pids(mountpoint), 5), \
        "a btrfs-fuse daemon was left behind: %s" % daemon_pids(mountpoint)


def start(args, **kw):
    """Run btrfs-fuse in the background mode (the default) and return the CompletedProcess."""
    return run([BIN] + list(args), **kw)


def ensure_user():
    if run(["id", USER]).returncode != 0:
        run(["useradd", "--no-create-home", "--shell", "/bin/sh", USER], check=True)


# ----------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def workdir():
    d = tempfile.mkdtemp(prefix="bf-daemon-")
    os.chmod(d, 0o755)  # other users must reach mounts below it
    yield d
    for mp in mounts.mounts_below(d):
        cleanup_mount(mp)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def image(workdir):
    """A btrfs image made with mkfs.btrfs --rootdir, plus a subvolume `vol` holding invol.txt."""
    src = os.path.join(workdir, "src")
    for rel, (data, mode) in FILES.items():
        p = os.path.join(src, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
        os.chmod(p, mode)
        os.chown(p, 0, 0)
    os.chmod(src, 0o755)
    os.chmod(os.path.join(src, "sub"), 0o755)
    img = os.path.join(workdir, "fs.img")
    with open(img, "wb") as f:
        f.truncate(256 << 20)
    run(["mkfs.btrfs", "-q", "-f", "--rootdir", src, img], check=True)
    with mounts.kernel_mount(img, "rw") as m:
        run(["btrfs", "subvolume", "create", os.path.join(m.path, "vol")], check=True)
        with open(os.path.join(m.path, "vol", "invol.txt"), "wb") as f:
            f.write(b"in the subvolume\n")
    os.chmod(img, 0o644)
    return img


@pytest.fixture
def mnt(workdir):
    d = tempfile.mkdtemp(prefix="mnt-", dir=workdir)
    os.chmod(d, 0o755)
    yield d
    cleanup_mount(d)
    with contextlib.suppress(OSError):
        os.rmdir(d)


@pytest.fixture
def mnt2(workdir):
    d = tempfile.mkdtemp(prefix="mnt2-", dir=workdir)
    yield d
    cleanup_mount(d)
    with contextlib.suppress(OSError):
        os.rmdir(d)


@contextlib.contextmanager
def dev_fuse_usable_by_all():
    """fusermount3 opens /dev/fuse as the calling user: Debian's udev rule makes it 0666, but a container
    without udev leaves it 0600. Open it up for the test and put the mode back afterwards."""
    mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    if mode & 0o006 != 0o006:
        os.chmod("/dev/fuse", 0o666)
    try:
        yield
    finally:
        if mode & 0o006 != 0o006:
            os.chmod("/dev/fuse", mode)


# ---------------------------------------------------------------- arguments

def test_help():
    p = run([BIN, "--help"])
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert out.startswith("usage: btrfs-fuse")
    for word in ("subvol=PATH", "subvolid=N", "device=PATH", "degraded", "allow_other",
                 "default_permissions", "READ-ONLY", "-f", "fstab"):
        assert word in out, "--help does not mention %r" % word
    assert run([BIN, "-h"]).stdout == out


def test_version():
    p = run([BIN, "--version"])
    assert p.returncode == 0, p.stderr
    assert re.fullmatch(r"btrfs-fuse \S+\n", p.stdout), p.stdout
    assert run([BIN, "-V"]).stdout == p.stdout


def test_missing_arguments(image, mnt):
    p = run([BIN])
    assert p.returncode != 0
    assert "missing" in p.stderr and "usage:" in p.stderr
    p = run([BIN, image])
    assert p.returncode != 0
    assert "MOUNTPOINT" in p.stderr
    assert_nothing_left(mnt)


def test_nonexistent_image(workdir, mnt):
    missing = os.path.join(workdir, "no-such.img")
    p = start([missing, mnt])
    assert p.returncode != 0
    assert "no-such.img" in p.stderr, p.stderr
    assert_nothing_left(mnt)


def test_not_btrfs(workdir, mnt):
    junk = os.path.join(workdir, "junk.img")
    with open(junk, "wb") as f:
        f.write(os.urandom(1 << 20))
    p = start([junk, mnt])
    assert p.returncode != 0
    assert p.stderr.strip(), "no message for a file that is not btrfs"
    assert "junk.img" in p.stderr, p.stderr
    assert_nothing_left(mnt)


def test_bad_mountpoint(image, workdir):
    p = start([image, os.path.join(workdir, "no-such-dir")])
    assert p.returncode != 0
    assert "no-such-dir" in p.stderr, p.stderr


def test_unknown_option(image, mnt):
    p = start(["-o", "no_such_option", image, mnt])
    assert p.returncode != 0
    assert "no_such_option" in p.stderr, p.stderr
    assert_nothing_left(mnt)


def test_bad_subvolid(image, mnt):
    p = start(["-o", "subvolid=abc", image, mnt])
    assert p.returncode != 0
    assert "subvolid" in p.stderr, p.stderr
    assert_nothing_left(mnt)


def test_missing_subvol(image, mnt):
    p = start(["-o", "subvol=no/such/subvolume", image, mnt])
    assert p.returncode != 0
    assert p.stderr.strip()
    assert_nothing_left(mnt)


# ------------------------------------------------------------ daemon life

def test_background_ready_and_unmount(image, mnt):
    p = start([image, mnt])
    assert p.returncode == 0, p.stderr
    # the mount must work the moment the command returns
    assert sorted(os.listdir(mnt)) == ["hello.txt", "secret", "sub", "vol"]
    with open(os.path.join(mnt, "hello.txt"), "rb") as f:
        assert f.read() == b"hello world\n"
    with open(os.path.join(mnt, "sub", "inner.txt"), "rb") as f:
        assert f.read() == b"inner\n"
    with pytest.raises(OSError) as e:
        open(os.path.join(mnt, "new-file"), "w")
    assert e.value.errno == 30  # EROFS
    pids = daemon_pids(mnt)
    assert len(pids) == 1, "expected one daemon, found %s" % pids
    run(["fusermount3", "-u", mnt], check=True)
    assert wait_until(lambda: not daemon_pids(mnt)), "the daemon did not end after fusermount3 -u"
    assert not mounts.is_fuse_mount(mnt)


def test_foreground_sigterm(image, mnt):
    proc = subprocess.Popen([BIN, "-f", image, mnt], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: mounts.is_fuse_mount(mnt) or proc.poll() is not None, 20)
        assert proc.poll() is None, proc.communicate()[1]
        assert "hello.txt" in os.listdir(mnt)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err
        assert not mounts.is_fuse_mount(mnt)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_default_options_as_root(image, mnt):
    p = start([image, mnt])
    assert p.returncode == 0, p.stderr
    fstype, src, opts = mount_options(mnt)
    assert fstype == "fuse.btrfs-fuse"
    assert src == os.path.realpath(image)
    assert {"ro", "default_permissions", "allow_other"} <= opts, opts


def assert_writable(mountpoint, name):
    """A new file can be written, read back and removed at mountpoint (nothing is left)."""
    path = os.path.join(mountpoint, name)
    with open(path, "wb") as f:
        f.write(b"written through btrfs-fuse\n")
    with open(path, "rb") as f:
        assert f.read() == b"written through btrfs-fuse\n"
    os.unlink(path)
    assert not os.path.lexists(path)


def assert_read_only(mountpoint, name):
    """Creating a file at mountpoint fails with EROFS."""
    with pytest.raises(OSError) as e:
        open(os.path.join(mountpoint, name), "wb")
    assert e.value.errno == errno.EROFS, e.value


@pytest.fixture
def rw_image(image, workdir):
    """A copy of the image for the tests that write (the other tests expect the original tree)."""
    copy = os.path.join(workdir, "rw-copy.img")
    shutil.copyfile(image, copy)
    os.chmod(copy, 0o644)
    yield copy
    os.unlink(copy)


def test_rw_gives_a_writable_mount(rw_image, mnt):
    p = start(["-o", "rw", rw_image, mnt])
    assert p.returncode == 0, p.stderr
    opts = mount_options(mnt)[2]
    assert "rw" in opts and "ro" not in opts, opts
    assert_writable(mnt, "new-file")
    run(["fusermount3", "-u", mnt], check=True)
    assert wait_until(lambda: not daemon_pids(mnt)), "the daemon did not end after fusermount3 -u"
    # without rw the same image is read-only again
    p = start([rw_image, mnt])
    assert p.returncode == 0, p.stderr
    assert "ro" in mount_options(mnt)[2]
    assert "new-file" not in os.listdir(mnt)
    assert_read_only(mnt, "new-file")


def _thread_count(pid):
    return len(os.listdir("/proc/%d/task" % pid))


@pytest.mark.parametrize("mode", [[], ["-s"]], ids=["workers", "single"])
def test_reads_and_fsync_while_changing(rw_image, mnt, mode):
    """Readers, fsyncs and changes at once: file reads and fsync go to worker threads (without -s), the rest is
    answered by the thread that reads the requests; every reader sees its file's bytes, every change lands,
    and the daemon ends cleanly. With -s there are no worker threads."""
    import hashlib
    import threading
    p = start(["-o", "rw"] + mode + [rw_image, mnt])
    assert p.returncode == 0, p.stderr
    errors = []
    try:
        pids = daemon_pids(mnt)
        assert len(pids) == 1, pids
        threads_now = _thread_count(pids[0])
        if mode:
            assert threads_now <= 3, "-s: expected no worker threads, the daemon has %d threads" % threads_now
        else:
            assert threads_now >= 4, "expected worker threads, the daemon has %d threads" % threads_now
        files = {}
        for i in range(6):
            data = os.urandom((1 << 20) + 4096 * i + 17)
            with open(os.path.join(mnt, "r%d" % i), "wb") as f:
                f.write(data)
            files["r%d" % i] = hashlib.sha256(data).hexdigest()

        def reader(k):
            for rnd in range(4):
                for name, digest in files.items():
                    with open(os.path.join(mnt, name), "rb") as f:
                        got = hashlib.sha256(f.read()).hexdigest()
                    if got != digest:
                        errors.append("reader %d round %d: %s read back wrong bytes" % (k, rnd, name))

        def changer(k):
            d = os.path.join(mnt, "c%d" % k)
            os.mkdir(d)
            for i in range(40):
                path = os.path.join(d, "f%d" % i)
                with open(path, "wb") as f:
                    f.write(b"%d-%d\n" % (k, i) * (i + 1))
                    if i % 10 == 0:
                        os.fsync(f.fileno())
                if i % 2:
                    os.unlink(path)

        def guard(fn, k):
            try:
                fn(k)
            except Exception as e:  # reported below
                errors.append("%s %d: %r" % (fn.__name__, k, e))

        workers = [threading.Thread(target=guard, args=(reader, k)) for k in range(3)]
        workers += [threading.Thread(target=guard, args=(changer, k)) for k in range(2)]
        for t in workers:
            t.start()
        for t in workers:
            t.join(TIMEOUT)
        assert not any(t.is_alive() for t in workers), "a reader or changer hung (a request got no answer)"
        assert not errors, errors
        for k in range(2):
            names = sorted(os.listdir(os.path.join(mnt, "c%d" % k)))
            assert names == sorted("f%d" % i for i in range(0, 40, 2)), "c%d holds %s" % (k, names)
        run(["fusermount3", "-u", mnt], check=True)
        assert wait_until(lambda: not daemon_pids(mnt), TIMEOUT), "the daemon did not end after fusermount3 -u"
        p = start(["-o", "ro", rw_image, mnt])  # the changes were committed at unmount
        assert p.returncode == 0, p.stderr
        for name, digest in files.items():
            with open(os.path.join(mnt, name), "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == digest, "%s after remount" % name
        with open(os.path.join(mnt, "c1", "f38"), "rb") as f:
            assert f.read() == b"1-38\n" * 39
    finally:
        cleanup_mount(mnt)
    assert_nothing_left(mnt)


def test_noallow_other(image, mnt):
    ensure_user()
    p = start(["-o", "noallow_other", image, mnt])
    assert p.returncode == 0, p.stderr
    assert "allow_other" not in mount_options(mnt)[2]
    assert su("cat %s/hello.txt" % mnt).returncode != 0  # only root may use the mount now


def test_other_user_permissions(image, mnt):
    ensure_user()
    p = start([image, mnt])
    assert p.returncode == 0, p.stderr
    r = su("cat %s/hello.txt" % mnt)
    assert r.returncode == 0 and r.stdout == "hello world\n", r.stderr
    r = su("cat %s/secret" % mnt)
    assert r.returncode != 0
    assert "Permission denied" in r.stderr, r.stderr
    with open(os.path.join(mnt, "secret"), "rb") as f:  # root still may
        assert f.read() == b"secret\n"


def test_subvol_option(image, mnt):
    p = start(["-o", "subvol=vol", image, mnt])
    assert p.returncode == 0, p.stderr
    assert os.listdir(mnt) == ["invol.txt"]
    assert os.stat(mnt).st_ino == 256


# --------------------------------------------------------------- refusals

def test_busy_mountpoint(image, workdir, mnt):
    other = os.path.join(workdir, "copy.img")
    shutil.copyfile(image, other)
    p = start([image, mnt])
    assert p.returncode == 0, p.stderr
    p = start([other, mnt])
    assert p.returncode != 0
    assert "busy" in p.stderr, p.stderr
    assert len(daemon_pids(mnt)) == 1
    assert "hello.txt" in os.listdir(mnt)  # the first mount is untouched


def test_second_instance_refused(image, mnt, mnt2):
    p = start([image, mnt])
    assert p.returncode == 0, p.stderr
    p = start([image, mnt2])
    assert p.returncode != 0
    assert os.path.basename(image) in p.stderr, p.stderr
    assert_nothing_left(mnt2)
    assert "hello.txt" in os.listdir(mnt)


def test_kernel_mounted_refused(image, mnt):
    with mounts.kernel_mount(image, "ro"):
        p = start([image, mnt])
        assert p.returncode != 0, "btrfs-fuse mounted an image the kernel has mounted"
        assert p.stderr.strip()
        assert_nothing_left(mnt)


# ------------------------------------------------------------ fstab style

def test_mount_command_fstab_style(image, mnt):
    """mount(8) runs mount.fuse3, which runs `btrfs-fuse SOURCE MOUNTPOINT -o OPTS`. mount(8) clears PATH
    for helpers, so the binary is named in the old-style source `PROGRAM#SOURCE` (fstab: type fuse)."""
    p = run(["mount", "-t", "fuse", "%s#%s" % (BIN, image), mnt, "-o", "ro,subvol=vol,noatime,nofail"])
    assert p.returncode == 0, p.stderr
    assert mount_options(mnt)[0] == "fuse.btrfs-fuse"
    assert os.listdir(mnt) == ["invol.txt"]
    run(["umount", mnt], check=True)
    assert wait_until(lambda: not daemon_pids(mnt))


def test_mount_fuse3_helper(rw_image, workdir, mnt):
    """What mount(8) does for an fstab line of type fuse.btrfs-fuse: mount.fuse3 looks the program up in
    PATH and passes the options after the positionals, with rw (unless the line says ro), dev and suid
    added. rw gives a writable mount (as a kernel mount of that fstab line would be), ro a read-only one."""
    bindir = tempfile.mkdtemp(prefix="bin-", dir=workdir)
    os.symlink(BIN, os.path.join(bindir, "btrfs-fuse"))
    env = dict(os.environ, PATH=bindir + ":" + os.environ.get("PATH", "/usr/bin:/bin"))
    helper = shutil.which("mount.fuse3") or "/sbin/mount.fuse3"
    for mode in ("rw", "ro"):
        p = run([helper, rw_image, mnt, "-t", "fuse.btrfs-fuse", "-o",
                 mode + ",subvolid=5,relatime,compress=zstd:3,space_cache=v2,_netdev"], env=env)
        assert p.returncode == 0, p.stderr
        fstype, _src, opts = mount_options(mnt)
        assert fstype == "fuse.btrfs-fuse" and mode in opts, (mode, opts)
        assert sorted(os.listdir(mnt)) == ["hello.txt", "secret", "sub", "vol"]
        if mode == "rw":
            assert "ro" not in opts, opts
            assert_writable(mnt, "from-fstab")
        else:
            assert_read_only(mnt, "from-fstab")
        run(["umount", mnt], check=True)
        assert wait_until(lambda: not daemon_pids(mnt)), "the daemon did not end after umount (%s)" % mode


# ---------------------------------------------------------- ordinary user

def test_unprivileged_user(image, workdir):
    ensure_user()
    home = tempfile.mkdtemp(prefix="user-", dir=workdir)
    uid = int(run(["id", "-u", USER], check=True).stdout)
    gid = int(run(["id", "-g", USER], check=True).stdout)
    binary = os.path.join(home, "btrfs-fuse")  # a copy the user can surely run
    shutil.copy(BIN, binary)
    img = os.path.join(home, "mine.img")
    shutil.copyfile(image, img)
    mp = os.path.join(home, "mnt")
    os.mkdir(mp)
    for p in (home, img, mp):
        os.chown(p, uid, gid)
    os.chmod(home, 0o755)
    os.chmod(img, 0o600)
    with dev_fuse_usable_by_all():
        try:
            trace = os.path.join(home, "trace.json")
            r = su("%s -o trace=%s %s %s" % (binary, trace, img, mp))
            assert r.returncode == 0, r.stderr
            fstype, _src, opts = mount_options(mp)
            assert fstype == "fuse.btrfs-fuse" and "ro" in opts
            assert "allow_other" not in opts  # never added for an ordinary user
            r = su("cat %s/hello.txt" % mp)
            assert r.returncode == 0 and r.stdout == "hello world\n", r.stderr
            assert daemon_pids(mp)
            # A burst of requests: root would hold a CPU latency request now; the user may not open
            # /dev/cpu_dma_latency and goes on without one, silently (tests/integration/test_loop.py).
            r = su("python3 -c \"import os; [os.path.exists('%s/nx%%d' %% i) for i in range(500)]\"" % mp)
            assert r.returncode == 0, r.stderr
            with open(trace) as f:
                evs = [json.loads(line) for line in f]
            assert len([e for e in evs if e["event"] == "fuse" and e["op"] == "lookup"]) >= 500
            assert not [e for e in evs if e["event"] == "cpu_latency"]
            r = su("fusermount3 -u %s" % mp)
            assert r.returncode == 0, r.stderr
            assert wait_until(lambda: not daemon_pids(mp)), "the daemon did not end after fusermount3 -u"
            assert not mounts.is_fuse_mount(mp)
        finally:
            cleanup_mount(mp)
