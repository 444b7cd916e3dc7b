/*
 * journal/open.c - opening a filesystem: devices, chunk map bootstrap, global tree roots.
 *
 * Owns: bf_fsinfo_open / bf_fsinfo_close and bf_find_root.
 *
 * Key idea: a fixed sequence in which each step trusts only what earlier steps verified:
 *   1. open every given path (exclusively) and read its superblock (copies tried, newest wins);
 *   2. all must carry the same fsid and distinct devids; the newest superblock is the one used;
 *   3. the system chunk array maps the chunk tree; the chunk tree maps everything else;
 *   4. every stripe's device must be present (or the profile must allow its absence with -o degraded);
 *   5. the root tree gives the roots of the extent, device, csum, uuid, free-space and block-group trees.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "journal/journal.h"
#include "util/util.h"

#define DEFAULT_CACHE_BYTES (64u << 20)

struct opened_dev {
	const char *path;
	int fd;
	uint64_t size;
	struct bf_super sb;
};

static int open_one(const char *path, bool writable, struct opened_dev *d, char *err, size_t errlen)
{
	char why[512];
	d->path = path;
	int r = bf_plat_open(path, writable, &d->fd, &d->size, why, sizeof(why));
	if (r)
		return bf_err(err, errlen, r, "%s", why);
	int copy;
	r = bf_super_read(d->fd, d->size, &d->sb, &copy, why, sizeof(why));
	if (r) {
		close(d->fd);
		d->fd = -1;
		return bf_err(err, errlen, r, "%s: not a usable btrfs filesystem: %s", path, why);
	}
	return 0;
}

/* Check that every device belongs to the same filesystem and pick the newest superblock. */
static int match_devices(struct opened_dev *d, int n, int *newest, char *err, size_t errlen)
{
	*newest = 0;
	for (int i = 1; i < n; i++) {
		if (memcmp(d[i].sb.fsid, d[0].sb.fsid, BF_FSID_SIZE)) {
			char a[37], b[37];
			bf_uuid_str(d[0].sb.fsid, a);
			bf_uuid_str(d[i].sb.fsid, b);
			return bf_err(err, errlen, -EINVAL, "%s belongs to filesystem %s, but %s to %s", d[i].path, b,
				      d[0].path, a);
		}
		for (int j = 0; j < i; j++)
			if (get64(d[i].sb.dev_item.devid) == get64(d[j].sb.dev_item.devid))
				return bf_err(err, errlen, -EINVAL, "%s and %s are the same device (devid %llu)",
					      d[j].path, d[i].path,
					      (unsigned long long)get64(d[i].sb.dev_item.devid));
		if (get64(d[i].sb.generation) > get64(d[*newest].sb.generation))
			*newest = i;
	}
	return 0;
}

struct chunk_ctx {
	struct bf_volume *vol;
	char *err;
	size_t errlen;
};

static int add_chunk_item(void *arg, const struct bf_key *k, const uint8_t *data, uint32_t size)
{
	struct chunk_ctx *c = arg;
	if (k->type != BF_CHUNK_ITEM_KEY)
		return 0;
	if (size < sizeof(struct bf_chunk))
		return bf_err(c->err, c->errlen, -EUCLEAN, "chunk item at logical %llu is too small (%u bytes)",
			      (unsigned long long)k->offset, size);
	return bf_vol_add_chunk(c->vol, k->offset, (const struct bf_chunk *)data, size, c->err, c->errlen);
}

static int load_chunk_tree(struct bf_fsinfo *fi, char *err, size_t errlen)
{
	struct chunk_ctx c = { &fi->vol, err, errlen };
	struct bf_key min = { BF_FIRST_CHUNK_TREE_OBJECTID, BF_CHUNK_ITEM_KEY, 0 };
	struct bf_key max = { BF_FIRST_CHUNK_TREE_OBJECTID, BF_CHUNK_ITEM_KEY, UINT64_MAX };
	int r = bf_iterate(&fi->env, &fi->chunk_root, &min, &max, add_chunk_item, &c);
	if (r && err && !err[0])
		snprintf(err, errlen, "cannot read the chunk tree at %llu: %s",
			 (unsigned long long)fi->chunk_root.bytenr, strerror(-r));
	return r;
}

