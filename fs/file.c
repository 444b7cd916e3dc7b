/*
 * fs/file.c - file data: open, read and release, and the read path over a file's EXTENT_DATA items.
 *
 * Owns: struct bf_file (what an open file caches), decoding and validating file extent items (key (ino,
 * EXTENT_DATA, file offset)), and turning a byte range of a file into zeros (holes, prealloc, gaps, the region
 * past the last extent), inline data, plain disk reads and decompressed extents. Checksums: fs/datacsum.c.
 *
 * Key idea: a read walks the file's extents in file-offset order. An extent map (up to EMAP_MAX decoded items
 * covering a run [lo, hi) of the file, every gap in it being a hole) answers "what lies at offset X" without a
 * tree search, so sequential reads search the tree once per EMAP_MAX extents; a one-extent cache of the last
 * decompressed extent makes the 4 KiB reads of one 128 KiB compressed extent decompress it once. Both live in
 * struct bf_file behind one mutex that is held only to look up or copy, never across device reads, checksum
 * checks or decompression, so reads of one file run in parallel. A one-off read (bf_file_read_range, used by
 * readlink) keeps its map in its own call state instead.
 * Format rules followed (kernel tree-checker and read path): an inline extent only at file offset 0, covering
 * [0, round_up(ram_bytes, sectorsize)), its payload ram_bytes bytes or, compressed, decoded whole; a regular
 * extent reads disk_bytenr + offset + (pos - key offset), or when compressed the whole disk extent decoded to
 * ram_bytes and then [offset + (pos - key offset)); disk_bytenr 0 and prealloc read as zeros.
 * Writes (fs/write.c): bytes written but not yet flushed are read from the dirty-range map instead of the
 * extents, and the caches are dropped whenever bf_data_seq says a file extent changed.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs/compress.h"
#include "fs/datacsum.h"
#include "fs/internal.h"
#include "fs/write.h"
#include "util/util.h"

#define EMAP_MAX 32
/* Largest disk extent accepted: prealloc extents reach 256 MiB and keep that disk_num_bytes when partly written
   (then as regular extents), so the kernel's 128 MiB write-extent limit is no bound for reads. */
#define MAX_DISK_EXTENT (1ULL << 30)

/* One decoded file extent item. For inline extents only start, end, type, compression and ram_bytes are set. */
struct fext {
	uint64_t start, end; /* the file range [start, end) the item covers */
	uint64_t disk_bytenr, disk_num_bytes, offset, ram_bytes;
	uint8_t type, compression;
};

/* The extents of [lo, hi) of a file, sorted and non-overlapping; what they do not cover there is a hole. */
struct emap {
	uint64_t lo, hi;
	unsigned n;
	struct fext ext[EMAP_MAX];
};

/* The last decompressed extent, keyed by what identifies its bytes. */
struct zcache {
	uint64_t disk_bytenr, disk_num_bytes, ram_bytes;
	uint8_t compression;
	uint8_t *data; /* ram_bytes bytes, or NULL when empty */
};

struct bf_file {
	struct bf_root root;
	uint64_t subvol, objectid;
	struct bf_inode_item ii;
	pthread_mutex_t lock; /* guards map, z and seq */
	struct emap map;
	struct zcache z;
	uint64_t seq; /* bf_data_seq when map and z were filled: a write since then drops them */
	struct bf_file *prev, *next; /* fs->files, under fs->files_lock */
};

/* The state of one read call. */
struct rd {
	struct bf_fs *fs;
	const struct bf_root *root;
	uint64_t subvol, ino;
	bool datasum;
	struct bf_file *f;  /* shared caches, or NULL */
	struct emap local; /* this call's copy of the map */
};

enum { LK_MISS, LK_EXTENT, LK_HOLE };

static uint64_t round_up64(uint64_t x, uint32_t align)
{
	return bf_round_down(x + align - 1, align); /* callers pass x far below 2^64 - align */
}

/* Log a corrupt file extent item and return -EUCLEAN. */
static int __attribute__((format(printf, 3, 4))) fext_bad(const struct rd *rd, uint64_t off, const char *fmt, ...)
{
	char why[200];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	bf_log(BF_LOG_ERR, "corrupt file extent item: inode %llu (subvol %llu) file offset %llu: %s; run btrfs check "
	       "on this filesystem", (unsigned long long)rd->ino, (unsigned long long)rd->subvol,
	       (unsigned long long)off, why);
	return -EUCLEAN;
}

