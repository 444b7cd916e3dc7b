"""Tests of the test harness itself (treecmp, mounts): a comparison that
cannot fail proves nothing, so check that every field is really compared
and that mounts are cleaned up."""

import json
import os
import shutil
import signal
import stat
import subprocess
import time

import pytest

import corpus
import mounts
import treecmp

IGN = ["atime", "ctime"]


def _make_tree(root):
    os.makedirs(root / "d" / "sub")
    (root / "f").write_bytes(b"hello world\n")
    (root / "d" / "g").write_bytes(os.urandom(300000))
    (root / "d" / "empty").write_bytes(b"")
    os.link(root / "f", root / "d" / "f_link")
    os.symlink("f", root / "lnk")
    os.mkfifo(root / "fifo")
    os.mknod(root / "chr", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.setxattr(root / "f", "user.a", b"1")
    (root / os.fsdecode(b"odd\xff\nname")).write_bytes(b"x")
    os.utime(root / "d" / "g", ns=(10**18 + 5, 10**18 + 7))


def _mutations():
    def content(r):   # same size, one byte differs
        p = r / "d" / "g"
        data = bytearray(p.read_bytes())
        data[123456] ^= 1
        st = os.stat(p)
        p.write_bytes(bytes(data))
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))

    def mtime_ns(r):
        st = os.stat(r / "d" / "g")
        os.utime(r / "d" / "g", ns=(st.st_atime_ns, st.st_mtime_ns + 1))

    def retarget(r):
        os.unlink(r / "lnk")
        os.symlink("d/g", r / "lnk")

    def unlink_hardlink(r):
        os.unlink(r / "d" / "f_link")
        (r / "d" / "f_link").write_bytes(b"hello world\n")

    def rdev(r):
        os.unlink(r / "chr")
        os.mknod(r / "chr", stat.S_IFCHR | 0o600, os.makedev(1, 5))

    return [
        ("mode", lambda r: os.chmod(r / "f", 0o4711), {"mode"}),
        ("uid", lambda r: os.chown(r / "f", 1234, -1), {"uid"}),
        ("gid", lambda r: os.chown(r / "fifo", -1, 4321), {"gid"}),
        ("content", content, {"sha256"}),
        ("size", lambda r: os.truncate(r / "d" / "g", 1000), {"size", "sha256", "blocks", "mtime"}),
        ("mtime", mtime_ns, {"mtime"}),
        ("xattr_value", lambda r: os.setxattr(r / "f", "user.a", b"2"), {"xattr"}),
        ("xattr_added", lambda r: os.setxattr(r / "d", "user.new", b""), {"xattr"}),
        ("symlink", retarget, {"target", "size", "ino", "dino", "mtime"}),
        ("hardlink", unlink_hardlink, {"nlink", "link", "ino", "dino", "xattr",
                                                 "mtime"}),
        ("rdev", rdev, {"rdev", "ino", "dino", "mtime"}),
        ("missing", lambda r: os.unlink(r / "d" / "empty"), {"only-in-A", "size", "mtime",
                                                           "nentries"}),
        ("extra", lambda r: (r / "d" / "sub" / "new").write_bytes(b""),
         {"only-in-B", "size", "mtime", "nentries"}),
    ]


@pytest.mark.parametrize("what,mutate,fields", _mutations(), ids=[m[0] for m in _mutations()])
def test_treecmp_detects(tmp_path, what, mutate, fields):
    _make_tree(tmp_path)
    a = treecmp.walk(tmp_path, btrfs=False)
    # (readlink updates a symlink's atime on a writable fs: hence IGN)
    assert treecmp.compare(a, treecmp.walk(tmp_path, btrfs=False), ignore=IGN) == []
    mutate(tmp_path)
    b = treecmp.walk(tmp_path, btrfs=False)
    det = treecmp.compare_detailed(a, b, ignore=IGN)
    got = {f for _p, f, _m in det}
    assert det, "treecmp did not notice the %s change" % what
    assert got <= fields, "unexpected fields %s for %s:\n%s" % (
        got - fields, what, "\n".join(m for _p, _f, m in det))


def test_treecmp_seek_holes_same_hash(tmp_path):
    p = tmp_path / "sparse"
    with open(p, "wb") as f:
        f.write(b"a")
        f.seek(200 << 20)
        f.write(b"b" * 5000)
        f.truncate((300 << 20) + 7)
    plain = treecmp.hash_file(str(p))
    seek = treecmp.hash_file(str(p), seek_holes=True)
    assert plain == seek
    assert plain[1] == (300 << 20) + 7


def test_manifest_roundtrip(tmp_path):
    _make_tree(tmp_path / "t")
    m = treecmp.walk(tmp_path / "t", btrfs=False)
    treecmp.save_manifest(m, str(tmp_path / "m.json"))
    m2 = treecmp.load_manifest(str(tmp_path / "m.json"))
    assert treecmp.compare(m, m2) == []
    assert json.dumps(m, sort_keys=True) == json.dumps(m2, sort_keys=True)


