/*
 * alloc/platform_linux.c - opening devices on Linux: the only Linux-specific code in the core.
 *
 * Owns: bf_plat_open and bf_plat_flush. Key idea: claim the device so that nobody else writes it while we use
 * it: a block device is opened O_EXCL (the kernel refuses while it is mounted or claimed by another program),
 * an image file gets an exclusive non-blocking flock (another btrfs-fuse holds the same lock), and is refused if a
 * loop device backed by it is claimed (the kernel has it mounted through that loop device).
 * Other systems use alloc/platform_posix.c.
 */
#ifdef __linux__

#include "alloc/alloc.h"
#include "util/util.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <dirent.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

static int busy(const char *path, char *err, size_t errlen)
{
	return bf_err(err, errlen, -EBUSY, "%s is in use (mounted by the kernel or another program); unmount it first",
		      path);
}

/* Usable size of the opened fd: BLKGETSIZE64 for a block device, the file size otherwise. */
static int plat_size(int fd, const char *path, const struct stat *st, uint64_t *size, char *err, size_t errlen)
{
	if (S_ISREG(st->st_mode)) {
		*size = (uint64_t)st->st_size;
		return 0;
	}
	uint64_t sz = 0;
	if (ioctl(fd, BLKGETSIZE64, &sz) < 0)
		return bf_err(err, errlen, -errno, "cannot get the size of %s: %s", path, strerror(errno));
	*size = sz;
	return 0;
}

/* True if loop device `name` (e.g. "loop3") is backed by the file st and is claimed by someone (a mount). */
static bool loop_claims(const char *name, const struct stat *st)
{
	char path[300], backing[4096];
	snprintf(path, sizeof(path), "/sys/block/%s/loop/backing_file", name);
	FILE *f = fopen(path, "re");
	if (!f)
		return false;
	bool got = fgets(backing, sizeof(backing), f) != NULL;
	fclose(f);
	if (!got)
		return false;
	backing[strcspn(backing, "\n")] = 0;
	struct stat bst;
	if (stat(backing, &bst) < 0 || bst.st_dev != st->st_dev || bst.st_ino != st->st_ino)
		return false;
	snprintf(path, sizeof(path), "/dev/%s", name);
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_EXCL);
	if (fd >= 0) {
		close(fd);
		return false;
	}
	return errno == EBUSY;
}

/* True if some claimed loop device is backed by the image file st. */
static bool image_in_loop_use(const struct stat *st)
{
	DIR *d = opendir("/sys/block");
	if (!d)
		return false;
	bool used = false;
	struct dirent *e;
	while (!used && (e = readdir(d)) != NULL)
		if (strncmp(e->d_name, "loop", 4) == 0)
			used = loop_claims(e->d_name, st);
	closedir(d);
	return used;
}

int bf_plat_open(const char *path, bool writable, int *fd, uint64_t *size, char *err, size_t errlen)
{
	struct stat st;
	if (stat(path, &st) < 0)
		return bf_err(err, errlen, -errno, "cannot open %s: %s", path, strerror(errno));
	bool blk = S_ISBLK(st.st_mode);
	if (!blk && !S_ISREG(st.st_mode))
		return bf_err(err, errlen, -EINVAL, "%s is neither a block device nor an image file", path);

	int f = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC | (blk ? O_EXCL : 0));
	if (f < 0)
		return errno == EBUSY ? busy(path, err, errlen)
				      : bf_err(err, errlen, -errno, "cannot open %s: %s", path, strerror(errno));
	int ret = 0;
	if (fstat(f, &st) < 0)
		ret = bf_err(err, errlen, -errno, "cannot stat %s: %s", path, strerror(errno));
	else if (S_ISBLK(st.st_mode) != blk)
		ret = bf_err(err, errlen, -EAGAIN, "%s changed type while it was being opened; try again", path);
	else if (!blk && flock(f, LOCK_EX | LOCK_NB) < 0)
		ret = errno == EWOULDBLOCK ? busy(path, err, errlen)
					   : bf_err(err, errlen, -errno, "cannot lock %s: %s", path, strerror(errno));
	else if (!blk && image_in_loop_use(&st))
		ret = busy(path, err, errlen);
	if (!ret)
		ret = plat_size(f, path, &st, size, err, errlen);
	if (ret) {
		close(f);
		return ret;
	}
	*fd = f;
	return 0;
}

int bf_plat_flush(int fd) { return fsync(fd) < 0 ? -errno : 0; }

/* Reopened through /proc so that it is the same file even if its path changed; no O_EXCL (the first descriptor
   holds the claim). The filesystem under an image must take direct I/O at our alignment (statx DIOALIGN where the
   kernel tells it; tmpfs before 6.6 refuses the open). */
int bf_plat_open_direct(int fd)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	int d = open(path, O_RDWR | O_CLOEXEC | O_DIRECT);
	if (d < 0)
		return -1;
#ifdef STATX_DIOALIGN
	struct statx sx;
	if (statx(d, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN) &&
	    (sx.stx_dio_mem_align == 0 || sx.stx_dio_offset_align == 0 || BF_DIRECT_ALIGN % sx.stx_dio_mem_align ||
	     BF_DIRECT_ALIGN % sx.stx_dio_offset_align)) {
		close(d);
		return -1;
	}
#endif
	return d;
}

#endif
