/*
 * alloc/free_space_tree.c - the free space tree: loading it and keeping it equal to what the extent tree frees.
 *
 * Owns: FREE_SPACE_INFO / FREE_SPACE_EXTENT / FREE_SPACE_BITMAP items of every block group, and each group's
 * in-memory mirror bg->fst. Key idea: the mirror is the tree's content as a set of maximal free runs, so every
 * change is computed in memory first and the tree edit needs only exact keys (no searching for neighbours):
 * in extent form a run is one item (start, FREE_SPACE_EXTENT, length); in bitmap form the group is cut into
 * bitmaps of BITMAP_BITS sectors (key (start, FREE_SPACE_BITMAP, length), one bit per sector, little-endian bit
 * order, 1 = free). FREE_SPACE_INFO.extent_count is the number of runs in either form; as in the kernel's
 * update_free_space_extent_count, a group turns to bitmaps when the count exceeds bitmap_high_thresh and back to
 * extents when it falls below bitmap_low_thresh (set_free_space_tree_thresholds). A new group gets an INFO and
 * one extent covering it all (add_block_group_free_space), superblock copies included, as the kernel writes it.
 */
#include "alloc/extalloc_int.h"
#include "util/util.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#define BITMAP_BYTES 256u
#define BITMAP_BITS (BITMAP_BYTES * 8u)

static uint64_t bitmap_range(const struct bf_extalloc *ea) { return (uint64_t)ea->sectorsize * BITMAP_BITS; }

static uint32_t bitmap_size(const struct bf_extalloc *ea, uint64_t len)
{
	uint64_t bits = len / ea->sectorsize;
	return (uint32_t)((bits + 7) / 8);
}

void fst_set_thresholds(const struct bf_extalloc *ea, struct ea_bg *bg)
{
	uint64_t range = bitmap_range(ea);
	uint64_t nbitmaps = (bg->length + range - 1) / range;
	uint64_t high = nbitmaps * (sizeof(struct bf_item) + BITMAP_BYTES) / sizeof(struct bf_item);
	bg->thresh_high = (uint32_t)bf_min64(high, UINT32_MAX);
	bg->thresh_low = bg->thresh_high > 100 ? bg->thresh_high - 100 : 0;
}

static void fst_corrupt(const struct ea_bg *bg, const char *what)
{
	bf_log(BF_LOG_ERR, "free space tree of block group %" PRIu64 ": %s (corrupt; run 'btrfs check --readonly', "
	       "or mount once with the kernel and -o clear_cache,space_cache=v2 to rebuild it)", bg->start, what);
}

/* ---- loading ---- */

struct load_ctx {
	struct bf_extalloc *ea;
	struct ea_bg *bg;
	bool have_info, bitmaps;
	uint32_t count, nitems;
	uint64_t cursor;
	int err;
};

static int load_bitmap(struct load_ctx *c, uint64_t start, uint64_t len, const uint8_t *bits)
{
	uint64_t nbits = len / c->ea->sectorsize;
	for (uint64_t i = 0; i < nbits;) {
		if (!(bits[i / 8] & (1u << (i % 8)))) {
			i++;
			continue;
		}
		uint64_t j = i;
		while (j < nbits && (bits[j / 8] & (1u << (j % 8))))
			j++;
		int ret = rset_add(&c->bg->fst, start + i * c->ea->sectorsize, start + j * c->ea->sectorsize);
		if (ret)
			return ret;
		i = j;
	}
	return 0;
}

static int load_item(void *arg, const struct bf_key *k, const uint8_t *data, uint32_t size)
{
	struct load_ctx *c = arg;
	struct ea_bg *bg = c->bg;
	uint64_t end;
	if (!c->have_info) {
		if (k->objectid != bg->start || k->type != BF_FREE_SPACE_INFO_KEY || k->offset != bg->length ||
		    size != sizeof(struct bf_free_space_info)) {
			fst_corrupt(bg, "no valid FREE_SPACE_INFO item");
			return -EUCLEAN;
		}
		const struct bf_free_space_info *info = (const void *)data;
		c->count = get32(info->extent_count);
		c->bitmaps = get32(info->flags) & BF_FREE_SPACE_USING_BITMAPS;
		c->have_info = true;
		return 0;
	}
	bool ext = k->type == BF_FREE_SPACE_EXTENT_KEY, bmp = k->type == BF_FREE_SPACE_BITMAP_KEY;
	if ((!ext && !bmp) || ext == c->bitmaps || !k->offset || bf_add_overflow(k->objectid, k->offset, &end) ||
	    end > bg->start + bg->length || k->objectid < c->cursor || (ext && c->nitems && k->objectid == c->cursor) ||
	    k->objectid % c->ea->sectorsize || k->offset % c->ea->sectorsize ||
	    (bmp && size != bitmap_size(c->ea, k->offset)) || (ext && size != 0)) {
		fst_corrupt(bg, "an item is of the wrong kind, out of place, misaligned or of the wrong size");
		return -EUCLEAN;
	}
	c->cursor = end;
	c->nitems++;
	return ext ? rset_add(&bg->fst, k->objectid, end) : load_bitmap(c, k->objectid, k->offset, data);
}

