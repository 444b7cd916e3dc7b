/*
 * btree/balance.c - the shape of a tree under change: splitting, pushing, merging, growing and shrinking.
 *
 * Owns: bf_split_node and bf_balance_level (nodes on the way down a search for an insert or a delete),
 * bf_split_leaf (room for an insert or an item extension), bf_merge_leaf (after a delete), bf_del_leaf, key
 * fix-ups, and the root's growth (a new root above the old one) and shrinking (a root with one child gives way
 * to it; a root node that loses its last child gives way to a new empty leaf).
 *
 * Key idea: the rules are the kernel's (fs/btrfs/ctree.c), so trees look like the kernel's own:
 *  - insert, top down: a node with nritems >= max - 3 pushes pointers to a neighbour (left first; the source
 *    keeps at least 8) or splits at (nritems + 1) / 2, so the level above always has room for the pointers a
 *    split below adds (at most 2). The root splits by first growing a new root above it.
 *  - insert, at the leaf: if the leaf lacks the room, push items into the right neighbour (only items at or
 *    after the insert position, and an append goes straight to the right leaf when that has room), then into
 *    the left one (items before the position); if it still lacks room, split at the middle item, or at the
 *    insert position when the half holding the new item would still be too full, possibly twice; an insert at
 *    either end of a full leaf gets a new empty leaf of its own.
 *  - delete, top down (nodes under max / 2 are looked at): a non-root node with at most max / 4 pointers
 *    gives all it can to its left neighbour and takes all it can from its right one (each keeping 8 unless
 *    emptied; emptied nodes are freed), a node left with one pointer takes some back from the left, and a
 *    root node with one child is replaced by the child.
 *  - delete, at the leaf: a leaf with less than a third of its space used pushes all it can into its left,
 *    then its right neighbour, and leaves the tree if that emptied it; an emptied leaf always leaves, and a
 *    node emptied by that leaves too, up to the root (a delete found without ins_len < 0 can get there).
 * Left out: the kernel's extra push before a second leaf split (push_for_double_split) and readahead.
 * Invariants kept (those of the kernel's tree-checker and bf_block_check, and of the kernel's read path):
 * keys strictly ascending within and across blocks, each parent key equal to its child's first key, child
 * level = parent level - 1, pointer generation = child header generation <= parent generation (every block
 * changed is on a path copied from the root down), non-root nodes with 1 to max
 * pointers, no empty leaf except an empty tree's root leaf, leaf data packed from the end in slot order.
 * The kernel has no minimum fill beyond "not empty"; neither do we. Blocks are made changeable
 * (bf_cow_block) before anything is moved into or out of them, siblings included.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "btree/btree_int.h"
#include "util/util.h"

#define MIN_NODE_KEEP 8 /* pointers a node keeps when it is not being emptied (the kernel's choice) */

/* Read the child at slot of parent (changeable) and make it changeable. New reference in *out. */
static int cow_child(struct bf_trans *t, struct bf_root *root, struct bf_block *parent, uint32_t slot,
		     struct bf_block **out)
{
	struct bf_block *c;
	int ret = bf_read_child(t->env, parent, slot, &c);

	*out = NULL;
	if (ret)
		return ret;
	ret = bf_cow_block(t, root, c, parent, slot, out);
	bf_block_put(t->env, c);
	return ret;
}

static int bug(const struct bf_root *root, const char *what)
{
	bf_log(BF_LOG_ERR, "tree %" PRIu64 ": %s (a bug in btrfs-fuse; the transaction must be aborted)",
	       root->objectid, what);
	return -EUCLEAN;
}

void bf_fixup_low_keys(struct bf_path *p, const struct bf_key *key, int level)
{
	for (int i = level; i < BF_MAX_LEVEL && p->nodes[i]; i++) {
		bf_blk_set_key(p->nodes[i], p->slots[i], key);
		if (p->slots[i] != 0)
			break;
	}
}

