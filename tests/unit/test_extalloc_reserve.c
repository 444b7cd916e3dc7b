/*
 * tests/unit/test_extalloc_reserve.c - what the extent allocator must not hand out: reservations, ENOSPC,
 * claimed ranges.
 *
 * Owns: (1) ENOSPC: on a small single/4K image the metadata reservation fails before the commit would, and the
 * image stays clean for btrfs check and the kernel; (2) reservations against a model: seeded reservations of
 * random size and mode, some held across commits, tree changes only under a reservation, data extents taking
 * data chunks meanwhile; the allocator must grant and refuse exactly as the model predicts (alloc/alloc.h's
 * rule of what must stay free); (3) log replay's kept and claimed ranges (alloc/claim.c): nothing is handed out
 * over them, a claimed extent gets its extent item at commit, the rest is free again, impossible ranges are
 * refused.
 * Key idea: space the allocator has promised or must keep is never given to anyone else, and running out is
 * an error before the commit, never a broken image.
 * Prints the seed; argv[1] replays (see extalloc_harness.h for the environment variables). Ends with
 * "N passed, N failed"; exit 0 only if none failed.
 */
#include "tests/unit/extalloc_harness.h"

/* The first free run of at least len bytes in a group serving kind: its start, or 0. */
static uint64_t free_run(struct tc *c, enum ea_kind kind, uint64_t len)
{
	for (size_t i = 0; i < c->ea->nbgs; i++) {
		struct ea_bg *bg = c->ea->bgs[i];
		if (bg_serves(c->ea, bg, kind) && !(bg->flags & BF_BLOCK_GROUP_METADATA && kind == EA_DATA))
			for (size_t j = 0; j < bg->free.n; j++)
				if (bg->free.v[j].end - bg->free.v[j].start >= len)
					return bf_round_down(bg->free.v[j].start + len - 1, len);
	}
	return 0;
}

/* The refs count of extent item (bytenr, EXTENT_ITEM, len), or -1. */
static int64_t extent_refs(struct tc *c, uint64_t bytenr, uint64_t len)
{
	struct bf_key key = { bytenr, BF_EXTENT_ITEM_KEY, len };
	struct bf_path p;
	int64_t refs = -1;
	uint32_t size;
	bf_path_init(&p, &c->fi->env);
	if (bf_search(&c->fi->env, &c->fi->extent_root, &key, &p) == 0) {
		const uint8_t *d = bf_path_item(&p, &size);
		if (size >= sizeof(struct bf_extent_item))
			refs = (int64_t)get64(((const struct bf_extent_item *)d)->refs);
	}
	bf_path_release(&p);
	return refs;
}

