/*
 * tests/unit/btree_cow_harness.h - what the copy-on-write B-tree tests (test_btree_cow_*.c) share: the model,
 * the test allocator, one test filesystem and the whole-tree checks.
 *
 * Owns: the model, a sorted map over a fixed key space (key index -> bytes, with a Fenwick tree for ranks);
 * the test allocator (a bitmap over one chunk where logical == physical, in a sparse file registered as a
 * one-device volume; not the real extent allocator, whose extent items tests/unit/test_extalloc_*.c and the
 * write tests check with btrfs check), which hands out the lowest free block, so freed addresses are reused at
 * once, and keeps a reference table (its stand-in for the extent tree: the owner and level tree_block_added
 * recorded, dropped by free_tree_block, restored by an abort for pinned blocks); struct ctx (volume, env,
 * allocator, transaction, tree, model) and commit: at the end of each transaction the dirty blocks are
 * finalized and written, the cache is dropped, and the whole tree is read back from the file through the
 * normal read path.
 * Key idea: check_tree walks the whole tree: every block passes bf_block_check with its parent's
 * expectations, keys ascend across leaves, parent keys equal child first keys, levels step down by one, pointer
 * generation == child generation <= parent generation, header fields are as stamped, every block is reached
 * once, none the allocator has freed, and every block it has handed out is reached; the reference table must
 * give every reachable block exactly one reference naming the block's owner and level, and name no block that
 * is not reachable; then bf_iterate must equal the model. Header-only like check.h (static inline).
 */
#ifndef BF_TEST_BTREE_COW_HARNESS_H
#define BF_TEST_BTREE_COW_HARNESS_H

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "alloc/alloc.h"
#include "btree/btree.h"
#include "util/util.h"
#include "tests/unit/check.h"

/* A check that counts only its failures (for the millions of per-item comparisons). */
#define VERIFY(cond, ...)                                                                                          \
	do {                                                                                                       \
		if (!(cond)) {                                                                                     \
			CHECK(0, __VA_ARGS__);                                                                     \
			c->broken = true;                                                                          \
		}                                                                                                  \
	} while (0)


static inline void rng_fill(uint64_t *st, uint8_t *buf, size_t len)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = (uint8_t)splitmix64(st);
}

#define SECTOR 4096u
#define BASE (1ull << 20)       /* logical == physical start of the chunk */
#define AREA (1ull << 30)       /* chunk length */
#define TREE_ID 5ull            /* the fs tree: its blocks' owner */
#define KEYSPACE (1u << 17)     /* key indices */
#define NONE UINT32_MAX

static const char *keystr(const struct bf_key *k)
{
	static char buf[4][64];
	static int i;

	i = (i + 1) % 4;
	snprintf(buf[i], sizeof(buf[i]), "(%" PRIu64 " %u %" PRIu64 ")", k->objectid, k->type, k->offset);
	return buf[i];
}

/* Key index -> key, strictly increasing: objectid, then type, then offset (64-bit values). */
static inline struct bf_key key_of(uint32_t idx)
{
	static const uint8_t types[4] = { BF_INODE_ITEM_KEY, BF_INODE_REF_KEY, BF_DIR_INDEX_KEY, BF_EXTENT_DATA_KEY };
	uint32_t off = idx & 15, type = (idx >> 4) & 3, obj = idx >> 6;

	return (struct bf_key){ 256 + 3ull * obj, types[type], off * 0x100000001ull + (off ? 7 : 0) };
}

/* ================= the model: key index -> bytes, with a Fenwick tree for ranks ================= */
/* Item data of the deep tests points into one shared random pool instead of owning memory. */
#define POOL_SIZE (1u << 17)
static uint8_t pool[POOL_SIZE + 65536];

static inline void data_free(uint8_t *d)
{
	if (d < pool || d >= pool + sizeof(pool))
		free(d);
}


struct model {
	uint32_t *size;
	uint8_t **data; /* NULL: absent (present empty items hold a 1-byte allocation) */
	int32_t *fen;   /* 1-based Fenwick tree over presence */
	uint32_t count;
};

