/*
 * fs/subvol.c - subvolumes: node ids and st_ino, the subvolume-root cache, subvolume entries and subvol=PATH.
 *
 * Owns: the mapping between FUSE node ids and (subvolume, objectid) pairs (docs/ARCHITECTURE.md, "Inode
 * numbers"), bf_st_ino, bf_fs_root with its cache, the kernel's rules for where a directory entry that names a
 * subvolume leads (fixup_tree_root_location: ROOT_REF must confirm it, else the placeholder directory), the
 * ROOT_BACKREF walk to a subvolume's parent, and resolving subvol=PATH.
 *
 * Key idea: node ids are computed, not allocated: objectid O of the mounted subvolume is node id O (its root
 * directory is node id 1), objectid O < 2^48 of subvolume S < 2^15 is (S << 48) | O, which lies in
 * [2^48, 2^63). Only pairs outside these ranges go through a table, whose numbers start at 2^63; the table is
 * one open-addressing hash holding each pair twice, once keyed by the pair and once by its node id.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "fs/meta.h"
#include "util/util.h"

#define DIRECT_OBJ_LIMIT (1ULL << 48)
#define DIRECT_ROOT_LIMIT (1ULL << 15)
#define TABLE_BASE (1ULL << 63)
#define TABLE_MAX_PAIRS (1ULL << 26)
#define ROOT_CACHE_SLOTS 1024
#define MAX_SUBVOL_DEPTH 4096

/* ---------------- node ids ---------------- */

enum { MAP_EMPTY, MAP_BY_PAIR, MAP_BY_NODE };

struct bf_ino_map_entry {
	uint64_t key_a, key_b; /* (root, objectid) or (nodeid, 0) */
	uint64_t val_a, val_b; /* nodeid, or (root, objectid) */
	uint8_t kind;
};

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	return x ^ (x >> 33);
}

static size_t map_slot(const struct bf_fs *fs, uint8_t kind, uint64_t a, uint64_t b)
{
	size_t mask = fs->ino_map_cap - 1;
	size_t i = (size_t)mix64(a ^ mix64(b + kind)) & mask;
	while (fs->ino_map[i].kind != MAP_EMPTY &&
	       !(fs->ino_map[i].kind == kind && fs->ino_map[i].key_a == a && fs->ino_map[i].key_b == b))
		i = (i + 1) & mask;
	return i;
}

static void map_put(struct bf_fs *fs, uint8_t kind, uint64_t a, uint64_t b, uint64_t va, uint64_t vb)
{
	struct bf_ino_map_entry *e = &fs->ino_map[map_slot(fs, kind, a, b)];
	*e = (struct bf_ino_map_entry){ a, b, va, vb, kind };
	fs->ino_map_len++;
}

static int map_grow(struct bf_fs *fs)
{
	size_t ncap = fs->ino_map_cap ? fs->ino_map_cap * 2 : 64;
	struct bf_ino_map_entry *old = fs->ino_map, *n = calloc(ncap, sizeof(*n));
	if (!n)
		return -ENOMEM;
	size_t ocap = fs->ino_map_cap;
	fs->ino_map = n;
	fs->ino_map_cap = ncap;
	fs->ino_map_len = 0;
	for (size_t i = 0; i < ocap; i++)
		if (old[i].kind != MAP_EMPTY)
			map_put(fs, old[i].kind, old[i].key_a, old[i].key_b, old[i].val_a, old[i].val_b);
	free(old);
	return 0;
}

/* The table's node id for (root, objectid), created on first use; 0 if out of memory or full. */
static uint64_t map_nodeid(struct bf_fs *fs, uint64_t root, uint64_t objectid)
{
	uint64_t id = 0;
	pthread_mutex_lock(&fs->ino_map_lock);
	if (fs->ino_map_cap) {
		const struct bf_ino_map_entry *e = &fs->ino_map[map_slot(fs, MAP_BY_PAIR, root, objectid)];
		if (e->kind == MAP_BY_PAIR) {
			id = e->val_a;
			goto out;
		}
	}
	if (fs->ino_map_len / 2 >= TABLE_MAX_PAIRS)
		goto out;
	if ((fs->ino_map_len + 2) * 2 > fs->ino_map_cap && map_grow(fs))
		goto out;
	id = TABLE_BASE + fs->ino_map_len / 2;
	map_put(fs, MAP_BY_PAIR, root, objectid, id, 0);
	map_put(fs, MAP_BY_NODE, id, 0, root, objectid);
out:
	pthread_mutex_unlock(&fs->ino_map_lock);
	return id;
}

