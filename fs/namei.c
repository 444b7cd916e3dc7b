/*
 * fs/namei.c - the namespace changes: mknod/create, mkdir, symlink, link, unlink, rmdir, rename (with
 * RENAME_NOREPLACE and RENAME_EXCHANGE).
 *
 * Owns: bf_fs_mknod, bf_fs_mkdir, bf_fs_symlink, bf_fs_link, bf_fs_unlink, bf_fs_rmdir, bf_fs_rename.
 *
 * Key idea: each call follows the kernel's function of the same name in fs/btrfs/inode.c step by step, on inodes
 * loaded once (struct bf_wino): checks first (names, types, emptiness, room in the items), then the tree changes in
 * the kernel's order, the in-memory inodes collecting the kernel's updates (link counts, sizes, sequence, times),
 * and every touched inode item written once at the end. Kernel facts followed: a new inode's generation is the
 * transid; its times are all "now"; it inherits the directory's NOCOMPRESS / COMPRESS / NODATACOW (+NODATASUM for
 * files) flags and, from a setgid directory, the group (and setgid for a new directory); rdev is stored as the
 * kernel's dev_t (major << 20 | minor); directories have one link; a symlink's target is an inline extent (at most
 * BTRFS_MAX_INLINE_DATA_SIZE, else -ENAMETOOLONG) and its size and nbytes are the target's length; link bumps the
 * link count, sequence and ctime; an unlinked inode's and its directory's sequence move, the directory's mtime
 * and ctime and the inode's ctime become now; rename first adds the new back reference, then unlinks the old name
 * (and the name it replaces), then adds the new entry with an index from the new directory.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>

#include "fs/wmeta.h"
#include "util/util.h"

#define KDEV_MINOR_BITS 20

/* ---------------- helpers ---------------- */

/* Resolve a FUSE directory node to a loaded directory in the mounted filesystem. */
static int load_dir(struct bf_wop *op, uint64_t nodeid, struct bf_wino *d)
{
	uint64_t root, dir;
	int r = bf_nodeid_split(op->fs, nodeid, &root, &dir);

	if (!r)
		r = bf_wino_load(op, root, dir, d);
	if (!r && !S_ISDIR(bf_wino_mode(d)))
		r = -ENOTDIR;
	return r;
}

static void fill_entry(struct bf_fs *fs, const struct bf_wino *w, struct bf_entry *out)
{
	if (!out)
		return;
	out->nodeid = bf_nodeid_make(fs, w->root, w->ino);
	out->generation = get64(w->ii.generation);
	bf_inode_to_stat(fs, w->root, w->ino, &w->ii, &out->st);
}

/* The kernel's btrfs_inherit_iflags. */
static uint64_t inherit_flags(uint64_t dir_flags, uint32_t mode)
{
	uint64_t f = 0;

	if (dir_flags & BF_INODE_NOCOMPRESS)
		f |= BF_INODE_NOCOMPRESS;
	else if (dir_flags & BF_INODE_COMPRESS)
		f |= BF_INODE_COMPRESS;
	if (dir_flags & BF_INODE_NODATACOW) {
		f |= BF_INODE_NODATACOW;
		if (S_ISREG(mode))
			f |= BF_INODE_NODATASUM;
	}
	return f;
}

/* A new inode's item, as btrfs_create_new_inode fills it (inode_init_owner for owner and group). */
static void init_inode(struct bf_wino *w, const struct bf_wino *d, uint64_t transid, uint32_t mode, dev_t rdev,
		       const struct bf_cred *c, uint64_t size)
{
	struct bf_inode_item *ii = &w->ii;
	struct bf_timespec now;
	uint32_t gid = c->gid;

	if (get32(d->ii.mode) & S_ISGID) {
		gid = get32(d->ii.gid);
		if (S_ISDIR(mode))
			mode |= S_ISGID;
	}
	memset(ii, 0, sizeof(*ii));
	put64(&ii->generation, transid);
	put64(&ii->transid, transid);
	put64(&ii->size, size);
	put64(&ii->nbytes, size);
	put32(&ii->nlink, 1);
	put32(&ii->uid, c->uid);
	put32(&ii->gid, gid);
	put32(&ii->mode, mode);
	if (S_ISCHR(mode) || S_ISBLK(mode))
		put64(&ii->rdev, ((uint64_t)major(rdev) << KDEV_MINOR_BITS) | minor(rdev));
	put64(&ii->flags, inherit_flags(get64(d->ii.flags), mode));
	bf_now(&now);
	ii->atime = ii->ctime = ii->mtime = ii->otime = now;
}

