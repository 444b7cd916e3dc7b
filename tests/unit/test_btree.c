/*
 * tests/unit/test_btree.c - unit tests for the btree layer (btree/block.c, btree/cache.c, btree/search.c).
 *
 * Owns: (1) synthetic trees built in memory (sorted random keys packed into leaves and nodes of 4K/16K/64K with
 * correct headers and crc32c checksums), written to a temporary file registered as a one-device volume, and
 * searched against a sorted-array model: bf_search, bf_search_le, next/prev and bf_iterate at 1 to 4 levels;
 * (2) every validation rule of bf_block_check, one corrupted field at a time; (3) a seeded byte-flip fuzz of a
 * valid leaf and node with the checksum recomputed (so the structural checks run), and searches over corrupted
 * trees; (4) the cache: reference counts, eviction under a small cap, concurrent searching threads; (5) mirrors
 * (a DUP chunk: bad/stale first copy, both copies bad); (6) real mkfs.btrfs images (default options, and 4K
 * nodes with --rootdir of 2000 files): the chunk tree, the root tree (ROOT_ITEMs of trees 2, 4, 5, 7) and a
 * multi-level fs tree. Set BTREE_BENCH=1 to also time cached searches.
 * Random parts print their seed; pass a seed as argv[1] to replay. Ends with "N passed, N failed".
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "alloc/alloc.h"
#include "btree/btree.h"
#include "util/util.h"
#include "tests/unit/check.h"



/* splitmix64 */
static uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static uint64_t rng_next(uint64_t *st) { return mix64(*st += 0x9E3779B97F4A7C15ull); }
static uint64_t rng_below(uint64_t *st, uint64_t n) { return n ? rng_next(st) % n : 0; }

#define HDR ((uint32_t)sizeof(struct bf_header))
#define ITEM ((uint32_t)sizeof(struct bf_item))
#define KPTR ((uint32_t)sizeof(struct bf_key_ptr))
#define SECTOR 4096u
#define BASE (1ull << 20)   /* logical start of the synthetic chunk */
#define SUPER_GEN 1000ull

static const char *keystr(const struct bf_key *k)
{
	static __thread char buf[4][64];
	static __thread int i;

	i = (i + 1) % 4;
	snprintf(buf[i], sizeof(buf[i]), "(%" PRIu64 " %u %" PRIu64 ")", k->objectid, k->type, k->offset);
	return buf[i];
}

/* ================= building blocks ================= */

static void put_csum(uint8_t *b, uint32_t nodesize, unsigned type)
{
	uint8_t out[BF_CSUM_MAX];

	bf_csum(type, b + BF_CSUM_SIZE, nodesize - BF_CSUM_SIZE, out);
	memcpy(b, out, BF_CSUM_SIZE);
}

static void put_header(uint8_t *b, uint32_t nodesize, const uint8_t *fsid, uint64_t bytenr, uint8_t level,
		       uint32_t nritems, uint64_t owner, uint64_t gen)
{
	struct bf_header *h = (struct bf_header *)b;

	memset(b, 0, nodesize);
	memcpy(h->fsid, fsid, BF_FSID_SIZE);
	put64(&h->bytenr, bytenr);
	put64(&h->flags, BF_HEADER_FLAG_WRITTEN | ((uint64_t)BF_MIXED_BACKREF_REV << BF_BACKREF_REV_SHIFT));
	put64(&h->generation, gen);
	put64(&h->owner, owner);
	put32(&h->nritems, nritems);
	h->level = level;
}

static struct bf_item *item_p(uint8_t *b, uint32_t i) { return (struct bf_item *)(b + HDR + i * ITEM); }
static struct bf_key_ptr *kptr_p(uint8_t *b, uint32_t i) { return (struct bf_key_ptr *)(b + HDR + i * KPTR); }

/* Item content is a function of its key, so any returned item can be verified. */
static uint32_t item_len(const struct bf_key *k, unsigned maxdata)
{
	return (uint32_t)(mix64(k->objectid * 31 + k->type * 7 + k->offset) % (maxdata + 1));
}

static uint8_t item_byte(const struct bf_key *k, uint32_t j)
{
	return (uint8_t)(mix64(k->objectid ^ (k->offset << 8) ^ k->type) >> ((j % 8) * 8)) ^ (uint8_t)j;
}

static bool item_ok(const struct bf_key *k, const uint8_t *data, uint32_t size, unsigned maxdata)
{
	if (size != item_len(k, maxdata))
		return false;
	for (uint32_t j = 0; j < size; j++)
		if (data[j] != item_byte(k, j))
			return false;
	return true;
}

static void fill_leaf(uint8_t *b, uint32_t nodesize, const struct bf_key *keys, uint32_t n, unsigned maxdata)
{
	uint32_t end = nodesize - HDR;

	for (uint32_t i = 0; i < n; i++) {
		uint32_t size = item_len(&keys[i], maxdata);

		end -= size;
		bf_key_to_disk(&item_p(b, i)->key, &keys[i]);
		put32(&item_p(b, i)->offset, end);
		put32(&item_p(b, i)->size, size);
		for (uint32_t j = 0; j < size; j++)
			b[HDR + end + j] = item_byte(&keys[i], j);
	}
}

/* ================= a synthetic volume ================= */

struct img {
	uint32_t nodesize;
	uint8_t fsid[BF_FSID_SIZE];
	uint8_t *buf; /* the device image from offset 0 */
	size_t size;
	uint64_t logical, next; /* the chunk's logical start, next free bytenr */
	uint64_t phys[2];       /* physical start of each copy */
	int ncopies;            /* 1: single, 2: DUP */
	char path[64];
	uint64_t *blocks; /* every bytenr written, by order */
	size_t nblocks;
};

