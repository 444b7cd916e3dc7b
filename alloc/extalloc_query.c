/*
 * alloc/extalloc_query.c - read-only views of the extent allocator's state for statfs.
 *
 * Owns: bf_extalloc_for_each_bg.
 * Key idea: on a writable mount the allocator's in-memory block groups are the live truth - a group made in the
 * running transaction has no BLOCK_GROUP_ITEM until the commit inserts it, and used bytes reach the items only
 * at commit - so statfs reads them here instead of from the trees. A group's used bytes are its extents in the
 * extent tree plus what the running transaction allocated in it (which its commit adds), as the kernel's block
 * group counters grow when its delayed references run; extents freed in the transaction count until the commit.
 */
#include "alloc/extalloc_int.h"
#include "util/util.h"

/* Bytes of the set inside [start, end) (its ranges may run across group boundaries: merged neighbours). */
static uint64_t rset_bytes_in(const struct ea_rset *s, uint64_t start, uint64_t end)
{
	uint64_t sum = 0;
	for (size_t i = rset_lower(s, start); i < s->n && s->v[i].start < end; i++)
		sum += bf_min64(s->v[i].end, end) - bf_max64(s->v[i].start, start);
	return sum;
}

int bf_extalloc_for_each_bg(const struct bf_extalloc *ea, bf_extalloc_bg_cb cb, void *ctx)
{
	for (size_t i = 0; i < ea->nbgs; i++) {
		const struct ea_bg *bg = ea->bgs[i];
		uint64_t fresh = rset_bytes_in(&ea->trans_alloc, bg->start, bg->start + bg->length);
		struct bf_extalloc_bg_info info = { bg->start, bg->length, bg->flags, bf_min64(bg->used + fresh, bg->length) };
		int ret = cb(ctx, &info);
		if (ret)
			return ret < 0 ? ret : 0;
	}
	return 0;
}