static inline void model_init(struct model *m)
{
	m->size = calloc(KEYSPACE, sizeof(*m->size));
	m->data = calloc(KEYSPACE, sizeof(*m->data));
	m->fen = calloc(KEYSPACE + 1, sizeof(*m->fen));
	m->count = 0;
}

static inline void model_free(struct model *m)
{
	for (uint32_t i = 0; m->data && i < KEYSPACE; i++)
		data_free(m->data[i]);
	free(m->size), free(m->data), free(m->fen);
	memset(m, 0, sizeof(*m));
}

static inline void fen_add(struct model *m, uint32_t idx, int32_t d)
{
	for (uint32_t i = idx + 1; i <= KEYSPACE; i += i & (~i + 1))
		m->fen[i] += d;
}

/* Present indices below idx. */
static inline uint32_t model_rank(const struct model *m, uint32_t idx)
{
	int32_t s = 0;

	for (uint32_t i = idx; i > 0; i -= i & (~i + 1))
		s += m->fen[i];
	return (uint32_t)s;
}

/* The k-th (0-based) present index. */
static inline uint32_t model_select(const struct model *m, uint32_t k)
{
	uint32_t pos = 0;

	for (uint32_t step = KEYSPACE; step; step >>= 1) {
		if (pos + step <= KEYSPACE && (uint32_t)m->fen[pos + step] <= k) {
			pos += step;
			k -= (uint32_t)m->fen[pos];
		}
	}
	return pos;
}

static inline bool model_has(const struct model *m, uint32_t idx) { return m->data[idx] != NULL; }


/* Takes ownership of data (malloc'd, at least 1 byte). */
static inline void model_set(struct model *m, uint32_t idx, uint8_t *data, uint32_t size)
{
	if (!m->data[idx]) {
		fen_add(m, idx, 1);
		m->count++;
	}
	if (m->data[idx] != data)
		data_free(m->data[idx]);
	m->data[idx] = data;
	m->size[idx] = size;
}

static inline void model_del(struct model *m, uint32_t idx)
{
	data_free(m->data[idx]);
	m->data[idx] = NULL;
	m->size[idx] = 0;
	fen_add(m, idx, -1);
	m->count--;
}

static inline uint32_t model_succ(const struct model *m, uint32_t idx)
{
	uint32_t r = model_rank(m, idx + 1);

	return r < m->count ? model_select(m, r) : NONE;
}

static inline uint32_t model_pred(const struct model *m, uint32_t idx)
{
	uint32_t r = model_rank(m, idx);

	return r ? model_select(m, r - 1) : NONE;
}

static inline void model_copy(struct model *dst, const struct model *src)
{
	model_init(dst);
	memcpy(dst->size, src->size, KEYSPACE * sizeof(*dst->size));
	memcpy(dst->fen, src->fen, (KEYSPACE + 1) * sizeof(*dst->fen));
	dst->count = src->count;
	for (uint32_t i = 0; i < KEYSPACE; i++) {
		if (src->data[i]) {
			dst->data[i] = malloc(src->size[i] + 1);
			memcpy(dst->data[i], src->data[i], src->size[i]);
		}
	}
}

/* ================= the test allocator: one bit of state per block ================= */

enum { BLK_FREE, BLK_CUR, BLK_OLD, BLK_PINNED };

struct talloc {
	uint32_t nodesize;
	uint64_t nblocks, lowest_free;
	uint8_t *state;   /* BLK_*: CUR = handed out in this transaction, OLD = in an earlier one, PINNED = freed
			     in this transaction but still part of the committed tree */
	uint8_t *level;   /* level each handed-out block was asked for */
	/* The reference table, the fake's extent tree: what tree_block_added recorded for each block (the kernel's
	   METADATA_ITEM with its TREE_BLOCK_REF), dropped by free_tree_block. ref_owner 0: no reference. dropped_*
	   hold a committed block's reference while it is pinned, for an abort to restore. */
	uint64_t *ref_owner, *dropped_owner;
	uint8_t *ref_level, *dropped_level;
	long fail_after;  /* >= 0: fail the allocation after this many more */
	uint64_t force_next; /* nonzero: hand out this address next, whatever its state (a broken allocator) */
	uint64_t allocs, frees, added, cowed, errors;
	char last_error[160];
};

