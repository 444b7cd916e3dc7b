/*
 * btree/btree.h - tree blocks: reading, validating, caching and searching the copy-on-write B-trees.
 *
 * Owns: the tree-block cache (keyed by logical address, reference counted, bounded by a memory cap with LRU
 * eviction), validation of every block before anyone sees it (checksum, then header, then layout), search and
 * iteration over any tree given its root, and the write path: transactions' new and copied blocks, search for
 * a change, and item insert/delete/resize with the kernel's split, push and merge rules. Checksum algorithms
 * live here too (btree/csum.h).
 *
 * Key idea: a block enters the cache only after it has passed every check, trying each mirror the volume offers
 * until one verifies; after that, every item offset and size inside it is known to lie inside the block, so
 * the accessors below never need to check bounds again. Paths hold references to the blocks from the root down
 * to a leaf; the write path copies every block along a path before it changes one (see "the write path" below),
 * and blocks it creates stay pinned in the cache until written.
 *
 * Thread safety: the cache is shared and thread-safe; a path belongs to one thread; a transaction and the
 * blocks it changes belong to one thread (readers of committed roots never reach those blocks).
 */
#ifndef BF_BTREE_H
#define BF_BTREE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "alloc/alloc.h"
#include "btree/csum.h"
#include "btree/format.h"

struct bf_cache; /* private to btree/cache.c */

/* What the btree layer needs to read and check blocks of one filesystem. */
struct bf_tree_env {
	struct bf_volume *vol;
	uint32_t nodesize;
	uint32_t sectorsize;
	unsigned csum_type;
	uint8_t fsid[BF_FSID_SIZE]; /* every tree block carries this (the metadata_uuid when that feature is on) */
	uint64_t super_generation;  /* blocks of committed trees are never newer than this */
	struct bf_cache *cache;
	/* Stamped into the header of every new tree block: the chunk_tree_uuid of the chunk root's header (the
	   opener copies it after reading the chunk root; bf_env_init leaves it zero). */
	uint8_t chunk_tree_uuid[BF_UUID_SIZE];
};

int bf_env_init(struct bf_tree_env *env, struct bf_volume *vol, uint32_t nodesize, uint32_t sectorsize,
		unsigned csum_type, const uint8_t fsid[BF_FSID_SIZE], uint64_t super_generation, size_t cache_bytes);
void bf_env_destroy(struct bf_tree_env *env);

/* A tree's root, as a root item or the superblock names it. */
struct bf_root {
	uint64_t objectid; /* tree id (owner of its blocks) */
	uint64_t bytenr;
	uint64_t generation;
	uint8_t level;
};

/* A validated tree block. data is nodesize bytes; the fields below are decoded from its header. */
struct bf_block {
	uint64_t bytenr;
	uint64_t generation;
	uint64_t owner;
	uint32_t nritems;
	uint8_t level;
	uint8_t *data;
	/* private to the cache */
	int refs;
	struct bf_block *hash_next, *lru_prev, *lru_next;
	bool stale; /* dropped from the table (freed, or its address reused): the last bf_block_put frees it */
	/* private to the write path (btree/cow.c): the transaction that created the block, while the block is
	   neither written nor freed (only then may it change in place), and its index in that one's dirty list */
	struct bf_trans *dirty_trans;
	size_t dirty_idx;
};

/* What the parent pointer says about a child; 0 / -1 / NULL fields are not checked. */
struct bf_block_expect {
	uint64_t generation;
	int level;
	const struct bf_key *first_key;
	uint64_t owner;
};

/* Read a tree block through the cache. On success *out holds a reference (release with bf_block_put).
   Errors: -EIO (no mirror verifies: a log line names bytenr, mirror, expected and found checksum),
   -EUCLEAN (checksum fine but the block is malformed: a log line says which check failed). */
