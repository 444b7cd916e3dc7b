/*
 * btree/cow.c - the blocks of a transaction: creating, copying-on-write, freeing and writing tree blocks.
 *
 * Owns: struct bf_trans and its dirty list, bf_new_block (allocate, stamp the header, publish), bf_cow_block
 * (copy a block along a path and repoint its parent or the root), bf_free_block (a tree lets go of a block),
 * bf_block_finalize, bf_trans_write_dirty / abort / destroy, bf_tree_create, and two path helpers.
 *
 * Key idea: a block may change in place only while the transaction that created it has neither written nor
 * freed it; the block records that transaction (dirty_trans) and its index in the transaction's dirty list.
 * The header generation alone never grants the right (a block read from a hostile image could carry the
 * running transid), but it must match too, so a handle reused for the next transaction inherits nothing. Every other
 * block is copied before a change: the copy gets a new address from the allocator, generation = transid,
 * owner = the tree (the kernel's __btrfs_cow_block), the parent pointer or the root is repointed with
 * generation = transid, and the old block is dropped from the cache and handed to free_tree_block. New
 * blocks enter the cache with bf_cache_insert_new (beating any stale entry at a reused address); the dirty
 * list holds a reference to each, so the cache keeps them until they are written.
 *
 * Header stamping follows the kernel: bytenr, generation, owner, level, nritems, flags (WRITTEN and RELOC clear,
 * backref revision BF_MIXED_BACKREF_REV in the top byte; RELOC set on copies made for the relocation tree,
 * which keep their owner), fsid = env->fsid (the metadata uuid), chunk_tree_uuid = env->chunk_tree_uuid for
 * new blocks (copies keep the original's). WRITTEN and the checksum are set by bf_block_finalize at write time.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "btree/btree_int.h"
#include "util/util.h"

#define BACKREF_REV ((uint64_t)BF_MIXED_BACKREF_REV << BF_BACKREF_REV_SHIFT)

/* ---- the dirty list ---- */

/* Make room for one more entry, so that adding cannot fail once a block exists. */
static int dirty_reserve(struct bf_trans *t)
{
	struct bf_block **d;
	size_t cap;

	if (t->ndirty < t->dirty_cap)
		return 0;
	cap = t->dirty_cap ? 2 * t->dirty_cap : 64;
	d = realloc(t->dirty, cap * sizeof(*d));
	if (!d) {
		bf_log(BF_LOG_ERR, "transaction %" PRIu64 ": out of memory for the list of changed tree blocks",
		       t->transid);
		return -ENOMEM;
	}
	t->dirty = d;
	t->dirty_cap = cap;
	return 0;
}

/* Take a reference for the list (the caller checked the room with dirty_reserve). */
static void dirty_add(struct bf_trans *t, struct bf_block *b)
{
	bf_block_get(b);
	b->dirty_trans = t;
	b->dirty_idx = t->ndirty;
	t->dirty[t->ndirty++] = b;
}

/* Take b off the list (the last entry fills its place) and drop the list's reference. */
static void dirty_remove(struct bf_trans *t, struct bf_block *b)
{
	struct bf_block *last = t->dirty[--t->ndirty];

	t->dirty[b->dirty_idx] = last;
	last->dirty_idx = b->dirty_idx;
	b->dirty_trans = NULL;
	bf_block_put(t->env, b);
}

void bf_trans_init(struct bf_trans *t, struct bf_tree_env *env, uint64_t transid, const struct bf_alloc_ops *ops,
		   void *alloc_ctx)
{
	memset(t, 0, sizeof(*t));
	t->transid = transid;
	t->env = env;
	t->ops = ops;
	t->alloc_ctx = alloc_ctx;
}

bool bf_must_cow(const struct bf_trans *t, const struct bf_block *b)
{
	/* the transid too: a handle reused for the next transaction must not inherit the last one's blocks */
	return b->dirty_trans != t || b->generation != t->transid;
}

/* ---- new blocks ---- */

/* Fill the header fields that every block of this transaction gets, and decode them into b. A copy made for the
   relocation tree keeps its owner and is flagged RELOC instead. */
