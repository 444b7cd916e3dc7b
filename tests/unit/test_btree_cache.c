/*
 * tests/unit/test_btree_cache.c - the tree-block cache and mirror retry of the read path (btree/cache.c).
 *
 * Owns: (1) the cache over a synthetic 4K tree (btree_synth.h): reference counts, hits and misses, cached
 * blocks checked again against another parent's expectations, eviction under a small cap, and concurrent
 * searching threads with and without a cap; (2) mirrors: a DUP chunk whose first copy is bad or stale (the
 * read falls back to the second and says so) and one where both copies are bad.
 * Key idea: the cache must never change an answer; the searches of btree_synth.h check every result against
 * the model while the cache shares, evicts and re-reads blocks.
 * Random parts print their seed; pass a seed as argv[1] to replay. Ends with "N passed, N failed".
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tests/unit/btree_synth.h"

/* ================= (4) the cache ================= */

static void test_cache_refs(struct fs *f)
{
	struct bf_block *a = NULL, *b = NULL;
	struct bf_block_expect exp = { f->root.generation, f->root.level, NULL, 0 };
	struct bf_cache_stats s0, s1;
	int r1, r2;

	fs_reopen_env(f, 0);
	bf_cache_stats(&f->env, &s0);
	r1 = bf_block_read(&f->env, f->root.bytenr, &exp, &a);
	r2 = bf_block_read(&f->env, f->root.bytenr, &exp, &b);
	bf_cache_stats(&f->env, &s1);
	CHECK(r1 == 0 && r2 == 0 && a == b && a->refs == 2, "two reads of one block share it with 2 references");
	CHECK(s1.misses == s0.misses + 1 && s1.hits == s0.hits + 1, "one miss then one hit (%" PRIu64 " misses, %"
	      PRIu64 " hits)", s1.misses - s0.misses, s1.hits - s0.hits);
	CHECK(a && a->bytenr == f->root.bytenr && a->level == f->root.level && a->generation == f->root.generation &&
	      a->owner == BF_FS_TREE_OBJECTID, "the block's decoded header");
	bf_block_get(a);
	CHECK(a->refs == 3, "bf_block_get adds a reference");
	bf_block_put(&f->env, a);
	bf_block_put(&f->env, a);
	bf_block_put(&f->env, b);
	CHECK(a->refs == 0, "all references dropped");
	/* a cached block read with another parent's expectations is checked again */
	exp.generation = f->root.generation + 1;
	bf_log_set_verbosity((enum bf_log_level)0);
	r1 = bf_block_read(&f->env, f->root.bytenr, &exp, &a);
	bf_log_set_verbosity(BF_LOG_INFO);
	CHECK(r1 == -EUCLEAN && a == NULL, "a cache hit with the wrong generation fails (%d)", r1);
	bf_log_set_verbosity((enum bf_log_level)0);
	r1 = bf_block_read(&f->env, f->root.bytenr + 512, NULL, &a);
	bf_log_set_verbosity(BF_LOG_INFO);
	CHECK(r1 == -EUCLEAN, "an unaligned address fails before any I/O (%d)", r1);
}

