/*
 * fs/fs.h - the filesystem as the VFS sees it: inodes, directories, file data, xattrs, subvolumes, statfs.
 *
 * Owns: everything that gives meaning to items in subvolume trees and the csum tree, and the mapping between
 * FUSE node ids and (subvolume, inode) pairs. The FUSE front end calls only this header.
 *
 * Node ids and st_ino (see docs/ARCHITECTURE.md, "Inode numbers"):
 *   node id 1 (FUSE's root) is the root directory of the mounted subvolume.
 *   Inside the mounted subvolume, st_ino = node id = the on-disk objectid (the root directory: st_ino 256).
 *   In any other subvolume S (id < 2^15) with objectid O (< 2^48): st_ino = node id = (S << 48) | O, so no two
 *   files of the mount share an st_ino and tar, du and find never mistake subvolumes' files for hard links.
 *   Larger ids are mapped through a table to unique numbers at or above 2^63.
 *
 * Key idea: every call is stateless with respect to the kernel's lookup counts (a node id alone names the
 * inode), so forget needs no bookkeeping; caches are only for speed and are bounded.
 * Every function returns 0 or a byte count on success and a negative errno on failure.
 */
#ifndef BF_FS_H
#define BF_FS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>

#include "journal/journal.h"

#define BF_ROOT_NODEID 1

struct bf_fs;
struct bf_file;

struct bf_fs_opts {
	struct bf_open_opts open;
	const char *subvol;   /* subvol=PATH (relative to the top-level subvolume 5), or NULL */
	uint64_t subvolid;    /* subvolid=N, or 0 for none; with neither, the default subvolume is mounted */
	size_t inode_cache;   /* max cached inodes; 0 = default */
};

int bf_fs_open(const struct bf_fs_opts *o, struct bf_fs **out, char *err, size_t errlen);
void bf_fs_close(struct bf_fs *fs);
/* The subvolume id shown at the mount point. */
uint64_t bf_fs_mounted_subvol(const struct bf_fs *fs);

int bf_fs_getattr(struct bf_fs *fs, uint64_t nodeid, struct stat *st);
/* Look up name in directory parent. *generation gets the inode generation for FUSE. -ENOENT if absent. */
int bf_fs_lookup(struct bf_fs *fs, uint64_t parent, const char *name, uint64_t *nodeid, uint64_t *generation,
		 struct stat *st);
/* Copy the symlink target (not NUL-terminated) into buf; returns its full length (may exceed size). */
ssize_t bf_fs_readlink(struct bf_fs *fs, uint64_t nodeid, char *buf, size_t size);

/* Directory listing. Offsets: 0 = start, then the offset returned with each entry resumes after it.
   "." and ".." come first. cb returns non-zero to stop (the caller's buffer is full); that entry is not
   consumed. st is never NULL: with plus it is the full stat, without plus only st_ino and the file-type bits
   of st_mode (from the directory entry) are set. */
typedef int (*bf_dirent_cb)(void *ctx, const char *name, size_t namelen, uint64_t nodeid, uint64_t generation,
			    const struct stat *st, uint64_t next_off);
int bf_fs_readdir(struct bf_fs *fs, uint64_t nodeid, uint64_t off, bool plus, bf_dirent_cb cb, void *ctx);

/* Open a regular file for reading: caches what read needs. */
int bf_fs_open_file(struct bf_fs *fs, uint64_t nodeid, struct bf_file **out);
/* Read up to size bytes at off; returns the count (short only at end of file) or -EIO etc. Thread-safe: many
   reads of one file may run at once. */
ssize_t bf_fs_read(struct bf_fs *fs, struct bf_file *f, void *buf, size_t size, uint64_t off);
void bf_fs_release_file(struct bf_fs *fs, struct bf_file *f);

/* getxattr: size 0 returns the value's size; -ENODATA if absent; -ERANGE if size is too small. */
ssize_t bf_fs_getxattr(struct bf_fs *fs, uint64_t nodeid, const char *name, void *buf, size_t size);
/* listxattr: NUL-separated names; size 0 returns the size needed. */
ssize_t bf_fs_listxattr(struct bf_fs *fs, uint64_t nodeid, char *buf, size_t size);

int bf_fs_statfs(struct bf_fs *fs, struct statvfs *st);

#endif