/* The inline extent holding a symlink's target (btrfs_symlink). */
static int insert_symlink_target(struct bf_wop *op, const struct bf_wino *w, const char *target, size_t len)
{
	struct bf_key key = { w->ino, BF_EXTENT_DATA_KEY, 0 };
	uint32_t size = (uint32_t)(BF_FILE_EXTENT_INLINE_DATA_START + len);
	struct bf_file_extent_item fe;
	struct bf_root *tree;
	struct bf_path p;
	int r = bf_wop_root(op, w->root, &tree);

	if (r)
		return r;
	memset(&fe, 0, sizeof(fe));
	put64(&fe.generation, op->t->transid);
	put64(&fe.ram_bytes, len);
	fe.type = BF_FILE_EXTENT_INLINE;
	op->changed = true;
	bf_path_init(&p, op->fs->env);
	r = bf_insert_empty_items(op->t, tree, &p, &key, &size, 1);
	if (!r) {
		uint8_t *data = bf_path_item_mut(op->t, &p, NULL);
		memcpy(data, &fe, BF_FILE_EXTENT_INLINE_DATA_START);
		memcpy(data + BF_FILE_EXTENT_INLINE_DATA_START, target, len);
	}
	bf_path_release(&p);
	return r;
}

struct create_args {
	uint64_t parent;
	const char *name;
	uint32_t mode;
	dev_t rdev;
	const char *target; /* symlinks */
	const struct bf_cred *cred;
};

/* Metadata items a change reserves (the kernel's counts: btrfs_new_inode_prepare, btrfs_link, the unlink units,
   btrfs_rename / btrfs_rename_exchange at their largest). */
#define CREATE_ITEMS 8
#define LINK_ITEMS 6
#define UNLINK_ITEMS 6
#define RENAME_ITEMS 22

/* Everything of btrfs_create_new_inode, for an op already begun. */
static int create_in(struct bf_wop *op, const struct create_args *a, struct bf_entry *out)
{
	size_t len = strlen(a->name), tlen = a->target ? strlen(a->target) : 0;
	struct bf_wino d = { 0 }, w = { 0 };
	uint32_t mode = a->mode;
	void *dacl = NULL, *aacl = NULL;
	size_t dlen = 0, alen = 0;
	uint64_t index;
	int r = bf_wop_reserve(op, CREATE_ITEMS, false);

	if (!r)
		r = load_dir(op, a->parent, &d);
	if (!r)
		r = bf_entry_check(op, d.root, d.ino, a->name, len);
	if (!r && a->target && tlen > BF_MAX_INLINE_DATA_SIZE(op->fs->fi->nodesize))
		r = -ENAMETOOLONG;
	if (!r)
		r = bf_acl_create_mode(op, &d, &mode, a->cred, &dacl, &dlen, &aacl, &alen);
	memset(&w, 0, sizeof(w));
	w.root = d.root;
	if (!r)
		r = bf_alloc_objectid(op, d.root, &w.ino);
	if (!r)
		r = bf_dir_index_next(op, d.root, d.ino, &index);
	if (!r) {
		init_inode(&w, &d, op->t->transid, mode, a->rdev, a->cred, tlen);
		r = bf_inode_insert(op, &w, d.ino, a->name, len, index);
	}
	if (!r)
		r = bf_new_inode_xattrs(op, &d, &w, dacl, dlen, aacl, alen);
	if (!r && a->target)
		r = insert_symlink_target(op, &w, a->target, tlen);
	if (!r && S_ISDIR(mode))
		bf_dir_index_init(op->fs, w.root, w.ino);
	if (!r)
		r = bf_entry_add(op, &d, a->name, len, &w, index);
	if (!r)
		r = bf_wino_save(op, &d);
	free(dacl);
	free(aacl);
	if (!r)
		fill_entry(op->fs, &w, out);
	return r;
}