static int inline_decode(const struct rd *rd, uint64_t off, uint32_t size, struct fext *e)
{
	uint32_t payload = size - (uint32_t)BF_FILE_EXTENT_INLINE_DATA_START;

	if (off != 0)
		return fext_bad(rd, off, "inline extent at a non-zero file offset");
	if (e->compression == BF_COMPRESS_NONE && payload != e->ram_bytes)
		return fext_bad(rd, off, "inline extent holds %u bytes but ram_bytes says %llu", payload,
				(unsigned long long)e->ram_bytes);
	if (e->compression != BF_COMPRESS_NONE && e->ram_bytes > BF_COMPRESS_MAX_IN)
		return fext_bad(rd, off, "compressed inline extent of %llu bytes (at most %u)",
				(unsigned long long)e->ram_bytes, BF_COMPRESS_MAX_IN);
	e->start = 0;
	e->end = round_up64(e->ram_bytes, rd->fs->fi->sectorsize);
	return 0;
}

/* Checks of a regular extent that has disk bytes (disk_bytenr != 0). */
static int disk_extent_check(const struct rd *rd, uint64_t off, const struct fext *e, uint64_t num_bytes)
{
	uint64_t end, used;

	if (e->disk_num_bytes == 0)
		return fext_bad(rd, off, "disk extent at %llu of 0 bytes", (unsigned long long)e->disk_bytenr);
	if (bf_add_overflow(e->disk_bytenr, e->disk_num_bytes, &end) || bf_add_overflow(e->offset, num_bytes, &used))
		return fext_bad(rd, off, "disk range or offset overflows");
	if (e->compression != BF_COMPRESS_NONE) {
		if (e->disk_num_bytes > BF_COMPRESS_MAX_IN || e->ram_bytes == 0 || e->ram_bytes > BF_COMPRESS_MAX_IN)
			return fext_bad(rd, off, "compressed extent of %llu bytes on disk and %llu uncompressed (each "
					"at most %u)", (unsigned long long)e->disk_num_bytes,
					(unsigned long long)e->ram_bytes, BF_COMPRESS_MAX_IN);
		if (used > e->ram_bytes)
			return fext_bad(rd, off, "offset %llu + length %llu exceed the %llu uncompressed bytes",
					(unsigned long long)e->offset, (unsigned long long)num_bytes,
					(unsigned long long)e->ram_bytes);
		return 0;
	}
	if (e->disk_num_bytes > MAX_DISK_EXTENT)
		return fext_bad(rd, off, "disk extent of %llu bytes", (unsigned long long)e->disk_num_bytes);
	if (used > e->disk_num_bytes)
		return fext_bad(rd, off, "offset %llu + length %llu exceed the %llu-byte disk extent",
				(unsigned long long)e->offset, (unsigned long long)num_bytes,
				(unsigned long long)e->disk_num_bytes);
	return 0;
}

static int reg_decode(const struct rd *rd, uint64_t off, const struct bf_file_extent_item *fi, uint32_t size,
		      struct fext *e)
{
	uint32_t ss = rd->fs->fi->sectorsize;
	uint64_t num_bytes = get64(fi->num_bytes);

	if (size != sizeof(*fi))
		return fext_bad(rd, off, "item of %u bytes (a regular or prealloc extent has %zu)", size, sizeof(*fi));
	e->disk_bytenr = get64(fi->disk_bytenr);
	e->disk_num_bytes = get64(fi->disk_num_bytes);
	e->offset = get64(fi->offset);
	const struct { const char *name; uint64_t v; } al[] = {
		{ "ram_bytes", e->ram_bytes }, { "disk_bytenr", e->disk_bytenr },
		{ "disk_num_bytes", e->disk_num_bytes }, { "offset", e->offset }, { "num_bytes", num_bytes },
	};
	for (size_t i = 0; i < sizeof(al) / sizeof(al[0]); i++)
		if (al[i].v % ss)
			return fext_bad(rd, off, "%s %llu is not a multiple of the %u-byte sector", al[i].name,
					(unsigned long long)al[i].v, ss);
	e->start = off;
	if (bf_add_overflow(off, num_bytes, &e->end))
		return fext_bad(rd, off, "extent end overflows (length %llu)", (unsigned long long)num_bytes);
	if (e->type == BF_FILE_EXTENT_REG && e->disk_bytenr != 0)
		return disk_extent_check(rd, off, e, num_bytes);
	return 0;
}

