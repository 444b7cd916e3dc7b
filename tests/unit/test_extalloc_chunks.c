/*
 * tests/unit/test_extalloc_chunks.c - what the extent allocator changes besides extent items: chunks,
 * checksums, the free space tree.
 *
 * Owns: (1) new chunks of every kind and profile: a system, a metadata and a data chunk made in one
 * transaction (besides xattr changes) on default, mixed, two-device RAID1/RAID0 and RAID1/single images; the
 * chunk items, the superblock's system chunk array, device extents and items, block group items and free space
 * tree entries are checked through btrfs check and a kernel mount; (2) freeing data extents: eight files
 * written one after another share checksum items, and freeing some of their extents must cut those items
 * exactly (punch, head, tail, whole item), while an extent shared with a reflinked copy stays until its last
 * reference goes; (3) the free space tree converted to bitmaps and back as extents come and go, also after
 * the kernel wrote to the image.
 * Key idea: each structure is judged by btrfs check and the kernel, after commits made by extalloc_harness.h.
 * Prints the seed; argv[1] replays (see extalloc_harness.h for the environment variables). Ends with
 * "N passed, N failed"; exit 0 only if none failed.
 */
#include "tests/unit/extalloc_harness.h"

/* The profile bits of the newest chunk of a type. */
static uint64_t newest_profile(struct tc *c, uint64_t type)
{
	uint64_t prof = UINT64_MAX;
	for (size_t i = 0; i < c->fi->vol.nchunks; i++)
		if ((c->fi->vol.chunks[i]->type & BF_BLOCK_GROUP_TYPE_MASK) == type)
			prof = c->fi->vol.chunks[i]->type & BF_BLOCK_GROUP_PROFILE_MASK;
	return prof;
}

/* Make a system, a metadata and a data chunk in one transaction (besides xattr changes), commit, and check the
   chunk items, the superblock's system chunk array, device extents and items, block group items and free space
   tree entries through btrfs check and a kernel mount. */
static void test_new_chunks(const char *name, const char *opts, unsigned mb, bool two_devices, uint64_t sys_prof,
			    uint64_t meta_prof, uint64_t data_prof)
{
	struct tc c = { 0 };
	static struct xset x;
	memset(&x, 0, sizeof(x));
	x.tree = BF_FS_TREE_OBJECTID;
	x.vlen = 200;
	if (two_devices) {
		snprintf(c.img, sizeof(c.img), "%s/%s-a.img", tmpdir, name);
		snprintf(c.img2, sizeof(c.img2), "%s/%s-b.img", tmpdir, name);
		int r = sh("rm -f %s %s && truncate -s %uM %s %s && mkfs.btrfs -q -f %s %s %s >/dev/null 2>&1", c.img,
			   c.img2, mb, c.img, c.img2, opts, c.img, c.img2);
		CHECK(r == 0, "%s: mkfs.btrfs %s on two devices failed", name, opts);
		if (r)
			return;
	} else if (mkimage(c.img, sizeof(c.img), name, opts, mb)) {
		return;
	}
	if (tc_open(&c))
		return;
	size_t nchunks = c.fi->vol.nchunks;
	uint32_t sys_array = get32(c.fi->super.sys_chunk_array_size);
	tc_begin(&c);
	int r = chunk_alloc(c.ea, EA_SYS);
	if (!r)
		r = chunk_alloc(c.ea, EA_META);
	if (!r)
		r = chunk_alloc(c.ea, EA_DATA);
	CHECK(r == 0, "%s: making chunks: %s", name, strerror(-r));
	for (int k = 0; k < 300 && !r; k++)
		r = xattr_insert(&c, &x, x.n++);
	if (r) {
		bf_trans_abort(&c.t);
		bf_extalloc_abort(c.ea);
		bf_trans_destroy(&c.t);
	}
	if (!r && !tc_commit(&c)) {
		verify_space(&c, name);
		CHECK(c.fi->vol.nchunks == nchunks + 3, "%s: %zu chunks, expected %zu", name, c.fi->vol.nchunks,
		      nchunks + 3);
		CHECK(get32(c.fi->super.sys_chunk_array_size) > sys_array, "%s: the system chunk array did not grow",
		      name);
		uint64_t ps = newest_profile(&c, BF_BLOCK_GROUP_SYSTEM), pm = newest_profile(&c, c.ea->mixed ?
			BF_BLOCK_GROUP_METADATA | BF_BLOCK_GROUP_DATA : BF_BLOCK_GROUP_METADATA);
		uint64_t pd = newest_profile(&c, c.ea->mixed ? BF_BLOCK_GROUP_METADATA | BF_BLOCK_GROUP_DATA :
					     BF_BLOCK_GROUP_DATA);
		CHECK(ps == sys_prof && pm == meta_prof && pd == data_prof, "%s: new chunks have profiles %s/%s/%s", name,
		      bf_profile_name(ps), bf_profile_name(pm), bf_profile_name(pd));
	}
	tc_close(&c);
	const char *dirs[1] = { "" };
	if (two_devices) {
		snprintf(second_img, sizeof(second_img), "%s", c.img2);
	} else {
		btrfs_check(c.img, name);
	}
	kernel_mount_check(c.img, name, &x, dirs, 1, "echo hi > f && sync");
	second_img[0] = 0;
	if (!two_devices)
		btrfs_check(c.img, name);
	unlink(c.img);
	if (two_devices)
		unlink(c.img2);
}

