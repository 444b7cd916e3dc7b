/*
 * fs/extent_write.c - replacing a file's extent items: dropping a range (the kernel's btrfs_drop_extents),
 * inserting regular and inline extents, hole items (fill_holes), shrinking an inline extent.
 *
 * Owns: the leaf walk that applies bf_drop_step (fs/extent_plan.c) to the items of an inode, and the item layouts
 * the write path creates.
 *
 * Key idea: a drop searches the inode's items from the range start with copy-on-write (ins_len -1, so a delete
 * cannot leave a node that must go), then walks the leaf: extents ending before the range stay; extents inside
 * it are deleted in one batch per leaf (data ref dropped); an extent crossing the start keeps its head (trimmed
 * num_bytes), one crossing the end keeps its tail (new key = range end, offset moved on), and one covering the
 * range with bytes on both sides is split into two items, the new one taking a data ref of its own (both refs
 * carry the same (root, inode, key offset - extent offset), so the ref count becomes 2, as the kernel counts).
 * After each batch delete, and at each leaf end, the walk searches again from where it got to, so it never moves
 * along a path the tree changes under. Holes and inline data count in nbytes as the kernel counts them: regular
 * and prealloc extents with disk bytes by num_bytes, inline extents by ram_bytes, holes not at all.
 * A new hole item is merged into a hole item that ends where it starts or starts where it ends, as the kernel's
 * fill_holes merges them (its btrfs_cont_expand inserts separate items; both layouts are valid).
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "fs/write.h"
#include "util/util.h"

#define FEXT_SIZE ((uint32_t)sizeof(struct bf_file_extent_item))
#define INLINE_HDR ((uint32_t)BF_FILE_EXTENT_INLINE_DATA_START)

static struct bf_key fkey(uint64_t ino, uint64_t off)
{
	struct bf_key k = { ino, BF_EXTENT_DATA_KEY, off };
	return k;
}

static uint32_t sectorsize_of(const struct bf_fctx *c) { return c->fs->fi->sectorsize; }

static int data_ref(const struct bf_fctx *c, const struct bf_fext *e, int delta)
{
	return bf_extalloc_data_ref(c->ea, e->disk_bytenr, e->disk_num_bytes, c->subvol, c->ino, bf_fext_ref_offset(e),
				    delta);
}

/* The path's item as a regular/prealloc extent item to change in place (the walk decoded it already, so its
   size is right). */
static struct bf_file_extent_item *item_mut(const struct bf_fctx *c, struct bf_path *p, uint32_t slot)
{
	uint32_t size;

	p->slots[0] = slot;
	return (struct bf_file_extent_item *)bf_path_item_mut(c->t, p, &size);
}

/* Position p, searched with copy-on-write for a delete, at the inode's extent item at or before pos (or where pos
   would go). */
static int seek(const struct bf_fctx *c, uint64_t pos, struct bf_path *p)
{
	struct bf_key key = fkey(c->ino, pos);
	int ret = bf_search_slot(c->t, c->root, &key, -1, true, p);

	if (ret == 1 && p->slots[0] > 0) {
		struct bf_key k = bf_leaf_key(p->nodes[0], p->slots[0] - 1);
		if (k.objectid == c->ino && k.type == BF_EXTENT_DATA_KEY)
			p->slots[0]--;
	}
	return ret < 0 ? ret : 0;
}

/* The state of one drop. */
struct drop {
	const struct bf_fctx *c;
	uint64_t start, end;
	uint64_t search; /* where the next search starts */
	uint64_t found;
	uint32_t del_slot, del_nr;
};

/* Delete the batch gathered in this leaf (releases p). */
static int flush_deletes(struct drop *d, struct bf_path *p)
{
	int ret = 0;

	if (d->del_nr)
		ret = bf_del_items(d->c->t, d->c->root, p, d->del_slot, d->del_nr);
	d->del_nr = 0;
	return ret;
}

