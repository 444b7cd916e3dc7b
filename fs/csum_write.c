/*
 * fs/csum_write.c - data checksums in the csum tree: entering those of newly written sectors.
 *
 * Owns: csum items (key (EXTENT_CSUM_OBJECTID, EXTENT_CSUM_KEY, disk address of the first sector), data = one
 * checksum per sector from there) as the write path creates them. Deleting the checksums of a freed data extent
 * is the allocator's (alloc/csum_del.c, the kernel's btrfs_del_csums from __btrfs_free_extent), because only it
 * knows when an extent's last reference goes.
 *
 * Key idea: insertion follows the kernel's btrfs_csum_file_blocks: checksums are appended to the item that ends
 * exactly where they start, while it stays within MAX_CSUM_ITEMS and its leaf has room (searching for that item
 * itself with the growth as ins_len when it has none: a search for the new key could split off an empty leaf that
 * nothing then fills); otherwise a new item is inserted, as long as the checksums left, the maximum and the gap
 * to the next item allow. So consecutive extents written one after the other share items, as on a kernel-written
 * filesystem, and items never overlap. Every csum item met is checked before use (size a
 * multiple of the checksum size, key sector-aligned).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "btree/csum.h"
#include "fs/write.h"
#include "util/util.h"

/* The kernel's PAGE_SIZE on x86-64, which also caps MAX_CSUM_ITEMS. */
#define KERNEL_PAGE_SIZE 4096u

/* One csum item met in the tree. */
struct citem {
	uint64_t start, end; /* the disk range its checksums cover */
	uint32_t count;      /* checksums it holds */
};

struct cctx {
	struct bf_fsinfo *fi;
	struct bf_trans *t;
	struct bf_root *root;
	uint32_t ss, cs; /* sector size, checksum size */
};

static struct bf_key ckey(uint64_t bytenr)
{
	struct bf_key k = { BF_EXTENT_CSUM_OBJECTID, BF_EXTENT_CSUM_KEY, bytenr };
	return k;
}

uint32_t bf_csum_item_max(const struct bf_fsinfo *fi)
{
	uint32_t leaf_data = fi->nodesize - (uint32_t)sizeof(struct bf_header);
	uint32_t n = (leaf_data - 2 * (uint32_t)sizeof(struct bf_item)) / (uint32_t)fi->csum_size - 1;

	return n < KERNEL_PAGE_SIZE ? n : KERNEL_PAGE_SIZE;
}

void bf_csum_data(const struct bf_fsinfo *fi, const uint8_t *data, uint64_t nsect, uint8_t *csums)
{
	uint8_t out[BF_CSUM_MAX];

	for (uint64_t i = 0; i < nsect; i++) {
		bf_csum(fi->csum_type, data + i * fi->sectorsize, fi->sectorsize, out);
		memcpy(csums + i * (uint64_t)fi->csum_size, out, (size_t)fi->csum_size);
	}
}

static int cctx_init(struct cctx *c, struct bf_fsinfo *fi, struct bf_trans *t)
{
	int ret = bf_txn_root(fi, t, BF_CSUM_TREE_OBJECTID, &c->root);

	c->fi = fi;
	c->t = t;
	c->ss = fi->sectorsize;
	c->cs = (uint32_t)fi->csum_size;
	if (ret)
		bf_log(BF_LOG_ERR, "cannot change data checksums: the filesystem has no csum tree (%s); run btrfs check",
		       strerror(-ret));
	return ret;
}

