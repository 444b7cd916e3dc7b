/*
 * tests/unit/test_btree_search.c - searching synthetic B-trees (btree/search.c over btree/cache.c) against a model.
 *
 * Owns: trees of 0 to 20000 sorted random keys packed into leaves and nodes of 4K/16K/64K (1 to 4 levels, built
 * by btree_synth.h into a temporary file registered as a one-device volume), searched against the sorted-array
 * model: bf_search, bf_search_le, next/prev steps from every result, bf_iterate over random ranges and a full
 * forward and backward walk. Set BTREE_BENCH=1 to also time cached searches.
 * Key idea: item data is a function of its key, so every returned item can be verified, and the model says
 * exactly which slot every search must land on.
 * Random parts print their seed; pass a seed as argv[1] to replay. Ends with "N passed, N failed".
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "tests/unit/btree_synth.h"

static void test_search_model(uint32_t nodesize, size_t n, unsigned maxdata, size_t leaf_cap, size_t node_cap,
			      int want_level, unsigned ntargets)
{
	uint64_t rng = check_seed ^ (nodesize * 7919ull + n);
	struct fs f;
	struct bf_path p;
	unsigned bad = 0;
	int ret = fs_make(&f, nodesize, 1, n, maxdata, leaf_cap, node_cap, 0, &rng);

	CHECK(ret == 0, "setup of %u-byte tree with %zu keys: %d", nodesize, n, ret);
	if (ret) {
		fs_free(&f);
		return;
	}
	CHECK(want_level < 0 || f.root.level == want_level, "tree of %zu keys at nodesize %u has %u levels above the "
	      "leaves, want %d", n, nodesize, f.root.level, want_level);
	bf_path_init(&p, &f.env);
	for (unsigned i = 0; i < ntargets; i++) {
		struct bf_key t = random_target(&f.m, &rng);

		bad += !check_one_search(&f, &p, &t, &rng);
		bad += !check_one_search_le(&f, &p, &t);
	}
	bf_path_release(&p);
	CHECK(bad == 0, "nodesize %u, %zu keys, level %u: %u of %u searches disagree with the model", nodesize, n,
	      f.root.level, bad, ntargets);
	bad = 0;
	for (unsigned i = 0; i < ntargets / 10; i++) {
		struct bf_key a = random_target(&f.m, &rng), b = random_target(&f.m, &rng);

		bad += !check_one_iterate(&f, bf_key_cmp(&a, &b) <= 0 ? a : b, bf_key_cmp(&a, &b) <= 0 ? b : a, &rng);
	}
	CHECK(bad == 0, "nodesize %u, %zu keys: %u bf_iterate ranges wrong", nodesize, n, bad);
	CHECK(check_full_walk(&f), "nodesize %u, %zu keys: full forward/backward walk wrong", nodesize, n);
	fs_free(&f);
}

static void test_search(void)
{
	test_search_model(4096, 0, 0, 100, 100, 0, 50);          /* empty root leaf */
	test_search_model(4096, 1, 8, 100, 100, 0, 50);
	test_search_model(4096, 100, 8, 150, 100, 0, 3000);      /* 1 level */
	test_search_model(16384, 3000, 16, 300, 400, 1, 3000);   /* 2 levels */
	test_search_model(65536, 4000, 32, 40, 20, 2, 3000);     /* 3 levels */
	test_search_model(4096, 6000, 4, 40, 10, 3, 3000);       /* 4 levels */
	test_search_model(65536, 20000, 64, 700, 1900, 1, 2000); /* large 64K leaves and nodes */
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void bench(void)
{
	uint64_t rng = check_seed ^ 0xbe;
	struct fs f;
	struct bf_path p;

	if (fs_make(&f, 16384, 1, 200000, 16, 300, 400, 0, &rng) == 0) {
		double t0;
		unsigned n = 200000;

		bf_path_init(&p, &f.env);
		t0 = now();
		for (unsigned i = 0; i < n; i++) {
			struct bf_key t = f.m.keys[check_below(&rng, f.m.n)];

			bf_search(&f.env, &f.root, &t, &p);
		}
		printf("bench: %u cached searches in a %u-level tree (16K nodes, %zu items): %.0f ns each\n", n,
		       f.root.level + 1, f.m.n, (now() - t0) / n * 1e9);
		bf_path_release(&p);
	}
	fs_free(&f);
}

int main(int argc, char **argv)
{
	check_seed = argc > 1 ? strtoull(argv[1], NULL, 0) : (uint64_t)time(NULL);
	printf("test_btree_search: seed %" PRIu64 "\n", check_seed);
	test_search();
	if (getenv("BTREE_BENCH"))
		bench();
	return check_summary();
}
