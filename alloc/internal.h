/*
 * alloc/internal.h - declarations shared by the files of alloc/ only (never included from another layer).
 *
 * Owns: the profile table (what each RAID profile needs and gives), the split of a chunk-relative range into
 * stripe-element pieces, and the RAID5/6 piece reader. Key idea: every profile is described by the same few
 * numbers (copies, parity, stripe limits), so validation, mapping and the degraded check read one table.
 */
#ifndef BF_ALLOC_INTERNAL_H
#define BF_ALLOC_INTERNAL_H

#include "alloc/alloc.h"

struct bf_profile {
	uint64_t flag;        /* the BF_BLOCK_GROUP_* profile bit, 0 for single */
	const char *name;     /* "single", "DUP", "RAID1", ... */
	uint16_t min_stripes; /* num_stripes the profile needs at least ... */
	uint16_t max_stripes; /* ... and at most (0: no limit) */
	uint8_t nparity;      /* parity stripes per full stripe (RAID5: 1, RAID6: 2) */
	bool striped;         /* the chunk is cut into stripe_len elements spread over the devices */
};

/* The profile of a chunk type with at most one profile bit; NULL if several bits are set. */
const struct bf_profile *bf_profile_of(uint64_t type);

/* Copies kept by a stripe group: each group of this many consecutive stripes holds the same bytes
   (single/RAID0: 1, RAID10: sub_stripes, DUP/RAID1*: num_stripes). Not meaningful for RAID5/6. */
unsigned bf_chunk_group(const struct bf_chunk_map *c);
/* Data stripes: how many stripe elements of logical data one row holds (RAID0: num_stripes, RAID10:
   num_stripes / sub_stripes, RAID5/6: num_stripes - parity, mirrored: 1). */
unsigned bf_chunk_data_stripes(const struct bf_chunk_map *c);
/* Bytes each stripe spans on its device, rounded up to whole stripe elements for striped profiles. */
uint64_t bf_chunk_dev_span(const struct bf_chunk_map *c);

/* One piece of a request: the part that falls into one stripe element (the whole request for mirrored
   profiles). Copy k (0-based) of a non-parity profile lives on stripe col + k; RAID5/6 data stripe col of full
   stripe row lives on stripe (row + col) % num_stripes. Its device address is
   stripes[i].physical + row * stripe_len + in. */
struct bf_piece {
	uint64_t len;
	uint64_t row;
	uint64_t in;
	uint32_t col;
};

/* Locate the piece that starts at chunk offset off (off + len inside the chunk). */
void bf_piece_locate(const struct bf_chunk_map *c, uint64_t off, uint64_t len, struct bf_piece *p);
/* Device address of the piece on stripe i. */
static inline uint64_t bf_piece_physical(const struct bf_chunk_map *c, const struct bf_piece *p, unsigned i)
{
	return c->stripes[i].physical + p->row * c->stripe_len + p->in;
}
/* True if stripe i's device is present and open. */
static inline bool bf_stripe_present(const struct bf_chunk_map *c, unsigned i)
{
	return c->stripes[i].dev && c->stripes[i].dev->fd >= 0;
}

/* RAID5/6: the stripe holding column j of the piece's full stripe (j < data stripes: data, then P, then Q);
   the parity position rotates by one device per full stripe. */
static inline unsigned bf_raid56_stripe(const struct bf_chunk_map *c, const struct bf_piece *p, unsigned j)
{
	return (unsigned)((p->row + j) % c->num_stripes);
}

/* Read one RAID5/6 piece with the given mirror (see alloc.h), rebuilding from parity where the mirror asks
   for it or the data stripe's device is missing. mirror is already checked to be in range. */
int bf_raid56_read(const struct bf_chunk_map *c, const struct bf_piece *p, void *buf, int mirror);

#endif