static void img_init(struct img *im, uint32_t nodesize, int ncopies, uint64_t *rng)
{
	memset(im, 0, sizeof(*im));
	im->nodesize = nodesize;
	for (int i = 0; i < BF_FSID_SIZE; i++)
		im->fsid[i] = (uint8_t)rng_next(rng);
	im->ncopies = ncopies;
	im->logical = ncopies == 1 ? BASE : (1ull << 30); /* DUP: logical != physical */
	im->next = im->logical;
	im->phys[0] = BASE;
	im->phys[1] = BASE + (32ull << 20);
}

static uint64_t img_phys(const struct img *im, uint64_t bytenr, int copy)
{
	return im->phys[copy] + bytenr - im->logical;
}

static uint8_t *img_block(struct img *im, uint64_t bytenr, int copy) { return im->buf + img_phys(im, bytenr, copy); }

static uint64_t img_alloc(struct img *im)
{
	uint64_t bytenr = im->next;
	size_t need = (size_t)img_phys(im, bytenr, im->ncopies - 1) + im->nodesize;

	im->next += im->nodesize;
	if (need > im->size) {
		size_t nsize = need * 2;

		im->buf = realloc(im->buf, nsize);
		memset(im->buf + im->size, 0, nsize - im->size);
		im->size = nsize;
	}
	im->blocks = realloc(im->blocks, (im->nblocks + 1) * sizeof(*im->blocks));
	im->blocks[im->nblocks++] = bytenr;
	return bytenr;
}

/* Write the block image at bytenr of copy 0 to every copy, with its checksum. */
static void img_seal(struct img *im, uint64_t bytenr)
{
	put_csum(img_block(im, bytenr, 0), im->nodesize, BF_CSUM_CRC32C);
	for (int c = 1; c < im->ncopies; c++)
		memcpy(img_block(im, bytenr, c), img_block(im, bytenr, 0), im->nodesize);
}

/* One level of a tree under construction: the first key, address and generation of each block. */
struct level {
	struct bf_key *first;
	uint64_t *bytenr, *gen;
	size_t n;
};

static void level_add(struct level *lv, const struct bf_key *first, uint64_t bytenr, uint64_t gen)
{
	lv->first = realloc(lv->first, (lv->n + 1) * sizeof(*lv->first));
	lv->bytenr = realloc(lv->bytenr, (lv->n + 1) * sizeof(*lv->bytenr));
	lv->gen = realloc(lv->gen, (lv->n + 1) * sizeof(*lv->gen));
	lv->first[lv->n] = *first;
	lv->bytenr[lv->n] = bytenr;
	lv->gen[lv->n++] = gen;
}

static void level_free(struct level *lv) { free(lv->first), free(lv->bytenr), free(lv->gen); }

/* How many entries go into the next block: between cap/2+1 and cap, the rest when few are left. */
static size_t chunk_count(size_t left, size_t cap, uint64_t *rng)
{
	size_t k = cap / 2 + 1 + (size_t)rng_below(rng, cap - cap / 2);

	if (k > cap)
		k = cap;
	return left <= cap ? left : (left - k < cap / 2 + 1 && left <= 2 * cap ? left / 2 : k);
}

static struct level build_leaves(struct img *im, const struct bf_key *keys, size_t n, size_t cap, unsigned maxdata,
				 uint64_t owner, uint64_t *rng)
{
	struct level lv = { 0 };
	struct bf_key none = { 0, 0, 0 };
	size_t i = 0;

	do {
		size_t k = chunk_count(n - i, cap, rng);
		uint64_t bytenr = img_alloc(im), gen = 1 + rng_below(rng, SUPER_GEN);
		uint8_t *b = img_block(im, bytenr, 0);

		put_header(b, im->nodesize, im->fsid, bytenr, 0, (uint32_t)k, owner, gen);
		fill_leaf(b, im->nodesize, keys + i, (uint32_t)k, maxdata);
		img_seal(im, bytenr);
		level_add(&lv, k ? &keys[i] : &none, bytenr, gen);
		i += k;
	} while (i < n);
	return lv;
}

static struct level build_nodes(struct img *im, const struct level *below, uint8_t level, size_t cap, uint64_t owner,
				uint64_t *rng)
{
	struct level lv = { 0 };

	for (size_t i = 0; i < below->n;) {
		size_t k = chunk_count(below->n - i, cap, rng);
		uint64_t bytenr = img_alloc(im), gen = 1 + rng_below(rng, SUPER_GEN);
		uint8_t *b = img_block(im, bytenr, 0);

		put_header(b, im->nodesize, im->fsid, bytenr, level, (uint32_t)k, owner, gen);
		for (size_t j = 0; j < k; j++) {
			bf_key_to_disk(&kptr_p(b, (uint32_t)j)->key, &below->first[i + j]);
			put64(&kptr_p(b, (uint32_t)j)->blockptr, below->bytenr[i + j]);
			put64(&kptr_p(b, (uint32_t)j)->generation, below->gen[i + j]);
		}
		img_seal(im, bytenr);
		level_add(&lv, &below->first[i], bytenr, gen);
		i += k;
	}
	return lv;
}

/* Build a tree over keys[0..n) (sorted, unique) and return its root. */
static struct bf_root build_tree(struct img *im, const struct bf_key *keys, size_t n, size_t leaf_cap,
				 size_t node_cap, unsigned maxdata, uint64_t owner, uint64_t *rng)
{
	struct level lv = build_leaves(im, keys, n, leaf_cap, maxdata, owner, rng);
	uint8_t level = 0;
	struct bf_root root;

	while (lv.n > 1) {
		struct level up = build_nodes(im, &lv, ++level, node_cap, owner, rng);

		level_free(&lv);
		lv = up;
	}
	root = (struct bf_root){ owner, lv.bytenr[0], lv.gen[0], level };
	level_free(&lv);
	return root;
}

