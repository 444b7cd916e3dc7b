/*
 * inspect/dump_tree.c - `dump-tree`: every block and item of one tree or of all trees, as text or JSON.
 *
 * Owns: the dump-tree subcommand: choosing the trees (-t), single blocks (--block), the block header lines, the
 * item lines, and the JSON document (an array with one object per block).
 *
 * Key idea: the text is laid out as `btrfs inspect-internal dump-tree` (btrfs-progs 6.2) lays it out - same
 * tree order (root tree, chunk tree, log root tree, then each ROOT_ITEM of the root tree), same breadth-first
 * block order, same header and item lines - so the two outputs can be compared item for item. A block that
 * does not verify is shown as one "ERROR: tree block ..." line with the reason for each mirror.
 */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "inspect/inspect.h"
#include "util/util.h"

#define HDR_SIZE ((uint32_t)sizeof(struct bf_header))

struct dump {
	struct insp_fs *fs;
	struct emit e;
	uint64_t only_tree; /* 0: all */
	bool found;
	int bad_blocks;
};

/* ---- one block ---- */

static uint32_t leaf_free_space(const struct dump *d, const struct bf_block *b)
{
	uint32_t data_size = d->fs->ctx.nodesize - HDR_SIZE, size;
	if (b->nritems == 0)
		return data_size;
	const uint8_t *last = bf_leaf_item(b, b->nritems - 1, &size);
	uint32_t off_last = (uint32_t)(last - (b->data + HDR_SIZE));
	return data_size - (data_size - off_last) - b->nritems * (uint32_t)sizeof(struct bf_item);
}

static void block_header(struct dump *d, const struct bf_block *b)
{
	struct emit *e = &d->e;
	const struct bf_header *h = (const struct bf_header *)b->data;
	uint64_t raw = get64(h->flags), flags = raw & ~(0xffULL << BF_BACKREF_REV_SHIFT);
	unsigned rev = (unsigned)(raw >> BF_BACKREF_REV_SHIFT);
	char owner[INSP_NAME_LEN], fl[32], fsid[37], cuuid[37];
	const char *kind = b->level ? "node" : "leaf";
	name_objectid(owner, sizeof(owner), b->owner, 0);
	name_header_flags(fl, sizeof(fl), flags);
	bf_uuid_str(h->fsid, fsid);
	bf_uuid_str(h->chunk_tree_uuid, cuuid);
	uint32_t free_space = b->level ? (d->fs->ctx.nodesize - HDR_SIZE) / (uint32_t)sizeof(struct bf_key_ptr) -
						b->nritems
				       : leaf_free_space(d, b);
	if (!e->json) {
		if (b->level)
			fprintf(e->f, "node %llu level %u items %u free space %u generation %llu owner %s\n",
				(unsigned long long)b->bytenr, b->level, b->nritems, free_space,
				(unsigned long long)b->generation, owner);
		else
			fprintf(e->f, "leaf %llu items %u free space %u generation %llu owner %s\n",
				(unsigned long long)b->bytenr, b->nritems, free_space,
				(unsigned long long)b->generation, owner);
		fprintf(e->f, "%s %llu flags 0x%llx(%s) backref revision %u\n", kind, (unsigned long long)b->bytenr,
			(unsigned long long)flags, fl, rev);
		fprintf(e->f, "fs uuid %s\nchunk uuid %s\n", fsid, cuuid);
		return;
	}
	em_str(e, "kind", kind);
	em_u64(e, "bytenr", b->bytenr);
	em_u64(e, "level", b->level);
	em_u64(e, "items|nritems", b->nritems);
	em_u64(e, "free space", free_space);
	em_u64(e, "generation", b->generation);
	em_flagstr(e, "owner", b->owner, owner);
	em_flags(e, "flags", flags, fl);
	em_u64(e, "backref revision", rev);
	em_str(e, "fs uuid", fsid);
	em_str(e, "chunk uuid", cuuid);
	char csum[2 * BF_CSUM_MAX + 1];
	bf_csum_hex(d->fs->ctx.csum_type, h->csum, csum, sizeof(csum));
	em_str(e, "csum", csum);
}

static void node_ptrs(struct dump *d, const struct bf_block *b)
{
	struct emit *e = &d->e;
	em_arr_begin(e, "ptrs");
	for (uint32_t i = 0; i < b->nritems; i++) {
		struct bf_key k = bf_node_key(b, i);
		em_obj_begin(e, NULL);
		e->indent = 1;
		em_keyf(e, "|key", k.objectid, k.type, k.offset);
		em_u64(e, "block|blockptr", bf_node_blockptr(b, i));
		em_u64(e, "gen|generation", bf_node_ptr_gen(b, i));
		em_nl(e);
		em_obj_end(e);
	}
	em_arr_end(e);
}