int fst_load(struct bf_extalloc *ea, struct ea_bg *bg, char *err, size_t errlen)
{
	struct load_ctx c = { ea, bg, false, false, 0, 0, bg->start, 0 };
	struct bf_key min = { bg->start, BF_FREE_SPACE_INFO_KEY, bg->length };
	struct bf_key max = { bg->start + bg->length - 1, 255, UINT64_MAX };
	int ret = bf_iterate(ea->env, ea->roots.free_space, &min, &max, load_item, &c);
	if (!ret && !c.have_info) {
		fst_corrupt(bg, "FREE_SPACE_INFO missing");
		ret = -EUCLEAN;
	}
	if (!ret && c.count != bg->fst.n) {
		bf_log(BF_LOG_ERR, "free space tree of block group %" PRIu64 ": extent count %u, but %zu free extents "
		       "found (corrupt; run 'btrfs check --readonly')", bg->start, c.count, bg->fst.n);
		ret = -EUCLEAN;
	}
	if (ret)
		return bf_err(err, errlen, ret, "cannot load the free space tree of block group %" PRIu64 ": %s",
			      bg->start, strerror(-ret));
	bg->fst_count = c.count;
	bg->fst_bitmaps = c.bitmaps;
	return 0;
}

/* ---- item edits ---- */

static int find_item(struct bf_extalloc *ea, const struct bf_key *key, int ins_len, struct bf_path *p)
{
	bf_path_init(p, ea->env);
	int ret = bf_search_slot(ea->trans, ea->roots.free_space, key, ins_len, true, p);
	if (ret == 1) {
		bf_log(BF_LOG_ERR, "free space tree: item (%" PRIu64 ", %u, %" PRIu64 ") is missing (corrupt; run "
		       "'btrfs check --readonly')", key->objectid, key->type, key->offset);
		bf_path_release(p);
		ret = -EUCLEAN;
	}
	return ret;
}

static int write_info(struct bf_extalloc *ea, struct ea_bg *bg, uint32_t count, bool bitmaps)
{
	struct bf_key key = { bg->start, BF_FREE_SPACE_INFO_KEY, bg->length };
	struct bf_path p;
	uint32_t size;
	int ret = find_item(ea, &key, 0, &p);
	if (ret)
		return ret;
	struct bf_free_space_info *info = (void *)bf_path_item_mut(ea->trans, &p, &size);
	if (!info || size != sizeof(*info)) {
		fst_corrupt(bg, "FREE_SPACE_INFO has the wrong size");
		ret = -EUCLEAN;
	} else {
		put32(&info->extent_count, count);
		put32(&info->flags, bitmaps ? BF_FREE_SPACE_USING_BITMAPS : 0);
		bg->fst_count = count;
		bg->fst_bitmaps = bitmaps;
	}
	bf_path_release(&p);
	return ret;
}

static int del_item(struct bf_extalloc *ea, const struct bf_key *key)
{
	struct bf_path p;
	int ret = find_item(ea, key, -1, &p);
	return ret ? ret : bf_del_items(ea->trans, ea->roots.free_space, &p, p.slots[0], 1);
}

static int rekey_item(struct bf_extalloc *ea, const struct bf_key *from, const struct bf_key *to)
{
	struct bf_path p;
	int ret = find_item(ea, from, 0, &p);
	if (!ret)
		ret = bf_set_item_key(ea->trans, &p, to);
	bf_path_release(&p);
	return ret;
}

