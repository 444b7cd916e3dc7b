/*
 * journal/log.c - the fsync log: the log root tree, one log tree per subvolume, and writing them out without a
 * commit (the kernel's tree-log.c btrfs_sync_log and disk-io.c btrfs_add_log_tree, writing side only).
 *
 * Owns: struct bf_jlog (the log of the running transaction), its own allocator ops, bf_log_tree, bf_log_sync,
 * bf_log_csums_logged and bf_log_discard.
 *
 * Key idea: the log is a second set of copy-on-write trees changed through a transaction handle of its own,
 * with the running transaction's id, so its blocks carry generation = last commit + 1 (what the kernel's
 * btrfs_replay_log expects of the log root) and owner BTRFS_TREE_LOG_OBJECTID. Its blocks get no extent items:
 * their space comes straight from committed metadata block groups and stays pinned until the next commit is on
 * disk, because until then the superblock may point at them. A sync writes each log tree's root into a ROOT_ITEM
 * (TREE_LOG_OBJECTID, ROOT_ITEM, subvolume) of the log root tree, writes the log's dirty blocks, flushes, and
 * writes the primary superblock of the last commit with log_root set (write_all_supers(fs_info, 1)). Written log
 * blocks are copied before the next change, so a later fsync of the same transaction adds to the log without
 * touching what the superblock points at. The next commit writes log_root = 0 and then drops the log; its space
 * returns with the commit's unpinning.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "journal/journal_int.h"
#include "util/util.h"

struct log_tree {
	uint64_t subvol;
	struct bf_root root;
	uint64_t item_bytenr; /* what its ROOT_ITEM in the log root tree says (0: no item yet) */
	uint8_t item_level;
};

struct bf_jlog {
	struct bf_trans trans;      /* the log's own handle: same transid, the ops below */
	struct bf_alloc_ops ops;
	struct bf_root root_tree;   /* the log root tree */
	struct log_tree *trees;
	size_t ntrees, trees_cap;
	uint64_t (*csums)[2];       /* data ranges [start, end) whose checksums the log holds */
	size_t ncsums, csums_cap;
};

/* ---------------- allocation: no extent items, pinned until the next commit ---------------- */

static int log_alloc(void *ctx, uint64_t owner, int level, uint64_t *bytenr)
{
	struct bf_journal *j = ctx;
	(void)owner;
	(void)level;
	return bf_extalloc_log_block(j->ea, bytenr);
}

/* A log block the log let go of: its space is pinned since its allocation and stays so until the commit. */
static void log_free(void *ctx, uint64_t bytenr, uint64_t owner, int level)
{
	(void)ctx;
	(void)owner;
	bf_trace("free", "\"kind\":\"log_block\",\"bytenr\":%" PRIu64 ",\"level\":%d", bytenr, level);
}

/* ---------------- lifecycle ---------------- */

static int log_new(struct bf_journal *j)
{
	struct bf_jlog *l = calloc(1, sizeof(*l));
	int r;

	if (!l)
		return -ENOMEM;
	l->ops = (struct bf_alloc_ops){ log_alloc, log_free, NULL, NULL };
	bf_trans_init(&l->trans, &j->fi->env, j->running->transid, &l->ops, j);
	r = bf_tree_create(&l->trans, BF_TREE_LOG_OBJECTID, &l->root_tree);
	if (r) {
		bf_trans_abort(&l->trans);
		bf_trans_destroy(&l->trans);
		free(l);
		return r;
	}
	j->log = l;
	return 0;
}

void bf_log_discard(struct bf_journal *j)
{
	struct bf_jlog *l = j->log;

	if (!l)
		return;
	bf_trans_abort(&l->trans); /* blocks changed but never written (a failed fsync): they leave the cache */
	bf_trans_destroy(&l->trans);
	free(l->trees);
	free(l->csums);
	free(l);
	j->log = NULL;
}

bool bf_txn_running(const struct bf_fsinfo *fi) { return fi->journal && fi->journal->running; }

bool bf_log_active(const struct bf_fsinfo *fi) { return fi->journal && fi->journal->log; }

int bf_log_tree(struct bf_fsinfo *fi, uint64_t subvol, struct bf_trans **lt, struct bf_root **root)
{
	struct bf_journal *j = fi->journal;
	struct bf_jlog *l;
	struct log_tree *lg;
	int r;

	if (!j || j->failed || fi->readonly)
		return -EROFS;
	if (!j->running || j->in_commit)
		return -EINVAL;
	if (!j->log && (r = log_new(j)) != 0)
		return r;
	l = j->log;
	for (size_t i = 0; i < l->ntrees; i++)
		if (l->trees[i].subvol == subvol) {
			*lt = &l->trans;
			*root = &l->trees[i].root;
			return 0;
		}
	if (l->ntrees == l->trees_cap) {
		size_t cap = l->trees_cap ? 2 * l->trees_cap : 4;
		struct log_tree *n = realloc(l->trees, cap * sizeof(*n));
		if (!n)
			return -ENOMEM;
		l->trees = n;
		l->trees_cap = cap;
	}
	lg = &l->trees[l->ntrees];
	memset(lg, 0, sizeof(*lg));
	lg->subvol = subvol;
	r = bf_tree_create(&l->trans, BF_TREE_LOG_OBJECTID, &lg->root);
	if (r)
		return r;
	l->ntrees++;
	*lt = &l->trans;
	*root = &lg->root;
	return 0;
}

