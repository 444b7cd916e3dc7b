/*
 * tests/unit/test_btree_validate.c - validation of tree blocks (bf_block_check in btree/block.c) and reading
 * damaged trees.
 *
 * Owns: (1) every validation rule of bf_block_check, one corrupted field at a time, on a valid leaf and node of
 * 4K/16K/64K, the block accessors, the other checksum types and the env's refusal of bad geometry; (2) a seeded
 * byte-flip fuzz of a valid leaf and node with the checksum recomputed (so the structural checks run), after
 * which every accessor of a block that still passes must stay inside it; (3) searches over a synthetic 4K tree
 * (btree_synth.h) with a corrupted leaf (searches into it fail with -EIO, all others still work) and with
 * random blocks flipped and re-checksummed (every search ends, with an answer or an error).
 * Key idea: change one thing at a time from a block known to be valid, so each failure names the rule.
 * Random parts print their seed; pass a seed as argv[1] to replay. Ends with "N passed, N failed".
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tests/unit/btree_synth.h"

/* ================= (2) validation rules ================= */

struct vctx {
	struct bf_tree_env env;
	uint8_t fsid[BF_FSID_SIZE];
	uint8_t leaf[65536], node[65536], work[65536];
	struct bf_key lkeys[20];
	uint32_t nodesize;
};

static void vctx_init(struct vctx *v, uint32_t nodesize, uint64_t *rng)
{
	struct model m = make_model(20, 24, rng);

	memset(v, 0, sizeof(*v));
	v->nodesize = nodesize;
	memset(v->fsid, 0x5a, BF_FSID_SIZE);
	memcpy(v->lkeys, m.keys, sizeof(v->lkeys));
	free(m.keys);
	bf_env_init(&v->env, NULL, nodesize, SECTOR, BF_CSUM_CRC32C, v->fsid, SUPER_GEN, 0);
	put_header(v->leaf, nodesize, v->fsid, 1 << 20, 0, 20, BF_FS_TREE_OBJECTID, 77);
	fill_leaf(v->leaf, nodesize, v->lkeys, 20, 24);
	put_csum(v->leaf, nodesize, BF_CSUM_CRC32C);
	put_header(v->node, nodesize, v->fsid, 2 << 20, 1, 20, BF_FS_TREE_OBJECTID, 77);
	for (uint32_t i = 0; i < 20; i++) {
		bf_key_to_disk(&kptr_p(v->node, i)->key, &v->lkeys[i]);
		put64(&kptr_p(v->node, i)->blockptr, (3ull << 20) + i * nodesize);
		put64(&kptr_p(v->node, i)->generation, 50 + i);
	}
	put_csum(v->node, nodesize, BF_CSUM_CRC32C);
}

/* The work copy of the leaf or node, for one corruption. */
static uint8_t *work_of(struct vctx *v, bool node)
{
	memcpy(v->work, node ? v->node : v->leaf, v->nodesize);
	return v->work;
}

static void expect_check(struct vctx *v, const char *what, uint64_t bytenr, const struct bf_block_expect *exp,
			 bool recsum, int want, const char *needle)
{
	char err[512] = "";
	int ret;

	if (recsum)
		put_csum(v->work, v->nodesize, BF_CSUM_CRC32C);
	ret = bf_block_check(&v->env, bytenr, v->work, exp, err, sizeof(err));
	CHECK(ret == want && (!needle || strstr(err, needle)), "%s (nodesize %u): ret %d want %d, err \"%s\" should "
	      "mention \"%s\"", what, v->nodesize, ret, want, err, needle ? needle : "");
}