int bf_block_read(struct bf_tree_env *env, uint64_t bytenr, const struct bf_block_expect *exp, struct bf_block **out);
void bf_block_get(struct bf_block *b);
void bf_block_put(struct bf_tree_env *env, struct bf_block *b);
/* Validate a block image in memory (used by bf_block_read, the inspector and tests). Returns 0, -EIO for a
   checksum mismatch, -EUCLEAN for a malformed block; why is written to err. */
int bf_block_check(const struct bf_tree_env *env, uint64_t bytenr, const uint8_t *data,
		   const struct bf_block_expect *exp, char *err, size_t errlen);

/* Accessors for validated blocks (slot < nritems, caller's duty). */
struct bf_key bf_leaf_key(const struct bf_block *b, uint32_t slot);
const uint8_t *bf_leaf_item(const struct bf_block *b, uint32_t slot, uint32_t *size);
struct bf_key bf_node_key(const struct bf_block *b, uint32_t slot);
uint64_t bf_node_blockptr(const struct bf_block *b, uint32_t slot);
uint64_t bf_node_ptr_gen(const struct bf_block *b, uint32_t slot);

/* A position in a tree: nodes[0] is the leaf, nodes[level] up to the root. */
struct bf_path {
	struct bf_tree_env *env;
	struct bf_block *nodes[BF_MAX_LEVEL];
	uint32_t slots[BF_MAX_LEVEL];
};

void bf_path_init(struct bf_path *p, struct bf_tree_env *env);
void bf_path_release(struct bf_path *p); /* drops all references; the path can be reused */

/* Position p at the first item whose key is >= key. Returns 0 if that item's key equals key, 1 if not (then the
   position may be past the last item of the tree: bf_path_valid() is false), or a negative errno. */
int bf_search(struct bf_tree_env *env, const struct bf_root *root, const struct bf_key *key, struct bf_path *p);
/* Position p at the last item whose key is <= key. Returns 0 if equal, 1 if smaller, -ENOENT if every key in
   the tree is greater, or a negative errno. */
int bf_search_le(struct bf_tree_env *env, const struct bf_root *root, const struct bf_key *key, struct bf_path *p);
/* Move to the next / previous item, crossing leaves. Returns 0, 1 at the end of the tree, or a negative errno. */
int bf_path_next(struct bf_path *p);
int bf_path_prev(struct bf_path *p);
/* True if p points at an item. */
bool bf_path_valid(const struct bf_path *p);
/* The current item's key and data (data stays valid while the path holds the leaf). */
struct bf_key bf_path_key(const struct bf_path *p);
const uint8_t *bf_path_item(const struct bf_path *p, uint32_t *size);

/* Call cb for every item with min <= key <= max, in order. cb returns 0 to go on, > 0 to stop (bf_iterate then
   returns 0), < 0 to fail (returned as is). */
typedef int (*bf_item_cb)(void *ctx, const struct bf_key *key, const uint8_t *data, uint32_t size);
int bf_iterate(struct bf_tree_env *env, const struct bf_root *root, const struct bf_key *min,
	       const struct bf_key *max, bf_item_cb cb, void *ctx);

/* Cache statistics (for the inspector and benchmarks). */
struct bf_cache_stats {
	uint64_t hits, misses, evictions, bytes;
};
void bf_cache_stats(const struct bf_tree_env *env, struct bf_cache_stats *st);
/* Cached blocks someone holds a reference to (paths, a transaction's dirty list): for leak checks in tests. */
size_t bf_cache_busy(const struct bf_tree_env *env);

