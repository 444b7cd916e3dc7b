/*
 * fs/internal.h - what the files of fs/ share with each other (not used outside fs/).
 *
 * Owns: struct bf_fs, the node-id mapping, the subvolume-root cache, inode loading, and the data-read helpers.
 * Key idea: an inode is named by (root id, objectid); everything else is derived from items in that root's tree.
 */
#ifndef BF_FS_INTERNAL_H
#define BF_FS_INTERNAL_H

#include <pthread.h>

#include "btree/btree.h"
#include "fs/fs.h"
#include "journal/journal.h"

struct bf_root_cache; /* fs/subvol.c */
struct bf_inode_cache; /* fs/inode.c */

struct bf_fs {
	struct bf_fsinfo *fi;
	struct bf_tree_env *env; /* &fi->env */
	uint64_t mount_root;     /* subvolume id at the mount point */
	uint64_t mount_dir;      /* objectid of the directory at the mount point inside mount_root (256) */
	struct bf_root_cache *roots;
	struct bf_inode_cache *icache;
	pthread_mutex_t ino_map_lock; /* for the rare large-id st_ino table */
	struct bf_ino_map_entry *ino_map;
	size_t ino_map_len, ino_map_cap;
};

/* ---- node ids (fs/subvol.c) ---- */
uint64_t bf_nodeid_make(struct bf_fs *fs, uint64_t root, uint64_t objectid);
int bf_nodeid_split(struct bf_fs *fs, uint64_t nodeid, uint64_t *root, uint64_t *objectid); /* -ESTALE if unknown */
/* st_ino for (root, objectid): equal to the node id except for the mount root directory (1 -> 256). */
uint64_t bf_st_ino(struct bf_fs *fs, uint64_t root, uint64_t objectid);

/* ---- subvolume roots (fs/subvol.c) ---- */
/* The root of subvolume tree `id` (cached). -ENOENT if there is no such subvolume. */
int bf_fs_root(struct bf_fs *fs, uint64_t id, struct bf_root *out);

/* ---- inodes (fs/inode.c) ---- */
int bf_inode_load(struct bf_fs *fs, uint64_t root, uint64_t objectid, struct bf_inode_item *out);
void bf_inode_to_stat(struct bf_fs *fs, uint64_t root, uint64_t objectid, const struct bf_inode_item *ii,
		      struct stat *st);

/* ---- file data (fs/file.c, fs/datacsum.c) ---- */
/* Read [off, off+len) of the file's data (inode already loaded; len clipped by the caller to i_size) into buf:
   holes and prealloc read as zeros, inline and compressed extents decoded, checksums verified per sector with
   retry on other mirrors. Returns len or a negative errno. Used by bf_fs_read and readlink. */
ssize_t bf_file_read_range(struct bf_fs *fs, const struct bf_root *root, uint64_t objectid,
			   const struct bf_inode_item *ii, void *buf, size_t len, uint64_t off);

#endif
