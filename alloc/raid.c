/*
 * alloc/raid.c - logical -> device mapping for every profile, and reads and writes of logical ranges.
 *
 * Owns: the profile table, bf_vol_read/write/map/num_copies and the profile and type names. Key idea: a
 * chunk-relative offset becomes (row, column, offset in the stripe element), as in the kernel's
 * btrfs_map_block: stripe_nr = off / stripe_len; RAID0 puts element stripe_nr on stripe stripe_nr % n at row
 * stripe_nr / n; RAID10 does the same over pairs of stripes (n / sub_stripes columns, copy k on the k-th stripe
 * of the pair); RAID5/6 rows are full stripes of n - parity elements whose data column i lives on stripe
 * (row + i) % n; DUP and RAID1* keep the whole chunk on every stripe. A request is cut where the elements end.
 */
#include "alloc/internal.h"
#include "util/util.h"

#include <errno.h>
#include <inttypes.h>

static const struct bf_profile profiles[] = {
	/* flag                    name      min max parity striped */
	{ 0, "single", 1, 1, 0, false },
	{ BF_BLOCK_GROUP_RAID0, "RAID0", 1, 0, 0, true },
	{ BF_BLOCK_GROUP_RAID1, "RAID1", 2, 2, 0, false },
	{ BF_BLOCK_GROUP_DUP, "DUP", 2, 2, 0, false },
	{ BF_BLOCK_GROUP_RAID10, "RAID10", 2, 0, 0, true },
	{ BF_BLOCK_GROUP_RAID5, "RAID5", 2, 0, 1, true },
	{ BF_BLOCK_GROUP_RAID6, "RAID6", 3, 0, 2, true },
	{ BF_BLOCK_GROUP_RAID1C3, "RAID1C3", 3, 3, 0, false },
	{ BF_BLOCK_GROUP_RAID1C4, "RAID1C4", 4, 4, 0, false },
};

const struct bf_profile *bf_profile_of(uint64_t type)
{
	uint64_t bits = type & BF_BLOCK_GROUP_PROFILE_MASK;
	for (size_t i = 0; i < sizeof(profiles) / sizeof(profiles[0]); i++)
		if (profiles[i].flag == bits)
			return &profiles[i];
	return NULL;
}

unsigned bf_chunk_group(const struct bf_chunk_map *c)
{
	if (!bf_profile_of(c->type)->striped)
		return c->num_stripes;
	return (c->type & BF_BLOCK_GROUP_RAID10) ? c->sub_stripes : 1;
}

unsigned bf_chunk_data_stripes(const struct bf_chunk_map *c)
{
	const struct bf_profile *p = bf_profile_of(c->type);
	return p->striped ? (c->num_stripes - p->nparity) / bf_chunk_group(c) : 1;
}

uint64_t bf_chunk_dev_span(const struct bf_chunk_map *c)
{
	if (!bf_profile_of(c->type)->striped)
		return c->length;
	uint64_t row = c->stripe_len * bf_chunk_data_stripes(c); /* < 2^16 * 2^16: no overflow */
	return (c->length / row + (c->length % row != 0)) * c->stripe_len;
}

void bf_piece_locate(const struct bf_chunk_map *c, uint64_t off, uint64_t len, struct bf_piece *p)
{
	if (!bf_profile_of(c->type)->striped) {
		*p = (struct bf_piece){ .len = len, .row = 0, .in = off, .col = 0 };
		return;
	}
	uint64_t nr = off / c->stripe_len, data = bf_chunk_data_stripes(c);
	p->in = off % c->stripe_len;
	p->len = bf_min64(len, c->stripe_len - p->in);
	p->row = nr / data;
	p->col = (uint32_t)(nr % data);
	if (!(c->type & BF_BLOCK_GROUP_RAID56_MASK))
		p->col *= bf_chunk_group(c);
}

/* Mirrors a read of the chunk can ask for (see alloc.h). */
static unsigned chunk_copies(const struct bf_chunk_map *c)
{
	if (c->type & BF_BLOCK_GROUP_RAID5)
		return 2;
	if (c->type & BF_BLOCK_GROUP_RAID6)
		return c->num_stripes;
	return bf_chunk_group(c);
}

/* The chunk holding all of [logical, logical + len), or -EIO with a log line. */
static int chunk_range(const struct bf_volume *v, uint64_t logical, size_t len, const char *what,
		       const struct bf_chunk_map **out)
{
	const struct bf_chunk_map *c = bf_vol_find_chunk(v, logical);
	if (!c) {
		bf_log(BF_LOG_ERR, "%s of %zu bytes at logical %" PRIu64 ": no chunk maps this address", what, len,
		       logical);
		return -EIO;
	}
	if (!bf_range_ok(logical - c->logical, len, c->length)) {
		bf_log(BF_LOG_ERR, "%s of %zu bytes at logical %" PRIu64 " runs past the end of the chunk at %" PRIu64
		       " (length %" PRIu64 ")", what, len, logical, c->logical, c->length);
		return -EIO;
	}
	*out = c;
	return 0;
}

