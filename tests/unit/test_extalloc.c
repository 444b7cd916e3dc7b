/*
 * tests/unit/test_extalloc.c - unit tests for the extent allocator (alloc/rangeset.c ... alloc/extalloc.c).
 *
 * Owns: (1) range sets against a bitmap model (seeded random adds and removes); (2) data reference hashes
 * against the order the kernel wrote inline references in; (3) when run as root with mkfs.btrfs and a kernel that
 * mounts btrfs: real images opened writable, changed through the btree layer with the allocator's ops and
 * committed by a minimal commit written here (delayed references, root items, dirty blocks, superblocks with
 * backup roots):
 *   - a model test: random tree-block and data allocations, data references (inline and keyed), frees and
 *     cancellations over many transactions; after every commit the allocator's free space must equal the gaps
 *     between the extent items (scanned independently), the free space tree on disk must say the same, used
 *     bytes must add up, and no range freed in a transaction may be handed out before its commit; at the end
 *     everything is freed again and btrfs check must pass;
 *   - log replay's kept and claimed ranges (alloc/claim.c): nothing is handed out over them, a claimed extent
 *     gets its extent item at commit, the rest is free again, impossible ranges are refused;
 *   - end-to-end runs that insert and delete thousands of xattrs on root directories (leaves split and merge) on
 *     default, single/4K (forcing new metadata chunks), no-skinny-metadata, mixed, v1-space-cache and
 *     snapshot-sharing images.
 * After each, `btrfs check --readonly` must find no error, the kernel must mount it without a BTRFS warning or
 * error, getfattr must show the xattrs, and for the snapshot image the kernel must delete the snapshot cleanly.
 * Prints the seed; argv[1] replays; BF_EA_ONLY=name runs one image test; BF_EA_PROGS=dir uses the mkfs.btrfs and
 * btrfs found there (a newer btrfs-progs can make block-group-tree images and checks more); BF_EA_VERBOSE=1 shows
 * debug messages. Ends with "N passed, N failed"; exit 0 only if none failed.
 */
#include "alloc/extalloc_int.h"
#include "btree/btree.h"
#include "btree/csum.h"
#include "journal/journal.h"
#include "util/util.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>
#include "tests/unit/check.h"



static uint64_t rng_state;
static uint64_t rng(void)
{
	return splitmix64(&rng_state);
}
static uint64_t rnd(uint64_t n) { return n ? rng() % n : 0; }

/* ================= 1. range sets ================= */

#define RS_UNITS 2048u

static bool rs_matches(const struct ea_rset *s, const uint8_t *m)
{
	size_t k = 0;
	for (uint32_t i = 0; i < RS_UNITS;) {
		if (!m[i]) {
			i++;
			continue;
		}
		uint32_t j = i;
		while (j < RS_UNITS && m[j])
			j++;
		if (k >= s->n || s->v[k].start != i || s->v[k].end != j)
			return false;
		k++;
		i = j;
	}
	return k == s->n;
}

static void test_rangeset(void)
{
	uint8_t m[RS_UNITS] = { 0 };
	struct ea_rset s = { 0 };
	unsigned bad = 0;
	for (int op = 0; op < 30000; op++) {
		uint32_t a = (uint32_t)rnd(RS_UNITS), b = a + 1 + (uint32_t)rnd(48), set = 0;
		if (b > RS_UNITS)
			b = RS_UNITS;
		for (uint32_t i = a; i < b; i++)
			set += m[i];
		int kind = (int)rnd(3), ret;
		if (kind == 0) {
			ret = rset_add(&s, a, b);
			bad += set ? ret != -EEXIST : ret != 0;
			if (!set)
				memset(m + a, 1, b - a);
		} else if (kind == 1) {
			ret = rset_del(&s, a, b);
			bad += set == b - a ? ret != 0 : ret != -ENOENT;
			if (set == b - a)
				memset(m + a, 0, b - a);
		} else {
			ret = rset_del_any(&s, a, b);
			bad += ret != 0;
			memset(m + a, 0, b - a);
		}
		uint32_t qa = (uint32_t)rnd(RS_UNITS), qb = qa + 1 + (uint32_t)rnd(64), qset = 0;
		if (qb > RS_UNITS)
			qb = RS_UNITS;
		for (uint32_t i = qa; i < qb; i++)
			qset += m[i];
		bad += rset_has(&s, qa, qb) != (qset == qb - qa) || rset_touches(&s, qa, qb) != (qset > 0);
		if (!rs_matches(&s, m)) {
			bad++;
			break;
		}
	}
	uint64_t count = 0;
	for (uint32_t i = 0; i < RS_UNITS; i++)
		count += m[i];
	CHECK(!bad && rset_bytes(&s) == count, "range set disagrees with its model (%u bad steps)", bad);
	struct ea_rset c = { 0 };
	CHECK(!rset_copy(&c, &s) && rs_matches(&c, m), "range set copy differs");
	rset_free(&c);
	rset_free(&s);
}

/* ================= helpers for real images ================= */

static char tmpdir[128];
static unsigned kmsg_seq;

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
	char cmd[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	int r = system(cmd);
	return WIFEXITED(r) ? WEXITSTATUS(r) : -1;
}

static bool have_tools(void)
{
	return geteuid() == 0 && sh("command -v mkfs.btrfs >/dev/null && command -v btrfs >/dev/null && "
				    "grep -qw btrfs /proc/filesystems") == 0;
}

/* btrfs check --readonly: exit 0 and "no error found". */
static void btrfs_check(const char *img, const char *what)
{
	char log[256];
	snprintf(log, sizeof(log), "%s/check.log", tmpdir);
	int r = sh("btrfs check --readonly %s >%s 2>&1", img, log);
	int ok = r == 0 && sh("grep -q 'no error found' %s", log) == 0 &&
		 sh("grep -v 'no error found' %s | grep -v 'cannot scan /dev/' | grep -qiE 'error|mismatch|wanted|corrupt|"
		    "no free space entry|appears valid'", log) != 0;
	CHECK(ok, "%s: btrfs check --readonly reports problems (exit %d):", what, r);
	if (!ok)
		sh("head -40 %s", log);
}

/* Mark the kernel log, so the lines a mount adds can be told apart. */
static void kmsg_mark(char *mark, size_t len)
{
	snprintf(mark, len, "bf-test-extalloc-mark-%d-%u", getpid(), kmsg_seq++);
	int fd = open("/dev/kmsg", O_WRONLY);
	if (fd >= 0) {
		if (write(fd, mark, strlen(mark)) < 0)
			mark[0] = 0;
		close(fd);
	}
}

/* No BTRFS warning or error about our loop device (and no kernel WARNING) after the mark. Other mounts may
   log meanwhile; their lines name other devices. */
static void kmsg_check(const char *mark, const char *loopdev, const char *what)
{
	if (!mark[0])
		return;
	char log[256];
	const char *dev = strrchr(loopdev, '/') ? strrchr(loopdev, '/') + 1 : loopdev;
	snprintf(log, sizeof(log), "%s/dmesg.log", tmpdir);
	/* the deprecation notice every mount of a v1-space-cache image gets is about the image, not about us */
	sh("dmesg | sed -n '/%s/,$p' | grep -E 'BTRFS (warning|error|critical|crit|alert|emerg) \\(device %s\\)|"
	   "WARNING:|BUG:' | grep -v 'space cache v1 is being deprecated' >%s 2>&1", mark, dev, log);
	struct stat st;
	bool clean = stat(log, &st) == 0 && st.st_size == 0;
	CHECK(clean, "%s: the kernel logged problems:", what);
	if (!clean)
		sh("head -20 %s", log);
	else
		sh("dmesg | sed -n '/%s/,$p' | grep -c '(device %s)' | sed 's/^/kernel log lines of the mount: /'", mark,
		   dev);
}

/* ================= a minimal commit ================= */

#define MAX_SUBVOLS 4

struct tc {
	char img[160];
	char img2[160]; /* a second device, or "" */
	struct bf_fsinfo *fi;
	struct bf_extalloc *ea;
	struct bf_trans t;
	uint64_t transid;
	uint64_t sub_id[MAX_SUBVOLS];
	struct bf_root sub[MAX_SUBVOLS];
	int nsub;
};

