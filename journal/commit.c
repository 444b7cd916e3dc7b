/*
 * journal/commit.c - the commit protocol and the commit thread.
 *
 * Owns: bf_commit (steps 1-6 of journal/journal.h), the root-item updates that make the root tree describe the
 * changed trees (the kernel's commit_fs_roots and commit_cowonly_roots / update_cowonly_root), and the thread that
 * commits a transaction once it is commit_interval seconds old.
 *
 * Key idea: running the allocator's delayed references changes the extent, free-space and block-group trees;
 * writing a root item changes the root tree, whose new blocks queue more references; so the two alternate until
 * a round writes no root item. Each round can only write items for roots that moved since the last round, and a
 * block already copied in this transaction changes in place without queueing anything, so the loop ends after a
 * few rounds (bounded by BF_SETTLE_MAX as a guard against a bug). Only then are blocks written: nothing written
 * in step 4 changes again before the superblocks point at it.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "journal/journal_int.h"
#include "util/util.h"

/* ---------------- root items ---------------- */

/* A subvolume whose tree changed in the transaction running as transid (its root block is this
   transaction's): its root item gets ctransid and ctime (btrfs_update_root_times). */
static bool subvol_changed(const struct jtree *jt, uint64_t transid)
{
	return jt->subvol && jt->touched && jt->live->generation == transid;
}

static bool item_stale(const struct jtree *jt, uint64_t transid)
{
	if (!jt->has_item)
		return false;
	return jt->item_bytenr != jt->live->bytenr || jt->item_level != jt->live->level ||
	       jt->item_used != jt->used || (subvol_changed(jt, transid) && !jt->touched_written);
}

/* Set the fields a commit changes in a root item image (btrfs_set_root_node, btrfs_update_root and, for a
   changed subvolume, btrfs_update_root_times). */
static void fill_root_item(const struct jtree *jt, uint64_t transid, struct bf_root_item *ri)
{
	put64(&ri->bytenr, jt->live->bytenr);
	put64(&ri->generation, jt->live->generation);
	ri->level = jt->live->level;
	put64(&ri->bytes_used, jt->used);
	put64(&ri->generation_v2, jt->live->generation);
	if (subvol_changed(jt, transid)) {
		put64(&ri->ctransid, transid);
		ri->ctime = jt->ctime;
	}
}

/* An item of the legacy size is replaced by a full-size one (zero-filled past the old end), as the kernel's
   btrfs_update_root does the first time it updates an item written by an old kernel. */
static int rewrite_legacy_item(struct bf_journal *j, struct bf_trans *t, const struct jtree *jt,
			       struct bf_path *p, const uint8_t *old, uint32_t old_size)
{
	struct bf_root_item ri;
	int r;

	memset(&ri, 0, sizeof(ri));
	memcpy(&ri, old, bf_min64(old_size, sizeof(ri)));
	fill_root_item(jt, t->transid, &ri);
	bf_path_release(p);
	r = bf_search_slot(t, &j->fi->tree_root, &jt->item_key, -1, true, p);
	if (r == 0)
		r = bf_del_items(t, &j->fi->tree_root, p, p->slots[0], 1);
	else if (r > 0)
		r = -EUCLEAN;
	bf_path_release(p);
	return r ? r : bf_insert_item(t, &j->fi->tree_root, &jt->item_key, &ri, sizeof(ri));
}

static int update_root_item(struct bf_journal *j, struct bf_trans *t, struct jtree *jt)
{
	struct bf_path p;
	uint32_t size;
	uint8_t *data;
	int r;

	bf_path_init(&p, &j->fi->env);
	r = bf_search_slot(t, &j->fi->tree_root, &jt->item_key, 0, true, &p);
	if (r > 0) {
		bf_log(BF_LOG_ERR, "commit: the root item (%" PRIu64 " %u %" PRIu64 ") of tree %" PRIu64 " is gone "
		       "from the root tree", jt->item_key.objectid, jt->item_key.type, jt->item_key.offset,
		       jt->objectid);
		r = -EUCLEAN;
	}
	if (r == 0) {
		data = bf_path_item_mut(t, &p, &size);
		if (!data)
			r = -EINVAL;
		else if (size < sizeof(struct bf_root_item))
			r = rewrite_legacy_item(j, t, jt, &p, data, size);
		else
			fill_root_item(jt, t->transid, (struct bf_root_item *)data);
	}
	bf_path_release(&p);
	if (r)
		return r;
	jt->item_bytenr = jt->live->bytenr;
	jt->item_level = jt->live->level;
	jt->item_used = jt->used;
	jt->touched_written = subvol_changed(jt, t->transid);
	return 0;
}

