/*
 * fuse/loop.c - the request loop: read a request from the kernel, hand it to libfuse to dispatch, repeat.
 *
 * Owns: bf_loop_run (fuse/loop.h), used instead of fuse_session_loop. Key idea: after a request, keep looking for
 * the next one for a short while (spin_us microseconds of non-blocking reads) before going to sleep in poll().
 * A program working through many files (tar, cp, rm -r) sends its next request a few microseconds after our
 * answer; finding it while still awake saves waking this thread, and a wake-up of a thread whose CPU went idle
 * is a cross-CPU interrupt - on a virtual machine an exit to the hypervisor, which there costs more than most
 * requests take to serve. The spin ends after spin_us without a request, so an idle daemon sleeps; 0 turns it off.
 */
#include "fuse/loop.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <time.h>

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* No request was there: return at once while the spin budget lasts, else sleep until one comes. */
static void wait_for_request(int fd, uint64_t *idle_since, uint64_t spin_ns)
{
	uint64_t t = now_ns();
	if (!*idle_since)
		*idle_since = t;
	if (t - *idle_since < spin_ns)
		return;
	struct pollfd p = { .fd = fd, .events = POLLIN };
	(void)poll(&p, 1, -1); /* EINTR: the loop looks at the session's state again */
	*idle_since = 0;
}

int bf_loop_run(struct fuse_session *se, unsigned spin_us)
{
	int fd = fuse_session_fd(se), fl = fcntl(fd, F_GETFL), err = 0;
	bool spin = spin_us && fl >= 0 && fcntl(fd, F_SETFL, fl | O_NONBLOCK) == 0;
	uint64_t idle_since = 0, spin_ns = (uint64_t)spin_us * 1000;
	struct fuse_buf buf = { .mem = NULL };

	while (!fuse_session_exited(se)) {
		int res = fuse_session_receive_buf(se, &buf);
		if (res == -EAGAIN && spin) {
			wait_for_request(fd, &idle_since, spin_ns);
			continue;
		}
		if (res == -EINTR)
			continue;
		if (res <= 0) { /* 0: unmounted (or told to exit) */
			err = res;
			break;
		}
		idle_since = 0;
		fuse_session_process_buf(se, &buf);
	}
	free(buf.mem);
	if (spin)
		(void)fcntl(fd, F_SETFL, fl);
	fuse_session_reset(se);
	return err;
}
