/*
 * alloc/rangeset.c - sorted sets of byte ranges, the extent allocator's free-space and pinned-space maps.
 *
 * Owns: struct ea_rset. Key idea: a sorted array of disjoint ranges, adjacent ranges always merged, so a set has
 * exactly one representation (two sets are equal iff their arrays are) and the maximal free runs are its
 * elements; lookups are binary searches, changes a memmove. Adding a range that overlaps the set or removing one
 * the set does not hold fails without changing anything, which turns bookkeeping bugs and corrupt input into
 * errors instead of double allocations.
 */
#include "alloc/extalloc_int.h"
#include "util/util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void rset_free(struct ea_rset *s)
{
	free(s->v);
	memset(s, 0, sizeof(*s));
}

static int reserve(struct ea_rset *s, size_t want)
{
	if (want <= s->cap)
		return 0;
	size_t cap = s->cap ? s->cap * 2 : 8;
	while (cap < want)
		cap *= 2;
	struct ea_range *v = realloc(s->v, cap * sizeof(*v));
	if (!v)
		return -ENOMEM;
	s->v = v;
	s->cap = cap;
	return 0;
}

size_t rset_lower(const struct ea_rset *s, uint64_t addr)
{
	size_t lo = 0, hi = s->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (s->v[mid].end <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

bool rset_has(const struct ea_rset *s, uint64_t start, uint64_t end)
{
	size_t i = rset_lower(s, start);
	return i < s->n && s->v[i].start <= start && end <= s->v[i].end;
}

bool rset_touches(const struct ea_rset *s, uint64_t start, uint64_t end)
{
	size_t i = rset_lower(s, start);
	return start < end && i < s->n && s->v[i].start < end;
}

int rset_add(struct ea_rset *s, uint64_t start, uint64_t end)
{
	if (start >= end)
		return start == end ? 0 : -EINVAL;
	size_t i = rset_lower(s, start); /* first range ending after start: the only one that can overlap first */
	if (i < s->n && s->v[i].start < end)
		return -EEXIST;
	if (!(i > 0 && s->v[i - 1].end == start) && !(i < s->n && s->v[i].start == end) && reserve(s, s->n + 1))
		return -ENOMEM;
	s->bytes += end - start;
	bool left = i > 0 && s->v[i - 1].end == start, right = i < s->n && s->v[i].start == end;
	if (left && right) {
		s->v[i - 1].end = s->v[i].end;
		memmove(s->v + i, s->v + i + 1, (s->n - i - 1) * sizeof(*s->v));
		s->n--;
	} else if (left) {
		s->v[i - 1].end = end;
	} else if (right) {
		s->v[i].start = start;
	} else {
		memmove(s->v + i + 1, s->v + i, (s->n - i) * sizeof(*s->v));
		s->v[i] = (struct ea_range){ start, end };
		s->n++;
	}
	return 0;
}

int rset_del(struct ea_rset *s, uint64_t start, uint64_t end)
{
	if (start >= end)
		return start == end ? 0 : -EINVAL;
	size_t i = rset_lower(s, start);
	if (i >= s->n || s->v[i].start > start || s->v[i].end < end)
		return -ENOENT;
	struct ea_range r = s->v[i];
	if (r.start < start && end < r.end && reserve(s, s->n + 1))
		return -ENOMEM;
	s->bytes -= end - start;
	if (r.start == start && r.end == end) {
		memmove(s->v + i, s->v + i + 1, (s->n - i - 1) * sizeof(*s->v));
		s->n--;
	} else if (r.start == start) {
		s->v[i].start = end;
	} else if (r.end == end) {
		s->v[i].end = start;
	} else {
		memmove(s->v + i + 1, s->v + i, (s->n - i) * sizeof(*s->v));
		s->v[i].end = start;
		s->v[i + 1].start = end;
		s->n++;
	}
	return 0;
}

int rset_del_any(struct ea_rset *s, uint64_t start, uint64_t end)
{
	while (start < end) {
		size_t i = rset_lower(s, start);
		if (i >= s->n || s->v[i].start >= end)
			return 0;
		uint64_t a = bf_max64(start, s->v[i].start), b = bf_min64(end, s->v[i].end);
		int ret = rset_del(s, a, b);
		if (ret)
			return ret;
		start = b;
	}
	return 0;
}

uint64_t rset_bytes(const struct ea_rset *s) { return s->bytes; }

void rset_clear(struct ea_rset *s)
{
	s->n = 0;
	s->bytes = 0;
}

int rset_copy(struct ea_rset *dst, const struct ea_rset *src)
{
	rset_clear(dst);
	if (reserve(dst, src->n))
		return -ENOMEM;
	if (src->n)
		memcpy(dst->v, src->v, src->n * sizeof(*src->v));
	dst->n = src->n;
	dst->bytes = src->bytes;
	return 0;
}
