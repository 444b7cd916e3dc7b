/*
 * alloc/chunk_alloc.c - devices' free space and new chunks, as the kernel's btrfs_alloc_chunk makes them.
 *
 * Owns: struct ea_dev (each device's DEV_EXTENTs and bytes_used), the choice of profile, devices and size of a
 * new chunk, and the items a new chunk adds: CHUNK_ITEM (and the superblock's system chunk array for system
 * chunks), DEV_EXTENTs, DEV_ITEM.bytes_used (also in the superblock's dev_item), BLOCK_GROUP_ITEM, and the free
 * space tree's FREE_SPACE_INFO.
 *
 * Key idea: two phases like the kernel. Phase 1 (chunk_alloc, memory only, safe inside a btree operation) picks
 * the layout - gather_device_info: every writable device with room, its first free hole of the wanted size
 * (or its largest) from 1 MiB on, sorted by room; decide_stripe_size_regular: as many devices as the profile
 * allows, stripe size = the smallest device's room per stripe, capped so the chunk stays under max_chunk_size
 * (data 10 GiB, metadata 256 MiB, or 1 GiB above 50 GiB of devices, system 32 MiB, and never over 10% of the
 * devices) rounded up to 16 MiB, at most 1 GiB, a multiple of 64 KiB - adds the chunk to the volume and makes
 * its block group usable at once. Phase 2 (chunk_insert_pending, at commit) inserts the items. The profile is
 * the one the type's block groups already have, the most redundant if several (btrfs_reduce_alloc_profile).
 */
#include "alloc/extalloc_int.h"
#include "alloc/internal.h"
#include "util/util.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#define SZ_1M (1ULL << 20)
#define SZ_16M (16ULL << 20)
#define SZ_32M (32ULL << 20)
#define SZ_256M (256ULL << 20)
#define SZ_1G (1ULL << 30)

/* What each profile needs (the kernel's btrfs_raid_array). */
struct raid_attr {
	uint64_t flag;
	int dev_stripes, devs_max, devs_min, devs_increment, ncopies, nparity;
};

static const struct raid_attr raid_attrs[] = {
	{ BF_BLOCK_GROUP_RAID10, 1, 0, 2, 2, 2, 0 },  { BF_BLOCK_GROUP_RAID1, 1, 2, 2, 2, 2, 0 },
	{ BF_BLOCK_GROUP_RAID1C3, 1, 3, 3, 3, 3, 0 }, { BF_BLOCK_GROUP_RAID1C4, 1, 4, 4, 4, 4, 0 },
	{ BF_BLOCK_GROUP_DUP, 2, 1, 1, 1, 2, 0 },     { BF_BLOCK_GROUP_RAID0, 1, 0, 1, 1, 1, 0 },
	{ 0, 1, 1, 1, 1, 1, 0 },		      { BF_BLOCK_GROUP_RAID5, 1, 0, 2, 1, 1, 1 },
	{ BF_BLOCK_GROUP_RAID6, 1, 0, 3, 1, 1, 2 },
};

static const struct raid_attr *attr_of(uint64_t profile)
{
	for (size_t i = 0; i < sizeof(raid_attrs) / sizeof(raid_attrs[0]); i++)
		if (raid_attrs[i].flag == (profile & BF_BLOCK_GROUP_PROFILE_MASK))
			return &raid_attrs[i];
	return &raid_attrs[6];
}

/* ---- devices ---- */

static bool dev_usable(const struct ea_dev *d) { return d->dev && d->dev->fd >= 0 && d->dev->writable; }

static int rw_devices(const struct bf_extalloc *ea)
{
	int n = 0;
	for (size_t i = 0; i < ea->ndevs; i++)
		n += dev_usable(&ea->devs[i]);
	return n;
}

struct dext_ctx {
	struct ea_dev *d;
	int err;
};

