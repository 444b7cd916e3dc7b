/*
 * tests/unit/test_btree_cow.c - copy-on-write B-tree modification (btree/cow.c, modify.c, balance.c, edit.c,
 * and the write-path parts of btree/cache.c) against an in-memory model.
 *
 * Owns: (1) exact leaf layout and header stamping of new, copied and finalized blocks, refusal of an address
 * still in use and of writing a malformed block, abort; (2) a seeded random workload per node size (4K, 16K,
 * 64K): inserts (single, batches, at random places, ascending and descending runs, existing keys), deletes
 * (single and slot ranges, with and without rebalancing on the way down), extends, truncates (from the end and
 * the front), in-place overwrites and key changes, with items of 0 to ~nodesize/4 bytes and a few near the
 * largest item size, in transactions whose transid rises, so blocks of older generations get copied and blocks
 * of the running one change in place (some transactions also write in the middle, so their own blocks get
 * copied again); the tree grows and shrinks through levels and ends empty; arguments that must be refused;
 * (3) shapes random work rarely makes (ascending fill, a hole next to full nodes, deleting without
 * rebalancing), and deep trees: 4K nodes to level 3, 64K nodes to level 2, built and torn down; (4) allocation
 * failures in the middle of transactions, aborted, leaving the committed tree intact.
 * The model is a sorted map over a fixed key space (key index -> bytes). After every operation the keys it
 * touched are looked up; periodically and after every transaction the whole tree is walked: every block
 * passes bf_block_check with its parent's expectations, keys ascend across leaves, parent keys equal child
 * first keys, levels step down by one, pointer generation == child generation <= parent generation, header
 * fields are as stamped, every block is reached once, none the allocator has freed, and every block it has
 * handed out is reached; the test allocator's reference table (its stand-in for the extent tree: the owner
 * and level tree_block_added recorded, dropped by free_tree_block, restored by an abort for pinned blocks)
 * must give every reachable block exactly one reference naming the block's owner and level, and name no block
 * that is not reachable; then bf_iterate must equal the model. The test allocator (a bitmap over one chunk
 * where logical == physical, in a sparse file registered as a one-device volume; not the real extent
 * allocator, whose extent items tests/unit/test_extalloc.c and the write tests check with btrfs check) hands
 * out the lowest free block, so freed addresses are reused at once. At the end of each transaction the dirty blocks are finalized and
 * written, the cache is dropped, and the whole tree is read back from the file through the normal read path.
 * Random parts print their seed; pass a seed as argv[1] to replay. BTREE_COW_OPS sets the number of random
 * operations per node size (default 100000, 50000 under AddressSanitizer). Ends with "N passed, N failed".
 */
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

static uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static uint64_t rng_next(uint64_t *st) { return mix64(*st += 0x9E3779B97F4A7C15ull); }
static uint64_t rng_below(uint64_t *st, uint64_t n) { return n ? rng_next(st) % n : 0; }

static void rng_fill(uint64_t *st, uint8_t *buf, size_t len)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = (uint8_t)rng_next(st);
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
static struct bf_key key_of(uint32_t idx)
{
	static const uint8_t types[4] = { BF_INODE_ITEM_KEY, BF_INODE_REF_KEY, BF_DIR_INDEX_KEY, BF_EXTENT_DATA_KEY };
	uint32_t off = idx & 15, type = (idx >> 4) & 3, obj = idx >> 6;

	return (struct bf_key){ 256 + 3ull * obj, types[type], off * 0x100000001ull + (off ? 7 : 0) };
}

/* ================= the model: key index -> bytes, with a Fenwick tree for ranks ================= */
/* Item data of the deep tests points into one shared random pool instead of owning memory. */
#define POOL_SIZE (1u << 17)
static uint8_t pool[POOL_SIZE + 65536];

static void data_free(uint8_t *d)
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

static void model_init(struct model *m)
{
	m->size = calloc(KEYSPACE, sizeof(*m->size));
	m->data = calloc(KEYSPACE, sizeof(*m->data));
	m->fen = calloc(KEYSPACE + 1, sizeof(*m->fen));
	m->count = 0;
}

static void model_free(struct model *m)
{
	for (uint32_t i = 0; m->data && i < KEYSPACE; i++)
		data_free(m->data[i]);
	free(m->size), free(m->data), free(m->fen);
	memset(m, 0, sizeof(*m));
}

static void fen_add(struct model *m, uint32_t idx, int32_t d)
{
	for (uint32_t i = idx + 1; i <= KEYSPACE; i += i & (~i + 1))
		m->fen[i] += d;
}

/* Present indices below idx. */
static uint32_t model_rank(const struct model *m, uint32_t idx)
{
	int32_t s = 0;

	for (uint32_t i = idx; i > 0; i -= i & (~i + 1))
		s += m->fen[i];
	return (uint32_t)s;
}

/* The k-th (0-based) present index. */
static uint32_t model_select(const struct model *m, uint32_t k)
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

static bool model_has(const struct model *m, uint32_t idx) { return m->data[idx] != NULL; }


/* Takes ownership of data (malloc'd, at least 1 byte). */
static void model_set(struct model *m, uint32_t idx, uint8_t *data, uint32_t size)
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

static void model_del(struct model *m, uint32_t idx)
{
	data_free(m->data[idx]);
	m->data[idx] = NULL;
	m->size[idx] = 0;
	fen_add(m, idx, -1);
	m->count--;
}

static uint32_t model_succ(const struct model *m, uint32_t idx)
{
	uint32_t r = model_rank(m, idx + 1);

	return r < m->count ? model_select(m, r) : NONE;
}

static uint32_t model_pred(const struct model *m, uint32_t idx)
{
	uint32_t r = model_rank(m, idx);

	return r ? model_select(m, r - 1) : NONE;
}

static void model_copy(struct model *dst, const struct model *src)
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

