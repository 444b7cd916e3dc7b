/*
 * fuse/pool.h - worker threads for the FUSE requests that may block for long (see fuse/pool.c).
 *
 * Owns: a queue of jobs and the threads that run them. Key idea: one thread reads and answers the FUSE requests
 * itself, because handing every request to another thread costs a wake-up per round trip (a create is four of
 * them); only requests that wait on the disk (file reads, fsync) are queued here, so that they neither hold up
 * the others nor wait for each other.
 */
#ifndef BF_FUSE_POOL_H
#define BF_FUSE_POOL_H

#include <stdbool.h>

/* A unit of work: embedded in the caller's own structure; run() does the work, answers the request and frees
   the structure. */
struct bf_job {
	struct bf_job *next;
	void (*run)(struct bf_job *job);
};

struct bf_pool;

/* Start nthreads workers (at least 1). Returns 0 or a negative errno. */
int bf_pool_new(unsigned nthreads, struct bf_pool **out);
/* Queue job for a worker. False if there is no pool (NULL) or it is stopping: then the caller runs the job
   itself. */
bool bf_pool_submit(struct bf_pool *pool, struct bf_job *job);
/* Run every job still queued, stop and join the workers, free the pool. NULL is a no-op. */
void bf_pool_free(struct bf_pool *pool);

#endif