/* Split: the item keeps [pos, start); a new item takes [end, old end) with a data ref of its own. */
static int do_split(struct drop *d, struct bf_path *p, uint32_t slot, const struct bf_drop_step *s)
{
	struct bf_file_extent_item *fi = item_mut(d->c, p, slot), copy;
	struct bf_key key = fkey(d->c->ino, s->added.pos);
	int ret;

	put64(&fi->num_bytes, s->keep.len);
	copy = *fi;
	put64(&copy.offset, s->added.offset);
	put64(&copy.num_bytes, s->added.len);
	bf_path_release(p);
	ret = bf_insert_item(d->c->t, d->c->root, &key, &copy, FEXT_SIZE);
	if (ret == 0 && s->ref_add)
		ret = data_ref(d->c, &s->added, 1);
	return ret;
}

/* Trim the head: the item moves to key end and keeps [end, old end). Pending deletes before it go after. */
static int do_trim_head(struct drop *d, struct bf_path *p, uint32_t slot, const struct bf_drop_step *s)
{
	struct bf_key key = fkey(d->c->ino, s->keep.pos);
	struct bf_file_extent_item *fi;
	int ret;

	p->slots[0] = slot;
	ret = bf_set_item_key(d->c->t, p, &key);
	if (ret)
		return ret;
	fi = item_mut(d->c, p, slot);
	put64(&fi->offset, s->keep.offset);
	put64(&fi->num_bytes, s->keep.len);
	return flush_deletes(d, p);
}

/* Apply the step for the item at slot. Returns 0 when the drop is complete, 1 to go on in this leaf, 2 to search
   again from d->search, or a negative errno. */
static int apply(struct drop *d, struct bf_path *p, uint32_t slot, const struct bf_fext *e)
{
	struct bf_drop_step s;
	int ret = bf_drop_step(e, d->start, d->end, sectorsize_of(d->c), &s);

	if (ret == -EOPNOTSUPP)
		bf_log(BF_LOG_ERR, "cannot drop [%" PRIu64 ", %" PRIu64 ") of inode %" PRIu64 " (subvol %" PRIu64 "): "
		       "it covers only part of its inline extent (a bug in btrfs-fuse)", d->start, d->end, d->c->ino,
		       d->c->subvol);
	if (ret)
		return ret;
	d->found += s.bytes_found;
	switch (s.act) {
	case BF_DROP_KEEP:
		return 1;
	case BF_DROP_SPLIT:
		ret = do_split(d, p, slot, &s);
		return ret;
	case BF_DROP_TRIM_HEAD:
		return do_trim_head(d, p, slot, &s);
	case BF_DROP_TRIM_TAIL:
		put64(&item_mut(d->c, p, slot)->num_bytes, s.keep.len);
		break;
	case BF_DROP_DELETE:
		if (d->del_nr == 0)
			d->del_slot = slot;
		d->del_nr++;
		if (s.ref_drop && (ret = data_ref(d->c, e, -1)))
			return ret;
		break;
	}
	d->search = s.next;
	return s.next >= d->end ? flush_deletes(d, p) : 1;
}

/* At the end of the leaf: delete the batch and search again, or look at the next leaf's first item. */
static int leaf_end(struct drop *d, struct bf_path *p)
{
	struct bf_key k;
	int ret;

	if (d->del_nr) {
		ret = flush_deletes(d, p);
		return ret ? ret : 2;
	}
	if (p->nodes[0]->nritems == 0)
		return 0;
	p->slots[0] = p->nodes[0]->nritems - 1;
	ret = bf_path_next(p);
	if (ret)
		return ret < 0 ? ret : 0;
	k = bf_path_key(p);
	if (k.objectid != d->c->ino || k.type != BF_EXTENT_DATA_KEY || k.offset >= d->end)
		return 0;
	d->search = bf_max64(bf_max64(k.offset, d->start), d->search);
	return 2;
}