static void stamp(struct bf_trans *t, const struct bf_root *root, struct bf_block *b, uint64_t bytenr, bool copy)
{
	struct bf_header *h = bf_hdr(b);
	uint64_t flags = get64(h->flags) & ~(BF_HEADER_FLAG_WRITTEN | BF_HEADER_FLAG_RELOC);

	flags = (flags & ~(0xffULL << BF_BACKREF_REV_SHIFT)) | BACKREF_REV;
	if (copy && root->objectid == BF_TREE_RELOC_OBJECTID)
		flags |= BF_HEADER_FLAG_RELOC;
	else
		put64(&h->owner, root->objectid);
	put64(&h->flags, flags);
	put64(&h->bytenr, bytenr);
	put64(&h->generation, t->transid);
	memcpy(h->fsid, t->env->fsid, BF_FSID_SIZE);
	b->bytenr = bytenr;
	b->generation = t->transid;
	b->owner = get64(h->owner);
	b->nritems = get32(h->nritems);
	b->level = h->level;
}

/* Get an address for a block of root's tree at level; check that the allocator gave a usable one. */
static int alloc_address(struct bf_trans *t, const struct bf_root *root, uint8_t level, uint64_t *bytenr)
{
	int ret = t->ops->alloc_tree_block(t->alloc_ctx, root->objectid, level, bytenr);

	if (ret) {
		bf_log(BF_LOG_ERR, "tree %" PRIu64 ": cannot allocate a tree block: %s", root->objectid, strerror(-ret));
		return ret;
	}
	if (*bytenr == 0 || *bytenr % t->env->sectorsize) {
		bf_log(BF_LOG_ERR, "tree %" PRIu64 ": allocator returned unaligned block address %" PRIu64
				   " (a bug in btrfs-fuse)", root->objectid, *bytenr);
		return -EUCLEAN;
	}
	return 0;
}

/* Tell the allocator's hook about b, a new block created for key. */
static int tell_added(struct bf_trans *t, const struct bf_root *root, struct bf_block *b, const struct bf_key *key)
{
	int ret = t->ops->tree_block_added ? t->ops->tree_block_added(t->alloc_ctx, b->bytenr, root->objectid,
								       b->level, key)
					   : 0;

	if (ret)
		bf_log(BF_LOG_ERR, "tree %" PRIu64 ": recording new tree block %" PRIu64 " failed: %s",
		       root->objectid, b->bytenr, strerror(-ret));
	return ret;
}

/* A new block at level; data is zeroed (new) or a copy of from (COW). It is published in the cache and listed
   as dirty before the hook runs: if only the hook fails, *out is set and the caller frees the block again. */
static int make_block(struct bf_trans *t, const struct bf_root *root, uint8_t level, const struct bf_key *key,
		      const struct bf_block *from, struct bf_block **out)
{
	struct bf_block *b;
	uint64_t bytenr;
	int ret = dirty_reserve(t);

	*out = NULL;
	if (ret)
		return ret;
	b = bf_block_alloc(t->env->nodesize);
	if (!b)
		return -ENOMEM;
	ret = alloc_address(t, root, level, &bytenr);
	if (ret) {
		bf_block_free(b);
		return ret;
	}
	if (from) {
		memcpy(b->data, from->data, t->env->nodesize);
	} else {
		bf_hdr(b)->level = level;
		memcpy(bf_hdr(b)->chunk_tree_uuid, t->env->chunk_tree_uuid, BF_UUID_SIZE);
	}
	stamp(t, root, b, bytenr, from != NULL);
	if (bf_cache_insert_new(t->env->cache, b) != 0) {
		bf_log(BF_LOG_ERR, "tree %" PRIu64 ": the allocator handed out block %" PRIu64 ", which is still in "
				   "use (a bug in btrfs-fuse)", root->objectid, bytenr);
		bf_block_free(b);
		return -EUCLEAN;
	}
	dirty_add(t, b);
	*out = b;
	return tell_added(t, root, b, key);
}

