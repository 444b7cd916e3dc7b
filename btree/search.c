/*
 * btree/search.c - paths, search and iteration over any tree given its root.
 *
 * Owns: bf_path_*, bf_search, bf_search_le and bf_iterate.
 *
 * Key idea: a path holds a reference to one block per level, root at nodes[root level], leaf at nodes[0], and
 * the slot taken at each level. Search descends from the root: in a node, binary search for the last key <=
 * the target (slot 0 if all are greater) and read that child; in the leaf, the first key >= the target. Every
 * child is read with the parent pointer's expectations (generation, level = parent level - 1, first key = the
 * parent's key for it), so a descent takes exactly root-level + 1 reads and can never loop. Moving to the next
 * or previous item climbs to the nearest ancestor with a slot to spare and descends its leftmost or rightmost
 * edge. A path past the last item (slot == nritems in the last leaf) is "not valid" but still a position:
 * prev from there gives the last item. On an error while moving, the path is released.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "btree/btree.h"
#include "util/util.h"

void bf_path_init(struct bf_path *p, struct bf_tree_env *env)
{
	memset(p, 0, sizeof(*p));
	p->env = env;
}

void bf_path_release(struct bf_path *p)
{
	for (int i = 0; i < BF_MAX_LEVEL; i++) {
		if (p->nodes[i])
			bf_block_put(p->env, p->nodes[i]);
		p->nodes[i] = NULL;
		p->slots[i] = 0;
	}
}

bool bf_path_valid(const struct bf_path *p) { return p->nodes[0] && p->slots[0] < p->nodes[0]->nritems; }

struct bf_key bf_path_key(const struct bf_path *p)
{
	struct bf_key zero = { 0, 0, 0 };

	return bf_path_valid(p) ? bf_leaf_key(p->nodes[0], p->slots[0]) : zero;
}

const uint8_t *bf_path_item(const struct bf_path *p, uint32_t *size)
{
	if (!bf_path_valid(p)) {
		if (size)
			*size = 0;
		return NULL;
	}
	return bf_leaf_item(p->nodes[0], p->slots[0], size);
}

/* ---- descent ---- */

/* Number of keys in b that are < key (or <= key when or_equal): a binary search over the sorted slots. */
static uint32_t count_below(const struct bf_block *b, const struct bf_key *key, bool or_equal)
{
	uint32_t lo = 0, hi = b->nritems;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		struct bf_key k = b->level ? bf_node_key(b, mid) : bf_leaf_key(b, mid);
		int c = bf_key_cmp(&k, key);

		if (c < 0 || (or_equal && c == 0))
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static void path_set(struct bf_path *p, int level, struct bf_block *b)
{
	if (p->nodes[level])
		bf_block_put(p->env, p->nodes[level]);
	p->nodes[level] = b;
}

/* Replace nodes[level] by the child that nodes[level + 1] points to at its current slot. */
static int read_child(struct bf_path *p, int level)
{
	const struct bf_block *parent = p->nodes[level + 1];
	uint32_t slot = p->slots[level + 1];
	struct bf_key first = bf_node_key(parent, slot);
	struct bf_block_expect exp = { bf_node_ptr_gen(parent, slot), level, &first, 0 };
	struct bf_block *b;
	int ret = bf_block_read(p->env, bf_node_blockptr(parent, slot), &exp, &b);

	if (ret)
		return ret;
	path_set(p, level, b);
	return 0;
}

/* Descend from nodes[top] (its slot already set) to the leaf along the leftmost or rightmost edge. */
static int descend_edge(struct bf_path *p, int top, bool rightmost)
{
	for (int level = top - 1; level >= 0; level--) {
		int ret = read_child(p, level);

		if (ret) {
			bf_path_release(p);
			return ret;
		}
		/* a child read with a first key has nritems >= 1 */
		p->slots[level] = rightmost ? p->nodes[level]->nritems - 1 : 0;
	}
	return 0;
}

/* Lowest level above the leaf whose slot can move by one in the direction; 0 if none (edge of the tree). */
static int climb(const struct bf_path *p, bool forward)
{
	for (int level = 1; level < BF_MAX_LEVEL && p->nodes[level]; level++) {
		if (forward ? p->slots[level] + 1 < p->nodes[level]->nritems : p->slots[level] > 0)
			return level;
	}
	return 0;
}

/* Move to the first item of the next leaf (forward) or the last item of the previous one. 1 at the edge. */
static int step_leaf(struct bf_path *p, bool forward)
{
	int level = climb(p, forward);

	if (level == 0)
		return 1;
	p->slots[level] = forward ? p->slots[level] + 1 : p->slots[level] - 1;
	return descend_edge(p, level, !forward);
}

int bf_path_next(struct bf_path *p)
{
	int ret;

	if (!p->nodes[0])
		return -EINVAL;
	if (p->slots[0] + 1 < p->nodes[0]->nritems) {
		p->slots[0]++;
		return 0;
	}
	ret = step_leaf(p, true);
	if (ret == 1)
		p->slots[0] = p->nodes[0]->nritems; /* past the last item */
	return ret;
}

int bf_path_prev(struct bf_path *p)
{
	if (!p->nodes[0])
		return -EINVAL;
	if (p->slots[0] > 0) {
		p->slots[0]--;
		return 0;
	}
	return step_leaf(p, false);
}

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
	if (ret)
		return ret;
	p->nodes[root->level] = b;
	return 0;
}