static int create_common(struct bf_fs *fs, const struct create_args *a, struct bf_entry *out)
{
	struct bf_wop op;
	int r = bf_wop_begin(fs, &op);

	if (r)
		return r;
	op.what = a->target ? "symlink" : S_ISDIR(a->mode) ? "mkdir" : "mknod/create";
	return bf_wop_end(&op, create_in(&op, a, out));
}

/* ---------------- create, mknod, mkdir, symlink ---------------- */

int bf_fs_mknod(struct bf_fs *fs, uint64_t parent, const char *name, mode_t mode, dev_t rdev,
		const struct bf_cred *c, struct bf_entry *out)
{
	struct create_args a = { parent, name, (uint32_t)mode, rdev, NULL, c };

	switch (mode & S_IFMT) {
	case S_IFREG:
	case S_IFCHR:
	case S_IFBLK:
	case S_IFIFO:
	case S_IFSOCK:
		break;
	case 0:
		a.mode |= S_IFREG; /* mknod(2) with no type makes a regular file */
		break;
	default:
		return -EINVAL;
	}
	a.mode &= S_IFMT | 07777;
	return create_common(fs, &a, out);
}

int bf_fs_mkdir(struct bf_fs *fs, uint64_t parent, const char *name, mode_t mode, const struct bf_cred *c,
		struct bf_entry *out)
{
	struct create_args a = { parent, name, S_IFDIR | ((uint32_t)mode & 07777), 0, NULL, c };
	return create_common(fs, &a, out);
}

int bf_fs_symlink(struct bf_fs *fs, uint64_t parent, const char *name, const char *target, const struct bf_cred *c,
		  struct bf_entry *out)
{
	struct create_args a = { parent, name, S_IFLNK | 0777, 0, target, c };
	return create_common(fs, &a, out);
}

/* ---------------- link ---------------- */

/* btrfs_link's refusals, before anything changes: d is the new parent, w the inode. */
static int link_check(struct bf_wop *op, uint64_t nodeid, uint64_t newparent, const char *name, struct bf_wino *d,
		      struct bf_wino *w)
{
	uint64_t root, ino;
	size_t len = strlen(name);
	int r = bf_wop_reserve(op, LINK_ITEMS, false);

	if (!r)
		r = bf_nodeid_split(op->fs, nodeid, &root, &ino);
	if (!r)
		r = load_dir(op, newparent, d);
	if (!r && d->root != root)
		r = -EXDEV; /* hard links never cross subvolumes */
	if (!r)
		r = bf_wino_load(op, root, ino, w);
	if (!r && S_ISDIR(bf_wino_mode(w)))
		r = -EPERM;
	if (!r && get32(w->ii.nlink) >= BF_LINK_MAX)
		r = -EMLINK;
	if (!r)
		r = bf_entry_check(op, d->root, d->ino, name, len);
	if (!r)
		r = bf_iref_check(op, root, ino, d->ino, name, len);
	return r;
}

static int link_in(struct bf_wop *op, uint64_t nodeid, uint64_t newparent, const char *name, struct bf_entry *out)
{
	size_t len = strlen(name);
	struct bf_wino d = { 0 }, w = { 0 };
	uint64_t index;
	int r = link_check(op, nodeid, newparent, name, &d, &w);
	uint32_t nlink = get32(w.ii.nlink);

	if (!r)
		r = bf_dir_index_next(op, d.root, d.ino, &index);
	if (r)
		return r;
	put32(&w.ii.nlink, nlink + 1);
	bf_inode_inc_seq(&w.ii);
	bf_inode_touch(&w.ii, BF_TOUCH_CTIME);
	w.dirty = true;
	r = bf_iref_add(op, w.root, w.ino, d.ino, name, len, index);
	if (!r)
		r = bf_entry_add(op, &d, name, len, &w, index);
	if (!r)
		r = bf_wino_save(op, &d);
	if (!r)
		r = bf_wino_save(op, &w);
	if (!r && nlink == 0) { /* linked back from an open, unlinked file: no longer an orphan */
		r = bf_orphan_del(op, w.root, w.ino);
		if (r == -ENOENT)
			r = 0;
		bf_open_unmark_orphan(op->fs, w.root, w.ino);
	}
	if (!r)
		fill_entry(op->fs, &w, out);
	return r;
}

