/*
 * fs/statfs.c - statfs with the kernel's arithmetic (fs/btrfs/super.c: btrfs_statfs and
 * btrfs_calc_avail_data_space), so df shows the same numbers as on a kernel mount of the same image.
 *
 * Where the state comes from: on a read-only mount, from the on-disk items (what a freshly mounted kernel reads).
 * On a writable mount, the block groups and the devices' bytes_used come from the extent allocator
 * (bf_extalloc_for_each_bg, bf_extalloc_dev_bytes_used), the live state the kernel's space infos mirror: a chunk
 * made in the running transaction has its block group at once (its BLOCK_GROUP_ITEM and DEV_ITEM update are only
 * written at commit, so reading the trees would miss it), and a group's used bytes include what the running
 * transaction allocated in it, as the kernel's counters grow when its delayed references run (extents freed in
 * the transaction count until it commits). The simpler alternative, reading the items through the live roots
 * under the write lock, would still miss a new group's item and every used-bytes change until the commit.
 * Buffered file data not yet given extents is not counted, as the kernel's statfs does not count delalloc
 * (bytes_may_use); a write that meets ENOSPC commits first (fs/wtxn.c), which gives that data its extents, as the
 * kernel's flush_space does, so a full filesystem shows what is really left.
 *
 * Owns: rebuilding the state those functions read:
 *   - space infos: block groups added per type (SYSTEM, METADATA, DATA, or DATA|METADATA when mixed), each
 *     adding length * ncopies to disk_total and used * ncopies to disk_used (btrfs_add_bg_to_space_info);
 *   - read-only block groups: chunks with a stripe on an absent device beyond what the profile tolerates
 *     (btrfs_chunk_writeable), and single/RAID0 block groups of a type whose allocation profile is mirrored
 *     (btrfs_read_block_groups); their free space is not available (btrfs_account_ro_block_groups_free_space);
 *   - the data allocation profile (btrfs_get_alloc_profile / btrfs_reduce_alloc_profile);
 *   - the global block reserve (btrfs_update_global_block_rsv): bytes_used of the extent, csum, free-space and
 *     block-group trees' root items (the tree root's in-memory item starts at 0), at least
 *     insert_size(1 + those trees + 6) + 6 delayed-ref units (doubled with the free-space tree), at most 512M;
 *   - device free space from the dev items (total_bytes - bytes_used; bytes_used live on writable mounts),
 *     simulated chunk allocation.
 * The kernel zeroes f_bavail when the metadata space info is "full" (a chunk allocation failed) and free
 * metadata is short; that state never exists on a fresh mount, so it is not modelled. f_files and f_ffree are
 * 0 as on the kernel.
 * Key idea: on read-only mounts block groups are found by the chunk map (one exact search per chunk in the
 * block-group tree or extent tree), never by scanning the extent tree; on writable mounts the allocator lists
 * them.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>

#include "fs/meta.h"
#include "util/util.h"

#define NR_RAID 9
#define RAID_SINGLE 0
#define RAID_RAID0 1
#define AVAIL_ALLOC_BIT_SINGLE (1ULL << 48)
#define EXTENDED_PROFILE_MASK (BF_BLOCK_GROUP_PROFILE_MASK | AVAIL_ALLOC_BIT_SINGLE)
#define RAID1_MASK (BF_BLOCK_GROUP_RAID1 | BF_BLOCK_GROUP_RAID1C3 | BF_BLOCK_GROUP_RAID1C4)
#define MIRRORED_MASK (BF_BLOCK_GROUP_RAID10 | RAID1_MASK | BF_BLOCK_GROUP_RAID56_MASK | BF_BLOCK_GROUP_DUP)
#define SZ_1M (1ULL << 20)
#define SZ_512M (512ULL << 20)
#define DEVICE_RANGE_RESERVED SZ_1M
#define UNLINK_METADATA_UNITS 6

/* btrfs_raid_array, indexed like the kernel: single, raid0, raid1, dup, raid10, raid5, raid6, raid1c3, raid1c4
   (devs_min of raid0 and raid10 as since Linux 5.15). */
