/*
 * inspect/walk.c - walking whole trees breadth first, reporting damaged blocks instead of stopping.
 *
 * Owns: walk_tree (one tree), walk_all_roots (every tree in dump-tree's order) and walk_diagnose (why a block
 * is refused, mirror by mirror).
 *
 * Key idea: the walk keeps the list of pointers of one level at a time: the root, then the children of every
 * node of that level in order, which is exactly the breadth-first order `btrfs inspect-internal dump-tree`
 * prints. Each child is read with its parent's promises (level - 1, pointer generation, first key), so levels
 * strictly decrease and the walk ends after at most BF_MAX_LEVEL rounds; a visited set stops pointers that
 * repeat a block, and a block budget caps the work on any image. A block that cannot be read is handed to
 * the callback with its reason, and its subtree is skipped.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "inspect/inspect.h"
#include "util/util.h"

#define DEFAULT_MAX_BLOCKS (1u << 22)

/* ---- a set of bytenrs (open addressing) ---- */

bool set_has(const struct u64set *s, uint64_t v)
{
	if (v == 0 || !s->cap)
		return false;
	size_t j = (size_t)(v * 0x9E3779B97F4A7C15ULL) & (s->cap - 1);
	while (s->slots[j]) {
		if (s->slots[j] == v)
			return true;
		j = (j + 1) & (s->cap - 1);
	}
	return false;
}

void set_free(struct u64set *s)
{
	free(s->slots);
	s->slots = NULL, s->cap = s->n = 0;
}

bool set_insert(struct u64set *s, uint64_t v)
{
	if (v == 0)
		return false;
	if ((s->n + 1) * 2 > s->cap) {
		size_t ncap = s->cap ? s->cap * 2 : 1024;
		uint64_t *ns = calloc(ncap, sizeof(*ns));
		if (!ns)
			return false;
		for (size_t i = 0; i < s->cap; i++) {
			if (!s->slots[i])
				continue;
			size_t j = (size_t)(s->slots[i] * 0x9E3779B97F4A7C15ULL) & (ncap - 1);
			while (ns[j])
				j = (j + 1) & (ncap - 1);
			ns[j] = s->slots[i];
		}
		free(s->slots);
		s->slots = ns, s->cap = ncap;
	}
	size_t j = (size_t)(v * 0x9E3779B97F4A7C15ULL) & (s->cap - 1);
	while (s->slots[j]) {
		if (s->slots[j] == v)
			return false;
		j = (j + 1) & (s->cap - 1);
	}
	s->slots[j] = v;
	s->n++;
	return true;
}

/* ---- pointer lists ---- */

struct ptr {
	uint64_t bytenr, gen, parent;
	struct bf_key key;
	uint32_t slot;
};

struct ptrs {
	struct ptr *v;
	size_t n, cap;
};

static bool ptrs_push(struct ptrs *l, const struct ptr *p)
{
	if (l->n == l->cap) {
		size_t ncap = l->cap ? l->cap * 2 : 64;
		struct ptr *nv = realloc(l->v, ncap * sizeof(*nv));
		if (!nv)
			return false;
		l->v = nv, l->cap = ncap;
	}
	l->v[l->n++] = *p;
	return true;
}

void walk_diagnose(struct insp_fs *fs, uint64_t bytenr, const struct bf_block_expect *exp, char *why, size_t len)
{
	struct bf_fsinfo *fi = fs->fi;
	int copies = bf_vol_num_copies(&fi->vol, bytenr);
	size_t used = 0;
	why[0] = 0;
	if (copies <= 0) {
		snprintf(why, len, "address %llu is not in any chunk", (unsigned long long)bytenr);
		return;
	}
	uint8_t *buf = malloc(fi->nodesize);
	if (!buf) {
		snprintf(why, len, "out of memory");
		return;
	}
	for (int m = 1; m <= copies && used + 1 < len; m++) {
		char one[512];
		int r = bf_vol_read(&fi->vol, bytenr, buf, fi->nodesize, m);
		if (r)
			snprintf(one, sizeof(one), "read failed (%s)", strerror(-r));
		else if (bf_block_check(&fi->env, bytenr, buf, exp, one, sizeof(one)) == 0)
			snprintf(one, sizeof(one), "valid (the cached copy was refused for this parent)");
		int w = snprintf(why + used, len - used, "%smirror %d: %s", m > 1 ? "; " : "", m, one);
		if (w < 0)
			break;
		used += (size_t)w < len - used ? (size_t)w : len - used - 1;
	}
	free(buf);
}

/* Read one block and report it; push its children (when wanted) to next. */
static void visit(struct insp_fs *fs, const struct bf_root *root, const struct ptr *p, int level, int depth,
		  bool descend, struct ptrs *next, walk_cb cb, void *ctx)
{
	struct bf_block_expect exp = { p->gen, level, p->parent ? &p->key : NULL, 0 };
	struct walk_block wb = { .bytenr = p->bytenr, .tree = root->objectid, .level = level, .depth = depth,
				 .parent = p->parent, .slot = p->slot, .first_key = p->key };
	struct bf_block *b = NULL;
	char why[1024];
	int r = bf_block_read(&fs->fi->env, p->bytenr, &exp, &b);
	if (r) {
		walk_diagnose(fs, p->bytenr, &exp, why, sizeof(why));
		wb.err = r, wb.why = why;
		cb(ctx, &wb);
		return;
	}
	wb.b = b;
	descend = cb(ctx, &wb) && descend;
	for (uint32_t i = 0; descend && b->level > 0 && i < b->nritems; i++) {
		struct ptr c = { bf_node_blockptr(b, i), bf_node_ptr_gen(b, i), b->bytenr, bf_node_key(b, i), i };
		if (!ptrs_push(next, &c))
			break;
	}
	bf_block_put(&fs->fi->env, b);
}