static int dev_extent_item(void *arg, const struct bf_key *k, const uint8_t *data, uint32_t size)
{
	struct dext_ctx *c = arg;
	const struct bf_dev_extent *de = (const void *)data;
	uint64_t end;
	if (k->type != BF_DEV_EXTENT_KEY)
		return 0;
	if (size != sizeof(*de) || !get64(de->length) || bf_add_overflow(k->offset, get64(de->length), &end)) {
		bf_log(BF_LOG_ERR, "device %" PRIu64 ": device extent at %" PRIu64 " is malformed (corrupt device "
		       "tree; run 'btrfs check --readonly')", c->d->devid, k->offset);
		return -EUCLEAN;
	}
	int ret = rset_add(&c->d->extents, k->offset, end);
	if (ret == -EEXIST)
		bf_log(BF_LOG_ERR, "device %" PRIu64 ": device extents overlap at %" PRIu64 " (corrupt device tree; run "
		       "'btrfs check --readonly')", c->d->devid, k->offset);
	return ret == -EEXIST ? -EUCLEAN : ret;
}

static int dev_load(struct bf_extalloc *ea, struct ea_dev *d, char *err, size_t errlen)
{
	struct bf_key key = { BF_DEV_ITEMS_OBJECTID, BF_DEV_ITEM_KEY, d->devid };
	struct bf_path p;
	uint32_t size;
	bf_path_init(&p, ea->env);
	int ret = bf_search(ea->env, ea->roots.chunk, &key, &p);
	const struct bf_dev_item *di = ret == 0 ? (const void *)bf_path_item(&p, &size) : NULL;
	if (ret == 0 && size != sizeof(*di))
		ret = bf_err(err, errlen, -EUCLEAN, "device item of devid %" PRIu64 " has %u bytes (corrupt chunk "
			     "tree; run 'btrfs check --readonly')", d->devid, size);
	else if (ret == 1)
		ret = bf_err(err, errlen, -EUCLEAN, "the chunk tree has no device item for devid %" PRIu64, d->devid);
	else if (ret < 0)
		ret = bf_err(err, errlen, ret, "cannot read the device item of devid %" PRIu64, d->devid);
	if (!ret) {
		d->total_bytes = get64(di->total_bytes);
		d->bytes_used = d->bytes_used_committed = get64(di->bytes_used);
	}
	bf_path_release(&p);
	if (ret)
		return ret;
	struct dext_ctx c = { d, 0 };
	struct bf_key min = { d->devid, BF_DEV_EXTENT_KEY, 0 }, max = { d->devid, BF_DEV_EXTENT_KEY, UINT64_MAX };
	ret = bf_iterate(ea->env, ea->roots.dev, &min, &max, dev_extent_item, &c);
	if (ret)
		return bf_err(err, errlen, ret, "cannot load the device extents of devid %" PRIu64 ": %s", d->devid,
			      strerror(-ret));
	return 0;
}

int dev_load_all(struct bf_extalloc *ea, char *err, size_t errlen)
{
	if (!ea->roots.chunk || !ea->roots.dev)
		return bf_err(err, errlen, -EUCLEAN, "the chunk or device tree is missing");
	ea->devs = calloc(ea->vol->ndevs ? ea->vol->ndevs : 1, sizeof(*ea->devs));
	if (!ea->devs)
		return bf_err(err, errlen, -ENOMEM, "out of memory loading devices");
	for (size_t i = 0; i < ea->vol->ndevs; i++) {
		struct ea_dev *d = &ea->devs[ea->ndevs++];
		d->dev = ea->vol->devs[i];
		d->devid = d->dev->devid;
		int ret = dev_load(ea, d, err, errlen);
		if (ret)
			return ret;
	}
	return 0;
}

void dev_destroy_all(struct bf_extalloc *ea)
{
	for (size_t i = 0; i < ea->ndevs; i++)
		rset_free(&ea->devs[i].extents);
	free(ea->devs);
	ea->devs = NULL;
	ea->ndevs = 0;
}

static struct ea_dev *dev_find(struct bf_extalloc *ea, uint64_t devid)
{
	for (size_t i = 0; i < ea->ndevs; i++)
		if (ea->devs[i].devid == devid)
			return &ea->devs[i];
	return NULL;
}

