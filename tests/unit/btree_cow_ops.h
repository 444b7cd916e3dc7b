/*
 * tests/unit/btree_cow_ops.h - the random operations of the copy-on-write B-tree tests (test_btree_cow_*.c).
 *
 * Owns: one operation each of insert (single, batches, at random places, ascending and descending runs,
 * existing keys), delete (single and slot ranges, with and without rebalancing on the way down), extend,
 * truncate (from the end and the front), in-place overwrite and key change, with items of 0 to ~nodesize/4
 * bytes and a few near the largest item size; the spot check of the keys each touched; the operation mixes
 * (GROW, CHURN, SHRINK) and one_op, which picks an operation by a mix.
 * Key idea: every operation is done on the tree and on the model of btree_cow_harness.h, then the keys it
 * touched are looked up in both. Header-only (static inline; the mixes are marked unused for programs that
 * use only some of them).
 */
#ifndef BF_TEST_BTREE_COW_OPS_H
#define BF_TEST_BTREE_COW_OPS_H

#include "tests/unit/btree_cow_harness.h"

/* ================= operations ================= */

/* Look key idx up through the read path and compare with the model. */
static inline void spot_check(struct ctx *c, uint32_t idx, const char *op)
{
	struct bf_key k = key_of(idx), found;
	struct bf_path p;
	uint32_t size;
	const uint8_t *data;
	int ret;

	bf_path_init(&p, &c->env);
	ret = bf_search(&c->env, &c->root, &k, &p);
	if (model_has(&c->m, idx)) {
		data = bf_path_item(&p, &size);
		VERIFY(ret == 0 && size == c->m.size[idx] && memcmp(data, c->m.data[idx], size) == 0,
		       "op %" PRIu64 " (%s): key %s: search %d, %u bytes, model %u bytes", c->ops, op, keystr(&k), ret,
		       size, c->m.size[idx]);
	} else {
		found = bf_path_key(&p);
		VERIFY(ret == 1 || (ret == 0 && bf_key_cmp(&found, &k) != 0),
		       "op %" PRIu64 " (%s): key %s should be absent: search %d", c->ops, op, keystr(&k), ret);
	}
	bf_path_release(&p);
}

/* Item sizes: mostly small, some up to nodesize/16 and nodesize/4, rarely near the largest. */
static inline uint32_t pick_size(struct ctx *c)
{
	uint32_t max = bf_max_item_size(&c->env);
	uint64_t r = check_below(&c->rng, 1000);

	if (r < 600)
		return (uint32_t)check_below(&c->rng, 33);
	if (r < 900)
		return (uint32_t)check_below(&c->rng, c->nodesize / 16 + 1);
	if (r < 998)
		return (uint32_t)check_below(&c->rng, c->nodesize / 4 + 1);
	return max - (uint32_t)check_below(&c->rng, 65);
}

static inline uint8_t *random_bytes(struct ctx *c, uint32_t size)
{
	uint8_t *d = malloc(size + 1);

	rng_fill(&c->rng, d, size);
	return d;
}

/* A free key index: at random, or continuing an ascending or a descending run. */
static inline uint32_t pick_free(struct ctx *c, uint32_t *asc, uint32_t *desc)
{
	uint64_t r = check_below(&c->rng, 100);
	uint32_t idx;

	for (int tries = 0; tries < 64; tries++) {
		if (r < 45)
			idx = (uint32_t)check_below(&c->rng, KEYSPACE);
		else if (r < 80)
			idx = *asc = (*asc + 1) % KEYSPACE;
		else
			idx = *desc = (*desc + KEYSPACE - 1) % KEYSPACE;
		if (!model_has(&c->m, idx))
			return idx;
	}
	return NONE;
}

static inline uint32_t pick_present(struct ctx *c)
{
	return c->m.count ? model_select(&c->m, (uint32_t)check_below(&c->rng, c->m.count)) : NONE;
}

