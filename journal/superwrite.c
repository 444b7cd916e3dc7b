/*
 * journal/superwrite.c - writing the superblocks of a commit, with the backup roots rotated as the kernel does.
 *
 * Owns: filling fi->super for a new generation (the kernel's update_super_roots plus the fields
 * btrfs_commit_transaction sets), the backup-root ring (backup_super_roots), and writing every copy on every
 * device (write_all_supers / write_dev_supers).
 *
 * Key idea: the superblock is the commit point, so it is written only after every tree block is on disk and the
 * devices are flushed, and flushed again afterwards. Each device gets the same image except for its dev item,
 * which is copied from the chunk tree as this transaction left it (generation 0, fsid = the metadata uuid, as the
 * kernel writes it), and for bytenr and checksum, which differ per copy. A copy is written only where it fits
 * below the device's total_bytes (the kernel's bytenr + BTRFS_SUPER_INFO_SIZE >= commit_total_bytes rule); every
 * image is checked with bf_super_check before it goes out. The backup ring: at open, the slot after the one
 * whose tree_root_gen equals the superblock generation (or slot 0) is next; every commit fills that slot with the
 * new roots and moves on by one, so the four slots hold the last four commits.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "btree/csum.h"
#include "journal/journal_int.h"
#include "util/util.h"

int bf_backup_first_index(const struct bf_super *sb)
{
	uint64_t gen = get64(sb->generation);

	for (int i = 0; i < BF_NUM_BACKUP_ROOTS; i++)
		if (get64(sb->super_roots[i].tree_root_gen) == gen)
			return (i + 1) % BF_NUM_BACKUP_ROOTS;
	return 0;
}

static void put_root(bf_le64 *bytenr, bf_le64 *gen, uint8_t *level, const struct bf_root *r)
{
	put64(bytenr, r->bytenr);
	put64(gen, r->generation);
	*level = r->level;
}

void bf_backup_fill(struct bf_journal *j, struct bf_super *sb, int idx)
{
	struct bf_fsinfo *fi = j->fi;
	struct bf_root_backup *b = &sb->super_roots[idx];
	struct jtree *fs5 = bf_jtree_find(j, BF_FS_TREE_OBJECTID);

	memset(b, 0, sizeof(*b));
	put_root(&b->tree_root, &b->tree_root_gen, &b->tree_root_level, &fi->tree_root);
	put_root(&b->chunk_root, &b->chunk_root_gen, &b->chunk_root_level, &fi->chunk_root);
	put_root(&b->extent_root, &b->extent_root_gen, &b->extent_root_level, &fi->extent_root);
	if (fs5)
		put_root(&b->fs_root, &b->fs_root_gen, &b->fs_root_level, fs5->live);
	put_root(&b->dev_root, &b->dev_root_gen, &b->dev_root_level, &fi->dev_root);
	if (fi->has_csum_root)
		put_root(&b->csum_root, &b->csum_root_gen, &b->csum_root_level, &fi->csum_root);
	b->total_bytes = sb->total_bytes;
	b->bytes_used = sb->bytes_used;
	b->num_devices = sb->num_devices;
}

/* The fields of fi->super a commit sets. */
static void fill_super(struct bf_journal *j, uint64_t transid)
{
	struct bf_fsinfo *fi = j->fi;
	struct bf_super *sb = &fi->super;

	put64(&sb->generation, transid);
	put64(&sb->root, fi->tree_root.bytenr);
	sb->root_level = fi->tree_root.level;
	put64(&sb->chunk_root, fi->chunk_root.bytenr);
	put64(&sb->chunk_root_generation, fi->chunk_root.generation);
	sb->chunk_root_level = fi->chunk_root.level;
	put64(&sb->log_root, 0);
	sb->log_root_level = 0;
	put64(&sb->bytes_used, bf_extalloc_bytes_used(j->ea));
	if (j->update_uuid_gen)
		put64(&sb->uuid_tree_generation, transid);
	put64(&sb->flags, get64(sb->flags) | BF_HEADER_FLAG_WRITTEN);
	bf_backup_fill(j, sb, j->backup_index);
	j->backup_index = (j->backup_index + 1) % BF_NUM_BACKUP_ROOTS;
}

/* The dev item of devid as the chunk tree now holds it. */
static int chunk_dev_item(struct bf_fsinfo *fi, uint64_t devid, struct bf_dev_item *out)
{
	struct bf_key key = { BF_DEV_ITEMS_OBJECTID, BF_DEV_ITEM_KEY, devid };
	struct bf_path p;
	int r;

	bf_path_init(&p, &fi->env);
	r = bf_search(&fi->env, &fi->chunk_root, &key, &p);
	if (r == 0) {
		uint32_t size;
		const uint8_t *data = bf_path_item(&p, &size);
		if (size >= sizeof(*out))
			memcpy(out, data, sizeof(*out));
		else
			r = -EUCLEAN;
	} else if (r > 0) {
		r = -EUCLEAN;
	}
	bf_path_release(&p);
	if (r)
		bf_log(BF_LOG_ERR, "commit: cannot read the dev item of device %" PRIu64 " from the chunk tree: %s",
		       devid, strerror(-r));
	return r;
}

/* Checksum the image for a copy at off and check it as a reader would. */
static int seal_copy(const struct bf_fsinfo *fi, struct bf_super *sb, uint64_t off)
{
	uint8_t sum[BF_CSUM_MAX];
	char why[256];

	put64(&sb->bytenr, off);
	bf_csum(fi->csum_type, (const uint8_t *)sb + BF_SUPER_CSUM_START, BF_SUPER_INFO_SIZE - BF_SUPER_CSUM_START,
		sum);
	memcpy(sb->csum, sum, BF_CSUM_SIZE);
	if (bf_super_check(sb, off, why, sizeof(why)) != 0) {
		bf_log(BF_LOG_ERR, "commit: the new superblock fails its own check (%s); not writing it (a bug in "
		       "btrfs-fuse)", why);
		return -EUCLEAN;
	}
	return 0;
}

