/*
 * tests/unit/test_fs_write.c - the pure parts of the data write path, against models.
 *
 * 1. The dirty-range map (fs/dirty.c): seeded random writes, truncates, pops and lookups against a byte model
 *    (a byte array plus a dirty mask); after every step the treap must hold exactly the model's dirty runs, as
 *    disjoint, non-touching ranges in order, with the right bytes, count and total, and keep heap order. A mark
 *    map (no bytes) given the same writes, truncates and pops must hold the same ranges, without buffers.
 * 2. Dropping extents (bf_drop_step, fs/extent_write.c): seeded random extent lists (regular with disk bytes at
 *    random offsets into larger disk extents, holes, prealloc, an inline extent at 0) and random sector-aligned
 *    ranges. The list is rewritten as the tree walk does it, and compared with a per-sector model of where each
 *    sector's bytes come from: outside the range nothing changes, inside nothing is left; nbytes drops by what the
 *    kernel counts (disk-backed num_bytes, inline ram_bytes); the data refs (disk extent, root, inode, key offset -
 *    extent offset) counted from the new list equal the old counts plus the step's ref changes.
 * BF_TEST_SEED=N repeats a run.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fs/write.h"
#include "util/util.h"
#include "tests/unit/check.h"



static uint64_t rng_state;
static uint64_t rnd(void)
{
	return splitmix64(&rng_state);
}
static uint64_t rnd_below(uint64_t n) { return n ? rnd() % n : 0; }

/* ================= dirty-range map ================= */

#define MODEL_BYTES 4096

struct dmodel {
	uint8_t data[MODEL_BYTES];
	uint8_t dirty[MODEL_BYTES];
};

struct walk {
	const struct dmodel *md;
	uint64_t next_min; /* the next range must start at or after this (no touching) */
	uint64_t bytes;
	size_t count;
	int bad;
};

static void walk_tree(const struct bf_drange *r, uint32_t parent_prio, struct walk *w)
{
	if (!r)
		return;
	if (r->prio > parent_prio)
		w->bad |= 1;
	walk_tree(r->left, r->prio, w);
	if (r->start < w->next_min || r->end <= r->start || r->end > MODEL_BYTES)
		w->bad |= 2;
	for (uint64_t i = r->start; i < r->end && i < MODEL_BYTES; i++)
		if (!w->md->dirty[i] || r->data[i - r->start] != w->md->data[i])
			w->bad |= 4;
	w->next_min = r->end + 1;
	w->bytes += r->end - r->start;
	w->count++;
	walk_tree(r->right, r->prio, w);
}

static void dmap_check(const struct bf_dmap *m, const struct dmodel *md, const char *after)
{
	struct walk w = { md, 0, 0, 0, 0 };
	uint64_t model_bytes = 0;
	size_t runs = 0;

	walk_tree(m->root, UINT32_MAX, &w);
	for (size_t i = 0; i < MODEL_BYTES; i++) {
		model_bytes += md->dirty[i];
		runs += md->dirty[i] && (i == 0 || !md->dirty[i - 1]);
	}
	CHECK(w.bad == 0, "after %s: treap invariant broken (flags %d)", after, w.bad);
	CHECK(w.bytes == model_bytes && m->bytes == model_bytes, "after %s: %llu bytes in ranges, map says %llu, "
	      "model %llu", after, (unsigned long long)w.bytes, (unsigned long long)m->bytes,
	      (unsigned long long)model_bytes);
	CHECK(w.count == runs && m->count == runs, "after %s: %zu ranges, map says %zu, model has %zu runs", after,
	      w.count, m->count, runs);
}

/* In-order ranges of a treap, up to max. */
static size_t ranges_of(const struct bf_drange *r, uint64_t (*out)[2], size_t n, size_t max, int *bad)
{
	if (!r)
		return n;
	n = ranges_of(r->left, out, n, max, bad);
	if (n < max) {
		out[n][0] = r->start;
		out[n][1] = r->end;
		n++;
	}
	if (r->data)
		*bad = 1;
	return ranges_of(r->right, out, n, max, bad);
}

