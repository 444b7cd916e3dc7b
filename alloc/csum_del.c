/*
 * alloc/csum_del.c - dropping the data checksums of a freed data extent (the kernel's btrfs_del_csums).
 *
 * Owns: removing [start, start + len) from the checksum tree. Key idea: checksum items are keyed
 * (EXTENT_CSUM, EXTENT_CSUM, first byte) and hold one checksum per sector for a run of sectors, so the item that
 * covers the last byte of the range is the last item at or before it. Working backwards from there, an item
 * inside the range is deleted, one sticking out on the right loses its head (and gets the range's end as key),
 * one sticking out on the left loses its tail, and one sticking out on both sides is split in two. Each step
 * removes or shrinks one item, so the loop is bounded by the items in the range.
 */
#include "alloc/extalloc_int.h"
#include "util/util.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

static int csum_corrupt(uint64_t at)
{
	bf_log(BF_LOG_ERR, "checksum item at %" PRIu64 " is malformed (corrupt checksum tree; run 'btrfs check "
	       "--readonly')", at);
	return -EUCLEAN;
}

/* Keep the head [csum_start, start) of the item at p and add an item for its tail [end, csum_end). */
static int punch(struct bf_extalloc *ea, struct bf_path *p, uint64_t csum_start, uint64_t start, uint64_t end,
		 uint32_t size, uint32_t cs)
{
	uint32_t head = (uint32_t)((start - csum_start) / ea->sectorsize * cs);
	uint32_t skip = (uint32_t)((end - csum_start) / ea->sectorsize * cs);
	const uint8_t *item = bf_path_item_mut(ea->trans, p, NULL);
	uint8_t *tail = malloc(size - skip);
	int ret = tail && item ? 0 : -ENOMEM;
	if (!ret) {
		memcpy(tail, item + skip, size - skip);
		ret = bf_truncate_item(ea->trans, p, head, true);
	}
	bf_path_release(p);
	struct bf_key key = { BF_EXTENT_CSUM_OBJECTID, BF_EXTENT_CSUM_KEY, end };
	if (!ret)
		ret = bf_insert_item(ea->trans, ea->csum_root, &key, tail, size - skip);
	free(tail);
	return ret;
}

/* One step on the last item at or before end - 1. *done when nothing of the range is left. */
static int del_step(struct bf_extalloc *ea, uint64_t start, uint64_t end, uint32_t cs, bool *done)
{
	struct bf_key key = { BF_EXTENT_CSUM_OBJECTID, BF_EXTENT_CSUM_KEY, end - 1 };
	struct bf_path p;
	uint32_t size;
	bf_path_init(&p, ea->env);
	int ret = bf_search_slot(ea->trans, ea->csum_root, &key, -1, true, &p);
	if (ret < 0)
		return ret;
	*done = true;
	bool before_all = ret == 1 && p.slots[0] == 0; /* the leftmost leaf: nothing lies before the key */
	if (ret == 1 && !before_all)
		p.slots[0]--;
	ret = 0;
	if (before_all)
		goto out;
	struct bf_key k = bf_leaf_key(p.nodes[0], p.slots[0]);
	if (k.objectid != BF_EXTENT_CSUM_OBJECTID || k.type != BF_EXTENT_CSUM_KEY)
		goto out;
	bf_leaf_item(p.nodes[0], p.slots[0], &size);
	uint64_t n = size / cs, csum_end;
	if (!n || size % cs || k.offset % ea->sectorsize ||
	    bf_add_overflow(k.offset, n * ea->sectorsize, &csum_end)) {
		ret = csum_corrupt(k.offset);
		goto out;
	}
	if (csum_end <= start)
		goto out;
	if (k.offset >= start && csum_end <= end) {
		*done = k.offset == start;
		return bf_del_items(ea->trans, ea->csum_root, &p, p.slots[0], 1);
	}
	if (k.offset >= start) { /* sticks out on the right: drop its head */
		uint32_t shift = (uint32_t)((end - k.offset) / ea->sectorsize * cs);
		struct bf_key nk = { k.objectid, k.type, end };
		*done = k.offset == start;
		ret = bf_truncate_item(ea->trans, &p, size - shift, false);
		if (!ret)
			ret = bf_set_item_key(ea->trans, &p, &nk);
	} else if (csum_end <= end) { /* sticks out on the left: drop its tail */
		ret = bf_truncate_item(ea->trans, &p, (uint32_t)((start - k.offset) / ea->sectorsize * cs), true);
	} else {
		return punch(ea, &p, k.offset, start, end, size, cs);
	}
out:
	bf_path_release(&p);
	return ret;
}

int csum_delete_range(struct bf_extalloc *ea, uint64_t start, uint64_t len)
{
	int cs = bf_csum_size(ea->env->csum_type);
	uint64_t end = start + len;
	if (cs <= 0 || !len)
		return cs <= 0 ? -EINVAL : 0;
	for (uint64_t step = 0; step <= len / ea->sectorsize + 1; step++) {
		bool done = false;
		int ret = del_step(ea, start, end, (uint32_t)cs, &done);
		if (ret || done)
			return ret;
	}
	bf_log(BF_LOG_ERR, "deleting the checksums of [%" PRIu64 ", %" PRIu64 ") did not finish (corrupt checksum "
	       "tree; run 'btrfs check --readonly')", start, end);
	return -EUCLEAN;
}
