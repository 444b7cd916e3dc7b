/*
 * alloc/backref.c - the copy-on-write hook for blocks that snapshots share (the kernel's update_ref_for_cow).
 *
 * Owns: bf_alloc_ops.tree_block_cowed and the kernel's btrfs_inc_ref / btrfs_dec_ref (a reference change for
 * every child a block points to: tree blocks of a node, data extents of a leaf's file extent items).
 *
 * Key idea: a block's references come from its parents. A parent owned by root R that is not marked
 * FULL_BACKREF references its children as TREE_BLOCK_REF(R) (data: EXTENT_DATA_REF(R, inode, offset)); a
 * FULL_BACKREF parent references them as SHARED_*_REF(parent bytenr). When tree R copies a block B that others
 * share (refs > 1): if R owns B and B is not FULL_BACKREF yet, B's children get SHARED refs from B, B is marked
 * FULL_BACKREF, and R's existing TREE refs on the children now stand for the copy; otherwise the copy adds its
 * own TREE refs for the children. When R copies a block only it references but which is FULL_BACKREF, the
 * copy's TREE refs replace B's SHARED refs. Copies run top-down, so the parent of B has been dealt with first,
 * and the reference R drops on B afterwards (free_tree_block) is always TREE_BLOCK_REF(R).
 */
#include "alloc/extalloc_int.h"
#include "util/util.h"

#include <errno.h>
#include <inttypes.h>
#include <stddef.h>

static int leaf_corrupt(const struct bf_block *b, uint32_t slot, const char *what)
{
	bf_log(BF_LOG_ERR, "tree block %" PRIu64 " (tree %" PRIu64 ") slot %u: %s (corrupt; run 'btrfs check "
	       "--readonly')", b->bytenr, b->owner, slot, what);
	return -EUCLEAN;
}

/* One file extent item of leaf b: queue its data reference change. */
static int mod_data_ref(struct bf_extalloc *ea, const struct bf_block *b, uint32_t slot, uint64_t parent,
			int delta)
{
	struct bf_key key = bf_leaf_key(b, slot);
	uint32_t size;
	const uint8_t *data = bf_leaf_item(b, slot, &size);
	const struct bf_file_extent_item *fi = (const void *)data;
	if (size < offsetof(struct bf_file_extent_item, type) + 1)
		return leaf_corrupt(b, slot, "file extent item too small");
	if (fi->type == BF_FILE_EXTENT_INLINE)
		return 0;
	if (size < sizeof(*fi))
		return leaf_corrupt(b, slot, "file extent item too small");
	uint64_t bytenr = get64(fi->disk_bytenr), num = get64(fi->disk_num_bytes);
	if (!bytenr)
		return 0;
	if (key.objectid < BF_FIRST_FREE_OBJECTID || !num || bytenr % ea->sectorsize || num % ea->sectorsize)
		return leaf_corrupt(b, slot, "file extent item with an invalid inode or extent");
	return ea_queue_data_ref(ea, bytenr, num, parent, b->owner, key.objectid, key.offset - get64(fi->offset),
				 delta);
}

/* __btrfs_mod_ref: every child of b gains (delta +1) or loses (-1) the reference b holds on it, as a SHARED
   reference from b (full) or as b's owner's. Leaves of trees that cannot be shared hold no data extents. */
static int mod_ref(struct bf_extalloc *ea, uint64_t root, const struct bf_block *b, bool full, int delta)
{
	uint64_t parent = full ? b->bytenr : 0;
	if (b->level == 0 && !ea_shareable(root))
		return 0;
	for (uint32_t i = 0; i < b->nritems; i++) {
		int ret;
		if (b->level == 0) {
			struct bf_key key = bf_leaf_key(b, i);
			if (key.type != BF_EXTENT_DATA_KEY)
				continue;
			ret = mod_data_ref(ea, b, i, parent, delta);
		} else {
			ret = ea_queue_tree_ref(ea, bf_node_blockptr(b, i), parent, b->owner, b->level - 1, delta);
		}
		if (ret)
			return ret;
	}
	return 0;
}

/* Queue "set FULL_BACKREF" on b's extent (btrfs_set_disk_extent_flags). */
static int mark_full_backref(struct bf_extalloc *ea, const struct bf_block *b)
{
	struct ea_head *h;
	int ret = dt_get(&ea->refs, b->bytenr, ea->nodesize, false, &h);
	if (ret)
		return ret;
	if (h->is_data || (h->had_refs && h->level != b->level))
		return leaf_corrupt(b, 0, "block's extent is known with another kind or level");
	h->level = b->level;
	h->set_flags |= BF_BLOCK_FLAG_FULL_BACKREF;
	return 0;
}

int ea_tree_block_cowed(void *ctx, uint64_t owner, const struct bf_block *old, const struct bf_block *cow)
{
	struct bf_extalloc *ea = ctx;
	uint64_t refs = 1, flags = 0;
	int ret = 0;
	if (ea->error)
		return ea->error;
	if (owner == BF_TREE_RELOC_OBJECTID) {
		bf_log(BF_LOG_ERR, "tree block %" PRIu64 ": changing the relocation tree is not supported; let the "
		       "kernel finish the interrupted balance first", old->bytenr);
		return -EROFS;
	}
	uint64_t rev = get64(((const struct bf_header *)old->data)->flags) >> BF_BACKREF_REV_SHIFT;
	if (ea_shareable(owner))
		ret = et_lookup_tree_block(ea, old->bytenr, old->level, &refs, &flags);
	else if (rev < BF_MIXED_BACKREF_REV)
		flags = BF_BLOCK_FLAG_FULL_BACKREF;
	if (!ret && refs == 0)
		ret = leaf_corrupt(old, 0, "copied block has no references");
	if (ret)
		return ret;
	if (refs > 1) {
		if (old->owner == owner && !(flags & BF_BLOCK_FLAG_FULL_BACKREF)) {
			ret = mod_ref(ea, owner, old, true, 1);
			if (!ret)
				ret = mark_full_backref(ea, old);
		} else {
			ret = mod_ref(ea, owner, cow, false, 1);
		}
	} else if (flags & BF_BLOCK_FLAG_FULL_BACKREF) {
		ret = mod_ref(ea, owner, cow, false, 1);
		if (!ret)
			ret = mod_ref(ea, owner, old, true, -1);
	}
	return ret;
}