int bf_fs_link(struct bf_fs *fs, uint64_t nodeid, uint64_t newparent, const char *newname, struct bf_entry *out)
{
	struct bf_wop op;
	int r = bf_wop_begin(fs, &op);

	if (r)
		return r;
	op.what = "link";
	return bf_wop_end(&op, link_in(&op, nodeid, newparent, newname, out));
}

/* ---------------- unlink, rmdir ---------------- */

/* A name in directory d: the inode it names, loaded (-ENOENT if absent). Entries of other subvolumes (and their
   placeholders) are -EPERM here: deleting or moving subvolumes is not done yet. */
static int load_entry(struct bf_wop *op, const struct bf_wino *d, const char *name, struct bf_wino *w)
{
	size_t len = strlen(name);
	struct bf_target t;
	int r = bf_name_check(name, len);

	if (!r)
		r = bf_dir_find(op->fs, d->root, d->ino, name, len, &t);
	if (r)
		return r;
	if (t.root != d->root || t.objectid == BF_EMPTY_SUBVOL_DIR_OBJECTID)
		return -EPERM;
	r = bf_wino_load(op, t.root, t.objectid, w);
	if (r == -ENOENT)
		r = bf_corrupt(d->root, d->ino, NULL, "entry '%s' names inode %llu, which does not exist", name,
			       (unsigned long long)t.objectid);
	return r;
}

/* may_delete: no name leaves an append-only directory, and an append-only inode keeps its names. */
static int may_delete(const struct bf_wino *d, const struct bf_wino *w)
{
	return ((get64(d->ii.flags) | get64(w->ii.flags)) & BF_INODE_APPEND) ? -EPERM : 0;
}

/* The index of w's link (d, name) from its back reference. */
static int link_index(struct bf_wop *op, const struct bf_wino *d, const struct bf_wino *w, const char *name,
		      uint64_t *index)
{
	int r = bf_iref_find(op, w->root, w->ino, d->ino, name, strlen(name), index);

	if (r == -ENOENT)
		r = bf_corrupt(w->root, w->ino, NULL, "no back reference for its entry '%s' in directory %llu", name,
			       (unsigned long long)d->ino);
	return r;
}

/* __btrfs_unlink_inode: the entry, the back reference, and the inode's sequence and ctime. */
static int unlink_name(struct bf_wop *op, struct bf_wino *d, struct bf_wino *w, const char *name, uint64_t index)
{
	size_t len = strlen(name);
	int r = bf_entry_del(op, d, name, len, index);

	if (!r)
		r = bf_iref_del(op, w->root, w->ino, d->ino, name, len);
	if (!r) {
		bf_inode_inc_seq(&w->ii);
		bf_inode_touch(&w->ii, BF_TOUCH_CTIME);
		w->dirty = true;
	}
	return r;
}

/* btrfs_unlink_inode: the name goes and the link count drops; at zero the inode goes (or waits as an orphan). */
static int drop_link(struct bf_wop *op, struct bf_wino *d, struct bf_wino *w, const char *name, uint64_t index)
{
	int r = unlink_name(op, d, w, name, index);
	uint32_t nlink = get32(w->ii.nlink);

	if (r)
		return r;
	put32(&w->ii.nlink, nlink ? nlink - 1 : 0);
	if (nlink <= 1) {
		if (S_ISDIR(bf_wino_mode(w)))
			put64(&w->ii.size, 0);
		r = bf_inode_unlinked(op, w);
	}
	return r;
}

static int remove_in(struct bf_wop *op, uint64_t parent, const char *name, bool dir)
{
	struct bf_wino d = { 0 }, w = { 0 };
	uint64_t index;
	int r = bf_wop_reserve(op, UNLINK_ITEMS, true);

	if (!r)
		r = load_dir(op, parent, &d);
	if (!r)
		r = load_entry(op, &d, name, &w);
	if (r)
		return r;
	if (dir && !S_ISDIR(bf_wino_mode(&w)))
		return -ENOTDIR;
	if (!dir && S_ISDIR(bf_wino_mode(&w)))
		return -EISDIR;
	if (dir && get64(w.ii.size) > 0)
		return -ENOTEMPTY;
	r = may_delete(&d, &w);
	if (!r)
		r = link_index(op, &d, &w, name, &index);
	if (!r)
		r = drop_link(op, &d, &w, name, index);
	if (!r)
		r = bf_wino_save(op, &w);
	if (!r)
		r = bf_wino_save(op, &d);
	return r;
}