static inline void talloc_error(struct talloc *a, const char *what, uint64_t bytenr)
{
	a->errors++;
	snprintf(a->last_error, sizeof(a->last_error), "%s at %" PRIu64, what, bytenr);
}

/* Index of a handed-out address, or NONE. */
static inline uint64_t talloc_index(const struct talloc *a, uint64_t bytenr)
{
	if (bytenr < BASE || (bytenr - BASE) % a->nodesize || (bytenr - BASE) / a->nodesize >= a->nblocks)
		return NONE;
	return (bytenr - BASE) / a->nodesize;
}

static inline int ta_alloc(void *ctx, uint64_t owner, int level, uint64_t *bytenr)
{
	struct talloc *a = ctx;
	uint64_t i = a->lowest_free;

	if (a->fail_after == 0)
		return -ENOSPC;
	if (a->force_next) {
		*bytenr = a->force_next;
		a->force_next = 0;
		return 0;
	}
	if (a->fail_after > 0)
		a->fail_after--;
	if (owner != TREE_ID || level < 0 || level >= BF_MAX_LEVEL)
		talloc_error(a, "allocation with a wrong owner or level", 0);
	while (i < a->nblocks && a->state[i] != BLK_FREE)
		i++;
	if (i >= a->nblocks)
		return -ENOSPC;
	a->state[i] = BLK_CUR;
	a->level[i] = (uint8_t)level;
	a->lowest_free = i + 1;
	a->allocs++;
	*bytenr = BASE + i * a->nodesize;
	return 0;
}

static inline void ta_free(void *ctx, uint64_t bytenr, uint64_t owner, int level)
{
	struct talloc *a = ctx;
	uint64_t i = talloc_index(a, bytenr);

	a->frees++;
	if (i == NONE || owner != TREE_ID) {
		talloc_error(a, "free of an address never handed out, or by another tree", bytenr);
		return;
	}
	if (a->level[i] != level)
		talloc_error(a, "free with a level other than the block was allocated for", bytenr);
	if (a->ref_owner[i] != owner || a->ref_level[i] != level)
		talloc_error(a, "free of a block whose reference names another owner or level, or none", bytenr);
	if (a->state[i] == BLK_OLD) {
		a->dropped_owner[i] = a->ref_owner[i];
		a->dropped_level[i] = a->ref_level[i];
	}
	a->ref_owner[i] = 0;
	if (a->state[i] == BLK_CUR) {
		a->state[i] = BLK_FREE; /* never committed: reusable at once */
		if (i < a->lowest_free)
			a->lowest_free = i;
	} else if (a->state[i] == BLK_OLD) {
		a->state[i] = BLK_PINNED;
	} else {
		talloc_error(a, "double free", bytenr);
	}
}

static inline int ta_added(void *ctx, uint64_t bytenr, uint64_t owner, int level, const struct bf_key *first_key)
{
	struct talloc *a = ctx;
	uint64_t i = talloc_index(a, bytenr);

	a->added++;
	if (i == NONE || a->state[i] != BLK_CUR || a->level[i] != level || owner != TREE_ID || !first_key) {
		talloc_error(a, "tree_block_added for a block not just allocated", bytenr);
		return 0;
	}
	if (a->ref_owner[i])
		talloc_error(a, "a second reference for one block", bytenr);
	a->ref_owner[i] = owner;
	a->ref_level[i] = (uint8_t)level;
	return 0;
}

static inline int ta_cowed(void *ctx, uint64_t owner, const struct bf_block *old, const struct bf_block *cow)
{
	struct talloc *a = ctx;
	uint64_t i = talloc_index(a, old->bytenr), j = talloc_index(a, cow->bytenr);

	a->cowed++;
	if (i == NONE || j == NONE || a->state[i] == BLK_FREE || a->state[i] == BLK_PINNED ||
	    a->state[j] != BLK_CUR || owner != TREE_ID || old->level != cow->level ||
	    memcmp(old->data + sizeof(struct bf_header), cow->data + sizeof(struct bf_header),
		   a->nodesize - sizeof(struct bf_header)) != 0)
		talloc_error(a, "tree_block_cowed with a bad old or new block", old->bytenr);
	return 0;
}

