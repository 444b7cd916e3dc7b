/*
 * fuse/loop.h - the daemon's request loop (fuse/loop.c).
 */
#ifndef BF_FUSE_LOOP_H
#define BF_FUSE_LOOP_H

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <stdbool.h>
#include <stdint.h>

#include "fuse/qos.h"

/* Default of -o spin=N: microseconds to keep looking for the next request before sleeping. */
#define BF_SPIN_US_DEFAULT 50

struct bf_loop_opts {
	unsigned spin_us;       /* -o spin=N: see fuse/loop.c (0: sleep at once) */
	int32_t cpu_latency_us; /* -o cpu_latency=N: asked for during bursts (fuse/qos.c); BF_CPU_LATENCY_OFF: never */
};

/* Serve requests until the session ends (unmount, signal): 0, or a negative errno of the device read that
   ended it. */
int bf_loop_run(struct fuse_session *se, const struct bf_loop_opts *o);

#endif
