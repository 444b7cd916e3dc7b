/*
 * btree/cache.c - the tree-block cache and the btree environment that owns it.
 *
 * Owns: bf_env_init/destroy, the cache of validated tree blocks (a hash table keyed by logical address),
 * reference counting (bf_block_get/put), the statistics, and for the write path the publishing of new blocks
 * and the dropping of freed ones.
 *
 * Key idea: a block is either referenced (refs > 0: some path or caller uses it, never evicted) or idle
 * (refs == 0: it sits on an LRU list, oldest first). When the cached bytes exceed the cap, idle blocks are freed
 * from the old end of the list. One mutex guards the table, the list and the counters; nothing slow (I/O,
 * checksums) ever runs under it - block.c reads and validates outside the lock and inserts afterwards, and the
 * insert re-checks the table so two threads that missed on the same block end up sharing one copy.
 * refs is changed with atomic operations: under the lock for every 0 <-> 1 transition (which moves the block
 * off or onto the LRU list), and lock-free in bf_block_get, which is only legal for a caller that already
 * holds a reference and so can never see a 0 -> 1 transition.
 * The write path adds blocks that are not on disk yet (bf_cache_insert_new): the transaction holds a reference
 * to each until it is written, so they are never evicted. A block a tree lets go of is dropped (bf_cache_drop):
 * it leaves the table at once - a later lookup of its address misses, so when the allocator hands the address
 * out again nobody sees the old content - and is marked stale, so the last bf_block_put frees it instead of
 * parking it on the LRU list.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "btree/btree_int.h"
#include "util/util.h"

#define CACHE_DEFAULT_BYTES (64u << 20)
#define CACHE_MIN_BUCKETS 64u
#define CACHE_MAX_BUCKETS (1u << 20)

struct bf_cache {
	pthread_mutex_t lock;
	struct bf_block **buckets;
	size_t nbuckets; /* power of two */
	struct bf_block *lru_head, *lru_tail; /* idle blocks, least recently used first */
	uint64_t cap, bytes;
	uint64_t block_bytes; /* what one cached block costs */
	uint64_t hits, misses, evictions;
};

/* ---- blocks ---- */

struct bf_block *bf_block_alloc(uint32_t nodesize)
{
	struct bf_block *b = calloc(1, sizeof(*b) + nodesize);

	if (b)
		b->data = (uint8_t *)(b + 1);
	return b;
}

void bf_block_free(struct bf_block *b) { free(b); }

/* ---- the table and the LRU list (caller holds the lock) ---- */

static size_t bucket_of(const struct bf_cache *c, uint64_t bytenr)
{
	/* bytenrs are sector aligned: drop the low bits, then mix with a 64-bit golden-ratio multiply */
	return (size_t)(((bytenr >> 12) * 0x9E3779B97F4A7C15ULL) >> 32) & (c->nbuckets - 1);
}

static struct bf_block *table_find(const struct bf_cache *c, uint64_t bytenr)
{
	struct bf_block *b = c->buckets[bucket_of(c, bytenr)];

	while (b && b->bytenr != bytenr)
		b = b->hash_next;
	return b;
}

static void table_remove(struct bf_cache *c, struct bf_block *b)
{
	struct bf_block **pp = &c->buckets[bucket_of(c, b->bytenr)];

	while (*pp && *pp != b)
		pp = &(*pp)->hash_next;
	if (*pp)
		*pp = b->hash_next;
	b->hash_next = NULL;
}

static void table_add(struct bf_cache *c, struct bf_block *b)
{
	size_t i = bucket_of(c, b->bytenr);

	b->hash_next = c->buckets[i];
	c->buckets[i] = b;
	c->bytes += c->block_bytes;
}

static void lru_unlink(struct bf_cache *c, struct bf_block *b)
{
	if (b->lru_prev)
		b->lru_prev->lru_next = b->lru_next;
	else
		c->lru_head = b->lru_next;
	if (b->lru_next)
		b->lru_next->lru_prev = b->lru_prev;
	else
		c->lru_tail = b->lru_prev;
	b->lru_prev = b->lru_next = NULL;
}

static void lru_append(struct bf_cache *c, struct bf_block *b)
{
	b->lru_next = NULL;
	b->lru_prev = c->lru_tail;
	if (c->lru_tail)
		c->lru_tail->lru_next = b;
	else
		c->lru_head = b;
	c->lru_tail = b;
}