static const struct bf_alloc_ops talloc_ops = { ta_alloc, ta_free, ta_added, ta_cowed };

static inline void talloc_init(struct talloc *a, uint32_t nodesize)
{
	memset(a, 0, sizeof(*a));
	a->nodesize = nodesize;
	a->nblocks = AREA / nodesize;
	a->state = calloc(a->nblocks, 1);
	a->level = malloc(a->nblocks);
	memset(a->level, 0xff, a->nblocks); /* never handed out */
	a->ref_owner = calloc(a->nblocks, sizeof(*a->ref_owner));
	a->dropped_owner = calloc(a->nblocks, sizeof(*a->dropped_owner));
	a->ref_level = calloc(a->nblocks, 1);
	a->dropped_level = calloc(a->nblocks, 1);
	a->fail_after = -1;
}

/* The transaction committed: its blocks become old, the pinned ones free. */
static inline void talloc_commit(struct talloc *a)
{
	for (uint64_t i = 0; i < a->nblocks; i++) {
		if (a->state[i] == BLK_CUR)
			a->state[i] = BLK_OLD;
		else if (a->state[i] == BLK_PINNED)
			a->state[i] = BLK_FREE;
		a->dropped_owner[i] = 0;
	}
	a->lowest_free = 0;
}

/* The transaction was aborted: its blocks are free again, the pinned ones still in use. */
static inline void talloc_abort(struct talloc *a)
{
	for (uint64_t i = 0; i < a->nblocks; i++) {
		if (a->state[i] == BLK_CUR) {
			a->state[i] = BLK_FREE;
			a->ref_owner[i] = 0;
		} else if (a->state[i] == BLK_PINNED) {
			a->state[i] = BLK_OLD;
			a->ref_owner[i] = a->dropped_owner[i];
			a->ref_level[i] = a->dropped_level[i];
		}
		a->dropped_owner[i] = 0;
	}
	a->lowest_free = 0;
}

/* ================= one test filesystem: a sparse file, a volume, an env, a tree ================= */

struct ctx {
	uint32_t nodesize;
	char path[64];
	struct bf_volume vol;
	struct bf_tree_env env;
	struct talloc al;
	struct bf_trans t;
	struct bf_root root;
	struct model m;
	uint64_t transid;
	uint64_t rng;
	uint8_t fsid[BF_FSID_SIZE], ctu[BF_UUID_SIZE];
	size_t cache_bytes;
	bool broken;   /* a check failed: stop this scenario */
	bool in_trans; /* c->t is running */
	int del_ins_len; /* ins_len of the searches before deletes: -1, or 0 (no rebalancing on the way down) */
	/* statistics */
	uint64_t ops, walks;
	unsigned max_level;
	uint64_t max_blocks;
	double min_fill; /* lowest average leaf fill seen after a commit (trees of 20 leaves or more) */
	uint8_t *seen; /* walk: times each block was reached */
};

static inline int ctx_env_init(struct ctx *c)
{
	int ret = bf_env_init(&c->env, &c->vol, c->nodesize, SECTOR, BF_CSUM_CRC32C, c->fsid, c->transid - 1,
			      c->cache_bytes);

	memcpy(c->env.chunk_tree_uuid, c->ctu, BF_UUID_SIZE);
	return ret;
}