static const struct raid_attr {
	uint64_t bg_flag;
	int devs_min, dev_stripes, ncopies, tolerated;
} raid_attr[NR_RAID] = {
	{ 0, 1, 1, 1, 0 },
	{ BF_BLOCK_GROUP_RAID0, 1, 1, 1, 0 },
	{ BF_BLOCK_GROUP_RAID1, 2, 1, 2, 1 },
	{ BF_BLOCK_GROUP_DUP, 1, 2, 2, 0 },
	{ BF_BLOCK_GROUP_RAID10, 2, 1, 2, 1 },
	{ BF_BLOCK_GROUP_RAID5, 2, 1, 1, 1 },
	{ BF_BLOCK_GROUP_RAID6, 3, 1, 1, 2 },
	{ BF_BLOCK_GROUP_RAID1C3, 3, 1, 3, 2 },
	{ BF_BLOCK_GROUP_RAID1C4, 4, 1, 4, 3 },
};

static int raid_index(uint64_t flags)
{
	uint64_t profile = (flags & BF_BLOCK_GROUP_PROFILE_MASK) >> 2;
	return profile ? 63 - __builtin_clzll(profile) : RAID_SINGLE;
}

static int ncopies(uint64_t flags) { return raid_attr[raid_index(flags)].ncopies; }

struct bg {
	uint64_t logical, length, used, flags;
	bool writeable, ro;
	int space;
};

struct space {
	uint64_t flags, disk_total, disk_used;
	bool has_profile[NR_RAID];
};

struct dev {
	uint64_t total, used;
};

struct df {
	struct bf_fs *fs;
	const struct bf_extalloc *ea; /* writable mounts: the live block groups and device usage; else NULL */
	struct bg *bgs;
	size_t nbgs;
	struct space spaces[3];
	int nspaces;
	uint64_t avail_data, avail_meta, avail_sys; /* avail_*_alloc_bits */
	unsigned rw_devices;
	struct dev *devs;
	size_t ndevs;
};

/* ---------------- block groups ---------------- */

/* Read-only mounts: copy the chunk map (address, length, type, and whether btrfs_chunk_writeable would say yes). */
static int collect_chunks(struct df *d)
{
	struct bf_volume *v = &d->fs->fi->vol;
	pthread_rwlock_rdlock(&v->lock);
	d->bgs = calloc(v->nchunks ? v->nchunks : 1, sizeof(*d->bgs));
	for (size_t i = 0; d->bgs && i < v->nchunks; i++) {
		const struct bf_chunk_map *c = v->chunks[i];
		int missing = 0;
		for (unsigned s = 0; s < c->num_stripes; s++)
			missing += !c->stripes[s].dev || c->stripes[s].dev->fd < 0;
		d->bgs[i] = (struct bg){ c->logical, c->length, 0, c->type,
					 missing <= raid_attr[raid_index(c->type)].tolerated, false, 0 };
	}
	d->nbgs = v->nchunks;
	pthread_rwlock_unlock(&v->lock);
	return d->bgs ? 0 : -ENOMEM;
}

static int read_bg_item(struct df *d, const struct bf_root *tree, struct bg *b)
{
	struct bf_key key = { b->logical, BF_BLOCK_GROUP_ITEM_KEY, b->length };
	struct bf_path p;
	bf_path_init(&p, d->fs->env);
	int r = bf_search(d->fs->env, tree, &key, &p);
	if (r == 1)
		r = bf_corrupt(tree->objectid, 0, &key, "chunk at %llu has no block group item",
			       (unsigned long long)b->logical);
	if (r == 0) {
		uint32_t size;
		const struct bf_block_group_item *bgi = (const void *)bf_path_item(&p, &size);
		if (size < sizeof(*bgi))
			r = bf_corrupt(tree->objectid, 0, &key, "block group item of %u bytes", size);
		else
			b->used = get64(bgi->used), b->flags = get64(bgi->flags);
	}
	bf_path_release(&p);
	return r;
}

/* Space infos in the kernel's list order (newest created first) so a block group joins the same one. */
static void init_spaces(struct df *d)
{
	if (d->fs->fi->incompat & BF_FEATURE_INCOMPAT_MIXED_GROUPS) {
		d->spaces[0].flags = BF_BLOCK_GROUP_DATA | BF_BLOCK_GROUP_METADATA;
		d->spaces[1].flags = BF_BLOCK_GROUP_SYSTEM;
		d->nspaces = 2;
	} else {
		d->spaces[0].flags = BF_BLOCK_GROUP_DATA;
		d->spaces[1].flags = BF_BLOCK_GROUP_METADATA;
		d->spaces[2].flags = BF_BLOCK_GROUP_SYSTEM;
		d->nspaces = 3;
	}
}

static uint64_t chunk_to_extended(uint64_t flags)
{
	return (flags & BF_BLOCK_GROUP_PROFILE_MASK) ? flags : flags | AVAIL_ALLOC_BIT_SINGLE;
}

