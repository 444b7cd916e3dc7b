/*
 * fs/wmeta.h - what the namespace write files of fs/ share (fs/wtxn.c, fs/winode.c, fs/wdir.c, fs/namei.c,
 * fs/wattr.c, fs/wacl.c): inodes being changed, directory entries and inode back references, orphans.
 *
 * Owns: struct bf_wino (an inode loaded for a change), the directory-entry and back-reference calls (the kernel's
 * dir-item.c and inode-item.c), inode creation and deletion, and the per-mount write state (struct bf_nstate).
 * Key idea: a change loads every inode it touches once into a struct bf_wino, applies the kernel's updates to
 * them in memory in the kernel's order (sizes, link counts, times, sequence), and writes each changed inode item
 * once at the end; within one transaction that leaves exactly the items the kernel's sequence of
 * btrfs_update_inode calls leaves. Checks come first: a call named *_check or *_find never changes a tree.
 */
#ifndef BF_FS_WMETA_H
#define BF_FS_WMETA_H

#include "fs/meta.h"

/* ---- the per-mount write state (fs/wtxn.c) ---- */
#define BF_DIRIDX_SLOTS 4096
struct bf_diridx {
	uint64_t root, dir, next; /* the next DIR_INDEX of (root, dir), as the kernel's in-memory index_cnt */
	bool valid;
};
struct bf_subvol_w {
	uint64_t root;
	uint64_t next_ino; /* 0 until found */
	bool cleaned;      /* orphan cleanup done */
};
struct bf_openent {
	uint64_t root, ino;
	uint32_t count;    /* open files */
	bool orphan;       /* no links left: delete at the last release */
};
struct bf_nstate {
	struct bf_diridx diridx[BF_DIRIDX_SLOTS];
	struct bf_subvol_w *subvols;
	size_t nsubvols, subvols_cap;
	pthread_mutex_t open_lock; /* guards open[] (opens and releases run under the shared lock) */
	struct bf_openent *open;
	size_t nopen, open_cap;
	/* The last transaction that removed a directory entry (unlink, rmdir, rename): fsync then commits instead of
	   logging (the kernel's last_unlink_trans rule, here for the whole mount; fs/fsync_log.c). */
	uint64_t last_unlink_trans;
};
/* The subvolume's write state (created on first use). */
struct bf_subvol_w *bf_subvol_w(struct bf_fs *fs, uint64_t root);

/* An inode loaded for a change. */
struct bf_wino {
	uint64_t root, ino;
	struct bf_inode_item ii;
	bool dirty; /* to be written by bf_wino_save */
};

/* ---- inodes (fs/winode.c) ---- */
/* Load an inode to change it (or a directory to change its entries): -EPERM for an immutable inode (chattr +i)
   or the placeholder directory of an unreachable subvolume, -EROFS in a read-only snapshot. */
int bf_wino_load(struct bf_wop *op, uint64_t root, uint64_t ino, struct bf_wino *w);
/* Write w's inode item if dirty. */
int bf_wino_save(struct bf_wop *op, struct bf_wino *w);
uint32_t bf_wino_mode(const struct bf_wino *w);
uint8_t bf_ftype_of_mode(uint32_t mode);

/* The next free objectid of subvolume root (above the highest in use, found once per mount as the kernel's
   btrfs_init_root_free_objectid). -ENOSPC when exhausted. */
int bf_alloc_objectid(struct bf_wop *op, uint64_t root, uint64_t *ino);
/* Insert the INODE_ITEM of new inode w and its first INODE_REF (name in directory parent, index), as one batch
   (btrfs_create_new_inode). */
int bf_inode_insert(struct bf_wop *op, struct bf_wino *w, uint64_t parent, const char *name, size_t len,
		    uint64_t index);
/* The last link of w went: delete the inode now, or, while it is open, keep it with an ORPHAN_ITEM until the
   last release (btrfs_orphan_add + evict). */
int bf_inode_unlinked(struct bf_wop *op, struct bf_wino *w);
/* Delete every item of the inode (file extents through bf_data_evict) and its orphan item (btrfs_evict_inode). */
int bf_inode_evict(struct bf_wop *op, uint64_t root, uint64_t ino);
int bf_orphan_add(struct bf_wop *op, uint64_t root, uint64_t ino);
/* 0, or -ENOENT if there was none. */
int bf_orphan_del(struct bf_wop *op, uint64_t root, uint64_t ino);
/* Delete the inodes left by ORPHAN_ITEMs of subvolume root (btrfs_orphan_cleanup): those without links are
   evicted, the orphan items of the others dropped. Once per subvolume and mount. */
int bf_orphan_cleanup(struct bf_wop *op, uint64_t root);
/* True while (root, ino) has open files; *orphan marks it for deletion at the last release. */
bool bf_open_mark_orphan(struct bf_fs *fs, uint64_t root, uint64_t ino);
void bf_open_unmark_orphan(struct bf_fs *fs, uint64_t root, uint64_t ino);

