/*
 * btree/block.c - reading and validating tree blocks, and the accessors for validated blocks.
 *
 * Owns: bf_block_read (cache lookup, then every mirror in turn until one verifies), bf_block_check (the full
 * validation of one block image) and the leaf/node accessors.
 *
 * Key idea: validation runs in a fixed order - address alignment, checksum, header, layout, then what the
 * parent pointer promised (level, generation, first key, owner) - following the kernel's
 * btrfs_validate_extent_buffer and tree-checker check_leaf/check_node. The layout check proves that every item
 * header and every item's data lies inside the block, so the accessors read without bounds checks. A checksum
 * failure is -EIO (the copy is damaged; another mirror may be fine); every other failure is -EUCLEAN (the block
 * verifies but is malformed or is not the block the parent points to, e.g. a stale copy). Blocks already in the
 * cache were fully checked when they entered it; a hit only re-checks the parent's expectations.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "btree/btree_int.h"
#include "util/util.h"

#define HDR_SIZE ((uint32_t)sizeof(struct bf_header))
#define ITEM_SIZE ((uint32_t)sizeof(struct bf_item))
#define PTR_SIZE ((uint32_t)sizeof(struct bf_key_ptr))
#define REASON_LEN 256

/* ---- raw layout (callers check slot bounds) ---- */

static const struct bf_header *hdr_of(const uint8_t *data) { return (const struct bf_header *)data; }

static const struct bf_item *item_at(const uint8_t *data, uint32_t slot)
{
	return (const struct bf_item *)(data + HDR_SIZE + (size_t)slot * ITEM_SIZE);
}

static const struct bf_key_ptr *ptr_at(const uint8_t *data, uint32_t slot)
{
	return (const struct bf_key_ptr *)(data + HDR_SIZE + (size_t)slot * PTR_SIZE);
}

/* Key at slot of a leaf (level 0) or node image. */
static struct bf_key raw_key(const uint8_t *data, uint8_t level, uint32_t slot)
{
	return level == 0 ? bf_key_from_disk(&item_at(data, slot)->key) : bf_key_from_disk(&ptr_at(data, slot)->key);
}

/* The header fields of a block image, decoded into b (data is not touched). */
static void decode_header(const uint8_t *data, struct bf_block *b)
{
	const struct bf_header *h = hdr_of(data);

	b->bytenr = get64(h->bytenr);
	b->generation = get64(h->generation);
	b->owner = get64(h->owner);
	b->nritems = get32(h->nritems);
	b->level = h->level;
}

static const char *kind(uint8_t level) { return level == 0 ? "leaf" : "node"; }

/* ---- the checks ---- */

static int check_alignment(const struct bf_tree_env *env, uint64_t bytenr, char *err, size_t errlen)
{
	if (bytenr % env->sectorsize)
		return bf_err(err, errlen, -EUCLEAN, "address %" PRIu64 " is not aligned to the sector size %u", bytenr,
			      env->sectorsize);
	return 0;
}

static int check_csum(const struct bf_tree_env *env, const uint8_t *data, char *err, size_t errlen)
{
	uint8_t found[BF_CSUM_MAX];
	char want_hex[2 * BF_CSUM_MAX + 1], found_hex[2 * BF_CSUM_MAX + 1];
	int size = bf_csum_size(env->csum_type);

	if (size < 0 || bf_csum(env->csum_type, data + BF_CSUM_SIZE, env->nodesize - BF_CSUM_SIZE, found) != 0)
		return bf_err(err, errlen, -EIO, "cannot compute checksum type %u", env->csum_type);
	if (memcmp(found, data, (size_t)size) == 0)
		return 0;
	bf_csum_hex(env->csum_type, data, want_hex, sizeof(want_hex));
	bf_csum_hex(env->csum_type, found, found_hex, sizeof(found_hex));
	return bf_err(err, errlen, -EIO, "%s checksum mismatch: expected %s (stored), found %s (computed)",
		      bf_csum_name(env->csum_type), want_hex, found_hex);
}

