/*
 * fs/wattr.c - attribute changes: setattr (chmod, chown, utimens, truncate) and extended attributes (setxattr,
 * removexattr), as the kernel's btrfs_setattr and btrfs_setxattr / btrfs_setxattr_trans do them.
 *
 * Owns: bf_fs_setattr, bf_fs_setxattr, bf_fs_removexattr, bf_xattr_set, bf_xattr_get, the xattr name rules and
 * the btrfs.compression property.
 *
 * Key idea: an xattr is a record (location zero, type BTRFS_FT_XATTR, name, value) in the item
 * (ino, XATTR_ITEM, name_hash(name)), records of colliding names packed in one item. Name and value must fit one
 * leaf item (BTRFS_MAX_XATTR_SIZE = the largest item - the record header; -ENOSPC beyond). Replacing the only
 * record of an item resizes it in place and rewrites length and value (its header, transid included, stays, as
 * in the kernel); a record packed with others is removed and written anew at the item's end. Every successful
 * change moves the inode's sequence and ctime. setattr follows btrfs_setattr: a size change (regular files)
 * through the data path's bf_data_setsize (which moves mtime and ctime), then the other fields, ctime = now
 * unless given, sequence + 1, and for chmod the access ACL follows the mode (posix_acl_chmod).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>

#include "btree/csum.h"
#include "fs/wmeta.h"
#include "util/util.h"

#define COMPRESSION_PROP "btrfs.compression"
/* Metadata items reserved (btrfs_setxattr_trans: the xattr and the inode; btrfs_setattr: the inode, and the
   truncation's items). */
#define XATTR_ITEMS 2
#define SETATTR_ITEMS 3

/* ---------------- xattr items ---------------- */

static uint32_t max_xattr(const struct bf_fs *fs)
{
	return bf_max_item_size(fs->env) - (uint32_t)sizeof(struct bf_dir_item);
}

static void fill_xattr_rec(uint8_t *buf, uint64_t transid, const char *name, size_t nlen, const void *value,
			   size_t size)
{
	struct bf_dir_item di;

	memset(&di, 0, sizeof(di));
	put64(&di.transid, transid);
	put16(&di.data_len, (uint16_t)size);
	put16(&di.name_len, (uint16_t)nlen);
	di.type = BF_FT_XATTR;
	memcpy(buf, &di, sizeof(di));
	memcpy(buf + sizeof(di), name, nlen);
	if (size)
		memcpy(buf + sizeof(di) + nlen, value, size);
}

ssize_t bf_xattr_get(struct bf_fs *fs, uint64_t root, uint64_t ino, const char *name, void *buf, size_t size)
{
	size_t nlen = strlen(name);
	struct bf_key key = { ino, BF_XATTR_ITEM_KEY, bf_name_hash(name, nlen) };
	struct bf_root tree;
	struct bf_path p;
	struct bf_dir_rec rec;
	uint32_t isize, pos, rl;
	ssize_t r = bf_fs_root(fs, root, &tree);

	if (r)
		return r;
	bf_path_init(&p, fs->env);
	r = bf_search(fs->env, &tree, &key, &p);
	if (r == 0) {
		const uint8_t *data = bf_path_item(&p, &isize);
		r = bf_rec_find(root, &key, data, isize, name, nlen, &rec, &pos, &rl);
		if (r == 0 && size && size < rec.data_len)
			r = -ERANGE;
		else if (r == 0) {
			if (size)
				memcpy(buf, rec.data, rec.data_len);
			r = rec.data_len;
		}
	}
	bf_path_release(&p);
	return r == 1 || r == -ENOENT ? -ENODATA : r;
}

/* Replace the value of the record at pos (rlen bytes) of the path's item. */
static int replace_rec(struct bf_wop *op, struct bf_path *p, uint32_t pos, uint32_t rlen, const char *name,
		       size_t nlen, const void *value, size_t size)
{
	uint32_t isize, old = rlen - (uint32_t)(sizeof(struct bf_dir_item) + nlen);
	uint32_t want = (uint32_t)(sizeof(struct bf_dir_item) + nlen + size);
	uint8_t *data = bf_path_item_mut(op->t, p, &isize);
	int r = 0;

	if (!data)
		return -EINVAL;
	op->changed = true;
	if (rlen == isize) { /* the only record: resize in place, keep its header */
		if (size > old)
			r = bf_extend_item(op->t, p, (uint32_t)size - old);
		else if (size < old)
			r = bf_truncate_item(op->t, p, want, true);
		data = r ? NULL : bf_path_item_mut(op->t, p, &isize);
		if (data) {
			struct bf_dir_item *di = (struct bf_dir_item *)data;
			put16(&di->data_len, (uint16_t)size);
			if (size)
				memcpy(data + sizeof(*di) + nlen, value, size);
		}
		return r;
	}
	/* packed with others: remove it, append the new record */
	memmove(data + pos, data + pos + rlen, isize - pos - rlen);
	r = bf_truncate_item(op->t, p, isize - rlen, true);
	if (!r)
		r = bf_extend_item(op->t, p, want);
	data = r ? NULL : bf_path_item_mut(op->t, p, &isize);
	if (data)
		fill_xattr_rec(data + isize - want, op->t->transid, name, nlen, value, size);
	return r;
}

