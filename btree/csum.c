/*
 * btree/csum.c - checksums used by btrfs.
 *
 * Owns: crc32c (software and SSE4.2), the btrfs on-disk checksum encodings
 * of crc32c/xxhash64/sha256/blake2b-256, the directory name hash and hex
 * formatting.
 *
 * Key ideas:
 *  - CRC32C (Castagnoli, reflected polynomial 0x82F63B78) is computed as a
 *    raw register update, like Linux's crc32c(): no inversion inside. btrfs
 *    stores ~crc32c(~0, data) as 4 little-endian bytes; the name hash is
 *    crc32c(~1, name) with no final inversion.
 *  - Software path: "slicing-by-8". Table T0 is the classic byte-at-a-time
 *    table; Tk[i] is the CRC contribution of byte value i followed by k zero
 *    bytes, so 8 input bytes are folded with 8 independent lookups. The
 *    tables are built once under pthread_once.
 *  - Hardware path (x86-64 only): the SSE4.2 crc32 instruction computes the
 *    same CRC32C, 8 bytes per instruction. The choice is made once at run
 *    time with __builtin_cpu_supports and cached behind pthread_once, so
 *    every function here is thread-safe.
 *  - The other algorithms come from libxxhash, libcrypto and libb2; every
 *    digest is written byte by byte so the result is endian-independent.
 */
#include "btree/csum.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>

#include <blake2.h>
#include <openssl/sha.h>
#include <xxhash.h>

/* Build with -DBF_CSUM_NO_HWCRC to compile the portable path only (as on
 * arm64 or other non-x86 targets). */
#if defined(__x86_64__) && !defined(BF_CSUM_NO_HWCRC)
#define BF_HAVE_SSE42_CRC 1
#include <nmmintrin.h>
#endif

#define CRC32C_POLY_REFLECTED 0x82F63B78u

/* ---------------------------------------------------------------- tables */

static uint32_t crc_tab[8][256];
static pthread_once_t crc_tab_once = PTHREAD_ONCE_INIT;

static void crc_tab_build(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int b = 0; b < 8; b++)
			c = (c >> 1) ^ ((c & 1u) ? CRC32C_POLY_REFLECTED : 0u);
		crc_tab[0][i] = c;
	}
	for (int k = 1; k < 8; k++)
		for (int i = 0; i < 256; i++) {
			uint32_t prev = crc_tab[k - 1][i];
			crc_tab[k][i] = (prev >> 8) ^ crc_tab[0][prev & 0xffu];
		}
}

static uint32_t load_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
	       ((uint32_t)p[3] << 24);
}

static uint32_t crc_fold8(uint32_t crc, const uint8_t *p)
{
	uint32_t lo = crc ^ load_le32(p);
	uint32_t hi = load_le32(p + 4);

	return crc_tab[7][lo & 0xffu] ^ crc_tab[6][(lo >> 8) & 0xffu] ^
	       crc_tab[5][(lo >> 16) & 0xffu] ^ crc_tab[4][lo >> 24] ^
	       crc_tab[3][hi & 0xffu] ^ crc_tab[2][(hi >> 8) & 0xffu] ^
	       crc_tab[1][(hi >> 16) & 0xffu] ^ crc_tab[0][hi >> 24];
}

static uint32_t crc_byte(uint32_t crc, uint8_t b)
{
	return crc_tab[0][(crc ^ b) & 0xffu] ^ (crc >> 8);
}

uint32_t bf_crc32c_table(uint32_t seed, const void *data, size_t len)
{
	const uint8_t *p = data;
	uint32_t crc = seed;

	pthread_once(&crc_tab_once, crc_tab_build);
	if (len == 0)
		return crc;
	for (; len >= 8; p += 8, len -= 8)
		crc = crc_fold8(crc, p);
	for (; len > 0; p++, len--)
		crc = crc_byte(crc, *p);
	return crc;
}

/* -------------------------------------------------------------- hardware */

#if defined(BF_HAVE_SSE42_CRC)
__attribute__((target("sse4.2")))
static uint32_t crc32c_sse42(uint32_t crc, const uint8_t *p, size_t len)
{
	uint64_t c;

	while (len > 0 && ((uintptr_t)p & 7u) != 0) {
		crc = _mm_crc32_u8(crc, *p++);
		len--;
	}
	c = crc;
	for (; len >= 8; p += 8, len -= 8) {
		uint64_t v;
		memcpy(&v, p, sizeof(v)); /* x86 is little-endian */
		c = _mm_crc32_u64(c, v);
	}
	crc = (uint32_t)c;
	for (; len > 0; len--)
		crc = _mm_crc32_u8(crc, *p++);
	return crc;
}

