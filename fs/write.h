/*
 * fs/write.h - what the files of the data write path share (fs/write.c, fs/dirty.c, fs/extent_plan.c,
 * fs/extent_write.c, fs/csum_write.c) and what their unit tests reach. Other fs/ files use the bf_data_* calls of
 * fs/internal.h.
 *
 * Owns: the dirty-range map (fs/dirty.c), the decoded file extent (struct bf_fext) with the pure range logic of
 * dropping extents (bf_drop_step, fs/extent_plan.c), the tree calls that replace file extent items
 * (fs/extent_write.c) and the csum-tree insertion (fs/csum_write.c).
 * Key idea: each tree-changing call is a loop over leaves that asks a pure function what to do with one item,
 * so the splitting rules are tested over in-memory extent lists against a byte model, apart from the trees.
 */
#ifndef BF_FS_WRITE_H
#define BF_FS_WRITE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fs/internal.h"

/* The kernel's BTRFS_MAX_EXTENT_SIZE: a new data extent is at most this long. */
#define BF_MAX_EXTENT_SIZE (128ULL * 1024 * 1024)
/* The kernel's default max_inline mount option. */
#define BF_MAX_INLINE 2048u
/* Buffered data of all files together that makes a write flush everything first. */
#define BF_DIRTY_LIMIT (256ULL * 1024 * 1024)
/* The largest file size (the kernel's MAX_LFS_FILESIZE on 64-bit). */
#define BF_MAX_FILE_SIZE ((uint64_t)INT64_MAX)

/* ================= the dirty-range map (fs/dirty.c) =================
 * A sorted set of disjoint, non-adjacent byte ranges, each with its bytes in one buffer: a treap keyed by start,
 * so a write, a lookup and a cut cost O(log n) even for many scattered ranges. Writes merge with every range they
 * overlap or touch, so a sequential writer grows one range (its buffer grows geometrically). */
struct bf_drange {
	uint64_t start, end; /* [start, end), end > start */
	uint8_t *data;       /* end - start bytes (NULL in a mark map) */
	size_t cap;          /* allocated bytes of data */
	uint32_t prio;       /* treap heap order */
	struct bf_drange *left, *right;
};

struct bf_dmap {
	struct bf_drange *root;
	uint64_t bytes; /* sum of the ranges' lengths */
	size_t count;
	uint32_t rng;   /* state of the priority generator */
	bool marks;     /* a mark map: ranges without bytes (data NULL), only which bytes are covered */
};

void bf_dmap_init(struct bf_dmap *m);
/* A mark map: the same set and calls (find, truncate, pop, clear), but ranges are added by bf_dmap_mark. */
void bf_dmap_init_marks(struct bf_dmap *m);
/* Free every range. */
void bf_dmap_clear(struct bf_dmap *m);
/* Copy [off, off + len) of buf in, merging with ranges it overlaps or touches. 0, -ENOMEM (map unchanged) or
   -EFBIG (off + len overflows). len 0 does nothing. -EINVAL on a mark map. */
int bf_dmap_write(struct bf_dmap *m, uint64_t off, const void *buf, size_t len);
/* Add [off, off + len) to a mark map, merging as bf_dmap_write does. 0, -ENOMEM, -EFBIG; -EINVAL on a data map. */
int bf_dmap_mark(struct bf_dmap *m, uint64_t off, uint64_t len);
/* The first range intersecting [pos, end), or NULL. */
const struct bf_drange *bf_dmap_find(const struct bf_dmap *m, uint64_t pos, uint64_t end);
/* Forget everything at and after off (a range across off is cut there). */
void bf_dmap_truncate(struct bf_dmap *m, uint64_t off);
/* Take the lowest range out of the map (NULL when empty); free it with bf_drange_free. */
struct bf_drange *bf_dmap_pop(struct bf_dmap *m);
void bf_drange_free(struct bf_drange *r);

/* ================= file extent items (fs/extent_plan.c: the pure parts; fs/extent_write.c: the tree calls;
   bf_fext_decode is fs/file.c's decoder, shared with the read path) ================= */

/* One file extent item, decoded and checked (bf_fext_decode). */
struct bf_fext {
	uint64_t pos;       /* key offset: the file offset where it starts */
	uint64_t len;       /* file bytes it covers: num_bytes, or ram_bytes for inline */
	uint64_t disk_bytenr, disk_num_bytes, offset, ram_bytes, generation;
	uint8_t type, compression;
};

/* What dropping [start, end) does to one extent (the cases of the kernel's btrfs_drop_extents). */
enum bf_drop_act {
	BF_DROP_KEEP,      /* ends at or before start: untouched */
	BF_DROP_DELETE,    /* inside the range (or zero length): item deleted, data ref dropped */
	BF_DROP_TRIM_TAIL, /* starts before start, ends inside: keeps [pos, start) */
	BF_DROP_TRIM_HEAD, /* starts inside, ends after end: keeps [end, old end) under the new key end */
	BF_DROP_SPLIT,     /* covers the range with bytes on both sides: keeps [pos, start) and [end, old end), the
			      second a new item with its own data ref */
};