/* Decode the csum item at slot of the path's leaf: 1 if it is one (checked), 0 if the key is of another kind. */
static int citem_at(const struct cctx *c, const struct bf_path *p, uint32_t slot, struct citem *ci)
{
	struct bf_key k;
	uint32_t size;

	if (slot >= p->nodes[0]->nritems)
		return 0;
	k = bf_leaf_key(p->nodes[0], slot);
	if (k.objectid != BF_EXTENT_CSUM_OBJECTID || k.type != BF_EXTENT_CSUM_KEY)
		return 0;
	bf_leaf_item(p->nodes[0], slot, &size);
	ci->start = k.offset;
	ci->count = size / c->cs;
	if (size == 0 || size % c->cs || k.offset % c->ss ||
	    bf_add_overflow(k.offset, (uint64_t)ci->count * c->ss, &ci->end)) {
		bf_log(BF_LOG_ERR, "corrupt csum tree: the checksum item for disk address %" PRIu64 " has %u bytes "
		       "(checksums are %u bytes each, one per %u-byte sector); run btrfs check", k.offset, size, c->cs,
		       c->ss);
		return -EUCLEAN;
	}
	return 1;
}

/* The key offset of the first item after the path's slot position (slot may be past the leaf's end), or
   UINT64_MAX: from the leaf, or from the lowest ancestor with a pointer to the right. */
static uint64_t next_offset(const struct bf_path *p, uint32_t slot)
{
	struct bf_key k;

	if (slot < p->nodes[0]->nritems) {
		k = bf_leaf_key(p->nodes[0], slot);
	} else {
		int level = 1;
		while (level < BF_MAX_LEVEL && p->nodes[level] && p->slots[level] + 1 >= p->nodes[level]->nritems)
			level++;
		if (level >= BF_MAX_LEVEL || !p->nodes[level])
			return UINT64_MAX;
		k = bf_node_key(p->nodes[level], p->slots[level] + 1);
	}
	if (k.objectid != BF_EXTENT_CSUM_OBJECTID || k.type != BF_EXTENT_CSUM_KEY)
		return UINT64_MAX;
	return k.offset;
}

/* Copy n checksums into the path's item at index idx. */
static void put_sums(const struct cctx *c, struct bf_path *p, uint32_t slot, uint32_t idx, const uint8_t *sums,
		     uint64_t n)
{
	p->slots[0] = slot;
	memcpy(bf_path_item_mut(c->t, p, NULL) + (size_t)idx * c->cs, sums, (size_t)n * c->cs);
}

/* How many of n checksums starting at bytenr the item ci ending at bytenr may take, by the cap and the next item;
   0 if it is full. */
static uint64_t extend_room(const struct cctx *c, const struct citem *ci, uint64_t bytenr, uint64_t n,
			    uint64_t next)
{
	uint64_t room = bf_csum_item_max(c->fi) > ci->count ? bf_csum_item_max(c->fi) - ci->count : 0;

	room = bf_min64(room, n);
	if (next != UINT64_MAX)
		room = bf_min64(room, (next - bytenr) / c->ss);
	return room;
}

/* Item ci at slot ends at bytenr: append as many of the n checksums as its cap, the next item and the leaf's
   free space allow. Returns the count appended, or 0 when none fit (*want then says how many bytes of room to
   ask for), or a negative errno. */
static int64_t extend_at(const struct cctx *c, struct bf_path *p, uint32_t slot, const struct citem *ci,
			 uint64_t bytenr, const uint8_t *sums, uint64_t n, uint32_t *want)
{
	uint64_t room = extend_room(c, ci, bytenr, n, next_offset(p, slot + 1));
	uint64_t fit = bf_leaf_free_space(&c->fi->env, p->nodes[0]) / c->cs;
	int r;

	*want = 0;
	if (room == 0)
		return 0;
	if (fit == 0) {
		*want = (uint32_t)(room * c->cs);
		return 0;
	}
	room = bf_min64(room, fit);
	p->slots[0] = slot;
	r = bf_extend_item(c->t, p, (uint32_t)(room * c->cs));
	if (r)
		return r;
	put_sums(c, p, slot, ci->count, sums, room);
	return (int64_t)room;
}

/* Append to the item that ends at bytenr (at slot of p, the path of a plain search): in its leaf if that has
   room, else after a search for the item itself with the growth as ins_len, which makes room around it (never
   leaving an empty leaf, as a search for bytenr could when nothing is then inserted there). Returns the count
   appended (0: none, p released) or a negative errno. */
