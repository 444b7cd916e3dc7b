/*
 * tests/unit/test_fs_data.c - file data reads (fs/file.c, fs/datacsum.c) against real images.
 *
 * Images are made in /tmp with mkfs.btrfs, filled through a kernel loop mount (plain, ^no-holes, compress=zlib,
 * lzo, zstd, compress-force, single and DUP data), or with mkfs --rootdir for 16K and 64K sectors that the kernel
 * here cannot mount. Every file is described as a sequence of operations (write, fallocate, punch, truncate,
 * fsync); the expected bytes of any range follow from that sequence, so reads at many seeded random offsets and
 * sizes are compared byte for byte. Corruption: data sectors are overwritten on disk (found with FIEMAP and the
 * volume's chunk map) to check -EIO on single data and read repair from mirror 2 on DUP data.
 * Run as root (loop mounts). BF_TEST_SEED=N repeats a run; BF_TEST_KEEP=1 keeps the images in /tmp;
 * BF_TEST_VERBOSE=1 prints the library's messages that the corruption checks capture.
 */
#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs/fs.h"
#include "fs/internal.h"
#include "util/util.h"
#include "tests/unit/check.h"

#define KiB 1024ULL
#define MiB (1024ULL * 1024)
#define GiB (1024ULL * MiB)

static char workdir[64];


/* ---------------- content model ---------------- */

enum op_kind { OP_WRITE, OP_FALLOC, OP_FALLOC_KEEP, OP_PUNCH, OP_TRUNC, OP_FSYNC, OP_END };
enum data_kind { RANDOM, TEXT };

struct op {
	enum op_kind kind;
	uint64_t off, len; /* OP_TRUNC: off = new size */
	enum data_kind data;
	uint32_t seed;
};

#define MAX_OPS 260
struct tfile {
	char name[40];
	bool nocow;
	struct op ops[MAX_OPS];
	int nops;
	uint64_t size; /* from fstat after writing */
	uint64_t ino;
};


/* The byte a write of this kind and seed puts at file offset off. TEXT compresses well (runs of 8 bytes over a
   4-letter alphabet), RANDOM not at all. */
static uint8_t gen(enum data_kind k, uint32_t s, uint64_t off)
{
	if (k == TEXT)
		return (uint8_t)("abcd"[mix64((off / 8) ^ ((uint64_t)s << 40)) & 3]);
	return (uint8_t)(mix64(off ^ ((uint64_t)s << 44)) >> 56);
}

static void gen_fill(uint8_t *buf, enum data_kind k, uint32_t s, uint64_t off, size_t len)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = gen(k, s, off + i);
}

/* Expected bytes of [off, off + len) after all of f's operations. */
static void expect_range(const struct tfile *f, uint8_t *buf, uint64_t off, size_t len)
{
	uint64_t end = off + len;

	memset(buf, 0, len);
	for (int i = 0; i < f->nops; i++) {
		const struct op *o = &f->ops[i];
		uint64_t a, b;
		switch (o->kind) {
		case OP_WRITE:
		case OP_PUNCH:
			a = o->off > off ? o->off : off;
			b = o->off + o->len < end ? o->off + o->len : end;
			if (a >= b)
				break;
			if (o->kind == OP_WRITE)
				gen_fill(buf + (a - off), o->data, o->seed, a, b - a);
			else
				memset(buf + (a - off), 0, b - a);
			break;
		case OP_TRUNC:
			if (o->off < end) {
				a = o->off > off ? o->off : off;
				memset(buf + (a - off), 0, end - a);
			}
			break;
		default:
			break;
		}
	}
}

static struct op W(uint64_t off, uint64_t len, enum data_kind k, uint32_t s)
{
	return (struct op){ OP_WRITE, off, len, k, s };
}
static struct op OP(enum op_kind kind, uint64_t off, uint64_t len)
{
	return (struct op){ kind, off, len, RANDOM, 0 };
}

static struct tfile *tf_new(struct tfile *list, int *n, const char *prefix, const char *name)
{
	struct tfile *f = &list[(*n)++];
	memset(f, 0, sizeof(*f));
	snprintf(f->name, sizeof(f->name), "%s%s", prefix, name);
	return f;
}

static void tf_add(struct tfile *f, struct op o)
{
	if (f->nops < MAX_OPS)
		f->ops[f->nops++] = o;
}

/* ---------------- shell, mounts, cleanup ---------------- */

static char mounted[128];

static int sh(const char *fmt, ...)
{
	char cmd[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	int rc = system(cmd);
	if (rc != 0)
		printf("command failed (%d): %s\n", rc, cmd);
	return rc;
}

static void cleanup(void)
{
	if (mounted[0]) {
		sh("umount '%s' 2>/dev/null", mounted);
		mounted[0] = 0;
	}
	if (workdir[0] && !getenv("BF_TEST_KEEP"))
		sh("rm -rf '%s'", workdir);
}

static int mount_img(const char *img, const char *opts)
{
	snprintf(mounted, sizeof(mounted), "%s/mnt", workdir);
	mkdir(mounted, 0755);
	if (sh("mount -o loop%s%s '%s' '%s'", opts[0] ? "," : "", opts, img, mounted)) {
		mounted[0] = 0;
		return -1;
	}
	return 0;
}

static void umount_img(void)
{
	if (mounted[0]) {
		sh("umount '%s'", mounted);
		mounted[0] = 0;
	}
}

static int mkfs(const char *img, uint64_t size, const char *args)
{
	sh("rm -f '%s'", img);
	if (truncate(img, 0) < 0 && errno != ENOENT)
		return -1;
	int fd = open(img, O_CREAT | O_RDWR | O_TRUNC, 0644);
	if (fd < 0 || ftruncate(fd, (off_t)size) < 0)
		return -1;
	close(fd);
	return sh("mkfs.btrfs -q -f %s '%s' >/dev/null 2>&1", args, img);
}

/* ---------------- writing the files ---------------- */

static int do_op(int fd, const struct op *o)
{
	switch (o->kind) {
	case OP_WRITE: {
		uint8_t *buf = malloc(o->len ? o->len : 1);
		gen_fill(buf, o->data, o->seed, o->off, o->len);
		ssize_t r = pwrite(fd, buf, o->len, (off_t)o->off);
		free(buf);
		return r == (ssize_t)o->len ? 0 : -1;
	}
	case OP_FALLOC:
		return fallocate(fd, 0, (off_t)o->off, (off_t)o->len);
	case OP_FALLOC_KEEP:
		return fallocate(fd, FALLOC_FL_KEEP_SIZE, (off_t)o->off, (off_t)o->len);
	case OP_PUNCH:
		return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)o->off, (off_t)o->len);
	case OP_TRUNC:
		return ftruncate(fd, (off_t)o->off);
	case OP_FSYNC:
		return fsync(fd);
	default:
		return 0;
	}
}

