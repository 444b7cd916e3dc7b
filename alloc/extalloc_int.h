/*
 * alloc/extalloc_int.h - private interface between the files of the extent allocator (never included from
 * another layer; tests/unit/test_extalloc_*.c include it to check the in-memory state).
 *
 * Owns: the in-memory state of the extent allocator and the calls between its files:
 *   rangeset.c         sorted sets of byte ranges (free space, pinned space, device extents);
 *   bgroup.c           block groups: loading their items and chunks, superblock-copy exclusion, used bytes,
 *                      writing changed BLOCK_GROUP_ITEMs, free space from an extent-tree scan;
 *   free_space_tree.c  loading and changing the free space tree (extents and bitmaps, conversions);
 *   delayed_ref.c      the queue of reference changes (heads per extent, merged references);
 *   extent_tree.c      applying one head to the extent tree (extent items, inline and keyed references);
 *   backref.c          the copy-on-write hook for shared blocks (the kernel's update_ref_for_cow);
 *   chunk_alloc.c      devices' extents, new chunks and their items;
 *   csum_del.c         dropping the checksums of freed data extents;
 *   run_delayed.c      the commit-time loop that applies everything queued until nothing is left;
 *   extalloc.c         open/close, allocation of tree blocks and data, reservations, commit and abort.
 *
 * Key idea: two views of free space per block group. `fst` is what the extent tree says is free (the free
 * space tree's content): it changes only when an extent item is inserted or deleted, while delayed references
 * are applied at commit. `free` is what may be handed out now: `fst` minus the superblock copies, minus what was
 * allocated since the last commit (reserved, not yet in the extent tree), minus what was freed since (pinned
 * until the commit is on disk). Every change of the trees goes through the btree layer inside the journal's
 * transaction; everything else is memory, so hooks called from inside a btree operation never touch a tree.
 */
#ifndef BF_EXTALLOC_INT_H
#define BF_EXTALLOC_INT_H

#include "alloc/alloc.h"
#include "btree/btree.h"

/* ---- range sets (alloc/rangeset.c): sorted, disjoint, adjacent ranges merged ---- */

struct ea_range {
	uint64_t start, end; /* [start, end) */
};

struct ea_rset {
	struct ea_range *v;
	size_t n, cap;
	uint64_t bytes; /* sum of the ranges' lengths */
};

void rset_free(struct ea_rset *s);
/* Add [start, end); -EEXIST if it overlaps a range of the set (nothing changes), -ENOMEM. */
int rset_add(struct ea_rset *s, uint64_t start, uint64_t end);
/* Remove [start, end), which must lie inside one range (-ENOENT otherwise, nothing changes), -ENOMEM. */
int rset_del(struct ea_rset *s, uint64_t start, uint64_t end);
/* Remove whatever part of [start, end) the set holds. */
int rset_del_any(struct ea_rset *s, uint64_t start, uint64_t end);
/* Index of the first range ending after addr (n if none). */
size_t rset_lower(const struct ea_rset *s, uint64_t addr);
/* True if [start, end) lies inside one range; true if any byte of it is in the set. */
bool rset_has(const struct ea_rset *s, uint64_t start, uint64_t end);
bool rset_touches(const struct ea_rset *s, uint64_t start, uint64_t end);
uint64_t rset_bytes(const struct ea_rset *s);
void rset_clear(struct ea_rset *s); /* empty, keeping the memory */
int rset_copy(struct ea_rset *dst, const struct ea_rset *src);

/* ---- block groups ---- */

