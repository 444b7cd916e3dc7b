/*
 * util/util.c - logging and error-buffer helpers (see util.h).
 *
 * Key idea: one sink for all messages; syslog is selected once the daemon leaves the terminal.
 */
#include "util/util.h"

#include <stdio.h>
#include <syslog.h>

static bool log_syslog;
static enum bf_log_level log_max = BF_LOG_INFO;

void bf_log_to_syslog(bool on)
{
	if (on && !log_syslog)
		openlog("btrfs-fuse", LOG_PID, LOG_DAEMON);
	log_syslog = on;
}

void bf_log_set_verbosity(enum bf_log_level max_level) { log_max = max_level; }

void bf_vlog(enum bf_log_level level, const char *fmt, va_list ap)
{
	if (level > log_max)
		return;
	if (log_syslog) {
		vsyslog((int)level, fmt, ap);
		return;
	}
	char buf[2048];
	vsnprintf(buf, sizeof(buf), fmt, ap);
	fprintf(stderr, "btrfs-fuse: %s\n", buf);
}

void bf_log(enum bf_log_level level, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	bf_vlog(level, fmt, ap);
	va_end(ap);
}

int bf_err(char *buf, size_t len, int err, const char *fmt, ...)
{
	if (buf && len) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(buf, len, fmt, ap);
		va_end(ap);
	}
	return err;
}

void bf_uuid_str(const uint8_t u[16], char *buf)
{
	snprintf(buf, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1], u[2],
		 u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
}