static int insert_extent(struct bf_extalloc *ea, uint64_t start, uint64_t end)
{
	struct bf_key key = { start, BF_FREE_SPACE_EXTENT_KEY, end - start };
	return bf_insert_item(ea->trans, ea->roots.free_space, &key, NULL, 0);
}

static struct bf_key extent_key(uint64_t start, uint64_t end)
{
	return (struct bf_key){ start, BF_FREE_SPACE_EXTENT_KEY, end - start };
}

/* Extent form: [start, end) lies in run r and stops being free; *delta gets the change of the run count. */
static int extents_remove(struct bf_extalloc *ea, struct ea_range r, uint64_t start, uint64_t end, int *delta)
{
	struct bf_key old = extent_key(r.start, r.end), k;
	bool left = r.start < start, right = end < r.end;
	*delta = -1 + left + right;
	if (!left && !right)
		return del_item(ea, &old);
	k = left ? extent_key(r.start, start) : extent_key(end, r.end);
	int ret = rekey_item(ea, &old, &k);
	if (!ret && left && right)
		ret = insert_extent(ea, end, r.end);
	return ret;
}

/* Extent form: [start, end) becomes free, merging with the runs of fst that touch it; *delta as above. */
static int extents_add(struct bf_extalloc *ea, const struct ea_rset *fst, uint64_t start, uint64_t end, int *delta)
{
	size_t i = rset_lower(fst, start);
	bool left = i > 0 && fst->v[i - 1].end == start;
	bool right = i < fst->n && fst->v[i].start == end;
	uint64_t lo = left ? fst->v[i - 1].start : start, hi = right ? fst->v[i].end : end;
	struct bf_key merged = extent_key(lo, hi), k;
	int ret = 0;
	*delta = 1 - left - right;
	if (right && left) {
		k = extent_key(fst->v[i].start, fst->v[i].end);
		ret = del_item(ea, &k);
	}
	if (ret)
		return ret;
	if (left)
		k = extent_key(fst->v[i - 1].start, fst->v[i - 1].end);
	else if (right)
		k = extent_key(fst->v[i].start, fst->v[i].end);
	else
		return insert_extent(ea, start, end);
	return rekey_item(ea, &k, &merged);
}

/* Bitmap form: set (free) or clear the bits of [start, end) in every bitmap item it touches. */
static int bitmaps_set(struct bf_extalloc *ea, struct ea_bg *bg, uint64_t start, uint64_t end, bool free_bits)
{
	uint64_t range = bitmap_range(ea), bg_end = bg->start + bg->length;
	while (start < end) {
		uint64_t bstart = bg->start + (start - bg->start) / range * range;
		uint64_t blen = bf_min64(range, bg_end - bstart), stop = bf_min64(end, bstart + blen);
		struct bf_key key = { bstart, BF_FREE_SPACE_BITMAP_KEY, blen };
		struct bf_path p;
		uint32_t size;
		int ret = find_item(ea, &key, 0, &p);
		if (ret)
			return ret;
		uint8_t *bits = bf_path_item_mut(ea->trans, &p, &size);
		if (!bits || size != bitmap_size(ea, blen)) {
			fst_corrupt(bg, "a bitmap item has the wrong size");
			bf_path_release(&p);
			return -EUCLEAN;
		}
		for (uint64_t i = (start - bstart) / ea->sectorsize; i < (stop - bstart) / ea->sectorsize; i++) {
			if (free_bits)
				bits[i / 8] |= (uint8_t)(1u << (i % 8));
			else
				bits[i / 8] &= (uint8_t)~(1u << (i % 8));
		}
		bf_path_release(&p);
		start = stop;
	}
	return 0;
}

/* ---- conversions between the two forms ---- */

/* Delete the items with these keys (ascending, all present), a leaf's worth at a time. */
static int delete_items(struct bf_extalloc *ea, const struct bf_key *keys, size_t n)
{
	for (size_t done = 0; done < n;) {
		struct bf_path p;
		int ret = find_item(ea, &keys[done], -1, &p);
		if (ret)
			return ret;
		uint32_t slot = p.slots[0], nr = 0;
		while (done + nr < n && slot + nr < p.nodes[0]->nritems) {
			struct bf_key k = bf_leaf_key(p.nodes[0], slot + nr);
			if (bf_key_cmp(&k, &keys[done + nr]))
				break;
			nr++;
		}
		ret = bf_del_items(ea->trans, ea->roots.free_space, &p, slot, nr);
		if (ret)
			return ret;
		done += nr;
	}
	return 0;
}

