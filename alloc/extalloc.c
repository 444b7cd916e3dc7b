/*
 * alloc/extalloc.c - the extent allocator's entry points: open and close, handing out tree blocks and data
 * extents, metadata reservations, and the end of a transaction (commit or abort).
 *
 * Owns: struct bf_extalloc's lifecycle, the bf_alloc_ops the btree layer calls, bf_extalloc_data*,
 * reservations, bf_extalloc_committed / abort and the space queries.
 *
 * Key idea: allocation is first fit in the block groups that serve the kind (data, metadata, system), starting
 * at a hint (the caller's, else where the last allocation of that kind ended, like the kernel's allocation
 * clusters) and wrapping around; tree blocks are nodesize-aligned so they never cross a 64 KiB stripe; when no
 * group has room a chunk is made (in memory; its items follow at commit). Everything handed out is remembered in
 * trans_alloc and as a new head in the delayed-reference table (must_insert), so a block freed again in the
 * same transaction goes straight back to the free space, while anything freed that a committed tree may still
 * reach is pinned until bf_extalloc_committed. Abort rebuilds the free space from the last committed free space
 * tree mirror, which is exact because nothing else changes at a commit boundary.
 */
#include "alloc/extalloc_int.h"
#include "util/util.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* ---- space queries ---- */

uint64_t ea_free_bytes(const struct bf_extalloc *ea, enum ea_kind kind)
{
	uint64_t sum = 0;
	for (size_t i = 0; i < ea->nbgs; i++)
		if (bg_serves(ea, ea->bgs[i], kind))
			sum += rset_bytes(&ea->bgs[i]->free);
	return sum;
}

/* btrfs_calc_insert_metadata_size: room for changing `items` items in a tree of the deepest possible shape. */
static uint64_t insert_size(const struct bf_extalloc *ea, uint64_t items)
{
	return (uint64_t)ea->nodesize * BF_MAX_LEVEL * 2 * items;
}

/* The global reserve, as btrfs_update_global_block_rsv sizes it for an empty filesystem: the global trees
   (extent, checksum, free space, block group) plus an unlink's worth of items and their delayed references. */
uint64_t ea_global_reserve(const struct bf_extalloc *ea)
{
	uint64_t items = 2 + ea->use_fst + ea->bg_tree + 6;
	return insert_size(ea, items) + insert_size(ea, 6) * (ea->use_fst ? 2 : 1);
}

/* ---- allocation ---- */

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

/* First aligned run of len in bg's free space at or after from. */
static bool fit_in_group(const struct ea_bg *bg, uint64_t from, uint64_t len, uint64_t align, uint64_t *out)
{
	for (size_t i = rset_lower(&bg->free, from); i < bg->free.n; i++) {
		uint64_t s = align_up(bf_max64(bg->free.v[i].start, from), align);
		if (s < bg->free.v[i].end && bg->free.v[i].end - s >= len) {
			*out = s;
			return true;
		}
	}
	return false;
}

static bool first_fit(const struct bf_extalloc *ea, enum ea_kind kind, uint64_t len, uint64_t align, uint64_t hint,
		      uint64_t *out)
{
	size_t n = ea->nbgs, first = 0;
	if (!n)
		return false;
	while (first < n && ea->bgs[first]->start + ea->bgs[first]->length <= hint)
		first++;
	for (size_t k = 0; k <= n; k++) { /* the hint's group last again, for its part before the hint */
		const struct ea_bg *bg = ea->bgs[(first + k) % n];
		if (!bg_serves(ea, bg, kind))
			continue;
		uint64_t from = k == 0 && hint > bg->start ? hint : bg->start;
		if (fit_in_group(bg, from, len, align, out))
			return true;
	}
	return false;
}

