/*
 * tests/unit/btree_synth.h - synthetic read-only B-trees for the btree read-path tests (test_btree_*.c).
 *
 * Owns: building correct leaves and nodes in memory (headers, crc32c checksums, item data that is a function
 * of its key so any returned item can be verified), a synthetic volume (one chunk, one or more copies) written
 * to a temporary file and registered as a one-device volume, the sorted-array model of its keys, struct fs (a
 * built tree opened through an env) and the search checks that compare bf_search, bf_search_le, next/prev,
 * bf_iterate and full walks with the model.
 * Key idea: header-only like check.h (static inline, so a program that uses only part of it still builds with
 * -Werror); each test program is one translation unit that includes it and owns one concern.
 */
#ifndef BF_TEST_BTREE_SYNTH_H
#define BF_TEST_BTREE_SYNTH_H

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "alloc/alloc.h"
#include "btree/btree.h"
#include "util/util.h"
#include "tests/unit/check.h"


#define HDR ((uint32_t)sizeof(struct bf_header))
#define ITEM ((uint32_t)sizeof(struct bf_item))
#define KPTR ((uint32_t)sizeof(struct bf_key_ptr))
#define SECTOR 4096u
#define BASE (1ull << 20)   /* logical start of the synthetic chunk */
#define SUPER_GEN 1000ull

static inline const char *keystr(const struct bf_key *k)
{
	static __thread char buf[4][64];
	static __thread int i;

	i = (i + 1) % 4;
	snprintf(buf[i], sizeof(buf[i]), "(%" PRIu64 " %u %" PRIu64 ")", k->objectid, k->type, k->offset);
	return buf[i];
}

/* ================= building blocks ================= */

static inline void put_csum(uint8_t *b, uint32_t nodesize, unsigned type)
{
	uint8_t out[BF_CSUM_MAX];

	bf_csum(type, b + BF_CSUM_SIZE, nodesize - BF_CSUM_SIZE, out);
	memcpy(b, out, BF_CSUM_SIZE);
}

