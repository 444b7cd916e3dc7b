/*
 * alloc/extent_tree.c - applying queued reference changes to the extent tree, exactly as the kernel lays out
 * extent items.
 *
 * Owns: extent items and back references: EXTENT_ITEM (bytenr, 168, num_bytes) for data (and tree blocks without
 * skinny metadata, then followed by a tree_block_info), METADATA_ITEM (bytenr, 169, level) for tree blocks,
 * inline references inside them and keyed references after them (TREE_BLOCK_REF 176, EXTENT_DATA_REF 178 keyed
 * by hash_extent_data_ref, SHARED_BLOCK_REF 182, SHARED_DATA_REF 184).
 *
 * Key idea: the kernel's rules, read from fs/btrfs/extent-tree.c. Inline references are ordered by type, and
 * within a type by descending offset (root or parent) or, for EXTENT_DATA_REF, descending hash (the kernel's
 * lookup_inline_extent_backref stops at the first smaller one, which is where a new one goes; the tree-checker
 * enforces this order). A new reference goes inline unless the item would reach BTRFS_MAX_EXTENT_ITEM_SIZE or a
 * keyed reference of the extent already exists; otherwise it becomes a keyed item, EXTENT_DATA_REF hash
 * collisions moving to the next key offset. A new extent's item is inserted with its first reference inline
 * (alloc_reserved_tree_block / alloc_reserved_file_extent) and the others follow as adds. Adds run before drops
 * (select_delayed_ref), and the drop of the last reference deletes the item, the data checksums, and hands the
 * range to the block group accounting (free space tree, used bytes, pinning).
 */
#include "alloc/extalloc_int.h"
#include "util/util.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#define EI_SIZE ((uint32_t)sizeof(struct bf_extent_item))
#define TBI_SIZE ((uint32_t)sizeof(struct bf_tree_block_info))
#define IREF_SIZE ((uint32_t)sizeof(struct bf_extent_inline_ref))

static uint32_t iref_size(uint8_t type)
{
	switch (type) {
	case BF_TREE_BLOCK_REF_KEY:
	case BF_SHARED_BLOCK_REF_KEY:
		return IREF_SIZE;
	case BF_SHARED_DATA_REF_KEY:
		return IREF_SIZE + (uint32_t)sizeof(struct bf_shared_data_ref);
	case BF_EXTENT_DATA_REF_KEY:
		return 1 + (uint32_t)sizeof(struct bf_extent_data_ref);
	default:
		return 0;
	}
}

/* The kernel's hash_extent_data_ref: crc32c (raw, seed ~0) of the little-endian root, and of inode then offset. */
static uint64_t data_ref_hash(uint64_t root, uint64_t inode, uint64_t offset)
{
	bf_le64 le;
	put64(&le, root);
	uint32_t high = bf_crc32c(~0u, &le, sizeof(le));
	put64(&le, inode);
	uint32_t low = bf_crc32c(~0u, &le, sizeof(le));
	put64(&le, offset);
	low = bf_crc32c(low, &le, sizeof(le));
	return ((uint64_t)high << 31) ^ low;
}

static uint32_t max_extent_item_size(const struct bf_extalloc *ea)
{
	return ((ea->nodesize - (uint32_t)sizeof(struct bf_header)) >> 4) - (uint32_t)sizeof(struct bf_item);
}

static int corrupt(uint64_t bytenr, const char *what)
{
	bf_log(BF_LOG_ERR, "extent %" PRIu64 ": %s (corrupt extent tree or a bug in btrfs-fuse; run 'btrfs check "
	       "--readonly')", bytenr, what);
	return -EUCLEAN;
}

/* ---- finding and reading an extent item ---- */

static bool is_tree_ref(uint8_t type) { return type == BF_TREE_BLOCK_REF_KEY || type == BF_SHARED_BLOCK_REF_KEY; }