struct ea_bg {
	uint64_t start, length, flags; /* flags: BF_BLOCK_GROUP_* type and profile */
	uint64_t used, used_committed;
	struct ea_rset free; /* may be handed out now */
	struct ea_rset fst;  /* free per the extent tree = the free space tree's content */
	/* the free space tree's FREE_SPACE_INFO of this group, as last written */
	uint32_t fst_count;
	bool fst_bitmaps;
	/* the mirror as last committed, kept from the first change of a transaction on (for abort) */
	struct ea_rset fst_saved;
	bool fst_saved_ok, fst_bitmaps_saved;
	uint32_t fst_count_saved;
	uint32_t thresh_high, thresh_low; /* extent counts at which it turns to bitmaps and back */
	bool dirty;       /* BLOCK_GROUP_ITEM.used must be written */
	bool created;     /* made in the running transaction */
	bool need_items;  /* created; chunk, device extents and block group item not inserted yet */
	bool need_fst;    /* created; no FREE_SPACE_INFO yet (added before its first free space change) */
	bool excluded_ro; /* RAID5/6: never allocated from (writes to it are not supported) */
};

/* ---- devices ---- */

struct ea_dev {
	struct bf_device *dev;
	uint64_t devid, total_bytes, bytes_used, bytes_used_committed;
	struct ea_rset extents; /* device ranges taken by chunks (DEV_EXTENT items) */
	bool dirty;             /* DEV_ITEM.bytes_used must be written */
};

/* ---- delayed references (alloc/delayed_ref.c) ---- */

/* One merged reference change. type is the ref's key type; the fields that identify it: TREE_BLOCK_REF: root;
   SHARED_BLOCK_REF, SHARED_DATA_REF: parent; EXTENT_DATA_REF: root, owner (inode), offset. */
struct ea_ref {
	uint8_t type;
	uint64_t root, parent, owner, offset;
	int64_t count; /* net change */
};

struct ea_head {
	uint64_t bytenr, num_bytes;
	bool is_data;
	bool must_insert; /* allocated since the last commit; no extent item yet */
	bool had_refs;    /* a reference was ever queued (a data extent left without any is given back) */
	bool in_batch;    /* listed in the batch run_delayed is working through */
	bool dead;        /* cancelled while in a batch; freed when the batch ends */
	uint8_t level;
	struct bf_key first_key; /* tree blocks: for tree_block_info when skinny metadata is off */
	uint64_t set_flags;      /* extent flags to OR in (FULL_BACKREF) */
	struct ea_ref *refs;
	size_t nrefs, refs_cap;
	struct ea_head *hnext;
};

struct ea_dtable {
	struct ea_head **buckets;
	size_t nbuckets, count;
};

/* ---- the allocator ---- */

struct ea_saved_super {
	uint64_t bytes_used, dev_bytes_used, cache_generation;
	uint32_t sys_array_size;
	uint8_t sys_array[BF_SYSTEM_CHUNK_ARRAY_SIZE];
};

/* A data extent handed out in the running transaction (for bf_extalloc_data_unused). */
struct ea_resv {
	uint64_t start, len;
};

struct bf_extalloc {
	struct bf_tree_env *env;
	struct bf_volume *vol;
	struct bf_super *super;
	struct bf_extalloc_roots roots;
	struct bf_root *csum_root; /* NULL: checksums of freed data are not deleted */
	uint32_t nodesize, sectorsize;
	bool skinny, use_fst, mixed, bg_tree;
	struct ea_bg **bgs; /* sorted by start */
	size_t nbgs, bgs_cap;
	struct ea_dev *devs;
	size_t ndevs;
	struct bf_trans *trans;
	uint64_t transid;
	struct ea_rset trans_alloc; /* allocated since the last commit and not given back */
	struct ea_rset pinned;      /* freed since the last commit */
	struct ea_dtable refs;
	struct ea_resv *resv; /* sorted by start */
	size_t nresv, resv_cap;
	uint64_t cursor[3]; /* where the next search starts: data, metadata, system */
	uint64_t meta_reserved;
	int error; /* sticky: a hook that cannot report failed (-ENOMEM); the transaction must abort */
	struct ea_saved_super saved;
};

enum ea_kind { EA_DATA = 0, EA_META = 1, EA_SYS = 2 };