static int write_file(const char *dir, struct tfile *f)
{
	char path[256];
	struct stat st;
	snprintf(path, sizeof(path), "%s/%s", dir, f->name);
	int fd = open(path, O_CREAT | O_RDWR | O_TRUNC, 0644);
	if (fd < 0)
		return -1;
	if (f->nocow) {
		int flags = 0;
		if (ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0) {
			flags |= FS_NOCOW_FL;
			if (ioctl(fd, FS_IOC_SETFLAGS, &flags) < 0)
				printf("chattr +C %s: %s\n", path, strerror(errno));
		}
	}
	for (int i = 0; i < f->nops; i++) {
		if (do_op(fd, &f->ops[i]) < 0) {
			printf("op %d on %s failed: %s\n", i, path, strerror(errno));
			close(fd);
			return -1;
		}
	}
	fstat(fd, &st);
	f->size = (uint64_t)st.st_size;
	f->ino = st.st_ino;
	close(fd);
	return 0;
}

static int write_files(const char *dir, struct tfile *list, int n)
{
	for (int i = 0; i < n; i++)
		if (write_file(dir, &list[i]) < 0)
			return -1;
	return 0;
}

/* ---------------- the file set ---------------- */

/* Files every plain image gets. kind TEXT makes them compressible for compressed mounts. */
static void add_basic(struct tfile *L, int *n, const char *p, enum data_kind k)
{
	static const uint64_t sizes[] = { 0, 1, 2048, 2049, 4095, 4096, 4097, 16383, 16385, 65537 };
	char name[32];
	uint32_t s = 100;

	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		snprintf(name, sizeof(name), "size%llu", (unsigned long long)sizes[i]);
		struct tfile *f = tf_new(L, n, p, name);
		if (sizes[i])
			tf_add(f, W(0, sizes[i], k, s++));
	}
	struct tfile *f = tf_new(L, n, p, "pieces"); /* 1 MiB + 1 in uneven pieces */
	uint64_t at = 0, step[] = { 100000, 4096, 200001, 3, 65536, 333333 };
	for (int i = 0; at < MiB + 1; i++) {
		uint64_t len = step[i % 6] < MiB + 1 - at ? step[i % 6] : MiB + 1 - at;
		tf_add(f, W(at, len, k, s++));
		at += len;
		if (i % 3 == 2)
			tf_add(f, OP(OP_FSYNC, 0, 0));
	}
	f = tf_new(L, n, p, "sparse");
	tf_add(f, W(0, 10000, k, s++));
	tf_add(f, W(MiB, 5000, k, s++));
	tf_add(f, W(3 * MiB + 123, 7000, k, s++));
	tf_add(f, OP(OP_TRUNC, 5 * MiB, 0));
	f = tf_new(L, n, p, "overwrite"); /* partial references to the first extent */
	tf_add(f, W(0, MiB, k, s++));
	tf_add(f, OP(OP_FSYNC, 0, 0));
	tf_add(f, W(300000, 10000, k, s++));
	tf_add(f, OP(OP_FSYNC, 0, 0));
	tf_add(f, W(700001, 5000, k, s++));
	tf_add(f, W(4096, 4096, RANDOM, s++));
	f = tf_new(L, n, p, "punch");
	tf_add(f, W(0, 512 * KiB, k, s++));
	tf_add(f, OP(OP_FSYNC, 0, 0));
	tf_add(f, OP(OP_PUNCH, 100 * KiB, 100 * KiB));
	tf_add(f, OP(OP_PUNCH, 300001, 5000));
	f = tf_new(L, n, p, "trunc");
	tf_add(f, W(0, 300 * KiB, k, s++));
	tf_add(f, OP(OP_FSYNC, 0, 0));
	tf_add(f, OP(OP_TRUNC, 100001, 0));
	tf_add(f, OP(OP_TRUNC, 400 * KiB, 0));
	f = tf_new(L, n, p, "many"); /* more extents than one extent map holds */
	for (int i = 0; i < 200; i++)
	{
		tf_add(f, W((uint64_t)i * 16384 + (i % 3) * 1000, 4096 + (i % 5) * 100, k, s++));
		if (i % 50 == 49)
			tf_add(f, OP(OP_FSYNC, 0, 0));
	}
}

