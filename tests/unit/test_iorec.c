/*
 * tests/unit/test_iorec.c - unit tests for the I/O recorder (alloc/iorec.c) behind bf_dev_pwrite/bf_dev_flush.
 *
 * Owns: the record format byte for byte (header, write and flush records, sequence numbers, the data), that
 * the file size grows by exactly one record per device call, that only successful writes are recorded, that an
 * old record is never appended to (-EEXIST), and that a record that cannot be appended fails the device write
 * with -EIO, leaves the file ending with a whole record, and fails every later write and flush (RLIMIT_FSIZE
 * makes the append fail). Also the device's direct descriptor (alloc/device.c): large aligned writes through
 * it, unaligned ones through the cache, and buffered reads after either see the bytes written; the recorder
 * records both kinds alike. Ends with "N passed, N failed"; exit 0 only if none failed.
 */
#include "alloc/alloc.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include "tests/unit/check.h"



static uint64_t le(const uint8_t *p, int n)
{
	uint64_t v = 0;
	for (int i = n - 1; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static off_t fsize(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 ? st.st_size : -1;
}

static uint8_t *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	uint8_t *buf = malloc(1 << 20);
	*len = buf ? fread(buf, 1, 1 << 20, f) : 0;
	fclose(f);
	return buf;
}

/* A 1 MiB scratch device with devid 7. */
static int make_dev(struct bf_device *dev, char *path)
{
	int fd = mkstemp(path);
	if (fd < 0 || ftruncate(fd, 1 << 20) != 0)
		return -1;
	memset(dev, 0, sizeof(*dev));
	dev->devid = 7;
	dev->fd = fd;
	dev->dfd = -1;
	dev->path = path;
	dev->size = 1 << 20;
	dev->writable = true;
	return 0;
}

static void test_format(const struct bf_device *dev, const char *rec)
{
	uint8_t data[4096];
	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (uint8_t)(i * 7 + 3);

	CHECK(bf_iorec_open(rec) == 0, "open %s", rec);
	CHECK(fsize(rec) == 16, "header only: %lld", (long long)fsize(rec));
	CHECK(bf_dev_pwrite(dev, data, sizeof(data), 8192) == 0, "write");
	CHECK(fsize(rec) == 16 + 32 + 4096, "after one write: %lld", (long long)fsize(rec));
	CHECK(bf_dev_flush(dev) == 0, "flush");
	CHECK(fsize(rec) == 16 + 32 + 4096 + 32, "after a flush: %lld", (long long)fsize(rec));
	/* a write past the device's end fails before any I/O and is not recorded */
	CHECK(bf_dev_pwrite(dev, data, 512, (1 << 20) - 256) == -EIO, "write past the end");
	CHECK(fsize(rec) == 16 + 32 + 4096 + 32, "failed write recorded: %lld", (long long)fsize(rec));
	CHECK(bf_dev_pwrite(dev, data, 100, 5) == 0, "second write");
	bf_iorec_close();
	CHECK(bf_dev_pwrite(dev, data, 100, 5) == 0, "write after close");

	size_t len = 0;
	uint8_t *b = slurp(rec, &len);
	CHECK(b && len == 16 + 32 + 4096 + 32 + 32 + 100, "record size %zu", len);
	if (!b || len != 16 + 32 + 4096 + 32 + 32 + 100) {
		free(b);
		return;
	}
	CHECK(memcmp(b, "BFIOREC1", 8) == 0 && le(b + 8, 4) == 1 && le(b + 12, 4) == 16, "header");
	const uint8_t *r = b + 16;
	CHECK(le(r, 4) == 0x43455242 && le(r + 4, 4) == 1 && le(r + 8, 8) == 7 && le(r + 16, 8) == 8192 &&
		      le(r + 24, 4) == 4096 && le(r + 28, 4) == 0,
	      "write record head");
	CHECK(memcmp(r + 32, data, sizeof(data)) == 0, "write record data");
	r += 32 + 4096;
	CHECK(le(r, 4) == 0x43455242 && le(r + 4, 4) == 2 && le(r + 8, 8) == 7 && le(r + 24, 4) == 0 &&
		      le(r + 28, 4) == 1,
	      "flush record");
	r += 32;
	CHECK(le(r + 4, 4) == 1 && le(r + 16, 8) == 5 && le(r + 24, 4) == 100 && le(r + 28, 4) == 2 &&
		      memcmp(r + 32, data, 100) == 0,
	      "second write record");
	free(b);

	/* never appends to an old record */
	CHECK(bf_iorec_open(rec) == -EEXIST, "reopen of a non-empty record");
}

static void test_append_failure(const struct bf_device *dev, const char *rec)
{
	uint8_t data[4096] = { 1 };
	struct rlimit old, lim;

	CHECK(bf_iorec_open(rec) == 0, "open %s", rec);
	getrlimit(RLIMIT_FSIZE, &old);
	lim = old;
	lim.rlim_cur = 16 + 32 + 4096 + 64; /* room for one write record and one flush, not two writes */
	signal(SIGXFSZ, SIG_IGN);
	CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0, "setrlimit");
	CHECK(bf_dev_pwrite(dev, data, sizeof(data), 0) == 0, "first write fits");
	CHECK(bf_dev_flush(dev) == 0, "flush fits");
	/* the device write itself stays below the limit; only its record would not fit */
	CHECK(bf_dev_pwrite(dev, data, sizeof(data), 0) == -EIO, "a write whose record does not fit fails");
	CHECK(fsize(rec) == 16 + 32 + 4096 + 32, "record after the failed append: %lld", (long long)fsize(rec));
	setrlimit(RLIMIT_FSIZE, &old);
	CHECK(bf_dev_pwrite(dev, data, 16, 0) == -EIO, "writes after a failed append fail too");
	CHECK(bf_dev_flush(dev) == -EIO, "flushes after a failed append fail too");
	CHECK(fsize(rec) == 16 + 32 + 4096 + 32, "record after the failed append: %lld", (long long)fsize(rec));
	bf_iorec_close();
	CHECK(bf_dev_flush(dev) == 0, "a flush without a recorder");
}

