"""btrfs-fuse must read exactly what the kernel reads.

For every corpus image and mount mode: walk the image under the in-kernel
btrfs driver (or, for images the kernel cannot mount, the mkfs --rootdir
source directory) into a manifest, unmount, walk it under btrfs-fuse, and
compare every entry: names, types, modes, owners, sizes, nlink, inode
numbers, d_ino, times (ns), symlink targets, rdev, xattrs, st_blocks, hard
link structure and the SHA-256 of every byte of every file.

Environment:
  BTRFS_FUSE=PATH          binary under test (default: <repo>/btrfs-fuse);
                           missing binary = test failure
  BTRFS_FUSE_SELFTEST=1    check the harness: the "fuse" side is a second
                           kernel mount (twin.img for rootdir images with
                           sectorsize > 4096)
  BTRFS_FUSE_SELFTEST_SWAP=NAME  with SELFTEST: mount image NAME on the
                           "fuse" side instead, to see a failing comparison
  BTRFS_FUSE_IGNORE=f1,f2  fields not to compare (e.g. blocks,atime,dino)
  BTRFS_FUSE_CORPUS=DIR    corpus directory (default <repo>/build/corpus)
  BTRFS_FUSE_CORPUS_SEED=N base seed of the corpus
"""

import os
import shlex

import pytest

import corpus
import mounts
import treecmp

SELFTEST = os.environ.get("BTRFS_FUSE_SELFTEST", "") not in ("", "0")
SWAP = os.environ.get("BTRFS_FUSE_SELFTEST_SWAP") or None
BINARY = os.environ.get("BTRFS_FUSE") or os.path.join(corpus.REPO, "btrfs-fuse")
IGNORE = [f for f in os.environ.get("BTRFS_FUSE_IGNORE", "").split(",") if f]
MAX_DIFFS = 60


def _cases():
    for spec in corpus.SPECS:
        for mode_id, opts in spec.modes:
            # ids must stay usable in -k expressions: [\w:+\-.\[\]/] only
            yield pytest.param(spec.name, mode_id, opts, id="%s:%s" % (spec.name, mode_id))


def _opts(*parts):
    return ",".join(p for p in parts if p)


def _resolve(opts, man):
    """subvolid=@PATH -> subvolid=<id of PATH in this image>."""
    out = []
    for o in opts.split(","):
        if o.startswith("subvolid=@"):
            path = o[len("subvolid=@"):]
            ids = [s["id"] for s in man["expected"].get("subvolumes", []) if s["path"] == path]
            if not ids:
                pytest.fail("image %s has no subvolume %s (manifest)" % (man["name"], path))
            o = "subvolid=%d" % ids[0]
        if o:
            out.append(o)
    return ",".join(out)


def _kernel_manifest(images, options, ctx):
    marker = mounts.dmesg_marker()
    try:
        with mounts.kernel_mount(images, options) as m:
            man = treecmp.walk(m, seek_holes=True)
            loops = list(m.loops)
    except mounts.MountError as e:
        pytest.fail("%s\nkernel mount failed (the corpus image or the harness is broken):\n%s"
                    % (ctx, e), pytrace=False)
    errs = mounts.dmesg_btrfs_errors(marker, devices=loops)
    if errs:
        pytest.fail("%s\nthe kernel logged BTRFS problems for this image:\n  %s"
                    % (ctx, "\n  ".join(errs)), pytrace=False)
    return man


def _images(man):
    return corpus.image_paths(None, man)


@pytest.mark.parametrize("name,mode_id,mode_opts", list(_cases()))
def test_read(name, mode_id, mode_opts, corpus_manifests):
    man = corpus_manifests[name]
    cdir = corpus.corpus_dir()
    opts = _resolve(mode_opts, man)
    ro_opts = _opts("ro", opts)
    images = _images(man)
    ctx = ("image=%s mode=%s (-o %s) seed=%s (base seed %s) corpus=%s\n"
           "images: %s\nreproduce: BTRFS_FUSE_CORPUS_SEED=%s scripts/make-corpus %s"
           % (name, mode_id, ro_opts, man["seed"], man.get("base_seed"), cdir,
              " ".join(images), man.get("base_seed"), name))

    # ---- reference side
    if man["compare_with"] == "source":
        src = os.path.join(cdir, name, "source")
        ref = treecmp.expect_btrfs_from_source(
            treecmp.walk(src, btrfs=False, seek_holes=True))
        ref_label = "source"
    else:
        ref = _kernel_manifest(images, ro_opts, ctx)
        ref_label = "kernel"

    # ---- side under test
    stderr = ""
    if SELFTEST:
        test_label = "selftest-kernel"
        timgs = images
        if SWAP:
            timgs = _images(corpus_manifests[SWAP])
        elif man["compare_with"] == "source":
            timgs = [os.path.join(cdir, name, man["twin_image"])]
        got = _kernel_manifest(timgs, ro_opts, ctx)
        how = "kernel mount -o %s %s" % (ro_opts, " ".join(timgs))
    else:
        test_label = "btrfs-fuse"
        if not os.path.exists(BINARY):
            pytest.fail("%s\nbtrfs-fuse binary not found at %s: build it first, or set "
                        "BTRFS_FUSE=/path/to/btrfs-fuse (BTRFS_FUSE_SELFTEST=1 checks the "
                        "harness kernel-vs-kernel)" % (ctx, BINARY), pytrace=False)
        m = None
        try:
            with mounts.fuse_mount(BINARY, images, options=ro_opts) as m:
                got = treecmp.walk(m)
            stderr = m.stderr_text()
        except (mounts.MountError, mounts.FuseDaemonError) as e:
            pytest.fail("%s\n%s" % (ctx, e), pytrace=False)
        except OSError as e:
            pytest.fail("%s\nwalking the btrfs-fuse mount failed: %s\ndaemon output:\n%s"
                        % (ctx, e, m.stderr_text() if m else ""), pytrace=False)
        how = " ".join(shlex.quote(a) for a in m.argv)

    detailed = treecmp.compare_detailed(ref, got, ignore=IGNORE, labels=(ref_label, test_label))
    if detailed:
        diffs = [m for _p, _f, m in detailed]
        lines = [ctx, "%s: %s" % (test_label, how),
                 "%d difference(s) (%s vs %s; %d entries in %s) by field: %s" % (
                     len(diffs), ref_label, test_label, len(ref["entries"]), ref_label,
                     treecmp.summarize(detailed))]
        lines += ["  [%s] %s" % (name, d) for d in diffs[:MAX_DIFFS]]
        if len(diffs) > MAX_DIFFS:
            lines.append("  ... and %d more" % (len(diffs) - MAX_DIFFS))
        if stderr.strip():
            lines.append("btrfs-fuse output (tail):\n" + stderr[-4000:])
        pytest.fail("\n".join(lines), pytrace=False)


