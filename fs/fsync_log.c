/*
 * fs/fsync_log.c - fsync of a file or directory through the log tree (the kernel's btrfs_log_inode_parent
 * with LOG_INODE_ALL, writing side): instead of a commit, the inode's items are copied into its subvolume's log
 * tree and the log is made durable (journal/log.c). A directory is logged with its DIR_INDEX items, after the
 * regular files it names that changed in the running transaction (each logged whole).
 *
 * Owns: bf_fsync_log - the decision "log or commit" and the copy of one inode into the log.
 *
 * Key idea: after its buffered data has extents, the inode is logged whole: the log must hold exactly its
 * INODE_ITEM, INODE_REFs / INODE_EXTREFs (every name, so the replay links it into each parent directory),
 * XATTR_ITEMs and EXTENT_DATA items as the live subvolume tree has them (gathered in memory, then merged into the
 * log item by item, changing only what differs, so an fsync after an append copies a leaf or two, not the whole
 * file: the effect of the kernel's fast fsync, which logs only the changed extents); with NO_HOLES a hole
 * item covers each gap up to i_size rounded to a sector (so the replay punches out older extents there, as the
 * kernel's btrfs_log_holes and trailing hole do), and the checksums of extents written in this transaction go in
 * as EXTENT_CSUM items (those of older extents are in the committed csum tree already). The kernel's replay then
 * rebuilds the inode, its links, its xattrs (deleting those not logged), its extents (adding their extent items
 * and checksums) and its link count. Whatever a log cannot say safely is a commit instead, decided before
 * anything is logged (docs/ARCHITECTURE.md, "fsync and the log tree"): an entry removed in the running
 * transaction (unlink, rmdir, rename: the kernel's last_unlink_trans rules, here mount-wide), a parent directory
 * created in it (the log would name a directory the replay cannot find), a symlink or special file, a
 * directory created in the transaction or naming a new directory, symlink or special file, an inode without
 * names, item kinds the log does not copy, a chunk made in the transaction, and any error while logging.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fs/wmeta.h"
#include "fs/write.h"
#include "util/util.h"

/* Items the log should hold for the inode (copies, in key order), or holds now. */
struct litem {
	struct bf_key key;
	uint32_t size;
	uint8_t *data;
};
struct ilist {
	struct litem *v;
	size_t n, cap;
};

/* One fsync's state. */
struct lctx {
	struct bf_fs *fs;
	struct bf_fctx c;         /* the subvolume tree side (decoding file extents) */
	struct bf_trans *lt;      /* the log's handle */
	struct bf_root *log;      /* the subvolume's log tree */
	uint64_t transid, isize;
	uint64_t next;            /* the file offset the extents copied so far reach */
	bool datasum;
	uint64_t (*sums)[2];      /* new extents' disk ranges whose checksums go in the log */
	size_t nsums, sums_cap;
	struct ilist want;        /* the inode's items as the log must hold them */
};

/* A commit instead of a log: say why in the trace, return 1. */
static int commit_instead(const struct lctx *x, const char *why)
{
	bf_trace("fsync_commit", "\"subvol\":%" PRIu64 ",\"ino\":%" PRIu64 ",\"why\":\"%s\"", x->c.subvol, x->c.ino,
		 why);
	return 1;
}

/* ---------------- the rules ---------------- */

/* Each parent directory of the inode must exist in the last commit (created before the running transaction),
   so that the replay finds it. *names counts the inode's names. */
static int parent_ok(struct lctx *x, uint64_t parent, bool *ok)
{
	struct bf_inode_item pi;
	int r = bf_inode_load(x->fs, x->c.subvol, parent, &pi);

	if (r == 0 && get64(pi.generation) >= x->transid)
		*ok = false;
	return r;
}

struct parents {
	struct lctx *x;
	bool ok;
	uint64_t names;
};

