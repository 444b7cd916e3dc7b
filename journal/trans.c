/*
 * journal/trans.c - transactions: begin, join, end, abort, and the table of trees whose roots the journal tracks.
 *
 * Owns: bf_txn_begin / bf_txn_end / bf_txn_abort / bf_txn_root / bf_journal_root and the other small accessors,
 * the tree table (struct jtree, see journal/journal_int.h), and the allocator ops the btree layer gets.
 *
 * Key idea: a transaction is one struct bf_trans whose id is the last committed generation + 1; callers begin or
 * join it under the fs write lock, so "the running transaction" is a plain pointer. The btree layer reaches the
 * allocator through ops of ours that forward every call and, on the way, count per tree the blocks added and
 * freed: a copy-on-write adds one and frees one, a split adds, a merge frees, so the count changes exactly as the
 * kernel's root_add_used / root_sub_used change a root item's bytes_used. An abort throws the transaction away and
 * points every live root back at its committed root, so the image and the in-memory view agree again.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "journal/journal_int.h"
#include "util/util.h"

/* ---------------- the tree table ---------------- */

struct jtree *bf_jtree_find(const struct bf_journal *j, uint64_t objectid)
{
	for (size_t i = 0; i < j->ntrees; i++)
		if (j->trees[i]->objectid == objectid)
			return j->trees[i];
	return NULL;
}

static bool is_subvol_id(uint64_t id)
{
	return id == BF_FS_TREE_OBJECTID || (id >= BF_FIRST_FREE_OBJECTID && id <= BF_LAST_FREE_OBJECTID);
}

static int table_add(struct bf_journal *j, struct jtree *jt)
{
	if (j->ntrees == j->trees_cap) {
		size_t cap = j->trees_cap ? 2 * j->trees_cap : 16;
		struct jtree **n = realloc(j->trees, cap * sizeof(*n));
		if (!n)
			return -ENOMEM;
		j->trees = n;
		j->trees_cap = cap;
	}
	j->trees[j->ntrees++] = jt;
	return 0;
}

/* Read the newest root item of objectid from the live root tree: its key, root, bytes_used, flags and refs. */
static int read_root_item(struct bf_journal *j, uint64_t objectid, struct jtree *jt, uint64_t *flags,
			  uint32_t *refs)
{
	struct bf_fsinfo *fi = j->fi;
	struct bf_key key = { objectid, BF_ROOT_ITEM_KEY, UINT64_MAX };
	struct bf_path p;
	int r;

	bf_path_init(&p, &fi->env);
	r = bf_search_le(&fi->env, &fi->tree_root, &key, &p);
	if (r >= 0) {
		struct bf_key k = bf_path_key(&p);
		uint32_t size;
		const uint8_t *data = bf_path_item(&p, &size);
		struct bf_root_item ri;

		r = -ENOENT;
		if (k.objectid == objectid && k.type == BF_ROOT_ITEM_KEY) {
			r = -EUCLEAN;
			memset(&ri, 0, sizeof(ri));
			memcpy(&ri, data, bf_min64(size, sizeof(ri)));
			if (size >= BF_ROOT_ITEM_LEGACY_SIZE && ri.level < BF_MAX_LEVEL && get64(ri.bytenr)) {
				jt->item_key = k;
				jt->own = (struct bf_root){ objectid, get64(ri.bytenr), get64(ri.generation), ri.level };
				jt->used = get64(ri.bytes_used);
				*flags = get64(ri.flags);
				*refs = get32(ri.refs);
				r = 0;
			} else {
				bf_log(BF_LOG_ERR, "root item of tree %" PRIu64 " is invalid (%u bytes, level %u, bytenr "
				       "%" PRIu64 "); run 'btrfs check --readonly'", objectid, size, ri.level,
				       get64(ri.bytenr));
			}
		}
	}
	bf_path_release(&p);
	return r;
}

/* Make every view of jt agree with its live root (at open, after a commit and after an abort). */
static void jtree_settled(struct jtree *jt)
{
	jt->committed = *jt->live;
	jt->committed_used = jt->used;
	jt->item_bytenr = jt->live->bytenr;
	jt->item_level = jt->live->level;
	jt->item_used = jt->used;
	jt->touched = jt->touched_written = false;
}

/* A new entry; live == NULL means a subvolume whose root lives in the entry. */
static int jtree_new(struct bf_journal *j, uint64_t objectid, struct bf_root *live, bool has_item,
		     struct jtree **out)
{
	struct jtree *jt = calloc(1, sizeof(*jt));
	uint64_t flags = 0;
	uint32_t refs = 1;
	int r = 0;