static void img_write(struct img *im)
{
	int fd = open(im->path, O_WRONLY);

	if (fd < 0 || pwrite(fd, im->buf, im->size, 0) != (ssize_t)im->size)
		printf("cannot write %s: %s\n", im->path, strerror(errno));
	if (fd >= 0)
		close(fd);
}

/* Register the image file as a one-device volume with one chunk covering every block. */
static int vol_open(struct img *im, struct bf_volume *vol)
{
	struct bf_dev_item di;
	uint8_t cbuf[sizeof(struct bf_chunk) + sizeof(struct bf_stripe)];
	struct bf_chunk *c = (struct bf_chunk *)cbuf;
	struct bf_stripe *st = &c->stripe;
	uint64_t len = (im->next - im->logical + (1 << 20) - 1) & ~((uint64_t)(1 << 20) - 1);
	char err[256] = "";
	size_t need = (size_t)(im->phys[im->ncopies - 1] + len);
	int fd, ret;

	if (need > im->size) { /* every copy of the chunk lies inside the device */
		im->buf = realloc(im->buf, need);
		memset(im->buf + im->size, 0, need - im->size);
		im->size = need;
	}
	img_write(im);
	fd = open(im->path, O_RDONLY);
	if (fd < 0)
		return -errno;
	memset(&di, 0, sizeof(di));
	put64(&di.devid, 1);
	put64(&di.total_bytes, im->size);
	put32(&di.io_align, SECTOR);
	put32(&di.io_width, SECTOR);
	put32(&di.sector_size, SECTOR);
	memset(di.uuid, 0xd1, BF_UUID_SIZE);
	memcpy(di.fsid, im->fsid, BF_FSID_SIZE);
	bf_vol_init(vol, im->fsid, SECTOR, 1);
	ret = bf_vol_add_device(vol, im->path, fd, im->size, &di, SUPER_GEN, err, sizeof(err));
	if (ret) {
		printf("bf_vol_add_device: %s\n", err);
		close(fd);
		return ret;
	}
	memset(cbuf, 0, sizeof(cbuf));
	put64(&c->length, len);
	put64(&c->owner, BF_EXTENT_TREE_OBJECTID);
	put64(&c->stripe_len, BF_STRIPE_LEN);
	put64(&c->type, BF_BLOCK_GROUP_METADATA | (im->ncopies == 2 ? BF_BLOCK_GROUP_DUP : 0));
	put32(&c->io_align, BF_STRIPE_LEN);
	put32(&c->io_width, BF_STRIPE_LEN);
	put32(&c->sector_size, SECTOR);
	put16(&c->num_stripes, (uint16_t)im->ncopies);
	put16(&c->sub_stripes, 1);
	for (int i = 0; i < im->ncopies; i++) {
		put64(&st[i].devid, 1);
		put64(&st[i].offset, im->phys[i]);
		memset(st[i].dev_uuid, 0xd1, BF_UUID_SIZE);
	}
	ret = bf_vol_add_chunk(vol, im->logical, c, bf_chunk_item_size((unsigned)im->ncopies), err, sizeof(err));
	if (!ret)
		ret = bf_vol_resolve_devices(vol, false, err, sizeof(err));
	if (ret)
		printf("volume setup: %s\n", err);
	return ret;
}

static void img_free(struct img *im)
{
	unlink(im->path);
	free(im->buf);
	free(im->blocks);
}

/* ================= the model ================= */

struct model {
	struct bf_key *keys;
	size_t n;
	unsigned maxdata;
};

/* n strictly ascending keys with runs of equal objectid and of equal type. */
static struct model make_model(size_t n, unsigned maxdata, uint64_t *rng)
{
	static const uint8_t types[] = { 1, 12, 84, 96, 108, 132, 168, 228 };
	struct model m = { calloc(n ? n : 1, sizeof(struct bf_key)), n, maxdata };
	struct bf_key k = { 256, 1, 0 };

	for (size_t i = 0; i < n; i++) {
		uint64_t r = rng_below(rng, 3);

		if (i > 0 && r == 0) {
			k.objectid += 1 + rng_below(rng, 3);
			k.type = types[rng_below(rng, sizeof(types))];
			k.offset = rng_below(rng, 1000);
		} else if (i > 0 && r == 1 && k.type < 200) {
			k.type = (uint8_t)(k.type + 1 + rng_below(rng, 40));
			k.offset = rng_below(rng, 1000);
		} else if (i > 0) {
			k.offset += 1 + rng_below(rng, 100);
		}
		m.keys[i] = k;
	}
	return m;
}