/* The longest aligned run of at least min_len (for data when no run of the wanted length is left). */
static bool largest_fit(const struct bf_extalloc *ea, enum ea_kind kind, uint64_t min_len, uint64_t align,
			uint64_t *out, uint64_t *len)
{
	uint64_t best = 0;
	for (size_t b = 0; b < ea->nbgs; b++) {
		const struct ea_bg *bg = ea->bgs[b];
		for (size_t i = 0; bg_serves(ea, bg, kind) && i < bg->free.n; i++) {
			uint64_t s = align_up(bg->free.v[i].start, align);
			uint64_t l = s < bg->free.v[i].end ? bf_round_down(bg->free.v[i].end - s, align) : 0;
			if (l > best) {
				best = l;
				*out = s;
			}
		}
	}
	*len = best;
	return best >= min_len && best;
}

/* Take [start, start + len) out of the free space into trans_alloc. */
static int take(struct bf_extalloc *ea, uint64_t start, uint64_t len)
{
	struct ea_bg *bg = bg_find(ea, start);
	int ret = bg ? rset_add(&ea->trans_alloc, start, start + len) : -EUCLEAN;
	if (!ret && (ret = rset_del(&bg->free, start, start + len)))
		rset_del(&ea->trans_alloc, start, start + len);
	return ret;
}

int ea_alloc_space(struct bf_extalloc *ea, enum ea_kind kind, uint64_t len, uint64_t min_len, uint64_t align,
		   uint64_t hint, uint64_t *start, uint64_t *got)
{
	int ret = -ENOSPC;
	*got = len;
	for (int attempt = 0; attempt < 2; attempt++) {
		if (first_fit(ea, kind, len, align, hint, start)) {
			ret = 0;
			break;
		}
		if (attempt == 0 && (ret = chunk_alloc(ea, kind)) != 0)
			break;
		ret = -ENOSPC;
	}
	if (ret == -ENOSPC && min_len < len && largest_fit(ea, kind, min_len, align, start, got)) {
		*got = bf_min64(*got, len);
		ret = 0;
	}
	if (!ret)
		ret = take(ea, *start, *got);
	if (!ret)
		ea->cursor[kind] = *start + *got;
	return ret;
}

int ea_unreserve(struct bf_extalloc *ea, uint64_t start, uint64_t len)
{
	struct ea_bg *bg = bg_find(ea, start);
	int ret = bg ? rset_del(&ea->trans_alloc, start, start + len) : -ENOENT;
	if (!ret)
		ret = rset_add(&bg->free, start, start + len);
	if (ret)
		bf_log(BF_LOG_ERR, "giving back [%" PRIu64 ", +%" PRIu64 ") which was not handed out in this transaction "
		       "(a bug in btrfs-fuse)", start, len);
	return ret ? -EUCLEAN : 0;
}

int ea_pin(struct bf_extalloc *ea, uint64_t start, uint64_t len)
{
	int ret = rset_add(&ea->pinned, start, start + len);
	if (ret == -EEXIST)
		bf_log(BF_LOG_ERR, "extent [%" PRIu64 ", +%" PRIu64 ") freed twice in one transaction (corrupt extent "
		       "tree or a bug in btrfs-fuse)", start, len);
	return ret == -EEXIST ? -EUCLEAN : ret;
}

/* A head for an extent just handed out: no queued change may exist for its address. */
static int new_head(struct bf_extalloc *ea, uint64_t start, uint64_t len, bool data, int level)
{
	struct ea_head *h;
	int ret = dt_get(&ea->refs, start, len, data, &h);
	if (ret)
		return ret;
	if (h->must_insert || h->nrefs || h->set_flags || h->had_refs) {
		bf_log(BF_LOG_ERR, "address %" PRIu64 " handed out while changes of an extent there are queued (a bug "
		       "in btrfs-fuse)", start);
		return -EUCLEAN;
	}
	h->must_insert = true;
	h->level = (uint8_t)level;
	return 0;
}

/* ---- the ops the btree layer calls ---- */

static int ready(struct bf_extalloc *ea)
{
	if (ea->error)
		return ea->error;
	if (!ea->trans) {
		bf_log(BF_LOG_ERR, "extent allocator used outside a transaction (a bug in btrfs-fuse)");
		return -EINVAL;
	}
	return 0;
}