int bf_new_block(struct bf_trans *t, const struct bf_root *root, uint8_t level, const struct bf_key *key,
		 struct bf_block **out)
{
	int ret = make_block(t, root, level, key, NULL, out);

	if (ret && *out) {
		bf_free_block(t, root, *out);
		bf_block_put(t->env, *out);
	}
	if (ret)
		*out = NULL;
	return ret;
}

int bf_tree_create(struct bf_trans *t, uint64_t objectid, struct bf_root *root)
{
	struct bf_root r = { objectid, 0, 0, 0 };
	struct bf_key none = { 0, 0, 0 };
	struct bf_block *b = NULL;
	int ret = bf_new_block(t, &r, 0, &none, &b);

	if (ret)
		return ret;
	*root = (struct bf_root){ objectid, b->bytenr, t->transid, 0 };
	bf_block_put(t->env, b);
	return 0;
}

/* ---- copy-on-write ---- */

/* b may be copied only if parent (already changeable) points to it at pslot, or, without parent, if b is the
   root block. A block newer than the transaction means a corrupt tree. */
static int check_cow(const struct bf_trans *t, const struct bf_root *root, const struct bf_block *b,
		     const struct bf_block *parent, uint32_t pslot)
{
	if (b->generation > t->transid) {
		bf_log(BF_LOG_ERR, "tree %" PRIu64 ": block %" PRIu64 " has generation %" PRIu64 ", newer than the "
				   "running transaction %" PRIu64 " (corrupt metadata; run 'btrfs check --readonly')",
		       root->objectid, b->bytenr, b->generation, t->transid);
		return -EUCLEAN;
	}
	if (parent ? bf_must_cow(t, parent) || pslot >= parent->nritems || bf_node_blockptr(parent, pslot) != b->bytenr
		   : root->bytenr != b->bytenr) {
		bf_log(BF_LOG_ERR, "tree %" PRIu64 ": block %" PRIu64 " copied without its parent being writable "
				   "(a bug in btrfs-fuse)", root->objectid, b->bytenr);
		return -EINVAL;
	}
	return 0;
}

int bf_cow_block(struct bf_trans *t, struct bf_root *root, struct bf_block *b, struct bf_block *parent,
		 uint32_t pslot, struct bf_block **out)
{
	struct bf_key key = b->nritems ? bf_blk_key(b, 0) : (struct bf_key){ 0, 0, 0 };
	struct bf_block *nb = NULL;
	int ret;

	*out = NULL;
	if (!bf_must_cow(t, b)) {
		bf_block_get(b);
		*out = b;
		return 0;
	}
	ret = check_cow(t, root, b, parent, pslot);
	if (!ret)
		ret = make_block(t, root, b->level, &key, b, &nb);
	if (!ret && t->ops->tree_block_cowed)
		ret = t->ops->tree_block_cowed(t->alloc_ctx, root->objectid, b, nb);
	if (ret) {
		if (nb) {
			bf_free_block(t, root, nb);
			bf_block_put(t->env, nb);
		}
		return ret;
	}
	if (parent) {
		bf_node_set_ptr(parent, pslot, nb->bytenr, t->transid);
	} else {
		root->bytenr = nb->bytenr;
		root->generation = t->transid;
		root->level = nb->level;
	}
	bf_trace("cow", "\"tree\":%" PRIu64 ",\"level\":%u,\"old\":%" PRIu64 ",\"new\":%" PRIu64
		 ",\"first_key\":[%" PRIu64 ",%u,%" PRIu64 "]",
		 root->objectid, nb->level, b->bytenr, nb->bytenr, key.objectid, key.type, key.offset);
	bf_free_block(t, root, b);
	*out = nb;
	return 0;
}

void bf_free_block(struct bf_trans *t, const struct bf_root *root, struct bf_block *b)
{
	if (b->dirty_trans == t)
		dirty_remove(t, b);
	bf_cache_drop(t->env->cache, b);
	t->ops->free_tree_block(t->alloc_ctx, b->bytenr, root->objectid, b->level);
}

/* ---- paths ---- */

