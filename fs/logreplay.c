/*
 * fs/logreplay.c - replaying the log tree at a read-write mount (the kernel's tree-log.c: btrfs_recover_log_trees
 * and replay_one_buffer with what they call), then committing, which clears the superblock's log_root.
 *
 * Owns: bf_log_replay: the walk over the log root tree and each subvolume's log tree, the pin stage (log blocks
 * and logged data extents kept from the allocator), and the replay stages: inode items (with the xattr and
 * directory deletions the log proves, and the truncation to the logged size), directory index entries, then
 * xattrs, back references, file extents with their checksums, and the final link-count fixup.
 *
 * Key idea: exactly the kernel's stages, in its order. An fsync after the last commit wrote, for each logged
 * inode, copies of its changed items into a per-subvolume log tree (plus DIR_LOG_INDEX ranges saying for which
 * directory indexes the log is authoritative, and the checksums of new data); the committed trees do not know
 * these changes, and the committed extent tree still shows the log's blocks and new data extents as free. So:
 *   0 (pin)     every log block and every logged data extent leaves the free space before anything is allocated;
 *   1 (inodes)  each logged inode item is copied (nbytes kept for the extents to come, a directory keeps its
 *               committed size, which entries then adjust); xattrs and directory entries of that inode that the
 *               log proves gone are deleted; regular files lose extents past the logged size; every logged inode
 *               is listed (TREE_LOG_FIXUP orphan items) for the link-count fixup;
 *   2 (index)   logged DIR_INDEX entries are added (conflicting names unlinked);
 *   3 (all)     xattr items copied, back references reconciled (names not in the log unlinked, new names linked),
 *               file extents replaced (a data extent the extent tree lacks gets its extent item, as
 *               btrfs_alloc_logged_file_extent; logged checksums enter the csum tree); then every listed inode's
 *               link count is recounted from its back references, and one left without links gets an orphan item
 *               (deleted by the orphan cleanup that follows the mount, as with the kernel).
 * As in current kernels, only DIR_INDEX entries are replayed (the DIR_ITEM keys of old kernels' logs are ignored;
 * the names' DIR_ITEMs follow from the index entries).
 * Changes go through fs/'s write helpers (directory entries and back references of fs/wdir.c, inode items of
 * fs/winode.c, file extents of fs/extent_write.c, checksums of fs/csum_write.c). Every byte of the log is
 * untrusted: blocks are read through the validating cache with the parent's expectations, every item is checked
 * before use, and any failure aborts the whole transaction, so the image keeps its last commit and its log.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "btree/csum.h"
#include "fs/wmeta.h"
#include "fs/write.h"
#include "util/util.h"

enum { STAGE_PIN, STAGE_INODES, STAGE_DIR_INDEX, STAGE_ALL, STAGE_COMMIT };
static const char *const stage_names[] = { "pinning the log", "replaying inodes", "replaying directory indexes",
					   "replaying names, xattrs and file extents", "committing the replay" };

#define MAX_LOG_ROOTS 65536

struct logroot {
	uint64_t subvol;
	struct bf_root root;
};

struct rctx {
	struct bf_fs *fs;
	struct bf_wop *op;
	struct bf_extalloc *ea;
	int stage;
	uint64_t subvol;       /* the subvolume being replayed into */
	struct bf_root *tree;  /* its live root */
	struct bf_root log;    /* its log tree */
	uint64_t block;        /* the log block being read or replayed (for messages) */
	struct bf_key key;     /* the log item being replayed */
	bool have_key;
	bool ignoring;         /* the last inode item had no links: its items (all until the next one) are skipped */
	char why[384];         /* the first failure */
};

