/*
 * alloc/claim.c - space that log replay must keep or take: the blocks of the log trees and the data extents that
 * logged file extent items name (the kernel's btrfs_pin_extent_for_log_replay, btrfs_exclude_logged_extents and
 * btrfs_alloc_logged_file_extent).
 *
 * Owns: bf_extalloc_exclude and bf_extalloc_logged_data_ref.
 *
 * Key idea: everything a log names was allocated after the last commit, so the committed extent tree (and the
 * free space tree) shows it as free. Before replay allocates anything, those ranges leave the free space into the
 * pinned set: nothing is handed out over them, and at the commit they come back as free (the log blocks die with
 * the log). A logged data extent that the extent tree does not know is then claimed: moved from the pinned set
 * into this transaction's allocations with a new head (must_insert), so that its reference creates the extent
 * item, the block group's used bytes and the free space tree change at commit, exactly as for data written now.
 */
#include "alloc/extalloc_int.h"
#include "util/util.h"

#include <errno.h>
#include <inttypes.h>

/* The block group holding all of [start, end), or NULL (with a log line). */
static struct ea_bg *range_group(const struct bf_extalloc *ea, uint64_t start, uint64_t end, const char *what)
{
	struct ea_bg *bg = end > start ? bg_find(ea, start) : NULL;

	if (!bg || end > bg->start + bg->length) {
		bf_log(BF_LOG_ERR, "%s [%" PRIu64 ", %" PRIu64 ") does not lie inside one block group", what, start, end);
		return NULL;
	}
	return bg;
}

/* Move the part of [start, end) that bg may hand out now into the pinned set. */
static int pin_free_part(struct bf_extalloc *ea, struct ea_bg *bg, uint64_t start, uint64_t end)
{
	while (start < end) {
		size_t i = rset_lower(&bg->free, start);
		if (i >= bg->free.n || bg->free.v[i].start >= end)
			return 0;
		uint64_t a = bf_max64(start, bg->free.v[i].start), b = bf_min64(end, bg->free.v[i].end);
		int ret = rset_del(&bg->free, a, b);
		if (!ret && (ret = rset_add(&ea->pinned, a, b)) != 0)
			rset_add(&bg->free, a, b);
		if (ret)
			return ret == -EEXIST ? -EUCLEAN : ret;
		start = b;
	}
	return 0;
}

int bf_extalloc_exclude(struct bf_extalloc *ea, uint64_t start, uint64_t len, bool tree_block)
{
	uint64_t end = start + len;
	const char *what = tree_block ? "log tree block" : "logged data extent";
	struct ea_bg *bg = end >= start ? range_group(ea, start, end, what) : NULL;

	if (!bg)
		return -EUCLEAN;
	if (!bg_serves(ea, bg, tree_block ? EA_META : EA_DATA)) {
		bf_log(BF_LOG_ERR, "%s at %" PRIu64 " lies in block group %" PRIu64 ", which holds no %s", what, start,
		       bg->start, tree_block ? "metadata" : "data");
		return -EUCLEAN;
	}
	/* A log block was written after the last commit: the committed extent tree must show it as free. */
	if (tree_block && !rset_has(&bg->fst, start, end)) {
		bf_log(BF_LOG_ERR, "log tree block %" PRIu64 " overlaps an extent of the committed extent tree", start);
		return -EUCLEAN;
	}
	if (rset_touches(&ea->trans_alloc, start, end)) {
		bf_log(BF_LOG_ERR, "%s [%" PRIu64 ", +%" PRIu64 ") was already handed out in this transaction", what,
		       start, len);
		return -EUCLEAN;
	}
	return pin_free_part(ea, bg, start, end);
}

/* Is there an extent item (bytenr, EXTENT_ITEM, num_bytes) in the extent tree? 1 yes, 0 no, or an errno. */
static int extent_item_exists(struct bf_extalloc *ea, uint64_t bytenr, uint64_t num_bytes)
{
	struct bf_key key = { bytenr, BF_EXTENT_ITEM_KEY, num_bytes };
	struct bf_path p;
	int ret;

	bf_path_init(&p, ea->env);
	ret = bf_search(ea->env, ea->roots.extent, &key, &p);
	bf_path_release(&p);
	return ret < 0 ? ret : ret == 0;
}

/* Take [bytenr, +num_bytes), free in the committed extent tree, as allocated in this transaction. */
static int claim(struct bf_extalloc *ea, uint64_t bytenr, uint64_t num_bytes)
{
	uint64_t end = bytenr + num_bytes;
	struct ea_bg *bg = range_group(ea, bytenr, end, "logged data extent");
	struct ea_head *h;
	int ret;

	if (!bg || !bg_serves(ea, bg, EA_DATA) || !rset_has(&bg->fst, bytenr, end) ||
	    rset_touches(&ea->trans_alloc, bytenr, end)) {
		if (bg)
			bf_log(BF_LOG_ERR, "logged data extent [%" PRIu64 ", +%" PRIu64 ") is neither in the extent tree nor "
			       "free space of a data block group", bytenr, num_bytes);
		return -EUCLEAN;
	}
	if ((ret = rset_del_any(&bg->free, bytenr, end)) || (ret = rset_del_any(&ea->pinned, bytenr, end)) ||
	    (ret = rset_add(&ea->trans_alloc, bytenr, end)))
		return ret == -EEXIST ? -EUCLEAN : ret;
	ret = dt_get(&ea->refs, bytenr, num_bytes, true, &h);
	if (ret)
		return ret;
	h->must_insert = true;
	return 0;
}

int bf_extalloc_logged_data_ref(struct bf_extalloc *ea, uint64_t bytenr, uint64_t num_bytes, uint64_t root,
				uint64_t inode, uint64_t offset)
{
	int ret = ea->error;

	if (ret)
		return ret;
	if (!num_bytes || bytenr + num_bytes < bytenr || bytenr % ea->sectorsize || num_bytes % ea->sectorsize) {
		bf_log(BF_LOG_ERR, "logged data extent [%" PRIu64 ", +%" PRIu64 ") is not sector aligned", bytenr,
		       num_bytes);
		return -EUCLEAN;
	}
	if (!dt_find(&ea->refs, bytenr)) {
		ret = extent_item_exists(ea, bytenr, num_bytes);
		if (ret == 0)
			ret = claim(ea, bytenr, num_bytes);
		else if (ret == 1)
			ret = 0;
	}
	return ret ? ret : bf_extalloc_data_ref(ea, bytenr, num_bytes, root, inode, offset, 1);
}
