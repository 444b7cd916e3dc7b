/*
 * journal/journal.h - superblocks and opening a filesystem; later, transactions, commit and the log tree.
 *
 * Owns: reading and validating superblocks (primary and copies, newest valid generation wins), matching the
 * given devices into one volume, bootstrapping the chunk map (system chunk array, then the chunk tree), and
 * finding the roots of the global trees. Later: transactions, commit, and the log tree and its replay.
 *
 * Key idea: open is a fixed sequence in which each step only trusts what earlier steps verified:
 * superblock (checksum, magic, sizes, features) -> devices (fsid, devid, uuid) -> system chunks -> chunk tree
 * -> missing-device check -> root tree -> global roots. Any failure stops the open with a message that says
 * what failed, where, and what to do.
 */
#ifndef BF_JOURNAL_H
#define BF_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "alloc/alloc.h"
#include "btree/btree.h"
#include "btree/format.h"

/* Read the superblock copies of one device and return the valid one with the highest generation in *out.
   *copy gets its index (0 primary, 1, 2). A bad primary with a good copy logs a warning naming the copy used.
   -EINVAL: no valid superblock (message says why for the primary). */
int bf_super_read(int fd, uint64_t devsize, struct bf_super *out, int *copy, char *err, size_t errlen);
/* Check one superblock image found at byte offset `bytenr`: checksum, magic, bytenr, sizes (sectorsize and
   nodesize powers of two within 4K..64K, nodesize >= sectorsize), sys_chunk_array_size, levels, csum type,
   incompat features (an unknown bit is named in the message). */
int bf_super_check(const struct bf_super *sb, uint64_t bytenr, char *err, size_t errlen);
/* "mixed-bg, no-holes, ..." names for the feature bits set in flags (for messages and the inspector). */
void bf_incompat_names(uint64_t flags, char *buf, size_t len);
void bf_compat_ro_names(uint64_t flags, char *buf, size_t len);

struct bf_open_opts {
	const char *const *paths; /* devices or image files */
	int npaths;
	bool degraded;
	bool writable;
	size_t cache_bytes; /* tree-block cache cap; 0 = default */
};

/* An opened filesystem: the superblock in use, the volume and the roots of the global trees. */
struct bf_fsinfo {
	struct bf_super super;
	struct bf_volume vol;
	struct bf_tree_env env;
	uint64_t incompat, compat_ro, generation;
	uint32_t sectorsize, nodesize;
	unsigned csum_type;
	int csum_size;
	struct bf_root tree_root, chunk_root;
	struct bf_root extent_root, dev_root, csum_root, uuid_root, free_space_root, block_group_root;
	bool has_csum_root, has_uuid_root, has_free_space_root, has_block_group_root;
	bool readonly;
	uint64_t log_root; /* superblock's log_root (0: none) */
};

int bf_fsinfo_open(const struct bf_open_opts *o, struct bf_fsinfo **out, char *err, size_t errlen);
void bf_fsinfo_close(struct bf_fsinfo *fi);

/* Find a tree's root item in the root tree (the newest: highest key offset for that objectid).
   Returns 0, -ENOENT, or -EIO/-EUCLEAN. item (may be NULL) gets the root item, zero-filled past a legacy
   item's end. */
int bf_find_root(struct bf_fsinfo *fi, uint64_t objectid, struct bf_root *root, struct bf_root_item *item);

/* ================= transactions and commit (journal/trans.c, journal/commit.c) =================
 *
 * One transaction runs at a time. Every change to the filesystem happens between bf_txn_begin and bf_txn_end
 * while the caller holds the filesystem's write lock (fs/ takes it: readers shared, writers and the commit
 * exclusive). A transaction collects the changed roots; bf_commit writes them out:
 *   1. flush delayed data (the fs layer's flush hook, so buffered file data gets its extents first);
 *   2. run the queued extent-reference changes (alloc), which may change more trees, until nothing is queued;
 *   3. update the root items of changed trees in the root tree (and those changes' own references: repeat 2);
 *   4. write every dirty tree block (checksummed), flush all devices;
 *   5. write every superblock copy on every device (generation, roots, backup roots as the kernel rotates
 *      them, bytes_used, device items), flush;
 *   6. unpin the extents freed in this transaction (they may be reused from now on).
 * A failure in 2-5 aborts: the filesystem turns read-only with a message saying why; the on-disk state stays
 * the last committed one.
 */
struct bf_trans;      /* btree/btree.h */
struct bf_extalloc;   /* alloc/alloc.h: the extent allocator */

struct bf_journal;    /* private to journal/: running transaction, dirty roots, commit thread */

/* Prepare fi for writing (fi must have been opened writable): open the extent allocator, start the
   transaction machinery. flush_cb is called at the start of each commit with the write lock held (the fs
   layer writes buffered data there). commit_interval in seconds (0 = default 30). */
int bf_journal_open(struct bf_fsinfo *fi, int (*flush_cb)(void *arg), void *flush_arg, unsigned commit_interval,
		    char *err, size_t errlen);
/* Commit what is pending and stop. */
int bf_journal_close(struct bf_fsinfo *fi);

/* Start (or join) the running transaction. The caller holds the fs write lock until bf_txn_end. */
int bf_txn_begin(struct bf_fsinfo *fi, struct bf_trans **t);
/* Leave the transaction; commits if dirty memory passed its bound or a commit is due. */
int bf_txn_end(struct bf_fsinfo *fi, struct bf_trans *t);
/* The live, changeable root of tree `objectid` (a subvolume, or csum/uuid/root tree) in this transaction:
   btree calls update it in place, and the commit writes it into its root item. -ENOENT if no such tree. */
int bf_txn_root(struct bf_fsinfo *fi, struct bf_trans *t, uint64_t objectid, struct bf_root **root);
/* The extent allocator (data extents and their references). */
struct bf_extalloc *bf_txn_alloc(struct bf_fsinfo *fi);
/* Commit now (sync, fsync, unmount). The caller holds the fs write lock. */
int bf_commit(struct bf_fsinfo *fi);
/* True once a write error has turned the filesystem read-only; why says why. */
bool bf_journal_failed(const struct bf_fsinfo *fi, const char **why);

#endif
