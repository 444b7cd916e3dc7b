/*
 * tests/unit/test_compress.c - unit tests for fs/compress.c.
 *
 * Owns: checks of bf_decompress/bf_compress against real kernel-written
 * extents (tests/unit/vectors_compress.h, verified by SHA-256), round trips
 * for zlib/lzo/zstd at sector sizes 4K/16K/64K on random, zero, text-like
 * and mixed data of 1 byte .. 1 MiB, the kernel's compressibility rule and
 * output constraints, and hostile input (random bytes, truncation, byte
 * flips, crafted LZO/zlib/zstd headers) which must give -EIO or a count
 * within out_len and never write past out_len (guard bytes; run it under
 * ASan+UBSan too). Seeded PRNG: the seed is printed, pass it as argv[1] to
 * replay. Ends with "N passed, N failed"; exit 0 only if none failed.
 */
#include "fs/compress.h"
#include "tests/unit/vectors_compress.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lzo/lzo1x.h>
#include <zlib.h>
#include <zstd.h>
#include "tests/unit/check.h"



static const uint32_t sector_sizes[] = { 4096, 16384, 65536 };
static const unsigned types[] = { BF_COMPRESS_ZLIB, BF_COMPRESS_LZO, BF_COMPRESS_ZSTD };

/* ------------------------------------------------------------ helpers */

struct rng { uint64_t s; };

static uint64_t rng_next(struct rng *r)
{
	return splitmix64(&r->s);
}

static size_t rng_below(struct rng *r, size_t n)
{
	return n ? (size_t)(rng_next(r) % n) : 0;
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p) {
		printf("out of memory\n");
		exit(2);
	}
	return p;
}

enum kind { K_RANDOM, K_ZERO, K_TEXT, K_MIXED, K_COUNT };
static const char *kind_name[] = { "random", "zero", "text", "mixed" };

static void fill_text(struct rng *r, uint8_t *p, size_t n)
{
	static const char *w[] = { "btrfs ", "extent ", "inode ", "chunk ", "tree ",
				   "leaf ", "key ", "root ", "sector ", "page\n" };
	size_t i = 0;
	while (i < n) {
		const char *s = w[rng_below(r, 10)];
		for (; *s && i < n; s++)
			p[i++] = (uint8_t)*s;
	}
}

static void fill(struct rng *r, enum kind k, uint8_t *p, size_t n)
{
	size_t i = 0;

	switch (k) {
	case K_RANDOM:
		for (; i < n; i++)
			p[i] = (uint8_t)rng_next(r);
		break;
	case K_ZERO:
		memset(p, 0, n);
		break;
	case K_TEXT:
		fill_text(r, p, n);
		break;
	default: /* runs of repeated bytes mixed with noise */
		while (i < n) {
			size_t run = 1 + rng_below(r, 300);
			uint8_t v = (uint8_t)rng_next(r);
			int noisy = rng_below(r, 3) == 0;
			for (; run-- && i < n; i++)
				p[i] = noisy ? (uint8_t)rng_next(r) : v;
		}
	}
}

static size_t round_up(size_t v, size_t a)
{
	return (v + a - 1) / a * a;
}

static uint32_t le32(const uint8_t *p)
{
	return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
	       ((uint32_t)p[3] << 24);
}

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* Output buffer with guard bytes after out_len to catch overruns. */
#define GUARD 64
static uint8_t *guarded(size_t out_len)
{
	uint8_t *p = xmalloc(out_len + GUARD);
	memset(p, 0xA5, out_len + GUARD);
	return p;
}

static int guard_ok(const uint8_t *p, size_t out_len)
{
	for (size_t i = 0; i < GUARD; i++)
		if (p[out_len + i] != 0xA5)
			return 0;
	return 1;
}

/* ------------------------------------------------- SHA-256 (FIPS 180-4) */

struct sha256 { uint32_t h[8]; uint8_t buf[64]; size_t fill; uint64_t bits; };

static const uint32_t sha_k[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t ror(uint32_t x, int n)
{
	return (x >> n) | (x << (32 - n));
}

static void sha_block(struct sha256 *s, const uint8_t *p)
{
	uint32_t w[64], v[8];

	for (int i = 0; i < 16; i++)
		w[i] = ((uint32_t)p[4 * i] << 24) | ((uint32_t)p[4 * i + 1] << 16) |
		       ((uint32_t)p[4 * i + 2] << 8) | p[4 * i + 3];
	for (int i = 16; i < 64; i++) {
		uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
		uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
		w[i] = w[i - 16] + s0 + w[i - 7] + s1;
	}
	memcpy(v, s->h, sizeof(v));
	for (int i = 0; i < 64; i++) {
		uint32_t t1 = v[7] + (ror(v[4], 6) ^ ror(v[4], 11) ^ ror(v[4], 25)) +
			      ((v[4] & v[5]) ^ (~v[4] & v[6])) + sha_k[i] + w[i];
		uint32_t t2 = (ror(v[0], 2) ^ ror(v[0], 13) ^ ror(v[0], 22)) +
			      ((v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]));
		memmove(v + 1, v, 7 * sizeof(v[0]));
		v[4] += t1;
		v[0] = t1 + t2;
	}
	for (int i = 0; i < 8; i++)
		s->h[i] += v[i];
}