/* find_free_dev_extent: the first hole of want bytes from 1 MiB on (returns true), else the largest. */
static bool free_dev_extent(const struct ea_dev *d, uint64_t want, uint64_t *start, uint64_t *len)
{
	uint64_t pos = SZ_1M, best = 0, best_start = pos;
	for (size_t i = 0; pos < d->total_bytes; i++) {
		uint64_t hole_end = i < d->extents.n ? bf_min64(d->extents.v[i].start, d->total_bytes) : d->total_bytes;
		if (hole_end > pos) {
			if (hole_end - pos > best) {
				best = hole_end - pos;
				best_start = pos;
			}
			if (hole_end - pos >= want) {
				*start = pos;
				*len = want;
				return true;
			}
		}
		if (i >= d->extents.n)
			break;
		pos = bf_max64(pos, d->extents.v[i].end);
	}
	*start = best_start;
	*len = best;
	return false;
}

/* ---- choosing a layout ---- */

uint64_t kind_type(const struct bf_extalloc *ea, enum ea_kind kind)
{
	if (kind == EA_SYS)
		return BF_BLOCK_GROUP_SYSTEM;
	if (ea->mixed)
		return BF_BLOCK_GROUP_DATA | BF_BLOCK_GROUP_METADATA;
	return kind == EA_DATA ? BF_BLOCK_GROUP_DATA : BF_BLOCK_GROUP_METADATA;
}

uint64_t chunk_profile(const struct bf_extalloc *ea, enum ea_kind kind)
{
	static const uint64_t order[] = { BF_BLOCK_GROUP_RAID1C4, BF_BLOCK_GROUP_RAID6, BF_BLOCK_GROUP_RAID1C3,
					  BF_BLOCK_GROUP_RAID5,	  BF_BLOCK_GROUP_RAID10, BF_BLOCK_GROUP_RAID1,
					  BF_BLOCK_GROUP_DUP,	  BF_BLOCK_GROUP_RAID0 };
	uint64_t type = kind_type(ea, kind), seen = 0;
	int ndev = rw_devices(ea);
	for (size_t i = 0; i < ea->nbgs; i++)
		if ((ea->bgs[i]->flags & BF_BLOCK_GROUP_TYPE_MASK) == type)
			seen |= ea->bgs[i]->flags & BF_BLOCK_GROUP_PROFILE_MASK;
	for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++)
		if ((seen & order[i]) && ndev >= attr_of(order[i])->devs_min)
			return order[i];
	return 0;
}

struct dev_info {
	struct ea_dev *d;
	uint64_t offset, max_avail, total_avail;
};

static int by_room(const void *a, const void *b)
{
	const struct dev_info *x = a, *y = b;
	if (x->max_avail != y->max_avail)
		return x->max_avail > y->max_avail ? -1 : 1;
	if (x->total_avail != y->total_avail)
		return x->total_avail > y->total_avail ? -1 : 1;
	return 0;
}

struct layout {
	uint64_t type, stripe_size, chunk_size;
	int ndevs, num_stripes;
	const struct raid_attr *ra;
};

/* calc_chunk_size: the largest chunk of a type before the 10% cap. */
static uint64_t max_chunk_size(uint64_t type, uint64_t total_rw)
{
	if (type & BF_BLOCK_GROUP_DATA)
		return 10 * SZ_1G;
	if (type & BF_BLOCK_GROUP_SYSTEM)
		return SZ_32M;
	return total_rw > 50 * SZ_1G ? SZ_1G : SZ_256M;
}

/* gather_device_info: every writable device with at least min_ext free, with its first hole of want bytes (or
   its largest), most room first. Returns how many. */
static int gather_devices(struct bf_extalloc *ea, uint64_t want, uint64_t min_ext, struct dev_info *info)
{
	int n = 0;
	for (size_t i = 0; i < ea->ndevs; i++) {
		struct ea_dev *d = &ea->devs[i];
		uint64_t avail = d->total_bytes > d->bytes_used ? d->total_bytes - d->bytes_used : 0, off, max;
		if (!dev_usable(d) || avail < min_ext)
			continue;
		if (free_dev_extent(d, want, &off, &max))
			max = want;
		if (max >= min_ext)
			info[n++] = (struct dev_info){ d, off, max, avail };
	}
	qsort(info, (size_t)n, sizeof(*info), by_room);
	return n;
}