/* Walk the leaf p points into. Returns 0 when done, 2 to search again, or a negative errno. */
static int walk_leaf(struct drop *d, struct bf_path *p)
{
	struct bf_block *leaf = p->nodes[0];

	for (uint32_t slot = p->slots[0];; slot++) {
		if (slot >= leaf->nritems)
			return leaf_end(d, p);
		struct bf_key k = bf_leaf_key(leaf, slot);
		if (k.objectid == d->c->ino && k.type < BF_EXTENT_DATA_KEY)
			continue;
		if (k.objectid != d->c->ino || k.type != BF_EXTENT_DATA_KEY || k.offset >= d->end)
			return flush_deletes(d, p);
		uint32_t size;
		const uint8_t *data = bf_leaf_item(leaf, slot, &size);
		struct bf_fext e;
		int ret = bf_fext_decode(d->c, k.offset, data, size, &e);
		if (ret == 0)
			ret = apply(d, p, slot, &e);
		if (ret != 1)
			return ret;
	}
}

int bf_fext_drop(const struct bf_fctx *c, uint64_t start, uint64_t end, uint64_t *bytes_found)
{
	struct drop d = { .c = c, .start = start, .end = end, .search = start };
	struct bf_path p;
	int ret = start < end ? 2 : 0;

	/* Each round deletes items or moves to a later leaf (keys only grow from leaf to leaf), so it ends. */
	bf_path_init(&p, c->fs->env);
	while (ret == 2) {
		ret = seek(c, d.search, &p);
		if (ret == 0)
			ret = walk_leaf(&d, &p);
		bf_path_release(&p);
	}
	if (bytes_found)
		*bytes_found = d.found;
	return ret;
}

/* A new extent item: regular (hole when bytenr is 0) or, with data, inline. */
static void fext_fill(const struct bf_fctx *c, struct bf_file_extent_item *fi, uint8_t type, uint64_t ram_bytes)
{
	memset(fi, 0, sizeof(*fi));
	put64(&fi->generation, c->t->transid);
	put64(&fi->ram_bytes, ram_bytes);
	fi->type = type;
}

static int insert_reg_item(const struct bf_fctx *c, uint64_t pos, uint64_t bytenr, uint64_t len)
{
	struct bf_key key = fkey(c->ino, pos);
	struct bf_file_extent_item fi;

	fext_fill(c, &fi, BF_FILE_EXTENT_REG, len);
	put64(&fi.disk_bytenr, bytenr);
	put64(&fi.disk_num_bytes, bytenr ? len : 0);
	put64(&fi.num_bytes, len);
	return bf_insert_item(c->t, c->root, &key, &fi, FEXT_SIZE);
}

int bf_fext_insert_reg(const struct bf_fctx *c, uint64_t pos, uint64_t bytenr, uint64_t len)
{
	struct bf_fext e = { .pos = pos, .len = len, .disk_bytenr = bytenr, .disk_num_bytes = len, .ram_bytes = len,
			     .type = BF_FILE_EXTENT_REG };
	int ret = insert_reg_item(c, pos, bytenr, len);

	return ret ? ret : data_ref(c, &e, 1);
}

int bf_fext_insert_inline(const struct bf_fctx *c, const uint8_t *data, uint32_t len)
{
	struct bf_key key = fkey(c->ino, 0);
	struct bf_path p;
	struct bf_file_extent_item fi;
	uint32_t size = INLINE_HDR + len;
	int ret;

	fext_fill(c, &fi, BF_FILE_EXTENT_INLINE, len);
	bf_path_init(&p, c->fs->env);
	ret = bf_insert_empty_items(c->t, c->root, &p, &key, &size, 1);
	if (ret == 0) {
		uint8_t *dst = bf_path_item_mut(c->t, &p, NULL);
		memcpy(dst, &fi, INLINE_HDR);
		memcpy(dst + INLINE_HDR, data, len);
	}
	bf_path_release(&p);
	return ret;
}