/* btrfs_add_bg_to_space_info and set_avail_alloc_bits. */
static int add_bg(struct df *d, struct bg *b)
{
	int s = 0;
	while (s < d->nspaces && !(d->spaces[s].flags & b->flags & BF_BLOCK_GROUP_TYPE_MASK))
		s++;
	if (s == d->nspaces)
		return bf_corrupt(BF_EXTENT_TREE_OBJECTID, 0,
				  &(struct bf_key){ b->logical, BF_BLOCK_GROUP_ITEM_KEY, b->length },
				  "block group has no type (flags 0x%llx)", (unsigned long long)b->flags);
	struct space *sp = &d->spaces[s];
	uint64_t f = (uint64_t)ncopies(b->flags);
	b->space = s;
	b->ro = !b->writeable;
	sp->disk_total += b->length * f;
	sp->disk_used += b->used * f;
	sp->has_profile[raid_index(b->flags)] = true;
	uint64_t extra = chunk_to_extended(b->flags) & EXTENDED_PROFILE_MASK;
	if (b->flags & BF_BLOCK_GROUP_DATA)
		d->avail_data |= extra;
	if (b->flags & BF_BLOCK_GROUP_METADATA)
		d->avail_meta |= extra;
	if (b->flags & BF_BLOCK_GROUP_SYSTEM)
		d->avail_sys |= extra;
	return 0;
}

/* Read-only mounts: each chunk's block group item. */
static int groups_from_items(struct df *d)
{
	const struct bf_fsinfo *fi = d->fs->fi;
	const struct bf_root *tree = fi->has_block_group_root ? &fi->block_group_root : &fi->extent_root;
	int r = collect_chunks(d);
	for (size_t i = 0; !r && i < d->nbgs; i++)
		r = read_bg_item(d, tree, &d->bgs[i]);
	return r;
}

static int add_live_bg(void *ctx, const struct bf_extalloc_bg_info *info)
{
	struct df *d = ctx;
	struct bg *n = realloc(d->bgs, (d->nbgs + 1) * sizeof(*n));
	if (!n)
		return -ENOMEM;
	d->bgs = n;
	/* writeable: a writable mount has every device (bf_journal_open refuses a missing one) */
	d->bgs[d->nbgs++] = (struct bg){ info->start, info->length, info->used, info->flags, true, false, 0 };
	return 0;
}

static int load_block_groups(struct df *d)
{
	int r = d->ea ? bf_extalloc_for_each_bg(d->ea, add_live_bg, d) : groups_from_items(d);
	init_spaces(d);
	for (size_t i = 0; !r && i < d->nbgs; i++)
		r = add_bg(d, &d->bgs[i]);
	return r;
}

/* ---------------- allocation profiles ---------------- */

/* btrfs_reduce_alloc_profile without a balance in progress. */
static uint64_t reduce_profile(const struct df *d, uint64_t flags)
{
	static const uint64_t order[] = { BF_BLOCK_GROUP_RAID1C4, BF_BLOCK_GROUP_RAID6, BF_BLOCK_GROUP_RAID1C3,
					  BF_BLOCK_GROUP_RAID5,   BF_BLOCK_GROUP_RAID10, BF_BLOCK_GROUP_RAID1,
					  BF_BLOCK_GROUP_DUP,     BF_BLOCK_GROUP_RAID0 };
	uint64_t allowed = 0;
	for (int i = 0; i < NR_RAID; i++)
		if (d->rw_devices >= (unsigned)raid_attr[i].devs_min)
			allowed |= raid_attr[i].bg_flag;
	allowed &= flags;
	for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++)
		if (allowed & order[i]) {
			allowed = order[i];
			break;
		}
	flags &= ~BF_BLOCK_GROUP_PROFILE_MASK;
	return (flags | allowed) & ~AVAIL_ALLOC_BIT_SINGLE;
}

static uint64_t alloc_profile(const struct df *d, uint64_t flags)
{
	if (flags & BF_BLOCK_GROUP_DATA)
		flags |= d->avail_data;
	else if (flags & BF_BLOCK_GROUP_SYSTEM)
		flags |= d->avail_sys;
	else if (flags & BF_BLOCK_GROUP_METADATA)
		flags |= d->avail_meta;
	return reduce_profile(d, flags);
}

