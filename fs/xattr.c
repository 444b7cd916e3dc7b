/*
 * fs/xattr.c - extended attributes: getxattr and listxattr.
 *
 * Owns: reading XATTR_ITEMs. An xattr lives at (inode, XATTR_ITEM, name_hash(name)); the item is a chain of
 * dir-item records (names whose hashes collide), each record's value in its data area.
 *
 * Key idea: both calls reuse the dir-item record parser and checks of fs/dir.c, so every name and value is
 * known to lie inside its item. Names are returned exactly as stored, whatever their namespace (user.,
 * security., trusted., system.posix_acl_*, btrfs.*), in key order as the kernel's btrfs_listxattr does.
 */
#include <errno.h>
#include <string.h>

#include "btree/csum.h"
#include "fs/meta.h"
#include "util/util.h"

/* Resolve a node id to an inode that can hold xattrs. The placeholder directory cannot (the kernel clears
   IOP_XATTR on it): *none is set then. */
static int xattr_owner(struct bf_fs *fs, uint64_t nodeid, uint64_t *ino, struct bf_root *tree, bool *none)
{
	uint64_t root;
	int r = bf_nodeid_split(fs, nodeid, &root, ino);
	if (r)
		return r;
	*none = *ino == BF_EMPTY_SUBVOL_DIR_OBJECTID;
	if (*none)
		return 0;
	r = bf_fs_root(fs, root, tree);
	return r;
}

static ssize_t copy_value(const struct bf_dir_rec *rec, void *buf, size_t size)
{
	if (size == 0)
		return rec->data_len;
	if (size < rec->data_len)
		return -ERANGE;
	memcpy(buf, rec->data, rec->data_len);
	return rec->data_len;
}

/* Find `name` among the records of one XATTR_ITEM and copy its value. */
static ssize_t value_in_item(const struct bf_root *tree, const struct bf_key *k, const uint8_t *data,
			     uint32_t size, const char *name, size_t len, void *buf, size_t bufsize)
{
	struct bf_dir_rec rec;
	uint32_t pos = 0;
	const char *why = NULL;
	int r;
	while ((r = bf_dir_rec_next(data, size, &pos, &rec, &why)) == 1) {
		if ((why = bf_dir_rec_check(&rec, k)))
			break;
		if (rec.name_len == len && memcmp(rec.name, name, len) == 0)
			return copy_value(&rec, buf, bufsize);
	}
	return why ? bf_corrupt(tree->objectid, k->objectid, k, "%s", why) : -ENODATA;
}

ssize_t bf_fs_getxattr(struct bf_fs *fs, uint64_t nodeid, const char *name, void *buf, size_t size)
{
	size_t len = strlen(name);
	if (len == 0 || len > BF_XATTR_NAME_MAX)
		return -ERANGE;
	uint64_t ino;
	struct bf_root tree;
	bool none;
	int r = xattr_owner(fs, nodeid, &ino, &tree, &none);
	/* The placeholder has no xattrs (EOPNOTSUPP, as the kernel's), but FUSE's permission checks ask for its
	   ACLs, and the kernel's own checks find none there: "no ACL", or nobody but its owner could enter it. */
	if (!r && none && strncmp(name, "system.posix_acl_", 17) == 0)
		return -ENODATA;
	if (r || none)
		return r ? r : -EOPNOTSUPP;
	struct bf_key key = { ino, BF_XATTR_ITEM_KEY, bf_name_hash(name, len) };
	struct bf_path p;
	bf_path_init(&p, fs->env);
	ssize_t n = bf_search(fs->env, &tree, &key, &p);
	if (n == 0) {
		uint32_t isize;
		const uint8_t *data = bf_path_item(&p, &isize);
		n = value_in_item(&tree, &key, data, isize, name, len, buf, size);
	} else if (n == 1) {
		n = -ENODATA;
	}
	bf_path_release(&p);
	return n;
}

struct list_ctx {
	uint64_t root;
	char *buf;
	size_t size, total;
};

static int list_item(void *arg, const struct bf_key *k, const uint8_t *data, uint32_t size)
{
	struct list_ctx *c = arg;
	struct bf_dir_rec rec;
	uint32_t pos = 0;
	const char *why = NULL;
	int r;
	while ((r = bf_dir_rec_next(data, size, &pos, &rec, &why)) == 1) {
		if ((why = bf_dir_rec_check(&rec, k)))
			break;
		size_t at = c->total;
		c->total += rec.name_len + 1u;
		if (c->size == 0)
			continue;
		if (c->total > c->size)
			return -ERANGE;
		memcpy(c->buf + at, rec.name, rec.name_len);
		c->buf[at + rec.name_len] = '\0';
	}
	return why ? bf_corrupt(c->root, k->objectid, k, "%s", why) : 0;
}

ssize_t bf_fs_listxattr(struct bf_fs *fs, uint64_t nodeid, char *buf, size_t size)
{
	uint64_t ino;
	struct bf_root tree;
	bool none;
	int r = xattr_owner(fs, nodeid, &ino, &tree, &none);
	if (r || none)
		return r;
	struct list_ctx c = { tree.objectid, buf, size, 0 };
	struct bf_key min = { ino, BF_XATTR_ITEM_KEY, 0 }, max = { ino, BF_XATTR_ITEM_KEY, UINT64_MAX };
	r = bf_iterate(fs->env, &tree, &min, &max, list_item, &c);
	return r ? r : (ssize_t)c.total;
}