/* ================= the write path (btree/cow.c, btree/modify.c, btree/balance.c) =================
 *
 * Copy-on-write: a block that the running transaction created, and has neither written nor freed, changes in
 * place. Any other block is first copied to a newly allocated address - the copy gets the new bytenr,
 * generation = transid, owner = the tree - the parent pointer (or the root) is pointed at the copy with
 * generation = transid, and the tree's reference to the old block is dropped through the allocator ops. So a
 * change always reaches the root, modified trees share every untouched block with the committed ones, and no
 * block a committed root reaches ever changes.
 *
 * Errors: the calls below check their arguments and the room in the leaf before they change any item, and
 * return -EINVAL (bad arguments, or a path not prepared for the change), -EEXIST or -EOVERFLOW (an item larger
 * than a leaf) with the items unchanged and the tree valid (its search may have copied or reshaped blocks,
 * which is harmless). Any other error (the allocator's -ENOSPC, -EIO or -EUCLEAN
 * reading a block, -ENOMEM, a hook's error) may come in the middle of a change: the transaction must then be
 * aborted (bf_trans_abort), never committed, as the kernel aborts a transaction.
 */

/* What the btree layer asks of the allocator. The alloc layer implements it (block groups, extent tree,
   delayed references), tests implement it over a bitmap. ctx is passed back unchanged. */
struct bf_alloc_ops {
	/* Reserve nodesize bytes of metadata space for a new block of tree owner at level: 0 and *bytenr (sector
	   aligned and mapped by the volume), or a negative errno (-ENOSPC). */
	int (*alloc_tree_block)(void *ctx, uint64_t owner, int level, uint64_t *bytenr);
	/* Tree owner no longer references the block at bytenr (it was copied, merged away, or the tree shrank):
	   queue the reference drop. The btree layer has already forgotten the block (dropped from the cache). Its
	   space may be reused at once only if the allocator handed it out in this same transaction (it was never
	   part of a committed tree); otherwise it stays pinned until the transaction commits. */
	void (*free_tree_block)(void *ctx, uint64_t bytenr, uint64_t owner, int level);
	/* Optional (NULL: nothing to do). A new block was stamped for tree owner at level, created for first_key
	   (the key an extent item's tree_block_info records when skinny metadata is off): queue its extent item
	   and the owner's reference. Called once after every successful alloc_tree_block. On an error the block
	   is handed back through free_tree_block, and the transaction must be aborted. */
	int (*tree_block_added)(void *ctx, uint64_t bytenr, uint64_t owner, int level, const struct bf_key *first_key);
	/* Optional. cow (new in this transaction) is replacing old (an earlier one's) in tree owner; called after
	   tree_block_added(cow) and before free_tree_block(old). When old is shared (snapshots), this is where the
	   references of the children that cow now points to are added (the kernel's update_ref_for_cow). */
	int (*tree_block_cowed)(void *ctx, uint64_t owner, const struct bf_block *old, const struct bf_block *cow);
};

/* A transaction: the generation being written and the blocks it created. Used by one thread at a time; the
   journal layer owns its lifecycle. */
struct bf_trans {
	uint64_t transid;
	struct bf_tree_env *env;
	const struct bf_alloc_ops *ops;
	void *alloc_ctx;
	/* The blocks created in this transaction and neither written nor freed, in no order. Each entry holds a
	   reference, so the cache keeps ("pins") the block until it is written. */
	struct bf_block **dirty;
	size_t ndirty, dirty_cap;
};

void bf_trans_init(struct bf_trans *t, struct bf_tree_env *env, uint64_t transid, const struct bf_alloc_ops *ops,
		   void *alloc_ctx);
/* Finalize (bf_block_finalize), check (bf_block_check, as the kernel's tree-checker does before a write) and
   write every dirty block, in address order, then let them go: they stay cached as clean blocks, and a later
   change in this transaction copies them again. Returns 0, or the first error (-EUCLEAN for a block that fails
   the check, -EIO, -EROFS; a log line names the block) with the dirty list kept: then abort. The check wants
   env->super_generation (the last commit) >= transid - 1. */
int bf_trans_write_dirty(struct bf_trans *t);
/* Forget every dirty block, dropping it from the cache (it was never committed). The caller restores its
   roots from the last commit and rolls the allocator back. */
void bf_trans_abort(struct bf_trans *t);
/* Free the handle. Dirty blocks still listed are a caller bug: logged, then aborted. */
void bf_trans_destroy(struct bf_trans *t);

