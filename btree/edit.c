/*
 * btree/edit.c - editing one tree block in memory: leaf items, node key pointers, header counts.
 *
 * Owns: the byte moves that insert, remove, resize and copy leaf items and node pointers, keeping the block in
 * the exact layout the kernel's tree-checker (and bf_block_check) demands. The callers (cow.c, balance.c,
 * modify.c) decide what moves where and check the room first; nothing here allocates or fails.
 *
 * Key idea: a leaf is item headers growing forward from the block header and item data packed backward from
 * the block's end, item i's data ending where item i-1's begins (offsets are relative to the end of the block
 * header). Every leaf change is one of two moves: shift the item headers from some slot on by whole headers,
 * and shift the data below some offset (the data of the items from some slot on, which is contiguous and
 * lies lowest) by some bytes, adding the same amount to those items' offsets (leaf_shift_data). Insert,
 * remove, resize and copy are each a composition of these two, so the packing invariant holds by
 * construction. Node pointers are fixed-size records, moved with memmove.
 */
#include <string.h>

#include "btree/btree_int.h"

/* ---- header fields ---- */

void bf_blk_set_nritems(struct bf_block *b, uint32_t nritems)
{
	put32(&bf_hdr(b)->nritems, nritems);
	b->nritems = nritems;
}

struct bf_key bf_blk_key(const struct bf_block *b, uint32_t slot)
{
	const uint8_t *base = b->data + BF_HDR_SIZE;

	if (b->level == 0)
		return bf_key_from_disk(&((const struct bf_item *)(base + (size_t)slot * BF_ITEM_SIZE))->key);
	return bf_key_from_disk(&((const struct bf_key_ptr *)(base + (size_t)slot * BF_KPTR_SIZE))->key);
}

void bf_blk_set_key(struct bf_block *b, uint32_t slot, const struct bf_key *key)
{
	if (b->level == 0)
		bf_key_to_disk(&bf_item_at(b, slot)->key, key);
	else
		bf_key_to_disk(&bf_kptr_at(b, slot)->key, key);
}