static void talloc_error(struct talloc *a, const char *what, uint64_t bytenr)
{
	a->errors++;
	snprintf(a->last_error, sizeof(a->last_error), "%s at %" PRIu64, what, bytenr);
}

/* Index of a handed-out address, or NONE. */
static uint64_t talloc_index(const struct talloc *a, uint64_t bytenr)
{
	if (bytenr < BASE || (bytenr - BASE) % a->nodesize || (bytenr - BASE) / a->nodesize >= a->nblocks)
		return NONE;
	return (bytenr - BASE) / a->nodesize;
}

static int ta_alloc(void *ctx, uint64_t owner, int level, uint64_t *bytenr)
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

static void ta_free(void *ctx, uint64_t bytenr, uint64_t owner, int level)
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

static int ta_added(void *ctx, uint64_t bytenr, uint64_t owner, int level, const struct bf_key *first_key)
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

static int ta_cowed(void *ctx, uint64_t owner, const struct bf_block *old, const struct bf_block *cow)
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

static void talloc_init(struct talloc *a, uint32_t nodesize)
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
static void talloc_commit(struct talloc *a)
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
static void talloc_abort(struct talloc *a)
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

static int ctx_env_init(struct ctx *c)
{
	int ret = bf_env_init(&c->env, &c->vol, c->nodesize, SECTOR, BF_CSUM_CRC32C, c->fsid, c->transid - 1,
			      c->cache_bytes);

	memcpy(c->env.chunk_tree_uuid, c->ctu, BF_UUID_SIZE);
	return ret;
}

/* Register the sparse file as a one-device volume with one single-profile chunk, logical == physical. */
static int vol_setup(struct ctx *c, int fd)
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

static int ctx_open(struct ctx *c, uint32_t nodesize, size_t cache_bytes, uint64_t rng_seed)
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

static void ctx_close(struct ctx *c)
{
	bf_env_destroy(&c->env);
	bf_vol_destroy(&c->vol);
	unlink(c->path);
	model_free(&c->m);
	free(c->al.state), free(c->al.level), free(c->seen);
	free(c->al.ref_owner), free(c->al.dropped_owner), free(c->al.ref_level), free(c->al.dropped_level);
}