/* decide_stripe_size_regular: the smallest chosen device's room per stripe, capped so the chunk stays under
   max_chunk (rounded up to 16 MiB), at most 1 GiB, a multiple of the stripe length. */
static int decide_size(struct layout *L, const struct dev_info *info, uint64_t max_chunk)
{
	uint64_t data_stripes = (uint64_t)(L->num_stripes - L->ra->nparity) / (uint64_t)L->ra->ncopies;
	uint64_t ss = info[L->ndevs - 1].max_avail / (uint64_t)L->ra->dev_stripes;
	if (ss * data_stripes > max_chunk)
		ss = bf_min64((max_chunk / data_stripes + SZ_16M - 1) / SZ_16M * SZ_16M, ss);
	ss = bf_round_down(bf_min64(ss, SZ_1G), BF_STRIPE_LEN);
	if (!ss)
		return -ENOSPC;
	L->stripe_size = ss;
	L->chunk_size = ss * data_stripes;
	return 0;
}

/* The layout of a new chunk of kind (init_alloc_chunk_ctl, gather_device_info, decide_stripe_size); info has
   room for every device. */
static int plan(struct bf_extalloc *ea, enum ea_kind kind, struct dev_info *info, struct layout *L)
{
	L->type = kind_type(ea, kind) | chunk_profile(ea, kind);
	L->ra = attr_of(L->type);
	if (L->type & BF_BLOCK_GROUP_RAID56_MASK)
		return -EROFS;
	uint64_t total_rw = 0;
	for (size_t i = 0; i < ea->ndevs; i++)
		total_rw += dev_usable(&ea->devs[i]) ? ea->devs[i].total_bytes : 0;
	uint64_t max_chunk = max_chunk_size(L->type, total_rw);
	uint64_t max_stripe = bf_min64(max_chunk, SZ_1G);
	uint64_t max_sys_devs = (BF_SYSTEM_CHUNK_ARRAY_SIZE - 2 * sizeof(struct bf_disk_key) -
				 2 * sizeof(struct bf_chunk)) / sizeof(struct bf_stripe) + 1;
	int devs_max = L->ra->devs_max ? L->ra->devs_max : 0x7fff;
	if (kind == EA_SYS)
		devs_max = (int)bf_min64((uint64_t)devs_max, max_sys_devs);
	max_chunk = bf_min64(total_rw / 10, max_chunk); /* never more than 10% of the devices */
	int n = gather_devices(ea, max_stripe * (uint64_t)L->ra->dev_stripes,
			       BF_STRIPE_LEN * (uint64_t)L->ra->dev_stripes, info);
	n -= n % L->ra->devs_increment;
	if (n < L->ra->devs_min)
		return -ENOSPC;
	L->ndevs = n < devs_max ? n : devs_max;
	L->num_stripes = L->ndevs * L->ra->dev_stripes;
	return decide_size(L, info, max_chunk);
}

/* ---- phase 1 ---- */

/* A chunk item for layout L at logical (stripes in device order, DUP stripes side by side). */
static struct bf_chunk *build_chunk(const struct bf_extalloc *ea, const struct layout *L,
				    const struct dev_info *info, size_t *size)
{
	*size = bf_chunk_item_size((unsigned)L->num_stripes);
	struct bf_chunk *c = calloc(1, *size);
	if (!c)
		return NULL;
	put64(&c->length, L->chunk_size);
	put64(&c->owner, BF_EXTENT_TREE_OBJECTID);
	put64(&c->stripe_len, BF_STRIPE_LEN);
	put64(&c->type, L->type);
	put32(&c->io_align, BF_STRIPE_LEN);
	put32(&c->io_width, BF_STRIPE_LEN);
	put32(&c->sector_size, ea->sectorsize);
	put16(&c->num_stripes, (uint16_t)L->num_stripes);
	put16(&c->sub_stripes, (L->type & BF_BLOCK_GROUP_RAID10) ? 2 : 1);
	struct bf_stripe *s = &c->stripe;
	for (int i = 0; i < L->ndevs; i++)
		for (int j = 0; j < L->ra->dev_stripes; j++, s++) {
			put64(&s->devid, info[i].d->devid);
			put64(&s->offset, info[i].offset + (uint64_t)j * L->stripe_size);
			memcpy(s->dev_uuid, info[i].d->dev->uuid, BF_UUID_SIZE);
		}
	return c;
}