static int xattr_remove(struct bf_wop *op, struct bf_root *tree, const struct bf_key *key, uint64_t root,
			const char *name, size_t nlen, int flags)
{
	struct bf_path p;
	struct bf_dir_rec rec;
	uint32_t isize, pos, rl;
	int r;

	bf_path_init(&p, op->fs->env);
	r = bf_search_slot(op->t, tree, key, -1, true, &p);
	if (r == 0) {
		const uint8_t *data = bf_path_item(&p, &isize);
		r = bf_rec_find(root, key, data, isize, name, nlen, &rec, &pos, &rl);
	}
	if (r == 0)
		return bf_rec_remove(op, tree, &p, pos, rl);
	bf_path_release(&p);
	if (r == 1 || r == -ENOENT)
		return (flags & XATTR_REPLACE) ? -ENODATA : 0;
	return r;
}

/* Where name stands in the live tree: *isize = size of its hash's item (0: none), 0 and the record's place, or
   -ENOENT. */
static int xattr_find(struct bf_wop *op, struct bf_root *tree, uint64_t root, const struct bf_key *key,
		      const char *name, size_t nlen, uint32_t *isize, uint32_t *pos, uint32_t *rl)
{
	struct bf_path p;
	struct bf_dir_rec rec;
	int r;

	*isize = 0;
	bf_path_init(&p, op->fs->env);
	r = bf_search(op->fs->env, tree, key, &p);
	if (r == 0) {
		const uint8_t *data = bf_path_item(&p, isize);
		r = bf_rec_find(root, key, data, *isize, name, nlen, &rec, pos, rl);
	} else if (r > 0) {
		r = -ENOENT;
	}
	bf_path_release(&p);
	return r;
}

/* A new record: its own item, or appended to the item of colliding names if that can take it. */
static int xattr_add(struct bf_wop *op, struct bf_root *tree, const struct bf_key *key, uint32_t isize,
		     const char *name, size_t nlen, const void *value, size_t size)
{
	uint32_t want = (uint32_t)(sizeof(struct bf_dir_item) + nlen + size);
	uint8_t *buf;
	int r;

	if (isize && (uint64_t)isize + want + sizeof(struct bf_item) > bf_max_item_size(op->fs->env))
		return -ENOSPC; /* the kernel's answer when colliding names fill the item */
	buf = malloc(want);
	if (!buf)
		return -ENOMEM;
	fill_xattr_rec(buf, op->t->transid, name, nlen, value, size);
	r = bf_item_append(op, tree, key, buf, want);
	free(buf);
	return r;
}

/* A new value for the record at [pos, pos + rl) of its item. */
static int xattr_replace(struct bf_wop *op, struct bf_root *tree, const struct bf_key *key, uint32_t pos,
			 uint32_t rl, const char *name, size_t nlen, const void *value, size_t size)
{
	uint32_t want = (uint32_t)(sizeof(struct bf_dir_item) + nlen + size);
	/* how much the item grows: the value resized in place, or the record re-appended when packed with others */
	int64_t grow = (int64_t)want - rl;
	struct bf_path p;
	int r;

	bf_path_init(&p, op->fs->env);
	r = bf_search_slot(op->t, tree, key, grow > 0 ? (int)grow : 0, true, &p);
	if (r > 0)
		r = -EUCLEAN;
	if (r == -EOVERFLOW)
		r = -ENOSPC;
	if (!r)
		r = replace_rec(op, &p, pos, rl, name, nlen, value, size);
	bf_path_release(&p);
	return r;
}