/* Search h's extent item with ins_len (copy-on-write) or read-only; tree blocks fall back from the skinny key
   to the full one, as the kernel does for converted filesystems. -ENOENT if absent. */
static int find_extent(struct bf_extalloc *ea, const struct ea_head *h, int ins_len, bool cow, struct bf_path *p)
{
	struct bf_key key = { h->bytenr, BF_EXTENT_ITEM_KEY, h->num_bytes };
	bool skinny = !h->is_data && ea->skinny;
	int ret;
	if (skinny)
		key = (struct bf_key){ h->bytenr, BF_METADATA_ITEM_KEY, h->level };
	for (;;) {
		bf_path_init(p, ea->env);
		ret = cow ? bf_search_slot(ea->trans, ea->roots.extent, &key, ins_len, true, p)
			  : bf_search(ea->env, ea->roots.extent, &key, p);
		if (ret != 1 || !skinny)
			break;
		bf_path_release(p);
		skinny = false;
		key = (struct bf_key){ h->bytenr, BF_EXTENT_ITEM_KEY, ea->nodesize };
	}
	if (ret == 1)
		ret = -ENOENT;
	if (ret)
		bf_path_release(p);
	return ret;
}

/* Where the inline references of an extent item start; checks that they fill the item exactly. */
static int item_refs_start(const struct ea_head *h, const struct bf_key *key, const uint8_t *item, uint32_t size,
			   uint32_t *start)
{
	if (size < EI_SIZE)
		return corrupt(h->bytenr, "extent item too small");
	uint64_t flags = get64(((const struct bf_extent_item *)item)->flags);
	bool tree = flags & BF_EXTENT_FLAG_TREE_BLOCK;
	if (tree == h->is_data || (!tree && !(flags & BF_EXTENT_FLAG_DATA)))
		return corrupt(h->bytenr, "extent item flags do not match the extent's kind");
	uint32_t ptr = EI_SIZE + (tree && key->type == BF_EXTENT_ITEM_KEY ? TBI_SIZE : 0);
	*start = ptr;
	while (ptr < size) {
		uint32_t sz = iref_size(item[ptr]);
		if (!sz || sz > size - ptr || (tree != is_tree_ref(item[ptr])))
			return corrupt(h->bytenr, "malformed inline reference");
		ptr += sz;
	}
	return ptr == size ? 0 : corrupt(h->bytenr, "extent item shorter than its header");
}

static uint64_t iref_offset(const uint8_t *iref) { return get64(((const struct bf_extent_inline_ref *)iref)->offset); }

static const struct bf_extent_data_ref *iref_dref(const uint8_t *iref) { return (const void *)(iref + 1); }

static bool dref_match(const struct bf_extent_data_ref *d, const struct ea_ref *r)
{
	return get64(d->root) == r->root && get64(d->objectid) == r->owner && get64(d->offset) == r->offset;
}

/* lookup_inline_extent_backref: *pos gets the matching reference (returns true) or where a new one goes. */
static bool inline_lookup(const uint8_t *item, uint32_t start, uint32_t size, const struct ea_ref *r, uint32_t *pos)
{
	uint64_t want_hash = r->type == BF_EXTENT_DATA_REF_KEY ? data_ref_hash(r->root, r->owner, r->offset) : 0;
	uint64_t want_off = (r->type == BF_TREE_BLOCK_REF_KEY) ? r->root : r->parent;
	uint32_t ptr = start;
	for (; ptr < size; ptr += iref_size(item[ptr])) {
		uint8_t type = item[ptr];
		if (r->type < type)
			break;
		if (r->type > type)
			continue;
		if (type == BF_EXTENT_DATA_REF_KEY) {
			const struct bf_extent_data_ref *d = iref_dref(item + ptr);
			if (dref_match(d, r)) {
				*pos = ptr;
				return true;
			}
			if (data_ref_hash(get64(d->root), get64(d->objectid), get64(d->offset)) < want_hash)
				break;
		} else {
			uint64_t off = iref_offset(item + ptr);
			if (off == want_off) {
				*pos = ptr;
				return true;
			}
			if (off < want_off)
				break;
		}
	}
	*pos = ptr;
	return false;
}

