/*
 * btree/btree_int.h - private interface between the files of the btree layer (not for other layers).
 *
 * Owns: the cache operations that btree/block.c and the write path use to look up, publish and drop blocks;
 * the raw layout of a block image for the write path (btree/edit.c edits one block: items, key pointers,
 * header); and the calls between the write-path files (btree/cow.c: new blocks, copies, frees; btree/balance.c:
 * splits, pushes, merges; btree/modify.c: the public calls).
 *
 * Key idea: the cache never reads or validates anything itself; block.c reads and checks a block outside the
 * cache lock and then offers it with bf_cache_insert, which keeps whichever copy got there first. The write
 * path publishes the blocks it creates with bf_cache_insert_new, which wins over anything cached at that
 * address, and drops the blocks a tree lets go of with bf_cache_drop, so a reused address never shows stale
 * content.
 */
#ifndef BF_BTREE_INT_H
#define BF_BTREE_INT_H

#include "btree/btree.h"

/* ---- the cache (btree/cache.c) ---- */

/* A cache holding up to cap_bytes of unreferenced blocks of nodesize bytes. NULL on allocation failure. */
struct bf_cache *bf_cache_new(size_t cap_bytes, uint32_t nodesize);
/* Frees every block; logs a warning naming how many were still referenced (a leak in the caller). */
void bf_cache_free(struct bf_cache *c);

/* A new, unreferenced, uncached block with nodesize bytes of data (NULL when out of memory). */
struct bf_block *bf_block_alloc(uint32_t nodesize);
void bf_block_free(struct bf_block *b);

/* The cached block at bytenr with a new reference, or NULL (counts a hit or a miss). */
struct bf_block *bf_cache_lookup(struct bf_cache *c, uint64_t bytenr);
/* Publish b (from bf_block_alloc, decoded and validated). Returns the cached block for b->bytenr with a
   reference: b itself, or the copy another thread inserted first, in which case b is freed. */
struct bf_block *bf_cache_insert(struct bf_cache *c, struct bf_block *b);
/* Publish b, a block just created by the write path, with one reference for the caller. Whatever was cached
   at b->bytenr (a block freed earlier, whose address the allocator handed out again) is dropped first; but if
   a transaction still owns the block there (not written yet), nothing changes and -EEXIST is returned. */
int bf_cache_insert_new(struct bf_cache *c, struct bf_block *b);
/* Remove b from the table: later lookups of its address miss. b stays valid for those who hold references
   and is freed by the last bf_block_put (at once if nobody holds one). */
void bf_cache_drop(struct bf_cache *c, struct bf_block *b);

/* ---- raw layout of a block image (the caller checks slots against nritems) ---- */

#define BF_HDR_SIZE ((uint32_t)sizeof(struct bf_header))
#define BF_ITEM_SIZE ((uint32_t)sizeof(struct bf_item))
#define BF_KPTR_SIZE ((uint32_t)sizeof(struct bf_key_ptr))

static inline struct bf_header *bf_hdr(struct bf_block *b) { return (struct bf_header *)b->data; }
static inline struct bf_item *bf_item_at(struct bf_block *b, uint32_t slot)
{
	return (struct bf_item *)(b->data + BF_HDR_SIZE + (size_t)slot * BF_ITEM_SIZE);
}
static inline struct bf_key_ptr *bf_kptr_at(struct bf_block *b, uint32_t slot)
{
	return (struct bf_key_ptr *)(b->data + BF_HDR_SIZE + (size_t)slot * BF_KPTR_SIZE);
}
/* Bytes after the header: where a leaf's item headers and data live. */
static inline uint32_t bf_leaf_data_size(const struct bf_tree_env *env) { return env->nodesize - BF_HDR_SIZE; }
static inline uint32_t bf_node_max_ptrs(const struct bf_tree_env *env)
{
	return (env->nodesize - BF_HDR_SIZE) / BF_KPTR_SIZE;
}

/* ---- editing one block in memory (btree/edit.c); every call keeps the decoded header fields in step ---- */

void bf_blk_set_nritems(struct bf_block *b, uint32_t nritems);
/* Key of slot in a leaf or a node; set it. */
struct bf_key bf_blk_key(const struct bf_block *b, uint32_t slot);
void bf_blk_set_key(struct bf_block *b, uint32_t slot, const struct bf_key *key);
/* Slot of the first key >= key in b; *exact tells whether it is equal. */
uint32_t bf_blk_search(const struct bf_block *b, const struct bf_key *key, bool *exact);

/* Leaves: bytes that items [start, start + nr) take (headers and data); bytes free. */
uint32_t bf_leaf_used(const struct bf_block *b, uint32_t start, uint32_t nr);
/* Make room for nr items holding data_bytes in all at slot, set their keys and sizes (keys[i], sizes[i]) and
   their offsets (data packed below the data of slot - 1, in slot order). The caller checked the room. */
