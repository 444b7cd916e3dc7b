/*
 * journal/journal_int.h - what the transaction files of the journal layer share (journal/trans.c,
 * journal/commit.c, journal/superwrite.c); not for other layers.
 *
 * Owns: struct bf_journal (the running transaction, the table of trees whose roots the journal tracks, the
 * commit thread's state) and the calls between the three files.
 * Key idea: every tree the filesystem may change has one table entry holding three views of its root: the live
 * root (what btree calls change: a field of struct bf_fsinfo for the global trees, the entry's own copy for
 * subvolumes), the committed root (restored on abort), and what the tree's root item in the live root tree says
 * (the commit rewrites the item while the two differ). Nothing here takes a lock: the fs write lock serializes
 * every caller (the commit thread takes it through the hooks).
 */
#ifndef BF_JOURNAL_INT_H
#define BF_JOURNAL_INT_H

#include <pthread.h>
#include <sys/types.h>
#include <time.h>

#include "journal/journal.h"

#define BF_DEFAULT_COMMIT_INTERVAL 30
/* Dirty tree blocks of one transaction that make bf_txn_end commit (they stay pinned in the block cache). */
#define BF_DIRTY_TREE_LIMIT (64ULL << 20)
/* Rounds of "run delayed refs, update root items" after which the commit gives up (a bug, never a real case). */
#define BF_SETTLE_MAX 64

struct jtree {
	uint64_t objectid;
	struct bf_root *live;       /* &fi->X_root for the global trees, &own for subvolumes */
	struct bf_root own;
	struct bf_root committed;   /* as of the last commit */
	bool has_item;              /* false for the root and chunk trees (the superblock names them) */
	bool subvol;                /* a subvolume tree (5, 256..): ctransid and ctime follow changes */
	bool readonly;              /* a read-only snapshot (root item flag) */
	struct bf_key item_key;     /* its root item in the root tree */
	/* root item bytes_used: the kernel counts nodesize per block a split adds and a merge removes */
	uint64_t used, committed_used;
	/* what the root item in the live root tree says */
	uint64_t item_bytenr, item_used;
	uint8_t item_level;
	/* changed through bf_txn_root in the running transaction, and when (for ctransid / ctime) */
	bool touched, touched_written;
	struct bf_timespec ctime;
};

struct bf_journal {
	struct bf_fsinfo *fi;
	struct bf_extalloc *ea;
	const struct bf_alloc_ops *aops; /* the allocator's */
	struct bf_alloc_ops ops;         /* ours: forwards to aops and counts blocks per tree */
	struct bf_journal_hooks hooks;
	struct jtree **trees;
	size_t ntrees, trees_cap;

	struct bf_trans trans;           /* reused by every transaction, so handles never dangle */
	struct bf_trans *running;        /* &trans while a transaction runs, else NULL */
	struct timespec running_since;   /* CLOCK_MONOTONIC */
	int depth;                       /* nested bf_txn_begin (the flush hook joins) */
	bool in_commit;
	uint64_t commits;
	struct bf_super committed_super; /* fi->super as of the last commit (restored on abort) */
	int backup_index;                /* the super_roots slot the next commit fills */
	bool update_uuid_gen;            /* the uuid tree was current at open: keep uuid_tree_generation current */
	bool failed;
	char why[512];
	struct bf_jlog *log;             /* journal/log.c: the fsync log of the running transaction, or NULL */
	uint64_t log_syncs;              /* logs written since open */

	unsigned interval;               /* seconds */
	pthread_t thread;
	bool thread_started, stop;
	pid_t thread_pid;                /* the process that started it: after a fork the child starts its own */
	pthread_mutex_t tlock;           /* guards stop and the condition variable only */
	pthread_cond_t tcond;
};

/* ---- journal/trans.c ---- */
struct jtree *bf_jtree_find(const struct bf_journal *j, uint64_t objectid);
/* At open: entries for the root, chunk, extent, device, csum, uuid, free-space and block-group trees (live roots
   in fi) and subvolume 5 (for the backup roots). */
int bf_jtree_register_globals(struct bf_journal *j);
void bf_journal_free_trees(struct bf_journal *j);
/* Set j->ops: the allocator ops the btree layer gets (forwarding to j->aops, counting blocks per tree). */
void bf_journal_init_ops(struct bf_journal *j);
/* The entry of tree objectid, loaded from its root item in the live root tree on first use. */
int bf_jtree_get(struct bf_journal *j, uint64_t objectid, struct jtree **out);
/* Track a global tree that has a root item but no root in fi (the quota tree); -ENOENT if it has no root item. */
int bf_jtree_add_tree(struct bf_journal *j, uint64_t objectid, struct jtree **out);
/* Drop the running transaction and return every tree and fi->super to the last commit; the filesystem turns
   read-only with why. */
void bf_journal_do_abort(struct bf_journal *j, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* ---- journal/commit.c ---- */
/* Start the commit thread if it is not running (at the first transaction); stop and join it (at close). */
void bf_journal_start_thread(struct bf_journal *j);
void bf_journal_stop_thread(struct bf_journal *j);
/* Write the root item of t's changed trees until nothing moves (step 3 of the commit). */
int bf_commit_settle(struct bf_journal *j, struct bf_trans *t);

/* ---- journal/qgroup.c ---- */
/* Why an image with quotas must stay read-only (simple quotas, a rescan in progress, an unusable status item), or
   NULL (also without quotas). buf holds the message when one needs formatting. */
const char *bf_qgroup_why_readonly(struct bf_fsinfo *fi, char *buf, size_t len);
/* At open: track the quota tree, if there is one. */
int bf_qgroup_open(struct bf_journal *j);
/* In every commit that writes (before the root items settle): mark the qgroup counts inconsistent and set the
   status item's generation to t's transid, as the kernel's btrfs_run_qgroups. Nothing without a quota tree. */
int bf_qgroup_commit(struct bf_journal *j, struct bf_trans *t);

/* ---- journal/superwrite.c ---- */
/* At open: the super_roots slot the first commit fills (after the newest one, as the kernel's init_tree_roots). */
int bf_backup_first_index(const struct bf_super *sb);
/* Steps 5 of the commit: fill fi->super for transaction transid, rotate the backup roots and write every copy on
   every device, flushing before and after. */
int bf_super_commit(struct bf_journal *j, uint64_t transid);
/* Fill backup slot idx of sb from the live roots (the kernel's backup_super_roots). */
void bf_backup_fill(struct bf_journal *j, struct bf_super *sb, int idx);

/* ---- journal/log.c ---- */
/* Forget the log (after a commit wrote log_root = 0, or on abort); its space is unpinned with the commit's. */
void bf_log_discard(struct bf_journal *j);

/* ---- journal/superwrite.c (for the log) ---- */
/* Write the primary superblock of every device as the last commit left it, with log_root / log_root_level set
   (the kernel's write_all_supers(fs_info, 1) in btrfs_sync_log), and flush. -EIO if a device's primary does not
   hold the last commit's generation or cannot be written. */
int bf_super_write_log(struct bf_journal *j, uint64_t log_root, uint8_t level);

#endif