struct bf_drop_step {
	enum bf_drop_act act;
	struct bf_fext keep;  /* TRIM_TAIL, SPLIT: the item now; TRIM_HEAD: the item under its new key */
	struct bf_fext added; /* SPLIT: the new item for [end, old end) */
	uint64_t bytes_found; /* bytes of the dropped part that counted in nbytes */
	uint64_t next;        /* the drop goes on from here (old end; an inline extent's rounded up) */
	bool ref_drop;        /* DELETE of an extent with disk bytes: drop its data ref */
	bool ref_add;         /* SPLIT of an extent with disk bytes: add a data ref for the new item */
};

/* Decide what dropping [start, end) (start < end, extent starting before end) does to e. -EOPNOTSUPP for an
   inline extent the range covers only in part (the kernel refuses that too; callers never ask it). */
int bf_drop_step(const struct bf_fext *e, uint64_t start, uint64_t end, uint32_t sectorsize, struct bf_drop_step *s);
/* The data ref offset of an item: pos - offset (the same for both halves of a split). */
static inline uint64_t bf_fext_ref_offset(const struct bf_fext *e) { return e->pos - e->offset; }
/* Where e ends in the file: pos + len, rounded up to a sector for inline extents (the kernel's
   btrfs_file_extent_end). */
uint64_t bf_fext_end(const struct bf_fext *e, uint32_t sectorsize);

/* One file's changes in a transaction. */
struct bf_fctx {
	struct bf_fs *fs;
	struct bf_trans *t;
	struct bf_root *root;     /* the subvolume tree, live (bf_txn_root) */
	struct bf_extalloc *ea;
	uint64_t subvol, ino;
	bool no_holes;            /* the NO_HOLES incompat feature */
};

/* Decode and check the EXTENT_DATA item at key offset pos (untrusted: -EUCLEAN with a log line). */
int bf_fext_decode(const struct bf_fctx *c, uint64_t pos, const uint8_t *data, uint32_t size, struct bf_fext *e);
/* Drop every file extent of the inode inside [start, end) (end may be UINT64_MAX): delete, trim or split items,
   dropping and adding data refs as the kernel does. *bytes_found (may be NULL) gets the bytes that counted in
   nbytes. */
int bf_fext_drop(const struct bf_fctx *c, uint64_t start, uint64_t end, uint64_t *bytes_found);
/* After a drop of [pos, pos + len): the item for a new regular extent at bytenr of len bytes, with its data ref. */
int bf_fext_insert_reg(const struct bf_fctx *c, uint64_t pos, uint64_t bytenr, uint64_t len);
/* After a drop of [0, sectorsize): an inline extent with the file's len bytes. */
int bf_fext_insert_inline(const struct bf_fctx *c, const uint8_t *data, uint32_t len);
/* Without NO_HOLES: a hole item for [start, end) (both sector aligned, after a drop of that range), merged into
   a hole item ending at start or starting at end (the kernel's fill_holes). With NO_HOLES: nothing. */
int bf_fext_add_hole(const struct bf_fctx *c, uint64_t start, uint64_t end);
/* Shrink the uncompressed inline extent to size bytes (0 < size < its length): truncate the item, set ram_bytes.
   *removed gets the bytes it lost. Returns 1 (nothing done) if there is no inline extent longer than size, 2
   (nothing done) if it is compressed and so cannot be cut. */
int bf_fext_truncate_inline(const struct bf_fctx *c, uint64_t size, uint64_t *removed);

/* ================= data checksums (fs/csum_write.c) ================= */

/* Compute the checksums of nsect sectors of data into csums (nsect * csum_size bytes). */
void bf_csum_data(const struct bf_fsinfo *fi, const uint8_t *data, uint64_t nsect, uint8_t *csums);
/* Enter nsect checksums for the sectors from bytenr into the csum tree, extending the item that ends at bytenr
   and otherwise inserting items of at most the kernel's MAX_CSUM_ITEMS, never overlapping the next item (the
   kernel's btrfs_csum_file_blocks). Checksums already there for these sectors are overwritten. */
int bf_csum_insert(struct bf_fsinfo *fi, struct bf_trans *t, uint64_t bytenr, const uint8_t *csums, uint64_t nsect);
/* Most checksums one csum item holds (the kernel's MAX_CSUM_ITEMS: (leaf data - 2 item headers) / csum size - 1,
   at most PAGE_SIZE; 4057 for 16 KiB nodes and crc32c). */
uint32_t bf_csum_item_max(const struct bf_fsinfo *fi);

#endif