static void test_claim(void)
{
	struct tc c = { 0 };
	const uint64_t len = 256 * 1024, half = len / 2;
	if (mkimage(c.img, sizeof(c.img), "claim", "", 256) || tc_open(&c))
		return;
	uint64_t data = free_run(&c, EA_DATA, 2 * len), meta = free_run(&c, EA_META, 4 * c.ea->nodesize);
	CHECK(data && meta, "claim: no free data or metadata run");
	if (!data || !meta)
		return tc_close(&c);
	tc_begin(&c);
	struct ea_bg *dbg = bg_find(c.ea, data);
	CHECK(bf_extalloc_exclude(c.ea, data, len, false) == 0, "claim: excluding a free data range failed");
	CHECK(bf_extalloc_exclude(c.ea, data, len, false) == 0, "claim: excluding it twice must be harmless");
	CHECK(bf_extalloc_exclude(c.ea, meta, c.ea->nodesize, true) == 0, "claim: excluding a log block failed");
	CHECK(!rset_touches(&dbg->free, data, data + len) && rset_has(&c.ea->pinned, data, data + len),
	      "claim: an excluded range is still free or not pinned");
	CHECK(bf_extalloc_exclude(c.ea, data, c.ea->nodesize, true) == -EUCLEAN, "claim: a log block in a data group");
	CHECK(bf_extalloc_exclude(c.ea, UINT64_MAX - 8192, 4096, false) == -EUCLEAN, "claim: a range in no group");
	CHECK(bf_extalloc_exclude(c.ea, c.fi->tree_root.bytenr, c.ea->nodesize, true) == -EUCLEAN,
	      "claim: a log block over a committed tree block");
	CHECK(bf_extalloc_logged_data_ref(c.ea, c.fi->tree_root.bytenr, 4096, 5, 257, 0) == -EUCLEAN,
	      "claim: a logged data extent over a tree block");
	CHECK(bf_extalloc_logged_data_ref(c.ea, data + 1, 4096, 5, 257, 0) == -EUCLEAN, "claim: an unaligned extent");
	for (int i = 0; i < 64; i++) { /* nothing handed out may touch what is kept */
		uint64_t b, got;
		if (bf_extalloc_data(c.ea, 64 * 1024, data, &b, &got) == 0) {
			CHECK(b + got <= data || b >= data + len, "claim: data [%" PRIu64 ", +%" PRIu64 ") handed out over "
			      "an excluded range", b, got);
			bf_extalloc_data_unused(c.ea, b, got);
		}
	}
	CHECK(bf_extalloc_logged_data_ref(c.ea, data, half, 5, 257, 0) == 0, "claim: claiming a logged extent failed");
	CHECK(bf_extalloc_logged_data_ref(c.ea, data, half, 5, 258, 4096) == 0, "claim: a second reference failed");
	CHECK(rset_has(&c.ea->trans_alloc, data, data + half) && !rset_touches(&c.ea->pinned, data, data + half),
	      "claim: the claimed extent is not allocated in the transaction");
	if (tc_commit(&c))
		return tc_close(&c);
	CHECK(extent_refs(&c, data, half) == 2, "claim: extent item with %" PRId64 " references, want 2",
	      extent_refs(&c, data, half));
	CHECK(rset_has(&dbg->free, data + half, data + len) && rset_has(&bg_find(c.ea, meta)->free, meta,
									    meta + c.ea->nodesize),
	      "claim: kept ranges not free again after the commit");
	CHECK(!rset_touches(&dbg->free, data, data + half) && !rset_touches(&dbg->fst, data, data + half),
	      "claim: the claimed extent is free after the commit");
	tc_begin(&c); /* an extent the extent tree knows only gains a reference */
	CHECK(bf_extalloc_logged_data_ref(c.ea, data, half, 5, 259, 0) == 0, "claim: reference to a known extent");
	CHECK(bf_extalloc_logged_data_ref(c.ea, data, 4096, 5, 259, 0) == -EUCLEAN,
	      "claim: a logged extent overlapping a known one with another length");
	if (!tc_commit(&c))
		CHECK(extent_refs(&c, data, half) == 3, "claim: %" PRId64 " references, want 3", extent_refs(&c, data, half));
	tc_close(&c);
	unlink(c.img);
}

static void test_enospc(void)
{
	struct tc c = { 0 };
	static struct xset x;
	memset(&x, 0, sizeof(x));
	x.tree = BF_FS_TREE_OBJECTID;
	x.vlen = 3800;
	if (mkimage(c.img, sizeof(c.img), "enospc", "-m single -d single -n 4096", 64) || tc_open(&c))
		return;
	int r = 0, nosp = 0;
	size_t nchunks = c.fi->vol.nchunks;
	while (!r && !nosp && x.n < MAX_X) {
		tc_begin(&c);
		for (int k = 0; k < 1000 && !r && x.n < MAX_X; k++) {
			r = bf_extalloc_reserve_meta(c.ea, 1, BF_RESV_FORCE_CHUNK);
			if (r == -ENOSPC) {
				nosp = 1;
				r = 0;
				break;
			}
			if (!r)
				r = xattr_insert(&c, &x, x.n++);
			bf_extalloc_release_meta(c.ea, 1);
		}
		CHECK(r == 0, "enospc: inserting failed with %s instead of the reservation failing", strerror(-r));
		if (r) {
			bf_trans_abort(&c.t);
			bf_extalloc_abort(c.ea);
			bf_trans_destroy(&c.t);
			break;
		}
		r = tc_commit(&c);
	}
	CHECK(nosp, "enospc: the reservation never failed (%d xattrs)", x.n);
	uint64_t used = bf_extalloc_dev_bytes_used(c.ea, 1), total = get64(c.fi->super.dev_item.total_bytes);
	printf("enospc: %d xattrs, %zu -> %zu chunks, device %" PRIu64 " of %" PRIu64 " bytes allocated\n", x.n,
	       nchunks, c.fi->vol.nchunks, used, total);
	CHECK(used + (16u << 20) > total, "enospc: the device was not filled with chunks first");
	verify_space(&c, "enospc");
	tc_close(&c);
	btrfs_check(c.img, "enospc");
	const char *dirs[1] = { "" };
	mount_ro = true;
	kernel_mount_check(c.img, "enospc", &x, dirs, 1, NULL);
	unlink(c.img);
}

/* The model's view of the metadata space, from the groups alone: total bytes, free bytes, count of groups. */
struct meta_view {
	uint64_t total, free_b;
	size_t ngroups;
};