/* Large writes, aligned or not, with and without a direct descriptor: a buffered read sees each one. */
static void test_direct(struct bf_device *dev)
{
	size_t len = 256 * 1024;
	uint8_t *buf = aligned_alloc(BF_DIRECT_ALIGN, len + BF_DIRECT_ALIGN), *back = malloc(len);
	uint64_t rng = check_seed = 20261121;

	dev->dfd = bf_plat_open_direct(dev->fd);
	/* /tmp may be a filesystem without direct I/O: then every write goes through the cache (still tested). */
	printf("direct descriptor on %s: %s\n", dev->path, dev->dfd >= 0 ? "yes" : "no (cached writes only)");
	for (int round = 0; round < 6 && buf && back; round++) {
		size_t shift = round % 3 == 2 ? 512 : 0; /* an unaligned buffer goes through the cache */
		uint64_t at = (uint64_t)(round % 2) * 4096 + (round == 5 ? 100 : 0);
		for (size_t i = 0; i < len; i++)
			buf[shift + i] = (uint8_t)splitmix64(&rng);
		/* A stale cached copy of the range first, so a direct write that did not drop it would show. */
		CHECK(bf_dev_pread(dev, back, len, at) == 0, "read before round %d", round);
		CHECK(bf_dev_pwrite(dev, buf + shift, len, at) == 0, "write round %d (shift %zu, at %llu)", round,
		      shift, (unsigned long long)at);
		CHECK(bf_dev_pread(dev, back, len, at) == 0 && memcmp(back, buf + shift, len) == 0,
		      "round %d: a buffered read shows the bytes written (shift %zu, at %llu)", round, shift,
		      (unsigned long long)at);
	}
	if (dev->dfd >= 0)
		close(dev->dfd);
	dev->dfd = -1;
	free(buf);
	free(back);
	check_seed = 0;
}

int main(void)
{
	char devpath[] = "/tmp/test_iorec_dev_XXXXXX";
	char dir[] = "/tmp/test_iorec_XXXXXX";
	char rec1[64], rec2[64];
	struct bf_device dev;

	if (make_dev(&dev, devpath) != 0 || !mkdtemp(dir)) {
		printf("cannot make scratch files in /tmp\n0 passed, 1 failed\n");
		return 1;
	}
	snprintf(rec1, sizeof(rec1), "%s/a.rec", dir);
	snprintf(rec2, sizeof(rec2), "%s/b.rec", dir);
	test_format(&dev, rec1);
	test_append_failure(&dev, rec2);
	test_direct(&dev);
	close(dev.fd);
	unlink(devpath);
	unlink(rec1);
	unlink(rec2);
	rmdir(dir);
	return check_summary();
}
