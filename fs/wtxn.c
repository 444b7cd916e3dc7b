/*
 * fs/wtxn.c - the write side's frame: the fs-wide lock, write ops (lock + transaction), the journal's hooks,
 * read-write open and close, sync, fsync and write(2).
 *
 * Owns: bf_fs_rdlock / bf_fs_wrlock / bf_fs_unlock, bf_wop_begin / bf_wop_end / bf_wop_root, the time and
 * sequence helpers, struct bf_nstate (per-mount write state) and its subvolume table, bf_fs_write_open /
 * bf_fs_write_close (called by bf_fs_open / bf_fs_close; the open replays a log tree, fs/logreplay.c), bf_fs_sync,
 * bf_fs_fsync, bf_fs_write.
 *
 * Key idea: one rwlock orders everything. Reads hold it shared and see the live trees; a change and a commit
 * hold it exclusively, so a change never races a read or another change, and the journal needs no locks. A
 * change that fails after it changed a tree cannot be undone item by item: bf_wop_end then aborts the whole
 * transaction, as the kernel's btrfs_abort_transaction does, and the mount turns read-only.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fs/wmeta.h"
#include "util/util.h"

/* ---------------- the lock ---------------- */

void bf_fs_rdlock(struct bf_fs *fs) { pthread_rwlock_rdlock(&fs->lock); }
void bf_fs_wrlock(struct bf_fs *fs) { pthread_rwlock_wrlock(&fs->lock); }
void bf_fs_unlock(struct bf_fs *fs) { pthread_rwlock_unlock(&fs->lock); }

bool bf_fs_writable(const struct bf_fs *fs) { return fs->writable; }

/* ---------------- write ops ---------------- */

int bf_wop_begin(struct bf_fs *fs, struct bf_wop *op)
{
	int r;

	memset(op, 0, sizeof(*op));
	op->fs = fs;
	if (!fs->writable)
		return -EROFS;
	bf_fs_wrlock(fs);
	r = fs->writable ? bf_txn_begin(fs->fi, &op->t) : -EROFS;
	if (r) {
		bf_fs_unlock(fs);
		return r;
	}
	return 0;
}

/* Space freed in the running transaction stays pinned until it commits: on ENOSPC the kernel commits and tries
   again (flush_space's COMMIT_TRANS). Only before op has changed anything; op then goes on in a new transaction. */
static int commit_for_space(struct bf_wop *op)
{
	int r;

	if (op->changed || op->reserved)
		return -ENOSPC;
	r = bf_commit(op->fs->fi);
	if (!r)
		r = bf_txn_begin(op->fs->fi, &op->t);
	return r;
}

int bf_wop_reserve(struct bf_wop *op, uint64_t items, bool fallback)
{
	int r = bf_data_reserve_meta(op->fs, op->t, items);

	if (r == -ENOSPC && commit_for_space(op) == 0)
		r = bf_data_reserve_meta(op->fs, op->t, items);
	if (r == -EIO)
		op->changed = true; /* writing out buffered data failed half-way */
	if (r == 0)
		op->reserved += items;
	return r == -ENOSPC && fallback ? 0 : r;
}

int bf_wop_end(struct bf_wop *op, int ret)
{
	struct bf_fs *fs = op->fs;
	int r;

	if (op->reserved)
		bf_extalloc_release_meta(bf_txn_alloc(fs->fi), op->reserved);
	if (ret < 0 && op->changed) {
		char what[128];
		snprintf(what, sizeof(what), "%s failed half-way", op->what ? op->what : "a change");
		bf_txn_abort(fs->fi, op->t, ret, what);
	}
	r = bf_txn_end(fs->fi, op->t);
	if (ret >= 0 && r < 0)
		ret = r;
	if (bf_journal_failed(fs->fi, NULL))
		fs->writable = false;
	bf_fs_unlock(fs);
	return ret;
}

struct bf_subvol_w *bf_subvol_w(struct bf_fs *fs, uint64_t root)
{
	struct bf_nstate *ns = fs->ns;

	for (size_t i = 0; i < ns->nsubvols; i++)
		if (ns->subvols[i].root == root)
			return &ns->subvols[i];
	if (ns->nsubvols == ns->subvols_cap) {
		size_t cap = ns->subvols_cap ? 2 * ns->subvols_cap : 8;
		struct bf_subvol_w *n = realloc(ns->subvols, cap * sizeof(*n));
		if (!n)
			return NULL;
		ns->subvols = n;
		ns->subvols_cap = cap;
	}
	ns->subvols[ns->nsubvols] = (struct bf_subvol_w){ root, 0, false };
	return &ns->subvols[ns->nsubvols++];
}

int bf_wop_root(struct bf_wop *op, uint64_t subvol, struct bf_root **root)
{
	struct bf_subvol_w *sw = bf_subvol_w(op->fs, subvol);
	int r;

	if (!sw)
		return -ENOMEM;
	r = bf_txn_root(op->fs->fi, op->t, subvol, root);
	if (!r && !sw->cleaned) {
		sw->cleaned = true; /* before: the cleanup itself comes back here */
		r = bf_orphan_cleanup(op, subvol);
	}
	return r;
}