/* Files only kernel-written images get (prealloc, nocow, > 4 GiB). */
static void add_kernel_only(struct tfile *L, int *n, const char *p, enum data_kind k)
{
	uint32_t s = 500;
	struct tfile *f = tf_new(L, n, p, "prealloc");
	tf_add(f, OP(OP_FALLOC, 0, MiB));
	tf_add(f, W(200 * KiB, 100 * KiB, k, s++));
	tf_add(f, OP(OP_FSYNC, 0, 0));
	tf_add(f, W(600 * KiB + 17, 3000, k, s++));
	f = tf_new(L, n, p, "prealloc_keep");
	tf_add(f, W(0, 50 * KiB, k, s++));
	tf_add(f, OP(OP_FALLOC_KEEP, 0, MiB));
	f = tf_new(L, n, p, "huge"); /* 5 GiB, data across 4 GiB and at 4.5 GiB */
	tf_add(f, OP(OP_TRUNC, 5 * GiB, 0));
	tf_add(f, W(4 * GiB - 2048, 300 * KiB, k, s++));
	tf_add(f, W(4 * GiB + GiB / 2 + 4097, MiB + 77, k, s++));
	f = tf_new(L, n, p, "nocow");
	f->nocow = true;
	tf_add(f, W(0, 300 * KiB, k, s++));
	tf_add(f, OP(OP_FSYNC, 0, 0));
	tf_add(f, W(100 * KiB + 5, 20 * KiB, k, s++));
}

/* ---------------- reading through btrfs-fuse ---------------- */

static struct bf_fs *open_fs(const char *img)
{
	const char *paths[1] = { img };
	struct bf_fs_opts o;
	struct bf_fs *fs = NULL;
	char err[512] = "";

	memset(&o, 0, sizeof(o));
	o.open.paths = paths;
	o.open.npaths = 1;
	int ret = bf_fs_open(&o, &fs, err, sizeof(err));
	CHECK(ret == 0, "bf_fs_open %s: %d %s", img, ret, err);
	return ret == 0 ? fs : NULL;
}

static int open_by_name(struct bf_fs *fs, const char *name, struct bf_file **f)
{
	uint64_t nodeid = 0, gen = 0;
	struct stat st;
	int ret = bf_fs_lookup(fs, BF_ROOT_NODEID, name, &nodeid, &gen, &st);
	CHECK(ret == 0, "lookup %s: %d", name, ret);
	if (ret)
		return ret;
	ret = bf_fs_open_file(fs, nodeid, f);
	CHECK(ret == 0, "open %s: %d", name, ret);
	return ret;
}

static uint64_t rnd_state;
static uint64_t rnd(void)
{
	rnd_state += 0x9e3779b97f4a7c15ULL;
	return mix64(rnd_state);
}

/* Read [off, off + len) and compare with the model; returns 0 if equal. */
static int check_read(struct bf_fs *fs, struct bf_file *bf, const struct tfile *f, uint64_t off, size_t len)
{
	uint8_t *got = malloc(len + 1), *want = malloc(len + 1);
	size_t expect_n = off >= f->size ? 0 : (size_t)(f->size - off < len ? f->size - off : len);
	int bad = 0;

	memset(got, 0xA5, len + 1);
	ssize_t r = bf_fs_read(fs, bf, got, len, off);
	if (r != (ssize_t)expect_n) {
		CHECK(0, "%s: read(%zu @ %llu) returned %zd, expected %zu", f->name, len, (unsigned long long)off, r,
		      expect_n);
		bad = 1;
	} else if (expect_n) {
		expect_range(f, want, off, expect_n);
		if (memcmp(got, want, expect_n) != 0) {
			size_t i = 0;
			while (got[i] == want[i])
				i++;
			CHECK(0, "%s: read(%zu @ %llu): first difference at file offset %llu (got %02x want %02x)",
			      f->name, len, (unsigned long long)off, (unsigned long long)(off + i), got[i], want[i]);
			bad = 1;
		}
	}
	free(got);
	free(want);
	return bad;
}

/* A random read position and size, weighted towards interesting places. */
static void pick(const struct tfile *f, uint64_t *off, size_t *len)
{
	static const size_t sizes[] = { 1, 4096, 131072, 4095, 8192, 65536 };
	uint64_t span = f->size + 8192, r = rnd();
	const struct op *o = f->nops ? &f->ops[rnd() % (uint64_t)f->nops] : NULL;

	if (o && (r & 3) == 0) /* near the edge of an operation */
		*off = o->off + o->len - (o->len ? rnd() % (o->len < 9000 ? o->len : 9000) : 0);
	else if (f->size > 64 * MiB && (r & 3) == 1)
		*off = f->size - rnd() % MiB;
	else
		*off = rnd() % span;
	if ((r & 12) == 0)
		*off -= *off % 4096;
	*len = (r & 16) ? sizes[rnd() % 6] : (size_t)(rnd() % (300 * KiB) + 1);
}

static void check_file(struct bf_fs *fs, const struct tfile *f, int nrandom)
{
	struct bf_file *bf = NULL;
	int bad = 0;

	if (open_by_name(fs, f->name, &bf))
		return;
	if (f->size <= 64 * MiB) /* whole file, sequentially, in 128 KiB requests */
		for (uint64_t off = 0; off <= f->size && !bad; off += 128 * KiB)
			bad |= check_read(fs, bf, f, off, 128 * KiB);
	for (int i = 0; i < nrandom && !bad; i++) {
		uint64_t off;
		size_t len;
		pick(f, &off, &len);
		bad |= check_read(fs, bf, f, off, len);
	}
	CHECK(!bad, "%s (size %llu) reads", f->name, (unsigned long long)f->size);
	bf_fs_release_file(fs, bf);
}