static int bitmap_keys(const struct bf_extalloc *ea, const struct ea_bg *bg, struct bf_key **out, size_t *n)
{
	uint64_t range = bitmap_range(ea), cnt = (bg->length + range - 1) / range;
	struct bf_key *k = calloc(cnt ? cnt : 1, sizeof(*k));
	if (!k)
		return -ENOMEM;
	for (uint64_t i = 0; i < cnt; i++) {
		uint64_t s = bg->start + i * range;
		k[i] = (struct bf_key){ s, BF_FREE_SPACE_BITMAP_KEY, bf_min64(range, bg->start + bg->length - s) };
	}
	*out = k;
	*n = cnt;
	return 0;
}

static int extent_keys(const struct ea_bg *bg, struct bf_key **out, size_t *n)
{
	struct bf_key *k = calloc(bg->fst.n ? bg->fst.n : 1, sizeof(*k));
	if (!k)
		return -ENOMEM;
	for (size_t i = 0; i < bg->fst.n; i++)
		k[i] = extent_key(bg->fst.v[i].start, bg->fst.v[i].end);
	*out = k;
	*n = bg->fst.n;
	return 0;
}

/* Fill a bitmap of [bstart, bstart + blen) from the mirror. */
static void fill_bitmap(const struct bf_extalloc *ea, const struct ea_bg *bg, uint64_t bstart, uint64_t blen,
			uint8_t *bits)
{
	uint64_t bend = bstart + blen;
	for (size_t i = rset_lower(&bg->fst, bstart); i < bg->fst.n && bg->fst.v[i].start < bend; i++) {
		uint64_t a = bf_max64(bg->fst.v[i].start, bstart), b = bf_min64(bg->fst.v[i].end, bend);
		for (uint64_t s = (a - bstart) / ea->sectorsize; s < (b - bstart) / ea->sectorsize; s++)
			bits[s / 8] |= (uint8_t)(1u << (s % 8));
	}
}

static int to_bitmaps(struct bf_extalloc *ea, struct ea_bg *bg)
{
	struct bf_key *keys = NULL;
	size_t n = 0;
	int ret = extent_keys(bg, &keys, &n);
	if (!ret)
		ret = delete_items(ea, keys, n);
	free(keys);
	if (!ret)
		ret = bitmap_keys(ea, bg, &keys, &n);
	if (ret)
		return ret;
	uint8_t *bits = malloc(BITMAP_BYTES);
	ret = bits ? 0 : -ENOMEM;
	for (size_t i = 0; i < n && !ret; i++) {
		uint32_t size = bitmap_size(ea, keys[i].offset);
		memset(bits, 0, BITMAP_BYTES);
		fill_bitmap(ea, bg, keys[i].objectid, keys[i].offset, bits);
		ret = bf_insert_item(ea->trans, ea->roots.free_space, &keys[i], bits, size);
	}
	free(bits);
	free(keys);
	return ret ? ret : write_info(ea, bg, (uint32_t)bg->fst.n, true);
}

static int to_extents(struct bf_extalloc *ea, struct ea_bg *bg)
{
	struct bf_key *keys = NULL;
	size_t n = 0;
	int ret = bitmap_keys(ea, bg, &keys, &n);
	if (!ret)
		ret = delete_items(ea, keys, n);
	free(keys);
	for (size_t i = 0; i < bg->fst.n && !ret; i++)
		ret = insert_extent(ea, bg->fst.v[i].start, bg->fst.v[i].end);
	return ret ? ret : write_info(ea, bg, (uint32_t)bg->fst.n, false);
}

/* The count changed by delta (the mirror is already updated): write it, converting at the thresholds. */
static int update_count(struct bf_extalloc *ea, struct ea_bg *bg, int delta)
{
	int64_t count = (int64_t)bg->fst_count + delta;
	if (count < 0 || (uint64_t)count != bg->fst.n) {
		bf_log(BF_LOG_ERR, "free space tree of block group %" PRIu64 ": extent count %" PRId64 " disagrees with "
		       "%zu free extents in memory (a bug in btrfs-fuse)", bg->start, count, bg->fst.n);
		return -EUCLEAN;
	}
	if (!bg->fst_bitmaps && count > bg->thresh_high)
		return to_bitmaps(ea, bg);
	if (bg->fst_bitmaps && count < bg->thresh_low)
		return to_extents(ea, bg);
	return write_info(ea, bg, (uint32_t)count, bg->fst_bitmaps);
}

