/*
 * journal/journal.h - superblocks and opening a filesystem; later, transactions, commit and the log tree.
 *
 * Owns: reading and validating superblocks (primary and copies, newest valid generation wins), matching the
 * given devices into one volume, bootstrapping the chunk map (system chunk array, then the chunk tree), and
 * finding the roots of the global trees. Later: transactions, commit, and the log tree and its replay.
 *
 * Key idea: open is a fixed sequence in which each step only trusts what earlier steps verified:
 * superblock (checksum, magic, sizes, features) -> devices (fsid, devid, uuid) -> system chunks -> chunk tree
 * -> missing-device check -> root tree -> global roots. Any failure stops the open with a message that says
 * what failed, where, and what to do.
 */
#ifndef BF_JOURNAL_H
#define BF_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "alloc/alloc.h"
#include "btree/btree.h"
#include "btree/format.h"

/* Read the superblock copies of one device and return the valid one with the highest generation in *out.
   *copy gets its index (0 primary, 1, 2). A bad primary with a good copy logs a warning naming the copy used.
   -EINVAL: no valid superblock (message says why for the primary). */
int bf_super_read(int fd, uint64_t devsize, struct bf_super *out, int *copy, char *err, size_t errlen);
/* Check one superblock image found at byte offset `bytenr`: checksum, magic, bytenr, sizes (sectorsize and
   nodesize powers of two within 4K..64K, nodesize >= sectorsize), sys_chunk_array_size, levels, csum type,
   incompat features (an unknown bit is named in the message). */
int bf_super_check(const struct bf_super *sb, uint64_t bytenr, char *err, size_t errlen);
/* "mixed-bg, no-holes, ..." names for the feature bits set in flags (for messages and the inspector). */
void bf_incompat_names(uint64_t flags, char *buf, size_t len);
void bf_compat_ro_names(uint64_t flags, char *buf, size_t len);

struct bf_open_opts {
	const char *const *paths; /* devices or image files */
	int npaths;
	bool degraded;
	bool writable;
	size_t cache_bytes; /* tree-block cache cap; 0 = default */
};

/* An opened filesystem: the superblock in use, the volume and the roots of the global trees. */
struct bf_fsinfo {
	struct bf_super super;
	struct bf_volume vol;
	struct bf_tree_env env;
	uint64_t incompat, compat_ro, generation;
	uint32_t sectorsize, nodesize;
	unsigned csum_type;
	int csum_size;
	struct bf_root tree_root, chunk_root;
	struct bf_root extent_root, dev_root, csum_root, uuid_root, free_space_root, block_group_root;
	bool has_csum_root, has_uuid_root, has_free_space_root, has_block_group_root;
	bool readonly;
	uint64_t log_root; /* superblock's log_root (0: none) */
};

int bf_fsinfo_open(const struct bf_open_opts *o, struct bf_fsinfo **out, char *err, size_t errlen);
void bf_fsinfo_close(struct bf_fsinfo *fi);

/* Find a tree's root item in the root tree (the newest: highest key offset for that objectid).
   Returns 0, -ENOENT, or -EIO/-EUCLEAN. item (may be NULL) gets the root item, zero-filled past a legacy
   item's end. */
int bf_find_root(struct bf_fsinfo *fi, uint64_t objectid, struct bf_root *root, struct bf_root_item *item);

#endif
