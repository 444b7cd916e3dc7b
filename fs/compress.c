/*
 * fs/compress.c - btrfs extent decompression and compression.
 *
 * Owns: the three btrfs compressed-extent formats, for reading (hostile
 * input) and writing (output the Linux kernel reads back).
 *
 * Key ideas:
 *  - zlib: one zlib stream. Like the kernel, a well-formed 2-byte header
 *    without preset dictionary is skipped and the body inflated as raw
 *    deflate, so the trailing adler32 is not enforced (btrfs checksums the
 *    compressed bytes itself). Inflate stops at Z_STREAM_END, when the input
 *    runs out (short result, caller zero-fills) or when out is full.
 *  - zstd: one zstd frame, decoded with the streaming API so a frame that
 *    would overrun out just stops at out_len and a truncated frame yields
 *    what it decoded. The window is capped (2^22) to bound memory on
 *    hostile input; btrfs itself never uses more than 2^17.
 *  - lzo: btrfs's own framing around LZO1X: a LE32 total length (including
 *    itself), then segments of LE32 length + LZO1X data, each holding at
 *    most one sector of file data. A segment header never straddles a
 *    sector boundary (offsets counted from the start of the extent): when
 *    fewer than 4 bytes remain in the sector they are zero padding. The
 *    kernel (all versions: sectorsize == PAGE_SIZE before subpage support)
 *    and btrfs-progs (restore, mkfs --compress) use sectorsize for this.
 *    Every length is checked against the bytes actually present.
 *  - Compression mirrors the kernel's choices and its "must save at least
 *    one sector" rule. No shared mutable state besides a pthread_once for
 *    lzo_init(), so everything is thread-safe.
 */
#include "fs/compress.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <lzo/lzo1x.h>
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#define LZO_HDR 4u
#define ZSTD_READ_WINDOWLOG_MAX 22
#define ZSTD_BTRFS_WINDOWLOG 17
#define ZLIB_DEFAULT_LEVEL 3
#define ZSTD_DEFAULT_LEVEL 3
#define ZSTD_BTRFS_MIN_LEVEL (-15)
#define ZSTD_BTRFS_MAX_LEVEL 15

const char *bf_compress_name(unsigned type)
{
	switch (type) {
	case BF_COMPRESS_NONE: return "none";
	case BF_COMPRESS_ZLIB: return "zlib";
	case BF_COMPRESS_LZO: return "lzo";
	case BF_COMPRESS_ZSTD: return "zstd";
	default: return "unknown";
	}
}

static int sectorsize_ok(uint32_t ss)
{
	return ss >= 4096 && ss <= 65536 && (ss & (ss - 1)) == 0;
}

static uint32_t get_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
	       ((uint32_t)p[3] << 24);
}

static void put_le32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* LZO1X worst-case output for n input bytes (LZO FAQ / kernel formula). */
static size_t lzo_worst(size_t n)
{
	return n + n / 16 + 64 + 3;
}

static pthread_once_t lzo_once = PTHREAD_ONCE_INIT;
static int lzo_init_rc = -1;

static void lzo_init_once(void)
{
	lzo_init_rc = (lzo_init() == LZO_E_OK) ? 0 : -EIO;
}

static int lzo_ready(void)
{
	pthread_once(&lzo_once, lzo_init_once);
	return lzo_init_rc;
}

/* =============================================================== zlib */

struct zbuf {
	z_stream s;
	const uint8_t *in;
	size_t in_left;   /* input not yet handed to zlib */
	uint8_t *out;
	size_t out_left;  /* output space not yet handed to zlib */
	size_t out_given; /* output space handed to zlib so far */
};

/* zlib counts in uInt: hand over at most UINT_MAX bytes at a time. */
static void zbuf_refill(struct zbuf *z)
{
	if (z->s.avail_in == 0 && z->in_left > 0) {
		uInt n = z->in_left > UINT_MAX ? UINT_MAX : (uInt)z->in_left;
		z->s.next_in = (Bytef *)(uintptr_t)z->in;
		z->s.avail_in = n;
		z->in += n;
		z->in_left -= n;
	}
	if (z->s.avail_out == 0 && z->out_left > 0) {
		uInt n = z->out_left > UINT_MAX ? UINT_MAX : (uInt)z->out_left;
		z->s.next_out = z->out;
		z->s.avail_out = n;
		z->out += n;
		z->out_left -= n;
		z->out_given += n;
	}
}