static int tc_open(struct tc *c)
{
	const char *paths[2] = { c->img, c->img2 };
	struct bf_open_opts o = { paths, c->img2[0] ? 2 : 1, false, true, 0 };
	char err[512] = "";
	c->nsub = 0;
	int r = bf_fsinfo_open(&o, &c->fi, err, sizeof(err));
	CHECK(r == 0, "open %s writable: %s", c->img, err);
	if (r)
		return r;
	struct bf_fsinfo *fi = c->fi;
	struct bf_block_expect exp = { fi->chunk_root.generation, fi->chunk_root.level, NULL, 0 };
	struct bf_block *b;
	r = bf_block_read(&fi->env, fi->chunk_root.bytenr, &exp, &b);
	if (!r) {
		memcpy(fi->env.chunk_tree_uuid, ((const struct bf_header *)b->data)->chunk_tree_uuid, BF_UUID_SIZE);
		bf_block_put(&fi->env, b);
	}
	struct bf_extalloc_roots roots = { &fi->extent_root, &fi->chunk_root, &fi->dev_root,
					   fi->has_free_space_root ? &fi->free_space_root : NULL,
					   fi->has_block_group_root ? &fi->block_group_root : NULL };
	if (!r)
		r = bf_extalloc_open(&fi->env, &fi->vol, &fi->super, &roots, &c->ea, err, sizeof(err));
	CHECK(r == 0, "open the extent allocator of %s: %s", c->img, err);
	if (r) {
		bf_fsinfo_close(fi);
		c->fi = NULL;
		return r;
	}
	if (fi->has_csum_root)
		bf_extalloc_set_csum_root(c->ea, &fi->csum_root);
	return 0;
}

static void tc_close(struct tc *c)
{
	bf_extalloc_close(c->ea);
	bf_fsinfo_close(c->fi);
	c->ea = NULL;
	c->fi = NULL;
}

static void tc_begin(struct tc *c)
{
	c->transid = c->fi->generation + 1;
	bf_trans_init(&c->t, &c->fi->env, c->transid, bf_extalloc_tree_ops(), c->ea);
	bf_extalloc_begin(c->ea, &c->t);
}

/* The live root of subvolume id (loaded from its root item on first use). */
static struct bf_root *tc_subvol(struct tc *c, uint64_t id)
{
	for (int i = 0; i < c->nsub; i++)
		if (c->sub_id[i] == id)
			return &c->sub[i];
	if (c->nsub == MAX_SUBVOLS || bf_find_root(c->fi, id, &c->sub[c->nsub], NULL))
		return NULL;
	c->sub_id[c->nsub] = id;
	return &c->sub[c->nsub++];
}

/* Point the root item of tree id at live; 1 if it changed, 0 if not, < 0 on error. */
static int update_root_item(struct tc *c, uint64_t id, const struct bf_root *live)
{
	struct bf_fsinfo *fi = c->fi;
	struct bf_key key = { id, BF_ROOT_ITEM_KEY, UINT64_MAX };
	struct bf_path p;
	bf_path_init(&p, &fi->env);
	int r = bf_search_le(&fi->env, &fi->tree_root, &key, &p);
	if (r >= 0)
		key = bf_path_key(&p);
	bf_path_release(&p);
	if (r < 0 || key.objectid != id || key.type != BF_ROOT_ITEM_KEY)
		return r < 0 ? r : -ENOENT;
	r = bf_search_slot(&c->t, &fi->tree_root, &key, 0, true, &p);
	uint32_t size;
	struct bf_root_item *ri = r == 0 ? (void *)bf_path_item_mut(&c->t, &p, &size) : NULL;
	if (r == 0 && (!ri || size < sizeof(*ri)))
		r = -EUCLEAN;
	if (r == 0 && (get64(ri->bytenr) != live->bytenr || ri->level != live->level ||
		       get64(ri->generation) != live->generation)) {
		put64(&ri->bytenr, live->bytenr);
		put64(&ri->generation, live->generation);
		put64(&ri->generation_v2, live->generation);
		ri->level = live->level;
		r = 1;
	}
	bf_path_release(&p);
	return r;
}

static int update_root_items(struct tc *c, int *changed)
{
	struct bf_fsinfo *fi = c->fi;
	struct {
		uint64_t id;
		struct bf_root *live;
		bool has;
	} g[] = {
		{ BF_EXTENT_TREE_OBJECTID, &fi->extent_root, true },
		{ BF_DEV_TREE_OBJECTID, &fi->dev_root, true },
		{ BF_CSUM_TREE_OBJECTID, &fi->csum_root, fi->has_csum_root },
		{ BF_FREE_SPACE_TREE_OBJECTID, &fi->free_space_root, fi->has_free_space_root },
		{ BF_BLOCK_GROUP_TREE_OBJECTID, &fi->block_group_root, fi->has_block_group_root },
	};
	*changed = 0;
	for (size_t i = 0; i < sizeof(g) / sizeof(g[0]); i++) {
		int r = g[i].has ? update_root_item(c, g[i].id, g[i].live) : 0;
		if (r < 0)
			return r;
		*changed += r;
	}
	for (int i = 0; i < c->nsub; i++) {
		int r = update_root_item(c, c->sub_id[i], &c->sub[i]);
		if (r < 0)
			return r;
		*changed += r;
	}
	return 0;
}

static void fill_backup(struct tc *c, struct bf_root_backup *b)
{
	struct bf_fsinfo *fi = c->fi;
	struct bf_root fs = { 0, 0, 0, 0 };
	struct bf_root *live5 = NULL;
	for (int i = 0; i < c->nsub; i++)
		if (c->sub_id[i] == BF_FS_TREE_OBJECTID)
			live5 = &c->sub[i];
	if (!live5 && bf_find_root(fi, BF_FS_TREE_OBJECTID, &fs, NULL) == 0)
		live5 = &fs;
	memset(b, 0, sizeof(*b));
	put64(&b->tree_root, fi->tree_root.bytenr);
	put64(&b->tree_root_gen, fi->tree_root.generation);
	b->tree_root_level = fi->tree_root.level;
	put64(&b->chunk_root, fi->chunk_root.bytenr);
	put64(&b->chunk_root_gen, fi->chunk_root.generation);
	b->chunk_root_level = fi->chunk_root.level;
	put64(&b->extent_root, fi->extent_root.bytenr);
	put64(&b->extent_root_gen, fi->extent_root.generation);
	b->extent_root_level = fi->extent_root.level;
	if (live5) {
		put64(&b->fs_root, live5->bytenr);
		put64(&b->fs_root_gen, live5->generation);
		b->fs_root_level = live5->level;
	}
	put64(&b->dev_root, fi->dev_root.bytenr);
	put64(&b->dev_root_gen, fi->dev_root.generation);
	b->dev_root_level = fi->dev_root.level;
	if (fi->has_csum_root) {
		put64(&b->csum_root, fi->csum_root.bytenr);
		put64(&b->csum_root_gen, fi->csum_root.generation);
		b->csum_root_level = fi->csum_root.level;
	}
	b->total_bytes = fi->super.total_bytes;
	b->bytes_used = fi->super.bytes_used;
	b->num_devices = fi->super.num_devices;
}

/* The device item of devid as the chunk tree now holds it (each device's superblock carries its own). */
static int dev_item_of(struct tc *c, uint64_t devid, struct bf_dev_item *out)
{
	struct bf_key key = { BF_DEV_ITEMS_OBJECTID, BF_DEV_ITEM_KEY, devid };
	struct bf_path p;
	uint32_t size = 0;
	bf_path_init(&p, &c->fi->env);
	int r = bf_search(&c->fi->env, &c->fi->chunk_root, &key, &p);
	const uint8_t *d = r == 0 ? bf_path_item(&p, &size) : NULL;
	if (d && size == sizeof(*out))
		memcpy(out, d, sizeof(*out));
	bf_path_release(&p);
	CHECK(d && size == sizeof(*out), "no device item for devid %" PRIu64, devid);
	return d && size == sizeof(*out) ? 0 : -ENOENT;
}

