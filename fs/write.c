/*
 * fs/write.c - writing file data: write(2), truncate, evict, and delayed allocation (flush).
 *
 * Owns: the buffered data of every file (struct bf_wstate: per inode a dirty-range map, fs/dirty.c), the
 * bf_data_* calls of fs/internal.h, and the decisions the kernel makes at write, truncate and writeback time:
 * rewriting the old last sector with a zeroed tail and adding hole extents when a file grows (btrfs_cont_expand,
 * btrfs_truncate_block), trimming but not rewriting when it shrinks (btrfs_truncate_inode_items), inline or
 * regular extents (cow_file_range_inline with max_inline = 2048), extents of at most 128 MiB
 * (BTRFS_MAX_EXTENT_SIZE), nbytes and i_size.
 *
 * Key idea: a write only copies bytes into memory, so that a sequential writer's data becomes large extents.
 * Buffered ranges are always whole sectors: a write that covers part of a sector first takes that sector's old
 * bytes (from disk, or zeros past EOF), so the map never holds a partial sector and bytes past EOF in it are zero.
 * A flush turns each range into extents: allocate (as much as the allocator gives contiguously, up to 128 MiB),
 * write the bytes to every copy with one bf_vol_write, enter the checksums, drop what the file had there
 * (fs/extent_write.c) and insert the new item. The inode item is updated in the tree at every call (i_size and
 * times at write, nbytes at flush), so stat and a commit always see it; a commit flushes every buffered byte
 * first, so no committed i_size ever lies beyond the file's extents.
 * st_blocks (btrfs_getattr) is nbytes plus the buffered sectors that have no extent yet: the kernel marks those
 * EXTENT_DELALLOC_NEW when they are dirtied (btrfs_set_extent_delalloc: all of a write starting at or past i_size,
 * else the holes its extent maps show) and counts them until the flush adds them to nbytes. Each inode keeps them
 * in a mark map beside its data; an overwrite of an extent is not counted (nbytes already holds it, and the flush
 * that replaces the extent leaves nbytes as it was).
 * Buffered bytes hold a metadata reservation for their flush, as the kernel's btrfs_delalloc_reserve_metadata
 * (docs/ARCHITECTURE.md, "Space reservation"): per inode one file extent item per range (and per 128 MiB), the
 * csum leaves of its bytes and one inode update. A call reserves an upper bound of what its map can grow to
 * before it changes anything (so a full filesystem fails it with ENOSPC, never the commit's flush), and settles
 * to the exact need of the map at its end; the flush gives the reservation back once its tree changes are done.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "fs/datacsum.h"
#include "fs/write.h"
#include "util/util.h"

#define MIN_BUCKETS 64

/* One inode with buffered data. */
struct dinode {
	uint64_t root, ino;
	struct bf_dmap map;
	struct bf_dmap fresh; /* marks: the sectors of map that had no extent when buffered (delalloc "new" bytes) */
	uint64_t items;       /* metadata items reserved for flushing map: flush_items(map), between calls */
	struct dinode *next;
};

struct bf_wstate {
	struct dinode **buckets;
	size_t nbuckets, count;
	uint64_t dirty;          /* buffered bytes of all inodes */
};

/* Bumped whenever a file extent item changes, in any mount of the process: only ever grows, so a reader's cache
   stamped with an old value is never taken for current. */
static _Atomic uint64_t data_seq = 1;

static uint64_t round_up_ss(uint64_t x, uint32_t ss) { return x % ss ? x - x % ss + ss : x; }

static void extents_changed(void) { atomic_fetch_add(&data_seq, 1); }

/* ---------------- the table of inodes with buffered data ---------------- */

static size_t bucket_of(const struct bf_wstate *ws, uint64_t root, uint64_t ino)
{
	uint64_t h = ino * 0x9E3779B97F4A7C15ULL ^ root * 0xC2B2AE3D27D4EB4FULL;
	return (size_t)(h ^ (h >> 31)) & (ws->nbuckets - 1);
}

static struct bf_wstate *wstate(struct bf_fs *fs)
{
	if (!fs->wstate) {
		struct bf_wstate *ws = calloc(1, sizeof(*ws));
		if (ws && !(ws->buckets = calloc(MIN_BUCKETS, sizeof(*ws->buckets)))) {
			free(ws);
			ws = NULL;
		}
		if (ws)
			ws->nbuckets = MIN_BUCKETS;
		fs->wstate = ws;
	}
	return fs->wstate;
}