/* Make a block ready for writing: set the WRITTEN header flag and the checksum. 0 or -EINVAL. */
int bf_block_finalize(const struct bf_tree_env *env, struct bf_block *b);

/* A new, empty tree: one empty leaf as its root. */
int bf_tree_create(struct bf_trans *t, uint64_t objectid, struct bf_root *root);

/* Largest item data a leaf holds; free bytes of a leaf (for an item: its data size + sizeof(struct bf_item)). */
uint32_t bf_max_item_size(const struct bf_tree_env *env);
uint32_t bf_leaf_free_space(const struct bf_tree_env *env, const struct bf_block *leaf);

/* Search for key to change the tree, like the kernel's btrfs_search_slot. With cow, every block on the way
   down is copied unless t may change it in place (root follows when the root block moves). ins_len > 0: make
   the leaf reached have ins_len bytes free, splitting full nodes on the way and then the leaf; ins_len < 0:
   refill or merge under-filled nodes on the way and shrink a root with one child, so a delete at the leaf
   cannot empty a node that cannot be removed. ins_len != 0 needs cow. The leaf slot is the insert position
   (it may equal nritems). Returns 0 (found), 1 (not found) or a negative errno (p released). After a search
   with ins_len > 0 that returned 1, insert at the slot (bf_insert_empty_items does both): the leaf may be a new
   empty one made for the insert, and a non-root leaf must not stay empty. */
int bf_search_slot(struct bf_trans *t, struct bf_root *root, const struct bf_key *key, int ins_len, bool cow,
		   struct bf_path *p);

/* Insert nr empty items (keys strictly ascending, sizes[i] bytes of data each) side by side; p is left at the
   first. Fill their data through bf_path_item_mut. -EEXIST if keys[0] exists (p then points at it) or a later
   key is not below the next item's; -EOVERFLOW if they do not fit into one leaf together. */
int bf_insert_empty_items(struct bf_trans *t, struct bf_root *root, struct bf_path *p, const struct bf_key *keys,
			  const uint32_t *sizes, uint32_t nr);
/* Insert one item with its data. */
int bf_insert_item(struct bf_trans *t, struct bf_root *root, const struct bf_key *key, const void *data,
		   uint32_t size);
/* Writable data of the path's item; NULL unless the leaf is one t may change (the path was found with cow). */
uint8_t *bf_path_item_mut(struct bf_trans *t, const struct bf_path *p, uint32_t *size);
/* The same for the item i slots after the path's in its leaf: after bf_insert_empty_items, item i of the batch. */
uint8_t *bf_path_item_mut_at(struct bf_trans *t, const struct bf_path *p, uint32_t i, uint32_t *size);

/* The calls below need a path that bf_search_slot found with cow (every block on it changeable by t). */
/* Delete slots [slot, slot + nr) of the path's leaf; best found with ins_len -1. An emptied leaf leaves the
   tree, one under a third full is merged into its neighbours where they have room. p is released. */
int bf_del_items(struct bf_trans *t, struct bf_root *root, struct bf_path *p, uint32_t slot, uint32_t nr);
/* Grow the path's item by data_size zeroed bytes at its end. Needs data_size bytes free in the leaf: search
   with ins_len = data_size. -EOVERFLOW if the item would outgrow bf_max_item_size. */
int bf_extend_item(struct bf_trans *t, struct bf_path *p, uint32_t data_size);
/* Shrink the path's item to new_size bytes, keeping its head (from_end) or its tail. Its key is unchanged. */
int bf_truncate_item(struct bf_trans *t, struct bf_path *p, uint32_t new_size, bool from_end);
/* Give the path's item a new key, which must stay between its neighbours in the leaf and below the next
   leaf's first key; the parent keys follow when it is the leaf's first item. (As with the kernel's
   btrfs_set_item_key_safe, the caller vouches that the first item of a leaf stays above the previous leaf.) */
int bf_set_item_key(struct bf_trans *t, struct bf_path *p, const struct bf_key *key);

#endif