static int write_supers(struct tc *c)
{
	struct bf_fsinfo *fi = c->fi;
	struct bf_super *sb = &fi->super;
	uint64_t old = get64(sb->generation);
	int slot = 0;
	for (int i = 0; i < BF_NUM_BACKUP_ROOTS; i++)
		if (get64(sb->super_roots[i].tree_root_gen) == old)
			slot = (i + 1) % BF_NUM_BACKUP_ROOTS;
	if (get64(sb->uuid_tree_generation) == old)
		put64(&sb->uuid_tree_generation, c->transid);
	put64(&sb->generation, c->transid);
	put64(&sb->root, fi->tree_root.bytenr);
	sb->root_level = fi->tree_root.level;
	put64(&sb->chunk_root, fi->chunk_root.bytenr);
	put64(&sb->chunk_root_generation, fi->chunk_root.generation);
	sb->chunk_root_level = fi->chunk_root.level;
	fill_backup(c, &sb->super_roots[slot]);
	for (size_t d = 0; d < fi->vol.ndevs; d++) {
		const struct bf_device *dev = fi->vol.devs[d];
		struct bf_dev_item di;
		if (dev_item_of(c, dev->devid, &di))
			return -EIO;
		for (int i = 0; i < BF_SUPER_MIRROR_MAX; i++) {
			uint64_t off = bf_sb_offset(i);
			if (off + BF_SUPER_INFO_SIZE > dev->size)
				break;
			struct bf_super copy = *sb;
			copy.dev_item = di;
			uint8_t sum[BF_CSUM_MAX];
			put64(&copy.bytenr, off);
			bf_csum(fi->csum_type, (const uint8_t *)&copy + BF_CSUM_SIZE, BF_SUPER_INFO_SIZE - BF_CSUM_SIZE,
				sum);
			memcpy(copy.csum, sum, BF_CSUM_SIZE);
			if (bf_dev_pwrite(dev, &copy, sizeof(copy), off))
				return -EIO;
		}
		if (bf_dev_flush(dev))
			return -EIO;
	}
	return 0;
}

/* Delayed references and root items until they settle, blocks, superblocks, unpin. */
static int tc_commit(struct tc *c)
{
	struct bf_fsinfo *fi = c->fi;
	struct bf_key first = { 0, 0, 0 };
	struct bf_path p;
	bf_path_init(&p, &fi->env);
	int r = bf_search_slot(&c->t, &fi->tree_root, &first, 0, true, &p);
	bf_path_release(&p);
	r = r < 0 ? r : 0;
	for (int round = 0; !r; round++) {
		int changed = 0;
		r = bf_extalloc_run_delayed(c->ea, &c->t);
		if (!r)
			r = update_root_items(c, &changed);
		if (!r && !changed)
			break;
		if (round == 20)
			r = -ELOOP;
	}
	if (!r)
		r = bf_trans_write_dirty(&c->t);
	if (!r)
		r = write_supers(c);
	CHECK(r == 0, "commit of transaction %" PRIu64 " on %s: %d %s", c->transid, c->img, r, strerror(-r));
	if (r) {
		bf_trans_abort(&c->t);
		bf_extalloc_abort(c->ea);
	} else {
		bf_extalloc_committed(c->ea);
		fi->generation = c->transid;
		fi->env.super_generation = c->transid;
	}
	bf_trans_destroy(&c->t);
	return r;
}

static int mkimage(char *path, size_t len, const char *name, const char *opts, unsigned mb)
{
	snprintf(path, len, "%s/%s.img", tmpdir, name);
	int r = sh("rm -f %s && truncate -s %uM %s && mkfs.btrfs -q -f %s %s >/dev/null 2>&1", path, mb, path, opts,
		   path);
	CHECK(r == 0, "mkfs.btrfs %s on %s failed", opts, path);
	return r;
}

/* ================= the model test ================= */

struct held {
	uint64_t bytenr, len;
	bool data;
	int level;
	uint64_t inode; /* data: the first reference's inode; extra refs use inode + 1 ... inode + nrefs - 1 */
	int nrefs;
	int trans; /* the transaction that allocated it */
};

struct model {
	struct held *v;
	size_t n, cap;
	struct ea_rset freed; /* freed by the test in the running transaction, not reusable before the commit */
	uint64_t next_inode;
	int trans;
	unsigned bad;
};

static void model_push(struct model *m, struct held h)
{
	if (m->n == m->cap) {
		m->cap = m->cap ? m->cap * 2 : 64;
		m->v = realloc(m->v, m->cap * sizeof(*m->v));
	}
	m->v[m->n++] = h;
}

/* Anything handed out must be free in the model: not held and not freed in this transaction. */
static void model_check_new(struct model *m, uint64_t bytenr, uint64_t len)
{
	if (rset_touches(&m->freed, bytenr, bytenr + len)) {
		m->bad++;
		CHECK(0, "model: [%" PRIu64 ", +%" PRIu64 ") handed out again before its free was committed", bytenr,
		      len);
	}
	for (size_t i = 0; i < m->n; i++)
		if (bytenr < m->v[i].bytenr + m->v[i].len && m->v[i].bytenr < bytenr + len) {
			m->bad++;
			CHECK(0, "model: [%" PRIu64 ", +%" PRIu64 ") overlaps a held extent at %" PRIu64, bytenr, len,
			      m->v[i].bytenr);
			return;
		}
}

/* Drop a held extent. A tree block allocated in this transaction is reusable at once (it never reached a
   committed tree); anything else waits for the commit: a data extent allocated and dropped in one transaction
   is pinned as the kernel does (its data may have been written). */
static void model_drop(struct tc *c, struct model *m, size_t i)
{
	struct held h = m->v[i];
	bool count_freed = h.data || h.trans != m->trans;
	if (h.data) {
		for (int k = 0; k < h.nrefs; k++)
			CHECK(bf_extalloc_data_ref(c->ea, h.bytenr, h.len, BF_FS_TREE_OBJECTID, h.inode + (uint64_t)k, 0,
						   -1) == 0, "drop data ref");
	} else {
		bf_extalloc_tree_ops()->free_tree_block(c->ea, h.bytenr, BF_FS_TREE_OBJECTID, h.level);
	}
	if (count_freed)
		rset_add(&m->freed, h.bytenr, h.bytenr + h.len);
	m->v[i] = m->v[--m->n];
}

static void model_step(struct tc *c, struct model *m, bool new_this_trans_only)
{
	const struct bf_alloc_ops *ops = bf_extalloc_tree_ops();
	uint64_t op = rnd(100), b, got;
	(void)new_this_trans_only;
	if (op < 30) {
		int level = (int)rnd(3);
		struct bf_key k = { rng(), BF_INODE_ITEM_KEY, 0 };
		int r = ops->alloc_tree_block(c->ea, BF_FS_TREE_OBJECTID, level, &b);
		CHECK(r == 0, "model: tree block allocation: %s", strerror(-r));
		if (r)
			return;
		model_check_new(m, b, c->ea->nodesize);
		CHECK(b % c->ea->nodesize == 0, "model: tree block %" PRIu64 " not nodesize aligned", b);
		CHECK(ops->tree_block_added(c->ea, b, BF_FS_TREE_OBJECTID, level, &k) == 0, "tree_block_added");
		model_push(m, (struct held){ b, c->ea->nodesize, false, level, 0, 1, m->trans });
		if (rnd(4) == 0) /* freed in the same transaction: back to the free space at once */
			model_drop(c, m, m->n - 1);
	} else if (op < 55) {
		uint64_t len = (1 + rnd(rnd(4) == 0 ? 256 : 16)) * c->ea->sectorsize;
		int r = bf_extalloc_data(c->ea, len, 0, &b, &got);
		CHECK(r == 0 && got >= c->ea->sectorsize && got <= len, "model: data allocation of %" PRIu64 ": %s",
		      len, strerror(-r));
		if (r)
			return;
		model_check_new(m, b, got);
		if (got > c->ea->sectorsize && rnd(3) == 0) { /* give back an unused tail */
			uint64_t keep = (1 + rnd(got / c->ea->sectorsize - 1)) * c->ea->sectorsize;
			bf_extalloc_data_unused(c->ea, b + keep, got - keep);
			got = keep;
		}
		if (rnd(8) == 0) { /* never referenced */
			bf_extalloc_data_unused(c->ea, b, got);
			return;
		}
		int nrefs = rnd(6) == 0 ? 1 + (int)rnd(60) : 1; /* many refs: inline ones overflow into keyed */
		struct held h = { b, got, true, 0, m->next_inode, nrefs, m->trans };
		m->next_inode += 100;
		for (int k = 0; k < nrefs; k++)
			CHECK(bf_extalloc_data_ref(c->ea, b, got, BF_FS_TREE_OBJECTID, h.inode + (uint64_t)k, 0, 1) == 0,
			      "add data ref");
		model_push(m, h);
		if (rnd(5) == 0)
			model_drop(c, m, m->n - 1); /* referenced and dropped in one transaction: pinned */
	} else if (op < 65 && m->n) {
		size_t i = rnd(m->n);
		if (m->v[i].data && m->v[i].nrefs < 200) { /* one more reference, possibly in a later transaction */
			CHECK(bf_extalloc_data_ref(c->ea, m->v[i].bytenr, m->v[i].len, BF_FS_TREE_OBJECTID,
						   m->v[i].inode + (uint64_t)m->v[i].nrefs, 0, 1) == 0, "add data ref");
			m->v[i].nrefs++;
		}
	} else if (op < 75 && m->n) {
		size_t i = rnd(m->n);
		if (m->v[i].data && m->v[i].nrefs > 1) {
			m->v[i].nrefs--;
			CHECK(bf_extalloc_data_ref(c->ea, m->v[i].bytenr, m->v[i].len, BF_FS_TREE_OBJECTID,
						   m->v[i].inode + (uint64_t)m->v[i].nrefs, 0, -1) == 0, "drop data ref");
		}
	} else if (m->n) {
		model_drop(c, m, rnd(m->n));
	}
}

