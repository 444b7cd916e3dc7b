/*
 * fs/datacsum.c - data checksums: reading a disk range of file data, verifying it against the csum tree, and
 * repairing it from other mirrors.
 *
 * Owns: the csum-tree lookup for data (items (EXTENT_CSUM_OBJECTID, EXTENT_CSUM_KEY, logical start) whose data is
 * one checksum per sector from that start), per-sector verification, read repair, and the messages that name a
 * damaged file.
 *
 * Key idea: a range is handled in pieces of at most BF_DATA_PIECE bytes. For each piece: one device read from
 * mirror 1, one csum-tree walk that fetches every checksum of the piece into an array, then one checksum per
 * sector. Only sectors that fail are re-read, as runs, from mirrors 2..N; each sector takes the first copy that
 * verifies. A sector for which the csum tree has no checksum fails like a mismatch: the kernel's
 * btrfs_lookup_bio_sums fills a missing checksum with zeros (only the data-relocation tree is exempt), so its
 * verification fails on every mirror. Compressed extents are verified here too: their checksums cover the
 * compressed bytes on disk, so the caller verifies before decompressing.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "btree/csum.h"
#include "fs/datacsum.h"
#include "util/util.h"

/* Sectors per piece for the smallest sector size (4 KiB); larger sectors give fewer. */
#define PIECE_SECTORS (BF_DATA_PIECE / 4096u)

enum sector_state { SEC_OK, SEC_BAD, SEC_MISSING };

/* One piece being verified. */
struct piece {
	struct bf_fs *fs;
	const struct bf_data_loc *loc;
	uint64_t logical;
	uint8_t *buf;
	unsigned nsect;
	uint32_t ss;
	unsigned csum_type;
	size_t csum_size;
	bool mirror1_failed; /* the device read of mirror 1 failed: its bytes are meaningless */
	uint8_t state[PIECE_SECTORS];
	uint8_t csums[PIECE_SECTORS * BF_CSUM_MAX];
};

static uint64_t loc_file_off(const struct bf_data_loc *loc, uint64_t logical)
{
	if (loc->compressed || logical < loc->logical)
		return loc->file_off;
	return loc->file_off + (logical - loc->logical);
}

int bf_fs_seek_le(struct bf_tree_env *env, const struct bf_root *root, const struct bf_key *key,
		  struct bf_path *p)
{
	int ret = bf_search_le(env, root, key, p);

	if (ret == -ENOENT) { /* every key is greater: start at the first one */
		bf_path_release(p);
		ret = bf_search(env, root, key, p);
		if (ret < 0)
			return ret;
		return bf_path_valid(p) ? 0 : 1;
	}
	if (ret < 0)
		return ret;
	struct bf_key k = bf_path_key(p);
	if (k.objectid == key->objectid && k.type == key->type)
		return 0;
	return bf_path_next(p);
}

/* Copy the checksums one csum item holds for sectors of the piece; mark those sectors as having one. */
static int csum_item_apply(struct piece *pc, const struct bf_key *k, const uint8_t *data, uint32_t size)
{
	uint64_t end = pc->logical + (uint64_t)pc->nsect * pc->ss;
	uint64_t item_end;

	if (size % pc->csum_size || k->offset % pc->ss ||
	    bf_add_overflow(k->offset, (uint64_t)(size / pc->csum_size) * pc->ss, &item_end)) {
		bf_log(BF_LOG_ERR,
		       "corrupt csum tree: the checksum item for disk address %llu has %u bytes (checksums are %zu "
		       "bytes each, one per %u-byte sector); run btrfs check on this filesystem",
		       (unsigned long long)k->offset, size, pc->csum_size, pc->ss);
		return -EUCLEAN;
	}
	uint64_t from = bf_max64(k->offset, pc->logical), to = bf_min64(item_end, end);
	for (uint64_t s = from; s < to; s += pc->ss) {
		size_t i = (s - pc->logical) / pc->ss, j = (s - k->offset) / pc->ss;
		memcpy(pc->csums + i * pc->csum_size, data + j * pc->csum_size, pc->csum_size);
		pc->state[i] = SEC_OK;
	}
	return 0;
}