/* The mark map must hold exactly the data map's ranges, without buffers. */
static void marks_check(const struct bf_dmap *mk, const struct bf_dmap *m, const char *after)
{
	static uint64_t a[MODEL_BYTES][2], b[MODEL_BYTES][2];
	int bad_a = 0, bad_b = 0;
	size_t na = ranges_of(mk->root, a, 0, MODEL_BYTES, &bad_a), nb = ranges_of(m->root, b, 0, MODEL_BYTES, &bad_b);

	CHECK(!bad_a && na == nb && mk->count == m->count && mk->bytes == m->bytes &&
	      memcmp(a, b, na * sizeof(a[0])) == 0, "after %s: mark map (%zu ranges, %llu bytes%s) differs from the "
	      "data map (%zu ranges, %llu bytes)", after, mk->count, (unsigned long long)mk->bytes,
	      bad_a ? ", with buffers" : "", m->count, (unsigned long long)m->bytes);
}

/* bf_dmap_find against the model for one random query. */
static void dmap_query(const struct bf_dmap *m, const struct dmodel *md)
{
	uint64_t pos = rnd_below(MODEL_BYTES), end = pos + 1 + rnd_below(200);
	const struct bf_drange *r = bf_dmap_find(m, pos, end);
	uint64_t first = UINT64_MAX;

	for (uint64_t i = pos; i < end && i < MODEL_BYTES; i++)
		if (md->dirty[i]) {
			first = i;
			break;
		}
	if (first == UINT64_MAX) {
		CHECK(r == NULL, "find [%llu, %llu): got a range, model has none", (unsigned long long)pos,
		      (unsigned long long)end);
		return;
	}
	CHECK(r && r->start <= first && first < r->end, "find [%llu, %llu): model's first dirty byte %llu not in "
	      "the range found", (unsigned long long)pos, (unsigned long long)end, (unsigned long long)first);
}

static void dmap_random(int steps)
{
	struct bf_dmap m, mk;
	struct dmodel *md = calloc(1, sizeof(*md));
	uint8_t buf[600];
	char what[64];

	bf_dmap_init(&m);
	bf_dmap_init_marks(&mk);
	for (int s = 0; s < steps; s++) {
		unsigned op = (unsigned)rnd_below(20);
		if (op < 14) { /* write: small, near-adjacent, or bridging */
			uint64_t off = rnd_below(MODEL_BYTES - 1);
			size_t len = (size_t)bf_min64(1 + rnd_below(op < 4 ? 600 : 40), MODEL_BYTES - off);
			for (size_t i = 0; i < len; i++)
				buf[i] = (uint8_t)rnd();
			CHECK(bf_dmap_write(&m, off, buf, len) == 0, "write failed");
			CHECK(bf_dmap_mark(&mk, off, len) == 0, "mark failed");
			memcpy(md->data + off, buf, len);
			memset(md->dirty + off, 1, len);
			snprintf(what, sizeof(what), "write [%llu, +%zu)", (unsigned long long)off, len);
		} else if (op < 15) {
			uint64_t off = rnd_below(MODEL_BYTES + 10);
			bf_dmap_truncate(&m, off);
			bf_dmap_truncate(&mk, off);
			if (off < MODEL_BYTES)
				memset(md->dirty + off, 0, MODEL_BYTES - off);
			snprintf(what, sizeof(what), "truncate %llu", (unsigned long long)off);
		} else if (op < 16) {
			struct bf_drange *r = bf_dmap_pop(&m), *rk = bf_dmap_pop(&mk);
			uint64_t first = 0;
			CHECK((r == NULL) == (rk == NULL) && (!r || (r->start == rk->start && r->end == rk->end)),
			      "pop: the mark map gave another range");
			bf_drange_free(rk);
			while (first < MODEL_BYTES && !md->dirty[first])
				first++;
			CHECK((r == NULL) == (first == MODEL_BYTES), "pop: range %p, model first dirty %llu", (void *)r,
			      (unsigned long long)first);
			if (r) {
				CHECK(r->start == first, "pop: range at %llu, model's first run at %llu",
				      (unsigned long long)r->start, (unsigned long long)first);
				for (uint64_t i = r->start; i < r->end && i < MODEL_BYTES; i++)
					md->dirty[i] = 0;
				bf_drange_free(r);
			}
			snprintf(what, sizeof(what), "pop");
		} else {
			dmap_query(&m, md);
			continue;
		}
		dmap_check(&m, md, what);
		marks_check(&mk, &m, what);
	}
	bf_dmap_clear(&m);
	bf_dmap_clear(&mk);
	CHECK(mk.root == NULL && mk.bytes == 0 && mk.marks, "clear of the mark map left something or its kind");
	CHECK(m.root == NULL && m.bytes == 0 && m.count == 0, "clear left something");
	free(md);
}