static int remove_common(struct bf_fs *fs, uint64_t parent, const char *name, bool dir)
{
	struct bf_wop op;
	int r = bf_wop_begin(fs, &op);

	if (r)
		return r;
	op.what = dir ? "rmdir" : "unlink";
	return bf_wop_end(&op, remove_in(&op, parent, name, dir));
}

int bf_fs_unlink(struct bf_fs *fs, uint64_t parent, const char *name) { return remove_common(fs, parent, name, false); }
int bf_fs_rmdir(struct bf_fs *fs, uint64_t parent, const char *name) { return remove_common(fs, parent, name, true); }

/* ---------------- rename ---------------- */

struct ren {
	struct bf_wino dirs[2], inos[2];
	struct bf_wino *od, *nd, *ow, *nw; /* nw NULL when the new name is free; od == nd in one directory */
	const char *oname, *nname;
	uint64_t oidx, nidx;
	unsigned flags;
};

static int ren_load(struct bf_wop *op, struct ren *x, uint64_t parent, uint64_t newparent)
{
	int r = load_dir(op, parent, &x->dirs[0]);

	x->od = &x->dirs[0];
	x->nd = x->od;
	if (!r && newparent != parent) {
		r = load_dir(op, newparent, &x->dirs[1]);
		x->nd = &x->dirs[1];
	}
	if (!r && x->nd->root != x->od->root)
		r = -EXDEV;
	if (!r)
		r = load_entry(op, x->od, x->oname, &x->inos[0]);
	x->ow = &x->inos[0];
	if (r)
		return r;
	r = load_entry(op, x->nd, x->nname, &x->inos[1]);
	if (r == -ENOENT && !(x->flags & BF_RENAME_EXCHANGE)) {
		x->nw = NULL;
		return bf_name_check(x->nname, strlen(x->nname));
	}
	x->nw = r ? NULL : &x->inos[1];
	return r;
}

/* The VFS's and btrfs_rename's refusals, before anything changes. Returns 1 for "nothing to do". */
static int ren_check(struct bf_wop *op, struct ren *x)
{
	bool odir = S_ISDIR(bf_wino_mode(x->ow));
	size_t nlen = strlen(x->nname);
	int r;

	if (x->nw && x->nw->ino == x->ow->ino)
		return 1; /* two names of one inode: rename does nothing */
	if (x->ow->ino == x->nd->ino || (x->nw && (x->nw->ino == x->od->ino || x->nw->ino == x->nd->ino)))
		return -EINVAL;
	if (x->nw && (x->flags & BF_RENAME_NOREPLACE))
		return -EEXIST;
	if (x->nw && !(x->flags & BF_RENAME_EXCHANGE)) {
		bool ndir = S_ISDIR(bf_wino_mode(x->nw));
		if (odir && !ndir)
			return -ENOTDIR;
		if (!odir && ndir)
			return -EISDIR;
		if (ndir && get64(x->nw->ii.size) > 0)
			return -ENOTEMPTY;
	}
	r = may_delete(x->od, x->ow);
	if (!r && x->nw)
		r = may_delete(x->nd, x->nw);
	if (!r)
		r = link_index(op, x->od, x->ow, x->oname, &x->oidx);
	if (!r && x->nw)
		r = link_index(op, x->nd, x->nw, x->nname, &x->nidx);
	if (!r && !x->nw)
		r = bf_entry_check(op, x->nd->root, x->nd->ino, x->nname, nlen);
	if (!r)
		r = bf_iref_check(op, x->ow->root, x->ow->ino, x->nd->ino, x->nname, nlen);
	if (!r && (x->flags & BF_RENAME_EXCHANGE))
		r = bf_iref_check(op, x->nw->root, x->nw->ino, x->od->ino, x->oname, strlen(x->oname));
	return r;
}

