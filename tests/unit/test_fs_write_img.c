/*
 * tests/unit/test_fs_write_img.c - file data writes through the fs layer on fresh images, checked against a model,
 * then by btrfs check, the kernel and scrub.
 *
 * For each image kind (default mkfs, -O ^no-holes, --csum sha256, -m dup -d dup, -d single): mkfs, then a kernel
 * mount creates empty files (one with chattr +C: NODATACOW and NODATASUM), then btrfs-fuse opens the image
 * read-write and runs a seeded random sequence of writes (overwrites, appends, writes across the inline limits
 * 2048 and 4096, sparse writes far past EOF and past 4 GiB), truncates up and down, fsyncs, commits and flushes
 * without a commit (reads then come from uncommitted trees). A model keeps each file's bytes (a list of writes,
 * clipped by truncates; written bytes are never 0, so "zero" means "no write covers it"); after every step some
 * range is read back through bf_fs_read and compared, and at the end every written region and its edges. Then: unmount, open again and compare again; `btrfs check --readonly
 * --check-data-csum` must pass; the kernel mounts the image without BTRFS warnings in dmesg and reads the same
 * bytes (sha256 of whole files up to 256 MiB, byte compare of every data region via SEEK_DATA for larger ones,
 * with holes checked against the model); `btrfs scrub start -B` finds no error.
 * st_blocks against the kernel: a fixed sequence of writes into holes below EOF (sector-aligned and not),
 * overwrites of extents, appends, truncates up and down (into and below a buffered sector), inline files growing
 * into regular extents and fsyncs runs on a kernel mount of one image and through btrfs-fuse on its twin (with and
 * without no-holes); st_blocks after every step, and after a remount, must be the kernel's.
 * statfs on a writable mount: small files with large xattrs until the allocator makes a metadata block group in
 * the running transaction (its item exists only after the commit): statfs must work then; data written without
 * fsync until ENOSPC: statfs must then show less free than the failed write needed, and the same numbers as a
 * read-only btrfs-fuse mount and a kernel mount of the image after unmounting.
 * Needs root (loop mounts); skipped (counted as nothing) otherwise. BF_TEST_SEED=N repeats a run; BF_TEST_KEEP=1
 * keeps the images; BF_TEST_OPS=N sets the steps per image (default 250); BF_TEST_ONLY=name runs one image kind (or "blocks": the st_blocks comparison, "statfs": the statfs checks);
 * BF_TEST_VERBOSE=1 prints every step.
 */
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "fs/fs.h"
#include "fs/internal.h"
#include "util/util.h"
#include "tests/unit/check.h"

#define KiB 1024ULL
#define MiB (1024ULL * KiB)
#define GiB (1024ULL * MiB)

static char workdir[64];
static char mounted[128];


static uint64_t rng_state;
static uint64_t rnd(void) { return splitmix64(&rng_state); }
static uint64_t rnd_below(uint64_t n) { return check_below(&rng_state, n); }

/* ---------------- the model ---------------- */

struct seg {
	uint64_t off, len;
	uint32_t seed;
};

struct mfile {
	char name[32];
	bool nocow, big;
	uint64_t nodeid, root, ino, size;
	struct bf_file *f;
	struct seg *segs;
	size_t nsegs, cap;
};

/* The byte write `s` puts at file offset pos: never 0. */
static uint8_t gen(uint32_t s, uint64_t pos) { return (uint8_t)(mix64(pos ^ ((uint64_t)s << 40)) >> 56) | 1; }

static void gen_fill(uint8_t *buf, uint32_t s, uint64_t off, size_t len)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = gen(s, off + i);
}

static void model_write(struct mfile *m, uint64_t off, uint64_t len, uint32_t s)
{
	if (m->nsegs == m->cap) {
		m->cap = m->cap ? 2 * m->cap : 64;
		m->segs = realloc(m->segs, m->cap * sizeof(*m->segs));
	}
	m->segs[m->nsegs++] = (struct seg){ off, len, s };
	if (off + len > m->size)
		m->size = off + len;
}

static void model_trunc(struct mfile *m, uint64_t size)
{
	size_t j = 0;

	for (size_t i = 0; i < m->nsegs; i++) {
		struct seg g = m->segs[i];
		if (g.off >= size)
			continue;
		if (g.off + g.len > size)
			g.len = size - g.off;
		m->segs[j++] = g;
	}
	m->nsegs = j;
	m->size = size;
}

static void model_read(const struct mfile *m, uint8_t *buf, uint64_t off, size_t len)
{
	uint64_t end = off + len;

	memset(buf, 0, len);
	for (size_t i = 0; i < m->nsegs; i++) {
		const struct seg *g = &m->segs[i];
		uint64_t a = g->off > off ? g->off : off, b = g->off + g->len < end ? g->off + g->len : end;
		if (a < b)
			gen_fill(buf + (a - off), g->seed, a, b - a);
	}
}