static void leaf_items(struct dump *d, const struct bf_block *b)
{
	struct emit *e = &d->e;
	em_arr_begin(e, "items");
	for (uint32_t i = 0; i < b->nritems; i++) {
		struct bf_key k = bf_leaf_key(b, i);
		uint32_t size;
		const uint8_t *data = bf_leaf_item(b, i, &size);
		em_obj_begin(e, NULL);
		e->indent = 1;
		em_u64(e, "item|slot", i);
		em_keyf(e, "|key", k.objectid, k.type, k.offset);
		em_u64(e, "itemoff", (uint64_t)(data - (b->data + HDR_SIZE)));
		em_u64(e, "itemsize", size);
		em_nl(e);
		e->indent = 2;
		decode_item(e, &d->fs->ctx, &k, data, size);
		em_obj_end(e);
	}
	em_arr_end(e);
}

static void print_block(struct dump *d, const struct bf_block *b, uint64_t tree)
{
	struct emit *e = &d->e;
	em_obj_begin(e, NULL);
	em_ju64(e, "tree", tree);
	block_header(d, b);
	if (b->level)
		node_ptrs(d, b);
	else
		leaf_items(d, b);
	em_obj_end(e);
	fflush(e->f);
}

static void print_bad(struct dump *d, const struct walk_block *wb)
{
	struct emit *e = &d->e;
	char key[INSP_NAME_LEN];
	d->bad_blocks++;
	name_key(key, sizeof(key), wb->first_key.objectid, wb->first_key.type, wb->first_key.offset);
	if (!e->json) {
		fprintf(e->f, "ERROR: tree block %llu (tree %llu, level %d", (unsigned long long)wb->bytenr,
			(unsigned long long)wb->tree, wb->level);
		if (wb->parent)
			fprintf(e->f, ", parent %llu slot %u key %s", (unsigned long long)wb->parent, wb->slot, key);
		fprintf(e->f, "): %s\n", wb->why);
		return;
	}
	em_obj_begin(e, NULL);
	em_u64(e, "tree", wb->tree);
	em_u64(e, "bytenr", wb->bytenr);
	em_u64(e, "level", (uint64_t)wb->level);
	em_u64(e, "parent", wb->parent);
	em_u64(e, "slot", wb->slot);
	em_i64(e, "errno", -wb->err);
	em_str(e, "error", wb->why);
	em_obj_end(e);
}

static bool on_block(void *ctx, const struct walk_block *wb)
{
	struct dump *d = ctx;
	if (wb->b)
		print_block(d, wb->b, wb->tree);
	else
		print_bad(d, wb);
	return true;
}

/* ---- trees ---- */

static void dump_one_tree(struct dump *d, const struct bf_root *root, const struct bf_key *key)
{
	struct emit *e = &d->e;
	if (key->type == 0) {
		const char *what = key->objectid == BF_ROOT_TREE_OBJECTID    ? "root tree"
				   : key->objectid == BF_CHUNK_TREE_OBJECTID ? "chunk tree"
				   : key->objectid == BF_TREE_LOG_OBJECTID   ? "log root tree"
									     : "block group tree";
		em_line(e, "%s\n", what);
	} else {
		char k[INSP_NAME_LEN];
		name_key(k, sizeof(k), key->objectid, key->type, key->offset);
		em_line(e, "%s tree key %s \n", name_tree_label(key->objectid), k);
	}
	walk_tree(d->fs, root, NULL, on_block, d);
}

static void on_root(void *ctx, const struct bf_root *root, const struct bf_key *key)
{
	struct dump *d = ctx;
	if (d->only_tree && key->objectid != d->only_tree)
		return;
	d->found = true;
	dump_one_tree(d, root, key);
}

static void trailer(struct dump *d)
{
	const struct bf_super *sb = &d->fs->fi->super;
	char uuid[37];
	bf_uuid_str(sb->fsid, uuid);
	em_line(&d->e, "total bytes %llu\nbytes used %llu\nuuid %s\n", (unsigned long long)get64(sb->total_bytes),
		(unsigned long long)get64(sb->bytes_used), uuid);
}

