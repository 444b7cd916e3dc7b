/*
 * tests/unit/test_extalloc_model.c - the extent allocator against a model, on real images.
 *
 * Owns: (1) a model test on default, single/4K, mixed and v1/no-skinny-metadata images: random tree-block and
 * data allocations, data references (inline and keyed), frees and cancellations over 25 transactions; after
 * every commit verify_space (extalloc_harness.h) must agree, and no range freed in a transaction may be handed
 * out before its commit; at the end everything is freed again and btrfs check must pass; (2) data reference
 * hashes against the order the kernel wrote inline references in (reflinked copies made by the kernel).
 * Key idea: the model holds what the test allocated; the extent tree, scanned independently, and the free
 * space tree on disk must both agree with the allocator after every commit.
 * Prints the seed; argv[1] replays (see extalloc_harness.h for the environment variables). Ends with
 * "N passed, N failed"; exit 0 only if none failed.
 */
#include "tests/unit/extalloc_harness.h"

struct model {
	struct held *v;
	size_t n, cap;
	struct ea_rset freed; /* freed by the test in the running transaction, not reusable before the commit */
	uint64_t next_inode;
	int trans;
	unsigned bad;
};

static void model_push(struct model *m, struct held h)
{
	if (m->n == m->cap) {
		m->cap = m->cap ? m->cap * 2 : 64;
		m->v = realloc(m->v, m->cap * sizeof(*m->v));
	}
	m->v[m->n++] = h;
}

/* Anything handed out must be free in the model: not held and not freed in this transaction. */
static void model_check_new(struct model *m, uint64_t bytenr, uint64_t len)
{
	if (rset_touches(&m->freed, bytenr, bytenr + len)) {
		m->bad++;
		CHECK(0, "model: [%" PRIu64 ", +%" PRIu64 ") handed out again before its free was committed", bytenr,
		      len);
	}
	for (size_t i = 0; i < m->n; i++)
		if (bytenr < m->v[i].bytenr + m->v[i].len && m->v[i].bytenr < bytenr + len) {
			m->bad++;
			CHECK(0, "model: [%" PRIu64 ", +%" PRIu64 ") overlaps a held extent at %" PRIu64, bytenr, len,
			      m->v[i].bytenr);
			return;
		}
}

/* Drop a held extent. A tree block allocated in this transaction is reusable at once (it never reached a
   committed tree); anything else waits for the commit: a data extent allocated and dropped in one transaction
   is pinned as the kernel does (its data may have been written). */
static void model_drop(struct tc *c, struct model *m, size_t i)
{
	struct held h = m->v[i];
	bool count_freed = h.data || h.trans != m->trans;
	if (h.data) {
		for (int k = 0; k < h.nrefs; k++)
			CHECK(bf_extalloc_data_ref(c->ea, h.bytenr, h.len, BF_FS_TREE_OBJECTID, h.inode + (uint64_t)k, 0,
						   -1) == 0, "drop data ref");
	} else {
		bf_extalloc_tree_ops()->free_tree_block(c->ea, h.bytenr, BF_FS_TREE_OBJECTID, h.level);
	}
	if (count_freed)
		rset_add(&m->freed, h.bytenr, h.bytenr + h.len);
	m->v[i] = m->v[--m->n];
}

