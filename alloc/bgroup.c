/*
 * alloc/bgroup.c - block groups: their items, the chunks behind them, their used bytes and free space.
 *
 * Owns: the sorted array of struct ea_bg, loading one BLOCK_GROUP_ITEM per chunk (from the extent tree, or the
 * block-group tree when compat_ro BLOCK_GROUP_TREE is set), free space from an extent-tree scan when there is no
 * free space tree, the exclusion of superblock copies (the kernel's exclude_super_stripes), the accounting done
 * when an extent item enters or leaves the extent tree (btrfs_update_block_group), and writing changed items.
 *
 * Key idea: a group's item is found by the exact key (chunk logical, BLOCK_GROUP_ITEM, chunk length) of its
 * chunk, so loading costs one search per chunk; a superblock copy at physical byte P lands in a chunk when one
 * of its stripes covers P, and is mapped back to the logical address the kernel computes in btrfs_rmap_block
 * (stripe number and offset in the stripe, RAID0/RAID10 rows spread over the stripes), excluding one stripe
 * element (64 KiB) there.
 */
#include "alloc/extalloc_int.h"
#include "alloc/internal.h"
#include "util/util.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

struct bf_root *bg_root(const struct bf_extalloc *ea)
{
	return ea->bg_tree ? ea->roots.block_group : ea->roots.extent;
}

struct ea_bg *bg_find(const struct bf_extalloc *ea, uint64_t logical)
{
	size_t lo = 0, hi = ea->nbgs;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (ea->bgs[mid]->start <= logical)
			lo = mid + 1;
		else
			hi = mid;
	}
	struct ea_bg *bg = lo ? ea->bgs[lo - 1] : NULL;
	return bg && logical - bg->start < bg->length ? bg : NULL;
}

bool bg_serves(const struct bf_extalloc *ea, const struct ea_bg *bg, enum ea_kind kind)
{
	(void)ea;
	if (bg->excluded_ro)
		return false;
	switch (kind) {
	case EA_DATA:
		return bg->flags & BF_BLOCK_GROUP_DATA;
	case EA_META:
		return bg->flags & BF_BLOCK_GROUP_METADATA;
	default:
		return bg->flags & BF_BLOCK_GROUP_SYSTEM;
	}
}

struct ea_bg *bg_new(const struct bf_extalloc *ea, uint64_t start, uint64_t length, uint64_t flags)
{
	struct ea_bg *bg = calloc(1, sizeof(*bg));
	if (!bg)
		return NULL;
	bg->start = start;
	bg->length = length;
	bg->flags = flags;
	bg->excluded_ro = flags & BF_BLOCK_GROUP_RAID56_MASK;
	fst_set_thresholds(ea, bg);
	return bg;
}

void bg_destroy(struct ea_bg *bg)
{
	if (!bg)
		return;
	rset_free(&bg->free);
	rset_free(&bg->fst);
	rset_free(&bg->fst_saved);
	free(bg);
}