/* Register the sparse file as a one-device volume with one single-profile chunk, logical == physical. */
static inline int vol_setup(struct ctx *c, int fd)
{
	uint8_t cbuf[sizeof(struct bf_chunk)];
	struct bf_chunk *ch = (struct bf_chunk *)cbuf;
	struct bf_dev_item di;
	char err[256] = "";
	int ret;

	memset(&di, 0, sizeof(di));
	put64(&di.devid, 1);
	put64(&di.total_bytes, BASE + AREA);
	put32(&di.sector_size, SECTOR);
	memset(di.uuid, 0xd1, BF_UUID_SIZE);
	memcpy(di.fsid, c->fsid, BF_FSID_SIZE);
	bf_vol_init(&c->vol, c->fsid, SECTOR, 1);
	ret = bf_vol_add_device(&c->vol, c->path, fd, BASE + AREA, &di, c->transid - 1, err, sizeof(err));
	if (ret) {
		printf("bf_vol_add_device: %s\n", err);
		close(fd);
		return ret;
	}
	memset(cbuf, 0, sizeof(cbuf));
	put64(&ch->length, AREA);
	put64(&ch->owner, BF_EXTENT_TREE_OBJECTID);
	put64(&ch->stripe_len, BF_STRIPE_LEN);
	put64(&ch->type, BF_BLOCK_GROUP_METADATA);
	put32(&ch->io_align, BF_STRIPE_LEN);
	put32(&ch->io_width, BF_STRIPE_LEN);
	put32(&ch->sector_size, SECTOR);
	put16(&ch->num_stripes, 1);
	put16(&ch->sub_stripes, 1);
	put64(&ch->stripe.devid, 1);
	put64(&ch->stripe.offset, BASE);
	memset(ch->stripe.dev_uuid, 0xd1, BF_UUID_SIZE);
	ret = bf_vol_add_chunk(&c->vol, BASE, ch, bf_chunk_item_size(1), err, sizeof(err));
	if (!ret)
		ret = bf_vol_resolve_devices(&c->vol, false, err, sizeof(err));
	if (ret)
		printf("volume setup: %s\n", err);
	return ret;
}

static inline int ctx_open(struct ctx *c, uint32_t nodesize, size_t cache_bytes, uint64_t rng_seed)
{
	int fd;

	memset(c, 0, sizeof(*c));
	c->nodesize = nodesize;
	c->cache_bytes = cache_bytes;
	c->rng = rng_seed;
	c->transid = 100;
	c->del_ins_len = -1;
	rng_fill(&c->rng, c->fsid, sizeof(c->fsid));
	rng_fill(&c->rng, c->ctu, sizeof(c->ctu));
	snprintf(c->path, sizeof(c->path), "/tmp/test_btree_cow.XXXXXX");
	fd = mkstemp(c->path);
	if (fd < 0 || ftruncate(fd, (off_t)(BASE + AREA)) != 0) {
		printf("cannot create a sparse file in /tmp: %s\n", strerror(errno));
		if (fd >= 0)
			close(fd), unlink(c->path);
		return -errno;
	}
	if (vol_setup(c, fd) || ctx_env_init(c)) {
		unlink(c->path);
		return -EIO;
	}
	talloc_init(&c->al, nodesize);
	model_init(&c->m);
	c->seen = calloc(c->al.nblocks, 1);
	return 0;
}

static inline void ctx_close(struct ctx *c)
{
	bf_env_destroy(&c->env);
	bf_vol_destroy(&c->vol);
	unlink(c->path);
	model_free(&c->m);
	free(c->al.state), free(c->al.level), free(c->seen);
	free(c->al.ref_owner), free(c->al.dropped_owner), free(c->al.ref_level), free(c->al.dropped_level);
}

static inline void trans_begin(struct ctx *c)
{
	bf_trans_init(&c->t, &c->env, c->transid, &talloc_ops, &c->al);
	c->in_trans = true;
}

/* ================= whole-tree checks ================= */

struct walk {
	struct ctx *c;
	bool have_last;
	struct bf_key last;
	uint64_t blocks, leaves, leaf_bytes; /* leaf_bytes: used by items (headers and data) */
	uint8_t *tmp;
};