static void sha_update(struct sha256 *s, const uint8_t *p, size_t n)
{
	s->bits += (uint64_t)n * 8;
	while (n--) {
		s->buf[s->fill++] = *p++;
		if (s->fill == 64) {
			sha_block(s, s->buf);
			s->fill = 0;
		}
	}
}

static void sha256_hex(const uint8_t *p, size_t n, char hex[65])
{
	struct sha256 s = { { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
			      0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 }, { 0 }, 0, 0 };
	uint64_t bits;
	uint8_t pad = 0x80, len[8];

	sha_update(&s, p, n);
	bits = s.bits;
	sha_update(&s, &pad, 1);
	pad = 0;
	while (s.fill != 56)
		sha_update(&s, &pad, 1);
	for (int i = 0; i < 8; i++)
		len[i] = (uint8_t)(bits >> (56 - 8 * i));
	sha_update(&s, len, 8);
	for (int i = 0; i < 8; i++)
		snprintf(hex + 8 * i, 9, "%08" PRIx32, s.h[i]);
}

/* Independent implementation of the btrfs LZO framing, for cross-checks. */
static size_t lzo_frame(const uint8_t *in, size_t len, uint32_t ss, uint8_t *out)
{
	static uint8_t wrk[LZO1X_1_MEM_COMPRESS];
	size_t pos = 4;

	for (size_t off = 0; off < len; off += ss) {
		size_t n = len - off < ss ? len - off : ss;
		lzo_uint clen = 0;
		lzo1x_1_compress(in + off, n, out + pos + 4, &clen, wrk);
		put32(out + pos, (uint32_t)clen);
		pos += 4 + clen;
		if (ss - pos % ss < 4) {
			memset(out + pos, 0, ss - pos % ss);
			pos += ss - pos % ss;
		}
	}
	put32(out, (uint32_t)pos);
	return pos;
}

static size_t lzo_frame_cap(size_t len, uint32_t ss)
{
	size_t segs = len / ss + 1;
	return 4 + segs * (8 + ss + ss / 16 + 64 + 3);
}

/* Window size a zstd frame header declares (RFC 8878 3.1.1.1), 0 if bad. */
static uint64_t zstd_window(const uint8_t *c, size_t len)
{
	static const size_t did_len[4] = { 0, 1, 2, 4 }, fcs_len[4] = { 1, 2, 4, 8 };

	if (len < 6 || le32(c) != 0xFD2FB528u)
		return 0;
	uint8_t fhd = c[4];
	if (!(fhd & 0x20)) { /* window descriptor present */
		uint64_t base = 1ull << (10 + (c[5] >> 3));
		return base + (base / 8) * (c[5] & 7);
	}
	size_t pos = 5 + did_len[fhd & 3], n = fcs_len[fhd >> 6];
	uint64_t fcs = 0;
	if (pos + n > len)
		return 0;
	for (size_t i = 0; i < n; i++)
		fcs |= (uint64_t)c[pos + i] << (8 * i);
	return n == 2 ? fcs + 256 : fcs;
}

/* ------------------------------------------------------------- vectors */

static void test_sha_self(void)
{
	char hex[65];

	sha256_hex((const uint8_t *)"abc", 3, hex);
	CHECK(strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") == 0,
	      "test SHA-256(\"abc\") = %s", hex);
}

/* liblzo2's LZO1X-1 and the kernel's agree on this input, so bf_compress
 * must reproduce the kernel's extent byte for byte, padding included. */
static void lzo_recompress_check(const struct compress_vector *v, const uint8_t *data)
{
	uint8_t *c = xmalloc(v->count);
	ssize_t n = bf_compress(BF_COMPRESS_LZO, 0, data, v->count, c, v->count, 4096);

	CHECK(n == (ssize_t)v->len && memcmp(c, v->data, v->len) == 0,
	      "vector %s: bf_compress gave %zd bytes, not the kernel's %zu", v->name, n, v->len);
	free(c);
}