/* Take a reference under the lock; an idle block leaves the LRU list. */
static void ref_locked(struct bf_cache *c, struct bf_block *b)
{
	if (__atomic_fetch_add(&b->refs, 1, __ATOMIC_ACQ_REL) == 0)
		lru_unlink(c, b);
}

/* Free idle blocks, oldest first, until the cache fits its cap (referenced blocks are never evicted). */
static void evict_locked(struct bf_cache *c)
{
	while (c->bytes > c->cap && c->lru_head) {
		struct bf_block *b = c->lru_head;

		lru_unlink(c, b);
		table_remove(c, b);
		c->bytes -= c->block_bytes;
		c->evictions++;
		bf_block_free(b);
	}
}

/* ---- the cache ---- */

struct bf_cache *bf_cache_new(size_t cap_bytes, uint32_t nodesize)
{
	struct bf_cache *c = calloc(1, sizeof(*c));
	size_t want = cap_bytes / (nodesize ? nodesize : 1);

	if (!c)
		return NULL;
	c->nbuckets = CACHE_MIN_BUCKETS;
	while (c->nbuckets < want && c->nbuckets < CACHE_MAX_BUCKETS)
		c->nbuckets <<= 1;
	c->buckets = calloc(c->nbuckets, sizeof(*c->buckets));
	if (!c->buckets || pthread_mutex_init(&c->lock, NULL) != 0) {
		free(c->buckets);
		free(c);
		return NULL;
	}
	c->cap = cap_bytes;
	c->block_bytes = sizeof(struct bf_block) + (uint64_t)nodesize;
	return c;
}

void bf_cache_free(struct bf_cache *c)
{
	size_t busy = 0;

	if (!c)
		return;
	for (size_t i = 0; i < c->nbuckets; i++) {
		while (c->buckets[i]) {
			struct bf_block *b = c->buckets[i];

			c->buckets[i] = b->hash_next;
			busy += b->refs > 0;
			bf_block_free(b);
		}
	}
	if (busy)
		bf_log(BF_LOG_WARN, "tree-block cache destroyed with %zu blocks still referenced (a path was not "
				    "released; this is a bug in btrfs-fuse)", busy);
	pthread_mutex_destroy(&c->lock);
	free(c->buckets);
	free(c);
}

struct bf_block *bf_cache_lookup(struct bf_cache *c, uint64_t bytenr)
{
	struct bf_block *b;

	pthread_mutex_lock(&c->lock);
	b = table_find(c, bytenr);
	if (b) {
		ref_locked(c, b);
		c->hits++;
	} else {
		c->misses++;
	}
	pthread_mutex_unlock(&c->lock);
	return b;
}

struct bf_block *bf_cache_insert(struct bf_cache *c, struct bf_block *b)
{
	struct bf_block *old;

	pthread_mutex_lock(&c->lock);
	old = table_find(c, b->bytenr);
	if (old) {
		ref_locked(c, old);
	} else {
		b->refs = 1;
		b->lru_prev = b->lru_next = NULL;
		table_add(c, b);
		evict_locked(c);
	}
	pthread_mutex_unlock(&c->lock);
	if (!old)
		return b;
	bf_block_free(b);
	return old;
}

/* Take b out of the table; if idle, free it now (returned, to be freed outside the lock), else mark it stale so
   its last bf_block_put frees it. */
static struct bf_block *drop_locked(struct bf_cache *c, struct bf_block *b)
{
	if (b->stale)
		return NULL;
	table_remove(c, b);
	c->bytes -= c->block_bytes;
	b->stale = true;
	if (__atomic_load_n(&b->refs, __ATOMIC_ACQUIRE) > 0)
		return NULL;
	lru_unlink(c, b);
	return b;
}

int bf_cache_insert_new(struct bf_cache *c, struct bf_block *b)
{
	struct bf_block *old, *idle = NULL;

	pthread_mutex_lock(&c->lock);
	old = table_find(c, b->bytenr);
	if (old && old->dirty_trans) {
		pthread_mutex_unlock(&c->lock);
		return -EEXIST;
	}
	if (old)
		idle = drop_locked(c, old);
	b->refs = 1;
	b->stale = false;
	b->lru_prev = b->lru_next = NULL;
	table_add(c, b);
	evict_locked(c);
	pthread_mutex_unlock(&c->lock);
	bf_block_free(idle);
	return 0;
}

