/*
 * journal/super.c - reading and checking superblocks.
 *
 * Owns: bf_super_check (one superblock image: checksum, magic, location, sizes, features) and bf_super_read
 * (an intact primary wins, as in the kernel; if it is bad, the valid copy with the highest generation), and the names of feature bits.
 *
 * Key idea: a superblock is trusted only after its checksum and every field that later code uses for sizes
 * or offsets has been range-checked here; later layers rely on sectorsize and nodesize being sane powers of
 * two and on sys_chunk_array_size fitting the array.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "btree/csum.h"
#include "journal/journal.h"
#include "util/util.h"

/* More devices than any real btrfs filesystem has: a larger num_devices is corruption. */
#define BF_MAX_DEVICES 65536u

static const char *const incompat_names[] = {
	"mixed-backref", "default-subvol", "mixed-bg",	   "compress-lzo", "compress-zstd",	"big-metadata",
	"extref",	 "raid56",	   "skinny-metadata", "no-holes",     "metadata-uuid",	"raid1c34",
	"zoned",	 "extent-tree-v2", "raid-stripe-tree", "bit15",	      "simple-quota",
};
static const char *const compat_ro_names[] = { "free-space-tree", "free-space-tree-valid", "verity",
					       "block-group-tree" };

static void flag_names(uint64_t flags, const char *const *names, size_t n, char *buf, size_t len)
{
	size_t used = 0;
	buf[0] = 0;
	for (unsigned bit = 0; bit < 64; bit++) {
		if (!(flags & (1ULL << bit)))
			continue;
		char one[32];
		if (bit < n)
			snprintf(one, sizeof(one), "%s", names[bit]);
		else
			snprintf(one, sizeof(one), "unknown-bit-%u", bit);
		int w = snprintf(buf + used, len - used, "%s%s", used ? ", " : "", one);
		if (w < 0 || (size_t)w >= len - used)
			return;
		used += (size_t)w;
	}
}

void bf_incompat_names(uint64_t flags, char *buf, size_t len)
{
	flag_names(flags, incompat_names, sizeof(incompat_names) / sizeof(incompat_names[0]), buf, len);
}

void bf_compat_ro_names(uint64_t flags, char *buf, size_t len)
{
	flag_names(flags, compat_ro_names, sizeof(compat_ro_names) / sizeof(compat_ro_names[0]), buf, len);
}

static int check_csum(const struct bf_super *sb, char *err, size_t errlen)
{
	unsigned type = get16(sb->csum_type);
	if (bf_csum_size(type) < 0)
		return bf_err(err, errlen, -EINVAL, "unknown checksum type %u", type);
	uint8_t want[BF_CSUM_MAX];
	const uint8_t *raw = (const uint8_t *)sb;
	bf_csum(type, raw + BF_CSUM_SIZE, BF_SUPER_INFO_SIZE - BF_CSUM_SIZE, want);
	if (memcmp(want, sb->csum, (size_t)bf_csum_size(type)) != 0) {
		char a[2 * BF_CSUM_MAX + 1], b[2 * BF_CSUM_MAX + 1];
		bf_csum_hex(type, sb->csum, a, sizeof(a));
		bf_csum_hex(type, want, b, sizeof(b));
		return bf_err(err, errlen, -EINVAL, "%s checksum mismatch (stored %s, computed %s)", bf_csum_name(type),
			      a, b);
	}
	return 0;
}

static bool size_ok(uint32_t v) { return bf_is_power_of_2(v) && v >= 4096 && v <= 65536; }