uint32_t bf_blk_search(const struct bf_block *b, const struct bf_key *key, bool *exact)
{
	uint32_t lo = 0, hi = b->nritems;

	*exact = false;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		struct bf_key k = bf_blk_key(b, mid);
		int c = bf_key_cmp(&k, key);

		if (c == 0) {
			*exact = true;
			return mid;
		}
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* ---- leaves ---- */

static uint32_t item_off(struct bf_block *b, uint32_t slot) { return get32(bf_item_at(b, slot)->offset); }
static uint32_t item_size(struct bf_block *b, uint32_t slot) { return get32(bf_item_at(b, slot)->size); }

/* Lowest data offset in use (the data size when the leaf is empty). */
static uint32_t leaf_data_end(const struct bf_tree_env *env, struct bf_block *b)
{
	return b->nritems ? item_off(b, b->nritems - 1) : bf_leaf_data_size(env);
}

/* Offset where the data of slot ends: the data size for slot 0, else where slot - 1 begins. */
static uint32_t slot_data_top(const struct bf_tree_env *env, struct bf_block *b, uint32_t slot)
{
	return slot ? item_off(b, slot - 1) : bf_leaf_data_size(env);
}

uint32_t bf_leaf_used(const struct bf_block *cb, uint32_t start, uint32_t nr)
{
	struct bf_block *b = (struct bf_block *)cb; /* read only */

	if (nr == 0)
		return 0;
	return item_off(b, start) + item_size(b, start) - item_off(b, start + nr - 1) + nr * BF_ITEM_SIZE;
}

uint32_t bf_leaf_free_space(const struct bf_tree_env *env, const struct bf_block *leaf)
{
	return bf_leaf_data_size(env) - bf_leaf_used(leaf, 0, leaf->nritems);
}

uint32_t bf_max_item_size(const struct bf_tree_env *env) { return bf_leaf_data_size(env) - BF_ITEM_SIZE; }

/* Move the data bytes [data_end, limit) by delta (negative: toward the item headers) and add delta to the
   offsets of items [slot, nritems). */
static void leaf_shift_data(const struct bf_tree_env *env, struct bf_block *b, uint32_t slot, uint32_t limit,
			    int64_t delta)
{
	uint8_t *base = b->data + BF_HDR_SIZE;
	uint32_t end = leaf_data_end(env, b);

	memmove(base + (int64_t)end + delta, base + end, limit - end);
	for (uint32_t i = slot; i < b->nritems; i++)
		put32(&bf_item_at(b, i)->offset, (uint32_t)((int64_t)item_off(b, i) + delta));
}

/* Move the item headers [slot, nritems) to start at slot + by (by may be negative). */
static void leaf_shift_headers(struct bf_block *b, uint32_t slot, int64_t by)
{
	memmove(bf_item_at(b, (uint32_t)((int64_t)slot + by)), bf_item_at(b, slot),
		(size_t)(b->nritems - slot) * BF_ITEM_SIZE);
}

/* Open room for nr item headers and data_bytes of data at slot; returns the offset where their data ends. The
   new headers are left for the caller to fill. */
static uint32_t leaf_open(const struct bf_tree_env *env, struct bf_block *b, uint32_t slot, uint32_t nr,
			  uint32_t data_bytes)
{
	uint32_t top = slot_data_top(env, b, slot);

	leaf_shift_data(env, b, slot, top, -(int64_t)data_bytes);
	leaf_shift_headers(b, slot, nr);
	bf_blk_set_nritems(b, b->nritems + nr);
	return top;
}

static void set_item(struct bf_block *b, uint32_t slot, const struct bf_key *key, uint32_t off, uint32_t size)
{
	struct bf_item *it = bf_item_at(b, slot);

	bf_key_to_disk(&it->key, key);
	put32(&it->offset, off);
	put32(&it->size, size);
}

void bf_leaf_insert(const struct bf_tree_env *env, struct bf_block *b, uint32_t slot, const struct bf_key *keys,
		    const uint32_t *sizes, uint32_t nr)
{
	uint32_t total = 0, cur;

	for (uint32_t i = 0; i < nr; i++)
		total += sizes[i];
	cur = leaf_open(env, b, slot, nr, total);
	for (uint32_t i = 0; i < nr; i++) {
		cur -= sizes[i];
		set_item(b, slot + i, &keys[i], cur, sizes[i]);
		memset(b->data + BF_HDR_SIZE + cur, 0, sizes[i]);
	}
}

void bf_leaf_remove(const struct bf_tree_env *env, struct bf_block *b, uint32_t slot, uint32_t nr)
{
	uint32_t n = b->nritems, bytes;

	if (nr == 0)
		return;
	bytes = slot_data_top(env, b, slot) - item_off(b, slot + nr - 1);
	if (slot + nr < n) {
		leaf_shift_data(env, b, slot + nr, item_off(b, slot + nr - 1), bytes);
		leaf_shift_headers(b, slot + nr, -(int64_t)nr);
	}
	bf_blk_set_nritems(b, n - nr);
}

void bf_leaf_resize(const struct bf_tree_env *env, struct bf_block *b, uint32_t slot, uint32_t new_size,
		    bool from_end)
{
	uint32_t off = item_off(b, slot), size = item_size(b, slot);
	uint8_t *base = b->data + BF_HDR_SIZE;

	if (new_size > size) {
		/* everything from this item's head down moves; the new bytes appear at the item's end */
		uint32_t grow = new_size - size;

		leaf_shift_data(env, b, slot, off + size, -(int64_t)grow);
		memset(base + off + size - grow, 0, grow);
	} else if (new_size < size) {
		/* keep [off, off + new_size) (head) or [off + size - new_size, off + size) (tail) in place at the
		   top; the data below it moves up over the dropped bytes */
		uint32_t cut = size - new_size;

		if (from_end)
			memmove(base + off + cut, base + off, new_size);
		leaf_shift_data(env, b, slot, off, cut); /* slot's own offset moves along: off + cut */
	}
	put32(&bf_item_at(b, slot)->size, new_size);
}

void bf_leaf_copy(const struct bf_tree_env *env, struct bf_block *dst, uint32_t dst_slot, struct bf_block *src,
		  uint32_t src_slot, uint32_t nr)
{
	uint32_t lo, hi, cur;

	if (nr == 0)
		return;
	lo = item_off(src, src_slot + nr - 1);
	hi = item_off(src, src_slot) + item_size(src, src_slot);
	cur = leaf_open(env, dst, dst_slot, nr, hi - lo);
	/* the items' data is contiguous in src and keeps its relative layout in dst */
	memcpy(dst->data + BF_HDR_SIZE + cur - (hi - lo), src->data + BF_HDR_SIZE + lo, hi - lo);
	for (uint32_t i = 0; i < nr; i++) {
		struct bf_key key = bf_blk_key(src, src_slot + i);
		uint32_t off = item_off(src, src_slot + i);

		set_item(dst, dst_slot + i, &key, cur - (hi - off), item_size(src, src_slot + i));
	}
}

/* ---- nodes ---- */

void bf_node_set_ptr(struct bf_block *b, uint32_t slot, uint64_t bytenr, uint64_t gen)
{
	put64(&bf_kptr_at(b, slot)->blockptr, bytenr);
	put64(&bf_kptr_at(b, slot)->generation, gen);
}

/* Open room for nr pointers at slot. */
static void node_open(struct bf_block *b, uint32_t slot, uint32_t nr)
{
	memmove(bf_kptr_at(b, slot + nr), bf_kptr_at(b, slot), (size_t)(b->nritems - slot) * BF_KPTR_SIZE);
	bf_blk_set_nritems(b, b->nritems + nr);
}

void bf_node_insert(struct bf_block *b, uint32_t slot, const struct bf_key *key, uint64_t bytenr, uint64_t gen)
{
	node_open(b, slot, 1);
	bf_key_to_disk(&bf_kptr_at(b, slot)->key, key);
	bf_node_set_ptr(b, slot, bytenr, gen);
}

void bf_node_remove(struct bf_block *b, uint32_t slot, uint32_t nr)
{
	memmove(bf_kptr_at(b, slot), bf_kptr_at(b, slot + nr), (size_t)(b->nritems - slot - nr) * BF_KPTR_SIZE);
	bf_blk_set_nritems(b, b->nritems - nr);
}

void bf_node_copy(struct bf_block *dst, uint32_t dst_slot, struct bf_block *src, uint32_t src_slot, uint32_t nr)
{
	node_open(dst, dst_slot, nr);
	memcpy(bf_kptr_at(dst, dst_slot), bf_kptr_at(src, src_slot), (size_t)nr * BF_KPTR_SIZE);
}
