/*
 * tests/unit/test_btree_cow_layout.c - copy-on-write B-tree modification, exactly: the layout and headers of blocks.
 *
 * Owns: the exact leaf layout after inserts, an extend in the middle and truncations from the front and the
 * end; header stamping (flags, owner, bytenr, generation, level, nritems, fsid, chunk_tree_uuid) of new,
 * copied and finalized blocks (WRITTEN and a valid checksum); the copy of a committed root in the next
 * transaction; refusal of an address still in use and of writing a malformed block; abort back to the
 * committed tree.
 * Key idea: a three-item tree small enough that every offset and field can be written down in the test, then
 * checked with check_tree of btree_cow_harness.h like the random tests.
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

#include "tests/unit/btree_cow_harness.h"

/* (1) exact layout and header fields of new, copied and finalized blocks. */
static void test_layout(uint64_t rng_seed)
{
	struct ctx c0, *c = &c0;
	struct bf_key a = key_of(10), b = key_of(20), d = key_of(30);
	uint32_t lds, off, size;
	struct bf_path p;
	struct bf_block *leaf;
	const uint8_t *data;
	uint64_t first_root;
	const struct bf_header *h;

	if (ctx_open(c, 4096, 1 << 20, rng_seed)) {
		CHECK(0, "cannot set up a test volume");
		return;
	}
	lds = 4096 - (uint32_t)sizeof(struct bf_header);
	trans_begin(c);
	CHECK(bf_tree_create(&c->t, TREE_ID, &c->root) == 0 && c->root.level == 0 && c->root.generation == 100,
	      "empty tree created at generation 100");
	CHECK(bf_insert_item(&c->t, &c->root, &b, "bbbbbbbbbbbbbbbbbbbb", 20) == 0 &&
		      bf_insert_item(&c->t, &c->root, &a, "aaaaaaaaaa", 10) == 0 &&
		      bf_insert_item(&c->t, &c->root, &d, "ddddd", 5) == 0,
	      "three inserts");
	CHECK(c->al.allocs == 1, "inserts into a block of the running transaction change it in place (%" PRIu64
	      " allocations)", c->al.allocs);
	CHECK(bf_block_read(&c->env, c->root.bytenr, NULL, &leaf) == 0, "reading the root leaf");
	for (uint32_t s = 0; s < 3; s++) {
		static const uint32_t want_off[3] = { 10, 30, 35 }, want_size[3] = { 10, 20, 5 };

		data = bf_leaf_item(leaf, s, &size);
		off = (uint32_t)(data - leaf->data - sizeof(struct bf_header));
		CHECK(off == lds - want_off[s] && size == want_size[s], "slot %u at offset %u size %u, expected %u %u", s,
		      off, size, lds - want_off[s], want_size[s]);
	}
	h = (const struct bf_header *)leaf->data;
	CHECK(get64(h->flags) == (uint64_t)BF_MIXED_BACKREF_REV << BF_BACKREF_REV_SHIFT && get64(h->owner) == TREE_ID &&
		      get64(h->bytenr) == c->root.bytenr && get64(h->generation) == 100 && h->level == 0 &&
		      get32(h->nritems) == 3 && memcmp(h->fsid, c->fsid, BF_FSID_SIZE) == 0 &&
		      memcmp(h->chunk_tree_uuid, c->ctu, BF_UUID_SIZE) == 0,
	      "new block header: flags, owner, bytenr, generation, level, nritems, fsid, chunk_tree_uuid");
	bf_block_put(&c->env, leaf);
	/* extend the middle item, truncate the first from the front and the last from the end */
	bf_path_init(&p, &c->env);
	CHECK(bf_search_slot(&c->t, &c->root, &b, 4, true, &p) == 0 && bf_extend_item(&c->t, &p, 4) == 0,
	      "extend the middle item");
	data = bf_path_item(&p, &size);
	CHECK(size == 24 && memcmp(data, "bbbbbbbbbbbbbbbbbbbb\0\0\0\0", 24) == 0 &&
		      data - p.nodes[0]->data - sizeof(struct bf_header) == lds - 34,
	      "extended item keeps its data, gains zeroes, starts at %u", lds - 34);
	p.slots[0] = 0;
	CHECK(bf_truncate_item(&c->t, &p, 3, false) == 0, "truncate the first item from the front");
	data = bf_path_item(&p, &size);
	CHECK(size == 3 && memcmp(data, "aaa", 3) == 0 && data - p.nodes[0]->data - sizeof(struct bf_header) ==
									 lds - 3,
	      "front truncation keeps the tail in place");
	p.slots[0] = 2;
	CHECK(bf_truncate_item(&c->t, &p, 2, true) == 0, "truncate the last item from the end");
	data = bf_path_item(&p, &size);
	CHECK(size == 2 && memcmp(data, "dd", 2) == 0 && data - p.nodes[0]->data - sizeof(struct bf_header) ==
									 lds - 3 - 24 - 2,
	      "end truncation keeps the head, packed");
	bf_path_release(&p);
	model_set(&c->m, 10, (uint8_t *)strdup("aaa"), 3);
	model_set(&c->m, 20, memcpy(malloc(24), "bbbbbbbbbbbbbbbbbbbb\0\0\0\0", 24), 24);
	model_set(&c->m, 30, (uint8_t *)strdup("dd"), 2);
	/* finalize: WRITTEN and a valid checksum; the next transaction copies the block */
	CHECK(bf_trans_write_dirty(&c->t) == 0, "writing the first transaction");
	bf_trans_destroy(&c->t);
	talloc_commit(&c->al);
	c->env.super_generation = c->transid++;
	first_root = c->root.bytenr;
	CHECK(bf_block_read(&c->env, first_root, NULL, &leaf) == 0, "reading the written root");
	h = (const struct bf_header *)leaf->data;
	CHECK(get64(h->flags) == (BF_HEADER_FLAG_WRITTEN | (uint64_t)BF_MIXED_BACKREF_REV << BF_BACKREF_REV_SHIFT) &&
		      bf_block_check(&c->env, first_root, leaf->data, NULL, NULL, 0) == 0,
	      "a finalized block has WRITTEN set and a valid checksum");
	bf_block_put(&c->env, leaf);
	trans_begin(c);
	bf_path_init(&p, &c->env);
	CHECK(bf_search_slot(&c->t, &c->root, &a, 0, true, &p) == 0, "search with cow in transaction 101");
	CHECK(c->root.bytenr != first_root && c->root.generation == 101 && p.nodes[0]->generation == 101 &&
		      c->al.state[(first_root - BASE) / 4096] == BLK_PINNED && c->al.cowed == 1,
	      "the old root was copied: new address, generation 101, old one pinned");
	bf_path_release(&p);
	check_tree(c, "layout test");
	/* an allocator handing out the address of a block this transaction still owns is refused */
	c->al.force_next = c->root.bytenr;
	bf_log_set_verbosity((enum bf_log_level)0);
	{
		struct bf_root r = c->root;

		CHECK(bf_tree_create(&c->t, TREE_ID, &r) == -EUCLEAN && r.bytenr == c->root.bytenr,
		      "a new block at an address still in use is refused");
	}
	/* a malformed block is never written */
	CHECK(bf_block_read(&c->env, c->root.bytenr, NULL, &leaf) == 0 && leaf->dirty_trans == &c->t,
	      "the copied root is a dirty block");
	put32(&((struct bf_item *)(leaf->data + sizeof(struct bf_header)))->size, 4);
	CHECK(bf_trans_write_dirty(&c->t) == -EUCLEAN && c->t.ndirty == 1, "a malformed dirty block is not written");
	bf_block_put(&c->env, leaf);
	bf_log_set_verbosity(BF_LOG_ERR);
	/* after an abort the committed tree is what the cache and the file show */
	bf_trans_abort(&c->t);
	bf_trans_destroy(&c->t);
	talloc_abort(&c->al);
	c->root = (struct bf_root){ TREE_ID, first_root, 100, 0 };
	check_tree(c, "after an abort");
	ctx_close(c);
}

int main(int argc, char **argv)
{
	cow_start(argc, argv, 0);
	test_layout(check_seed);
	return check_summary();
}