/* Check one block against what its parent promised, then its children. */
static inline void walk_block(struct walk *w, uint64_t bytenr, int level, uint64_t gen, const struct bf_key *first,
			      uint64_t parent_gen, bool is_root)
{
	struct ctx *c = w->c;
	struct bf_block_expect exp = { gen, level, first, TREE_ID };
	uint64_t i = talloc_index(&c->al, bytenr);
	struct bf_block *b;
	char err[256] = "";
	int ret;

	VERIFY(i != NONE, "block %" PRIu64 " is outside the allocator's area", bytenr);
	if (c->broken)
		return;
	VERIFY(c->seen[i]++ == 0, "block %" PRIu64 " is reached twice", bytenr);
	VERIFY(c->al.state[i] == BLK_CUR || c->al.state[i] == BLK_OLD,
	       "block %" PRIu64 " is reachable but the allocator has it %s", bytenr,
	       c->al.state[i] == BLK_FREE ? "free" : "pinned (freed)");
	ret = bf_block_read(&c->env, bytenr, &exp, &b);
	VERIFY(ret == 0, "reading block %" PRIu64 " (level %d): %d", bytenr, level, ret);
	if (c->broken)
		return;
	w->blocks++;
	/* the full validation; blocks not yet written get their checksum computed on a copy */
	memcpy(w->tmp, b->data, c->nodesize);
	if (b->dirty_trans)
		bf_csum(BF_CSUM_CRC32C, w->tmp + BF_CSUM_SIZE, c->nodesize - BF_CSUM_SIZE, w->tmp);
	ret = bf_block_check(&c->env, bytenr, w->tmp, &exp, err, sizeof(err));
	VERIFY(ret == 0, "block %" PRIu64 " fails bf_block_check: %s", bytenr, err);
	{
		const struct bf_header *h = (const struct bf_header *)b->data;
		uint64_t flags = get64(h->flags), want = ((uint64_t)BF_MIXED_BACKREF_REV << BF_BACKREF_REV_SHIFT) |
							 (b->dirty_trans ? 0 : BF_HEADER_FLAG_WRITTEN);

		VERIFY(flags == want, "block %" PRIu64 ": header flags %#" PRIx64 ", expected %#" PRIx64, bytenr,
		       flags, want);
		VERIFY(b->owner == TREE_ID && memcmp(h->chunk_tree_uuid, c->ctu, BF_UUID_SIZE) == 0,
		       "block %" PRIu64 ": owner %" PRIu64 " or chunk_tree_uuid wrong", bytenr, b->owner);
		VERIFY(b->generation <= parent_gen && b->generation <= c->transid,
		       "block %" PRIu64 ": generation %" PRIu64 " above its parent's %" PRIu64 " or the transid",
		       bytenr, b->generation, parent_gen);
		VERIFY(b->level == 0 ? is_root || b->nritems > 0 : b->nritems > 0,
		       "block %" PRIu64 ": empty non-root leaf or empty node", bytenr);
		VERIFY(c->al.level[i] == b->level, "block %" PRIu64 ": level %u, allocated for level %u", bytenr,
		       b->level, c->al.level[i]);
		VERIFY(c->al.ref_owner[i] == b->owner && c->al.ref_level[i] == b->level,
		       "block %" PRIu64 " (owner %" PRIu64 ", level %u) is reachable, but its reference names owner "
		       "%" PRIu64 " level %u (owner 0: no reference)", bytenr, b->owner, b->level, c->al.ref_owner[i],
		       c->al.ref_level[i]);
	}
	if (b->level == 0) {
		w->leaves++;
		w->leaf_bytes += c->nodesize - sizeof(struct bf_header) - bf_leaf_free_space(&c->env, b);
	}
	for (uint32_t s = 0; s < b->nritems && !c->broken; s++) {
		if (b->level == 0) {
			struct bf_key k = bf_leaf_key(b, s);

			VERIFY(!w->have_last || bf_key_cmp(&w->last, &k) < 0,
			       "leaf %" PRIu64 " slot %u key %s is not above the previous leaf key %s", bytenr, s,
			       keystr(&k), keystr(&w->last));
			w->last = k;
			w->have_last = true;
		} else {
			struct bf_key k = bf_node_key(b, s);

			walk_block(w, bf_node_blockptr(b, s), level - 1, bf_node_ptr_gen(b, s), &k, b->generation,
				   false);
		}
	}
	bf_block_put(&c->env, b);
}

