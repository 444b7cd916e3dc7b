/*
 * fs/compress.h - btrfs extent decompression and compression.
 *
 * Owns: turning the on-disk bytes of a compressed btrfs extent (regular or
 * inline; zlib, lzo or zstd) into file bytes, safely for hostile input, and
 * producing compressed extents the Linux kernel can read.
 */
#ifndef BF_FS_COMPRESS_H
#define BF_FS_COMPRESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum bf_compress_type {
	BF_COMPRESS_NONE = 0,
	BF_COMPRESS_ZLIB = 1,
	BF_COMPRESS_LZO = 2,
	BF_COMPRESS_ZSTD = 3,
};

/* Largest input bf_compress accepts: btrfs's BTRFS_MAX_UNCOMPRESSED. */
#define BF_COMPRESS_MAX_IN (128u * 1024u)

/* "none", "zlib", "lzo", "zstd"; "unknown" otherwise. */
const char *bf_compress_name(unsigned type);

/*
 * Decompress one btrfs compressed extent (or compressed inline extent) as
 * stored on disk: in/in_len are the on-disk bytes (trailing sector padding
 * is fine), out/out_len the buffer for the uncompressed bytes (ram_bytes of
 * the extent). sectorsize is the filesystem's sector size (power of two,
 * 4096..65536), used for LZO framing. Returns the number of bytes produced
 * (0..out_len); if the stream ends early the caller zero-fills the rest.
 * Output beyond out_len is never written: a stream that would produce more
 * stops at out_len and out_len is returned. Returns -EIO for corrupt input,
 * -EINVAL for an unknown type or bad arguments, -ENOMEM if out of memory.
 * BF_COMPRESS_NONE copies min(in_len, out_len) bytes. Thread-safe.
 */
ssize_t bf_decompress(unsigned type, const void *in, size_t in_len, void *out,
		      size_t out_len, uint32_t sectorsize);

/*
 * Compress for writing a regular extent: returns the compressed size
 * (< in_len) written to out (capacity out_cap), or 0 if the data does not
 * shrink by at least one sector (the kernel's rule: round_up(size,
 * sectorsize) + sectorsize <= round_up(in_len, sectorsize); btrfs then
 * stores it uncompressed), or -errno: -EINVAL for a bad type, sectorsize or
 * in_len > BF_COMPRESS_MAX_IN, -ENOSPC if out_cap is below that limit and
 * the result did not fit, -ENOMEM, -EIO. level 0 = default (zlib 3, zstd 3;
 * clamped to zlib 1..9, zstd -15..15; ignored for lzo). The output is what
 * the kernel writes: a zlib stream, a zstd frame with window <= 128 KiB, or
 * LZO with per-sector segments. Thread-safe.
 */
ssize_t bf_compress(unsigned type, int level, const void *in, size_t in_len,
		    void *out, size_t out_cap, uint32_t sectorsize);

#endif /* BF_FS_COMPRESS_H */
