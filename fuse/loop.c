/*
 * fuse/loop.c - the request loop: read a request from the kernel, hand it to libfuse to dispatch, repeat.
 *
 * Owns: bf_loop_run (fuse/loop.h), used instead of fuse_session_loop. Key idea: a program working through many
 * files (tar, cp, rm -r) sends its next request a few microseconds after our answer, and each side of the round
 * trip may have to wake a sleeping thread. A wake-up of a thread whose CPU went idle is a cross-CPU interrupt -
 * on a virtual machine an exit to the hypervisor, which there costs more than most requests take to serve. Two
 * measures, both only while requests keep coming:
 *  - after a request, keep looking for the next one for a short while (spin_us microseconds of non-blocking
 *    reads) before going to sleep in poll(): no wake-up of this thread;
 *  - during a burst (a request within QUIET_NS of the previous one), hold a CPU latency request (fuse/qos.c) so
 *    that idle CPUs, the program's among them, wake up fast; it is taken back after QUIET_NS without a request.
 * An idle daemon sleeps in poll() and asks for nothing.
 */
#include "fuse/loop.h"

#include "fuse/qos.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <time.h>

/* A burst: requests less than this apart; it ends after this long without one. */
#define QUIET_NS 2000000u

struct loop {
	int fd;              /* /dev/fuse */
	uint64_t spin_ns;    /* keep reading this long after a request before sleeping */
	uint64_t idle_since; /* when the last read found nothing (0: the last read found a request) */
	uint64_t last_req;   /* when the last request came (0: none yet) */
	struct bf_qos qos;
};

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void got_request(struct loop *l)
{
	uint64_t t = now_ns();
	if (l->last_req && t - l->last_req < QUIET_NS)
		bf_qos_hold(&l->qos);
	l->last_req = t;
	l->idle_since = 0;
}

/* Sleep until a request comes: first out the rest of a burst (keeping the latency request), then for good. */
static void sleep_for_request(struct loop *l, uint64_t t)
{
	struct pollfd p = { .fd = l->fd, .events = POLLIN };
	if (l->qos.held) {
		uint64_t end = l->last_req + QUIET_NS;
		if (t < end && poll(&p, 1, (int)((end - t + 999999) / 1000000)) != 0)
			return; /* a request, or EINTR: the loop looks at the session's state again */
		bf_qos_release(&l->qos);
	}
	(void)poll(&p, 1, -1);
}

/* No request was there: return at once while the spin lasts, else sleep until one comes. */
static void wait_for_request(struct loop *l)
{
	uint64_t t = now_ns();
	if (!l->idle_since)
		l->idle_since = t;
	if (t - l->idle_since < l->spin_ns)
		return;
	sleep_for_request(l, t);
	l->idle_since = 0;
}

int bf_loop_run(struct fuse_session *se, const struct bf_loop_opts *o)
{
	struct loop l = { .fd = fuse_session_fd(se), .spin_ns = (uint64_t)o->spin_us * 1000 };
	int fl = fcntl(l.fd, F_GETFL), err = 0;
	bf_qos_open(&l.qos, o->cpu_latency_us);
	bool nonblock = (l.spin_ns || l.qos.fd >= 0) && fl >= 0 && fcntl(l.fd, F_SETFL, fl | O_NONBLOCK) == 0;
	struct fuse_buf buf = { .mem = NULL };

	while (!fuse_session_exited(se)) {
		int res = fuse_session_receive_buf(se, &buf);
		if (res == -EAGAIN && nonblock) {
			wait_for_request(&l);
			continue;
		}
		if (res == -EINTR)
			continue;
		if (res <= 0) { /* 0: unmounted (or told to exit) */
			err = res;
			break;
		}
		got_request(&l);
		fuse_session_process_buf(se, &buf);
	}
	free(buf.mem);
	bf_qos_close(&l.qos);
	if (nonblock)
		(void)fcntl(l.fd, F_SETFL, fl);
	fuse_session_reset(se);
	return err;
}
