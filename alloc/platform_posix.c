/*
 * alloc/platform_posix.c - opening devices on systems other than Linux (macOS, FreeBSD); compiled to nothing on
 * Linux, where alloc/platform_linux.c is used.
 *
 * Owns: bf_plat_open and bf_plat_flush with plain POSIX calls. Key idea: an exclusive non-blocking flock claims
 * the device or image; the size of a device is where lseek(SEEK_END) lands.
 */
#ifndef __linux__

#include "alloc/alloc.h"
#include "util/util.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

int bf_plat_open(const char *path, bool writable, int *fd, uint64_t *size, char *err, size_t errlen)
{
	int f = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
	if (f < 0)
		return bf_err(err, errlen, -errno, "cannot open %s: %s", path, strerror(errno));
	struct stat st;
	off_t end = -1;
	int ret = 0;
	if (fstat(f, &st) < 0 || (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode) && !S_ISCHR(st.st_mode)))
		ret = bf_err(err, errlen, -EINVAL, "%s is neither a block device nor an image file", path);
	else if (flock(f, LOCK_EX | LOCK_NB) < 0)
		ret = bf_err(err, errlen, -EBUSY,
			     "%s is in use (mounted by the kernel or another program); unmount it first", path);
	else if ((end = S_ISREG(st.st_mode) ? st.st_size : lseek(f, 0, SEEK_END)) < 0)
		ret = bf_err(err, errlen, -errno, "cannot get the size of %s: %s", path, strerror(errno));
	if (ret) {
		close(f);
		return ret;
	}
	*fd = f;
	*size = (uint64_t)end;
	return 0;
}

int bf_plat_flush(int fd)
{
#ifdef F_FULLFSYNC
	if (fcntl(fd, F_FULLFSYNC) == 0)
		return 0;
#endif
	return fsync(fd) < 0 ? -errno : 0;
}

/* Writes go through the system's cache here; the flush at commit makes them durable. */
int bf_plat_open_direct(int fd)
{
	(void)fd;
	return -1;
}

#endif
