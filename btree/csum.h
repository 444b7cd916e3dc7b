/*
 * btree/csum.h - checksums used by btrfs (tree blocks, data blocks, name hash).
 *
 * Owns: the four btrfs checksum algorithms (crc32c, xxhash64, sha256,
 * blake2b-256) as they are stored on disk, the raw CRC32C register update
 * used by the directory-name hash, and hex formatting for messages.
 */
#ifndef BF_BTREE_CSUM_H
#define BF_BTREE_CSUM_H

#include <stddef.h>
#include <stdint.h>

#define BF_CSUM_MAX 32

enum bf_csum_type {
	BF_CSUM_CRC32C = 0,
	BF_CSUM_XXHASH = 1,
	BF_CSUM_SHA256 = 2,
	BF_CSUM_BLAKE2 = 3,
};

/* 4, 8, 32, 32; -1 for an unknown type. */
int bf_csum_size(unsigned type);

/* "crc32c", "xxhash64", "sha256", "blake2b"; "unknown" otherwise. */
const char *bf_csum_name(unsigned type);

/*
 * btrfs checksum of data as stored on disk: writes bf_csum_size(type) bytes
 * to out and zero-fills the rest of the BF_CSUM_MAX bytes. Returns 0, or
 * -EINVAL for an unknown type (out is then all zero). Thread-safe.
 */
int bf_csum(unsigned type, const void *data, size_t len, uint8_t out[BF_CSUM_MAX]);

/* Raw CRC32C register update exactly like Linux's crc32c(seed, data, len):
 * no pre- or post-inversion. Uses SSE4.2 when the CPU has it. */
uint32_t bf_crc32c(uint32_t seed, const void *data, size_t len);

/* btrfs's directory name hash: bf_crc32c((uint32_t)~1, name, len). */
uint32_t bf_name_hash(const char *name, size_t len);

/*
 * Hex for messages: writes 2*bf_csum_size(type) chars + NUL into buf. If
 * buflen is too small, writes as many whole bytes as fit (always
 * NUL-terminated when buflen > 0). Unknown type: empty string.
 */
void bf_csum_hex(unsigned type, const uint8_t *csum, char *buf, size_t buflen);

/*
 * For tests and diagnostics only: the two CRC32C implementations behind
 * bf_crc32c. bf_crc32c_hw falls back to the table code when the CPU (or the
 * build target) has no CRC32 instruction; bf_crc32c_hw_available() says
 * whether it really uses the instruction.
 */
uint32_t bf_crc32c_table(uint32_t seed, const void *data, size_t len);
uint32_t bf_crc32c_hw(uint32_t seed, const void *data, size_t len);
int bf_crc32c_hw_available(void);

#endif /* BF_BTREE_CSUM_H */