struct fext {
	uint64_t key_offset, bytenr, num_bytes, offset;
};

struct fext_list {
	struct fext v[64];
	int n;
};

static int fext_cb(void *arg, const struct bf_key *k, const uint8_t *data, uint32_t size)
{
	struct fext_list *l = arg;
	const struct bf_file_extent_item *fi = (const void *)data;
	if (k->type != BF_EXTENT_DATA_KEY || size < sizeof(*fi) || fi->type == BF_FILE_EXTENT_INLINE || l->n == 64)
		return 0;
	l->v[l->n++] = (struct fext){ k->offset, get64(fi->disk_bytenr), get64(fi->disk_num_bytes), get64(fi->offset) };
	return 0;
}

/* Remove every file extent item of inode ino in tree 5 (its data reads as a hole: no-holes), drop their data
   references and set the inode's nbytes to 0, as a truncate-and-extend would leave it. */
static int drop_file_extents(struct tc *c, uint64_t ino)
{
	struct bf_root *root = tc_subvol(c, BF_FS_TREE_OBJECTID);
	struct fext_list l = { .n = 0 };
	struct bf_key min = { ino, BF_EXTENT_DATA_KEY, 0 }, max = { ino, BF_EXTENT_DATA_KEY, UINT64_MAX };
	int r = root ? bf_iterate(&c->fi->env, root, &min, &max, fext_cb, &l) : -ENOENT;
	struct bf_path p;
	for (int i = 0; i < l.n && !r; i++) {
		struct bf_key k = { ino, BF_EXTENT_DATA_KEY, l.v[i].key_offset };
		bf_path_init(&p, &c->fi->env);
		r = bf_search_slot(&c->t, root, &k, -1, true, &p);
		r = r == 0 ? bf_del_items(&c->t, root, &p, p.slots[0], 1) : r > 0 ? -ENOENT : r;
		bf_path_release(&p);
		if (!r && l.v[i].bytenr)
			r = bf_extalloc_data_ref(c->ea, l.v[i].bytenr, l.v[i].num_bytes, BF_FS_TREE_OBJECTID, ino,
						 l.v[i].key_offset - l.v[i].offset, -1);
	}
	struct bf_key ik = { ino, BF_INODE_ITEM_KEY, 0 };
	bf_path_init(&p, &c->fi->env);
	if (!r)
		r = bf_search_slot(&c->t, root, &ik, 0, true, &p);
	uint32_t size;
	struct bf_inode_item *ii = r == 0 ? (void *)bf_path_item_mut(&c->t, &p, &size) : NULL;
	if (ii && size >= sizeof(*ii))
		put64(&ii->nbytes, 0);
	else if (r >= 0)
		r = -ENOENT;
	bf_path_release(&p);
	CHECK(r == 0 && l.n > 0, "dropping the file extents of inode %" PRIu64 ": %s (%d extents)", ino, strerror(-r),
	      l.n);
	return r;
}

/* Eight files written one after another share checksum items; freeing some of their extents must cut those
   items exactly (punch, head, tail, whole item), and an extent shared with a reflinked copy stays until its
   last reference goes. */