static void model_step(struct tc *c, struct model *m, bool new_this_trans_only)
{
	const struct bf_alloc_ops *ops = bf_extalloc_tree_ops();
	uint64_t op = rnd(100), b, got;
	(void)new_this_trans_only;
	if (op < 30) {
		int level = (int)rnd(3);
		struct bf_key k = { rng(), BF_INODE_ITEM_KEY, 0 };
		int r = ops->alloc_tree_block(c->ea, BF_FS_TREE_OBJECTID, level, &b);
		CHECK(r == 0, "model: tree block allocation: %s", strerror(-r));
		if (r)
			return;
		model_check_new(m, b, c->ea->nodesize);
		CHECK(b % c->ea->nodesize == 0, "model: tree block %" PRIu64 " not nodesize aligned", b);
		CHECK(ops->tree_block_added(c->ea, b, BF_FS_TREE_OBJECTID, level, &k) == 0, "tree_block_added");
		model_push(m, (struct held){ b, c->ea->nodesize, false, level, 0, 1, m->trans });
		if (rnd(4) == 0) /* freed in the same transaction: back to the free space at once */
			model_drop(c, m, m->n - 1);
	} else if (op < 55) {
		uint64_t len = (1 + rnd(rnd(4) == 0 ? 256 : 16)) * c->ea->sectorsize;
		int r = bf_extalloc_data(c->ea, len, 0, &b, &got);
		CHECK(r == 0 && got >= c->ea->sectorsize && got <= len, "model: data allocation of %" PRIu64 ": %s",
		      len, strerror(-r));
		if (r)
			return;
		model_check_new(m, b, got);
		if (got > c->ea->sectorsize && rnd(3) == 0) { /* give back an unused tail */
			uint64_t keep = (1 + rnd(got / c->ea->sectorsize - 1)) * c->ea->sectorsize;
			bf_extalloc_data_unused(c->ea, b + keep, got - keep);
			got = keep;
		}
		if (rnd(8) == 0) { /* never referenced */
			bf_extalloc_data_unused(c->ea, b, got);
			return;
		}
		int nrefs = rnd(6) == 0 ? 1 + (int)rnd(60) : 1; /* many refs: inline ones overflow into keyed */
		struct held h = { b, got, true, 0, m->next_inode, nrefs, m->trans };
		m->next_inode += 100;
		for (int k = 0; k < nrefs; k++)
			CHECK(bf_extalloc_data_ref(c->ea, b, got, BF_FS_TREE_OBJECTID, h.inode + (uint64_t)k, 0, 1) == 0,
			      "add data ref");
		model_push(m, h);
		if (rnd(5) == 0)
			model_drop(c, m, m->n - 1); /* referenced and dropped in one transaction: pinned */
	} else if (op < 65 && m->n) {
		size_t i = rnd(m->n);
		if (m->v[i].data && m->v[i].nrefs < 200) { /* one more reference, possibly in a later transaction */
			CHECK(bf_extalloc_data_ref(c->ea, m->v[i].bytenr, m->v[i].len, BF_FS_TREE_OBJECTID,
						   m->v[i].inode + (uint64_t)m->v[i].nrefs, 0, 1) == 0, "add data ref");
			m->v[i].nrefs++;
		}
	} else if (op < 75 && m->n) {
		size_t i = rnd(m->n);
		if (m->v[i].data && m->v[i].nrefs > 1) {
			m->v[i].nrefs--;
			CHECK(bf_extalloc_data_ref(c->ea, m->v[i].bytenr, m->v[i].len, BF_FS_TREE_OBJECTID,
						   m->v[i].inode + (uint64_t)m->v[i].nrefs, 0, -1) == 0, "drop data ref");
		}
	} else if (m->n) {
		model_drop(c, m, rnd(m->n));
	}
}

