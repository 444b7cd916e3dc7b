/*
 * fs/inode.c - inodes: loading INODE_ITEMs through a bounded cache, and turning them into struct stat.
 *
 * Owns: bf_inode_load (with the checks the kernel's tree checker makes on an inode item's mode), the inode
 * cache, bf_inode_to_stat (the kernel's btrfs_getattr arithmetic), and the attributes of the placeholder
 * directory the kernel shows for unreachable subvolume entries.
 *
 * Key idea: the cache is a direct-mapped array of inode items keyed by (root, objectid) with striped locks:
 * a miss costs one tree search, a hit one short critical section, memory is fixed at open, and no entry is
 * ever referenced outside its lock (callers get copies).
 *
 * Kernel facts matched: rdev is stored as the kernel's internal dev_t ((major << 20) | minor, see
 * btrfs_read_locked_inode -> init_special_inode) and only character and block devices show it;
 * st_blocks = (round_up(nbytes, sectorsize) + round_up(delalloc bytes, sectorsize)) >> 9 and
 * st_blksize = sectorsize (btrfs_getattr).
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>

#include "fs/meta.h"
#include "util/util.h"

#define DEFAULT_INODES 16384
#define MIN_INODES 64
#define MAX_INODES (1u << 22)
#define LOCK_STRIPES 64
#define KDEV_MINOR_BITS 20
#define NSEC_PER_SEC 1000000000u

struct inode_slot {
	uint64_t root, objectid;
	bool valid;
	struct bf_inode_item ii;
};

struct bf_inode_cache {
	size_t mask;
	struct inode_slot *slots;
	pthread_mutex_t locks[LOCK_STRIPES];
};

int bf_inode_cache_new(size_t max_inodes, struct bf_inode_cache **out)
{
	size_t want = max_inodes ? max_inodes : DEFAULT_INODES, n = MIN_INODES;
	while (n < want && n < MAX_INODES)
		n *= 2;
	struct bf_inode_cache *c = calloc(1, sizeof(*c));
	if (!c || !(c->slots = calloc(n, sizeof(*c->slots)))) {
		free(c);
		return -ENOMEM;
	}
	c->mask = n - 1;
	for (int i = 0; i < LOCK_STRIPES; i++)
		pthread_mutex_init(&c->locks[i], NULL);
	*out = c;
	return 0;
}

void bf_inode_cache_free(struct bf_inode_cache *c)
{
	if (!c)
		return;
	for (int i = 0; i < LOCK_STRIPES; i++)
		pthread_mutex_destroy(&c->locks[i]);
	free(c->slots);
	free(c);
}

static size_t slot_of(const struct bf_inode_cache *c, uint64_t root, uint64_t objectid)
{
	uint64_t h = (objectid * 0x9E3779B97F4A7C15ULL) ^ (root * 0xC2B2AE3D27D4EB4FULL);
	return (size_t)(h ^ (h >> 29)) & c->mask;
}

/* Copy the cached item of (root, objectid) to *out; false on a miss. */
static bool cache_get(struct bf_inode_cache *c, uint64_t root, uint64_t objectid, struct bf_inode_item *out)
{
	size_t i = slot_of(c, root, objectid);
	pthread_mutex_t *lock = &c->locks[i % LOCK_STRIPES];
	pthread_mutex_lock(lock);
	struct inode_slot *s = &c->slots[i];
	bool hit = s->valid && s->root == root && s->objectid == objectid;
	if (hit)
		*out = s->ii;
	pthread_mutex_unlock(lock);
	return hit;
}

static void cache_put(struct bf_inode_cache *c, uint64_t root, uint64_t objectid, const struct bf_inode_item *ii)
{
	size_t i = slot_of(c, root, objectid);
	pthread_mutex_lock(&c->locks[i % LOCK_STRIPES]);
	struct inode_slot *s = &c->slots[i];
	s->root = root;
	s->objectid = objectid;
	s->valid = ii != NULL;
	if (ii)
		s->ii = *ii;
	pthread_mutex_unlock(&c->locks[i % LOCK_STRIPES]);
}

void bf_inode_cache_forget(struct bf_fs *fs, uint64_t root, uint64_t objectid)
{
	cache_put(fs->icache, root, objectid, NULL);
}

void bf_inode_cache_set(struct bf_fs *fs, uint64_t root, uint64_t objectid, const struct bf_inode_item *ii)
{
	cache_put(fs->icache, root, objectid, ii);
}

void bf_inode_cache_clear(struct bf_fs *fs)
{
	struct bf_inode_cache *c = fs->icache;

	for (size_t i = 0; i <= c->mask; i++) {
		pthread_mutex_lock(&c->locks[i % LOCK_STRIPES]);
		c->slots[i].valid = false;
		pthread_mutex_unlock(&c->locks[i % LOCK_STRIPES]);
	}
}

/* The tree checker's rule: exactly one file type and no bits outside type and permissions. */
static bool mode_ok(uint32_t mode)
{
	switch (mode & S_IFMT) {
	case S_IFREG:
	case S_IFDIR:
	case S_IFLNK:
	case S_IFCHR:
	case S_IFBLK:
	case S_IFIFO:
	case S_IFSOCK:
		return (mode & ~(uint32_t)(S_IFMT | 07777)) == 0;
	default:
		return false;
	}
}