/* A long sequential writer grows one range; many scattered writes make many; edge cases. */
static void dmap_fixed(void)
{
	struct bf_dmap m;
	static uint8_t chunk[131072];

	bf_dmap_init(&m);
	for (int i = 0; i < 256; i++) {
		memset(chunk, i, sizeof(chunk));
		bf_dmap_write(&m, (uint64_t)i * sizeof(chunk), chunk, sizeof(chunk));
	}
	CHECK(m.count == 1 && m.bytes == 256ULL * sizeof(chunk), "sequential writes: %zu ranges, %llu bytes",
	      m.count, (unsigned long long)m.bytes);
	const struct bf_drange *r = bf_dmap_find(&m, 200ULL * sizeof(chunk) + 5, UINT64_MAX);
	CHECK(r && r->data[200ULL * sizeof(chunk) + 5] == 200, "sequential writes: wrong byte");
	bf_dmap_clear(&m);

	for (uint64_t i = 0; i < 100000; i++)
		bf_dmap_write(&m, i * 8192, chunk, 4096);
	CHECK(m.count == 100000, "scattered writes: %zu ranges", m.count);
	uint8_t *big = calloc(1, 8192 * 99999 - 4096);
	bf_dmap_write(&m, 4096, big, 8192 * 99999 - 4096);
	free(big);
	CHECK(m.count == 1 && m.bytes == 8192ULL * 99999 + 4096, "bridging write: %zu ranges, %llu bytes", m.count,
	      (unsigned long long)m.bytes);
	bf_dmap_clear(&m);

	CHECK(bf_dmap_write(&m, UINT64_MAX - 10, chunk, 20) == -EFBIG, "overflowing write accepted");
	CHECK(bf_dmap_write(&m, UINT64_MAX - 10, chunk, 10) == 0, "write ending at 2^64 - 1 refused");
	CHECK(bf_dmap_find(&m, UINT64_MAX - 5, UINT64_MAX) != NULL, "range at the top not found");
	CHECK(bf_dmap_mark(&m, 0, 10) == -EINVAL, "mark accepted by a data map");
	bf_dmap_clear(&m);
	bf_dmap_init_marks(&m); /* marks need no memory for their length: a whole 2^63-byte range */
	CHECK(bf_dmap_mark(&m, 4096, 1ULL << 63) == 0 && m.bytes == 1ULL << 63, "huge mark refused");
	CHECK(bf_dmap_write(&m, 0, chunk, 10) == -EINVAL, "write accepted by a mark map");
	CHECK(bf_dmap_mark(&m, UINT64_MAX - 10, 20) == -EFBIG, "overflowing mark accepted");
	bf_dmap_truncate(&m, 8192);
	CHECK(m.bytes == 4096 && m.count == 1, "truncated mark map holds %llu bytes", (unsigned long long)m.bytes);
	bf_dmap_clear(&m);
}

/* ================= dropping extents ================= */

#define SS 4096ULL
#define NSECT 48
#define MAXEXT 64