static void test_vector(const struct compress_vector *v)
{
	uint8_t *in = xmalloc(v->len), *out = guarded(v->ram_bytes);
	char hex[65] = "";

	memcpy(in, v->data, v->len);
	ssize_t r = bf_decompress(v->type, in, v->len, out, v->ram_bytes, 4096);
	if (r >= 0)
		sha256_hex(out, (size_t)r, hex);
	CHECK(r == (ssize_t)v->count && strcmp(hex, v->sha256) == 0 && guard_ok(out, v->ram_bytes),
	      "vector %s: bf_decompress = %zd (want %zu), sha256 %s", v->name, r, v->count, hex);
	/* a short output buffer gets exactly a prefix */
	size_t half = v->count / 2;
	uint8_t *part = guarded(half);
	r = bf_decompress(v->type, in, v->len, part, half, 4096);
	CHECK(r == (ssize_t)half && memcmp(part, out, half) == 0 && guard_ok(part, half),
	      "vector %s: out_len %zu gave %zd", v->name, half, r);
	free(part);
	if (strcmp(v->name, "lzo_regular_pad") == 0 && r >= 0)
		lzo_recompress_check(v, out);
	free(out);
	free(in);
}

static void test_vectors(void)
{
	for (size_t i = 0; i < sizeof(compress_vectors) / sizeof(compress_vectors[0]); i++)
		test_vector(&compress_vectors[i]);
}

/* ---------------------------------------------------------- round trip */

struct rt { unsigned type; uint32_t ss; enum kind kind; size_t len; };

static void rt_decode_checks(const struct rt *t, const uint8_t *src, const uint8_t *c, size_t clen)
{
	size_t padded = round_up(clen, t->ss); /* as read from disk: sector padded */
	uint8_t *in = xmalloc(padded), *out = guarded(t->len + 100);

	memcpy(in, c, clen);
	memset(in + clen, 0, padded - clen);
	ssize_t r = bf_decompress(t->type, in, clen, out, t->len, t->ss);
	CHECK(r == (ssize_t)t->len && memcmp(out, src, t->len) == 0 && guard_ok(out, t->len),
	      "roundtrip %s ss %u %s len %zu: decompress = %zd", bf_compress_name(t->type),
	      t->ss, kind_name[t->kind], t->len, r);
	r = bf_decompress(t->type, in, padded, out, t->len + 100, t->ss);
	CHECK(r == (ssize_t)t->len && memcmp(out, src, t->len) == 0 && guard_ok(out, t->len + 100),
	      "roundtrip %s ss %u %s len %zu: padded input, big out = %zd", bf_compress_name(t->type),
	      t->ss, kind_name[t->kind], t->len, r);
	size_t part = t->len / 3;
	memset(out, 0xA5, t->len + 100 + GUARD);
	r = bf_decompress(t->type, in, padded, out, part, t->ss);
	CHECK(r == (ssize_t)part && memcmp(out, src, part) == 0 && guard_ok(out, part),
	      "roundtrip %s ss %u %s len %zu: out_len %zu = %zd", bf_compress_name(t->type),
	      t->ss, kind_name[t->kind], t->len, part, r);
	free(out);
	free(in);
}

/* Properties of an accepted compressed result. */
static void rt_format_checks(const struct rt *t, const uint8_t *src, const uint8_t *c, size_t clen)
{
	CHECK(clen < t->len && round_up(clen, t->ss) + t->ss <= round_up(t->len, t->ss),
	      "%s ss %u len %zu: size %zu breaks the one-sector rule", bf_compress_name(t->type),
	      t->ss, t->len, clen);
	if (t->type == BF_COMPRESS_LZO) {
		uint8_t *ref = xmalloc(lzo_frame_cap(t->len, t->ss));
		size_t rlen = lzo_frame(src, t->len, t->ss, ref);
		CHECK(rlen == clen && memcmp(ref, c, clen) == 0,
		      "lzo ss %u len %zu: framing differs from reference encoder", t->ss, t->len);
		free(ref);
	} else if (t->type == BF_COMPRESS_ZSTD) {
		uint64_t w = zstd_window(c, clen);
		CHECK(w > 0 && w <= 131072, "zstd len %zu: window %" PRIu64 " not in 1..128K",
		      t->len, w);
	} else {
		uint8_t *out = xmalloc(t->len);
		uLongf olen = t->len;
		int zr = uncompress(out, &olen, c, clen); /* also checks adler32 */
		CHECK(zr == Z_OK && olen == t->len, "zlib len %zu: not a valid zlib stream", t->len);
		free(out);
	}
}

