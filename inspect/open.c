/*
 * inspect/open.c - opening an image set for inspection, also when it is damaged.
 *
 * Owns: insp_open / insp_close (the core's bf_fsinfo_open first; if that refuses the image, a partial open
 * that sets up as much as can be read) and insp_tree_root (where each tree starts).
 *
 * Key idea: an inspector is most needed on the images the driver refuses. The partial open repeats the
 * core's sequence with public calls but never stops at a damaged part: superblock (must be valid), system
 * chunk array (must parse), then every chunk item in whatever chunk-tree leaves read, then whichever global
 * roots the root tree still gives. Every later read goes through the validated block cache as usual, so a
 * partial open never trusts more than a normal one; it only gives up less.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "inspect/inspect.h"
#include "util/util.h"

#define CACHE_BYTES (64u << 20)

static void set_ctx(struct insp_fs *fs)
{
	struct bf_fsinfo *fi = fs->fi;
	fs->ctx.nodesize = fi->nodesize;
	fs->ctx.sectorsize = fi->sectorsize;
	fs->ctx.csum_type = fi->csum_type;
	fs->ctx.csum_size = fi->csum_size;
}

/* ---- the partial open ---- */

struct dev_open {
	int fd;
	uint64_t size;
	struct bf_super sb;
	bool ok;
};

/* Open each path and read its superblock; *newest gets the index of the newest valid one (-1: none). */
static void open_devices(const char *const *paths, int n, struct dev_open *d, int *newest)
{
	*newest = -1;
	for (int i = 0; i < n; i++) {
		char why[512];
		int copy;
		d[i].fd = -1;
		if (bf_plat_open(paths[i], false, &d[i].fd, &d[i].size, why, sizeof(why))) {
			insp_err("%s", why);
			continue;
		}
		if (bf_super_read(d[i].fd, d[i].size, &d[i].sb, &copy, why, sizeof(why))) {
			insp_err("%s: no valid superblock: %s", paths[i], why);
			continue;
		}
		d[i].ok = true;
		if (*newest < 0 || get64(d[i].sb.generation) > get64(d[*newest].sb.generation))
			*newest = i;
	}
}

/* Hand the opened devices of the same filesystem to the volume; close the others. */
static void add_devices(struct bf_fsinfo *fi, const char *const *paths, struct dev_open *d, int n)
{
	for (int i = 0; i < n; i++) {
		char why[512];
		if (d[i].ok && memcmp(d[i].sb.fsid, fi->super.fsid, BF_FSID_SIZE) != 0) {
			insp_err("%s belongs to another filesystem; ignored", paths[i]);
			d[i].ok = false;
		}
		if (d[i].ok && bf_vol_add_device(&fi->vol, paths[i], d[i].fd, d[i].size, &d[i].sb.dev_item,
						 get64(d[i].sb.generation), why, sizeof(why)) == 0)
			d[i].fd = -1; /* the volume owns it */
		else if (d[i].ok)
			insp_err("%s: %s; ignored", paths[i], why);
		if (d[i].fd >= 0)
			close(d[i].fd);
	}
}

static bool add_chunks(void *ctx, const struct walk_block *wb)
{
	struct bf_fsinfo *fi = ctx;
	if (!wb->b || wb->b->level != 0)
		return true;
	for (uint32_t i = 0; i < wb->b->nritems; i++) {
		struct bf_key k = bf_leaf_key(wb->b, i);
		uint32_t size;
		const uint8_t *data = bf_leaf_item(wb->b, i, &size);
		char why[512];
		if (k.type != BF_CHUNK_ITEM_KEY || size < sizeof(struct bf_chunk))
			continue;
		if (bf_vol_add_chunk(&fi->vol, k.offset, (const struct bf_chunk *)data, size, why, sizeof(why)))
			insp_err("chunk item at logical %llu skipped: %s", (unsigned long long)k.offset, why);
	}
	return true;
}