static int check_sizes(const struct bf_super *sb, char *err, size_t errlen)
{
	uint32_t sectorsize = get32(sb->sectorsize), nodesize = get32(sb->nodesize);
	if (!size_ok(sectorsize))
		return bf_err(err, errlen, -EINVAL, "invalid sectorsize %u", sectorsize);
	if (!size_ok(nodesize) || nodesize < sectorsize)
		return bf_err(err, errlen, -EINVAL, "invalid nodesize %u (sectorsize %u)", nodesize, sectorsize);
	uint32_t arr = get32(sb->sys_chunk_array_size);
	if (arr > BF_SYSTEM_CHUNK_ARRAY_SIZE || arr < sizeof(struct bf_disk_key) + sizeof(struct bf_chunk))
		return bf_err(err, errlen, -EINVAL, "invalid sys_chunk_array_size %u", arr);
	if (sb->root_level >= BF_MAX_LEVEL || sb->chunk_root_level >= BF_MAX_LEVEL ||
	    sb->log_root_level >= BF_MAX_LEVEL)
		return bf_err(err, errlen, -EINVAL, "invalid tree level (root %u, chunk %u, log %u)", sb->root_level,
			      sb->chunk_root_level, sb->log_root_level);
	uint64_t roots[3] = { get64(sb->root), get64(sb->chunk_root), get64(sb->log_root) };
	for (int i = 0; i < 3; i++)
		if (roots[i] % sectorsize)
			return bf_err(err, errlen, -EINVAL, "tree root %llu not aligned to sectorsize %u",
				      (unsigned long long)roots[i], sectorsize);
	if (!get64(sb->root) || !get64(sb->chunk_root))
		return bf_err(err, errlen, -EINVAL, "root tree or chunk tree address is zero");
	if (!get64(sb->num_devices) || !get64(sb->total_bytes) || !get64(sb->generation))
		return bf_err(err, errlen, -EINVAL, "zero num_devices, total_bytes or generation");
	if (get64(sb->num_devices) > BF_MAX_DEVICES)
		return bf_err(err, errlen, -EINVAL, "implausible num_devices %llu (at most %u supported)",
			      (unsigned long long)get64(sb->num_devices), BF_MAX_DEVICES);
	return 0;
}

static int check_features(const struct bf_super *sb, char *err, size_t errlen)
{
	uint64_t unknown = get64(sb->incompat_flags) & ~BF_FEATURE_INCOMPAT_SUPPORTED;
	if (unknown) {
		char names[512];
		bf_incompat_names(unknown, names, sizeof(names));
		return bf_err(err, errlen, -EOPNOTSUPP,
			      "unsupported incompat feature(s): %s; this image needs a newer btrfs-fuse or the "
			      "kernel driver",
			      names);
	}
	return 0;
}

int bf_super_check(const struct bf_super *sb, uint64_t bytenr, char *err, size_t errlen)
{
	if (get64(sb->magic) != BF_MAGIC)
		return bf_err(err, errlen, -EINVAL, "no btrfs magic at byte %llu", (unsigned long long)bytenr);
	int r = check_csum(sb, err, errlen);
	if (r)
		return r;
	if (get64(sb->bytenr) != bytenr)
		return bf_err(err, errlen, -EINVAL, "superblock at %llu says it is at %llu",
			      (unsigned long long)bytenr, (unsigned long long)get64(sb->bytenr));
	r = check_sizes(sb, err, errlen);
	if (r)
		return r;
	return check_features(sb, err, errlen);
}

static int read_copy(int fd, int i, struct bf_super *sb, char *err, size_t errlen)
{
	uint64_t off = bf_sb_offset(i);
	ssize_t n = pread(fd, sb, sizeof(*sb), (off_t)off);
	if (n != (ssize_t)sizeof(*sb))
		return bf_err(err, errlen, -EIO, "cannot read superblock copy %d at byte %llu", i,
			      (unsigned long long)off);
	return bf_super_check(sb, off, err, errlen);
}

int bf_super_read(int fd, uint64_t devsize, struct bf_super *out, int *copy, char *err, size_t errlen)
{
	char why0[256] = "";
	int best = -1;
	uint64_t best_gen = 0;
	static struct bf_super tmp_zero;
	struct bf_super sb = tmp_zero;
	for (int i = 0; i < BF_SUPER_MIRROR_MAX; i++) {
		if (bf_sb_offset(i) + BF_SUPER_INFO_SIZE > devsize)
			break;
		char why[256];
		int r = read_copy(fd, i, &sb, why, sizeof(why));
		/* An intact superblock that asks for features we lack is a refusal, not damage: no fallback. */
		if (r == -EOPNOTSUPP)
			return bf_err(err, errlen, r, "%s", why);
		if (i == 0 && r)
			snprintf(why0, sizeof(why0), "%s", why);
		if (i == 0 && !r) { /* an intact primary is the filesystem, as for the kernel (copies may be newer
				       after a power cut that lost the primary's write: that commit never completed) */
			*out = sb;
			*copy = 0;
			return 0;
		}
		if (r || get64(sb.generation) <= best_gen)
			continue;
		best = i;
		best_gen = get64(sb.generation);
		*out = sb;
	}
	if (best < 0) {
		if (!why0[0])
			snprintf(why0, sizeof(why0), "device too small (%llu bytes) for a superblock",
				 (unsigned long long)devsize);
		return bf_err(err, errlen, -EINVAL, "%s", why0);
	}
	if (why0[0])
		bf_log(BF_LOG_WARN, "primary superblock is bad (%s); using copy %d at byte %llu (generation %llu)",
		       why0, best, (unsigned long long)bf_sb_offset(best), (unsigned long long)best_gen);
	*copy = best;
	return 0;
}
