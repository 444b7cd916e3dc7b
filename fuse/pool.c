/*
 * fuse/pool.c - a fixed set of worker threads running queued jobs (fuse/pool.h).
 *
 * Owns: the job queue (a FIFO list under one mutex) and the workers. Key idea: a worker sleeps on a condition
 * variable until a job is queued or the pool stops; stopping lets the workers empty the queue first, so every
 * queued FUSE request still gets its answer before the session is destroyed.
 */
#include "fuse/pool.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"

struct bf_pool {
	pthread_mutex_t lock;
	pthread_cond_t wake;
	struct bf_job *head, **tail;
	bool stopping;
	unsigned nthreads;
	pthread_t *threads;
};

/* The next job, or NULL once the pool is stopping and the queue is empty. */
static struct bf_job *next_job(struct bf_pool *p)
{
	pthread_mutex_lock(&p->lock);
	while (!p->head && !p->stopping)
		pthread_cond_wait(&p->wake, &p->lock);
	struct bf_job *j = p->head;
	if (j) {
		p->head = j->next;
		if (!p->head)
			p->tail = &p->head;
	}
	pthread_mutex_unlock(&p->lock);
	return j;
}

static void *worker(void *arg)
{
	struct bf_pool *p = arg;
	struct bf_job *j;

	while ((j = next_job(p)))
		j->run(j);
	return NULL;
}

int bf_pool_new(unsigned nthreads, struct bf_pool **out)
{
	struct bf_pool *p = calloc(1, sizeof(*p));
	if (!p || !(p->threads = calloc(nthreads ? nthreads : 1, sizeof(*p->threads)))) {
		free(p);
		return -ENOMEM;
	}
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->wake, NULL);
	p->tail = &p->head;
	/* Workers block every signal (they inherit the mask): SIGTERM, SIGINT and the like reach the thread that
	   reads the requests, whose read is what they must interrupt to end the loop. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int r = 0;
	for (unsigned i = 0; i < (nthreads ? nthreads : 1) && !r; i++) {
		r = pthread_create(&p->threads[i], NULL, worker, p);
		if (!r)
			p->nthreads++;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r) {
		bf_log(BF_LOG_ERR, "cannot start worker thread %u: %s", p->nthreads + 1, strerror(r));
		bf_pool_free(p);
		return -r;
	}
	*out = p;
	return 0;
}

bool bf_pool_submit(struct bf_pool *p, struct bf_job *j)
{
	if (!p)
		return false;
	pthread_mutex_lock(&p->lock);
	bool ok = !p->stopping;
	if (ok) {
		j->next = NULL;
		*p->tail = j;
		p->tail = &j->next;
		pthread_cond_signal(&p->wake);
	}
	pthread_mutex_unlock(&p->lock);
	return ok;
}

void bf_pool_free(struct bf_pool *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->lock);
	p->stopping = true;
	pthread_cond_broadcast(&p->wake);
	pthread_mutex_unlock(&p->lock);
	for (unsigned i = 0; i < p->nthreads; i++)
		pthread_join(p->threads[i], NULL);
	pthread_cond_destroy(&p->wake);
	pthread_mutex_destroy(&p->lock);
	free(p->threads);
	free(p);
}
