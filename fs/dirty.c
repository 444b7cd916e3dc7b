/*
 * fs/dirty.c - the dirty-range map: the bytes written to one file and not yet given extents.
 *
 * Owns: struct bf_dmap (see fs/write.h): a set of disjoint byte ranges, no two touching, each holding its bytes in
 * one buffer - or, in a mark map, no bytes at all (the set alone: which bytes are covered).
 *
 * Key idea: a treap keyed by range start (a binary search tree that is a heap on random priorities, so it stays
 * balanced in expectation), built on two operations: split (by key, into the ranges starting below it and the
 * rest) and join (of two treaps whose keys do not interleave). A write [a, b) splits out the ranges it overlaps or
 * touches (the last one starting below a if it reaches a, and those starting in [a, b]), merges them and the new
 * bytes into one range - reusing the first one's buffer when the write only extends it, growing it by half again
 * so that appends cost amortized O(1) copying - and joins it back in between. Recursion depth is the treap's
 * depth, O(log n) in expectation. Buffers come from util/bigbuf.c: a large one is page-aligned, so the flush can
 * write it to the device directly (alloc/device.c).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fs/write.h"
#include "util/util.h"

void bf_dmap_init(struct bf_dmap *m)
{
	memset(m, 0, sizeof(*m));
	m->rng = 0x9e3779b9u;
}

void bf_dmap_init_marks(struct bf_dmap *m)
{
	bf_dmap_init(m);
	m->marks = true;
}

void bf_drange_free(struct bf_drange *r)
{
	if (r) {
		bf_bigbuf_free(r->data, r->cap);
		free(r);
	}
}

static void free_tree(struct bf_drange *r)
{
	while (r) { /* recurse left, loop right */
		struct bf_drange *right = r->right;
		free_tree(r->left);
		bf_drange_free(r);
		r = right;
	}
}

void bf_dmap_clear(struct bf_dmap *m)
{
	uint32_t rng = m->rng;
	bool marks = m->marks;

	free_tree(m->root);
	bf_dmap_init(m);
	m->rng = rng;
	m->marks = marks;
}

static uint32_t next_prio(struct bf_dmap *m)
{
	uint32_t x = m->rng; /* xorshift32 */

	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	m->rng = x;
	return x;
}

/* Split t into the ranges starting below key (*lo) and the others (*hi). */
static void split(struct bf_drange *t, uint64_t key, struct bf_drange **lo, struct bf_drange **hi)
{
	if (!t) {
		*lo = *hi = NULL;
	} else if (t->start < key) {
		split(t->right, key, &t->right, hi);
		*lo = t;
	} else {
		split(t->left, key, lo, &t->left);
		*hi = t;
	}
}

/* Join two treaps, every key of a below every key of b. */
static struct bf_drange *join(struct bf_drange *a, struct bf_drange *b)
{
	if (!a)
		return b;
	if (!b)
		return a;
	if (a->prio >= b->prio) {
		a->right = join(a->right, b);
		return a;
	}
	b->left = join(a, b->left);
	return b;
}

/* Take the highest range out of *t. */
static struct bf_drange *pop_max(struct bf_drange **t)
{
	struct bf_drange **pp = t, *r;

	if (!*t)
		return NULL;
	while ((*pp)->right)
		pp = &(*pp)->right;
	r = *pp;
	*pp = r->left;
	r->left = NULL;
	return r;
}

/* Visit every range of t in order, then free the nodes (not their buffers' contents first: cb copies them). */
static void drain(struct bf_drange *t, void (*cb)(void *ctx, struct bf_drange *r), void *ctx)
{
	while (t) {
		struct bf_drange *right = t->right;
		drain(t->left, cb, ctx);
		cb(ctx, t);
		t = right;
	}
}

struct merge {
	struct bf_drange *into;
	struct bf_dmap *m;
};

static void merge_one(void *ctx, struct bf_drange *r)
{
	struct merge *mg = ctx;

	if (!mg->m->marks)
		memcpy(mg->into->data + (r->start - mg->into->start), r->data, r->end - r->start);
	mg->m->bytes -= r->end - r->start;
	mg->m->count--;
	bf_drange_free(r);
}

/* Make r's buffer hold [start, end) (start <= r->start when r is new-born with no data; otherwise start ==
   r->start): grow by half again when extending. 0 or -ENOMEM (r unchanged). */
static int reserve(struct bf_drange *r, uint64_t len)
{
	size_t want = (size_t)len, cap, got = r->cap;
	uint8_t *p;

	if (want <= r->cap)
		return 0;
	cap = r->cap + r->cap / 2;
	if (cap < want)
		cap = want;
	p = bf_bigbuf_resize(r->data, &got, cap);
	if (!p && cap > want)
		p = bf_bigbuf_resize(r->data, &got, cap = want);
	if (!p)
		return -ENOMEM;
	r->data = p;
	r->cap = got;
	return 0;
}