static int parents_cb(void *ctx, const struct bf_key *k, const uint8_t *data, uint32_t size)
{
	struct parents *ps = ctx;
	uint32_t pos = 0;

	if (k->type == BF_INODE_REF_KEY) {
		ps->names++;
		return parent_ok(ps->x, k->offset, &ps->ok);
	}
	while (pos < size) { /* INODE_EXTREF: (parent, index, name_len, name) records */
		struct bf_inode_extref e;
		if (size - pos < sizeof(e))
			return -EUCLEAN;
		memcpy(&e, data + pos, sizeof(e));
		if (size - pos - sizeof(e) < get16(e.name_len))
			return -EUCLEAN;
		pos += (uint32_t)sizeof(e) + get16(e.name_len);
		ps->names++;
		int r = parent_ok(ps->x, get64(e.parent_objectid), &ps->ok);
		if (r)
			return r;
	}
	return 0;
}

/* 0: the log can express this fsync; 1: commit instead; < 0: error. */
static int may_log(struct lctx *x, const struct bf_inode_item *ii)
{
	struct bf_key min = { x->c.ino, BF_INODE_REF_KEY, 0 }, max = { x->c.ino, BF_INODE_EXTREF_KEY, UINT64_MAX };
	struct parents ps = { x, true, 0 };
	int r;

	if (x->fs->ns->last_unlink_trans >= x->transid)
		return commit_instead(x, "a directory entry was removed or renamed in the running transaction");
	if (!S_ISREG(get32(ii->mode)) && !S_ISDIR(get32(ii->mode)))
		return commit_instead(x, "not a regular file or directory");
	if (S_ISDIR(get32(ii->mode)) && get64(ii->generation) >= x->transid)
		return commit_instead(x, "a directory created in the running transaction");
	if (bf_extalloc_new_chunks(bf_txn_alloc(x->fs->fi)))
		return commit_instead(x, "the running transaction made a chunk");
	r = bf_iterate(x->fs->env, x->c.root, &min, &max, parents_cb, &ps);
	if (r)
		return r;
	if (!ps.names)
		return commit_instead(x, "the inode has no name");
	if (!ps.ok)
		return commit_instead(x, "a parent directory was created in the running transaction");
	return 0;
}

/* ---------------- copying into the log ---------------- */

static int ilist_add(struct ilist *l, const struct bf_key *k, const void *data, uint32_t size)
{
	uint8_t *copy = malloc(size ? size : 1);

	if (!copy)
		return -ENOMEM;
	if (l->n == l->cap) {
		size_t cap = l->cap ? 2 * l->cap : 32;
		struct litem *n = realloc(l->v, cap * sizeof(*n));
		if (!n) {
			free(copy);
			return -ENOMEM;
		}
		l->v = n;
		l->cap = cap;
	}
	memcpy(copy, data, size);
	l->v[l->n++] = (struct litem){ *k, size, copy };
	return 0;
}

static void ilist_free(struct ilist *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i].data);
	free(l->v);
	memset(l, 0, sizeof(*l));
}

static int have_cb(void *ctx, const struct bf_key *k, const uint8_t *data, uint32_t size)
{
	return ilist_add(ctx, k, data, size);
}

static int log_insert(struct lctx *x, const struct bf_key *k, const void *data, uint32_t size)
{
	return bf_insert_item(x->lt, x->log, k, data, size);
}

static int log_delete(struct lctx *x, const struct bf_key *k)
{
	struct bf_path p;
	int r;

	bf_path_init(&p, x->fs->env);
	r = bf_search_slot(x->lt, x->log, k, -1, true, &p);
	if (r == 0)
		return bf_del_items(x->lt, x->log, &p, p.slots[0], 1);
	bf_path_release(&p);
	return r > 0 ? -EUCLEAN : r; /* we listed it a moment ago: a bug */
}

static int log_overwrite(struct lctx *x, const struct litem *it)
{
	struct bf_path p;
	uint32_t size = 0;
	uint8_t *data;
	int r;

	bf_path_init(&p, x->fs->env);
	r = bf_search_slot(x->lt, x->log, &it->key, 0, true, &p);
	data = r == 0 ? bf_path_item_mut(x->lt, &p, &size) : NULL;
	if (data && size == it->size)
		memcpy(data, it->data, size);
	else if (r >= 0)
		r = -EUCLEAN;
	bf_path_release(&p);
	return r;
}