/* Decode and validate one EXTENT_DATA item (the kernel tree-checker's rules plus what reading relies on). */
static int fext_decode(const struct rd *rd, const struct bf_key *k, const uint8_t *data, uint32_t size,
		       struct fext *e)
{
	struct bf_file_extent_item fi;

	if (size < BF_FILE_EXTENT_INLINE_DATA_START)
		return fext_bad(rd, k->offset, "item of %u bytes, shorter than the %zu-byte header", size,
				(size_t)BF_FILE_EXTENT_INLINE_DATA_START);
	memset(&fi, 0, sizeof(fi));
	memcpy(&fi, data, bf_min64(size, sizeof(fi)));
	memset(e, 0, sizeof(*e));
	e->type = fi.type;
	e->compression = fi.compression;
	e->ram_bytes = get64(fi.ram_bytes);
	if (e->type > BF_FILE_EXTENT_PREALLOC)
		return fext_bad(rd, k->offset, "unknown extent type %u", e->type);
	if (e->compression > BF_COMPRESS_ZSTD)
		return fext_bad(rd, k->offset, "unknown compression type %u", e->compression);
	if (fi.encryption)
		return fext_bad(rd, k->offset, "encryption type %u (btrfs defines none)", fi.encryption);
	if (k->offset % rd->fs->fi->sectorsize)
		return fext_bad(rd, k->offset, "file offset not a multiple of the %u-byte sector",
				rd->fs->fi->sectorsize);
	if (e->type == BF_FILE_EXTENT_INLINE)
		return inline_decode(rd, k->offset, size, e);
	return reg_decode(rd, k->offset, &fi, size, e);
}

/* Find what lies at pos in m: an extent (*e) or a hole up to *hole_end; LK_MISS if m does not cover pos. */
static int emap_lookup(const struct emap *m, uint64_t pos, struct fext *e, uint64_t *hole_end)
{
	unsigned lo = 0, hi = m->n;

	if (pos < m->lo || pos >= m->hi)
		return LK_MISS;
	while (lo < hi) { /* lo = number of extents starting at or before pos */
		unsigned mid = lo + (hi - lo) / 2;
		if (m->ext[mid].start <= pos)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo > 0 && pos < m->ext[lo - 1].end) {
		*e = m->ext[lo - 1];
		return LK_EXTENT;
	}
	*hole_end = lo < m->n ? m->ext[lo].start : m->hi;
	return LK_HOLE;
}

/* Build the map from the extent covering pos (or the first after it) on, up to EMAP_MAX extents. */
static int emap_fill(struct rd *rd, uint64_t pos, struct emap *m)
{
	struct bf_key key = { rd->ino, BF_EXTENT_DATA_KEY, pos };
	struct bf_path p;
	uint64_t prev_end = 0;
	struct fext e;
	int ret;

	m->lo = pos;
	m->hi = UINT64_MAX;
	m->n = 0;
	bf_path_init(&p, rd->fs->env);
	ret = bf_fs_seek_le(rd->fs->env, rd->root, &key, &p);
	while (ret == 0) {
		struct bf_key k = bf_path_key(&p);
		if (k.objectid != rd->ino || k.type != BF_EXTENT_DATA_KEY)
			break;
		if (m->n == EMAP_MAX) {
			m->hi = k.offset;
			break;
		}
		uint32_t size;
		const uint8_t *data = bf_path_item(&p, &size);
		ret = fext_decode(rd, &k, data, size, &e);
		if (ret < 0)
			break;
		if (e.start < prev_end) {
			ret = fext_bad(rd, k.offset, "extent overlaps the previous one, which ends at %llu",
				       (unsigned long long)prev_end);
			break;
		}
		prev_end = e.end;
		if (e.end > pos && e.end > e.start)
			m->ext[m->n++] = e;
		ret = bf_path_next(&p);
	}
	bf_path_release(&p);
	if (ret < 0)
		return ret;
	if (m->hi <= pos) /* keys out of order: the tree layer should have refused the leaf */
		return fext_bad(rd, pos, "extent keys out of order");
	return 0;
}