/* Kernel-compatible header check: deflate, no dictionary, valid FCHECK. */
static int zlib_raw_wbits(const uint8_t *in, size_t in_len)
{
	if (in_len > 2 && !(in[1] & 0x20) && (in[0] & 0x0f) == Z_DEFLATED &&
	    (((unsigned)in[0] << 8) | in[1]) % 31 == 0)
		return -(((int)(in[0] >> 4)) + 8);
	return 0;
}

/* Returns 0 at stream end / input exhausted / output full, or -errno. */
static int zlib_inflate_loop(struct zbuf *z)
{
	for (;;) {
		zbuf_refill(z);
		if (z->s.avail_out == 0)
			return 0; /* out is full */
		uInt in0 = z->s.avail_in, out0 = z->s.avail_out;
		int ret = inflate(&z->s, Z_NO_FLUSH);
		if (ret == Z_STREAM_END)
			return 0;
		if (ret == Z_MEM_ERROR)
			return -ENOMEM;
		if (ret != Z_OK && ret != Z_BUF_ERROR)
			return -EIO;
		if (z->s.avail_in == in0 && z->s.avail_out == out0)
			return 0; /* no progress: input exhausted */
	}
}

static ssize_t zlib_decompress(const uint8_t *in, size_t in_len, uint8_t *out,
			       size_t out_len)
{
	struct zbuf z;
	int wbits = zlib_raw_wbits(in, in_len);

	memset(&z, 0, sizeof(z));
	if (wbits != 0) {
		in += 2;
		in_len -= 2;
	} else {
		wbits = MAX_WBITS;
	}
	z.in = in;
	z.in_left = in_len;
	z.out = out;
	z.out_left = out_len;
	int ret = inflateInit2(&z.s, wbits);
	if (ret != Z_OK)
		return ret == Z_MEM_ERROR ? -ENOMEM : -EIO;
	ret = zlib_inflate_loop(&z);
	size_t produced = z.out_given - z.s.avail_out;
	inflateEnd(&z.s);
	return ret < 0 ? ret : (ssize_t)produced;
}

/* =============================================================== zstd */

static ssize_t zstd_error(size_t r)
{
	return ZSTD_getErrorCode(r) == ZSTD_error_memory_allocation ? -ENOMEM : -EIO;
}

static ssize_t zstd_decompress(const uint8_t *in, size_t in_len, uint8_t *out,
			       size_t out_len)
{
	ZSTD_inBuffer ib = { in, in_len, 0 };
	ZSTD_outBuffer ob = { out, out_len, 0 };
	ZSTD_DCtx *d = ZSTD_createDCtx();
	ssize_t ret = 0;

	if (d == NULL)
		return -ENOMEM;
	size_t r = ZSTD_DCtx_setParameter(d, ZSTD_d_windowLogMax, ZSTD_READ_WINDOWLOG_MAX);
	while (!ZSTD_isError(r)) {
		size_t in0 = ib.pos, out0 = ob.pos;
		r = ZSTD_decompressStream(d, &ob, &ib);
		if (ZSTD_isError(r) || r == 0 || ob.pos == ob.size)
			break; /* error, frame complete, or out full */
		if (ib.pos == in0 && ob.pos == out0)
			break; /* no progress: input exhausted */
	}
	if (ZSTD_isError(r))
		ret = zstd_error(r);
	ZSTD_freeDCtx(d);
	return ret < 0 ? ret : (ssize_t)ob.pos;
}

/* ================================================================ lzo */

struct lzo_dec {
	const uint8_t *in;
	size_t tot;      /* total length from the header, <= in_len */
	size_t pos;      /* current offset in in */
	uint8_t *out;
	size_t out_len;
	size_t done;     /* bytes written to out */
	uint32_t ss;
	uint8_t *tmp;    /* lzo_worst(ss) bytes, for a segment near the end of out */
};

/* Decode one segment's payload into out (directly, or via tmp if the room
 * left is smaller than the largest output the kernel would accept). */
static int lzo_dec_segment(struct lzo_dec *d, const uint8_t *src, size_t len)
{
	size_t room = d->out_len - d->done;
	size_t cap = lzo_worst(d->ss);
	uint8_t *dst = d->out + d->done;
	lzo_uint n = cap;

	if (room < cap) {
		if (d->tmp == NULL && (d->tmp = malloc(cap)) == NULL)
			return -ENOMEM;
		dst = d->tmp;
	}
	if (lzo1x_decompress_safe(src, len, dst, &n, NULL) != LZO_E_OK || n > cap)
		return -EIO;
	if (dst == d->tmp)
		memcpy(d->out + d->done, d->tmp, n < room ? n : room);
	d->done += n < room ? n : room;
	return 0;
}

