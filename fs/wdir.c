/*
 * fs/wdir.c - directory entries and inode back references on the write side (the kernel's dir-item.c and
 * inode-item.c, and the directory half of btrfs_add_link / __btrfs_unlink_inode).
 *
 * Owns: DIR_ITEM and DIR_INDEX insertion and removal, INODE_REF / INODE_EXTREF insertion, lookup and removal,
 * removing one record from a packed item, and each directory's DIR_INDEX counter.
 *
 * Key idea: three items name one link: (dir, DIR_ITEM, name_hash(name)) - a chain of records for the names that
 * share the hash, a new one appended at the end; (dir, DIR_INDEX, index) - one record, index from the
 * directory's counter (its last index + 1, starting at 2, kept in memory like the kernel's index_cnt so an index
 * is never handed out twice while it is cached); and the back reference (ino, INODE_REF, dir) holding
 * (index, name) records for every link in dir, or, when that item cannot grow and the filesystem has extended
 * refs, (ino, INODE_EXTREF, crc32c(dir, name)) records (parent, index, name). An item grows only while
 * old size + new record + one item header fits the largest item (the kernel's split_leaf -EOVERFLOW rule); past
 * that a DIR_ITEM refuses the name (-EOVERFLOW) and an INODE_REF falls back to an extref (or -EMLINK).
 * Records in items are parsed with fs/dir.c's checked parser; back references with the checks here.
 */
#include <errno.h>
#include <stdlib.h>
#include <inttypes.h>
#include <string.h>

#include "btree/csum.h"
#include "fs/wmeta.h"
#include "util/util.h"

#define DIR_START_INDEX 2

/* ---------------- names ---------------- */

int bf_name_check(const char *name, size_t len)
{
	if (len == 0)
		return -ENOENT;
	if (len > BF_NAME_LEN)
		return -ENAMETOOLONG;
	if (memchr(name, '/', len) || memchr(name, '\0', len))
		return -EINVAL;
	if ((len == 1 && name[0] == '.') || (len == 2 && name[0] == '.' && name[1] == '.'))
		return -EEXIST;
	return 0;
}

bool bf_cred_in_group(const struct bf_cred *c, uint32_t gid)
{
	if (c->gid == gid)
		return true;
	for (size_t i = 0; i < c->ngroups; i++)
		if (c->groups[i] == gid)
			return true;
	return false;
}

/* ---------------- records of packed items ---------------- */

int bf_rec_find(uint64_t root, const struct bf_key *k, const uint8_t *item, uint32_t size, const char *name,
		size_t namelen, struct bf_dir_rec *rec, uint32_t *pos, uint32_t *reclen)
{
	uint32_t at = 0, start;
	const char *why = NULL;
	int r;

	for (start = at; (r = bf_dir_rec_next(item, size, &at, rec, &why)) == 1; start = at) {
		if ((why = bf_dir_rec_check(rec, k)))
			break;
		if (rec->name_len == namelen && memcmp(rec->name, name, namelen) == 0) {
			*pos = start;
			*reclen = at - start;
			return 0;
		}
	}
	return why ? bf_corrupt(root, k->objectid, k, "%s", why) : -ENOENT;
}

int bf_rec_remove(struct bf_wop *op, struct bf_root *root, struct bf_path *p, uint32_t pos, uint32_t len)
{
	uint32_t size;
	uint8_t *data = bf_path_item_mut(op->t, p, &size);
	int r;

	if (!data || pos > size || len > size - pos) {
		bf_path_release(p);
		return -EINVAL;
	}
	op->changed = true;
	if (len == size)
		return bf_del_items(op->t, root, p, p->slots[0], 1);
	memmove(data + pos, data + pos + len, size - pos - len);
	r = bf_truncate_item(op->t, p, size - len, true);
	bf_path_release(p);
	return r;
}

