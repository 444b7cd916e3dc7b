/*
 * alloc/run_delayed.c - applying everything the running transaction queued, at commit.
 *
 * Owns: bf_extalloc_run_delayed. Key idea: as the kernel's commit_cowonly_roots loop, the work feeds itself -
 * inserting a new chunk's items, applying a head (extent items, free space tree) or writing a block group item
 * changes trees, whose copy-on-write allocates and frees tree blocks, which queues more heads and changes used
 * bytes again. Rounds repeat until a round finds nothing to do. They converge because every block a round
 * copies may change in place in later rounds; only splits still allocate. A bound on the rounds turns a
 * non-converging loop (a bug) into an error instead of a hang.
 */
#include "alloc/extalloc_int.h"
#include "util/util.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#define MAX_ROUNDS 64

/* Run every head queued so far, in bytenr order; heads queued meanwhile wait for the next round. */
static int run_batch(struct bf_extalloc *ea, bool *did)
{
	struct ea_head **v;
	size_t n;
	int ret = dt_take_batch(&ea->refs, &v, &n);
	*did = n > 0;
	for (size_t i = 0; i < n; i++) {
		struct ea_head *h = v[i];
		if (h->dead || ret) {
			h->in_batch = false;
			if (h->dead)
				head_free(h);
			continue;
		}
		dt_detach(&ea->refs, h);
		h->in_batch = false;
		ret = et_run_head(ea, h);
		head_free(h);
	}
	free(v);
	return ret;
}

/* A v1 space cache describes the free space as of cache_generation; once the commit moves past it the kernel
   (and btrfs check) ignore it and the kernel rebuilds it. 0 and -1 mean no cache. */
static void invalidate_v1_cache(struct bf_extalloc *ea)
{
	uint64_t gen = get64(ea->super->cache_generation);
	if (!ea->use_fst && gen != 0 && gen != UINT64_MAX && gen >= ea->transid)
		put64(&ea->super->cache_generation, ea->transid - 1);
}

int bf_extalloc_run_delayed(struct bf_extalloc *ea, struct bf_trans *t)
{
	if (ea->error) {
		bf_log(BF_LOG_ERR, "transaction %" PRIu64 ": an earlier extent allocator failure (%s) forbids this "
		       "commit", t->transid, strerror(-ea->error));
		return ea->error;
	}
	bf_extalloc_begin(ea, t);
	invalidate_v1_cache(ea);
	for (int round = 0; round < MAX_ROUNDS; round++) {
		bool chunks = false, heads = false, groups = false;
		int ret = chunk_insert_pending(ea, &chunks);
		if (!ret)
			ret = run_batch(ea, &heads);
		if (!ret)
			ret = bg_write_dirty(ea, &groups);
		if (!ret && ea->error)
			ret = ea->error;
		if (ret) {
			bf_log(BF_LOG_ERR, "transaction %" PRIu64 ": applying extent changes failed: %s", t->transid,
			       strerror(-ret));
			return ret;
		}
		if (!chunks && !heads && !groups && !ea->refs.count)
			return 0;
	}
	bf_log(BF_LOG_ERR, "transaction %" PRIu64 ": extent changes did not settle after %d rounds (a bug in "
	       "btrfs-fuse); the commit is abandoned", t->transid, MAX_ROUNDS);
	return -EUCLEAN;
}