static struct dinode *dinode_find(const struct bf_wstate *ws, uint64_t root, uint64_t ino)
{
	if (!ws)
		return NULL;
	for (struct dinode *d = ws->buckets[bucket_of(ws, root, ino)]; d; d = d->next)
		if (d->root == root && d->ino == ino)
			return d;
	return NULL;
}

static void grow_table(struct bf_wstate *ws)
{
	size_t n = ws->nbuckets * 2;
	struct dinode **nb = calloc(n, sizeof(*nb)), **old = ws->buckets;
	size_t oldn = ws->nbuckets;

	if (!nb)
		return; /* chains just get longer */
	ws->buckets = nb;
	ws->nbuckets = n;
	for (size_t i = 0; i < oldn; i++)
		for (struct dinode *d = old[i], *next; d; d = next) {
			next = d->next;
			size_t b = bucket_of(ws, d->root, d->ino);
			d->next = nb[b];
			nb[b] = d;
		}
	free(old);
}

static struct dinode *dinode_get(struct bf_wstate *ws, uint64_t root, uint64_t ino)
{
	struct dinode *d = dinode_find(ws, root, ino);

	if (d)
		return d;
	d = calloc(1, sizeof(*d));
	if (!d)
		return NULL;
	d->root = root;
	d->ino = ino;
	bf_dmap_init(&d->map);
	bf_dmap_init_marks(&d->fresh);
	if (ws->count >= ws->nbuckets)
		grow_table(ws);
	size_t b = bucket_of(ws, root, ino);
	d->next = ws->buckets[b];
	ws->buckets[b] = d;
	ws->count++;
	return d;
}

/* Take d out of the table and free it with whatever it still buffers, giving its metadata reservation back to ea
   (NULL: the allocator is gone or was reset, at unmount or after an abort). */
static void dinode_remove(struct bf_wstate *ws, struct dinode *d, struct bf_extalloc *ea)
{
	struct dinode **pp = &ws->buckets[bucket_of(ws, d->root, d->ino)];

	while (*pp != d)
		pp = &(*pp)->next;
	*pp = d->next;
	ws->count--;
	ws->dirty -= d->map.bytes;
	if (ea && d->items)
		bf_extalloc_release_meta(ea, d->items);
	bf_dmap_clear(&d->map);
	bf_dmap_clear(&d->fresh);
	free(d);
}

void bf_data_close(struct bf_fs *fs)
{
	struct bf_wstate *ws = fs->wstate;

	if (!ws)
		return;
	for (size_t i = 0; i < ws->nbuckets; i++)
		while (ws->buckets[i])
			dinode_remove(ws, ws->buckets[i], NULL);
	free(ws->buckets);
	free(ws);
	fs->wstate = NULL;
	extents_changed(); /* after an abort the trees went back to the last commit */
}

bool bf_data_dirty(const struct bf_fs *fs) { return fs->wstate && fs->wstate->count > 0; }

uint64_t bf_data_seq(const struct bf_fs *fs)
{
	(void)fs;
	return atomic_load(&data_seq);
}

bool bf_data_dirty_next(struct bf_fs *fs, uint64_t root, uint64_t ino, uint64_t pos, uint64_t end, uint64_t *dstart,
			uint64_t *dend, const uint8_t **data)
{
	const struct dinode *d = dinode_find(fs->wstate, root, ino);
	const struct bf_drange *r = d ? bf_dmap_find(&d->map, pos, end) : NULL;

	if (!r)
		return false;
	*dstart = bf_max64(r->start, pos);
	*dend = bf_min64(r->end, end);
	*data = r->data + (*dstart - r->start);
	return true;
}

uint64_t bf_data_delalloc_bytes(struct bf_fs *fs, uint64_t root, uint64_t ino)
{
	const struct dinode *d = dinode_find(fs->wstate, root, ino);

	return d ? d->fresh.bytes : 0;
}

/* ---------------- one inode's context ---------------- */

/* What every call works with: the file's tree and allocator in t, and its inode item as it is now. */
struct wctx {
	struct bf_fctx c;
	struct bf_inode_item ii;
	uint32_t ss;
};