static void check_files(const char *img, const struct tfile *list, int n, int nrandom)
{
	struct bf_fs *fs = open_fs(img);
	if (!fs)
		return;
	for (int i = 0; i < n; i++)
		check_file(fs, &list[i], nrandom);
	bf_fs_close(fs);
}

/* ---------------- concurrency ---------------- */

struct thr {
	struct bf_fs *fs;
	struct bf_file *bf;
	const struct tfile *f;
	uint64_t seed;
	int bad;
};

static void *reader(void *arg)
{
	struct thr *t = arg;
	uint64_t s = t->seed;
	for (int i = 0; i < 150 && !t->bad; i++) {
		s = mix64(s + i);
		uint64_t off = s % (t->f->size + 4096);
		size_t len = (size_t)(mix64(s) % (200 * KiB)) + 1;
		uint8_t *got = malloc(len), *want = malloc(len);
		ssize_t r = bf_fs_read(t->fs, t->bf, got, len, off);
		size_t en = off >= t->f->size ? 0 : (size_t)bf_min64(len, t->f->size - off);
		if (r != (ssize_t)en) {
			t->bad = 1;
		} else if (en) {
			expect_range(t->f, want, off, en);
			t->bad = memcmp(got, want, en) != 0;
		}
		free(got);
		free(want);
	}
	return NULL;
}

static void check_concurrent(const char *img, const struct tfile *f)
{
	struct bf_fs *fs = open_fs(img);
	struct bf_file *bf = NULL;
	pthread_t th[4];
	struct thr t[4];

	if (!fs)
		return;
	if (open_by_name(fs, f->name, &bf) == 0) {
		for (int i = 0; i < 4; i++) {
			t[i] = (struct thr){ fs, bf, f, check_seed * 31 + (uint64_t)i, 0 };
			pthread_create(&th[i], NULL, reader, &t[i]);
		}
		int bad = 0;
		for (int i = 0; i < 4; i++) {
			pthread_join(th[i], NULL);
			bad |= t[i].bad;
		}
		CHECK(!bad, "%s: 4 threads reading one open file", f->name);
		bf_fs_release_file(fs, bf);
	}
	bf_fs_close(fs);
}

/* ---------------- corruption ---------------- */

/* Disk address (btrfs logical) of the extent holding file offset off, via FIEMAP on the mounted file. */
static int fiemap_logical(const char *path, uint64_t off, uint64_t *logical, uint64_t *ext_off, bool *encoded)
{
	struct {
		struct fiemap fm;
		struct fiemap_extent ext[1];
	} q;
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	memset(&q, 0, sizeof(q));
	q.fm.fm_start = off;
	q.fm.fm_length = 1;
	q.fm.fm_flags = FIEMAP_FLAG_SYNC;
	q.fm.fm_extent_count = 1;
	int ret = ioctl(fd, FS_IOC_FIEMAP, &q.fm);
	close(fd);
	if (ret < 0 || q.fm.fm_mapped_extents < 1)
		return -1;
	*logical = q.ext[0].fe_physical;
	*ext_off = q.ext[0].fe_logical;
	*encoded = q.ext[0].fe_flags & FIEMAP_EXTENT_ENCODED;
	return 0;
}

/* Overwrite len bytes at logical (copy `mirror`) of the image with a pattern. */
static int corrupt(const char *img, uint64_t logical, size_t len, int mirror)
{
	struct bf_fs *fs = open_fs(img);
	uint64_t devid = 0, phys = 0;
	if (!fs)
		return -1;
	int ret = bf_vol_map(&fs->fi->vol, logical, mirror, &devid, &phys);
	bf_fs_close(fs);
	CHECK(ret == 0, "bf_vol_map %llu mirror %d: %d", (unsigned long long)logical, mirror, ret);
	if (ret)
		return -1;
	uint8_t *junk = malloc(len);
	for (size_t i = 0; i < len; i++)
		junk[i] = (uint8_t)(0x5a ^ i);
	int fd = open(img, O_RDWR);
	ssize_t w = fd < 0 ? -1 : pwrite(fd, junk, len, (off_t)phys);
	if (fd >= 0)
		close(fd);
	free(junk);
	return w == (ssize_t)len ? 0 : -1;
}

/* Capture what the library logs (stderr) while a check runs. */
static int saved_stderr = -1;
static char logpath[128];
static void log_capture_begin(void)
{
	snprintf(logpath, sizeof(logpath), "%s/log", workdir);
	fflush(stderr);
	saved_stderr = dup(2);
	int fd = open(logpath, O_CREAT | O_RDWR | O_TRUNC, 0644);
	dup2(fd, 2);
	close(fd);
}
static char *log_capture_end(void)
{
	static char text[8192];
	fflush(stderr);
	dup2(saved_stderr, 2);
	close(saved_stderr);
	int fd = open(logpath, O_RDONLY);
	ssize_t n = fd < 0 ? 0 : read(fd, text, sizeof(text) - 1);
	if (fd >= 0)
		close(fd);
	text[n > 0 ? n : 0] = 0;
	if (getenv("BF_TEST_VERBOSE"))
		printf("# captured log:\n%s", text);
	return text;
}

static ssize_t read_at(struct bf_fs *fs, const char *name, void *buf, size_t len, uint64_t off)
{
	struct bf_file *bf = NULL;
	if (open_by_name(fs, name, &bf))
		return -9999;
	ssize_t r = bf_fs_read(fs, bf, buf, len, off);
	bf_fs_release_file(fs, bf);
	return r;
}

static int count_str(const char *hay, const char *needle)
{
	int n = 0;
	for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
		n++;
	return n;
}