/* The item at slot is a hole item of this inode that ends at start (at_end false) or starts at end (true). */
static bool hole_mergeable(const struct bf_fctx *c, const struct bf_path *p, uint32_t slot, uint64_t start,
			   uint64_t end, bool at_end, struct bf_fext *e)
{
	const struct bf_block *leaf = p->nodes[0];
	struct bf_key k;
	uint32_t size;

	if (slot >= leaf->nritems)
		return false;
	k = bf_leaf_key(leaf, slot);
	if (k.objectid != c->ino || k.type != BF_EXTENT_DATA_KEY)
		return false;
	const uint8_t *data = bf_leaf_item(leaf, slot, &size);
	if (bf_fext_decode(c, k.offset, data, size, e) < 0)
		return false; /* not merged; the insert then meets the damage or leaves it alone */
	if (e->type != BF_FILE_EXTENT_REG || e->disk_bytenr != 0)
		return false;
	return at_end ? e->pos == end : e->pos + e->len == start;
}

/* Grow the hole item at slot to [pos, pos + len) (the kernel sets ram_bytes = num_bytes and offset 0). */
static int hole_grow(const struct bf_fctx *c, struct bf_path *p, uint32_t slot, uint64_t pos, uint64_t len,
		     bool rekey)
{
	struct bf_key key = fkey(c->ino, pos);
	struct bf_file_extent_item *fi;
	int ret = 0;

	p->slots[0] = slot;
	if (rekey)
		ret = bf_set_item_key(c->t, p, &key);
	if (ret)
		return ret;
	fi = item_mut(c, p, slot);
	put64(&fi->num_bytes, len);
	put64(&fi->ram_bytes, len);
	put64(&fi->offset, 0);
	put64(&fi->generation, c->t->transid);
	return 0;
}

int bf_fext_add_hole(const struct bf_fctx *c, uint64_t start, uint64_t end)
{
	struct bf_key key = fkey(c->ino, start);
	struct bf_path p;
	struct bf_fext e;
	int ret;

	if (c->no_holes || start >= end)
		return 0;
	bf_path_init(&p, c->fs->env);
	ret = bf_search_slot(c->t, c->root, &key, 0, true, &p);
	if (ret == 0) {
		bf_log(BF_LOG_ERR, "inode %" PRIu64 " (subvol %" PRIu64 ") still has an extent at %" PRIu64 " where a "
		       "hole goes (a bug in btrfs-fuse)", c->ino, c->subvol, start);
		ret = -EUCLEAN;
	} else if (ret == 1) {
		uint32_t slot = p.slots[0];
		if (slot > 0 && hole_mergeable(c, &p, slot - 1, start, end, false, &e))
			ret = hole_grow(c, &p, slot - 1, e.pos, end - e.pos, false);
		else if (hole_mergeable(c, &p, slot, start, end, true, &e))
			ret = hole_grow(c, &p, slot, start, e.pos + e.len - start, true);
		else
			ret = 2;
	}
	bf_path_release(&p);
	if (ret == 2)
		ret = insert_reg_item(c, start, 0, end - start);
	return ret;
}

/* Decode the item the path points at (an EXTENT_DATA item of c's inode). */
static int decode_at(const struct bf_fctx *c, const struct bf_path *p, struct bf_fext *e)
{
	uint32_t size;
	const uint8_t *data = bf_path_item(p, &size);

	return bf_fext_decode(c, bf_path_key(p).offset, data, size, e);
}

int bf_fext_truncate_inline(const struct bf_fctx *c, uint64_t size, uint64_t *removed)
{
	struct bf_key key = fkey(c->ino, 0);
	struct bf_path p;
	struct bf_fext e;
	int ret;

	*removed = 0;
	bf_path_init(&p, c->fs->env);
	ret = bf_search_slot(c->t, c->root, &key, 0, true, &p);
	if (ret == 0)
		ret = decode_at(c, &p, &e);
	if (ret == 0 && (e.type != BF_FILE_EXTENT_INLINE || size == 0 || size >= e.len))
		ret = 1;
	else if (ret == 0 && e.compression != 0)
		ret = 2;
	if (ret == 0) {
		put64(&((struct bf_file_extent_item *)bf_path_item_mut(c->t, &p, NULL))->ram_bytes, size);
		ret = bf_truncate_item(c->t, &p, INLINE_HDR + (uint32_t)size, true);
		if (ret == 0)
			*removed = e.len - size;
	}
	bf_path_release(&p);
	return ret;
}
