/*
 * fs/datacsum.h - reading file data from the volume with data-checksum verification and read repair
 * (fs/datacsum.c). Private to fs/: only fs/file.c calls it.
 *
 * Key idea: the caller names a disk range and where it belongs (subvolume, inode, file offset) only so that
 * messages can point a person at the damaged file; the range itself is read, checked sector by sector against
 * the csum tree and, where a sector fails, taken from the first other mirror whose copy verifies.
 */
#ifndef BF_FS_DATACSUM_H
#define BF_FS_DATACSUM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fs/internal.h"

/* Where a disk range belongs, for messages. */
struct bf_data_loc {
	uint64_t root;       /* subvolume id */
	uint64_t ino;        /* inode objectid */
	uint64_t logical;    /* a disk address ... */
	uint64_t file_off;   /* ... and the file offset it holds */
	bool compressed;     /* compressed extent: every sector is reported at file_off (the extent's start) */
};

/* Largest piece verified at once (one csum-tree walk, one device read per piece). */
#define BF_DATA_PIECE (1024u * 1024u)

/*
 * Read [logical, logical + len) into buf.
 * verify = false (NODATASUM inode): the bytes are returned as read; a device error on one mirror is retried on
 * the others.
 * verify = true: logical and len must be sector-aligned (else -EINVAL). Every sector is checked against its
 * checksum in the csum tree; a sector that fails is re-read from mirrors 2..bf_vol_num_copies and the first copy
 * that verifies is used (one warning per repaired run names the mirror). A sector without any checksum item
 * fails like a mismatch, as in the kernel (which compares against an all-zero checksum). Returns 0, -EIO (one
 * error line naming logical address, subvolume, inode, file offset, expected and found checksum), -EUCLEAN
 * (malformed csum item or no csum tree), or -ENOMEM.
 */
int bf_data_read(struct bf_fs *fs, const struct bf_data_loc *loc, uint64_t logical, void *buf, size_t len,
		 bool verify);

/* Position p for a forward walk over the items of key's (objectid, type), starting with the one that covers
   key->offset: the last such item whose offset is <= key->offset, else the first item after key (which may be
   of another objectid or type: the caller stops there). Returns 0 (p points at an item), 1 (no item there), or
   a negative errno. Release p in every case. */
int bf_fs_seek_le(struct bf_tree_env *env, const struct bf_root *root, const struct bf_key *key,
		  struct bf_path *p);

#endif