int bf_wop_last_key(struct bf_wop *op, uint64_t subvol, const struct bf_key *max, struct bf_key *found)
{
	struct bf_root *tree;
	struct bf_path p;
	int r = bf_wop_root(op, subvol, &tree);

	if (r)
		return r;
	bf_path_init(&p, op->fs->env);
	r = bf_search_le(op->fs->env, tree, max, &p);
	if (r >= 0) {
		*found = bf_path_key(&p);
		r = 0;
	}
	bf_path_release(&p);
	return r;
}

/* ---------------- times and sequence ---------------- */

void bf_now(struct bf_timespec *ts)
{
	struct timespec now;

	clock_gettime(CLOCK_REALTIME, &now);
	put64(&ts->sec, (uint64_t)now.tv_sec);
	put32(&ts->nsec, (uint32_t)now.tv_nsec);
}

void bf_inode_touch(struct bf_inode_item *ii, unsigned what)
{
	struct bf_timespec now;

	bf_now(&now);
	if (what & BF_TOUCH_ATIME)
		ii->atime = now;
	if (what & BF_TOUCH_MTIME)
		ii->mtime = now;
	if (what & BF_TOUCH_CTIME)
		ii->ctime = now;
}

void bf_inode_inc_seq(struct bf_inode_item *ii) { put64(&ii->sequence, get64(ii->sequence) + 1); }

/* ---------------- the journal's hooks ---------------- */

static int hook_flush(void *arg, struct bf_trans *t) { return bf_data_flush_all(arg, t); }
static void hook_lock(void *arg) { bf_fs_wrlock(arg); }
static void hook_unlock(void *arg) { bf_fs_unlock(arg); }

/* An abort threw the transaction away: nothing cached may describe it any more. */
static void hook_aborted(void *arg)
{
	struct bf_fs *fs = arg;

	fs->writable = false;
	bf_inode_cache_clear(fs);
	if (fs->ns)
		memset(fs->ns->diridx, 0, sizeof(fs->ns->diridx));
}

/* ---------------- read-write open and close ---------------- */

static int nstate_new(struct bf_fs *fs)
{
	struct bf_nstate *ns = calloc(1, sizeof(*ns));

	if (!ns)
		return -ENOMEM;
	pthread_mutex_init(&ns->open_lock, NULL);
	fs->ns = ns;
	return 0;
}

static void nstate_free(struct bf_fs *fs)
{
	struct bf_nstate *ns = fs->ns;

	if (!ns)
		return;
	pthread_mutex_destroy(&ns->open_lock);
	free(ns->subvols);
	free(ns->open);
	free(ns);
	fs->ns = NULL;
}

/* True if subvolume root has ORPHAN_ITEMs (read-only look, so that a mount without them starts no
   transaction before the daemon forks). */
static bool has_orphans(struct bf_fs *fs, uint64_t root)
{
	struct bf_key min = { BF_ORPHAN_OBJECTID, BF_ORPHAN_ITEM_KEY, 0 };
	struct bf_root tree;
	struct bf_path p;
	bool found = false;

	if (bf_fs_root(fs, root, &tree))
		return false;
	bf_path_init(&p, fs->env);
	if (bf_search(fs->env, &tree, &min, &p) >= 0 && bf_path_valid(&p)) {
		struct bf_key k = bf_path_key(&p);
		found = k.objectid == BF_ORPHAN_OBJECTID && k.type == BF_ORPHAN_ITEM_KEY;
	}
	bf_path_release(&p);
	return found;
}

/* The kernel cleans the orphans of the top-level subvolume at mount and of others when they are first looked
   up; here: subvolume 5 and the mounted one at mount, any other at its first change. */
static int mount_cleanup(struct bf_fs *fs)
{
	uint64_t ids[2] = { BF_FS_TREE_OBJECTID, fs->mount_root };
	struct bf_wop op;
	struct bf_root *root;
	int r = 0;

	for (int i = 0; i < 2 && !r; i++) {
		if (!has_orphans(fs, ids[i]))
			continue;
		r = bf_wop_begin(fs, &op);
		if (r)
			return r;
		op.what = "orphan cleanup";
		r = bf_wop_root(&op, ids[i], &root);
		if (r == -EROFS)
			r = 0; /* a read-only snapshot keeps its orphans, as with the kernel */
		if (!r)
			r = bf_commit(fs->fi);
		r = bf_wop_end(&op, r);
	}
	return r;
}

