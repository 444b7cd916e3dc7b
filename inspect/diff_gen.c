/*
 * inspect/diff_gen.c - `diff-gen`: which tree blocks a change rewrote, between two images or between an
 * image's current root and one of its backup roots.
 *
 * Owns: the diff-gen subcommand: walking both sides, classifying B's blocks, the picture and the summary.
 *
 * Key idea: btrfs never changes a tree block in place: a transaction copies (COWs) every block it touches and
 * the new copy gets a new address, up to a new root. So a block of B whose address and generation also appear
 * in A's trees is unchanged, and so is its whole subtree (it is drawn once, grey, and not opened); a block
 * that sits where A had a block (same tree, same level, overlapping key range) is a COWed copy of it; anything
 * else is new (a split, or a tree A did not have). Blocks of A that B no longer references were freed.
 * A's blocks are indexed by address and by (tree, level, first key) so each lookup is a binary search.
 */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "inspect/inspect.h"
#include "util/util.h"

enum cls { SHARED, COWED, NEW, BAD, NCLS };
static const char *const cls_name[NCLS] = { "shared", "COWed", "new", "unreadable" };
static const char *const cls_colour[NCLS] = { "#d9d9d9", "#ffa64d", "#7fd67f", "#ff8080" };

struct blk {
	uint64_t tree, bytenr, gen;
	int level;
	struct bf_key first, last;
};

struct side {
	struct insp_fs fs;
	struct blk *v;
	size_t n, cap;
	size_t *by_pos; /* indexes of v sorted by (tree, level, first key) */
	uint64_t only_tree;
	size_t unreadable; /* blocks of this side that could not be read */
};

struct tree_count {
	uint64_t tree;
	size_t n[NCLS], freed;
};

struct diff {
	struct side a, b;
	FILE *dot, *txt;
	struct u64set shared; /* B blocks found shared: their children are too */
	struct u64set b_all;  /* every bytenr of B */
	struct tree_count *tc;
	size_t ntc;
	bool list;
};

/* ---- side A: collect ---- */

static struct blk blk_of(const struct walk_block *wb)
{
	struct blk x = { wb->tree, wb->bytenr, 0, wb->level, wb->first_key, wb->first_key };
	const struct bf_block *b = wb->b;
	if (b && b->nritems) {
		x.gen = b->generation, x.level = b->level;
		x.first = b->level ? bf_node_key(b, 0) : bf_leaf_key(b, 0);
		x.last = b->level ? bf_node_key(b, b->nritems - 1) : bf_leaf_key(b, b->nritems - 1);
	} else if (b) {
		x.gen = b->generation, x.level = b->level;
	}
	return x;
}

static bool collect(void *ctx, const struct walk_block *wb)
{
	struct side *s = ctx;
	if (!wb->b) {
		s->unreadable++;
		return true;
	}
	if (s->n == s->cap) {
		size_t ncap = s->cap ? s->cap * 2 : 256;
		struct blk *nv = realloc(s->v, ncap * sizeof(*nv));
		if (!nv)
			return false;
		s->v = nv, s->cap = ncap;
	}
	s->v[s->n++] = blk_of(wb);
	return true;
}

static void collect_root(void *ctx, const struct bf_root *root, const struct bf_key *key)
{
	struct side *s = ctx;
	if (s->only_tree && key->objectid != s->only_tree)
		return;
	struct bf_root r = *root;
	r.objectid = key->objectid;
	walk_tree(&s->fs, &r, NULL, collect, s);
}

static const struct blk *pos_base;

static int cmp_pos(const void *x, const void *y)
{
	const struct blk *a = &pos_base[*(const size_t *)x], *b = &pos_base[*(const size_t *)y];
	if (a->tree != b->tree)
		return a->tree < b->tree ? -1 : 1;
	if (a->level != b->level)
		return a->level < b->level ? -1 : 1;
	return bf_key_cmp(&a->first, &b->first);
}

static int cmp_bytenr(const void *x, const void *y)
{
	const struct blk *a = x, *b = y;
	return a->bytenr < b->bytenr ? -1 : a->bytenr > b->bytenr;
}