/* ---- directory entries and back references (fs/wdir.c) ---- */
/* The record of name in a DIR_ITEM / DIR_INDEX / XATTR_ITEM item, or -ENOENT. *pos, *len: where it is. */
int bf_rec_find(uint64_t root, const struct bf_key *k, const uint8_t *item, uint32_t size, const char *name,
		size_t namelen, struct bf_dir_rec *rec, uint32_t *pos, uint32_t *reclen);
/* Remove the record at [pos, pos + len) of the path's item: the whole item if it is the only one (the kernel's
   btrfs_delete_one_dir_name). p is released. */
int bf_rec_remove(struct bf_wop *op, struct bf_root *root, struct bf_path *p, uint32_t pos, uint32_t len);

/* Append rec (len bytes) to the item at key, or insert the item with it: the kernel's insert_with_overflow. The
   caller checked that the item can take it (old size + len + an item header within the largest item). */
int bf_item_append(struct bf_wop *op, struct bf_root *tree, const struct bf_key *key, const void *rec, uint32_t len);

/* What a new entry name in directory dir meets: -EEXIST if the name is there, -EOVERFLOW if its DIR_ITEM cannot
   take another colliding name (btrfs_check_dir_item_collision), -ENAMETOOLONG / -EINVAL for a bad name. */
int bf_entry_check(struct bf_wop *op, uint64_t root, uint64_t dir, const char *name, size_t len);
/* The next DIR_INDEX of directory dir (last index + 1, from 2 in an empty directory; the kernel's index_cnt). */
int bf_dir_index_next(struct bf_wop *op, uint64_t root, uint64_t dir, uint64_t *index);
/* A new directory starts counting at 2. */
void bf_dir_index_init(struct bf_fs *fs, uint64_t root, uint64_t dir);
/* DIR_ITEM (appended to a colliding name's item) and DIR_INDEX for name -> w in directory d; d's size grows by
   twice the name, its sequence, mtime and ctime move (btrfs_add_link without the back reference). */
int bf_entry_add(struct bf_wop *op, struct bf_wino *d, const char *name, size_t len, const struct bf_wino *w,
		 uint64_t index);
/* Remove the DIR_ITEM record and the DIR_INDEX item of name in d (index from the back reference); d shrinks,
   its sequence, mtime and ctime move (the directory half of __btrfs_unlink_inode). */
int bf_entry_del(struct bf_wop *op, struct bf_wino *d, const char *name, size_t len, uint64_t index);

/* Back references. bf_iref_find: the index of w's reference (parent, name), -ENOENT if none. bf_iref_check: can
   another reference (parent, name) be added (an INODE_REF, or an INODE_EXTREF when the INODE_REF item is full and
   the filesystem has extended refs)? -EMLINK if not, -EEXIST if it is there. */
int bf_iref_find(struct bf_wop *op, uint64_t root, uint64_t ino, uint64_t parent, const char *name, size_t len,
		 uint64_t *index);
int bf_iref_check(struct bf_wop *op, uint64_t root, uint64_t ino, uint64_t parent, const char *name, size_t len);
int bf_iref_add(struct bf_wop *op, uint64_t root, uint64_t ino, uint64_t parent, const char *name, size_t len,
		uint64_t index);
int bf_iref_del(struct bf_wop *op, uint64_t root, uint64_t ino, uint64_t parent, const char *name, size_t len);

/* ---- names and credentials ---- */
/* A name a directory entry may have: 1..255 bytes, no '/' or NUL, not "." or "..". */
int bf_name_check(const char *name, size_t len);
bool bf_cred_in_group(const struct bf_cred *c, uint32_t gid);

/* ---- xattrs written by other calls (fs/wattr.c, fs/wacl.c) ---- */
/* The kernel's btrfs_setxattr without the inode update: value NULL removes. flags XATTR_CREATE / XATTR_REPLACE. */
int bf_xattr_set(struct bf_wop *op, uint64_t root, uint64_t ino, const char *name, const void *value, size_t size,
		 int flags);
/* Read an xattr of (root, ino) from the live tree: length, -ENODATA, or -ERANGE if size is too small. */
ssize_t bf_xattr_get(struct bf_fs *fs, uint64_t root, uint64_t ino, const char *name, void *buf, size_t size);
/* New inode w in directory d: inherit the btrfs.compression property, and with ACLs on, the default ACL of d
   (posix_acl_create; *mode is masked by it or by cred's umask). Called before w is inserted for the mode, after
   for the xattrs: bf_acl_create_mode / bf_new_inode_xattrs. */
int bf_acl_create_mode(struct bf_wop *op, const struct bf_wino *d, uint32_t *mode, const struct bf_cred *c,
		       void **default_acl, size_t *dlen, void **access_acl, size_t *alen);
int bf_new_inode_xattrs(struct bf_wop *op, const struct bf_wino *d, const struct bf_wino *w, const void *dacl,
			size_t dlen, const void *aacl, size_t alen);
/* setxattr of system.posix_acl_access: the mode follows the ACL (posix_acl_update_mode); an ACL the mode says
   all of is not stored (*value becomes NULL). */
int bf_acl_access_set(struct bf_wop *op, struct bf_wino *w, const void **value, size_t *size);
/* chmod: keep an access ACL in step with the new mode (posix_acl_chmod). */
int bf_acl_chmod(struct bf_wop *op, struct bf_wino *w);

#endif