/* Count held by the inline reference at iref. */
static uint64_t iref_count(const uint8_t *iref)
{
	if (*iref == BF_EXTENT_DATA_REF_KEY)
		return get32(iref_dref(iref)->count);
	if (*iref == BF_SHARED_DATA_REF_KEY)
		return get32(((const struct bf_shared_data_ref *)(iref + IREF_SIZE))->count);
	return 1;
}

static void iref_set_count(uint8_t *iref, uint32_t count)
{
	if (*iref == BF_EXTENT_DATA_REF_KEY)
		put32(&((struct bf_extent_data_ref *)(iref + 1))->count, count);
	else if (*iref == BF_SHARED_DATA_REF_KEY)
		put32(&((struct bf_shared_data_ref *)(iref + IREF_SIZE))->count, count);
}

static void dref_write(struct bf_extent_data_ref *d, const struct ea_ref *r, uint32_t n)
{
	put64(&d->root, r->root);
	put64(&d->objectid, r->owner);
	put64(&d->offset, r->offset);
	put32(&d->count, n);
}

/* Write a new inline reference r (count n) at iref. */
static void iref_write(uint8_t *iref, const struct ea_ref *r, uint32_t n)
{
	iref[0] = r->type;
	if (r->type == BF_EXTENT_DATA_REF_KEY) {
		dref_write((struct bf_extent_data_ref *)(iref + 1), r, n);
		return;
	}
	put64(&((struct bf_extent_inline_ref *)iref)->offset, r->type == BF_TREE_BLOCK_REF_KEY ? r->root : r->parent);
	iref_set_count(iref, n);
}

/* The next key after the path's item, in the whole tree (false at the tree's end). */
static bool next_key(const struct bf_path *p, struct bf_key *out)
{
	if (p->slots[0] + 1 < p->nodes[0]->nritems) {
		*out = bf_leaf_key(p->nodes[0], p->slots[0] + 1);
		return true;
	}
	for (int l = 1; l < BF_MAX_LEVEL && p->nodes[l]; l++) {
		if (p->slots[l] + 1 < p->nodes[l]->nritems) {
			*out = bf_node_key(p->nodes[l], p->slots[l] + 1);
			return true;
		}
	}
	return false;
}

/* The extent item at the path, writable, with its inline references checked. */
static int path_extent(struct bf_extalloc *ea, const struct ea_head *h, struct bf_path *p, uint8_t **item,
		       uint32_t *size, uint32_t *start)
{
	struct bf_key key = bf_leaf_key(p->nodes[0], p->slots[0]);
	*item = bf_path_item_mut(ea->trans, p, size);
	if (!*item)
		return corrupt(h->bytenr, "extent item not writable");
	return item_refs_start(h, &key, *item, *size, start);
}

static struct bf_extent_item *ei_of(uint8_t *item) { return (struct bf_extent_item *)item; }

/* ---- keyed references ---- */

