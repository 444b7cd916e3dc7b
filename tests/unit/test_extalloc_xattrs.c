/*
 * tests/unit/test_extalloc_xattrs.c - end-to-end runs of the extent allocator: many xattrs on root directories.
 *
 * Owns: inserting and deleting thousands of xattrs on root directories (leaves split and merge) over several
 * transactions on default, single/4K (forcing new metadata chunks), no-skinny-metadata, mixed,
 * v1-space-cache, DUP/4K and block-group-tree images (the last only when mkfs.btrfs can make one), and a
 * snapshot that shares the tree with its source.
 * Key idea: after each, `btrfs check --readonly` must find no error, the kernel must mount it without a BTRFS
 * warning or error, getfattr must show the xattrs, and for the snapshot image the kernel must delete the
 * snapshot cleanly.
 * Prints the seed; argv[1] replays (see extalloc_harness.h for the environment variables). Ends with
 * "N passed, N failed"; exit 0 only if none failed.
 */
#include "tests/unit/extalloc_harness.h"

/* Insert and delete xattrs on the root directory over several transactions, then check everything. */
static void test_xattrs(const char *name, const char *opts, unsigned mb, uint32_t vlen, int per_round,
			int rounds, bool want_chunk, const char *prep)
{
	struct tc c = { 0 };
	static struct xset x;
	memset(&x, 0, sizeof(x));
	x.tree = BF_FS_TREE_OBJECTID;
	x.vlen = vlen;
	if (mkimage(c.img, sizeof(c.img), name, opts, mb))
		return;
	if (prep) {
		char mnt[160];
		snprintf(mnt, sizeof(mnt), "%s/mnt", tmpdir);
		mkdir(mnt, 0755);
		CHECK(sh("%s %s %s", prep, c.img, mnt) == 0, "%s: preparing the image with the kernel failed", name);
	}
	if (tc_open(&c))
		return;
	size_t nchunks = c.fi->vol.nchunks;
	for (int i = 0; i < rounds; i++)
		if (xattr_round(&c, &x, per_round, i ? 25 : 0))
			break;
	if (want_chunk)
		CHECK(c.fi->vol.nchunks > nchunks, "%s: no new chunk was allocated (%zu chunks)", name, nchunks);
	verify_space(&c, name);
	printf("xattrs %s: %d names, %zu -> %zu chunks\n", name, x.n, nchunks, c.fi->vol.nchunks);
	tc_close(&c);
	btrfs_check(c.img, name);
	const char *dirs[1] = { "" };
	kernel_mount_check(c.img, name, &x, dirs, 1, "echo hello > new-file && sync");
	btrfs_check(c.img, name);
	unlink(c.img);
}

/* Snapshot sharing: the kernel makes files and a snapshot of subvolume 5; we change both trees (shared
   blocks are copied: FULL_BACKREF, shared references, data references of file extents); then the kernel reads
   the files and deletes the snapshot, walking every reference we wrote. */