/* All copies on one device. Returns 0, or -EIO if the primary could not be written (a failed copy only warns). */
static int write_device(struct bf_journal *j, const struct bf_device *dev, const struct bf_super *tmpl)
{
	struct bf_fsinfo *fi = j->fi;
	struct bf_super sb = *tmpl;
	const uint8_t *meta_fsid = (fi->incompat & BF_FEATURE_INCOMPAT_METADATA_UUID) ? tmpl->metadata_uuid
										      : tmpl->fsid;
	int r = chunk_dev_item(fi, dev->devid, &sb.dev_item);

	if (r)
		return r;
	put64(&sb.dev_item.generation, 0);
	put64(&sb.dev_item.bytes_used, bf_extalloc_dev_bytes_used(j->ea, dev->devid));
	memcpy(sb.dev_item.fsid, meta_fsid, BF_FSID_SIZE);
	uint64_t limit = bf_min64(get64(sb.dev_item.total_bytes), dev->size);
	for (int i = 0; i < BF_SUPER_MIRROR_MAX; i++) {
		uint64_t off = bf_sb_offset(i);
		if (off + BF_SUPER_INFO_SIZE >= limit)
			break;
		r = seal_copy(fi, &sb, off);
		if (!r)
			r = bf_dev_pwrite(dev, &sb, sizeof(sb), off);
		if (r && i == 0) {
			bf_log(BF_LOG_ERR, "commit: writing the superblock of device %" PRIu64 " (%s) failed",
			       dev->devid, dev->path ? dev->path : "?");
			return r;
		}
		if (r)
			bf_log(BF_LOG_WARN, "commit: writing superblock copy %d of device %" PRIu64 " (%s) at byte %"
			       PRIu64 " failed", i, dev->devid, dev->path ? dev->path : "?", off);
	}
	return 0;
}

static int flush_all(const struct bf_volume *v)
{
	int r = 0;

	for (size_t i = 0; i < v->ndevs; i++)
		if (v->devs[i]->fd >= 0 && bf_dev_flush(v->devs[i]) != 0)
			r = -EIO;
	return r;
}

int bf_super_commit(struct bf_journal *j, uint64_t transid)
{
	struct bf_fsinfo *fi = j->fi;
	const struct bf_volume *v = &fi->vol;
	uint64_t ndev = get64(fi->super.num_devices), errors = 0, written = 0;
	int r;

	fill_super(j, transid);
	for (size_t i = 0; i < v->ndevs; i++) {
		const struct bf_device *dev = v->devs[i];
		if (dev->fd < 0 || !dev->writable) {
			errors++;
			continue;
		}
		r = write_device(j, dev, &fi->super);
		if (r == -EUCLEAN)
			return r;
		if (r)
			errors++;
		else
			written++;
	}
	r = flush_all(v);
	if (!written || errors > (ndev ? ndev - 1 : 0)) {
		bf_log(BF_LOG_ERR, "commit: %" PRIu64 " of %" PRIu64 " devices could not take the new superblock",
		       errors, ndev);
		return -EIO;
	}
	if (r)
		bf_log(BF_LOG_ERR, "commit: flushing the devices after the superblocks failed");
	return r;
}

/* ---------------- the log's superblock (btrfs_sync_log) ---------------- */

/* The primary copy of dev as the last commit wrote it, with the log root set. */
static int write_log_primary(struct bf_journal *j, const struct bf_device *dev, uint64_t log_root, uint8_t level)
{
	struct bf_fsinfo *fi = j->fi;
	uint64_t off = bf_sb_offset(0);
	struct bf_super sb;
	char why[256];
	int r = bf_dev_pread(dev, &sb, sizeof(sb), off);

	if (!r && bf_super_check(&sb, off, why, sizeof(why)) != 0) {
		bf_log(BF_LOG_ERR, "fsync: the primary superblock of device %" PRIu64 " (%s) reads back invalid (%s)",
		       dev->devid, dev->path ? dev->path : "?", why);
		r = -EIO;
	}
	if (!r && get64(sb.generation) != fi->generation) {
		bf_log(BF_LOG_ERR, "fsync: the primary superblock of device %" PRIu64 " (%s) has generation %" PRIu64
		       ", not the last commit's %" PRIu64, dev->devid, dev->path ? dev->path : "?",
		       get64(sb.generation), fi->generation);
		r = -EIO;
	}
	if (r)
		return r;
	put64(&sb.log_root, log_root);
	sb.log_root_level = level;
	r = seal_copy(fi, &sb, off);
	return r ? r : bf_dev_pwrite(dev, &sb, sizeof(sb), off);
}

int bf_super_write_log(struct bf_journal *j, uint64_t log_root, uint8_t level)
{
	const struct bf_volume *v = &j->fi->vol;
	int r = 0;

	for (size_t i = 0; !r && i < v->ndevs; i++) {
		const struct bf_device *dev = v->devs[i];
		if (dev->fd < 0 || !dev->writable)
			return -EIO; /* every device must name the log, or the replay could miss it */
		r = write_log_primary(j, dev, log_root, level);
	}
	if (!r && flush_all(v) != 0) {
		bf_log(BF_LOG_ERR, "fsync: flushing the devices after the superblocks failed");
		r = -EIO;
	}
	return r;
}