void bf_cache_drop(struct bf_cache *c, struct bf_block *b)
{
	struct bf_block *idle;

	pthread_mutex_lock(&c->lock);
	idle = drop_locked(c, b);
	pthread_mutex_unlock(&c->lock);
	bf_block_free(idle);
}

/* ---- references ---- */

void bf_block_get(struct bf_block *b) { __atomic_fetch_add(&b->refs, 1, __ATOMIC_ACQ_REL); }

void bf_block_put(struct bf_tree_env *env, struct bf_block *b)
{
	struct bf_cache *c;

	if (!b)
		return;
	c = env->cache;
	pthread_mutex_lock(&c->lock);
	if (__atomic_load_n(&b->refs, __ATOMIC_ACQUIRE) <= 0) {
		pthread_mutex_unlock(&c->lock);
		bf_log(BF_LOG_ERR, "tree block %llu released more often than taken (a bug in btrfs-fuse)",
		       (unsigned long long)b->bytenr);
		return;
	}
	if (__atomic_sub_fetch(&b->refs, 1, __ATOMIC_ACQ_REL) == 0) {
		if (b->stale) {
			pthread_mutex_unlock(&c->lock);
			bf_block_free(b);
			return;
		}
		lru_append(c, b);
		evict_locked(c);
	}
	pthread_mutex_unlock(&c->lock);
}

void bf_cache_stats(const struct bf_tree_env *env, struct bf_cache_stats *st)
{
	struct bf_cache *c = env->cache;

	pthread_mutex_lock(&c->lock);
	st->hits = c->hits;
	st->misses = c->misses;
	st->evictions = c->evictions;
	st->bytes = c->bytes;
	pthread_mutex_unlock(&c->lock);
}

size_t bf_cache_busy(const struct bf_tree_env *env)
{
	struct bf_cache *c = env->cache;
	size_t busy = 0;

	pthread_mutex_lock(&c->lock);
	for (size_t i = 0; i < c->nbuckets; i++)
		for (const struct bf_block *b = c->buckets[i]; b; b = b->hash_next)
			busy += __atomic_load_n(&b->refs, __ATOMIC_ACQUIRE) > 0;
	pthread_mutex_unlock(&c->lock);
	return busy;
}

/* ---- the environment ---- */

static int env_check_sizes(uint32_t nodesize, uint32_t sectorsize, unsigned csum_type)
{
	if (!bf_is_power_of_2(sectorsize) || sectorsize < 512 || sectorsize > 65536) {
		bf_log(BF_LOG_ERR, "unsupported sector size %u (must be a power of two from 512 to 65536)", sectorsize);
		return -EINVAL;
	}
	if (!bf_is_power_of_2(nodesize) || nodesize < sectorsize || nodesize < 4096 || nodesize > 65536) {
		bf_log(BF_LOG_ERR, "unsupported node size %u (must be a power of two from 4096 to 65536 and at least "
				   "the sector size %u)", nodesize, sectorsize);
		return -EINVAL;
	}
	if (bf_csum_size(csum_type) < 0) {
		bf_log(BF_LOG_ERR, "unsupported checksum type %u", csum_type);
		return -EINVAL;
	}
	return 0;
}

int bf_env_init(struct bf_tree_env *env, struct bf_volume *vol, uint32_t nodesize, uint32_t sectorsize,
		unsigned csum_type, const uint8_t fsid[BF_FSID_SIZE], uint64_t super_generation, size_t cache_bytes)
{
	int ret = env_check_sizes(nodesize, sectorsize, csum_type);

	memset(env, 0, sizeof(*env));
	if (ret)
		return ret;
	env->vol = vol;
	env->nodesize = nodesize;
	env->sectorsize = sectorsize;
	env->csum_type = csum_type;
	memcpy(env->fsid, fsid, BF_FSID_SIZE);
	env->super_generation = super_generation;
	env->cache = bf_cache_new(cache_bytes ? cache_bytes : CACHE_DEFAULT_BYTES, nodesize);
	if (!env->cache) {
		bf_log(BF_LOG_ERR, "out of memory creating the tree-block cache");
		return -ENOMEM;
	}
	return 0;
}

void bf_env_destroy(struct bf_tree_env *env)
{
	bf_cache_free(env->cache);
	env->cache = NULL;
}