	if (!jt)
		return -ENOMEM;
	jt->objectid = objectid;
	jt->has_item = has_item;
	jt->subvol = is_subvol_id(objectid);
	if (has_item)
		r = read_root_item(j, objectid, jt, &flags, &refs);
	if (!r && jt->subvol && refs == 0)
		r = -ENOENT; /* being deleted: the kernel refuses it too */
	jt->readonly = (flags & BF_ROOT_SUBVOL_RDONLY) != 0;
	jt->live = live ? live : &jt->own;
	if (!r)
		r = table_add(j, jt);
	if (r) {
		free(jt);
		return r;
	}
	jtree_settled(jt);
	*out = jt;
	return 0;
}

int bf_jtree_get(struct bf_journal *j, uint64_t objectid, struct jtree **out)
{
	struct jtree *jt = bf_jtree_find(j, objectid);

	if (jt) {
		*out = jt;
		return 0;
	}
	if (!is_subvol_id(objectid))
		return -ENOENT;
	return jtree_new(j, objectid, NULL, true, out);
}

int bf_jtree_add_tree(struct bf_journal *j, uint64_t objectid, struct jtree **out)
{
	return jtree_new(j, objectid, NULL, true, out);
}

/* The global trees the allocator and the commit change, and subvolume 5 (for the backup roots). */
int bf_jtree_register_globals(struct bf_journal *j)
{
	struct bf_fsinfo *fi = j->fi;
	struct {
		uint64_t id;
		struct bf_root *root;
		bool present, has_item;
	} g[] = {
		{ BF_ROOT_TREE_OBJECTID, &fi->tree_root, true, false },
		{ BF_CHUNK_TREE_OBJECTID, &fi->chunk_root, true, false },
		{ BF_EXTENT_TREE_OBJECTID, &fi->extent_root, true, true },
		{ BF_DEV_TREE_OBJECTID, &fi->dev_root, true, true },
		{ BF_CSUM_TREE_OBJECTID, &fi->csum_root, fi->has_csum_root, true },
		{ BF_UUID_TREE_OBJECTID, &fi->uuid_root, fi->has_uuid_root, true },
		{ BF_FREE_SPACE_TREE_OBJECTID, &fi->free_space_root, fi->has_free_space_root, true },
		{ BF_BLOCK_GROUP_TREE_OBJECTID, &fi->block_group_root, fi->has_block_group_root, true },
	};
	struct jtree *jt;

	for (size_t i = 0; i < sizeof(g) / sizeof(g[0]); i++) {
		if (!g[i].present)
			continue;
		int r = jtree_new(j, g[i].id, g[i].root, g[i].has_item, &jt);
		if (r == -ENOENT && g[i].id == BF_DEV_TREE_OBJECTID)
			continue; /* very old images have no device tree */
		if (r)
			return r;
		/* the root item read now is the one fi's root came from: keep fi's view */
		if (g[i].has_item && (jt->own.bytenr != g[i].root->bytenr || jt->own.level != g[i].root->level))
			return -EUCLEAN;
		jtree_settled(jt);
	}
	return bf_jtree_get(j, BF_FS_TREE_OBJECTID, &jt);
}

void bf_journal_free_trees(struct bf_journal *j)
{
	for (size_t i = 0; i < j->ntrees; i++)
		free(j->trees[i]);
	free(j->trees);
	j->trees = NULL;
	j->ntrees = j->trees_cap = 0;
}

/* ---------------- the allocator ops the btree layer gets ---------------- */

static void count_block(struct bf_journal *j, uint64_t owner, bool added)
{
	struct jtree *jt = bf_jtree_find(j, owner);
	uint32_t ns = j->fi->nodesize;

	if (!jt)
		return;
	if (added)
		jt->used += ns;
	else
		jt->used = jt->used >= ns ? jt->used - ns : 0;
}

static int j_alloc(void *ctx, uint64_t owner, int level, uint64_t *bytenr)
{
	struct bf_journal *j = ctx;
	return j->aops->alloc_tree_block(j->ea, owner, level, bytenr);
}

static void j_free(void *ctx, uint64_t bytenr, uint64_t owner, int level)
{
	struct bf_journal *j = ctx;
	count_block(j, owner, false);
	j->aops->free_tree_block(j->ea, bytenr, owner, level);
}

static int j_added(void *ctx, uint64_t bytenr, uint64_t owner, int level, const struct bf_key *first_key)
{
	struct bf_journal *j = ctx;
	count_block(j, owner, true);
	return j->aops->tree_block_added ? j->aops->tree_block_added(j->ea, bytenr, owner, level, first_key) : 0;
}

static int j_cowed(void *ctx, uint64_t owner, const struct bf_block *old, const struct bf_block *cow)
{
	struct bf_journal *j = ctx;
	return j->aops->tree_block_cowed ? j->aops->tree_block_cowed(j->ea, owner, old, cow) : 0;
}

void bf_journal_init_ops(struct bf_journal *j)
{
	j->ops = (struct bf_alloc_ops){ j_alloc, j_free, j_added, j_cowed };
}

/* ---------------- transactions ---------------- */

