/*
 * journal/wopen.c - opening a filesystem for writing and closing it: bf_journal_open / bf_journal_close.
 *
 * Owns: the decision whether an image may be written (everything else mounts read-only with a message saying
 * why), setting up the extent allocator and the tree table, and the final commit at close.
 *
 * Key idea: an image is written only when btrfs-fuse can keep every structure on it exactly as the kernel
 * would; anything it cannot keep (a log tree that the opener does not replay first, RAID5/6 stripes, simple
 * quotas, features it does not know) makes the mount read-only instead, so a write never leaves an image the
 * kernel or btrfs check would complain about. Qgroup counts it keeps as the kernel does when it cannot count
 * (journal/qgroup.c).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "journal/journal_int.h"
#include "util/util.h"

/* Why this image must stay read-only, or NULL. buf holds the message when one needs formatting. */
static const char *why_readonly(struct bf_fsinfo *fi, char *buf, size_t len)
{
	uint64_t flags = get64(fi->super.flags);
	uint64_t unknown_ro = fi->compat_ro & ~BF_FEATURE_COMPAT_RO_SUPPORTED;

	if (fi->log_root && !fi->log_replay)
		return "the filesystem has a log tree (changes fsynced before an unclean shutdown) and this opener "
		       "does not replay it; mount it read-write with btrfs-fuse or the kernel driver to replay the log";
	if (unknown_ro) {
		char names[256];
		bf_compat_ro_names(unknown_ro, names, sizeof(names));
		snprintf(buf, len, "the filesystem has read-only-compatible features btrfs-fuse does not know (%s)",
			 names);
		return buf;
	}
	if (flags & BF_SUPER_FLAG_ERROR)
		return "the superblock records an earlier fatal error; run 'btrfs check' on the image";
	if (flags & BF_SUPER_FLAG_SEEDING)
		return "it is a seed device";
	if (flags & (BF_SUPER_FLAG_METADUMP | BF_SUPER_FLAG_METADUMP_V2))
		return "it is a metadata dump (btrfs-image), without file data";
	if (flags & (BF_SUPER_FLAG_CHANGING_FSID | BF_SUPER_FLAG_CHANGING_FSID_V2))
		return "an fsid change was interrupted; finish it with btrfstune first";
	if (fi->incompat & BF_FEATURE_INCOMPAT_RAID56)
		return "it uses RAID5/RAID6, which btrfs-fuse does not write yet";
	for (size_t i = 0; i < fi->vol.nchunks; i++)
		if (fi->vol.chunks[i]->type & BF_BLOCK_GROUP_RAID56_MASK)
			return "it uses RAID5/RAID6, which btrfs-fuse does not write yet";
	for (size_t i = 0; i < fi->vol.ndevs; i++) {
		const struct bf_device *d = fi->vol.devs[i];
		if (d->fd < 0) {
			snprintf(buf, len, "device %" PRIu64 " is missing (a degraded filesystem is not written)",
				 d->devid);
			return buf;
		}
		if (!d->writable) {
			snprintf(buf, len, "device %" PRIu64 " (%s) was opened read-only", d->devid,
				 d->path ? d->path : "?");
			return buf;
		}
	}
	return bf_qgroup_why_readonly(fi, buf, len);
}

/* New blocks carry the chunk tree's uuid in their header (the btree layer stamps env->chunk_tree_uuid). */
static int load_chunk_tree_uuid(struct bf_fsinfo *fi)
{
	struct bf_block_expect exp = { fi->chunk_root.generation, fi->chunk_root.level, NULL, 0 };
	struct bf_block *b;
	int r = bf_block_read(&fi->env, fi->chunk_root.bytenr, &exp, &b);

	if (r)
		return r;
	memcpy(fi->env.chunk_tree_uuid, ((const struct bf_header *)b->data)->chunk_tree_uuid, BF_UUID_SIZE);
	bf_block_put(&fi->env, b);
	return 0;
}

static int setup(struct bf_journal *j, char *err, size_t errlen)
{
	struct bf_fsinfo *fi = j->fi;
	struct bf_extalloc_roots roots = {
		&fi->extent_root, &fi->chunk_root, &fi->dev_root,
		fi->has_free_space_root ? &fi->free_space_root : NULL,
		fi->has_block_group_root ? &fi->block_group_root : NULL,
	};
	int r = load_chunk_tree_uuid(fi);

	if (r)
		return bf_err(err, errlen, r, "cannot read the chunk tree root at %" PRIu64 ": %s", fi->chunk_root.bytenr,
			      strerror(-r));
	r = bf_jtree_register_globals(j);
	if (r)
		return bf_err(err, errlen, r, "cannot read the root items of the filesystem's trees: %s; run 'btrfs "
			      "check --readonly' on the image", strerror(-r));
	r = bf_qgroup_open(j);
	if (r)
		return bf_err(err, errlen, r, "cannot read the root item of the quota tree: %s; run 'btrfs check "
			      "--readonly' on the image", strerror(-r));
	r = bf_extalloc_open(&fi->env, &fi->vol, &fi->super, &roots, &j->ea, err, errlen);
	if (r)
		return r;
	bf_extalloc_set_csum_root(j->ea, fi->has_csum_root ? &fi->csum_root : NULL);
	j->aops = bf_extalloc_tree_ops();
	bf_journal_init_ops(j);
	j->committed_super = fi->super;
	j->backup_index = bf_backup_first_index(&fi->super);
	j->update_uuid_gen = fi->has_uuid_root && get64(fi->super.uuid_tree_generation) == fi->generation;
	return 0;
}

int bf_journal_open(struct bf_fsinfo *fi, const struct bf_journal_hooks *hooks, unsigned commit_interval,
		    char *err, size_t errlen)
{
	char buf[512];
	const char *why = fi->readonly ? "it was opened read-only" : why_readonly(fi, buf, sizeof(buf));
	struct bf_journal *j;
	int r;

	if (why) {
		fi->readonly = true;
		return bf_err(err, errlen, -EROFS, "%s", why);
	}
	j = calloc(1, sizeof(*j));
	if (!j)
		return bf_err(err, errlen, -ENOMEM, "out of memory");
	j->fi = fi;
	if (hooks)
		j->hooks = *hooks;
	j->interval = commit_interval ? commit_interval : BF_DEFAULT_COMMIT_INTERVAL;
	r = setup(j, err, errlen);
	if (r) {
		if (j->ea)
			bf_extalloc_close(j->ea);
		bf_journal_free_trees(j);
		free(j);
		fi->readonly = true;
		return r;
	}
	fi->journal = j;
	return 0;
}

int bf_journal_close(struct bf_fsinfo *fi)
{
	struct bf_journal *j = fi->journal;
	int r = 0;

	if (!j)
		return 0;
	bf_journal_stop_thread(j);
	if (!j->failed && j->running)
		r = bf_commit(fi);
	bf_extalloc_close(j->ea);
	bf_journal_free_trees(j);
	free(j);
	fi->journal = NULL;
	return r;
}