/* Insert a pointer to a block of this transaction into nodes[level] at slot. */
static int insert_ptr(struct bf_trans *t, const struct bf_root *root, struct bf_path *p, int level,
		      const struct bf_key *key, uint64_t bytenr, uint32_t slot)
{
	struct bf_block *node = p->nodes[level];

	if (node->nritems >= bf_node_max_ptrs(t->env) || slot > node->nritems)
		return bug(root, "no room for a pointer in a node");
	bf_node_insert(node, slot, key, bytenr, t->transid);
	return 0;
}

/* ---- the root ---- */

/* Put a new root at level above nodes[level - 1], the old root, pointing to it. */
static int grow_root(struct bf_trans *t, struct bf_root *root, struct bf_path *p, int level)
{
	struct bf_block *lower = p->nodes[level - 1], *c;
	struct bf_key key = lower->nritems ? bf_blk_key(lower, 0) : (struct bf_key){ 0, 0, 0 };
	int ret;

	if (level >= BF_MAX_LEVEL) {
		bf_log(BF_LOG_ERR, "tree %" PRIu64 ": cannot grow beyond %d levels", root->objectid, BF_MAX_LEVEL);
		return -EOVERFLOW;
	}
	ret = bf_new_block(t, root, (uint8_t)level, &key, &c);
	if (ret)
		return ret;
	bf_node_insert(c, 0, &key, lower->bytenr, lower->generation);
	root->bytenr = c->bytenr;
	root->generation = t->transid;
	root->level = (uint8_t)level;
	bf_path_set(p, level, c);
	p->slots[level] = 0;
	return 0;
}

/* The root node nodes[level] has one child: make the child the root. nodes[level] becomes NULL. */
static int shrink_root(struct bf_trans *t, struct bf_root *root, struct bf_path *p, int level)
{
	struct bf_block *mid = p->nodes[level], *child;
	int ret = cow_child(t, root, mid, 0, &child);

	if (ret)
		return ret;
	root->bytenr = child->bytenr;
	root->generation = t->transid;
	root->level = child->level;
	bf_block_put(t->env, child);
	bf_free_block(t, root, mid);
	bf_path_set(p, level, NULL);
	return 0;
}

/* The root node lost its last child: a new empty leaf replaces it (a fresh block, so that its extent keeps
   the level it was allocated for). */
static int empty_root(struct bf_trans *t, struct bf_root *root, struct bf_block *old)
{
	struct bf_key none = { 0, 0, 0 };
	struct bf_block *leaf;
	int ret = bf_new_block(t, root, 0, &none, &leaf);

	if (ret)
		return ret;
	root->bytenr = leaf->bytenr;
	root->generation = t->transid;
	root->level = 0;
	bf_block_put(t->env, leaf);
	bf_free_block(t, root, old);
	return 0;
}

/* Remove pointer slot of nodes[level]; a node left empty leaves the tree too (or, the root, is replaced by an
   empty leaf). The path is only good for release afterwards if a node was removed. */
static int del_ptr(struct bf_trans *t, struct bf_root *root, struct bf_path *p, int level, uint32_t slot)
{
	struct bf_block *node = p->nodes[level];
	struct bf_key key;

	bf_node_remove(node, slot, 1);
	if (node->nritems > 0) {
		if (slot == 0) {
			key = bf_blk_key(node, 0);
			bf_fixup_low_keys(p, &key, level + 1);
		}
		return 0;
	}
	if (level + 1 >= BF_MAX_LEVEL || !p->nodes[level + 1])
		return empty_root(t, root, node);
	bf_free_block(t, root, node);
	return del_ptr(t, root, p, level + 1, p->slots[level + 1]);
}

int bf_del_leaf(struct bf_trans *t, struct bf_root *root, struct bf_path *p)
{
	struct bf_block *leaf = p->nodes[0];
	int ret = del_ptr(t, root, p, 1, p->slots[1]);

	bf_free_block(t, root, leaf);
	return ret;
}

/* ---- nodes ---- */

/* Move pointers from the front of src to the end of dst. Unless emptying src, it keeps MIN_NODE_KEEP; when
   emptying but not all fit, it keeps MIN_NODE_KEEP too. 0 if something moved, 1 if not. */