static struct bf_journal *usable(const struct bf_fsinfo *fi)
{
	struct bf_journal *j = fi->journal;
	return j && !j->failed && !fi->readonly ? j : NULL;
}

int bf_txn_begin(struct bf_fsinfo *fi, struct bf_trans **out)
{
	struct bf_journal *j = usable(fi);
	struct bf_trans *t;

	if (!j)
		return -EROFS;
	if (!j->running) {
		t = &j->trans;
		bf_trans_init(t, &fi->env, fi->generation + 1, &j->ops, j);
		bf_extalloc_begin(j->ea, t);
		bf_trace_set_transid(t->transid);
		bf_trace("transaction_start", NULL);
		j->running = t;
		clock_gettime(CLOCK_MONOTONIC, &j->running_since);
		bf_journal_start_thread(j);
	}
	j->depth++;
	*out = j->running;
	return 0;
}

static bool commit_due(const struct bf_journal *j)
{
	struct timespec now;

	if ((uint64_t)j->running->ndirty * j->fi->nodesize >= BF_DIRTY_TREE_LIMIT)
		return true;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return now.tv_sec - j->running_since.tv_sec >= (time_t)j->interval;
}

int bf_txn_end(struct bf_fsinfo *fi, struct bf_trans *t)
{
	struct bf_journal *j = fi->journal;

	if (!j || t != j->running) /* aborted meanwhile: the abort already said why */
		return j && j->failed ? -EROFS : 0;
	if (j->depth > 0)
		j->depth--;
	if (j->depth == 0 && !j->in_commit && commit_due(j))
		return bf_commit(fi);
	return 0;
}

void bf_journal_do_abort(struct bf_journal *j, int err, const char *fmt, ...)
{
	struct bf_fsinfo *fi = j->fi;
	char what[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	uint64_t transid = j->running ? j->running->transid : fi->generation + 1;
	if (!j->failed)
		snprintf(j->why, sizeof(j->why), "transaction %" PRIu64 " aborted: %s: %s; the filesystem is now "
			 "read-only and the image keeps the state of the last commit (generation %" PRIu64 "); unmount "
			 "it and run 'btrfs check --readonly' on the image", transid, what, strerror(err < 0 ? -err : err),
			 fi->generation);
	bf_log(BF_LOG_ERR, "%s", j->why);
	j->failed = true;
	fi->readonly = true;
	bf_log_discard(j);
	if (j->running) {
		bf_trans_abort(j->running);
		bf_trans_destroy(j->running);
		j->running = NULL;
	}
	j->depth = 0;
	for (size_t i = 0; i < j->ntrees; i++) {
		struct jtree *jt = j->trees[i];
		*jt->live = jt->committed;
		jt->used = jt->committed_used;
		jtree_settled(jt);
	}
	fi->super = j->committed_super;
	bf_extalloc_abort(j->ea);
	if (j->hooks.aborted)
		j->hooks.aborted(j->hooks.arg);
}

void bf_txn_abort(struct bf_fsinfo *fi, struct bf_trans *t, int err, const char *what)
{
	struct bf_journal *j = fi->journal;

	if (!j || (t && t != j->running))
		return;
	bf_journal_do_abort(j, err, "%s", what);
}

static void now_disk(struct bf_timespec *ts)
{
	struct timespec now;

	clock_gettime(CLOCK_REALTIME, &now);
	put64(&ts->sec, (uint64_t)now.tv_sec);
	put32(&ts->nsec, (uint32_t)now.tv_nsec);
}

int bf_txn_root(struct bf_fsinfo *fi, struct bf_trans *t, uint64_t objectid, struct bf_root **root)
{
	struct bf_journal *j = fi->journal;
	struct jtree *jt;
	int r;

	if (!j || t != j->running)
		return -EINVAL;
	r = bf_jtree_get(j, objectid, &jt);
	if (r)
		return r;
	if (jt->readonly)
		return -EROFS;
	if (jt->subvol) {
		jt->touched = true;
		jt->touched_written = false;
		now_disk(&jt->ctime);
	}
	*root = jt->live;
	return 0;
}

int bf_journal_root(const struct bf_fsinfo *fi, uint64_t objectid, struct bf_root *out)
{
	const struct jtree *jt = fi->journal ? bf_jtree_find(fi->journal, objectid) : NULL;

	if (!jt)
		return -ENOENT;
	*out = *jt->live;
	return 0;
}

struct bf_extalloc *bf_txn_alloc(struct bf_fsinfo *fi) { return fi->journal ? fi->journal->ea : NULL; }

bool bf_journal_failed(const struct bf_fsinfo *fi, const char **why)
{
	const struct bf_journal *j = fi->journal;
	bool failed = j && j->failed;

	if (why)
		*why = failed ? j->why : NULL;
	return failed;
}

uint64_t bf_journal_commits(const struct bf_fsinfo *fi) { return fi->journal ? fi->journal->commits : 0; }