static int fctx_init(struct bf_fctx *c, struct bf_fs *fs, struct bf_trans *t, uint64_t root, uint64_t ino)
{
	memset(c, 0, sizeof(*c));
	c->fs = fs;
	c->t = t;
	c->subvol = root;
	c->ino = ino;
	c->ea = bf_txn_alloc(fs->fi);
	c->no_holes = fs->fi->incompat & BF_FEATURE_INCOMPAT_NO_HOLES;
	return bf_txn_root(fs->fi, t, root, &c->root);
}

static int wctx_init(struct wctx *w, struct bf_fs *fs, struct bf_trans *t, uint64_t root, uint64_t ino)
{
	int ret = fctx_init(&w->c, fs, t, root, ino);

	w->ss = fs->fi->sectorsize;
	if (ret == 0)
		ret = bf_inode_load(fs, root, ino, &w->ii);
	if (ret == 0 && !S_ISREG(get32(w->ii.mode)))
		ret = S_ISDIR(get32(w->ii.mode)) ? -EISDIR : -EINVAL;
	return ret;
}

/* Write the inode item back (bf_inode_update: transid and the inode cache follow). */
static int inode_store(struct wctx *w)
{
	return bf_inode_update(w->c.fs, w->c.t, w->c.subvol, w->c.ino, &w->ii);
}

static void nbytes_add(struct wctx *w, uint64_t add, uint64_t sub)
{
	uint64_t n = get64(w->ii.nbytes) + add;

	put64(&w->ii.nbytes, n >= sub ? n - sub : 0);
}

/* mtime = ctime = now, and the change counter moves (the kernel's file_update_time and inode_inc_iversion). */
static void touch(struct wctx *w)
{
	bf_inode_touch(&w->ii, BF_TOUCH_MTIME | BF_TOUCH_CTIME);
	bf_inode_inc_seq(&w->ii);
}

/* ---------------- buffering ---------------- */

static bool has_disk_data(const struct bf_fext *e)
{
	return e->type == BF_FILE_EXTENT_INLINE || e->disk_bytenr != 0;
}

/* Mark the parts of the sectors [a, b) that no extent with data (inline, regular, prealloc) covers: holes, hole
   items, and what lies past the last extent (the kernel's btrfs_find_new_delalloc_bytes). */
static int mark_holes(struct wctx *w, struct dinode *d, uint64_t a, uint64_t b)
{
	struct bf_key key = { w->c.ino, BF_EXTENT_DATA_KEY, a };
	struct bf_path p;
	uint64_t pos = a; /* [a, pos) is done */
	int ret;

	bf_path_init(&p, w->c.fs->env);
	ret = bf_fs_seek_le(w->c.fs->env, w->c.root, &key, &p);
	while (ret == 0 && pos < b) {
		struct bf_key k = bf_path_key(&p);
		uint32_t size;
		struct bf_fext e;
		if (k.objectid != w->c.ino || k.type != BF_EXTENT_DATA_KEY || k.offset >= b)
			break;
		const uint8_t *data = bf_path_item(&p, &size);
		ret = bf_fext_decode(&w->c, k.offset, data, size, &e);
		if (ret == 0 && has_disk_data(&e)) {
			if (e.pos > pos)
				ret = bf_dmap_mark(&d->fresh, pos, e.pos - pos);
			pos = bf_max64(pos, bf_fext_end(&e, w->ss));
		}
		if (ret == 0)
			ret = bf_path_next(&p);
	}
	bf_path_release(&p);
	if (ret < 0)
		return ret;
	return pos < b ? bf_dmap_mark(&d->fresh, pos, b - pos) : 0;
}

/* The sectors holding [off, off + len) were just buffered: mark those that are new delalloc, as the kernel's
   btrfs_set_extent_delalloc does - all of them if they start at or past i_size (no extents lie there unless the
   inode has the PREALLOC flag), else the ones its extents leave as holes. */
static int mark_fresh(struct wctx *w, struct dinode *d, uint64_t off, uint64_t len)
{
	uint64_t a = bf_round_down(off, w->ss), b = round_up_ss(off + len, w->ss);

	if (a >= get64(w->ii.size) && !(get64(w->ii.flags) & BF_INODE_PREALLOC))
		return bf_dmap_mark(&d->fresh, a, b - a);
	return mark_holes(w, d, a, b);
}