static uint64_t next_logical(const struct bf_extalloc *ea)
{
	uint64_t end = 0;
	for (size_t i = 0; i < ea->vol->nchunks; i++)
		end = bf_max64(end, ea->vol->chunks[i]->logical + ea->vol->chunks[i]->length);
	return end;
}

/* The block group of a new chunk, with every byte free but the superblock copies. */
static int add_group(struct bf_extalloc *ea, uint64_t logical, const struct layout *L)
{
	struct ea_bg *bg = bg_new(ea, logical, L->chunk_size, L->type);
	const struct bf_chunk_map *c = bf_vol_find_chunk(ea->vol, logical);
	int ret = bg && c ? 0 : -ENOMEM;
	if (!ret)
		ret = rset_add(&bg->fst, logical, logical + L->chunk_size);
	if (!ret)
		ret = rset_add(&bg->free, logical, logical + L->chunk_size);
	if (!ret)
		ret = bg_exclude_super(ea, bg, c);
	if (!ret) {
		bg->created = bg->need_items = true;
		bg->need_fst = ea->use_fst;
		ret = bg_insert(ea, bg);
	}
	if (ret)
		bg_destroy(bg);
	return ret;
}

static int make_chunk(struct bf_extalloc *ea, const struct layout *L, const struct dev_info *info)
{
	size_t size;
	char why[256] = "";
	uint64_t logical = next_logical(ea);
	struct bf_chunk *c = build_chunk(ea, L, info, &size);
	int ret = c ? bf_vol_add_chunk(ea->vol, logical, c, size, why, sizeof(why)) : -ENOMEM;
	free(c);
	if (ret) {
		bf_log(BF_LOG_ERR, "cannot add a new %s chunk at logical %" PRIu64 ": %s", bf_bg_type_name(L->type),
		       logical, why[0] ? why : strerror(-ret));
		return ret;
	}
	for (int i = 0; i < L->ndevs && !ret; i++) {
		uint64_t len = L->stripe_size * (uint64_t)L->ra->dev_stripes;
		ret = rset_add(&info[i].d->extents, info[i].offset, info[i].offset + len);
		info[i].d->bytes_used += len;
		info[i].d->dirty = true;
	}
	if (!ret)
		ret = add_group(ea, logical, L);
	if (!ret)
		bf_log(BF_LOG_DEBUG, "allocated a %s %s chunk of %" PRIu64 " bytes at logical %" PRIu64,
		       bf_profile_name(L->type), bf_bg_type_name(L->type), L->chunk_size, logical);
	return ret;
}

/* check_system_chunk: room in the system groups for the chunk tree changes a new chunk brings. */
static void ensure_system_room(struct bf_extalloc *ea)
{
	uint64_t need = (uint64_t)ea->nodesize * BF_MAX_LEVEL * (uint64_t)(rw_devices(ea) + 2);
	if (ea_free_bytes(ea, EA_SYS) < need)
		chunk_alloc(ea, EA_SYS); /* failing here leaves what room there is; the chunk tree may still fit */
}

int chunk_alloc(struct bf_extalloc *ea, enum ea_kind kind)
{
	struct layout L;
	struct dev_info *info = calloc(ea->ndevs ? ea->ndevs : 1, sizeof(*info));
	if (!info)
		return -ENOMEM;
	if (kind != EA_SYS)
		ensure_system_room(ea);
	int ret = plan(ea, kind, info, &L);
	if (!ret)
		ret = make_chunk(ea, &L, info);
	else if (ret == -EROFS)
		bf_log(BF_LOG_ERR, "cannot allocate a new %s chunk: RAID5/6 chunks are not supported for writing",
		       bf_bg_type_name(kind_type(ea, kind)));
	free(info);
	return ret;
}