static void test_model(const char *name, const char *opts)
{
	struct tc c = { 0 };
	struct model m = { 0 };
	m.next_inode = 100000;
	memset(&seen, 0, sizeof(seen));
	if (mkimage(c.img, sizeof(c.img), name, opts, 256) || tc_open(&c))
		return;
	verify_space(&c, name);
	int ntrans = 25;
	for (int tr = 0; tr < ntrans; tr++) {
		tc_begin(&c);
		rset_clear(&m.freed);
		m.trans = tr;
		int steps = 20 + (int)rnd(120);
		for (int s = 0; s < steps; s++)
			model_step(&c, &m, false);
		if (tr == ntrans - 1)
			while (m.n)
				model_drop(&c, &m, m.n - 1);
		if (tc_commit(&c))
			break;
		char what[64];
		snprintf(what, sizeof(what), "%s transaction %d", name, tr);
		verify_space(&c, what);
	}
	CHECK(m.bad == 0, "%s: %u model violations", name, m.bad);
	bool bitmaps = false;
	for (size_t i = 0; i < c.ea->nbgs; i++)
		bitmaps |= c.ea->bgs[i]->fst_bitmaps;
	printf("model %s: %zu block groups, free space tree bitmaps: %s, keyed data refs seen: %" PRIu64
	       ", extents with several inline data refs seen: %" PRIu64 "\n", name, c.ea->nbgs, bitmaps ? "yes" : "no",
	       seen.keyed_data_refs, seen.inline_data_multi);
	CHECK(seen.keyed_data_refs && seen.inline_data_multi, "%s: keyed and inline data references not exercised",
	      name);
	tc_close(&c);
	rset_free(&m.freed);
	free(m.v);
	btrfs_check(c.img, name);
	unlink(c.img);
}

struct order_ctx {
	int extents_checked, bad;
};

static int order_cb(void *arg, const struct bf_key *k, const uint8_t *data, uint32_t size)
{
	struct order_ctx *o = arg;
	if (k->type != BF_EXTENT_ITEM_KEY || size < sizeof(struct bf_extent_item))
		return 0;
	const struct bf_extent_item *ei = (const void *)data;
	if (!(get64(ei->flags) & BF_EXTENT_FLAG_DATA))
		return 0;
	uint64_t last = UINT64_MAX;
	int n = 0;
	for (uint32_t p = sizeof(*ei); p + 29 <= size && data[p] == BF_EXTENT_DATA_REF_KEY; p += 29, n++) {
		const struct bf_extent_data_ref *d = (const void *)(data + p + 1);
		uint64_t h = hash_ref(get64(d->root), get64(d->objectid), get64(d->offset));
		o->bad += h > last;
		last = h;
	}
	o->extents_checked += n > 1;
	return 0;
}

static void test_hash_order(void)
{
	char img[160], mnt[160];
	if (mkimage(img, sizeof(img), "hash", "", 256))
		return;
	snprintf(mnt, sizeof(mnt), "%s/mnt", tmpdir);
	mkdir(mnt, 0755);
	int r = sh("mount -o loop %s %s && cd %s && head -c 65536 /dev/urandom > a && for i in $(seq 1 12); do "
		   "cp --reflink=always a c$i; done && sync && cd / && umount %s", img, mnt, mnt, mnt);
	CHECK(r == 0, "hash: preparing the image with the kernel failed");
	const char *paths[1] = { img };
	struct bf_open_opts o = { paths, 1, false, false, 0 };
	struct bf_fsinfo *fi;
	char err[256];
	if (r || bf_fsinfo_open(&o, &fi, err, sizeof(err)))
		return;
	struct order_ctx oc = { 0, 0 };
	struct bf_key min = { 0, 0, 0 }, max = { UINT64_MAX, 255, UINT64_MAX };
	r = bf_iterate(&fi->env, &fi->extent_root, &min, &max, order_cb, &oc);
	CHECK(r == 0 && oc.extents_checked > 0 && oc.bad == 0,
	      "hash_extent_data_ref: %d kernel-made extents with several inline refs checked, %d out of our order",
	      oc.extents_checked, oc.bad);
	bf_fsinfo_close(fi);
	unlink(img);
}

int main(int argc, char **argv)
{
	bool ran = ea_start(argc, argv, "test_extalloc_model");

	if (ran) {
		if (selected("hash"))
			test_hash_order();
		if (selected("model-default"))
			test_model("model-default", "");
		if (selected("model-single4k"))
			test_model("model-single4k", "-m single -d single -n 4096");
		if (selected("model-mixed"))
			test_model("model-mixed", "-M");
		if (selected("model-v1-noskinny"))
			test_model("model-v1-noskinny", "-R ^free-space-tree -O ^skinny-metadata");
	}
	return ea_finish(ran);
}