/* What a scan of the extent tree saw, over the whole test run (to show which paths were exercised). */
static struct {
	uint64_t keyed_data_refs, keyed_tree_refs, shared_refs, full_backref, inline_data_multi, order_bad;
} seen;

static uint64_t hash_ref(uint64_t root, uint64_t inode, uint64_t offset);

/* The extent tree, scanned here: used ranges per block group. */
struct scan {
	struct ea_rset used;
	uint32_t nodesize;
	int bad;
};

static void count_inline(const struct bf_key *k, const uint8_t *data, uint32_t size)
{
	const struct bf_extent_item *ei = (const void *)data;
	uint64_t flags = get64(ei->flags);
	uint32_t p = sizeof(*ei) + ((flags & BF_EXTENT_FLAG_TREE_BLOCK) && k->type == BF_EXTENT_ITEM_KEY ? 18 : 0);
	int ndata = 0;
	uint8_t last_type = 0;
	uint64_t last_seq = UINT64_MAX;
	seen.full_backref += (flags & BF_BLOCK_FLAG_FULL_BACKREF) != 0;
	while (p + 9 <= size) { /* the tree-checker's order: types ascending, within one descending offset/hash */
		uint8_t t = data[p];
		const struct bf_extent_data_ref *d = (const void *)(data + p + 1);
		uint64_t seq = t == BF_EXTENT_DATA_REF_KEY ? hash_ref(get64(d->root), get64(d->objectid), get64(d->offset))
							   : get64(((const struct bf_extent_inline_ref *)(data + p))->offset);
		if (t > last_type)
			last_seq = UINT64_MAX;
		seen.order_bad += t < last_type || seq > last_seq;
		last_type = t;
		last_seq = seq;
		seen.shared_refs += t == BF_SHARED_BLOCK_REF_KEY || t == BF_SHARED_DATA_REF_KEY;
		ndata += t == BF_EXTENT_DATA_REF_KEY;
		p += t == BF_EXTENT_DATA_REF_KEY ? 29 : t == BF_SHARED_DATA_REF_KEY ? 13 : 9;
	}
	seen.inline_data_multi += ndata > 1;
}

static int scan_cb(void *arg, const struct bf_key *k, const uint8_t *data, uint32_t size)
{
	struct scan *s = arg;
	if (k->type == BF_EXTENT_ITEM_KEY || k->type == BF_METADATA_ITEM_KEY) {
		uint64_t len = k->type == BF_EXTENT_ITEM_KEY ? k->offset : s->nodesize;
		if (rset_add(&s->used, k->objectid, k->objectid + len))
			s->bad++;
		if (size >= sizeof(struct bf_extent_item))
			count_inline(k, data, size);
	}
	seen.keyed_data_refs += k->type == BF_EXTENT_DATA_REF_KEY;
	seen.keyed_tree_refs += k->type == BF_TREE_BLOCK_REF_KEY;
	seen.shared_refs += k->type == BF_SHARED_BLOCK_REF_KEY || k->type == BF_SHARED_DATA_REF_KEY;
	return 0;
}

/* After a commit: mirror = gaps of the extent tree = the free space tree on disk; free = mirror minus
   superblock copies; used bytes add up. */
static void verify_space(struct tc *c, const char *what)
{
	struct bf_extalloc *ea = c->ea;
	struct scan s = { { 0 }, ea->nodesize, 0 };
	struct bf_key min = { 0, 0, 0 }, max = { UINT64_MAX, 255, UINT64_MAX };
	int r = bf_iterate(&c->fi->env, &c->fi->extent_root, &min, &max, scan_cb, &s);
	CHECK(r == 0 && !s.bad, "%s: scanning the extent tree: %s, %d overlaps", what, strerror(-r), s.bad);
	uint64_t used_sum = 0;
	unsigned bad_fst = 0, bad_disk = 0, bad_free = 0, bad_used = 0;
	for (size_t i = 0; i < ea->nbgs; i++) {
		struct ea_bg *bg = ea->bgs[i];
		struct ea_rset gaps = { 0 };
		uint64_t cur = bg->start, end = bg->start + bg->length, used = 0;
		for (size_t k = rset_lower(&s.used, bg->start); k < s.used.n && s.used.v[k].start < end; k++) {
			uint64_t a = bf_max64(s.used.v[k].start, bg->start), e = bf_min64(s.used.v[k].end, end);
			if (a > cur)
				rset_add(&gaps, cur, a);
			used += e - a;
			cur = e;
		}
		if (cur < end)
			rset_add(&gaps, cur, end);
		bad_fst += gaps.n != bg->fst.n || (gaps.n && memcmp(gaps.v, bg->fst.v, gaps.n * sizeof(*gaps.v)));
		bad_used += used != bg->used;
		used_sum += used;
		struct ea_bg *probe = bg_new(ea, bg->start, bg->length, bg->flags);
		if (ea->use_fst) {
			char err[256];
			r = fst_load(ea, probe, err, sizeof(err));
			bad_disk += r || probe->fst.n != bg->fst.n ||
				    (probe->fst.n && memcmp(probe->fst.v, bg->fst.v, probe->fst.n * sizeof(*gaps.v))) ||
				    probe->fst_bitmaps != bg->fst_bitmaps;
		}
		rset_copy(&probe->free, &bg->fst);
		bg_exclude_super(ea, probe, bf_vol_find_chunk(&c->fi->vol, bg->start));
		bad_free += probe->free.n != bg->free.n ||
			    (probe->free.n && memcmp(probe->free.v, bg->free.v, probe->free.n * sizeof(*gaps.v)));
		bg_destroy(probe);
		rset_free(&gaps);
	}
	/* independently of the allocator: no extent may cover a superblock copy on any device */
	unsigned on_super = 0;
	for (size_t k = 0; k < s.used.n; k++) {
		const struct bf_chunk_map *cm = bf_vol_find_chunk(&c->fi->vol, s.used.v[k].start);
		if (!cm || (cm->type & (BF_BLOCK_GROUP_RAID0 | BF_BLOCK_GROUP_RAID10 | BF_BLOCK_GROUP_RAID56_MASK)))
			continue; /* striped profiles: the copies' rows are not contiguous; skipped here */
		for (int m = 1; m <= bf_vol_num_copies(&c->fi->vol, s.used.v[k].start); m++) {
			uint64_t devid, phys, len = s.used.v[k].end - s.used.v[k].start;
			if (bf_vol_map(&c->fi->vol, s.used.v[k].start, m, &devid, &phys))
				continue;
			for (int i = 0; i < BF_SUPER_MIRROR_MAX; i++)
				on_super += bf_sb_offset(i) < phys + len && phys < bf_sb_offset(i) + BF_SUPER_INFO_SIZE;
		}
	}
	CHECK(!on_super, "%s: %u extents cover a superblock copy", what, on_super);
	CHECK(!seen.order_bad, "%s: %" PRIu64 " inline references out of the kernel's order", what, seen.order_bad);
	CHECK(!bad_fst, "%s: %u block groups' free space differs from the extent tree's gaps", what, bad_fst);
	CHECK(!bad_disk, "%s: %u block groups' free space tree on disk differs from memory", what, bad_disk);
	CHECK(!bad_free, "%s: %u block groups' allocatable space is not free minus superblock copies", what, bad_free);
	CHECK(!bad_used && used_sum == get64(c->fi->super.bytes_used),
	      "%s: used bytes: %u groups differ, sum %" PRIu64 " vs superblock %" PRIu64, what, bad_used, used_sum,
	      get64(c->fi->super.bytes_used));
	rset_free(&s.used);
}