static int push_node_left(const struct bf_tree_env *env, struct bf_block *dst, struct bf_block *src, bool empty)
{
	uint32_t max = bf_node_max_ptrs(env), src_n = src->nritems, n;

	if ((!empty && src_n <= MIN_NODE_KEEP) || dst->nritems >= max)
		return 1;
	n = max - dst->nritems;
	if (empty) {
		if (n > src_n)
			n = src_n;
		if (n < src_n && src_n - n < MIN_NODE_KEEP) {
			if (n <= MIN_NODE_KEEP)
				return 1;
			n -= MIN_NODE_KEEP;
		}
	} else if (n > src_n - MIN_NODE_KEEP) {
		n = src_n - MIN_NODE_KEEP;
	}
	bf_node_copy(dst, dst->nritems, src, 0, n);
	bf_node_remove(src, 0, n);
	return 0;
}

/* Move up to half (+1) of src's pointers, from its end, to the front of dst; src keeps at least one. */
static int push_node_right(const struct bf_tree_env *env, struct bf_block *dst, struct bf_block *src)
{
	uint32_t max = bf_node_max_ptrs(env), src_n = src->nritems, n, most;

	if (dst->nritems >= max || src_n < 4)
		return 1;
	n = max - dst->nritems;
	most = src_n / 2 + 1;
	if (most >= src_n)
		return 1;
	if (n > most)
		n = most;
	bf_node_copy(dst, 0, src, src_n - n, n);
	bf_node_remove(src, src_n - n, n);
	return 0;
}

/* Insert path, full node nodes[level] (not the root): give pointers to the left neighbour, else take the right
   one's room. 0 if pointers moved (the path follows its slot), 1 if neither neighbour could take any. */
static int push_nodes_for_insert(struct bf_trans *t, struct bf_root *root, struct bf_path *p, int level)
{
	const uint32_t max = bf_node_max_ptrs(t->env);
	struct bf_block *mid = p->nodes[level], *parent = p->nodes[level + 1], *sib;
	uint32_t pslot = p->slots[level + 1], orig = p->slots[level], left_n;
	struct bf_key key;
	int ret;

	if (pslot > 0) {
		ret = bf_read_child(t->env, parent, pslot - 1, &sib);
		if (ret)
			return ret;
		left_n = sib->nritems;
		bf_block_put(t->env, sib);
		if (left_n < max - 1) {
			ret = cow_child(t, root, parent, pslot - 1, &sib);
			if (ret)
				return ret;
			if (push_node_left(t->env, sib, mid, false) == 0) {
				key = bf_blk_key(mid, 0);
				bf_blk_set_key(parent, pslot, &key);
				orig += left_n;
				if (sib->nritems > orig) {
					bf_path_set(p, level, sib);
					p->slots[level + 1]--;
					p->slots[level] = orig;
				} else {
					p->slots[level] = orig - sib->nritems;
					bf_block_put(t->env, sib);
				}
				return 0;
			}
			bf_block_put(t->env, sib);
		}
	}
	if (pslot + 1 < parent->nritems) {
		ret = bf_read_child(t->env, parent, pslot + 1, &sib);
		if (ret)
			return ret;
		left_n = sib->nritems; /* the right one's count */
		bf_block_put(t->env, sib);
		if (left_n < max - 1) {
			ret = cow_child(t, root, parent, pslot + 1, &sib);
			if (ret)
				return ret;
			if (push_node_right(t->env, sib, mid) == 0) {
				key = bf_blk_key(sib, 0);
				bf_blk_set_key(parent, pslot + 1, &key);
				if (mid->nritems <= orig) {
					p->slots[level] = orig - mid->nritems;
					bf_path_set(p, level, sib);
					p->slots[level + 1]++;
				} else {
					bf_block_put(t->env, sib);
				}
				return 0;
			}
			bf_block_put(t->env, sib);
		}
	}
	return 1;
}

