/*
 * alloc/chunk.c - the chunk map: validating chunk items, keeping them sorted, and the superblock's system
 * chunk array.
 *
 * Owns: bf_vol_add_chunk, bf_vol_load_sys_chunks, bf_vol_find_chunk. Key idea: a chunk item is trusted only
 * after every field that later arithmetic depends on has been checked (the checks of the kernel's
 * btrfs_check_chunk_valid plus overflow of every stripe's device range), so the mapping code in raid.c can
 * compute addresses without further checks; the map is a sorted array searched by binary search.
 */
#include "alloc/internal.h"
#include "util/util.h"

#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK_ERR(...) bf_err(err, errlen, -EUCLEAN, "corrupt chunk item at logical " __VA_ARGS__)

/* The fields of the item that do not depend on the profile. */
static int check_geometry(const struct bf_volume *v, uint64_t logical, const struct bf_chunk *c, char *err,
			  size_t errlen)
{
	uint64_t length = get64(c->length), stripe_len = get64(c->stripe_len), end;
	if (!bf_is_power_of_2(v->sectorsize))
		return bf_err(err, errlen, -EINVAL, "the volume has no valid sector size (%u)", v->sectorsize);
	if (logical % v->sectorsize)
		return CHUNK_ERR("%" PRIu64 ": not aligned to the sector size %u", logical, v->sectorsize);
	if (get32(c->sector_size) != v->sectorsize)
		return CHUNK_ERR("%" PRIu64 ": sector size %u, the filesystem has %u", logical, get32(c->sector_size),
				 v->sectorsize);
	if (!length || length % v->sectorsize)
		return CHUNK_ERR("%" PRIu64 ": length %" PRIu64 " is zero or not a multiple of the sector size",
				 logical, length);
	if (bf_add_overflow(logical, length, &end))
		return CHUNK_ERR("%" PRIu64 ": logical + length %" PRIu64 " overflows", logical, length);
	if (length >= (uint64_t)UINT32_MAX * BF_STRIPE_LEN)
		return CHUNK_ERR("%" PRIu64 ": length %" PRIu64 " is too large", logical, length);
	if (!bf_is_power_of_2(stripe_len) || stripe_len != BF_STRIPE_LEN)
		return CHUNK_ERR("%" PRIu64 ": stripe length %" PRIu64 ", expected %llu", logical, stripe_len,
				 BF_STRIPE_LEN);
	return 0;
}

/* Type bits and the number of stripes the profile needs. */
static int check_profile(uint64_t logical, const struct bf_chunk *c, char *err, size_t errlen)
{
	uint64_t type = get64(c->type);
	unsigned ns = get16(c->num_stripes), sub = get16(c->sub_stripes);
	const struct bf_profile *p = bf_profile_of(type);
	if (type & ~(BF_BLOCK_GROUP_TYPE_MASK | BF_BLOCK_GROUP_PROFILE_MASK))
		return CHUNK_ERR("%" PRIu64 ": unknown type bits 0x%" PRIx64, logical, type);
	if (!p)
		return CHUNK_ERR("%" PRIu64 ": more than one profile bit in type 0x%" PRIx64, logical, type);
	if (!(type & BF_BLOCK_GROUP_TYPE_MASK))
		return CHUNK_ERR("%" PRIu64 ": type 0x%" PRIx64 " is none of data, metadata, system", logical, type);
	if ((type & BF_BLOCK_GROUP_SYSTEM) && (type & (BF_BLOCK_GROUP_DATA | BF_BLOCK_GROUP_METADATA)))
		return CHUNK_ERR("%" PRIu64 ": system chunk with data or metadata type 0x%" PRIx64, logical, type);
	bool raid10 = type & BF_BLOCK_GROUP_RAID10;
	if (ns < p->min_stripes || (p->max_stripes && ns > p->max_stripes) || (raid10 && ns % 2))
		return CHUNK_ERR("%" PRIu64 ": num_stripes %u is invalid for %s", logical, ns, p->name);
	if (raid10 ? sub != 2 : sub > 1)
		return CHUNK_ERR("%" PRIu64 ": sub_stripes %u is invalid for %s", logical, sub, p->name);
	return 0;
}

/* Stripe i of an item whose size the caller has checked to hold all its stripes. */
static const struct bf_stripe *chunk_stripe(const struct bf_chunk *c, unsigned i)
{
	return (const void *)((const uint8_t *)c + offsetof(struct bf_chunk, stripe) + i * sizeof(struct bf_stripe));
}

