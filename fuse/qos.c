/*
 * fuse/qos.c - the CPU wake-up latency request the daemon holds while a program keeps it busy.
 *
 * Owns: bf_qos_open/hold/release/close (fuse/qos.h), used by the request loop (fuse/loop.c).
 * Key idea: every FUSE request is a round trip: the program sleeps until our answer wakes it. When its CPU went
 * idle meanwhile, that wake-up is an interrupt to a halted CPU, which on a virtual machine (an exit to the
 * hypervisor) can cost more than the request itself - tens of microseconds, several times per file for tar.
 * Writing a latency to /dev/cpu_dma_latency (the kernel's CPU latency QoS interface; the request lasts while
 * the file is open, the smallest value asked for wins) makes idle CPUs choose idle states that wake up at least
 * that fast: with 0 they poll instead of halting, and a wake-up is a store to memory. That costs CPU time on
 * idle CPUs, so the loop holds the request only during a burst of requests and takes it back after a short
 * quiet spell (fuse/loop.c). Only root may open the file; anyone else simply does without. -o trace records each
 * change as a "cpu_latency" event.
 */
#include "fuse/qos.h"

#include "util/util.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

/* What the kernel takes as "no constraint" (PM_QOS_CPU_LATENCY_DEFAULT_VALUE, 2000 s in microseconds). */
#define QOS_NONE ((int32_t)2000000000)

static void qos_write(struct bf_qos *q, int32_t us)
{
	if (write(q->fd, &us, sizeof(us)) != (ssize_t)sizeof(us)) {
		bf_log(BF_LOG_WARN, "cannot set the CPU latency request in /dev/cpu_dma_latency (%s): going on "
		       "without it", strerror(errno));
		bf_qos_close(q);
	}
}

void bf_qos_open(struct bf_qos *q, int32_t want_us)
{
	q->fd = -1;
	q->want = want_us;
	q->held = false;
	if (want_us < 0)
		return;
	q->fd = open("/dev/cpu_dma_latency", O_WRONLY | O_CLOEXEC);
	if (q->fd < 0)
		bf_log(BF_LOG_DEBUG, "no CPU latency request (/dev/cpu_dma_latency: %s)", strerror(errno));
}

void bf_qos_hold(struct bf_qos *q)
{
	if (q->fd < 0 || q->held)
		return;
	q->held = true;
	bf_trace("cpu_latency", "\"held\":true,\"us\":%d", (int)q->want);
	qos_write(q, q->want);
}

void bf_qos_release(struct bf_qos *q)
{
	if (q->fd < 0 || !q->held)
		return;
	q->held = false;
	bf_trace("cpu_latency", "\"held\":false");
	qos_write(q, QOS_NONE);
}

void bf_qos_close(struct bf_qos *q)
{
	if (q->fd >= 0)
		close(q->fd); /* the kernel drops the request with the file */
	q->fd = -1;
	q->held = false;
}
