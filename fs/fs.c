/*
 * fs/fs.c - opening and closing the filesystem view, choosing the mounted subvolume, getattr.
 *
 * Owns: bf_fs_open / bf_fs_close, bf_fs_mounted_subvol and bf_fs_getattr.
 * Key idea: the mounted subvolume is chosen as the kernel does (super.c: mount_subvol,
 * get_default_subvol_objectid): subvol=PATH is walked from the top-level subvolume 5; subvolid=N is taken as
 * given; with neither, the DIR_ITEM "default" in the root tree's directory (superblock root_dir_objectid)
 * names it, and without that item subvolume 5 is used. A subvolume given by id must be reachable from 5
 * through ROOT_BACKREFs, as the kernel builds its path; its root directory (256) must be a directory.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "btree/csum.h"
#include "fs/meta.h"
#include "util/util.h"

#define MAX_SUBVOL_DEPTH 4096

/* The "default" dir item in the root tree: the subvolume mounted when none is asked for. */
static int default_subvol(struct bf_fs *fs, uint64_t *id, char *err, size_t errlen)
{
	static const char name[] = "default";
	size_t len = sizeof(name) - 1;
	struct bf_key key = { get64(fs->fi->super.root_dir_objectid), BF_DIR_ITEM_KEY, bf_name_hash(name, len) };
	struct bf_path p;
	bf_path_init(&p, fs->env);
	int r = bf_search(fs->env, &fs->fi->tree_root, &key, &p);
	*id = BF_FS_TREE_OBJECTID;
	if (r == 0) {
		uint32_t size, pos = 0;
		const uint8_t *data = bf_path_item(&p, &size);
		struct bf_dir_rec rec;
		const char *why = NULL;
		while ((r = bf_dir_rec_next(data, size, &pos, &rec, &why)) == 1)
			if (rec.name_len == len && memcmp(rec.name, name, len) == 0) {
				*id = rec.location.objectid;
				break;
			}
		if (r < 0)
			r = bf_corrupt(BF_ROOT_TREE_OBJECTID, key.objectid, &key, "%s", why);
	}
	bf_path_release(&p);
	if (r < 0)
		return bf_err(err, errlen, r, "cannot read the default subvolume setting: %s; mount with subvolid=5",
			      strerror(-r));
	return 0;
}

/* The kernel mounts a subvolume by id through its path from subvolume 5, so it must have one. */
static int check_reachable(struct bf_fs *fs, uint64_t id, char *err, size_t errlen)
{
	uint64_t cur = id, dirid;
	for (int depth = 0; cur != BF_FS_TREE_OBJECTID; depth++) {
		int r = depth < MAX_SUBVOL_DEPTH ? bf_subvol_parent(fs, cur, &cur, &dirid) : -ELOOP;
		if (r == -ENOENT)
			return bf_err(err, errlen, r, "subvolume %llu is not linked into the filesystem (it may be "
				      "being deleted); choose another with subvol= or subvolid=",
				      (unsigned long long)id);
		if (r)
			return bf_err(err, errlen, r, "cannot follow the parents of subvolume %llu: %s",
				      (unsigned long long)id, strerror(-r));
	}
	return 0;
}

static int choose_subvol(struct bf_fs *fs, const struct bf_fs_opts *o, uint64_t *id, char *err, size_t errlen)
{
	int r;
	bool by_path = o->subvol && o->subvol[0];
	if (by_path) {
		r = bf_subvol_resolve_path(fs, o->subvol, id, err, errlen);
		if (!r && o->subvolid && *id != o->subvolid)
			r = bf_err(err, errlen, -EINVAL,
				   "subvol=%s is subvolume %llu, which does not match subvolid=%llu", o->subvol,
				   (unsigned long long)*id, (unsigned long long)o->subvolid);
		return r;
	}
	if (o->subvolid)
		*id = o->subvolid;
	else if ((r = default_subvol(fs, id, err, errlen)))
		return r;
	struct bf_root root;
	r = bf_fs_root(fs, *id, &root);
	if (r == -ENOENT)
		return bf_err(err, errlen, r, "%s subvolume %llu does not exist; list subvolumes with 'btrfs subvolume "
			      "list' or mount with subvolid=5", o->subvolid ? "the" : "the default",
			      (unsigned long long)*id);
	if (r)
		return bf_err(err, errlen, r, "cannot read the root of subvolume %llu: %s", (unsigned long long)*id,
			      strerror(-r));
	return check_reachable(fs, *id, err, errlen);
}