/* True if no write covers any byte of [off, off + len). */
static bool model_zero(const struct mfile *m, uint64_t off, uint64_t len)
{
	for (size_t i = 0; i < m->nsegs; i++)
		if (m->segs[i].off < off + len && off < m->segs[i].off + m->segs[i].len)
			return false;
	return true;
}

/* ---------------- shell, mounts ---------------- */

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
	char cmd[2048];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	int rc = system(cmd);
	if (rc != 0)
		printf("command failed (%d): %s\n", rc, cmd);
	return rc;
}

static char loopdev[64];
static char kmarker[96];  /* written to the kernel log before the current kernel mount */
static bool kcheck;       /* check the kernel log for this mount's device at unmount */
static int kmounts;

/* Mount img with the kernel on a loop device of its own (mount -o loop may reuse a read-only one still attached
   from the last mount of the same file). With check, kumount looks for BTRFS warnings about that device. */
static int kmount(const char *img, const char *opts, bool check)
{
	bool ro = strcmp(opts, "ro") == 0;
	char cmd[512];
	FILE *p;

	snprintf(cmd, sizeof(cmd), "losetup -f --show %s '%s'", ro ? "-r" : "", img);
	p = popen(cmd, "r");
	loopdev[0] = 0;
	if (!p || !fgets(loopdev, sizeof(loopdev), p))
		loopdev[0] = 0;
	if (p)
		pclose(p);
	loopdev[strcspn(loopdev, "\n")] = 0;
	if (!loopdev[0])
		return -1;
	snprintf(kmarker, sizeof(kmarker), "bf-test-write-%d-%d-%ld", (int)getpid(), kmounts++, (long)time(NULL));
	sh("echo '%s' > /dev/kmsg", kmarker);
	kcheck = check;
	snprintf(mounted, sizeof(mounted), "%s/mnt", workdir);
	mkdir(mounted, 0755);
	if (sh("mount %s%s '%s' '%s'", opts[0] ? "-o " : "", opts, loopdev, mounted)) {
		mounted[0] = 0;
		sh("losetup -d '%s'", loopdev);
		loopdev[0] = 0;
		return -1;
	}
	return 0;
}

/* Unmount; the kernel log is checked while the loop device is still ours, so that messages about it are about
   this image and not another test's that got the same device number later. */
static void kumount(void)
{
	if (mounted[0]) {
		sh("umount '%s'", mounted);
		mounted[0] = 0;
	}
	if (kcheck && loopdev[0]) {
		int warn = sh("dmesg | sed -n '/%s/,$p' | grep -E 'BTRFS (warning|error|critical) \\(device %s\\)' ; "
			      "test $? -eq 1", kmarker, loopdev + strlen("/dev/"));
		CHECK(warn == 0, "the kernel logged BTRFS warnings or errors about the image (above)");
	}
	if (loopdev[0]) {
		sh("losetup -d '%s'", loopdev);
		loopdev[0] = 0;
	}
}

static void cleanup(void)
{
	kumount();
	if (workdir[0] && !getenv("BF_TEST_KEEP"))
		sh("rm -rf '%s'", workdir);
}

/* ---------------- btrfs-fuse side ---------------- */

static struct bf_fs *fs_open(const char *img, bool writable)
{
	const char *paths[1] = { img };
	struct bf_fs_opts o;
	struct bf_fs *fs = NULL;
	char err[512] = "";

	memset(&o, 0, sizeof(o));
	o.open.paths = paths;
	o.open.npaths = 1;
	o.open.writable = writable;
	int r = bf_fs_open(&o, &fs, err, sizeof(err));
	CHECK(r == 0, "open %s: %s", img, err);
	CHECK(r || !writable || bf_fs_writable(fs), "open %s: not writable", img);
	return r ? NULL : fs;
}

static int files_open(struct bf_fs *fs, struct mfile *m, int n)
{
	for (int i = 0; i < n; i++) {
		uint64_t gen_;
		struct stat st;
		int r = bf_fs_lookup(fs, BF_ROOT_NODEID, m[i].name, &m[i].nodeid, &gen_, &st);
		if (r == 0)
			r = bf_fs_open_file(fs, m[i].nodeid, &m[i].f);
		CHECK(r == 0, "open file %s: %s", m[i].name, strerror(-r));
		if (r)
			return r;
		bf_file_ident(m[i].f, &m[i].root, &m[i].ino);
	}
	return 0;
}

static void files_close(struct bf_fs *fs, struct mfile *m, int n)
{
	for (int i = 0; i < n; i++) {
		bf_fs_release_file(fs, m[i].f);
		m[i].f = NULL;
	}
}

static bool verbose;