static int op_alloc_tree_block(void *ctx, uint64_t owner, int level, uint64_t *bytenr)
{
	struct bf_extalloc *ea = ctx;
	enum ea_kind kind = owner == BF_CHUNK_TREE_OBJECTID ? EA_SYS : EA_META;
	uint64_t got;
	int ret = ready(ea);
	if (!ret)
		ret = ea_alloc_space(ea, kind, ea->nodesize, ea->nodesize, ea->nodesize, ea->cursor[kind], bytenr, &got);
	if (!ret && (ret = new_head(ea, *bytenr, ea->nodesize, false, level)) != 0)
		ea_unreserve(ea, *bytenr, ea->nodesize);
	if (!ret)
		bf_trace("alloc", "\"kind\":\"tree_block\",\"bytenr\":%" PRIu64 ",\"bytes\":%u,\"owner\":%" PRIu64
			 ",\"level\":%d", *bytenr, ea->nodesize, owner, level);
	return ret;
}

static int op_tree_block_added(void *ctx, uint64_t bytenr, uint64_t owner, int level, const struct bf_key *first_key)
{
	struct bf_extalloc *ea = ctx;
	struct ea_head *h = dt_find(&ea->refs, bytenr);
	int ret = ready(ea);
	if (!ret && (!h || !h->must_insert || h->is_data)) {
		bf_log(BF_LOG_ERR, "tree block %" PRIu64 " recorded without being allocated (a bug in btrfs-fuse)",
		       bytenr);
		ret = -EUCLEAN;
	}
	if (!ret)
		h->first_key = first_key ? *first_key : (struct bf_key){ 0, 0, 0 };
	return ret ? ret : ea_queue_tree_ref(ea, bytenr, 0, owner, level, 1);
}

static void op_free_tree_block(void *ctx, uint64_t bytenr, uint64_t owner, int level)
{
	struct bf_extalloc *ea = ctx;
	struct ea_head *h = dt_find(&ea->refs, bytenr);
	int ret = ea_queue_tree_ref(ea, bytenr, 0, owner, level, -1);
	bf_trace("free", "\"kind\":\"tree_block\",\"bytenr\":%" PRIu64 ",\"owner\":%" PRIu64 ",\"level\":%d",
		 bytenr, owner, level);
	if (!ret && h && h->must_insert && !h->nrefs && !h->set_flags) {
		dt_remove(&ea->refs, h); /* never reached the extent tree: reusable at once */
		ret = ea_unreserve(ea, bytenr, ea->nodesize);
	}
	if (ret)
		ea_fail(ea, ret);
}

static const struct bf_alloc_ops tree_ops = {
	.alloc_tree_block = op_alloc_tree_block,
	.free_tree_block = op_free_tree_block,
	.tree_block_added = op_tree_block_added,
	.tree_block_cowed = ea_tree_block_cowed,
};

const struct bf_alloc_ops *bf_extalloc_tree_ops(void) { return &tree_ops; }

/* ---- log tree blocks ---- */

/* What must stay free beside a new claim on metadata space (defined below). */
static uint64_t meta_keep(const struct bf_extalloc *ea);

int bf_extalloc_log_block(struct bf_extalloc *ea, uint64_t *bytenr)
{
	uint64_t keep = meta_keep(ea) + ea->nodesize;
	int ret = ready(ea);
	if (!ret && ea_free_bytes(ea, EA_META) < keep)
		return -ENOSPC; /* the log never takes what the running transaction's commit may need */
	for (size_t i = 0; !ret && i < ea->nbgs; i++) {
		const struct ea_bg *bg = ea->bgs[i];
		uint64_t at;
		if (bg->created || !bg_serves(ea, bg, EA_META) || !fit_in_group(bg, bg->start, ea->nodesize,
										   ea->nodesize, &at))
			continue;
		ret = take(ea, at, ea->nodesize);
		if (!ret && (ret = ea_pin(ea, at, ea->nodesize)) != 0)
			ea_unreserve(ea, at, ea->nodesize);
		if (!ret) {
			*bytenr = at;
			bf_trace("alloc", "\"kind\":\"log_block\",\"bytenr\":%" PRIu64 ",\"bytes\":%u", at, ea->nodesize);
		}
		return ret;
	}
	return ret ? ret : -ENOSPC;
}