/* Every change of a map goes through dmap_put (or dmap_add) and dmap_cut, which keep the total of buffered bytes
   and the new delalloc marks. */
static int dmap_put(struct wctx *w, struct dinode *d, uint64_t off, const void *buf, size_t len)
{
	uint64_t before = d->map.bytes;
	int ret = bf_dmap_write(&d->map, off, buf, len);

	w->c.fs->wstate->dirty += d->map.bytes - before;
	return ret;
}

/* dmap_put, then the marks of the sectors it touched. The marks are accounting only: once the bytes are in, a
   failure to mark (no memory, or a damaged extent item, which the decoder logged and the flush will meet) leaves
   st_blocks short until the flush and does not fail the write. */
static int dmap_add(struct wctx *w, struct dinode *d, uint64_t off, const void *buf, size_t len)
{
	int ret = dmap_put(w, d, off, buf, len);

	if (ret == 0)
		(void)mark_fresh(w, d, off, len);
	return ret;
}

static void dmap_cut(struct wctx *w, struct dinode *d, uint64_t off)
{
	uint64_t before = d->map.bytes;

	bf_dmap_truncate(&d->map, off);
	bf_dmap_truncate(&d->fresh, off);
	w->c.fs->wstate->dirty -= before - d->map.bytes;
}

/* Put the sector at s into the map if it is not there: its bytes below i_size from the file, zeros after. Not
   marked: every caller then writes into the sector with dmap_add, which marks it. */
static int sector_load(struct wctx *w, struct dinode *d, uint64_t s)
{
	uint64_t isize = get64(w->ii.size);
	uint8_t *buf;
	int ret = 0;

	if (bf_dmap_find(&d->map, s, s + 1))
		return 0;
	buf = calloc(1, w->ss);
	if (!buf)
		return -ENOMEM;
	if (s < isize) {
		size_t n = (size_t)bf_min64(w->ss, isize - s);
		ssize_t r = bf_file_read_range(w->c.fs, w->c.root, w->c.ino, &w->ii, buf, n, s);
		ret = r < 0 ? (int)r : 0;
	}
	if (ret == 0)
		ret = dmap_put(w, d, s, buf, w->ss);
	free(buf);
	return ret;
}

/* Copy [off, off + len) into the map, after the old bytes of the partial sectors at both ends. */
static int buffer(struct wctx *w, struct dinode *d, const void *buf, size_t len, uint64_t off)
{
	uint64_t end = off + len, head = bf_round_down(off, w->ss);
	int ret = 0;

	if (off % w->ss)
		ret = sector_load(w, d, head);
	if (ret == 0 && end % w->ss)
		ret = sector_load(w, d, bf_round_down(end, w->ss));
	return ret ? ret : dmap_add(w, d, off, buf, len);
}

/* The sector holding byte `size` (not sector aligned) gets zeros from there to its end. With load (the file
   grows from size: the kernel's btrfs_cont_expand -> btrfs_truncate_block), a sector not buffered is read and
   buffered, holes too, so that whatever the disk holds past the old EOF is overwritten before it could show; the
   kernel does the same. Without load (the file shrinks to size), only a buffered sector is zeroed, as the page
   cache's partial page: the kernel leaves the sector on disk alone, its bytes past EOF never read. */
static int zero_tail(struct wctx *w, struct dinode *d, uint64_t size, bool load)
{
	uint64_t s = bf_round_down(size, w->ss);
	uint8_t *zeros;
	int ret;

	if (size % w->ss == 0)
		return 0;
	if (!bf_dmap_find(&d->map, s, s + 1)) {
		if (!load)
			return 0;
		ret = sector_load(w, d, s);
		if (ret)
			return ret;
	}
	zeros = calloc(1, w->ss);
	if (!zeros)
		return -ENOMEM;
	ret = dmap_add(w, d, size, zeros, (size_t)(s + w->ss - size));
	free(zeros);
	return ret;
}

/* The file grew from old to size (write past EOF, truncate up): without NO_HOLES, hole items over what lies
   between (the kernel's btrfs_cont_expand; the tail of the old last sector was zeroed before, by zero_tail). */
