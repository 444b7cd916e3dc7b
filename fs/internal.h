/*
 * fs/internal.h - what the files of fs/ share with each other (not used outside fs/).
 *
 * Owns: struct bf_fs, the node-id mapping, the subvolume-root cache, inode loading, and the data-read helpers.
 * Key idea: an inode is named by (root id, objectid); everything else is derived from items in that root's tree.
 */
#ifndef BF_FS_INTERNAL_H
#define BF_FS_INTERNAL_H

#include <pthread.h>

#include "btree/btree.h"
#include "fs/fs.h"
#include "journal/journal.h"

struct bf_root_cache; /* fs/subvol.c */
struct bf_inode_cache; /* fs/inode.c */
struct bf_wstate;      /* fs/write.c */
struct bf_nstate;      /* fs/wtxn.c: the namespace write side (free objectids, dir index counters, open files) */

struct bf_fs {
	struct bf_fsinfo *fi;
	struct bf_tree_env *env; /* &fi->env */
	uint64_t mount_root;     /* subvolume id at the mount point */
	uint64_t mount_dir;      /* objectid of the directory at the mount point inside mount_root (256) */
	struct bf_root_cache *roots;
	struct bf_inode_cache *icache;
	pthread_mutex_t ino_map_lock; /* for the rare large-id st_ino table */
	struct bf_ino_map_entry *ino_map;
	size_t ino_map_len, ino_map_cap;
	struct bf_wstate *wstate; /* fs/write.c: buffered file data; NULL until the first write (calloc leaves it) */
	/* The fs-wide lock: every read call holds it shared, every change and every commit exclusively. */
	pthread_rwlock_t lock;
	bool writable;            /* mounted -o rw and the journal is open (false again once a commit failed) */
	struct bf_nstate *ns;     /* fs/wtxn.c; NULL on read-only mounts */
	/* Files open through bf_fs_open_file (fs/file.c): FUSE may never send the last releases when the
	   connection ends, so bf_fs_close releases whatever is left. */
	pthread_mutex_t files_lock;
	struct bf_file *files;
};

/* Release every file still open (fs/file.c; at unmount, before the journal closes). */
void bf_files_release_all(struct bf_fs *fs);

/* ---- node ids (fs/subvol.c) ---- */
uint64_t bf_nodeid_make(struct bf_fs *fs, uint64_t root, uint64_t objectid);
int bf_nodeid_split(struct bf_fs *fs, uint64_t nodeid, uint64_t *root, uint64_t *objectid); /* -ESTALE if unknown */
/* st_ino for (root, objectid): equal to the node id except for the mount root directory (1 -> 256). */
uint64_t bf_st_ino(struct bf_fs *fs, uint64_t root, uint64_t objectid);

/* ---- subvolume roots (fs/subvol.c) ---- */
/* The root of subvolume tree `id` (cached). -ENOENT if there is no such subvolume. */
int bf_fs_root(struct bf_fs *fs, uint64_t id, struct bf_root *out);

/* ---- inodes (fs/inode.c) ---- */
int bf_inode_load(struct bf_fs *fs, uint64_t root, uint64_t objectid, struct bf_inode_item *out);
void bf_inode_to_stat(struct bf_fs *fs, uint64_t root, uint64_t objectid, const struct bf_inode_item *ii,
		      struct stat *st);

/* ---- file data (fs/file.c, fs/datacsum.c) ---- */
/* Read [off, off+len) of the file's data (inode already loaded; len clipped by the caller to i_size) into buf:
   holes and prealloc read as zeros, inline and compressed extents decoded, checksums verified per sector with
   retry on other mirrors. Returns len or a negative errno. Used by bf_fs_read and readlink. */
ssize_t bf_file_read_range(struct bf_fs *fs, const struct bf_root *root, uint64_t objectid,
			   const struct bf_inode_item *ii, void *buf, size_t len, uint64_t off);
/* The (subvolume, inode) an open file reads (fs/file.c). */
void bf_file_ident(const struct bf_file *f, uint64_t *root, uint64_t *ino);