bool bf_extalloc_new_chunks(const struct bf_extalloc *ea)
{
	for (size_t i = 0; i < ea->nbgs; i++)
		if (ea->bgs[i]->created)
			return true;
	return false;
}

/* ---- data ---- */

static int resv_add(struct bf_extalloc *ea, uint64_t start, uint64_t len)
{
	if (ea->nresv == ea->resv_cap) {
		size_t cap = ea->resv_cap ? ea->resv_cap * 2 : 16;
		struct ea_resv *v = realloc(ea->resv, cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		ea->resv = v;
		ea->resv_cap = cap;
	}
	size_t pos = ea->nresv;
	while (pos > 0 && ea->resv[pos - 1].start > start)
		pos--;
	memmove(ea->resv + pos + 1, ea->resv + pos, (ea->nresv - pos) * sizeof(*ea->resv));
	ea->resv[pos] = (struct ea_resv){ start, len };
	ea->nresv++;
	return 0;
}

/* Index of the reservation holding addr, or nresv. */
static size_t resv_find(const struct bf_extalloc *ea, uint64_t addr)
{
	size_t lo = 0, hi = ea->nresv;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (ea->resv[mid].start <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo && addr - ea->resv[lo - 1].start < ea->resv[lo - 1].len ? lo - 1 : ea->nresv;
}

/* With mixed block groups, data must leave the metadata reservations and the global reserve alone: the bytes
   data may take (making a chunk when the groups are down to the reserve). */
static uint64_t mixed_room(struct bf_extalloc *ea)
{
	uint64_t keep = ea_global_reserve(ea) + ea->meta_reserved + ea->sectorsize, free_b = ea_free_bytes(ea, EA_DATA);
	if (free_b < keep && !chunk_alloc(ea, EA_DATA))
		free_b = ea_free_bytes(ea, EA_DATA);
	return free_b > keep ? free_b - keep + ea->sectorsize : 0;
}

int bf_extalloc_data(struct bf_extalloc *ea, uint64_t len, uint64_t hint, uint64_t *bytenr, uint64_t *got)
{
	int ret = ready(ea);
	if (ret)
		return ret;
	if (!len || len % ea->sectorsize) {
		bf_log(BF_LOG_ERR, "data allocation of %" PRIu64 " bytes is not a sector multiple (a bug in "
		       "btrfs-fuse)", len);
		return -EINVAL;
	}
	if (ea->mixed) {
		uint64_t room = mixed_room(ea);
		if (room < ea->sectorsize)
			return -ENOSPC;
		len = bf_min64(len, bf_round_down(room, ea->sectorsize));
	}
	ret = ea_alloc_space(ea, EA_DATA, len, ea->sectorsize, ea->sectorsize, hint ? hint : ea->cursor[EA_DATA],
			     bytenr, got);
	if (ret)
		return ret;
	ret = new_head(ea, *bytenr, *got, true, 0);
	if (!ret && (ret = resv_add(ea, *bytenr, *got)) != 0)
		dt_remove(&ea->refs, dt_find(&ea->refs, *bytenr));
	if (ret)
		ea_unreserve(ea, *bytenr, *got);
	else
		bf_trace("alloc", "\"kind\":\"data\",\"bytenr\":%" PRIu64 ",\"bytes\":%" PRIu64, *bytenr, *got);
	return ret;
}

void bf_extalloc_data_unused(struct bf_extalloc *ea, uint64_t bytenr, uint64_t len)
{
	size_t i = resv_find(ea, bytenr);
	struct ea_resv *r = i < ea->nresv ? &ea->resv[i] : NULL;
	struct ea_head *h = r ? dt_find(&ea->refs, r->start) : NULL;
	if (!r || !len || bytenr + len != r->start + r->len || !h || !h->must_insert || h->had_refs) {
		bf_log(BF_LOG_ERR, "giving back data [%" PRIu64 ", +%" PRIu64 ") that is not the unreferenced tail of "
		       "an extent allocated in this transaction (a bug in btrfs-fuse)", bytenr, len);
		ea_fail(ea, -EINVAL);
		return;
	}
	if (bytenr == r->start) {
		dt_remove(&ea->refs, h);
		memmove(r, r + 1, (ea->nresv - i - 1) * sizeof(*r));
		ea->nresv--;
	} else {
		r->len = bytenr - r->start;
		h->num_bytes = r->len;
	}
	int ret = ea_unreserve(ea, bytenr, len);
	if (ret)
		ea_fail(ea, ret);
}

/* ---- reservations and queries ---- */

/* What the commit of the queued changes may still take beyond the global reserve: each head changes an extent
   item and a free space tree entry (about 256 bytes with their share of copied leaves). */
static uint64_t pending_commit_bytes(const struct bf_extalloc *ea) { return (uint64_t)ea->refs.count * 256; }

/* Bytes of metadata groups and how many of them are not free now (used, allocated in this transaction, pinned,
   superblock copies): the kernel's space_info total_bytes and btrfs_space_info_used(sinfo, false). */
static void meta_usage(const struct bf_extalloc *ea, uint64_t *total, uint64_t *used)
{
	uint64_t t = 0, f = 0;
	for (size_t i = 0; i < ea->nbgs; i++)
		if (bg_serves(ea, ea->bgs[i], EA_META)) {
			t += ea->bgs[i]->length;
			f += rset_bytes(&ea->bgs[i]->free);
		}
	*total = t;
	*used = t > f ? t - f : 0;
}

/* The kernel's should_alloc_chunk with CHUNK_ALLOC_NO_FORCE: a new metadata chunk only once what is really
   taken (not what is reserved) passes 80% of the metadata space, less 2 MiB. */
static bool meta_nearly_full(const struct bf_extalloc *ea)
{
	uint64_t total, used;
	meta_usage(ea, &total, &used);
	return used + (2ULL << 20) >= total / 10 * 8;
}

/* What must stay free beside a new reservation: the global reserve, every outstanding reservation and what
   the commit of the queued changes may take. */
static uint64_t meta_keep(const struct bf_extalloc *ea)
{
	return ea_global_reserve(ea) + ea->meta_reserved + pending_commit_bytes(ea);
}

static bool meta_fits(const struct bf_extalloc *ea, uint64_t need)
{
	uint64_t free_b = ea_free_bytes(ea, EA_META), keep = meta_keep(ea);
	return free_b >= keep && free_b - keep >= need;
}

int bf_extalloc_reserve_meta(struct bf_extalloc *ea, uint64_t items, enum bf_resv_mode mode)
{
	uint64_t need = insert_size(ea, items);
	if (ea->error)
		return ea->error;
	if (mode == BF_RESV_ALWAYS || meta_fits(ea, need)) {
		ea->meta_reserved += need;
		return 0;
	}
	/* short: a new chunk (when allowed), never a promise on space no chunk holds yet (no overcommit) */
	if ((mode == BF_RESV_FORCE_CHUNK || meta_nearly_full(ea)) && chunk_alloc(ea, EA_META) == 0 &&
	    meta_fits(ea, need)) {
		ea->meta_reserved += need;
		return 0;
	}
	return -ENOSPC;
}

void bf_extalloc_release_meta(struct bf_extalloc *ea, uint64_t items)
{
	uint64_t n = insert_size(ea, items);
	if (n > ea->meta_reserved)
		bf_log(BF_LOG_WARN, "giving back %" PRIu64 " bytes of metadata reservation, only %" PRIu64
		       " are held (a bug in btrfs-fuse)", n, ea->meta_reserved);
	ea->meta_reserved = ea->meta_reserved > n ? ea->meta_reserved - n : 0;
}

uint64_t bf_extalloc_meta_reserved(const struct bf_extalloc *ea) { return ea->meta_reserved; }

uint64_t bf_extalloc_bytes_used(const struct bf_extalloc *ea) { return get64(ea->super->bytes_used); }

uint64_t bf_extalloc_free_data(const struct bf_extalloc *ea)
{
	uint64_t free_b = ea_free_bytes(ea, EA_DATA) + chunk_unallocated(ea, EA_DATA);
	uint64_t keep = ea->mixed ? ea_global_reserve(ea) + ea->meta_reserved : 0;
	return free_b > keep ? free_b - keep : 0;
}

uint64_t bf_extalloc_dev_bytes_used(const struct bf_extalloc *ea, uint64_t devid)
{
	for (size_t i = 0; i < ea->ndevs; i++)
		if (ea->devs[i].devid == devid)
			return ea->devs[i].bytes_used;
	return 0;
}

/* ---- lifecycle ---- */

static void save_super(struct bf_extalloc *ea)
{
	struct ea_saved_super *s = &ea->saved;
	s->bytes_used = get64(ea->super->bytes_used);
	s->dev_bytes_used = get64(ea->super->dev_item.bytes_used);
	s->cache_generation = get64(ea->super->cache_generation);
	s->sys_array_size = get32(ea->super->sys_chunk_array_size);
	memcpy(s->sys_array, ea->super->sys_chunk_array, BF_SYSTEM_CHUNK_ARRAY_SIZE);
}

static void restore_super(struct bf_extalloc *ea)
{
	const struct ea_saved_super *s = &ea->saved;
	put64(&ea->super->bytes_used, s->bytes_used);
	put64(&ea->super->dev_item.bytes_used, s->dev_bytes_used);
	put64(&ea->super->cache_generation, s->cache_generation);
	put32(&ea->super->sys_chunk_array_size, s->sys_array_size);
	memcpy(ea->super->sys_chunk_array, s->sys_array, BF_SYSTEM_CHUNK_ARRAY_SIZE);
}

static struct bf_extalloc *ea_alloc(struct bf_tree_env *env, struct bf_volume *vol, struct bf_super *super)
{
	struct bf_extalloc *ea = calloc(1, sizeof(*ea));
	if (!ea)
		return NULL;
	if (dt_init(&ea->refs)) {
		free(ea);
		return NULL;
	}
	ea->env = env;
	ea->vol = vol;
	ea->super = super;
	ea->nodesize = env->nodesize;
	ea->sectorsize = env->sectorsize;
	uint64_t incompat = get64(super->incompat_flags);
	ea->skinny = incompat & BF_FEATURE_INCOMPAT_SKINNY_METADATA;
	ea->mixed = incompat & BF_FEATURE_INCOMPAT_MIXED_GROUPS;
	ea->bg_tree = get64(super->compat_ro_flags) & BF_FEATURE_COMPAT_RO_BLOCK_GROUP_TREE;
	save_super(ea);
	return ea;
}

static int check_features(const struct bf_extalloc *ea, const struct bf_extalloc_roots *roots, char *err,
			  size_t errlen)
{
	uint64_t ro = get64(ea->super->compat_ro_flags), incompat = get64(ea->super->incompat_flags);
	if (incompat & (BF_FEATURE_INCOMPAT_EXTENT_TREE_V2 | BF_FEATURE_INCOMPAT_RAID_STRIPE_TREE |
			BF_FEATURE_INCOMPAT_ZONED | BF_FEATURE_INCOMPAT_SIMPLE_QUOTA))
		return bf_err(err, errlen, -EROFS, "writing is not supported with the extent-tree-v2, zoned, "
			      "raid-stripe-tree or simple-quota features; mount read-only");
	if ((ro & BF_FEATURE_COMPAT_RO_FREE_SPACE_TREE) && !(ro & BF_FEATURE_COMPAT_RO_FREE_SPACE_TREE_VALID))
		return bf_err(err, errlen, -EROFS, "the free space tree is marked not valid; mount once with the kernel "
			      "(it rebuilds the tree), or mount read-only");
	if (!roots->extent || ((ro & BF_FEATURE_COMPAT_RO_FREE_SPACE_TREE) && !roots->free_space) ||
	    ((ro & BF_FEATURE_COMPAT_RO_BLOCK_GROUP_TREE) && !roots->block_group))
		return bf_err(err, errlen, -EUCLEAN, "a tree the features call for (extent, free space or block group "
			      "tree) is missing");
	return 0;
}

int bf_extalloc_open(struct bf_tree_env *env, struct bf_volume *vol, struct bf_super *super,
		     const struct bf_extalloc_roots *roots, struct bf_extalloc **out, char *err, size_t errlen)
{
	struct bf_extalloc *ea = ea_alloc(env, vol, super);
	if (!ea)
		return bf_err(err, errlen, -ENOMEM, "out of memory opening the extent allocator");
	if (err && errlen)
		err[0] = 0;
	ea->roots = *roots;
	ea->use_fst = get64(super->compat_ro_flags) & BF_FEATURE_COMPAT_RO_FREE_SPACE_TREE;
	int ret = check_features(ea, roots, err, errlen);
	if (!ret)
		ret = dev_load_all(ea, err, errlen);
	if (!ret)
		ret = bg_load_all(ea, err, errlen);
	if (ret) {
		bf_extalloc_close(ea);
		return ret;
	}
	*out = ea;
	return 0;
}

void bf_extalloc_close(struct bf_extalloc *ea)
{
	if (!ea)
		return;
	for (size_t i = 0; i < ea->nbgs; i++)
		bg_destroy(ea->bgs[i]);
	free(ea->bgs);
	dev_destroy_all(ea);
	dt_destroy(&ea->refs);
	rset_free(&ea->trans_alloc);
	rset_free(&ea->pinned);
	free(ea->resv);
	free(ea);
}

void bf_extalloc_set_csum_root(struct bf_extalloc *ea, struct bf_root *csum) { ea->csum_root = csum; }

void bf_extalloc_begin(struct bf_extalloc *ea, struct bf_trans *t)
{
	ea->trans = t;
	ea->transid = t->transid;
}

/* Give a pinned range back to the free space of the groups it spans (adjacent pins of neighbouring groups
   merge in ea->pinned). */
static void unpin(struct bf_extalloc *ea, uint64_t start, uint64_t end)
{
	while (start < end) {
		struct ea_bg *bg = bg_find(ea, start);
		uint64_t stop = bg ? bf_min64(end, bg->start + bg->length) : end;
		if (!bg || rset_add(&bg->free, start, stop))
			bf_log(BF_LOG_WARN, "cannot return pinned space [%" PRIu64 ", %" PRIu64 ") to the free space; it "
			       "stays unused until the next mount", start, stop);
		start = stop;
	}
}

void bf_extalloc_committed(struct bf_extalloc *ea)
{
	for (size_t i = 0; i < ea->pinned.n; i++)
		unpin(ea, ea->pinned.v[i].start, ea->pinned.v[i].end);
	if (ea->refs.count)
		bf_log(BF_LOG_WARN, "%zu queued extent reference changes left at commit (a bug in btrfs-fuse)",
		       ea->refs.count);
	rset_clear(&ea->pinned);
	rset_clear(&ea->trans_alloc);
	ea->nresv = 0;
	for (size_t i = 0; i < ea->nbgs; i++) {
		ea->bgs[i]->used_committed = ea->bgs[i]->used;
		ea->bgs[i]->fst_saved_ok = false;
	}
	dev_committed(ea);
	save_super(ea);
	ea->trans = NULL;
}

void bf_extalloc_abort(struct bf_extalloc *ea)
{
	dt_destroy(&ea->refs);
	dt_init(&ea->refs);
	chunk_abort(ea);
	for (size_t i = 0; i < ea->nbgs; i++) {
		struct ea_bg *bg = ea->bgs[i];
		fst_restore(bg);
		bg->used = bg->used_committed;
		bg->dirty = false;
		const struct bf_chunk_map *c = bf_vol_find_chunk(ea->vol, bg->start);
		if (rset_copy(&bg->free, &bg->fst) || !c || bg_exclude_super(ea, bg, c))
			rset_clear(&bg->free); /* cannot rebuild: hand out nothing from this group */
	}
	rset_clear(&ea->pinned);
	rset_clear(&ea->trans_alloc);
	ea->nresv = 0;
	restore_super(ea);
	ea->trans = NULL;
	ea->error = ea->refs.buckets ? 0 : -ENOMEM;
}