static int do_write(struct bf_fs *fs, struct mfile *m, uint64_t off, uint64_t len, uint32_t s)
{
	uint8_t *buf = malloc(len);

	if (verbose)
		printf("  %s: write [%llu, +%llu) (size %llu)\n", m->name, (unsigned long long)off,
		       (unsigned long long)len, (unsigned long long)m->size);

	gen_fill(buf, s, off, len);
	ssize_t n = bf_fs_write(fs, m->f, buf, len, off);
	free(buf);
	CHECK(n == (ssize_t)len, "%s: write [%llu, +%llu) returned %zd", m->name, (unsigned long long)off,
	      (unsigned long long)len, n);
	if (n != (ssize_t)len)
		return -1;
	model_write(m, off, len, s);
	return 0;
}

static int do_trunc(struct bf_fs *fs, struct mfile *m, uint64_t size)
{
	struct bf_wop op;
	int r = bf_wop_begin(fs, &op);

	if (verbose)
		printf("  %s: truncate %llu (size %llu)\n", m->name, (unsigned long long)size, (unsigned long long)m->size);
	if (r == 0) {
		op.changed = true;
		r = bf_wop_end(&op, bf_data_setsize(fs, op.t, m->root, m->ino, size));
	}
	CHECK(r == 0, "%s: truncate to %llu: %s", m->name, (unsigned long long)size, strerror(-r));
	if (r == 0)
		model_trunc(m, size);
	return r;
}

/* Read [off, off + len) through bf_fs_read and compare with the model. */
static int fs_compare(struct bf_fs *fs, const struct mfile *m, uint64_t off, uint64_t len, const char *when)
{
	uint64_t end = off + len > m->size ? m->size : off + len;
	size_t n = end > off ? (size_t)(end - off) : 0;
	uint8_t *got = malloc(len + 1), *want = malloc(n + 1);

	bf_fs_rdlock(fs);
	ssize_t r = bf_fs_read(fs, m->f, got, len, off);
	bf_fs_unlock(fs);
	model_read(m, want, off, n);
	size_t bad = 0;
	while (r == (ssize_t)n && bad < n && got[bad] == want[bad])
		bad++;
	CHECK(r == (ssize_t)n && bad == n, "%s (%s): read [%llu, +%llu) of a %llu-byte file: got %zd bytes, first "
	      "difference at %llu (got %u, want %u)", m->name, when, (unsigned long long)off, (unsigned long long)len,
	      (unsigned long long)m->size, r, (unsigned long long)(off + bad), bad < n && r > 0 ? got[bad] : 0,
	      bad < n ? want[bad] : 0);
	free(got);
	free(want);
	return r == (ssize_t)n && bad == n ? 0 : -1;
}

static void fs_compare_all(struct bf_fs *fs, struct mfile *m, int n, const char *when)
{
	for (int i = 0; i < n; i++) {
		struct stat st;
		CHECK(bf_fs_getattr(fs, m[i].nodeid, &st) == 0 && (uint64_t)st.st_size == m[i].size,
		      "%s (%s): size %lld, model %llu", m[i].name, when, (long long)st.st_size,
		      (unsigned long long)m[i].size);
		int bad = 0;
		for (size_t k = 0; k < m[i].nsegs && !bad; k++) { /* every write and its edges */
			uint64_t a = m[i].segs[k].off > 8192 ? m[i].segs[k].off - 8192 : 0;
			bad = fs_compare(fs, &m[i], a, m[i].segs[k].len + 16384, when);
		}
		for (int k = 0; k < 20 && !bad; k++)
			bad = fs_compare(fs, &m[i], rnd_below(m[i].size + 1), 1 + rnd_below(256 * KiB), when);
	}
}

/* ---------------- the random sequence ---------------- */

static uint64_t pick_len(void)
{
	unsigned k = (unsigned)rnd_below(10);
	return k < 5 ? 1 + rnd_below(8 * KiB) : k < 8 ? 1 + rnd_below(256 * KiB) : 1 + rnd_below(3 * MiB);
}

static uint64_t pick_size(const struct mfile *m)
{
	static const uint64_t edges[] = { 0, 1, 100, 2047, 2048, 2049, 4095, 4096, 4097, 8192, 12289 };
	if (rnd_below(3) == 0)
		return edges[rnd_below(sizeof(edges) / sizeof(edges[0]))];
	return rnd_below(m->size + m->size / 2 + 2);
}