int bf_read_child(struct bf_tree_env *env, const struct bf_block *parent, uint32_t slot, struct bf_block **out)
{
	struct bf_key first = bf_node_key(parent, slot);
	struct bf_block_expect exp = { bf_node_ptr_gen(parent, slot), parent->level - 1, &first, 0 };

	return bf_block_read(env, bf_node_blockptr(parent, slot), &exp, out);
}

void bf_path_set(struct bf_path *p, int level, struct bf_block *b)
{
	if (p->nodes[level])
		bf_block_put(p->env, p->nodes[level]);
	p->nodes[level] = b;
}

/* ---- writing ---- */

int bf_block_finalize(const struct bf_tree_env *env, struct bf_block *b)
{
	struct bf_header *h = bf_hdr(b);
	uint8_t sum[BF_CSUM_MAX];

	put64(&h->flags, get64(h->flags) | BF_HEADER_FLAG_WRITTEN);
	if (bf_csum(env->csum_type, b->data + BF_CSUM_SIZE, env->nodesize - BF_CSUM_SIZE, sum) != 0) {
		bf_log(BF_LOG_ERR, "tree block %" PRIu64 ": unknown checksum type %u", b->bytenr, env->csum_type);
		return -EINVAL;
	}
	memcpy(h->csum, sum, BF_CSUM_SIZE);
	return 0;
}

static int by_bytenr(const void *a, const void *b)
{
	uint64_t x = (*(struct bf_block *const *)a)->bytenr, y = (*(struct bf_block *const *)b)->bytenr;

	return x < y ? -1 : x > y;
}

int bf_trans_write_dirty(struct bf_trans *t)
{
	struct bf_tree_env *env = t->env;

	if (t->ndirty > 1)
		qsort(t->dirty, t->ndirty, sizeof(*t->dirty), by_bytenr);
	for (size_t i = 0; i < t->ndirty; i++)
		t->dirty[i]->dirty_idx = i;
	for (size_t i = 0; i < t->ndirty; i++) {
		struct bf_block *b = t->dirty[i];
		char why[256] = "";
		int ret = bf_block_finalize(env, b);

		/* as the kernel's tree-checker before a write: never put a malformed block on disk */
		if (!ret && bf_block_check(env, b->bytenr, b->data, NULL, why, sizeof(why)) != 0) {
			bf_log(BF_LOG_ERR, "transaction %" PRIu64 ": refusing to write tree block %" PRIu64 " (tree %"
					   PRIu64 ", level %u): %s (a bug in btrfs-fuse, or metadata that was corrupt "
					   "already; the transaction must be aborted)", t->transid, b->bytenr, b->owner,
			       b->level, why);
			return -EUCLEAN;
		}
		if (!ret)
			ret = bf_vol_write(env->vol, b->bytenr, b->data, env->nodesize);
		if (ret) {
			bf_log(BF_LOG_ERR, "transaction %" PRIu64 ": writing tree block %" PRIu64 " (tree %" PRIu64
					   ", level %u) failed: %s", t->transid, b->bytenr, b->owner, b->level,
			       strerror(-ret));
			return ret;
		}
	}
	for (size_t i = 0; i < t->ndirty; i++) {
		t->dirty[i]->dirty_trans = NULL;
		bf_block_put(env, t->dirty[i]);
	}
	t->ndirty = 0;
	return 0;
}

void bf_trans_abort(struct bf_trans *t)
{
	for (size_t i = 0; i < t->ndirty; i++) {
		struct bf_block *b = t->dirty[i];

		b->dirty_trans = NULL;
		bf_cache_drop(t->env->cache, b);
		bf_block_put(t->env, b);
	}
	t->ndirty = 0;
}

void bf_trans_destroy(struct bf_trans *t)
{
	if (t->ndirty) {
		bf_log(BF_LOG_WARN, "transaction %" PRIu64 " ended with %zu tree blocks neither written nor aborted "
				    "(a bug in btrfs-fuse); discarding them", t->transid, t->ndirty);
		bf_trans_abort(t);
	}
	free(t->dirty);
	t->dirty = NULL;
	t->dirty_cap = 0;
}