void bf_leaf_insert(const struct bf_tree_env *env, struct bf_block *b, uint32_t slot, const struct bf_key *keys,
		    const uint32_t *sizes, uint32_t nr);
/* Remove items [slot, slot + nr) and their data. */
void bf_leaf_remove(const struct bf_tree_env *env, struct bf_block *b, uint32_t slot, uint32_t nr);
/* Resize the item at slot: growing adds zeroed bytes at its end; shrinking drops its tail (from_end) or its
   head. The caller checked the room. */
void bf_leaf_resize(const struct bf_tree_env *env, struct bf_block *b, uint32_t slot, uint32_t new_size,
		    bool from_end);
/* Copy items [src_slot, src_slot + nr) of src, keys and data, into dst at dst_slot (room checked). */
void bf_leaf_copy(const struct bf_tree_env *env, struct bf_block *dst, uint32_t dst_slot, struct bf_block *src,
		  uint32_t src_slot, uint32_t nr);

/* Nodes: insert one pointer; remove [slot, slot + nr); copy [src_slot, src_slot + nr) of src into dst at
   dst_slot (room checked by the caller). */
void bf_node_insert(struct bf_block *b, uint32_t slot, const struct bf_key *key, uint64_t bytenr, uint64_t gen);
void bf_node_remove(struct bf_block *b, uint32_t slot, uint32_t nr);
void bf_node_copy(struct bf_block *dst, uint32_t dst_slot, struct bf_block *src, uint32_t src_slot, uint32_t nr);
void bf_node_set_ptr(struct bf_block *b, uint32_t slot, uint64_t bytenr, uint64_t gen);

/* ---- blocks of a transaction (btree/cow.c) ---- */

/* True if t must copy b before changing it (t did not create it, or it was written or freed since). */
bool bf_must_cow(const struct bf_trans *t, const struct bf_block *b);
/* A new zeroed block of root's tree at level (header stamped, nritems 0), created for key (see
   tree_block_added): cached, on the dirty list, with one reference for the caller. */
int bf_new_block(struct bf_trans *t, const struct bf_root *root, uint8_t level, const struct bf_key *key,
		 struct bf_block **out);
/* Make b, the child at pslot of parent (or root's root block when parent is NULL), changeable by t: *out gets
   a new reference to b itself when t may change it in place, else to its copy, which parent (or root) now
   points to. The caller keeps its reference to b. */
int bf_cow_block(struct bf_trans *t, struct bf_root *root, struct bf_block *b, struct bf_block *parent,
		 uint32_t pslot, struct bf_block **out);
/* root's tree lets go of b: off the dirty list, out of the cache, and free_tree_block. The caller's reference
   stays valid until put. */
void bf_free_block(struct bf_trans *t, const struct bf_root *root, struct bf_block *b);
/* Read the child at slot of the node parent with what the pointer promises (new reference in *out). */
int bf_read_child(struct bf_tree_env *env, const struct bf_block *parent, uint32_t slot, struct bf_block **out);
/* Put b at level of p, releasing what was there (b's reference passes to the path; b may be NULL). */
void bf_path_set(struct bf_path *p, int level, struct bf_block *b);

/* ---- tree shape (btree/balance.c) ---- */

/* Set key at the path's slot of each node from level up, as long as the slot below was 0. */
void bf_fixup_low_keys(struct bf_path *p, const struct bf_key *key, int level);
/* Make node nodes[level] (full: nritems >= max - 3) roomy: push pointers to a neighbour, or split it (growing a
   new root above the old one). The path follows the slot it was at. */
int bf_split_node(struct bf_trans *t, struct bf_root *root, struct bf_path *p, int level);
/* Before a delete: refill or merge node nodes[level] when at most a quarter full; shrink the root when it has
   one child (then nodes[level] is NULL and the search must start over). */
int bf_balance_level(struct bf_trans *t, struct bf_root *root, struct bf_path *p, int level);
/* Make the path's leaf have data_size bytes free at its slot (extend: for growing the item at the slot). */
int bf_split_leaf(struct bf_trans *t, struct bf_root *root, const struct bf_key *ins_key, struct bf_path *p,
		  uint32_t data_size, bool extend);
/* After a delete left the path's leaf under a third full: push its items into its neighbours, and remove it
   if that emptied it. */
int bf_merge_leaf(struct bf_trans *t, struct bf_root *root, struct bf_path *p);
/* Remove the path's leaf (nodes[0], at slots[1] of nodes[1]) from the tree and free it. */
int bf_del_leaf(struct bf_trans *t, struct bf_root *root, struct bf_path *p);

#endif