/* Copy `mirror` of a piece or, if its device is missing, the next present copy: a range that spans stripes
   then stays readable when different stripes lost different copies. */
static int read_mirror(const struct bf_chunk_map *c, const struct bf_piece *p, unsigned mirror, void *buf)
{
	unsigned g = bf_chunk_group(c);
	for (unsigned k = 0; k < g; k++) {
		unsigned i = p->col + (mirror - 1 + k) % g;
		if (bf_stripe_present(c, i))
			return bf_dev_pread(c->stripes[i].dev, buf, p->len, bf_piece_physical(c, p, i));
	}
	return -EIO;
}

int bf_vol_num_copies(const struct bf_volume *v, uint64_t logical)
{
	const struct bf_chunk_map *c = bf_vol_find_chunk(v, logical);
	return c ? (int)chunk_copies(c) : 0;
}

int bf_vol_read(const struct bf_volume *v, uint64_t logical, void *buf, size_t len, int mirror)
{
	const struct bf_chunk_map *c;
	if (!len)
		return 0;
	int ret = chunk_range(v, logical, len, "read", &c);
	if (ret)
		return ret;
	if (mirror < 1 || (unsigned)mirror > chunk_copies(c))
		return -EINVAL;
	bool raid56 = c->type & BF_BLOCK_GROUP_RAID56_MASK;
	struct bf_piece p;
	for (uint64_t off = logical - c->logical; len && !ret; off += p.len, len -= p.len, buf = (char *)buf + p.len) {
		bf_piece_locate(c, off, len, &p);
		ret = raid56 ? bf_raid56_read(c, &p, buf, mirror) : read_mirror(c, &p, (unsigned)mirror, buf);
	}
	return ret;
}

/* Writes need every present device of the chunk open for writing. */
static bool chunk_writable(const struct bf_chunk_map *c)
{
	for (unsigned i = 0; i < c->num_stripes; i++)
		if (bf_stripe_present(c, i) && !c->stripes[i].dev->writable)
			return false;
	return true;
}

int bf_vol_write(const struct bf_volume *v, uint64_t logical, const void *buf, size_t len)
{
	const struct bf_chunk_map *c;
	if (!len)
		return 0;
	int ret = chunk_range(v, logical, len, "write", &c);
	if (ret)
		return ret;
	if ((c->type & BF_BLOCK_GROUP_RAID56_MASK) || !chunk_writable(c))
		return -EROFS;
	unsigned copies = chunk_copies(c);
	struct bf_piece p;
	for (uint64_t off = logical - c->logical; len; off += p.len, len -= p.len, buf = (const char *)buf + p.len) {
		bf_piece_locate(c, off, len, &p);
		for (unsigned k = 0; k < copies; k++) {
			unsigned i = p.col + k;
			int r = bf_stripe_present(c, i) ? bf_dev_pwrite(c->stripes[i].dev, buf, p.len,
									 bf_piece_physical(c, &p, i))
							: -EIO;
			if (r && !ret)
				ret = r; /* keep writing the other copies */
		}
	}
	return ret;
}

/* For RAID5/6, mirror 2 names the P stripe and mirror 3 the Q stripe (the copy each rebuild leans on); every
   other mirror names the data stripe. */
int bf_vol_map(const struct bf_volume *v, uint64_t logical, int mirror, uint64_t *devid, uint64_t *physical)
{
	const struct bf_chunk_map *c = bf_vol_find_chunk(v, logical);
	if (!c)
		return -EIO;
	if (mirror < 1 || (unsigned)mirror > chunk_copies(c))
		return -EINVAL;
	struct bf_piece p;
	bf_piece_locate(c, logical - c->logical, 1, &p);
	unsigned i = p.col + (unsigned)mirror - 1;
	if (c->type & BF_BLOCK_GROUP_RAID56_MASK) {
		unsigned nd = c->num_stripes - bf_profile_of(c->type)->nparity;
		i = bf_raid56_stripe(c, &p, mirror == 2 ? nd : mirror == 3 ? nd + 1 : p.col);
	}
	*devid = c->stripes[i].devid;
	*physical = bf_piece_physical(c, &p, i);
	return 0;
}

const char *bf_profile_name(uint64_t type)
{
	const struct bf_profile *p = bf_profile_of(type);
	return p ? p->name : "invalid profile";
}

const char *bf_bg_type_name(uint64_t type)
{
	switch (type & BF_BLOCK_GROUP_TYPE_MASK) {
	case BF_BLOCK_GROUP_DATA:
		return "data";
	case BF_BLOCK_GROUP_METADATA:
		return "metadata";
	case BF_BLOCK_GROUP_SYSTEM:
		return "system";
	case BF_BLOCK_GROUP_DATA | BF_BLOCK_GROUP_METADATA:
		return "data+metadata";
	default:
		return "invalid type";
	}
}
