/*
 * inspect/inspect.h - what the files of btrfs-fuse-inspect share.
 *
 * Owns: the subcommand entry points, the output emitter (one set of calls that writes either progs-style
 * text or JSON), the progs-compatible names of keys, objectids and flags, the item decoders, the tolerant
 * opener and the tree walker that marks bad blocks instead of stopping, and the Graphviz writer.
 *
 * Key idea: every decoder and walker reads only through the core's public headers and treats every byte of
 * the image as hostile: a block is decoded only after bf_block_read validated its layout, every item payload
 * is checked against its type's size before a field is read, and every walk is bounded (visited set, block
 * budget, strictly decreasing levels), so a corrupt image prints what it can and marks what it cannot.
 */
#ifndef BF_INSPECT_H
#define BF_INSPECT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "journal/journal.h"

/* ---- subcommands (one file each) ---- */
int cmd_dump_super(int argc, char **argv);
int cmd_dump_tree(int argc, char **argv);
int cmd_map(int argc, char **argv);
int cmd_tree_graph(int argc, char **argv);
int cmd_diff_gen(int argc, char **argv);

/* ---- main.c: option helpers ---- */
/* Parse an unsigned number (decimal, 0x hex); false on junk or overflow. */
bool insp_parse_u64(const char *s, uint64_t *out);
/* Print "btrfs-fuse-inspect: <message>" to stderr. */
void insp_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- emit.c: text (progs layout) or JSON ---- */
struct emit {
	FILE *f;
	bool json;
	int indent;        /* text: tabs at the start of a line */
	bool line_open;    /* text: something was written on the current line */
	int depth;         /* json: nesting depth */
	bool first[32];    /* json: no member written yet at this depth */
	bool arr[32];      /* json: the container at this depth is an array */
	bool noline;       /* json: suppress pretty newlines */
	int align;         /* text: pad the first label of a line to this width (0: one space) */
};

void em_init(struct emit *e, FILE *f, bool json);
/* JSON structure (text mode: no output). key is NULL inside arrays. */
void em_obj_begin(struct emit *e, const char *key);
void em_obj_end(struct emit *e);
void em_arr_begin(struct emit *e, const char *key);
void em_arr_end(struct emit *e);
/* Fields. The label is the progs text ("block group"); the JSON key is the label with spaces turned into
   underscores and ':' dropped. A label "text|key" gives the text and the JSON key separately ("nr|num_bytes";
   "|key" for no text label). */
