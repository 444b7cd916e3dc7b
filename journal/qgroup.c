/*
 * journal/qgroup.c - quota groups (qgroups) on writable mounts.
 *
 * Owns: the decision whether an image with quotas may be written (bf_qgroup_why_readonly), tracking the quota tree
 * (bf_qgroup_open), and the qgroup status item that every commit rewrites (bf_qgroup_commit).
 *
 * Key idea: btrfs-fuse does not count qgroup usage. It does what the kernel does when it cannot account a change
 * (qgroup_mark_inconsistent): the status item (quota tree, key (0, QGROUP_STATUS, 0)) gets the INCONSISTENT flag,
 * and `btrfs quota rescan` recounts everything later. As the kernel's btrfs_run_qgroups does in every commit of a
 * filesystem with a quota tree, each commit also writes the transaction id into the status item's generation:
 * the kernel compares it with the superblock's generation at mount and complains about a mismatch. A commit that
 * writes nothing does not run this, so an image that was only mounted keeps its exact counts. Images this cannot
 * keep right stay read-only: simple quotas (the kernel never marks them inconsistent: their counts must be exact
 * at every extent allocation), a rescan in progress (resumed by the kernel, it would clear the flag without
 * counting what changed behind its cursor), and a status item the kernel itself would not use.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "journal/journal_int.h"
#include "util/util.h"

static const struct bf_key status_key = { 0, BF_QGROUP_STATUS_KEY, 0 };

/* Read the status item of the quota tree at root into *st. -ENOENT if there is none. */
static int read_status(struct bf_fsinfo *fi, const struct bf_root *root, struct bf_qgroup_status_item *st)
{
	struct bf_path p;
	int r;

	bf_path_init(&p, &fi->env);
	r = bf_search_le(&fi->env, root, &status_key, &p);
	if (r >= 0) {
		struct bf_key k = bf_path_key(&p);
		uint32_t size;
		const uint8_t *data = bf_path_item(&p, &size);

		r = -ENOENT;
		if (!bf_key_cmp(&k, &status_key)) {
			r = -EUCLEAN;
			if (size >= sizeof(*st)) {
				memcpy(st, data, sizeof(*st));
				r = 0;
			}
		}
	}
	bf_path_release(&p);
	return r;
}

const char *bf_qgroup_why_readonly(struct bf_fsinfo *fi, char *buf, size_t len)
{
	struct bf_root root = { BF_QUOTA_TREE_OBJECTID, 0, 0, 0 };
	struct bf_qgroup_status_item st;
	int r;

	if (fi->incompat & BF_FEATURE_INCOMPAT_SIMPLE_QUOTA)
		return "simple quotas (squota) are enabled: their counts must be exact at every extent allocation (the "
		       "kernel never marks them inconsistent), and btrfs-fuse does not keep them; disable them with "
		       "'btrfs quota disable' on a kernel mount to write with btrfs-fuse";
	r = bf_find_root(fi, BF_QUOTA_TREE_OBJECTID, &root, NULL);
	if (r == -ENOENT)
		return NULL;
	if (!r)
		r = read_status(fi, &root, &st);
	if (r) {
		snprintf(buf, len, "the quota tree%s cannot be read (%s); run 'btrfs check --readonly' on the image",
			 r == -ENOENT ? "'s status item" : "", strerror(-r));
		return buf;
	}
	if (get64(st.version) != BF_QGROUP_STATUS_VERSION) {
		snprintf(buf, len, "the qgroup status item has version %" PRIu64 " (btrfs-fuse and the kernel know "
			 "version %d); disable quotas with 'btrfs quota disable' on a kernel mount",
			 get64(st.version), BF_QGROUP_STATUS_VERSION);
		return buf;
	}
	if (get64(st.flags) & BF_QGROUP_STATUS_FLAG_RESCAN)
		return "a quota rescan is in progress; let it finish on a kernel mount ('btrfs quota rescan -w') "
		       "before writing with btrfs-fuse";
	return NULL;
}

int bf_qgroup_open(struct bf_journal *j)
{
	struct jtree *jt;
	int r = bf_jtree_add_tree(j, BF_QUOTA_TREE_OBJECTID, &jt);

	return r == -ENOENT ? 0 : r;
}

int bf_qgroup_commit(struct bf_journal *j, struct bf_trans *t)
{
	struct jtree *jt = bf_jtree_find(j, BF_QUOTA_TREE_OBJECTID);
	struct bf_qgroup_status_item *st;
	struct bf_path p;
	uint32_t size;
	int r;

	if (!jt)
		return 0;
	bf_path_init(&p, &j->fi->env);
	r = bf_search_slot(t, jt->live, &status_key, 0, true, &p);
	if (r > 0) {
		bf_log(BF_LOG_ERR, "commit: the qgroup status item is gone from the quota tree");
		r = -EUCLEAN;
	}
	if (!r) {
		st = (struct bf_qgroup_status_item *)bf_path_item_mut(t, &p, &size);
		if (!st || size < sizeof(*st)) {
			r = -EUCLEAN;
		} else {
			uint64_t flags = get64(st->flags);
			/* the kernel accounts (and so marks) only while quotas are on */
			if (flags & BF_QGROUP_STATUS_FLAG_ON)
				flags |= BF_QGROUP_STATUS_FLAG_INCONSISTENT;
			put64(&st->flags, flags);
			put64(&st->generation, t->transid);
		}
	}
	bf_path_release(&p);
	return r;
}