int bf_split_node(struct bf_trans *t, struct bf_root *root, struct bf_path *p, int level)
{
	bf_trace("split", "\"tree\":%" PRIu64 ",\"level\":%d,\"block\":%" PRIu64, root->objectid, level,
		 p->nodes[level] ? p->nodes[level]->bytenr : 0);
	struct bf_block *c, *split;
	uint32_t n, mid;
	struct bf_key key;
	int ret;

	if (level + 1 >= BF_MAX_LEVEL || !p->nodes[level + 1]) {
		ret = grow_root(t, root, p, level + 1);
		if (ret)
			return ret;
	} else {
		ret = push_nodes_for_insert(t, root, p, level);
		if (ret < 0)
			return ret;
		if (ret == 0 && p->nodes[level]->nritems < bf_node_max_ptrs(t->env) - 3)
			return 0;
	}
	c = p->nodes[level];
	n = c->nritems;
	mid = (n + 1) / 2;
	key = bf_blk_key(c, mid);
	ret = bf_new_block(t, root, (uint8_t)level, &key, &split);
	if (ret)
		return ret;
	bf_node_copy(split, 0, c, mid, n - mid);
	bf_node_remove(c, mid, n - mid);
	ret = insert_ptr(t, root, p, level + 1, &key, split->bytenr, p->slots[level + 1] + 1);
	if (!ret && p->slots[level] >= mid) {
		p->slots[level] -= mid;
		bf_path_set(p, level, split);
		p->slots[level + 1]++;
	} else {
		bf_block_put(t->env, split);
	}
	return ret;
}

/* Delete path: after the neighbours took or gave pointers, drop the ones that ended up empty and fix the
   parent keys of the others. */
static void settle_neighbours(struct bf_trans *t, struct bf_root *root, struct bf_block *parent, uint32_t pslot,
			      struct bf_block **mid, struct bf_block **right)
{
	struct bf_key key;

	if (*right && (*right)->nritems == 0) {
		bf_node_remove(parent, pslot + 1, 1);
		bf_free_block(t, root, *right);
		bf_block_put(t->env, *right);
		*right = NULL;
	} else if (*right) {
		key = bf_blk_key(*right, 0);
		bf_blk_set_key(parent, pslot + 1, &key);
	}
	if ((*mid)->nritems == 0) { /* it went into the left neighbour, so pslot > 0 */
		bf_node_remove(parent, pslot, 1);
		bf_free_block(t, root, *mid);
		*mid = NULL;
	} else {
		key = bf_blk_key(*mid, 0);
		bf_blk_set_key(parent, pslot, &key);
	}
}

int bf_balance_level(struct bf_trans *t, struct bf_root *root, struct bf_path *p, int level)
{
	bf_trace("balance", "\"tree\":%" PRIu64 ",\"level\":%d,\"block\":%" PRIu64, root->objectid, level,
		 p->nodes[level] ? p->nodes[level]->bytenr : 0);
	struct bf_block *mid = p->nodes[level], *parent, *left = NULL, *right = NULL;
	uint32_t orig = p->slots[level], pslot;
	uint64_t orig_ptr = bf_node_blockptr(mid, orig);
	int ret = 0;

	if (level == 0)
		return 0;
	parent = level + 1 < BF_MAX_LEVEL ? p->nodes[level + 1] : NULL;
	if (!parent)
		return mid->nritems == 1 ? shrink_root(t, root, p, level) : 0;
	if (mid->nritems > bf_node_max_ptrs(t->env) / 4)
		return 0;
	pslot = p->slots[level + 1];
	if (pslot > 0)
		ret = cow_child(t, root, parent, pslot - 1, &left);
	if (!ret && pslot + 1 < parent->nritems)
		ret = cow_child(t, root, parent, pslot + 1, &right);
	if (ret)
		goto out;
	if (left) {
		orig += left->nritems;
		push_node_left(t->env, left, mid, true);
	}
	if (right)
		push_node_left(t->env, mid, right, true);
	/* a node with one pointer could be emptied by the delete below: refill it from the left */
	if (mid->nritems == 1 && left && push_node_right(t->env, mid, left) == 1)
		push_node_left(t->env, left, mid, true);
	settle_neighbours(t, root, parent, pslot, &mid, &right);
	if (left && left->nritems > orig) {
		bf_path_set(p, level, left);
		left = NULL;
		p->slots[level + 1]--;
		p->slots[level] = orig;
	} else if (left) {
		p->slots[level] = orig - left->nritems;
	}
	if (!p->nodes[level] || p->slots[level] >= p->nodes[level]->nritems ||
	    bf_node_blockptr(p->nodes[level], p->slots[level]) != orig_ptr)
		ret = bug(root, "node rebalancing lost the path's position");
out:
	if (left)
		bf_block_put(t->env, left);
	if (right)
		bf_block_put(t->env, right);
	return ret;
}

