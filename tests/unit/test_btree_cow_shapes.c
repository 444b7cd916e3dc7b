/*
 * tests/unit/test_btree_cow_shapes.c - copy-on-write B-tree shapes that random work rarely makes, and deep trees.
 *
 * Owns: an ascending fill (pushes left make full nodes and leaves), a hole deleted out of its middle (thin nodes
 * next to full ones), the hole refilled descending, then everything deleted without rebalancing on the way
 * down; deep trees, 4K nodes to level 3 and 64K nodes to level 2, built from large items and torn down again to
 * a root leaf.
 * Key idea: steer the tree into the shapes where split, merge and rebalance have their corner cases, and check
 * it whole after every commit (check_tree of btree_cow_harness.h). Item data points into a shared random pool.
 * BTREE_COW_OPS scales the sizes down when set below 30000 (it is 100000 by default, 50000 under ASan).
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

/* (3) deep trees: items of min_size + [0, span) bytes inserted at random until there are items of them, then all
   deleted in random order, committing every commit_every operations; the root must reach want_level. */
static void test_deep(uint32_t nodesize, uint64_t items, uint32_t min_size, uint32_t span, unsigned want_level,
		      uint64_t commit_every, uint64_t rng_seed)
{
	struct ctx c0, *c = &c0;
	uint64_t done = 0;
	unsigned top = 0;

	if (ctx_open(c, nodesize, 8u << 20, rng_seed)) {
		CHECK(0, "cannot set up a test volume");
		return;
	}
	trans_begin(c);
	CHECK(bf_tree_create(&c->t, TREE_ID, &c->root) == 0, "creating an empty tree");
	while (done < items && !c->broken) {
		uint32_t idx = (uint32_t)check_below(&c->rng, KEYSPACE), size = min_size + (uint32_t)check_below(&c->rng, span);
		struct bf_key k = key_of(idx);
		uint8_t *data = pool + check_below(&c->rng, POOL_SIZE);

		if (model_has(&c->m, idx))
			continue;
		c->ops++;
		VERIFY(bf_insert_item(&c->t, &c->root, &k, data, size) == 0, "deep: insert %s", keystr(&k));
		model_set(&c->m, idx, data, size);
		if (++done % commit_every == 0) {
			top = c->root.level > top ? c->root.level : top;
			commit(c);
			trans_begin(c);
		}
	}
	top = c->root.level > top ? c->root.level : top;
	printf("deep %uK: %" PRIu64 " items of %u-%u bytes, up to level %u and %" PRIu64 " blocks\n", nodesize >> 10,
	       items, min_size, min_size + span - 1, top, c->max_blocks);
	CHECK(top >= want_level || c->broken, "deep %uK: the tree reached level %u with %" PRIu64 " items (want %u)",
	      nodesize >> 10, top, items, want_level);
	while (c->m.count && !c->broken) {
		c->ops++;
		op_delete(c, pick_present(c), 1);
		if (c->m.count % commit_every == 0) {
			commit(c);
			trans_begin(c);
		}
	}
	commit(c);
	CHECK(c->root.level == 0 || c->broken, "deep: the emptied tree is a root leaf again (level %u)", c->root.level);
	ctx_close(c);
}

/* Insert index idx with size bytes of pooled data. */
static void put_item(struct ctx *c, uint32_t idx, uint32_t size)
{
	struct bf_key k = key_of(idx);
	uint8_t *data = pool + check_below(&c->rng, POOL_SIZE);

	c->ops++;
	VERIFY(bf_insert_item(&c->t, &c->root, &k, data, size) == 0, "shapes: insert %s", keystr(&k));
	model_set(&c->m, idx, data, size);
}

/* (3b) shapes that random work rarely makes: an ascending fill (pushes left make full nodes and leaves), a hole
   deleted out of its middle (thin nodes next to full ones), the hole refilled descending, then everything
   deleted at random without rebalancing on the way down (emptied nodes and at last the root removed by the
   delete itself). */
static void test_shapes(uint32_t n, uint64_t rng_seed)
{
	struct ctx c0, *c = &c0;

	if (ctx_open(c, 4096, 8u << 20, rng_seed)) {
		CHECK(0, "cannot set up a test volume");
		return;
	}
	trans_begin(c);
	CHECK(bf_tree_create(&c->t, TREE_ID, &c->root) == 0, "creating an empty tree");
	for (uint32_t i = 0; i < n && !c->broken; i++)
		put_item(c, i, 100);
	commit(c);
	CHECK(c->root.level >= 2 || c->broken || n < 20000, "shapes: ascending fill reached level %u", c->root.level);
	/* 31 items a leaf, 121 leaves a node: the second node (items 3751 to 7501) shrinks under a quarter next
	   to full neighbours, which must give it pointers without being emptied */
	trans_begin(c);
	for (uint32_t i = n / 5; i < n * 73 / 200 && !c->broken; i++)
		op_delete(c, i, 1);
	commit(c);
	trans_begin(c);
	for (uint32_t i = n * 73 / 200; i-- > n / 5 && !c->broken;)
		put_item(c, i, 100);
	commit(c);
	trans_begin(c);
	c->del_ins_len = 0;
	while (c->m.count && !c->broken) {
		c->ops++;
		op_delete(c, pick_present(c), 1 + (uint32_t)check_below(&c->rng, 4));
		if (c->m.count % 1000 == 0)
			check_tree(c, "shapes: deleting without rebalancing");
	}
	commit(c);
	CHECK(c->root.level == 0 || c->broken, "shapes: the emptied tree is a root leaf again (level %u)",
	      c->root.level);
	ctx_close(c);
}

int main(int argc, char **argv)
{
	uint64_t ops = cow_ops();

	cow_start(argc, argv, ops);
	cow_fill_pool();
	test_shapes(ops >= 30000 ? 20000 : 2000, check_seed + 7);
	test_deep(4096, ops >= 30000 ? 50000 : ops / 2, 700, 300, ops >= 30000 ? 3 : 1, 10000, check_seed + 4);
	test_deep(65536, ops >= 30000 ? 6000 : ops / 10, 16000, 6000, ops >= 30000 ? 2 : 1, 3000, check_seed + 8);
	return check_summary();
}