static void trans_begin(struct ctx *c)
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
static void walk_block(struct walk *w, uint64_t bytenr, int level, uint64_t gen, const struct bf_key *first,
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

static int cmp_item(void *ctx, const struct bf_key *key, const uint8_t *data, uint32_t size)
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
static void check_dirty(struct ctx *c, const char *when)
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
static void check_tree(struct ctx *c, const char *when)
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
static void commit(struct ctx *c)
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

/* ================= operations ================= */

/* Look key idx up through the read path and compare with the model. */
static void spot_check(struct ctx *c, uint32_t idx, const char *op)
{
	struct bf_key k = key_of(idx), found;
	struct bf_path p;
	uint32_t size;
	const uint8_t *data;
	int ret;

	bf_path_init(&p, &c->env);
	ret = bf_search(&c->env, &c->root, &k, &p);
	if (model_has(&c->m, idx)) {
		data = bf_path_item(&p, &size);
		VERIFY(ret == 0 && size == c->m.size[idx] && memcmp(data, c->m.data[idx], size) == 0,
		       "op %" PRIu64 " (%s): key %s: search %d, %u bytes, model %u bytes", c->ops, op, keystr(&k), ret,
		       size, c->m.size[idx]);
	} else {
		found = bf_path_key(&p);
		VERIFY(ret == 1 || (ret == 0 && bf_key_cmp(&found, &k) != 0),
		       "op %" PRIu64 " (%s): key %s should be absent: search %d", c->ops, op, keystr(&k), ret);
	}
	bf_path_release(&p);
}

/* Item sizes: mostly small, some up to nodesize/16 and nodesize/4, rarely near the largest. */
static uint32_t pick_size(struct ctx *c)
{
	uint32_t max = bf_max_item_size(&c->env);
	uint64_t r = rng_below(&c->rng, 1000);

	if (r < 600)
		return (uint32_t)rng_below(&c->rng, 33);
	if (r < 900)
		return (uint32_t)rng_below(&c->rng, c->nodesize / 16 + 1);
	if (r < 998)
		return (uint32_t)rng_below(&c->rng, c->nodesize / 4 + 1);
	return max - (uint32_t)rng_below(&c->rng, 65);
}

static uint8_t *random_bytes(struct ctx *c, uint32_t size)
{
	uint8_t *d = malloc(size + 1);

	rng_fill(&c->rng, d, size);
	return d;
}

/* A free key index: at random, or continuing an ascending or a descending run. */
static uint32_t pick_free(struct ctx *c, uint32_t *asc, uint32_t *desc)
{
	uint64_t r = rng_below(&c->rng, 100);
	uint32_t idx;

	for (int tries = 0; tries < 64; tries++) {
		if (r < 45)
			idx = (uint32_t)rng_below(&c->rng, KEYSPACE);
		else if (r < 80)
			idx = *asc = (*asc + 1) % KEYSPACE;
		else
			idx = *desc = (*desc + KEYSPACE - 1) % KEYSPACE;
		if (!model_has(&c->m, idx))
			return idx;
	}
	return NONE;
}

static uint32_t pick_present(struct ctx *c)
{
	return c->m.count ? model_select(&c->m, (uint32_t)rng_below(&c->rng, c->m.count)) : NONE;
}

static void op_insert(struct ctx *c, uint32_t idx)
{
	struct bf_key k = key_of(idx);
	uint32_t size = pick_size(c);
	uint8_t *data = random_bytes(c, size);
	bool had = model_has(&c->m, idx);
	int ret = bf_insert_item(&c->t, &c->root, &k, data, size);

	if (had) {
		VERIFY(ret == -EEXIST, "op %" PRIu64 ": insert of existing %s returned %d", c->ops, keystr(&k), ret);
		free(data);
	} else {
		VERIFY(ret == 0, "op %" PRIu64 ": insert %s (%u bytes) returned %d", c->ops, keystr(&k), size, ret);
		model_set(&c->m, idx, data, size);
	}
	spot_check(c, idx, "insert");
}

/* Up to 8 items at consecutive free indices, in one call. */
static void op_insert_batch(struct ctx *c, uint32_t idx)
{
	struct bf_key keys[8];
	uint32_t sizes[8], n = 0, want = 1 + (uint32_t)rng_below(&c->rng, 8);
	struct bf_path p;
	int ret;

	while (n < want && idx + n < KEYSPACE && !model_has(&c->m, idx + n)) {
		keys[n] = key_of(idx + n);
		sizes[n] = (uint32_t)rng_below(&c->rng, c->nodesize / 32);
		n++;
	}
	bf_path_init(&p, &c->env);
	ret = bf_insert_empty_items(&c->t, &c->root, &p, keys, sizes, n);
	VERIFY(ret == 0, "op %" PRIu64 ": insert of %u items from %s returned %d", c->ops, n, keystr(&keys[0]), ret);
	for (uint32_t i = 0; i < n && ret == 0; i++) {
		uint32_t size;
		uint8_t *dst = bf_path_item_mut_at(&c->t, &p, i, &size), *data = random_bytes(c, sizes[i]);

		VERIFY(dst && size == sizes[i], "op %" PRIu64 ": batch item %u has %u bytes, wanted %u", c->ops, i, size,
		       sizes[i]);
		if (dst && size == sizes[i])
			memcpy(dst, data, size);
		model_set(&c->m, idx + i, data, sizes[i]);
	}
	VERIFY(ret || bf_path_item_mut_at(&c->t, &p, p.nodes[0]->nritems - p.slots[0], NULL) == NULL,
	       "op %" PRIu64 ": a writable item past the leaf's end", c->ops);
	bf_path_release(&p);
	for (uint32_t i = 0; i < n; i++)
		spot_check(c, idx + i, "insert batch");
}

/* Delete the item at idx and up to range - 1 following items of its leaf. */
static void op_delete(struct ctx *c, uint32_t idx, uint32_t range)
{
	struct bf_key k = key_of(idx);
	struct bf_path p;
	uint32_t nr, gone[8];
	int ret;

	bf_path_init(&p, &c->env);
	ret = bf_search_slot(&c->t, &c->root, &k, c->del_ins_len, true, &p);
	VERIFY(ret == 0, "op %" PRIu64 ": search to delete %s returned %d", c->ops, keystr(&k), ret);
	if (ret) {
		bf_path_release(&p);
		return;
	}
	nr = p.nodes[0]->nritems - p.slots[0];
	nr = nr < range ? nr : range;
	ret = bf_del_items(&c->t, &c->root, &p, p.slots[0], nr);
	VERIFY(ret == 0 && !p.nodes[0], "op %" PRIu64 ": delete %u items from %s returned %d", c->ops, nr, keystr(&k),
	       ret);
	for (uint32_t i = 0; i < nr; i++) {
		gone[i] = idx;
		idx = model_succ(&c->m, idx);
		model_del(&c->m, gone[i]);
	}
	for (uint32_t i = 0; i < nr; i++)
		spot_check(c, gone[i], "delete");
}

static uint32_t pick_growth(struct ctx *c, uint32_t size)
{
	uint32_t max = bf_max_item_size(&c->env);
	uint64_t r = rng_below(&c->rng, 100);

	if (r < 70)
		return 1 + (uint32_t)rng_below(&c->rng, 64);
	if (r < 95)
		return 1 + (uint32_t)rng_below(&c->rng, c->nodesize / 8);
	/* to about the largest size: some fit, some overflow */
	int64_t g = (int64_t)max - size - 16 + (int64_t)rng_below(&c->rng, 33);

	return g > 0 ? (uint32_t)g : 1;
}

static void op_extend(struct ctx *c, uint32_t idx)
{
	struct bf_key k = key_of(idx);
	uint32_t size = c->m.size[idx], grow = pick_growth(c, size), got;
	bool overflow = (uint64_t)size + grow > bf_max_item_size(&c->env);
	struct bf_path p;
	uint8_t *dst, *data;
	int ret;

	bf_path_init(&p, &c->env);
	ret = bf_search_slot(&c->t, &c->root, &k, (int)grow, true, &p);
	if (overflow) {
		VERIFY(ret == -EOVERFLOW, "op %" PRIu64 ": extend %s from %u by %u: search returned %d", c->ops,
		       keystr(&k), size, grow, ret);
		bf_path_release(&p);
		spot_check(c, idx, "extend overflow");
		return;
	}
	VERIFY(ret == 0, "op %" PRIu64 ": search to extend %s by %u returned %d", c->ops, keystr(&k), grow, ret);
	if (!ret)
		ret = bf_extend_item(&c->t, &p, grow);
	VERIFY(ret == 0, "op %" PRIu64 ": extend %s from %u by %u returned %d", c->ops, keystr(&k), size, grow, ret);
	dst = bf_path_item_mut(&c->t, &p, &got);
	if (!ret && dst && got == size + grow) {
		bool zero = true;

		for (uint32_t i = size; i < got; i++)
			zero &= dst[i] == 0;
		VERIFY(zero && memcmp(dst, c->m.data[idx], size) == 0,
		       "op %" PRIu64 ": extended item %s lost its data or the new bytes are not zero", c->ops, keystr(&k));
		data = malloc(got + 1);
		memcpy(data, c->m.data[idx], size);
		rng_fill(&c->rng, data + size, grow);
		memcpy(dst + size, data + size, grow);
		model_set(&c->m, idx, data, got);
	} else if (!ret) {
		VERIFY(0, "op %" PRIu64 ": extended item %s has %u bytes, wanted %u", c->ops, keystr(&k), got,
		       size + grow);
	}
	bf_path_release(&p);
	spot_check(c, idx, "extend");
}

static void op_truncate(struct ctx *c, uint32_t idx)
{
	struct bf_key k = key_of(idx);
	uint32_t size = c->m.size[idx], nsize = (uint32_t)rng_below(&c->rng, size + 1);
	bool from_end = rng_below(&c->rng, 2);
	struct bf_path p;
	uint8_t *data;
	int ret;

	bf_path_init(&p, &c->env);
	ret = bf_search_slot(&c->t, &c->root, &k, 0, true, &p);
	if (!ret)
		ret = bf_truncate_item(&c->t, &p, nsize, from_end);
	VERIFY(ret == 0, "op %" PRIu64 ": truncate %s from %u to %u returned %d", c->ops, keystr(&k), size, nsize,
	       ret);
	bf_path_release(&p);
	data = malloc(nsize + 1);
	memcpy(data, c->m.data[idx] + (from_end ? 0 : size - nsize), nsize);
	model_set(&c->m, idx, data, nsize);
	spot_check(c, idx, from_end ? "truncate end" : "truncate front");
}

static void op_overwrite(struct ctx *c, uint32_t idx)
{
	struct bf_key k = key_of(idx);
	struct bf_path p;
	uint32_t size;
	uint8_t *dst;
	int ret;

	bf_path_init(&p, &c->env);
	ret = bf_search_slot(&c->t, &c->root, &k, 0, true, &p);
	dst = bf_path_item_mut(&c->t, &p, &size);
	VERIFY(ret == 0 && dst && size == c->m.size[idx], "op %" PRIu64 ": overwrite %s: search %d", c->ops,
	       keystr(&k), ret);
	if (!c->broken) {
		rng_fill(&c->rng, c->m.data[idx], size);
		memcpy(dst, c->m.data[idx], size);
	}
	bf_path_release(&p);
	spot_check(c, idx, "overwrite");
}

/* Move the item at idx to a free key between its neighbours; sometimes try the next key (must fail). */
static void op_rekey(struct ctx *c, uint32_t idx)
{
	uint32_t pred = model_pred(&c->m, idx), succ = model_succ(&c->m, idx), lo, hi, to;
	struct bf_key k = key_of(idx), nk;
	int bad = rng_below(&c->rng, 10) == 0 ? 1 + (int)rng_below(&c->rng, 2) : 0; /* 1: next key, 2: previous */
	struct bf_path p;
	int ret;

	lo = pred == NONE ? 0 : pred + 1;
	hi = succ == NONE ? KEYSPACE : succ;
	if ((bad == 1 && succ == NONE) || (bad == 2 && pred == NONE) || (!bad && hi - lo < 2))
		return;
	to = bad == 1 ? succ : bad == 2 ? pred : lo + (uint32_t)rng_below(&c->rng, hi - lo);
	if (to == idx)
		return;
	nk = key_of(to);
	bf_path_init(&p, &c->env);
	ret = bf_search_slot(&c->t, &c->root, &k, 0, true, &p);
	if (bad == 2 && !ret && p.slots[0] == 0) {
		/* the previous key is in the previous leaf: the caller's duty, not checked */
		bf_path_release(&p);
		return;
	}
	if (!ret)
		ret = bf_set_item_key(&c->t, &p, &nk);
	bf_path_release(&p);
	if (bad) {
		VERIFY(ret == -EINVAL, "op %" PRIu64 ": rekey %s onto the %s key %s returned %d", c->ops, keystr(&k),
		       bad == 1 ? "next" : "previous", keystr(&nk), ret);
		return;
	}
	VERIFY(ret == 0, "op %" PRIu64 ": rekey %s to %s returned %d", c->ops, keystr(&k), keystr(&nk), ret);
	model_set(&c->m, to, c->m.data[idx], c->m.size[idx]);
	c->m.data[idx] = NULL; /* moved, not freed */
	fen_add(&c->m, idx, -1);
	c->m.count--;
	spot_check(c, idx, "rekey (old key)");
	spot_check(c, to, "rekey (new key)");
}

/* Operation mix (percent): insert, batch insert, delete, range delete, extend, truncate, overwrite, rekey. */
struct mix {
	unsigned pct[8];
};

static const struct mix GROW = { { 55, 8, 12, 2, 8, 7, 4, 4 } };
static const struct mix CHURN = { { 35, 5, 30, 4, 10, 8, 4, 4 } };
static const struct mix SHRINK = { { 10, 2, 55, 15, 6, 6, 3, 3 } };

static void one_op(struct ctx *c, const struct mix *mx, uint32_t *asc, uint32_t *desc)
{
	uint64_t r = rng_below(&c->rng, 100);
	unsigned kind = 0, acc = mx->pct[0];
	uint32_t idx;

	while (r >= acc && kind < 7)
		acc += mx->pct[++kind];
	if (c->m.count == 0 && kind >= 2)
		kind = 0;
	c->ops++;
	switch (kind) {
	case 0:
		idx = rng_below(&c->rng, 50) == 0 ? pick_present(c) : pick_free(c, asc, desc);
		if (idx != NONE)
			op_insert(c, idx);
		break;
	case 1:
		idx = pick_free(c, asc, desc);
		if (idx != NONE)
			op_insert_batch(c, idx);
		break;
	case 2:
	case 3:
		c->del_ins_len = rng_below(&c->rng, 5) ? -1 : 0;
		op_delete(c, pick_present(c), kind == 2 ? 1 : 2 + (uint32_t)rng_below(&c->rng, 7));
		c->del_ins_len = -1;
		break;
	case 4:
		op_extend(c, pick_present(c));
		break;
	case 5:
		op_truncate(c, pick_present(c));
		break;
	case 6:
		op_overwrite(c, pick_present(c));
		break;
	default:
		op_rekey(c, pick_present(c));
		break;
	}
}

/* Arguments that must be refused before anything changes. */
static void check_refusals(struct ctx *c)
{
	uint32_t max = bf_max_item_size(&c->env), idx = pick_present(c), sizes[2] = { 1, 1 }, size;
	struct bf_key k = key_of(idx == NONE ? 0 : idx), keys[2] = { key_of(KEYSPACE - 1), key_of(KEYSPACE - 2) };
	struct bf_path p;
	uint8_t *big = calloc(1, max + 1);
	int ret;

	bf_log_set_verbosity((enum bf_log_level)0); /* the refusals log, as they should */
	bf_path_init(&p, &c->env);
	if (idx != NONE) {
		/* at the start of a transaction no block is changeable yet */
		ret = bf_search_slot(&c->t, &c->root, &k, 0, false, &p);
		CHECK(ret == 0, "read-only bf_search_slot for %s returned %d", keystr(&k), ret);
		ret = bf_del_items(&c->t, &c->root, &p, p.slots[0], 1);
		CHECK(ret == -EINVAL && !p.nodes[0], "delete through a path searched without cow returned %d", ret);
		ret = bf_search_slot(&c->t, &c->root, &k, 1, false, &p);
		CHECK(ret == -EINVAL, "insert search without cow returned %d", ret);
		ret = bf_search_slot(&c->t, &c->root, &k, 0, false, &p);
		CHECK(ret == 0 && bf_path_item_mut(&c->t, &p, &size) == NULL && size == 0,
		      "no writable item through a path searched without cow");
		bf_path_release(&p);
	}
	ret = bf_insert_item(&c->t, &c->root, &keys[0], big, max + 1);
	CHECK(ret == -EOVERFLOW, "insert of %u bytes (max %u) returned %d", max + 1, max, ret);
	ret = bf_insert_item(&c->t, &c->root, &keys[0], big, max);
	CHECK(ret == 0 || ret == -EEXIST, "insert of the largest item (%u bytes) returned %d", max, ret);
	if (ret == 0)
		model_set(&c->m, KEYSPACE - 1, big, max);
	else
		free(big);
	ret = bf_insert_empty_items(&c->t, &c->root, &p, keys, sizes, 2);
	CHECK(ret == -EINVAL, "insert of a batch with descending keys returned %d", ret);
	bf_path_release(&p);
	for (int i = 0; i < 20 && idx != NONE; i++) {
		/* a batch whose second key is the next item's: -EEXIST, the tree unchanged */
		uint32_t f = (uint32_t)rng_below(&c->rng, KEYSPACE), nx = model_succ(&c->m, f);

		if (model_has(&c->m, f) || nx == NONE)
			continue;
		keys[0] = key_of(f);
		keys[1] = key_of(nx);
		ret = bf_insert_empty_items(&c->t, &c->root, &p, keys, sizes, 2);
		CHECK(ret == -EEXIST, "insert of a batch colliding with %s returned %d", keystr(&keys[1]), ret);
		bf_path_release(&p);
		spot_check(c, f, "colliding batch");
		spot_check(c, nx, "colliding batch");
	}
	if (idx != NONE) {
		uint32_t room;

		ret = bf_search_slot(&c->t, &c->root, &k, 0, true, &p);
		room = ret == 0 ? bf_leaf_free_space(&c->env, p.nodes[0]) : 0;
		bf_leaf_item(p.nodes[0], p.slots[0], &size);
		ret = ret ? ret : bf_extend_item(&c->t, &p, room + 1);
		CHECK(ret == ((uint64_t)size + room + 1 > max ? -EOVERFLOW : -EINVAL),
		      "extend beyond the leaf's free space returned %d", ret);
		ret = bf_truncate_item(&c->t, &p, size + 1, true);
		CHECK(ret == -EINVAL, "truncate to a larger size returned %d", ret);
		bf_path_release(&p);
		spot_check(c, idx, "refusals");
	}
	bf_log_set_verbosity(BF_LOG_ERR);
}

/* Run ops random operations in ntrans transactions: growing, churning, then shrinking, and at last empty the
   tree and fill it a little again. */
static void workload(struct ctx *c, uint64_t ops, unsigned ntrans)
{
	uint32_t asc = (uint32_t)rng_below(&c->rng, KEYSPACE), desc = (uint32_t)rng_below(&c->rng, KEYSPACE);
	uint64_t per = ops / ntrans, check_every = per / 4 + 1;

	trans_begin(c);
	CHECK(bf_tree_create(&c->t, TREE_ID, &c->root) == 0, "creating an empty tree");
	check_tree(c, "empty tree");
	for (unsigned n = 0; n < ntrans && !c->broken; n++) {
		const struct mix *mx = n < ntrans * 2 / 5 ? &GROW : n < ntrans * 7 / 10 ? &CHURN : &SHRINK;

		if (n > 0)
			trans_begin(c);
		if (n == ntrans / 2)
			check_refusals(c);
		for (uint64_t i = 0; i < per && !c->broken; i++) {
			one_op(c, mx, &asc, &desc);
			if ((i + 1) % check_every == 0)
				check_tree(c, "during a transaction");
			if (n % 3 == 1 && i == per / 2) {
				/* written in the middle: blocks of this transaction must be copied again */
				CHECK(bf_trans_write_dirty(&c->t) == 0, "writing in the middle of a transaction");
			}
		}
		commit(c);
	}
	/* empty the tree, from both ends and the middle */
	trans_begin(c);
	while (c->m.count && !c->broken) {
		uint32_t r = (uint32_t)rng_below(&c->rng, 3);
		uint32_t idx = r == 0 ? model_select(&c->m, 0) : r == 1 ? model_select(&c->m, c->m.count - 1)
								  : pick_present(c);

		c->ops++;
		op_delete(c, idx, 1 + (uint32_t)rng_below(&c->rng, 8));
	}
	commit(c);
	CHECK(c->root.level == 0 || c->broken, "an emptied tree has a root leaf (level %u)", c->root.level);
	trans_begin(c);
	for (int i = 0; i < 200 && !c->broken; i++)
		one_op(c, &GROW, &asc, &desc);
	commit(c);
}

/* ================= scenarios ================= */

/* (1) exact layout and header fields of new, copied and finalized blocks. */
static void test_layout(uint64_t rng_seed)
{
	struct ctx c0, *c = &c0;
	struct bf_key a = key_of(10), b = key_of(20), d = key_of(30);
	uint32_t lds, off, size;
	struct bf_path p;
	struct bf_block *leaf;
	const uint8_t *data;
	uint64_t first_root;
	const struct bf_header *h;

	if (ctx_open(c, 4096, 1 << 20, rng_seed)) {
		CHECK(0, "cannot set up a test volume");
		return;
	}
	lds = 4096 - (uint32_t)sizeof(struct bf_header);
	trans_begin(c);
	CHECK(bf_tree_create(&c->t, TREE_ID, &c->root) == 0 && c->root.level == 0 && c->root.generation == 100,
	      "empty tree created at generation 100");
	CHECK(bf_insert_item(&c->t, &c->root, &b, "bbbbbbbbbbbbbbbbbbbb", 20) == 0 &&
		      bf_insert_item(&c->t, &c->root, &a, "aaaaaaaaaa", 10) == 0 &&
		      bf_insert_item(&c->t, &c->root, &d, "ddddd", 5) == 0,
	      "three inserts");
	CHECK(c->al.allocs == 1, "inserts into a block of the running transaction change it in place (%" PRIu64
	      " allocations)", c->al.allocs);
	CHECK(bf_block_read(&c->env, c->root.bytenr, NULL, &leaf) == 0, "reading the root leaf");
	for (uint32_t s = 0; s < 3; s++) {
		static const uint32_t want_off[3] = { 10, 30, 35 }, want_size[3] = { 10, 20, 5 };

		data = bf_leaf_item(leaf, s, &size);
		off = (uint32_t)(data - leaf->data - sizeof(struct bf_header));
		CHECK(off == lds - want_off[s] && size == want_size[s], "slot %u at offset %u size %u, expected %u %u", s,
		      off, size, lds - want_off[s], want_size[s]);
	}
	h = (const struct bf_header *)leaf->data;
	CHECK(get64(h->flags) == (uint64_t)BF_MIXED_BACKREF_REV << BF_BACKREF_REV_SHIFT && get64(h->owner) == TREE_ID &&
		      get64(h->bytenr) == c->root.bytenr && get64(h->generation) == 100 && h->level == 0 &&
		      get32(h->nritems) == 3 && memcmp(h->fsid, c->fsid, BF_FSID_SIZE) == 0 &&
		      memcmp(h->chunk_tree_uuid, c->ctu, BF_UUID_SIZE) == 0,
	      "new block header: flags, owner, bytenr, generation, level, nritems, fsid, chunk_tree_uuid");
	bf_block_put(&c->env, leaf);
	/* extend the middle item, truncate the first from the front and the last from the end */
	bf_path_init(&p, &c->env);
	CHECK(bf_search_slot(&c->t, &c->root, &b, 4, true, &p) == 0 && bf_extend_item(&c->t, &p, 4) == 0,
	      "extend the middle item");
	data = bf_path_item(&p, &size);
	CHECK(size == 24 && memcmp(data, "bbbbbbbbbbbbbbbbbbbb\0\0\0\0", 24) == 0 &&
		      data - p.nodes[0]->data - sizeof(struct bf_header) == lds - 34,
	      "extended item keeps its data, gains zeroes, starts at %u", lds - 34);
	p.slots[0] = 0;
	CHECK(bf_truncate_item(&c->t, &p, 3, false) == 0, "truncate the first item from the front");
	data = bf_path_item(&p, &size);
	CHECK(size == 3 && memcmp(data, "aaa", 3) == 0 && data - p.nodes[0]->data - sizeof(struct bf_header) ==
									 lds - 3,
	      "front truncation keeps the tail in place");
	p.slots[0] = 2;
	CHECK(bf_truncate_item(&c->t, &p, 2, true) == 0, "truncate the last item from the end");
	data = bf_path_item(&p, &size);
	CHECK(size == 2 && memcmp(data, "dd", 2) == 0 && data - p.nodes[0]->data - sizeof(struct bf_header) ==
									 lds - 3 - 24 - 2,
	      "end truncation keeps the head, packed");
	bf_path_release(&p);
	model_set(&c->m, 10, (uint8_t *)strdup("aaa"), 3);
	model_set(&c->m, 20, memcpy(malloc(24), "bbbbbbbbbbbbbbbbbbbb\0\0\0\0", 24), 24);
	model_set(&c->m, 30, (uint8_t *)strdup("dd"), 2);
	/* finalize: WRITTEN and a valid checksum; the next transaction copies the block */
	CHECK(bf_trans_write_dirty(&c->t) == 0, "writing the first transaction");
	bf_trans_destroy(&c->t);
	talloc_commit(&c->al);
	c->env.super_generation = c->transid++;
	first_root = c->root.bytenr;
	CHECK(bf_block_read(&c->env, first_root, NULL, &leaf) == 0, "reading the written root");
	h = (const struct bf_header *)leaf->data;
	CHECK(get64(h->flags) == (BF_HEADER_FLAG_WRITTEN | (uint64_t)BF_MIXED_BACKREF_REV << BF_BACKREF_REV_SHIFT) &&
		      bf_block_check(&c->env, first_root, leaf->data, NULL, NULL, 0) == 0,
	      "a finalized block has WRITTEN set and a valid checksum");
	bf_block_put(&c->env, leaf);
	trans_begin(c);
	bf_path_init(&p, &c->env);
	CHECK(bf_search_slot(&c->t, &c->root, &a, 0, true, &p) == 0, "search with cow in transaction 101");
	CHECK(c->root.bytenr != first_root && c->root.generation == 101 && p.nodes[0]->generation == 101 &&
		      c->al.state[(first_root - BASE) / 4096] == BLK_PINNED && c->al.cowed == 1,
	      "the old root was copied: new address, generation 101, old one pinned");
	bf_path_release(&p);
	check_tree(c, "layout test");
	/* an allocator handing out the address of a block this transaction still owns is refused */
	c->al.force_next = c->root.bytenr;
	bf_log_set_verbosity((enum bf_log_level)0);
	{
		struct bf_root r = c->root;

		CHECK(bf_tree_create(&c->t, TREE_ID, &r) == -EUCLEAN && r.bytenr == c->root.bytenr,
		      "a new block at an address still in use is refused");
	}
	/* a malformed block is never written */
	CHECK(bf_block_read(&c->env, c->root.bytenr, NULL, &leaf) == 0 && leaf->dirty_trans == &c->t,
	      "the copied root is a dirty block");
	put32(&((struct bf_item *)(leaf->data + sizeof(struct bf_header)))->size, 4);
	CHECK(bf_trans_write_dirty(&c->t) == -EUCLEAN && c->t.ndirty == 1, "a malformed dirty block is not written");
	bf_block_put(&c->env, leaf);
	bf_log_set_verbosity(BF_LOG_ERR);
	/* after an abort the committed tree is what the cache and the file show */
	bf_trans_abort(&c->t);
	bf_trans_destroy(&c->t);
	talloc_abort(&c->al);
	c->root = (struct bf_root){ TREE_ID, first_root, 100, 0 };
	check_tree(c, "after an abort");
	ctx_close(c);
}

/* (2) the random workload at one node size. */
static void test_workload(uint32_t nodesize, uint64_t ops, uint64_t rng_seed)
{
	struct ctx c0, *c = &c0;
	struct timespec t0, t1;

	if (ctx_open(c, nodesize, 4u << 20, rng_seed)) {
		CHECK(0, "cannot set up a test volume");
		return;
	}
	clock_gettime(CLOCK_MONOTONIC, &t0);
	workload(c, ops, 20);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("%uK nodes: %" PRIu64 " operations, %" PRIu64 " tree walks, up to level %u and %" PRIu64 " blocks, "
	       "leaves at least %.0f%% full; %" PRIu64 " allocations, %" PRIu64 " copies, %" PRIu64 " frees; %.1f s\n",
	       nodesize >> 10, c->ops, c->walks, c->max_level, c->max_blocks, 100 * c->min_fill, c->al.allocs,
	       c->al.cowed, c->al.frees,
	       (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
	/* a leaf under a third full merges into its neighbours: on average leaves stay well above that */
	CHECK(c->min_fill >= 0.35 || c->broken || ops < 100000, "%uK: leaves only %.0f%% full on average",
	      nodesize >> 10, 100 * c->min_fill);
	/* 64K nodes hold ~1985 pointers: level 2 needs more leaves than this workload makes (test_deep covers it) */
	CHECK(c->max_level >= (nodesize < 65536 ? 2u : 1u) || c->broken || ops < 100000,
	      "%uK: the tree reached level %u", nodesize >> 10, c->max_level);
	ctx_close(c);
}

/* (3) deep trees: items of min_size + [0, span) bytes inserted at random until there are items of them, then all
   deleted in random order, committing every commit_every operations; the root must reach want_level. */
static void test_deep(uint32_t nodesize, uint64_t items, uint32_t min_size, uint32_t span, unsigned want_level,
		      uint64_t commit_every, uint64_t rng_seed)
{
	struct ctx c0, *c = &c0;
	uint64_t done = 0;
	unsigned top = 0;

	if (ctx_open(c, nodesize, 8u << 20, rng_seed)) {
		CHECK(0, "cannot set up a test volume");
		return;
	}
	trans_begin(c);
	CHECK(bf_tree_create(&c->t, TREE_ID, &c->root) == 0, "creating an empty tree");
	while (done < items && !c->broken) {
		uint32_t idx = (uint32_t)rng_below(&c->rng, KEYSPACE), size = min_size + (uint32_t)rng_below(&c->rng, span);
		struct bf_key k = key_of(idx);
		uint8_t *data = pool + rng_below(&c->rng, POOL_SIZE);

		if (model_has(&c->m, idx))
			continue;
		c->ops++;
		VERIFY(bf_insert_item(&c->t, &c->root, &k, data, size) == 0, "deep: insert %s", keystr(&k));
		model_set(&c->m, idx, data, size);
		if (++done % commit_every == 0) {
			top = c->root.level > top ? c->root.level : top;
			commit(c);
			trans_begin(c);
		}
	}
	top = c->root.level > top ? c->root.level : top;
	printf("deep %uK: %" PRIu64 " items of %u-%u bytes, up to level %u and %" PRIu64 " blocks\n", nodesize >> 10,
	       items, min_size, min_size + span - 1, top, c->max_blocks);
	CHECK(top >= want_level || c->broken, "deep %uK: the tree reached level %u with %" PRIu64 " items (want %u)",
	      nodesize >> 10, top, items, want_level);
	while (c->m.count && !c->broken) {
		c->ops++;
		op_delete(c, pick_present(c), 1);
		if (c->m.count % commit_every == 0) {
			commit(c);
			trans_begin(c);
		}
	}
	commit(c);
	CHECK(c->root.level == 0 || c->broken, "deep: the emptied tree is a root leaf again (level %u)", c->root.level);
	ctx_close(c);
}

/* Insert index idx with size bytes of pooled data. */
static void put_item(struct ctx *c, uint32_t idx, uint32_t size)
{
	struct bf_key k = key_of(idx);
	uint8_t *data = pool + rng_below(&c->rng, POOL_SIZE);

	c->ops++;
	VERIFY(bf_insert_item(&c->t, &c->root, &k, data, size) == 0, "shapes: insert %s", keystr(&k));
	model_set(&c->m, idx, data, size);
}

/* (3b) shapes that random work rarely makes: an ascending fill (pushes left make full nodes and leaves), a hole
   deleted out of its middle (thin nodes next to full ones), the hole refilled descending, then everything
   deleted at random without rebalancing on the way down (emptied nodes and at last the root removed by the
   delete itself). */
static void test_shapes(uint32_t n, uint64_t rng_seed)
{
	struct ctx c0, *c = &c0;

	if (ctx_open(c, 4096, 8u << 20, rng_seed)) {
		CHECK(0, "cannot set up a test volume");
		return;
	}
	trans_begin(c);
	CHECK(bf_tree_create(&c->t, TREE_ID, &c->root) == 0, "creating an empty tree");
	for (uint32_t i = 0; i < n && !c->broken; i++)
		put_item(c, i, 100);
	commit(c);
	CHECK(c->root.level >= 2 || c->broken || n < 20000, "shapes: ascending fill reached level %u", c->root.level);
	/* 31 items a leaf, 121 leaves a node: the second node (items 3751 to 7501) shrinks under a quarter next
	   to full neighbours, which must give it pointers without being emptied */
	trans_begin(c);
	for (uint32_t i = n / 5; i < n * 73 / 200 && !c->broken; i++)
		op_delete(c, i, 1);
	commit(c);
	trans_begin(c);
	for (uint32_t i = n * 73 / 200; i-- > n / 5 && !c->broken;)
		put_item(c, i, 100);
	commit(c);
	trans_begin(c);
	c->del_ins_len = 0;
	while (c->m.count && !c->broken) {
		c->ops++;
		op_delete(c, pick_present(c), 1 + (uint32_t)rng_below(&c->rng, 4));
		if (c->m.count % 1000 == 0)
			check_tree(c, "shapes: deleting without rebalancing");
	}
	commit(c);
	CHECK(c->root.level == 0 || c->broken, "shapes: the emptied tree is a root leaf again (level %u)",
	      c->root.level);
	ctx_close(c);
}

/* (4) an allocation failure in the middle of a transaction: abort, and the committed tree is intact. */
static void test_enospc(uint32_t nodesize, uint64_t rng_seed)
{
	struct ctx c0, *c = &c0;
	uint32_t asc = 0, desc = KEYSPACE - 1;
	struct model saved;
	struct bf_root committed;
	int failures = 0;

	if (ctx_open(c, nodesize, 1u << 20, rng_seed)) {
		CHECK(0, "cannot set up a test volume");
		return;
	}
	trans_begin(c);
	CHECK(bf_tree_create(&c->t, TREE_ID, &c->root) == 0, "creating an empty tree");
	for (int i = 0; i < 3000; i++)
		one_op(c, &GROW, &asc, &desc);
	commit(c);
	for (int round = 0; round < 20 && !c->broken; round++) {
		model_copy(&saved, &c->m);
		committed = c->root;
		trans_begin(c);
		c->al.fail_after = (long)rng_below(&c->rng, 40);
		bf_log_set_verbosity((enum bf_log_level)0); /* the failures log, as they should */
		for (int i = 0; i < 5000; i++) {
			uint32_t idx = pick_free(c, &asc, &desc), size = pick_size(c);
			struct bf_key k = key_of(idx == NONE ? 0 : idx);
			uint8_t *data = random_bytes(c, size);
			int ret = idx == NONE ? 0 : bf_insert_item(&c->t, &c->root, &k, data, size);

			if (ret) {
				CHECK(ret == -ENOSPC, "an insert with the allocator failing returned %d", ret);
				failures++;
				free(data);
				break;
			}
			if (idx != NONE)
				model_set(&c->m, idx, data, size); /* rolled back with the model below */
			else
				free(data);
		}
		bf_trans_abort(&c->t);
		bf_trans_destroy(&c->t);
		talloc_abort(&c->al);
		c->al.fail_after = -1;
		bf_log_set_verbosity(BF_LOG_ERR);
		CHECK(bf_cache_busy(&c->env) == 0, "after an abort %zu cached blocks are still referenced",
		      bf_cache_busy(&c->env));
		c->root = committed;
		model_free(&c->m);
		c->m = saved;
		check_tree(c, "after an aborted transaction (cached)");
		bf_env_destroy(&c->env);
		ctx_env_init(c);
		check_tree(c, "after an aborted transaction (re-read)");
	}
	CHECK(failures > 0, "the allocator failure was hit (%d times)", failures);
	ctx_close(c);
}

int main(int argc, char **argv)
{
	uint64_t ops = 100000, pool_rng = 1;
	const char *env_ops = getenv("BTREE_COW_OPS");

#ifdef __SANITIZE_ADDRESS__
	ops = 50000;
#endif
	if (env_ops && *env_ops)
		ops = strtoull(env_ops, NULL, 0);
	check_seed = argc > 1 ? strtoull(argv[1], NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
	printf("seed %" PRIu64 " (replay with: %s %" PRIu64 "), %" PRIu64 " operations per node size\n", check_seed, argv[0],
	       check_seed, ops);
	bf_log_set_verbosity(BF_LOG_ERR);
	test_layout(check_seed);
	test_workload(4096, ops, check_seed + 1);
	test_workload(16384, ops, check_seed + 2);
	test_workload(65536, ops, check_seed + 3);
	rng_fill(&pool_rng, pool, sizeof(pool));
	test_shapes(ops >= 30000 ? 20000 : 2000, check_seed + 7);
	test_deep(4096, ops >= 30000 ? 50000 : ops / 2, 700, 300, ops >= 30000 ? 3 : 1, 10000, check_seed + 4);
	test_deep(65536, ops >= 30000 ? 6000 : ops / 10, 16000, 6000, ops >= 30000 ? 2 : 1, 3000, check_seed + 8);
	test_enospc(4096, check_seed + 5);
	test_enospc(16384, check_seed + 6);
	return check_summary();
}