static int index_side(struct side *s)
{
	if (s->n) /* qsort and bsearch need a real array even for 0 elements */
		qsort(s->v, s->n, sizeof(*s->v), cmp_bytenr);
	s->by_pos = malloc((s->n ? s->n : 1) * sizeof(size_t));
	if (!s->by_pos)
		return -ENOMEM;
	for (size_t i = 0; i < s->n; i++)
		s->by_pos[i] = i;
	pos_base = s->v;
	if (s->n)
		qsort(s->by_pos, s->n, sizeof(size_t), cmp_pos);
	return 0;
}

static const struct blk *find_bytenr(const struct side *s, uint64_t bytenr)
{
	struct blk key = { .bytenr = bytenr };
	return s->n ? bsearch(&key, s->v, s->n, sizeof(*s->v), cmp_bytenr) : NULL;
}

/* The block of A at the same place: same tree and level, key range overlapping x's. */
static const struct blk *find_position(const struct side *s, const struct blk *x)
{
	size_t lo = 0, hi = s->n;
	while (lo < hi) { /* first index whose (tree, level, first) is above (x.tree, x.level, x.last) */
		size_t mid = lo + (hi - lo) / 2;
		const struct blk *m = &s->v[s->by_pos[mid]];
		int c = m->tree != x->tree ? (m->tree < x->tree ? -1 : 1)
		      : m->level != x->level ? (m->level < x->level ? -1 : 1)
					     : bf_key_cmp(&m->first, &x->last);
		if (c <= 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0)
		return NULL;
	const struct blk *m = &s->v[s->by_pos[lo - 1]];
	if (m->tree != x->tree || m->level != x->level || bf_key_cmp(&m->last, &x->first) < 0)
		return NULL;
	return m;
}

/* ---- side B: classify, draw, count ---- */

static struct tree_count *count_of(struct diff *d, uint64_t tree)
{
	for (size_t i = 0; i < d->ntc; i++)
		if (d->tc[i].tree == tree)
			return &d->tc[i];
	struct tree_count *n = realloc(d->tc, (d->ntc + 1) * sizeof(*n));
	if (!n)
		return NULL;
	d->tc = n;
	memset(&n[d->ntc], 0, sizeof(n[0]));
	n[d->ntc].tree = tree;
	return &n[d->ntc++];
}

static bool classify(void *ctx, const struct walk_block *wb)
{
	struct diff *d = ctx;
	struct tree_count *tc = count_of(d, wb->tree);
	struct blk x = blk_of(wb);
	const struct blk *old = NULL;
	enum cls c;
	set_insert(&d->b_all, wb->bytenr);
	if (wb->parent && set_has(&d->shared, wb->parent)) {
		set_insert(&d->shared, wb->bytenr); /* inside an unchanged subtree: counted, not drawn */
		if (tc)
			tc->n[SHARED]++;
		return true;
	}
	if (!wb->b) {
		c = BAD;
	} else if ((old = find_bytenr(&d->a, wb->bytenr)) && old->gen == x.gen) {
		c = SHARED;
		set_insert(&d->shared, wb->bytenr);
	} else {
		old = find_position(&d->a, &x);
		c = old ? COWED : NEW;
	}
	if (tc)
		tc->n[c]++;
	char note[96] = "";
	if (c == COWED)
		snprintf(note, sizeof(note), "COW of %llu (gen %llu)", (unsigned long long)old->bytenr,
			 (unsigned long long)old->gen);
	else if (c != BAD)
		snprintf(note, sizeof(note), "%s", c == SHARED ? "unchanged subtree" : "new");
	dot_block_node(d->dot, d->b.fs.ctx.nodesize, wb, cls_colour[c], note);
	if (d->list && c != SHARED)
		fprintf(d->txt, "  %-10s %s %llu tree %llu level %d gen %llu%s%s\n", cls_name[c],
			wb->b && wb->b->level == 0 ? "leaf" : "node", (unsigned long long)wb->bytenr,
			(unsigned long long)wb->tree, x.level, (unsigned long long)x.gen, note[0] ? ": " : "", note);
	return true;
}

static void classify_root(void *ctx, const struct bf_root *root, const struct bf_key *key)
{
	struct diff *d = ctx;
	char name[INSP_NAME_LEN];
	if (d->b.only_tree && key->objectid != d->b.only_tree)
		return;
	name_objectid(name, sizeof(name), key->objectid, 0);
	fprintf(d->dot, " subgraph \"cluster_%llu_%llu\" {\n  label=\"tree %s\";\n", (unsigned long long)key->objectid,
		(unsigned long long)key->offset, name);
	struct bf_root r = *root;
	r.objectid = key->objectid;
	walk_tree(&d->b.fs, &r, NULL, classify, d);
	fputs(" }\n", d->dot);
}

static void count_freed(struct diff *d)
{
	for (size_t i = 0; i < d->a.n; i++) {
		if (set_has(&d->b_all, d->a.v[i].bytenr))
			continue;
		struct tree_count *tc = count_of(d, d->a.v[i].tree);
		if (tc)
			tc->freed++;
	}
}

static void legend(FILE *f)
{
	fputs(" subgraph cluster_legend {\n  label=\"legend\";\n", f);
	for (int c = 0; c < NCLS; c++)
		fprintf(f, "  legend%d [label=\"%s\", fillcolor=\"%s\"];\n", c, cls_name[c], cls_colour[c]);
	fputs("  legend0 -> legend1 -> legend2 -> legend3 [style=invis];\n }\n", f);
}

static void summary(struct diff *d)
{
	size_t tot[NCLS] = { 0 }, freed = 0;
	fprintf(d->txt, "%-18s %8s %8s %8s %8s %8s\n", "tree", "shared", "COWed", "new", "bad", "freed");
	for (size_t i = 0; i < d->ntc; i++) {
		char name[INSP_NAME_LEN];
		const struct tree_count *t = &d->tc[i];
		name_objectid(name, sizeof(name), t->tree, 0);
		fprintf(d->txt, "%-18s %8zu %8zu %8zu %8zu %8zu\n", name, t->n[SHARED], t->n[COWED], t->n[NEW],
			t->n[BAD], t->freed);
		for (int c = 0; c < NCLS; c++)
			tot[c] += t->n[c];
		freed += t->freed;
	}
	fprintf(d->txt, "%-18s %8zu %8zu %8zu %8zu %8zu\n", "total", tot[SHARED], tot[COWED], tot[NEW], tot[BAD],
		freed);
	if (d->a.unreadable)
		fprintf(d->txt, "note: %zu block(s) of the old side could not be read (for a backup root: overwritten "
				"since; their subtrees are missing from the comparison)\n", d->a.unreadable);
}

/* ---- the two sides ---- */

static int backup_roots(struct side *s, int slot, struct bf_root *tree, struct bf_root *chunk)
{
	const struct bf_root_backup *b = &s->fs.fi->super.super_roots[slot];
	if (!get64(b->tree_root)) {
		insp_err("backup root slot %d is empty", slot);
		return -ENOENT;
	}
	*tree = (struct bf_root){ BF_ROOT_TREE_OBJECTID, get64(b->tree_root), get64(b->tree_root_gen),
				  b->tree_root_level };
	*chunk = (struct bf_root){ BF_CHUNK_TREE_OBJECTID, get64(b->chunk_root), get64(b->chunk_root_gen),
				   b->chunk_root_level };
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: btrfs-fuse-inspect diff-gen A B [options]\n"
		   "       btrfs-fuse-inspect diff-gen IMAGE... --backup N [options]\n"
		   "Show which tree blocks of B (or of IMAGE's current trees) are shared with A (or with backup\n"
		   "root N, 0-3, see dump-super), COWed copies of A's blocks at the same place, or new.\n"
		   "  -b, --backup N      compare the current trees with the superblock's backup root N\n"
		   "  -t, --tree TREE     only this tree (default: all trees)\n"
		   "  -f, --format FMT    svg or dot: draw B's trees coloured by class, with a legend\n"
		   "  -o, --output FILE   where the picture goes (default: standard output; the text summary then\n"
		   "                      goes to standard error)\n"
		   "  -l, --list          list every COWed and new block in the summary\n"
		   "Without --format only the text summary is printed. Unchanged subtrees are drawn as one block.\n");
}