static void test_validate_leaf(struct vctx *v)
{
	const uint64_t L = 1 << 20;
	struct bf_key k0 = v->lkeys[0], other = v->lkeys[1];
	struct bf_block_expect e_ok = { 77, 0, &k0, BF_FS_TREE_OBJECTID };
	struct bf_block_expect e;
	uint8_t *b;
	uint32_t off1, off2;

	b = work_of(v, false);
	expect_check(v, "valid leaf", L, &e_ok, false, 0, NULL);
	expect_check(v, "valid leaf, no expectations", L, NULL, false, 0, NULL);
	b[v->nodesize - 1] ^= 1;
	expect_check(v, "bad checksum (data)", L, NULL, false, -EIO, "checksum mismatch");
	b = work_of(v, false);
	b[0] ^= 0x80;
	expect_check(v, "bad checksum (csum field)", L, NULL, false, -EIO, "expected");
	b = work_of(v, false);
	expect_check(v, "unaligned address", L + 512, NULL, false, -EUCLEAN, "aligned");
	expect_check(v, "wrong bytenr", L + SECTOR, NULL, false, -EUCLEAN, "bytenr");
	b[BF_CSUM_SIZE + 3] ^= 1;
	expect_check(v, "wrong fsid", L, NULL, true, -EUCLEAN, "fsid");
	b = work_of(v, false);
	((struct bf_header *)b)->level = BF_MAX_LEVEL;
	expect_check(v, "level too high", L, NULL, true, -EUCLEAN, "level");
	b = work_of(v, false);
	e = e_ok;
	e.level = 1;
	expect_check(v, "level mismatch", L, &e, false, -EUCLEAN, "level is 0, parent expects 1");
	e = e_ok;
	e.generation = 76;
	expect_check(v, "generation mismatch", L, &e, false, -EUCLEAN, "generation is 77");
	put64(&((struct bf_header *)b)->generation, 0);
	expect_check(v, "generation 0", L, NULL, true, -EUCLEAN, "generation is 0");
	put64(&((struct bf_header *)b)->generation, SUPER_GEN + 1);
	expect_check(v, "generation of the running transaction", L, NULL, true, 0, NULL);
	put64(&((struct bf_header *)b)->generation, SUPER_GEN + 2);
	expect_check(v, "generation from the future", L, NULL, true, -EUCLEAN, "newer");
	b = work_of(v, false);
	e = e_ok;
	e.first_key = &other;
	expect_check(v, "first key mismatch", L, &e, false, -EUCLEAN, "first key");
	e = e_ok;
	e.owner = BF_EXTENT_TREE_OBJECTID;
	expect_check(v, "owner mismatch", L, &e, false, -EUCLEAN, "owner");
	e.owner = 257; /* snapshots share blocks: any subvolume owner will do for a subvolume tree */
	expect_check(v, "subvolume owner of a shared block", L, &e, false, 0, NULL);
	put32(&((struct bf_header *)b)->nritems, (v->nodesize - HDR) / ITEM + 1);
	expect_check(v, "nritems too large", L, NULL, true, -EUCLEAN, "at most");
	b = work_of(v, false);
	put32(&((struct bf_header *)b)->nritems, 0);
	expect_check(v, "empty leaf (a root)", L, NULL, true, 0, NULL);
	expect_check(v, "empty leaf where the parent expects a key", L, &e_ok, true, -EUCLEAN, "empty");
	/* item 0 ends past the data area */
	b = work_of(v, false);
	put32(&item_p(b, 0)->offset, get32(item_p(b, 0)->offset) + 8);
	expect_check(v, "item offset past the end", L, NULL, true, -EUCLEAN, "past the end");
	/* a gap between item 0 and item 1 */
	b = work_of(v, false);
	put32(&item_p(b, 1)->offset, get32(item_p(b, 1)->offset) - 4);
	expect_check(v, "items not packed", L, NULL, true, -EUCLEAN, "packed");
	/* item 2 grown down into the item headers, still packed */
	b = work_of(v, false);
	put32(&((struct bf_header *)b)->nritems, 3);
	off1 = get32(item_p(b, 1)->offset);
	off2 = 3 * ITEM - 5;
	put32(&item_p(b, 2)->offset, off2);
	put32(&item_p(b, 2)->size, off1 - off2);
	expect_check(v, "overlapping items", L, NULL, true, -EUCLEAN, "overlaps the item headers");
	/* huge size: offset + size wraps 32 bits */
	b = work_of(v, false);
	put32(&item_p(b, 0)->size, UINT32_MAX);
	expect_check(v, "item size wraps", L, NULL, true, -EUCLEAN, "past the end");
	/* keys out of order, and a duplicate */
	b = work_of(v, false);
	bf_key_to_disk(&item_p(b, 4)->key, &v->lkeys[3]);
	bf_key_to_disk(&item_p(b, 3)->key, &v->lkeys[4]);
	expect_check(v, "leaf keys out of order", L, NULL, true, -EUCLEAN, "is not above");
	b = work_of(v, false);
	bf_key_to_disk(&item_p(b, 4)->key, &v->lkeys[3]);
	expect_check(v, "duplicate leaf key", L, NULL, true, -EUCLEAN, "is not above");
}