/* Where a sector's bytes come from. */
struct src {
	int kind; /* 0 nothing, 1 hole item, 2 disk extent, 3 prealloc, 4 inline */
	uint64_t disk, idx;
};

static struct src src_of(const struct bf_fext *e, uint64_t pos)
{
	struct src s = { 0, 0, 0 };

	if (e->type == BF_FILE_EXTENT_INLINE) {
		s.kind = 4;
		s.idx = pos;
	} else if (e->disk_bytenr == 0) {
		s.kind = 1;
	} else {
		s.kind = e->type == BF_FILE_EXTENT_PREALLOC ? 3 : 2;
		s.disk = e->disk_bytenr;
		s.idx = e->offset + (pos - e->pos);
	}
	return s;
}

static void model_of(const struct bf_fext *ext, int n, struct src *m)
{
	memset(m, 0, sizeof(struct src) * NSECT);
	for (int i = 0; i < n; i++)
		for (uint64_t p = ext[i].pos; p < bf_fext_end(&ext[i], SS) && p / SS < NSECT; p += SS)
			m[p / SS] = src_of(&ext[i], p);
}

/* Data refs: how many items reference (disk, ref offset). */
static int refs_of(const struct bf_fext *ext, int n, uint64_t disk, uint64_t ref_off)
{
	int c = 0;

	for (int i = 0; i < n; i++)
		if (ext[i].type != BF_FILE_EXTENT_INLINE && ext[i].disk_bytenr == disk &&
		    bf_fext_ref_offset(&ext[i]) == ref_off)
			c++;
	return c;
}

static void gen_extents(struct bf_fext *ext, int *n)
{
	uint64_t pos = 0;

	*n = 0;
	if (rnd_below(4) == 0) { /* inline at 0 */
		uint64_t len = 1 + rnd_below(2048);
		ext[(*n)++] = (struct bf_fext){ .pos = 0, .len = len, .ram_bytes = len, .type = BF_FILE_EXTENT_INLINE };
		pos = SS;
	}
	while (pos / SS < NSECT - 2 && *n < MAXEXT) {
		if (rnd_below(4) == 0) /* a gap (NO_HOLES) */
			pos += SS * (1 + rnd_below(3));
		uint64_t len = SS * (1 + rnd_below(5));
		struct bf_fext e = { .pos = pos, .len = len, .type = BF_FILE_EXTENT_REG };
		unsigned kind = (unsigned)rnd_below(5);
		if (kind > 0) {
			e.type = kind == 4 ? BF_FILE_EXTENT_PREALLOC : BF_FILE_EXTENT_REG;
			const struct bf_fext *prev = *n > 0 ? &ext[*n - 1] : NULL;
			if (prev && prev->disk_bytenr && prev->disk_num_bytes >= len && rnd_below(3) == 0) {
				/* another piece of the previous item's disk extent (a reflink, an earlier split) */
				e.disk_bytenr = prev->disk_bytenr;
				e.disk_num_bytes = prev->disk_num_bytes;
				e.offset = SS * rnd_below((e.disk_num_bytes - len) / SS + 1);
			} else {
				e.disk_bytenr = (1 + rnd_below(1000)) * 1048576;
				e.offset = SS * rnd_below(4);
				e.disk_num_bytes = e.offset + len + SS * rnd_below(3);
			}
			e.ram_bytes = e.disk_num_bytes;
		} else {
			e.ram_bytes = len;
		}
		ext[(*n)++] = e;
		pos += len;
	}
}