/* ---- file data writes (fs/write.c, fs/dirty.c, fs/extent_plan.c, fs/extent_write.c, fs/csum_write.c) ----
 * Delayed allocation, as the kernel's page cache and delalloc: bf_data_write only copies the bytes into a per-inode
 * map of dirty, sector-aligned ranges in memory and updates the inode item at once (i_size, mtime, ctime,
 * transid, sequence). Data extents are allocated, written (bf_vol_write, whole extents of up to 128 MiB) and
 * entered into the trees (file extent items replacing what was there, data refs, csum items, nbytes) when the
 * inode is flushed: by the commit's flush hook (bf_data_flush_all), by fsync (bf_data_flush_inode), or when all
 * buffered data passes 256 MiB. A file whose whole data fits (offset 0, i_size <= 2048 and < sectorsize) becomes
 * an inline extent, as with the kernel's max_inline=2048. Every write is copy-on-write: a committed extent is
 * never overwritten, also for NODATACOW inodes (as if they were COW files; valid, only slower); NODATASUM inodes
 * get no checksums. Without the NO_HOLES feature, holes get explicit hole extent items (merged with adjacent hole
 * items, like the kernel's fill_holes).
 * Locking: every call below needs the fs write lock held exclusively and t from bf_txn_begin, except
 * bf_data_dirty_next, bf_data_seq and bf_data_delalloc_bytes (fs lock held at least shared, as reads hold it).
 * root is the subvolume id, ino the inode objectid; the caller checked that it is a regular file. Errors:
 * bf_data_write and bf_data_setsize do everything that can fail without a tree change first (-EFBIG beyond the
 * largest file size, -ENOSPC when the data space cannot hold the buffered bytes or no metadata can be reserved for
 * their flush (after writing out all buffered data and trying a new chunk), -ENOMEM, -EISDIR/-EINVAL for a
 * non-regular inode, -EUCLEAN for a corrupt extent item), and return -EIO when a tree change failed half-way
 * (with a log line naming the real error; a failed read of a sector's old bytes is -EIO too, before any change,
 * where an abort is merely not needed): after -EIO, and after any error of the flush and evict calls, the
 * transaction must be aborted. */

/* write(2): buffer [off, off + len) of buf. Returns len or a negative errno. Writing past EOF first zeroes the
   tail of the old last sector and (without NO_HOLES) inserts hole extents, like the kernel's btrfs_cont_expand. */
ssize_t bf_data_write(struct bf_fs *fs, struct bf_trans *t, uint64_t root, uint64_t ino, const void *buf, size_t len,
		      uint64_t off);
/* truncate(2) / setattr size, like the kernel's btrfs_setsize: growing rewrites the old last sector with its tail
   zeroed and inserts hole extents (without NO_HOLES); shrinking drops buffered data and file extent items past
   the new size, trims the one across it to whole sectors without rewriting it (as the kernel; its bytes past EOF
   are never read and are zeroed when the file grows again), cuts an uncompressed inline extent, and drops data
   refs. Updates i_size, nbytes, and mtime/ctime when the size changes (the caller may then set explicit times). */
int bf_data_setsize(struct bf_fs *fs, struct bf_trans *t, uint64_t root, uint64_t ino, uint64_t size);
/* The inode is going away (last link gone and last open closed): forget its buffered data and delete all its
   file extent items, dropping their data refs (as the kernel's evict truncates to 0). The caller then deletes
   the inode's other items. */
int bf_data_evict(struct bf_fs *fs, struct bf_trans *t, uint64_t root, uint64_t ino);
/* Write out buffered data: of one inode (fsync; then commit), or of all (the flush hook at the start of every
   commit, and unmount). */
int bf_data_flush_inode(struct bf_fs *fs, struct bf_trans *t, uint64_t root, uint64_t ino);
/* Reserve metadata for `items` item changes (bf_extalloc_reserve_meta), escalating as the kernel's flush_space:
   on ENOSPC write out all buffered data (which gives its reservations back; -EIO if that failed half-way: abort),
   then force a metadata chunk. -ENOSPC then: the caller may commit and try once more. */
int bf_data_reserve_meta(struct bf_fs *fs, struct bf_trans *t, uint64_t items);
int bf_data_flush_all(struct bf_fs *fs, struct bf_trans *t);
/* True if something is buffered (for the commit logic: a commit with no dirty tree still flushes data). */
bool bf_data_dirty(const struct bf_fs *fs);
/* Free the buffers: at unmount after the last commit, and after an abort (the journal's aborted hook: buffered
   data belongs to the thrown-away transaction and must no longer show in reads). Anything buffered is lost. */
void bf_data_close(struct bf_fs *fs);
/* For the read path (fs/file.c): the first buffered range of (root, ino) intersecting [pos, end), clipped to it:
   true with [*dstart, *dend) and *data pointing at the bytes of *dstart (valid until the next write call). */
bool bf_data_dirty_next(struct bf_fs *fs, uint64_t root, uint64_t ino, uint64_t pos, uint64_t end, uint64_t *dstart,
			uint64_t *dend, const uint8_t **data);
/* ---- fsync through the log tree (fs/fsync_log.c) ---- */
struct bf_wop;
/* Make the file (root, ino) durable by writing the running transaction's log (its buffered data gets extents
   first). Needs a write op (op: fs write lock, running transaction). 0: durable (logged, or nothing to do); 1: the
   log cannot express it safely, commit instead; < 0: an error (with op->changed set when trees changed: abort). */
int bf_fsync_log(struct bf_wop *op, uint64_t root, uint64_t ino);

/* Bumped whenever any file extent item changes: readers drop cached extent maps when it moved. */
uint64_t bf_data_seq(const struct bf_fs *fs);
/* Buffered bytes of the inode not yet backed by extents past the old EOF (the kernel's new_delalloc_bytes, which
   btrfs_getattr adds to st_blocks: blocks = (round_up(nbytes) + round_up(delalloc)) >> 9). */