int bf_item_append(struct bf_wop *op, struct bf_root *tree, const struct bf_key *key, const void *rec,
		       uint32_t len)
{
	struct bf_path p;
	uint32_t size;
	uint8_t *data;
	int r;

	op->changed = true;
	bf_path_init(&p, op->fs->env);
	r = bf_insert_empty_items(op->t, tree, &p, key, &len, 1);
	if (r == 0) {
		memcpy(bf_path_item_mut(op->t, &p, NULL), rec, len);
	} else if (r == -EEXIST) {
		/* the insert's search made room for the record and its header: the item grows in place */
		r = bf_path_item_mut(op->t, &p, NULL) ? bf_extend_item(op->t, &p, len) : -EOVERFLOW;
		data = r ? NULL : bf_path_item_mut(op->t, &p, &size);
		if (data)
			memcpy(data + size - len, rec, len);
	}
	bf_path_release(&p);
	return r;
}

/* Size of the item at key in the live tree (0 if absent); a copy of its bytes in buf when it fits. */
static int item_peek(struct bf_wop *op, uint64_t root, const struct bf_key *key, uint8_t *buf, uint32_t cap,
		     uint32_t *size)
{
	struct bf_root *tree;
	struct bf_path p;
	int r = bf_wop_root(op, root, &tree);

	*size = 0;
	if (r)
		return r;
	bf_path_init(&p, op->fs->env);
	r = bf_search(op->fs->env, tree, key, &p);
	if (r == 0) {
		const uint8_t *data = bf_path_item(&p, size);
		if (buf)
			memcpy(buf, data, bf_min64(*size, cap));
	}
	bf_path_release(&p);
	return r < 0 ? r : 0;
}

static bool item_can_grow(const struct bf_fs *fs, uint32_t old, uint32_t add)
{
	return (uint64_t)old + add + sizeof(struct bf_item) <= bf_max_item_size(fs->env);
}

/* ---------------- directory entries ---------------- */

int bf_entry_check(struct bf_wop *op, uint64_t root, uint64_t dir, const char *name, size_t len)
{
	struct bf_key key = { dir, BF_DIR_ITEM_KEY, bf_name_hash(name, len) };
	uint8_t *buf = NULL;
	uint32_t size;
	int r = bf_name_check(name, len);

	if (r)
		return r;
	r = item_peek(op, root, &key, NULL, 0, &size);
	if (r || size == 0)
		return r;
	buf = malloc(size);
	if (!buf)
		return -ENOMEM;
	r = item_peek(op, root, &key, buf, size, &size);
	if (!r) {
		struct bf_dir_rec rec;
		uint32_t pos, rl;
		r = bf_rec_find(root, &key, buf, size, name, len, &rec, &pos, &rl);
		if (r == 0)
			r = -EEXIST;
		else if (r == -ENOENT)
			r = item_can_grow(op->fs, size, (uint32_t)(sizeof(struct bf_dir_item) + len)) ? 0 : -EOVERFLOW;
	}
	free(buf);
	return r;
}

static struct bf_diridx *diridx_slot(struct bf_fs *fs, uint64_t root, uint64_t dir)
{
	uint64_t h = (dir * 0x9E3779B97F4A7C15ULL) ^ (root * 0xC2B2AE3D27D4EB4FULL);
	return &fs->ns->diridx[(h ^ (h >> 31)) % BF_DIRIDX_SLOTS];
}

void bf_dir_index_init(struct bf_fs *fs, uint64_t root, uint64_t dir)
{
	*diridx_slot(fs, root, dir) = (struct bf_diridx){ root, dir, DIR_START_INDEX, true };
}

/* The kernel's btrfs_set_inode_index_count: the last DIR_INDEX key + 1, or 2. */
static int index_from_tree(struct bf_wop *op, uint64_t root, uint64_t dir, uint64_t *next)
{
	struct bf_key key = { dir, BF_DIR_INDEX_KEY, UINT64_MAX }, k;
	int r = bf_wop_last_key(op, root, &key, &k);

	*next = DIR_START_INDEX;
	if (r)
		return r == -ENOENT ? 0 : r;
	if (k.objectid != dir || k.type != BF_DIR_INDEX_KEY)
		return 0;
	if (k.offset >= (uint64_t)INT64_MAX)
		return bf_corrupt(root, dir, &k, "directory index beyond the largest listing offset");
	*next = k.offset + 1;
	return 0;
}