static void test_validate_node(struct vctx *v)
{
	const uint64_t N = 2 << 20;
	struct bf_key k0 = v->lkeys[0];
	struct bf_block_expect e_ok = { 77, 1, &k0, BF_FS_TREE_OBJECTID }, e = e_ok;
	uint8_t *b;

	b = work_of(v, true);
	expect_check(v, "valid node", N, &e_ok, false, 0, NULL);
	e.level = 0;
	expect_check(v, "node where a leaf is expected", N, &e, false, -EUCLEAN, "level is 1, parent expects 0");
	put32(&((struct bf_header *)b)->nritems, 0);
	expect_check(v, "node with zero items", N, NULL, true, -EUCLEAN, "node has 0 pointers");
	put32(&((struct bf_header *)b)->nritems, (v->nodesize - HDR) / KPTR + 1);
	expect_check(v, "node nritems too large", N, NULL, true, -EUCLEAN, "pointers");
	b = work_of(v, true);
	put64(&kptr_p(b, 5)->blockptr, (3ull << 20) + 100);
	expect_check(v, "unaligned blockptr", N, NULL, true, -EUCLEAN, "child pointer");
	b = work_of(v, true);
	put64(&kptr_p(b, 19)->blockptr, 0);
	expect_check(v, "zero blockptr in the last slot", N, NULL, true, -EUCLEAN, "child pointer");
	b = work_of(v, true);
	put64(&kptr_p(b, 2)->generation, 0);
	expect_check(v, "zero pointer generation", N, NULL, true, -EUCLEAN, "child generation is 0");
	b = work_of(v, true);
	bf_key_to_disk(&kptr_p(b, 10)->key, &v->lkeys[12]);
	expect_check(v, "node keys out of order", N, NULL, true, -EUCLEAN, "is not above");
	b = work_of(v, true);
	((struct bf_header *)b)->level = 9;
	expect_check(v, "node level above the maximum", N, NULL, true, -EUCLEAN, "level");
}

static void test_accessors(struct vctx *v)
{
	struct bf_block b = { 0 };
	uint32_t size = 99;
	const uint8_t *d;
	bool ok = true;

	b.data = v->leaf;
	b.nritems = 20;
	for (uint32_t i = 0; i < 20; i++) {
		struct bf_key k = bf_leaf_key(&b, i);

		d = bf_leaf_item(&b, i, &size);
		ok = ok && bf_key_cmp(&k, &v->lkeys[i]) == 0 && item_ok(&k, d, size, 24);
	}
	CHECK(ok, "leaf accessors return the keys and data that were packed");
	d = bf_leaf_item(&b, 20, &size);
	CHECK(d == NULL && size == 0, "bf_leaf_item past nritems gives NULL");
	b.data = v->node;
	b.level = 1;
	ok = true;
	for (uint32_t i = 0; i < 20; i++) {
		struct bf_key k = bf_node_key(&b, i);

		ok = ok && bf_key_cmp(&k, &v->lkeys[i]) == 0 && bf_node_blockptr(&b, i) == (3ull << 20) + i * v->nodesize &&
		     bf_node_ptr_gen(&b, i) == 50 + i;
	}
	CHECK(ok, "node accessors return the keys, pointers and generations that were packed");
	CHECK(bf_node_blockptr(&b, 20) == 0, "bf_node_blockptr past nritems gives 0");
}

static void test_validate_other_csums(void)
{
	static const unsigned types[] = { BF_CSUM_XXHASH, BF_CSUM_SHA256, BF_CSUM_BLAKE2 };
	uint8_t fsid[BF_FSID_SIZE] = { 1 }, buf[4096];
	char err[256] = "";

	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		struct bf_tree_env env;

		bf_env_init(&env, NULL, 4096, SECTOR, types[i], fsid, 0, 0);
		put_header(buf, 4096, fsid, 1 << 20, 0, 0, BF_ROOT_TREE_OBJECTID, 5);
		put_csum(buf, 4096, types[i]);
		CHECK(bf_block_check(&env, 1 << 20, buf, NULL, err, sizeof(err)) == 0, "%s leaf: %s",
		      bf_csum_name(types[i]), err);
		buf[4000] ^= 4;
		CHECK(bf_block_check(&env, 1 << 20, buf, NULL, err, sizeof(err)) == -EIO, "%s leaf with a flipped bit",
		      bf_csum_name(types[i]));
		bf_env_destroy(&env);
	}
}