static int lzo_dec_next(struct lzo_dec *d)
{
	if (d->tot - d->pos < LZO_HDR)
		return -EIO; /* segment header cut off */
	size_t seg = get_le32(d->in + d->pos);
	d->pos += LZO_HDR;
	if (seg == 0 || seg > lzo_worst(d->ss) || seg > d->tot - d->pos)
		return -EIO;
	int ret = lzo_dec_segment(d, d->in + d->pos, seg);
	if (ret < 0)
		return ret;
	d->pos += seg;
	size_t left = d->ss - d->pos % d->ss;
	if (left < LZO_HDR)
		d->pos += left; /* padding: next header starts a new sector */
	return 0;
}

static ssize_t lzo_decompress(const uint8_t *in, size_t in_len, uint8_t *out,
			      size_t out_len, uint32_t ss)
{
	struct lzo_dec d = { .in = in, .out = out, .out_len = out_len, .ss = ss };
	int ret = lzo_ready();

	if (ret < 0)
		return ret;
	if (in_len < LZO_HDR)
		return -EIO;
	d.tot = get_le32(in);
	if (d.tot < LZO_HDR || d.tot > in_len)
		return -EIO;
	d.pos = LZO_HDR;
	while (ret == 0 && d.pos < d.tot && d.done < d.out_len)
		ret = lzo_dec_next(&d);
	free(d.tmp);
	return ret < 0 ? ret : (ssize_t)d.done;
}

/* ========================================================= decompress */

ssize_t bf_decompress(unsigned type, const void *in, size_t in_len, void *out,
		      size_t out_len, uint32_t sectorsize)
{
	if (type > BF_COMPRESS_ZSTD)
		return -EINVAL;
	if ((in == NULL && in_len > 0) || (out == NULL && out_len > 0) ||
	    out_len > (size_t)SSIZE_MAX)
		return -EINVAL;
	if (type == BF_COMPRESS_LZO && !sectorsize_ok(sectorsize))
		return -EINVAL;
	if (out_len == 0)
		return 0;
	if (in_len == 0)
		return type == BF_COMPRESS_NONE ? 0 : -EIO;
	switch (type) {
	case BF_COMPRESS_ZLIB:
		return zlib_decompress(in, in_len, out, out_len);
	case BF_COMPRESS_LZO:
		return lzo_decompress(in, in_len, out, out_len, sectorsize);
	case BF_COMPRESS_ZSTD:
		return zstd_decompress(in, in_len, out, out_len);
	default: {
		size_t n = in_len < out_len ? in_len : out_len;
		memcpy(out, in, n);
		return (ssize_t)n;
	}
	}
}

/* =========================================================== compress */

/* Each compressor returns the size written (> 0), 0 if it did not fit in
 * cap, or -errno. */

static ssize_t zlib_compress(int level, const uint8_t *in, size_t in_len,
			     uint8_t *out, size_t cap)
{
	z_stream s;

	memset(&s, 0, sizeof(s));
	if (level == 0)
		level = ZLIB_DEFAULT_LEVEL;
	level = level < 1 ? 1 : (level > 9 ? 9 : level);
	int ret = deflateInit(&s, level);
	if (ret != Z_OK)
		return ret == Z_MEM_ERROR ? -ENOMEM : -EIO;
	s.next_in = (Bytef *)(uintptr_t)in;
	s.avail_in = (uInt)in_len; /* both <= BF_COMPRESS_MAX_IN */
	s.next_out = out;
	s.avail_out = (uInt)cap;
	ret = deflate(&s, Z_FINISH);
	size_t n = s.total_out;
	deflateEnd(&s);
	if (ret == Z_STREAM_END)
		return (ssize_t)n;
	if (ret == Z_OK || ret == Z_BUF_ERROR)
		return 0;
	return -EIO;
}

static ssize_t zstd_set(ZSTD_CCtx *c, int level, size_t in_len)
{
	size_t r = ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, level);

	if (!ZSTD_isError(r))
		r = ZSTD_CCtx_setParameter(c, ZSTD_c_windowLog, ZSTD_BTRFS_WINDOWLOG);
	if (!ZSTD_isError(r))
		r = ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 0);
	if (!ZSTD_isError(r))
		r = ZSTD_CCtx_setPledgedSrcSize(c, in_len);
	return ZSTD_isError(r) ? -EIO : 0;
}