/* Make the log's items of the inode equal x->want, changing only what differs (so a later fsync of a file
   copies only the leaves its changes touch, as the kernel's fast fsync logs only what changed). */
static int log_update(struct lctx *x)
{
	struct bf_key min = { x->c.ino, 0, 0 }, max = { x->c.ino, UINT8_MAX, UINT64_MAX };
	struct ilist have = { NULL, 0, 0 };
	size_t i = 0, j = 0;
	int r = bf_iterate(x->fs->env, x->log, &min, &max, have_cb, &have);

	while (!r && (i < x->want.n || j < have.n)) {
		const struct litem *w = i < x->want.n ? &x->want.v[i] : NULL, *h = j < have.n ? &have.v[j] : NULL;
		int c = !w ? 1 : !h ? -1 : bf_key_cmp(&w->key, &h->key);
		if (c < 0) {
			r = log_insert(x, &w->key, w->data, w->size);
			i++;
		} else if (c > 0) {
			r = log_delete(x, &h->key);
			j++;
		} else {
			if (w->size != h->size) {
				r = log_delete(x, &h->key);
				if (!r)
					r = log_insert(x, &w->key, w->data, w->size);
			} else if (memcmp(w->data, h->data, w->size) != 0) {
				r = log_overwrite(x, w);
			}
			i++;
			j++;
		}
	}
	ilist_free(&have);
	return r;
}

/* With NO_HOLES, an explicit hole item for [start, end) (the kernel's btrfs_insert_hole_extent into the log). */
static int log_hole(struct lctx *x, uint64_t start, uint64_t end)
{
	struct bf_key k = { x->c.ino, BF_EXTENT_DATA_KEY, start };
	struct bf_file_extent_item fe;

	if (!x->c.no_holes || end <= start)
		return 0;
	memset(&fe, 0, sizeof(fe));
	put64(&fe.generation, x->transid);
	put64(&fe.ram_bytes, end - start);
	fe.type = BF_FILE_EXTENT_REG;
	put64(&fe.num_bytes, end - start);
	return ilist_add(&x->want, &k, &fe, sizeof(fe));
}

static int want_sums(struct lctx *x, uint64_t start, uint64_t len)
{
	if (x->nsums == x->sums_cap) {
		size_t cap = x->sums_cap ? 2 * x->sums_cap : 16;
		uint64_t(*n)[2] = realloc(x->sums, cap * sizeof(*n));
		if (!n)
			return -ENOMEM;
		x->sums = n;
		x->sums_cap = cap;
	}
	x->sums[x->nsums][0] = start;
	x->sums[x->nsums][1] = len;
	x->nsums++;
	return 0;
}

static int copy_extent(struct lctx *x, const struct bf_key *k, const uint8_t *data, uint32_t size)
{
	struct bf_fext e;
	struct bf_file_extent_item fe;
	int r = bf_fext_decode(&x->c, k->offset, data, size, &e);

	if (r)
		return r;
	if (k->offset > x->next && (r = log_hole(x, x->next, k->offset)) != 0)
		return r;
	r = ilist_add(&x->want, k, data, size);
	if (r)
		return r;
	x->next = bf_max64(x->next, bf_fext_end(&e, x->c.fs->fi->sectorsize));
	memcpy(&fe, data, bf_min64(size, sizeof(fe))); /* decode checked the size for regular extents */
	if (x->datasum && e.type == BF_FILE_EXTENT_REG && e.disk_bytenr && get64(fe.generation) == x->transid)
		r = want_sums(x, e.disk_bytenr, e.disk_num_bytes);
	return r;
}

