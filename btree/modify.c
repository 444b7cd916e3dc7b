/*
 * btree/modify.c - changing a tree's items: search for a change, insert, delete, extend, truncate, rekey.
 *
 * Owns: bf_search_slot and the item calls of the write path (bf_insert_empty_items, bf_insert_item,
 * bf_path_item_mut[_at], bf_del_items, bf_extend_item, bf_truncate_item, bf_set_item_key).
 *
 * Key idea: as in the kernel, a change is a search followed by an edit of one leaf. bf_search_slot copies every
 * block on the way down (so the whole path may change in place) and reshapes the tree ahead of the edit
 * (btree/balance.c): for an insert of ins_len bytes it splits full nodes top down and makes the leaf roomy;
 * for a delete it refills thin nodes and shrinks a one-child root. The edit itself (btree/edit.c) then cannot
 * fail, and the only follow-up is repairing parent keys when a leaf's first key changed, or, after a delete,
 * merging a thin leaf away. Every call checks its arguments and the prepared path before changing anything.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "btree/btree_int.h"
#include "util/util.h"

/* ---- search ---- */

static int read_root(struct bf_tree_env *env, const struct bf_root *root, struct bf_path *p)
{
	struct bf_block_expect exp = { root->generation, root->level, NULL, 0 };
	struct bf_block *b;
	int ret;

	if (root->level >= BF_MAX_LEVEL) {
		bf_log(BF_LOG_ERR, "tree %" PRIu64 ": root level %u at %" PRIu64 " is above the maximum %d (corrupt "
				   "root item; run 'btrfs check --readonly')", root->objectid, root->level, root->bytenr,
		       BF_MAX_LEVEL - 1);
		return -EUCLEAN;
	}
	ret = bf_block_read(env, root->bytenr, &exp, &b);
	if (!ret)
		p->nodes[root->level] = b;
	return ret;
}

/* Make nodes[level] changeable by t, its parent (or the root) following. */
static int cow_level(struct bf_trans *t, struct bf_root *root, struct bf_path *p, int level)
{
	struct bf_block *parent = level + 1 < BF_MAX_LEVEL ? p->nodes[level + 1] : NULL, *nb;
	int ret = bf_cow_block(t, root, p->nodes[level], parent, parent ? p->slots[level + 1] : 0, &nb);

	if (!ret)
		bf_path_set(p, level, nb);
	return ret;
}

/* At node level: pick the child to descend to, reshaping the node first for an insert or a delete. Returns 1
   when the root shrank under the search (start over). */
static int descend_node(struct bf_trans *t, struct bf_root *root, const struct bf_key *key, int ins_len,
			struct bf_path *p, int level)
{
	struct bf_block *b = p->nodes[level], *child;
	const uint32_t max = bf_node_max_ptrs(t->env);
	bool exact;
	uint32_t slot = bf_blk_search(b, key, &exact);
	int ret = 0;

	p->slots[level] = !exact && slot > 0 ? slot - 1 : slot;
	if (ins_len > 0 && b->nritems >= max - 3) {
		ret = bf_split_node(t, root, p, level);
	} else if (ins_len < 0 && b->nritems < max / 2) {
		ret = bf_balance_level(t, root, p, level);
		if (!ret && !p->nodes[level])
			return 1;
	}
	if (ret)
		return ret;
	ret = bf_read_child(t->env, p->nodes[level], p->slots[level], &child);
	if (!ret)
		bf_path_set(p, level - 1, child);
	return ret;
}

static int search_slot(struct bf_trans *t, struct bf_root *root, const struct bf_key *key, int ins_len, bool cow,
		       struct bf_path *p)
{
	int ret, level;
	bool exact;

again:
	bf_path_release(p);
	p->env = t->env;
	ret = read_root(t->env, root, p);
	for (level = root->level; !ret; level--) {
		if (cow) {
			ret = cow_level(t, root, p, level);
			if (ret)
				break;
		}
		if (level == 0)
			break;
		ret = descend_node(t, root, key, ins_len, p, level);
		if (ret == 1)
			goto again;
	}
	if (ret)
		return ret;
	p->slots[0] = bf_blk_search(p->nodes[0], key, &exact);
	if (ins_len > 0 && bf_leaf_free_space(t->env, p->nodes[0]) < (uint32_t)ins_len)
		ret = bf_split_leaf(t, root, key, p, (uint32_t)ins_len, exact);
	return ret ? ret : exact ? 0 : 1;
}

int bf_search_slot(struct bf_trans *t, struct bf_root *root, const struct bf_key *key, int ins_len, bool cow,
		   struct bf_path *p)
{
	int ret;