/* ---- changes ---- */

int fst_save(struct ea_bg *bg)
{
	if (bg->fst_saved_ok)
		return 0;
	int ret = rset_copy(&bg->fst_saved, &bg->fst);
	if (ret)
		return ret;
	bg->fst_saved_ok = true;
	bg->fst_count_saved = bg->fst_count;
	bg->fst_bitmaps_saved = bg->fst_bitmaps;
	return 0;
}

void fst_restore(struct ea_bg *bg)
{
	if (!bg->fst_saved_ok)
		return;
	struct ea_rset t = bg->fst;
	bg->fst = bg->fst_saved;
	bg->fst_saved = t;
	bg->fst_saved_ok = false;
	bg->fst_count = bg->fst_count_saved;
	bg->fst_bitmaps = bg->fst_bitmaps_saved;
}

int fst_add_group(struct bf_extalloc *ea, struct ea_bg *bg)
{
	if (!bg->need_fst)
		return 0;
	struct bf_key key = { bg->start, BF_FREE_SPACE_INFO_KEY, bg->length };
	struct bf_free_space_info info;
	put32(&info.extent_count, 1);
	put32(&info.flags, 0);
	int ret = bf_insert_item(ea->trans, ea->roots.free_space, &key, &info, sizeof(info));
	if (!ret)
		ret = insert_extent(ea, bg->start, bg->start + bg->length);
	if (ret)
		return ret;
	bg->need_fst = false;
	bg->fst_count = 1;
	bg->fst_bitmaps = false;
	return 0;
}

static bool sector_free(const struct bf_extalloc *ea, const struct ea_bg *bg, uint64_t at)
{
	return at >= bg->start && at < bg->start + bg->length && rset_has(&bg->fst, at, at + ea->sectorsize);
}

int fst_remove(struct bf_extalloc *ea, struct ea_bg *bg, uint64_t start, uint64_t end)
{
	size_t i = rset_lower(&bg->fst, start);
	if (!rset_has(&bg->fst, start, end)) {
		bf_log(BF_LOG_ERR, "block group %" PRIu64 ": extent [%" PRIu64 ", %" PRIu64 ") is taken twice (corrupt "
		       "extent or free space tree; run 'btrfs check --readonly')", bg->start, start, end);
		return -EUCLEAN;
	}
	int ret = fst_save(bg);
	if (ret || !ea->use_fst)
		return ret ? ret : rset_del(&bg->fst, start, end);
	struct ea_range r = bg->fst.v[i];
	bool prev = start > bg->start && sector_free(ea, bg, start - ea->sectorsize);
	bool next = sector_free(ea, bg, end);
	int delta = -1 + prev + next;
	ret = fst_add_group(ea, bg);
	if (!ret)
		ret = bg->fst_bitmaps ? bitmaps_set(ea, bg, start, end, false) : extents_remove(ea, r, start, end, &delta);
	if (!ret)
		ret = rset_del(&bg->fst, start, end);
	return ret ? ret : update_count(ea, bg, delta);
}

int fst_add(struct bf_extalloc *ea, struct ea_bg *bg, uint64_t start, uint64_t end)
{
	if (rset_touches(&bg->fst, start, end)) {
		bf_log(BF_LOG_ERR, "block group %" PRIu64 ": freeing [%" PRIu64 ", %" PRIu64 ") which is partly free "
		       "already (corrupt extent or free space tree; run 'btrfs check --readonly')", bg->start, start,
		       end);
		return -EUCLEAN;
	}
	int ret = fst_save(bg);
	if (ret || !ea->use_fst)
		return ret ? ret : rset_add(&bg->fst, start, end);
	bool prev = start > bg->start && sector_free(ea, bg, start - ea->sectorsize);
	bool next = sector_free(ea, bg, end);
	int delta = 1 - prev - next;
	ret = fst_add_group(ea, bg);
	if (!ret)
		ret = bg->fst_bitmaps ? bitmaps_set(ea, bg, start, end, true) : extents_add(ea, &bg->fst, start, end, &delta);
	if (!ret)
		ret = rset_add(&bg->fst, start, end);
	return ret ? ret : update_count(ea, bg, delta);
}