static int add_holes(struct wctx *w, uint64_t old, uint64_t size)
{
	uint64_t hole = round_up_ss(old, w->ss), hole_end = round_up_ss(size, w->ss), found = 0;
	int ret;

	if (w->c.no_holes || hole_end <= hole)
		return 0;
	ret = bf_fext_drop(&w->c, hole, hole_end, &found);
	if (ret == 0)
		ret = bf_fext_add_hole(&w->c, hole, hole_end);
	nbytes_add(w, 0, found);
	extents_changed();
	return ret;
}

/* A change of the trees failed half-way: say what, and return -EIO (the caller aborts the transaction). */
static int tree_failed(const struct wctx *w, const char *what, int err)
{
	bf_log(BF_LOG_ERR, "%s of inode %llu (subvol %llu) failed half-way: %s", what, (unsigned long long)w->c.ino,
	       (unsigned long long)w->c.subvol, strerror(-err));
	return -EIO;
}

/* ---------------- flush ---------------- */

/* The kernel's cow_file_range_inline conditions, with max_inline = 2048: the range starts at 0 and holds the
   whole file, which is shorter than a sector and than max_inline (and than an item can hold); no inline
   extents with sectors other than the 4 KiB page (the kernel makes none for subpage). */
static bool inline_ok(const struct wctx *w, const struct bf_drange *r)
{
	uint64_t size = get64(w->ii.size);

	return r->start == 0 && w->ss == 4096 && size > 0 && size < w->ss && size <= BF_MAX_INLINE &&
	       size <= BF_MAX_INLINE_DATA_SIZE(w->c.fs->fi->nodesize) && r->end >= size;
}

static int flush_inline(struct wctx *w, const struct bf_drange *r)
{
	uint32_t size = (uint32_t)get64(w->ii.size);
	uint64_t found = 0;
	int ret = bf_fext_drop(&w->c, 0, w->ss, &found);

	if (ret == 0)
		ret = bf_fext_insert_inline(&w->c, r->data, size);
	nbytes_add(w, ret == 0 ? size : 0, found);
	return ret;
}

/* One new extent: the bytes to every copy, their checksums, and the item replacing [pos, pos + len). */
static int write_extent(struct wctx *w, const uint8_t *data, uint64_t pos, uint64_t bytenr, uint64_t len)
{
	struct bf_fsinfo *fi = w->c.fs->fi;
	uint64_t found = 0, nsect = len / w->ss;
	int ret = bf_vol_write(&fi->vol, bytenr, data, (size_t)len);

	if (ret) {
		bf_log(BF_LOG_ERR, "cannot write %llu bytes of inode %llu (subvol %llu) at file offset %llu to logical "
		       "%llu: %s; check the device (kernel log)", (unsigned long long)len,
		       (unsigned long long)w->c.ino, (unsigned long long)w->c.subvol, (unsigned long long)pos,
		       (unsigned long long)bytenr, strerror(-ret));
		return ret;
	}
	if (!(get64(w->ii.flags) & BF_INODE_NODATASUM)) {
		uint8_t *sums = malloc((size_t)nsect * (size_t)fi->csum_size);
		if (!sums)
			return -ENOMEM;
		bf_csum_data(fi, data, nsect, sums);
		ret = bf_csum_insert(fi, w->c.t, bytenr, sums, nsect);
		free(sums);
	}
	if (ret == 0)
		ret = bf_fext_drop(&w->c, pos, pos + len, &found);
	if (ret == 0)
		ret = bf_fext_insert_reg(&w->c, pos, bytenr, len);
	nbytes_add(w, ret == 0 ? len : 0, found);
	return ret;
}

/* Turn one buffered range into extents of at most BF_MAX_EXTENT_SIZE, as long as the allocator gives them. */
static int flush_range(struct wctx *w, const struct bf_drange *r)
{
	uint64_t pos = r->start, hint = 0;

	if (inline_ok(w, r))
		return flush_inline(w, r);
	while (pos < r->end) {
		uint64_t want = bf_min64(r->end - pos, BF_MAX_EXTENT_SIZE), bytenr = 0, got = 0;
		int ret = bf_extalloc_data(w->c.ea, want, hint, &bytenr, &got);
		if (ret == 0 && (got == 0 || got > want || got % w->ss || bytenr % w->ss)) {
			bf_log(BF_LOG_ERR, "the allocator gave %llu bytes at %llu for a request of %llu (a bug in "
			       "btrfs-fuse)", (unsigned long long)got, (unsigned long long)bytenr,
			       (unsigned long long)want);
			ret = -EIO;
		}
		if (ret == 0)
			ret = write_extent(w, r->data + (pos - r->start), pos, bytenr, got);
		if (ret)
			return ret;
		pos += got;
		hint = bytenr + got;
	}
	return 0;
}