static int copy_cb(void *ctx, const struct bf_key *k, const uint8_t *data, uint32_t size)
{
	struct lctx *x = ctx;
	struct bf_inode_item ii;

	switch (k->type) {
	case BF_INODE_ITEM_KEY:
		if (size != sizeof(ii))
			return -EUCLEAN;
		memcpy(&ii, data, sizeof(ii));
		put64(&ii.transid, x->transid); /* fill_inode_item */
		return ilist_add(&x->want, k, &ii, sizeof(ii));
	case BF_INODE_REF_KEY:
	case BF_INODE_EXTREF_KEY:
	case BF_XATTR_ITEM_KEY:
		return ilist_add(&x->want, k, data, size);
	case BF_EXTENT_DATA_KEY:
		return copy_extent(x, k, data, size);
	case BF_DIR_ITEM_KEY:
		return 0; /* a directory's log holds its DIR_INDEX items only, as the kernel's; the replay adds both */
	case BF_DIR_INDEX_KEY: {
		struct bf_dir_item di;
		if (size < sizeof(di))
			return -EUCLEAN;
		memcpy(&di, data, sizeof(di));
		if (di.location.type == BF_ROOT_ITEM_KEY)
			return 0; /* a subvolume's entry: btrfs-fuse never changes those; the log leaves it alone */
		return ilist_add(&x->want, k, data, size);
	}
	default:
		return -EOPNOTSUPP; /* an item kind the log does not copy (verity, ...): commit instead */
	}
}

/* ---------------- checksums ---------------- */

struct sumread {
	uint64_t start, end; /* [start, end), sectors */
	uint32_t ss, cs;
	uint8_t *buf;        /* (end - start) / ss checksums */
	uint64_t found;      /* sectors filled */
};

static int sum_cb(void *ctx, const struct bf_key *k, const uint8_t *data, uint32_t size)
{
	struct sumread *s = ctx;
	uint64_t n = size / s->cs, a, b;

	if (k->objectid != BF_EXTENT_CSUM_OBJECTID || k->type != BF_EXTENT_CSUM_KEY || size % s->cs)
		return 0;
	if (k->offset >= s->end)
		return 1;
	if (k->offset % s->ss || n > (UINT64_MAX - k->offset) / s->ss)
		return -EUCLEAN;
	a = bf_max64(k->offset, s->start);
	b = bf_min64(k->offset + n * s->ss, s->end);
	if (a >= b)
		return 0;
	memcpy(s->buf + (a - s->start) / s->ss * s->cs, data + (a - k->offset) / s->ss * s->cs,
	       (size_t)((b - a) / s->ss * s->cs));
	s->found += (b - a) / s->ss;
	return 0;
}

/* Copy the checksums of the data range [start, start + len) from the csum tree into the log. */
static int log_sums(struct lctx *x, uint64_t start, uint64_t len)
{
	struct bf_fsinfo *fi = x->fs->fi;
	struct sumread s = { start, start + len, fi->sectorsize, (uint32_t)fi->csum_size, NULL, 0 };
	struct bf_key min = { BF_EXTENT_CSUM_OBJECTID, BF_EXTENT_CSUM_KEY, 0 }, max = min;
	struct bf_path p;
	uint64_t nsect = len / s.ss, per = bf_csum_item_max(fi);
	int r = bf_log_csums_logged(fi, start, len);

	if (r)
		return r == 1 ? 0 : r;
	if (!fi->has_csum_root || len % s.ss || !nsect)
		return -EINVAL;
	s.buf = malloc((size_t)(nsect * s.cs));
	if (!s.buf)
		return -ENOMEM;
	/* from the item at or before start (it may reach into the range) */
	bf_path_init(&p, x->fs->env);
	min.offset = start;
	r = bf_search_le(x->fs->env, &fi->csum_root, &min, &p);
	if (r >= 0) {
		struct bf_key k = bf_path_key(&p);
		min.offset = k.objectid == min.objectid && k.type == min.type ? k.offset : 0;
	} else {
		min.offset = 0;
	}
	bf_path_release(&p);
	max.offset = s.end - 1;
	r = r == -ENOENT || r >= 0 ? bf_iterate(x->fs->env, &fi->csum_root, &min, &max, sum_cb, &s) : r;
	if (!r && s.found != nsect)
		r = -ENODATA; /* not every sector has a checksum: commit instead */
	for (uint64_t i = 0; !r && i < nsect; i += per) {
		uint64_t n = bf_min64(per, nsect - i);
		struct bf_key k = { BF_EXTENT_CSUM_OBJECTID, BF_EXTENT_CSUM_KEY, start + i * s.ss };
		r = log_insert(x, &k, s.buf + i * s.cs, (uint32_t)(n * s.cs));
	}
	free(s.buf);
	return r;
}

