/*
 * tests/unit/extalloc_harness.h - what the extent-allocator image tests (test_extalloc_*.c) share.
 *
 * Owns: shell and kernel helpers (sh, have_tools, btrfs check --readonly, marks in the kernel log and the
 * check that a mount logged no BTRFS warning or error), mkimage, a minimal commit written here (delayed
 * references, root items, dirty blocks, superblocks with backup roots) around a writable bf_fsinfo with the
 * allocator's ops (struct tc), verify_space (after a commit the allocator's free space must equal the gaps
 * between the extent items, scanned independently, the free space tree on disk must say the same and used
 * bytes must add up; the scan also checks the order of inline data references with hash_ref), xattr sets on
 * root directories and kernel_mount_check (mount with the kernel, getfattr shows the xattrs, no BTRFS
 * warning), and ea_start/ea_finish, the frame of every image test program.
 * Key idea: the tests change real mkfs.btrfs images only through the btree layer and the allocator, then
 * judge them with btrfs-progs and the kernel, not with our own reader. Header-only like check.h (static
 * inline). The image tests need root, mkfs.btrfs, btrfs and a kernel with btrfs; otherwise they are skipped.
 * Environment: BF_EA_ONLY=name runs one image test; BF_EA_PROGS=dir uses the mkfs.btrfs and btrfs found there
 * (a newer btrfs-progs can make block-group-tree images and checks more); BF_EA_VERBOSE=1 shows debug messages.
 */
#ifndef BF_TEST_EXTALLOC_HARNESS_H
#define BF_TEST_EXTALLOC_HARNESS_H

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
static inline uint64_t rng(void)
{
	return splitmix64(&rng_state);
}
static inline uint64_t rnd(uint64_t n) { return n ? rng() % n : 0; }

/* ================= helpers for real images ================= */

static char tmpdir[128];
static unsigned kmsg_seq;