static void free_side(struct side *s)
{
	free(s->v);
	free(s->by_pos);
}

static int run(struct diff *d, const char *format, const char *out, int slot, char **imgs, int nimg)
{
	struct bf_root tree, chunk;
	struct membuf m;
	int r;
	if (slot >= 0) {
		if (insp_open((const char *const *)imgs, nimg, &d->b.fs))
			return 1;
		d->a.fs = d->b.fs; /* one filesystem, two sets of roots */
		if ((r = backup_roots(&d->a, slot, &tree, &chunk)))
			goto out;
		walk_roots_from(&d->a.fs, &tree, &chunk, collect_root, &d->a);
	} else {
		if (insp_open((const char *const *)imgs, 1, &d->a.fs))
			return 1;
		walk_all_roots(&d->a.fs, collect_root, &d->a);
		insp_close(&d->a.fs);
		if (insp_open((const char *const *)imgs + 1, 1, &d->b.fs))
			return 1;
	}
	if ((r = index_side(&d->a)) || (r = membuf_open(&m)))
		goto out;
	d->dot = m.f;
	fputs("digraph diff {\n compound=true; rankdir=TB;\n node [shape=box, style=filled, fontname=\"monospace\", "
	      "fontsize=10];\n edge [fontsize=8, arrowsize=0.6];\n", m.f);
	walk_all_roots(&d->b.fs, classify_root, d);
	legend(m.f);
	fputs("}\n", m.f);
	membuf_close(&m);
	count_freed(d);
	summary(d);
	if (format)
		r = dot_output(m.data, m.len, format, out);
	membuf_free(&m);
out:
	insp_close(&d->b.fs);
	return r ? 1 : 0;
}

