/*
 * alloc/delayed_ref.c - the queue of extent reference changes (the kernel's delayed references).
 *
 * Owns: struct ea_dtable (a hash table of heads by bytenr), merging of reference changes within a head, and
 * the public bf_extalloc_data_ref. Key idea: as in the kernel's delayed-ref.c, every change of an extent's
 * references is queued on the extent's head instead of touching the extent tree; changes of the same reference
 * (same type and identity: root for TREE_BLOCK_REF; parent for SHARED_*; root, inode and offset for
 * EXTENT_DATA_REF) add up, and one reaching zero disappears, so an extent allocated and freed in one
 * transaction never reaches the tree. A head also carries whether its extent is new (must_insert), and flags to
 * set (FULL_BACKREF). run_delayed takes all heads as a batch sorted by bytenr while they stay findable in the
 * table, so a head cancelled while the batch is worked through is only marked dead.
 */
#include "alloc/extalloc_int.h"
#include "util/util.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

static size_t bucket_of(uint64_t bytenr, size_t nbuckets)
{
	uint64_t h = (bytenr >> 12) * 0x9E3779B97F4A7C15ull;
	return (size_t)((h >> 32) % nbuckets);
}

int dt_init(struct ea_dtable *t)
{
	memset(t, 0, sizeof(*t));
	t->nbuckets = 1024;
	t->buckets = calloc(t->nbuckets, sizeof(*t->buckets));
	return t->buckets ? 0 : -ENOMEM;
}

void head_free(struct ea_head *h)
{
	if (h) {
		free(h->refs);
		free(h);
	}
}

void dt_destroy(struct ea_dtable *t)
{
	for (size_t i = 0; i < t->nbuckets; i++) {
		for (struct ea_head *h = t->buckets[i], *next; h; h = next) {
			next = h->hnext;
			h->in_batch = false;
			head_free(h);
		}
	}
	free(t->buckets);
	memset(t, 0, sizeof(*t));
}

struct ea_head *dt_find(const struct ea_dtable *t, uint64_t bytenr)
{
	if (!t->nbuckets)
		return NULL;
	for (struct ea_head *h = t->buckets[bucket_of(bytenr, t->nbuckets)]; h; h = h->hnext)
		if (h->bytenr == bytenr)
			return h;
	return NULL;
}

/* Double the buckets when the chains grow long (a failure to grow only costs speed). */
static void maybe_grow(struct ea_dtable *t)
{
	if (t->count < 2 * t->nbuckets)
		return;
	size_t nb = t->nbuckets * 2;
	struct ea_head **b = calloc(nb, sizeof(*b));
	if (!b)
		return;
	for (size_t i = 0; i < t->nbuckets; i++) {
		for (struct ea_head *h = t->buckets[i], *next; h; h = next) {
			next = h->hnext;
			size_t j = bucket_of(h->bytenr, nb);
			h->hnext = b[j];
			b[j] = h;
		}
	}
	free(t->buckets);
	t->buckets = b;
	t->nbuckets = nb;
}

int dt_get(struct ea_dtable *t, uint64_t bytenr, uint64_t num_bytes, bool is_data, struct ea_head **out)
{
	struct ea_head *h = dt_find(t, bytenr);
	if (!t->nbuckets)
		return -ENOMEM;
	if (!h) {
		maybe_grow(t);
		if (!(h = calloc(1, sizeof(*h))))
			return -ENOMEM;
		h->bytenr = bytenr;
		h->num_bytes = num_bytes;
		h->is_data = is_data;
		size_t b = bucket_of(bytenr, t->nbuckets);
		h->hnext = t->buckets[b];
		t->buckets[b] = h;
		t->count++;
	}
	*out = h;
	return 0;
}

/* Take h out of its chain. */
void dt_detach(struct ea_dtable *t, struct ea_head *h)
{
	for (struct ea_head **pp = &t->buckets[bucket_of(h->bytenr, t->nbuckets)]; *pp; pp = &(*pp)->hnext) {
		if (*pp == h) {
			*pp = h->hnext;
			h->hnext = NULL;
			t->count--;
			return;
		}
	}
}

void dt_remove(struct ea_dtable *t, struct ea_head *h)
{
	dt_detach(t, h);
	if (h->in_batch)
		h->dead = true;
	else
		head_free(h);
}

static int by_bytenr(const void *a, const void *b)
{
	uint64_t x = (*(struct ea_head *const *)a)->bytenr, y = (*(struct ea_head *const *)b)->bytenr;
	return x < y ? -1 : x > y;
}

int dt_take_batch(struct ea_dtable *t, struct ea_head ***out, size_t *n)
{
	*out = NULL;
	*n = 0;
	if (!t->count)
		return 0;
	struct ea_head **v = malloc(t->count * sizeof(*v));
	if (!v)
		return -ENOMEM;
	size_t k = 0;
	for (size_t i = 0; i < t->nbuckets; i++)
		for (struct ea_head *h = t->buckets[i]; h; h = h->hnext) {
			h->in_batch = true;
			v[k++] = h;
		}
	qsort(v, k, sizeof(*v), by_bytenr);
	*out = v;
	*n = k;
	return 0;
}

