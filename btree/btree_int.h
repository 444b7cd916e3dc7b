/*
 * btree/btree_int.h - private interface between the files of the btree layer (not for other layers).
 *
 * Owns: the cache operations that btree/block.c uses to look up and publish validated blocks. Key idea: the
 * cache never reads or validates anything itself; block.c reads and checks a block outside the cache lock and
 * then offers it with bf_cache_insert, which keeps whichever copy got there first.
 */
#ifndef BF_BTREE_INT_H
#define BF_BTREE_INT_H

#include "btree/btree.h"

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

#endif