uint64_t bf_data_delalloc_bytes(struct bf_fs *fs, uint64_t root, uint64_t ino);

/* ---- the write side: locking, changes, inode items (fs/wtxn.c, fs/winode.c) ----
 * A change runs as one "write op": bf_wop_begin takes the fs write lock and begins (joins) the running
 * transaction, bf_wop_end ends it (the journal may commit there) and drops the lock. Inside, trees are changed
 * through the live roots from bf_wop_root. The first call that changes a tree's content sets op->changed; an
 * error returned to bf_wop_end after that aborts the transaction (the filesystem turns read-only, the image keeps
 * the last commit), so every check that can fail is made before the first change. */
void bf_fs_wrlock(struct bf_fs *fs); /* bf_fs_rdlock and bf_fs_unlock: fs/fs.h */

struct bf_wop {
	struct bf_fs *fs;
	struct bf_trans *t;
	bool changed;
	uint64_t reserved; /* metadata items reserved (bf_wop_reserve), released by bf_wop_end */
	const char *what;  /* what the op does, for the message of an abort ("rename", ...); may stay NULL */
};
/* -EROFS on a read-only mount or after a failed commit. */
int bf_wop_begin(struct bf_fs *fs, struct bf_wop *op);
/* Ends the op: ret < 0 after a change aborts the transaction. Returns ret, or the commit's error. */
int bf_wop_end(struct bf_wop *op, int ret);
/* Reserve room for the tree blocks of changing `items` items (the kernel's btrfs_start_transaction(root,
   items)), so that a full filesystem refuses the change with -ENOSPC before it starts instead of failing half-way.
   fallback: proceed on the global reserve when nothing is left (deletions, as the kernel's
   btrfs_start_transaction_fallback_global_rsv). */
int bf_wop_reserve(struct bf_wop *op, uint64_t items, bool fallback);
/* The live root of subvolume `subvol` in op's transaction (-EROFS for a read-only snapshot). */
int bf_wop_root(struct bf_wop *op, uint64_t subvol, struct bf_root **root);
/* The last key at or below max in subvolume tree `subvol` (live root): 0 and *found, -ENOENT if none, or an errno. */
int bf_wop_last_key(struct bf_wop *op, uint64_t subvol, const struct bf_key *max, struct bf_key *found);

/* The current time as the kernel's current_time() stamps inodes. */
void bf_now(struct bf_timespec *ts);
#define BF_TOUCH_ATIME 1u
#define BF_TOUCH_MTIME 2u
#define BF_TOUCH_CTIME 4u
/* Set the chosen times of ii to now. */
void bf_inode_touch(struct bf_inode_item *ii, unsigned what);
/* The kernel's inode_inc_iversion: sequence + 1. */
void bf_inode_inc_seq(struct bf_inode_item *ii);
/* Write ii as the inode item of (root, ino) in t (transid = t's, as the kernel's fill_inode_item) and into the
   inode cache. The item must exist. Changes a tree: the caller's op must be marked changed. */
int bf_inode_update(struct bf_fs *fs, struct bf_trans *t, uint64_t root, uint64_t ino, struct bf_inode_item *ii);
/* Replace the cached inode item (after a change) / drop the whole cache (after an aborted transaction). */
void bf_inode_cache_set(struct bf_fs *fs, uint64_t root, uint64_t objectid, const struct bf_inode_item *ii);
void bf_inode_cache_clear(struct bf_fs *fs);

/* Read-write open and close (fs/wtxn.c, called by bf_fs_open / bf_fs_close): the journal, orphan cleanup; the
   final commit. bf_fs_write_open leaves a read-only mount (with a warning) for images that must stay so. */
int bf_fs_write_open(struct bf_fs *fs, const struct bf_fs_opts *o, char *err, size_t errlen);

/* Replay the log tree the superblock names (fs/logreplay.c) as the kernel's btrfs_recover_log_trees does, and
   commit (which clears log_root). Called by bf_fs_write_open right after the journal opens, before any other
   change. On failure the transaction is aborted (the image keeps its last commit and its log, the mount is
   read-only) and err says what failed, at which log block, and what to do. */
int bf_log_replay(struct bf_fs *fs, char *err, size_t errlen);
int bf_fs_write_close(struct bf_fs *fs);
/* The subvolume and inode of an open file (fs/file.c). */
void bf_file_ident(const struct bf_file *f, uint64_t *root, uint64_t *ino);

/* ---- open files and orphans (fs/winode.c) ----
 * An inode whose last link goes while it is open stays (with an ORPHAN_ITEM, as the kernel's btrfs_orphan_add)
 * until its last open file is released; then its items are deleted. bf_fs_open_file / bf_fs_release_file call
 * these; both take no lock of their own choosing beyond a short mutex (release may take the write lock to delete
 * an orphan). */
void bf_open_get(struct bf_fs *fs, uint64_t root, uint64_t ino);
void bf_open_put(struct bf_fs *fs, uint64_t root, uint64_t ino);

#endif