static void test_csum_delete(void)
{
	struct tc c = { 0 };
	char mnt[160];
	if (mkimage(c.img, sizeof(c.img), "csum", "", 256))
		return;
	snprintf(mnt, sizeof(mnt), "%s/mnt", tmpdir);
	mkdir(mnt, 0755);
	int r = sh("mount -o loop %s %s && cd %s && for i in 1 2 3 4 5 6 7 8; do head -c 262144 /dev/urandom > f$i; "
		   "done && cp --reflink=always f3 c3 && cp f6 f7 c3 %s/ && head -c 262144 /dev/zero > %s/zero && "
		   "sync && cd / && umount %s", c.img, mnt, mnt, tmpdir, tmpdir, mnt);
	CHECK(r == 0, "csum: preparing the image with the kernel failed");
	if (r || tc_open(&c))
		return;
	const uint64_t f1 = 257; /* f1..f8 are inodes 257..264, c3 is 265 */
	static const uint64_t rounds[3][3] = { { f1 + 1, f1 + 7, f1 + 2 }, { f1 + 3, f1 + 4, 0 }, { f1, f1 + 8, 0 } };
	for (int t = 0; t < 3 && !r; t++) {
		tc_begin(&c);
		for (int k = 0; k < 3 && rounds[t][k] && !r; k++)
			r = drop_file_extents(&c, rounds[t][k]);
		if (r) {
			bf_trans_abort(&c.t);
			bf_extalloc_abort(c.ea);
			bf_trans_destroy(&c.t);
			break;
		}
		r = tc_commit(&c);
		if (!r)
			verify_space(&c, "csum");
	}
	tc_close(&c);
	btrfs_check(c.img, "csum");
	char cmd[1024];
	snprintf(cmd, sizeof(cmd), "for f in f1 f2 f3 f4 f5 f8 c3; do cmp -s $f %s/zero || exit 1; done && "
		 "cmp -s f6 %s/f6 && cmp -s f7 %s/f7 && echo again > f9 && sync", tmpdir, tmpdir, tmpdir);
	kernel_mount_check(c.img, "csum", NULL, NULL, 0, cmd);
	btrfs_check(c.img, "csum after the kernel wrote");
	unlink(c.img);
}

static void test_fst_convert(void)
{
	struct tc c = { 0 };
	static struct held small[700], big[64];
	int nbig = 0, r = 0;
	if (mkimage(c.img, sizeof(c.img), "convert", "", 1024) || tc_open(&c))
		return;
	size_t nbgs = c.ea->nbgs;
	tc_begin(&c);
	while (!r && c.ea->nbgs == nbgs && nbig < 64) /* fill the first data group; the next chunk is large */
		r = add_data(&c, 1 << 20, 300000 + (uint64_t)nbig, &big[nbig]), nbig++;
	for (int i = 0; i < 700 && !r; i++)
		r = add_data(&c, c.ea->sectorsize, 400000 + (uint64_t)i, &small[i]);
	CHECK(r == 0, "convert: allocations failed: %s", strerror(-r));
	if (r || tc_commit(&c))
		return;
	struct ea_bg *bg = bg_find(c.ea, small[699].bytenr);
	CHECK(bg && bg->thresh_low > 0, "convert: the small extents are not in a large block group");
	tc_begin(&c);
	for (int i = 0; i < 700; i += 2)
		bf_extalloc_data_ref(c.ea, small[i].bytenr, small[i].len, BF_FS_TREE_OBJECTID, small[i].inode, 0, -1);
	r = tc_commit(&c);
	verify_space(&c, "convert, fragmented");
	CHECK(bg && bg->fst_bitmaps, "convert: %u free extents did not turn the group into bitmaps (threshold %u)",
	      bg ? bg->fst_count : 0, bg ? bg->thresh_high : 0);
	tc_begin(&c);
	for (int i = 1; i < 700; i += 2)
		bf_extalloc_data_ref(c.ea, small[i].bytenr, small[i].len, BF_FS_TREE_OBJECTID, small[i].inode, 0, -1);
	for (int i = 0; i < nbig; i++)
		bf_extalloc_data_ref(c.ea, big[i].bytenr, big[i].len, BF_FS_TREE_OBJECTID, big[i].inode, 0, -1);
	if (!r)
		r = tc_commit(&c);
	verify_space(&c, "convert, freed");
	CHECK(bg && !bg->fst_bitmaps && bg->fst_count <= 1, "convert: the group did not turn back into extents "
	      "(%u free extents)", bg ? bg->fst_count : 0);
	tc_close(&c);
	btrfs_check(c.img, "convert");
	kernel_mount_check(c.img, "convert", NULL, NULL, 0, "echo hi > x && sync");
	btrfs_check(c.img, "convert after the kernel wrote");
	unlink(c.img);
}

int main(int argc, char **argv)
{
	bool ran = ea_start(argc, argv, "test_extalloc_chunks");

	if (ran) {
		if (selected("chunks-default"))
			test_new_chunks("chunks-default", "", 256, false, BF_BLOCK_GROUP_DUP, BF_BLOCK_GROUP_DUP, 0);
		if (selected("chunks-mixed"))
			test_new_chunks("chunks-mixed", "-M", 256, false, 0, 0, 0);
		if (selected("chunks-raid1"))
			test_new_chunks("chunks-raid1", "-m raid1 -d raid0", 256, true, BF_BLOCK_GROUP_RAID1,
					BF_BLOCK_GROUP_RAID1, BF_BLOCK_GROUP_RAID0);
		if (selected("chunks-raid1-single"))
			test_new_chunks("chunks-raid1-single", "-m raid1 -d single", 256, true,
					BF_BLOCK_GROUP_RAID1, BF_BLOCK_GROUP_RAID1, 0);
		if (selected("csum"))
			test_csum_delete();
		if (selected("convert"))
			test_fst_convert();
	}
	return ea_finish(ran);
}