int bf_dir_index_next(struct bf_wop *op, uint64_t root, uint64_t dir, uint64_t *index)
{
	struct bf_diridx *s = diridx_slot(op->fs, root, dir);

	if (!s->valid || s->root != root || s->dir != dir) {
		uint64_t next;
		int r = index_from_tree(op, root, dir, &next);
		if (r)
			return r;
		*s = (struct bf_diridx){ root, dir, next, true };
	}
	if (s->next >= (uint64_t)INT64_MAX)
		return -EOVERFLOW;
	*index = s->next++;
	return 0;
}

static void fill_dir_rec(uint8_t *buf, const struct bf_wino *w, uint64_t transid, const char *name, size_t len)
{
	struct bf_dir_item di;
	struct bf_key loc = { w->ino, BF_INODE_ITEM_KEY, 0 };

	memset(&di, 0, sizeof(di));
	bf_key_to_disk(&di.location, &loc);
	put64(&di.transid, transid);
	put16(&di.data_len, 0);
	put16(&di.name_len, (uint16_t)len);
	di.type = bf_ftype_of_mode(bf_wino_mode(w));
	memcpy(buf, &di, sizeof(di));
	memcpy(buf + sizeof(di), name, len);
}

/* A directory gains or loses a name: size by twice its length (DIR_ITEM + DIR_INDEX), sequence, mtime, ctime. */
static void dir_changed(struct bf_wino *d, size_t len, bool add)
{
	uint64_t size = get64(d->ii.size), delta = 2 * (uint64_t)len;

	put64(&d->ii.size, add ? size + delta : (size >= delta ? size - delta : 0));
	bf_inode_inc_seq(&d->ii);
	bf_inode_touch(&d->ii, BF_TOUCH_MTIME | BF_TOUCH_CTIME);
	d->dirty = true;
}

int bf_entry_add(struct bf_wop *op, struct bf_wino *d, const char *name, size_t len, const struct bf_wino *w,
		 uint64_t index)
{
	uint8_t rec[sizeof(struct bf_dir_item) + BF_NAME_LEN];
	uint32_t rlen = (uint32_t)(sizeof(struct bf_dir_item) + len);
	struct bf_key dkey = { d->ino, BF_DIR_ITEM_KEY, bf_name_hash(name, len) };
	struct bf_key ikey = { d->ino, BF_DIR_INDEX_KEY, index };
	struct bf_root *tree;
	int r = bf_wop_root(op, d->root, &tree);

	if (r)
		return r;
	fill_dir_rec(rec, w, op->t->transid, name, len);
	r = bf_item_append(op, tree, &dkey, rec, rlen);
	if (!r) {
		r = bf_insert_item(op->t, tree, &ikey, rec, rlen);
		if (r == -EEXIST)
			r = bf_corrupt(d->root, d->ino, &ikey, "directory index %" PRIu64 " is already in use", index);
	}
	if (!r)
		dir_changed(d, len, true);
	return r;
}

/* Delete the DIR_INDEX item index of d after checking it names name. */
static int del_index(struct bf_wop *op, struct bf_root *tree, const struct bf_wino *d, const char *name,
		     size_t len, uint64_t index)
{
	struct bf_key key = { d->ino, BF_DIR_INDEX_KEY, index };
	struct bf_path p;
	struct bf_dir_rec rec;
	uint32_t size, pos, rl;
	int r;

	bf_path_init(&p, op->fs->env);
	r = bf_search_slot(op->t, tree, &key, -1, true, &p);
	if (r > 0)
		r = bf_corrupt(d->root, d->ino, &key, "directory index of '%.*s' is missing", (int)len, name);
	if (r == 0) {
		const uint8_t *data = bf_path_item(&p, &size);
		r = bf_rec_find(d->root, &key, data, size, name, len, &rec, &pos, &rl);
		if (r == -ENOENT)
			r = bf_corrupt(d->root, d->ino, &key, "directory index does not name '%.*s'", (int)len, name);
	}
	if (r == 0) {
		op->changed = true;
		return bf_del_items(op->t, tree, &p, p.slots[0], 1);
	}
	bf_path_release(&p);
	return r;
}

