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
	/* open.writable asks for a read-write mount: the journal is opened and orphans are cleaned up. An image
	   that must stay read-only (journal/journal.h, bf_journal_open) is opened read-only with a warning naming
	   why; bf_fs_writable tells which it became. */
	unsigned commit_interval; /* seconds; 0 = 30 */
};

int bf_fs_open(const struct bf_fs_opts *o, struct bf_fs **out, char *err, size_t errlen);
/* Locking on read-write mounts: the read calls below (getattr, lookup, readlink, readdir, open_file, read,
   getxattr, listxattr, statfs) run under the shared lock (bf_fs_rdlock ... bf_fs_unlock; many at once); the
   change calls further down take the exclusive lock themselves, so a caller never holds the shared lock across
   one of them; bf_fs_release_file takes no lock (it may take the exclusive one to delete an unlinked file). On
   read-only mounts the lock is free and harmless. */
void bf_fs_rdlock(struct bf_fs *fs);
void bf_fs_unlock(struct bf_fs *fs);
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

/* ================= changes (read-write mounts: fs/namei.c, fs/wattr.c, fs/wtxn.c, fs/write.c) =================
 * Each call does what the kernel's btrfs does for the same VFS call (fs/btrfs/inode.c, xattr.c, acl.c) and
 * leaves the same items: entries (DIR_ITEM with collision chains, DIR_INDEX from the directory's counter), back
 * references (INODE_REF, INODE_EXTREF when the INODE_REF item is full), directory sizes (twice the name
 * lengths), link counts (1 for directories), times, transid and sequence, orphan items for files unlinked while
 * open. The caller (the FUSE layer, with the kernel's default_permissions) has made the VFS's permission and
 * sticky-bit checks. All return -EROFS on a read-only mount or after a failed commit turned the mount read-only
 * (the log says why), and -EPERM for what btrfs-fuse does not do yet (subvolume entries: rename or removal). */
bool bf_fs_writable(const struct bf_fs *fs);

/* Who asks: the caller's fsuid, fsgid and groups (setgid rules), and for new inodes the umask, applied here
   when acl is on (the kernel then leaves it to the filesystem; a parent's default ACL replaces it). */
struct bf_cred {
	uint32_t uid, gid;
	uint32_t umask;
	bool acl;
	const uint32_t *groups;
	size_t ngroups;
};

/* A new or newly linked name: its node id, generation and attributes (as bf_fs_lookup gives them). */
struct bf_entry {
	uint64_t nodeid, generation;
	struct stat st;
};

/* mknod(2) and creat(2): mode holds the type (S_IFREG, S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK); rdev for devices. */
int bf_fs_mknod(struct bf_fs *fs, uint64_t parent, const char *name, mode_t mode, dev_t rdev,
		const struct bf_cred *c, struct bf_entry *out);
int bf_fs_mkdir(struct bf_fs *fs, uint64_t parent, const char *name, mode_t mode, const struct bf_cred *c,
		struct bf_entry *out);
int bf_fs_symlink(struct bf_fs *fs, uint64_t parent, const char *name, const char *target, const struct bf_cred *c,
		  struct bf_entry *out);
int bf_fs_link(struct bf_fs *fs, uint64_t nodeid, uint64_t newparent, const char *newname, struct bf_entry *out);
int bf_fs_unlink(struct bf_fs *fs, uint64_t parent, const char *name);
int bf_fs_rmdir(struct bf_fs *fs, uint64_t parent, const char *name);
#define BF_RENAME_NOREPLACE 1u /* the values of RENAME_NOREPLACE and RENAME_EXCHANGE */
#define BF_RENAME_EXCHANGE 2u
int bf_fs_rename(struct bf_fs *fs, uint64_t parent, const char *name, uint64_t newparent, const char *newname,
		 unsigned flags);

/* setattr: the fields named in valid. Times: explicit values, or *_NOW for the current time; ctime becomes now
   on any change unless BF_SET_CTIME gives it. BF_SET_SIZE on regular files only (truncate). */
#define BF_SET_MODE (1u << 0)
#define BF_SET_UID (1u << 1)
#define BF_SET_GID (1u << 2)
#define BF_SET_SIZE (1u << 3)
#define BF_SET_ATIME (1u << 4)
#define BF_SET_MTIME (1u << 5)
#define BF_SET_ATIME_NOW (1u << 6)
#define BF_SET_MTIME_NOW (1u << 7)
#define BF_SET_CTIME (1u << 8)
struct bf_setattr {
	unsigned valid;
	mode_t mode;
	uint32_t uid, gid;
	uint64_t size;
	struct timespec atime, mtime, ctime;
};
/* st gets the attributes after the change. */
int bf_fs_setattr(struct bf_fs *fs, uint64_t nodeid, const struct bf_setattr *a, struct stat *st);
/* flags: XATTR_CREATE, XATTR_REPLACE. Name and value together must fit one leaf item (the kernel's
   BTRFS_MAX_XATTR_SIZE: -ENOSPC beyond); names outside user., trusted., security., system.posix_acl_access,
   system.posix_acl_default and btrfs. are -EOPNOTSUPP. */
int bf_fs_setxattr(struct bf_fs *fs, uint64_t nodeid, const char *name, const void *value, size_t size, int flags);
int bf_fs_removexattr(struct bf_fs *fs, uint64_t nodeid, const char *name);

/* May nodeid be opened for writing? -EROFS on a read-only mount or in a read-only snapshot, -EPERM for an
   immutable inode, -EACCES for btrfs's read-only inode flag (btrfs_permission). */
int bf_fs_may_write(struct bf_fs *fs, uint64_t nodeid);
/* write(2) on a file opened with bf_fs_open_file: returns size or a negative errno (the data is buffered and
   written out at the next commit, as the kernel's page cache and delayed allocation). */
ssize_t bf_fs_write(struct bf_fs *fs, struct bf_file *f, const void *buf, size_t size, uint64_t off);
/* fsync / fdatasync / fsyncdir: the inode's items (a directory's with the changed files it names) go into the
   log tree and the log is written (fs/fsync_log.c), or, where a log cannot say the change safely, a full
   commit; nothing when the inode is unchanged since the last commit. */
int bf_fs_fsync(struct bf_fs *fs, uint64_t nodeid, bool datasync);
int bf_fs_sync(struct bf_fs *fs);

#endif
