/*
 * tests/unit/test_extalloc_hostile.c - the extent allocator on hostile images.
 *
 * Owns: 300 damages each on a default image and on one without free space tree and skinny metadata (the
 * allocator scans the extent tree): the root block of the extent, device, chunk or free space tree gets 1 to 4
 * byte flips in one item (key or data, now and then its header), on every copy with the checksum fixed so the
 * damage reaches the parsers; the allocator is opened on it and makes a small change (a data extent and its
 * reference, 50 xattrs, the delayed references), which is then aborted and the block restored.
 * Key idea: every outcome but a crash, a hang or a sanitizer report is fine, an error must come with a
 * message, and after every damage is undone btrfs check must pass again.
 * Prints the seed; argv[1] replays (see extalloc_harness.h for the environment variables). Ends with
 * "N passed, N failed"; exit 0 only if none failed.
 */
#include "tests/unit/extalloc_harness.h"

/* Where each copy of a tree block lies in a single-device image. */
struct blk_loc {
	uint64_t bytenr, phys[4];
	int ncopies;
};

/* Rewrite every copy of a tree block in the image file, its checksum fixed (no open needed: the damage may
   make the filesystem unopenable). */
static int put_block(const char *img, const struct blk_loc *loc, const uint8_t *data, uint32_t nodesize,
		     unsigned csum_type)
{
	uint8_t *b = malloc(nodesize), sum[BF_CSUM_MAX];
	int fd = open(img, O_WRONLY), r = b && fd >= 0 ? 0 : -EIO;
	if (!r) {
		memcpy(b, data, nodesize);
		bf_csum(csum_type, b + BF_CSUM_SIZE, nodesize - BF_CSUM_SIZE, sum);
		memcpy(b, sum, BF_CSUM_SIZE);
		for (int i = 0; i < loc->ncopies && !r; i++)
			if (pwrite(fd, b, nodesize, (off_t)loc->phys[i]) != (ssize_t)nodesize)
				r = -EIO;
	}
	if (fd >= 0)
		close(fd);
	free(b);
	return r;
}

/* Flip bytes of one item (key or data; now and then its header) of a leaf. */
static void mutate_leaf(uint8_t *blk, uint32_t nodesize)
{
	const struct bf_header *h = (const void *)blk;
	uint32_t n = get32(h->nritems);
	if (!n)
		return;
	struct bf_item *it = (void *)(blk + sizeof(*h) + rnd(n) * sizeof(struct bf_item));
	uint32_t off = get32(it->offset), size = get32(it->size);
	int flips = 1 + (int)rnd(4);
	for (int i = 0; i < flips; i++) {
		uint64_t what = rnd(10);
		if (what < 4) /* the key */
			((uint8_t *)&it->key)[rnd(sizeof(it->key))] ^= (uint8_t)(1u << rnd(8));
		else if (what < 9 && size && sizeof(*h) + (uint64_t)off + size <= nodesize)
			blk[sizeof(*h) + off + rnd(size)] = (uint8_t)rng();
		else
			((uint8_t *)it)[sizeof(it->key) + rnd(8)] ^= (uint8_t)(1u << rnd(8));
	}
}

/* Open the allocator on the damaged image and make a small change: every outcome but a crash, a hang or a
   sanitizer report is fine; an error must come with a message. */
static void exercise(const char *img)
{
	struct tc c = { 0 };
	snprintf(c.img, sizeof(c.img), "%s", img);
	const char *paths[1] = { c.img };
	struct bf_open_opts o = { paths, 1, false, true, 0 };
	char err[512] = "";
	if (bf_fsinfo_open(&o, &c.fi, err, sizeof(err)))
		return;
	struct bf_fsinfo *fi = c.fi;
	struct bf_extalloc_roots roots = { &fi->extent_root, &fi->chunk_root, &fi->dev_root,
					   fi->has_free_space_root ? &fi->free_space_root : NULL,
					   fi->has_block_group_root ? &fi->block_group_root : NULL };
	int r = bf_extalloc_open(&fi->env, &fi->vol, &fi->super, &roots, &c.ea, err, sizeof(err));
	if (r) {
		CHECK(err[0], "hostile: the allocator failed to open (%s) without saying why", strerror(-r));
		bf_fsinfo_close(fi);
		return;
	}
	static struct xset x;
	memset(&x, 0, sizeof(x));
	x.tree = BF_FS_TREE_OBJECTID;
	x.vlen = 100;
	tc_begin(&c);
	uint64_t b, got;
	r = bf_extalloc_data(c.ea, 65536, 0, &b, &got);
	if (!r)
		r = bf_extalloc_data_ref(c.ea, b, got, BF_FS_TREE_OBJECTID, 300000, 0, 1);
	for (int k = 0; k < 50 && !r; k++)
		r = xattr_insert(&c, &x, x.n++);
	if (!r)
		r = bf_extalloc_run_delayed(c.ea, &c.t);
	bf_trans_abort(&c.t);
	bf_extalloc_abort(c.ea);
	bf_trans_destroy(&c.t);
	tc_close(&c);
}

static void test_hostile(const char *name, const char *opts, int iterations)
{
	char img[160];
	if (mkimage(img, sizeof(img), name, opts, 256))
		return;
	const char *paths[1] = { img };
	struct bf_open_opts o = { paths, 1, false, false, 0 };
	struct bf_fsinfo *fi;
	char err[256];
	if (bf_fsinfo_open(&o, &fi, err, sizeof(err)))
		return;
	struct blk_loc loc[4];
	uint64_t roots[4] = { fi->extent_root.bytenr, fi->dev_root.bytenr, fi->chunk_root.bytenr,
			      fi->free_space_root.bytenr };
	int nt = fi->has_free_space_root ? 4 : 3, r = 0;
	uint32_t ns = fi->nodesize;
	unsigned csum_type = fi->csum_type;
	uint8_t *orig[4] = { 0 }, *blk = malloc(ns);
	for (int t = 0; t < nt && !r; t++) {
		uint64_t devid;
		loc[t].bytenr = roots[t];
		loc[t].ncopies = bf_vol_num_copies(&fi->vol, roots[t]);
		for (int m = 0; m < loc[t].ncopies && m < 4 && !r; m++)
			r = bf_vol_map(&fi->vol, roots[t], m + 1, &devid, &loc[t].phys[m]);
		orig[t] = malloc(ns);
		r = r || !orig[t] ? -EIO : bf_vol_read(&fi->vol, roots[t], orig[t], ns, 1);
	}
	bf_fsinfo_close(fi);
	for (int it = 0; it < iterations && !r && blk; it++) {
		int t = (int)rnd((uint64_t)nt);
		memcpy(blk, orig[t], ns);
		mutate_leaf(blk, ns);
		r = put_block(img, &loc[t], blk, ns, csum_type);
		if (!r)
			exercise(img);
		if (!r)
			r = put_block(img, &loc[t], orig[t], ns, csum_type);
	}
	CHECK(r == 0 && blk, "%s: the fuzzing itself failed: %s", name, strerror(-r));
	for (int t = 0; t < 4; t++)
		free(orig[t]);
	free(blk);
	btrfs_check(img, name); /* every damage was undone */
	unlink(img);
}

int main(int argc, char **argv)
{
	bool ran = ea_start(argc, argv, "test_extalloc_hostile");

	if (ran) {
		if (selected("hostile-fst"))
			test_hostile("hostile-fst", "", 300);
		if (selected("hostile-scan"))
			test_hostile("hostile-scan", "-R ^free-space-tree -O ^skinny-metadata", 300);
	}
	return ea_finish(ran);
}