static inline bool ea_is_fstree(uint64_t id)
{
	return id == BF_FS_TREE_OBJECTID || (id >= BF_FIRST_FREE_OBJECTID && id <= BF_LAST_FREE_OBJECTID);
}
/* Trees whose blocks snapshots can share (the kernel's BTRFS_ROOT_SHAREABLE). */
static inline bool ea_shareable(uint64_t id)
{
	return ea_is_fstree(id) || id == BF_TREE_RELOC_OBJECTID || id == BF_DATA_RELOC_TREE_OBJECTID;
}
/* Record a failure a void hook cannot return; run_delayed reports it. */
static inline void ea_fail(struct bf_extalloc *ea, int err)
{
	if (!ea->error)
		ea->error = err;
}

/* ---- block groups (alloc/bgroup.c) ---- */

/* The group holding logical, or NULL. */
struct ea_bg *bg_find(const struct bf_extalloc *ea, uint64_t logical);
/* Does the group serve allocations of this kind? */
bool bg_serves(const struct bf_extalloc *ea, const struct ea_bg *bg, enum ea_kind kind);
/* A new group for a chunk (its free views filled from what is excluded); inserted in ea->bgs. */
int bg_insert(struct bf_extalloc *ea, struct ea_bg *bg);
struct ea_bg *bg_new(const struct bf_extalloc *ea, uint64_t start, uint64_t length, uint64_t flags);
void bg_destroy(struct ea_bg *bg);
/* Remove the superblock copies (and the first 64 KiB) from bg->free, as the kernel's exclude_super_stripes. */
int bg_exclude_super(const struct bf_extalloc *ea, struct ea_bg *bg, const struct bf_chunk_map *c);
/* Load every block group item (one per chunk of the volume) and its free space. */
int bg_load_all(struct bf_extalloc *ea, char *err, size_t errlen);
/* An extent [bytenr, +num_bytes) entered or left the extent tree: used bytes, superblock bytes_used, the free
   space tree; a freed extent is pinned. */
int bg_extent_added(struct bf_extalloc *ea, uint64_t bytenr, uint64_t num_bytes);
int bg_extent_removed(struct bf_extalloc *ea, uint64_t bytenr, uint64_t num_bytes);
/* Write BLOCK_GROUP_ITEM.used of every dirty group; *did tells whether any was written. */
int bg_write_dirty(struct bf_extalloc *ea, bool *did);
/* The tree holding the block group items. */
struct bf_root *bg_root(const struct bf_extalloc *ea);

/* ---- the free space tree (alloc/free_space_tree.c) ---- */

void fst_set_thresholds(const struct bf_extalloc *ea, struct ea_bg *bg);
/* Load bg->fst from the tree (checks extent counts and item bounds). */
int fst_load(struct bf_extalloc *ea, struct ea_bg *bg, char *err, size_t errlen);
/* [start, end) became used / free in the extent tree: update bg->fst and the tree. */
int fst_remove(struct bf_extalloc *ea, struct ea_bg *bg, uint64_t start, uint64_t end);
int fst_add(struct bf_extalloc *ea, struct ea_bg *bg, uint64_t start, uint64_t end);
/* A new group: FREE_SPACE_INFO and one extent for the whole group (if not done yet). */
int fst_add_group(struct bf_extalloc *ea, struct ea_bg *bg);
/* Keep the committed mirror before the first change of a transaction; put it back on abort. */
int fst_save(struct ea_bg *bg);
void fst_restore(struct ea_bg *bg);

/* ---- delayed references (alloc/delayed_ref.c) ---- */

int dt_init(struct ea_dtable *t);
void dt_destroy(struct ea_dtable *t);
struct ea_head *dt_find(const struct ea_dtable *t, uint64_t bytenr);
/* The head of bytenr, made if missing (then with must_insert false, num_bytes and is_data as given). */
int dt_get(struct ea_dtable *t, uint64_t bytenr, uint64_t num_bytes, bool is_data, struct ea_head **out);
/* Merge a reference change into h (a count reaching 0 removes the entry). */
int dt_add_ref(struct ea_head *h, const struct ea_ref *ref);
/* Remove h from the table and free it (or mark it dead while a batch holds it). */
void dt_remove(struct ea_dtable *t, struct ea_head *h);
/* Take h out of the table without freeing it (run_delayed, before running it). */
void dt_detach(struct ea_dtable *t, struct ea_head *h);
void head_free(struct ea_head *h);
/* Unlink every head into an array sorted by bytenr (each flagged in_batch); the table stays usable. */
int dt_take_batch(struct ea_dtable *t, struct ea_head ***out, size_t *n);
/* Net change of h's reference count. */
int64_t head_ref_mod(const struct ea_head *h);