uint64_t chunk_unallocated(const struct bf_extalloc *ea, enum ea_kind kind)
{
	const struct raid_attr *ra = attr_of(chunk_profile(ea, kind));
	uint64_t sum = 0;
	if (rw_devices(ea) < ra->devs_min || ra->nparity)
		return 0;
	for (size_t i = 0; i < ea->ndevs; i++) {
		const struct ea_dev *d = &ea->devs[i];
		if (dev_usable(d) && d->total_bytes > d->bytes_used)
			sum += d->total_bytes - d->bytes_used;
	}
	return sum / (uint64_t)ra->ncopies;
}

/* ---- phase 2 ---- */

static struct bf_chunk *chunk_item_of(const struct bf_extalloc *ea, const struct bf_chunk_map *m, size_t *size)
{
	*size = bf_chunk_item_size(m->num_stripes);
	struct bf_chunk *c = calloc(1, *size);
	if (!c)
		return NULL;
	put64(&c->length, m->length);
	put64(&c->owner, BF_EXTENT_TREE_OBJECTID);
	put64(&c->stripe_len, m->stripe_len);
	put64(&c->type, m->type);
	put32(&c->io_align, BF_STRIPE_LEN);
	put32(&c->io_width, BF_STRIPE_LEN);
	put32(&c->sector_size, ea->sectorsize);
	put16(&c->num_stripes, m->num_stripes);
	put16(&c->sub_stripes, m->sub_stripes);
	struct bf_stripe *s = &c->stripe;
	for (unsigned i = 0; i < m->num_stripes; i++, s++) {
		const struct bf_device *d = bf_vol_find_device(ea->vol, m->stripes[i].devid);
		put64(&s->devid, m->stripes[i].devid);
		put64(&s->offset, m->stripes[i].physical);
		if (d)
			memcpy(s->dev_uuid, d->uuid, BF_UUID_SIZE);
	}
	return c;
}

/* btrfs_add_system_chunk: append (key, item) to the superblock's system chunk array. */
static int add_sys_chunk(struct bf_extalloc *ea, uint64_t logical, const struct bf_chunk *c, size_t size)
{
	uint32_t cur = get32(ea->super->sys_chunk_array_size);
	struct bf_disk_key dk;
	struct bf_key key = { BF_FIRST_CHUNK_TREE_OBJECTID, BF_CHUNK_ITEM_KEY, logical };
	if (cur > BF_SYSTEM_CHUNK_ARRAY_SIZE || BF_SYSTEM_CHUNK_ARRAY_SIZE - cur < sizeof(dk) + size) {
		bf_log(BF_LOG_ERR, "the superblock's system chunk array is full; cannot add the system chunk at %" PRIu64,
		       logical);
		return -EFBIG;
	}
	bf_key_to_disk(&dk, &key);
	memcpy(ea->super->sys_chunk_array + cur, &dk, sizeof(dk));
	memcpy(ea->super->sys_chunk_array + cur + sizeof(dk), c, size);
	put32(&ea->super->sys_chunk_array_size, cur + (uint32_t)(sizeof(dk) + size));
	return 0;
}

static int insert_dev_extents(struct bf_extalloc *ea, const struct bf_chunk_map *m)
{
	uint64_t span = bf_chunk_dev_span(m);
	for (unsigned i = 0; i < m->num_stripes; i++) {
		struct bf_key key = { m->stripes[i].devid, BF_DEV_EXTENT_KEY, m->stripes[i].physical };
		struct bf_dev_extent de;
		put64(&de.chunk_tree, BF_CHUNK_TREE_OBJECTID);
		put64(&de.chunk_objectid, BF_FIRST_CHUNK_TREE_OBJECTID);
		put64(&de.chunk_offset, m->logical);
		put64(&de.length, span);
		memcpy(de.chunk_tree_uuid, ea->env->chunk_tree_uuid, BF_UUID_SIZE);
		int ret = bf_insert_item(ea->trans, ea->roots.dev, &key, &de, sizeof(de));
		if (ret)
			return ret;
	}
	return 0;
}