static int insert_keyed_data(struct bf_extalloc *ea, const struct ea_head *h, const struct ea_ref *r, uint32_t n)
{
	bool shared = r->type == BF_SHARED_DATA_REF_KEY;
	struct bf_key key = { h->bytenr, r->type, shared ? r->parent : data_ref_hash(r->root, r->owner, r->offset) };
	uint32_t size = shared ? sizeof(struct bf_shared_data_ref) : sizeof(struct bf_extent_data_ref), isz;
	for (int tries = 0; tries < 4096; tries++, key.offset++) {
		struct bf_path p;
		bf_path_init(&p, ea->env);
		int ret = bf_insert_empty_items(ea->trans, ea->roots.extent, &p, &key, &size, 1);
		uint8_t *d = ret == 0 || ret == -EEXIST ? bf_path_item_mut(ea->trans, &p, &isz) : NULL;
		if ((ret == 0 || ret == -EEXIST) && (!d || isz != size))
			ret = corrupt(h->bytenr, "keyed data reference of the wrong size");
		else if (ret == 0 && shared)
			put32(&((struct bf_shared_data_ref *)d)->count, n);
		else if (ret == 0)
			dref_write((struct bf_extent_data_ref *)d, r, n);
		else if (ret == -EEXIST && (shared || dref_match((const void *)d, r))) {
			uint8_t *cnt = shared ? d : d + offsetof(struct bf_extent_data_ref, count);
			uint64_t now = (uint64_t)get32(*(bf_le32 *)cnt) + n;
			if (now > UINT32_MAX)
				ret = corrupt(h->bytenr, "data reference count overflows");
			else {
				put32((bf_le32 *)cnt, (uint32_t)now);
				ret = 0;
			}
		} else if (ret == -EEXIST) {
			bf_path_release(&p);
			continue; /* a hash collision: the next key offset */
		}
		bf_path_release(&p);
		return ret;
	}
	return corrupt(h->bytenr, "too many data reference hash collisions");
}

static int insert_keyed(struct bf_extalloc *ea, const struct ea_head *h, const struct ea_ref *r, uint32_t n)
{
	if (!is_tree_ref(r->type))
		return insert_keyed_data(ea, h, r, n);
	struct bf_key key = { h->bytenr, r->type, r->type == BF_TREE_BLOCK_REF_KEY ? r->root : r->parent };
	int ret = bf_insert_item(ea->trans, ea->roots.extent, &key, NULL, 0);
	return ret == -EEXIST ? corrupt(h->bytenr, "tree block reference added twice") : ret;
}

/* The exact key of the keyed reference r (EXTENT_DATA_REF: scanning past hash collisions). */
static int find_keyed(struct bf_extalloc *ea, const struct ea_head *h, const struct ea_ref *r, struct bf_key *out)
{
	if (r->type != BF_EXTENT_DATA_REF_KEY) {
		*out = (struct bf_key){ h->bytenr, r->type, r->type == BF_TREE_BLOCK_REF_KEY ? r->root : r->parent };
		return 0;
	}
	struct bf_key key = { h->bytenr, r->type, data_ref_hash(r->root, r->owner, r->offset) };
	struct bf_path p;
	bf_path_init(&p, ea->env);
	int ret = bf_search(ea->env, ea->roots.extent, &key, &p);
	for (int n = 0; ret >= 0 && n < 4096 && bf_path_valid(&p); n++) {
		struct bf_key k = bf_path_key(&p);
		uint32_t size;
		const uint8_t *d = bf_path_item(&p, &size);
		if (k.objectid != h->bytenr || k.type != r->type)
			break;
		if (size == sizeof(struct bf_extent_data_ref) && dref_match((const void *)d, r)) {
			*out = k;
			bf_path_release(&p);
			return 0;
		}
		ret = bf_path_next(&p);
	}
	bf_path_release(&p);
	return ret < 0 ? ret : -ENOENT;
}