/* ---- leaves ---- */

static uint32_t item_bytes(const struct bf_block *b, uint32_t slot)
{
	uint32_t size;

	bf_leaf_item(b, slot, &size);
	return size + BF_ITEM_SIZE;
}

/* Read the leaf at slot of nodes[1] and make it changeable, if it has at least need bytes free. 1 if not. */
static int sibling_with_room(struct bf_trans *t, struct bf_root *root, struct bf_path *p, uint32_t slot,
			     uint32_t need, struct bf_block **out)
{
	struct bf_block *sib;
	int ret = bf_read_child(t->env, p->nodes[1], slot, &sib);

	*out = NULL;
	if (ret)
		return ret;
	if (bf_leaf_free_space(t->env, sib) < need) {
		bf_block_put(t->env, sib);
		return 1;
	}
	ret = bf_cow_block(t, root, sib, p->nodes[1], slot, out);
	bf_block_put(t->env, sib);
	return ret;
}

/* How many items from the end of left (down to index stop) fit into free bytes, where the path's slot needs
   data_size more; unless emptying, only items at or after the slot, and not when that would crowd the right
   leaf more than it relieves the left (the kernel's heuristics). */
static uint32_t count_push_right(const struct bf_tree_env *env, const struct bf_path *p, struct bf_block *left,
				 uint32_t free, uint32_t data_size, bool empty)
{
	uint32_t n = left->nritems, slot = p->slots[0], push = 0, space = 0, stop = empty ? 0 : 1;

	if (slot >= n)
		space += data_size;
	for (uint32_t i = n; i-- > stop;) {
		if (!empty && push > 0) {
			if (slot > i)
				break;
			if (slot == i && bf_leaf_free_space(env, left) + space * 2 > free)
				break;
		}
		if (slot == i)
			space += data_size;
		if (item_bytes(left, i) + space > free)
			break;
		push++;
		space += item_bytes(left, i);
	}
	return push;
}

/* Push items from the end of the path's leaf into its right neighbour, which must end up with data_size free
   for the path's slot if the slot moves there. 0 if something moved (the path follows), 1 if not. */
static int push_leaf_right(struct bf_trans *t, struct bf_root *root, struct bf_path *p, uint32_t data_size,
			   bool empty)
{
	struct bf_block *left = p->nodes[0], *right;
	uint32_t slot = p->slots[1], push;
	struct bf_key key;
	int ret;

	if (!p->nodes[1] || slot + 1 >= p->nodes[1]->nritems || left->nritems == 0)
		return 1;
	ret = sibling_with_room(t, root, p, slot + 1, data_size, &right);
	if (ret)
		return ret;
	if (!empty && p->slots[0] == left->nritems) {
		/* an append that fits into the right neighbour goes there, leaving this leaf alone */
		bf_path_set(p, 0, right);
		p->slots[0] = 0;
		p->slots[1]++;
		return 0;
	}
	push = count_push_right(t->env, p, left, bf_leaf_free_space(t->env, right), data_size, empty);
	if (push == 0) {
		bf_block_put(t->env, right);
		return 1;
	}
	bf_leaf_copy(t->env, right, 0, left, left->nritems - push, push);
	bf_leaf_remove(t->env, left, left->nritems - push, push);
	key = bf_blk_key(right, 0);
	bf_blk_set_key(p->nodes[1], slot + 1, &key);
	if (p->slots[0] >= left->nritems) {
		p->slots[0] -= left->nritems;
		bf_path_set(p, 0, right);
		p->slots[1]++;
	} else {
		bf_block_put(t->env, right);
	}
	return 0;
}