/* Queue reference changes (alloc/delayed_ref.c). */
int ea_queue_tree_ref(struct bf_extalloc *ea, uint64_t bytenr, uint64_t parent, uint64_t root, int level,
		      int delta);
int ea_queue_data_ref(struct bf_extalloc *ea, uint64_t bytenr, uint64_t num_bytes, uint64_t parent, uint64_t root,
		      uint64_t inode, uint64_t offset, int delta);

/* ---- the extent tree (alloc/extent_tree.c) ---- */

/* Apply one head (taken out of the table) to the extent tree, with the accounting that follows. */
int et_run_head(struct bf_extalloc *ea, struct ea_head *h);
/* Reference count and flags of a tree block's extent item, including queued changes. */
int et_lookup_tree_block(struct bf_extalloc *ea, uint64_t bytenr, int level, uint64_t *refs, uint64_t *flags);

/* ---- checksums (alloc/csum_del.c) ---- */

int csum_delete_range(struct bf_extalloc *ea, uint64_t start, uint64_t len);

/* ---- chunks and devices (alloc/chunk_alloc.c) ---- */

int dev_load_all(struct bf_extalloc *ea, char *err, size_t errlen);
void dev_destroy_all(struct bf_extalloc *ea);
/* Make a new chunk and block group for kind (in memory; items follow in chunk_insert_pending). -ENOSPC when the
   devices have no room, -EROFS for RAID5/6. */
int chunk_alloc(struct bf_extalloc *ea, enum ea_kind kind);
/* Insert the items of chunks made in this transaction; *did tells whether anything was done. */
int chunk_insert_pending(struct bf_extalloc *ea, bool *did);
/* Bytes of the devices not yet given to chunks that a chunk of kind could use (for ENOSPC and statfs). */
uint64_t chunk_unallocated(const struct bf_extalloc *ea, enum ea_kind kind);
/* Abort: forget the device extents and the groups made in this transaction. */
void chunk_abort(struct bf_extalloc *ea);
void dev_committed(struct bf_extalloc *ea);
/* The profile bits new chunks of kind get (the existing groups' profile, as btrfs_reduce_alloc_profile). */
uint64_t chunk_profile(const struct bf_extalloc *ea, enum ea_kind kind);
uint64_t kind_type(const struct bf_extalloc *ea, enum ea_kind kind);

/* ---- allocation (alloc/extalloc.c) ---- */

/* Take len bytes (aligned) of kind from the free space, near hint; makes a chunk if none has room.
   min_len < len allows a shorter piece when no run of len is left. */
int ea_alloc_space(struct bf_extalloc *ea, enum ea_kind kind, uint64_t len, uint64_t min_len, uint64_t align,
		   uint64_t hint, uint64_t *start, uint64_t *got);
/* Give back space allocated in this transaction that never reached the extent tree. */
int ea_unreserve(struct bf_extalloc *ea, uint64_t start, uint64_t len);
/* Pin space freed in this transaction until the commit is on disk. */
int ea_pin(struct bf_extalloc *ea, uint64_t start, uint64_t len);
uint64_t ea_free_bytes(const struct bf_extalloc *ea, enum ea_kind kind);
/* The global metadata reserve every reservation leaves free (sized like the kernel's for an empty filesystem). */
uint64_t ea_global_reserve(const struct bf_extalloc *ea);

/* ---- the copy-on-write hook (alloc/backref.c) ---- */

int ea_tree_block_cowed(void *ctx, uint64_t owner, const struct bf_block *old, const struct bf_block *cow);

#endif