static void roundtrip_one(struct rng *r, const struct rt *t)
{
	uint8_t *src = xmalloc(t->len), *c = xmalloc(t->len);

	fill(r, t->kind, src, t->len);
	ssize_t n = bf_compress(t->type, 0, src, t->len, c, t->len, t->ss);
	CHECK(n >= 0, "bf_compress %s ss %u %s len %zu = %zd", bf_compress_name(t->type),
	      t->ss, kind_name[t->kind], t->len, n);
	int must = (t->kind == K_ZERO || t->kind == K_TEXT) && t->len >= 2 * t->ss;
	CHECK(!must || n > 0, "bf_compress %s ss %u %s len %zu did not compress",
	      bf_compress_name(t->type), t->ss, kind_name[t->kind], t->len);
	CHECK(t->kind != K_RANDOM || n == 0, "bf_compress %s random len %zu claims %zd",
	      bf_compress_name(t->type), t->len, n);
	if (n > 0) {
		rt_format_checks(t, src, c, (size_t)n);
		rt_decode_checks(t, src, c, (size_t)n);
	}
	free(c);
	free(src);
}

static void test_roundtrip(void)
{
	static const size_t sizes[] = { 1, 2, 3, 100, 511, 4095, 4096, 4097, 8191, 8192, 8193,
					12288, 16383, 16384, 16385, 32768, 65535, 65536, 65537,
					100000, 131071, 131072 };
	struct rng r = { check_seed ^ 0x1111 };

	for (size_t ti = 0; ti < 3; ti++)
		for (size_t si = 0; si < 3; si++)
			for (int k = 0; k < K_COUNT; k++)
				for (size_t li = 0; li < sizeof(sizes) / sizeof(sizes[0]); li++) {
					struct rt t = { types[ti], sector_sizes[si], (enum kind)k, sizes[li] };
					roundtrip_one(&r, &t);
				}
}

/* 1 MiB: btrfs splits into 128 KiB extents; decoders also take big streams. */
static void test_large(void)
{
	const size_t len = 1u << 20;
	uint8_t *src = xmalloc(len), *c = xmalloc(len + 65536), *out = guarded(len);
	struct rng r = { check_seed ^ 0x2222 };

	fill(&r, K_TEXT, src, len);
	CHECK(bf_compress(BF_COMPRESS_ZLIB, 0, src, len, c, len, 4096) == -EINVAL,
	      "bf_compress of 1 MiB not -EINVAL");
	for (size_t ti = 0; ti < 3; ti++)
		for (size_t off = 0; off < len; off += BF_COMPRESS_MAX_IN) {
			struct rt t = { types[ti], 4096, K_TEXT, BF_COMPRESS_MAX_IN };
			ssize_t n = bf_compress(t.type, 0, src + off, t.len, c, t.len, 4096);
			CHECK(n > 0, "1 MiB chunk %zu %s = %zd", off, bf_compress_name(t.type), n);
			if (n > 0)
				rt_decode_checks(&t, src + off, c, (size_t)n);
		}
	size_t zl = (size_t)ZSTD_compress(c, len + 65536, src, len, 3);
	ssize_t got = bf_decompress(BF_COMPRESS_ZSTD, c, zl, out, len, 4096);
	CHECK(got == (ssize_t)len && memcmp(out, src, len) == 0, "zstd 1 MiB frame = %zd", got);
	uLongf gl = len + 65536;
	compress2(c, &gl, src, len, 6);
	got = bf_decompress(BF_COMPRESS_ZLIB, c, gl, out, len, 4096);
	CHECK(got == (ssize_t)len && memcmp(out, src, len) == 0, "zlib 1 MiB stream = %zd", got);
	free(c);
	c = xmalloc(lzo_frame_cap(len, 65536));
	size_t ll = lzo_frame(src, len, 65536, c);
	got = bf_decompress(BF_COMPRESS_LZO, c, ll, out, len, 65536);
	CHECK(got == (ssize_t)len && memcmp(out, src, len) == 0 && guard_ok(out, len),
	      "lzo 1 MiB frame (64K sectors) = %zd", got);
	free(c);
	free(out);
	free(src);
}

/* ------------------------------------------------------------- hostile */

/* Decode in (copied to an exact-size heap block so ASan sees overreads);
 * the result must be -EIO or 0..out_len, with the guard intact. */
static ssize_t hostile(unsigned type, const uint8_t *data, size_t len, size_t out_len,
		       uint32_t ss, const char *what)
{
	uint8_t *in = xmalloc(len), *out = guarded(out_len);

	memcpy(in, data, len);
	ssize_t r = bf_decompress(type, in, len, out, out_len, ss);
	int ok = (r == -EIO || (r >= 0 && (size_t)r <= out_len)) && guard_ok(out, out_len);
	if (!ok) {
		n_fail++;
		printf("FAIL hostile %s %s len %zu out_len %zu ss %u: %zd (seed %" PRIu64 ")\n",
		       bf_compress_name(type), what, len, out_len, ss, r, check_seed);
	} else {
		n_pass++;
	}
	free(out);
	free(in);
	return r;
}