/* ---------------- the fsync ---------------- */

static void lctx_init(struct lctx *x, struct bf_wop *op, uint64_t root, uint64_t ino)
{
	memset(x, 0, sizeof(*x));
	x->fs = op->fs;
	x->transid = op->t->transid;
	x->c.fs = op->fs;
	x->c.t = op->t;
	x->c.subvol = root;
	x->c.ino = ino;
	x->c.no_holes = op->fs->fi->incompat & BF_FEATURE_INCOMPAT_NO_HOLES;
}

static void lctx_free(struct lctx *x)
{
	free(x->sums);
	ilist_free(&x->want);
}

/* Copy the inode's items into the log (not synced yet). */
static int log_items(struct lctx *x)
{
	struct bf_key min = { x->c.ino, BF_INODE_ITEM_KEY, 0 }, max = { x->c.ino, BF_EXTENT_DATA_KEY, UINT64_MAX };
	uint32_t ss = x->fs->fi->sectorsize;
	int r = bf_log_tree(x->fs->fi, x->c.subvol, &x->lt, &x->log);

	if (!r)
		r = bf_iterate(x->fs->env, x->c.root, &min, &max, copy_cb, x);
	if (!r && x->isize > x->next) /* the trailing hole, up to i_size rounded to a sector */
		r = log_hole(x, x->next, x->isize % ss ? x->isize - x->isize % ss + ss : x->isize);
	if (!r)
		r = log_update(x);
	for (size_t i = 0; !r && i < x->nsums; i++)
		r = log_sums(x, x->sums[i][0], x->sums[i][1]);
	return r;
}

/* Log one inode (not synced). ii: its item as loaded; for a regular file its buffered data gets extents first.
   0: logged; 1: commit instead; < 0: error (op->changed once trees changed). */
static int log_one(struct bf_wop *op, struct lctx *x, struct bf_inode_item *ii)
{
	uint64_t ds, de;
	const uint8_t *dd;
	int r = bf_txn_root(x->fs->fi, op->t, x->c.subvol, &x->c.root);

	if (r)
		return r;
	r = may_log(x, ii);
	if (r)
		return r;
	if (bf_data_dirty_next(x->fs, x->c.subvol, x->c.ino, 0, UINT64_MAX, &ds, &de, &dd)) {
		op->changed = true; /* the flush changes trees: an error must abort */
		r = bf_data_flush_inode(x->fs, op->t, x->c.subvol, x->c.ino);
		if (!r && bf_extalloc_new_chunks(bf_txn_alloc(x->fs->fi)))
			return commit_instead(x, "the data needed a new chunk");
		if (!r)
			r = bf_inode_load(x->fs, x->c.subvol, x->c.ino, ii);
		if (r)
			return r;
	}
	x->isize = S_ISREG(get32(ii->mode)) ? get64(ii->size) : 0;
	x->datasum = !(get64(ii->flags) & BF_INODE_NODATASUM);
	r = log_items(x);
	if (r) {
		bf_log(BF_LOG_DEBUG, "fsync of inode %" PRIu64 " (subvolume %" PRIu64 ") commits instead of logging: %s",
		       x->c.ino, x->c.subvol, strerror(-r));
		return commit_instead(x, "logging failed");
	}
	return 0;
}

/* ---------------- directories ---------------- */

/* At most this many entries changed in the running transaction are logged with their directory. */
#define DIR_CHILDREN_MAX 256

struct children {
	struct lctx *x;
	uint64_t ino[DIR_CHILDREN_MAX];
	size_t n;
	bool commit;
	const char *why;
};

/* A directory's entry: a regular file changed in the running transaction is logged with it (whole: the replay
   adds a name only for an inode it finds, the kernel's log_new_dir_dentries; and its content is then durable
   too). Other kinds are logged only when they existed at the last commit (their names are there already): a new
   directory, symlink or special file means a commit. */