/* What lies at pos: from this call's map, else the file's shared map, else a new map from the tree. */
static int find_extent(struct rd *rd, uint64_t pos, struct fext *e, uint64_t *hole_end)
{
	int r = emap_lookup(&rd->local, pos, e, hole_end);

	if (r != LK_MISS)
		return r;
	if (rd->f) {
		pthread_mutex_lock(&rd->f->lock);
		bool shared_has = pos >= rd->f->map.lo && pos < rd->f->map.hi;
		if (shared_has)
			rd->local = rd->f->map;
		pthread_mutex_unlock(&rd->f->lock);
		if (shared_has)
			return emap_lookup(&rd->local, pos, e, hole_end);
	}
	r = emap_fill(rd, pos, &rd->local);
	if (r < 0)
		return r;
	if (rd->f) {
		pthread_mutex_lock(&rd->f->lock);
		rd->f->map = rd->local;
		pthread_mutex_unlock(&rd->f->lock);
	}
	return emap_lookup(&rd->local, pos, e, hole_end);
}

static struct bf_data_loc make_loc(const struct rd *rd, uint64_t logical, uint64_t file_off, bool compressed)
{
	struct bf_data_loc loc = { rd->subvol, rd->ino, logical, file_off, compressed };
	return loc;
}

/* Copy [roff, roff + n) of a decoded inline extent of len bytes; bytes past len are zeros. */
static void copy_padded(uint8_t *dst, const uint8_t *src, uint64_t len, uint64_t roff, size_t n)
{
	size_t have = roff < len ? (size_t)bf_min64(n, len - roff) : 0;

	memcpy(dst, src + roff, have);
	memset(dst + have, 0, n - have);
}

static int decompress_fail(const struct rd *rd, const struct fext *e, uint64_t logical, ssize_t r)
{
	if (r == -ENOMEM)
		return -ENOMEM;
	bf_log(BF_LOG_ERR, "cannot decompress: inode %llu (subvol %llu) file offset %llu: %s data at logical %llu "
	       "(%llu bytes to %llu) is corrupt; restore the file from a backup", (unsigned long long)rd->ino,
	       (unsigned long long)rd->subvol, (unsigned long long)e->start, bf_compress_name(e->compression),
	       (unsigned long long)logical, (unsigned long long)e->disk_num_bytes,
	       (unsigned long long)e->ram_bytes);
	return -EIO;
}

/* Inline data of [pos, pos + n): looked up again in the tree (inline files are small and read rarely). */
static int read_inline(struct rd *rd, uint8_t *dst, size_t n, uint64_t pos)
{
	struct bf_key key = { rd->ino, BF_EXTENT_DATA_KEY, 0 };
	struct bf_path p;
	struct fext e;
	uint32_t size;
	int ret;

	bf_path_init(&p, rd->fs->env);
	ret = bf_search(rd->fs->env, rd->root, &key, &p);
	if (ret > 0)
		ret = fext_bad(rd, 0, "the inline extent is gone");
	if (ret == 0) {
		const uint8_t *data = bf_path_item(&p, &size);
		ret = fext_decode(rd, &key, data, size, &e);
		if (ret == 0 && e.type != BF_FILE_EXTENT_INLINE)
			ret = fext_bad(rd, 0, "the inline extent changed type");
		const uint8_t *payload = data + BF_FILE_EXTENT_INLINE_DATA_START;
		size_t plen = size - BF_FILE_EXTENT_INLINE_DATA_START;
		if (ret == 0 && e.compression == BF_COMPRESS_NONE) {
			copy_padded(dst, payload, e.ram_bytes, pos, n);
		} else if (ret == 0) {
			uint8_t *out = malloc(e.ram_bytes ? e.ram_bytes : 1);
			ssize_t r = out ? bf_decompress(e.compression, payload, plen, out, e.ram_bytes,
							 rd->fs->fi->sectorsize) : -ENOMEM;
			if (r >= 0)
				copy_padded(dst, out, (uint64_t)r, pos, n);
			else
				ret = decompress_fail(rd, &e, 0, r);
			free(out);
		}
	}
	bf_path_release(&p);
	return ret;
}