static void test_cache_evict(struct fs *f)
{
	const size_t per = sizeof(struct bf_block) + f->im.nodesize;
	const size_t cap = 4 * per, n = f->im.nblocks < 40 ? f->im.nblocks : 40;
	struct bf_block **held = calloc(n, sizeof(*held));
	struct bf_cache_stats st;
	int fails = 0;

	fs_reopen_env(f, cap);
	for (size_t i = 0; i < n; i++)
		fails += bf_block_read(&f->env, f->im.blocks[i], NULL, &held[i]) != 0;
	bf_cache_stats(&f->env, &st);
	CHECK(fails == 0 && st.bytes == n * per && st.evictions == 0, "held blocks are never evicted (%" PRIu64
	      " bytes cached, %" PRIu64 " evictions)", st.bytes, st.evictions);
	for (size_t i = 0; i < n; i++)
		bf_block_put(&f->env, held[i]);
	bf_cache_stats(&f->env, &st);
	CHECK(st.bytes <= cap && st.evictions == n - cap / per, "released blocks are evicted down to the cap (%" PRIu64
	      " bytes, %" PRIu64 " evictions)", st.bytes, st.evictions);
	/* the most recently released survive */
	fails = bf_block_read(&f->env, f->im.blocks[n - 1], NULL, &held[0]);
	bf_cache_stats(&f->env, &st);
	CHECK(fails == 0 && st.hits == 1, "the last released block is still cached");
	bf_block_put(&f->env, held[0]);
	free(held);
	/* a tiny cache (one block) still answers correctly: the path holds what it uses */
	fs_reopen_env(f, per);
	CHECK(check_full_walk(f), "full walk with a one-block cache");
	bf_cache_stats(&f->env, &st);
	CHECK(st.bytes <= per, "one-block cache holds at most one idle block after the walk (%" PRIu64 ")", st.bytes);
	fs_reopen_env(f, 0);
}

struct thread_arg {
	struct fs *f;
	uint64_t rng;
	unsigned bad, done;
};

static void *search_thread(void *argp)
{
	struct thread_arg *a = argp;
	struct bf_path p;

	bf_path_init(&p, &a->f->env);
	for (unsigned i = 0; i < 1500; i++) {
		struct bf_key t = random_target(&a->f->m, &a->rng);

		a->bad += !check_one_search(a->f, &p, &t, &a->rng);
		a->done++;
	}
	bf_path_release(&p);
	return NULL;
}

static void test_cache_threads(struct fs *f)
{
	enum { NT = 4 };
	pthread_t th[NT];
	struct thread_arg args[NT];
	struct bf_cache_stats st;
	const size_t per = sizeof(struct bf_block) + f->im.nodesize;
	unsigned bad = 0, done = 0;

	for (int cap = 0; cap < 2; cap++) {
		fs_reopen_env(f, cap ? 8 * per : 0);
		for (int i = 0; i < NT; i++) {
			args[i] = (struct thread_arg){ f, check_seed + 1000 * (uint64_t)i + (uint64_t)cap, 0, 0 };
			pthread_create(&th[i], NULL, search_thread, &args[i]);
		}
		for (int i = 0; i < NT; i++) {
			pthread_join(th[i], NULL);
			bad += args[i].bad;
			done += args[i].done;
		}
		bf_cache_stats(&f->env, &st);
		CHECK(!cap || st.bytes <= 8 * per, "after the threads the small cache is within its cap (%" PRIu64 ")",
		      st.bytes);
	}
	CHECK(bad == 0 && done == 2 * NT * 1500, "concurrent searches: %u of %u wrong", bad, done);
	fs_reopen_env(f, 0);
}

/* ================= (5) mirrors ================= */

/* Run fn with stderr captured into out (NUL-terminated). */
static int capture_stderr(char *out, size_t len, int (*fn)(void *), void *arg)
{
	char path[] = "/tmp/test_btree_log.XXXXXX";
	int fd = mkstemp(path), saved = dup(2), ret;
	ssize_t n;

	fflush(stderr);
	dup2(fd, 2);
	ret = fn(arg);
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	n = pread(fd, out, len - 1, 0);
	out[n > 0 ? n : 0] = '\0';
	close(fd);
	unlink(path);
	return ret;
}

static int read_root_block(void *arg)
{
	struct fs *f = arg;
	struct bf_block *b = NULL;
	struct bf_block_expect exp = { f->root.generation, f->root.level, NULL, 0 };
	int ret = bf_block_read(&f->env, f->root.bytenr, &exp, &b);

	if (!ret)
		bf_block_put(&f->env, b);
	return ret;
}