# ------------------------------------------- the corpus is what it claims

FEATURE_CHECKS = {
    "default": (["NO_HOLES", "SKINNY_METADATA"], [], ["FREE_SPACE_TREE"]),
    "feat-no-holes-off": ([], ["NO_HOLES"], []),
    "feat-skinny-off": ([], ["SKINNY_METADATA"], []),
    "feat-fst-off": ([], [], []),
    "feat-extref-off": ([], ["EXTENDED_IREF"], []),
    "feat-mixed": (["MIXED_GROUPS"], [], []),
    "metadata-uuid": (["METADATA_UUID"], [], []),
    "profile-raid5": (["RAID56"], [], []),
    "profile-raid6": (["RAID56"], [], []),
    "profile-raid1c3": (["RAID1C34"], [], []),
    "profile-raid1c4": (["RAID1C34"], [], []),
}


@pytest.mark.parametrize("name", [s.name for s in corpus.SPECS])
def test_corpus_properties(name, corpus_manifests):
    """The images have the features/csum/nodesize/profiles they are meant to test."""
    man = corpus_manifests[name]
    exp = man["expected"]
    spec = corpus.SPEC_BY_NAME[name]
    bad = []

    def check(cond, what):
        if not cond:
            bad.append(what)

    opts = spec.mkfs
    if "--csum" in opts:
        want = opts[opts.index("--csum") + 1]
        check(exp["csum"].startswith(want), "csum %r, wanted %r" % (exp["csum"], want))
    if "-n" in opts:
        want = int(opts[opts.index("-n") + 1])
        check(exp["nodesize"] == want, "nodesize %d, wanted %d" % (exp["nodesize"], want))
    if "-s" in opts:
        want = int(opts[opts.index("-s") + 1])
        check(exp["sectorsize"] == want, "sectorsize %d, wanted %d" % (exp["sectorsize"], want))
    check(exp["num_devices"] == spec.ndevs, "num_devices %d, wanted %d" % (exp["num_devices"], spec.ndevs))
    must, mustnot, ro_must = FEATURE_CHECKS.get(name, ([], [], []))
    for f in must:
        check(f in exp["incompat"], "incompat %s missing: %s" % (f, exp["incompat"]))
    for f in mustnot:
        check(f not in exp["incompat"], "incompat %s present: %s" % (f, exp["incompat"]))
    for f in ro_must:
        check(f in exp["compat_ro"], "compat_ro %s missing: %s" % (f, exp["compat_ro"]))
    if name == "feat-fst-off":
        check("FREE_SPACE_TREE" not in exp["compat_ro"], "free space tree present")
    if name == "metadata-uuid":
        check(exp["metadata_uuid"] != exp["fsid"], "metadata_uuid == fsid")
    if name == "subvol":
        d = exp.get("default_subvol", {})
        check(d.get("id", 0) > 256 and d.get("path") == "subvols/default_sv",
              "default subvolume %r" % d)
        ro = [sv["path"] for sv in exp["subvolumes"] if sv["readonly"]]
        check(ro == ["subvols/snap_a_ro"], "read-only subvolumes %r" % ro)
    if name.startswith("compress-"):
        algo = spec.mount.split("=")[1].split(":")[0]
        if algo in ("lzo", "zstd"):
            check("COMPRESS_" + algo.upper() in exp["incompat"],
                  "incompat COMPRESS_%s missing" % algo.upper())
    if spec.profile:
        check(spec.profile in exp["profiles"].get("Data", []),
              "data profile %r, wanted %s" % (exp["profiles"], spec.profile))
    for img in _images(man):
        check(os.path.exists(img), "missing image file %s" % img)
    if bad:
        pytest.fail("image=%s seed=%s: the corpus image is not what it should be:\n  %s"
                    % (name, man["seed"], "\n  ".join(bad)), pytrace=False)