int bf_search(struct bf_tree_env *env, const struct bf_root *root, const struct bf_key *key, struct bf_path *p)
{
	struct bf_key found;
	int ret;

	bf_path_release(p);
	p->env = env;
	ret = read_root(env, root, p);
	for (int level = root->level; !ret && level > 0; level--) {
		uint32_t n = count_below(p->nodes[level], key, true);

		p->slots[level] = n ? n - 1 : 0;
		ret = read_child(p, level - 1);
	}
	if (ret) {
		bf_path_release(p);
		return ret;
	}
	p->slots[0] = count_below(p->nodes[0], key, false);
	/* every key of the next leaf is above key (its parent key is), so the answer is its first item */
	if (p->slots[0] >= p->nodes[0]->nritems) {
		ret = bf_path_next(p);
		if (ret)
			return ret;
	}
	found = bf_path_key(p);
	ret = bf_key_cmp(&found, key) == 0 ? 0 : 1;
	if (bf_trace_enabled())
		bf_trace("search",
			 "\"tree\":%" PRIu64 ",\"key\":[%" PRIu64 ",%u,%" PRIu64 "],\"leaf\":%" PRIu64 ",\"slot\":%u,"
			 "\"found\":%s",
			 root->objectid, key->objectid, key->type, key->offset, p->nodes[0]->bytenr, p->slots[0],
			 ret ? "false" : "true");
	return ret;
}

int bf_search_le(struct bf_tree_env *env, const struct bf_root *root, const struct bf_key *key, struct bf_path *p)
{
	int ret = bf_search(env, root, key, p);

	if (ret <= 0)
		return ret;
	ret = bf_path_prev(p);
	if (ret == 1)
		return -ENOENT;
	return ret < 0 ? ret : 1;
}

int bf_iterate(struct bf_tree_env *env, const struct bf_root *root, const struct bf_key *min,
	       const struct bf_key *max, bf_item_cb cb, void *ctx)
{
	struct bf_path p;
	int ret;

	bf_path_init(&p, env);
	ret = bf_search(env, root, min, &p);
	while (ret >= 0 && bf_path_valid(&p)) {
		struct bf_key key = bf_path_key(&p);
		uint32_t size;
		const uint8_t *data;

		if (bf_key_cmp(&key, max) > 0)
			break;
		data = bf_path_item(&p, &size);
		ret = cb(ctx, &key, data, size);
		if (ret)
			break;
		ret = bf_path_next(&p);
	}
	bf_path_release(&p);
	return ret < 0 ? ret : 0;
}