int bf_entry_del(struct bf_wop *op, struct bf_wino *d, const char *name, size_t len, uint64_t index)
{
	struct bf_key key = { d->ino, BF_DIR_ITEM_KEY, bf_name_hash(name, len) };
	struct bf_root *tree;
	struct bf_path p;
	struct bf_dir_rec rec;
	uint32_t size, pos, rl;
	int r = bf_wop_root(op, d->root, &tree);

	if (r)
		return r;
	op->fs->ns->last_unlink_trans = op->t->transid; /* fsync must commit until this transaction has */
	bf_path_init(&p, op->fs->env);
	r = bf_search_slot(op->t, tree, &key, -1, true, &p);
	if (r > 0)
		r = -ENOENT;
	if (r == 0) {
		const uint8_t *data = bf_path_item(&p, &size);
		r = bf_rec_find(d->root, &key, data, size, name, len, &rec, &pos, &rl);
	}
	if (r) {
		bf_path_release(&p);
		return r == -ENOENT ? bf_corrupt(d->root, d->ino, &key, "entry '%.*s' vanished", (int)len, name) : r;
	}
	r = bf_rec_remove(op, tree, &p, pos, rl);
	if (!r)
		r = del_index(op, tree, d, name, len, index);
	if (!r)
		dir_changed(d, len, false);
	return r;
}

/* ---------------- back references ---------------- */

static uint64_t extref_hash(uint64_t parent, const char *name, size_t len)
{
	return bf_crc32c((uint32_t)parent, name, len);
}

/* Find (parent, name) among the records of the back reference item k (INODE_REF or INODE_EXTREF). Returns 0 with
   *index, *pos and *rlen, -ENOENT, or -EUCLEAN for a record that does not fit. */
static int ref_find(uint64_t root, const struct bf_key *k, const uint8_t *item, uint32_t size, uint64_t parent,
		    const char *name, size_t len, uint64_t *index, uint32_t *pos, uint32_t *rlen)
{
	struct bf_ref_rec rec;
	uint32_t at = 0;
	int r;

	while ((r = bf_ref_rec_next(k, item, size, &at, &rec)) == 1) {
		if (rec.parent == parent && rec.len == len && memcmp(rec.name, name, len) == 0) {
			*index = rec.index;
			*pos = rec.at;
			*rlen = rec.size;
			return 0;
		}
	}
	return r ? bf_corrupt(root, k->objectid, k, "back reference record crosses the item end") : -ENOENT;
}

/* Look for (parent, name) in the back reference item at key: 0 with *index, -ENOENT; *size gets the item's size
   (0 if absent). */
static int ref_lookup(struct bf_wop *op, uint64_t root, const struct bf_key *key, uint64_t parent,
		      const char *name, size_t len, uint64_t *index, uint32_t *size)
{
	struct bf_root *tree;
	struct bf_path p;
	uint32_t pos, rl;
	int r = bf_wop_root(op, root, &tree);

	*size = 0;
	if (r)
		return r;
	bf_path_init(&p, op->fs->env);
	r = bf_search(op->fs->env, tree, key, &p);
	if (r == 0) {
		const uint8_t *data = bf_path_item(&p, size);
		r = ref_find(root, key, data, *size, parent, name, len, index, &pos, &rl);
	} else if (r > 0) {
		r = -ENOENT;
	}
	bf_path_release(&p);
	return r;
}

int bf_iref_find(struct bf_wop *op, uint64_t root, uint64_t ino, uint64_t parent, const char *name, size_t len,
		 uint64_t *index)
{
	struct bf_key rk = { ino, BF_INODE_REF_KEY, parent };
	struct bf_key xk = { ino, BF_INODE_EXTREF_KEY, extref_hash(parent, name, len) };
	uint32_t size;
	int r = ref_lookup(op, root, &rk, parent, name, len, index, &size);

	if (r == -ENOENT)
		r = ref_lookup(op, root, &xk, parent, name, len, index, &size);
	return r;
}