/* Drop n of the keyed reference r. */
static int drop_keyed(struct bf_extalloc *ea, const struct ea_head *h, const struct ea_ref *r, uint32_t n)
{
	struct bf_key key;
	struct bf_path p;
	uint32_t size;
	bf_path_init(&p, ea->env);
	int ret = find_keyed(ea, h, r, &key);
	if (ret == -ENOENT)
		return corrupt(h->bytenr, "dropping a reference the extent does not have");
	if (!ret)
		ret = bf_search_slot(ea->trans, ea->roots.extent, &key, -1, true, &p);
	if (ret) {
		bf_path_release(&p);
		return ret == 1 ? corrupt(h->bytenr, "keyed reference vanished") : ret;
	}
	uint8_t *d = bf_path_item_mut(ea->trans, &p, &size);
	uint64_t have = 1;
	if (!is_tree_ref(r->type)) {
		bool shared = r->type == BF_SHARED_DATA_REF_KEY;
		if (!d || size != (shared ? sizeof(struct bf_shared_data_ref) : sizeof(struct bf_extent_data_ref))) {
			bf_path_release(&p);
			return corrupt(h->bytenr, "keyed data reference of the wrong size");
		}
		d += shared ? 0 : offsetof(struct bf_extent_data_ref, count);
		have = get32(*(bf_le32 *)d);
	}
	if (have < n) {
		bf_path_release(&p);
		return corrupt(h->bytenr, "dropping more references than the extent has");
	}
	if (have > n) {
		put32((bf_le32 *)d, (uint32_t)(have - n));
		bf_path_release(&p);
		return 0;
	}
	return bf_del_items(ea->trans, ea->roots.extent, &p, p.slots[0], 1);
}

/* ---- adding and dropping ---- */

/* Adjust the item's reference count by delta; true if it reached zero. */
static int adjust_refs(const struct ea_head *h, uint8_t *item, int64_t delta, bool *zero)
{
	uint64_t refs = get64(ei_of(item)->refs);
	if (delta < 0 && refs < (uint64_t)-delta)
		return corrupt(h->bytenr, "reference count would go below zero");
	refs += (uint64_t)delta;
	put64(&ei_of(item)->refs, refs);
	*zero = refs == 0;
	return 0;
}

static int add_ref(struct bf_extalloc *ea, const struct ea_head *h, const struct ea_ref *r, uint32_t n)
{
	uint32_t extra = iref_size(r->type), size, start, pos;
	uint8_t *item;
	struct bf_path p;
	struct bf_key nk;
	bool zero;
	int ret = find_extent(ea, h, (int)extra, true, &p);
	if (ret)
		return ret == -ENOENT ? corrupt(h->bytenr, "adding a reference to a missing extent item") : ret;
	ret = path_extent(ea, h, &p, &item, &size, &start);
	bool found = !ret && inline_lookup(item, start, size, r, &pos);
	if (!ret && found) {
		uint64_t now = iref_count(item + pos) + n;
		if (is_tree_ref(r->type) || now > UINT32_MAX)
			ret = corrupt(h->bytenr, "tree block reference added twice or data count overflow");
		else
			iref_set_count(item + pos, (uint32_t)now);
	} else if (!ret && size + extra < max_extent_item_size(ea) &&
		   !(next_key(&p, &nk) && nk.objectid == h->bytenr && nk.type < BF_BLOCK_GROUP_ITEM_KEY)) {
		ret = bf_extend_item(ea->trans, &p, extra);
		if (!ret && !(item = bf_path_item_mut(ea->trans, &p, NULL)))
			ret = -EUCLEAN;
		if (!ret) {
			memmove(item + pos + extra, item + pos, size - pos);
			iref_write(item + pos, r, n);
		}
	} else if (!ret) {
		ret = adjust_refs(h, item, n, &zero);
		bf_path_release(&p);
		return ret ? ret : insert_keyed(ea, h, r, n);
	}
	if (!ret)
		ret = adjust_refs(h, item, n, &zero);
	bf_path_release(&p);
	return ret;
}

/* The last reference went: the extent leaves the tree. */
static int extent_gone(struct bf_extalloc *ea, const struct ea_head *h)
{
	int ret = h->is_data && ea->csum_root ? csum_delete_range(ea, h->bytenr, h->num_bytes) : 0;
	return ret ? ret : bg_extent_removed(ea, h->bytenr, h->num_bytes);
}