/* Every commit writes a new root of the root tree (commit_cowonly_roots copies it first), so the superblock's
   generation is always its root block's generation. */
static int cow_tree_root(struct bf_journal *j, struct bf_trans *t)
{
	struct bf_key first = { 0, 0, 0 };
	struct bf_path p;
	int r;

	bf_path_init(&p, &j->fi->env);
	r = bf_search_slot(t, &j->fi->tree_root, &first, 0, true, &p);
	bf_path_release(&p);
	return r < 0 ? r : 0;
}

int bf_commit_settle(struct bf_journal *j, struct bf_trans *t)
{
	int r = cow_tree_root(j, t);

	for (int round = 0; !r; round++) {
		size_t written = 0;

		if (round == BF_SETTLE_MAX) {
			bf_log(BF_LOG_ERR, "commit: root items still changing after %d rounds (a bug in btrfs-fuse)",
			       round);
			return -ELOOP;
		}
		r = bf_extalloc_run_delayed(j->ea, t);
		for (size_t i = 0; !r && i < j->ntrees; i++) {
			if (!item_stale(j->trees[i], t->transid))
				continue;
			r = update_root_item(j, t, j->trees[i]);
			written++;
		}
		if (!r && !written)
			break;
	}
	return r;
}

/* ---------------- the commit ---------------- */

static int flush_devices(struct bf_journal *j)
{
	const struct bf_volume *v = &j->fi->vol;

	for (size_t i = 0; i < v->ndevs; i++) {
		const struct bf_device *d = v->devs[i];
		if (d->fd >= 0 && bf_dev_flush(d) != 0) {
			bf_log(BF_LOG_ERR, "commit: flushing device %" PRIu64 " (%s) failed", d->devid,
			       d->path ? d->path : "?");
			return -EIO;
		}
	}
	return 0;
}

/* After the superblocks are on disk: the running transaction's state becomes the committed one. */
static void commit_done(struct bf_journal *j, struct bf_trans *t)
{
	struct bf_fsinfo *fi = j->fi;

	for (size_t i = 0; i < j->ntrees; i++) {
		struct jtree *jt = j->trees[i];
		jt->committed = *jt->live;
		jt->committed_used = jt->used;
		jt->touched = jt->touched_written = false;
	}
	fi->generation = t->transid;
	fi->env.super_generation = t->transid;
	j->committed_super = fi->super;
	j->running = NULL;
	j->depth = 0;
	j->commits++;
	bf_trans_destroy(t);
	bf_log_discard(j); /* the superblocks just written say log_root = 0 */
}

/* True if the transaction changed nothing (no tree block was copied or created, so no root moved): a change
   that failed its checks, or a write whose data is all gone again. It ends without a commit, as the kernel
   commits no transaction it never joined to a tree. After a log replay the superblock must be written anyway:
   the one on disk still names the replayed log. */
static bool nothing_changed(const struct bf_journal *j, const struct bf_trans *t)
{
	if (t->ndirty || get64(j->committed_super.log_root))
		return false;
	for (size_t i = 0; i < j->ntrees; i++)
		if (j->trees[i]->live->bytenr != j->trees[i]->committed.bytenr)
			return false;
	return true;
}

/* Steps 2-5; *step names the one that failed. 1: nothing to write. */
static int write_out(struct bf_journal *j, struct bf_trans *t, const char **step)
{
	int r;

	*step = "updating root items and extent references";
	r = bf_extalloc_run_delayed(j->ea, t);
	/* With a log synced, the superblock on disk names it: only a real commit may clear it (the shortcut would
	   unpin the log's blocks while the superblock still points at them). */
	if (!r && nothing_changed(j, t) && !j->log)
		return 1;
	if (!r)
		r = bf_qgroup_commit(j, t);
	if (!r)
		r = bf_commit_settle(j, t);
	if (!r) {
		*step = "writing tree blocks";
		r = bf_trans_write_dirty(t);
	}
	if (!r) {
		*step = "flushing devices";
		r = flush_devices(j);
	}
	if (!r) {
		*step = "writing superblocks";
		r = bf_super_commit(j, t->transid);
	}
	return r;
}

