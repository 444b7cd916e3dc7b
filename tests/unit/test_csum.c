/*
 * tests/unit/test_csum.c - unit tests for btree/csum.c.
 *
 * Owns: known-answer vectors for the four btrfs checksums (computed
 * independently with python3 hashlib, xxhsum -H1 and b2sum), agreement of
 * the SSE4.2, slicing-by-8 and a bit-at-a-time reference CRC32C on random
 * buffers of random length and alignment (seeded PRNG, seed printed; pass a
 * seed as argv[1] to replay), data checksums and directory name hashes
 * written by the Linux kernel into real images, and hex formatting. Ends
 * with "N passed, N failed"; exit 0 only if none failed.
 */
#include "btree/csum.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "tests/unit/check.h"



static uint64_t rng_state;

static uint64_t rng_next(void)
{
	return splitmix64(&rng_state);
}

/* Bit-at-a-time CRC32C, written from the definition. */
static uint32_t ref_crc32c(uint32_t crc, const uint8_t *p, size_t len)
{
	while (len--) {
		crc ^= *p++;
		for (int b = 0; b < 8; b++)
			crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
	}
	return crc;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

static size_t unhex(const char *hex, uint8_t *out, size_t cap)
{
	size_t n = 0;

	while (hex[0] && hex[1] && n < cap) {
		out[n++] = (uint8_t)(hexval(hex[0]) * 16 + hexval(hex[1]));
		hex += 2;
	}
	return n;
}

struct kat {
	unsigned type;
	const char *input; /* NULL = bytes(range(256))*16 */
	const char *hex;   /* expected stored bytes */
};

/* sha256/blake2b: python3 hashlib; xxhash64: xxhsum -H1 (big-endian print,
 * reversed here into the little-endian bytes btrfs stores). */
static const struct kat kats[] = {
	{ BF_CSUM_CRC32C, "123456789", "839206e3" },
	{ BF_CSUM_SHA256, "", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" },
	{ BF_CSUM_SHA256, "abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" },
	{ BF_CSUM_SHA256, "123456789", "15e2b0d3c33891ebb0f1ef609ec419420c20e320ce94c65fbc8c3312448eb225" },
	{ BF_CSUM_SHA256, NULL, "c8f5d0341d54d951a71b136e6e2afcb14d11ed8489a7ae126a8fee0df6ecf193" },
	{ BF_CSUM_BLAKE2, "", "0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8" },
	{ BF_CSUM_BLAKE2, "abc", "bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319" },
	{ BF_CSUM_BLAKE2, "The quick brown fox jumps over the lazy dog",
	  "01718cec35cd3d796dd00020e0bfecb473ad23457d063b75eff29c0ffa2e58a9" },
	{ BF_CSUM_BLAKE2, NULL, "81baab4ea5d75a0aa53b8780ae5dbd7c8dac7f07e7c103644399492bb9ea6f87" },
	{ BF_CSUM_XXHASH, "", "99e9d85137db46ef" },
	{ BF_CSUM_XXHASH, "abc", "990977adf52cbc44" },
	{ BF_CSUM_XXHASH, "123456789", "83aee640db41b88c" },
	{ BF_CSUM_XXHASH, "The quick brown fox jumps over the lazy dog", "bc71da1f362d240b" },
	{ BF_CSUM_XXHASH, NULL, "a4f66a18be646e0f" },
};

static void test_kat_one(const struct kat *k, const uint8_t *big)
{
	uint8_t got[BF_CSUM_MAX], want[BF_CSUM_MAX] = { 0 };
	char hex[2 * BF_CSUM_MAX + 1];
	const char *in = k->input ? k->input : (const char *)big;
	size_t len = k->input ? strlen(k->input) : 4096;
	const char *clean = k->hex;

	unhex(clean, want, sizeof(want));
	memset(got, 0xAA, sizeof(got));
	int rc = bf_csum(k->type, in, len, got);
	bf_csum_hex(k->type, got, hex, sizeof(hex));
	CHECK(rc == 0 && memcmp(got, want, BF_CSUM_MAX) == 0,
	      "bf_csum(%s, \"%.20s\", len %zu) = %s (rc %d), want %s",
	      bf_csum_name(k->type), k->input ? k->input : "range(256)*16", len, hex, rc, clean);
	CHECK(strcmp(hex, clean) == 0, "bf_csum_hex(%s) = %s, want %s",
	      bf_csum_name(k->type), hex, clean);
}

static void test_kats(void)
{
	uint8_t big[4096];

	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = (uint8_t)i;
	for (size_t i = 0; i < sizeof(kats) / sizeof(kats[0]); i++)
		test_kat_one(&kats[i], big);
}

/* Data checksums written by the Linux kernel (6.18) for one 4 KiB block of
 * pattern() on filesystems made with mkfs.btrfs --csum TYPE, read raw from
 * the csum tree items. */
static uint8_t pattern(size_t i)
{
	return (uint8_t)((i * 31 + 7) ^ (i >> 8));
}

static void test_kernel_csums(void)
{
	static const struct { unsigned type; const char *hex; } v[] = {
		{ BF_CSUM_CRC32C, "2b9a0cf5" },
		{ BF_CSUM_XXHASH, "69c4acba56104a42" },
		{ BF_CSUM_SHA256, "936dc7aecc816eea4a179e755873f3456e1c2a56c01131fabeec49a5f68d91aa" },
		{ BF_CSUM_BLAKE2, "4e17fbda31a9a1865c308b4c199c033bc780b3acb251de66334fe880efe16f06" },
	};
	uint8_t block[4096], out[BF_CSUM_MAX];
	char hex[2 * BF_CSUM_MAX + 1];

	for (size_t i = 0; i < sizeof(block); i++)
		block[i] = pattern(i);
	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		int rc = bf_csum(v[i].type, block, sizeof(block), out);
		bf_csum_hex(v[i].type, out, hex, sizeof(hex));
		CHECK(rc == 0 && strcmp(hex, v[i].hex) == 0,
		      "kernel data csum %s of pattern block: got %s, want %s",
		      bf_csum_name(v[i].type), hex, v[i].hex);
	}
}

/* RFC 3720 B.4 CRC32C vectors, final (inverted) values. */
static void test_crc32c_vectors(void)
{
	uint8_t buf[32];
	uint32_t c;

	c = ~bf_crc32c(~0u, "123456789", 9);
	CHECK(c == 0xE3069283u, "crc32c(\"123456789\") = %08" PRIx32 ", want e3069283", c);
	memset(buf, 0, sizeof(buf));
	c = ~bf_crc32c(~0u, buf, 32);
	CHECK(c == 0x8A9136AAu, "crc32c(32 x 00) = %08" PRIx32 ", want 8a9136aa", c);
	memset(buf, 0xff, sizeof(buf));
	c = ~bf_crc32c(~0u, buf, 32);
	CHECK(c == 0x62A8AB43u, "crc32c(32 x ff) = %08" PRIx32 ", want 62a8ab43", c);
	for (int i = 0; i < 32; i++)
		buf[i] = (uint8_t)i;
	c = ~bf_crc32c(~0u, buf, 32);
	CHECK(c == 0x46DD794Eu, "crc32c(00..1f) = %08" PRIx32 ", want 46dd794e", c);
	for (int i = 0; i < 32; i++)
		buf[i] = (uint8_t)(31 - i);
	c = ~bf_crc32c(~0u, buf, 32);
	CHECK(c == 0x113FDB5Cu, "crc32c(1f..00) = %08" PRIx32 ", want 113fdb5c", c);
	/* raw update: no inversion, seed passes through on empty input */
	CHECK(bf_crc32c(0x12345678u, buf, 0) == 0x12345678u, "crc32c empty input changed seed");
	CHECK(bf_crc32c(0, NULL, 0) == 0, "crc32c(NULL, 0) != 0");
	c = bf_crc32c(~0u, "123456789", 9);
	CHECK(c == ~0xE3069283u, "raw crc32c(~0, \"123456789\") = %08" PRIx32, c);
}

static void test_crc32c_random(uint64_t seed)
{
	enum { BUFSZ = 70000 };
	uint8_t *buf = malloc(BUFSZ + 16);

	if (!buf) {
		CHECK(0, "malloc");
		return;
	}
	rng_state = seed;
	for (size_t i = 0; i < BUFSZ + 16; i++)
		buf[i] = (uint8_t)rng_next();
	unsigned bad = 0;
	for (int iter = 0; iter < 3000; iter++) {
		size_t off = (size_t)(rng_next() % 16);
		size_t len = (size_t)(rng_next() % (iter < 2000 ? 300 : BUFSZ));
		uint32_t s = (uint32_t)rng_next();
		uint32_t r = ref_crc32c(s, buf + off, len);
		uint32_t t = bf_crc32c_table(s, buf + off, len);
		uint32_t h = bf_crc32c_hw(s, buf + off, len);
		uint32_t d = bf_crc32c(s, buf + off, len);
		if ((r != t || r != h || r != d) && bad++ < 10)
			printf("FAIL crc32c seed %" PRIu64 " iter %d off %zu len %zu crcseed %08" PRIx32
			       ": ref %08" PRIx32 " table %08" PRIx32 " hw %08" PRIx32 " dispatch %08" PRIx32 "\n",
			       seed, iter, off, len, s, r, t, h, d);
	}
	CHECK(bad == 0, "crc32c random agreement: %u mismatches (PRNG seed %" PRIu64 ")", bad, seed);
	/* chaining: crc(a||b) == crc(crc(a), b) */
	uint32_t whole = bf_crc32c(~0u, buf, 5000);
	uint32_t part = bf_crc32c(bf_crc32c(~0u, buf, 1234), buf + 1234, 5000 - 1234);
	CHECK(whole == part, "crc32c chaining mismatch %08" PRIx32 " vs %08" PRIx32, whole, part);
	free(buf);
}

/* Hashes read back from a real btrfs image made by the Linux kernel: the
 * offsets of the DIR_ITEM keys printed by btrfs inspect-internal dump-tree. */
static void test_name_hash(void)
{
	static const struct { const char *name; uint32_t hash; } v[] = {
		{ "small.txt", 474883676u },
		{ "zero.bin", 1840717283u },
		{ "tiny.txt", 2354465737u },
		{ "mixed.bin", 3315172285u },
		{ "text.txt", 3554479692u },
	};

	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		uint32_t h = bf_name_hash(v[i].name, strlen(v[i].name));
		CHECK(h == v[i].hash, "bf_name_hash(\"%s\") = %" PRIu32 ", want %" PRIu32,
		      v[i].name, h, v[i].hash);
	}
	uint32_t h = bf_name_hash("", 0);
	CHECK(h == (uint32_t)~1u, "bf_name_hash(\"\") = %08" PRIx32 ", want fffffffe", h);
}