static void test_model(const char *name, const char *opts)
{
	struct tc c = { 0 };
	struct model m = { 0 };
	m.next_inode = 100000;
	memset(&seen, 0, sizeof(seen));
	if (mkimage(c.img, sizeof(c.img), name, opts, 256) || tc_open(&c))
		return;
	verify_space(&c, name);
	int ntrans = 25;
	for (int tr = 0; tr < ntrans; tr++) {
		tc_begin(&c);
		rset_clear(&m.freed);
		m.trans = tr;
		int steps = 20 + (int)rnd(120);
		for (int s = 0; s < steps; s++)
			model_step(&c, &m, false);
		if (tr == ntrans - 1)
			while (m.n)
				model_drop(&c, &m, m.n - 1);
		if (tc_commit(&c))
			break;
		char what[64];
		snprintf(what, sizeof(what), "%s transaction %d", name, tr);
		verify_space(&c, what);
	}
	CHECK(m.bad == 0, "%s: %u model violations", name, m.bad);
	bool bitmaps = false;
	for (size_t i = 0; i < c.ea->nbgs; i++)
		bitmaps |= c.ea->bgs[i]->fst_bitmaps;
	printf("model %s: %zu block groups, free space tree bitmaps: %s, keyed data refs seen: %" PRIu64
	       ", extents with several inline data refs seen: %" PRIu64 "\n", name, c.ea->nbgs, bitmaps ? "yes" : "no",
	       seen.keyed_data_refs, seen.inline_data_multi);
	CHECK(seen.keyed_data_refs && seen.inline_data_multi, "%s: keyed and inline data references not exercised",
	      name);
	tc_close(&c);
	rset_free(&m.freed);
	free(m.v);
	btrfs_check(c.img, name);
	unlink(c.img);
}

/* ================= xattrs on root directories ================= */

#define MAX_X 20000

struct xset {
	uint64_t tree, inode; /* inode 0 means the root directory (256) */
	bool live[MAX_X];
	uint32_t vlen;
	int n;
};

static void xname(int i, char *buf, size_t len) { snprintf(buf, len, "user.bf%05d", i); }

static void xvalue(int i, uint32_t vlen, char *buf)
{
	for (uint32_t k = 0; k < vlen; k++)
		buf[k] = (char)('a' + (i * 7 + (int)k) % 26);
}

static int xattr_insert(struct tc *c, struct xset *x, int i)
{
	char name[32], buf[4096];
	xname(i, name, sizeof(name));
	uint16_t nlen = (uint16_t)strlen(name);
	struct bf_dir_item *di = (void *)buf;
	memset(di, 0, sizeof(*di));
	put64(&di->transid, c->transid);
	put16(&di->data_len, (uint16_t)x->vlen);
	put16(&di->name_len, nlen);
	di->type = BF_FT_XATTR;
	memcpy(buf + sizeof(*di), name, nlen);
	xvalue(i, x->vlen, buf + sizeof(*di) + nlen);
	struct bf_key key = { x->inode ? x->inode : BF_FIRST_FREE_OBJECTID, BF_XATTR_ITEM_KEY, bf_name_hash(name, nlen) };
	struct bf_root *root = tc_subvol(c, x->tree);
	int r = root ? bf_insert_item(&c->t, root, &key, buf, (uint32_t)(sizeof(*di) + nlen + x->vlen)) : -ENOENT;
	if (r == 0)
		x->live[i] = true;
	return r == -EEXIST ? 0 : r; /* a name hash collision: that name is skipped */
}

static int xattr_delete(struct tc *c, struct xset *x, int i)
{
	char name[32];
	xname(i, name, sizeof(name));
	struct bf_key key = { x->inode ? x->inode : BF_FIRST_FREE_OBJECTID, BF_XATTR_ITEM_KEY,
			      bf_name_hash(name, strlen(name)) };
	struct bf_path p;
	bf_path_init(&p, &c->fi->env);
	int r = bf_search_slot(&c->t, tc_subvol(c, x->tree), &key, -1, true, &p);
	if (r == 0)
		r = bf_del_items(&c->t, tc_subvol(c, x->tree), &p, p.slots[0], 1);
	bf_path_release(&p);
	if (r == 0)
		x->live[i] = false;
	return r;
}

/* One transaction: insert add new names, delete a fraction del_pct of the live ones. */
static int xattr_round(struct tc *c, struct xset *x, int add, int del_pct)
{
	int r = 0;
	tc_begin(c);
	for (int i = 0; i < x->n && !r; i++)
		if (x->live[i] && (int)rnd(100) < del_pct)
			r = xattr_delete(c, x, i);
	for (int k = 0; k < add && !r && x->n < MAX_X; k++)
		r = xattr_insert(c, x, x->n++);
	CHECK(r == 0, "%s: xattr changes in tree %" PRIu64 ": %s", c->img, x->tree, strerror(-r));
	if (r) {
		bf_trans_abort(&c->t);
		bf_extalloc_abort(c->ea);
		bf_trans_destroy(&c->t);
		return r;
	}
	r = tc_commit(c);
	if (!r)
		verify_space(c, c->img);
	return r;
}

/* Through the kernel: every live name has its value, deleted ones are gone; when the list fits the kernel's
   64 KiB listxattr limit, getfattr -d shows exactly the live ones. */
static void xattr_verify(const char *dir, const struct xset *x, const char *what)
{
	int want = 0, bad = 0;
	for (int i = 0; i < x->n; i++) {
		char name[32], val[4096], exp[4096];
		xname(i, name, sizeof(name));
		ssize_t vl = getxattr(dir, name, val, sizeof(val));
		xvalue(i, x->vlen, exp);
		want += x->live[i];
		bad += x->live[i] ? vl != (ssize_t)x->vlen || memcmp(val, exp, x->vlen) : vl >= 0 || errno != ENODATA;
	}
	CHECK(!bad, "%s: %d of %d xattrs on %s read wrong through the kernel", what, bad, x->n, dir);
	if (want * 13 >= 65536)
		return;
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "getfattr -d --absolute-names %s 2>/dev/null | grep -c '^user.bf' | grep -qx %d",
		 dir, want);
	CHECK(!want || sh("%s", cmd) == 0, "%s: getfattr -d %s does not show %d xattrs", what, dir, want);
}

/* Mount with the kernel, verify the xattr sets (sub: "" or "/snap"), run extra commands, unmount; the kernel
   log must stay clean. */
static bool mount_ro;        /* the next kernel_mount_check mounts read-only */
static char second_img[160]; /* the second device of the image kernel_mount_check mounts, or "" */

static int loop_attach(const char *img, char *dev, size_t len)
{
	char cmd[256];
	snprintf(cmd, sizeof(cmd), "losetup -f --show %s", img);
	FILE *f = popen(cmd, "r");
	dev[0] = 0;
	if (f) {
		if (!fgets(dev, (int)len, f))
			dev[0] = 0;
		dev[strcspn(dev, "\n")] = 0;
		pclose(f);
	}
	return dev[0] ? 0 : -1;
}

static void loop_detach(const char *a, const char *b)
{
	if (a[0])
		sh("losetup -d %s 2>/dev/null", a);
	if (b[0])
		sh("losetup -d %s 2>/dev/null", b);
}

static void kernel_mount_check(const char *img, const char *what, struct xset *xs, const char *const *dirs,
			       int nsets, const char *extra)
{
	char mnt[160], mark[96];
	snprintf(mnt, sizeof(mnt), "%s/mnt", tmpdir);
	mkdir(mnt, 0755);
	char loopdev[64] = "", loop2[64] = "";
	if (loop_attach(img, loopdev, sizeof(loopdev)) || (second_img[0] && loop_attach(second_img, loop2, sizeof(loop2))))
		CHECK(0, "%s: no loop device for %s", what, img);
	if (!loopdev[0] || (second_img[0] && !loop2[0])) {
		loop_detach(loopdev, loop2);
		return;
	}
	if (loop2[0]) {
		sh("btrfs device scan %s %s >/dev/null 2>&1", loopdev, loop2);
		btrfs_check(loopdev, what);
	}
	kmsg_mark(mark, sizeof(mark));
	int r = sh("mount %s %s %s 2>/dev/null", mount_ro ? "-o ro" : "", loopdev, mnt);
	mount_ro = false;
	CHECK(r == 0, "%s: the kernel does not mount %s", what, img);
	if (r) {
		loop_detach(loopdev, loop2);
		return;
	}
	for (int i = 0; i < nsets; i++) {
		char dir[256];
		snprintf(dir, sizeof(dir), "%s%s", mnt, dirs[i]);
		xattr_verify(dir, &xs[i], what);
	}
	if (extra)
		CHECK(sh("cd %s && %s", mnt, extra) == 0, "%s: '%s' on the kernel mount failed", what, extra);
	sh("umount %s", mnt);
	if (loop2[0]) /* btrfs check of a multi-device filesystem finds the second device through the loop */
		btrfs_check(loopdev, what);
	loop_detach(loopdev, loop2);
	kmsg_check(mark, loopdev, what);
}

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

