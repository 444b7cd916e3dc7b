/*
 * tests/unit/test_extalloc_rangeset.c - range sets of the extent allocator (alloc/rangeset.c) against a model.
 *
 * Owns: 30000 seeded random adds, removes (exact and of anything in a range) and queries (has, touches) on a
 * range set, compared after each with a bitmap of the same units; the total and a copy at the end.
 * Key idea: a bitmap is too slow for the allocator but obviously right; the range set must always describe
 * exactly its runs of set bits, one range per maximal run, in order.
 * Prints the seed; argv[1] replays. Ends with "N passed, N failed"; exit 0 only if none failed.
 */
#include "alloc/extalloc_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "tests/unit/check.h"

static uint64_t rng_state;
static uint64_t rnd(uint64_t n) { return check_below(&rng_state, n); }

/* ================= 1. range sets ================= */

#define RS_UNITS 2048u

static bool rs_matches(const struct ea_rset *s, const uint8_t *m)
{
	size_t k = 0;
	for (uint32_t i = 0; i < RS_UNITS;) {
		if (!m[i]) {
			i++;
			continue;
		}
		uint32_t j = i;
		while (j < RS_UNITS && m[j])
			j++;
		if (k >= s->n || s->v[k].start != i || s->v[k].end != j)
			return false;
		k++;
		i = j;
	}
	return k == s->n;
}

static void test_rangeset(void)
{
	uint8_t m[RS_UNITS] = { 0 };
	struct ea_rset s = { 0 };
	unsigned bad = 0;
	for (int op = 0; op < 30000; op++) {
		uint32_t a = (uint32_t)rnd(RS_UNITS), b = a + 1 + (uint32_t)rnd(48), set = 0;
		if (b > RS_UNITS)
			b = RS_UNITS;
		for (uint32_t i = a; i < b; i++)
			set += m[i];
		int kind = (int)rnd(3), ret;
		if (kind == 0) {
			ret = rset_add(&s, a, b);
			bad += set ? ret != -EEXIST : ret != 0;
			if (!set)
				memset(m + a, 1, b - a);
		} else if (kind == 1) {
			ret = rset_del(&s, a, b);
			bad += set == b - a ? ret != 0 : ret != -ENOENT;
			if (set == b - a)
				memset(m + a, 0, b - a);
		} else {
			ret = rset_del_any(&s, a, b);
			bad += ret != 0;
			memset(m + a, 0, b - a);
		}
		uint32_t qa = (uint32_t)rnd(RS_UNITS), qb = qa + 1 + (uint32_t)rnd(64), qset = 0;
		if (qb > RS_UNITS)
			qb = RS_UNITS;
		for (uint32_t i = qa; i < qb; i++)
			qset += m[i];
		bad += rset_has(&s, qa, qb) != (qset == qb - qa) || rset_touches(&s, qa, qb) != (qset > 0);
		if (!rs_matches(&s, m)) {
			bad++;
			break;
		}
	}
	uint64_t count = 0;
	for (uint32_t i = 0; i < RS_UNITS; i++)
		count += m[i];
	CHECK(!bad && rset_bytes(&s) == count, "range set disagrees with its model (%u bad steps)", bad);
	struct ea_rset c = { 0 };
	CHECK(!rset_copy(&c, &s) && rs_matches(&c, m), "range set copy differs");
	rset_free(&c);
	rset_free(&s);
}

int main(int argc, char **argv)
{
	check_seed = argc > 1 ? strtoull(argv[1], NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 20);
	rng_state = check_seed;
	printf("test_extalloc_rangeset: seed %" PRIu64 " (pass it as argv[1] to replay)\n", check_seed);
	test_rangeset();
	return check_summary();
}
