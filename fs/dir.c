/*
 * fs/dir.c - directories: lookup by name, readdir by index, readlink, and the dir-item record parser.
 *
 * Owns: parsing and checking DIR_ITEM / DIR_INDEX / XATTR_ITEM records (shared with fs/xattr.c), the
 * corruption log line, bf_fs_lookup, bf_fs_readdir and bf_fs_readlink.
 *
 * Key idea: lookup hashes the name and reads the one DIR_ITEM at (dir, DIR_ITEM, hash), walking its chain of
 * colliding names; readdir walks DIR_INDEX items in index order, and a listing offset is "the next index to
 * show" (0 = ".", 1 = "..", i + 1 after the entry with index i), so resuming is a single search at
 * (dir, DIR_INDEX, off): one tree walk per call however large the directory.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "btree/csum.h"
#include "fs/meta.h"
#include "util/util.h"

#define SYMLINK_MAX 4095

/* ---------------- records ---------------- */

int bf_dir_rec_next(const uint8_t *item, uint32_t size, uint32_t *pos, struct bf_dir_rec *rec, const char **why)
{
	if (*pos >= size)
		return 0;
	uint32_t left = size - *pos;
	const struct bf_dir_item *di = (const void *)(item + *pos);
	if (left < sizeof(*di)) {
		*why = "a record header crosses the item end";
		return -EUCLEAN;
	}
	uint32_t name_len = get16(di->name_len), data_len = get16(di->data_len);
	if (name_len + data_len > left - sizeof(*di)) {
		*why = "a record's name and data cross the item end";
		return -EUCLEAN;
	}
	rec->location = bf_key_from_disk(&di->location);
	rec->type = di->type;
	rec->name = (const char *)(di + 1);
	rec->name_len = (uint16_t)name_len;
	rec->data = (const uint8_t *)rec->name + name_len;
	rec->data_len = (uint16_t)data_len;
	*pos += (uint32_t)sizeof(*di) + name_len + data_len;
	return 1;
}

int bf_ref_rec_next(const struct bf_key *k, const uint8_t *item, uint32_t size, uint32_t *pos, struct bf_ref_rec *rec)
{
	bool ext = k->type == BF_INODE_EXTREF_KEY;
	uint32_t hdr = ext ? sizeof(struct bf_inode_extref) : sizeof(struct bf_inode_ref);

	if (*pos >= size)
		return 0;
	if (size - *pos < hdr)
		return -EUCLEAN;
	if (ext) {
		const struct bf_inode_extref *e = (const void *)(item + *pos);
		rec->parent = get64(e->parent_objectid);
		rec->index = get64(e->index);
		rec->len = get16(e->name_len);
	} else {
		const struct bf_inode_ref *e = (const void *)(item + *pos);
		rec->parent = k->offset;
		rec->index = get64(e->index);
		rec->len = get16(e->name_len);
	}
	if (rec->len > size - *pos - hdr)
		return -EUCLEAN;
	rec->name = (const char *)item + *pos + hdr;
	rec->at = *pos;
	rec->size = hdr + rec->len;
	*pos += rec->size;
	return 1;
}

static const char *check_name(const struct bf_dir_rec *rec, bool is_xattr)
{
	if (rec->name_len == 0)
		return "empty name";
	if (rec->name_len > (is_xattr ? BF_XATTR_NAME_MAX : BF_NAME_LEN))
		return "name longer than 255 bytes";
	if (memchr(rec->name, 0, rec->name_len))
		return "NUL byte in name";
	if (is_xattr)
		return NULL;
	if (memchr(rec->name, '/', rec->name_len))
		return "'/' in name";
	if ((rec->name_len == 1 && rec->name[0] == '.') ||
	    (rec->name_len == 2 && rec->name[0] == '.' && rec->name[1] == '.'))
		return "entry named . or ..";
	return NULL;
}

static const char *check_location(const struct bf_dir_rec *rec)
{
	const struct bf_key *l = &rec->location;
	if (l->type == BF_INODE_ITEM_KEY)
		return l->objectid >= BF_FIRST_FREE_OBJECTID && l->objectid <= BF_LAST_FREE_OBJECTID
			       ? NULL
			       : "location objectid out of range";
	if (l->type == BF_ROOT_ITEM_KEY)
		return l->objectid >= BF_FIRST_FREE_OBJECTID && l->objectid <= BF_LAST_FREE_OBJECTID &&
				       rec->type == BF_FT_DIR
			       ? NULL
			       : "subvolume entry with a bad id or type";
	return "location key is neither an inode nor a subvolume";
}