/* Read [off, off + len) of a file by name and compare with the model; 0 if equal. */
static int read_ok(struct bf_fs *fs, const struct tfile *f, uint64_t off, size_t len)
{
	struct bf_file *bf = NULL;
	if (open_by_name(fs, f->name, &bf))
		return 1;
	int bad = check_read(fs, bf, f, off, len);
	bf_fs_release_file(fs, bf);
	return bad;
}

/* Where file offset off of a mounted file lies on disk: *logical is the address of that byte for a plain
   extent, the start of the extent for a compressed one; *ext_start is the extent's file offset. */
static int locate(const char *name, uint64_t off, uint64_t *logical, uint64_t *ext_start, bool *encoded)
{
	char path[256];
	snprintf(path, sizeof(path), "%s/%s", mounted, name);
	if (fiemap_logical(path, off, logical, ext_start, encoded))
		return -1;
	if (!*encoded)
		*logical += off - *ext_start;
	return 0;
}

/* Single data: where the damage is, inode and offset in one log line, -EIO there only. */
static void check_plain_damage(struct bf_fs *fs, const struct tfile *f, uint8_t *buf)
{
	log_capture_begin();
	ssize_t r1 = read_at(fs, f->name, buf, 4096, 512 * KiB);
	ssize_t r2 = read_at(fs, f->name, buf, 128 * KiB, 448 * KiB); /* a range containing the bad sector */
	char *log = log_capture_end();
	CHECK(r1 == -EIO && r2 == -EIO, "corrupt sector reads -EIO (got %zd, %zd)", r1, r2);
	char want[160];
	snprintf(want, sizeof(want), "inode %llu (subvol 5) offset %llu", (unsigned long long)f->ino,
		 (unsigned long long)(512 * KiB));
	CHECK(strstr(log, "csum mismatch") && strstr(log, want), "log names the damage: [%s] wants [%s]", log, want);
	CHECK(strstr(log, "expected") && strstr(log, "found"), "log has expected and found checksums");
	CHECK(!read_ok(fs, f, 0, 512 * KiB) && !read_ok(fs, f, 512 * KiB + 4096, 512 * KiB - 4096),
	      "the rest of the corrupted file reads correctly");
}

/* A damaged compressed extent [start, start + 128 KiB): checksums are checked before decompression. */
static void check_compressed_damage(struct bf_fs *fs, const struct tfile *f, uint64_t start, uint8_t *buf)
{
	log_capture_begin();
	ssize_t r = read_at(fs, f->name, buf, 4096, start + 64 * KiB);
	char *log = log_capture_end();
	CHECK(r == -EIO, "corrupt compressed extent reads -EIO (got %zd)", r);
	CHECK(strstr(log, "csum mismatch") != NULL, "compressed: checksum verified before decompression [%s]", log);
	CHECK(!(start && read_ok(fs, f, 0, start)) && !read_ok(fs, f, start + 128 * KiB, 512 * KiB),
	      "other compressed extents read correctly");
}

/* nodatasum: no verification, the damaged bytes (0x5a ^ i at 4096) come back as they are. */
static void check_nodatasum_damage(struct bf_fs *fs, const struct tfile *f, uint8_t *buf)
{
	uint8_t *want = malloc(64 * KiB);
	size_t diff = 0;
	ssize_t r = read_at(fs, f->name, buf, 64 * KiB, 0);

	expect_range(f, want, 0, 64 * KiB);
	for (size_t i = 0; i < 64 * KiB; i++)
		diff += buf[i] != want[i];
	CHECK(r == (ssize_t)(64 * KiB) && diff > 0 && diff <= 16 && buf[4096] == 0x5a,
	      "nodatasum file returns the damaged bytes unverified (r %zd, %zu bytes differ)", r, diff);
	free(want);
}

static void test_single_corruption(void)
{
	char img[128];
	struct tfile L[3];
	int n = 0;
	uint64_t lg_plain = 0, lg_comp = 0, lg_nocow = 0, comp_start = 0, eo = 0;
	bool enc = false, cenc = false;

	snprintf(img, sizeof(img), "%s/single.img", workdir);
	if (mkfs(img, 512 * MiB, "-d single -m dup") || mount_img(img, "compress=zstd"))
		return;
	tf_add(tf_new(L, &n, "", "victim"), W(0, MiB, RANDOM, 1));
	tf_add(tf_new(L, &n, "", "cvictim"), W(0, 512 * KiB, TEXT, 2));
	struct tfile *f = tf_new(L, &n, "", "nvictim");
	f->nocow = true;
	tf_add(f, W(0, 64 * KiB, RANDOM, 3));
	int ok = write_files(mounted, L, n) == 0 && sh("sync") == 0 &&
		 locate("victim", 512 * KiB, &lg_plain, &eo, &enc) == 0 &&
		 locate("cvictim", 200 * KiB, &lg_comp, &comp_start, &cenc) == 0 &&
		 locate("nvictim", 0, &lg_nocow, &eo, &enc) == 0;
	umount_img();
	CHECK(ok && cenc, "setup of the single-profile corruption image (compressed extent: %d)", cenc);
	if (!ok || corrupt(img, lg_plain, 100, 1) || corrupt(img, lg_comp + 10, 20, 1) ||
	    corrupt(img, lg_nocow + 4096, 16, 1))
		return;

	struct bf_fs *fs = open_fs(img);
	if (!fs)
		return;
	uint8_t *buf = malloc(MiB);
	check_plain_damage(fs, &L[0], buf);
	check_compressed_damage(fs, &L[1], comp_start, buf);
	check_nodatasum_damage(fs, &L[2], buf);
	free(buf);
	bf_fs_close(fs);
}