static int step(struct bf_fs *fs, struct mfile *m, int nfiles, int i)
{
	struct mfile *f = &m[rnd_below((uint64_t)nfiles)];
	unsigned k = (unsigned)rnd_below(100);
	uint32_t s = (uint32_t)rnd();
	(void)i;

	if (k < 25)
		return do_write(fs, f, rnd_below(f->size + 1), pick_len(), s);
	if (k < 40)
		return do_write(fs, f, f->size, pick_len(), s);
	if (k < 55)
		return do_write(fs, f, rnd_below(5000), 1 + rnd_below(3000), s);
	if (k < 62)
		return do_write(fs, f, f->size + rnd_below(64 * MiB), pick_len(), s);
	if (k < 65 && f->big)
		return do_write(fs, f, 4 * GiB + rnd_below(GiB), pick_len(), s);
	if (k < 78)
		return do_trunc(fs, f, pick_size(f));
	if (k < 88 && k >= 85) { /* extents without a commit: reads then go to the uncommitted trees */
		struct bf_wop op;
		int r = bf_wop_begin(fs, &op);
		if (verbose)
			printf("  %s: flush\n", f->name);
		if (r == 0) {
			op.changed = true;
			r = bf_wop_end(&op, bf_data_flush_inode(fs, op.t, f->root, f->ino));
		}
		CHECK(r == 0, "%s: flush failed: %s", f->name, strerror(-r));
		return r ? r : fs_compare(fs, f, 0, f->size > 4 * MiB ? 4 * MiB : f->size, "after a flush");
	}
	if (k < 85) {
		int r = k < 82 ? bf_fs_sync(fs) : bf_fs_fsync(fs, f->nodeid, false);
		if (verbose)
			printf("  %s\n", k < 82 ? "commit" : "fsync");
		CHECK(r == 0, "%s failed: %s", k < 82 ? "commit" : "fsync", strerror(-r));
		/* after a commit nothing is buffered and no change runs: every metadata reservation must have been
		   given back (an fsync writes a log: the other files keep their buffered data and reservations) */
		CHECK(r || k >= 82 || bf_extalloc_meta_reserved(bf_txn_alloc(fs->fi)) == 0, "%s: %llu bytes of metadata still "
		      "reserved after a commit (a reservation leaked)", f->name,
		      (unsigned long long)bf_extalloc_meta_reserved(bf_txn_alloc(fs->fi)));
		return r;
	}
	return fs_compare(fs, f, rnd_below(f->size + 1), 1 + rnd_below(512 * KiB), "random read");
}

/* ---------------- the kernel side ---------------- */

static void sha256_model(const struct mfile *m, uint8_t out[32])
{
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	uint8_t *buf = malloc(MiB);
	unsigned len = 32;

	EVP_DigestInit_ex(c, EVP_sha256(), NULL);
	for (uint64_t off = 0; off < m->size; off += MiB) {
		size_t n = (size_t)(m->size - off < MiB ? m->size - off : MiB);
		model_read(m, buf, off, n);
		EVP_DigestUpdate(c, buf, n);
	}
	EVP_DigestFinal_ex(c, out, &len);
	EVP_MD_CTX_free(c);
	free(buf);
}

static bool sha256_fd(int fd, uint8_t out[32])
{
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	uint8_t *buf = malloc(MiB);
	unsigned len = 32;
	ssize_t n;

	EVP_DigestInit_ex(c, EVP_sha256(), NULL);
	while ((n = read(fd, buf, MiB)) > 0)
		EVP_DigestUpdate(c, buf, (size_t)n);
	EVP_DigestFinal_ex(c, out, &len);
	EVP_MD_CTX_free(c);
	free(buf);
	return n == 0;
}

/* Large sparse files: every data region (SEEK_DATA / SEEK_HOLE) compared byte by byte; holes must be unwritten. */
static void kernel_compare_regions(int fd, const struct mfile *m)
{
	uint64_t pos = 0;
	uint8_t *got = malloc(MiB), *want = malloc(MiB);

	while (pos < m->size) {
		off_t d = lseek(fd, (off_t)pos, SEEK_DATA);
		uint64_t data = d < 0 ? m->size : (uint64_t)d;
		CHECK(model_zero(m, pos, data - pos), "%s (kernel): hole [%llu, %llu) covers written bytes", m->name,
		      (unsigned long long)pos, (unsigned long long)data);
		if (data >= m->size)
			break;
		off_t h = lseek(fd, (off_t)data, SEEK_HOLE);
		uint64_t hole = h < 0 ? m->size : (uint64_t)h;
		for (uint64_t a = data; a < hole; a += MiB) {
			size_t n = (size_t)(hole - a < MiB ? hole - a : MiB);
			ssize_t r = pread(fd, got, n, (off_t)a);
			model_read(m, want, a, n);
			if (r != (ssize_t)n || memcmp(got, want, n)) {
				CHECK(0, "%s (kernel): data [%llu, +%zu) differs", m->name, (unsigned long long)a, n);
				goto out;
			}
		}
		pos = hole;
	}
	n_pass++;
out:
	free(got);
	free(want);
}