static int cpu_has_sse42(void)
{
	__builtin_cpu_init();
	return __builtin_cpu_supports("sse4.2") ? 1 : 0;
}
#endif

static int crc_hw_ok;
static pthread_once_t crc_hw_once = PTHREAD_ONCE_INIT;

static void crc_hw_detect(void)
{
#if defined(BF_HAVE_SSE42_CRC)
	crc_hw_ok = cpu_has_sse42();
#else
	crc_hw_ok = 0;
#endif
}

int bf_crc32c_hw_available(void)
{
	pthread_once(&crc_hw_once, crc_hw_detect);
	return crc_hw_ok;
}

uint32_t bf_crc32c_hw(uint32_t seed, const void *data, size_t len)
{
#if defined(BF_HAVE_SSE42_CRC)
	if (bf_crc32c_hw_available()) {
		if (len == 0)
			return seed;
		return crc32c_sse42(seed, data, len);
	}
#endif
	return bf_crc32c_table(seed, data, len);
}

uint32_t bf_crc32c(uint32_t seed, const void *data, size_t len)
{
	return bf_crc32c_hw(seed, data, len);
}

uint32_t bf_name_hash(const char *name, size_t len)
{
	return bf_crc32c((uint32_t)~1u, name, len);
}

/* ------------------------------------------------------- btrfs checksums */

int bf_csum_size(unsigned type)
{
	switch (type) {
	case BF_CSUM_CRC32C: return 4;
	case BF_CSUM_XXHASH: return 8;
	case BF_CSUM_SHA256: return 32;
	case BF_CSUM_BLAKE2: return 32;
	default: return -1;
	}
}

const char *bf_csum_name(unsigned type)
{
	switch (type) {
	case BF_CSUM_CRC32C: return "crc32c";
	case BF_CSUM_XXHASH: return "xxhash64";
	case BF_CSUM_SHA256: return "sha256";
	case BF_CSUM_BLAKE2: return "blake2b";
	default: return "unknown";
	}
}

static void store_le(uint8_t *out, uint64_t v, int bytes)
{
	for (int i = 0; i < bytes; i++)
		out[i] = (uint8_t)(v >> (8 * i));
}

static int csum_sha256(const uint8_t *p, size_t len, uint8_t *out)
{
	return SHA256(p, len, out) != NULL ? 0 : -EIO;
}

static int csum_blake2b(const uint8_t *p, size_t len, uint8_t *out)
{
	blake2b_state st;

	if (blake2b_init(&st, 32) != 0 || blake2b_update(&st, p, len) != 0 ||
	    blake2b_final(&st, out, 32) != 0)
		return -EIO;
	return 0;
}

int bf_csum(unsigned type, const void *data, size_t len, uint8_t out[BF_CSUM_MAX])
{
	static const uint8_t empty[1];
	const uint8_t *p = (data != NULL) ? data : empty;

	memset(out, 0, BF_CSUM_MAX);
	if (data == NULL)
		len = 0;
	switch (type) {
	case BF_CSUM_CRC32C:
		store_le(out, ~bf_crc32c(~0u, p, len), 4);
		return 0;
	case BF_CSUM_XXHASH:
		store_le(out, XXH64(p, len, 0), 8);
		return 0;
	case BF_CSUM_SHA256:
		return csum_sha256(p, len, out);
	case BF_CSUM_BLAKE2:
		return csum_blake2b(p, len, out);
	default:
		return -EINVAL;
	}
}

void bf_csum_hex(unsigned type, const uint8_t *csum, char *buf, size_t buflen)
{
	static const char digits[] = "0123456789abcdef";
	int size = bf_csum_size(type);
	size_t n = 0;

	if (buf == NULL || buflen == 0)
		return;
	if (size < 0 || csum == NULL)
		size = 0;
	for (int i = 0; i < size && n + 2 < buflen; i++) {
		buf[n++] = digits[csum[i] >> 4];
		buf[n++] = digits[csum[i] & 0x0f];
	}
	buf[n] = '\0';
}