int bg_insert(struct bf_extalloc *ea, struct ea_bg *bg)
{
	size_t pos = ea->nbgs;
	while (pos > 0 && ea->bgs[pos - 1]->start > bg->start)
		pos--;
	if ((pos > 0 && ea->bgs[pos - 1]->start + ea->bgs[pos - 1]->length > bg->start) ||
	    (pos < ea->nbgs && bg->start + bg->length > ea->bgs[pos]->start))
		return -EEXIST;
	if (ea->nbgs == ea->bgs_cap) {
		size_t cap = ea->bgs_cap ? ea->bgs_cap * 2 : 16;
		struct ea_bg **v = realloc(ea->bgs, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		ea->bgs = v;
		ea->bgs_cap = cap;
	}
	memmove(ea->bgs + pos + 1, ea->bgs + pos, (ea->nbgs - pos) * sizeof(*ea->bgs));
	ea->bgs[pos] = bg;
	ea->nbgs++;
	return 0;
}

/* ---- superblock copies ---- */

/* The logical address of physical byte `phys` on stripe i of c (which covers it), as btrfs_rmap_block. */
static uint64_t rmap_one(const struct bf_chunk_map *c, unsigned i, uint64_t phys, uint64_t io_len)
{
	uint64_t nr = (phys - c->stripes[i].physical) / BF_STRIPE_LEN;
	uint64_t off = (phys - c->stripes[i].physical) % BF_STRIPE_LEN;
	if (c->type & (BF_BLOCK_GROUP_RAID0 | BF_BLOCK_GROUP_RAID10))
		nr = (nr * c->num_stripes + i) / (c->sub_stripes ? c->sub_stripes : 1);
	return c->logical + nr * io_len + off;
}

int bg_exclude_super(const struct bf_extalloc *ea, struct ea_bg *bg, const struct bf_chunk_map *c)
{
	(void)ea;
	uint64_t end = bg->start + bg->length, span = bf_chunk_dev_span(c);
	uint64_t io_len = BF_STRIPE_LEN;
	if (c->type & BF_BLOCK_GROUP_RAID56_MASK)
		io_len *= bf_chunk_data_stripes(c);
	int ret = 0;
	if (bg->start < BF_SUPER_INFO_OFFSET)
		ret = rset_del_any(&bg->free, bg->start, bf_min64(end, BF_SUPER_INFO_OFFSET));
	for (int m = 0; m < BF_SUPER_MIRROR_MAX && !ret; m++) {
		uint64_t phys = bf_sb_offset(m);
		for (unsigned i = 0; i < c->num_stripes && !ret; i++) {
			if (phys < c->stripes[i].physical || phys - c->stripes[i].physical >= span)
				continue;
			uint64_t logical = rmap_one(c, i, phys, io_len);
			if (logical < end)
				ret = rset_del_any(&bg->free, logical, bf_min64(end, logical + io_len));
		}
	}
	return ret;
}

/* ---- loading ---- */

struct scan_ctx {
	struct bf_extalloc *ea;
	struct ea_bg *bg;
	uint64_t cursor; /* end of the last extent seen */
	int err;
};

/* Free space = the gaps between the extent items of the group. */
static int scan_item(void *arg, const struct bf_key *k, const uint8_t *data, uint32_t size)
{
	struct scan_ctx *c = arg;
	uint64_t len, end, bg_end = c->bg->start + c->bg->length;
	(void)data;
	(void)size;
	if (k->type == BF_EXTENT_ITEM_KEY)
		len = k->offset;
	else if (k->type == BF_METADATA_ITEM_KEY)
		len = c->ea->nodesize;
	else
		return 0;
	if (!len || bf_add_overflow(k->objectid, len, &end) || end > bg_end || k->objectid < c->cursor) {
		bf_log(BF_LOG_ERR, "extent tree: extent item (%" PRIu64 ", %u, %" PRIu64 ") overlaps another or "
		       "crosses the end of block group %" PRIu64 " (corrupt extent tree; run 'btrfs check "
		       "--readonly')", k->objectid, k->type, k->offset, c->bg->start);
		return -EUCLEAN;
	}
	if (k->objectid > c->cursor)
		c->err = rset_add(&c->bg->fst, c->cursor, k->objectid);
	c->cursor = end;
	return c->err;
}

static int scan_extents(struct bf_extalloc *ea, struct ea_bg *bg, char *err, size_t errlen)
{
	struct scan_ctx c = { ea, bg, bg->start, 0 };
	struct bf_key min = { bg->start, 0, 0 }, max = { bg->start + bg->length - 1, 255, UINT64_MAX };
	int ret = bf_iterate(ea->env, ea->roots.extent, &min, &max, scan_item, &c);
	if (!ret && c.cursor < bg->start + bg->length)
		ret = rset_add(&bg->fst, c.cursor, bg->start + bg->length);
	if (ret)
		return bf_err(err, errlen, ret, "cannot load the free space of block group %" PRIu64
			      " from the extent tree: %s", bg->start, strerror(-ret));
	return 0;
}

/* Check a block group item against its chunk (the kernel's check_block_group_item and chunk mapping check). */
static int check_bg_item(const struct bf_chunk_map *c, const uint8_t *data, uint32_t size, uint64_t *used,
			 uint64_t *flags, char *err, size_t errlen)
{
	const struct bf_block_group_item *bi = (const void *)data;
	if (size != sizeof(*bi))
		return bf_err(err, errlen, -EUCLEAN, "block group item of chunk %" PRIu64 " has %u bytes, expected "
			      "%zu (corrupt; run 'btrfs check --readonly')", c->logical, size, sizeof(*bi));
	*used = get64(bi->used);
	*flags = get64(bi->flags);
	uint64_t type = *flags & BF_BLOCK_GROUP_TYPE_MASK, prof = *flags & BF_BLOCK_GROUP_PROFILE_MASK;
	bool type_ok = type == BF_BLOCK_GROUP_DATA || type == BF_BLOCK_GROUP_METADATA ||
		       type == BF_BLOCK_GROUP_SYSTEM || type == (BF_BLOCK_GROUP_DATA | BF_BLOCK_GROUP_METADATA);
	if (*used > c->length || get64(bi->chunk_objectid) != BF_FIRST_CHUNK_TREE_OBJECTID || !type_ok ||
	    (prof & (prof - 1)) || (*flags & ~(BF_BLOCK_GROUP_TYPE_MASK | BF_BLOCK_GROUP_PROFILE_MASK)) ||
	    type != (c->type & BF_BLOCK_GROUP_TYPE_MASK))
		return bf_err(err, errlen, -EUCLEAN, "block group item of chunk %" PRIu64 " is invalid (used %" PRIu64
			      ", flags 0x%" PRIx64 ", chunk type 0x%" PRIx64 "; run 'btrfs check --readonly')",
			      c->logical, *used, *flags, c->type);
	return 0;
}

static int load_one(struct bf_extalloc *ea, const struct bf_chunk_map *c, char *err, size_t errlen)
{
	struct bf_key key = { c->logical, BF_BLOCK_GROUP_ITEM_KEY, c->length };
	struct bf_path p;
	uint64_t used = 0, flags = 0;
	uint32_t size;
	bf_path_init(&p, ea->env);
	int ret = bf_search(ea->env, bg_root(ea), &key, &p);
	if (ret == 1)
		ret = bf_err(err, errlen, -EUCLEAN, "chunk at logical %" PRIu64 " (length %" PRIu64 ") has no block "
			     "group item (corrupt; run 'btrfs check --readonly')", c->logical, c->length);
	else if (ret < 0)
		ret = bf_err(err, errlen, ret, "cannot read the block group item of chunk %" PRIu64 ": %s",
			     c->logical, strerror(-ret));
	else {
		const uint8_t *item = bf_path_item(&p, &size);
		ret = check_bg_item(c, item, size, &used, &flags, err, errlen);
	}
	bf_path_release(&p);
	if (ret)
		return ret;
	struct ea_bg *bg = bg_new(ea, c->logical, c->length, flags);
	if (!bg)
		return bf_err(err, errlen, -ENOMEM, "out of memory loading block groups");
	bg->used = bg->used_committed = used;
	ret = ea->use_fst ? fst_load(ea, bg, err, errlen) : scan_extents(ea, bg, err, errlen);
	if (!ret)
		ret = rset_copy(&bg->free, &bg->fst);
	if (!ret)
		ret = bg_exclude_super(ea, bg, c);
	if (!ret)
		ret = bg_insert(ea, bg);
	if (ret) {
		bg_destroy(bg);
		if (err && !err[0])
			bf_err(err, errlen, ret, "cannot load block group %" PRIu64 ": %s", c->logical, strerror(-ret));
	}
	return ret;
}

int bg_load_all(struct bf_extalloc *ea, char *err, size_t errlen)
{
	for (size_t i = 0; i < ea->vol->nchunks; i++) {
		int ret = load_one(ea, ea->vol->chunks[i], err, errlen);
		if (ret)
			return ret;
	}
	return 0;
}

/* ---- accounting ---- */

static int extent_group(struct bf_extalloc *ea, uint64_t bytenr, uint64_t num_bytes, struct ea_bg **out)
{
	struct ea_bg *bg = bg_find(ea, bytenr);
	if (!bg || !num_bytes || num_bytes > bg->start + bg->length - bytenr) {
		bf_log(BF_LOG_ERR, "extent %" PRIu64 " (%" PRIu64 " bytes) is not inside one block group (corrupt "
		       "extent tree or a bug in btrfs-fuse)", bytenr, num_bytes);
		return -EUCLEAN;
	}
	*out = bg;
	return 0;
}

int bg_extent_added(struct bf_extalloc *ea, uint64_t bytenr, uint64_t num_bytes)
{
	struct ea_bg *bg;
	int ret = extent_group(ea, bytenr, num_bytes, &bg);
	if (ret)
		return ret;
	ret = fst_remove(ea, bg, bytenr, bytenr + num_bytes);
	if (ret)
		return ret;
	bg->used += num_bytes;
	bg->dirty = true;
	put64(&ea->super->bytes_used, get64(ea->super->bytes_used) + num_bytes);
	return 0;
}

int bg_extent_removed(struct bf_extalloc *ea, uint64_t bytenr, uint64_t num_bytes)
{
	struct ea_bg *bg;
	int ret = extent_group(ea, bytenr, num_bytes, &bg);
	if (ret)
		return ret;
	if (bg->used < num_bytes || get64(ea->super->bytes_used) < num_bytes) {
		bf_log(BF_LOG_ERR, "block group %" PRIu64 ": freeing %" PRIu64 " bytes at %" PRIu64 " but only %" PRIu64
		       " are used (corrupt block group item; run 'btrfs check --readonly')", bg->start, num_bytes,
		       bytenr, bg->used);
		return -EUCLEAN;
	}
	ret = fst_add(ea, bg, bytenr, bytenr + num_bytes);
	if (!ret)
		ret = ea_pin(ea, bytenr, num_bytes);
	if (ret)
		return ret;
	bg->used -= num_bytes;
	bg->dirty = true;
	put64(&ea->super->bytes_used, get64(ea->super->bytes_used) - num_bytes);
	return 0;
}

static int write_one(struct bf_extalloc *ea, struct ea_bg *bg)
{
	struct bf_key key = { bg->start, BF_BLOCK_GROUP_ITEM_KEY, bg->length };
	struct bf_path p;
	uint32_t size = 0;
	bf_path_init(&p, ea->env);
	int ret = bf_search_slot(ea->trans, bg_root(ea), &key, 0, true, &p);
	uint8_t *data = ret == 0 ? bf_path_item_mut(ea->trans, &p, &size) : NULL;
	if (ret >= 0 && (!data || size != sizeof(struct bf_block_group_item))) {
		bf_log(BF_LOG_ERR, "block group %" PRIu64 ": its item is missing or malformed; cannot record %" PRIu64
		       " used bytes (corrupt; run 'btrfs check --readonly')", bg->start, bg->used);
		ret = -EUCLEAN;
	}
	if (ret == 0)
		put64(&((struct bf_block_group_item *)data)->used, bg->used);
	bf_path_release(&p);
	return ret;
}

int bg_write_dirty(struct bf_extalloc *ea, bool *did)
{
	*did = false;
	for (size_t i = 0; i < ea->nbgs; i++) {
		struct ea_bg *bg = ea->bgs[i];
		if (!bg->dirty || bg->need_items)
			continue;
		bg->dirty = false; /* before the write: the write's own allocations may dirty it again */
		int ret = write_one(ea, bg);
		if (ret)
			return ret;
		*did = true;
	}
	return 0;
}