static uint64_t max_end(const struct bf_drange *t)
{
	while (t && t->right)
		t = t->right;
	return t ? t->end : 0;
}

/* The range the write [a, b) becomes, given the range before it that reaches a (prev, or NULL) and the ranges
   starting inside [a, b] (mid). On success prev or a new node holds the union's bytes (old ones copied) and is
   out of any tree; mid is consumed (a mark map's ranges get no buffer). -ENOMEM leaves everything as it was. */
static int build(struct bf_dmap *m, struct bf_drange *prev, struct bf_drange *mid, uint64_t a, uint64_t b,
		 struct bf_drange **out)
{
	uint64_t start = prev ? prev->start : a;
	uint64_t end = b;
	struct bf_drange *r = prev;

	if (prev && prev->end > end)
		end = prev->end;
	if (mid && max_end(mid) > end)
		end = max_end(mid);
	if (!m->marks && end - start > SIZE_MAX)
		return -ENOMEM;
	if (!r) {
		r = calloc(1, sizeof(*r));
		if (!r)
			return -ENOMEM;
		r->start = start;
		r->prio = next_prio(m);
		m->count++;
	}
	if (!m->marks && reserve(r, end - start) < 0) {
		if (r != prev) {
			m->count--;
			free(r);
		}
		return -ENOMEM;
	}
	m->bytes += end - r->start - (r == prev ? prev->end - prev->start : 0);
	r->end = end;
	struct merge mg = { r, m };
	drain(mid, merge_one, &mg);
	*out = r;
	return 0;
}

/* Add [off, off + len) with the bytes of buf (NULL in a mark map). */
static int insert(struct bf_dmap *m, uint64_t off, const void *buf, uint64_t len)
{
	struct bf_drange *lo, *mid, *hi, *prev, *r;
	uint64_t end;
	int ret;

	if (len == 0)
		return 0;
	if (__builtin_add_overflow(off, len, &end))
		return -EFBIG;
	split(m->root, off, &lo, &hi);
	split(hi, end + (end < UINT64_MAX), &mid, &hi); /* mid: ranges starting in [off, end] */
	prev = pop_max(&lo);
	if (prev && prev->end < off) { /* neither overlaps nor touches: put it back */
		lo = join(lo, prev);
		prev = NULL;
	}
	ret = build(m, prev, mid, off, end, &r);
	if (ret < 0) { /* nothing changed: reassemble */
		if (prev)
			lo = join(lo, prev);
		m->root = join(join(lo, mid), hi);
		return ret;
	}
	if (buf)
		memcpy(r->data + (off - r->start), buf, (size_t)len);
	m->root = join(join(lo, r), hi);
	return 0;
}

int bf_dmap_write(struct bf_dmap *m, uint64_t off, const void *buf, size_t len)
{
	return m->marks ? -EINVAL : insert(m, off, buf, len);
}

int bf_dmap_mark(struct bf_dmap *m, uint64_t off, uint64_t len)
{
	return m->marks ? insert(m, off, NULL, len) : -EINVAL;
}

const struct bf_drange *bf_dmap_find(const struct bf_dmap *m, uint64_t pos, uint64_t end)
{
	const struct bf_drange *t = m->root, *floor = NULL, *ceil = NULL;

	while (t) { /* floor: last start <= pos; ceil: first start > pos */
		if (t->start <= pos) {
			floor = t;
			t = t->right;
		} else {
			ceil = t;
			t = t->left;
		}
	}
	if (floor && floor->end > pos && pos < end)
		return floor;
	if (ceil && ceil->start < end)
		return ceil;
	return NULL;
}

static void drop_one(void *ctx, struct bf_drange *r)
{
	struct bf_dmap *m = ctx;

	m->bytes -= r->end - r->start;
	m->count--;
	bf_drange_free(r);
}

void bf_dmap_truncate(struct bf_dmap *m, uint64_t off)
{
	struct bf_drange *lo, *hi, *last;

	split(m->root, off, &lo, &hi);
	drain(hi, drop_one, m);
	last = lo;
	while (last && last->right)
		last = last->right;
	if (last && last->end > off) { /* starts below off */
		m->bytes -= last->end - off;
		last->end = off;
	}
	m->root = lo;
}

struct bf_drange *bf_dmap_pop(struct bf_dmap *m)
{
	struct bf_drange **pp = &m->root, *r;

	if (!*pp)
		return NULL;
	while ((*pp)->left)
		pp = &(*pp)->left;
	r = *pp;
	*pp = r->right;
	r->right = NULL;
	m->bytes -= r->end - r->start;
	m->count--;
	return r;
}