int bf_log_csums_logged(struct bf_fsinfo *fi, uint64_t start, uint64_t len)
{
	struct bf_jlog *l = fi->journal ? fi->journal->log : NULL;
	uint64_t end = start + len;

	if (!l || end <= start)
		return -EINVAL;
	for (size_t i = 0; i < l->ncsums; i++) {
		if (l->csums[i][0] == start && l->csums[i][1] == end)
			return 1;
		if (l->csums[i][0] < end && start < l->csums[i][1])
			return -EEXIST; /* a partial overlap: data extents never do that within a transaction */
	}
	if (l->ncsums == l->csums_cap) {
		size_t cap = l->csums_cap ? 2 * l->csums_cap : 64;
		uint64_t(*n)[2] = realloc(l->csums, cap * sizeof(*n));
		if (!n)
			return -ENOMEM;
		l->csums = n;
		l->csums_cap = cap;
	}
	l->csums[l->ncsums][0] = start;
	l->csums[l->ncsums][1] = end;
	l->ncsums++;
	return 0;
}

/* ---------------- sync ---------------- */

/* The ROOT_ITEM of a log tree, as btrfs_add_log_tree and btrfs_set_root_node fill it. */
static void log_root_item(const struct bf_fsinfo *fi, const struct log_tree *lg, struct bf_root_item *ri)
{
	memset(ri, 0, sizeof(*ri));
	put64(&ri->inode.generation, 1);
	put64(&ri->inode.size, 3);
	put32(&ri->inode.nlink, 1);
	put64(&ri->inode.nbytes, fi->nodesize);
	put32(&ri->inode.mode, S_IFDIR | 0755);
	put64(&ri->bytenr, lg->root.bytenr);
	put64(&ri->generation, lg->root.generation);
	ri->level = lg->root.level;
	put64(&ri->generation_v2, lg->root.generation);
}

static int write_root_item(struct bf_fsinfo *fi, struct bf_jlog *l, struct log_tree *lg)
{
	struct bf_key key = { BF_TREE_LOG_OBJECTID, BF_ROOT_ITEM_KEY, lg->subvol };
	struct bf_root_item ri;
	struct bf_path p;
	uint32_t size;
	uint8_t *data;
	int r;

	log_root_item(fi, lg, &ri);
	if (!lg->item_bytenr) {
		r = bf_insert_item(&l->trans, &l->root_tree, &key, &ri, sizeof(ri));
	} else {
		bf_path_init(&p, &fi->env);
		r = bf_search_slot(&l->trans, &l->root_tree, &key, 0, true, &p);
		if (r > 0)
			r = -EUCLEAN; /* we wrote it: a bug */
		if (r == 0) {
			data = bf_path_item_mut(&l->trans, &p, &size);
			if (data && size == sizeof(ri))
				memcpy(data, &ri, sizeof(ri));
			else
				r = -EUCLEAN;
		}
		bf_path_release(&p);
	}
	if (!r) {
		lg->item_bytenr = lg->root.bytenr;
		lg->item_level = lg->root.level;
	}
	return r;
}

static int flush_devices(const struct bf_volume *v)
{
	for (size_t i = 0; i < v->ndevs; i++)
		if (v->devs[i]->fd >= 0 && v->devs[i]->writable && bf_dev_flush(v->devs[i]) != 0) {
			bf_log(BF_LOG_ERR, "fsync: flushing device %" PRIu64 " (%s) failed", v->devs[i]->devid,
			       v->devs[i]->path ? v->devs[i]->path : "?");
			return -EIO;
		}
	return 0;
}

int bf_log_sync(struct bf_fsinfo *fi)
{
	struct bf_journal *j = fi->journal;
	struct bf_jlog *l = j ? j->log : NULL;
	int r = 0;

	if (!l || !j->running || j->failed)
		return -EINVAL;
	if (bf_extalloc_new_chunks(j->ea))
		return -EAGAIN; /* the committed chunk tree does not map the new chunk: commit instead */
	for (size_t i = 0; !r && i < l->ntrees; i++) {
		struct log_tree *lg = &l->trees[i];
		if (lg->item_bytenr != lg->root.bytenr || lg->item_level != lg->root.level)
			r = write_root_item(fi, l, lg);
	}
	if (!r)
		r = bf_trans_write_dirty(&l->trans);
	if (!r)
		r = flush_devices(&fi->vol);
	if (!r)
		r = bf_super_write_log(j, l->root_tree.bytenr, l->root_tree.level);
	if (!r) {
		j->log_syncs++;
		bf_trace("log_sync", "\"log_root\":%" PRIu64 ",\"level\":%u", l->root_tree.bytenr,
			 (unsigned)l->root_tree.level);
	}
	return r;
}

uint64_t bf_log_syncs(const struct bf_fsinfo *fi) { return fi->journal ? fi->journal->log_syncs : 0; }