static void test_misc(void)
{
	uint8_t out[BF_CSUM_MAX];
	uint8_t zero[BF_CSUM_MAX] = { 0 };
	char hex[16];

	CHECK(bf_csum_size(BF_CSUM_CRC32C) == 4, "size crc32c");
	CHECK(bf_csum_size(BF_CSUM_XXHASH) == 8, "size xxhash");
	CHECK(bf_csum_size(BF_CSUM_SHA256) == 32, "size sha256");
	CHECK(bf_csum_size(BF_CSUM_BLAKE2) == 32, "size blake2");
	CHECK(bf_csum_size(4) == -1 && bf_csum_size(~0u) == -1, "size unknown");
	CHECK(strcmp(bf_csum_name(BF_CSUM_CRC32C), "crc32c") == 0, "name crc32c");
	CHECK(strcmp(bf_csum_name(BF_CSUM_XXHASH), "xxhash64") == 0, "name xxhash64");
	CHECK(strcmp(bf_csum_name(BF_CSUM_SHA256), "sha256") == 0, "name sha256");
	CHECK(strcmp(bf_csum_name(BF_CSUM_BLAKE2), "blake2b") == 0, "name blake2b");
	CHECK(strcmp(bf_csum_name(7), "unknown") == 0, "name unknown");
	memset(out, 0x55, sizeof(out));
	CHECK(bf_csum(9, "x", 1, out) == -EINVAL, "bf_csum unknown type not -EINVAL");
	CHECK(memcmp(out, zero, sizeof(out)) == 0, "bf_csum unknown type did not zero out");
	memset(out, 0x55, sizeof(out));
	bf_csum(BF_CSUM_CRC32C, "x", 1, out);
	CHECK(memcmp(out + 4, zero, BF_CSUM_MAX - 4) == 0, "crc32c tail not zero-filled");
	memset(out, 0x55, sizeof(out));
	bf_csum(BF_CSUM_XXHASH, "x", 1, out);
	CHECK(memcmp(out + 8, zero, BF_CSUM_MAX - 8) == 0, "xxhash tail not zero-filled");
	/* short hex buffer: whole bytes only, NUL-terminated */
	uint8_t c4[4] = { 0xde, 0xad, 0xbe, 0xef };
	bf_csum_hex(BF_CSUM_CRC32C, c4, hex, 6);
	CHECK(strcmp(hex, "dead") == 0, "bf_csum_hex short buffer gave \"%s\"", hex);
	bf_csum_hex(BF_CSUM_CRC32C, c4, hex, 8);
	CHECK(strcmp(hex, "deadbe") == 0, "bf_csum_hex buflen 8 gave \"%s\"", hex);
	bf_csum_hex(BF_CSUM_CRC32C, c4, hex, 9);
	CHECK(strcmp(hex, "deadbeef") == 0, "bf_csum_hex buflen 9 gave \"%s\"", hex);
	bf_csum_hex(12, c4, hex, sizeof(hex));
	CHECK(hex[0] == '\0', "bf_csum_hex unknown type not empty");
	printf("info: crc32c hardware path %s\n", bf_crc32c_hw_available() ? "in use" : "not available");
}

int main(int argc, char **argv)
{
	uint64_t seed = (argc > 1) ? strtoull(argv[1], NULL, 0) : (uint64_t)time(NULL);

	printf("info: PRNG seed %" PRIu64 "\n", seed);
	test_kats();
	test_kernel_csums();
	test_crc32c_vectors();
	test_crc32c_random(seed);
	test_name_hash();
	test_misc();
	return check_summary();
}