static inline void put_header(uint8_t *b, uint32_t nodesize, const uint8_t *fsid, uint64_t bytenr, uint8_t level,
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

static inline struct bf_item *item_p(uint8_t *b, uint32_t i) { return (struct bf_item *)(b + HDR + i * ITEM); }
static inline struct bf_key_ptr *kptr_p(uint8_t *b, uint32_t i) { return (struct bf_key_ptr *)(b + HDR + i * KPTR); }

/* Item content is a function of its key, so any returned item can be verified. */
static inline uint32_t item_len(const struct bf_key *k, unsigned maxdata)
{
	return (uint32_t)(mix64(k->objectid * 31 + k->type * 7 + k->offset) % (maxdata + 1));
}

static inline uint8_t item_byte(const struct bf_key *k, uint32_t j)
{
	return (uint8_t)(mix64(k->objectid ^ (k->offset << 8) ^ k->type) >> ((j % 8) * 8)) ^ (uint8_t)j;
}

static inline bool item_ok(const struct bf_key *k, const uint8_t *data, uint32_t size, unsigned maxdata)
{
	if (size != item_len(k, maxdata))
		return false;
	for (uint32_t j = 0; j < size; j++)
		if (data[j] != item_byte(k, j))
			return false;
	return true;
}

static inline void fill_leaf(uint8_t *b, uint32_t nodesize, const struct bf_key *keys, uint32_t n, unsigned maxdata)
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

static inline void img_init(struct img *im, uint32_t nodesize, int ncopies, uint64_t *rng)
{
	memset(im, 0, sizeof(*im));
	im->nodesize = nodesize;
	for (int i = 0; i < BF_FSID_SIZE; i++)
		im->fsid[i] = (uint8_t)splitmix64(rng);
	im->ncopies = ncopies;
	im->logical = ncopies == 1 ? BASE : (1ull << 30); /* DUP: logical != physical */
	im->next = im->logical;
	im->phys[0] = BASE;
	im->phys[1] = BASE + (32ull << 20);
}

static inline uint64_t img_phys(const struct img *im, uint64_t bytenr, int copy)
{
	return im->phys[copy] + bytenr - im->logical;
}

static inline uint8_t *img_block(struct img *im, uint64_t bytenr, int copy)
{
	return im->buf + img_phys(im, bytenr, copy);
}

static inline uint64_t img_alloc(struct img *im)
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
static inline void img_seal(struct img *im, uint64_t bytenr)
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

static inline void level_add(struct level *lv, const struct bf_key *first, uint64_t bytenr, uint64_t gen)
{
	lv->first = realloc(lv->first, (lv->n + 1) * sizeof(*lv->first));
	lv->bytenr = realloc(lv->bytenr, (lv->n + 1) * sizeof(*lv->bytenr));
	lv->gen = realloc(lv->gen, (lv->n + 1) * sizeof(*lv->gen));
	lv->first[lv->n] = *first;
	lv->bytenr[lv->n] = bytenr;
	lv->gen[lv->n++] = gen;
}

static inline void level_free(struct level *lv) { free(lv->first), free(lv->bytenr), free(lv->gen); }

/* How many entries go into the next block: between cap/2+1 and cap, the rest when few are left. */
static inline size_t chunk_count(size_t left, size_t cap, uint64_t *rng)
{
	size_t k = cap / 2 + 1 + (size_t)check_below(rng, cap - cap / 2);

	if (k > cap)
		k = cap;
	return left <= cap ? left : (left - k < cap / 2 + 1 && left <= 2 * cap ? left / 2 : k);
}

static inline struct level build_leaves(struct img *im, const struct bf_key *keys, size_t n, size_t cap,
					unsigned maxdata, uint64_t owner, uint64_t *rng)
{
	struct level lv = { 0 };
	struct bf_key none = { 0, 0, 0 };
	size_t i = 0;

	do {
		size_t k = chunk_count(n - i, cap, rng);
		uint64_t bytenr = img_alloc(im), gen = 1 + check_below(rng, SUPER_GEN);
		uint8_t *b = img_block(im, bytenr, 0);

		put_header(b, im->nodesize, im->fsid, bytenr, 0, (uint32_t)k, owner, gen);
		fill_leaf(b, im->nodesize, keys + i, (uint32_t)k, maxdata);
		img_seal(im, bytenr);
		level_add(&lv, k ? &keys[i] : &none, bytenr, gen);
		i += k;
	} while (i < n);
	return lv;
}

static inline struct level build_nodes(struct img *im, const struct level *below, uint8_t level, size_t cap,
				       uint64_t owner, uint64_t *rng)
{
	struct level lv = { 0 };

	for (size_t i = 0; i < below->n;) {
		size_t k = chunk_count(below->n - i, cap, rng);
		uint64_t bytenr = img_alloc(im), gen = 1 + check_below(rng, SUPER_GEN);
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
static inline struct bf_root build_tree(struct img *im, const struct bf_key *keys, size_t n, size_t leaf_cap,
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

static inline void img_write(struct img *im)
{
	int fd = open(im->path, O_WRONLY);

	if (fd < 0 || pwrite(fd, im->buf, im->size, 0) != (ssize_t)im->size)
		printf("cannot write %s: %s\n", im->path, strerror(errno));
	if (fd >= 0)
		close(fd);
}

/* Register the image file as a one-device volume with one chunk covering every block. */
static inline int vol_open(struct img *im, struct bf_volume *vol)
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

static inline void img_free(struct img *im)
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
static inline struct model make_model(size_t n, unsigned maxdata, uint64_t *rng)
{
	static const uint8_t types[] = { 1, 12, 84, 96, 108, 132, 168, 228 };
	struct model m = { calloc(n ? n : 1, sizeof(struct bf_key)), n, maxdata };
	struct bf_key k = { 256, 1, 0 };

	for (size_t i = 0; i < n; i++) {
		uint64_t r = check_below(rng, 3);

		if (i > 0 && r == 0) {
			k.objectid += 1 + check_below(rng, 3);
			k.type = types[check_below(rng, sizeof(types))];
			k.offset = check_below(rng, 1000);
		} else if (i > 0 && r == 1 && k.type < 200) {
			k.type = (uint8_t)(k.type + 1 + check_below(rng, 40));
			k.offset = check_below(rng, 1000);
		} else if (i > 0) {
			k.offset += 1 + check_below(rng, 100);
		}
		m.keys[i] = k;
	}
	return m;
}

/* Index of the first key >= t (or > t when strict). */
static inline size_t model_bound(const struct model *m, const struct bf_key *t, bool strict)
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

static inline struct bf_key random_target(const struct model *m, uint64_t *rng)
{
	struct bf_key t;
	uint64_t r = check_below(rng, 10);

	if (m->n && r < 4)
		return m->keys[check_below(rng, m->n)];
	if (r == 4)
		return (struct bf_key){ 0, 0, 0 };
	if (r == 5)
		return (struct bf_key){ UINT64_MAX, 255, UINT64_MAX };
	t.objectid = 250 + check_below(rng, (m->n ? m->keys[m->n - 1].objectid - 250 : 0) + 10);
	t.type = (uint8_t)check_below(rng, 256);
	t.offset = check_below(rng, 3) ? check_below(rng, 5000) : splitmix64(rng);
	return t;
}

/* Does the path point exactly at model index idx (idx == n: past the end)? */
static inline bool path_at(const struct bf_path *p, const struct model *m, size_t idx)
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
static inline int fs_make(struct fs *f, uint32_t nodesize, int ncopies, size_t n, unsigned maxdata, size_t leaf_cap,
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

static inline void fs_free(struct fs *f)
{
	bf_env_destroy(&f->env);
	bf_vol_destroy(&f->vol);
	img_free(&f->im);
	free(f->m.keys);
}

/* A fresh cache, for after the image file was changed behind its back. */
static inline void fs_reopen_env(struct fs *f, size_t cache_bytes)
{
	img_write(&f->im);
	bf_env_destroy(&f->env);
	bf_env_init(&f->env, &f->vol, f->im.nodesize, SECTOR, BF_CSUM_CRC32C, f->im.fsid, SUPER_GEN, cache_bytes);
}

/* Search for t and check the result and a few steps either way against the model. Returns false on mismatch. */
static inline bool check_one_search(struct fs *f, struct bf_path *p, const struct bf_key *t, uint64_t *rng)
{
	size_t idx = model_bound(&f->m, t, false);
	int want = idx < f->m.n && bf_key_cmp(&f->m.keys[idx], t) == 0 ? 0 : 1;
	int ret = bf_search(&f->env, &f->root, t, p), steps = (int)check_below(rng, 4);

	if (ret != want || !path_at(p, &f->m, idx)) {
		printf("  bf_search %s: ret %d want %d, idx %zu of %zu\n", keystr(t), ret, want, idx, f->m.n);
		return false;
	}
	for (int s = 0; s < steps; s++) {
		bool fwd = check_below(rng, 2);

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

static inline bool check_one_search_le(struct fs *f, struct bf_path *p, const struct bf_key *t)
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

static inline int collect_cb(void *ctx, const struct bf_key *key, const uint8_t *data, uint32_t size)
{
	struct collect *c = ctx;

	if (c->n == c->stop_after)
		return c->stop_after == 7 ? -42 : 1;
	c->keys[c->n++] = *key;
	c->bad_data |= !item_ok(key, data, size, c->m->maxdata);
	return 0;
}

static inline bool check_one_iterate(struct fs *f, struct bf_key lo, struct bf_key hi, uint64_t *rng)
{
	size_t a = model_bound(&f->m, &lo, false), b = model_bound(&f->m, &hi, true);
	size_t want = b > a ? b - a : 0;
	struct collect c = { calloc(f->m.n + 1, sizeof(struct bf_key)), 0, SIZE_MAX, &f->m, false };
	int ret, want_ret = 0;
	bool ok;

	if (check_below(rng, 4) == 0 && want > 0) {
		c.stop_after = (size_t)check_below(rng, want);
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
static inline bool check_full_walk(struct fs *f)
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

#endif