/* btrfs_read_block_groups: with a mirrored profile, single and RAID0 block groups of that type go read-only. */
static void mark_unmirrored_ro(struct df *d)
{
	for (int s = 0; s < d->nspaces; s++) {
		if (!(alloc_profile(d, d->spaces[s].flags) & MIRRORED_MASK))
			continue;
		for (size_t i = 0; i < d->nbgs; i++) {
			int idx = raid_index(d->bgs[i].flags);
			if (d->bgs[i].space == s && (idx == RAID_SINGLE || idx == RAID_RAID0))
				d->bgs[i].ro = true;
		}
	}
}

static uint64_t ro_free_space(const struct df *d, int s)
{
	uint64_t free_bytes = 0;
	for (size_t i = 0; i < d->nbgs; i++)
		if (d->bgs[i].space == s && d->bgs[i].ro)
			free_bytes += (d->bgs[i].length - d->bgs[i].used) * (uint64_t)ncopies(d->bgs[i].flags);
	return free_bytes;
}

/* ---------------- global block reserve ---------------- */

static int root_used(struct bf_fs *fs, uint64_t id, bool *exists, uint64_t *used)
{
	struct bf_root root;
	struct bf_root_item item;
	int r = bf_find_root(fs->fi, id, &root, &item);
	*exists = r == 0;
	if (r == 0)
		*used += get64(item.bytes_used);
	return r == -ENOENT ? 0 : r;
}

static int global_rsv_size(struct bf_fs *fs, uint64_t *size)
{
	static const uint64_t global[] = { BF_EXTENT_TREE_OBJECTID, BF_CSUM_TREE_OBJECTID,
					   BF_FREE_SPACE_TREE_OBJECTID };
	uint64_t used = 0, min_items = 1;
	bool exists;
	for (size_t i = 0; i < sizeof(global) / sizeof(global[0]); i++) {
		int r = root_used(fs, global[i], &exists, &used);
		if (r)
			return r;
		min_items += exists;
	}
	if (fs->fi->compat_ro & BF_FEATURE_COMPAT_RO_BLOCK_GROUP_TREE) {
		int r = root_used(fs, BF_BLOCK_GROUP_TREE_OBJECTID, &exists, &used);
		if (r)
			return r;
		min_items += exists;
	}
	min_items += UNLINK_METADATA_UNITS;
	uint64_t unit = (uint64_t)fs->fi->nodesize * BF_MAX_LEVEL * 2;
	uint64_t delayed = unit * UNLINK_METADATA_UNITS;
	if (fs->fi->compat_ro & BF_FEATURE_COMPAT_RO_FREE_SPACE_TREE)
		delayed *= 2;
	*size = bf_min64(bf_max64(used, unit * min_items + delayed), SZ_512M);
	return 0;
}

/* ---------------- device free space ---------------- */

static int add_dev_item(void *arg, const struct bf_key *k, const uint8_t *data, uint32_t size)
{
	struct df *d = arg;
	const struct bf_dev_item *di = (const void *)data;
	if (size < sizeof(*di))
		return bf_corrupt(BF_CHUNK_TREE_OBJECTID, 0, k, "dev item of %u bytes", size);
	const struct bf_device *dev = bf_vol_find_device(&d->fs->fi->vol, k->offset);
	if (k->offset == 0 || !dev || dev->fd < 0) /* replace target or absent: no bdev */
		return 0;
	struct dev *n = realloc(d->devs, (d->ndevs + 1) * sizeof(*n));
	if (!n)
		return -ENOMEM;
	d->devs = n;
	uint64_t used = d->ea ? bf_extalloc_dev_bytes_used(d->ea, k->offset) : get64(di->bytes_used);
	d->devs[d->ndevs++] = (struct dev){ get64(di->total_bytes), used };
	return 0;
}

static int cmp_desc(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x > y ? -1 : x < y;
}

/* btrfs_calc_avail_data_space: simulate allocating data chunks on the free space of the devices. */
static uint64_t avail_data_space(const struct df *d, uint64_t *avail)
{
	uint64_t type = alloc_profile(d, BF_BLOCK_GROUP_DATA);
	const struct raid_attr *ra = &raid_attr[raid_index(type)];
	size_t nr = d->ndevs, n = 0;
	size_t num_stripes = 1;
	if (type & BF_BLOCK_GROUP_RAID0)
		num_stripes = nr;
	else if (type & RAID1_MASK)
		num_stripes = (size_t)ra->ncopies;
	else if (type & BF_BLOCK_GROUP_RAID10)
		num_stripes = 4;
	uint64_t min_stripe = (uint64_t)ra->dev_stripes * BF_STRIPE_LEN;
	for (size_t i = 0; i < nr; i++) {
		uint64_t a = bf_round_down(d->devs[i].total - d->devs[i].used, BF_STRIPE_LEN);
		if (a > DEVICE_RANGE_RESERVED + min_stripe)
			avail[n++] = a - DEVICE_RANGE_RESERVED;
	}
	qsort(avail, n, sizeof(*avail), cmp_desc);
	uint64_t total = 0;
	for (size_t left = n; left >= (size_t)ra->devs_min && left > 0; left--) {
		size_t i = left - 1;
		num_stripes = num_stripes < left ? num_stripes : left;
		if (avail[i] < min_stripe)
			continue;
		uint64_t alloc = avail[i];
		total += alloc * num_stripes;
		for (size_t j = i + 1 - num_stripes; j <= i; j++)
			avail[j] -= alloc;
	}
	return total;
}