static int child_cb(void *ctx, const struct bf_key *k, const uint8_t *data, uint32_t size)
{
	struct children *c = ctx;
	struct bf_dir_item di;
	struct bf_inode_item ii;
	int r;

	if (k->type != BF_DIR_INDEX_KEY)
		return 0;
	if (size < sizeof(di))
		return -EUCLEAN;
	memcpy(&di, data, sizeof(di));
	if (di.location.type == BF_ROOT_ITEM_KEY)
		return 0; /* a subvolume: btrfs-fuse never changes those entries */
	if (di.location.type != BF_INODE_ITEM_KEY)
		return -EUCLEAN;
	r = bf_inode_load(c->x->fs, c->x->c.subvol, get64(di.location.objectid), &ii);
	if (r)
		return r;
	if (get64(ii.transid) < c->x->transid)
		return 0;
	if (!S_ISREG(get32(ii.mode)) && get64(ii.generation) < c->x->transid)
		return 0; /* an older directory or special file: its name is in the last commit already */
	if (!S_ISREG(get32(ii.mode))) {
		c->commit = true;
		c->why = "a directory, symlink or special file created in the running transaction";
		return 1;
	}
	for (size_t i = 0; i < c->n; i++)
		if (c->ino[i] == get64(di.location.objectid))
			return 0; /* two names of one inode */
	if (c->n == DIR_CHILDREN_MAX) {
		c->commit = true;
		c->why = "too many directory entries changed in the running transaction";
		return 1;
	}
	c->ino[c->n++] = get64(di.location.objectid);
	return 0;
}

/* Log the changed regular files the directory names, then the directory itself. */
static int log_dir(struct bf_wop *op, struct lctx *x, struct bf_inode_item *ii)
{
	struct bf_key min = { x->c.ino, BF_DIR_INDEX_KEY, 0 }, max = { x->c.ino, BF_DIR_INDEX_KEY, UINT64_MAX };
	struct children *c = calloc(1, sizeof(*c));
	int r;

	if (!c)
		return -ENOMEM;
	c->x = x;
	r = bf_txn_root(x->fs->fi, op->t, x->c.subvol, &x->c.root);
	if (!r)
		r = bf_iterate(x->fs->env, x->c.root, &min, &max, child_cb, c);
	if (!r && c->commit)
		r = commit_instead(x, c->why);
	for (size_t i = 0; !r && i < c->n; i++) {
		struct lctx cx;
		struct bf_inode_item ci;
		lctx_init(&cx, op, x->c.subvol, c->ino[i]);
		r = bf_inode_load(x->fs, x->c.subvol, c->ino[i], &ci);
		if (!r)
			r = log_one(op, &cx, &ci);
		lctx_free(&cx);
	}
	free(c);
	return r ? r : log_one(op, x, ii);
}

int bf_fsync_log(struct bf_wop *op, uint64_t root, uint64_t ino)
{
	struct bf_fs *fs = op->fs;
	struct bf_inode_item ii;
	struct lctx x;
	uint64_t ds, de;
	const uint8_t *dd;
	int r = bf_inode_load(fs, root, ino, &ii);

	if (r)
		return r;
	if (!bf_data_dirty_next(fs, root, ino, 0, UINT64_MAX, &ds, &de, &dd) && get64(ii.transid) < op->t->transid)
		/* Unchanged since the last commit (the kernel's last_trans check skips it). If a name was removed or
		   renamed in the running transaction (an ancestor's, perhaps), commit, so that the path the caller
		   fsynced is the one a crash keeps: stronger than the kernel, which keeps the old path then. */
		return fs->ns->last_unlink_trans >= op->t->transid ? 1 : 0;
	lctx_init(&x, op, root, ino);
	r = S_ISDIR(get32(ii.mode)) ? log_dir(op, &x, &ii) : log_one(op, &x, &ii);
	if (r == -EROFS && !op->changed)
		r = 0; /* a read-only snapshot: nothing there changes */
	if (r == 0 && (r = bf_log_sync(fs->fi)) != 0) {
		bf_log(BF_LOG_DEBUG, "fsync of inode %" PRIu64 " (subvolume %" PRIu64 "): writing the log failed (%s); "
		       "committing instead", ino, root, strerror(-r));
		r = commit_instead(&x, "writing the log failed");
	}
	lctx_free(&x);
	return r;
}