/* Build the in-memory map of a checked item; stripe devices are looked up (placeholders for unknown ones). */
static int chunk_build(struct bf_volume *v, uint64_t logical, const struct bf_chunk *c, struct bf_chunk_map **out,
		       char *err, size_t errlen)
{
	unsigned ns = get16(c->num_stripes);
	struct bf_chunk_map *m = calloc(1, sizeof(*m) + ns * sizeof(m->stripes[0]));
	if (!m)
		return bf_err(err, errlen, -ENOMEM, "out of memory loading the chunk at logical %" PRIu64, logical);
	m->logical = logical;
	m->length = get64(c->length);
	m->type = get64(c->type);
	m->stripe_len = get64(c->stripe_len);
	m->num_stripes = (uint16_t)ns;
	m->sub_stripes = (m->type & BF_BLOCK_GROUP_RAID10) ? 2 : 1;
	uint64_t span = bf_chunk_dev_span(m), end;
	int ret = 0;
	for (unsigned i = 0; i < ns && !ret; i++) {
		const struct bf_stripe *s = chunk_stripe(c, i);
		struct bf_stripe_map *sm = &m->stripes[i];
		struct bf_device *d = NULL;
		sm->devid = get64(s->devid);
		sm->physical = get64(s->offset);
		if (bf_add_overflow(sm->physical, span, &end))
			ret = CHUNK_ERR("%" PRIu64 ": stripe %u at %" PRIu64 " + %" PRIu64 " overflows", logical, i,
					sm->physical, span);
		else if (!(d = bf_vol_add_missing(v, sm->devid, s->dev_uuid)))
			ret = bf_err(err, errlen, -ENOMEM, "out of memory loading the chunk at logical %" PRIu64,
				     logical);
		else if (memcmp(d->uuid, s->dev_uuid, BF_UUID_SIZE))
			ret = CHUNK_ERR("%" PRIu64 ": stripe %u names devid %" PRIu64 " with a uuid other than the "
					"device's; is a device of another filesystem given?", logical, i, sm->devid);
		else
			sm->dev = d->fd >= 0 ? d : NULL;
	}
	if (ret)
		free(m);
	else
		*out = m;
	return ret;
}

static bool chunk_same(const struct bf_chunk_map *a, const struct bf_chunk_map *b)
{
	if (a->logical != b->logical || a->length != b->length || a->type != b->type ||
	    a->num_stripes != b->num_stripes || a->sub_stripes != b->sub_stripes)
		return false;
	for (unsigned i = 0; i < a->num_stripes; i++)
		if (a->stripes[i].devid != b->stripes[i].devid || a->stripes[i].physical != b->stripes[i].physical)
			return false;
	return true;
}

