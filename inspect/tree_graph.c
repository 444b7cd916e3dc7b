/*
 * inspect/tree_graph.c - `tree-graph`: a picture of one tree.
 *
 * Owns: the tree-graph subcommand.
 *
 * Key idea: the tree is walked breadth first to the requested depth (walk.c) and each block becomes one dot
 * node (dot.c): internal nodes with their level, generation, pointer count and key range, leaves with their
 * item count and fill (used bytes / nodesize, also shown as the shade of blue), unreadable blocks in red with
 * the reason. Edges carry the parent's slot number. The dot text is rendered to SVG by Graphviz.
 */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "inspect/inspect.h"
#include "util/util.h"

struct graph {
	struct insp_fs *fs;
	FILE *f;
	size_t blocks, bad;
};

static bool on_block(void *ctx, const struct walk_block *wb)
{
	struct graph *g = ctx;
	char fill[16];
	dot_fill_colour(wb->b, g->fs->ctx.nodesize, fill, sizeof(fill));
	dot_block_node(g->f, g->fs->ctx.nodesize, wb, fill, NULL);
	g->blocks++;
	g->bad += wb->b == NULL;
	return true;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: btrfs-fuse-inspect tree-graph IMAGE... -t TREE [--depth N] [--format svg|dot] [-o FILE]\n"
		   "Draw one tree: nodes with their key ranges, leaves with item counts and fill.\n"
		   "  -t, --tree TREE     root, extent, chunk, dev, fs, csum, free-space, uuid, log, quota or a number\n"
		   "  -d, --depth N       only blocks at most N levels below the root (0: the root alone)\n"
		   "  -f, --format FMT    svg (default; needs Graphviz 'dot') or dot\n"
		   "  -o, --output FILE   write there instead of standard output\n");
}

int cmd_tree_graph(int argc, char **argv)
{
	static const struct option opts[] = { { "tree", required_argument, NULL, 't' },
					       { "depth", required_argument, NULL, 'd' },
					       { "format", required_argument, NULL, 'f' },
					       { "output", required_argument, NULL, 'o' },
					       { "verbose", no_argument, NULL, 'v' },
					       { "help", no_argument, NULL, 'h' },
					       { NULL, 0, NULL, 0 } };
	uint64_t tree = 0, depth = UINT64_MAX;
	const char *format = "svg", *out = NULL;
	int c;
	while ((c = getopt_long(argc, argv, "t:d:f:o:vh", opts, NULL)) != -1) {
		switch (c) {
		case 't':
			if (!(tree = tree_id_from_string(optarg)))
				return insp_err("unknown tree '%s'", optarg), 2;
			break;
		case 'd':
			if (!insp_parse_u64(optarg, &depth))
				return insp_err("bad --depth '%s'", optarg), 2;
			break;
		case 'f':
			format = optarg;
			break;
		case 'o':
			out = optarg;
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
	if (strcmp(format, "svg") && strcmp(format, "dot"))
		return insp_err("--format must be svg or dot"), 2;
	if (!tree || optind >= argc)
		return usage(stderr), 2;
	struct insp_fs fs;
	if (insp_open((const char *const *)argv + optind, argc - optind, &fs))
		return 1;
	struct bf_root root;
	int r = insp_tree_root(&fs, tree, &root);
	if (r) {
		insp_err("cannot find tree %llu: %s", (unsigned long long)tree, strerror(r > 0 ? ENOENT : -r));
		insp_close(&fs);
		return 1;
	}
	struct membuf m;
	if (membuf_open(&m)) {
		insp_close(&fs);
		return 1;
	}
	struct graph g = { &fs, m.f, 0, 0 };
	char name[INSP_NAME_LEN];
	name_objectid(name, sizeof(name), tree, 0);
	fprintf(m.f, "digraph \"tree %llu\" {\n  label=\"tree %s (%llu), root %llu, level %u\";\n  labelloc=t;\n"
		     "  node [shape=box, style=filled, fontname=\"monospace\", fontsize=10];\n"
		     "  edge [fontsize=8, arrowsize=0.6];\n",
		(unsigned long long)tree, name, (unsigned long long)tree, (unsigned long long)root.bytenr, root.level);
	struct walk_opts wo = { depth > BF_MAX_LEVEL ? -1 : (int)depth, 0 };
	walk_tree(&fs, &root, &wo, on_block, &g);
	fputs("}\n", m.f);
	membuf_close(&m);
	r = dot_output(m.data, m.len, format, out);
	membuf_free(&m);
	insp_close(&fs);
	if (g.bad)
		insp_err("%zu of %zu blocks could not be read (drawn in red)", g.bad, g.blocks);
	return r || g.bad ? 1 : 0;
}