static void test_random_bytes(void)
{
	struct rng r = { check_seed ^ 0x3333 };
	uint8_t *buf = xmalloc(20000);

	for (int it = 0; it < 20000; it++) {
		size_t len = rng_below(&r, 9000), out_len = rng_below(&r, 70000);
		unsigned type = types[it % 3];
		uint32_t ss = sector_sizes[rng_below(&r, 3)];
		for (size_t i = 0; i < len; i++)
			buf[i] = (uint8_t)rng_next(&r);
		if (type == BF_COMPRESS_LZO && len >= 8 && rng_below(&r, 2)) {
			put32(buf, (uint32_t)len); /* plausible LZO headers */
			put32(buf + 4, (uint32_t)rng_below(&r, len));
		}
		if (type == BF_COMPRESS_ZLIB && len >= 2 && rng_below(&r, 2)) {
			buf[0] = 0x78; /* plausible zlib header */
			buf[1] = 0x5e;
		}
		if (type == BF_COMPRESS_ZSTD && len >= 4 && rng_below(&r, 2))
			put32(buf, 0xFD2FB528u);
		hostile(type, buf, len, out_len, ss, "random bytes");
	}
	free(buf);
}

/* A valid compressed stream of len bytes of text at sector size ss. */
static size_t valid_stream(unsigned type, uint32_t ss, uint8_t *src, size_t len, uint8_t *c)
{
	struct rng r = { check_seed ^ 0x4444 };

	fill(&r, K_MIXED, src, len / 2);
	fill(&r, K_TEXT, src + len / 2, len - len / 2);
	ssize_t n = bf_compress(type, 0, src, len, c, len, ss);
	return n > 0 ? (size_t)n : 0;
}

static void test_truncated(void)
{
	const size_t len = 65536;
	uint8_t *src = xmalloc(len), *c = xmalloc(len);

	for (size_t ti = 0; ti < 3; ti++) {
		size_t clen = valid_stream(types[ti], 4096, src, len, c);
		CHECK(clen > 0, "truncation: no %s stream", bf_compress_name(types[ti]));
		for (size_t cut = 0; cut < clen; cut += (cut < 300 ? 1 : 97)) {
			uint8_t *out = guarded(len);
			uint8_t *in = xmalloc(cut);
			memcpy(in, c, cut);
			ssize_t r = bf_decompress(types[ti], in, cut, out, len, 4096);
			int ok = r == -EIO || (r >= 0 && (size_t)r <= len && memcmp(out, src, (size_t)r) == 0);
			if (types[ti] == BF_COMPRESS_LZO)
				ok = r == -EIO; /* total length > in_len */
			CHECK(ok && guard_ok(out, len), "truncated %s at %zu of %zu: %zd",
			      bf_compress_name(types[ti]), cut, clen, r);
			free(in);
			free(out);
		}
	}
	free(c);
	free(src);
}

static void test_flips(void)
{
	const size_t len = 32768;
	uint8_t *src = xmalloc(len), *c = xmalloc(len), *m = xmalloc(len);
	struct rng r = { check_seed ^ 0x5555 };

	for (size_t ti = 0; ti < 3; ti++)
		for (size_t si = 0; si < 3; si++) {
			size_t clen = valid_stream(types[ti], sector_sizes[si], src, len, c);
			if (clen == 0)
				continue;
			for (int it = 0; it < 2000; it++) {
				memcpy(m, c, clen);
				for (size_t k = 1 + rng_below(&r, 8); k > 0; k--)
					m[rng_below(&r, clen)] ^= (uint8_t)(1 + rng_below(&r, 255));
				hostile(types[ti], m, clen, rng_below(&r, 2) ? len : rng_below(&r, len),
					sector_sizes[si], "byte flips");
			}
		}
	free(m);
	free(c);
	free(src);
}

/* ------------------------------------------------------- crafted input */

static ssize_t dec(unsigned type, const uint8_t *in, size_t len, uint8_t *out, size_t out_len,
		   uint32_t ss)
{
	uint8_t *copy = xmalloc(len);
	memcpy(copy, in, len);
	ssize_t r = bf_decompress(type, copy, len, out, out_len, ss);
	free(copy);
	return r;
}

/* One-segment LZO frame holding n zero bytes. */
static size_t lzo_one_segment(size_t n, uint8_t *f)
{
	static uint8_t wrk[LZO1X_1_MEM_COMPRESS];
	uint8_t *zero = calloc(n, 1);
	lzo_uint clen = 0;

	lzo1x_1_compress(zero, n, f + 8, &clen, wrk);
	free(zero);
	put32(f, (uint32_t)(8 + clen));
	put32(f + 4, (uint32_t)clen);
	return 8 + clen;
}