/* DUP data with mirror 1 damaged: reads succeed from mirror 2 and say so. */
static void check_dup_mirror1_bad(const char *img, const struct tfile *L, uint64_t lg)
{
	struct bf_fs *fs = open_fs(img);
	if (!fs)
		return;
	CHECK(bf_vol_num_copies(&fs->fi->vol, lg) == 2, "DUP data has 2 copies");
	log_capture_begin();
	int bad = read_ok(fs, &L[0], 0, 256 * KiB), badc = read_ok(fs, &L[1], 0, 128 * KiB);
	char *log = log_capture_end();
	CHECK(!bad, "DUP: read with a bad mirror 1 succeeds");
	CHECK(!badc, "DUP: compressed extent with a bad mirror 1 reads via mirror 2");
	char want[200];
	snprintf(want, sizeof(want), "read repair: logical %llu inode %llu (subvol 5) offset %llu: mirror 1 csum "
		 "mismatch, using mirror 2", (unsigned long long)lg, (unsigned long long)L[0].ino,
		 (unsigned long long)(64 * KiB));
	CHECK(strstr(log, want) != NULL, "DUP: repair logged [%s] wants [%s]", log, want);
	bf_fs_close(fs);
}

/* Both copies damaged: -EIO and one error line. */
static void check_dup_both_bad(const char *img, const struct tfile *f)
{
	struct bf_fs *fs = open_fs(img);
	uint8_t buf[4096];
	if (!fs)
		return;
	log_capture_begin();
	ssize_t r = read_at(fs, f->name, buf, sizeof(buf), 64 * KiB);
	char *log = log_capture_end();
	CHECK(r == -EIO, "DUP: both mirrors bad reads -EIO (got %zd)", r);
	CHECK(count_str(log, "csum mismatch") == 1 && strstr(log, "2 mirror"), "DUP: failure logged once [%s]", log);
	bf_fs_close(fs);
}

static void test_dup_repair(void)
{
	char img[128];
	struct tfile L[2];
	int n = 0;
	uint64_t lg = 0, lgc = 0, eo = 0;
	bool enc = false;

	snprintf(img, sizeof(img), "%s/dup.img", workdir);
	if (mkfs(img, 512 * MiB, "-d dup -m dup") || mount_img(img, "compress=zlib"))
		return;
	tf_add(tf_new(L, &n, "", "dupfile"), W(0, 256 * KiB, RANDOM, 7));
	tf_add(tf_new(L, &n, "", "dupcomp"), W(0, 128 * KiB, TEXT, 8));
	int ok = write_files(mounted, L, n) == 0 && sh("sync") == 0 &&
		 locate("dupfile", 64 * KiB, &lg, &eo, &enc) == 0 && locate("dupcomp", 0, &lgc, &eo, &enc) == 0;
	umount_img();
	CHECK(ok, "setup of the DUP image");
	if (!ok || corrupt(img, lg, 4096, 1) || corrupt(img, lgc, 64, 1))
		return;
	check_dup_mirror1_bad(img, L, lg);
	if (corrupt(img, lg, 4096, 2) == 0)
		check_dup_both_bad(img, &L[0]);
}

/* ---------------- corrupt file extent items ---------------- */

/* A change to one field of an EXTENT_DATA item. */
struct patch {
	const char *file;
	size_t field; /* byte offset in the item */
	int width;    /* 1 or 8 */
	uint64_t value;
	bool add;     /* add value to the field instead of setting it */
	const char *why; /* expected in the log */
	uint64_t item_off, log_off; /* key offset of the item patched (and read); file offset the log names */
};