/* The mirror image of count_push_right: items from the front of right (before index stop). */
static uint32_t count_push_left(const struct bf_tree_env *env, const struct bf_path *p, struct bf_block *right,
				uint32_t free, uint32_t data_size, bool empty)
{
	uint32_t stop = empty ? right->nritems : right->nritems - 1, slot = p->slots[0], push = 0, space = 0;

	for (uint32_t i = 0; i < stop; i++) {
		if (!empty && push > 0) {
			if (slot < i)
				break;
			if (slot == i && bf_leaf_free_space(env, right) + space * 2 > free)
				break;
		}
		if (slot == i)
			space += data_size;
		if (item_bytes(right, i) + space > free)
			break;
		push++;
		space += item_bytes(right, i);
	}
	return push;
}

/* Push items from the front of the path's leaf into its left neighbour. 0 if something moved, 1 if not. */
static int push_leaf_left(struct bf_trans *t, struct bf_root *root, struct bf_path *p, uint32_t data_size,
			  bool empty)
{
	struct bf_block *right = p->nodes[0], *left;
	uint32_t slot = p->slots[1], push, old_n;
	struct bf_key key;
	int ret;

	if (!p->nodes[1] || slot == 0 || right->nritems == 0)
		return 1;
	ret = sibling_with_room(t, root, p, slot - 1, data_size, &left);
	if (ret)
		return ret;
	push = count_push_left(t->env, p, right, bf_leaf_free_space(t->env, left), data_size, empty);
	if (push == 0) {
		bf_block_put(t->env, left);
		return 1;
	}
	old_n = left->nritems;
	bf_leaf_copy(t->env, left, old_n, right, 0, push);
	bf_leaf_remove(t->env, right, 0, push);
	if (right->nritems) {
		key = bf_blk_key(right, 0);
		bf_fixup_low_keys(p, &key, 1);
	}
	if (p->slots[0] < push) {
		p->slots[0] += old_n;
		bf_path_set(p, 0, left);
		p->slots[1]--;
	} else {
		p->slots[0] -= push;
		bf_block_put(t->env, left);
	}
	return 0;
}

/* Where to split leaf l for data_size more bytes at slot: returns the first item that moves to the new right
   leaf, and *how: 1 plain split, 2 split and look again (the new item's half is still too full), 0 no split:
   the new item gets an empty leaf of its own (to the right if the returned index is <= slot, else left). */
static uint32_t split_point(const struct bf_tree_env *env, const struct bf_block *l, uint32_t slot,
			    uint32_t data_size, bool extend, int *how)
{
	const uint32_t lds = bf_leaf_data_size(env), n = l->nritems;
	uint32_t mid = (n + 1) / 2;

	*how = 1;
	if (mid <= slot) {
		if (n == 1 || bf_leaf_used(l, mid, n - mid) + data_size > lds) {
			if (slot >= n) {
				*how = 0;
			} else {
				mid = slot;
				if (bf_leaf_used(l, mid, n - mid) + data_size > lds)
					*how = 2;
			}
		}
	} else if (bf_leaf_used(l, 0, mid) + data_size > lds) {
		if (!extend && data_size && slot == 0) {
			*how = 0;
		} else if ((extend || !data_size) && slot == 0) {
			mid = 1;
		} else {
			mid = slot;
			if (mid != n && bf_leaf_used(l, mid, n - mid) + data_size > lds)
				*how = 2;
		}
	}
	return mid;
}

/* The new item(s) at the path's slot get a new empty leaf, right of the path's leaf (after) or left of it. */
static int split_to_empty(struct bf_trans *t, struct bf_root *root, struct bf_path *p, const struct bf_key *key,
			  bool after)
{
	struct bf_block *right;
	int ret = bf_new_block(t, root, 0, key, &right);

	if (ret)
		return ret;
	ret = insert_ptr(t, root, p, 1, key, right->bytenr, p->slots[1] + (after ? 1 : 0));
	if (ret) {
		bf_block_put(t->env, right);
		return ret;
	}
	bf_path_set(p, 0, right);
	p->slots[0] = 0;
	if (after)
		p->slots[1]++;
	/* (a new leftmost leaf: the insert at its slot 0 fixes the keys above) */
	return 0;
}