static void test_lzo_crafted(void)
{
	enum { LEN = 3 * 4096 + 100, OUT = LEN + 8192 };
	static uint8_t src[LEN], f[2 * LEN], g[2 * LEN], out[OUT];
	struct rng r = { check_seed ^ 0x6666 };
	const unsigned L = BF_COMPRESS_LZO;

	fill(&r, K_TEXT, src, LEN);
	size_t flen = lzo_frame(src, LEN, 4096, f);
	CHECK(dec(L, f, flen, out, OUT, 4096) == LEN && memcmp(out, src, LEN) == 0, "lzo baseline");
	CHECK(dec(L, f, 3, out, OUT, 4096) == -EIO, "lzo in_len 3 not -EIO");
	memcpy(g, f, flen);
	put32(g, (uint32_t)flen + 1);
	CHECK(dec(L, g, flen, out, OUT, 4096) == -EIO, "lzo total > in_len not -EIO");
	for (uint32_t t = 0; t < 4; t++) {
		put32(g, t);
		CHECK(dec(L, g, flen, out, OUT, 4096) == -EIO, "lzo total %u not -EIO", t);
	}
	put32(g, 4);
	CHECK(dec(L, g, 4, out, OUT, 4096) == 0, "lzo empty frame not 0");
	put32(g, 6);
	CHECK(dec(L, g, 8, out, OUT, 4096) == -EIO, "lzo cut segment header not -EIO");
	memcpy(g, f, flen);
	put32(g + 4, (uint32_t)(flen - 8 + 1));
	CHECK(dec(L, g, flen, out, OUT, 4096) == -EIO, "lzo segment past end not -EIO");
	put32(g + 4, 0);
	CHECK(dec(L, g, flen, out, OUT, 4096) == -EIO, "lzo zero segment not -EIO");
	/* total length says more than in_len: the valid bytes beyond in_len
	 * must not be read */
	size_t first = 8 + le32(f + 4);
	CHECK(dec(L, f, first, out, OUT, 4096) == -EIO, "lzo total > in_len (bytes beyond valid)");
	memset(g, 0, sizeof(g));
	put32(g, 8 + 4419 + 1);
	put32(g + 4, 4419 + 1);
	CHECK(dec(L, g, 8 + 4419 + 1, out, OUT, 4096) == -EIO, "lzo segment > worst case not -EIO");
	/* trailing bytes after the total length are ignored */
	memcpy(g, f, flen);
	memset(g + flen, 0x5a, 300);
	CHECK(dec(L, g, flen + 300, out, OUT, 4096) == LEN && memcmp(out, src, LEN) == 0,
	      "lzo trailing garbage changed the result");
	static const uint32_t bad_ss[] = { 0, 512, 2048, 12288, 131072 };
	for (size_t i = 0; i < 5; i++)
		CHECK(dec(L, f, flen, out, OUT, bad_ss[i]) == -EINVAL, "lzo sectorsize %u not -EINVAL",
		      bad_ss[i]);
}

/* Like the kernel: one segment may not produce more than
 * lzo1x_worst_compress(sectorsize) bytes; up to that it is accepted. */
static void test_lzo_segment_output(void)
{
	static uint8_t g[16384], out[16384];
	const unsigned L = BF_COMPRESS_LZO;

	size_t n = lzo_one_segment(8192, g);
	CHECK(dec(L, g, n, out, sizeof(out), 4096) == -EIO, "lzo segment of 8192 bytes at 4K not -EIO");
	CHECK(dec(L, g, n, out, sizeof(out), 16384) == 8192, "lzo segment of 8192 bytes at 16K rejected");
	n = lzo_one_segment(4400, g);
	CHECK(dec(L, g, n, out, sizeof(out), 4096) == 4400, "lzo segment of 4400 bytes at 4K rejected");
	CHECK(dec(L, g, n, out, 1000, 4096) == 1000, "lzo 4400-byte segment into 1000 bytes");
}