static void put_le(uint8_t *p, int width, uint64_t v)
{
	for (int i = 0; i < width; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, int width)
{
	uint64_t v = 0;
	for (int i = width - 1; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

/* Apply pt to the item (ino, type, off) of subvolume 5 and rewrite its leaf (every copy) with a valid
   checksum, so only the file-data code can object. */
static int patch_item(const char *img, uint64_t ino, uint8_t type, uint64_t off, const struct patch *pt)
{
	struct bf_fs *fs = open_fs(img);
	struct bf_key key = { ino, type, off };
	struct bf_root root;
	struct bf_path p;
	uint32_t size;
	int ret = -1;

	if (!fs)
		return -1;
	bf_path_init(&p, fs->env);
	if (bf_fs_root(fs, 5, &root) == 0 && bf_search(fs->env, &root, &key, &p) == 0) {
		const struct bf_block *b = p.nodes[0];
		uint32_t ns = fs->fi->nodesize;
		uint8_t *copy = malloc(ns), csum[BF_CSUM_MAX];
		const uint8_t *item = bf_path_item(&p, &size);
		size_t at = (size_t)(item - b->data) + pt->field;
		memcpy(copy, b->data, ns);
		put_le(copy + at, pt->width, pt->add ? get_le(copy + at, pt->width) + pt->value : pt->value);
		bf_csum(fs->fi->csum_type, copy + BF_CSUM_SIZE, ns - BF_CSUM_SIZE, csum);
		memcpy(copy, csum, BF_CSUM_SIZE);
		int fd = open(img, O_RDWR);
		ret = fd < 0 ? -1 : 0;
		for (int m = 1; ret == 0 && m <= bf_vol_num_copies(&fs->fi->vol, b->bytenr); m++) {
			uint64_t devid, phys;
			if (bf_vol_map(&fs->fi->vol, b->bytenr, m, &devid, &phys) ||
			    pwrite(fd, copy, ns, (off_t)phys) != (ssize_t)ns)
				ret = -1;
		}
		if (fd >= 0)
			close(fd);
		free(copy);
	}
	bf_path_release(&p);
	bf_fs_close(fs);
	CHECK(ret == 0, "patching the extent item of %s", pt->file);
	return ret;
}

/* One file per patch (64 KiB in one extent; "i_" files 100 bytes inline; two extents for c_overlap and c_ovf),
   plus an intact c_good. */
static int make_item_files(const char *img, const struct patch *patches, size_t np, struct tfile *L, int *n)
{
	if (mkfs(img, 256 * MiB, "") || mount_img(img, ""))
		return -1;
	for (size_t i = 0; i < np; i++) {
		struct tfile *f = tf_new(L, n, "", patches[i].file);
		uint32_t s = 40 + (uint32_t)i;
		if (patches[i].file[0] == 'i') {
			tf_add(f, W(0, 100, RANDOM, s));
			continue;
		}
		tf_add(f, W(0, 64 * KiB, RANDOM, s));
		if (strcmp(f->name, "c_overlap") == 0 || strcmp(f->name, "c_ovf") == 0) {
			tf_add(f, OP(OP_FSYNC, 0, 0));
			tf_add(f, W(64 * KiB, 64 * KiB, RANDOM, s + 20));
		}
	}
	tf_add(tf_new(L, n, "", "c_good"), W(0, 64 * KiB, RANDOM, 99));
	int ret = write_files(mounted, L, *n);
	umount_img();
	return ret;
}

static void test_corrupt_items(void)
{
	char img[128];
	struct tfile L[12];
	int n = 0;
#define FE(field) offsetof(struct bf_file_extent_item, field)
	const size_t T = FE(type), C = FE(compression), E = FE(encryption), DB = FE(disk_bytenr),
		     DN = FE(disk_num_bytes), O = FE(offset), NB = FE(num_bytes), R = FE(ram_bytes);
#undef FE
	const struct patch patches[] = {
		{ "c_type", T, 1, 7, false, "unknown extent type 7", 0, 0 },
		{ "c_comp", C, 1, 9, false, "unknown compression type 9", 0, 0 },
		{ "c_enc", E, 1, 1, false, "encryption type 1", 0, 0 },
		{ "c_dnb0", DN, 8, 0, false, "of 0 bytes", 0, 0 },
		{ "c_off", O, 8, 1 * MiB, false, "exceed the 65536-byte disk extent", 0, 0 },
		{ "c_ovf", NB, 8, 0xffffffffffff1000ULL, false, "overflows", 64 * KiB, 64 * KiB },
		{ "c_unal", DB, 8, 1, true, "disk_bytenr", 0, 0 },
		{ "c_huge", DN, 8, 4 * GiB, false, "disk extent of 4294967296 bytes", 0, 0 },
		{ "i_ram", R, 8, 5000, false, "inline extent holds 100 bytes but ram_bytes says 5000", 0, 0 },
		{ "c_overlap", NB, 8, 128 * KiB, false, "overlaps the previous one", 0, 64 * KiB },
	};
	const size_t np = sizeof(patches) / sizeof(patches[0]);

	snprintf(img, sizeof(img), "%s/items.img", workdir);
	if (make_item_files(img, patches, np, L, &n))
		return;
	for (size_t i = 0; i < np; i++)
		if (patch_item(img, L[i].ino, BF_EXTENT_DATA_KEY, patches[i].item_off, &patches[i]))
			return;
	/* c_overlap: make its first extent a valid 128 KiB extent that runs into the second */
	const struct patch grow_dn = { "c_overlap", DN, 8, 128 * KiB, false, "", 0, 0 },
			   grow_ram = { "c_overlap", R, 8, 128 * KiB, false, "", 0, 0 };
	if (patch_item(img, L[np - 1].ino, BF_EXTENT_DATA_KEY, 0, &grow_dn) ||
	    patch_item(img, L[np - 1].ino, BF_EXTENT_DATA_KEY, 0, &grow_ram))
		return;

	struct bf_fs *fs = open_fs(img);
	if (!fs)
		return;
	uint8_t *buf = malloc(64 * KiB);
	for (size_t i = 0; i < np; i++) {
		log_capture_begin();
		ssize_t r = read_at(fs, patches[i].file, buf, 4096, patches[i].item_off);
		char *log = log_capture_end();
		char want[64];
		snprintf(want, sizeof(want), "inode %llu (subvol 5) file offset %llu", (unsigned long long)L[i].ino,
			 (unsigned long long)patches[i].log_off);
		CHECK(r == -EUCLEAN, "%s: read returns -EUCLEAN (got %zd)", patches[i].file, r);
		CHECK(strstr(log, "corrupt file extent item") && strstr(log, want) && strstr(log, patches[i].why),
		      "%s: log [%s] names [%s] and [%s]", patches[i].file, log, want, patches[i].why);
	}
	CHECK(read_ok(fs, &L[n - 1], 0, 64 * KiB) == 0, "an intact file of the same leaf still reads");
	free(buf);
	bf_fs_close(fs);
}

/* A checksummed inode whose data has no checksums (written as nodatasum, then the flag cleared): reads fail
   with -EIO, as in the kernel, which compares such sectors against an all-zero checksum. */
static void test_missing_csums(void)
{
	char img[128];
	struct tfile L[1];
	int n = 0;

	snprintf(img, sizeof(img), "%s/nocsum.img", workdir);
	if (mkfs(img, 256 * MiB, "") || mount_img(img, ""))
		return;
	struct tfile *f = tf_new(L, &n, "", "was_nocow");
	f->nocow = true;
	tf_add(f, W(0, 64 * KiB, RANDOM, 5));
	int ok = write_files(mounted, L, n) == 0;
	umount_img();
	const struct patch clear = { "was_nocow", offsetof(struct bf_inode_item, flags), 8, 0, false, "", 0, 0 };
	if (!ok || patch_item(img, L[0].ino, BF_INODE_ITEM_KEY, 0, &clear))
		return;
	struct bf_fs *fs = open_fs(img);
	if (!fs)
		return;
	uint8_t buf[8192];
	log_capture_begin();
	ssize_t r = read_at(fs, "was_nocow", buf, sizeof(buf), 4096);
	char *log = log_capture_end();
	char want[64];
	snprintf(want, sizeof(want), "inode %llu (subvol 5) offset 4096", (unsigned long long)L[0].ino);
	CHECK(r == -EIO, "missing checksums read -EIO (got %zd)", r);
	CHECK(strstr(log, "missing data checksum") && strstr(log, want), "missing checksums logged [%s]", log);
	bf_fs_close(fs);
}

/* ---------------- image scenarios ---------------- */

#define MAX_FILES 100
static struct tfile files[MAX_FILES];

static void kernel_image(const char *tag, const char *mkfs_args, const char *const *mount_opts, int nmounts,
			 bool kernel_only)
{
	char img[128];
	int n = 0;

	snprintf(img, sizeof(img), "%s/%s.img", workdir, tag);
	if (mkfs(img, 1 * GiB, mkfs_args)) {
		CHECK(0, "mkfs %s", tag);
		return;
	}
	for (int m = 0; m < nmounts; m++) {
		char prefix[16];
		int first = n;
		snprintf(prefix, sizeof(prefix), "m%d_", m);
		enum data_kind k = strstr(mount_opts[m], "compress") ? TEXT : RANDOM;
		add_basic(files, &n, prefix, k);
		if (kernel_only)
			add_kernel_only(files, &n, prefix, k);
		if (mount_img(img, mount_opts[m])) {
			CHECK(0, "mount %s -o %s", tag, mount_opts[m]);
			return;
		}
		CHECK(write_files(mounted, files + first, n - first) == 0, "%s: writing files", tag);
		umount_img();
	}
	printf("# %s: %d files\n", tag, n);
	check_files(img, files, n, 120);
	/* the concurrency check on the largest compressible / plain file */
	for (int i = 0; i < n; i++)
		if (strstr(files[i].name, "pieces")) {
			check_concurrent(img, &files[i]);
			break;
		}
}

static void rootdir_image(uint32_t sectorsize)
{
	char img[128], src[128], args[256];
	int n = 0;

	snprintf(src, sizeof(src), "%s/src%u", workdir, sectorsize);
	snprintf(img, sizeof(img), "%s/rootdir%u.img", workdir, sectorsize);
	mkdir(src, 0755);
	add_basic(files, &n, "", RANDOM);
	tf_add(tf_new(files, &n, "", "text"), W(0, 3 * MiB + 5, TEXT, 77));
	CHECK(write_files(src, files, n) == 0, "writing the --rootdir source");
	snprintf(args, sizeof(args), "-s %u -n %u --rootdir '%s'", sectorsize, sectorsize, src);
	if (mkfs(img, 512 * MiB, args)) {
		CHECK(0, "mkfs --rootdir with %u-byte sectors", sectorsize);
		return;
	}
	printf("# rootdir %u: %d files\n", sectorsize, n);
	check_files(img, files, n, 120);
}

static void test_open_errors(void)
{
	char img[128];
	snprintf(img, sizeof(img), "%s/misc.img", workdir);
	if (mkfs(img, 256 * MiB, "") || mount_img(img, ""))
		return;
	char p[256];
	snprintf(p, sizeof(p), "%s/d", mounted);
	mkdir(p, 0755);
	snprintf(p, sizeof(p), "%s/l", mounted);
	CHECK(symlink("target", p) == 0, "symlink");
	umount_img();
	struct bf_fs *fs = open_fs(img);
	if (!fs)
		return;
	struct bf_file *bf = (struct bf_file *)1;
	CHECK(bf_fs_open_file(fs, BF_ROOT_NODEID, &bf) == -EISDIR && bf == NULL, "open of the root dir: -EISDIR");
	uint64_t nodeid, gen;
	struct stat st;
	if (bf_fs_lookup(fs, BF_ROOT_NODEID, "d", &nodeid, &gen, &st) == 0)
		CHECK(bf_fs_open_file(fs, nodeid, &bf) == -EISDIR, "open of a dir: -EISDIR");
	if (bf_fs_lookup(fs, BF_ROOT_NODEID, "l", &nodeid, &gen, &st) == 0)
		CHECK(bf_fs_open_file(fs, nodeid, &bf) == -EINVAL, "open of a symlink: -EINVAL");
	bf_fs_close(fs);
}

int main(void)
{
	const char *s = getenv("BF_TEST_SEED");
	check_seed = s ? strtoull(s, NULL, 0) : 20240611ULL;
	rnd_state = check_seed;

	if (geteuid() != 0) {
		printf("needs root for loop mounts\n0 passed, 1 failed\n");
		return 1;
	}
	snprintf(workdir, sizeof(workdir), "/tmp/bf_test_fs_data.%d", (int)getpid());
	mkdir(workdir, 0755);
	atexit(cleanup);

	test_open_errors();
	test_corrupt_items();
	test_missing_csums();
	const char *plain[] = { "" };
	kernel_image("plain", "", plain, 1, true);
	kernel_image("holes", "-O ^no-holes", plain, 1, true);
	const char *comp[] = { "compress=zlib", "compress=lzo", "compress=zstd", "compress-force=zstd" };
	kernel_image("compress", "", comp, 4, true);
	rootdir_image(16384);
	rootdir_image(65536);
	test_single_corruption();
	test_dup_repair();

	return check_summary();
}