/* What the tree walk does, on a list: returns the new list in out. */
static int drop_list(const struct bf_fext *ext, int n, uint64_t start, uint64_t end, struct bf_fext *out, int *nout,
		     uint64_t *found, int *ref_delta_at, uint64_t disk, uint64_t ref_off)
{
	*nout = 0;
	*found = 0;
	*ref_delta_at = 0;
	for (int i = 0; i < n; i++) {
		struct bf_drop_step s;
		if (ext[i].pos >= end) {
			out[(*nout)++] = ext[i];
			continue;
		}
		int r = bf_drop_step(&ext[i], start, end, SS, &s);
		if (r)
			return r;
		*found += s.bytes_found;
		if (s.act == BF_DROP_KEEP || s.act == BF_DROP_TRIM_TAIL || s.act == BF_DROP_TRIM_HEAD ||
		    s.act == BF_DROP_SPLIT)
			out[(*nout)++] = s.keep;
		if (s.act == BF_DROP_SPLIT)
			out[(*nout)++] = s.added;
		if (s.ref_drop && ext[i].disk_bytenr == disk && bf_fext_ref_offset(&ext[i]) == ref_off)
			(*ref_delta_at)--;
		if (s.ref_add && s.added.disk_bytenr == disk && bf_fext_ref_offset(&s.added) == ref_off)
			(*ref_delta_at)++;
	}
	return 0;
}

static uint64_t nbytes_of(const struct bf_fext *ext, int n)
{
	uint64_t b = 0;

	for (int i = 0; i < n; i++)
		if (ext[i].type == BF_FILE_EXTENT_INLINE || ext[i].disk_bytenr)
			b += ext[i].len;
	return b;
}

static void drop_one_case(void)
{
	struct bf_fext ext[MAXEXT], out[MAXEXT * 2];
	struct src before[NSECT], after[NSECT];
	int n, nout, delta;
	uint64_t found;

	gen_extents(ext, &n);
	uint64_t start = SS * rnd_below(NSECT), end = start + SS * (1 + rnd_below(NSECT / 2));
	if (rnd_below(8) == 0)
		end = UINT64_MAX;
	if (rnd_below(8) == 0)
		start = 0;
	/* the refs of one item that the range touches, to follow through */
	int pick = n ? (int)rnd_below((uint64_t)n) : 0;
	uint64_t disk = n ? ext[pick].disk_bytenr : 0, ref_off = n ? bf_fext_ref_offset(&ext[pick]) : 0;
	int refs_before = refs_of(ext, n, disk, ref_off);

	model_of(ext, n, before);
	int r = drop_list(ext, n, start, end, out, &nout, &found, &delta, disk, ref_off);
	CHECK(r == 0, "drop [%llu, %llu) failed: %d", (unsigned long long)start, (unsigned long long)end, r);
	if (r)
		return;
	model_of(out, nout, after);
	uint64_t s = 0;
	struct src want;
	for (; s < NSECT; s++) { /* the first sector whose source is not the model's */
		bool inside = s * SS >= start && s * SS < end;
		want = inside ? (struct src){ 0, 0, 0 } : before[s];
		if (memcmp(&want, &after[s], sizeof(want)))
			break;
	}
	CHECK(s == NSECT, "drop [%llu, %llu): sector %llu is (%d, %llu, %llu), model (%d, %llu, %llu)",
	      (unsigned long long)start, (unsigned long long)end, (unsigned long long)s,
	      s < NSECT ? after[s].kind : 0, s < NSECT ? (unsigned long long)after[s].disk : 0,
	      s < NSECT ? (unsigned long long)after[s].idx : 0, want.kind, (unsigned long long)want.disk,
	      (unsigned long long)want.idx);
	bool ordered = true, sane = true;
	for (int i = 1; i < nout; i++)
		ordered &= out[i - 1].pos + out[i - 1].len <= out[i].pos;
	for (int i = 0; i < nout; i++)
		sane &= out[i].len > 0 && out[i].offset + out[i].len <= (uint64_t)bf_max64(out[i].ram_bytes, out[i].len);
	CHECK(ordered && sane, "drop [%llu, %llu): items overlap, are out of order or exceed their extent",
	      (unsigned long long)start, (unsigned long long)end);
	CHECK(nbytes_of(ext, n) - found == nbytes_of(out, nout), "drop [%llu, %llu): nbytes %llu - found %llu != %llu",
	      (unsigned long long)start, (unsigned long long)end, (unsigned long long)nbytes_of(ext, n),
	      (unsigned long long)found, (unsigned long long)nbytes_of(out, nout));
	if (disk)
		CHECK(refs_before + delta == refs_of(out, nout, disk, ref_off), "drop [%llu, %llu): refs of (%llu, "
		      "%llu): %d before, %+d by the steps, %d counted after", (unsigned long long)start,
		      (unsigned long long)end, (unsigned long long)disk, (unsigned long long)ref_off, refs_before, delta,
		      refs_of(out, nout, disk, ref_off));
}