/* Move items [mid, nritems) of the path's leaf into a new leaf right of it; the path follows its slot. */
static int split_at(struct bf_trans *t, struct bf_root *root, struct bf_path *p, uint32_t mid)
{
	struct bf_block *l = p->nodes[0], *right;
	struct bf_key key = bf_blk_key(l, mid);
	int ret = bf_new_block(t, root, 0, &key, &right);

	if (ret)
		return ret;
	bf_leaf_copy(t->env, right, 0, l, mid, l->nritems - mid);
	bf_leaf_remove(t->env, l, mid, l->nritems - mid);
	ret = insert_ptr(t, root, p, 1, &key, right->bytenr, p->slots[1] + 1);
	if (!ret && mid <= p->slots[0]) {
		p->slots[0] -= mid;
		bf_path_set(p, 0, right);
		p->slots[1]++;
	} else {
		bf_block_put(t->env, right);
	}
	return ret;
}

int bf_split_leaf(struct bf_trans *t, struct bf_root *root, const struct bf_key *ins_key, struct bf_path *p,
		  uint32_t data_size, bool extend)
{
	const uint32_t lds = bf_leaf_data_size(t->env);
	int ret, how = 2;

	if (data_size > lds || (extend && data_size + item_bytes(p->nodes[0], p->slots[0]) > lds))
		return -EOVERFLOW;
	bf_trace("split", "\"tree\":%" PRIu64 ",\"level\":0,\"block\":%" PRIu64 ",\"key\":[%" PRIu64 ",%u,%" PRIu64
		 "],\"bytes\":%u", root->objectid, p->nodes[0]->bytenr, ins_key->objectid, ins_key->type,
		 ins_key->offset, data_size);
	if (data_size && p->nodes[1]) {
		ret = push_leaf_right(t, root, p, data_size, false);
		if (ret == 1)
			ret = push_leaf_left(t, root, p, data_size, false);
		if (ret < 0)
			return ret;
		if (bf_leaf_free_space(t->env, p->nodes[0]) >= data_size)
			return 0;
	}
	if (!p->nodes[1]) {
		ret = grow_root(t, root, p, 1);
		if (ret)
			return ret;
	}
	for (int pass = 0; pass < 2 && how == 2; pass++) {
		struct bf_block *l = p->nodes[0];
		uint32_t mid = split_point(t->env, l, p->slots[0], data_size, extend, &how);

		if (how == 0)
			return split_to_empty(t, root, p, ins_key, mid <= p->slots[0]);
		if (mid == 0 || mid >= l->nritems)
			return bug(root, "leaf split point would leave a leaf empty");
		ret = split_at(t, root, p, mid);
		if (ret)
			return ret;
	}
	if (bf_leaf_free_space(t->env, p->nodes[0]) < data_size)
		return bug(root, "leaf split did not make the room asked for");
	return 0;
}

int bf_merge_leaf(struct bf_trans *t, struct bf_root *root, struct bf_path *p)
{
	struct bf_block *leaf = p->nodes[0];
	uint32_t pslot = p->slots[1];
	int ret;

	bf_trace("merge", "\"tree\":%" PRIu64 ",\"level\":0,\"block\":%" PRIu64 ",\"items\":%u", root->objectid,
		 leaf->bytenr, leaf->nritems);
	bf_block_get(leaf);
	ret = push_leaf_left(t, root, p, 1, true);
	if (ret >= 0 && p->nodes[0] == leaf && leaf->nritems)
		ret = push_leaf_right(t, root, p, 1, true);
	if (ret >= 0 && leaf->nritems == 0) {
		bf_block_get(leaf);
		bf_path_set(p, 0, leaf);
		p->slots[1] = pslot;
		ret = bf_del_leaf(t, root, p);
	}
	bf_block_put(t->env, leaf);
	return ret < 0 ? ret : 0;
}
