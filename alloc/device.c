/*
 * alloc/device.c - byte I/O on one device: every read and write of the core ends here.
 *
 * Owns: bf_dev_pread, bf_dev_pwrite, bf_dev_flush. Key idea: a request is checked against the device's
 * readable size before any system call, so a corrupt address can never read past a device's end, and short
 * transfers are retried until done or the device reports an error. Both entry points report to the I/O
 * recorder (alloc/iorec.c, off unless a test asks for it) after the device call succeeded.
 * Large aligned writes (file data at flush) go through the device's direct descriptor when it has one: the bytes
 * go from our buffer to the disk without a copy into the page cache (whose fresh pages cost more than the copy)
 * and the commit's flush has nothing left to write back. The kernel keeps the cache coherent: a direct write
 * drops cached pages of its range, so later buffered reads see it. A direct write the system refuses (EINVAL)
 * is done again through the cache.
 */
#include "alloc/alloc.h"
#include "util/util.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <unistd.h>

/* Check that the device is present and [physical, physical + len) lies on it. */
static int dev_check(const struct bf_device *dev, size_t len, uint64_t physical, const char *what)
{
	if (dev->fd < 0)
		return -EIO; /* missing device (degraded): callers try another copy */
	if (!bf_range_ok(physical, len, dev->size)) {
		bf_log(BF_LOG_ERR, "%s of %zu bytes at %" PRIu64 " on devid %" PRIu64 " (%s) is past its end (%" PRIu64
		       " bytes)", what, len, physical, dev->devid, dev->path, dev->size);
		return -EIO;
	}
	return 0;
}

static int dev_io_error(const struct bf_device *dev, const char *what, size_t len, uint64_t physical, int e)
{
	bf_log(BF_LOG_ERR, "%s error on devid %" PRIu64 " (%s) at %" PRIu64 ", %zu bytes: %s", what, dev->devid,
	       dev->path, physical, len, e ? strerror(e) : "unexpected end of device");
	return -EIO;
}

int bf_dev_pread(const struct bf_device *dev, void *buf, size_t len, uint64_t physical)
{
	int ret = dev_check(dev, len, physical, "read");
	for (size_t done = 0; !ret && done < len;) {
		ssize_t n = pread(dev->fd, (char *)buf + done, len - done, (off_t)(physical + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return dev_io_error(dev, "read", len, physical, n < 0 ? errno : 0);
		done += (size_t)n;
	}
	return ret;
}

/* Writes at least this large, aligned, go around the page cache. */
#define DIRECT_MIN (64u * 1024)

static bool direct_ok(const struct bf_device *dev, const void *buf, size_t len, uint64_t physical)
{
	return dev->dfd >= 0 && len >= DIRECT_MIN &&
	       ((uintptr_t)buf % BF_DIRECT_ALIGN | len % BF_DIRECT_ALIGN | physical % BF_DIRECT_ALIGN) == 0;
}

/* All of buf to fd at physical: 0, or the errno of the failure (ENOSPC for a write that wrote nothing). */
static int write_all(int fd, const void *buf, size_t len, uint64_t physical)
{
	for (size_t done = 0; done < len;) {
		ssize_t n = pwrite(fd, (const char *)buf + done, len - done, (off_t)(physical + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? errno : ENOSPC;
		done += (size_t)n;
	}
	return 0;
}

int bf_dev_pwrite(const struct bf_device *dev, const void *buf, size_t len, uint64_t physical)
{
	int ret = dev_check(dev, len, physical, "write");
	if (!ret && !dev->writable) {
		bf_log(BF_LOG_ERR, "write to devid %" PRIu64 " (%s), which is open read-only", dev->devid, dev->path);
		return -EIO;
	}
	if (ret)
		return ret;
	bf_iorec_before_write();
	int e = direct_ok(dev, buf, len, physical) ? write_all(dev->dfd, buf, len, physical) : EINVAL;
	if (e == EINVAL)
		e = write_all(dev->fd, buf, len, physical);
	if (e)
		return dev_io_error(dev, "write", len, physical, e);
	return bf_iorec_write(dev->devid, physical, buf, len);
}

int bf_dev_flush(const struct bf_device *dev)
{
	if (dev->fd < 0)
		return -EIO;
	int ret = bf_plat_flush(dev->fd);
	if (ret) {
		bf_log(BF_LOG_ERR, "flush of devid %" PRIu64 " (%s) failed: %s", dev->devid, dev->path, strerror(-ret));
		return -EIO;
	}
	return bf_iorec_flush(dev->devid);
}
