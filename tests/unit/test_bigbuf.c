/*
 * tests/unit/test_bigbuf.c - unit tests for util/bigbuf.c, the growable buffers behind the dirty-range map.
 *
 * Owns: that a buffer keeps its bytes through every resize (small to small, small to large, large to larger),
 * that a large one is page-aligned and reports a capacity at least what was asked, that freed large buffers come
 * back from the pool (the same mapping, for a request that fits in it) and that freeing more than the pool holds
 * is safe, with seeded random sizes. Ends with "N passed, N failed".
 */
#include "util/util.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "tests/unit/check.h"

static void fill(uint8_t *p, size_t n, uint64_t seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(seed + i * 131);
}

static bool same(const uint8_t *p, size_t n, uint64_t seed)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != (uint8_t)(seed + i * 131))
			return false;
	return true;
}

/* Grow one buffer through random sizes: its bytes stay, large ones are aligned. */
static void test_grow(uint64_t seed)
{
	uint64_t rng = check_seed = seed;
	size_t cap = 0, used = 0;
	uint8_t *p = NULL;
	long page = sysconf(_SC_PAGESIZE);

	for (int step = 0; step < 40; step++) {
		size_t want = used + 1 + (size_t)(splitmix64(&rng) % (step < 20 ? 8192 : 3u << 20));
		uint8_t *q = bf_bigbuf_resize(p, &cap, want);
		CHECK(q != NULL, "step %d: resize to %zu", step, want);
		if (!q)
			break;
		p = q;
		CHECK(cap >= want, "step %d: capacity %zu below the %zu asked", step, cap, want);
		CHECK(same(p, used, seed), "step %d: the first %zu bytes survived a resize to %zu", step, used, want);
		CHECK(want < BF_BIGBUF_MIN || (uintptr_t)p % (uintptr_t)page == 0, "step %d: a %zu-byte buffer is "
		      "page-aligned", step, want);
		fill(p, want, seed);
		used = want;
	}
	bf_bigbuf_free(p, cap);
	check_seed = 0;
}

/* A freed large buffer is handed out again for a request that fits; more frees than the pool holds are fine. */
static void test_pool(void)
{
	size_t cap1 = 0, cap2 = 0;
	uint8_t *a = bf_bigbuf_resize(NULL, &cap1, 8u << 20);
	CHECK(a != NULL, "an 8 MiB buffer");
	if (!a)
		return;
	memset(a, 0x5a, cap1);
	bf_bigbuf_free(a, cap1);
	uint8_t *b = bf_bigbuf_resize(NULL, &cap2, 1u << 20);
	CHECK(b == a && cap2 == cap1, "the pooled 8 MiB mapping comes back for 1 MiB (got %p, %zu bytes)", (void *)b,
	      cap2);
	b[0] = 1; /* writable */
	bf_bigbuf_free(b, cap2);

	uint8_t *many[12];
	size_t caps[12];
	for (int i = 0; i < 12; i++) {
		caps[i] = 0;
		many[i] = bf_bigbuf_resize(NULL, &caps[i], (size_t)(i + 1) << 20);
		CHECK(many[i] != NULL, "buffer %d of 12", i);
		if (many[i])
			memset(many[i], i, (size_t)(i + 1) << 20);
	}
	for (int i = 0; i < 12; i++)
		bf_bigbuf_free(many[i], caps[i]);
	size_t c = 0;
	uint8_t *s = bf_bigbuf_resize(NULL, &c, 100);
	CHECK(s != NULL && c >= 100, "a small buffer after the pool filled");
	bf_bigbuf_free(s, c);
}

int main(void)
{
	for (uint64_t seed = 1; seed <= 8; seed++)
		test_grow(seed);
	test_pool();
	return check_summary();
}