static inline void op_insert(struct ctx *c, uint32_t idx)
{
	struct bf_key k = key_of(idx);
	uint32_t size = pick_size(c);
	uint8_t *data = random_bytes(c, size);
	bool had = model_has(&c->m, idx);
	int ret = bf_insert_item(&c->t, &c->root, &k, data, size);

	if (had) {
		VERIFY(ret == -EEXIST, "op %" PRIu64 ": insert of existing %s returned %d", c->ops, keystr(&k), ret);
		free(data);
	} else {
		VERIFY(ret == 0, "op %" PRIu64 ": insert %s (%u bytes) returned %d", c->ops, keystr(&k), size, ret);
		model_set(&c->m, idx, data, size);
	}
	spot_check(c, idx, "insert");
}

/* Up to 8 items at consecutive free indices, in one call. */
static inline void op_insert_batch(struct ctx *c, uint32_t idx)
{
	struct bf_key keys[8];
	uint32_t sizes[8], n = 0, want = 1 + (uint32_t)check_below(&c->rng, 8);
	struct bf_path p;
	int ret;

	while (n < want && idx + n < KEYSPACE && !model_has(&c->m, idx + n)) {
		keys[n] = key_of(idx + n);
		sizes[n] = (uint32_t)check_below(&c->rng, c->nodesize / 32);
		n++;
	}
	bf_path_init(&p, &c->env);
	ret = bf_insert_empty_items(&c->t, &c->root, &p, keys, sizes, n);
	VERIFY(ret == 0, "op %" PRIu64 ": insert of %u items from %s returned %d", c->ops, n, keystr(&keys[0]), ret);
	for (uint32_t i = 0; i < n && ret == 0; i++) {
		uint32_t size;
		uint8_t *dst = bf_path_item_mut_at(&c->t, &p, i, &size), *data = random_bytes(c, sizes[i]);

		VERIFY(dst && size == sizes[i], "op %" PRIu64 ": batch item %u has %u bytes, wanted %u", c->ops, i, size,
		       sizes[i]);
		if (dst && size == sizes[i])
			memcpy(dst, data, size);
		model_set(&c->m, idx + i, data, sizes[i]);
	}
	VERIFY(ret || bf_path_item_mut_at(&c->t, &p, p.nodes[0]->nritems - p.slots[0], NULL) == NULL,
	       "op %" PRIu64 ": a writable item past the leaf's end", c->ops);
	bf_path_release(&p);
	for (uint32_t i = 0; i < n; i++)
		spot_check(c, idx + i, "insert batch");
}

/* Delete the item at idx and up to range - 1 following items of its leaf. */
static inline void op_delete(struct ctx *c, uint32_t idx, uint32_t range)
{
	struct bf_key k = key_of(idx);
	struct bf_path p;
	uint32_t nr, gone[8];
	int ret;

	bf_path_init(&p, &c->env);
	ret = bf_search_slot(&c->t, &c->root, &k, c->del_ins_len, true, &p);
	VERIFY(ret == 0, "op %" PRIu64 ": search to delete %s returned %d", c->ops, keystr(&k), ret);
	if (ret) {
		bf_path_release(&p);
		return;
	}
	nr = p.nodes[0]->nritems - p.slots[0];
	nr = nr < range ? nr : range;
	ret = bf_del_items(&c->t, &c->root, &p, p.slots[0], nr);
	VERIFY(ret == 0 && !p.nodes[0], "op %" PRIu64 ": delete %u items from %s returned %d", c->ops, nr, keystr(&k),
	       ret);
	for (uint32_t i = 0; i < nr; i++) {
		gone[i] = idx;
		idx = model_succ(&c->m, idx);
		model_del(&c->m, gone[i]);
	}
	for (uint32_t i = 0; i < nr; i++)
		spot_check(c, gone[i], "delete");
}

static inline uint32_t pick_growth(struct ctx *c, uint32_t size)
{
	uint32_t max = bf_max_item_size(&c->env);
	uint64_t r = check_below(&c->rng, 100);

	if (r < 70)
		return 1 + (uint32_t)check_below(&c->rng, 64);
	if (r < 95)
		return 1 + (uint32_t)check_below(&c->rng, c->nodesize / 8);
	/* to about the largest size: some fit, some overflow */
	int64_t g = (int64_t)max - size - 16 + (int64_t)check_below(&c->rng, 33);

	return g > 0 ? (uint32_t)g : 1;
}