int bf_xattr_set(struct bf_wop *op, uint64_t root, uint64_t ino, const char *name, const void *value, size_t size,
		 int flags)
{
	size_t nlen = strlen(name);
	struct bf_key key = { ino, BF_XATTR_ITEM_KEY, bf_name_hash(name, nlen) };
	uint32_t isize, pos = 0, rl = 0;
	struct bf_root *tree;
	int r;

	if (nlen + size > max_xattr(op->fs))
		return -ENOSPC;
	r = bf_wop_root(op, root, &tree);
	if (r)
		return r;
	if (!value)
		return xattr_remove(op, tree, &key, root, name, nlen, flags);
	r = xattr_find(op, tree, root, &key, name, nlen, &isize, &pos, &rl);
	if (r < 0 && r != -ENOENT)
		return r;
	if (r == -ENOENT)
		return (flags & XATTR_REPLACE) ? -ENODATA : xattr_add(op, tree, &key, isize, name, nlen, value, size);
	if (flags & XATTR_CREATE)
		return -EEXIST;
	return xattr_replace(op, tree, &key, pos, rl, name, nlen, value, size);
}

/* ---------------- names ---------------- */

/* The kernel's xattr handlers: user., trusted., security., the two POSIX ACL names, btrfs. (properties). */
static int xattr_name_check(const char *name)
{
	static const char *const prefixes[] = { "user.", "trusted.", "security.", "btrfs." };
	size_t len = strlen(name);

	if (len == 0 || len > BF_XATTR_NAME_MAX)
		return -ERANGE;
	if (!strcmp(name, "system.posix_acl_access") || !strcmp(name, "system.posix_acl_default"))
		return 0;
	for (size_t i = 0; i < sizeof(prefixes) / sizeof(prefixes[0]); i++) {
		size_t pl = strlen(prefixes[i]);
		if (len > pl && !strncmp(name, prefixes[i], pl))
			return 0;
	}
	return -EOPNOTSUPP;
}

/* btrfs.compression (fs/btrfs/props.c): "zlib", "lzo", "zstd" (with a level), "no" or "none". */
static int prop_check(const char *name, const void *value, size_t size)
{
	const char *v = value;

	if (strncmp(name, "btrfs.", 6) != 0)
		return 0;
	if (strcmp(name, COMPRESSION_PROP) != 0)
		return -EINVAL;
	if (!value || size == 0)
		return 0;
	if ((size >= 4 && !strncmp(v, "zlib", 4)) || (size >= 3 && !strncmp(v, "lzo", 3)) ||
	    (size >= 4 && !strncmp(v, "zstd", 4)))
		return 0;
	if ((size == 2 && !strncmp(v, "no", 2)) || (size == 4 && !strncmp(v, "none", 4)))
		return 0;
	return -EINVAL;
}

/* The property's effect on the inode flags (prop_compression_apply). */
static void prop_apply(struct bf_wino *w, const char *name, const void *value, size_t size)
{
	uint64_t f = get64(w->ii.flags) & ~(BF_INODE_COMPRESS | BF_INODE_NOCOMPRESS);
	const char *v = value;

	if (strcmp(name, COMPRESSION_PROP) != 0)
		return;
	if (value && size) {
		bool off = (size == 2 && !strncmp(v, "no", 2)) || (size == 4 && !strncmp(v, "none", 4));
		f |= off ? BF_INODE_NOCOMPRESS : BF_INODE_COMPRESS;
	}
	put64(&w->ii.flags, f);
}

/* ---------------- setxattr, removexattr ---------------- */

static int load_node(struct bf_wop *op, uint64_t nodeid, struct bf_wino *w)
{
	uint64_t root, ino;
	int r = bf_nodeid_split(op->fs, nodeid, &root, &ino);

	if (!r && ino == BF_EMPTY_SUBVOL_DIR_OBJECTID)
		return -EOPNOTSUPP;
	return r ? r : bf_wino_load(op, root, ino, w);
}

/* The kernel's order: the inode's subvolume (EROFS), then the name's namespace, the flags, the size, a
   property's value. */
static int setxattr_check(const struct bf_fs *fs, const char *name, const void *value, size_t size, int flags)
{
	int r = xattr_name_check(name);

	if (!r && flags & ~(XATTR_CREATE | XATTR_REPLACE))
		r = -EINVAL;
	if (!r && strlen(name) + size > max_xattr(fs))
		r = -ENOSPC;
	if (!r)
		r = prop_check(name, value, size);
	return r;
}