static int check_header(const struct bf_tree_env *env, uint64_t bytenr, const uint8_t *data,
			const struct bf_block *b, char *err, size_t errlen)
{
	char want[37], found[37];

	if (b->bytenr != bytenr)
		return bf_err(err, errlen, -EUCLEAN, "header bytenr is %" PRIu64 ", expected %" PRIu64, b->bytenr,
			      bytenr);
	if (memcmp(hdr_of(data)->fsid, env->fsid, BF_FSID_SIZE) != 0) {
		bf_uuid_str(hdr_of(data)->fsid, found);
		bf_uuid_str(env->fsid, want);
		return bf_err(err, errlen, -EUCLEAN, "header fsid is %s, expected %s (block of another filesystem?)",
			      found, want);
	}
	if (b->level >= BF_MAX_LEVEL)
		return bf_err(err, errlen, -EUCLEAN, "level %u, maximum is %d", b->level, BF_MAX_LEVEL - 1);
	if (b->generation == 0)
		return bf_err(err, errlen, -EUCLEAN, "generation is 0");
	/* +1: the running transaction writes blocks one generation past the last committed superblock */
	if (env->super_generation && b->generation > env->super_generation + 1)
		return bf_err(err, errlen, -EUCLEAN, "generation %" PRIu64 " is newer than the superblock's %" PRIu64,
			      b->generation, env->super_generation);
	return 0;
}

/* Items of a leaf: packed back to back from the end of the block in slot order, after all item headers, with
   strictly ascending keys. Exactly the layout the kernel's check_leaf enforces. */
static int check_leaf(const struct bf_tree_env *env, const uint8_t *data, uint32_t nritems, char *err,
		      size_t errlen)
{
	const uint32_t data_size = env->nodesize - HDR_SIZE;
	uint64_t want_end = data_size;
	struct bf_key prev = { 0, 0, 0 }, key;

	if (nritems > data_size / ITEM_SIZE)
		return bf_err(err, errlen, -EUCLEAN, "leaf has %u items, at most %u fit", nritems,
			      data_size / ITEM_SIZE);
	for (uint32_t i = 0; i < nritems; i++) {
		const struct bf_item *it = item_at(data, i);
		uint64_t off = get32(it->offset), size = get32(it->size), end = off + size;

		key = raw_key(data, 0, i);
		if (i > 0 && bf_key_cmp(&prev, &key) >= 0)
			return bf_err(err, errlen, -EUCLEAN,
				      "slot %u key (%" PRIu64 " %u %" PRIu64 ") is not above slot %u key (%" PRIu64
				      " %u %" PRIu64 ")", i, key.objectid, key.type, key.offset, i - 1, prev.objectid,
				      prev.type, prev.offset);
		if (end > data_size)
			return bf_err(err, errlen, -EUCLEAN,
				      "slot %u data [%" PRIu64 ", %" PRIu64 ") runs past the end of the leaf (%u)", i,
				      off, end, data_size);
		if (end != want_end)
			return bf_err(err, errlen, -EUCLEAN,
				      "slot %u data ends at %" PRIu64 ", expected %" PRIu64 " (items must be packed)", i,
				      end, want_end);
		if (off < (uint64_t)(i + 1) * ITEM_SIZE)
			return bf_err(err, errlen, -EUCLEAN,
				      "slot %u data at %" PRIu64 " overlaps the item headers (they end at %" PRIu64 ")",
				      i, off, (uint64_t)(i + 1) * ITEM_SIZE);
		want_end = off;
		prev = key;
	}
	return 0;
}

static int check_node(const struct bf_tree_env *env, const uint8_t *data, uint32_t nritems, char *err,
		      size_t errlen)
{
	const uint32_t max = (env->nodesize - HDR_SIZE) / PTR_SIZE;
	struct bf_key prev = { 0, 0, 0 }, key;

	if (nritems == 0 || nritems > max)
		return bf_err(err, errlen, -EUCLEAN, "node has %u pointers, expected 1 to %u", nritems, max);
	for (uint32_t i = 0; i < nritems; i++) {
		const struct bf_key_ptr *kp = ptr_at(data, i);
		uint64_t ptr = get64(kp->blockptr);

		key = raw_key(data, 1, i);
		if (i > 0 && bf_key_cmp(&prev, &key) >= 0)
			return bf_err(err, errlen, -EUCLEAN,
				      "slot %u key (%" PRIu64 " %u %" PRIu64 ") is not above slot %u key (%" PRIu64
				      " %u %" PRIu64 ")", i, key.objectid, key.type, key.offset, i - 1, prev.objectid,
				      prev.type, prev.offset);
		if (ptr == 0 || ptr % env->sectorsize)
			return bf_err(err, errlen, -EUCLEAN, "slot %u child pointer %" PRIu64
				      " is zero or not aligned to the sector size %u", i, ptr, env->sectorsize);
		if (get64(kp->generation) == 0)
			return bf_err(err, errlen, -EUCLEAN, "slot %u child generation is 0", i);
		prev = key;
	}
	return 0;
}