/* Index of the first chunk whose logical start is > logical. Caller holds the lock. */
static size_t chunk_upper(const struct bf_volume *v, uint64_t logical)
{
	size_t lo = 0, hi = v->nchunks;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (v->chunks[mid]->logical <= logical)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Insert m unless it overlaps a chunk (an identical duplicate is dropped). Takes ownership of m. */
static int chunk_insert(struct bf_volume *v, struct bf_chunk_map *m, char *err, size_t errlen)
{
	size_t pos = chunk_upper(v, m->logical);
	const struct bf_chunk_map *prev = pos ? v->chunks[pos - 1] : NULL;
	const struct bf_chunk_map *next = pos < v->nchunks ? v->chunks[pos] : NULL;
	if (prev && prev->logical + prev->length <= m->logical)
		prev = NULL; /* no overlap with it */
	if (next && m->logical + m->length <= next->logical)
		next = NULL;
	int ret = 0;
	if (prev && chunk_same(prev, m))
		ret = 1;
	else if (prev || next)
		ret = CHUNK_ERR("%" PRIu64 " (length %" PRIu64 "): overlaps the chunk at logical %" PRIu64, m->logical,
				m->length, (prev ? prev : next)->logical);
	else if (v->nchunks == v->chunks_cap) {
		size_t cap = v->chunks_cap ? v->chunks_cap * 2 : 16;
		struct bf_chunk_map **a = realloc(v->chunks, cap * sizeof(*a));
		if (!a)
			ret = bf_err(err, errlen, -ENOMEM, "out of memory loading the chunk map");
		else {
			v->chunks = a;
			v->chunks_cap = cap;
		}
	}
	if (ret) {
		free(m);
		return ret < 0 ? ret : 0;
	}
	memmove(v->chunks + pos + 1, v->chunks + pos, (v->nchunks - pos) * sizeof(*v->chunks));
	v->chunks[pos] = m;
	v->nchunks++;
	return 0;
}

int bf_vol_add_chunk(struct bf_volume *v, uint64_t logical, const struct bf_chunk *c, size_t item_size, char *err,
		     size_t errlen)
{
	if (item_size < sizeof(*c))
		return CHUNK_ERR("%" PRIu64 ": item of %zu bytes is shorter than a chunk item (%zu)", logical, item_size,
				 sizeof(*c));
	unsigned ns = get16(c->num_stripes);
	if (!ns)
		return CHUNK_ERR("%" PRIu64 ": num_stripes is 0", logical);
	if (item_size != bf_chunk_item_size(ns))
		return CHUNK_ERR("%" PRIu64 ": item is %zu bytes, but %u stripes need %zu", logical, item_size, ns,
				 bf_chunk_item_size(ns));
	int ret = check_geometry(v, logical, c, err, errlen);
	if (!ret)
		ret = check_profile(logical, c, err, errlen);
	if (ret)
		return ret;
	struct bf_chunk_map *m = NULL;
	pthread_rwlock_wrlock(&v->lock);
	ret = chunk_build(v, logical, c, &m, err, errlen);
	if (!ret)
		ret = chunk_insert(v, m, err, errlen);
	pthread_rwlock_unlock(&v->lock);
	return ret;
}

/* One record of the system chunk array at byte cur: a key, then a chunk item. Sets *used to its size. */
static int sys_chunk_one(struct bf_volume *v, const uint8_t *array, uint32_t size, uint32_t cur, uint32_t *used,
			 char *err, size_t errlen)
{
	const size_t min = sizeof(struct bf_disk_key) + sizeof(struct bf_chunk);
	if (size - cur < min)
		return bf_err(err, errlen, -EUCLEAN,
			      "superblock system chunk array: record at byte %u is cut short (%u bytes left, need %zu)",
			      cur, size - cur, min);
	const struct bf_disk_key *key = (const void *)(array + cur);
	const struct bf_chunk *c = (const void *)(key + 1);
	uint64_t logical = get64(key->offset), type = get64(c->type);
	size_t item = bf_chunk_item_size(get16(c->num_stripes));
	if (key->type != BF_CHUNK_ITEM_KEY)
		return bf_err(err, errlen, -EUCLEAN,
			      "superblock system chunk array: record at byte %u has key type %u, not a chunk item", cur,
			      key->type);
	if (!get16(c->num_stripes))
		return bf_err(err, errlen, -EUCLEAN, "superblock system chunk array: chunk at logical %" PRIu64
			      " (byte %u) has num_stripes 0", logical, cur);
	if (item > size - cur - sizeof(*key))
		return bf_err(err, errlen, -EUCLEAN,
			      "superblock system chunk array: chunk at logical %" PRIu64 " (byte %u) with %u stripes "
			      "does not fit in the array", logical, cur, get16(c->num_stripes));
	if (!(type & BF_BLOCK_GROUP_SYSTEM))
		return bf_err(err, errlen, -EUCLEAN,
			      "superblock system chunk array: chunk at logical %" PRIu64 " is not a system chunk "
			      "(type 0x%" PRIx64 ")", logical, type);
	*used = (uint32_t)(sizeof(*key) + item);
	return bf_vol_add_chunk(v, logical, c, item, err, errlen);
}

int bf_vol_load_sys_chunks(struct bf_volume *v, const struct bf_super *sb, char *err, size_t errlen)
{
	uint32_t size = get32(sb->sys_chunk_array_size);
	if (size > BF_SYSTEM_CHUNK_ARRAY_SIZE)
		return bf_err(err, errlen, -EUCLEAN, "superblock system chunk array size %u exceeds %u", size,
			      BF_SYSTEM_CHUNK_ARRAY_SIZE);
	if (!size)
		return bf_err(err, errlen, -EUCLEAN, "superblock system chunk array is empty");
	for (uint32_t cur = 0, used = 0; cur < size; cur += used) {
		int ret = sys_chunk_one(v, sb->sys_chunk_array, size, cur, &used, err, errlen);
		if (ret)
			return ret;
	}
	return 0;
}

const struct bf_chunk_map *bf_vol_find_chunk(const struct bf_volume *v, uint64_t logical)
{
	struct bf_volume *w = (struct bf_volume *)v; /* the lock is the only state a lookup changes */
	pthread_rwlock_rdlock(&w->lock);
	size_t pos = chunk_upper(v, logical);
	const struct bf_chunk_map *c = pos ? v->chunks[pos - 1] : NULL;
	if (c && logical - c->logical >= c->length)
		c = NULL;
	pthread_rwlock_unlock(&w->lock);
	return c;
}