static int dump_selected(struct dump *d)
{
	struct bf_fsinfo *fi = d->fs->fi;
	struct bf_key k = { d->only_tree, 0, 0 };
	struct bf_root root;
	switch (d->only_tree) {
	case BF_ROOT_TREE_OBJECTID:
	case BF_CHUNK_TREE_OBJECTID:
	case BF_TREE_LOG_OBJECTID:
	case BF_BLOCK_GROUP_TREE_OBJECTID:
		if (insp_tree_root(d->fs, d->only_tree, &root)) {
			insp_err("the filesystem has no tree %llu", (unsigned long long)d->only_tree);
			return 1;
		}
		dump_one_tree(d, &root, &k);
		return 0;
	}
	walk_all_roots(d->fs, on_root, d);
	if (!d->found) {
		insp_err("no tree %llu in the root tree%s", (unsigned long long)d->only_tree,
			 fi->log_root ? " or the log root tree" : "");
		return 1;
	}
	trailer(d); /* as progs: after trees found through the root tree, not after the four above */
	return 0;
}

static int dump_block(struct dump *d, uint64_t bytenr)
{
	struct bf_block *b;
	if (bf_block_read(&d->fs->fi->env, bytenr, NULL, &b) == 0) {
		print_block(d, b, b->owner);
		bf_block_put(&d->fs->fi->env, b);
		return 0;
	}
	char why[1024];
	walk_diagnose(d->fs, bytenr, NULL, why, sizeof(why));
	struct walk_block wb = { .bytenr = bytenr, .err = -EIO, .why = why, .level = -1 };
	print_bad(d, &wb);
	return 1;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: btrfs-fuse-inspect dump-tree IMAGE... [-t TREE] [--block BYTENR]... [--json]\n"
		   "Print every node and item of the trees of an unmounted btrfs image (set), as\n"
		   "`btrfs inspect-internal dump-tree` does, or as one JSON array of blocks.\n"
		   "  -t, --tree TREE     only this tree: root, extent, chunk, dev, fs, csum, free-space, uuid,\n"
		   "                      log, block-group, quota, data-reloc or a number (e.g. 256)\n"
		   "  -b, --block BYTENR  only the tree block at this logical address (may repeat)\n"
		   "  -j, --json          one JSON document: an array of blocks with header fields and items\n"
		   "  -v, --verbose       also show the core's log messages\n"
		   "Blocks that fail validation are shown as 'ERROR: tree block N ...' with the reason.\n");
}

int cmd_dump_tree(int argc, char **argv)
{
	static const struct option opts[] = { { "tree", required_argument, NULL, 't' },
					       { "block", required_argument, NULL, 'b' },
					       { "json", no_argument, NULL, 'j' },
					       { "verbose", no_argument, NULL, 'v' },
					       { "help", no_argument, NULL, 'h' },
					       { NULL, 0, NULL, 0 } };
	struct dump d = { 0 };
	uint64_t blocks[64];
	int nblocks = 0, c;
	bool json = false;
	while ((c = getopt_long(argc, argv, "t:b:jvh", opts, NULL)) != -1) {
		switch (c) {
		case 't':
			d.only_tree = tree_id_from_string(optarg);
			if (!d.only_tree) {
				insp_err("unknown tree '%s' (try root, extent, chunk, dev, fs, csum, free-space, uuid, "
					 "log, quota or a number)", optarg);
				return 2;
			}
			break;
		case 'b':
			if (nblocks == 64 || !insp_parse_u64(optarg, &blocks[nblocks])) {
				insp_err("bad or too many --block values: '%s'", optarg);
				return 2;
			}
			nblocks++;
			break;
		case 'j':
			json = true;
			break;
		case 'v':
			bf_log_set_verbosity(BF_LOG_DEBUG);
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return 2;
	}
	struct insp_fs fs;
	if (insp_open((const char *const *)argv + optind, argc - optind, &fs))
		return 1;
	d.fs = &fs;
	em_init(&d.e, stdout, json);
	em_arr_begin(&d.e, NULL);
	int rc = 0;
	if (nblocks) {
		for (int i = 0; i < nblocks; i++)
			rc |= dump_block(&d, blocks[i]);
	} else if (d.only_tree) {
		rc = dump_selected(&d);
	} else {
		walk_all_roots(&fs, on_root, &d);
		trailer(&d);
	}
	em_arr_end(&d.e);
	if (json)
		fputc('\n', stdout);
	insp_close(&fs);
	if (d.bad_blocks)
		insp_err("%d tree block(s) could not be read; see the ERROR lines", d.bad_blocks);
	return rc || d.bad_blocks || fs.partial ? 1 : 0;
}