def test_cli_exit_status(tmp_path):
    _make_tree(tmp_path / "a")
    subprocess.run(["cp", "-a", str(tmp_path / "a"), str(tmp_path / "b")], check=True)
    cli = os.path.join(os.path.dirname(treecmp.__file__), "treecmp.py")
    argv = ["/usr/bin/python3", cli, "--not-btrfs", "--no-ino", "--no-atime", "--no-ctime",
            "--no-blocks", str(tmp_path / "a"), str(tmp_path / "b")]
    p = subprocess.run(argv, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    # break a hard link: same content, but the link structure differs
    (tmp_path / "b" / "d" / "f_link").unlink()
    shutil.copy2(tmp_path / "a" / "f", tmp_path / "b" / "d" / "f_link")
    p = subprocess.run(argv + ["--ignore", "dir:mtime"], capture_output=True, text=True)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "f: link: A='d/f_link' B=<absent>" in p.stdout, p.stdout
    assert "f: nlink: A=2 B=1" in p.stdout, p.stdout


def test_kernel_mount_cleans_up(corpus_manifests):
    man = corpus_manifests["profile-raid1"]
    imgs = corpus.image_paths(None, man)
    with pytest.raises(RuntimeError):
        with mounts.kernel_mount(imgs, "ro") as m:
            path, loops = m.path, list(m.loops)
            assert mounts.mount_fstype(path) == "btrfs"
            assert len(loops) == 2
            raise RuntimeError("boom")
    assert mounts.mount_fstype(path) is None
    assert not os.path.exists(path)
    attached = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    for img in imgs:
        assert img not in attached


def _fake_fuse(tmp_path):
    """A stand-in for btrfs-fuse built on fuse2fs, to test fuse_mount()."""
    if not shutil.which("fuse2fs") or not shutil.which("mkfs.ext4"):
        pytest.skip("fuse2fs / mkfs.ext4 not installed")
    src = tmp_path / "src"
    _make_tree(src)
    img = tmp_path / "e.img"
    with open(img, "wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-d", str(src), str(img)], check=True)
    fake = tmp_path / "fake-btrfs-fuse"
    fake.write_text(
        "#!/bin/bash\n"
        "fg=; while [ $# -gt 2 ]; do case $1 in -f) fg=-f; shift;; -o) shift 2;; *) break;; esac; done\n"
        "echo \"fake: $*\" >&2\n"
        "[ -n \"$FAKE_FAIL\" ] && { echo \"fake: cannot open $1: $FAKE_FAIL\" >&2; exit 3; }\n"
        "exec fuse2fs $fg -o ro,fakeroot \"$1\" \"$2\"\n")
    fake.chmod(0o755)
    return str(fake), str(img)


def test_fuse_mount_mechanics(tmp_path):
    fake, img = _fake_fuse(tmp_path)
    with mounts.fuse_mount(fake, img, options="ro") as m:
        assert mounts.is_fuse_mount(m.path)
        assert "f" in os.listdir(m)
        path = m.path
    assert m.returncode == 0
    assert not mounts.is_fuse_mount(path) and not os.path.exists(path)
    assert "fake:" in m.stderr_text()
    # a daemon that fails before mounting: MountError with its stderr
    env = dict(os.environ, FAKE_FAIL="bad superblock")
    with pytest.raises(mounts.MountError, match="bad superblock"):
        with mounts.fuse_mount(fake, img, env=env):
            pass
    # daemonizing (no -f)
    with mounts.fuse_mount(fake, img, foreground=False) as m:
        assert mounts.is_fuse_mount(m.path)
        path = m.path
    assert not mounts.is_fuse_mount(path)
    # a daemon that crashes: FuseDaemonError naming the signal
    with pytest.raises(mounts.FuseDaemonError, match="SIGSEGV"):
        with mounts.fuse_mount(fake, img) as m:
            os.kill(m.proc.pid, signal.SIGSEGV)
            time.sleep(0.2)
    assert not mounts.is_fuse_mount(m.path)


def test_dmesg_marker_sees_kernel_errors(corpus_manifests):
    man = corpus_manifests["rootdir-s16k"]
    marker = mounts.dmesg_marker()
    if marker is None:
        pytest.skip("/dev/kmsg not writable")
    with pytest.raises(mounts.MountError):
        with mounts.kernel_mount(corpus.image_paths(None, man), "ro"):
            pass
    errs = mounts.dmesg_btrfs_errors(marker)
    assert any("sectorsize 16384" in e for e in errs), errs


def test_image_lock_serializes_sessions(tmp_path, monkeypatch):
    """Mounts hold a per-image lock: another process waits (or times out)."""
    monkeypatch.setenv("BTRFS_FUSE_LOCKDIR", str(tmp_path / "locks"))
    img = tmp_path / "x.img"
    img.write_bytes(b"")
    with mounts.image_lock([img]):
        with mounts.image_lock([img]):          # re-entrant in one process
            pass
        code = ("import sys; sys.path.insert(0, %r); import mounts\n"
                "try:\n    with mounts.image_lock([%r], timeout=0.5): pass\n"
                "except mounts.MountError as e:\n    print('LOCKED', e)\n"
                % (os.path.dirname(mounts.__file__), str(img)))
        p = subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, text=True,
                           env=dict(os.environ))
        assert "LOCKED" in p.stdout and "pid %d" % os.getpid() in p.stdout, p.stdout + p.stderr
    p = subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, text=True)
    assert "LOCKED" not in p.stdout, p.stdout + p.stderr
    assert os.listdir(tmp_path / "locks") == []