static void test_snapshot(void)
{
	struct tc c = { 0 };
	static struct xset xs[3];
	memset(xs, 0, sizeof(xs));
	xs[0].tree = BF_FS_TREE_OBJECTID;
	xs[1].tree = BF_FIRST_FREE_OBJECTID; /* the snapshot's tree */
	xs[2].tree = BF_FS_TREE_OBJECTID;
	xs[2].inode = BF_FIRST_FREE_OBJECTID + 1; /* big1: its leaf holds its file extent items */
	xs[0].vlen = xs[1].vlen = xs[2].vlen = 180;
	if (mkimage(c.img, sizeof(c.img), "snapshot", "", 256))
		return;
	char mnt[160];
	snprintf(mnt, sizeof(mnt), "%s/mnt", tmpdir);
	mkdir(mnt, 0755);
	int r = sh("mount -o loop %s %s && cd %s && for i in 1 2 3 4 5 6; do head -c $((i * 300000)) /dev/urandom "
		   "> big$i; done && for i in $(seq 1 400); do echo file $i > f$i; done && "
		   "cp --reflink=always big1 big1-clone && sync && btrfs subvolume snapshot %s %s/snap >/dev/null && "
		   "sync && cd / && umount %s", c.img, mnt, mnt, mnt, mnt, mnt);
	CHECK(r == 0, "snapshot: preparing the image with the kernel failed");
	if (r || tc_open(&c))
		return;
	memset(&seen, 0, sizeof(seen));
	for (int i = 0; i < 3; i++) {
		if (xattr_round(&c, &xs[0], 700, i ? 30 : 0) || xattr_round(&c, &xs[2], 40, i ? 30 : 0))
			break;
		if (i == 0) { /* tree 5 copied the shared blocks: they are FULL_BACKREF, their children shared */
			verify_space(&c, "snapshot, first round");
			printf("snapshot: after changing tree 5, FULL_BACKREF extents %" PRIu64 ", shared refs %" PRIu64
			       "\n", seen.full_backref, seen.shared_refs);
			CHECK(seen.full_backref && seen.shared_refs, "snapshot: shared blocks were not copied the "
			      "snapshot way");
		}
		if (xattr_round(&c, &xs[1], 700, i ? 30 : 0))
			break;
	}
	verify_space(&c, "snapshot");
	tc_close(&c);
	btrfs_check(c.img, "snapshot");
	const char *dirs[3] = { "", "/snap", "/big1" };
	kernel_mount_check(c.img, "snapshot", xs, dirs, 3,
			   "cat f1 big1 big2 big6 big1-clone snap/big3 snap/f400 >/dev/null && "
			   "cmp big1 snap/big1 && cmp big1 big1-clone && "
			   "btrfs subvolume delete -c snap >/dev/null && btrfs filesystem sync . && "
			   "btrfs subvolume sync . >/dev/null && sync");
	btrfs_check(c.img, "snapshot after the kernel deleted it");
	unlink(c.img);
}

/* v1 space cache: the kernel writes one; after our commit it must be ignored (cache_generation moved on). */
static const char *prep_v1 = "sh -c 'mount -o loop,space_cache=v1 \"$0\" \"$1\" 2>/dev/null || "
			     "mount -o loop \"$0\" \"$1\"; for i in $(seq 1 50); do echo $i > \"$1\"/f$i; done; "
			     "head -c 3000000 /dev/urandom > \"$1\"/big; sync; umount \"$1\"'";

int main(int argc, char **argv)
{
	bool ran = ea_start(argc, argv, "test_extalloc_xattrs");

	if (ran) {
		if (selected("xattr-default"))
			test_xattrs("default", "", 256, 150, 1500, 3, false, NULL);
		if (selected("xattr-single4k"))
			test_xattrs("single4k", "-m single -d single -n 4096", 256, 1500, 3000, 3, true, NULL);
		if (selected("xattr-noskinny"))
			test_xattrs("noskinny", "-O ^skinny-metadata", 256, 150, 1200, 3, false, NULL);
		if (selected("xattr-mixed"))
			test_xattrs("mixed", "-M", 256, 150, 1200, 3, false, NULL);
		if (selected("xattr-v1cache"))
			test_xattrs("v1cache", "-R ^free-space-tree", 256, 150, 1200, 3, false, prep_v1);
		if (selected("snapshot"))
			test_snapshot();
		if (selected("xattr-dup4k"))
			test_xattrs("dup4k", "-n 4096", 256, 3800, 4000, 3, true, NULL);
		if (selected("xattr-bgtree") && sh("mkfs.btrfs -O list-all 2>&1 | grep -q block-group-tree") == 0)
			test_xattrs("bgtree", "-O block-group-tree -n 4096", 256, 3800, 4000, 3, true, NULL);
		else if (selected("xattr-bgtree"))
			printf("skipping the block-group-tree image: this mkfs.btrfs cannot make one (BF_EA_PROGS=dir "
			       "picks another btrfs-progs)\n");
	}
	return ea_finish(ran);
}