static int map_split(struct bf_fs *fs, uint64_t nodeid, uint64_t *root, uint64_t *objectid)
{
	int r = -ESTALE;
	pthread_mutex_lock(&fs->ino_map_lock);
	if (fs->ino_map_cap) {
		const struct bf_ino_map_entry *e = &fs->ino_map[map_slot(fs, MAP_BY_NODE, nodeid, 0)];
		if (e->kind == MAP_BY_NODE) {
			*root = e->val_a;
			*objectid = e->val_b;
			r = 0;
		}
	}
	pthread_mutex_unlock(&fs->ino_map_lock);
	return r;
}

void bf_ino_map_free(struct bf_fs *fs)
{
	free(fs->ino_map);
	fs->ino_map = NULL;
	fs->ino_map_len = fs->ino_map_cap = 0;
}

uint64_t bf_nodeid_make(struct bf_fs *fs, uint64_t root, uint64_t objectid)
{
	bool small_obj = objectid >= 2 && objectid < DIRECT_OBJ_LIMIT;
	if (root == fs->mount_root && small_obj)
		return objectid == fs->mount_dir ? BF_ROOT_NODEID : objectid;
	if (root != fs->mount_root && root >= 1 && root < DIRECT_ROOT_LIMIT && small_obj)
		return (root << 48) | objectid;
	return map_nodeid(fs, root, objectid);
}

int bf_nodeid_split(struct bf_fs *fs, uint64_t nodeid, uint64_t *root, uint64_t *objectid)
{
	if (nodeid == BF_ROOT_NODEID) {
		*root = fs->mount_root;
		*objectid = fs->mount_dir;
		return 0;
	}
	if (nodeid >= TABLE_BASE)
		return map_split(fs, nodeid, root, objectid);
	uint64_t r = nodeid >> 48, o = nodeid & (DIRECT_OBJ_LIMIT - 1);
	if (r == 0 && o >= 2) {
		*root = fs->mount_root;
		*objectid = o;
		return 0;
	}
	if (r == 0 || r == fs->mount_root || !bf_is_fs_tree(r) || o < 2)
		return -ESTALE;
	*root = r;
	*objectid = o;
	return 0;
}

uint64_t bf_st_ino(struct bf_fs *fs, uint64_t root, uint64_t objectid)
{
	if (root == fs->mount_root && objectid == fs->mount_dir)
		return objectid;
	return bf_nodeid_make(fs, root, objectid);
}

/* ---------------- subvolume roots ---------------- */

struct root_slot {
	uint64_t id;
	struct bf_root root;
	bool valid;
};

struct bf_root_cache {
	pthread_mutex_t lock;
	struct root_slot slots[ROOT_CACHE_SLOTS];
};

int bf_root_cache_new(struct bf_root_cache **out)
{
	struct bf_root_cache *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	pthread_mutex_init(&c->lock, NULL);
	*out = c;
	return 0;
}

void bf_root_cache_free(struct bf_root_cache *c)
{
	if (!c)
		return;
	pthread_mutex_destroy(&c->lock);
	free(c);
}

bool bf_is_fs_tree(uint64_t id)
{
	return id == BF_FS_TREE_OBJECTID || (id >= BF_FIRST_FREE_OBJECTID && id <= BF_LAST_FREE_OBJECTID);
}

int bf_fs_root(struct bf_fs *fs, uint64_t id, struct bf_root *out)
{
	if (!bf_is_fs_tree(id))
		return -ENOENT;
	/* On a read-write mount, a tree changed since mount has its live root in the journal. */
	if (fs->fi->journal && bf_journal_root(fs->fi, id, out) == 0)
		return 0;
	struct root_slot *s = &fs->roots->slots[mix64(id) % ROOT_CACHE_SLOTS];
	pthread_mutex_lock(&fs->roots->lock);
	bool hit = s->valid && s->id == id;
	if (hit)
		*out = s->root;
	pthread_mutex_unlock(&fs->roots->lock);
	if (hit)
		return 0;

	struct bf_root_item item;
	int r = bf_find_root(fs->fi, id, out, &item);
	if (r)
		return r;
	if (get32(item.refs) == 0) /* unlinked, waiting for the cleaner: the kernel refuses it too */
		return -ENOENT;
	pthread_mutex_lock(&fs->roots->lock);
	*s = (struct root_slot){ id, *out, true };
	pthread_mutex_unlock(&fs->roots->lock);
	return 0;
}

/* ---------------- ROOT_REF / ROOT_BACKREF ---------------- */

/* Parse a ROOT_REF / ROOT_BACKREF item: the ref header and its name must lie inside the item. */
static int parse_root_ref(const struct bf_key *k, const uint8_t *data, uint32_t size, uint64_t *dirid,
			  const char **name, uint16_t *name_len)
{
	const struct bf_root_ref *ref = (const void *)data;
	if (size < sizeof(*ref) || get16(ref->name_len) > size - sizeof(*ref))
		return bf_corrupt(BF_ROOT_TREE_OBJECTID, k->objectid, k,
				  "root ref of %u bytes does not hold its header and name", size);
	*dirid = get64(ref->dirid);
	*name = (const char *)(ref + 1);
	*name_len = get16(ref->name_len);
	return 0;
}

