/*
 * util/trace.c - the event trace behind -o trace=FILE: one JSON line per event.
 *
 * Owns: the trace file, its clock and the transaction id stamped on events. Key idea: every layer reports events
 * through bf_trace with a preformatted list of JSON members; this file adds time, transaction id and event
 * name and writes the line with one write() under a mutex, so lines from many threads never interleave.
 * When tracing is off, bf_trace returns after one atomic load.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util/util.h"

static atomic_int trace_fd = -1;
static _Atomic uint64_t trace_transid;
static struct timespec trace_start;
static pthread_mutex_t trace_lock = PTHREAD_MUTEX_INITIALIZER;

int bf_trace_open(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	clock_gettime(CLOCK_MONOTONIC, &trace_start);
	int old = atomic_exchange(&trace_fd, fd);
	if (old >= 0)
		close(old);
	return 0;
}

void bf_trace_close(void)
{
	pthread_mutex_lock(&trace_lock);
	int fd = atomic_exchange(&trace_fd, -1);
	if (fd >= 0)
		close(fd);
	pthread_mutex_unlock(&trace_lock);
}

bool bf_trace_enabled(void) { return atomic_load_explicit(&trace_fd, memory_order_relaxed) >= 0; }

void bf_trace_set_transid(uint64_t transid) { atomic_store(&trace_transid, transid); }

const char *bf_trace_str(const char *s, size_t len, char *buf, size_t buflen)
{
	size_t o = 0;
	for (size_t i = 0; i < len && o + 7 < buflen; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '"' || c == '\\') {
			buf[o++] = '\\';
			buf[o++] = (char)c;
		} else if (c < 0x20 || c >= 0x7f) {
			o += (size_t)snprintf(buf + o, buflen - o, "\\u%04x", c);
		} else {
			buf[o++] = (char)c;
		}
	}
	buf[o < buflen ? o : buflen - 1] = 0;
	return buf;
}

void bf_trace(const char *event, const char *fmt, ...)
{
	if (!bf_trace_enabled())
		return;
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	double t = (double)(now.tv_sec - trace_start.tv_sec) + (double)(now.tv_nsec - trace_start.tv_nsec) / 1e9;
	char line[1024];
	int n = snprintf(line, sizeof(line), "{\"t\":%.6f,\"transid\":%llu,\"event\":\"%s\"", t,
			 (unsigned long long)atomic_load(&trace_transid), event);
	if (fmt && *fmt && n > 0 && (size_t)n < sizeof(line) - 1) {
		line[n++] = ',';
		va_list ap;
		va_start(ap, fmt);
		int m = vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
		va_end(ap);
		n = m < 0 ? n - 1 : n + m;
	}
	if (n < 0)
		return;
	if ((size_t)n > sizeof(line) - 3) /* too long: keep the event, drop its members, stay valid JSON */
		n = snprintf(line, sizeof(line), "{\"t\":%.6f,\"transid\":%llu,\"event\":\"%s\",\"truncated\":true", t,
			     (unsigned long long)atomic_load(&trace_transid), event);
	line[n++] = '}';
	line[n++] = '\n';
	pthread_mutex_lock(&trace_lock);
	int fd = atomic_load(&trace_fd);
	if (fd >= 0 && write(fd, line, (size_t)n) < 0) {
		/* a failing trace file must not disturb the filesystem: stop tracing */
		atomic_store(&trace_fd, -1);
		close(fd);
	}
	pthread_mutex_unlock(&trace_lock);
}