static int64_t try_extend(const struct cctx *c, struct bf_path *p, uint32_t slot, const struct citem *ci,
			  uint64_t bytenr, const uint8_t *sums, uint64_t n)
{
	struct bf_key key = ckey(ci->start);
	struct citem again;
	uint32_t want;
	int64_t got = extend_at(c, p, slot, ci, bytenr, sums, n, &want);
	int ret;

	bf_path_release(p);
	if (got != 0 || want == 0)
		return got;
	ret = bf_search_slot(c->t, c->root, &key, (int)want, true, p);
	if (ret == 0)
		ret = citem_at(c, p, p->slots[0], &again);
	if (ret == 1 && again.start == ci->start && again.end == bytenr)
		got = extend_at(c, p, p->slots[0], &again, bytenr, sums, n, &want);
	else
		got = ret < 0 ? ret : 0;
	bf_path_release(p);
	return got;
}

/* Insert a new item at bytenr with as many of the n checksums as the cap and the next item allow. */
static int64_t insert_new(const struct cctx *c, uint64_t bytenr, const uint8_t *sums, uint64_t n, uint64_t next)
{
	struct bf_key key = ckey(bytenr);
	uint64_t cnt = bf_min64(n, bf_csum_item_max(c->fi));
	int ret;

	if (next != UINT64_MAX)
		cnt = bf_min64(cnt, (next - bytenr) / c->ss);
	if (cnt == 0)
		return -EUCLEAN; /* the caller saw no item covering bytenr, so the next one starts after it */
	uint32_t size = (uint32_t)(cnt * c->cs);
	ret = bf_insert_item(c->t, c->root, &key, sums, size);
	return ret ? ret : (int64_t)cnt;
}

/* Enter some of the n checksums for bytenr on: overwrite what an item holds there, extend the item ending there,
   or insert one. Returns how many were entered (>= 1) or a negative errno. */
static int64_t insert_some(const struct cctx *c, uint64_t bytenr, const uint8_t *sums, uint64_t n)
{
	struct bf_key key = ckey(bytenr);
	struct bf_path p;
	struct citem ci;
	int64_t got = 0;
	int ret;

	bf_path_init(&p, &c->fi->env);
	ret = bf_search_slot(c->t, c->root, &key, 0, true, &p);
	if (ret < 0)
		return ret;
	/* the item at bytenr, or the one before it: covering bytenr (overwrite) or ending there (extend) */
	uint32_t ins = p.slots[0], slot = ret == 0 || ins == 0 ? ins : ins - 1;
	uint64_t next = next_offset(&p, ret == 0 ? ins + 1 : ins);
	ret = citem_at(c, &p, slot, &ci);
	if (ret == 1 && ci.start <= bytenr && bytenr < ci.end) {
		got = (int64_t)bf_min64(n, (ci.end - bytenr) / c->ss);
		put_sums(c, &p, slot, (uint32_t)((bytenr - ci.start) / c->ss), sums, (uint64_t)got);
	} else if (ret == 1 && ci.end == bytenr) {
		got = try_extend(c, &p, slot, &ci, bytenr, sums, n);
	} else if (ret < 0) {
		got = ret;
	}
	bf_path_release(&p);
	return got != 0 ? got : insert_new(c, bytenr, sums, n, next);
}

int bf_csum_insert(struct bf_fsinfo *fi, struct bf_trans *t, uint64_t bytenr, const uint8_t *csums, uint64_t nsect)
{
	struct cctx c;
	int ret = cctx_init(&c, fi, t);

	for (uint64_t done = 0; ret == 0 && done < nsect;) {
		int64_t n = insert_some(&c, bytenr + done * c.ss, csums + done * c.cs, nsect - done);
		if (n < 0)
			ret = (int)n;
		else
			done += (uint64_t)n;
	}
	return ret;
}
