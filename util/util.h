/*
 * util/util.h - the base under every layer: logging and small helpers that know nothing of btrfs.
 *
 * Owns: the log sink (stderr in the foreground, syslog once the daemon is in the background, and an optional
 * trace hook), overflow-checked arithmetic helpers, and error-message buffers. Key idea: every message a person
 * sees goes through bf_log, so the daemon can redirect all of them in one place.
 */
#ifndef BF_UTIL_H
#define BF_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum bf_log_level { BF_LOG_ERR = 3, BF_LOG_WARN = 4, BF_LOG_INFO = 6, BF_LOG_DEBUG = 7 };

/* Print "btrfs-fuse: <message>\n" at the level; messages above the configured verbosity are dropped. */
void bf_log(enum bf_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void bf_vlog(enum bf_log_level level, const char *fmt, va_list ap);
/* Where messages go: false = stderr (default), true = syslog (daemon in background). */
void bf_log_to_syslog(bool on);
void bf_log_set_verbosity(enum bf_log_level max_level);

/* Format into an error buffer (may be NULL) and return err unchanged, so callers write: return bf_err(buf, n, -EIO, ...). */
int bf_err(char *buf, size_t len, int err, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Overflow-checked a + b and a * b: return true (and leave *out untouched) on overflow. */
static inline bool bf_add_overflow(uint64_t a, uint64_t b, uint64_t *out) { return __builtin_add_overflow(a, b, out); }
static inline bool bf_mul_overflow(uint64_t a, uint64_t b, uint64_t *out) { return __builtin_mul_overflow(a, b, out); }
/* True if [off, off+len) lies inside [0, size) with no overflow. */
static inline bool bf_range_ok(uint64_t off, uint64_t len, uint64_t size)
{
	return off <= size && len <= size - off;
}
static inline bool bf_is_power_of_2(uint64_t x) { return x && !(x & (x - 1)); }
static inline uint64_t bf_min64(uint64_t a, uint64_t b) { return a < b ? a : b; }
static inline uint64_t bf_max64(uint64_t a, uint64_t b) { return a > b ? a : b; }
static inline uint64_t bf_round_down(uint64_t x, uint64_t align) { return x - x % align; }

/* ---- the event trace (-o trace=FILE, util/trace.c) ----
 * One JSON object per line: {"t": seconds since the trace started, "transid": N, "event": "...", fields...}.
 * bf_trace is cheap when tracing is off (one relaxed atomic load). Thread-safe; each line is written whole. */
int bf_trace_open(const char *path); /* 0 or -errno */
void bf_trace_close(void);
bool bf_trace_enabled(void);
/* The transaction id stamped on later events (the journal sets it; on read-only mounts: the generation). */
void bf_trace_set_transid(uint64_t transid);
/* fmt gives the remaining JSON members, e.g. bf_trace("search", "\"tree\":%llu", id). Strings that come from
   the image or the user must go through bf_trace_str. */
void bf_trace(const char *event, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* JSON-escape s (len bytes) into buf; returns buf. */
const char *bf_trace_str(const char *s, size_t len, char *buf, size_t buflen);

/* Format a UUID as the usual 36-character text into buf (at least 37 bytes). */
/* Growable buffers (util/bigbuf.c): those of at least BF_BIGBUF_MIN bytes start on a page boundary. resize gives
   a buffer of at least size bytes holding p's bytes (p NULL: a new one; its bytes are unspecified), sets *cap to
   what it really holds (in: p's), and returns NULL, p and *cap untouched, when out of memory. free takes that
   capacity. Freed large buffers are pooled for reuse. */
#define BF_BIGBUF_MIN ((size_t)64 * 1024)
void *bf_bigbuf_resize(void *p, size_t *cap, size_t size);
void bf_bigbuf_free(void *p, size_t cap);

void bf_uuid_str(const uint8_t uuid[16], char *buf);

#endif