static int load_devices(struct df *d)
{
	const struct bf_volume *v = &d->fs->fi->vol;
	for (size_t i = 0; i < v->ndevs; i++)
		d->rw_devices += v->devs[i]->fd >= 0 && v->devs[i]->devid != 0;
	struct bf_key min = { BF_DEV_ITEMS_OBJECTID, BF_DEV_ITEM_KEY, 0 };
	struct bf_key max = { BF_DEV_ITEMS_OBJECTID, BF_DEV_ITEM_KEY, UINT64_MAX };
	return bf_iterate(d->fs->env, &d->fs->fi->chunk_root, &min, &max, add_dev_item, d);
}

/* ---------------- btrfs_statfs ---------------- */

static void fill_fsid(const struct bf_fs *fs, struct statvfs *st)
{
	const uint8_t *u = fs->fi->vol.fsid;
	uint32_t w[4];
	for (int i = 0; i < 4; i++) /* the kernel reads the fsid as four big-endian words */
		w[i] = (uint32_t)u[4 * i] << 24 | (uint32_t)u[4 * i + 1] << 16 | (uint32_t)u[4 * i + 2] << 8 |
		       u[4 * i + 3];
	uint32_t v0 = w[0] ^ w[2] ^ (uint32_t)(fs->mount_root >> 32);
	uint32_t v1 = w[1] ^ w[3] ^ (uint32_t)fs->mount_root;
	st->f_fsid = (unsigned long)v0 | (unsigned long)((uint64_t)v1 << 32);
}

static int compute(struct df *d, struct statvfs *st)
{
	uint64_t total_used = 0, free_data = 0, rsv, factor = 1;
	for (int s = 0; s < d->nspaces; s++) {
		const struct space *sp = &d->spaces[s];
		if (sp->flags & BF_BLOCK_GROUP_DATA) {
			free_data += sp->disk_total - sp->disk_used - ro_free_space(d, s);
			for (int i = 0; i < NR_RAID; i++)
				if (sp->has_profile[i])
					factor = (uint64_t)raid_attr[i].ncopies;
		}
		total_used += sp->disk_used;
	}
	int r = global_rsv_size(d->fs, &rsv);
	if (r)
		return r;
	unsigned bits = (unsigned)__builtin_ctz(d->fs->fi->sectorsize);
	uint64_t blocks = (get64(d->fs->fi->super.total_bytes) / factor) >> bits;
	uint64_t bfree = blocks - ((total_used / factor) >> bits);
	bfree = bfree >= (rsv >> bits) ? bfree - (rsv >> bits) : 0;
	uint64_t *scratch = calloc(d->ndevs ? d->ndevs : 1, sizeof(uint64_t));
	if (!scratch)
		return -ENOMEM;
	uint64_t bavail = free_data / factor + avail_data_space(d, scratch) / factor;
	free(scratch);
	memset(st, 0, sizeof(*st));
	st->f_bsize = st->f_frsize = d->fs->fi->sectorsize;
	st->f_blocks = blocks;
	st->f_bfree = bfree;
	st->f_bavail = bavail >> bits;
	st->f_namemax = BF_NAME_LEN;
	st->f_flag = d->fs->fi->readonly ? ST_RDONLY : 0;
	fill_fsid(d->fs, st);
	return 0;
}

int bf_fs_statfs(struct bf_fs *fs, struct statvfs *st)
{
	struct df d = { .fs = fs, .ea = bf_txn_alloc(fs->fi) };
	int r = load_devices(&d);
	if (!r)
		r = load_block_groups(&d);
	if (!r) {
		mark_unmirrored_ro(&d);
		r = compute(&d, st);
	}
	free(d.bgs);
	free(d.devs);
	return r;
}