static inline int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline int sh(const char *fmt, ...)
{
	char cmd[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	int r = system(cmd);
	return WIFEXITED(r) ? WEXITSTATUS(r) : -1;
}

static inline bool have_tools(void)
{
	return geteuid() == 0 && sh("command -v mkfs.btrfs >/dev/null && command -v btrfs >/dev/null && "
				    "grep -qw btrfs /proc/filesystems") == 0;
}

/* btrfs check --readonly: exit 0 and "no error found". */
static inline void btrfs_check(const char *img, const char *what)
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
static inline void kmsg_mark(char *mark, size_t len)
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
static inline void kmsg_check(const char *mark, const char *loopdev, const char *what)
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

static inline int tc_open(struct tc *c)
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

static inline void tc_close(struct tc *c)
{
	bf_extalloc_close(c->ea);
	bf_fsinfo_close(c->fi);
	c->ea = NULL;
	c->fi = NULL;
}

static inline void tc_begin(struct tc *c)
{
	c->transid = c->fi->generation + 1;
	bf_trans_init(&c->t, &c->fi->env, c->transid, bf_extalloc_tree_ops(), c->ea);
	bf_extalloc_begin(c->ea, &c->t);
}

/* The live root of subvolume id (loaded from its root item on first use). */
static inline struct bf_root *tc_subvol(struct tc *c, uint64_t id)
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
static inline int update_root_item(struct tc *c, uint64_t id, const struct bf_root *live)
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

static inline int update_root_items(struct tc *c, int *changed)
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

static inline void fill_backup(struct tc *c, struct bf_root_backup *b)
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
static inline int dev_item_of(struct tc *c, uint64_t devid, struct bf_dev_item *out)
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

static inline int write_supers(struct tc *c)
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
static inline int tc_commit(struct tc *c)
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

static inline int mkimage(char *path, size_t len, const char *name, const char *opts, unsigned mb)
{
	snprintf(path, len, "%s/%s.img", tmpdir, name);
	int r = sh("rm -f %s && truncate -s %uM %s && mkfs.btrfs -q -f %s %s >/dev/null 2>&1", path, mb, path, opts,
		   path);
	CHECK(r == 0, "mkfs.btrfs %s on %s failed", opts, path);
	return r;
}

struct held {
	uint64_t bytenr, len;
	bool data;
	int level;
	uint64_t inode; /* data: the first reference's inode; extra refs use inode + 1 ... inode + nrefs - 1 */
	int nrefs;
	int trans; /* the transaction that allocated it */
};

/* Allocate a data extent of len bytes with one reference from inode ino of tree 5, into h. */
static inline int add_data(struct tc *c, uint64_t len, uint64_t ino, struct held *h)
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

/* What a scan of the extent tree saw, over the whole test run (to show which paths were exercised). */
static struct {
	uint64_t keyed_data_refs, keyed_tree_refs, shared_refs, full_backref, inline_data_multi, order_bad;
} seen;

/* The kernel orders inline EXTENT_DATA_REFs by descending hash_extent_data_ref; reflinked copies give an extent
   many; our hash must see them in that order (extent_tree.c inserts by the same rule). */
static inline uint64_t hash_ref(uint64_t root, uint64_t inode, uint64_t offset)
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

/* The extent tree, scanned here: used ranges per block group. */
struct scan {
	struct ea_rset used;
	uint32_t nodesize;
	int bad;
};

static inline void count_inline(const struct bf_key *k, const uint8_t *data, uint32_t size)
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

static inline int scan_cb(void *arg, const struct bf_key *k, const uint8_t *data, uint32_t size)
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
static inline void verify_space(struct tc *c, const char *what)
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

/* ================= xattrs on root directories ================= */

#define MAX_X 20000

struct xset {
	uint64_t tree, inode; /* inode 0 means the root directory (256) */
	bool live[MAX_X];
	uint32_t vlen;
	int n;
};

static inline void xname(int i, char *buf, size_t len) { snprintf(buf, len, "user.bf%05d", i); }

static inline void xvalue(int i, uint32_t vlen, char *buf)
{
	for (uint32_t k = 0; k < vlen; k++)
		buf[k] = (char)('a' + (i * 7 + (int)k) % 26);
}

static inline int xattr_insert(struct tc *c, struct xset *x, int i)
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

static inline int xattr_delete(struct tc *c, struct xset *x, int i)
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
static inline int xattr_round(struct tc *c, struct xset *x, int add, int del_pct)
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
static inline void xattr_verify(const char *dir, const struct xset *x, const char *what)
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

static inline int loop_attach(const char *img, char *dev, size_t len)
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

static inline void loop_detach(const char *a, const char *b)
{
	if (a[0])
		sh("losetup -d %s 2>/dev/null", a);
	if (b[0])
		sh("losetup -d %s 2>/dev/null", b);
}

static inline void kernel_mount_check(const char *img, const char *what, struct xset *xs, const char *const *dirs,
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

/* BF_EA_ONLY=name runs only that image test (for debugging). */
static inline bool selected(const char *name)
{
	const char *only = getenv("BF_EA_ONLY");
	return !only || !*only || strstr(name, only);
}

/* The start of every image test program: the seed (argv[1] or the clock), PATH with BF_EA_PROGS first, the
   log level, and whether the image tests can run here; if they can, the temporary directory is made. */
static inline bool ea_start(int argc, char **argv, const char *name)
{
	check_seed = argc > 1 ? strtoull(argv[1], NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20);
	rng_state = check_seed;
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("%s: seed %" PRIu64 " (pass it as argv[1] to replay)\n", name, check_seed);
	bf_log_set_verbosity(getenv("BF_EA_VERBOSE") ? BF_LOG_DEBUG : BF_LOG_WARN);
	if (getenv("BF_EA_PROGS")) { /* a directory with other mkfs.btrfs and btrfs binaries, searched first */
		char path[4096];
		snprintf(path, sizeof(path), "%s:%s", getenv("BF_EA_PROGS"), getenv("PATH") ? getenv("PATH") : "");
		setenv("PATH", path, 1);
	}
	if (!have_tools()) {
		printf("skipping the image tests: they need root, mkfs.btrfs, btrfs and a kernel with btrfs\n");
		return false;
	}
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/bf-test-extalloc.%d", getpid());
	mkdir(tmpdir, 0755);
	return true;
}

/* The end: remove the temporary directory (ran: ea_start returned true) and print the summary. */
static inline int ea_finish(bool ran)
{
	if (ran)
		sh("umount %s/mnt 2>/dev/null; rm -rf %s", tmpdir, tmpdir);
	return check_summary();
}

#endif
