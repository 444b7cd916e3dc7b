/*
 * tests/unit/test_btree_cow_workload.c - the copy-on-write B-tree under a seeded random workload, against a model.
 *
 * Owns: per node size (4K, 16K, 64K) a workload of the operations of btree_cow_ops.h in 20 transactions whose
 * transid rises, growing, churning, then shrinking, so blocks of older generations get copied and blocks of the
 * running one change in place (some transactions also write in the middle, so their own blocks get copied
 * again); the tree grows and shrinks through levels, is emptied and filled a little again; arguments that must
 * be refused; leaves stay well filled and the tree reaches level 2 (level 1 at 64K).
 * Key idea: after every operation the keys it touched are looked up; periodically and after every transaction
 * the whole tree is walked and compared with the model (check_tree of btree_cow_harness.h). BTREE_COW_OPS sets
 * the number of operations per node size (default 100000, 50000 under AddressSanitizer).
 * Random parts print their seed; pass a seed as argv[1] to replay. Ends with "N passed, N failed".
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tests/unit/btree_cow_ops.h"

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
		uint32_t f = (uint32_t)check_below(&c->rng, KEYSPACE), nx = model_succ(&c->m, f);

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
	uint32_t asc = (uint32_t)check_below(&c->rng, KEYSPACE), desc = (uint32_t)check_below(&c->rng, KEYSPACE);
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
		uint32_t r = (uint32_t)check_below(&c->rng, 3);
		uint32_t idx = r == 0 ? model_select(&c->m, 0) : r == 1 ? model_select(&c->m, c->m.count - 1)
								  : pick_present(c);

		c->ops++;
		op_delete(c, idx, 1 + (uint32_t)check_below(&c->rng, 8));
	}
	commit(c);
	CHECK(c->root.level == 0 || c->broken, "an emptied tree has a root leaf (level %u)", c->root.level);
	trans_begin(c);
	for (int i = 0; i < 200 && !c->broken; i++)
		one_op(c, &GROW, &asc, &desc);
	commit(c);
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

int main(int argc, char **argv)
{
	uint64_t ops = cow_ops();

	cow_start(argc, argv, ops);
	test_workload(4096, ops, check_seed + 1);
	test_workload(16384, ops, check_seed + 2);
	test_workload(65536, ops, check_seed + 3);
	return check_summary();
}