int bf_commit(struct bf_fsinfo *fi)
{
	struct bf_journal *j = fi->journal;
	struct bf_trans *t;
	const char *step = "flushing file data";
	int r = 0;

	if (!j || j->failed)
		return -EROFS;
	if (!j->running || j->in_commit)
		return 0;
	t = j->running;
	j->in_commit = true;
	if (j->hooks.flush)
		r = j->hooks.flush(j->hooks.arg, t);
	if (j->failed) { /* the flush hook aborted the transaction (and said why); t is gone */
		j->in_commit = false;
		return -EROFS;
	}
	if (!r)
		r = write_out(j, t, &step);
	j->in_commit = false;
	if (r == 1) { /* nothing to write: the transaction just ends, its id is used by the next one */
		bf_extalloc_committed(j->ea);
		j->running = NULL;
		j->depth = 0;
		for (size_t i = 0; i < j->ntrees; i++)
			j->trees[i]->touched = j->trees[i]->touched_written = false;
		bf_trans_destroy(t);
		return 0;
	}
	if (r) {
		bf_journal_do_abort(j, r, "commit failed while %s", step);
		return r;
	}
	bf_extalloc_committed(j->ea);
	bf_trace("commit", "\"generation\":%" PRIu64 ",\"root\":%" PRIu64, get64(fi->super.generation),
		 get64(fi->super.root));
	commit_done(j, t);
	return 0;
}

/* ---------------- the commit thread ---------------- */

static bool running_old(const struct bf_journal *j, struct timespec *next)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	*next = now;
	next->tv_sec += (time_t)j->interval;
	if (!j->running)
		return false;
	struct timespec due = j->running_since;
	due.tv_sec += (time_t)j->interval;
	if (now.tv_sec > due.tv_sec || (now.tv_sec == due.tv_sec && now.tv_nsec >= due.tv_nsec))
		return true;
	*next = due;
	return false;
}

/* Wait until `until` (CLOCK_MONOTONIC) or stop; true if asked to stop. */
static bool wait_until(struct bf_journal *j, const struct timespec *until)
{
	bool stop;

	pthread_mutex_lock(&j->tlock);
	while (!j->stop && pthread_cond_timedwait(&j->tcond, &j->tlock, until) == 0)
		;
	stop = j->stop;
	pthread_mutex_unlock(&j->tlock);
	return stop;
}

static void *commit_thread(void *arg)
{
	struct bf_journal *j = arg;
	struct timespec next;

	clock_gettime(CLOCK_MONOTONIC, &next);
	next.tv_sec += (time_t)j->interval;
	while (!wait_until(j, &next)) {
		j->hooks.lock(j->hooks.arg);
		if (!j->failed && running_old(j, &next)) {
			int r = bf_commit(j->fi);
			if (r)
				bf_log(BF_LOG_ERR, "periodic commit failed: %s", strerror(-r));
			clock_gettime(CLOCK_MONOTONIC, &next);
			next.tv_sec += (time_t)j->interval;
		}
		j->hooks.unlock(j->hooks.arg);
	}
	return NULL;
}

void bf_journal_start_thread(struct bf_journal *j)
{
	pthread_condattr_t ca;

	if (j->thread_started && j->thread_pid == getpid())
		return;
	/* In a child of the process that started it (the daemon forks after open), the thread does not exist: the
	   mutex and condition variable copied with the memory are set up anew. */
	j->thread_started = false;
	if (!j->hooks.lock || !j->hooks.unlock)
		return;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&j->tcond, &ca);
	pthread_condattr_destroy(&ca);
	pthread_mutex_init(&j->tlock, NULL);
	j->stop = false;
	if (pthread_create(&j->thread, NULL, commit_thread, j) != 0) {
		bf_log(BF_LOG_WARN, "cannot start the commit thread: changes are committed only when a transaction "
		       "grows large, on sync/fsync and at unmount");
		pthread_cond_destroy(&j->tcond);
		pthread_mutex_destroy(&j->tlock);
		j->thread_started = false;
		j->hooks.lock = NULL; /* do not try again */
		return;
	}
	j->thread_started = true;
	j->thread_pid = getpid();
}

void bf_journal_stop_thread(struct bf_journal *j)
{
	if (!j->thread_started || j->thread_pid != getpid())
		return;
	pthread_mutex_lock(&j->tlock);
	j->stop = true;
	pthread_cond_signal(&j->tcond);
	pthread_mutex_unlock(&j->tlock);
	pthread_join(j->thread, NULL);
	pthread_cond_destroy(&j->tcond);
	pthread_mutex_destroy(&j->tlock);
	j->thread_started = false;
}
