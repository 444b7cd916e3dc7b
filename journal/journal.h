/*
 * journal/journal.h - superblocks, opening a filesystem, transactions and commit, the fsync log.
 *
 * Owns: reading and validating superblocks (an intact primary wins; else the newest valid copy), matching the
 * given devices into one volume, bootstrapping the chunk map (system chunk array, then the chunk tree), and
 * finding the roots of the global trees; transactions and the commit protocol; writing the fsync log (the log
 * root tree and one log tree per subvolume). Later: replaying a log.
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

/* Read the superblock of one device into *out: the primary if it is intact (as the kernel), else the valid copy
   with the highest generation.
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
	/* Set by the opener before bf_journal_open: it replays the log tree before any other change (fs/logreplay.c).
	   Without it an image with a log tree stays read-only, so that no commit can drop the log. */
	bool log_replay;
	struct bf_journal *journal; /* journal/trans.c: set by bf_journal_open on writable mounts, else NULL */
};

int bf_fsinfo_open(const struct bf_open_opts *o, struct bf_fsinfo **out, char *err, size_t errlen);
/* Fill the decoded fields (features, sizes, csum type, tree and chunk roots) from fi->super; used by open and by
   the inspector's best-effort open of damaged images. */
void bf_fsinfo_from_super(struct bf_fsinfo *fi);
void bf_fsinfo_close(struct bf_fsinfo *fi);

/* Find a tree's root item in the root tree (the newest: highest key offset for that objectid).
   Returns 0, -ENOENT, or -EIO/-EUCLEAN. item (may be NULL) gets the root item, zero-filled past a legacy
   item's end. */
int bf_find_root(struct bf_fsinfo *fi, uint64_t objectid, struct bf_root *root, struct bf_root_item *item);

/* ================= transactions and commit (journal/trans.c, journal/commit.c, journal/superwrite.c) ============
 *
 * One transaction runs at a time; its id (transid) is the last committed generation + 1. Every change to the
 * filesystem happens between bf_txn_begin and bf_txn_end while the caller holds the filesystem's write lock (fs/
 * owns it: readers shared, writers and the commit exclusive), so nothing below needs locks of its own. While a
 * transaction runs, the roots in struct bf_fsinfo (tree_root, extent_root, ...) and those bf_txn_root hands out are
 * the live ones: readers (under the shared lock) see every change at once, committed or not.
 * bf_commit writes the transaction out, as the kernel's btrfs_commit_transaction:
 *   1. the flush hook (the fs layer gives buffered file data its extents, inside the transaction);
 *   2. the root tree's root block is copied (every commit writes a new tree root, as commit_cowonly_roots does);
 *   3. loop until nothing changes: run the allocator's queued extent-reference changes; update the root item of
 *      every tree whose root block or bytes_used moved (bytenr, level, generation, bytes_used, generation_v2, and
 *      for subvolumes changed in the transaction ctransid and ctime; a legacy-size item is enlarged);
 *   4. write every dirty tree block (checksummed), flush every device;
 *   5. write every superblock copy that fits on every device (generation, roots, bytes_used, the device's own
 *      dev item from the chunk tree, log root cleared, the next backup-root slot filled as the kernel's
 *      backup_super_roots rotates them), flush;
 *   6. unpin the extents freed in the transaction (the allocator may reuse them from now on).
 * A failure in 1-5, or bf_txn_abort after a change failed half-way, aborts: the running transaction is dropped,
 * the live roots return to the last commit, the filesystem turns read-only with a message saying why
 * (bf_journal_failed), and the image keeps the last committed state.
 * A transaction commits when it has run commit_interval seconds (a commit thread, started by the first
 * bf_txn_begin - not by bf_journal_open, because the daemon forks after opening - wakes up for it; it takes the
 * write lock through the hooks), when its dirty tree blocks pass a memory bound (checked at bf_txn_end), on
 * bf_commit (sync, fsync) and on bf_journal_close.
 */
struct bf_trans;      /* btree/btree.h */
struct bf_extalloc;   /* alloc/alloc.h: the extent allocator */
struct bf_journal;    /* private to journal/: running transaction, tree table, commit thread */

struct bf_journal_hooks {
	/* At the start of each commit, with the write lock held, t the transaction being committed: write buffered
	   file data (may change trees through bf_txn_root; bf_txn_begin/end inside it join t and never commit). */
	int (*flush)(void *arg, struct bf_trans *t);
	/* Take / drop the fs write lock (used by the commit thread only). */
	void (*lock)(void *arg);
	void (*unlock)(void *arg);
	/* After an abort (write lock held): drop every cache that may hold uncommitted state. May be NULL. */
	void (*aborted)(void *arg);
	void *arg;
};

/* Prepare fi for writing (opened with writable = true): check that this image may be written, open the extent
   allocator, load the tree table and backup-root position. -EROFS (with err saying why, and fi->readonly set)
   for images that must stay read-only: a log tree nobody will replay (fi->log_replay unset), unknown compat_ro
   features, RAID5/6, simple quotas or a quota rescan in progress, missing or read-only devices, superblock flags
   (error, seeding, metadump, changing fsid). Qgroups are marked inconsistent by each commit (journal/qgroup.c).
   commit_interval in seconds (0 = the kernel's default, 30). */