int bf_fs_write_open(struct bf_fs *fs, const struct bf_fs_opts *o, char *err, size_t errlen)
{
	struct bf_journal_hooks hooks = { hook_flush, hook_lock, hook_unlock, hook_aborted, fs };
	char why[512] = "";
	int r;

	if (!o->open.writable)
		return 0;
	r = nstate_new(fs);
	if (r)
		return bf_err(err, errlen, r, "out of memory");
	fs->fi->log_replay = true; /* bf_log_replay below, before anything else changes */
	r = bf_journal_open(fs->fi, &hooks, o->commit_interval, why, sizeof(why));
	if (r == -EROFS) {
		bf_log(BF_LOG_WARN, "%s: mounting read-only: %s%s", o->open.paths[0], why,
		       fs->fi->log_root ? "; its log tree (changes fsynced after the last commit) is not replayed, so "
					  "this mount shows the last commit without them" : "");
		nstate_free(fs);
		return 0;
	}
	if (r) {
		nstate_free(fs);
		return bf_err(err, errlen, r, "%s: cannot prepare the filesystem for writing: %s", o->open.paths[0],
			      why[0] ? why : strerror(-r));
	}
	fs->writable = true;
	if (fs->fi->log_root && (r = bf_log_replay(fs, why, sizeof(why))) != 0)
		return bf_err(err, errlen, r, "%s: %s", o->open.paths[0], why);
	r = mount_cleanup(fs);
	if (r)
		return bf_err(err, errlen, r, "%s: removing the files left unlinked-but-open at the last unmount "
			      "failed: %s", o->open.paths[0], strerror(-r));
	return 0;
}

int bf_fs_write_close(struct bf_fs *fs)
{
	int r = 0;

	if (fs->fi && fs->fi->journal) {
		/* The commit thread takes the write lock itself: bf_journal_close stops it before committing. */
		r = bf_journal_close(fs->fi);
		if (r)
			bf_log(BF_LOG_ERR, "the final commit at unmount failed: %s; the image keeps the state of the last "
			       "successful commit", strerror(-r));
	}
	bf_data_close(fs);
	nstate_free(fs);
	fs->writable = false;
	return r;
}

/* ---------------- sync, fsync, write ---------------- */

int bf_fs_may_write(struct bf_fs *fs, uint64_t nodeid)
{
	struct bf_wop op;
	struct bf_wino w;
	uint64_t root, ino;
	int r = bf_wop_begin(fs, &op);

	if (r)
		return r;
	r = bf_nodeid_split(fs, nodeid, &root, &ino);
	if (!r)
		r = bf_wino_load(&op, root, ino, &w);
	if (!r && (get64(w.ii.flags) & BF_INODE_READONLY))
		r = -EACCES; /* btrfs_permission */
	return bf_wop_end(&op, r);
}


int bf_fs_sync(struct bf_fs *fs)
{
	int r = 0;

	if (!fs->fi->journal)
		return 0;
	bf_fs_wrlock(fs);
	if (bf_journal_failed(fs->fi, NULL))
		r = -EIO;
	else
		r = bf_commit(fs->fi);
	if (bf_journal_failed(fs->fi, NULL))
		fs->writable = false;
	bf_fs_unlock(fs);
	return r;
}

/* fsync and fdatasync write the log where it can say the change (fs/fsync_log.c), else commit. A directory's
   fsync commits. */
int bf_fs_fsync(struct bf_fs *fs, uint64_t nodeid, bool datasync)
{
	struct bf_wop op;
	uint64_t root, ino;
	int r;

	(void)datasync; /* the log holds the inode item either way, as the kernel's does */
	if (!fs->fi->journal)
		return 0;
	if (bf_journal_failed(fs->fi, NULL))
		return -EIO;
	if (bf_nodeid_split(fs, nodeid, &root, &ino) != 0)
		return bf_fs_sync(fs);
	r = bf_wop_begin(fs, &op);
	if (r)
		return r == -EROFS && bf_journal_failed(fs->fi, NULL) ? -EIO : r;
	op.what = "fsync";
	r = bf_fsync_log(&op, root, ino);
	if (r == 1 || (r < 0 && !op.changed)) /* a commit makes everything durable, whatever stopped the log */
		r = bf_commit(fs->fi);
	return bf_wop_end(&op, r);
}

ssize_t bf_fs_write(struct bf_fs *fs, struct bf_file *f, const void *buf, size_t size, uint64_t off)
{
	struct bf_wop op;
	uint64_t root, ino;
	ssize_t n;
	int r;

	bf_file_ident(f, &root, &ino);
	r = bf_wop_begin(fs, &op);
	if (r)
		return r;
	op.what = "write";
	n = bf_data_write(fs, op.t, root, ino, buf, size, off);
	if (n == -ENOSPC && commit_for_space(&op) == 0) /* freed data space is pinned until a commit */
		n = bf_data_write(fs, op.t, root, ino, buf, size, off);
	/* The data path changes trees only when it flushes; its tree errors need the abort. */
	op.changed = n == -EIO || n == -EUCLEAN;
	r = bf_wop_end(&op, n < 0 ? (int)n : 0);
	return r < 0 ? r : n;
}
