/*
 * tests/unit/test_btree_cow_enospc.c - allocation failures in the middle of copy-on-write B-tree transactions.
 *
 * Owns: at 4K and 16K nodes, a committed tree of a few thousand random operations, then 20 transactions whose
 * inserts meet an allocator that fails after a random number of allocations: the insert returns -ENOSPC, the
 * transaction is aborted, no cached block stays referenced, and the committed tree is intact both in the cache
 * and read back from the file.
 * Key idea: the model is saved before each transaction and restored after the abort; check_tree of
 * btree_cow_harness.h must then find exactly the committed tree.
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
		c->al.fail_after = (long)check_below(&c->rng, 40);
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
	cow_start(argc, argv, 0);
	cow_fill_pool();
	test_enospc(4096, check_seed + 5);
	test_enospc(16384, check_seed + 6);
	return check_summary();
}