const char *bf_dir_rec_check(const struct bf_dir_rec *rec, const struct bf_key *key)
{
	bool is_xattr = key->type == BF_XATTR_ITEM_KEY;
	const char *why = check_name(rec, is_xattr);
	if (why)
		return why;
	if (is_xattr && rec->type != BF_FT_XATTR)
		return "xattr record with a non-xattr type";
	if (!is_xattr && (rec->type == BF_FT_UNKNOWN || rec->type >= BF_FT_XATTR))
		return "invalid entry type";
	if (!is_xattr && rec->data_len)
		return "directory entry with data";
	if (!is_xattr && (why = check_location(rec)))
		return why;
	if (key->type != BF_DIR_INDEX_KEY && key->offset != bf_name_hash(rec->name, rec->name_len))
		return "name hash does not match the key";
	return NULL;
}

int bf_corrupt(uint64_t root, uint64_t ino, const struct bf_key *key, const char *fmt, ...)
{
	char what[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	char item[96] = "";
	if (key)
		snprintf(item, sizeof(item), ", item (%llu %u %llu)", (unsigned long long)key->objectid, key->type,
			 (unsigned long long)key->offset);
	bf_log(BF_LOG_ERR, "corrupt metadata in subvolume %llu, inode %llu%s: %s; run 'btrfs check --readonly' on the "
	       "device", (unsigned long long)root, (unsigned long long)ino, item, what);
	return -EUCLEAN;
}

/* ---------------- lookup ---------------- */

/* Where a checked record of directory (root, dir) leads. */
static int rec_target(struct bf_fs *fs, uint64_t root, uint64_t dir, const struct bf_dir_rec *rec,
		      struct bf_target *t)
{
	if (rec->location.type == BF_ROOT_ITEM_KEY)
		return bf_subvol_entry(fs, root, dir, rec->name, rec->name_len, rec->location.objectid, t);
	*t = (struct bf_target){ root, rec->location.objectid, rec->type };
	return 0;
}

/* Walk the records of one DIR_ITEM, checking each, and stop at `name`. Returns 1 if found. */
static int match_in_item(uint64_t root, const struct bf_key *k, const uint8_t *data, uint32_t size,
			 const char *name, size_t len, struct bf_dir_rec *out)
{
	uint32_t pos = 0;
	const char *why = NULL;
	int r;
	while ((r = bf_dir_rec_next(data, size, &pos, out, &why)) == 1) {
		if ((why = bf_dir_rec_check(out, k)))
			break;
		if (out->name_len == len && memcmp(out->name, name, len) == 0)
			return 1;
	}
	return why ? bf_corrupt(root, k->objectid, k, "%s", why) : 0;
}

static int find_entry(struct bf_fs *fs, uint64_t root, uint64_t dir, const char *name, size_t len,
		      struct bf_target *t)
{
	struct bf_root tree;
	int r = bf_fs_root(fs, root, &tree);
	if (r)
		return r;
	struct bf_key key = { dir, BF_DIR_ITEM_KEY, bf_name_hash(name, len) };
	struct bf_path p;
	bf_path_init(&p, fs->env);
	r = bf_search(fs->env, &tree, &key, &p);
	struct bf_dir_rec rec;
	if (r == 0) {
		uint32_t size;
		const uint8_t *data = bf_path_item(&p, &size);
		r = match_in_item(root, &key, data, size, name, len, &rec);
		r = r == 1 ? rec_target(fs, root, dir, &rec, t) : r == 0 ? -ENOENT : r;
	} else if (r == 1) {
		r = -ENOENT;
	}
	bf_path_release(&p);
	return r;
}

int bf_dir_find(struct bf_fs *fs, uint64_t root, uint64_t dir, const char *name, size_t len, struct bf_target *t)
{
	if (len == 1 && name[0] == '.') {
		*t = (struct bf_target){ root, dir, BF_FT_DIR };
		return 0;
	}
	if (len == 2 && name[0] == '.' && name[1] == '.')
		return bf_dir_parent(fs, root, dir, t);
	if (len > BF_NAME_LEN)
		return -ENAMETOOLONG;
	if (len == 0 || memchr(name, '/', len) || dir == BF_EMPTY_SUBVOL_DIR_OBJECTID)
		return -ENOENT;
	return find_entry(fs, root, dir, name, len, t);
}

/* The directory holding directory `dir` of a subvolume tree: its INODE_REF (or INODE_EXTREF) names it. */
static int inode_parent(struct bf_fs *fs, uint64_t root, uint64_t dir, uint64_t *parent)
{
	struct bf_root tree;
	int r = bf_fs_root(fs, root, &tree);
	if (r)
		return r;
	struct bf_key key = { dir, BF_INODE_REF_KEY, 0 };
	struct bf_path p;
	bf_path_init(&p, fs->env);
	r = bf_search(fs->env, &tree, &key, &p);
	if (r >= 0) {
		struct bf_key k = bf_path_valid(&p) ? bf_path_key(&p) : (struct bf_key){ 0, 0, 0 };
		uint32_t size = 0;
		const uint8_t *data = bf_path_valid(&p) ? bf_path_item(&p, &size) : NULL;
		r = 0;
		if (k.objectid == dir && k.type == BF_INODE_REF_KEY)
			*parent = k.offset;
		else if (k.objectid == dir && k.type == BF_INODE_EXTREF_KEY && size >= sizeof(struct bf_inode_extref))
			*parent = get64(((const struct bf_inode_extref *)data)->parent_objectid);
		else
			r = bf_corrupt(root, dir, &key, "directory has no parent reference");
	}
	bf_path_release(&p);
	return r;
}

int bf_dir_parent(struct bf_fs *fs, uint64_t root, uint64_t dir, struct bf_target *t)
{
	*t = (struct bf_target){ root, dir, BF_FT_DIR };
	if (root == fs->mount_root && dir == fs->mount_dir)
		return 0; /* the kernel never asks above the mount point */
	if (dir == BF_EMPTY_SUBVOL_DIR_OBJECTID) {
		t->objectid = BF_SUBVOL_ROOT_DIR; /* the placeholder keeps no parent: use its subvolume's root */
		return 0;
	}
	if (dir == BF_SUBVOL_ROOT_DIR) {
		uint64_t parent, dirid;
		int r = bf_subvol_parent(fs, root, &parent, &dirid);
		if (r == -ENOENT)
			return 0;
		if (!r && (!bf_is_fs_tree(parent) || dirid < BF_FIRST_FREE_OBJECTID))
			r = bf_corrupt(BF_ROOT_TREE_OBJECTID, root,
				       &(struct bf_key){ root, BF_ROOT_BACKREF_KEY, parent },
				       "subvolume back reference to directory %llu", (unsigned long long)dirid);
		if (!r)
			*t = (struct bf_target){ parent, dirid, BF_FT_DIR };
		return r;
	}
	uint64_t parent = 0;
	int r = inode_parent(fs, root, dir, &parent);
	if (!r && (parent < BF_FIRST_FREE_OBJECTID || parent > BF_LAST_FREE_OBJECTID))
		r = bf_corrupt(root, dir, &(struct bf_key){ dir, BF_INODE_REF_KEY, parent },
			       "parent directory objectid out of range");
	if (!r)
		t->objectid = parent;
	return r;
}

/* stat of the target of an entry; the inode's type must be the one the entry announced (the kernel checks
   this in btrfs_lookup_dentry). A dangling entry is corruption. */
static const mode_t fmt_of_type[BF_FT_XATTR] = { 0, S_IFREG, S_IFDIR, S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK, S_IFLNK };

static int target_stat(struct bf_fs *fs, uint64_t dir, const struct bf_target *t, struct stat *st,
		       uint64_t *generation)
{
	struct bf_key key = { t->objectid, BF_INODE_ITEM_KEY, 0 };
	int r = bf_stat_target(fs, t->root, t->objectid, st, generation);
	if (r == -ENOENT)
		return bf_corrupt(t->root, t->objectid, &key,
				  "directory %llu has an entry for it but it does not exist", (unsigned long long)dir);
	if (!r && t->type < BF_FT_XATTR && (st->st_mode & S_IFMT) != fmt_of_type[t->type])
		return bf_corrupt(t->root, t->objectid, &key, "mode 0%o does not match type %u of its entry in "
				  "directory %llu", (unsigned)st->st_mode, t->type, (unsigned long long)dir);
	return r;
}

int bf_fs_lookup(struct bf_fs *fs, uint64_t parent, const char *name, uint64_t *nodeid, uint64_t *generation,
		 struct stat *st)
{
	uint64_t root, dir;
	int r = bf_nodeid_split(fs, parent, &root, &dir);
	if (!r)
		r = bf_dir_load(fs, root, dir, NULL);
	struct bf_target t;
	if (!r)
		r = bf_dir_find(fs, root, dir, name, strlen(name), &t);
	if (!r)
		r = target_stat(fs, dir, &t, st, generation);
	if (r)
		return r;
	*nodeid = bf_nodeid_make(fs, t.root, t.objectid);
	return *nodeid ? 0 : -ENOMEM;
}

/* ---------------- readdir ---------------- */

struct emit {
	struct bf_fs *fs;
	uint64_t dir;
	bool plus;
	bf_dirent_cb cb;
	void *ctx;
};

/* Hand one entry to the callback. Returns 1 if the callback stopped, 0 to go on, or a negative errno. */
static int emit_entry(struct emit *e, const char *name, size_t len, const struct bf_target *t, uint64_t next)
{
	struct stat st;
	uint64_t gen = 0;
	if (e->plus) {
		int r = target_stat(e->fs, e->dir, t, &st, &gen);
		if (r)
			return r;
	} else {
		/* Plain readdir: the inode number and the type the entry announces, without loading the inode. */
		memset(&st, 0, sizeof(st));
		st.st_ino = bf_st_ino(e->fs, t->root, t->objectid);
		st.st_mode = t->type < BF_FT_XATTR ? fmt_of_type[t->type] : 0;
	}
	uint64_t nodeid = bf_nodeid_make(e->fs, t->root, t->objectid);
	if (!nodeid)
		return -ENOMEM;
	return e->cb(e->ctx, name, len, nodeid, gen, &st, next) ? 1 : 0;
}

static int emit_dots(struct emit *e, uint64_t root, uint64_t off)
{
	int r = 0;
	struct bf_target t = { root, e->dir, BF_FT_DIR };
	if (off == 0)
		r = emit_entry(e, ".", 1, &t, 1);
	if (!r && off <= 1) {
		r = bf_dir_parent(e->fs, root, e->dir, &t);
		if (!r)
			r = emit_entry(e, "..", 2, &t, 2);
	}
	return r;
}

/* One DIR_INDEX item: its (first and only) record. */
static int index_entry(struct emit *e, uint64_t root, const struct bf_key *k, const uint8_t *data, uint32_t size)
{
	struct bf_dir_rec rec;
	uint32_t pos = 0;
	const char *why = "empty item";
	int r = bf_dir_rec_next(data, size, &pos, &rec, &why);
	if (r == 1 && !(why = bf_dir_rec_check(&rec, k)) && k->offset >= (uint64_t)INT64_MAX)
		why = "directory index beyond the largest listing offset";
	if (r != 1 || why)
		return bf_corrupt(root, e->dir, k, "%s", why);
	struct bf_target t;
	r = rec_target(e->fs, root, e->dir, &rec, &t);
	return r ? r : emit_entry(e, rec.name, rec.name_len, &t, k->offset + 1);
}

static int walk_index(struct emit *e, uint64_t root, uint64_t off)
{
	struct bf_root tree;
	int r = bf_fs_root(e->fs, root, &tree);
	if (r)
		return r;
	struct bf_key key = { e->dir, BF_DIR_INDEX_KEY, off };
	struct bf_path p;
	bf_path_init(&p, e->fs->env);
	r = bf_search(e->fs->env, &tree, &key, &p);
	while (r >= 0 && bf_path_valid(&p)) {
		struct bf_key k = bf_path_key(&p);
		if (k.objectid != e->dir || k.type != BF_DIR_INDEX_KEY)
			break;
		uint32_t size;
		const uint8_t *data = bf_path_item(&p, &size);
		r = index_entry(e, root, &k, data, size);
		if (r)
			break;
		r = bf_path_next(&p);
		if (r == 1)
			break;
	}
	bf_path_release(&p);
	return r < 0 ? r : 0;
}

int bf_fs_readdir(struct bf_fs *fs, uint64_t nodeid, uint64_t off, bool plus, bf_dirent_cb cb, void *ctx)
{
	uint64_t root;
	struct emit e = { fs, 0, plus, cb, ctx };
	int r = bf_nodeid_split(fs, nodeid, &root, &e.dir);
	if (!r)
		r = bf_dir_load(fs, root, e.dir, NULL);
	if (!r && off < 2)
		r = emit_dots(&e, root, off);
	if (r || e.dir == BF_EMPTY_SUBVOL_DIR_OBJECTID)
		return r < 0 ? r : 0;
	return walk_index(&e, root, off < 2 ? 2 : off);
}

/* ---------------- readlink ---------------- */

ssize_t bf_fs_readlink(struct bf_fs *fs, uint64_t nodeid, char *buf, size_t size)
{
	uint64_t root, ino;
	struct bf_inode_item ii;
	struct bf_root tree;
	int r = bf_nodeid_split(fs, nodeid, &root, &ino);
	if (!r && ino == BF_EMPTY_SUBVOL_DIR_OBJECTID)
		return -EINVAL;
	if (!r)
		r = bf_inode_load(fs, root, ino, &ii);
	if (!r)
		r = bf_fs_root(fs, root, &tree);
	if (r)
		return r;
	if (!S_ISLNK(get32(ii.mode)))
		return -EINVAL;
	uint64_t len = get64(ii.size);
	if (len > SYMLINK_MAX)
		return bf_corrupt(root, ino, &(struct bf_key){ ino, BF_INODE_ITEM_KEY, 0 },
				  "symlink target of %llu bytes (at most %d allowed)", (unsigned long long)len,
				  SYMLINK_MAX);
	char target[SYMLINK_MAX];
	ssize_t n = len ? bf_file_read_range(fs, &tree, ino, &ii, target, (size_t)len, 0) : 0;
	if (n < 0)
		return n;
	if (size)
		memcpy(buf, target, bf_min64((uint64_t)n, size));
	return n;
}