static struct meta_view meta_view(const struct bf_extalloc *ea)
{
	struct meta_view v = { 0, 0, 0 };
	for (size_t i = 0; i < ea->nbgs; i++)
		if (bg_serves(ea, ea->bgs[i], EA_META)) {
			v.total += ea->bgs[i]->length;
			v.free_b += rset_bytes(&ea->bgs[i]->free);
			v.ngroups++;
		}
	return v;
}

/* What must stay free beside a new reservation, by the documented rule (alloc/alloc.h). */
static uint64_t model_keep(const struct bf_extalloc *ea, uint64_t reserved)
{
	return ea_global_reserve(ea) + reserved + (uint64_t)ea->refs.count * 256;
}

struct resv_model {
	uint64_t held[64]; /* items of each outstanding reservation */
	int n;
	uint64_t reserved; /* bytes the model says are reserved */
	uint64_t item;     /* bytes of one item */
	unsigned granted, refused, chunks;
};

/* One reservation: the allocator must do what the model predicts. Returns true if granted. */
static bool resv_try(struct tc *c, struct resv_model *m, uint64_t items, enum bf_resv_mode mode, const char *what)
{
	struct bf_extalloc *ea = c->ea;
	struct meta_view before = meta_view(ea);
	uint64_t need = items * m->item, keep = model_keep(ea, m->reserved);
	bool fits = before.free_b >= keep && before.free_b - keep >= need;
	uint64_t taken = before.total - before.free_b;
	bool may_chunk = mode == BF_RESV_FORCE_CHUNK ||
			 (mode == BF_RESV_NO_FORCE && taken + (2ULL << 20) >= before.total / 10 * 8);
	int r = bf_extalloc_reserve_meta(ea, items, mode);
	struct meta_view after = meta_view(ea);

	CHECK(r == 0 || r == -ENOSPC, "%s: reserving %" PRIu64 " items: %s", what, items, strerror(-r));
	if (mode == BF_RESV_ALWAYS || fits) {
		CHECK(r == 0 && after.ngroups == before.ngroups, "%s: %" PRIu64 " items fit (free %" PRIu64 ", keep %"
		      PRIu64 ") but reserving gave %d and made %zu groups", what, items, before.free_b, keep, r,
		      after.ngroups - before.ngroups);
	} else if (!may_chunk) {
		CHECK(r == -ENOSPC && after.ngroups == before.ngroups, "%s: NO_FORCE below 80%% must neither make a "
		      "chunk nor overcommit: gave %d, %zu -> %zu groups", what, r, before.ngroups, after.ngroups);
	} else if (r == 0) {
		CHECK(after.ngroups > before.ngroups, "%s: granted without room and without a new chunk", what);
	} else if (after.ngroups == before.ngroups) {
		CHECK(chunk_alloc(ea, EA_META) == -ENOSPC, "%s: refused, yet a metadata chunk could be made", what);
	}
	if (r == 0 && mode != BF_RESV_ALWAYS) { /* no overcommit: backed by free space in existing groups now */
		uint64_t k = model_keep(ea, m->reserved);
		CHECK(after.free_b >= k && after.free_b - k >= need, "%s: granted %" PRIu64 " bytes that are not free "
		      "(free %" PRIu64 ", keep %" PRIu64 ")", what, need, after.free_b, k);
	}
	m->chunks += (unsigned)(after.ngroups - before.ngroups);
	if (r)
		m->refused++;
	else
		m->granted++;
	if (!r)
		m->reserved += need;
	CHECK(ea->meta_reserved == m->reserved, "%s: %" PRIu64 " bytes reserved, the model says %" PRIu64, what,
	      ea->meta_reserved, m->reserved);
	return r == 0;
}

static void resv_release(struct tc *c, struct resv_model *m, int i)
{
	bf_extalloc_release_meta(c->ea, m->held[i]);
	m->reserved -= m->held[i] * m->item;
	m->held[i] = m->held[--m->n];
	CHECK(c->ea->meta_reserved == m->reserved, "release: %" PRIu64 " bytes reserved, the model says %" PRIu64,
	      c->ea->meta_reserved, m->reserved);
}

/* Seeded: reservations of random size and mode, some held across commits (like buffered data), tree changes
   only under a reservation and never more items than it holds, data extents taking data chunks meanwhile (what
   broke the overcommitting version: data chunks took the device space its reservations counted on). The
   allocator must match the model at every step; a change under a reservation and every commit must succeed. */