/* Index of the first key >= t (or > t when strict). */
static size_t model_bound(const struct model *m, const struct bf_key *t, bool strict)
{
	size_t lo = 0, hi = m->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = bf_key_cmp(&m->keys[mid], t);

		if (c < 0 || (strict && c == 0))
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static struct bf_key random_target(const struct model *m, uint64_t *rng)
{
	struct bf_key t;
	uint64_t r = rng_below(rng, 10);

	if (m->n && r < 4)
		return m->keys[rng_below(rng, m->n)];
	if (r == 4)
		return (struct bf_key){ 0, 0, 0 };
	if (r == 5)
		return (struct bf_key){ UINT64_MAX, 255, UINT64_MAX };
	t.objectid = 250 + rng_below(rng, (m->n ? m->keys[m->n - 1].objectid - 250 : 0) + 10);
	t.type = (uint8_t)rng_below(rng, 256);
	t.offset = rng_below(rng, 3) ? rng_below(rng, 5000) : rng_next(rng);
	return t;
}

/* Does the path point exactly at model index idx (idx == n: past the end)? */
static bool path_at(const struct bf_path *p, const struct model *m, size_t idx)
{
	uint32_t size;
	const uint8_t *data;
	struct bf_key k;

	if (idx >= m->n)
		return !bf_path_valid(p);
	if (!bf_path_valid(p))
		return false;
	k = bf_path_key(p);
	data = bf_path_item(p, &size);
	return bf_key_cmp(&k, &m->keys[idx]) == 0 && item_ok(&k, data, size, m->maxdata);
}

/* ================= (1) search against the model ================= */

struct fs {
	struct img im;
	struct bf_volume vol;
	struct bf_tree_env env;
	struct bf_root root;
	struct model m;
};

/* Build a tree of n keys into a fresh volume. Returns 0 or a negative errno. */
static int fs_make(struct fs *f, uint32_t nodesize, int ncopies, size_t n, unsigned maxdata, size_t leaf_cap,
		   size_t node_cap, size_t cache_bytes, uint64_t *rng)
{
	int fd;

	memset(f, 0, sizeof(*f));
	img_init(&f->im, nodesize, ncopies, rng);
	snprintf(f->im.path, sizeof(f->im.path), "/tmp/test_btree.XXXXXX");
	fd = mkstemp(f->im.path);
	if (fd < 0)
		return -errno;
	close(fd);
	f->m = make_model(n, maxdata, rng);
	f->root = build_tree(&f->im, f->m.keys, n, leaf_cap, node_cap, maxdata, BF_FS_TREE_OBJECTID, rng);
	if (vol_open(&f->im, &f->vol))
		return -EIO;
	return bf_env_init(&f->env, &f->vol, nodesize, SECTOR, BF_CSUM_CRC32C, f->im.fsid, SUPER_GEN, cache_bytes);
}

static void fs_free(struct fs *f)
{
	bf_env_destroy(&f->env);
	bf_vol_destroy(&f->vol);
	img_free(&f->im);
	free(f->m.keys);
}

/* A fresh cache, for after the image file was changed behind its back. */
static void fs_reopen_env(struct fs *f, size_t cache_bytes)
{
	img_write(&f->im);
	bf_env_destroy(&f->env);
	bf_env_init(&f->env, &f->vol, f->im.nodesize, SECTOR, BF_CSUM_CRC32C, f->im.fsid, SUPER_GEN, cache_bytes);
}

/* Search for t and check the result and a few steps either way against the model. Returns false on mismatch. */
static bool check_one_search(struct fs *f, struct bf_path *p, const struct bf_key *t, uint64_t *rng)
{
	size_t idx = model_bound(&f->m, t, false);
	int want = idx < f->m.n && bf_key_cmp(&f->m.keys[idx], t) == 0 ? 0 : 1;
	int ret = bf_search(&f->env, &f->root, t, p), steps = (int)rng_below(rng, 4);

	if (ret != want || !path_at(p, &f->m, idx)) {
		printf("  bf_search %s: ret %d want %d, idx %zu of %zu\n", keystr(t), ret, want, idx, f->m.n);
		return false;
	}
	for (int s = 0; s < steps; s++) {
		bool fwd = rng_below(rng, 2);

		ret = fwd ? bf_path_next(p) : bf_path_prev(p);
		if (fwd) {
			want = idx + 1 < f->m.n ? 0 : 1;
			idx = idx + 1 < f->m.n ? idx + 1 : f->m.n;
		} else {
			want = idx > 0 && f->m.n ? 0 : 1;
			idx = want == 0 ? (idx > f->m.n ? f->m.n : idx) - 1 : idx;
		}
		if (ret != want || !path_at(p, &f->m, idx)) {
			printf("  after %s from %s: ret %d want %d, idx %zu\n", fwd ? "next" : "prev", keystr(t), ret,
			       want, idx);
			return false;
		}
	}
	return true;
}

static bool check_one_search_le(struct fs *f, struct bf_path *p, const struct bf_key *t)
{
	size_t up = model_bound(&f->m, t, true); /* first key > t */
	int ret = bf_search_le(&f->env, &f->root, t, p);

	if (up == 0)
		return ret == -ENOENT;
	if (ret != (bf_key_cmp(&f->m.keys[up - 1], t) == 0 ? 0 : 1))
		return false;
	return path_at(p, &f->m, up - 1);
}

struct collect {
	struct bf_key *keys;
	size_t n, stop_after;
	const struct model *m;
	bool bad_data;
};

static int collect_cb(void *ctx, const struct bf_key *key, const uint8_t *data, uint32_t size)
{
	struct collect *c = ctx;

	if (c->n == c->stop_after)
		return c->stop_after == 7 ? -42 : 1;
	c->keys[c->n++] = *key;
	c->bad_data |= !item_ok(key, data, size, c->m->maxdata);
	return 0;
}

static bool check_one_iterate(struct fs *f, struct bf_key lo, struct bf_key hi, uint64_t *rng)
{
	size_t a = model_bound(&f->m, &lo, false), b = model_bound(&f->m, &hi, true);
	size_t want = b > a ? b - a : 0;
	struct collect c = { calloc(f->m.n + 1, sizeof(struct bf_key)), 0, SIZE_MAX, &f->m, false };
	int ret, want_ret = 0;
	bool ok;

	if (rng_below(rng, 4) == 0 && want > 0) {
		c.stop_after = (size_t)rng_below(rng, want);
		want = c.stop_after;
		want_ret = c.stop_after == 7 ? -42 : 0;
	}
	ret = bf_iterate(&f->env, &f->root, &lo, &hi, collect_cb, &c);
	ok = ret == want_ret && c.n == want && !c.bad_data;
	for (size_t i = 0; ok && i < c.n; i++)
		ok = bf_key_cmp(&c.keys[i], &f->m.keys[a + i]) == 0;
	if (!ok)
		printf("  bf_iterate %s..%s: ret %d (want %d), %zu items (want %zu)\n", keystr(&lo), keystr(&hi), ret,
		       want_ret, c.n, want);
	free(c.keys);
	return ok;
}

/* Walk the whole tree forward from the first item and back from the last. */
static bool check_full_walk(struct fs *f)
{
	struct bf_path p;
	struct bf_key lo = { 0, 0, 0 }, hi = { UINT64_MAX, 255, UINT64_MAX };
	size_t i = 0;
	int ret;
	bool ok = true;

	bf_path_init(&p, &f->env);
	ret = bf_search(&f->env, &f->root, &lo, &p);
	while (ok && bf_path_valid(&p)) {
		ok = path_at(&p, &f->m, i++);
		ret = bf_path_next(&p);
	}
	ok = ok && i == f->m.n && ret == 1 && !bf_path_valid(&p) && bf_path_next(&p) == 1;
	/* prev from past the end gives the last item */
	ok = ok && (f->m.n == 0 ? bf_path_prev(&p) == 1 : bf_path_prev(&p) == 0 && path_at(&p, &f->m, f->m.n - 1));
	ret = bf_search_le(&f->env, &f->root, &hi, &p);
	ok = ok && (f->m.n ? ret == 1 : ret == -ENOENT);
	for (i = f->m.n; ok && i > 0; i--) {
		ok = path_at(&p, &f->m, i - 1);
		ret = bf_path_prev(&p);
		ok = ok && ret == (i > 1 ? 0 : 1);
	}
	bf_path_release(&p);
	return ok;
}

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
		int flips = 1 + (int)rng_below(rng, 4), ret;
		uint8_t *b = work_of(v, node);

		for (int i = 0; i < flips; i++) {
			uint32_t pos = rng_below(rng, 2) ? BF_CSUM_SIZE + (uint32_t)rng_below(rng, hot - BF_CSUM_SIZE)
							  : BF_CSUM_SIZE + (uint32_t)rng_below(rng, v->nodesize - BF_CSUM_SIZE);

			b[pos] ^= (uint8_t)(1 + rng_below(rng, 255));
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
		victim = f->im.blocks[rng_below(rng, f->im.nblocks)];
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
			uint64_t bytenr = f->im.blocks[rng_below(rng, f->im.nblocks)];
			uint8_t *b = img_block(&f->im, bytenr, 0);
			uint32_t pos = BF_CSUM_SIZE + (uint32_t)rng_below(rng, 400);

			b[pos] ^= (uint8_t)(1 + rng_below(rng, 255));
			put_csum(b, f->im.nodesize, BF_CSUM_CRC32C);
		}
		fs_reopen_env(f, 0);
		bf_path_init(&p, &f->env);
		for (int i = 0; i < 200; i++) {
			struct bf_key t = random_target(&f->m, rng);
			int ret = rng_below(rng, 2) ? bf_search(&f->env, &f->root, &t, &p)
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

/* ================= (4) the cache ================= */

static void test_cache_refs(struct fs *f)
{
	struct bf_block *a = NULL, *b = NULL;
	struct bf_block_expect exp = { f->root.generation, f->root.level, NULL, 0 };
	struct bf_cache_stats s0, s1;
	int r1, r2;

	fs_reopen_env(f, 0);
	bf_cache_stats(&f->env, &s0);
	r1 = bf_block_read(&f->env, f->root.bytenr, &exp, &a);
	r2 = bf_block_read(&f->env, f->root.bytenr, &exp, &b);
	bf_cache_stats(&f->env, &s1);
	CHECK(r1 == 0 && r2 == 0 && a == b && a->refs == 2, "two reads of one block share it with 2 references");
	CHECK(s1.misses == s0.misses + 1 && s1.hits == s0.hits + 1, "one miss then one hit (%" PRIu64 " misses, %"
	      PRIu64 " hits)", s1.misses - s0.misses, s1.hits - s0.hits);
	CHECK(a && a->bytenr == f->root.bytenr && a->level == f->root.level && a->generation == f->root.generation &&
	      a->owner == BF_FS_TREE_OBJECTID, "the block's decoded header");
	bf_block_get(a);
	CHECK(a->refs == 3, "bf_block_get adds a reference");
	bf_block_put(&f->env, a);
	bf_block_put(&f->env, a);
	bf_block_put(&f->env, b);
	CHECK(a->refs == 0, "all references dropped");
	/* a cached block read with another parent's expectations is checked again */
	exp.generation = f->root.generation + 1;
	bf_log_set_verbosity((enum bf_log_level)0);
	r1 = bf_block_read(&f->env, f->root.bytenr, &exp, &a);
	bf_log_set_verbosity(BF_LOG_INFO);
	CHECK(r1 == -EUCLEAN && a == NULL, "a cache hit with the wrong generation fails (%d)", r1);
	bf_log_set_verbosity((enum bf_log_level)0);
	r1 = bf_block_read(&f->env, f->root.bytenr + 512, NULL, &a);
	bf_log_set_verbosity(BF_LOG_INFO);
	CHECK(r1 == -EUCLEAN, "an unaligned address fails before any I/O (%d)", r1);
}

static void test_cache_evict(struct fs *f)
{
	const size_t per = sizeof(struct bf_block) + f->im.nodesize;
	const size_t cap = 4 * per, n = f->im.nblocks < 40 ? f->im.nblocks : 40;
	struct bf_block **held = calloc(n, sizeof(*held));
	struct bf_cache_stats st;
	int fails = 0;

	fs_reopen_env(f, cap);
	for (size_t i = 0; i < n; i++)
		fails += bf_block_read(&f->env, f->im.blocks[i], NULL, &held[i]) != 0;
	bf_cache_stats(&f->env, &st);
	CHECK(fails == 0 && st.bytes == n * per && st.evictions == 0, "held blocks are never evicted (%" PRIu64
	      " bytes cached, %" PRIu64 " evictions)", st.bytes, st.evictions);
	for (size_t i = 0; i < n; i++)
		bf_block_put(&f->env, held[i]);
	bf_cache_stats(&f->env, &st);
	CHECK(st.bytes <= cap && st.evictions == n - cap / per, "released blocks are evicted down to the cap (%" PRIu64
	      " bytes, %" PRIu64 " evictions)", st.bytes, st.evictions);
	/* the most recently released survive */
	fails = bf_block_read(&f->env, f->im.blocks[n - 1], NULL, &held[0]);
	bf_cache_stats(&f->env, &st);
	CHECK(fails == 0 && st.hits == 1, "the last released block is still cached");
	bf_block_put(&f->env, held[0]);
	free(held);
	/* a tiny cache (one block) still answers correctly: the path holds what it uses */
	fs_reopen_env(f, per);
	CHECK(check_full_walk(f), "full walk with a one-block cache");
	bf_cache_stats(&f->env, &st);
	CHECK(st.bytes <= per, "one-block cache holds at most one idle block after the walk (%" PRIu64 ")", st.bytes);
	fs_reopen_env(f, 0);
}

struct thread_arg {
	struct fs *f;
	uint64_t rng;
	unsigned bad, done;
};

static void *search_thread(void *argp)
{
	struct thread_arg *a = argp;
	struct bf_path p;

	bf_path_init(&p, &a->f->env);
	for (unsigned i = 0; i < 1500; i++) {
		struct bf_key t = random_target(&a->f->m, &a->rng);

		a->bad += !check_one_search(a->f, &p, &t, &a->rng);
		a->done++;
	}
	bf_path_release(&p);
	return NULL;
}

static void test_cache_threads(struct fs *f)
{
	enum { NT = 4 };
	pthread_t th[NT];
	struct thread_arg args[NT];
	struct bf_cache_stats st;
	const size_t per = sizeof(struct bf_block) + f->im.nodesize;
	unsigned bad = 0, done = 0;

	for (int cap = 0; cap < 2; cap++) {
		fs_reopen_env(f, cap ? 8 * per : 0);
		for (int i = 0; i < NT; i++) {
			args[i] = (struct thread_arg){ f, check_seed + 1000 * (uint64_t)i + (uint64_t)cap, 0, 0 };
			pthread_create(&th[i], NULL, search_thread, &args[i]);
		}
		for (int i = 0; i < NT; i++) {
			pthread_join(th[i], NULL);
			bad += args[i].bad;
			done += args[i].done;
		}
		bf_cache_stats(&f->env, &st);
		CHECK(!cap || st.bytes <= 8 * per, "after the threads the small cache is within its cap (%" PRIu64 ")",
		      st.bytes);
	}
	CHECK(bad == 0 && done == 2 * NT * 1500, "concurrent searches: %u of %u wrong", bad, done);
	fs_reopen_env(f, 0);
}

/* ================= (5) mirrors ================= */

/* Run fn with stderr captured into out (NUL-terminated). */
static int capture_stderr(char *out, size_t len, int (*fn)(void *), void *arg)
{
	char path[] = "/tmp/test_btree_log.XXXXXX";
	int fd = mkstemp(path), saved = dup(2), ret;
	ssize_t n;

	fflush(stderr);
	dup2(fd, 2);
	ret = fn(arg);
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	n = pread(fd, out, len - 1, 0);
	out[n > 0 ? n : 0] = '\0';
	close(fd);
	unlink(path);
	return ret;
}

static int read_root_block(void *arg)
{
	struct fs *f = arg;
	struct bf_block *b = NULL;
	struct bf_block_expect exp = { f->root.generation, f->root.level, NULL, 0 };
	int ret = bf_block_read(&f->env, f->root.bytenr, &exp, &b);

	if (!ret)
		bf_block_put(&f->env, b);
	return ret;
}

static void test_mirrors(uint64_t *rng)
{
	struct fs f;
	char log[4096], needle[128];
	uint8_t *m1, *m2, *save = NULL;
	int ret = fs_make(&f, 16384, 2, 2000, 16, 100, 100, 0, rng);

	CHECK(ret == 0, "DUP volume setup: %d", ret);
	if (ret) {
		fs_free(&f);
		return;
	}
	CHECK(check_full_walk(&f), "walk over a DUP volume");
	m1 = img_block(&f.im, f.root.bytenr, 0);
	m2 = img_block(&f.im, f.root.bytenr, 1);
	save = malloc(f.im.nodesize);
	memcpy(save, m1, f.im.nodesize);

	m1[200] ^= 1; /* mirror 1: bad checksum */
	fs_reopen_env(&f, 0);
	ret = capture_stderr(log, sizeof(log), read_root_block, &f);
	snprintf(needle, sizeof(needle), "tree block %" PRIu64 ": mirror 1 bad (", f.root.bytenr);
	CHECK(ret == 0 && strstr(log, needle) && strstr(log, "using mirror 2"), "bad mirror 1 falls back to mirror 2 "
	      "with a warning: ret %d, log \"%s\"", ret, log);
	CHECK(check_full_walk(&f), "walk with a bad mirror 1 of the root");

	memcpy(m1, save, f.im.nodesize); /* mirror 1: stale (older generation, valid checksum) */
	put64(&((struct bf_header *)m1)->generation, f.root.generation - 1 ? f.root.generation - 1 : 2);
	put_csum(m1, f.im.nodesize, BF_CSUM_CRC32C);
	fs_reopen_env(&f, 0);
	ret = capture_stderr(log, sizeof(log), read_root_block, &f);
	CHECK(ret == 0 && strstr(log, "generation") && strstr(log, "using mirror 2"), "stale mirror 1 is passed over: "
	      "ret %d, log \"%s\"", ret, log);

	m2[300] ^= 1; /* stale mirror 1, bad checksum on mirror 2 */
	fs_reopen_env(&f, 0);
	ret = capture_stderr(log, sizeof(log), read_root_block, &f);
	snprintf(needle, sizeof(needle), "tree block %" PRIu64 ":", f.root.bytenr);
	CHECK(ret == -EUCLEAN && strstr(log, needle) && strstr(log, "mirror 1: ") && strstr(log, "mirror 2: ") &&
	      strstr(log, "expected") && strstr(log, "found"), "stale mirror 1 and bad mirror 2: ret %d (want "
	      "-EUCLEAN), log \"%s\"", ret, log);
	memcpy(m1, save, f.im.nodesize);
	m1[300] ^= 1;
	fs_reopen_env(&f, 0);
	ret = capture_stderr(log, sizeof(log), read_root_block, &f);
	CHECK(ret == -EIO && strstr(log, "crc32c checksum mismatch: expected "), "both mirrors with bad checksums: ret "
	      "%d (want -EIO), log \"%s\"", ret, log);
	{
		struct bf_path p;
		struct bf_key t = f.m.keys[0];

		bf_path_init(&p, &f.env);
		bf_log_set_verbosity((enum bf_log_level)0);
		ret = bf_search(&f.env, &f.root, &t, &p);
		bf_log_set_verbosity(BF_LOG_INFO);
		CHECK(ret == -EIO && !bf_path_valid(&p), "search with an unreadable root fails with -EIO (%d)", ret);
		bf_path_release(&p);
	}
	free(save);
	fs_free(&f);
}

/* ================= (6) a real image ================= */

static int run(const char *cmd)
{
	int ret = system(cmd);

	return ret == 0 ? 0 : -1;
}

struct real {
	struct bf_volume vol;
	struct bf_tree_env env;
	struct bf_super sb;
	bool vol_ready;
	int chunks, roots_seen[16];
	unsigned dir_index, inodes;
};

static int chunk_cb(void *ctx, const struct bf_key *key, const uint8_t *data, uint32_t size)
{
	struct real *r = ctx;
	char err[256] = "";
	int ret;

	if (key->type != BF_CHUNK_ITEM_KEY)
		return 0;
	ret = bf_vol_add_chunk(&r->vol, key->offset, (const struct bf_chunk *)data, size, err, sizeof(err));
	if (ret)
		printf("chunk %" PRIu64 ": %s\n", key->offset, err);
	r->chunks++;
	return ret;
}

static int root_cb(void *ctx, const struct bf_key *key, const uint8_t *data, uint32_t size)
{
	struct real *r = ctx;

	(void)data;
	if (key->type == BF_ROOT_ITEM_KEY && key->objectid < 16 && size >= BF_ROOT_ITEM_LEGACY_SIZE)
		r->roots_seen[key->objectid]++;
	return 0;
}

static int fs_cb(void *ctx, const struct bf_key *key, const uint8_t *data, uint32_t size)
{
	struct real *r = ctx;

	(void)data, (void)size;
	r->dir_index += key->objectid == BF_FIRST_FREE_OBJECTID && key->type == BF_DIR_INDEX_KEY;
	r->inodes += key->type == BF_INODE_ITEM_KEY;
	return 0;
}

static int real_open(struct real *r, const char *img)
{
	char err[256] = "";
	int fd = open(img, O_RDONLY), ret;
	struct stat st;
	const uint8_t *fsid;

	if (fd < 0 || pread(fd, &r->sb, sizeof(r->sb), BF_SUPER_INFO_OFFSET) != sizeof(r->sb) || fstat(fd, &st))
		return -EIO;
	if (get64(r->sb.magic) != BF_MAGIC)
		return -EINVAL;
	fsid = (get64(r->sb.incompat_flags) & BF_FEATURE_INCOMPAT_METADATA_UUID) ? r->sb.metadata_uuid : r->sb.fsid;
	bf_vol_init(&r->vol, r->sb.fsid, get32(r->sb.sectorsize), get64(r->sb.num_devices));
	r->vol_ready = true;
	ret = bf_vol_add_device(&r->vol, img, fd, (uint64_t)st.st_size, &r->sb.dev_item, get64(r->sb.generation), err,
				sizeof(err));
	if (!ret)
		ret = bf_vol_load_sys_chunks(&r->vol, &r->sb, err, sizeof(err));
	if (!ret)
		ret = bf_vol_resolve_devices(&r->vol, false, err, sizeof(err));
	if (!ret)
		ret = bf_env_init(&r->env, &r->vol, get32(r->sb.nodesize), get32(r->sb.sectorsize), get16(r->sb.csum_type),
				  fsid, get64(r->sb.generation), 0);
	if (ret)
		printf("opening %s: %d %s\n", img, ret, err);
	return ret;
}

static void real_image_checks(struct real *r, unsigned nfiles)
{
	struct bf_root chunk = { BF_CHUNK_TREE_OBJECTID, get64(r->sb.chunk_root), get64(r->sb.chunk_root_generation),
				 r->sb.chunk_root_level };
	struct bf_root tree = { BF_ROOT_TREE_OBJECTID, get64(r->sb.root), get64(r->sb.generation), r->sb.root_level };
	struct bf_key lo = { 0, 0, 0 }, hi = { UINT64_MAX, 255, UINT64_MAX };
	struct bf_key fs_key = { BF_FS_TREE_OBJECTID, BF_ROOT_ITEM_KEY, UINT64_MAX };
	struct bf_path p;
	int ret;

	ret = bf_iterate(&r->env, &chunk, &lo, &hi, chunk_cb, r);
	CHECK(ret == 0 && r->chunks >= 3, "chunk tree of the mkfs image: ret %d, %d chunk items", ret, r->chunks);
	ret = bf_iterate(&r->env, &tree, &lo, &hi, root_cb, r);
	CHECK(ret == 0 && r->roots_seen[2] == 1 && r->roots_seen[4] == 1 && r->roots_seen[5] == 1 &&
	      r->roots_seen[7] == 1, "root tree has ROOT_ITEMs for trees 2, 4, 5, 7: ret %d, seen %d %d %d %d", ret,
	      r->roots_seen[2], r->roots_seen[4], r->roots_seen[5], r->roots_seen[7]);
	bf_path_init(&p, &r->env);
	ret = bf_search_le(&r->env, &tree, &fs_key, &p);
	if (ret >= 0 && bf_path_key(&p).objectid == BF_FS_TREE_OBJECTID) {
		uint32_t size;
		const struct bf_root_item *ri = (const struct bf_root_item *)bf_path_item(&p, &size);
		struct bf_root fs = { BF_FS_TREE_OBJECTID, get64(ri->bytenr), get64(ri->generation), ri->level };

		bf_path_release(&p);
		ret = bf_iterate(&r->env, &fs, &lo, &hi, fs_cb, r);
		CHECK(ret == 0 && r->dir_index == nfiles && r->inodes == nfiles + 1, "fs tree (level %u): ret %d, %u "
		      "DIR_INDEX items in the top directory (want %u), %u inodes (want %u)", fs.level, ret, r->dir_index,
		      nfiles, r->inodes, nfiles + 1);
		CHECK(nfiles < 1000 || fs.level >= 1, "fs tree of %u files has more than one level (%u)", nfiles, fs.level);
		for (unsigned i = 0; i < nfiles; i += 97) {
			char name[32];
			struct bf_key k = { BF_FIRST_FREE_OBJECTID, BF_DIR_ITEM_KEY, 0 };

			snprintf(name, sizeof(name), "file-%05u", i);
			k.offset = bf_name_hash(name, strlen(name));
			ret = bf_search(&r->env, &fs, &k, &p);
			CHECK(ret == 0, "DIR_ITEM for %s found (%d)", name, ret);
		}
	} else {
		CHECK(0, "ROOT_ITEM of the fs tree not found (%d)", ret);
	}
	bf_path_release(&p);
}

/* Make a directory of nfiles empty files for mkfs --rootdir. */
static int make_files(const char *dir, unsigned nfiles)
{
	char path[128];

	if (mkdir(dir, 0755) && errno != EEXIST)
		return -errno;
	for (unsigned i = 0; i < nfiles; i++) {
		int fd;

		snprintf(path, sizeof(path), "%s/file-%05u", dir, i);
		fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0644);
		if (fd < 0)
			return -errno;
		close(fd);
	}
	return 0;
}

/* mkfs.btrfs with opts (plus --rootdir of nfiles files when nfiles > 0), then read it through a volume. */
static void test_real_image(const char *opts, unsigned nfiles)
{
	char cmd[768], dir[64], img[64];
	struct real r;

	memset(&r, 0, sizeof(r));
	snprintf(dir, sizeof(dir), "/tmp/test_btree_root.%d", (int)getpid());
	snprintf(img, sizeof(img), "/tmp/test_btree_real.%d.img", (int)getpid());
	if (nfiles)
		CHECK(make_files(dir, nfiles) == 0, "creating %u files in %s: %s", nfiles, dir, strerror(errno));
	snprintf(cmd, sizeof(cmd), "rm -f %s && truncate -s 256M %s && mkfs.btrfs -q -f %s %s%s %s >/dev/null 2>&1", img,
		 img, opts, nfiles ? "-r " : "", nfiles ? dir : "", img);
	if (run(cmd) == 0 && real_open(&r, img) == 0) {
		real_image_checks(&r, nfiles);
		bf_env_destroy(&r.env);
	} else {
		CHECK(0, "mkfs.btrfs image %s (options \"%s\") could not be made or opened", img, opts);
	}
	if (r.vol_ready)
		bf_vol_destroy(&r.vol);
	snprintf(cmd, sizeof(cmd), "rm -rf %s %s", dir, img);
	run(cmd);
}

static void test_real_images(void)
{
	if (run("command -v mkfs.btrfs >/dev/null 2>&1")) {
		printf("skip: mkfs.btrfs not installed, real-image tests not run\n");
		return;
	}
	test_real_image("", 0);             /* default options: 16K nodes, DUP metadata */
	test_real_image("-n 4096", 2000);   /* a fs tree of several levels */
}

/* ================= main ================= */

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
			struct bf_key t = f.m.keys[rng_below(&rng, f.m.n)];

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
	uint64_t rng;
	struct fs f;

	check_seed = argc > 1 ? strtoull(argv[1], NULL, 0) : (uint64_t)time(NULL);
	printf("test_btree: seed %" PRIu64 "\n", check_seed);
	rng = check_seed;
	test_validation(&rng);
	test_fuzz_blocks(&rng);
	test_search();
	if (fs_make(&f, 4096, 1, 6000, 4, 40, 6, 0, &rng) == 0) {
		test_corrupt_leaf(&f, &rng);
		test_corrupt_tree(&f, &rng);
		test_cache_refs(&f);
		test_cache_evict(&f);
		test_cache_threads(&f);
	} else {
		CHECK(0, "setup of the 4K tree for the cache tests");
	}
	fs_free(&f);
	test_mirrors(&rng);
	test_real_images();
	if (getenv("BTREE_BENCH"))
		bench();
	return check_summary();
}