/* ---- references within a head ---- */

static bool ref_same(const struct ea_ref *a, const struct ea_ref *b)
{
	if (a->type != b->type)
		return false;
	switch (a->type) {
	case BF_TREE_BLOCK_REF_KEY:
		return a->root == b->root;
	case BF_EXTENT_DATA_REF_KEY:
		return a->root == b->root && a->owner == b->owner && a->offset == b->offset;
	default:
		return a->parent == b->parent;
	}
}

int dt_add_ref(struct ea_head *h, const struct ea_ref *ref)
{
	for (size_t i = 0; i < h->nrefs; i++) {
		if (!ref_same(&h->refs[i], ref))
			continue;
		h->refs[i].count += ref->count;
		if (!h->refs[i].count)
			h->refs[i] = h->refs[--h->nrefs];
		return 0;
	}
	if (h->nrefs == h->refs_cap) {
		size_t cap = h->refs_cap ? h->refs_cap * 2 : 2;
		struct ea_ref *v = realloc(h->refs, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		h->refs = v;
		h->refs_cap = cap;
	}
	h->refs[h->nrefs++] = *ref;
	return 0;
}

int64_t head_ref_mod(const struct ea_head *h)
{
	int64_t sum = 0;
	for (size_t i = 0; i < h->nrefs; i++)
		sum += h->refs[i].count;
	return sum;
}

/* ---- queueing ---- */

int ea_queue_tree_ref(struct bf_extalloc *ea, uint64_t bytenr, uint64_t parent, uint64_t root, int level,
		      int delta)
{
	struct ea_head *h;
	int ret = dt_get(&ea->refs, bytenr, ea->nodesize, false, &h);
	if (ret)
		return ret;
	if (h->is_data || (h->had_refs && h->level != level)) {
		bf_log(BF_LOG_ERR, "extent %" PRIu64 " is referenced both as a %s and as a tree block of level %d "
		       "(corrupt metadata; run 'btrfs check --readonly')", bytenr,
		       h->is_data ? "data extent" : "tree block of another level", level);
		return -EUCLEAN;
	}
	h->level = (uint8_t)level;
	h->had_refs = true;
	struct ea_ref r = { parent ? BF_SHARED_BLOCK_REF_KEY : BF_TREE_BLOCK_REF_KEY, parent ? 0 : root, parent,
			    (uint64_t)level, 0, delta };
	return dt_add_ref(h, &r);
}

int ea_queue_data_ref(struct bf_extalloc *ea, uint64_t bytenr, uint64_t num_bytes, uint64_t parent, uint64_t root,
		      uint64_t inode, uint64_t offset, int delta)
{
	struct ea_head *h;
	int ret = dt_get(&ea->refs, bytenr, num_bytes, true, &h);
	if (ret)
		return ret;
	if (!h->is_data || h->num_bytes != num_bytes) {
		bf_log(BF_LOG_ERR, "data extent %" PRIu64 " referenced with length %" PRIu64 " but known as %s of %"
		       PRIu64 " bytes (corrupt file extent item or a bug in btrfs-fuse)", bytenr, num_bytes,
		       h->is_data ? "a data extent" : "a tree block", h->num_bytes);
		return -EUCLEAN;
	}
	h->had_refs = true;
	struct ea_ref r = { parent ? BF_SHARED_DATA_REF_KEY : BF_EXTENT_DATA_REF_KEY, parent ? 0 : root, parent,
			    inode, parent ? 0 : offset, delta };
	return dt_add_ref(h, &r);
}

int bf_extalloc_data_ref(struct bf_extalloc *ea, uint64_t bytenr, uint64_t num_bytes, uint64_t root,
			 uint64_t inode, uint64_t offset, int delta)
{
	if (ea->error)
		return ea->error;
	bf_trace("ref", "\"extent\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"root\":%" PRIu64 ",\"inode\":%" PRIu64
		 ",\"offset\":%" PRIu64 ",\"delta\":%d", bytenr, num_bytes, root, inode, offset, delta);
	if (!bytenr || !num_bytes || bytenr % ea->sectorsize || num_bytes % ea->sectorsize || !delta ||
	    inode < BF_FIRST_FREE_OBJECTID || !ea_shareable(root)) {
		bf_log(BF_LOG_ERR, "data reference (extent %" PRIu64 ", %" PRIu64 " bytes, root %" PRIu64 ", inode %"
		       PRIu64 ", offset %" PRIu64 ", change %d) is invalid (a bug in btrfs-fuse)", bytenr, num_bytes,
		       root, inode, offset, delta);
		return -EINVAL;
	}
	return ea_queue_data_ref(ea, bytenr, num_bytes, 0, root, inode, offset, delta);
}