static int setup(struct bf_fs *fs, const struct bf_fs_opts *o, char *err, size_t errlen)
{
	int r = bf_fsinfo_open(&o->open, &fs->fi, err, errlen);
	if (r)
		return r;
	fs->env = &fs->fi->env;
	if ((r = bf_root_cache_new(&fs->roots)) || (r = bf_inode_cache_new(o->inode_cache, &fs->icache)))
		return bf_err(err, errlen, r, "out of memory");
	fs->mount_root = BF_FS_TREE_OBJECTID; /* while resolving subvol=, ".." stops at the top */
	fs->mount_dir = BF_SUBVOL_ROOT_DIR;
	uint64_t id;
	if ((r = choose_subvol(fs, o, &id, err, errlen)))
		return r;
	fs->mount_root = id;
	r = bf_dir_load(fs, id, BF_SUBVOL_ROOT_DIR, NULL);
	if (r)
		return bf_err(err, errlen, r, "cannot read the root directory of subvolume %llu: %s",
			      (unsigned long long)id, strerror(-r));
	return 0;
}

/* The fs-wide lock prefers writers where the C library offers it: a steady stream of reads must not keep a
   change or a commit waiting forever (no one takes the shared lock twice, which that would deadlock). */
static void init_lock(pthread_rwlock_t *lock)
{
	pthread_rwlockattr_t a;

	pthread_rwlockattr_init(&a);
#ifdef __GLIBC__
	pthread_rwlockattr_setkind_np(&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
#endif
	pthread_rwlock_init(lock, &a);
	pthread_rwlockattr_destroy(&a);
}

int bf_fs_open(const struct bf_fs_opts *o, struct bf_fs **out, char *err, size_t errlen)
{
	struct bf_fs *fs = calloc(1, sizeof(*fs));
	if (!fs)
		return bf_err(err, errlen, -ENOMEM, "out of memory");
	pthread_mutex_init(&fs->ino_map_lock, NULL);
	pthread_mutex_init(&fs->files_lock, NULL);
	init_lock(&fs->lock);
	int r = setup(fs, o, err, errlen);
	if (!r)
		r = bf_fs_write_open(fs, o, err, errlen);
	if (r) {
		bf_fs_close(fs);
		return r;
	}
	*out = fs;
	return 0;
}

void bf_fs_close(struct bf_fs *fs)
{
	if (!fs)
		return;
	bf_files_release_all(fs);
	bf_fs_write_close(fs);
	bf_inode_cache_free(fs->icache);
	bf_root_cache_free(fs->roots);
	bf_ino_map_free(fs);
	pthread_mutex_destroy(&fs->ino_map_lock);
	pthread_mutex_destroy(&fs->files_lock);
	pthread_rwlock_destroy(&fs->lock);
	if (fs->fi)
		bf_fsinfo_close(fs->fi);
	free(fs);
}

uint64_t bf_fs_mounted_subvol(const struct bf_fs *fs) { return fs->mount_root; }

int bf_fs_getattr(struct bf_fs *fs, uint64_t nodeid, struct stat *st)
{
	uint64_t root, objectid;
	int r = bf_nodeid_split(fs, nodeid, &root, &objectid);
	return r ? r : bf_stat_target(fs, root, objectid, st, NULL);
}