/* Uncompressed disk data [pos, pos + n) of extent e, one device read per piece of at most BF_DATA_PIECE. With
   checksums the read is widened to whole sectors through a bounce buffer when pos or the end is unaligned. */
static int read_plain(struct rd *rd, const struct fext *e, uint8_t *dst, size_t n, uint64_t pos)
{
	uint32_t ss = rd->fs->fi->sectorsize;

	while (n) {
		size_t w = (size_t)bf_min64(n, BF_DATA_PIECE);
		uint64_t logical = e->disk_bytenr + e->offset + (pos - e->start);
		struct bf_data_loc loc = make_loc(rd, logical, pos, false);
		uint64_t a = bf_round_down(logical, ss), b = round_up64(logical + w, ss);
		int ret;

		if (!rd->datasum || (a == logical && b == logical + w)) {
			ret = bf_data_read(rd->fs, &loc, logical, dst, w, rd->datasum);
		} else {
			uint8_t *bounce = malloc(b - a);
			if (!bounce)
				return -ENOMEM;
			ret = bf_data_read(rd->fs, &loc, a, bounce, b - a, true);
			if (ret == 0)
				memcpy(dst, bounce + (logical - a), w);
			free(bounce);
		}
		if (ret < 0)
			return ret;
		dst += w;
		pos += w;
		n -= w;
	}
	return 0;
}

static bool zcache_match(const struct zcache *z, const struct fext *e)
{
	return z->data && z->disk_bytenr == e->disk_bytenr && z->disk_num_bytes == e->disk_num_bytes &&
	       z->ram_bytes == e->ram_bytes && z->compression == e->compression;
}

/* Copy [roff, roff + n) of e's decompressed bytes from the file's cache; false if it holds another extent. */
static bool zcache_copy(struct bf_file *f, const struct fext *e, uint8_t *dst, uint64_t roff, size_t n)
{
	bool hit;

	if (!f)
		return false;
	pthread_mutex_lock(&f->lock);
	hit = zcache_match(&f->z, e);
	if (hit)
		memcpy(dst, f->z.data + roff, n);
	pthread_mutex_unlock(&f->lock);
	return hit;
}

/* Make out (ram_bytes bytes, malloc'd) the file's cached extent; frees whatever it replaces or out itself. */
static void zcache_store(struct bf_file *f, const struct fext *e, uint8_t *out)
{
	if (!f) {
		free(out);
		return;
	}
	pthread_mutex_lock(&f->lock);
	uint8_t *old = f->z.data;
	f->z.disk_bytenr = e->disk_bytenr;
	f->z.disk_num_bytes = e->disk_num_bytes;
	f->z.ram_bytes = e->ram_bytes;
	f->z.compression = e->compression;
	f->z.data = out;
	pthread_mutex_unlock(&f->lock);
	free(old);
}

/* Compressed extent: read the whole disk extent, verify it (checksums cover the compressed bytes), decompress
   it to ram_bytes and take [offset + (pos - start), + n). */
static int read_compressed(struct rd *rd, const struct fext *e, uint8_t *dst, size_t n, uint64_t pos)
{
	uint64_t roff = e->offset + (pos - e->start); /* roff + n <= ram_bytes: checked by disk_extent_check */
	struct bf_data_loc loc = make_loc(rd, e->disk_bytenr, e->start, true);
	uint8_t *in, *out;
	ssize_t r;

	if (zcache_copy(rd->f, e, dst, roff, n))
		return 0;
	in = malloc(e->disk_num_bytes);
	out = malloc(e->ram_bytes);
	if (!in || !out) {
		free(in);
		free(out);
		return -ENOMEM;
	}
	r = bf_data_read(rd->fs, &loc, e->disk_bytenr, in, e->disk_num_bytes, rd->datasum);
	if (r == 0) {
		r = bf_decompress(e->compression, in, e->disk_num_bytes, out, e->ram_bytes, rd->fs->fi->sectorsize);
		if (r < 0)
			r = decompress_fail(rd, e, e->disk_bytenr, r);
	}
	free(in);
	if (r < 0) {
		free(out);
		return (int)r;
	}
	memset(out + r, 0, e->ram_bytes - (size_t)r); /* a stream that ends early leaves zeros, as in the kernel */
	memcpy(dst, out + roff, n);
	zcache_store(rd->f, e, out);
	return 0;
}