static void kernel_compare(const struct mfile *m, int n)
{
	for (int i = 0; i < n; i++) {
		char path[1024];
		struct stat st;
		snprintf(path, sizeof(path), "%s/%s", mounted, m[i].name);
		int fd = open(path, O_RDONLY);
		CHECK(fd >= 0 && fstat(fd, &st) == 0 && (uint64_t)st.st_size == m[i].size,
		      "%s (kernel): size %lld, model %llu", m[i].name, fd >= 0 ? (long long)st.st_size : -1LL,
		      (unsigned long long)m[i].size);
		if (fd < 0)
			continue;
		if (m[i].size <= 256 * MiB) {
			uint8_t a[32], b[32];
			sha256_model(&m[i], a);
			CHECK(sha256_fd(fd, b) && memcmp(a, b, 32) == 0, "%s (kernel): sha256 differs from the model",
			      m[i].name);
		} else {
			kernel_compare_regions(fd, &m[i]);
		}
		close(fd);
	}
}

/* btrfs check must exit 0, say "no error found" and print no other complaint. */
static void btrfs_check(const char *img, const char *tag)
{
	char out[256];

	snprintf(out, sizeof(out), "%s/check.out", workdir);
	int rc = sh("btrfs check --readonly --check-data-csum '%s' > '%s' 2>&1", img, out);
	int clean = rc == 0 && sh("grep -q 'no error found' '%s' && ! grep -iE 'error|wrong|mismatch|missing|"
				  "corrupt|invalid|mismatch' '%s' | grep -v 'no error found'", out, out) == 0;
	CHECK(clean, "%s: btrfs check complains (rc %d); its output:", tag, rc);
	if (!clean)
		sh("cat '%s'", out);
}

static void kernel_side(const char *img, const char *tag, const struct mfile *m, int n)
{
	if (kmount(img, "ro", true) == 0) {
		kernel_compare(m, n);
		kumount();
	} else {
		CHECK(0, "%s: the kernel does not mount the image", tag);
	}
	if (kmount(img, "", true) == 0) {
		char out[256];
		snprintf(out, sizeof(out), "%s/scrub.out", workdir);
		int rc = sh("btrfs scrub start -B '%s' > '%s' 2>&1", mounted, out);
		int clean = sh("grep -q 'no errors found' '%s'", out) == 0;
		CHECK(rc == 0 && clean, "%s: scrub found errors (rc %d)", tag, rc);
		if (rc || !clean)
			sh("cat '%s'", out);
		kumount();
	}
}

/* ---------------- st_blocks against the kernel ---------------- */

/* w: write [a, a + b); t: truncate to a; s: fsync. f selects the file (0 or 1). */
struct bop {
	char op;
	int f;
	uint64_t a, b;
};

static const struct bop blocks_ops[] = {
	{ 'w', 0, 0, 8192 },		 /* appends from 0 */
	{ 't', 0, 64 * MiB, 0 },	 /* a hole up to 64 MiB */
	{ 's', 0, 0, 0 },
	{ 'w', 0, 8618557, 2047 },	 /* into the hole, inside one sector */
	{ 'w', 0, 8618557 + 4000, 200 }, /* across a sector boundary: one sector new, one already buffered */
	{ 'w', 0, 16 * MiB, 4096 },	 /* into the hole, one whole sector */
	{ 'w', 0, 16 * MiB + 100, 10 },	 /* rewriting buffered new bytes */
	{ 's', 0, 0, 0 },
	{ 'w', 0, 4096, 3 * 4096 },	 /* over an extent and on into the hole */
	{ 'w', 0, 100, 50 },		 /* an overwrite of an extent: nothing new */
	{ 's', 0, 0, 0 },
	{ 'w', 0, 64 * MiB - 100, 5000 }, /* an append across EOF */
	{ 'w', 0, 32 * MiB + 7, 10 },
	{ 't', 0, 32 * MiB + 3, 0 },	 /* down into the buffered sector: it stays */
	{ 't', 0, 32 * MiB - 3, 0 },	 /* below it: it goes */
	{ 't', 0, 40 * MiB + 1, 0 },	 /* up again: the old last sector is rewritten */
	{ 's', 0, 0, 0 },
	{ 'w', 1, 0, 100 },		 /* an inline file */
	{ 's', 1, 0, 0 },
	{ 'w', 1, 100, 100 },		 /* grows inside the inline extent's sector */
	{ 'w', 1, 200, 5000 },		 /* and out of it: the next sector is new */
	{ 's', 1, 0, 0 },
	{ 'w', 1, 20000, 1 },		 /* past EOF, left unsynced for the remount */
	{ 'w', 0, 48 * MiB, 3000 },
};
#define NBLOCKS_OPS (sizeof(blocks_ops) / sizeof(blocks_ops[0]))