static void test_zlib_crafted(void)
{
	enum { LEN = 20000 };
	static uint8_t src[LEN], c[2 * LEN], out[LEN + 100];
	struct rng r = { check_seed ^ 0x7777 };
	const unsigned Z = BF_COMPRESS_ZLIB;

	fill(&r, K_TEXT, src, LEN);
	uLongf clen = sizeof(c);
	compress2(c, &clen, src, LEN, 9);
	CHECK(dec(Z, c, clen, out, LEN, 4096) == LEN && memcmp(out, src, LEN) == 0, "zlib baseline");
	c[clen - 1] ^= 0xff; /* adler32 is not enforced, like the kernel */
	CHECK(dec(Z, c, clen, out, LEN, 4096) == LEN, "zlib bad adler32 rejected");
	memset(c + clen, 0x33, 500);
	CHECK(dec(Z, c, clen + 500, out, LEN + 100, 4096) == LEN, "zlib trailing bytes");
	uint8_t h[2] = { c[0], c[1] };
	c[0] = 0x78, c[1] = 0x20; /* valid FCHECK, preset dictionary */
	CHECK(dec(Z, c, clen, out, LEN, 4096) == -EIO, "zlib preset dictionary not -EIO");
	c[0] = 0x88, c[1] = 0x1c; /* CINFO 8: window too large */
	CHECK(dec(Z, c, clen, out, LEN, 4096) == -EIO, "zlib CINFO 8 not -EIO");
	c[0] = 0x79, c[1] = h[1]; /* method 9 */
	CHECK(dec(Z, c, clen, out, LEN, 4096) == -EIO, "zlib method 9 not -EIO");
	c[0] = h[0], c[1] = h[1];
	c[clen / 2] ^= 0x55;
	hostile(Z, c, clen, LEN, 4096, "zlib body flip");
}

/* A zstd frame with the given window log and no content size. */
static size_t zstd_frame_window(int wlog, const uint8_t *src, size_t len, uint8_t *c, size_t cap)
{
	ZSTD_CCtx *cc = ZSTD_createCCtx();
	ZSTD_inBuffer ib = { src, len, 0 };
	ZSTD_outBuffer ob = { c, cap, 0 };

	ZSTD_CCtx_setParameter(cc, ZSTD_c_windowLog, wlog);
	ZSTD_CCtx_setParameter(cc, ZSTD_c_contentSizeFlag, 0);
	ZSTD_compressStream2(cc, &ob, &ib, ZSTD_e_continue);
	while (ZSTD_compressStream2(cc, &ob, &ib, ZSTD_e_end) > 0)
		;
	ZSTD_freeCCtx(cc);
	return ob.pos;
}

static void test_zstd_crafted(void)
{
	enum { LEN = 50000 };
	static uint8_t src[LEN], c[2 * LEN], out[LEN + 100];
	struct rng r = { check_seed ^ 0x8888 };
	const unsigned S = BF_COMPRESS_ZSTD;

	fill(&r, K_TEXT, src, LEN);
	size_t clen = ZSTD_compress(c, sizeof(c), src, LEN, 3);
	memset(c + clen, 0, 4096);
	CHECK(dec(S, c, clen + 4096, out, LEN + 100, 4096) == LEN && memcmp(out, src, LEN) == 0,
	      "zstd frame + zero padding");
	clen = zstd_frame_window(20, src, LEN, c, sizeof(c));
	CHECK(zstd_window(c, clen) == (1u << 20) && dec(S, c, clen, out, LEN, 4096) == LEN,
	      "zstd frame with 1 MiB window, no content size");
	clen = zstd_frame_window(27, src, LEN, c, sizeof(c));
	CHECK(zstd_window(c, clen) == (1u << 27) && dec(S, c, clen, out, LEN, 4096) == -EIO,
	      "zstd frame with 128 MiB window not refused");
	hostile(S, (const uint8_t *)"\x28\xb5\x2f\xfd", 4, LEN, 4096, "zstd magic only");
}

/* ----------------------------------------------------------------- API */

static void test_api_decompress(void)
{
	uint8_t in[8] = "abcdefg", out[16];

	CHECK(strcmp(bf_compress_name(BF_COMPRESS_NONE), "none") == 0 &&
	      strcmp(bf_compress_name(BF_COMPRESS_ZLIB), "zlib") == 0 &&
	      strcmp(bf_compress_name(BF_COMPRESS_LZO), "lzo") == 0 &&
	      strcmp(bf_compress_name(BF_COMPRESS_ZSTD), "zstd") == 0 &&
	      strcmp(bf_compress_name(4), "unknown") == 0, "bf_compress_name");
	CHECK(bf_decompress(4, in, 8, out, 16, 4096) == -EINVAL, "unknown type not -EINVAL");
	CHECK(bf_decompress(BF_COMPRESS_ZLIB, NULL, 8, out, 16, 4096) == -EINVAL, "NULL in");
	CHECK(bf_decompress(BF_COMPRESS_ZLIB, in, 8, NULL, 16, 4096) == -EINVAL, "NULL out");
	CHECK(bf_decompress(BF_COMPRESS_ZSTD, in, 8, out, 0, 4096) == 0, "out_len 0");
	for (size_t i = 0; i < 3; i++)
		CHECK(bf_decompress(types[i], in, 0, out, 16, 4096) == -EIO, "%s empty input",
		      bf_compress_name(types[i]));
	CHECK(bf_decompress(BF_COMPRESS_NONE, in, 8, out, 5, 4096) == 5 && memcmp(out, in, 5) == 0,
	      "none copies min(in_len, out_len)");
}