static void test_resv_model(void)
{
	struct tc c = { 0 };
	static struct xset x;
	static struct held data[4096];
	struct resv_model m = { { 0 }, 0, 0, 0, 0, 0, 0 };
	int ndata = 0, r = 0, data_full = 0, meta_full = 0, trans = 0;
	char what[96];

	memset(&x, 0, sizeof(x));
	x.tree = BF_FS_TREE_OBJECTID;
	x.vlen = 3000;
	if (mkimage(c.img, sizeof(c.img), "resv", "-n 4096", 160) || tc_open(&c))
		return;
	m.item = (uint64_t)c.ea->nodesize * BF_MAX_LEVEL * 2;
	for (trans = 0; trans < 200 && !r && (data_full < 3 || meta_full < 3); trans++) {
		tc_begin(&c);
		for (int op = 0; op < 150 && !r; op++) {
			unsigned pick = (unsigned)rnd(100);
			snprintf(what, sizeof(what), "resv transaction %d op %d", trans, op);
			if (pick < 55 && m.n < 64) {
				uint64_t items = 1 + rnd(8);
				enum bf_resv_mode mode = rnd(20) == 0 ? BF_RESV_ALWAYS : rnd(2) ? BF_RESV_FORCE_CHUNK :
										      BF_RESV_NO_FORCE;
				if (mode == BF_RESV_ALWAYS)
					items = 1;
				if (!resv_try(&c, &m, items, mode, what)) {
					meta_full += mode == BF_RESV_FORCE_CHUNK;
					continue;
				}
				m.held[m.n++] = items;
				/* use at most what is held: here one xattr of ~3 KiB per item (one 4 KiB leaf each) */
				for (uint64_t k = 0; k < items && !r && x.n < MAX_X; k++)
					r = xattr_insert(&c, &x, x.n++);
				CHECK(r == 0, "%s: a change under its reservation failed: %s", what, strerror(-r));
				if (rnd(3))
					resv_release(&c, &m, m.n - 1); /* a namespace op: released at its end */
			} else if (pick < 93 && m.n) {
				resv_release(&c, &m, (int)rnd((uint64_t)m.n)); /* buffered data flushed */
			} else if (ndata < 4096 && (m.chunks || meta_full)) { /* data once reserving made a chunk */
				uint64_t meta_free = meta_view(c.ea).free_b, resv = c.ea->meta_reserved;
				r = add_data(&c, (1 + rnd(16)) * 65536, 1000 + (uint64_t)ndata, &data[ndata]);
				if (r == 0)
					ndata++;
				else if (r == -ENOSPC)
					data_full++;
				CHECK(r == 0 || r == -ENOSPC, "%s: data allocation: %s", what, strerror(-r));
				r = r == -ENOSPC ? 0 : r;
				CHECK(meta_view(c.ea).free_b == meta_free && c.ea->meta_reserved == resv,
				      "%s: a data allocation changed the metadata space (%" PRIu64 " -> %" PRIu64
				      " free)",
				      what, meta_free, meta_view(c.ea).free_b);
			}
		}
		if (r) {
			bf_trans_abort(&c.t);
			bf_extalloc_abort(c.ea);
			bf_trans_destroy(&c.t);
			break;
		}
		r = tc_commit(&c);
		CHECK(c.ea->meta_reserved == m.reserved, "resv: a commit changed the reservations");
	}
	printf("resv: %d transactions, %u granted, %u refused, %u metadata chunks made, %d data extents, %d xattrs; "
	       "full: data %d, metadata %d\n", trans, m.granted, m.refused, m.chunks, ndata, x.n, data_full, meta_full);
	CHECK(data_full && meta_full && m.chunks, "resv: the run never filled the filesystem (data %d, metadata %d) "
	      "or never made a metadata chunk for a reservation (%u)", data_full, meta_full, m.chunks);
	while (m.n)
		resv_release(&c, &m, 0);
	CHECK(c.ea->meta_reserved == 0, "resv: %" PRIu64 " bytes still reserved after all were released",
	      c.ea->meta_reserved);
	if (!r) { /* drop the test's data references: the image must then check clean */
		tc_begin(&c);
		for (int i = 0; i < ndata && !r; i++)
			r = bf_extalloc_data_ref(c.ea, data[i].bytenr, data[i].len, BF_FS_TREE_OBJECTID, data[i].inode,
						 0, -1);
		r = r ? r : tc_commit(&c);
		verify_space(&c, "resv");
	}
	tc_close(&c);
	btrfs_check(c.img, "resv");
	unlink(c.img);
}

int main(int argc, char **argv)
{
	bool ran = ea_start(argc, argv, "test_extalloc_reserve");

	if (ran) {
		if (selected("enospc"))
			test_enospc();
		if (selected("resv"))
			test_resv_model();
		if (selected("claim"))
			test_claim();
	}
	return ea_finish(ran);
}