struct cmp {
	struct ctx *c;
	uint32_t rank;
};

static inline int cmp_item(void *ctx, const struct bf_key *key, const uint8_t *data, uint32_t size)
{
	struct cmp *x = ctx;
	struct ctx *c = x->c;
	uint32_t idx;
	struct bf_key want;

	VERIFY(x->rank < c->m.count, "tree item %u %s beyond the model's %u items", x->rank, keystr(key), c->m.count);
	if (c->broken)
		return 1;
	idx = model_select(&c->m, x->rank++);
	want = key_of(idx);
	VERIFY(bf_key_cmp(key, &want) == 0, "tree item %u is %s, model has %s", x->rank - 1, keystr(key),
	       keystr(&want));
	VERIFY(size == c->m.size[idx] && memcmp(data, c->m.data[idx], size) == 0,
	       "item %s: %u bytes differ from the model's %u", keystr(key), size, c->m.size[idx]);
	return c->broken ? 1 : 0;
}

/* The dirty list holds exactly blocks of this transaction that are in the tree, each once; and no block the tree
   let go of in this transaction is still cached (a lookup of its address misses). Runs after a walk. */
static inline void check_dirty(struct ctx *c, const char *when)
{
	struct bf_cache_stats before, after;
	unsigned probed = 0;

	for (size_t i = 0; i < c->t.ndirty && !c->broken; i++) {
		struct bf_block *b = c->t.dirty[i];
		uint64_t j = talloc_index(&c->al, b->bytenr);

		VERIFY(j != NONE && c->al.state[j] == BLK_CUR && c->seen[j] == 1 && b->dirty_trans == &c->t,
		       "%s: dirty block %" PRIu64 " is not a block of this transaction in the tree, or listed twice", when,
		       b->bytenr);
		if (j != NONE)
			c->seen[j] = 2;
	}
	/* a probe that no block can satisfy: a miss reads and rejects the block without caching it, a hit counts */
	bf_log_set_verbosity((enum bf_log_level)0);
	for (uint64_t j = 0; j < c->al.nblocks && probed < 64 && !c->broken; j++) {
		struct bf_block_expect never = { 0, 200, NULL, 0 };
		struct bf_block *b;

		if (c->al.state[j] != BLK_PINNED && !(c->al.state[j] == BLK_FREE && c->al.level[j] != 0xff))
			continue;
		probed++;
		bf_cache_stats(&c->env, &before);
		if (bf_block_read(&c->env, BASE + j * c->nodesize, &never, &b) == 0)
			bf_block_put(&c->env, b);
		bf_cache_stats(&c->env, &after);
		VERIFY(after.hits == before.hits, "%s: freed block %" PRIu64 " is still in the cache", when,
		       (uint64_t)(BASE + j * c->nodesize));
	}
	bf_log_set_verbosity(BF_LOG_ERR);
}