static void test_api_compress(void)
{
	enum { LEN = 65536 };
	static uint8_t src[LEN], c[LEN];
	struct rng r = { check_seed ^ 0x9999 };

	fill(&r, K_TEXT, src, LEN);
	CHECK(bf_compress(BF_COMPRESS_NONE, 0, src, LEN, c, LEN, 4096) == -EINVAL, "compress none");
	CHECK(bf_compress(9, 0, src, LEN, c, LEN, 4096) == -EINVAL, "compress type 9");
	CHECK(bf_compress(BF_COMPRESS_ZLIB, 0, src, LEN, c, LEN, 2048) == -EINVAL, "compress ss 2048");
	CHECK(bf_compress(BF_COMPRESS_ZLIB, 0, src, LEN, c, LEN, 12288) == -EINVAL, "compress ss 12288");
	for (size_t i = 0; i < 3; i++) {
		CHECK(bf_compress(types[i], 0, src, 4096, c, LEN, 4096) == 0,
		      "%s: one sector cannot shrink by a sector", bf_compress_name(types[i]));
		CHECK(bf_compress(types[i], 0, src, 0, c, LEN, 4096) == 0, "%s: empty input",
		      bf_compress_name(types[i]));
		CHECK(bf_compress(types[i], 0, src, LEN, c, 100, 4096) == -ENOSPC, "%s: out_cap 100",
		      bf_compress_name(types[i]));
		CHECK(bf_compress(types[i], 0, src, LEN, c, LEN - 4096, 4096) > 0,
		      "%s: out_cap == limit", bf_compress_name(types[i]));
	}
	static const int levels[] = { -100, -15, -1, 0, 1, 3, 9, 15, 22, 100 };
	for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++)
		for (size_t t = 0; t < 3; t++) {
			struct rt rt = { types[t], 4096, K_TEXT, LEN };
			ssize_t n = bf_compress(types[t], levels[i], src, LEN, c, LEN, 4096);
			CHECK(n > 0, "%s level %d = %zd", bf_compress_name(types[t]), levels[i], n);
			if (n > 0) {
				rt_format_checks(&rt, src, c, (size_t)n);
				rt_decode_checks(&rt, src, c, (size_t)n);
			}
		}
}

/* ------------------------------------------------------------- threads */

struct thr { uint64_t seed; unsigned bad; };

static void *thread_main(void *arg)
{
	struct thr *t = arg;
	struct rng r = { t->seed };
	enum { LEN = 100000 };
	uint8_t *src = xmalloc(LEN), *c = xmalloc(LEN), *out = xmalloc(LEN);

	for (int it = 0; it < 40; it++) {
		unsigned type = types[it % 3];
		uint32_t ss = sector_sizes[rng_below(&r, 3)];
		size_t len = 1 + rng_below(&r, LEN);
		fill(&r, (enum kind)(1 + rng_below(&r, 3)), src, len);
		ssize_t n = bf_compress(type, 0, src, len, c, len, ss);
		if (n < 0)
			t->bad++;
		if (n > 0 && (bf_decompress(type, c, (size_t)n, out, len, ss) != (ssize_t)len ||
			      memcmp(out, src, len) != 0))
			t->bad++;
	}
	free(out);
	free(c);
	free(src);
	return NULL;
}

static void test_threads(void)
{
	pthread_t th[4];
	struct thr t[4];

	for (int i = 0; i < 4; i++) {
		t[i] = (struct thr){ check_seed + (uint64_t)i, 0 };
		CHECK(pthread_create(&th[i], NULL, thread_main, &t[i]) == 0, "pthread_create");
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		CHECK(t[i].bad == 0, "thread %d: %u failed round trips", i, t[i].bad);
	}
}

int main(int argc, char **argv)
{
	check_seed = (argc > 1) ? strtoull(argv[1], NULL, 0) : (uint64_t)time(NULL);
	printf("info: PRNG seed %" PRIu64 "\n", check_seed);
	if (lzo_init() != LZO_E_OK) {
		printf("lzo_init failed\n");
		return 2;
	}
	test_sha_self();
	test_vectors();
	test_api_decompress();
	test_api_compress();
	test_roundtrip();
	test_large();
	test_lzo_crafted();
	test_lzo_segment_output();
	test_zlib_crafted();
	test_zstd_crafted();
	test_truncated();
	test_flips();
	test_random_bytes();
	test_threads();
	return check_summary();
}