static void kernel_blocks(uint64_t *out)
{
	static const char *names[2] = { "b0", "b1" };
	static char buf[64 * 1024];
	int fd[2];
	struct stat st;

	memset(buf, 'k', sizeof(buf));
	for (int i = 0; i < 2; i++) {
		char path[256];
		snprintf(path, sizeof(path), "%s/%s", mounted, names[i]);
		fd[i] = open(path, O_RDWR);
	}
	for (size_t i = 0; i < NBLOCKS_OPS && fd[0] >= 0 && fd[1] >= 0; i++) {
		const struct bop *o = &blocks_ops[i];
		if (o->b > sizeof(buf)) {
			CHECK(0, "kernel: step %zu writes more than the buffer holds", i);
			continue;
		}
		int r = o->op == 'w' ? (pwrite(fd[o->f], buf, o->b, (off_t)o->a) == (ssize_t)o->b ? 0 : -1)
			: o->op == 't' ? ftruncate(fd[o->f], (off_t)o->a) : fsync(fd[o->f]);
		CHECK(r == 0 && fstat(fd[o->f], &st) == 0, "kernel: step %zu failed", i);
		out[i] = r == 0 ? (uint64_t)st.st_blocks : 0;
	}
	for (int i = 0; i < 2; i++)
		if (fd[i] >= 0)
			close(fd[i]);
}

static void fuse_blocks(struct bf_fs *fs, struct mfile *m, uint64_t *out)
{
	for (size_t i = 0; i < NBLOCKS_OPS; i++) {
		const struct bop *o = &blocks_ops[i];
		struct mfile *f = &m[o->f];
		struct stat st;
		int r = o->op == 'w' ? do_write(fs, f, o->a, o->b, (uint32_t)i)
			: o->op == 't' ? do_trunc(fs, f, o->a) : bf_fs_fsync(fs, f->nodeid, false);
		CHECK(r == 0 && bf_fs_getattr(fs, f->nodeid, &st) == 0, "btrfs-fuse: step %zu failed", i);
		out[i] = r == 0 ? (uint64_t)st.st_blocks : 0;
	}
}

static uint64_t final_blocks(struct bf_fs *fs, const char *name)
{
	uint64_t nodeid, gen_;
	struct stat st;

	if (fs)
		return bf_fs_lookup(fs, BF_ROOT_NODEID, name, &nodeid, &gen_, &st) == 0 ? (uint64_t)st.st_blocks : 1;
	char path[256];
	snprintf(path, sizeof(path), "%s/%s", mounted, name);
	return stat(path, &st) == 0 ? (uint64_t)st.st_blocks : 1;
}

static void blocks_vs_kernel(const char *tag, const char *mkfs)
{
	char kimg[128], fimg[128];
	uint64_t want[NBLOCKS_OPS] = { 0 }, got[NBLOCKS_OPS] = { 0 }, kfinal[2] = { 0 }, ffinal[2] = { 0 };
	struct mfile m[2];

	memset(m, 0, sizeof(m));
	snprintf(m[0].name, sizeof(m[0].name), "b0");
	snprintf(m[1].name, sizeof(m[1].name), "b1");
	snprintf(kimg, sizeof(kimg), "%s/blocks-k.img", workdir);
	snprintf(fimg, sizeof(fimg), "%s/blocks-f.img", workdir);
	if (sh("truncate -s 1G '%s' && mkfs.btrfs -q -f %s '%s' >/dev/null", kimg, mkfs, kimg) ||
	    kmount(kimg, "", false)) {
		CHECK(0, "st_blocks %s: making the image failed", tag);
		return;
	}
	sh("touch '%s/b0' '%s/b1'", mounted, mounted);
	kumount();
	sh("cp --sparse=always '%s' '%s'", kimg, fimg);
	if (kmount(kimg, "", true) == 0) {
		kernel_blocks(want);
		kumount();
	}
	if (kmount(kimg, "ro", false) == 0) {
		kfinal[0] = final_blocks(NULL, "b0");
		kfinal[1] = final_blocks(NULL, "b1");
		kumount();
	}
	struct bf_fs *fs = fs_open(fimg, true);
	if (fs && files_open(fs, m, 2) == 0) {
		fuse_blocks(fs, m, got);
		files_close(fs, m, 2);
	}
	if (fs)
		bf_fs_close(fs);
	if ((fs = fs_open(fimg, false)) != NULL) {
		ffinal[0] = final_blocks(fs, "b0");
		ffinal[1] = final_blocks(fs, "b1");
		bf_fs_close(fs);
	}
	for (size_t i = 0; i < NBLOCKS_OPS; i++)
		CHECK(got[i] == want[i], "st_blocks %s: step %zu (%c %llu %llu on b%d): btrfs-fuse %llu, kernel %llu",
		      tag, i, blocks_ops[i].op, (unsigned long long)blocks_ops[i].a, (unsigned long long)blocks_ops[i].b,
		      blocks_ops[i].f, (unsigned long long)got[i], (unsigned long long)want[i]);
	for (int i = 0; i < 2; i++)
		CHECK(ffinal[i] == kfinal[i], "st_blocks %s: b%d after a remount: btrfs-fuse %llu, kernel %llu", tag, i,
		      (unsigned long long)ffinal[i], (unsigned long long)kfinal[i]);
	for (int i = 0; i < 2; i++)
		free(m[i].segs);
	if (!getenv("BF_TEST_KEEP")) {
		unlink(kimg);
		unlink(fimg);
	}
}