static void test_env_init(void)
{
	struct bf_tree_env env;
	uint8_t fsid[BF_FSID_SIZE] = { 0 };

	bf_log_set_verbosity((enum bf_log_level)0);
	CHECK(bf_env_init(&env, NULL, 3000, SECTOR, 0, fsid, 1, 0) == -EINVAL, "nodesize 3000 is refused");
	CHECK(bf_env_init(&env, NULL, 131072, SECTOR, 0, fsid, 1, 0) == -EINVAL, "nodesize 128K is refused");
	CHECK(bf_env_init(&env, NULL, 4096, 8192, 0, fsid, 1, 0) == -EINVAL, "nodesize below sectorsize is refused");
	CHECK(bf_env_init(&env, NULL, 4096, SECTOR, 9, fsid, 1, 0) == -EINVAL, "unknown checksum type is refused");
	bf_log_set_verbosity(BF_LOG_INFO);
}

static void test_validation(uint64_t *rng)
{
	static struct vctx v;
	static const uint32_t sizes[] = { 4096, 16384, 65536 };

	for (size_t i = 0; i < 3; i++) {
		vctx_init(&v, sizes[i], rng);
		test_validate_leaf(&v);
		test_validate_node(&v);
		test_accessors(&v);
		bf_env_destroy(&v.env);
	}
	test_validate_other_csums();
	test_env_init();
}

/* ================= (3) fuzzing ================= */

/* After a block passed bf_block_check, every accessor must stay inside it (ASan checks) and agree with it. */
static bool walk_valid_block(const uint8_t *img, uint32_t nodesize)
{
	struct bf_block b = { 0 };
	const struct bf_header *h = (const struct bf_header *)img;
	unsigned sum = 0;
	bool ok = true;

	b.data = (uint8_t *)img;
	b.nritems = get32(h->nritems);
	b.level = h->level;
	for (uint32_t i = 0; i < b.nritems; i++) {
		if (b.level == 0) {
			uint32_t size;
			const uint8_t *d = bf_leaf_item(&b, i, &size);

			ok = ok && d >= img + HDR + (i + 1) * ITEM && d + size <= img + nodesize;
			for (uint32_t j = 0; j < size; j++)
				sum += d[j];
		} else {
			ok = ok && bf_node_blockptr(&b, i) != 0;
		}
	}
	(void)sum;
	return ok;
}

static void fuzz_block(struct vctx *v, bool node, unsigned iters, uint64_t *rng)
{
	unsigned passed = 0, bad_ret = 0, bad_walk = 0;
	uint32_t hot = HDR + 20 * (node ? KPTR : ITEM) + 32;

	for (unsigned it = 0; it < iters; it++) {
		char err[256];
		int flips = 1 + (int)check_below(rng, 4), ret;
		uint8_t *b = work_of(v, node);

		for (int i = 0; i < flips; i++) {
			uint32_t pos = check_below(rng, 2) ? BF_CSUM_SIZE + (uint32_t)check_below(rng, hot - BF_CSUM_SIZE)
							  : BF_CSUM_SIZE + (uint32_t)check_below(rng, v->nodesize - BF_CSUM_SIZE);

			b[pos] ^= (uint8_t)(1 + check_below(rng, 255));
		}
		put_csum(b, v->nodesize, BF_CSUM_CRC32C);
		ret = bf_block_check(&v->env, node ? 2 << 20 : 1 << 20, b, NULL, err, sizeof(err));
		bad_ret += ret != 0 && ret != -EUCLEAN;
		if (ret == 0) {
			passed++;
			bad_walk += !walk_valid_block(b, v->nodesize);
		}
	}
	CHECK(bad_ret == 0 && bad_walk == 0, "fuzz %s (nodesize %u): %u wrong error codes, %u accepted blocks with "
	      "items outside", node ? "node" : "leaf", v->nodesize, bad_ret, bad_walk);
	CHECK(passed < iters, "fuzz %s: some corruptions must be caught (%u of %u accepted)", node ? "node" : "leaf",
	      passed, iters);
}

static void test_fuzz_blocks(uint64_t *rng)
{
	static struct vctx v;

	vctx_init(&v, 4096, rng);
	fuzz_block(&v, false, 6000, rng);
	fuzz_block(&v, true, 6000, rng);
	bf_env_destroy(&v.env);
	vctx_init(&v, 65536, rng);
	fuzz_block(&v, false, 500, rng);
	fuzz_block(&v, true, 500, rng);
	bf_env_destroy(&v.env);
}

