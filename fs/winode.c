/*
 * fs/winode.c - inode items on the write side: loading and writing them, new inodes, eviction, orphans, and the
 * table of open files that keeps unlinked inodes alive.
 *
 * Owns: bf_inode_update, bf_wino_load / bf_wino_save, bf_alloc_objectid, bf_inode_insert, bf_inode_unlinked,
 * bf_inode_evict, the orphan items (bf_orphan_add / del / cleanup), and bf_open_get / bf_open_put.
 *
 * Key idea: what the kernel keeps in struct inode (the last inode item written, the free objectid counter of a
 * root) lives here in the inode cache and in per-subvolume state, updated by every write, so reads under the
 * shared lock see each change at once. An inode whose last link goes while a file handle is open gets an
 * ORPHAN_ITEM (key (-5, ORPHAN_ITEM, ino)) as with btrfs_orphan_add; the last release deletes it and its items,
 * and a mount that finds orphan items (after a crash or kill) deletes those inodes, as btrfs_orphan_cleanup does.
 * Kernel facts: objectids are handed out from the highest objectid in use + 1 (btrfs_init_root_free_objectid
 * searches (LAST_FREE_OBJECTID, -1, -1) backwards), never reused while mounted; a new inode's item and first
 * INODE_REF go in as one batch; an inode item's transid is the transaction that wrote it (fill_inode_item).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "fs/wmeta.h"
#include "util/util.h"

#define ORPHAN_BATCH 64
/* Metadata items an eviction reserves (the kernel's unlink units; it may fall back on the global reserve). */
#define EVICT_ITEMS 6

/* ---------------- inode items ---------------- */

uint32_t bf_wino_mode(const struct bf_wino *w) { return get32(w->ii.mode); }

uint8_t bf_ftype_of_mode(uint32_t mode)
{
	switch (mode & S_IFMT) {
	case S_IFREG: return BF_FT_REG_FILE;
	case S_IFDIR: return BF_FT_DIR;
	case S_IFCHR: return BF_FT_CHRDEV;
	case S_IFBLK: return BF_FT_BLKDEV;
	case S_IFIFO: return BF_FT_FIFO;
	case S_IFSOCK: return BF_FT_SOCK;
	case S_IFLNK: return BF_FT_SYMLINK;
	default: return BF_FT_UNKNOWN;
	}
}

int bf_inode_update(struct bf_fs *fs, struct bf_trans *t, uint64_t root, uint64_t ino, struct bf_inode_item *ii)
{
	struct bf_key key = { ino, BF_INODE_ITEM_KEY, 0 };
	struct bf_root *tree;
	struct bf_path p;
	uint32_t size;
	uint8_t *data;
	int r = bf_txn_root(fs->fi, t, root, &tree);

	if (r)
		return r;
	put64(&ii->transid, t->transid);
	bf_path_init(&p, fs->env);
	r = bf_search_slot(t, tree, &key, 0, true, &p);
	if (r > 0)
		r = bf_corrupt(root, ino, &key, "inode item vanished while it was being changed");
	if (r == 0) {
		data = bf_path_item_mut(t, &p, &size);
		if (!data || size < sizeof(*ii))
			r = bf_corrupt(root, ino, &key, "inode item of %u bytes", size);
		else
			memcpy(data, ii, sizeof(*ii));
	}
	bf_path_release(&p);
	if (!r)
		bf_inode_cache_set(fs, root, ino, ii);
	return r;
}

int bf_wino_load(struct bf_wop *op, uint64_t root, uint64_t ino, struct bf_wino *w)
{
	struct bf_root *tree;
	int r;

	memset(w, 0, sizeof(*w));
	w->root = root;
	w->ino = ino;
	if (ino == BF_EMPTY_SUBVOL_DIR_OBJECTID)
		return -EPERM; /* the placeholder of an unreachable subvolume changes nothing (a simple_dir) */
	r = bf_inode_load(op->fs, root, ino, &w->ii);
	/* inode_permission's order for a write: an immutable inode (chattr +i), then a read-only snapshot
	   (btrfs_permission, btrfs_setattr) */
	if (!r && (get64(w->ii.flags) & BF_INODE_IMMUTABLE))
		r = -EPERM;
	return r ? r : bf_wop_root(op, root, &tree);
}

int bf_wino_save(struct bf_wop *op, struct bf_wino *w)
{
	if (!w->dirty)
		return 0;
	op->changed = true;
	int r = bf_inode_update(op->fs, op->t, w->root, w->ino, &w->ii);
	if (!r)
		w->dirty = false;
	return r;
}