/* Where a new reference goes: 0 = INODE_REF, 1 = INODE_EXTREF, or -EEXIST / -EMLINK / another error. */
static int ref_place(struct bf_wop *op, uint64_t root, uint64_t ino, uint64_t parent, const char *name, size_t len)
{
	struct bf_key rk = { ino, BF_INODE_REF_KEY, parent };
	struct bf_key xk = { ino, BF_INODE_EXTREF_KEY, extref_hash(parent, name, len) };
	uint64_t index;
	uint32_t rsize, xsize;
	int r = ref_lookup(op, root, &rk, parent, name, len, &index, &rsize);

	if (r != -ENOENT)
		return r ? r : -EEXIST;
	r = ref_lookup(op, root, &xk, parent, name, len, &index, &xsize);
	if (r != -ENOENT)
		return r ? r : -EEXIST;
	if (rsize == 0 || item_can_grow(op->fs, rsize, (uint32_t)(sizeof(struct bf_inode_ref) + len)))
		return 0;
	if (!(op->fs->fi->incompat & BF_FEATURE_INCOMPAT_EXTENDED_IREF))
		return -EMLINK;
	if (xsize && !item_can_grow(op->fs, xsize, (uint32_t)(sizeof(struct bf_inode_extref) + len)))
		return -EMLINK;
	return 1;
}

int bf_iref_check(struct bf_wop *op, uint64_t root, uint64_t ino, uint64_t parent, const char *name, size_t len)
{
	int r = ref_place(op, root, ino, parent, name, len);
	return r > 0 ? 0 : r;
}

int bf_iref_add(struct bf_wop *op, uint64_t root, uint64_t ino, uint64_t parent, const char *name, size_t len,
		uint64_t index)
{
	uint8_t rec[sizeof(struct bf_inode_extref) + BF_NAME_LEN];
	struct bf_root *tree;
	int place = ref_place(op, root, ino, parent, name, len);
	int r = place < 0 ? place : bf_wop_root(op, root, &tree);

	if (r)
		return r;
	if (place == 0) {
		struct bf_inode_ref h;
		struct bf_key key = { ino, BF_INODE_REF_KEY, parent };
		put64(&h.index, index);
		put16(&h.name_len, (uint16_t)len);
		memcpy(rec, &h, sizeof(h));
		memcpy(rec + sizeof(h), name, len);
		return bf_item_append(op, tree, &key, rec, (uint32_t)(sizeof(h) + len));
	}
	struct bf_inode_extref h;
	struct bf_key key = { ino, BF_INODE_EXTREF_KEY, extref_hash(parent, name, len) };
	put64(&h.parent_objectid, parent);
	put64(&h.index, index);
	put16(&h.name_len, (uint16_t)len);
	memcpy(rec, &h, sizeof(h));
	memcpy(rec + sizeof(h), name, len);
	return bf_item_append(op, tree, &key, rec, (uint32_t)(sizeof(h) + len));
}

/* Remove (parent, name) from the back reference item at key if it is there: 0 done, -ENOENT not there. */
static int ref_remove(struct bf_wop *op, uint64_t root, struct bf_root *tree, const struct bf_key *key,
		      uint64_t parent, const char *name, size_t len)
{
	struct bf_path p;
	uint64_t index;
	uint32_t size, pos, rl;
	int r;

	bf_path_init(&p, op->fs->env);
	r = bf_search_slot(op->t, tree, key, -1, true, &p);
	if (r == 0) {
		const uint8_t *data = bf_path_item(&p, &size);
		r = ref_find(root, key, data, size, parent, name, len, &index, &pos, &rl);
	} else if (r > 0) {
		r = -ENOENT;
	}
	if (r) {
		bf_path_release(&p);
		return r;
	}
	return bf_rec_remove(op, tree, &p, pos, rl);
}

int bf_iref_del(struct bf_wop *op, uint64_t root, uint64_t ino, uint64_t parent, const char *name, size_t len)
{
	struct bf_key rk = { ino, BF_INODE_REF_KEY, parent };
	struct bf_key xk = { ino, BF_INODE_EXTREF_KEY, extref_hash(parent, name, len) };
	struct bf_root *tree;
	int r = bf_wop_root(op, root, &tree);

	if (!r)
		r = ref_remove(op, root, tree, &rk, parent, name, len);
	if (r == -ENOENT)
		r = ref_remove(op, root, tree, &xk, parent, name, len);
	if (r == -ENOENT)
		r = bf_corrupt(root, ino, &rk, "back reference to '%.*s' in directory %" PRIu64 " vanished", (int)len,
			       name, parent);
	return r;
}