static void test_mirrors(uint64_t *rng)
{
	struct fs f;
	char log[4096], needle[128];
	uint8_t *m1, *m2, *save = NULL;
	int ret = fs_make(&f, 16384, 2, 2000, 16, 100, 100, 0, rng);

	CHECK(ret == 0, "DUP volume setup: %d", ret);
	if (ret) {
		fs_free(&f);
		return;
	}
	CHECK(check_full_walk(&f), "walk over a DUP volume");
	m1 = img_block(&f.im, f.root.bytenr, 0);
	m2 = img_block(&f.im, f.root.bytenr, 1);
	save = malloc(f.im.nodesize);
	memcpy(save, m1, f.im.nodesize);

	m1[200] ^= 1; /* mirror 1: bad checksum */
	fs_reopen_env(&f, 0);
	ret = capture_stderr(log, sizeof(log), read_root_block, &f);
	snprintf(needle, sizeof(needle), "tree block %" PRIu64 ": mirror 1 bad (", f.root.bytenr);
	CHECK(ret == 0 && strstr(log, needle) && strstr(log, "using mirror 2"), "bad mirror 1 falls back to mirror 2 "
	      "with a warning: ret %d, log \"%s\"", ret, log);
	CHECK(check_full_walk(&f), "walk with a bad mirror 1 of the root");

	memcpy(m1, save, f.im.nodesize); /* mirror 1: stale (older generation, valid checksum) */
	put64(&((struct bf_header *)m1)->generation, f.root.generation - 1 ? f.root.generation - 1 : 2);
	put_csum(m1, f.im.nodesize, BF_CSUM_CRC32C);
	fs_reopen_env(&f, 0);
	ret = capture_stderr(log, sizeof(log), read_root_block, &f);
	CHECK(ret == 0 && strstr(log, "generation") && strstr(log, "using mirror 2"), "stale mirror 1 is passed over: "
	      "ret %d, log \"%s\"", ret, log);

	m2[300] ^= 1; /* stale mirror 1, bad checksum on mirror 2 */
	fs_reopen_env(&f, 0);
	ret = capture_stderr(log, sizeof(log), read_root_block, &f);
	snprintf(needle, sizeof(needle), "tree block %" PRIu64 ":", f.root.bytenr);
	CHECK(ret == -EUCLEAN && strstr(log, needle) && strstr(log, "mirror 1: ") && strstr(log, "mirror 2: ") &&
	      strstr(log, "expected") && strstr(log, "found"), "stale mirror 1 and bad mirror 2: ret %d (want "
	      "-EUCLEAN), log \"%s\"", ret, log);
	memcpy(m1, save, f.im.nodesize);
	m1[300] ^= 1;
	fs_reopen_env(&f, 0);
	ret = capture_stderr(log, sizeof(log), read_root_block, &f);
	CHECK(ret == -EIO && strstr(log, "crc32c checksum mismatch: expected "), "both mirrors with bad checksums: ret "
	      "%d (want -EIO), log \"%s\"", ret, log);
	{
		struct bf_path p;
		struct bf_key t = f.m.keys[0];

		bf_path_init(&p, &f.env);
		bf_log_set_verbosity((enum bf_log_level)0);
		ret = bf_search(&f.env, &f.root, &t, &p);
		bf_log_set_verbosity(BF_LOG_INFO);
		CHECK(ret == -EIO && !bf_path_valid(&p), "search with an unreadable root fails with -EIO (%d)", ret);
		bf_path_release(&p);
	}
	free(save);
	fs_free(&f);
}

int main(int argc, char **argv)
{
	uint64_t rng;
	struct fs f;

	check_seed = argc > 1 ? strtoull(argv[1], NULL, 0) : (uint64_t)time(NULL);
	printf("test_btree_cache: seed %" PRIu64 "\n", check_seed);
	rng = check_seed;
	if (fs_make(&f, 4096, 1, 6000, 4, 40, 6, 0, &rng) == 0) {
		test_cache_refs(&f);
		test_cache_evict(&f);
		test_cache_threads(&f);
	} else {
		CHECK(0, "setup of the 4K tree for the cache tests");
	}
	fs_free(&f);
	test_mirrors(&rng);
	return check_summary();
}
