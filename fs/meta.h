/*
 * fs/meta.h - what the metadata files of fs/ (fs.c, subvol.c, inode.c, dir.c, xattr.c, statfs.c) share.
 *
 * Owns: the parser for dir-item records (DIR_ITEM, DIR_INDEX and XATTR_ITEM items are sequences of
 * bf_dir_item headers, each followed by its name and data), the one-line corruption report, the caches'
 * constructors, and the name-to-inode steps that lookup, readdir and subvol= path resolution share.
 * Key idea: an item payload is parsed once, into records whose every byte is known to lie inside the item;
 * callers then apply the checks their key type needs (bf_dir_rec_check) and never touch raw offsets.
 */
#ifndef BF_FS_META_H
#define BF_FS_META_H

#include <stdarg.h>

#include "fs/internal.h"

/* Objectid of the placeholder directory the kernel shows where a snapshot holds the entry of a subvolume that
   is not reachable from there (a subvolume nested in the snapshotted one), or whose root is gone. */
#define BF_EMPTY_SUBVOL_DIR_OBJECTID 2ULL
/* The root directory of every subvolume tree. */
#define BF_SUBVOL_ROOT_DIR BF_FIRST_FREE_OBJECTID
#define BF_XATTR_NAME_MAX 255

/* ---- dir-item records (fs/dir.c) ---- */
struct bf_dir_rec {
	struct bf_key location;
	uint8_t type;
	const char *name;
	uint16_t name_len;
	const uint8_t *data;
	uint16_t data_len;
};
/* Parse the record at *pos of an item of `size` bytes and advance *pos. Returns 1 with *rec filled, 0 at the
   end of the item, or -EUCLEAN if the record does not fit (*why says what is wrong). */
int bf_dir_rec_next(const uint8_t *item, uint32_t size, uint32_t *pos, struct bf_dir_rec *rec, const char **why);
/* The checks the kernel's tree checker makes for a record of an item with this key: type, name and data
   lengths, location, name hash. Returns NULL if fine, else what is wrong. */
const char *bf_dir_rec_check(const struct bf_dir_rec *rec, const struct bf_key *key);

/* ---- back reference records (fs/dir.c) ---- */
/* One record of an INODE_REF item (parent from the key's offset) or INODE_EXTREF item: it starts at byte `at`
   of the item and takes `size` bytes. */
struct bf_ref_rec {
	uint64_t parent, index;
	const char *name;
	uint16_t len;
	uint32_t at, size;
};
/* Parse the record at *pos of the back reference item with key k and advance *pos: 1 with *rec, 0 at the end,
   -EUCLEAN if the record does not fit in the item. */
int bf_ref_rec_next(const struct bf_key *k, const uint8_t *item, uint32_t size, uint32_t *pos, struct bf_ref_rec *rec);

/* Log one line "corrupt metadata: subvolume S inode I item (o t off): <what>" and return -EUCLEAN. */
int bf_corrupt(uint64_t root, uint64_t ino, const struct bf_key *key, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* ---- where a name leads (fs/dir.c, fs/subvol.c) ---- */
struct bf_target {
	uint64_t root, objectid;
	uint8_t type; /* BF_FT_* from the entry */
};
/* Find `name` in directory (root, dir) without loading the target: "." and ".." included (".." of the mount
   root is the mount root). A subvolume entry leads to that subvolume's root directory, or to the placeholder
   directory (objectid 2) as the kernel does. -ENOENT if absent. */
int bf_dir_find(struct bf_fs *fs, uint64_t root, uint64_t dir, const char *name, size_t len, struct bf_target *t);
/* The parent directory of (root, dir), crossing into the parent subvolume at a subvolume root. */
int bf_dir_parent(struct bf_fs *fs, uint64_t root, uint64_t dir, struct bf_target *t);

/* Where the entry (parent_root, dir, name) with a ROOT_ITEM location `subvol` leads: (subvol, 256) if the root
   tree's ROOT_REF confirms that entry and the subvolume is alive, else the placeholder (parent_root, 2). */
int bf_subvol_entry(struct bf_fs *fs, uint64_t parent_root, uint64_t dir, const char *name, size_t len,
		    uint64_t subvol, struct bf_target *t);
/* The subvolume containing subvolume `id` and the directory it sits in (its ROOT_BACKREF). -ENOENT if none. */
int bf_subvol_parent(struct bf_fs *fs, uint64_t id, uint64_t *parent, uint64_t *dirid);
/* Resolve subvol=PATH from the top-level subvolume: *id gets the subvolume whose root PATH names. */
int bf_subvol_resolve_path(struct bf_fs *fs, const char *path, uint64_t *id, char *err, size_t errlen);
/* True for ids that name subvolume trees (5 and 256..2^64-256). */
bool bf_is_fs_tree(uint64_t id);

/* ---- caches (fs/subvol.c, fs/inode.c) ---- */
int bf_root_cache_new(struct bf_root_cache **out);
void bf_root_cache_free(struct bf_root_cache *c);
int bf_inode_cache_new(size_t max_inodes, struct bf_inode_cache **out);
void bf_inode_cache_free(struct bf_inode_cache *c);
/* Drop one inode from the cache (for the write path). */
void bf_inode_cache_forget(struct bf_fs *fs, uint64_t root, uint64_t objectid);
void bf_ino_map_free(struct bf_fs *fs);

/* ---- attributes (fs/inode.c) ---- */
/* stat of (root, objectid), including the placeholder directory. *generation (may be NULL) for FUSE. */
int bf_stat_target(struct bf_fs *fs, uint64_t root, uint64_t objectid, struct stat *st, uint64_t *generation);
/* Load an inode that must be a directory: -ENOTDIR otherwise. */
int bf_dir_load(struct bf_fs *fs, uint64_t root, uint64_t dir, struct bf_inode_item *ii);

#endif