/* Write out everything d buffers, then forget d. */
static int flush_dinode(struct bf_fs *fs, struct bf_trans *t, struct dinode *d)
{
	struct bf_wstate *ws = fs->wstate;
	struct wctx w;
	struct bf_drange *r;
	int ret = wctx_init(&w, fs, t, d->root, d->ino);

	while (ret == 0 && (r = bf_dmap_pop(&d->map))) {
		ws->dirty -= r->end - r->start;
		ret = flush_range(&w, r);
		bf_drange_free(r);
	}
	extents_changed();
	if (ret == 0)
		ret = inode_store(&w);
	if (ret)
		bf_log(BF_LOG_ERR, "cannot write the data of inode %llu (subvol %llu): %s",
		       (unsigned long long)d->ino, (unsigned long long)d->root, strerror(-ret));
	dinode_remove(ws, d, bf_txn_alloc(fs->fi)); /* after its tree changes: the reservation covered them */
	return ret;
}

int bf_data_flush_inode(struct bf_fs *fs, struct bf_trans *t, uint64_t root, uint64_t ino)
{
	struct dinode *d = dinode_find(fs->wstate, root, ino);

	return d ? flush_dinode(fs, t, d) : 0;
}

int bf_data_flush_all(struct bf_fs *fs, struct bf_trans *t)
{
	struct bf_wstate *ws = fs->wstate;
	int ret = 0;

	for (size_t i = 0; ws && i < ws->nbuckets && ret == 0; i++)
		while (ws->buckets[i] && ret == 0)
			ret = flush_dinode(fs, t, ws->buckets[i]);
	return ret;
}

/* ---------------- metadata reservation ---------------- */

/* A write's own tree changes, reserved for the call only: the inode item, hole items dropped and inserted. */
#define CALL_ITEMS 3

static uint64_t csum_leaves(const struct bf_fs *fs, uint64_t bytes)
{
	uint64_t per = bf_csum_item_max(fs->fi), nsect = (bytes + fs->fi->sectorsize - 1) / fs->fi->sectorsize;

	return per ? (nsect + per - 1) / per : nsect;
}

/* The items flushing a map of count ranges holding bytes may insert (btrfs_calculate_inode_block_rsv_size): one
   file extent item per range and per BF_MAX_EXTENT_SIZE (count + bytes / max bounds the sum of each range's
   ceil(len / max)), the csum leaves of the bytes (counted for NODATASUM inodes too: a little more than needed),
   and one inode update. Grows with count and bytes, so the bound of a call (more of both) covers its result. */
static uint64_t flush_items(const struct bf_fs *fs, uint64_t count, uint64_t bytes)
{
	return count ? count + bytes / BF_MAX_EXTENT_SIZE + csum_leaves(fs, bytes) + 1 : 0;
}

/* What a map may need after a call that buffers len bytes: at most two new ranges (the old last sector's zeroed
   tail, the written sectors; one more for slack) and round_up(len) + 2 sectors more bytes. */
static uint64_t call_bound(const struct bf_fs *fs, const struct dinode *d, uint64_t len)
{
	uint32_t ss = fs->fi->sectorsize;

	return flush_items(fs, (d ? d->map.count : 0) + 3, (d ? d->map.bytes : 0) + round_up_ss(len, ss) + 2ULL * ss);
}

/* Reserve what a call on (root, ino) may need beyond what its inode holds: *got items (0 if it holds enough),
   to be added to the inode's reservation. With ino == 0, just `extra` items (a namespace change). As the
   kernel's flush_space: try; on ENOSPC write out all buffered data (its reservations shrink to nothing), try
   again; then with a forced metadata chunk. The flush changes trees: its failure is -EIO (abort). */