/* ---------------- statfs on a writable mount ---------------- */

static int count_bg(void *ctx, const struct bf_extalloc_bg_info *bg)
{
	(void)bg;
	(*(size_t *)ctx)++;
	return 0;
}

static size_t live_groups(struct bf_fs *fs)
{
	size_t n = 0;
	bf_extalloc_for_each_bg(bf_txn_alloc(fs->fi), count_bg, &n);
	return n;
}

static int fs_statfs(struct bf_fs *fs, struct statvfs *st)
{
	bf_fs_rdlock(fs);
	int r = bf_fs_statfs(fs, st);
	bf_fs_unlock(fs);
	return r;
}

static void statfs_same(const char *what, const struct statvfs *a, const struct statvfs *b)
{
	CHECK(a->f_bsize == b->f_bsize && a->f_blocks == b->f_blocks && a->f_bfree == b->f_bfree &&
	      a->f_bavail == b->f_bavail, "statfs %s: blocks %llu free %llu avail %llu, want %llu %llu %llu", what,
	      (unsigned long long)a->f_blocks, (unsigned long long)a->f_bfree, (unsigned long long)a->f_bavail,
	      (unsigned long long)b->f_blocks, (unsigned long long)b->f_bfree, (unsigned long long)b->f_bavail);
}

/* Files with three 15000-byte xattrs until a block group appears; statfs right then. */
static void statfs_new_group(struct bf_fs *fs)
{
	const struct bf_cred cred = { 0, 0, 022, false, NULL, 0 };
	size_t groups = live_groups(fs);
	uint8_t *val = malloc(15000);
	struct statvfs st;
	int i, r = 0;

	memset(val, 'x', 15000);
	for (i = 0; i < 5000 && r == 0 && live_groups(fs) == groups; i++) {
		struct bf_entry e;
		char name[32];
		snprintf(name, sizeof(name), "x%05d", i);
		r = bf_fs_mknod(fs, BF_ROOT_NODEID, name, S_IFREG | 0644, 0, &cred, &e);
		for (int k = 0; r == 0 && k < 3; k++) {
			char xn[32];
			snprintf(xn, sizeof(xn), "user.%d", k);
			r = bf_fs_setxattr(fs, e.nodeid, xn, val, 15000, 0);
		}
	}
	free(val);
	CHECK(r == 0 && live_groups(fs) > groups, "no new block group after %d files (%s)", i, strerror(-r));
	r = fs_statfs(fs, &st);
	CHECK(r == 0, "statfs with a block group made in the running transaction: %s", strerror(-r));
}

/* Buffered 1 MiB writes until ENOSPC; returns the statfs taken then. */
static void statfs_full(struct bf_fs *fs, struct statvfs *st)
{
	const struct bf_cred cred = { 0, 0, 022, false, NULL, 0 };
	struct bf_entry e;
	struct bf_file *f = NULL;
	uint8_t *buf = malloc(MiB);
	ssize_t n = 0;
	uint64_t off = 0;

	memset(buf, 'd', MiB);
	int r = bf_fs_mknod(fs, BF_ROOT_NODEID, "fill", S_IFREG | 0644, 0, &cred, &e);
	if (r == 0)
		r = bf_fs_open_file(fs, e.nodeid, &f);
	CHECK(r == 0, "statfs: making the fill file: %s", strerror(-r));
	while (f && off < GiB && (n = bf_fs_write(fs, f, buf, MiB, off)) == (ssize_t)MiB)
		off += MiB;
	CHECK(n == -ENOSPC, "statfs: filling ended with %zd after %llu MiB, want ENOSPC", n,
	      (unsigned long long)(off / MiB));
	memset(st, 0, sizeof(*st));
	r = fs_statfs(fs, st);
	CHECK(r == 0 && (uint64_t)st->f_bavail * st->f_bsize < MiB + 8 * KiB, "statfs when full (%s): %llu bytes "
	      "available, but a 1 MiB write got ENOSPC", strerror(-r), (unsigned long long)st->f_bavail * st->f_bsize);
	if (f)
		bf_fs_release_file(fs, f);
	free(buf);
}