static int setxattr_in(struct bf_wop *op, uint64_t nodeid, const char *name, const void *value, size_t size,
		       int flags)
{
	struct bf_wino w;
	int r = bf_wop_reserve(op, XATTR_ITEMS, value == NULL);

	if (!r)
		r = load_node(op, nodeid, &w);
	if (!r)
		r = setxattr_check(op->fs, name, value, size, value ? flags : 0);
	if (!r && !strcmp(name, "system.posix_acl_access") && value)
		r = bf_acl_access_set(op, &w, &value, &size);
	if (r)
		return r;
	r = bf_xattr_set(op, w.root, w.ino, name, value, size, flags);
	if (r)
		return r;
	if (!strncmp(name, "btrfs.", 6))
		prop_apply(&w, name, value, size);
	bf_inode_inc_seq(&w.ii);
	bf_inode_touch(&w.ii, BF_TOUCH_CTIME);
	w.dirty = true;
	return bf_wino_save(op, &w);
}

int bf_fs_setxattr(struct bf_fs *fs, uint64_t nodeid, const char *name, const void *value, size_t size, int flags)
{
	struct bf_wop op;
	int r = bf_wop_begin(fs, &op);

	if (r)
		return r;
	op.what = "setxattr";
	return bf_wop_end(&op, setxattr_in(&op, nodeid, name, value ? value : "", size, flags));
}

int bf_fs_removexattr(struct bf_fs *fs, uint64_t nodeid, const char *name)
{
	struct bf_wop op;
	int r = bf_wop_begin(fs, &op);

	if (r)
		return r;
	op.what = "removexattr";
	return bf_wop_end(&op, setxattr_in(&op, nodeid, name, NULL, 0, XATTR_REPLACE));
}

/* ---------------- setattr ---------------- */

static struct bf_timespec disk_time(const struct timespec *ts)
{
	struct bf_timespec d;

	put64(&d.sec, (uint64_t)ts->tv_sec);
	put32(&d.nsec, (uint32_t)ts->tv_nsec);
	return d;
}

static int setsize(struct bf_wop *op, struct bf_wino *w, uint64_t size)
{
	uint32_t mode = bf_wino_mode(w);
	int r;

	if (S_ISDIR(mode))
		return -EISDIR;
	if (!S_ISREG(mode))
		return -EINVAL;
	if (size == get64(w->ii.size))
		return 0;
	r = bf_data_setsize(op->fs, op->t, w->root, w->ino, size);
	if (r != -ENOSPC)
		op->changed = true; /* -ENOSPC: refused before any change (its metadata reservation) */
	if (!r)
		r = bf_inode_load(op->fs, w->root, w->ino, &w->ii); /* with the data path's size, nbytes and times */
	return r;
}

static int setattr_in(struct bf_wop *op, uint64_t nodeid, const struct bf_setattr *a, struct stat *st)
{
	struct bf_wino w;
	struct bf_timespec now;
	int r = bf_wop_reserve(op, SETATTR_ITEMS, false);

	if (!r)
		r = load_node(op, nodeid, &w);

	if (r == -EOPNOTSUPP)
		r = -EPERM;
	if (!r && (a->valid & BF_SET_SIZE))
		r = setsize(op, &w, a->size);
	if (r)
		return r;
	bf_now(&now);
	if (a->valid & BF_SET_MODE)
		put32(&w.ii.mode, (get32(w.ii.mode) & S_IFMT) | ((uint32_t)a->mode & 07777));
	if (a->valid & BF_SET_UID)
		put32(&w.ii.uid, a->uid);
	if (a->valid & BF_SET_GID)
		put32(&w.ii.gid, a->gid);
	if (a->valid & BF_SET_ATIME)
		w.ii.atime = (a->valid & BF_SET_ATIME_NOW) ? now : disk_time(&a->atime);
	if (a->valid & BF_SET_MTIME)
		w.ii.mtime = (a->valid & BF_SET_MTIME_NOW) ? now : disk_time(&a->mtime);
	if (a->valid) {
		w.ii.ctime = (a->valid & BF_SET_CTIME) ? disk_time(&a->ctime) : now;
		bf_inode_inc_seq(&w.ii);
		w.dirty = true;
	}
	r = bf_wino_save(op, &w);
	if (!r && (a->valid & BF_SET_MODE))
		r = bf_acl_chmod(op, &w);
	if (!r && st)
		bf_inode_to_stat(op->fs, w.root, w.ino, &w.ii, st);
	return r;
}

int bf_fs_setattr(struct bf_fs *fs, uint64_t nodeid, const struct bf_setattr *a, struct stat *st)
{
	struct bf_wop op;
	int r = bf_wop_begin(fs, &op);

	if (r)
		return r;
	op.what = "setattr";
	return bf_wop_end(&op, setattr_in(&op, nodeid, a, st));
}