static int reserve_ladder(struct bf_fs *fs, struct bf_trans *t, uint64_t root, uint64_t ino, uint64_t len,
			  uint64_t extra, uint64_t *got)
{
	struct bf_extalloc *ea = bf_txn_alloc(fs->fi);

	*got = 0;
	if (!ea)
		return -EROFS;
	for (int step = 0; step < 3; step++) {
		const struct dinode *d = ino ? dinode_find(fs->wstate, root, ino) : NULL;
		uint64_t want = (ino ? call_bound(fs, d, len) : 0) + extra, have = d ? d->items : 0;
		int ret;

		if (want <= have)
			return 0;
		ret = bf_extalloc_reserve_meta(ea, want - have, step == 2 ? BF_RESV_FORCE_CHUNK : BF_RESV_NO_FORCE);
		if (ret != -ENOSPC) {
			*got = ret ? 0 : want - have;
			return ret;
		}
		if (step == 0 && !bf_data_dirty(fs))
			step++; /* nothing to write out: straight to the forced chunk */
		else if (step == 0 && bf_data_flush_all(fs, t) < 0)
			return -EIO;
	}
	return -ENOSPC;
}

int bf_data_reserve_meta(struct bf_fs *fs, struct bf_trans *t, uint64_t items)
{
	uint64_t got;

	return reserve_ladder(fs, t, 0, 0, 0, items, &got);
}

/* A call reserved got items for d (NULL: it never got its entry; give them back). */
static void reserve_attach(struct bf_fs *fs, struct dinode *d, uint64_t got)
{
	if (d)
		d->items += got;
	else if (got)
		bf_extalloc_release_meta(bf_txn_alloc(fs->fi), got);
}

/* The end of a call: d's reservation becomes exactly what flushing its map needs (the rest goes back). */
static void settle(struct wctx *w, struct dinode *d)
{
	uint64_t need = flush_items(w->c.fs, d->map.count, d->map.bytes);

	if (!w->c.ea)
		return;
	if (need < d->items) {
		bf_extalloc_release_meta(w->c.ea, d->items - need);
	} else if (need > d->items) {
		bf_log(BF_LOG_WARN, "inode %llu (subvol %llu) buffers more than its call reserved metadata for (a "
		       "bug in btrfs-fuse); taking it from the global reserve", (unsigned long long)d->ino,
		       (unsigned long long)d->root);
		(void)bf_extalloc_reserve_meta(w->c.ea, need - d->items, BF_RESV_ALWAYS);
	}
	d->items = need;
}

/* ---------------- the calls ---------------- */

/* Before buffering len more bytes: flush everything when the buffers would pass their bound (a failure there
   is -EIO: the trees changed half-way), and make sure the data space holds what is buffered (rounded to sectors). */
static int make_room(struct bf_fs *fs, struct bf_trans *t, uint64_t len)
{
	uint32_t ss = fs->fi->sectorsize;
	uint64_t need = round_up_ss(len, ss) + 2ULL * ss;
	struct bf_extalloc *ea = bf_txn_alloc(fs->fi);

	if (!ea)
		return -EROFS;
	if (fs->wstate->dirty + need > BF_DIRTY_LIMIT && bf_data_flush_all(fs, t) < 0)
		return -EIO;
	if (bf_extalloc_free_data(ea) < fs->wstate->dirty + need)
		return -ENOSPC;
	return 0;
}

/* Start a call on (root, ino): its context and its entry in the table. */
static int begin(struct bf_fs *fs, struct bf_trans *t, uint64_t root, uint64_t ino, struct wctx *w,
		 struct dinode **d)
{
	int ret;

	*d = NULL;
	if (!wstate(fs))
		return -ENOMEM;
	ret = wctx_init(w, fs, t, root, ino);
	if (ret == 0 && !(*d = dinode_get(fs->wstate, root, ino)))
		ret = -ENOMEM;
	return ret;
}

/* End a call: store the inode item (if store and all went well), and forget an inode that buffers nothing. */
static int end(struct wctx *w, struct dinode *d, int ret, bool store)
{
	if (ret == 0 && store)
		ret = inode_store(w);
	if (d)
		settle(w, d);
	if (d && d->map.count == 0)
		dinode_remove(w->c.fs->wstate, d, w->c.ea);
	return ret;
}