static inline void op_extend(struct ctx *c, uint32_t idx)
{
	struct bf_key k = key_of(idx);
	uint32_t size = c->m.size[idx], grow = pick_growth(c, size), got;
	bool overflow = (uint64_t)size + grow > bf_max_item_size(&c->env);
	struct bf_path p;
	uint8_t *dst, *data;
	int ret;

	bf_path_init(&p, &c->env);
	ret = bf_search_slot(&c->t, &c->root, &k, (int)grow, true, &p);
	if (overflow) {
		VERIFY(ret == -EOVERFLOW, "op %" PRIu64 ": extend %s from %u by %u: search returned %d", c->ops,
		       keystr(&k), size, grow, ret);
		bf_path_release(&p);
		spot_check(c, idx, "extend overflow");
		return;
	}
	VERIFY(ret == 0, "op %" PRIu64 ": search to extend %s by %u returned %d", c->ops, keystr(&k), grow, ret);
	if (!ret)
		ret = bf_extend_item(&c->t, &p, grow);
	VERIFY(ret == 0, "op %" PRIu64 ": extend %s from %u by %u returned %d", c->ops, keystr(&k), size, grow, ret);
	dst = bf_path_item_mut(&c->t, &p, &got);
	if (!ret && dst && got == size + grow) {
		bool zero = true;

		for (uint32_t i = size; i < got; i++)
			zero &= dst[i] == 0;
		VERIFY(zero && memcmp(dst, c->m.data[idx], size) == 0,
		       "op %" PRIu64 ": extended item %s lost its data or the new bytes are not zero", c->ops, keystr(&k));
		data = malloc(got + 1);
		memcpy(data, c->m.data[idx], size);
		rng_fill(&c->rng, data + size, grow);
		memcpy(dst + size, data + size, grow);
		model_set(&c->m, idx, data, got);
	} else if (!ret) {
		VERIFY(0, "op %" PRIu64 ": extended item %s has %u bytes, wanted %u", c->ops, keystr(&k), got,
		       size + grow);
	}
	bf_path_release(&p);
	spot_check(c, idx, "extend");
}

static inline void op_truncate(struct ctx *c, uint32_t idx)
{
	struct bf_key k = key_of(idx);
	uint32_t size = c->m.size[idx], nsize = (uint32_t)check_below(&c->rng, size + 1);
	bool from_end = check_below(&c->rng, 2);
	struct bf_path p;
	uint8_t *data;
	int ret;

	bf_path_init(&p, &c->env);
	ret = bf_search_slot(&c->t, &c->root, &k, 0, true, &p);
	if (!ret)
		ret = bf_truncate_item(&c->t, &p, nsize, from_end);
	VERIFY(ret == 0, "op %" PRIu64 ": truncate %s from %u to %u returned %d", c->ops, keystr(&k), size, nsize,
	       ret);
	bf_path_release(&p);
	data = malloc(nsize + 1);
	memcpy(data, c->m.data[idx] + (from_end ? 0 : size - nsize), nsize);
	model_set(&c->m, idx, data, nsize);
	spot_check(c, idx, from_end ? "truncate end" : "truncate front");
}

static inline void op_overwrite(struct ctx *c, uint32_t idx)
{
	struct bf_key k = key_of(idx);
	struct bf_path p;
	uint32_t size;
	uint8_t *dst;
	int ret;

	bf_path_init(&p, &c->env);
	ret = bf_search_slot(&c->t, &c->root, &k, 0, true, &p);
	dst = bf_path_item_mut(&c->t, &p, &size);
	VERIFY(ret == 0 && dst && size == c->m.size[idx], "op %" PRIu64 ": overwrite %s: search %d", c->ops,
	       keystr(&k), ret);
	if (!c->broken) {
		rng_fill(&c->rng, c->m.data[idx], size);
		memcpy(dst, c->m.data[idx], size);
	}
	bf_path_release(&p);
	spot_check(c, idx, "overwrite");
}