void em_u64(struct emit *e, const char *label, uint64_t v);
void em_i64(struct emit *e, const char *label, int64_t v);
void em_octal(struct emit *e, const char *label, uint64_t v);
void em_hexnum(struct emit *e, const char *label, uint64_t v);                     /* label %llx (no 0x) */
void em_flags(struct emit *e, const char *label, uint64_t v, const char *names);    /* label 0x%llx(names) */
void em_flagstr(struct emit *e, const char *label, uint64_t v, const char *names);  /* label names */
void em_enum(struct emit *e, const char *label, uint64_t v, const char *name);      /* label v (name) */
void em_str(struct emit *e, const char *label, const char *s);                       /* label s */
void em_raw(struct emit *e, const char *label, const uint8_t *s, size_t len);        /* label raw bytes */
void em_keyf(struct emit *e, const char *label, uint64_t objectid, uint8_t type, uint64_t offset);
void em_uuid(struct emit *e, const char *label, const uint8_t uuid[16]);
void em_time(struct emit *e, const char *label, uint64_t sec, uint32_t nsec);
void em_bool(struct emit *e, const char *label, bool v);
void em_ju64(struct emit *e, const char *key, uint64_t v); /* JSON only */
/* Text only: a literal word or phrase ("orphan item"); JSON gets nothing. */
void em_text(struct emit *e, const char *s);
/* Text: end of line. JSON: nothing. */
void em_nl(struct emit *e);
/* Free-form text line (text mode only), written as is. */
void em_line(struct emit *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Write s as a JSON string (with quotes). */
void json_string(FILE *f, const uint8_t *s, size_t len);

/* ---- names.c: progs-compatible names ---- */
#define INSP_NAME_LEN 128
void name_objectid(char *buf, size_t len, uint64_t objectid, uint8_t type);
void name_key_type(char *buf, size_t len, uint64_t objectid, uint8_t type);
/* "(EXTENT_TREE ROOT_ITEM 0)" exactly as btrfs inspect-internal dump-tree prints a key. */
void name_key(char *buf, size_t len, uint64_t objectid, uint8_t type, uint64_t offset);
void name_bg_flags(char *buf, size_t len, uint64_t flags);     /* "DATA|RAID1" */
void name_inode_flags(char *buf, size_t len, uint64_t flags);  /* "NODATASUM|..." or "none" */
void name_extent_flags(char *buf, size_t len, uint64_t flags); /* "DATA", "TREE_BLOCK|FULL_BACKREF" */
void name_header_flags(char *buf, size_t len, uint64_t flags); /* "WRITTEN|RELOC" */
const char *name_compress(uint8_t type, char *buf, size_t len); /* "zlib", "UNKNOWN.7" */
const char *name_file_extent_type(uint8_t type);                /* "inline", "regular", "prealloc" */
const char *name_dir_type(uint8_t type, char *buf, size_t len);  /* "FILE", "DIR", "DIR_ITEM.9" */
/* dump-tree's label of a tree in the root-tree loop: "extent", "device", "fs", "file", ... */
const char *name_tree_label(uint64_t id);
/* A tree given on the command line: a number or a name (root, extent, chunk, dev, fs, csum, free-space, uuid,
   log, block-group, quota, data-reloc, and progs' spellings). 0 if unknown. */
uint64_t tree_id_from_string(const char *s);

/* ---- items.c: decoding leaf item payloads ---- */
struct insp_ctx {
	uint32_t nodesize, sectorsize;
	int csum_size;
	unsigned csum_type;
};
/* Decode one leaf item (key, data of size bytes, all inside a validated block) to the emitter. */
void decode_item(struct emit *e, const struct insp_ctx *c, const struct bf_key *key, const uint8_t *data,
		 uint32_t size);
/* The superblock's system chunk array (bounds-checked) in dump-super's layout. */
void decode_sys_chunk_array(struct emit *e, const struct bf_super *sb);
/* One chunk item (size bytes) at indent level base. */
void decode_chunk(struct emit *e, const uint8_t *data, uint32_t size);

/* ---- open.c: opening an image set, tolerating damage ---- */
struct insp_fs {
	struct bf_fsinfo *fi;
	bool partial;       /* the core's open failed; what could be read was set up by hand */
	char why[512];      /* the core's reason when partial */
	struct insp_ctx ctx;
};
/* Open paths read-only (degraded). On a damaged image falls back to a partial open (superblock, system chunks,
   whatever of the chunk tree and root tree reads) and says so on stderr. Returns 0 or -errno with a message
   printed. */
int insp_open(const char *const *paths, int npaths, struct insp_fs *out);
void insp_close(struct insp_fs *fs);
/* Root of tree id: root and chunk trees from the superblock, the log root tree from log_root, others from the
   root tree. 0, -ENOENT or -EIO. */
int insp_tree_root(struct insp_fs *fs, uint64_t id, struct bf_root *out);

/* ---- walk.c: bounded tree walks that report bad blocks ---- */
/* A set of non-zero u64 values (bytenrs). Zero-initialise; set_insert is false if v was there (or is 0, or
   memory ran out). */
struct u64set {
	uint64_t *slots;
	size_t cap, n;
};
bool set_insert(struct u64set *s, uint64_t v);
bool set_has(const struct u64set *s, uint64_t v);
void set_free(struct u64set *s);

struct walk_block {
	uint64_t bytenr;
	uint64_t tree;     /* the tree being walked */
	int level;         /* expected level (from the parent), or the block's */
	int depth;         /* 0 for the root */
	uint64_t parent;   /* parent bytenr, 0 for the root */
	uint32_t slot;     /* slot in the parent */
	struct bf_key first_key;   /* parent's key for this child (zero for the root) */
	const struct bf_block *b;  /* NULL when the block could not be read */
	int err;                   /* negative errno when b is NULL */
	const char *why;           /* reason when b is NULL */
};
/* Called once per block, breadth first (root, then each level left to right, as dump-tree prints). Returns
   true to walk the block's children (subject to max_depth), false to skip its subtree. */
typedef bool (*walk_cb)(void *ctx, const struct walk_block *wb);
struct walk_opts {
	int max_depth;        /* visit blocks with depth <= max_depth; -1: all */
	size_t max_blocks;    /* 0: default cap */
};
/* Walk one tree from root. Never fails: unreadable blocks are reported through cb with b == NULL. Returns
   the number of blocks visited. */
size_t walk_tree(struct insp_fs *fs, const struct bf_root *root, const struct walk_opts *o, walk_cb cb,
		 void *ctx);
/* Why a block fails: reads mirror 1..n raw and runs bf_block_check; writes the first reason. */
void walk_diagnose(struct insp_fs *fs, uint64_t bytenr, const struct bf_block_expect *exp, char *why,
		   size_t len);
/* Every tree root reachable from the superblock and the root tree, in dump-tree order: root tree, chunk tree,
   log root tree (if any), then each ROOT_ITEM of the root tree. cb gets each root and the root item's key
   (objectid ROOT_TREE / CHUNK_TREE / TREE_LOG with type 0 for the first three). */
typedef void (*roots_cb)(void *ctx, const struct bf_root *root, const struct bf_key *item_key);
void walk_all_roots(struct insp_fs *fs, roots_cb cb, void *ctx);
/* The same from given root-tree and chunk-tree roots (e.g. a backup root); no log tree. */
void walk_roots_from(struct insp_fs *fs, const struct bf_root *tree_root, const struct bf_root *chunk_root,
		     roots_cb cb, void *ctx);

/* ---- dot.c: Graphviz output ---- */
/* Write dot text to path (or stdout when path is NULL/"-"), or render it as SVG by running `dot -Tsvg`.
   Returns 0 or -1 with a message. */
int dot_output(const char *dot_text, size_t len, const char *format, const char *path);
/* Escape s for a quoted dot label (newlines become \n). */
void dot_escape(FILE *f, const char *s);
/* One node for a walked block (bytenr, level, generation, key range, items and fill; BAD with the reason for
   an unreadable one), an optional extra label line, and the edge from its parent. */
void dot_block_node(FILE *f, uint32_t nodesize, const struct walk_block *wb, const char *fill, const char *note);
/* The default fill: nodes pale yellow, leaves white to blue by how full they are, bad blocks red. */
void dot_fill_colour(const struct bf_block *b, uint32_t nodesize, char *buf, size_t len);

/* A growable in-memory string (open_memstream wrapper). */
struct membuf {
	char *data;
	size_t len;
	FILE *f;
};
int membuf_open(struct membuf *m);
void membuf_close(struct membuf *m); /* flushes; data/len valid until membuf_free */
void membuf_free(struct membuf *m);

#endif