/* The kernel's cases one by one, on one regular extent [8K, 24K) at disk 1M offset 4K (ram 32K). */
static void drop_fixed(void)
{
	struct bf_fext e = { .pos = 8192, .len = 16384, .disk_bytenr = 1048576, .disk_num_bytes = 32768, .offset = 4096,
			     .ram_bytes = 32768, .type = BF_FILE_EXTENT_REG };
	struct bf_drop_step s;

	bf_drop_step(&e, 12288, 16384, 4096, &s);
	CHECK(s.act == BF_DROP_SPLIT && s.keep.len == 4096 && s.added.pos == 16384 && s.added.offset == 12288 &&
	      s.added.len == 8192 && s.ref_add && s.bytes_found == 4096 &&
	      bf_fext_ref_offset(&s.added) == bf_fext_ref_offset(&e), "split");
	bf_drop_step(&e, 4096, 12288, 4096, &s);
	CHECK(s.act == BF_DROP_TRIM_HEAD && s.keep.pos == 12288 && s.keep.offset == 8192 && s.keep.len == 12288 &&
	      s.bytes_found == 4096 && !s.ref_drop, "trim head");
	bf_drop_step(&e, 16384, 40960, 4096, &s);
	CHECK(s.act == BF_DROP_TRIM_TAIL && s.keep.len == 8192 && s.bytes_found == 8192 && s.next == 24576, "trim tail");
	bf_drop_step(&e, 8192, 24576, 4096, &s);
	CHECK(s.act == BF_DROP_DELETE && s.ref_drop && s.bytes_found == 16384, "delete");
	bf_drop_step(&e, 24576, 40960, 4096, &s);
	CHECK(s.act == BF_DROP_KEEP, "keep");
	struct bf_fext in = { .pos = 0, .len = 100, .ram_bytes = 100, .type = BF_FILE_EXTENT_INLINE };
	bf_drop_step(&in, 0, 4096, 4096, &s);
	CHECK(s.act == BF_DROP_DELETE && s.bytes_found == 100 && s.next == 4096 && !s.ref_drop, "inline delete");
	CHECK(bf_drop_step(&in, 0, 50, 4096, &s) == -EOPNOTSUPP, "partial inline accepted");
	struct bf_fext hole = { .pos = 0, .len = 8192, .ram_bytes = 8192, .type = BF_FILE_EXTENT_REG };
	bf_drop_step(&hole, 0, 4096, 4096, &s);
	CHECK(s.act == BF_DROP_TRIM_HEAD && s.bytes_found == 0 && s.keep.offset == 4096, "hole trim head");
	struct bf_fext zero = { .pos = 8192, .len = 0, .disk_bytenr = 4096, .disk_num_bytes = 4096,
				.type = BF_FILE_EXTENT_REG };
	bf_drop_step(&zero, 4096, 12288, 4096, &s);
	CHECK(s.act == BF_DROP_DELETE, "zero-length item inside the range is not deleted");
}

int main(void)
{
	const char *env = getenv("BF_TEST_SEED");

	check_seed = env ? strtoull(env, NULL, 0) : (uint64_t)time(NULL);
	rng_state = check_seed;
	dmap_fixed();
	for (int i = 0; i < 40; i++)
		dmap_random(400);
	drop_fixed();
	for (int i = 0; i < 20000; i++)
		drop_one_case();
	return check_summary();
}