/* ================= new chunks of every kind and profile ================= */

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

/* ================= freeing data extents: checksums go with them ================= */

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

/* ================= free space tree: to bitmaps and back ================= */

static int add_data(struct tc *c, uint64_t len, uint64_t ino, struct held *h)
{
	uint64_t b, got;
	int r = bf_extalloc_data(c->ea, len, 0, &b, &got);
	if (!r && got != len) {
		bf_extalloc_data_unused(c->ea, b, got);
		r = -ENOSPC;
	}
	if (!r)
		r = bf_extalloc_data_ref(c->ea, b, got, BF_FS_TREE_OBJECTID, ino, 0, 1);
	*h = (struct held){ b, got, true, 0, ino, 1, 0 };
	return r;
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

/* ================= log replay: kept and claimed ranges (alloc/claim.c) ================= */

/* The first free run of at least len bytes in a group serving kind: its start, or 0. */
static uint64_t free_run(struct tc *c, enum ea_kind kind, uint64_t len)
{
	for (size_t i = 0; i < c->ea->nbgs; i++) {
		struct ea_bg *bg = c->ea->bgs[i];
		if (bg_serves(c->ea, bg, kind) && !(bg->flags & BF_BLOCK_GROUP_METADATA && kind == EA_DATA))
			for (size_t j = 0; j < bg->free.n; j++)
				if (bg->free.v[j].end - bg->free.v[j].start >= len)
					return bf_round_down(bg->free.v[j].start + len - 1, len);
	}
	return 0;
}

/* The refs count of extent item (bytenr, EXTENT_ITEM, len), or -1. */
static int64_t extent_refs(struct tc *c, uint64_t bytenr, uint64_t len)
{
	struct bf_key key = { bytenr, BF_EXTENT_ITEM_KEY, len };
	struct bf_path p;
	int64_t refs = -1;
	uint32_t size;
	bf_path_init(&p, &c->fi->env);
	if (bf_search(&c->fi->env, &c->fi->extent_root, &key, &p) == 0) {
		const uint8_t *d = bf_path_item(&p, &size);
		if (size >= sizeof(struct bf_extent_item))
			refs = (int64_t)get64(((const struct bf_extent_item *)d)->refs);
	}
	bf_path_release(&p);
	return refs;
}

static void test_claim(void)
{
	struct tc c = { 0 };
	const uint64_t len = 256 * 1024, half = len / 2;
	if (mkimage(c.img, sizeof(c.img), "claim", "", 256) || tc_open(&c))
		return;
	uint64_t data = free_run(&c, EA_DATA, 2 * len), meta = free_run(&c, EA_META, 4 * c.ea->nodesize);
	CHECK(data && meta, "claim: no free data or metadata run");
	if (!data || !meta)
		return tc_close(&c);
	tc_begin(&c);
	struct ea_bg *dbg = bg_find(c.ea, data);
	CHECK(bf_extalloc_exclude(c.ea, data, len, false) == 0, "claim: excluding a free data range failed");
	CHECK(bf_extalloc_exclude(c.ea, data, len, false) == 0, "claim: excluding it twice must be harmless");
	CHECK(bf_extalloc_exclude(c.ea, meta, c.ea->nodesize, true) == 0, "claim: excluding a log block failed");
	CHECK(!rset_touches(&dbg->free, data, data + len) && rset_has(&c.ea->pinned, data, data + len),
	      "claim: an excluded range is still free or not pinned");
	CHECK(bf_extalloc_exclude(c.ea, data, c.ea->nodesize, true) == -EUCLEAN, "claim: a log block in a data group");
	CHECK(bf_extalloc_exclude(c.ea, UINT64_MAX - 8192, 4096, false) == -EUCLEAN, "claim: a range in no group");
	CHECK(bf_extalloc_exclude(c.ea, c.fi->tree_root.bytenr, c.ea->nodesize, true) == -EUCLEAN,
	      "claim: a log block over a committed tree block");
	CHECK(bf_extalloc_logged_data_ref(c.ea, c.fi->tree_root.bytenr, 4096, 5, 257, 0) == -EUCLEAN,
	      "claim: a logged data extent over a tree block");
	CHECK(bf_extalloc_logged_data_ref(c.ea, data + 1, 4096, 5, 257, 0) == -EUCLEAN, "claim: an unaligned extent");
	for (int i = 0; i < 64; i++) { /* nothing handed out may touch what is kept */
		uint64_t b, got;
		if (bf_extalloc_data(c.ea, 64 * 1024, data, &b, &got) == 0) {
			CHECK(b + got <= data || b >= data + len, "claim: data [%" PRIu64 ", +%" PRIu64 ") handed out over "
			      "an excluded range", b, got);
			bf_extalloc_data_unused(c.ea, b, got);
		}
	}
	CHECK(bf_extalloc_logged_data_ref(c.ea, data, half, 5, 257, 0) == 0, "claim: claiming a logged extent failed");
	CHECK(bf_extalloc_logged_data_ref(c.ea, data, half, 5, 258, 4096) == 0, "claim: a second reference failed");
	CHECK(rset_has(&c.ea->trans_alloc, data, data + half) && !rset_touches(&c.ea->pinned, data, data + half),
	      "claim: the claimed extent is not allocated in the transaction");
	if (tc_commit(&c))
		return tc_close(&c);
	CHECK(extent_refs(&c, data, half) == 2, "claim: extent item with %" PRId64 " references, want 2",
	      extent_refs(&c, data, half));
	CHECK(rset_has(&dbg->free, data + half, data + len) && rset_has(&bg_find(c.ea, meta)->free, meta,
									    meta + c.ea->nodesize),
	      "claim: kept ranges not free again after the commit");
	CHECK(!rset_touches(&dbg->free, data, data + half) && !rset_touches(&dbg->fst, data, data + half),
	      "claim: the claimed extent is free after the commit");
	tc_begin(&c); /* an extent the extent tree knows only gains a reference */
	CHECK(bf_extalloc_logged_data_ref(c.ea, data, half, 5, 259, 0) == 0, "claim: reference to a known extent");
	CHECK(bf_extalloc_logged_data_ref(c.ea, data, 4096, 5, 259, 0) == -EUCLEAN,
	      "claim: a logged extent overlapping a known one with another length");
	if (!tc_commit(&c))
		CHECK(extent_refs(&c, data, half) == 3, "claim: %" PRId64 " references, want 3", extent_refs(&c, data, half));
	tc_close(&c);
	unlink(c.img);
}

/* ================= ENOSPC: the reservation fails before the commit would ================= */

static void test_enospc(void)
{
	struct tc c = { 0 };
	static struct xset x;
	memset(&x, 0, sizeof(x));
	x.tree = BF_FS_TREE_OBJECTID;
	x.vlen = 3800;
	if (mkimage(c.img, sizeof(c.img), "enospc", "-m single -d single -n 4096", 64) || tc_open(&c))
		return;
	int r = 0, nosp = 0;
	size_t nchunks = c.fi->vol.nchunks;
	while (!r && !nosp && x.n < MAX_X) {
		tc_begin(&c);
		for (int k = 0; k < 1000 && !r && x.n < MAX_X; k++) {
			r = bf_extalloc_reserve_meta(c.ea, 1, BF_RESV_FORCE_CHUNK);
			if (r == -ENOSPC) {
				nosp = 1;
				r = 0;
				break;
			}
			if (!r)
				r = xattr_insert(&c, &x, x.n++);
			bf_extalloc_release_meta(c.ea, 1);
		}
		CHECK(r == 0, "enospc: inserting failed with %s instead of the reservation failing", strerror(-r));
		if (r) {
			bf_trans_abort(&c.t);
			bf_extalloc_abort(c.ea);
			bf_trans_destroy(&c.t);
			break;
		}
		r = tc_commit(&c);
	}
	CHECK(nosp, "enospc: the reservation never failed (%d xattrs)", x.n);
	uint64_t used = bf_extalloc_dev_bytes_used(c.ea, 1), total = get64(c.fi->super.dev_item.total_bytes);
	printf("enospc: %d xattrs, %zu -> %zu chunks, device %" PRIu64 " of %" PRIu64 " bytes allocated\n", x.n,
	       nchunks, c.fi->vol.nchunks, used, total);
	CHECK(used + (16u << 20) > total, "enospc: the device was not filled with chunks first");
	verify_space(&c, "enospc");
	tc_close(&c);
	btrfs_check(c.img, "enospc");
	const char *dirs[1] = { "" };
	mount_ro = true;
	kernel_mount_check(c.img, "enospc", &x, dirs, 1, NULL);
	unlink(c.img);
}

/* ================= reservations against a model ================= */

/* The model's view of the metadata space, from the groups alone: total bytes, free bytes, count of groups. */
struct meta_view {
	uint64_t total, free_b;
	size_t ngroups;
};

static struct meta_view meta_view(const struct bf_extalloc *ea)
{
	struct meta_view v = { 0, 0, 0 };
	for (size_t i = 0; i < ea->nbgs; i++)
		if (bg_serves(ea, ea->bgs[i], EA_META)) {
			v.total += ea->bgs[i]->length;
			v.free_b += rset_bytes(&ea->bgs[i]->free);
			v.ngroups++;
		}
	return v;
}

/* What must stay free beside a new reservation, by the documented rule (alloc/alloc.h). */
static uint64_t model_keep(const struct bf_extalloc *ea, uint64_t reserved)
{
	return ea_global_reserve(ea) + reserved + (uint64_t)ea->refs.count * 256;
}

struct resv_model {
	uint64_t held[64]; /* items of each outstanding reservation */
	int n;
	uint64_t reserved; /* bytes the model says are reserved */
	uint64_t item;     /* bytes of one item */
	unsigned granted, refused, chunks;
};

/* One reservation: the allocator must do what the model predicts. Returns true if granted. */
static bool resv_try(struct tc *c, struct resv_model *m, uint64_t items, enum bf_resv_mode mode, const char *what)
{
	struct bf_extalloc *ea = c->ea;
	struct meta_view before = meta_view(ea);
	uint64_t need = items * m->item, keep = model_keep(ea, m->reserved);
	bool fits = before.free_b >= keep && before.free_b - keep >= need;
	uint64_t taken = before.total - before.free_b;
	bool may_chunk = mode == BF_RESV_FORCE_CHUNK ||
			 (mode == BF_RESV_NO_FORCE && taken + (2ULL << 20) >= before.total / 10 * 8);
	int r = bf_extalloc_reserve_meta(ea, items, mode);
	struct meta_view after = meta_view(ea);

	CHECK(r == 0 || r == -ENOSPC, "%s: reserving %" PRIu64 " items: %s", what, items, strerror(-r));
	if (mode == BF_RESV_ALWAYS || fits) {
		CHECK(r == 0 && after.ngroups == before.ngroups, "%s: %" PRIu64 " items fit (free %" PRIu64 ", keep %"
		      PRIu64 ") but reserving gave %d and made %zu groups", what, items, before.free_b, keep, r,
		      after.ngroups - before.ngroups);
	} else if (!may_chunk) {
		CHECK(r == -ENOSPC && after.ngroups == before.ngroups, "%s: NO_FORCE below 80%% must neither make a "
		      "chunk nor overcommit: gave %d, %zu -> %zu groups", what, r, before.ngroups, after.ngroups);
	} else if (r == 0) {
		CHECK(after.ngroups > before.ngroups, "%s: granted without room and without a new chunk", what);
	} else if (after.ngroups == before.ngroups) {
		CHECK(chunk_alloc(ea, EA_META) == -ENOSPC, "%s: refused, yet a metadata chunk could be made", what);
	}
	if (r == 0 && mode != BF_RESV_ALWAYS) { /* no overcommit: backed by free space in existing groups now */
		uint64_t k = model_keep(ea, m->reserved);
		CHECK(after.free_b >= k && after.free_b - k >= need, "%s: granted %" PRIu64 " bytes that are not free "
		      "(free %" PRIu64 ", keep %" PRIu64 ")", what, need, after.free_b, k);
	}
	m->chunks += (unsigned)(after.ngroups - before.ngroups);
	if (r)
		m->refused++;
	else
		m->granted++;
	if (!r)
		m->reserved += need;
	CHECK(ea->meta_reserved == m->reserved, "%s: %" PRIu64 " bytes reserved, the model says %" PRIu64, what,
	      ea->meta_reserved, m->reserved);
	return r == 0;
}

static void resv_release(struct tc *c, struct resv_model *m, int i)
{
	bf_extalloc_release_meta(c->ea, m->held[i]);
	m->reserved -= m->held[i] * m->item;
	m->held[i] = m->held[--m->n];
	CHECK(c->ea->meta_reserved == m->reserved, "release: %" PRIu64 " bytes reserved, the model says %" PRIu64,
	      c->ea->meta_reserved, m->reserved);
}

/* Seeded: reservations of random size and mode, some held across commits (like buffered data), tree changes
   only under a reservation and never more items than it holds, data extents taking data chunks meanwhile (what
   broke the overcommitting version: data chunks took the device space its reservations counted on). The
   allocator must match the model at every step; a change under a reservation and every commit must succeed. */
static void test_resv_model(void)
{
	struct tc c = { 0 };
	static struct xset x;
	static struct held data[4096];
	struct resv_model m = { { 0 }, 0, 0, 0, 0, 0, 0 };
	int ndata = 0, r = 0, data_full = 0, meta_full = 0, trans = 0;
	char what[96];

	memset(&x, 0, sizeof(x));
	x.tree = BF_FS_TREE_OBJECTID;
	x.vlen = 3000;
	if (mkimage(c.img, sizeof(c.img), "resv", "-n 4096", 160) || tc_open(&c))
		return;
	m.item = (uint64_t)c.ea->nodesize * BF_MAX_LEVEL * 2;
	for (trans = 0; trans < 200 && !r && (data_full < 3 || meta_full < 3); trans++) {
		tc_begin(&c);
		for (int op = 0; op < 150 && !r; op++) {
			unsigned pick = (unsigned)rnd(100);
			snprintf(what, sizeof(what), "resv transaction %d op %d", trans, op);
			if (pick < 55 && m.n < 64) {
				uint64_t items = 1 + rnd(8);
				enum bf_resv_mode mode = rnd(20) == 0 ? BF_RESV_ALWAYS : rnd(2) ? BF_RESV_FORCE_CHUNK :
										      BF_RESV_NO_FORCE;
				if (mode == BF_RESV_ALWAYS)
					items = 1;
				if (!resv_try(&c, &m, items, mode, what)) {
					meta_full += mode == BF_RESV_FORCE_CHUNK;
					continue;
				}
				m.held[m.n++] = items;
				/* use at most what is held: here one xattr of ~3 KiB per item (one 4 KiB leaf each) */
				for (uint64_t k = 0; k < items && !r && x.n < MAX_X; k++)
					r = xattr_insert(&c, &x, x.n++);
				CHECK(r == 0, "%s: a change under its reservation failed: %s", what, strerror(-r));
				if (rnd(3))
					resv_release(&c, &m, m.n - 1); /* a namespace op: released at its end */
			} else if (pick < 93 && m.n) {
				resv_release(&c, &m, (int)rnd((uint64_t)m.n)); /* buffered data flushed */
			} else if (ndata < 4096 && (m.chunks || meta_full)) { /* data once reserving made a chunk */
				uint64_t meta_free = meta_view(c.ea).free_b, resv = c.ea->meta_reserved;
				r = add_data(&c, (1 + rnd(16)) * 65536, 1000 + (uint64_t)ndata, &data[ndata]);
				if (r == 0)
					ndata++;
				else if (r == -ENOSPC)
					data_full++;
				CHECK(r == 0 || r == -ENOSPC, "%s: data allocation: %s", what, strerror(-r));
				r = r == -ENOSPC ? 0 : r;
				CHECK(meta_view(c.ea).free_b == meta_free && c.ea->meta_reserved == resv,
				      "%s: a data allocation changed the metadata space (%" PRIu64 " -> %" PRIu64
				      " free)",
				      what, meta_free, meta_view(c.ea).free_b);
			}
		}
		if (r) {
			bf_trans_abort(&c.t);
			bf_extalloc_abort(c.ea);
			bf_trans_destroy(&c.t);
			break;
		}
		r = tc_commit(&c);
		CHECK(c.ea->meta_reserved == m.reserved, "resv: a commit changed the reservations");
	}
	printf("resv: %d transactions, %u granted, %u refused, %u metadata chunks made, %d data extents, %d xattrs; "
	       "full: data %d, metadata %d\n", trans, m.granted, m.refused, m.chunks, ndata, x.n, data_full, meta_full);
	CHECK(data_full && meta_full && m.chunks, "resv: the run never filled the filesystem (data %d, metadata %d) "
	      "or never made a metadata chunk for a reservation (%u)", data_full, meta_full, m.chunks);
	while (m.n)
		resv_release(&c, &m, 0);
	CHECK(c.ea->meta_reserved == 0, "resv: %" PRIu64 " bytes still reserved after all were released",
	      c.ea->meta_reserved);
	if (!r) { /* drop the test's data references: the image must then check clean */
		tc_begin(&c);
		for (int i = 0; i < ndata && !r; i++)
			r = bf_extalloc_data_ref(c.ea, data[i].bytenr, data[i].len, BF_FS_TREE_OBJECTID, data[i].inode,
						 0, -1);
		r = r ? r : tc_commit(&c);
		verify_space(&c, "resv");
	}
	tc_close(&c);
	btrfs_check(c.img, "resv");
	unlink(c.img);
}

/* ================= hostile images ================= */

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

/* The kernel orders inline EXTENT_DATA_REFs by descending hash_extent_data_ref; reflinked copies give an extent
   many; our hash must see them in that order (extent_tree.c inserts by the same rule). */
static uint64_t hash_ref(uint64_t root, uint64_t inode, uint64_t offset)
{
	bf_le64 le;
	put64(&le, root);
	uint32_t high = bf_crc32c(~0u, &le, 8);
	put64(&le, inode);
	uint32_t low = bf_crc32c(~0u, &le, 8);
	put64(&le, offset);
	low = bf_crc32c(low, &le, 8);
	return ((uint64_t)high << 31) ^ low;
}

struct order_ctx {
	int extents_checked, bad;
};

static int order_cb(void *arg, const struct bf_key *k, const uint8_t *data, uint32_t size)
{
	struct order_ctx *o = arg;
	if (k->type != BF_EXTENT_ITEM_KEY || size < sizeof(struct bf_extent_item))
		return 0;
	const struct bf_extent_item *ei = (const void *)data;
	if (!(get64(ei->flags) & BF_EXTENT_FLAG_DATA))
		return 0;
	uint64_t last = UINT64_MAX;
	int n = 0;
	for (uint32_t p = sizeof(*ei); p + 29 <= size && data[p] == BF_EXTENT_DATA_REF_KEY; p += 29, n++) {
		const struct bf_extent_data_ref *d = (const void *)(data + p + 1);
		uint64_t h = hash_ref(get64(d->root), get64(d->objectid), get64(d->offset));
		o->bad += h > last;
		last = h;
	}
	o->extents_checked += n > 1;
	return 0;
}

static void test_hash_order(void)
{
	char img[160], mnt[160];
	if (mkimage(img, sizeof(img), "hash", "", 256))
		return;
	snprintf(mnt, sizeof(mnt), "%s/mnt", tmpdir);
	mkdir(mnt, 0755);
	int r = sh("mount -o loop %s %s && cd %s && head -c 65536 /dev/urandom > a && for i in $(seq 1 12); do "
		   "cp --reflink=always a c$i; done && sync && cd / && umount %s", img, mnt, mnt, mnt);
	CHECK(r == 0, "hash: preparing the image with the kernel failed");
	const char *paths[1] = { img };
	struct bf_open_opts o = { paths, 1, false, false, 0 };
	struct bf_fsinfo *fi;
	char err[256];
	if (r || bf_fsinfo_open(&o, &fi, err, sizeof(err)))
		return;
	struct order_ctx oc = { 0, 0 };
	struct bf_key min = { 0, 0, 0 }, max = { UINT64_MAX, 255, UINT64_MAX };
	r = bf_iterate(&fi->env, &fi->extent_root, &min, &max, order_cb, &oc);
	CHECK(r == 0 && oc.extents_checked > 0 && oc.bad == 0,
	      "hash_extent_data_ref: %d kernel-made extents with several inline refs checked, %d out of our order",
	      oc.extents_checked, oc.bad);
	bf_fsinfo_close(fi);
	unlink(img);
}

/* v1 space cache: the kernel writes one; after our commit it must be ignored (cache_generation moved on). */
static const char *prep_v1 = "sh -c 'mount -o loop,space_cache=v1 \"$0\" \"$1\" 2>/dev/null || "
			     "mount -o loop \"$0\" \"$1\"; for i in $(seq 1 50); do echo $i > \"$1\"/f$i; done; "
			     "head -c 3000000 /dev/urandom > \"$1\"/big; sync; umount \"$1\"'";

/* BF_EA_ONLY=name runs only that image test (for debugging). */
static bool selected(const char *name)
{
	const char *only = getenv("BF_EA_ONLY");
	return !only || !*only || strstr(name, only);
}

static void test_images(void)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/bf-test-extalloc.%d", getpid());
	mkdir(tmpdir, 0755);
	if (selected("hash"))
		test_hash_order();
	if (selected("model-default"))
		test_model("model-default", "");
	if (selected("model-single4k"))
		test_model("model-single4k", "-m single -d single -n 4096");
	if (selected("model-mixed"))
		test_model("model-mixed", "-M");
	if (selected("model-v1-noskinny"))
		test_model("model-v1-noskinny", "-R ^free-space-tree -O ^skinny-metadata");
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
	if (selected("chunks-default"))
		test_new_chunks("chunks-default", "", 256, false, BF_BLOCK_GROUP_DUP, BF_BLOCK_GROUP_DUP, 0);
	if (selected("chunks-mixed"))
		test_new_chunks("chunks-mixed", "-M", 256, false, 0, 0, 0);
	if (selected("chunks-raid1"))
		test_new_chunks("chunks-raid1", "-m raid1 -d raid0", 256, true, BF_BLOCK_GROUP_RAID1,
				BF_BLOCK_GROUP_RAID1, BF_BLOCK_GROUP_RAID0);
	if (selected("chunks-raid1-single"))
		test_new_chunks("chunks-raid1-single", "-m raid1 -d single", 256, true, BF_BLOCK_GROUP_RAID1,
				BF_BLOCK_GROUP_RAID1, 0);
	if (selected("xattr-dup4k"))
		test_xattrs("dup4k", "-n 4096", 256, 3800, 4000, 3, true, NULL);
	if (selected("csum"))
		test_csum_delete();
	if (selected("convert"))
		test_fst_convert();
	if (selected("enospc"))
		test_enospc();
	if (selected("resv"))
		test_resv_model();
	if (selected("claim"))
		test_claim();
	if (selected("xattr-bgtree") && sh("mkfs.btrfs -O list-all 2>&1 | grep -q block-group-tree") == 0)
		test_xattrs("bgtree", "-O block-group-tree -n 4096", 256, 3800, 4000, 3, true, NULL);
	else if (selected("xattr-bgtree"))
		printf("skipping the block-group-tree image: this mkfs.btrfs cannot make one (BF_EA_PROGS=dir picks "
		       "another btrfs-progs)\n");
	if (selected("hostile-fst"))
		test_hostile("hostile-fst", "", 300);
	if (selected("hostile-scan"))
		test_hostile("hostile-scan", "-R ^free-space-tree -O ^skinny-metadata", 300);
	sh("umount %s/mnt 2>/dev/null; rm -rf %s", tmpdir, tmpdir);
}

int main(int argc, char **argv)
{
	check_seed = argc > 1 ? strtoull(argv[1], NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20);
	rng_state = check_seed;
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("test_extalloc: seed %" PRIu64 " (pass it as argv[1] to replay)\n", check_seed);
	bf_log_set_verbosity(getenv("BF_EA_VERBOSE") ? BF_LOG_DEBUG : BF_LOG_WARN);
	if (getenv("BF_EA_PROGS")) { /* a directory with other mkfs.btrfs and btrfs binaries, searched first */
		char path[4096];
		snprintf(path, sizeof(path), "%s:%s", getenv("BF_EA_PROGS"), getenv("PATH") ? getenv("PATH") : "");
		setenv("PATH", path, 1);
	}
	test_rangeset();
	if (have_tools())
		test_images();
	else
		printf("skipping the image tests: they need root, mkfs.btrfs, btrfs and a kernel with btrfs\n");
	return check_summary();
}