int cmd_diff_gen(int argc, char **argv)
{
	static const struct option opts[] = { { "backup", required_argument, NULL, 'b' },
					       { "tree", required_argument, NULL, 't' },
					       { "format", required_argument, NULL, 'f' },
					       { "output", required_argument, NULL, 'o' },
					       { "list", no_argument, NULL, 'l' },
					       { "verbose", no_argument, NULL, 'v' },
					       { "help", no_argument, NULL, 'h' },
					       { NULL, 0, NULL, 0 } };
	struct diff d = { 0 };
	const char *format = NULL, *out = NULL;
	uint64_t slot = UINT64_MAX, tree = 0;
	int c;
	while ((c = getopt_long(argc, argv, "b:t:f:o:lvh", opts, NULL)) != -1) {
		switch (c) {
		case 'b':
			if (!insp_parse_u64(optarg, &slot) || slot >= BF_NUM_BACKUP_ROOTS)
				return insp_err("--backup takes a slot number 0-3"), 2;
			break;
		case 't':
			if (!(tree = tree_id_from_string(optarg)))
				return insp_err("unknown tree '%s'", optarg), 2;
			break;
		case 'f':
			format = optarg;
			break;
		case 'o':
			out = optarg;
			break;
		case 'l':
			d.list = true;
			break;
		case 'v':
			bf_log_set_verbosity(BF_LOG_DEBUG);
			break;
		case 'h':
			return usage(stdout), 0;
		default:
			return usage(stderr), 2;
		}
	}
	int nimg = argc - optind;
	if (format && strcmp(format, "svg") && strcmp(format, "dot"))
		return insp_err("--format must be svg or dot"), 2;
	if (nimg < 1 || (slot == UINT64_MAX && nimg != 2))
		return usage(stderr), 2;
	d.a.only_tree = d.b.only_tree = tree;
	d.txt = format && (!out || !strcmp(out, "-")) ? stderr : stdout;
	int rc = run(&d, format, out, slot == UINT64_MAX ? -1 : (int)slot, argv + optind, nimg);
	free_side(&d.a);
	free_side(&d.b);
	set_free(&d.shared);
	set_free(&d.b_all);
	free(d.tc);
	return rc;
}