	if (ins_len && !cow) {
		bf_log(BF_LOG_ERR, "tree %" PRIu64 ": search for an insert or delete without copy-on-write (a bug in "
				   "btrfs-fuse)", root->objectid);
		bf_path_release(p);
		return -EINVAL;
	}
	if (ins_len > 0 && (uint32_t)ins_len > bf_leaf_data_size(t->env)) {
		bf_path_release(p);
		return -EOVERFLOW;
	}
	ret = search_slot(t, root, key, ins_len, cow, p);
	if (ret < 0)
		bf_path_release(p);
	return ret;
}

/* ---- checks shared by the item calls ---- */

/* The key at position slot of the path's leaf, in the whole tree: the item at slot, or past the leaf's end, the
   first key of the next leaf (from the lowest ancestor with a slot to its right). false at the tree's end. */
static bool key_at(const struct bf_path *p, uint32_t slot, struct bf_key *out)
{
	if (slot < p->nodes[0]->nritems) {
		*out = bf_blk_key(p->nodes[0], slot);
		return true;
	}
	for (int level = 1; level < BF_MAX_LEVEL && p->nodes[level]; level++) {
		if (p->slots[level] + 1 < p->nodes[level]->nritems) {
			*out = bf_blk_key(p->nodes[level], p->slots[level] + 1);
			return true;
		}
	}
	return false;
}

/* The path points at an item, and t may change every block on it (it came from bf_search_slot with cow). */
static int check_path(const struct bf_trans *t, const struct bf_path *p, const char *what)
{
	bool ok = p->nodes[0] && p->slots[0] < p->nodes[0]->nritems;

	for (int level = 0; ok && level < BF_MAX_LEVEL; level++)
		ok = !p->nodes[level] || !bf_must_cow(t, p->nodes[level]);
	if (!ok)
		bf_log(BF_LOG_ERR, "%s: the path is not at an item of a tree searched with copy-on-write in "
				   "transaction %" PRIu64 " (a bug in btrfs-fuse)", what, t->transid);
	return ok ? 0 : -EINVAL;
}

/* The batch is sorted and each item and all of them together fit a leaf. *total gets the bytes they need. */
static int check_batch(const struct bf_tree_env *env, const struct bf_key *keys, const uint32_t *sizes,
		       uint32_t nr, uint32_t *total)
{
	uint64_t sum = 0;

	if (nr == 0 || nr > bf_leaf_data_size(env) / BF_ITEM_SIZE)
		return nr ? -EOVERFLOW : -EINVAL;
	for (uint32_t i = 0; i < nr; i++) {
		if (i > 0 && bf_key_cmp(&keys[i - 1], &keys[i]) >= 0) {
			bf_log(BF_LOG_ERR, "insert of %u items: keys not strictly ascending at %u (a bug in btrfs-fuse)",
			       nr, i);
			return -EINVAL;
		}
		sum += (uint64_t)sizes[i] + BF_ITEM_SIZE;
	}
	if (sum > bf_leaf_data_size(env))
		return -EOVERFLOW;
	*total = (uint32_t)sum;
	return 0;
}

/* ---- insert ---- */

int bf_insert_empty_items(struct bf_trans *t, struct bf_root *root, struct bf_path *p, const struct bf_key *keys,
			  const uint32_t *sizes, uint32_t nr)
{
	struct bf_key next;
	struct bf_block *leaf;
	uint32_t total = 0;
	int ret = check_batch(t->env, keys, sizes, nr, &total);

	if (ret)
		return ret;
	ret = bf_search_slot(t, root, &keys[0], (int)total, true, p);
	if (ret == -EOVERFLOW) {
		/* the batch fits a leaf, so keys[0] exists and is too large to grow by it (or the tree is full) */
		ret = bf_search_slot(t, root, &keys[0], 0, false, p);
		if (ret == 1) {
			bf_path_release(p);
			ret = -EOVERFLOW;
		}
	}
	if (ret == 0)
		return -EEXIST;
	if (ret < 0)
		return ret;
	leaf = p->nodes[0];
	if (key_at(p, p->slots[0], &next) && bf_key_cmp(&keys[nr - 1], &next) >= 0) {
		/* a later key of the batch collides; a leaf split just for it must not stay empty */
		ret = leaf->nritems == 0 && p->nodes[1] ? bf_del_leaf(t, root, p) : 0;
		bf_path_release(p);
		return ret ? ret : -EEXIST;
	}
	bf_leaf_insert(t->env, leaf, p->slots[0], keys, sizes, nr);
	if (p->slots[0] == 0)
		bf_fixup_low_keys(p, &keys[0], 1);
	return 0;
}