static int read_inode_item(struct bf_fs *fs, uint64_t root, uint64_t objectid, struct bf_inode_item *out)
{
	struct bf_root tree;
	int r = bf_fs_root(fs, root, &tree);
	if (r)
		return r;
	struct bf_key key = { objectid, BF_INODE_ITEM_KEY, 0 };
	struct bf_path p;
	bf_path_init(&p, fs->env);
	r = bf_search(fs->env, &tree, &key, &p);
	if (r == 1)
		r = -ENOENT;
	if (r == 0) {
		uint32_t size;
		const uint8_t *data = bf_path_item(&p, &size);
		if (size < sizeof(*out))
			r = bf_corrupt(root, objectid, &key, "inode item of %u bytes, %zu expected", size,
				       sizeof(*out));
		else
			memcpy(out, data, sizeof(*out));
	}
	bf_path_release(&p);
	if (!r && !mode_ok(get32(out->mode)))
		r = bf_corrupt(root, objectid, &key, "invalid mode 0%o", get32(out->mode));
	return r;
}

int bf_inode_load(struct bf_fs *fs, uint64_t root, uint64_t objectid, struct bf_inode_item *out)
{
	if (cache_get(fs->icache, root, objectid, out))
		return 0;
	int r = read_inode_item(fs, root, objectid, out);
	if (!r)
		cache_put(fs->icache, root, objectid, out);
	return r;
}

int bf_dir_load(struct bf_fs *fs, uint64_t root, uint64_t dir, struct bf_inode_item *ii)
{
	if (dir == BF_EMPTY_SUBVOL_DIR_OBJECTID) {
		if (ii)
			memset(ii, 0, sizeof(*ii));
		return 0;
	}
	struct bf_inode_item tmp;
	struct bf_inode_item *p = ii ? ii : &tmp;
	int r = bf_inode_load(fs, root, dir, p);
	return r ? r : S_ISDIR(get32(p->mode)) ? 0 : -ENOTDIR;
}

/* ---------------- stat ---------------- */

static struct timespec ts_of(const struct bf_timespec *t)
{
	uint32_t nsec = get32(t->nsec);
	struct timespec ts = { (time_t)get64(t->sec), nsec < NSEC_PER_SEC ? (long)nsec : (long)(NSEC_PER_SEC - 1) };
	return ts;
}

/* The kernel keeps rdev as its internal dev_t: 12 bits of major above 20 bits of minor. */
static dev_t rdev_of(uint32_t mode, uint64_t disk_rdev)
{
	if (!S_ISCHR(mode) && !S_ISBLK(mode))
		return 0;
	uint32_t kdev = (uint32_t)disk_rdev;
	return makedev(kdev >> KDEV_MINOR_BITS, kdev & ((1u << KDEV_MINOR_BITS) - 1));
}

/* ALIGN(bytes, sectorsize) >> 9, as btrfs_getattr rounds nbytes and the delalloc bytes. */
static blkcnt_t blocks_of(uint64_t nbytes, uint32_t sectorsize)
{
	uint64_t rounded;
	if (bf_add_overflow(nbytes, sectorsize - 1, &rounded))
		rounded = UINT64_MAX;
	return (blkcnt_t)((rounded - rounded % sectorsize) >> 9);
}

void bf_inode_to_stat(struct bf_fs *fs, uint64_t root, uint64_t objectid, const struct bf_inode_item *ii,
		      struct stat *st)
{
	uint32_t mode = get32(ii->mode);
	uint32_t sectorsize = fs->fi->sectorsize;
	memset(st, 0, sizeof(*st));
	st->st_ino = bf_st_ino(fs, root, objectid);
	st->st_mode = mode;
	st->st_nlink = get32(ii->nlink);
	st->st_uid = get32(ii->uid);
	st->st_gid = get32(ii->gid);
	st->st_rdev = rdev_of(mode, get64(ii->rdev));
	st->st_size = (off_t)bf_min64(get64(ii->size), INT64_MAX);
	st->st_blksize = sectorsize;
	/* btrfs_getattr also counts bytes written but not yet given extents (the kernel's new_delalloc_bytes) */
	st->st_blocks = blocks_of(get64(ii->nbytes), sectorsize) +
			(S_ISREG(mode) ? blocks_of(bf_data_delalloc_bytes(fs, root, objectid), sectorsize) : 0);
	st->st_atim = ts_of(&ii->atime);
	st->st_mtim = ts_of(&ii->mtime);
	st->st_ctim = ts_of(&ii->ctime);
}

/* The kernel's new_simple_dir: an empty read-only directory, 0755, one link, owned like the directory it sits
   in. It keeps no parent, so owner and times come from its subvolume's root directory. */
static int placeholder_stat(struct bf_fs *fs, uint64_t root, struct stat *st)
{
	struct bf_inode_item ii;
	int r = bf_inode_load(fs, root, BF_SUBVOL_ROOT_DIR, &ii);
	if (r)
		return r;
	bf_inode_to_stat(fs, root, BF_SUBVOL_ROOT_DIR, &ii, st);
	st->st_ino = bf_st_ino(fs, root, BF_EMPTY_SUBVOL_DIR_OBJECTID);
	st->st_mode = S_IFDIR | 0755;
	st->st_nlink = 1;
	st->st_size = 0;
	st->st_blocks = 0;
	return 0;
}

int bf_stat_target(struct bf_fs *fs, uint64_t root, uint64_t objectid, struct stat *st, uint64_t *generation)
{
	if (generation)
		*generation = 0;
	if (objectid == BF_EMPTY_SUBVOL_DIR_OBJECTID)
		return placeholder_stat(fs, root, st);
	struct bf_inode_item ii;
	int r = bf_inode_load(fs, root, objectid, &ii);
	if (r)
		return r;
	bf_inode_to_stat(fs, root, objectid, &ii, st);
	if (generation)
		*generation = get64(ii.generation);
	return 0;
}
