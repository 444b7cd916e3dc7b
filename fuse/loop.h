/*
 * fuse/loop.h - the daemon's request loop (fuse/loop.c).
 */
#ifndef BF_FUSE_LOOP_H
#define BF_FUSE_LOOP_H

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <stdbool.h>
#include <stdint.h>

/* Default of -o spin=N: microseconds to keep looking for the next request before sleeping. */
#define BF_SPIN_US_DEFAULT 50

/* Serve requests until the session ends (unmount, signal): 0, or a negative errno of the device read that
   ended it. spin_us: see fuse/loop.c (0: sleep at once). */
int bf_loop_run(struct fuse_session *se, unsigned spin_us);

#endif