/* ---------------- new inodes ---------------- */

static int find_free_objectid(struct bf_wop *op, uint64_t root, uint64_t *next)
{
	struct bf_key key = { BF_LAST_FREE_OBJECTID, 0xff, UINT64_MAX }, k;
	int r = bf_wop_last_key(op, root, &key, &k);

	*next = BF_FIRST_FREE_OBJECTID;
	if (r)
		return r == -ENOENT ? 0 : r;
	if (k.objectid + 1 > *next)
		*next = k.objectid + 1;
	return 0;
}

int bf_alloc_objectid(struct bf_wop *op, uint64_t root, uint64_t *ino)
{
	struct bf_subvol_w *sw = bf_subvol_w(op->fs, root);
	int r;

	if (!sw)
		return -ENOMEM;
	if (!sw->next_ino && (r = find_free_objectid(op, root, &sw->next_ino)))
		return r;
	if (sw->next_ino >= BF_LAST_FREE_OBJECTID)
		return -ENOSPC;
	*ino = sw->next_ino++;
	return 0;
}

int bf_inode_insert(struct bf_wop *op, struct bf_wino *w, uint64_t parent, const char *name, size_t len,
		    uint64_t index)
{
	struct bf_key keys[2] = { { w->ino, BF_INODE_ITEM_KEY, 0 }, { w->ino, BF_INODE_REF_KEY, parent } };
	uint32_t sizes[2] = { sizeof(struct bf_inode_item), (uint32_t)(sizeof(struct bf_inode_ref) + len) };
	struct bf_root *tree;
	struct bf_path p;
	int r = bf_wop_root(op, w->root, &tree);

	if (r)
		return r;
	put64(&w->ii.transid, op->t->transid);
	op->changed = true;
	bf_path_init(&p, op->fs->env);
	r = bf_insert_empty_items(op->t, tree, &p, keys, sizes, 2);
	if (!r) {
		memcpy(bf_path_item_mut(op->t, &p, NULL), &w->ii, sizeof(w->ii));
		p.slots[0]++;
		uint8_t *ref = bf_path_item_mut(op->t, &p, NULL);
		struct bf_inode_ref hdr;
		put64(&hdr.index, index);
		put16(&hdr.name_len, (uint16_t)len);
		memcpy(ref, &hdr, sizeof(hdr));
		memcpy(ref + sizeof(hdr), name, len);
	}
	bf_path_release(&p);
	if (r == -EEXIST)
		r = bf_corrupt(w->root, w->ino, &keys[0], "a new inode's objectid is already in use");
	if (!r) {
		bf_inode_cache_set(op->fs, w->root, w->ino, &w->ii);
		w->dirty = false;
	}
	return r;
}

/* ---------------- orphans ---------------- */

int bf_orphan_add(struct bf_wop *op, uint64_t root, uint64_t ino)
{
	struct bf_key key = { BF_ORPHAN_OBJECTID, BF_ORPHAN_ITEM_KEY, ino };
	struct bf_root *tree;
	int r = bf_wop_root(op, root, &tree);

	if (r)
		return r;
	op->changed = true;
	r = bf_insert_item(op->t, tree, &key, NULL, 0);
	return r == -EEXIST ? 0 : r;
}

int bf_orphan_del(struct bf_wop *op, uint64_t root, uint64_t ino)
{
	struct bf_key key = { BF_ORPHAN_OBJECTID, BF_ORPHAN_ITEM_KEY, ino };
	struct bf_root *tree;
	struct bf_path p;
	int r = bf_wop_root(op, root, &tree);

	if (r)
		return r;
	bf_path_init(&p, op->fs->env);
	r = bf_search_slot(op->t, tree, &key, -1, true, &p);
	if (r == 0) {
		op->changed = true;
		r = bf_del_items(op->t, tree, &p, p.slots[0], 1);
	} else if (r > 0) {
		r = -ENOENT;
	}
	bf_path_release(&p);
	return r;
}

/* Drop the reference of a regular or prealloc extent item that the data path left (it removes them first; this
   only guards against leaking space). */