/* Fetch every checksum of the piece with one walk of the csum tree. Sectors without one become SEC_MISSING. */
static int csum_lookup(struct piece *pc)
{
	struct bf_fsinfo *fi = pc->fs->fi;
	uint64_t end = pc->logical + (uint64_t)pc->nsect * pc->ss;
	struct bf_key key = { BF_EXTENT_CSUM_OBJECTID, BF_EXTENT_CSUM_KEY, pc->logical };
	struct bf_path p;
	int ret;

	memset(pc->state, SEC_MISSING, pc->nsect);
	bf_path_init(&p, pc->fs->env);
	ret = bf_fs_seek_le(pc->fs->env, &fi->csum_root, &key, &p);
	while (ret == 0) {
		struct bf_key k = bf_path_key(&p);
		if (k.objectid != key.objectid || k.type != key.type || k.offset >= end)
			break;
		uint32_t size;
		const uint8_t *data = bf_path_item(&p, &size);
		ret = csum_item_apply(pc, &k, data, size);
		if (ret == 0)
			ret = bf_path_next(&p);
	}
	bf_path_release(&p);
	return ret < 0 ? ret : 0;
}

static bool sector_ok(const struct piece *pc, const uint8_t *data, size_t i, uint8_t found[BF_CSUM_MAX])
{
	bf_csum(pc->csum_type, data, pc->ss, found);
	return memcmp(found, pc->csums + i * pc->csum_size, pc->csum_size) == 0;
}

/* Re-read bad sectors [i, j) from mirror m into tmp; take every sector of that copy that verifies. */
static void repair_run(struct piece *pc, unsigned i, unsigned j, int m, uint8_t *tmp)
{
	const struct bf_volume *vol = &pc->fs->fi->vol;
	uint64_t lg = pc->logical + (uint64_t)i * pc->ss;
	uint8_t found[BF_CSUM_MAX];
	unsigned fixed = 0, first = 0;

	if (bf_vol_read(vol, lg, tmp, (size_t)(j - i) * pc->ss, m) < 0)
		return;
	for (unsigned k = i; k < j; k++) {
		const uint8_t *src = tmp + (size_t)(k - i) * pc->ss;
		if (!sector_ok(pc, src, k, found))
			continue;
		memcpy(pc->buf + (size_t)k * pc->ss, src, pc->ss);
		pc->state[k] = SEC_OK;
		if (!fixed++)
			first = k;
	}
	if (fixed) {
		uint64_t at = pc->logical + (uint64_t)first * pc->ss;
		bf_log(BF_LOG_WARN, "read repair: logical %llu inode %llu (subvol %llu) offset %llu: mirror 1 %s, "
		       "using mirror %d", (unsigned long long)at, (unsigned long long)pc->loc->ino,
		       (unsigned long long)pc->loc->root, (unsigned long long)loc_file_off(pc->loc, at),
		       pc->mirror1_failed ? "read error" : "csum mismatch", m);
	}
}

/* Try mirrors 2..N for every sector still SEC_BAD, a run of adjacent bad sectors per read. */
static int repair(struct piece *pc)
{
	int copies = bf_vol_num_copies(&pc->fs->fi->vol, pc->logical);
	uint8_t *tmp = NULL;

	if (copies < 2)
		return 0;
	tmp = malloc((size_t)pc->nsect * pc->ss);
	if (!tmp)
		return -ENOMEM;
	for (int m = 2; m <= copies; m++) {
		for (unsigned i = 0; i < pc->nsect;) {
			if (pc->state[i] != SEC_BAD) {
				i++;
				continue;
			}
			unsigned j = i;
			while (j < pc->nsect && pc->state[j] == SEC_BAD)
				j++;
			repair_run(pc, i, j, m, tmp);
			i = j;
		}
	}
	free(tmp);
	return 0;
}

/* After repair: 0 if every sector verified, else one error line for the first failing sector and -EIO. */
static int report(const struct piece *pc)
{
	unsigned nfail = 0, first = 0;

	for (unsigned i = 0; i < pc->nsect; i++)
		if (pc->state[i] != SEC_OK && !nfail++)
			first = i;
	if (!nfail)
		return 0;

	uint64_t at = pc->logical + (uint64_t)first * pc->ss;
	unsigned long long ino = pc->loc->ino, root = pc->loc->root, off = loc_file_off(pc->loc, at);
	int copies = bf_vol_num_copies(&pc->fs->fi->vol, pc->logical);
	if (pc->state[first] == SEC_MISSING) {
		bf_log(BF_LOG_ERR, "missing data checksum: logical %llu inode %llu (subvol %llu) offset %llu has no "
		       "checksum in the csum tree although the file is checksummed (%u of %u sectors in this read "
		       "fail); the csum tree is damaged: run btrfs check, and restore the file from a backup",
		       (unsigned long long)at, ino, root, off, nfail, pc->nsect);
		return -EIO;
	}
	char want[2 * BF_CSUM_MAX + 1], got[2 * BF_CSUM_MAX + 1];
	uint8_t found[BF_CSUM_MAX];
	bf_csum_hex(pc->csum_type, pc->csums + (size_t)first * pc->csum_size, want, sizeof(want));
	if (pc->mirror1_failed) {
		snprintf(got, sizeof(got), "(read error)");
	} else {
		bf_csum(pc->csum_type, pc->buf + (size_t)first * pc->ss, pc->ss, found);
		bf_csum_hex(pc->csum_type, found, got, sizeof(got));
	}
	bf_log(BF_LOG_ERR, "csum mismatch: logical %llu inode %llu (subvol %llu) offset %llu: expected %s found %s "
	       "on mirror 1, and none of the %d mirror(s) has a good copy (%u of %u sectors in this read fail); "
	       "the file data there is damaged: restore the file from a backup (btrfs scrub lists damaged files)",
	       (unsigned long long)at, ino, root, off, want, got, copies < 1 ? 1 : copies, nfail, pc->nsect);
	return -EIO;
}