static int read_extent(struct rd *rd, const struct fext *e, uint8_t *dst, size_t n, uint64_t pos)
{
	if (e->type == BF_FILE_EXTENT_INLINE)
		return read_inline(rd, dst, n, pos);
	if (e->type == BF_FILE_EXTENT_PREALLOC || e->disk_bytenr == 0) {
		memset(dst, 0, n);
		return 0;
	}
	if (e->compression != BF_COMPRESS_NONE)
		return read_compressed(rd, e, dst, n, pos);
	return read_plain(rd, e, dst, n, pos);
}

static ssize_t read_range(struct rd *rd, uint8_t *buf, size_t len, uint64_t off)
{
	size_t done = 0;
	uint64_t end;

	if (len > SSIZE_MAX || bf_add_overflow(off, len, &end))
		return -EINVAL;
	rd->local.lo = rd->local.hi = 0;
	rd->local.n = 0;
	while (done < len) {
		uint64_t pos = off + done, hole_end = 0;
		struct fext e;
		int r = find_extent(rd, pos, &e, &hole_end);
		if (r < 0)
			return r;
		uint64_t stop = r == LK_HOLE ? hole_end : e.end; /* > pos */
		size_t n = (size_t)bf_min64(len - done, stop - pos);
		if (r == LK_HOLE) {
			memset(buf + done, 0, n);
		} else {
			int ret = read_extent(rd, &e, buf + done, n, pos);
			if (ret < 0)
				return ret;
		}
		done += n;
	}
	return (ssize_t)len;
}

static void rd_init(struct rd *rd, struct bf_fs *fs, const struct bf_root *root, uint64_t ino,
		    const struct bf_inode_item *ii, struct bf_file *f)
{
	rd->fs = fs;
	rd->root = root;
	rd->subvol = root->objectid;
	rd->ino = ino;
	rd->datasum = !(get64(ii->flags) & BF_INODE_NODATASUM);
	rd->f = f;
}

ssize_t bf_file_read_range(struct bf_fs *fs, const struct bf_root *root, uint64_t objectid,
			   const struct bf_inode_item *ii, void *buf, size_t len, uint64_t off)
{
	struct rd *rd = malloc(sizeof(*rd));
	ssize_t ret;

	if (!rd)
		return -ENOMEM;
	rd_init(rd, fs, root, objectid, ii, NULL);
	ret = read_range(rd, buf, len, off);
	free(rd);
	return ret;
}

int bf_fs_open_file(struct bf_fs *fs, uint64_t nodeid, struct bf_file **out)
{
	uint64_t subvol, ino;
	struct bf_file *f;
	int ret;

	*out = NULL;
	f = calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	ret = bf_nodeid_split(fs, nodeid, &subvol, &ino);
	if (ret == 0)
		ret = bf_fs_root(fs, subvol, &f->root);
	if (ret == 0)
		ret = bf_inode_load(fs, subvol, ino, &f->ii);
	if (ret == 0 && S_ISDIR(get32(f->ii.mode)))
		ret = -EISDIR;
	else if (ret == 0 && !S_ISREG(get32(f->ii.mode)))
		ret = -EINVAL;
	if (ret == 0 && pthread_mutex_init(&f->lock, NULL) != 0)
		ret = -ENOMEM;
	if (ret < 0) {
		free(f);
		return ret;
	}
	f->subvol = subvol;
	f->objectid = ino;
	bf_open_get(fs, subvol, ino);
	pthread_mutex_lock(&fs->files_lock);
	f->next = fs->files;
	if (f->next)
		f->next->prev = f;
	fs->files = f;
	pthread_mutex_unlock(&fs->files_lock);
	*out = f;
	return 0;
}

void bf_file_ident(const struct bf_file *f, uint64_t *root, uint64_t *ino)
{
	*root = f->subvol;
	*ino = f->objectid;
}