static int drop_extent_ref(struct bf_wop *op, uint64_t root, const struct bf_key *k, const uint8_t *data,
			   uint32_t size)
{
	struct bf_file_extent_item fe;

	if (size < sizeof(fe))
		return 0; /* inline (or too short to name a disk extent) */
	memcpy(&fe, data, sizeof(fe));
	if (fe.type == BF_FILE_EXTENT_INLINE || !get64(fe.disk_bytenr))
		return 0;
	return bf_extalloc_data_ref(bf_txn_alloc(op->fs->fi), get64(fe.disk_bytenr), get64(fe.disk_num_bytes), root,
				    k->objectid, k->offset - get64(fe.offset), -1);
}

/* Delete the items of ino in the leaf the search for (ino, max) reaches, back from there. 1 when none are left. */
static int evict_leaf(struct bf_wop *op, uint64_t root, struct bf_root *tree, uint64_t ino)
{
	struct bf_key key = { ino, 0xff, UINT64_MAX };
	struct bf_path p;
	uint32_t first, end;
	int r;

	bf_path_init(&p, op->fs->env);
	r = bf_search_slot(op->t, tree, &key, -1, true, &p);
	if (r < 0)
		return r;
	end = p.slots[0];
	first = end;
	while (first > 0 && bf_leaf_key(p.nodes[0], first - 1).objectid == ino)
		first--;
	r = 0;
	for (uint32_t s = first; s < end && !r; s++) {
		struct bf_key k = bf_leaf_key(p.nodes[0], s);
		uint32_t size;
		const uint8_t *data = bf_leaf_item(p.nodes[0], s, &size);
		if (k.type == BF_EXTENT_DATA_KEY) {
			op->changed = true;
			r = drop_extent_ref(op, root, &k, data, size);
		}
	}
	if (r || first == end) {
		bf_path_release(&p);
		return r ? r : 1;
	}
	op->changed = true;
	p.slots[0] = first; /* the path must point at an item (the search left it past them) */
	return bf_del_items(op->t, tree, &p, first, end - first);
}

int bf_inode_evict(struct bf_wop *op, uint64_t root, uint64_t ino)
{
	struct bf_inode_item ii;
	struct bf_root *tree;
	int r = bf_inode_load(op->fs, root, ino, &ii);

	if (!r && S_ISREG(get32(ii.mode))) {
		op->changed = true;
		r = bf_data_evict(op->fs, op->t, root, ino);
	}
	if (r == -ENOENT)
		r = 0;
	if (!r)
		r = bf_wop_root(op, root, &tree);
	while (r == 0)
		r = evict_leaf(op, root, tree, ino);
	if (r > 0)
		r = bf_orphan_del(op, root, ino);
	if (r == -ENOENT)
		r = 0;
	bf_inode_cache_forget(op->fs, root, ino);
	return r;
}

int bf_inode_unlinked(struct bf_wop *op, struct bf_wino *w)
{
	if (bf_open_mark_orphan(op->fs, w->root, w->ino))
		return bf_orphan_add(op, w->root, w->ino);
	w->dirty = false; /* its item goes: nothing to save */
	return bf_inode_evict(op, w->root, w->ino);
}

/* Up to ORPHAN_BATCH inode numbers of orphan items of the live tree; *n gets how many. */
static int orphan_batch(struct bf_wop *op, uint64_t root, uint64_t *inos, size_t *n)
{
	struct bf_key min = { BF_ORPHAN_OBJECTID, BF_ORPHAN_ITEM_KEY, 0 };
	struct bf_root *tree;
	struct bf_path p;
	int r = bf_wop_root(op, root, &tree);

	*n = 0;
	if (r)
		return r;
	bf_path_init(&p, op->fs->env);
	r = bf_search(op->fs->env, tree, &min, &p);
	while (r >= 0 && bf_path_valid(&p) && *n < ORPHAN_BATCH) {
		struct bf_key k = bf_path_key(&p);
		if (k.objectid != BF_ORPHAN_OBJECTID || k.type != BF_ORPHAN_ITEM_KEY)
			break;
		inos[(*n)++] = k.offset;
		r = bf_path_next(&p);
	}
	bf_path_release(&p);
	return r < 0 ? r : 0;
}

static int cleanup_one(struct bf_wop *op, uint64_t root, uint64_t ino)
{
	struct bf_inode_item ii;
	int r = bf_inode_load(op->fs, root, ino, &ii);

	if (r == -ENOENT || (r == 0 && get32(ii.nlink) > 0))
		return bf_orphan_del(op, root, ino);
	if (r)
		return r;
	if (bf_open_mark_orphan(op->fs, root, ino))
		return 1; /* open here: the last release deletes it */
	bf_log(BF_LOG_INFO, "subvolume %" PRIu64 ": deleting inode %" PRIu64 ", unlinked while open when the "
	       "filesystem was last used", root, ino);
	return bf_inode_evict(op, root, ino);
}