/* Subvolume trees share blocks between snapshots, so a block of one may carry another subvolume's id
   (as the kernel's btrfs_check_eb_owner allows). */
static bool is_fs_tree(uint64_t id)
{
	return id == BF_FS_TREE_OBJECTID || (id >= BF_FIRST_FREE_OBJECTID && id <= BF_LAST_FREE_OBJECTID);
}

static int check_owner(uint64_t want, uint64_t owner, char *err, size_t errlen)
{
	if (want == 0 || want == BF_TREE_RELOC_OBJECTID || owner == want)
		return 0;
	if (is_fs_tree(want) && is_fs_tree(owner))
		return 0;
	return bf_err(err, errlen, -EUCLEAN, "owner is tree %" PRIu64 ", expected %" PRIu64, owner, want);
}

/* What the parent pointer promised. b holds the decoded header; data is the image (layout already valid). */
static int check_expect(const struct bf_block *b, const uint8_t *data, const struct bf_block_expect *exp,
			char *err, size_t errlen)
{
	struct bf_key first;

	if (!exp)
		return 0;
	if (exp->level >= 0 && b->level != exp->level)
		return bf_err(err, errlen, -EUCLEAN, "level is %u, parent expects %d", b->level, exp->level);
	if (exp->generation && b->generation != exp->generation)
		return bf_err(err, errlen, -EUCLEAN, "generation is %" PRIu64 ", parent expects %" PRIu64
			      " (stale or misdirected write)", b->generation, exp->generation);
	if (exp->first_key) {
		if (b->nritems == 0)
			return bf_err(err, errlen, -EUCLEAN, "%s is empty, parent expects first key (%" PRIu64
				      " %u %" PRIu64 ")", kind(b->level), exp->first_key->objectid,
				      exp->first_key->type, exp->first_key->offset);
		first = raw_key(data, b->level, 0);
		if (bf_key_cmp(&first, exp->first_key) != 0)
			return bf_err(err, errlen, -EUCLEAN, "first key is (%" PRIu64 " %u %" PRIu64
				      "), parent expects (%" PRIu64 " %u %" PRIu64 ")", first.objectid, first.type,
				      first.offset, exp->first_key->objectid, exp->first_key->type,
				      exp->first_key->offset);
	}
	return check_owner(exp->owner, b->owner, err, errlen);
}

int bf_block_check(const struct bf_tree_env *env, uint64_t bytenr, const uint8_t *data,
		   const struct bf_block_expect *exp, char *err, size_t errlen)
{
	struct bf_block b;
	int ret = check_alignment(env, bytenr, err, errlen);

	if (!ret)
		ret = check_csum(env, data, err, errlen);
	if (ret)
		return ret;
	decode_header(data, &b);
	ret = check_header(env, bytenr, data, &b, err, errlen);
	if (!ret)
		ret = b.level == 0 ? check_leaf(env, data, b.nritems, err, errlen)
				   : check_node(env, data, b.nritems, err, errlen);
	if (!ret)
		ret = check_expect(&b, data, exp, err, errlen);
	return ret;
}

/* ---- reading ---- */

/* Why the mirrors of one block failed: the first mirror's reason alone, and every mirror's reason in one line. */
struct mirror_report {
	char first[REASON_LEN];
	char all[4 * REASON_LEN];
	size_t len;
};

static void report_add(struct mirror_report *r, int mirror, const char *why)
{
	if (mirror == 1)
		snprintf(r->first, sizeof(r->first), "%s", why);
	if (r->len < sizeof(r->all))
		r->len += (size_t)snprintf(r->all + r->len, sizeof(r->all) - r->len, "%smirror %d: %s",
					   mirror > 1 ? "; " : "", mirror, why);
}

/* Try each mirror of bytenr into b->data until one passes every check; *used gets its number. */
static int read_mirrors(struct bf_tree_env *env, uint64_t bytenr, const struct bf_block_expect *exp,
			struct bf_block *b, int ncopies, struct mirror_report *r, int *used)
{
	char why[REASON_LEN];
	int ret = -EIO;
	bool malformed = false;

	for (int m = 1; m <= ncopies; m++) {
		ret = bf_vol_read(env->vol, bytenr, b->data, env->nodesize, m);
		if (ret)
			snprintf(why, sizeof(why), "%s", ret == -EIO ? "read error" : "address range not readable");
		else
			ret = bf_block_check(env, bytenr, b->data, exp, why, sizeof(why));
		if (!ret) {
			*used = m;
			return 0;
		}
		malformed |= ret == -EUCLEAN;
		report_add(r, m, why);
	}
	/* A copy whose checksum verifies but whose content is wrong means the block was written that way. */
	return malformed ? -EUCLEAN : -EIO;
}