/* The new size and times of a call that changed the size, then the inode item. */
static int finish(struct wctx *w, struct dinode *d, int ret, uint64_t size, const char *what)
{
	put64(&w->ii.size, size);
	touch(w);
	ret = end(w, d, ret, true);
	return ret ? tree_failed(w, what, ret) : 0;
}

ssize_t bf_data_write(struct bf_fs *fs, struct bf_trans *t, uint64_t root, uint64_t ino, const void *buf, size_t len,
		      uint64_t off)
{
	struct wctx w;
	struct dinode *d;
	uint64_t last, old, got;
	int ret;

	if (len == 0)
		return 0;
	if (bf_add_overflow(off, len, &last) || last > BF_MAX_FILE_SIZE)
		return -EFBIG;
	if (!wstate(fs))
		return -ENOMEM;
	ret = make_room(fs, t, len);
	if (ret == 0)
		ret = reserve_ladder(fs, t, root, ino, len, CALL_ITEMS, &got);
	if (ret)
		return ret;
	/* first everything that can fail without a change: the buffers (and the reads they need) */
	ret = begin(fs, t, root, ino, &w, &d);
	reserve_attach(fs, d, got);
	old = ret == 0 ? get64(w.ii.size) : 0;
	if (ret == 0 && off > old)
		ret = zero_tail(&w, d, old, true);
	if (ret == 0)
		ret = buffer(&w, d, buf, len, off);
	if (ret)
		return end(&w, d, ret, false);
	/* then the trees */
	ret = off > old ? add_holes(&w, old, off) : 0;
	ret = finish(&w, d, ret, bf_max64(old, last), "a write");
	return ret ? ret : (ssize_t)len;
}

/* The file shrinks to size: the kernel's btrfs_truncate_inode_items. Extent items past it go, the one across it
   is trimmed to whole sectors (its last sector is not rewritten), an uncompressed inline extent is cut to size
   bytes; a compressed one cannot be cut, so sector 0 is buffered for rewriting (BTRFS_NEED_TRUNCATE_BLOCK). */
static int shrink(struct wctx *w, struct dinode *d, uint64_t size)
{
	uint64_t cut = round_up_ss(size, w->ss), found = 0, removed = 0;
	int ret = 0;

	if (size > 0 && size < w->ss) {
		ret = bf_fext_truncate_inline(&w->c, size, &removed);
		ret = ret == 2 ? zero_tail(w, d, size, true) : ret == 1 ? 0 : ret;
	}
	if (ret == 0)
		ret = bf_fext_drop(&w->c, cut, UINT64_MAX, &found);
	nbytes_add(w, 0, found + removed);
	extents_changed();
	return ret;
}

int bf_data_setsize(struct bf_fs *fs, struct bf_trans *t, uint64_t root, uint64_t ino, uint64_t size)
{
	struct wctx w;
	struct dinode *d;
	uint64_t old, got;
	int ret;

	if (size > BF_MAX_FILE_SIZE)
		return -EFBIG;
	if (!wstate(fs))
		return -ENOMEM;
	ret = reserve_ladder(fs, t, root, ino, 0, 0, &got);
	if (ret)
		return ret;
	ret = begin(fs, t, root, ino, &w, &d);
	reserve_attach(fs, d, got);
	old = ret == 0 ? get64(w.ii.size) : 0;
	if (ret || size == old)
		return end(&w, d, ret, false);
	ret = size > old ? zero_tail(&w, d, old, true) : zero_tail(&w, d, size, false);
	if (ret)
		return end(&w, d, ret, false);
	if (size < old)
		dmap_cut(&w, d, round_up_ss(size, w.ss));
	ret = size > old ? add_holes(&w, old, size) : shrink(&w, d, size);
	return finish(&w, d, ret, size, "a truncate");
}

int bf_data_evict(struct bf_fs *fs, struct bf_trans *t, uint64_t root, uint64_t ino)
{
	struct dinode *d;
	struct bf_fctx c;
	int ret;

	if (!wstate(fs))
		return -ENOMEM;
	d = dinode_find(fs->wstate, root, ino);
	if (d)
		dinode_remove(fs->wstate, d, bf_txn_alloc(fs->fi));
	ret = fctx_init(&c, fs, t, root, ino);
	if (ret == 0)
		ret = bf_fext_drop(&c, 0, UINT64_MAX, NULL);
	extents_changed();
	return ret;
}
