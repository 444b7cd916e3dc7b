/*
 * btree/btree.h - tree blocks: reading, validating, caching and searching the copy-on-write B-trees.
 *
 * Owns: the tree-block cache (keyed by logical address, reference counted, bounded by a memory cap with LRU
 * eviction), validation of every block before anyone sees it (checksum, then header, then layout), and search
 * and iteration over any tree given its root. Checksum algorithms live here too (btree/csum.h).
 *
 * Key idea: a block enters the cache only after it has passed every check, trying each mirror the volume offers
 * until one verifies; after that, every item offset and size inside it is known to lie inside the block, so
 * the accessors below never need to check bounds again. Paths hold references to the blocks from the root down
 * to a leaf, so the write path can later copy-on-write along them.
 *
 * Thread safety: the cache is shared and thread-safe; a path belongs to one thread.
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

#endif