static int read_uncached(struct bf_tree_env *env, uint64_t bytenr, const struct bf_block_expect *exp,
			 struct bf_block **out)
{
	struct mirror_report r = { .len = 0 };
	int ncopies = bf_vol_num_copies(env->vol, bytenr), used = 0, ret;
	struct bf_block *b;

	if (ncopies <= 0) {
		bf_log(BF_LOG_ERR, "tree block %" PRIu64 ": address is not in any chunk (corrupt pointer or chunk "
				   "tree; run 'btrfs check --readonly')", bytenr);
		return -EIO;
	}
	b = bf_block_alloc(env->nodesize);
	if (!b) {
		bf_log(BF_LOG_ERR, "tree block %" PRIu64 ": out of memory", bytenr);
		return -ENOMEM;
	}
	ret = read_mirrors(env, bytenr, exp, b, ncopies, &r, &used);
	if (ret) {
		bf_log(BF_LOG_ERR, "tree block %" PRIu64 ": no good copy among %d: %s. The metadata is damaged; run "
				   "'btrfs check --readonly' on the device", bytenr, ncopies, r.all);
		bf_block_free(b);
		return ret;
	}
	if (used > 1)
		bf_log(BF_LOG_WARN, "tree block %" PRIu64 ": mirror 1 bad (%s), using mirror %d", bytenr, r.first, used);
	decode_header(b->data, b);
	bf_trace("block_read", "\"bytenr\":%" PRIu64 ",\"owner\":%" PRIu64 ",\"level\":%u,\"generation\":%" PRIu64
		 ",\"mirror\":%d", bytenr, b->owner, b->level, b->generation, used);
	*out = bf_cache_insert(env->cache, b);
	return 0;
}

int bf_block_read(struct bf_tree_env *env, uint64_t bytenr, const struct bf_block_expect *exp, struct bf_block **out)
{
	char why[REASON_LEN];
	struct bf_block *b;
	int ret = check_alignment(env, bytenr, why, sizeof(why));

	*out = NULL;
	if (ret) {
		bf_log(BF_LOG_ERR, "tree block %" PRIu64 ": %s (corrupt pointer)", bytenr, why);
		return ret;
	}
	b = bf_cache_lookup(env->cache, bytenr);
	if (!b) {
		ret = read_uncached(env, bytenr, exp, &b);
		if (ret)
			return ret;
	}
	/* a cached copy was checked against whoever read it first; check it against this parent too */
	ret = check_expect(b, b->data, exp, why, sizeof(why));
	if (ret) {
		bf_log(BF_LOG_ERR, "tree block %" PRIu64 " (%s of tree %" PRIu64 "): %s. The metadata is inconsistent; "
				   "run 'btrfs check --readonly'", bytenr, kind(b->level), b->owner, why);
		bf_block_put(env, b);
		return ret;
	}
	*out = b;
	return 0;
}

/* ---- accessors (validated blocks; an out-of-range slot gives a zero key / NULL instead of a stray read) ---- */

struct bf_key bf_leaf_key(const struct bf_block *b, uint32_t slot)
{
	struct bf_key zero = { 0, 0, 0 };

	return slot < b->nritems && b->level == 0 ? raw_key(b->data, 0, slot) : zero;
}

const uint8_t *bf_leaf_item(const struct bf_block *b, uint32_t slot, uint32_t *size)
{
	const struct bf_item *it;

	if (slot >= b->nritems || b->level != 0) {
		if (size)
			*size = 0;
		return NULL;
	}
	it = item_at(b->data, slot);
	if (size)
		*size = get32(it->size);
	return b->data + HDR_SIZE + get32(it->offset);
}

struct bf_key bf_node_key(const struct bf_block *b, uint32_t slot)
{
	struct bf_key zero = { 0, 0, 0 };

	return slot < b->nritems && b->level > 0 ? raw_key(b->data, 1, slot) : zero;
}

uint64_t bf_node_blockptr(const struct bf_block *b, uint32_t slot)
{
	return slot < b->nritems && b->level > 0 ? get64(ptr_at(b->data, slot)->blockptr) : 0;
}

uint64_t bf_node_ptr_gen(const struct bf_block *b, uint32_t slot)
{
	return slot < b->nritems && b->level > 0 ? get64(ptr_at(b->data, slot)->generation) : 0;
}
