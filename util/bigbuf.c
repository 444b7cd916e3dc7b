/*
 * util/bigbuf.c - growable byte buffers that are page-aligned once they are large (see util.h).
 *
 * Owns: bf_bigbuf_resize, bf_bigbuf_free and the pool of freed large buffers. Key idea: a buffer below
 * BF_BIGBUF_MIN bytes is ordinary heap memory; one at or above it is whole pages of its own (an anonymous mapping),
 * so that its start is page-aligned - what direct device writes need - and, on Linux, growing it remaps the pages
 * instead of copying them (mremap). Fresh pages are expensive: the kernel zeroes every one on first touch (in a
 * virtual machine the host may have to supply it too), which cost more than all our copying and checksumming
 * of a 1 GiB write. So a freed large buffer is not unmapped but kept in a small pool (at most POOL_MAX of them,
 * POOL_BYTES in all) and handed out again, whole, for the next large buffer that fits in it: a sequential writer
 * cycles through the same pages. Pooled pages are marked MADV_FREE, so under memory pressure the kernel may take
 * them back (they then read as zeros, which no caller relies on either way).
 */
#include "util/util.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define POOL_MAX 4
#define POOL_BYTES ((size_t)768 << 20)

static struct {
	pthread_mutex_t lock;
	void *p[POOL_MAX];
	size_t len[POOL_MAX];
	size_t n, bytes;
} pool = { .lock = PTHREAD_MUTEX_INITIALIZER };

static size_t page_round(size_t n)
{
	long ps = sysconf(_SC_PAGESIZE);
	size_t p = ps > 0 ? (size_t)ps : 4096;
	return n % p ? n - n % p + p : n;
}

/* The smallest pooled mapping of at least len bytes (taken out of the pool), or NULL. */
static void *pool_take(size_t len, size_t *got)
{
	void *q = NULL;
	pthread_mutex_lock(&pool.lock);
	size_t best = pool.n;
	for (size_t i = 0; i < pool.n; i++)
		if (pool.len[i] >= len && (best == pool.n || pool.len[i] < pool.len[best]))
			best = i;
	if (best < pool.n) {
		q = pool.p[best];
		*got = pool.len[best];
		pool.bytes -= pool.len[best];
		pool.p[best] = pool.p[--pool.n];
		pool.len[best] = pool.len[pool.n];
	}
	pthread_mutex_unlock(&pool.lock);
	return q;
}

/* Keep a mapping for later if there is room, else unmap it. MADV_FREE comes before the mapping is in the pool:
   once there, another thread may take it and write to it, and a later MADV_FREE could drop those bytes. */
static void pool_put(void *p, size_t len)
{
	pthread_mutex_lock(&pool.lock);
	bool keep = pool.n < POOL_MAX && pool.bytes + len <= POOL_BYTES;
	if (keep) {
#ifdef MADV_FREE
		(void)madvise(p, len, MADV_FREE);
#endif
		pool.p[pool.n] = p;
		pool.len[pool.n++] = len;
		pool.bytes += len;
	}
	pthread_mutex_unlock(&pool.lock);
	if (!keep)
		munmap(p, len);
}

/* A large buffer of at least len bytes: from the pool, else freshly mapped. */
static void *map_pages(size_t len, size_t *got)
{
	void *q = pool_take(len, got);
	if (q)
		return q;
	len = page_round(len);
	q = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (q == MAP_FAILED)
		return NULL;
#ifdef MADV_HUGEPAGE
	(void)madvise(q, len, MADV_HUGEPAGE); /* a hint: fewer page faults where huge pages are on */
#endif
	*got = len;
	return q;
}

/* A buffer of at least size bytes (*cap: what it really holds). */
static void *fresh(size_t size, size_t *cap)
{
	if (size >= BF_BIGBUF_MIN)
		return map_pages(size, cap);
	void *q = malloc(size ? size : 1);
	if (q)
		*cap = size;
	return q;
}

void *bf_bigbuf_resize(void *p, size_t *cap, size_t size)
{
	size_t old = p ? *cap : 0, got = 0;

	if (p && size <= old)
		return p;
	if (p && old < BF_BIGBUF_MIN && size < BF_BIGBUF_MIN) {
		void *q = realloc(p, size);
		if (q)
			*cap = size;
		return q;
	}
#ifdef __linux__
	if (p && old >= BF_BIGBUF_MIN) {
		size_t len = page_round(size);
		void *q = mremap(p, old, len, MREMAP_MAYMOVE);
		if (q == MAP_FAILED)
			return NULL;
		*cap = len;
		return q;
	}
#endif
	void *q = fresh(size, &got);
	if (!q)
		return NULL;
	if (p) {
		memcpy(q, p, old);
		bf_bigbuf_free(p, old);
	}
	*cap = got;
	return q;
}

void bf_bigbuf_free(void *p, size_t cap)
{
	if (!p)
		return;
	if (cap >= BF_BIGBUF_MIN)
		pool_put(p, cap);
	else
		free(p);
}