/* Forget the file's cached extent map and decompressed extent if a file extent changed since they were made.
   (Readers hold the fs lock shared and writers exclusively, so the sequence cannot move during a read.) */
static void caches_check(struct bf_fs *fs, struct bf_file *f)
{
	uint64_t seq = bf_data_seq(fs);

	pthread_mutex_lock(&f->lock);
	if (f->seq != seq) {
		f->map.lo = f->map.hi = 0;
		f->map.n = 0;
		free(f->z.data);
		f->z.data = NULL;
		f->seq = seq;
	}
	pthread_mutex_unlock(&f->lock);
}

/* Read [off, off + size): bytes written but not yet flushed come from memory (fs/write.c), the rest from the
   file's extents. */
static ssize_t read_with_dirty(struct rd *rd, uint8_t *buf, size_t size, uint64_t off)
{
	uint64_t pos = off, end = off + size, ds, de;
	const uint8_t *data;

	while (pos < end) {
		bool dirty = bf_data_dirty_next(rd->fs, rd->subvol, rd->ino, pos, end, &ds, &de, &data);
		uint64_t gap_end = dirty ? ds : end;
		if (gap_end > pos) {
			ssize_t r = read_range(rd, buf + (pos - off), (size_t)(gap_end - pos), pos);
			if (r < 0)
				return r;
		}
		if (dirty)
			memcpy(buf + (ds - off), data, (size_t)(de - ds));
		pos = dirty ? de : end;
	}
	return (ssize_t)size;
}

ssize_t bf_fs_read(struct bf_fs *fs, struct bf_file *f, void *buf, size_t size, uint64_t off)
{
	struct bf_inode_item ii; /* the inode and root as they are now: writes change both */
	struct bf_root root;
	struct rd *rd;
	ssize_t ret;
	int r = bf_inode_load(fs, f->subvol, f->objectid, &ii);

	if (r == 0)
		r = bf_fs_root(fs, f->subvol, &root);
	if (r < 0)
		return r;
	uint64_t isize = get64(ii.size);
	if (off >= isize || size == 0)
		return 0;
	size = (size_t)bf_min64(bf_min64(size, isize - off), SSIZE_MAX);
	rd = malloc(sizeof(*rd));
	if (!rd)
		return -ENOMEM;
	caches_check(fs, f);
	rd_init(rd, fs, &root, f->objectid, &ii, f);
	rd->subvol = f->subvol;
	ret = read_with_dirty(rd, buf, size, off);
	free(rd);
	return ret;
}

/* For the write path (fs/write.h): the read path's decoder and checks, on a bf_fext. */
int bf_fext_decode(const struct bf_fctx *c, uint64_t pos, const uint8_t *data, uint32_t size, struct bf_fext *out)
{
	struct bf_key k = { c->ino, BF_EXTENT_DATA_KEY, pos };
	struct rd rd = { .fs = c->fs, .subvol = c->subvol, .ino = c->ino };
	struct fext e;
	int ret = fext_decode(&rd, &k, data, size, &e);

	if (ret)
		return ret;
	*out = (struct bf_fext){ .pos = e.start, .len = e.type == BF_FILE_EXTENT_INLINE ? e.ram_bytes : e.end - e.start,
				 .disk_bytenr = e.disk_bytenr, .disk_num_bytes = e.disk_num_bytes, .offset = e.offset,
				 .ram_bytes = e.ram_bytes, .type = e.type, .compression = e.compression };
	return 0;
}

void bf_fs_release_file(struct bf_fs *fs, struct bf_file *f)
{
	if (!f)
		return;
	pthread_mutex_lock(&fs->files_lock);
	if (f->prev)
		f->prev->next = f->next;
	else
		fs->files = f->next;
	if (f->next)
		f->next->prev = f->prev;
	pthread_mutex_unlock(&fs->files_lock);
	bf_open_put(fs, f->subvol, f->objectid);
	pthread_mutex_destroy(&f->lock);
	free(f->z.data);
	free(f);
}

void bf_files_release_all(struct bf_fs *fs)
{
	for (;;) {
		pthread_mutex_lock(&fs->files_lock);
		struct bf_file *f = fs->files;
		pthread_mutex_unlock(&fs->files_lock);
		if (!f)
			return;
		bf_fs_release_file(fs, f);
	}
}