/* simple_rename_timestamp and the inode_inc_iversion calls before it. */
static void ren_stamp(struct ren *x)
{
	struct bf_wino *all[4] = { x->od, x->nd, x->ow, x->nw };

	for (int i = 0; i < 4; i++) {
		if (!all[i] || (i == 3 && !(x->flags & BF_RENAME_EXCHANGE)))
			continue;
		bf_inode_inc_seq(&all[i]->ii);
		all[i]->dirty = true;
	}
	bf_inode_touch(&x->od->ii, BF_TOUCH_MTIME | BF_TOUCH_CTIME);
	bf_inode_touch(&x->nd->ii, BF_TOUCH_MTIME | BF_TOUCH_CTIME);
	bf_inode_touch(&x->ow->ii, BF_TOUCH_CTIME);
	if (x->nw) {
		bf_inode_touch(&x->nw->ii, BF_TOUCH_CTIME);
		x->nw->dirty = true;
	}
}

/* btrfs_rename without flags or with RENAME_NOREPLACE. */
static int ren_move(struct bf_wop *op, struct ren *x)
{
	uint64_t index;
	int r = bf_dir_index_next(op, x->nd->root, x->nd->ino, &index);

	if (!r)
		r = bf_iref_add(op, x->ow->root, x->ow->ino, x->nd->ino, x->nname, strlen(x->nname), index);
	if (r)
		return r;
	ren_stamp(x);
	r = unlink_name(op, x->od, x->ow, x->oname, x->oidx);
	if (!r && x->nw) {
		bf_inode_inc_seq(&x->nw->ii);
		r = drop_link(op, x->nd, x->nw, x->nname, x->nidx);
	}
	if (!r)
		r = bf_entry_add(op, x->nd, x->nname, strlen(x->nname), x->ow, index);
	return r;
}

/* btrfs_rename_exchange. */
static int ren_exchange(struct bf_wop *op, struct ren *x)
{
	uint64_t old_idx, new_idx;
	int r = bf_dir_index_next(op, x->nd->root, x->nd->ino, &old_idx);

	if (!r)
		r = bf_dir_index_next(op, x->od->root, x->od->ino, &new_idx);
	if (!r)
		r = bf_iref_add(op, x->ow->root, x->ow->ino, x->nd->ino, x->nname, strlen(x->nname), old_idx);
	if (!r)
		r = bf_iref_add(op, x->nw->root, x->nw->ino, x->od->ino, x->oname, strlen(x->oname), new_idx);
	if (r)
		return r;
	ren_stamp(x);
	r = unlink_name(op, x->od, x->ow, x->oname, x->oidx);
	if (!r)
		r = unlink_name(op, x->nd, x->nw, x->nname, x->nidx);
	if (!r)
		r = bf_entry_add(op, x->nd, x->nname, strlen(x->nname), x->ow, old_idx);
	if (!r)
		r = bf_entry_add(op, x->od, x->oname, strlen(x->oname), x->nw, new_idx);
	return r;
}

static int rename_in(struct bf_wop *op, struct ren *x, uint64_t parent, uint64_t newparent)
{
	int r = bf_wop_reserve(op, RENAME_ITEMS, false);

	if (!r)
		r = ren_load(op, x, parent, newparent);

	if (!r)
		r = ren_check(op, x);
	if (r)
		return r > 0 ? 0 : r;
	r = (x->flags & BF_RENAME_EXCHANGE) ? ren_exchange(op, x) : ren_move(op, x);
	struct bf_wino *all[4] = { x->ow, x->nw, x->od, x->nd };
	for (int i = 0; i < 4 && !r; i++)
		if (all[i] && (i < 3 || x->nd != x->od))
			r = bf_wino_save(op, all[i]);
	return r;
}

int bf_fs_rename(struct bf_fs *fs, uint64_t parent, const char *name, uint64_t newparent, const char *newname,
		 unsigned flags)
{
	struct ren x;
	struct bf_wop op;
	int r;

	if (flags & ~(BF_RENAME_NOREPLACE | BF_RENAME_EXCHANGE) ||
	    (flags & BF_RENAME_NOREPLACE && flags & BF_RENAME_EXCHANGE))
		return -EINVAL;
	memset(&x, 0, sizeof(x));
	x.oname = name;
	x.nname = newname;
	x.flags = flags;
	r = bf_wop_begin(fs, &op);
	if (r)
		return r;
	op.what = "rename";
	return bf_wop_end(&op, rename_in(&op, &x, parent, newparent));
}