/* Read and verify one piece of at most PIECE_SECTORS sectors. */
static int verify_piece(struct piece *pc)
{
	uint8_t found[BF_CSUM_MAX];
	bool any_bad = false;
	int ret;

	pc->mirror1_failed =
		bf_vol_read(&pc->fs->fi->vol, pc->logical, pc->buf, (size_t)pc->nsect * pc->ss, 1) < 0;
	ret = csum_lookup(pc);
	if (ret < 0)
		return ret;
	for (unsigned i = 0; i < pc->nsect; i++) {
		if (pc->state[i] != SEC_OK)
			continue;
		if (pc->mirror1_failed || !sector_ok(pc, pc->buf + (size_t)i * pc->ss, i, found)) {
			pc->state[i] = SEC_BAD;
			any_bad = true;
		}
	}
	if (any_bad) {
		ret = repair(pc);
		if (ret < 0)
			return ret;
	}
	return report(pc);
}

/* Unverified read (NODATASUM): the first mirror that the devices can read. */
static int read_any_mirror(struct bf_fs *fs, const struct bf_data_loc *loc, uint64_t logical, void *buf,
			   size_t len)
{
	const struct bf_volume *vol = &fs->fi->vol;
	int copies = bf_vol_num_copies(vol, logical);

	for (int m = 1; m <= (copies < 1 ? 1 : copies); m++) {
		if (bf_vol_read(vol, logical, buf, len, m) < 0)
			continue;
		if (m > 1)
			bf_log(BF_LOG_WARN, "read repair: logical %llu inode %llu (subvol %llu) offset %llu: mirror 1 "
			       "read error, using mirror %d", (unsigned long long)logical,
			       (unsigned long long)loc->ino, (unsigned long long)loc->root,
			       (unsigned long long)loc_file_off(loc, logical), m);
		return 0;
	}
	bf_log(BF_LOG_ERR, "read error: logical %llu (%zu bytes) inode %llu (subvol %llu) offset %llu: no mirror "
	       "could be read (%d mirror(s)); check the device (kernel log) or whether the address is mapped",
	       (unsigned long long)logical, len, (unsigned long long)loc->ino, (unsigned long long)loc->root,
	       (unsigned long long)loc_file_off(loc, logical), copies);
	return -EIO;
}

int bf_data_read(struct bf_fs *fs, const struct bf_data_loc *loc, uint64_t logical, void *buf, size_t len,
		 bool verify)
{
	static atomic_bool warned_no_csum_root;
	struct bf_fsinfo *fi = fs->fi;
	uint32_t ss = fi->sectorsize;

	if (!verify)
		return read_any_mirror(fs, loc, logical, buf, len);
	if (!fi->has_csum_root) {
		if (!atomic_exchange(&warned_no_csum_root, true))
			bf_log(BF_LOG_ERR, "this filesystem has no csum tree, so checksummed file data cannot be "
			       "verified (first seen at inode %llu, subvol %llu); run btrfs check",
			       (unsigned long long)loc->ino, (unsigned long long)loc->root);
		return -EUCLEAN;
	}
	if (ss == 0 || logical % ss || len % ss || fi->csum_size < 1 || fi->csum_size > BF_CSUM_MAX)
		return -EINVAL;

	struct piece *pc = malloc(sizeof(*pc));
	if (!pc)
		return -ENOMEM;
	pc->fs = fs;
	pc->loc = loc;
	pc->ss = ss;
	pc->csum_type = fi->csum_type;
	pc->csum_size = (size_t)fi->csum_size;
	size_t max_sect = bf_max64(1, bf_min64(PIECE_SECTORS, BF_DATA_PIECE / ss));
	int ret = 0;
	for (size_t done = 0; done < len && ret == 0;) {
		pc->logical = logical + done;
		pc->buf = (uint8_t *)buf + done;
		pc->nsect = (unsigned)bf_min64(max_sect, (len - done) / ss);
		ret = verify_piece(pc);
		done += (size_t)pc->nsect * ss;
	}
	free(pc);
	return ret;
}