/* Corrupt one leaf without fixing its checksum: searches into it fail with -EIO, all others still work. */
static void test_corrupt_leaf(struct fs *f, uint64_t *rng)
{
	struct bf_path p;
	uint64_t victim;
	uint8_t *blk;
	unsigned bad = 0, eio = 0;

	do
		victim = f->im.blocks[check_below(rng, f->im.nblocks)];
	while (img_block(&f->im, victim, 0)[offsetof(struct bf_header, level)] != 0);
	blk = img_block(&f->im, victim, 0);
	blk[f->im.nodesize - 3] ^= 0x10; /* the first item's data */
	fs_reopen_env(f, 0);
	bf_path_init(&p, &f->env);
	bf_log_set_verbosity((enum bf_log_level)0);
	for (unsigned i = 0; i < 2000; i++) {
		struct bf_key t = random_target(&f->m, rng);
		int ret = bf_search(&f->env, &f->root, &t, &p);

		if (ret == -EIO) {
			eio++;
			CHECK(!bf_path_valid(&p) && p.nodes[f->root.level] == NULL, "a failed search releases the path");
		} else {
			size_t idx = model_bound(&f->m, &t, false);

			bad += ret < 0 || !path_at(&p, &f->m, idx);
		}
	}
	bf_log_set_verbosity(BF_LOG_INFO);
	bf_path_release(&p);
	CHECK(bad == 0, "searches outside the corrupt leaf %" PRIu64 ": %u wrong", victim, bad);
	CHECK(eio > 0, "searches into the corrupt leaf %" PRIu64 " fail with -EIO (%u did)", victim, eio);
	blk[f->im.nodesize - 3] ^= 0x10;
	fs_reopen_env(f, 0);
}

/* Flip bytes in random blocks and fix their checksums: every search ends, with an answer or an error. */
static void test_corrupt_tree(struct fs *f, uint64_t *rng)
{
	uint8_t *saved = malloc(f->im.size);
	unsigned errors = 0, runaway = 0;
	size_t bound = f->im.nblocks * ((f->im.nodesize - HDR) / ITEM) + 1;

	memcpy(saved, f->im.buf, f->im.size);
	bf_log_set_verbosity((enum bf_log_level)0);
	for (int round = 0; round < 20; round++) {
		struct bf_path p;

		for (int i = 0; i < 6; i++) {
			uint64_t bytenr = f->im.blocks[check_below(rng, f->im.nblocks)];
			uint8_t *b = img_block(&f->im, bytenr, 0);
			uint32_t pos = BF_CSUM_SIZE + (uint32_t)check_below(rng, 400);

			b[pos] ^= (uint8_t)(1 + check_below(rng, 255));
			put_csum(b, f->im.nodesize, BF_CSUM_CRC32C);
		}
		fs_reopen_env(f, 0);
		bf_path_init(&p, &f->env);
		for (int i = 0; i < 200; i++) {
			struct bf_key t = random_target(&f->m, rng);
			int ret = check_below(rng, 2) ? bf_search(&f->env, &f->root, &t, &p)
						    : bf_search_le(&f->env, &f->root, &t, &p);
			size_t steps = 0;

			errors += ret < 0;
			while (ret >= 0 && bf_path_valid(&p) && steps < 50) {
				ret = bf_path_next(&p);
				steps++;
			}
		}
		/* a full walk must end: every step moves right through a finite tree */
		{
			struct bf_key lo = { 0, 0, 0 };
			int ret = bf_search(&f->env, &f->root, &lo, &p);
			size_t steps = 0;

			while (ret >= 0 && bf_path_valid(&p) && steps <= bound) {
				ret = bf_path_next(&p);
				steps++;
			}
			runaway += steps > bound;
		}
		bf_path_release(&p);
	}
	bf_log_set_verbosity(BF_LOG_INFO);
	CHECK(runaway == 0, "walks over corrupted trees ran past the number of slots in the tree (%u times)", runaway);
	CHECK(errors > 0, "searches over corrupted trees report errors (%u did)", errors);
	memcpy(f->im.buf, saved, f->im.size);
	free(saved);
	fs_reopen_env(f, 0);
}

int main(int argc, char **argv)
{
	uint64_t rng;
	struct fs f;

	check_seed = argc > 1 ? strtoull(argv[1], NULL, 0) : (uint64_t)time(NULL);
	printf("test_btree_validate: seed %" PRIu64 "\n", check_seed);
	rng = check_seed;
	test_validation(&rng);
	test_fuzz_blocks(&rng);
	if (fs_make(&f, 4096, 1, 6000, 4, 40, 6, 0, &rng) == 0) {
		test_corrupt_leaf(&f, &rng);
		test_corrupt_tree(&f, &rng);
	} else {
		CHECK(0, "setup of the 4K tree for the corruption tests");
	}
	fs_free(&f);
	return check_summary();
}
