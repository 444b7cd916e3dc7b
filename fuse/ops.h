/*
 * fuse/ops.h - what the daemon (fuse/main.c) and the FUSE operations (fuse/ops.c) share.
 *
 * Owns: the per-mount context handed to libfuse as userdata, and the table of low-level operations.
 * Key idea: the context holds only settings fixed at mount time plus the bf_fs handle; every operation is a thin
 * translation from a FUSE request to one fs/fs.h call and back (read calls under the fs layer's shared lock),
 * so no state lives here beyond the mount.
 */
#ifndef BF_FUSE_OPS_H
#define BF_FUSE_OPS_H

#define FUSE_USE_VERSION 312

#include <fuse_lowlevel.h>
#include <stdbool.h>
#include <stdint.h>

#include "fs/fs.h"
#include "fuse/loop.h"
#include "fuse/pool.h"

struct bf_fuse {
	struct bf_fs *fs;
	double timeout;                      /* entry, negative-entry and attribute timeout in seconds */
	bool rw;                             /* the filesystem is mounted read-write (bf_fs_writable at mount) */
	bool default_permissions;            /* the kernel checks permissions (mount option given) */
	bool acl;                            /* ask the kernel to evaluate POSIX ACLs (needs default_permissions) */
	uint64_t root_ino;                   /* st_ino of node 1, for readdir entries that come without a stat */
	struct fuse_conn_info_opts *conn_opts; /* -o max_readahead=, readdirplus=, ... from the command line */
	struct bf_pool *pool;                /* workers for file reads and fsync; NULL: all in the loop thread (-s) */
	struct bf_loop_opts loop;            /* -o spin=N, cpu_latency=N (fuse/loop.c) */
};

extern const struct fuse_lowlevel_ops bf_fuse_ops;

#endif