int bf_journal_open(struct bf_fsinfo *fi, const struct bf_journal_hooks *hooks, unsigned commit_interval,
		    char *err, size_t errlen);
/* Stop the commit thread, commit what is pending, close the allocator. Returns the final commit's result. The
   caller guarantees no other thread uses fi any more. */
int bf_journal_close(struct bf_fsinfo *fi);

/* Start (or join) the running transaction. The caller holds the fs write lock until bf_txn_end. -EROFS when
   fi is not writable or a commit failed. */
int bf_txn_begin(struct bf_fsinfo *fi, struct bf_trans **t);
/* Leave the transaction; commits if a commit is due or dirty memory passed its bound (never inside the flush
   hook). Returns 0 or the commit's error. */
int bf_txn_end(struct bf_fsinfo *fi, struct bf_trans *t);
/* A change failed half-way (the btree layer's "must be aborted" errors): abort as described above. what says
   what was being done (for the message). */
void bf_txn_abort(struct bf_fsinfo *fi, struct bf_trans *t, int err, const char *what);
/* The live, changeable root of tree `objectid` in t: a subvolume (5 or 256..), or the csum, uuid or root tree.
   btree calls update it in place, and the commit writes it into its root item. -ENOENT if there is no such tree
   (or the subvolume is being deleted), -EROFS for a read-only snapshot. For a subvolume, its root item's ctransid
   and ctime are updated at commit (the kernel's btrfs_update_root_times). */
int bf_txn_root(struct bf_fsinfo *fi, struct bf_trans *t, uint64_t objectid, struct bf_root **root);
/* For readers (shared lock): a copy of the live root of a tree the journal tracks; -ENOENT if it tracks none
   (the tree has not changed since mount: its root item is current). */
int bf_journal_root(const struct bf_fsinfo *fi, uint64_t objectid, struct bf_root *out);
/* The extent allocator (data extents and their references); NULL on a read-only mount. */
struct bf_extalloc *bf_txn_alloc(struct bf_fsinfo *fi);
/* Commit now (sync, fsync, unmount). The caller holds the fs write lock. 0 if nothing was pending; a
   transaction that changed no tree ends without writing anything (its id is reused by the next one). */
int bf_commit(struct bf_fsinfo *fi);
/* True once a failed commit or an abort has turned the filesystem read-only; *why (may be NULL) says why. */
bool bf_journal_failed(const struct bf_fsinfo *fi, const char **why);
/* Number of commits since open (for tests and statistics). */
uint64_t bf_journal_commits(const struct bf_fsinfo *fi);
/* True while a transaction runs (changes not yet committed). */
bool bf_txn_running(const struct bf_fsinfo *fi);

/* ================= the fsync log (journal/log.c) =================
 *
 * fsync writes a log instead of a commit, in the kernel's on-disk format: a log root tree (owner
 * BTRFS_TREE_LOG_OBJECTID) whose ROOT_ITEMs (TREE_LOG_OBJECTID, ROOT_ITEM, subvolume id) point at one log tree per
 * subvolume; the fs layer copies the fsynced inodes' items into the log trees; bf_log_sync writes the log blocks
 * (generation = the running transaction's id, no extent items, space pinned until the next commit), flushes,
 * and writes the primary superblocks of the last commit with log_root set. The next commit writes log_root = 0
 * and drops the log; an abort drops it too (the superblock on disk still names the last synced log, which stays
 * intact: written log blocks are never changed in place and their space is not reused before a commit).
 * Data extents a log names are safe from reuse until that commit: the allocator pins every data extent freed
 * in a transaction until its commit. All calls need the fs write lock and a running transaction.
 */
/* The log tree of subvolume subvol in the running transaction (created, with the log root tree, on first use):
   change it with btree calls on *lt and *root. -EROFS on a failed or read-only filesystem, -EINVAL without a
   running transaction. */
int bf_log_tree(struct bf_fsinfo *fi, uint64_t subvol, struct bf_trans **lt, struct bf_root **root);
/* The data range [start, start + len) has its checksums in the log: 1 if that was recorded before, 0 if it is
   now, -EEXIST for a partial overlap with a recorded range, -ENOMEM, -EINVAL. */
int bf_log_csums_logged(struct bf_fsinfo *fi, uint64_t start, uint64_t len);
/* Make the log durable (root items, blocks, flush, primary superblocks, flush). -EAGAIN when no log may be
   written in this transaction (it made a chunk the committed chunk tree does not map); any error leaves the
   superblock naming the last good log (or none): the caller then commits, which discards the log. */
int bf_log_sync(struct bf_fsinfo *fi);
/* True if the running transaction has a log; logs synced since open (for tests and statistics). */
bool bf_log_active(const struct bf_fsinfo *fi);
uint64_t bf_log_syncs(const struct bf_fsinfo *fi);

#endif