static void statfs_live(void)
{
	char img[128];
	struct statvfs full, ro, k;

	snprintf(img, sizeof(img), "%s/statfs.img", workdir);
	if (sh("truncate -s 256M '%s' && mkfs.btrfs -q -f '%s' >/dev/null", img, img)) {
		CHECK(0, "statfs: making the image failed");
		return;
	}
	struct bf_fs *fs = fs_open(img, true);
	if (!fs)
		return;
	statfs_new_group(fs);
	statfs_full(fs, &full);
	bf_fs_close(fs);
	if ((fs = fs_open(img, false)) != NULL) {
		CHECK(fs_statfs(fs, &ro) == 0, "statfs on the read-only reopen failed");
		statfs_same("when full vs. a read-only reopen", &full, &ro);
		bf_fs_close(fs);
	}
	if (kmount(img, "ro", true) == 0) {
		CHECK(statvfs(mounted, &k) == 0, "statvfs on the kernel mount failed");
		statfs_same("when full vs. the kernel", &full, &k);
		kumount();
	}
	btrfs_check(img, "statfs");
	if (!getenv("BF_TEST_KEEP"))
		unlink(img);
}

/* ---------------- one image ---------------- */

struct kind {
	const char *name, *mkfs;
	bool huge_write; /* one write of 130 MiB: extents split at 128 MiB */
};

static void run_kind(const struct kind *k, int nops)
{
	char img[128];
	struct mfile m[4];
	const int n = 4;
	struct bf_fs *fs;

	memset(m, 0, sizeof(m));
	for (int i = 0; i < n; i++)
		snprintf(m[i].name, sizeof(m[i].name), "f%d", i);
	m[2].nocow = true;
	m[3].big = true;
	snprintf(img, sizeof(img), "%s/%s.img", workdir, k->name);
	if (sh("truncate -s 3G '%s' && mkfs.btrfs -q -f %s '%s' >/dev/null", img, k->mkfs, img) ||
	    kmount(img, "", false)) {
		CHECK(0, "%s: making the image failed", k->name);
		return;
	}
	sh("cd '%s' && touch f0 f1 f2 f3 && chattr +C f2", mounted);
	kumount();

	fs = fs_open(img, true);
	if (!fs || files_open(fs, m, n)) {
		if (fs)
			bf_fs_close(fs);
		return;
	}
	if (k->huge_write)
		do_write(fs, &m[0], 5000, 130 * MiB, 7);
	for (int i = 0; i < nops; i++)
		if (step(fs, m, n, i))
			break;
	fs_compare_all(fs, m, n, "after the writes");
	files_close(fs, m, n);
	bf_fs_close(fs);

	fs = fs_open(img, false);
	if (fs && files_open(fs, m, n) == 0)
		fs_compare_all(fs, m, n, "after remount");
	if (fs) {
		files_close(fs, m, n);
		bf_fs_close(fs);
	}
	btrfs_check(img, k->name);
	kernel_side(img, k->name, m, n);
	for (int i = 0; i < n; i++)
		free(m[i].segs);
	if (!getenv("BF_TEST_KEEP"))
		unlink(img);
}

int main(void)
{
	static const struct kind kinds[] = {
		{ "default", "", true },
		{ "holes", "-O ^no-holes", false },
		{ "sha256", "--csum sha256", false },
		{ "dup", "-m dup -d dup", false },
		{ "single", "-d single", false },
	};
	const char *env = getenv("BF_TEST_SEED"), *only = getenv("BF_TEST_ONLY"), *ops = getenv("BF_TEST_OPS");

	check_seed = env ? strtoull(env, NULL, 0) : (uint64_t)time(NULL);
	verbose = getenv("BF_TEST_VERBOSE") != NULL;
	setvbuf(stdout, NULL, _IOLBF, 0);
	rng_state = check_seed;
	if (geteuid() != 0) {
		printf("skipped: needs root for loop mounts\n0 passed, 0 failed\n");
		return 0;
	}
	snprintf(workdir, sizeof(workdir), "/tmp/bf-write-XXXXXX");
	if (!mkdtemp(workdir)) {
		printf("FAIL: mkdtemp\n0 passed, 1 failed\n");
		return 1;
	}
	atexit(cleanup);
	printf("seed %" PRIu64 "\n", check_seed);
	if (!only || strcmp(only, "statfs") == 0)
		statfs_live();
	if (!only || strcmp(only, "blocks") == 0) {
		blocks_vs_kernel("no-holes", "");
		blocks_vs_kernel("holes", "-O ^no-holes");
	}
	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
		if (!only || strcmp(only, kinds[i].name) == 0)
			run_kind(&kinds[i], ops ? atoi(ops) : 250);
	return check_summary();
}