/* Walk the whole tree and compare it with the model and the allocator. */
static inline void check_tree(struct ctx *c, const char *when)
{
	struct walk w = { c, false, { 0, 0, 0 }, 0, 0, 0, malloc(c->nodesize) };
	struct bf_key lo = { 0, 0, 0 }, hi = { UINT64_MAX, 255, UINT64_MAX };
	struct cmp x = { c, 0 };
	uint64_t unreached = 0, first = NONE, stray = 0, first_stray = NONE;
	int ret;

	if (c->broken)
		return;
	memset(c->seen, 0, c->al.nblocks);
	walk_block(&w, c->root.bytenr, c->root.level, c->root.generation, NULL, c->root.generation, true);
	for (uint64_t i = 0; i < c->al.nblocks && !c->broken; i++) {
		if ((c->al.state[i] == BLK_CUR || c->al.state[i] == BLK_OLD) && !c->seen[i]) {
			unreached++;
			first = first == NONE ? i : first;
		}
		if (c->al.ref_owner[i] && !c->seen[i]) {
			stray++;
			first_stray = first_stray == NONE ? i : first_stray;
		}
	}
	if (c->in_trans)
		check_dirty(c, when);
	VERIFY(unreached == 0, "%s: %" PRIu64 " allocated blocks are not in the tree (first %" PRIu64 ")", when,
	       unreached, first == NONE ? (uint64_t)0 : (uint64_t)(BASE + first * c->nodesize));
	VERIFY(stray == 0, "%s: %" PRIu64 " references name blocks that are not in the tree (first %" PRIu64 ")",
	       when, stray, first_stray == NONE ? (uint64_t)0 : (uint64_t)(BASE + first_stray * c->nodesize));
	VERIFY(c->al.errors == 0, "%s: allocator saw %" PRIu64 " bad calls, last: %s", when, c->al.errors,
	       c->al.last_error);
	ret = bf_iterate(&c->env, &c->root, &lo, &hi, cmp_item, &x);
	VERIFY(ret == 0 && x.rank == c->m.count, "%s: bf_iterate returned %d after %u items, the model has %u", when,
	       ret, x.rank, c->m.count);
	CHECK(!c->broken, "%s: tree of %" PRIu64 " blocks, level %u, %u items equals the model", when, w.blocks,
	      c->root.level, c->m.count);
	c->walks++;
	if (w.leaves >= 20 && !c->in_trans) {
		double fill = (double)w.leaf_bytes / ((double)w.leaves * (c->nodesize - sizeof(struct bf_header)));

		c->min_fill = c->min_fill == 0 || fill < c->min_fill ? fill : c->min_fill;
	}
	if (c->root.level > c->max_level)
		c->max_level = c->root.level;
	if (w.blocks > c->max_blocks)
		c->max_blocks = w.blocks;
	free(w.tmp);
}

/* End the transaction: write its blocks, commit in the allocator, check through the cache, then drop the cache
   and check again from the file. */
static inline void commit(struct ctx *c)
{
	char when[96];
	int ret = bf_trans_write_dirty(&c->t);

	CHECK(ret == 0 && c->t.ndirty == 0, "transaction %" PRIu64 ": writing the dirty blocks: %d", c->transid, ret);
	if (ret)
		c->broken = true;
	bf_trans_destroy(&c->t);
	c->in_trans = false;
	talloc_commit(&c->al);
	c->env.super_generation = c->transid;
	snprintf(when, sizeof(when), "%uK after transaction %" PRIu64 " (cached)", c->nodesize >> 10, c->transid);
	check_tree(c, when);
	VERIFY(bf_cache_busy(&c->env) == 0, "%s: %zu cached blocks still referenced", when, bf_cache_busy(&c->env));
	bf_env_destroy(&c->env);
	c->transid++;
	ctx_env_init(c);
	c->env.super_generation = c->transid - 1;
	snprintf(when, sizeof(when), "%uK after transaction %" PRIu64 " (re-read)", c->nodesize >> 10, c->transid - 1);
	check_tree(c, when);
}

/* Random operations per node size: BTREE_COW_OPS, default 100000 (50000 under AddressSanitizer). */
static inline uint64_t cow_ops(void)
{
	uint64_t ops = 100000;
	const char *env_ops = getenv("BTREE_COW_OPS");

#ifdef __SANITIZE_ADDRESS__
	ops = 50000;
#endif
	if (env_ops && *env_ops)
		ops = strtoull(env_ops, NULL, 0);
	return ops;
}

/* Take the seed from argv[1] or the clock, print it (and ops, when the program uses them), quiet the logs of
   the failures the tests cause on purpose. */
static inline void cow_start(int argc, char **argv, uint64_t ops)
{
	check_seed = argc > 1 ? strtoull(argv[1], NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
	printf("seed %" PRIu64 " (replay with: %s %" PRIu64 ")", check_seed, argv[0], check_seed);
	if (ops)
		printf(", %" PRIu64 " operations per node size", ops);
	printf("\n");
	bf_log_set_verbosity(BF_LOG_ERR);
}

/* Fill the shared random pool that item data of the deep and shape tests points into. */
static inline void cow_fill_pool(void)
{
	uint64_t pool_rng = 1;

	rng_fill(&pool_rng, pool, sizeof(pool));
}

#endif
