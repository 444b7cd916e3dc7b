/*
 * fuse/qos.h - asking idle CPUs to wake up fast while requests stream in (fuse/qos.c).
 */
#ifndef BF_FUSE_QOS_H
#define BF_FUSE_QOS_H

#include <stdbool.h>
#include <stdint.h>

/* Default of -o cpu_latency=N: the wake-up latency in microseconds asked for while busy (0: idle CPUs poll). */
#define BF_CPU_LATENCY_DEFAULT 0
/* -o cpu_latency=off */
#define BF_CPU_LATENCY_OFF (-1)

struct bf_qos {
	int fd;       /* /dev/cpu_dma_latency, or -1: not asking (turned off, not allowed, not this system) */
	int32_t want; /* microseconds asked for while held */
	bool held;    /* the request is in force */
};

/* Prepare to ask for want_us (BF_CPU_LATENCY_OFF: never). Not being allowed to is not an error: q stays off. */
void bf_qos_open(struct bf_qos *q, int32_t want_us);
/* Put the request in force / take it back (no-ops when off or already so). */
void bf_qos_hold(struct bf_qos *q);
void bf_qos_release(struct bf_qos *q);
void bf_qos_close(struct bf_qos *q);

#endif