/* Move the item at idx to a free key between its neighbours; sometimes try the next key (must fail). */
static inline void op_rekey(struct ctx *c, uint32_t idx)
{
	uint32_t pred = model_pred(&c->m, idx), succ = model_succ(&c->m, idx), lo, hi, to;
	struct bf_key k = key_of(idx), nk;
	int bad = check_below(&c->rng, 10) == 0 ? 1 + (int)check_below(&c->rng, 2) : 0; /* 1: next key, 2: previous */
	struct bf_path p;
	int ret;

	lo = pred == NONE ? 0 : pred + 1;
	hi = succ == NONE ? KEYSPACE : succ;
	if ((bad == 1 && succ == NONE) || (bad == 2 && pred == NONE) || (!bad && hi - lo < 2))
		return;
	to = bad == 1 ? succ : bad == 2 ? pred : lo + (uint32_t)check_below(&c->rng, hi - lo);
	if (to == idx)
		return;
	nk = key_of(to);
	bf_path_init(&p, &c->env);
	ret = bf_search_slot(&c->t, &c->root, &k, 0, true, &p);
	if (bad == 2 && !ret && p.slots[0] == 0) {
		/* the previous key is in the previous leaf: the caller's duty, not checked */
		bf_path_release(&p);
		return;
	}
	if (!ret)
		ret = bf_set_item_key(&c->t, &p, &nk);
	bf_path_release(&p);
	if (bad) {
		VERIFY(ret == -EINVAL, "op %" PRIu64 ": rekey %s onto the %s key %s returned %d", c->ops, keystr(&k),
		       bad == 1 ? "next" : "previous", keystr(&nk), ret);
		return;
	}
	VERIFY(ret == 0, "op %" PRIu64 ": rekey %s to %s returned %d", c->ops, keystr(&k), keystr(&nk), ret);
	model_set(&c->m, to, c->m.data[idx], c->m.size[idx]);
	c->m.data[idx] = NULL; /* moved, not freed */
	fen_add(&c->m, idx, -1);
	c->m.count--;
	spot_check(c, idx, "rekey (old key)");
	spot_check(c, to, "rekey (new key)");
}

/* Operation mix (percent): insert, batch insert, delete, range delete, extend, truncate, overwrite, rekey. */
struct mix {
	unsigned pct[8];
};

static const struct mix GROW __attribute__((unused)) = { { 55, 8, 12, 2, 8, 7, 4, 4 } };
static const struct mix CHURN __attribute__((unused)) = { { 35, 5, 30, 4, 10, 8, 4, 4 } };
static const struct mix SHRINK __attribute__((unused)) = { { 10, 2, 55, 15, 6, 6, 3, 3 } };

static inline void one_op(struct ctx *c, const struct mix *mx, uint32_t *asc, uint32_t *desc)
{
	uint64_t r = check_below(&c->rng, 100);
	unsigned kind = 0, acc = mx->pct[0];
	uint32_t idx;

	while (r >= acc && kind < 7)
		acc += mx->pct[++kind];
	if (c->m.count == 0 && kind >= 2)
		kind = 0;
	c->ops++;
	switch (kind) {
	case 0:
		idx = check_below(&c->rng, 50) == 0 ? pick_present(c) : pick_free(c, asc, desc);
		if (idx != NONE)
			op_insert(c, idx);
		break;
	case 1:
		idx = pick_free(c, asc, desc);
		if (idx != NONE)
			op_insert_batch(c, idx);
		break;
	case 2:
	case 3:
		c->del_ins_len = check_below(&c->rng, 5) ? -1 : 0;
		op_delete(c, pick_present(c), kind == 2 ? 1 : 2 + (uint32_t)check_below(&c->rng, 7));
		c->del_ins_len = -1;
		break;
	case 4:
		op_extend(c, pick_present(c));
		break;
	case 5:
		op_truncate(c, pick_present(c));
		break;
	case 6:
		op_overwrite(c, pick_present(c));
		break;
	default:
		op_rekey(c, pick_present(c));
		break;
	}
}

#endif