int bf_find_root(struct bf_fsinfo *fi, uint64_t objectid, struct bf_root *root, struct bf_root_item *item)
{
	struct bf_path p;
	struct bf_key key = { objectid, BF_ROOT_ITEM_KEY, UINT64_MAX };
	bf_path_init(&p, &fi->env);
	int r = bf_search_le(&fi->env, &fi->tree_root, &key, &p);
	if (r < 0)
		goto out;
	struct bf_key found = bf_path_key(&p);
	uint32_t size;
	const uint8_t *data = bf_path_item(&p, &size);
	r = -ENOENT;
	if (found.objectid != objectid || found.type != BF_ROOT_ITEM_KEY)
		goto out;
	r = -EUCLEAN;
	if (size < BF_ROOT_ITEM_LEGACY_SIZE) {
		bf_log(BF_LOG_ERR, "root item of tree %llu is too small (%u bytes)", (unsigned long long)objectid,
		       size);
		goto out;
	}
	struct bf_root_item ri;
	memset(&ri, 0, sizeof(ri));
	memcpy(&ri, data, bf_min64(size, sizeof(ri)));
	if (ri.level >= BF_MAX_LEVEL || !get64(ri.bytenr)) {
		bf_log(BF_LOG_ERR, "root item of tree %llu is invalid (level %u, bytenr %llu)",
		       (unsigned long long)objectid, ri.level, (unsigned long long)get64(ri.bytenr));
		goto out;
	}
	root->objectid = objectid;
	root->bytenr = get64(ri.bytenr);
	root->generation = get64(ri.generation);
	root->level = ri.level;
	if (item)
		*item = ri;
	r = 0;
out:
	bf_path_release(&p);
	return r;
}

/* Look up an optional global tree; *present tells whether it exists. */
static int find_global(struct bf_fsinfo *fi, uint64_t id, struct bf_root *root, bool *present, char *err,
		       size_t errlen)
{
	int r = bf_find_root(fi, id, root, NULL);
	*present = r == 0;
	if (r == -ENOENT)
		return 0;
	if (r)
		return bf_err(err, errlen, r, "cannot read the root item of tree %llu: %s", (unsigned long long)id,
			      strerror(-r));
	return 0;
}

static int find_global_roots(struct bf_fsinfo *fi, char *err, size_t errlen)
{
	bool present;
	int r = find_global(fi, BF_EXTENT_TREE_OBJECTID, &fi->extent_root, &present, err, errlen);
	if (!r && !present)
		r = bf_err(err, errlen, -EUCLEAN, "the root tree has no extent tree");
	if (!r)
		r = find_global(fi, BF_DEV_TREE_OBJECTID, &fi->dev_root, &present, err, errlen);
	if (!r)
		r = find_global(fi, BF_CSUM_TREE_OBJECTID, &fi->csum_root, &fi->has_csum_root, err, errlen);
	if (!r)
		r = find_global(fi, BF_UUID_TREE_OBJECTID, &fi->uuid_root, &fi->has_uuid_root, err, errlen);
	if (!r)
		r = find_global(fi, BF_FREE_SPACE_TREE_OBJECTID, &fi->free_space_root, &fi->has_free_space_root, err,
				errlen);
	if (!r)
		r = find_global(fi, BF_BLOCK_GROUP_TREE_OBJECTID, &fi->block_group_root, &fi->has_block_group_root,
				err, errlen);
	if (!r && (fi->compat_ro & BF_FEATURE_COMPAT_RO_BLOCK_GROUP_TREE) && !fi->has_block_group_root)
		r = bf_err(err, errlen, -EUCLEAN, "block-group-tree feature is set but the tree is missing");
	return r;
}

void bf_fsinfo_from_super(struct bf_fsinfo *fi)
{
	const struct bf_super *sb = &fi->super;
	fi->incompat = get64(sb->incompat_flags);
	fi->compat_ro = get64(sb->compat_ro_flags);
	fi->generation = get64(sb->generation);
	fi->sectorsize = get32(sb->sectorsize);
	fi->nodesize = get32(sb->nodesize);
	fi->csum_type = get16(sb->csum_type);
	fi->csum_size = bf_csum_size(fi->csum_type);
	fi->log_root = get64(sb->log_root);
	fi->tree_root = (struct bf_root){ BF_ROOT_TREE_OBJECTID, get64(sb->root), fi->generation, sb->root_level };
	fi->chunk_root = (struct bf_root){ BF_CHUNK_TREE_OBJECTID, get64(sb->chunk_root),
					   get64(sb->chunk_root_generation), sb->chunk_root_level };
}