int bf_subvol_entry(struct bf_fs *fs, uint64_t parent_root, uint64_t dir, const char *name, size_t len,
		    uint64_t subvol, struct bf_target *t)
{
	struct bf_key key = { parent_root, BF_ROOT_REF_KEY, subvol };
	struct bf_path p;
	bf_path_init(&p, fs->env);
	int r = bf_search(fs->env, &fs->fi->tree_root, &key, &p);
	bool confirmed = false;
	if (r == 0) {
		uint32_t size;
		const uint8_t *data = bf_path_item(&p, &size);
		uint64_t dirid;
		const char *rname;
		uint16_t rlen;
		r = parse_root_ref(&key, data, size, &dirid, &rname, &rlen);
		confirmed = !r && dirid == dir && rlen == len && memcmp(rname, name, len) == 0;
	}
	bf_path_release(&p);
	if (r < 0)
		return r;
	struct bf_root root;
	if (confirmed) {
		r = bf_fs_root(fs, subvol, &root);
		if (r && r != -ENOENT)
			return r;
		confirmed = r == 0;
	}
	if (confirmed)
		*t = (struct bf_target){ subvol, BF_SUBVOL_ROOT_DIR, BF_FT_DIR };
	else
		*t = (struct bf_target){ parent_root, BF_EMPTY_SUBVOL_DIR_OBJECTID, BF_FT_DIR };
	return 0;
}

int bf_subvol_parent(struct bf_fs *fs, uint64_t id, uint64_t *parent, uint64_t *dirid)
{
	struct bf_key key = { id, BF_ROOT_BACKREF_KEY, 0 };
	struct bf_path p;
	bf_path_init(&p, fs->env);
	int r = bf_search(fs->env, &fs->fi->tree_root, &key, &p);
	if (r >= 0) {
		r = -ENOENT;
		struct bf_key k = bf_path_valid(&p) ? bf_path_key(&p) : (struct bf_key){ 0, 0, 0 };
		if (k.objectid == id && k.type == BF_ROOT_BACKREF_KEY) {
			uint32_t size;
			const uint8_t *data = bf_path_item(&p, &size);
			const char *name;
			uint16_t len;
			r = parse_root_ref(&k, data, size, dirid, &name, &len);
			*parent = k.offset;
		}
	}
	bf_path_release(&p);
	return r;
}

/* ---------------- subvol=PATH ---------------- */

/* Follow one path component from *t (a directory). */
static int path_step(struct bf_fs *fs, const char *path, const char *comp, size_t len, struct bf_target *t,
		     char *err, size_t errlen)
{
	if (t->type != BF_FT_DIR)
		return bf_err(err, errlen, -ENOTDIR, "subvol=%s: a component before '%.*s' is not a directory", path,
			      (int)len, comp);
	int r = bf_dir_find(fs, t->root, t->objectid, comp, len, t);
	if (r == -ENOENT)
		return bf_err(err, errlen, r, "subvol=%s: '%.*s' does not exist (list subvolumes with 'btrfs subvolume "
			      "list' on a kernel mount, or use subvolid=)", path, (int)len, comp);
	if (r)
		return bf_err(err, errlen, r, "subvol=%s: cannot look up '%.*s': %s", path, (int)len, comp,
			      strerror(-r));
	if (t->type == BF_FT_SYMLINK)
		return bf_err(err, errlen, -ELOOP, "subvol=%s: '%.*s' is a symbolic link; give the path it points to",
			      path, (int)len, comp);
	return 0;
}

int bf_subvol_resolve_path(struct bf_fs *fs, const char *path, uint64_t *id, char *err, size_t errlen)
{
	struct bf_target t = { BF_FS_TREE_OBJECTID, BF_SUBVOL_ROOT_DIR, BF_FT_DIR };
	const char *s = path;
	for (int n = 0; *s; n++) {
		while (*s == '/')
			s++;
		size_t len = strcspn(s, "/");
		if (len == 0)
			break;
		if (n >= MAX_SUBVOL_DEPTH)
			return bf_err(err, errlen, -ELOOP, "subvol=%s: too many path components", path);
		int r = path_step(fs, path, s, len, &t, err, errlen);
		if (r)
			return r;
		s += len;
	}
	if (t.objectid != BF_SUBVOL_ROOT_DIR)
		return bf_err(err, errlen, -EINVAL, "subvol=%s is not a subvolume (it is a plain directory); give the "
			      "path of a subvolume or use subvolid=", path);
	*id = t.root;
	return 0;
}