static int insert_group_items(struct bf_extalloc *ea, struct ea_bg *bg)
{
	const struct bf_chunk_map *m = bf_vol_find_chunk(ea->vol, bg->start);
	size_t size;
	struct bf_chunk *c = m ? chunk_item_of(ea, m, &size) : NULL;
	if (!c)
		return m ? -ENOMEM : -EUCLEAN;
	struct bf_key key = { BF_FIRST_CHUNK_TREE_OBJECTID, BF_CHUNK_ITEM_KEY, bg->start };
	int ret = bf_insert_item(ea->trans, ea->roots.chunk, &key, c, (uint32_t)size);
	if (!ret && (bg->flags & BF_BLOCK_GROUP_SYSTEM))
		ret = add_sys_chunk(ea, bg->start, c, size);
	free(c);
	if (!ret)
		ret = insert_dev_extents(ea, m);
	struct bf_block_group_item bi;
	put64(&bi.used, bg->used);
	put64(&bi.chunk_objectid, BF_FIRST_CHUNK_TREE_OBJECTID);
	put64(&bi.flags, bg->flags);
	key = (struct bf_key){ bg->start, BF_BLOCK_GROUP_ITEM_KEY, bg->length };
	if (!ret)
		ret = bf_insert_item(ea->trans, bg_root(ea), &key, &bi, sizeof(bi));
	if (!ret) {
		bg->need_items = false;
		bg->dirty = false;
		ret = fst_add_group(ea, bg);
	}
	return ret;
}

static int write_dev_item(struct bf_extalloc *ea, struct ea_dev *d)
{
	struct bf_key key = { BF_DEV_ITEMS_OBJECTID, BF_DEV_ITEM_KEY, d->devid };
	struct bf_path p;
	uint32_t size;
	bf_path_init(&p, ea->env);
	d->dirty = false;
	int ret = bf_search_slot(ea->trans, ea->roots.chunk, &key, 0, true, &p);
	struct bf_dev_item *di = ret == 0 ? (void *)bf_path_item_mut(ea->trans, &p, &size) : NULL;
	if (ret >= 0 && (!di || size != sizeof(*di))) {
		bf_log(BF_LOG_ERR, "device item of devid %" PRIu64 " is missing or malformed", d->devid);
		ret = -EUCLEAN;
	}
	if (!ret)
		put64(&di->bytes_used, d->bytes_used);
	bf_path_release(&p);
	if (!ret && get64(ea->super->dev_item.devid) == d->devid)
		put64(&ea->super->dev_item.bytes_used, d->bytes_used);
	return ret;
}

int chunk_insert_pending(struct bf_extalloc *ea, bool *did)
{
	*did = false;
	for (size_t i = 0; i < ea->nbgs; i++) {
		if (!ea->bgs[i]->need_items)
			continue;
		int ret = insert_group_items(ea, ea->bgs[i]);
		if (ret)
			return ret;
		*did = true;
	}
	for (size_t i = 0; i < ea->ndevs; i++) {
		if (!ea->devs[i].dirty)
			continue;
		int ret = write_dev_item(ea, &ea->devs[i]);
		if (ret)
			return ret;
		*did = true;
	}
	return 0;
}

/* ---- transaction end ---- */

void chunk_abort(struct bf_extalloc *ea)
{
	size_t k = 0;
	for (size_t i = 0; i < ea->nbgs; i++) {
		struct ea_bg *bg = ea->bgs[i];
		if (!bg->created) {
			ea->bgs[k++] = bg;
			continue;
		}
		const struct bf_chunk_map *m = bf_vol_find_chunk(ea->vol, bg->start);
		for (unsigned s = 0; m && s < m->num_stripes; s++) {
			struct ea_dev *d = dev_find(ea, m->stripes[s].devid);
			if (d)
				rset_del_any(&d->extents, m->stripes[s].physical,
					     m->stripes[s].physical + bf_chunk_dev_span(m));
		}
		bg_destroy(bg);
	}
	ea->nbgs = k;
	for (size_t i = 0; i < ea->ndevs; i++) {
		ea->devs[i].bytes_used = ea->devs[i].bytes_used_committed;
		ea->devs[i].dirty = false;
	}
}

void dev_committed(struct bf_extalloc *ea)
{
	for (size_t i = 0; i < ea->ndevs; i++)
		ea->devs[i].bytes_used_committed = ea->devs[i].bytes_used;
	for (size_t i = 0; i < ea->nbgs; i++)
		ea->bgs[i]->created = false;
}