/* Steps 3-5 of the sequence at the top, once the volume holds every given device. */
static int bootstrap(struct bf_fsinfo *fi, const struct bf_open_opts *o, char *err, size_t errlen)
{
	int r = bf_vol_load_sys_chunks(&fi->vol, &fi->super, err, errlen);
	if (r)
		return r;
	const uint8_t *meta_fsid = (fi->incompat & BF_FEATURE_INCOMPAT_METADATA_UUID) ? fi->super.metadata_uuid
										      : fi->super.fsid;
	r = bf_env_init(&fi->env, &fi->vol, fi->nodesize, fi->sectorsize, fi->csum_type, meta_fsid, fi->generation,
			o->cache_bytes ? o->cache_bytes : DEFAULT_CACHE_BYTES);
	if (r)
		return bf_err(err, errlen, r, "cannot set up the tree-block cache");
	/* Missing devices are named before the chunk tree is read (a system chunk that lost too many devices would
	   otherwise show up as an unreadable tree block), and again after it maps every chunk. */
	r = bf_vol_resolve_devices(&fi->vol, o->degraded, err, errlen);
	if (!r)
		r = load_chunk_tree(fi, err, errlen);
	if (!r)
		r = bf_vol_resolve_devices(&fi->vol, o->degraded, err, errlen);
	if (!r)
		r = find_global_roots(fi, err, errlen);
	return r;
}

/* A read-write open replays the log (fs/logreplay.c); a read-only one shows the last commit without it. */
static void warn_log_tree(const struct bf_fsinfo *fi, bool writable)
{
	if (fi->log_root && !writable)
		bf_log(BF_LOG_WARN,
		       "the filesystem has a log tree at %llu: changes fsynced after the last commit (before an unclean "
		       "shutdown) are in that log, and this read-only mount shows the last commit without them; mount "
		       "with -o rw to replay the log",
		       (unsigned long long)fi->log_root);
}

static int add_devices(struct bf_fsinfo *fi, struct opened_dev *d, int n, char *err, size_t errlen)
{
	for (int i = 0; i < n; i++) {
		int r = bf_vol_add_device(&fi->vol, d[i].path, d[i].fd, d[i].size, &d[i].sb.dev_item,
					  get64(d[i].sb.generation), err, errlen);
		if (r)
			return r;
		d[i].fd = -1; /* the volume owns it now */
	}
	return 0;
}

int bf_fsinfo_open(const struct bf_open_opts *o, struct bf_fsinfo **out, char *err, size_t errlen)
{
	if (o->npaths < 1)
		return bf_err(err, errlen, -EINVAL, "no device or image given");
	struct opened_dev *d = calloc((size_t)o->npaths, sizeof(*d));
	struct bf_fsinfo *fi = calloc(1, sizeof(*fi));
	if (!d || !fi) {
		free(d);
		free(fi);
		return bf_err(err, errlen, -ENOMEM, "out of memory");
	}
	int n = 0, newest = 0, r = 0;
	for (; n < o->npaths && !r; n++)
		r = open_one(o->paths[n], o->writable, &d[n], err, errlen);
	if (r)
		n--; /* d[n-1] failed and is closed */
	if (!r)
		r = match_devices(d, n, &newest, err, errlen);
	bool vol_ready = false;
	if (!r) {
		fi->super = d[newest].sb;
		bf_fsinfo_from_super(fi);
		fi->readonly = !o->writable;
		bf_vol_init(&fi->vol, fi->super.fsid, fi->sectorsize, get64(fi->super.num_devices));
		vol_ready = true;
		r = add_devices(fi, d, n, err, errlen);
	}
	if (!r)
		r = bootstrap(fi, o, err, errlen);
	for (int i = 0; i < n; i++)
		if (d[i].fd >= 0)
			close(d[i].fd);
	free(d);
	if (r) {
		if (fi->env.cache)
			bf_env_destroy(&fi->env);
		if (vol_ready)
			bf_vol_destroy(&fi->vol);
		free(fi);
		return r;
	}
	warn_log_tree(fi, o->writable);
	*out = fi;
	return 0;
}

void bf_fsinfo_close(struct bf_fsinfo *fi)
{
	if (!fi)
		return;
	bf_env_destroy(&fi->env);
	bf_vol_destroy(&fi->vol);
	free(fi);
}