/* Record the first failure (what went wrong, in which log block and item) and return err. */
static int fail(struct rctx *c, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(struct rctx *c, int err, const char *fmt, ...)
{
	char what[256];
	va_list ap;

	if (c->why[0])
		return err;
	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	if (c->have_key)
		snprintf(c->why, sizeof(c->why), "%s (log block %" PRIu64 ", item (%" PRIu64 " %u %" PRIu64 "), subvolume %"
			 PRIu64 ", %s)", what, c->block, c->key.objectid, c->key.type, c->key.offset, c->subvol,
			 stage_names[c->stage]);
	else
		snprintf(c->why, sizeof(c->why), "%s (log block %" PRIu64 ", %s)", what, c->block, stage_names[c->stage]);
	return err;
}

static int corrupt(struct rctx *c, const char *what) { return fail(c, -EUCLEAN, "corrupt log: %s", what); }

static uint32_t sectorsize(const struct rctx *c) { return c->fs->fi->sectorsize; }

/* x rounded up to a multiple of align; false on overflow. */
static bool round_up(uint64_t x, uint64_t align, uint64_t *out)
{
	return !bf_add_overflow(bf_round_down(x, align), x % align ? align : 0, out);
}

static uint64_t extref_hash(uint64_t parent, const char *name, size_t len)
{
	return bf_crc32c((uint32_t)parent, name, len);
}

/* ================= items of the subvolume tree ================= */

/* Copy of the item at key in the live subvolume tree: 0 with *data (malloc'ed, caller frees) and *size, 1 absent. */
static int fs_item_get(struct rctx *c, const struct bf_key *key, uint8_t **data, uint32_t *size)
{
	struct bf_path p;
	int r;

	*data = NULL;
	*size = 0;
	bf_path_init(&p, c->fs->env);
	r = bf_search(c->fs->env, c->tree, key, &p);
	if (r == 0) {
		const uint8_t *d = bf_path_item(&p, size);
		*data = malloc(*size ? *size : 1);
		if (*data)
			memcpy(*data, d, *size);
		else
			r = -ENOMEM;
	}
	bf_path_release(&p);
	return r;
}

/* Make the item at key hold exactly data (insert it, or replace what is there): the kernel's overwrite_item
   without the inode special cases. */
static int fs_item_put(struct rctx *c, const struct bf_key *key, const void *data, uint32_t size)
{
	struct bf_path p;
	uint32_t cur;
	int r;

	c->op->changed = true;
	bf_path_init(&p, c->fs->env);
	r = bf_search_slot(c->op->t, c->tree, key, -1, true, &p);
	if (r == 0) {
		uint8_t *d = bf_path_item_mut(c->op->t, &p, &cur);
		if (d && cur == size) {
			memcpy(d, data, size);
			bf_path_release(&p);
			return 0;
		}
		r = bf_del_items(c->op->t, c->tree, &p, p.slots[0], 1);
	} else {
		bf_path_release(&p);
		r = r > 0 ? 0 : r;
	}
	return r ? r : bf_insert_item(c->op->t, c->tree, key, data, size);
}

static int fs_item_del(struct rctx *c, const struct bf_key *key)
{
	struct bf_path p;
	int r;

	bf_path_init(&p, c->fs->env);
	r = bf_search_slot(c->op->t, c->tree, key, -1, true, &p);
	if (r) {
		bf_path_release(&p);
		return r > 0 ? 0 : r;
	}
	c->op->changed = true;
	return bf_del_items(c->op->t, c->tree, &p, p.slots[0], 1);
}

/* Load an inode of the subvolume for a change (no permission checks: replay is not a user's change). */
static int ino_load(struct rctx *c, uint64_t ino, struct bf_wino *w)
{
	memset(w, 0, sizeof(*w));
	w->root = c->subvol;
	w->ino = ino;
	return bf_inode_load(c->fs, c->subvol, ino, &w->ii);
}

static bool ino_exists(struct rctx *c, uint64_t ino, int *err)
{
	struct bf_wino w;
	int r = ino_load(c, ino, &w);

	*err = r == -ENOENT ? 0 : r;
	return r == 0;
}

/* ================= records in the log ================= */

/* Find the item at key in the log tree: 0 with a held path, 1 absent (path released). */
static int log_item(struct rctx *c, const struct bf_key *key, struct bf_path *p)
{
	int r;

	bf_path_init(p, c->fs->env);
	r = bf_search(c->fs->env, &c->log, key, p);
	if (r)
		bf_path_release(p);
	return r;
}

/* The next record of a logged back reference item (bf_ref_rec_next), with the tree checker's name length rule. */
static int ref_next(const struct bf_key *k, const uint8_t *item, uint32_t size, uint32_t *pos, struct bf_ref_rec *rec)
{
	int r = bf_ref_rec_next(k, item, size, pos, rec);

	return r == 1 && (rec->len == 0 || rec->len > BF_NAME_LEN) ? -EUCLEAN : r;
}

/* Does the back reference item holding (parent, name) exist in the log? (the kernel's backref_in_log) */
static int backref_in_log(struct rctx *c, const struct bf_key *key, uint64_t parent, const char *name, size_t len)
{
	struct bf_path p;
	struct bf_ref_rec rec;
	uint32_t size, pos = 0;
	int r = log_item(c, key, &p), found = 0;

	if (r)
		return r > 0 ? 0 : r;
	const uint8_t *data = bf_path_item(&p, &size);
	while ((r = ref_next(key, data, size, &pos, &rec)) == 1)
		if (rec.len == len && memcmp(rec.name, name, len) == 0 &&
		    (key->type == BF_INODE_REF_KEY || rec.parent == parent)) {
			found = 1;
			break;
		}
	bf_path_release(&p);
	return r < 0 ? corrupt(c, "back reference record crosses its item's end") : found;
}

/* The record named name in the dir-item style item at key of tree (log or subvolume): 0 with *rec copied out
   (name pointing into buf, which must hold BF_NAME_LEN bytes), 1 absent. */
static int dir_lookup(struct rctx *c, const struct bf_root *tree, const struct bf_key *key, const char *name,
		      size_t len, struct bf_dir_rec *rec, char *buf)
{
	struct bf_path p;
	uint32_t size, pos, rl;
	int r;

	bf_path_init(&p, c->fs->env);
	r = bf_search(c->fs->env, tree, key, &p);
	if (r == 0) {
		const uint8_t *data = bf_path_item(&p, &size);
		r = bf_rec_find(c->subvol, key, data, size, name, len, rec, &pos, &rl);
		if (r == 0) {
			memcpy(buf, rec->name, rec->name_len);
			rec->name = buf;
			rec->data = NULL;
		} else if (r == -ENOENT) {
			r = 1;
		}
	}
	bf_path_release(&p);
	return r;
}

/* ================= links (the kernel's btrfs_unlink_inode / btrfs_add_link under log replay) ================= */

/* List ino for the final link-count fixup (link_to_fixup_dir): its count goes up by one meanwhile, so that
   unlinks on the way never take it below zero. */
static int link_to_fixup(struct rctx *c, uint64_t ino)
{
	struct bf_key key = { BF_TREE_LOG_FIXUP_OBJECTID, BF_ORPHAN_ITEM_KEY, ino };
	struct bf_wino w;
	int r = ino_load(c, ino, &w);

	if (r)
		return r == -ENOENT ? fail(c, -EUCLEAN, "inode %" PRIu64 " named by the log does not exist", ino) : r;
	c->op->changed = true;
	r = bf_insert_item(c->op->t, c->tree, &key, NULL, 0);
	if (r == -EEXIST)
		return 0;
	if (r)
		return r;
	put32(&w.ii.nlink, get32(w.ii.nlink) + 1);
	return bf_inode_update(c->fs, c->op->t, c->subvol, ino, &w.ii);
}

/* Remove the name (directory dir) of inode ino: directory entry, index and back reference; the directory shrinks
   and, with drop_link, the inode loses a link (where the kernel first adds one, it keeps its count). Times stay as
   the log and the last commit set them (the kernel's replay leaves them too: its result is the oracle). */
static int unlink_name(struct rctx *c, uint64_t dir, uint64_t ino, const char *name, size_t len, bool drop_link)
{
	struct bf_wino d, w;
	struct bf_timespec mtime, ctime;
	uint64_t index = 0;
	int r = ino_load(c, dir, &d);

	if (!r)
		r = ino_load(c, ino, &w);
	if (r == -ENOENT)
		return fail(c, -EUCLEAN, "unlinking '%.*s' from directory %" PRIu64 ": an inode is missing", (int)len, name,
			    dir);
	if (!r)
		r = bf_iref_find(c->op, c->subvol, ino, dir, name, len, &index);
	if (r == -ENOENT)
		return fail(c, -EUCLEAN, "inode %" PRIu64 " has no back reference for '%.*s' in directory %" PRIu64, ino,
			    (int)len, name, dir);
	if (!r)
		r = bf_iref_del(c->op, c->subvol, ino, dir, name, len);
	mtime = d.ii.mtime;
	ctime = d.ii.ctime;
	if (!r)
		r = bf_entry_del(c->op, &d, name, len, index);
	if (r)
		return r;
	d.ii.mtime = mtime;
	d.ii.ctime = ctime;
	if (drop_link && get32(w.ii.nlink))
		put32(&w.ii.nlink, get32(w.ii.nlink) - 1);
	bf_inode_inc_seq(&w.ii);
	w.dirty = true;
	r = bf_wino_save(c->op, &d);
	return r ? r : bf_wino_save(c->op, &w);
}

/* Add the entry name -> ino at index in dir (with its back reference when backref): the kernel's btrfs_add_link
   during replay, which leaves the directory's times as the log set them. -EEXIST (nothing changed) if the name or
   the back reference is there. */
static int add_name(struct rctx *c, uint64_t dir, uint64_t ino, const char *name, size_t len, uint64_t index,
		    bool backref)
{
	struct bf_wino d, w;
	struct bf_timespec mtime, ctime;
	int r = ino_load(c, dir, &d);

	if (!r)
		r = ino_load(c, ino, &w);
	if (!r)
		r = bf_entry_check(c->op, c->subvol, dir, name, len);
	if (r == -EINVAL || r == -ENAMETOOLONG)
		return corrupt(c, "a logged name is not a valid file name");
	if (!r && backref)
		r = bf_iref_add(c->op, c->subvol, ino, dir, name, len, index);
	if (r)
		return r;
	mtime = d.ii.mtime;
	ctime = d.ii.ctime;
	r = bf_entry_add(c->op, &d, name, len, &w, index);
	d.ii.mtime = mtime;
	d.ii.ctime = ctime;
	return r ? r : bf_wino_save(c->op, &d);
}

/* An entry of the subvolume conflicts with the log: unlink the inode it names (drop_one_dir_item). */
static int drop_entry(struct rctx *c, uint64_t dir, const struct bf_dir_rec *rec)
{
	int r;

	if (rec->location.type != BF_INODE_ITEM_KEY)
		return fail(c, -EOPNOTSUPP, "the log replaces the subvolume entry '%.*s' in directory %" PRIu64
			    ", which btrfs-fuse cannot replay", (int)rec->name_len, rec->name, dir);
	r = link_to_fixup(c, rec->location.objectid);
	return r ? r : unlink_name(c, dir, rec->location.objectid, rec->name, rec->name_len, true);
}

/* ================= directory deletions (replay_dir_deletes, find_dir_range, check_item_in_log) ============= */

/* The end of the DIR_LOG_INDEX item at the path if it is one of dir's: 0 with *end, 1 not one, or -EUCLEAN. */
static int range_at(struct rctx *c, const struct bf_path *p, uint64_t dir, struct bf_key *k, uint64_t *end)
{
	uint32_t size;
	const uint8_t *data = bf_path_item(p, &size);

	*k = bf_path_key(p);
	if (k->objectid != dir || k->type != BF_DIR_LOG_INDEX_KEY)
		return 1;
	if (size < sizeof(struct bf_dir_log_item))
		return corrupt(c, "directory log range item too small");
	*end = get64(((const struct bf_dir_log_item *)data)->end);
	return *end < k->offset ? corrupt(c, "directory log range ends before it starts") : 0;
}

/* The DIR_LOG_INDEX range of dir containing *start, or else the next one (the kernel's find_dir_range): 0 with
   [*start, *end], 1 none. */
static int find_dir_range(struct rctx *c, uint64_t dir, uint64_t *start, uint64_t *end)
{
	struct bf_key key = { dir, BF_DIR_LOG_INDEX_KEY, *start }, k;
	struct bf_path p;
	uint64_t e = 0;
	int r;

	if (*start == UINT64_MAX)
		return 1;
	bf_path_init(&p, c->fs->env);
	r = bf_search_le(c->fs->env, &c->log, &key, &p);
	if (r >= 0)
		r = range_at(c, &p, dir, &k, &e);
	if (r == 0 && !(*start >= k.offset && *start <= e))
		r = 1;
	if (r == 1 && (r = bf_path_next(&p)) == 0)
		r = range_at(c, &p, dir, &k, &e);
	bf_path_release(&p);
	if (r == -ENOENT)
		return 1;
	if (r == 0) {
		*start = k.offset;
		*end = e;
	}
	return r;
}

/* The first DIR_INDEX entry of dir at or after *off in the subvolume: 0 with *off, rec and name, 1 none. */
static int next_index_entry(struct rctx *c, uint64_t dir, uint64_t *off, struct bf_dir_rec *rec, char *name)
{
	struct bf_key key = { dir, BF_DIR_INDEX_KEY, *off }, k = { 0, 0, 0 };
	struct bf_path p;
	uint32_t size, pos = 0;
	const char *why = NULL;
	int r;

	bf_path_init(&p, c->fs->env);
	r = bf_search(c->fs->env, c->tree, &key, &p);
	if (r >= 0) {
		k = bf_path_valid(&p) ? bf_path_key(&p) : (struct bf_key){ 0, 0, 0 };
		r = k.objectid == dir && k.type == BF_DIR_INDEX_KEY ? 0 : 1;
	}
	if (r == 0) {
		const uint8_t *data = bf_path_item(&p, &size);
		if (bf_dir_rec_next(data, size, &pos, rec, &why) != 1 || (why = bf_dir_rec_check(rec, &k)))
			r = bf_corrupt(c->subvol, dir, &k, "%s", why ? why : "empty directory index item");
	}
	if (r == 0) {
		*off = k.offset;
		memcpy(name, rec->name, rec->name_len);
		rec->name = name;
		rec->data = NULL;
	}
	bf_path_release(&p);
	return r;
}

/* The subvolume's entry at index off of dir is not in the log: unlink it. */
static int check_entry_in_log(struct rctx *c, uint64_t dir, uint64_t off, const struct bf_dir_rec *rec, bool del_all)
{
	struct bf_key key = { dir, BF_DIR_INDEX_KEY, off };
	struct bf_dir_rec lrec;
	char buf[BF_NAME_LEN];
	int r;

	if (!del_all) {
		r = dir_lookup(c, &c->log, &key, rec->name, rec->name_len, &lrec, buf);
		if (r <= 0)
			return r;
	}
	if (rec->location.type != BF_INODE_ITEM_KEY)
		return fail(c, -EOPNOTSUPP, "the log deletes the subvolume entry '%.*s' of directory %" PRIu64
			    ", which btrfs-fuse cannot replay", (int)rec->name_len, rec->name, dir);
	r = link_to_fixup(c, rec->location.objectid);
	return r ? r : unlink_name(c, dir, rec->location.objectid, rec->name, rec->name_len, false);
}

/* Unlink the entries of directory dir that lie in a range the log is authoritative for but are not in the log;
   del_all: every entry (a directory left without links). */
static int dir_deletes(struct rctx *c, uint64_t dir, bool del_all)
{
	uint64_t start = 0, end = 0;
	int err, r;

	if (!ino_exists(c, dir, &err))
		return err;
	for (;;) {
		if (del_all)
			end = UINT64_MAX;
		else if ((r = find_dir_range(c, dir, &start, &end)) != 0)
			return r > 0 ? 0 : r;
		for (uint64_t off = start;;) {
			struct bf_dir_rec rec;
			char name[BF_NAME_LEN];
			r = next_index_entry(c, dir, &off, &rec, name);
			if (r)
				return r > 0 ? 0 : r;
			if (off > end)
				break;
			if ((r = check_entry_in_log(c, dir, off, &rec, del_all)) != 0)
				return r;
			if (off == UINT64_MAX)
				break;
			off++;
		}
		if (end == UINT64_MAX)
			return 0;
		start = end + 1;
	}
}

/* ================= xattr deletions (replay_xattr_deletes) ================= */

/* The first xattr record of ino at or after key offset *off that the log lacks: 0 with its name, 1 none. */
static int xattr_not_logged(struct rctx *c, uint64_t ino, uint64_t *off, char *name, size_t *len)
{
	struct bf_key key = { ino, BF_XATTR_ITEM_KEY, *off };
	struct bf_path p;
	int r;

	bf_path_init(&p, c->fs->env);
	r = bf_search(c->fs->env, c->tree, &key, &p);
	while (r >= 0 && bf_path_valid(&p)) {
		struct bf_key k = bf_path_key(&p);
		struct bf_dir_rec rec, lrec;
		uint32_t size, pos = 0;
		const char *why = NULL;
		char buf[BF_XATTR_NAME_MAX + 1];
		if (k.objectid != ino || k.type != BF_XATTR_ITEM_KEY)
			break;
		const uint8_t *data = bf_path_item(&p, &size);
		while ((r = bf_dir_rec_next(data, size, &pos, &rec, &why)) == 1) {
			if ((why = bf_dir_rec_check(&rec, &k)))
				break;
			r = dir_lookup(c, &c->log, &k, rec.name, rec.name_len, &lrec, buf);
			if (r != 0) {
				if (r == 1) {
					memcpy(name, rec.name, rec.name_len);
					*len = rec.name_len;
					*off = k.offset;
					r = 0;
				}
				bf_path_release(&p);
				return r;
			}
		}
		if (r < 0 || why) {
			r = bf_corrupt(c->subvol, ino, &k, "%s", why ? why : "bad xattr record");
			break;
		}
		r = bf_path_next(&p);
	}
	bf_path_release(&p);
	return r < 0 ? r : 1;
}

static int xattr_deletes(struct rctx *c, uint64_t ino)
{
	char name[BF_XATTR_NAME_MAX + 1];
	uint64_t off = 0;
	size_t len;
	int r;

	while ((r = xattr_not_logged(c, ino, &off, name, &len)) == 0) {
		struct bf_key key = { ino, BF_XATTR_ITEM_KEY, off };
		struct bf_path p;
		struct bf_dir_rec rec;
		uint32_t size, pos, rl;
		bf_path_init(&p, c->fs->env);
		r = bf_search_slot(c->op->t, c->tree, &key, -1, true, &p);
		if (r == 0) {
			const uint8_t *data = bf_path_item(&p, &size);
			r = bf_rec_find(c->subvol, &key, data, size, name, len, &rec, &pos, &rl);
		}
		if (r) {
			bf_path_release(&p);
			return r > 0 ? -EIO : r;
		}
		if ((r = bf_rec_remove(c->op, c->tree, &p, pos, rl)) != 0)
			return r;
	}
	return r > 0 ? 0 : r;
}

/* ================= stage 1: inode items ================= */

/* The kernel's overwrite_item for an inode item: nbytes stays what the subvolume has (0 for a new inode) so that
   replayed extents add up; a directory keeps its committed size (entries replayed change it); an item logged
   with generation 0 only says the inode exists (a regular file takes its size, if not 0). */
static int copy_inode_item(struct rctx *c, uint64_t ino, const struct bf_inode_item *logged)
{
	struct bf_key key = { ino, BF_INODE_ITEM_KEY, 0 };
	struct bf_inode_item li = *logged, cur;
	uint8_t *old;
	uint32_t size;
	int r = fs_item_get(c, &key, &old, &size);

	if (r < 0)
		return r;
	if (r == 0 && size != sizeof(cur)) {
		free(old);
		return bf_corrupt(c->subvol, ino, &key, "inode item of %u bytes", size);
	}
	bf_inode_cache_forget(c->fs, c->subvol, ino);
	if (r == 1) {
		put64(&li.nbytes, 0);
		if (S_ISDIR(get32(li.mode)))
			put64(&li.size, 0);
		if (!get64(li.generation))
			put64(&li.generation, c->op->t->transid);
		return fs_item_put(c, &key, &li, sizeof(li));
	}
	memcpy(&cur, old, sizeof(cur));
	free(old);
	if (memcmp(&cur, logged, sizeof(cur)) == 0)
		return 0;
	if (!get64(li.generation)) {
		if (!S_ISREG(get32(li.mode)) || !S_ISREG(get32(cur.mode)) || !get64(li.size))
			return 0;
		put64(&cur.size, get64(li.size));
		return fs_item_put(c, &key, &cur, sizeof(cur));
	}
	li.nbytes = cur.nbytes;
	if (S_ISDIR(get32(li.mode)))
		li.size = S_ISDIR(get32(cur.mode)) ? cur.size : (bf_le64){ { 0 } };
	return fs_item_put(c, &key, &li, sizeof(li));
}

/* Before its extents are replayed, a regular file loses every extent past its logged size (prealloc extents the
   fsync left beyond i_size would otherwise survive). */
static int truncate_to_size(struct rctx *c, uint64_t ino)
{
	struct bf_wino w;
	uint64_t found = 0;
	int r = ino_load(c, ino, &w);
	struct bf_fctx fc = { c->fs, c->op->t, c->tree, c->ea, c->subvol, ino,
			      (c->fs->fi->incompat & BF_FEATURE_INCOMPAT_NO_HOLES) != 0 };
	uint64_t from;

	if (r)
		return r;
	if (!round_up(get64(w.ii.size), sectorsize(c), &from))
		return corrupt(c, "logged inode size overflows");
	c->op->changed = true;
	r = bf_fext_drop(&fc, from, UINT64_MAX, &found);
	if (r)
		return r;
	put64(&w.ii.nbytes, get64(w.ii.nbytes) >= found ? get64(w.ii.nbytes) - found : 0);
	return bf_inode_update(c->fs, c->op->t, c->subvol, ino, &w.ii);
}

static int replay_inode(struct rctx *c, uint64_t ino, const struct bf_inode_item *ii)
{
	uint32_t mode = get32(ii->mode);
	int r;

	if (ino < BF_FIRST_FREE_OBJECTID || ino > BF_LAST_FREE_OBJECTID)
		return corrupt(c, "inode item with an objectid outside the inode range");
	r = xattr_deletes(c, ino);
	if (!r && S_ISDIR(mode))
		r = dir_deletes(c, ino, false);
	if (!r)
		r = copy_inode_item(c, ino, ii);
	if (!r && S_ISREG(mode))
		r = truncate_to_size(c, ino);
	return r ? r : link_to_fixup(c, ino);
}

/* ================= stage 2: directory index entries (replay_one_dir_item, replay_one_name) ================ */

/* An entry of the subvolume found under the logged name: 1 if it is the logged one, else 0 after unlinking it
   (only when the logged inode exists, as the kernel's delete_conflicting_dir_entry). */
static int conflicting_entry(struct rctx *c, uint64_t dir, const struct bf_dir_rec *found, const struct bf_dir_rec *log,
			     bool exists)
{
	if (found->location.objectid == log->location.objectid && found->location.type == log->location.type &&
	    found->location.offset == log->location.offset && found->type == log->type)
		return 1;
	return exists ? drop_entry(c, dir, found) : 0;
}

/* 1 if the name was added, 0 if not, or an errno. */
static int replay_one_name(struct rctx *c, const struct bf_key *key, const struct bf_dir_rec *rec)
{
	uint64_t dir = key->objectid, ino = rec->location.objectid;
	struct bf_key dkey = { dir, BF_DIR_ITEM_KEY, bf_name_hash(rec->name, rec->name_len) };
	struct bf_key rkey = { ino, BF_INODE_REF_KEY, dir };
	/* sic: the kernel's replay_one_name looks for the extref at offset dir, not at the name's hash */
	struct bf_key xkey = { ino, BF_INODE_EXTREF_KEY, dir };
	struct bf_dir_rec found;
	char buf[BF_NAME_LEN];
	int err, matches = 0, r;
	bool exists;

	if (!ino_exists(c, dir, &err))
		return err ? err : fail(c, -EUCLEAN, "directory %" PRIu64 " of a logged entry does not exist", dir);
	exists = rec->location.type == BF_INODE_ITEM_KEY && ino_exists(c, ino, &err);
	if (err)
		return err;
	for (int i = 0; i < 2; i++) {
		r = dir_lookup(c, c->tree, i ? key : &dkey, rec->name, rec->name_len, &found, buf);
		if (r > 0)
			continue; /* no entry under that name / index */
		if (r == 0)
			r = conflicting_entry(c, dir, &found, rec, exists);
		if (r < 0)
			return r;
		matches += r;
	}
	if (matches == 2)
		return 0;
	if ((r = backref_in_log(c, &rkey, dir, rec->name, rec->name_len)) != 0 ||
	    (r = backref_in_log(c, &xkey, dir, rec->name, rec->name_len)) != 0)
		return r < 0 ? r : 0; /* the back reference adds it later */
	if (!exists)
		return 0;
	r = add_name(c, dir, ino, rec->name, rec->name_len, key->offset, true);
	return r == -EEXIST ? 0 : r < 0 ? r : 1;
}

static int replay_dir_index(struct rctx *c, const struct bf_key *key, const uint8_t *data, uint32_t size)
{
	struct bf_dir_rec rec;
	uint32_t pos = 0;
	const char *why = NULL;
	int r;

	while ((r = bf_dir_rec_next(data, size, &pos, &rec, &why)) == 1) {
		if ((why = bf_dir_rec_check(&rec, key)))
			return corrupt(c, why);
		r = replay_one_name(c, key, &rec);
		/* a new name of a non-directory added now: its link count must count it */
		if (r == 1 && rec.type != BF_FT_DIR)
			r = link_to_fixup(c, rec.location.objectid);
		if (r < 0)
			return r;
	}
	return r < 0 ? corrupt(c, why) : 0;
}

/* ================= stage 3: back references (add_inode_ref, __add_inode_ref, unlink_old_inode_refs) ======== */

/* Is name (index) of dir already an entry naming ino, in both the index and the name item? */
static int inode_in_dir(struct rctx *c, uint64_t dir, uint64_t ino, uint64_t index, const char *name, size_t len)
{
	struct bf_key ikey = { dir, BF_DIR_INDEX_KEY, index };
	struct bf_key dkey = { dir, BF_DIR_ITEM_KEY, bf_name_hash(name, len) };
	struct bf_dir_rec rec;
	char buf[BF_NAME_LEN];
	int r = dir_lookup(c, c->tree, &ikey, name, len, &rec, buf);

	if (r || rec.location.objectid != ino)
		return r < 0 ? r : 0;
	r = dir_lookup(c, c->tree, &dkey, name, len, &rec, buf);
	return r ? (r < 0 ? r : 0) : rec.location.objectid == ino;
}

/* The first name in the subvolume's back reference item key (of parent, for extrefs) that the log's item at the
   same key lacks: 0 with it, 1 none. */
static int ref_not_logged(struct rctx *c, const struct bf_key *key, uint64_t parent, struct bf_ref_rec *out, char *buf)
{
	uint8_t *data;
	uint32_t size, pos = 0;
	struct bf_ref_rec rec;
	bool found = false;
	int r = fs_item_get(c, key, &data, &size);

	if (r)
		return r;
	while (!found && (r = ref_next(key, data, size, &pos, &rec)) == 1) {
		if (key->type == BF_INODE_EXTREF_KEY && rec.parent != parent)
			continue;
		struct bf_key lk = *key;
		if (key->type == BF_INODE_EXTREF_KEY)
			lk.offset = extref_hash(rec.parent, rec.name, rec.len);
		r = backref_in_log(c, &lk, rec.parent, rec.name, rec.len);
		if (r < 0)
			break;
		if (r == 0) {
			*out = rec;
			memcpy(buf, rec.name, rec.len);
			out->name = buf;
			found = true;
		}
	}
	free(data);
	if (r == -EUCLEAN)
		return bf_corrupt(c->subvol, key->objectid, key, "back reference record crosses its item end");
	return r < 0 ? r : found ? 0 : 1;
}

/* Does the subvolume's extref item at key hold (parent, name)? 1 yes, 0 no. */
static int extref_has(struct rctx *c, const struct bf_key *key, uint64_t parent, const char *name, size_t len)
{
	uint8_t *data;
	uint32_t size, pos = 0;
	struct bf_ref_rec rec;
	int r = fs_item_get(c, key, &data, &size), found = 0;

	if (r)
		return r > 0 ? 0 : r;
	while ((r = ref_next(key, data, size, &pos, &rec)) == 1)
		if (rec.parent == parent && rec.len == len && !memcmp(rec.name, name, len)) {
			found = 1;
			break;
		}
	free(data);
	return r < 0 ? bf_corrupt(c->subvol, key->objectid, key, "back reference record crosses its item end") : found;
}

/* Before the logged name (parent, index, name) of ino goes in (the kernel's __add_inode_ref): names of ino in
   parent that the subvolume has and the log does not are unlinked, and so are the inodes of an entry of parent
   with the same index or name. 1: the reference is the subvolume root's own, nothing to do. */
static int ref_conflicts(struct rctx *c, uint64_t parent, uint64_t ino, uint64_t index, const char *name, size_t len)
{
	struct bf_key rkey = { ino, BF_INODE_REF_KEY, parent };
	struct bf_key xkey = { ino, BF_INODE_EXTREF_KEY, extref_hash(parent, name, len) };
	struct bf_key ikey = { parent, BF_DIR_INDEX_KEY, index };
	struct bf_key dkey = { parent, BF_DIR_ITEM_KEY, bf_name_hash(name, len) };
	struct bf_ref_rec victim;
	struct bf_dir_rec rec;
	char buf[BF_NAME_LEN];
	int r;

	if (ino == parent) { /* the subvolume root's own ".." reference: nothing to do */
		uint8_t *data;
		uint32_t size;
		r = fs_item_get(c, &rkey, &data, &size);
		free(data);
		if (r <= 0)
			return r < 0 ? r : 1;
	}
	while ((r = ref_not_logged(c, &rkey, parent, &victim, buf)) == 0)
		if ((r = unlink_name(c, parent, ino, victim.name, victim.len, false)) != 0)
			return r;
	/* extrefs only matter when the subvolume has the logged name as one */
	while (r > 0 && (r = extref_has(c, &xkey, parent, name, len)) > 0) {
		r = ref_not_logged(c, &xkey, parent, &victim, buf);
		if (r == 0 && (r = unlink_name(c, parent, ino, victim.name, victim.len, false)) == 0)
			r = 1;
		else if (r > 0)
			break;
	}
	if (r < 0)
		return r;
	for (int i = 0; i < 2; i++) {
		r = dir_lookup(c, c->tree, i ? &dkey : &ikey, name, len, &rec, buf);
		if (r == 0)
			r = drop_entry(c, parent, &rec);
		if (r < 0)
			return r;
	}
	return 0;
}

/* Names of the subvolume's back reference item at key that the logged item lacks: unlink them (unlink_old_inode_refs;
   the directory of each must exist). */
static int unlink_old_refs(struct rctx *c, const struct bf_key *key, const uint8_t *logged, uint32_t lsize)
{
	uint8_t *data;
	uint32_t size;
	int r;

	for (;;) {
		struct bf_ref_rec rec, lrec;
		uint32_t pos = 0, lpos;
		bool gone = false;
		if ((r = fs_item_get(c, key, &data, &size)) != 0)
			return r > 0 ? 0 : r;
		while (!gone && (r = ref_next(key, data, size, &pos, &rec)) == 1) {
			int lr = 0;
			for (lpos = 0, gone = true; gone && (lr = ref_next(key, logged, lsize, &lpos, &lrec)) == 1;)
				if (lrec.len == rec.len && lrec.parent == rec.parent && !memcmp(lrec.name, rec.name, rec.len))
					gone = false;
			if (gone && lr < 0)
				r = -EUCLEAN;
		}
		if (r < 0 || !gone) {
			free(data);
			return r < 0 ? bf_corrupt(c->subvol, key->objectid, key, "back reference record crosses its item end")
				     : 0;
		}
		char name[BF_NAME_LEN];
		int err;
		memcpy(name, rec.name, rec.len);
		free(data);
		if (!ino_exists(c, rec.parent, &err))
			return err ? err : fail(c, -EUCLEAN, "directory %" PRIu64 " of the name '%.*s' to unlink does not "
						"exist", rec.parent, (int)rec.len, name);
		if ((r = unlink_name(c, rec.parent, key->objectid, name, rec.len, true)) != 0)
			return r;
	}
}

static int add_inode_ref(struct rctx *c, const struct bf_key *key, const uint8_t *data, uint32_t size)
{
	uint64_t ino = key->objectid;
	struct bf_ref_rec rec;
	uint32_t pos = 0;
	int err, r;

	/* the first name's directory may not have been logged: then the fixup counts what is there */
	if ((r = ref_next(key, data, size, &pos, &rec)) != 1)
		return r < 0 ? corrupt(c, "back reference record crosses its item end") : 0;
	if (!ino_exists(c, rec.parent, &err))
		return err;
	if (!ino_exists(c, ino, &err))
		return err ? err : fail(c, -EUCLEAN, "inode %" PRIu64 " of a logged back reference does not exist", ino);
	for (pos = 0; (r = ref_next(key, data, size, &pos, &rec)) == 1;) {
		if (!ino_exists(c, rec.parent, &err)) {
			if (err)
				return err;
			continue; /* an extref naming another directory that is not there */
		}
		r = inode_in_dir(c, rec.parent, ino, rec.index, rec.name, rec.len);
		if (r > 0)
			continue;
		if (r == 0)
			r = ref_conflicts(c, rec.parent, ino, rec.index, rec.name, rec.len);
		if (r > 0)
			return 0;
		if (r == 0)
			r = add_name(c, rec.parent, ino, rec.name, rec.len, rec.index, false);
		if (r < 0)
			return r == -EEXIST ? fail(c, -EUCLEAN, "logged name '%.*s' collides with an entry of directory %"
						   PRIu64, (int)rec.len, rec.name, rec.parent) : r;
	}
	if (r < 0)
		return corrupt(c, "back reference record crosses its item end");
	r = unlink_old_refs(c, key, data, size);
	return r ? r : fs_item_put(c, key, data, size);
}

/* ================= stage 3: file extents (replay_one_extent) ================= */

/* Copy the log's checksums of [start, end) into the csum tree. */
static int copy_csums(struct rctx *c, uint64_t start, uint64_t end)
{
	struct bf_key key = { BF_EXTENT_CSUM_OBJECTID, BF_EXTENT_CSUM_KEY, start };
	uint32_t ss = sectorsize(c), cs = (uint32_t)c->fs->fi->csum_size;
	struct bf_path p;
	int r;

	if (start % ss || end % ss || end < start)
		return corrupt(c, "logged extent not sector aligned");
	bf_path_init(&p, c->fs->env);
	r = bf_search_le(c->fs->env, &c->log, &key, &p);
	if (r == -ENOENT)
		r = bf_search(c->fs->env, &c->log, &key, &p);
	while (r >= 0 && bf_path_valid(&p)) {
		struct bf_key k = bf_path_key(&p);
		uint32_t size;
		const uint8_t *data = bf_path_item(&p, &size);
		if (k.objectid == BF_EXTENT_CSUM_OBJECTID && k.type == BF_EXTENT_CSUM_KEY) {
			uint64_t n = size / cs, a, b;
			if (size % cs || k.offset % ss || n > (UINT64_MAX - k.offset) / ss) {
				r = corrupt(c, "malformed checksum item");
				break;
			}
			if (k.offset >= end)
				break;
			a = bf_max64(start, k.offset);
			b = bf_min64(end, k.offset + n * ss);
			if (a < b && (r = bf_csum_insert(c->fs->fi, c->op->t, a, data + (a - k.offset) / ss * cs,
							 (b - a) / ss)) != 0)
				break;
		} else if (k.objectid > BF_EXTENT_CSUM_OBJECTID ||
			   (k.objectid == BF_EXTENT_CSUM_OBJECTID && k.type > BF_EXTENT_CSUM_KEY)) {
			break;
		}
		r = bf_path_next(&p);
	}
	bf_path_release(&p);
	return r < 0 ? r : 0;
}

/* Is the subvolume's item at the logged item's key the same extent? */
static int same_extent(struct rctx *c, const struct bf_key *key, const uint8_t *data)
{
	uint8_t *old;
	uint32_t size;
	int r = fs_item_get(c, key, &old, &size);

	if (r)
		return r > 0 ? 0 : r;
	r = size >= sizeof(struct bf_file_extent_item) && !memcmp(old, data, sizeof(struct bf_file_extent_item));
	free(old);
	return r;
}

/* Insert a regular or prealloc extent item and take its data reference. */
static int insert_extent(struct rctx *c, const struct bf_key *key, const uint8_t *data, const struct bf_fext *e)
{
	int r = fs_item_put(c, key, data, sizeof(struct bf_file_extent_item));
	uint64_t cs_start = e->disk_bytenr + (e->compression ? 0 : e->offset);
	uint64_t cs_len = e->compression ? e->disk_num_bytes : e->len;

	if (r || !e->disk_bytenr)
		return r;
	r = bf_extalloc_logged_data_ref(c->ea, e->disk_bytenr, e->disk_num_bytes, c->subvol, key->objectid,
					key->offset - e->offset);
	if (r == -EUCLEAN)
		return fail(c, r, "logged data extent at %" PRIu64 " cannot be taken (see the line above)", e->disk_bytenr);
	if (!r && (cs_start < e->disk_bytenr || cs_start + cs_len < cs_start))
		return corrupt(c, "logged extent range overflows");
	return r ? r : copy_csums(c, cs_start, cs_start + cs_len);
}

static int replay_extent(struct rctx *c, const struct bf_key *key, const uint8_t *data, uint32_t size)
{
	struct bf_fctx fc = { c->fs, c->op->t, c->tree, c->ea, c->subvol, key->objectid,
			      (c->fs->fi->incompat & BF_FEATURE_INCOMPAT_NO_HOLES) != 0 };
	struct bf_fext e;
	struct bf_wino w;
	uint64_t nbytes, end, found = 0;
	int r = bf_fext_decode(&fc, key->offset, data, size, &e);

	if (r)
		return corrupt(c, "malformed file extent item");
	bool inl = e.type == BF_FILE_EXTENT_INLINE;
	nbytes = inl ? e.ram_bytes : e.disk_bytenr ? e.len : 0;
	if (bf_add_overflow(key->offset, inl ? e.ram_bytes : e.len, &end) || (inl && !round_up(end, sectorsize(c), &end)) ||
	    end <= key->offset)
		return corrupt(c, "file extent ends before it starts or past the largest offset");
	if ((r = ino_load(c, key->objectid, &w)) != 0)
		return r == -ENOENT ? corrupt(c, "file extent of an inode that does not exist") : r;
	if (!inl && (r = same_extent(c, key, data)) != 0)
		return r < 0 ? r : 0;
	c->op->changed = true;
	r = bf_fext_drop(&fc, key->offset, end, &found);
	if (!r && inl)
		r = fs_item_put(c, key, data, size);
	else if (!r && (e.disk_bytenr || !fc.no_holes))
		r = insert_extent(c, key, data, &e);
	if (!r && (r = ino_load(c, key->objectid, &w)) == 0) {
		uint64_t nb = get64(w.ii.nbytes) + nbytes;
		put64(&w.ii.nbytes, nb >= found ? nb - found : 0);
		r = bf_inode_update(c->fs, c->op->t, c->subvol, key->objectid, &w.ii);
	}
	return r;
}

/* ================= the link-count fixup (fixup_inode_link_counts) ================= */

/* Count the back reference records of ino (INODE_REF and INODE_EXTREF items). */
struct count_ctx {
	uint64_t n;
	bool bad;
};

static int count_refs_cb(void *ctx, const struct bf_key *key, const uint8_t *data, uint32_t size)
{
	struct count_ctx *cc = ctx;
	struct bf_ref_rec rec;
	uint32_t pos = 0;
	int r;

	while ((r = ref_next(key, data, size, &pos, &rec)) == 1)
		cc->n++;
	cc->bad = cc->bad || r < 0;
	return 0;
}

static int fixup_one(struct rctx *c, uint64_t ino)
{
	struct bf_key min = { ino, BF_INODE_REF_KEY, 0 }, max = { ino, BF_INODE_EXTREF_KEY, UINT64_MAX };
	struct count_ctx cc = { 0, false };
	struct bf_wino w;
	int r = ino_load(c, ino, &w);

	if (r)
		return r == -ENOENT ? fail(c, -EUCLEAN, "inode %" PRIu64 " listed for the link fixup is gone", ino) : r;
	r = bf_iterate(c->fs->env, c->tree, &min, &max, count_refs_cb, &cc);
	if (r)
		return r;
	if (cc.bad || cc.n > UINT32_MAX)
		return bf_corrupt(c->subvol, ino, &min, "malformed back references");
	if (cc.n != get32(w.ii.nlink)) {
		put32(&w.ii.nlink, (uint32_t)cc.n);
		r = bf_inode_update(c->fs, c->op->t, c->subvol, ino, &w.ii);
	}
	if (r || cc.n)
		return r;
	if (S_ISDIR(get32(w.ii.mode)) && (r = dir_deletes(c, ino, true)) != 0)
		return r;
	return bf_orphan_add(c->op, c->subvol, ino);
}

static int fixup_link_counts(struct rctx *c)
{
	struct bf_key max = { BF_TREE_LOG_FIXUP_OBJECTID, BF_ORPHAN_ITEM_KEY, UINT64_MAX }, k = { 0, 0, 0 };
	struct bf_path p;
	int r;

	for (;;) {
		bf_path_init(&p, c->fs->env);
		r = bf_search_le(c->fs->env, c->tree, &max, &p);
		if (r >= 0)
			k = bf_path_key(&p);
		bf_path_release(&p);
		if (r == -ENOENT || (r >= 0 && (k.objectid != max.objectid || k.type != max.type)))
			return 0;
		if (r < 0)
			return r;
		if ((r = fs_item_del(c, &k)) != 0 || (r = fixup_one(c, k.offset)) != 0)
			return r;
	}
}

/* ================= walking the log ================= */

/* The kernel tree checker's rules for an inode item (check_inode_item): what it would refuse to read, the replay
   must not copy. NULL if fine. */
static const char *inode_item_bad(const struct rctx *c, const struct bf_inode_item *ii)
{
	const uint64_t known = BF_INODE_NODATASUM | BF_INODE_NODATACOW | BF_INODE_READONLY | BF_INODE_NOCOMPRESS |
			       BF_INODE_PREALLOC | BF_INODE_SYNC | BF_INODE_IMMUTABLE | BF_INODE_APPEND | BF_INODE_NODUMP |
			       BF_INODE_NOATIME | BF_INODE_DIRSYNC | BF_INODE_COMPRESS | BF_INODE_ROOT_ITEM_INIT |
			       (1ULL << 32) /* the read-only-compatible VERITY flag */;
	uint64_t gen_max = c->fs->fi->generation + 1;
	uint32_t mode = get32(ii->mode), type = mode & S_IFMT;

	if (get64(ii->generation) > gen_max || get64(ii->transid) > gen_max)
		return "inode item from a future generation";
	if ((mode & ~(uint32_t)(S_IFMT | 07777)) || !(type == S_IFREG || type == S_IFDIR || type == S_IFLNK ||
						     type == S_IFCHR || type == S_IFBLK || type == S_IFIFO || type == S_IFSOCK))
		return "inode item with an invalid mode";
	if (type == S_IFDIR && get32(ii->nlink) > 1)
		return "directory inode item with more than one link";
	if (get64(ii->flags) & ~known)
		return "inode item with unknown flags";
	return NULL;
}

static int replay_item(struct rctx *c, const struct bf_key *k, const uint8_t *data, uint32_t size)
{
	if (k->type == BF_INODE_ITEM_KEY) {
		const char *why;
		if (size != sizeof(struct bf_inode_item) || k->offset)
			return corrupt(c, "inode item of the wrong size or key");
		const struct bf_inode_item *ii = (const void *)data;
		if ((why = inode_item_bad(c, ii)))
			return corrupt(c, why);
		c->ignoring = get32(ii->nlink) == 0;
		if (!c->ignoring && c->stage == STAGE_INODES)
			return replay_inode(c, k->objectid, ii);
		return 0;
	}
	if (c->ignoring) /* a tmpfile, or an inode unlinked while open: the parent's replay deletes it */
		return 0;
	if (k->type == BF_DIR_INDEX_KEY && c->stage == STAGE_DIR_INDEX)
		return replay_dir_index(c, k, data, size);
	if (c->stage != STAGE_ALL)
		return 0;
	switch (k->type) {
	case BF_XATTR_ITEM_KEY: {
		struct bf_dir_rec rec;
		uint32_t pos = 0;
		const char *why = NULL;
		int r;
		while ((r = bf_dir_rec_next(data, size, &pos, &rec, &why)) == 1)
			if ((why = bf_dir_rec_check(&rec, k)))
				return corrupt(c, why);
		return r < 0 ? corrupt(c, why) : fs_item_put(c, k, data, size);
	}
	case BF_INODE_REF_KEY:
	case BF_INODE_EXTREF_KEY:
		return add_inode_ref(c, k, data, size);
	case BF_EXTENT_DATA_KEY:
		return replay_extent(c, k, data, size);
	default:
		return 0;
	}
}

static int replay_leaf(struct rctx *c, const struct bf_block *b)
{
	int r = 0;

	for (uint32_t i = 0; i < b->nritems && !r; i++) {
		uint32_t size;
		const uint8_t *data = bf_leaf_item(b, i, &size);
		c->key = bf_leaf_key(b, i);
		c->have_key = true;
		r = replay_item(c, &c->key, data, size);
		if (r && !c->why[0])
			fail(c, r, "%s", strerror(-r));
		c->have_key = false;
	}
	return r;
}

/* Pin stage, a leaf: keep the data extents its file extent items name (btrfs_exclude_logged_extents). */
static int pin_leaf(struct rctx *c, const struct bf_block *b)
{
	for (uint32_t i = 0; i < b->nritems; i++) {
		struct bf_key k = bf_leaf_key(b, i);
		struct bf_file_extent_item fe;
		uint32_t size;
		const uint8_t *data = bf_leaf_item(b, i, &size);
		if (k.type != BF_EXTENT_DATA_KEY || size < sizeof(fe))
			continue;
		memcpy(&fe, data, sizeof(fe));
		if (fe.type == BF_FILE_EXTENT_INLINE || !get64(fe.disk_bytenr))
			continue;
		c->key = k;
		c->have_key = true;
		if (bf_extalloc_exclude(c->ea, get64(fe.disk_bytenr), get64(fe.disk_num_bytes), false))
			return corrupt(c, "a logged data extent cannot be kept from allocation (see the line above)");
		c->have_key = false;
	}
	return 0;
}

typedef int (*leaf_fn)(struct rctx *c, const struct bf_block *b);

/* Visit the blocks of a log tree depth first, leaves in key order; with pin, keep each block from allocation. */
static int walk_block(struct rctx *c, uint64_t bytenr, const struct bf_block_expect *exp, bool pin, leaf_fn fn)
{
	struct bf_tree_env *env = c->fs->env;
	struct bf_block *b;
	int r;

	c->block = bytenr;
	r = bf_block_read(env, bytenr, exp, &b);
	if (r)
		return fail(c, r, "cannot read the log tree block: %s", strerror(-r));
	if (pin && (r = bf_extalloc_exclude(c->ea, bytenr, env->nodesize, true)) != 0)
		r = corrupt(c, "a log tree block cannot be kept from allocation (see the line above)");
	if (!r && b->level == 0 && fn)
		r = fn(c, b);
	for (uint32_t i = 0; !r && b->level > 0 && i < b->nritems; i++) {
		struct bf_key first = bf_node_key(b, i);
		struct bf_block_expect ce = { bf_node_ptr_gen(b, i), b->level - 1, &first, BF_TREE_LOG_OBJECTID };
		r = walk_block(c, bf_node_blockptr(b, i), &ce, pin, fn);
		c->block = bytenr;
	}
	bf_block_put(env, b);
	return r;
}

static int walk_tree(struct rctx *c, const struct bf_root *root, bool pin, leaf_fn fn)
{
	struct bf_block_expect exp = { root->generation, root->level, NULL, BF_TREE_LOG_OBJECTID };

	if (root->level >= BF_MAX_LEVEL)
		return corrupt(c, "log tree level out of range");
	return walk_block(c, root->bytenr, &exp, pin, fn);
}

/* ================= the log root tree ================= */

struct roots_ctx {
	struct logroot *v;
	size_t n, cap;
	bool bad;
};

static int collect_root(void *ctx, const struct bf_key *key, const uint8_t *data, uint32_t size)
{
	struct roots_ctx *rc = ctx;
	struct bf_root_item ri;

	if (key->objectid != BF_TREE_LOG_OBJECTID || key->type != BF_ROOT_ITEM_KEY)
		return 0;
	if (size < BF_ROOT_ITEM_LEGACY_SIZE || rc->n >= MAX_LOG_ROOTS) {
		rc->bad = true;
		return 1;
	}
	memset(&ri, 0, sizeof(ri));
	memcpy(&ri, data, bf_min64(size, sizeof(ri)));
	if (rc->n == rc->cap) {
		size_t cap = rc->cap ? rc->cap * 2 : 8;
		struct logroot *v = realloc(rc->v, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		rc->v = v;
		rc->cap = cap;
	}
	rc->v[rc->n++] = (struct logroot){ key->offset, { BF_TREE_LOG_OBJECTID, get64(ri.bytenr), get64(ri.generation),
							  ri.level } };
	return 0;
}

/* The subvolume log trees named by the log root tree, in the kernel's order (highest subvolume id first). */
static int log_roots(struct rctx *c, const struct bf_root *lrt, struct roots_ctx *rc)
{
	struct bf_key min = { BF_TREE_LOG_OBJECTID, BF_ROOT_ITEM_KEY, 0 };
	struct bf_key max = { BF_TREE_LOG_OBJECTID, BF_ROOT_ITEM_KEY, UINT64_MAX };
	int r = bf_iterate(c->fs->env, lrt, &min, &max, collect_root, rc);

	c->block = lrt->bytenr;
	if (r)
		return fail(c, r, "cannot read the log root tree: %s", strerror(-r));
	if (rc->bad)
		return corrupt(c, "a log root item is malformed (or there are too many)");
	for (size_t i = 0; i < rc->n / 2; i++) {
		struct logroot t = rc->v[i];
		rc->v[i] = rc->v[rc->n - 1 - i];
		rc->v[rc->n - 1 - i] = t;
	}
	return 0;
}

/* One stage over one subvolume's log tree. */
static int replay_root(struct rctx *c, const struct logroot *lr)
{
	struct bf_subvol_w *sw;
	int r;

	c->subvol = lr->subvol;
	c->log = lr->root;
	if (c->stage == STAGE_PIN)
		return walk_tree(c, &c->log, true, pin_leaf);
	if (!bf_is_fs_tree(lr->subvol))
		return corrupt(c, "a log tree for a tree that is not a subvolume");
	if (!(sw = bf_subvol_w(c->fs, lr->subvol)))
		return -ENOMEM;
	sw->cleaned = true; /* the orphan cleanup runs after the replay, as the kernel's does */
	r = bf_txn_root(c->fs->fi, c->op->t, lr->subvol, &c->tree);
	if (r == -ENOENT)
		return 0; /* the subvolume was deleted: its log is only pinned */
	if (r)
		return fail(c, r, "cannot open subvolume %" PRIu64 " for the replay: %s", lr->subvol, strerror(-r));
	r = walk_tree(c, &c->log, false, replay_leaf);
	if (!r && c->stage == STAGE_ALL) {
		c->have_key = false;
		r = fixup_link_counts(c);
		if (r && !c->why[0])
			fail(c, r, "fixing the link counts of subvolume %" PRIu64 " failed: %s", lr->subvol, strerror(-r));
	}
	return r;
}

static int replay_all(struct rctx *c)
{
	struct bf_fsinfo *fi = c->fs->fi;
	struct bf_root lrt = { BF_TREE_LOG_OBJECTID, fi->log_root, fi->generation + 1, fi->super.log_root_level };
	struct roots_ctx rc = { NULL, 0, 0, false };
	int r = walk_tree(c, &lrt, true, NULL);

	if (!r)
		r = log_roots(c, &lrt, &rc);
	for (c->stage = STAGE_PIN; !r && c->stage <= STAGE_ALL; c->stage++)
		for (size_t i = 0; !r && i < rc.n; i++)
			r = replay_root(c, &rc.v[i]);
	if (r)
		c->stage--; /* the stage that failed (else STAGE_COMMIT: what comes next) */
	free(rc.v);
	return r;
}

/* After the replay: what the write side keeps in memory about the trees is stale. */
static void forget_state(struct bf_fs *fs)
{
	bf_inode_cache_clear(fs);
	memset(fs->ns->diridx, 0, sizeof(fs->ns->diridx));
	for (size_t i = 0; i < fs->ns->nsubvols; i++) {
		fs->ns->subvols[i].next_ino = 0;
		fs->ns->subvols[i].cleaned = false;
	}
}

int bf_log_replay(struct bf_fs *fs, char *err, size_t errlen)
{
	struct bf_wop op;
	struct rctx c;
	uint64_t log_root = fs->fi->log_root;
	int r = bf_wop_begin(fs, &op);

	if (r)
		return bf_err(err, errlen, r, "cannot start the log replay: %s", strerror(-r));
	op.what = "log replay";
	memset(&c, 0, sizeof(c));
	c.fs = fs;
	c.op = &op;
	c.ea = bf_txn_alloc(fs->fi);
	bf_log(BF_LOG_INFO, "replaying the log tree at %" PRIu64 " (changes fsynced after the last commit, generation %"
	       PRIu64 ")", log_root, fs->fi->generation);
	r = replay_all(&c);
	if (!r) {
		fs->fi->log_root = 0;
		r = bf_commit(fs->fi);
		if (r)
			fail(&c, r, "the commit after the replay failed: %s", strerror(-r));
	}
	if (r) {
		fs->fi->log_root = log_root;
		op.changed = true; /* abort even before a tree changed: the allocator holds the pins */
	}
	r = bf_wop_end(&op, r);
	forget_state(fs);
	if (r)
		return bf_err(err, errlen, r, "replaying the log tree at %" PRIu64 " failed: %s; the image is unchanged. "
			      "Mount it with the kernel driver to replay the log, or discard the log (losing what was "
			      "fsynced after the last commit) with 'btrfs rescue zero-log'", log_root,
			      c.why[0] ? c.why : strerror(-r));
	bf_log(BF_LOG_INFO, "log tree replayed and committed (generation %" PRIu64 ")", fs->fi->generation);
	return 0;
}