size_t walk_tree(struct insp_fs *fs, const struct bf_root *root, const struct walk_opts *o, walk_cb cb, void *ctx)
{
	struct ptrs cur = { 0 }, next = { 0 };
	struct u64set seen = { 0 };
	size_t max = o && o->max_blocks ? o->max_blocks : DEFAULT_MAX_BLOCKS, count = 0;
	int max_depth = o ? o->max_depth : -1;
	struct ptr rp = { root->bytenr, root->generation, 0, { 0, 0, 0 }, 0 };
	ptrs_push(&cur, &rp);
	int level = root->level;
	for (int depth = 0; cur.n && level >= 0 && level < BF_MAX_LEVEL; depth++, level--) {
		bool descend = max_depth < 0 || depth < max_depth;
		next.n = 0;
		for (size_t i = 0; i < cur.n && count < max; i++) {
			if (!set_insert(&seen, cur.v[i].bytenr)) {
				struct walk_block wb = { .bytenr = cur.v[i].bytenr, .tree = root->objectid,
							 .level = level, .depth = depth, .parent = cur.v[i].parent,
							 .slot = cur.v[i].slot, .first_key = cur.v[i].key,
							 .err = -ELOOP, .why = "pointer to a block already visited in this "
									       "tree (loop or duplicate pointer)" };
				cb(ctx, &wb);
				continue;
			}
			count++;
			visit(fs, root, &cur.v[i], level, depth, descend, &next, cb, ctx);
		}
		struct ptrs t = cur;
		cur = next, next = t;
	}
	free(cur.v);
	free(next.v);
	set_free(&seen);
	return count;
}

/* ---- every root, in dump-tree's order ---- */

struct root_list {
	struct bf_key *keys;
	struct bf_root *roots;
	size_t n, cap;
};

static bool collect_root_items(void *ctx, const struct walk_block *wb)
{
	struct root_list *l = ctx;
	if (!wb->b || wb->b->level != 0)
		return true;
	for (uint32_t i = 0; i < wb->b->nritems; i++) {
		struct bf_key k = bf_leaf_key(wb->b, i);
		uint32_t size;
		const uint8_t *data = bf_leaf_item(wb->b, i, &size);
		struct bf_root_item ri;
		if (k.type != BF_ROOT_ITEM_KEY || size < BF_ROOT_ITEM_LEGACY_SIZE)
			continue;
		memset(&ri, 0, sizeof(ri));
		memcpy(&ri, data, size < sizeof(ri) ? size : sizeof(ri));
		if (l->n == l->cap) {
			size_t ncap = l->cap ? l->cap * 2 : 32;
			struct bf_key *nk = realloc(l->keys, ncap * sizeof(*nk));
			if (!nk)
				return false;
			l->keys = nk;
			struct bf_root *nr = realloc(l->roots, ncap * sizeof(*nr));
			if (!nr)
				return false;
			l->roots = nr, l->cap = ncap;
		}
		l->keys[l->n] = k;
		l->roots[l->n] = (struct bf_root){ k.objectid, get64(ri.bytenr), get64(ri.generation), ri.level };
		l->n++;
	}
	return true;
}

static void roots_of(struct insp_fs *fs, const struct bf_root *tree, roots_cb cb, void *ctx)
{
	struct root_list l = { 0 };
	walk_tree(fs, tree, NULL, collect_root_items, &l);
	for (size_t i = 0; i < l.n; i++)
		cb(ctx, &l.roots[i], &l.keys[i]);
	free(l.keys);
	free(l.roots);
}

static void roots_walk(struct insp_fs *fs, const struct bf_root *tree_root, const struct bf_root *chunk_root,
		       const struct bf_root *log, roots_cb cb, void *ctx)
{
	struct bf_key k = { BF_ROOT_TREE_OBJECTID, 0, 0 };
	cb(ctx, tree_root, &k);
	k.objectid = BF_CHUNK_TREE_OBJECTID;
	cb(ctx, chunk_root, &k);
	if (log) {
		k.objectid = BF_TREE_LOG_OBJECTID;
		cb(ctx, log, &k);
	}
	roots_of(fs, tree_root, cb, ctx);
	if (log)
		roots_of(fs, log, cb, ctx);
}

void walk_all_roots(struct insp_fs *fs, roots_cb cb, void *ctx)
{
	struct bf_root log;
	bool has_log = insp_tree_root(fs, BF_TREE_LOG_OBJECTID, &log) == 0;
	roots_walk(fs, &fs->fi->tree_root, &fs->fi->chunk_root, has_log ? &log : NULL, cb, ctx);
}

void walk_roots_from(struct insp_fs *fs, const struct bf_root *tree_root, const struct bf_root *chunk_root,
		     roots_cb cb, void *ctx)
{
	roots_walk(fs, tree_root, chunk_root, NULL, cb, ctx);
}
