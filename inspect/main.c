/*
 * inspect/main.c - btrfs-fuse-inspect: look inside an unmounted btrfs image (set).
 *
 * Owns: dispatch to the subcommands, the global help and version, and the small option helpers the
 * subcommands share.
 *
 * Key idea: each subcommand is one file with its own getopt_long loop and --help; main only picks it by name.
 * The core's log lines are off unless a subcommand is given -v, because the inspector reports damage itself,
 * next to the block it concerns.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "inspect/inspect.h"
#include "util/util.h"

#ifndef BF_VERSION
#define BF_VERSION "unknown"
#endif

struct subcommand {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *summary;
};

static const struct subcommand commands[] = {
	{ "dump-super", cmd_dump_super, "every superblock field, flags named, system chunks, backup roots" },
	{ "dump-tree", cmd_dump_tree, "every node and item of the trees (progs layout, or --json)" },
	{ "map", cmd_map, "a file's extents -> logical -> physical on each device and mirror, checksums" },
	{ "tree-graph", cmd_tree_graph, "a picture of a tree (Graphviz dot or SVG)" },
	{ "diff-gen", cmd_diff_gen, "which tree blocks changed between two images or a backup root" },
};
#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

void insp_err(const char *fmt, ...)
{
	va_list ap;
	fflush(stdout);
	fputs("btrfs-fuse-inspect: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

bool insp_parse_u64(const char *s, uint64_t *out)
{
	char *end;
	if (!s || !*s || *s == '-' || *s == '+' || *s == ' ')
		return false;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 0);
	if (errno || *end)
		return false;
	*out = v;
	return true;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: btrfs-fuse-inspect COMMAND [options] IMAGE...\n"
		   "Inspect an unmounted btrfs image or set of device images, read-only.\n\ncommands:\n");
	for (size_t i = 0; i < NCOMMANDS; i++)
		fprintf(f, "  %-11s %s\n", commands[i].name, commands[i].summary);
	fprintf(f, "\n'btrfs-fuse-inspect COMMAND --help' describes each command; see also btrfs-fuse-inspect(1).\n");
}

int main(int argc, char **argv)
{
	/* the inspector reports damage itself; the core's messages come with -v */
	bf_log_set_verbosity((enum bf_log_level)(BF_LOG_ERR - 1));
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
		usage(stdout);
		return 0;
	}
	if (!strcmp(argv[1], "-V") || !strcmp(argv[1], "--version")) {
		printf("btrfs-fuse-inspect %s\n", BF_VERSION);
		return 0;
	}
	for (size_t i = 0; i < NCOMMANDS; i++)
		if (!strcmp(argv[1], commands[i].name))
			return commands[i].fn(argc - 1, argv + 1);
	insp_err("unknown command '%s'", argv[1]);
	usage(stderr);
	return 2;
}