static int drop_ref(struct bf_extalloc *ea, const struct ea_head *h, const struct ea_ref *r, uint32_t n, bool *gone)
{
	uint32_t size, start, pos;
	uint8_t *item;
	struct bf_path p;
	bool zero = false;
	int ret = find_extent(ea, h, -1, true, &p);
	if (ret)
		return ret == -ENOENT ? corrupt(h->bytenr, "dropping a reference of a missing extent item") : ret;
	ret = path_extent(ea, h, &p, &item, &size, &start);
	if (!ret && inline_lookup(item, start, size, r, &pos)) {
		uint64_t have = iref_count(item + pos);
		uint32_t sz = iref_size(r->type);
		if (have < n)
			ret = corrupt(h->bytenr, "dropping more references than the extent has");
		if (!ret)
			ret = adjust_refs(h, item, -(int64_t)n, &zero);
		if (!ret && !zero && have > n) {
			iref_set_count(item + pos, (uint32_t)(have - n));
		} else if (!ret && !zero) {
			memmove(item + pos, item + pos + sz, size - pos - sz);
			ret = bf_truncate_item(ea->trans, &p, size - sz, true);
		}
	} else if (!ret) {
		bf_path_release(&p);
		ret = drop_keyed(ea, h, r, n);
		if (!ret)
			ret = find_extent(ea, h, -1, true, &p);
		if (!ret)
			ret = path_extent(ea, h, &p, &item, &size, &start);
		if (!ret)
			ret = adjust_refs(h, item, -(int64_t)n, &zero);
	}
	if (!ret && zero) {
		ret = bf_del_items(ea->trans, ea->roots.extent, &p, p.slots[0], 1);
		*gone = true;
		return ret ? ret : extent_gone(ea, h);
	}
	bf_path_release(&p);
	return ret;
}

/* OR the head's flags into the extent item (btrfs_set_disk_extent_flags through the delayed extent op). */
static int set_flags(struct bf_extalloc *ea, const struct ea_head *h)
{
	struct bf_path p;
	uint32_t size, start;
	uint8_t *item;
	int ret = find_extent(ea, h, 0, true, &p);
	if (ret)
		return ret == -ENOENT ? corrupt(h->bytenr, "setting flags of a missing extent item") : ret;
	ret = path_extent(ea, h, &p, &item, &size, &start);
	if (!ret)
		put64(&ei_of(item)->flags, get64(ei_of(item)->flags) | h->set_flags);
	bf_path_release(&p);
	return ret;
}

/* ---- new extents ---- */

static int insert_new(struct bf_extalloc *ea, const struct ea_head *h, const struct ea_ref *r)
{
	uint8_t buf[EI_SIZE + TBI_SIZE + 29];
	bool full = !h->is_data && !ea->skinny;
	uint32_t pos = EI_SIZE + (full ? TBI_SIZE : 0), size = pos + iref_size(r->type);
	struct bf_key key = { h->bytenr, BF_EXTENT_ITEM_KEY, h->num_bytes };
	struct bf_extent_item *ei = (void *)buf;
	memset(buf, 0, sizeof(buf));
	put64(&ei->refs, (uint64_t)r->count);
	put64(&ei->generation, ea->transid);
	put64(&ei->flags, (h->is_data ? BF_EXTENT_FLAG_DATA : BF_EXTENT_FLAG_TREE_BLOCK) | h->set_flags);
	if (!h->is_data && ea->skinny) {
		key = (struct bf_key){ h->bytenr, BF_METADATA_ITEM_KEY, h->level };
	} else if (full) {
		struct bf_tree_block_info *tbi = (void *)(buf + EI_SIZE);
		bf_key_to_disk(&tbi->key, &h->first_key);
		tbi->level = h->level;
	}
	iref_write(buf + pos, r, (uint32_t)r->count);
	int ret = bf_insert_item(ea->trans, ea->roots.extent, &key, buf, size);
	if (ret == -EEXIST)
		return corrupt(h->bytenr, "a new extent already has an extent item");
	return ret ? ret : bg_extent_added(ea, h->bytenr, h->num_bytes);
}