int bf_orphan_cleanup(struct bf_wop *op, uint64_t root)
{
	uint64_t inos[ORPHAN_BATCH];
	size_t n, kept = 0;
	int r;

	do {
		r = orphan_batch(op, root, inos, &n);
		for (size_t i = kept; i < n && r >= 0; i++) {
			r = cleanup_one(op, root, inos[i]);
			if (r == 1) {
				kept++;
				r = 0;
			}
		}
	} while (r == 0 && n > kept && n == ORPHAN_BATCH);
	return r;
}

/* ---------------- open files ---------------- */

static struct bf_openent *open_find(struct bf_nstate *ns, uint64_t root, uint64_t ino)
{
	for (size_t i = 0; i < ns->nopen; i++)
		if (ns->open[i].root == root && ns->open[i].ino == ino)
			return &ns->open[i];
	return NULL;
}

void bf_open_get(struct bf_fs *fs, uint64_t root, uint64_t ino)
{
	struct bf_nstate *ns = fs->ns;
	struct bf_openent *e;

	if (!ns)
		return;
	pthread_mutex_lock(&ns->open_lock);
	e = open_find(ns, root, ino);
	if (!e && ns->nopen == ns->open_cap) {
		size_t cap = ns->open_cap ? 2 * ns->open_cap : 64;
		struct bf_openent *n = realloc(ns->open, cap * sizeof(*n));
		if (n) {
			ns->open = n;
			ns->open_cap = cap;
		}
	}
	if (!e && ns->nopen < ns->open_cap) {
		e = &ns->open[ns->nopen++];
		*e = (struct bf_openent){ root, ino, 0, false };
	}
	if (e)
		e->count++;
	else
		bf_log(BF_LOG_WARN, "out of memory tracking open files: inode %" PRIu64 " may be deleted while open if "
		       "unlinked", ino);
	pthread_mutex_unlock(&ns->open_lock);
}

bool bf_open_mark_orphan(struct bf_fs *fs, uint64_t root, uint64_t ino)
{
	struct bf_nstate *ns = fs->ns;
	struct bf_openent *e;
	bool open;

	pthread_mutex_lock(&ns->open_lock);
	e = open_find(ns, root, ino);
	open = e && e->count > 0;
	if (open)
		e->orphan = true;
	pthread_mutex_unlock(&ns->open_lock);
	return open;
}

void bf_open_unmark_orphan(struct bf_fs *fs, uint64_t root, uint64_t ino)
{
	struct bf_nstate *ns = fs->ns;
	struct bf_openent *e;

	pthread_mutex_lock(&ns->open_lock);
	e = open_find(ns, root, ino);
	if (e)
		e->orphan = false;
	pthread_mutex_unlock(&ns->open_lock);
}

/* The last release of an orphan: delete it (unless it was opened again meanwhile). */
static void evict_released(struct bf_fs *fs, uint64_t root, uint64_t ino)
{
	struct bf_wop op;
	int r = bf_wop_begin(fs, &op);

	if (r) {
		bf_log(BF_LOG_WARN, "inode %" PRIu64 " of subvolume %" PRIu64 " was unlinked while open and cannot be "
		       "deleted now (%s); the next read-write mount deletes it", ino, root, strerror(-r));
		return;
	}
	op.what = "deleting a released unlinked file";
	r = bf_wop_reserve(&op, EVICT_ITEMS, true);
	if (!r && !bf_open_mark_orphan(fs, root, ino))
		r = bf_inode_evict(&op, root, ino);
	r = bf_wop_end(&op, r);
	if (r)
		bf_log(BF_LOG_ERR, "deleting inode %" PRIu64 " of subvolume %" PRIu64 " (unlinked while open) failed: %s",
		       ino, root, strerror(-r));
}

void bf_open_put(struct bf_fs *fs, uint64_t root, uint64_t ino)
{
	struct bf_nstate *ns = fs->ns;
	struct bf_openent *e;
	bool evict = false;

	if (!ns)
		return;
	pthread_mutex_lock(&ns->open_lock);
	e = open_find(ns, root, ino);
	if (e && --e->count == 0) {
		evict = e->orphan;
		*e = ns->open[--ns->nopen];
	}
	pthread_mutex_unlock(&ns->open_lock);
	if (evict)
		evict_released(fs, root, ino);
}