static ssize_t zstd_compress(int level, const uint8_t *in, size_t in_len,
			     uint8_t *out, size_t cap)
{
	ZSTD_CCtx *c = ZSTD_createCCtx();
	ssize_t ret;

	if (c == NULL)
		return -ENOMEM;
	if (level == 0)
		level = ZSTD_DEFAULT_LEVEL;
	if (level < ZSTD_BTRFS_MIN_LEVEL)
		level = ZSTD_BTRFS_MIN_LEVEL;
	if (level > ZSTD_BTRFS_MAX_LEVEL)
		level = ZSTD_BTRFS_MAX_LEVEL;
	ret = zstd_set(c, level, in_len);
	if (ret == 0) {
		size_t r = ZSTD_compress2(c, out, cap, in, in_len);
		if (!ZSTD_isError(r))
			ret = (ssize_t)r;
		else if (ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall)
			ret = 0;
		else
			ret = zstd_error(r);
	}
	ZSTD_freeCCtx(c);
	return ret;
}

struct lzo_enc {
	uint8_t *out;
	size_t cap;
	size_t pos;
	uint32_t ss;
	uint8_t *tmp;  /* lzo_worst(ss) bytes */
	void *wrk;     /* LZO1X_1_MEM_COMPRESS bytes */
};

/* Append one sector's segment; 1 if it fits, 0 if not, -errno. */
static int lzo_enc_segment(struct lzo_enc *e, const uint8_t *src, size_t len)
{
	lzo_uint clen = 0;

	if (lzo1x_1_compress(src, len, e->tmp, &clen, e->wrk) != LZO_E_OK ||
	    clen > lzo_worst(e->ss))
		return -EIO;
	if (e->cap - e->pos < LZO_HDR + clen)
		return 0;
	put_le32(e->out + e->pos, (uint32_t)clen);
	memcpy(e->out + e->pos + LZO_HDR, e->tmp, clen);
	e->pos += LZO_HDR + clen;
	size_t left = e->ss - e->pos % e->ss;
	if (left < LZO_HDR) {
		if (e->cap - e->pos < left)
			return 0;
		memset(e->out + e->pos, 0, left);
		e->pos += left;
	}
	return 1;
}

static ssize_t lzo_compress(const uint8_t *in, size_t in_len, uint8_t *out,
			    size_t cap, uint32_t ss)
{
	struct lzo_enc e = { .out = out, .cap = cap, .pos = LZO_HDR, .ss = ss };
	int ret = lzo_ready();

	if (ret < 0 || cap < LZO_HDR)
		return ret;
	e.tmp = malloc(lzo_worst(ss));
	e.wrk = malloc(LZO1X_1_MEM_COMPRESS);
	ret = (e.tmp && e.wrk) ? 1 : -ENOMEM;
	for (size_t done = 0; ret == 1 && done < in_len;) {
		size_t n = in_len - done < ss ? in_len - done : ss;
		ret = lzo_enc_segment(&e, in + done, n);
		done += n;
	}
	free(e.tmp);
	free(e.wrk);
	if (ret != 1)
		return ret;
	put_le32(out, (uint32_t)e.pos);
	return (ssize_t)e.pos;
}

static ssize_t compress_type(unsigned type, int level, const uint8_t *in,
			     size_t in_len, uint8_t *out, size_t cap, uint32_t ss)
{
	switch (type) {
	case BF_COMPRESS_ZLIB: return zlib_compress(level, in, in_len, out, cap);
	case BF_COMPRESS_LZO: return lzo_compress(in, in_len, out, cap, ss);
	case BF_COMPRESS_ZSTD: return zstd_compress(level, in, in_len, out, cap);
	default: return -EINVAL;
	}
}

ssize_t bf_compress(unsigned type, int level, const void *in, size_t in_len,
		    void *out, size_t out_cap, uint32_t sectorsize)
{
	if (type < BF_COMPRESS_ZLIB || type > BF_COMPRESS_ZSTD ||
	    !sectorsize_ok(sectorsize) || in_len > BF_COMPRESS_MAX_IN ||
	    (in == NULL && in_len > 0) || (out == NULL && out_cap > 0))
		return -EINVAL;
	/* Kernel rule: round_up(csize) + sectorsize <= round_up(in_len). */
	size_t rounded = (in_len + sectorsize - 1) / sectorsize * sectorsize;
	size_t limit = rounded - (rounded >= sectorsize ? sectorsize : rounded);
	if (limit == 0)
		return 0;
	if (out_cap == 0)
		return -ENOSPC;
	size_t cap = out_cap < limit ? out_cap : limit;
	ssize_t n = compress_type(type, level, in, in_len, out, cap, sectorsize);
	if (n == 0 && out_cap < limit)
		return -ENOSPC;
	return n;
}