/* Adds first (ascending type, then identity), then drops: the kernel's select_delayed_ref order. */
static int ref_order(const void *a, const void *b)
{
	const struct ea_ref *x = a, *y = b;
	if ((x->count > 0) != (y->count > 0))
		return x->count > 0 ? -1 : 1;
	if (x->type != y->type)
		return x->type < y->type ? -1 : 1;
	uint64_t kx[4] = { x->parent, x->root, x->owner, x->offset }, ky[4] = { y->parent, y->root, y->owner, y->offset };
	for (int i = 0; i < 4; i++)
		if (kx[i] != ky[i])
			return kx[i] < ky[i] ? -1 : 1;
	return 0;
}

static int check_counts(const struct ea_head *h)
{
	for (size_t i = 0; i < h->nrefs; i++) {
		const struct ea_ref *r = &h->refs[i];
		if ((is_tree_ref(r->type) && r->count != 1 && r->count != -1) || r->count > INT32_MAX ||
		    r->count < -(int64_t)INT32_MAX || (h->must_insert && r->count < 0))
			return corrupt(h->bytenr, "impossible reference change queued");
	}
	return 0;
}

/* A new extent whose references all cancelled (or never came): its space waits for the commit. */
static int new_unused(struct bf_extalloc *ea, const struct ea_head *h)
{
	int ret = h->is_data && h->had_refs && ea->csum_root ? csum_delete_range(ea, h->bytenr, h->num_bytes) : 0;
	return ret ? ret : ea_pin(ea, h->bytenr, h->num_bytes);
}

int et_run_head(struct bf_extalloc *ea, struct ea_head *h)
{
	int ret = check_counts(h);
	if (ret)
		return ret;
	qsort(h->refs, h->nrefs, sizeof(*h->refs), ref_order);
	size_t i = 0;
	bool gone = false;
	if (h->must_insert) {
		if (!h->nrefs)
			return new_unused(ea, h);
		ret = insert_new(ea, h, &h->refs[0]);
		i = 1;
	} else if (h->set_flags) {
		ret = set_flags(ea, h);
	}
	for (; i < h->nrefs && !ret; i++) {
		const struct ea_ref *r = &h->refs[i];
		if (gone)
			ret = corrupt(h->bytenr, "references dropped after the extent was freed");
		else if (r->count > 0)
			ret = add_ref(ea, h, r, (uint32_t)r->count);
		else
			ret = drop_ref(ea, h, r, (uint32_t)-r->count, &gone);
	}
	return ret;
}

int et_lookup_tree_block(struct bf_extalloc *ea, uint64_t bytenr, int level, uint64_t *refs, uint64_t *flags)
{
	struct ea_head *h = dt_find(&ea->refs, bytenr);
	struct ea_head probe = { .bytenr = bytenr, .num_bytes = ea->nodesize, .level = (uint8_t)level };
	if (h && h->must_insert) {
		*refs = (uint64_t)head_ref_mod(h);
		*flags = BF_EXTENT_FLAG_TREE_BLOCK | h->set_flags;
		return 0;
	}
	struct bf_path p;
	uint32_t size, start;
	int ret = find_extent(ea, &probe, 0, false, &p);
	if (ret)
		return ret == -ENOENT ? corrupt(bytenr, "tree block without an extent item") : ret;
	struct bf_key key = bf_path_key(&p);
	const uint8_t *item = bf_path_item(&p, &size);
	ret = item_refs_start(&probe, &key, item, size, &start);
	if (!ret) {
		*refs = get64(((const struct bf_extent_item *)item)->refs);
		*flags = get64(((const struct bf_extent_item *)item)->flags);
	}
	bf_path_release(&p);
	if (!ret && h) {
		*refs += (uint64_t)head_ref_mod(h);
		*flags |= h->set_flags;
	}
	return ret;
}
