/*
 * tests/unit/mkfs_image.h - a scratch image made by mkfs.btrfs, for the unit tests that open a real filesystem.
 *
 * Owns: mkfs_image (a sparse file of the given size under /tmp, formatted with mkfs.btrfs defaults) and
 * mkfs_image_begin, the start of such a test's main: without mkfs.btrfs the test reports a skip and
 * "0 passed, 0 failed"; an image that cannot be made is one failure. Header-only, like check.h.
 */
#ifndef BF_TEST_MKFS_IMAGE_H
#define BF_TEST_MKFS_IMAGE_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* path (len bytes, e.g. "/tmp/bf-test-x-XXXXXX" is made from prefix) gets a fresh image of size bytes: 0 or -1. */
static inline int mkfs_image(char *path, size_t len, const char *prefix, uint64_t size)
{
	char cmd[256];
	snprintf(path, len, "%s-XXXXXX", prefix);
	int fd = mkstemp(path);
	if (fd < 0)
		return -1;
	int r = ftruncate(fd, (off_t)size);
	close(fd);
	snprintf(cmd, sizeof(cmd), "mkfs.btrfs -q -f %s >/dev/null 2>&1", path);
	return r == 0 && system(cmd) == 0 ? 0 : -1;
}

/* The start of main: 1 = go on with the image at path; 0 = skipped (exit 0); -1 = could not make it (exit 1).
   The skip and failure lines are printed here. */
static inline int mkfs_image_begin(char *path, size_t len, const char *prefix, uint64_t size)
{
	if (system("command -v mkfs.btrfs >/dev/null 2>&1") != 0) {
		printf("SKIP: mkfs.btrfs not found\n0 passed, 0 failed\n");
		return 0;
	}
	if (mkfs_image(path, len, prefix, size) != 0) {
		printf("FAIL: cannot make a test image with mkfs.btrfs in /tmp\n0 passed, 1 failed\n");
		unlink(path);
		return -1;
	}
	return 1;
}

#endif