static void find_globals(struct bf_fsinfo *fi)
{
	fi->has_csum_root = bf_find_root(fi, BF_CSUM_TREE_OBJECTID, &fi->csum_root, NULL) == 0;
	fi->has_uuid_root = bf_find_root(fi, BF_UUID_TREE_OBJECTID, &fi->uuid_root, NULL) == 0;
	fi->has_free_space_root = bf_find_root(fi, BF_FREE_SPACE_TREE_OBJECTID, &fi->free_space_root, NULL) == 0;
	fi->has_block_group_root = bf_find_root(fi, BF_BLOCK_GROUP_TREE_OBJECTID, &fi->block_group_root, NULL) == 0;
	if (bf_find_root(fi, BF_EXTENT_TREE_OBJECTID, &fi->extent_root, NULL))
		memset(&fi->extent_root, 0, sizeof(fi->extent_root));
	if (bf_find_root(fi, BF_DEV_TREE_OBJECTID, &fi->dev_root, NULL))
		memset(&fi->dev_root, 0, sizeof(fi->dev_root));
}

static int open_partial(const char *const *paths, int n, struct insp_fs *fs)
{
	struct dev_open *d = calloc((size_t)n, sizeof(*d));
	struct bf_fsinfo *fi = calloc(1, sizeof(*fi));
	char why[512];
	int newest;
	if (!d || !fi) {
		free(d);
		free(fi);
		return -ENOMEM;
	}
	open_devices(paths, n, d, &newest);
	if (newest < 0) {
		for (int i = 0; i < n; i++)
			if (d[i].fd >= 0)
				close(d[i].fd);
		free(d);
		free(fi);
		return -EINVAL;
	}
	fi->super = d[newest].sb;
	bf_fsinfo_from_super(fi);
	fi->readonly = true;
	bf_vol_init(&fi->vol, fi->super.fsid, fi->sectorsize, get64(fi->super.num_devices));
	add_devices(fi, paths, d, n);
	free(d);
	const uint8_t *meta_fsid =
		(fi->incompat & BF_FEATURE_INCOMPAT_METADATA_UUID) ? fi->super.metadata_uuid : fi->super.fsid;
	int r = bf_vol_load_sys_chunks(&fi->vol, &fi->super, why, sizeof(why));
	if (r) {
		insp_err("the system chunk array is unusable: %s", why);
	} else {
		r = bf_env_init(&fi->env, &fi->vol, fi->nodesize, fi->sectorsize, fi->csum_type, meta_fsid,
				fi->generation, CACHE_BYTES);
		if (r)
			insp_err("cannot set up the tree-block cache");
	}
	if (r) {
		bf_vol_destroy(&fi->vol);
		free(fi);
		return r;
	}
	fs->fi = fi;
	set_ctx(fs);
	bf_vol_resolve_devices(&fi->vol, true, why, sizeof(why));
	walk_tree(fs, &fi->chunk_root, NULL, add_chunks, fi);
	if (bf_vol_resolve_devices(&fi->vol, true, why, sizeof(why)))
		insp_err("%s", why);
	find_globals(fi);
	return 0;
}

int insp_open(const char *const *paths, int npaths, struct insp_fs *fs)
{
	struct bf_open_opts o = { .paths = paths, .npaths = npaths, .degraded = true, .writable = false };
	memset(fs, 0, sizeof(*fs));
	int r = bf_fsinfo_open(&o, &fs->fi, fs->why, sizeof(fs->why));
	if (r == 0) {
		set_ctx(fs);
		return 0;
	}
	if (r == -EBUSY) {
		insp_err("%s", fs->why);
		return r;
	}
	insp_err("the filesystem does not open cleanly: %s", fs->why);
	insp_err("continuing with a partial open: damaged parts are shown as errors");
	fs->partial = true;
	r = open_partial(paths, npaths, fs);
	if (r)
		insp_err("cannot read anything beyond the superblock; try dump-super");
	return r;
}

void insp_close(struct insp_fs *fs)
{
	if (fs->fi)
		bf_fsinfo_close(fs->fi);
	fs->fi = NULL;
}

int insp_tree_root(struct insp_fs *fs, uint64_t id, struct bf_root *out)
{
	struct bf_fsinfo *fi = fs->fi;
	switch (id) {
	case BF_ROOT_TREE_OBJECTID:
		*out = fi->tree_root;
		return 0;
	case BF_CHUNK_TREE_OBJECTID:
		*out = fi->chunk_root;
		return 0;
	case BF_TREE_LOG_OBJECTID:
		if (!fi->log_root)
			return -ENOENT;
		/* the log is written one transaction past the committed superblock: no generation to expect */
		*out = (struct bf_root){ BF_TREE_LOG_OBJECTID, fi->log_root, 0, fi->super.log_root_level };
		return 0;
	default:
		return bf_find_root(fi, id, out, NULL);
	}
}