int bf_insert_item(struct bf_trans *t, struct bf_root *root, const struct bf_key *key, const void *data,
		   uint32_t size)
{
	struct bf_path p;
	uint8_t *dst;
	int ret;

	bf_path_init(&p, t->env);
	ret = bf_insert_empty_items(t, root, &p, key, &size, 1);
	if (!ret) {
		dst = bf_path_item_mut(t, &p, NULL);
		if (size)
			memcpy(dst, data, size);
	}
	bf_path_release(&p);
	return ret;
}

uint8_t *bf_path_item_mut_at(struct bf_trans *t, const struct bf_path *p, uint32_t i, uint32_t *size)
{
	if (!p->nodes[0] || bf_must_cow(t, p->nodes[0]) || i >= p->nodes[0]->nritems ||
	    p->slots[0] >= p->nodes[0]->nritems - i) {
		if (size)
			*size = 0;
		return NULL;
	}
	return (uint8_t *)bf_leaf_item(p->nodes[0], p->slots[0] + i, size);
}

uint8_t *bf_path_item_mut(struct bf_trans *t, const struct bf_path *p, uint32_t *size)
{
	return bf_path_item_mut_at(t, p, 0, size);
}

/* ---- delete ---- */

int bf_del_items(struct bf_trans *t, struct bf_root *root, struct bf_path *p, uint32_t slot, uint32_t nr)
{
	struct bf_block *leaf = p->nodes[0];
	int ret = check_path(t, p, "delete items");
	struct bf_key key;

	if (!ret && (nr == 0 || slot >= leaf->nritems || nr > leaf->nritems - slot))
		ret = -EINVAL;
	if (ret) {
		bf_path_release(p);
		return ret;
	}
	bf_leaf_remove(t->env, leaf, slot, nr);
	if (leaf->nritems == 0) {
		if (p->nodes[1])
			ret = bf_del_leaf(t, root, p);
	} else {
		if (slot == 0) {
			key = bf_blk_key(leaf, 0);
			bf_fixup_low_keys(p, &key, 1);
		}
		if (p->nodes[1] && bf_leaf_used(leaf, 0, leaf->nritems) < bf_leaf_data_size(t->env) / 3)
			ret = bf_merge_leaf(t, root, p);
	}
	bf_path_release(p);
	return ret;
}

/* ---- resize and rekey ---- */

int bf_extend_item(struct bf_trans *t, struct bf_path *p, uint32_t data_size)
{
	uint32_t size;
	int ret = check_path(t, p, "extend item");

	if (ret)
		return ret;
	bf_leaf_item(p->nodes[0], p->slots[0], &size);
	if ((uint64_t)size + data_size > bf_max_item_size(t->env))
		return -EOVERFLOW;
	if (bf_leaf_free_space(t->env, p->nodes[0]) < data_size) {
		bf_log(BF_LOG_ERR, "extend item by %u bytes: the leaf has %u free; search with ins_len = the growth "
				   "first (a bug in btrfs-fuse)", data_size, bf_leaf_free_space(t->env, p->nodes[0]));
		return -EINVAL;
	}
	bf_leaf_resize(t->env, p->nodes[0], p->slots[0], size + data_size, true);
	return 0;
}

int bf_truncate_item(struct bf_trans *t, struct bf_path *p, uint32_t new_size, bool from_end)
{
	uint32_t size;
	int ret = check_path(t, p, "truncate item");

	if (ret)
		return ret;
	bf_leaf_item(p->nodes[0], p->slots[0], &size);
	if (new_size > size)
		return -EINVAL;
	bf_leaf_resize(t->env, p->nodes[0], p->slots[0], new_size, from_end);
	return 0;
}

int bf_set_item_key(struct bf_trans *t, struct bf_path *p, const struct bf_key *key)
{
	struct bf_block *leaf = p->nodes[0];
	uint32_t slot = p->slots[0];
	struct bf_key other;
	int ret = check_path(t, p, "set item key");

	if (ret)
		return ret;
	if (slot > 0) {
		other = bf_blk_key(leaf, slot - 1);
		if (bf_key_cmp(&other, key) >= 0)
			return -EINVAL;
	}
	if (key_at(p, slot + 1, &other) && bf_key_cmp(key, &other) >= 0)
		return -EINVAL;
	bf_blk_set_key(leaf, slot, key);
	if (slot == 0)
		bf_fixup_low_keys(p, key, 1);
	return 0;
}
