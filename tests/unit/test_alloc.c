/*
 * tests/unit/test_alloc.c - unit tests for alloc/: devices, the chunk map and every RAID profile.
 *
 * Owns: (1) synthetic volumes over temporary files in /tmp for every profile, checked against the test's own
 * model of the layout (seeded random offsets and lengths; pass a seed as argv[1] to replay): writes through
 * bf_vol_write land where the model says on every copy, reads with every mirror return the data; RAID5/6
 * stripes are laid out by hand with P and Q computed here by a bit-at-a-time GF(2^8) and read back with every
 * mirror, after corrupting stripes and with devices left out (degraded); (2) hostile chunk items and system
 * chunk arrays, each rejected with a message; (3) device open, locking and bounds; (4) when run as root with
 * mkfs.btrfs: real multi-device images made by mkfs.btrfs and filled through a kernel mount, whose chunk tree
 * is loaded through alloc/ and whose file extents (found with FIEMAP) must read back with every mirror, also
 * degraded. Ends with "N passed, N failed"; exit 0 only if none failed.
 */
#include "alloc/alloc.h"
#include "util/util.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "tests/unit/check.h"



static uint64_t rng_state;
static uint64_t rng(void)
{
	return splitmix64(&rng_state);
}
static void fill_random(uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)rng();
}

#define SECT 4096u
#define SL 65536ull
#define NDEV_MAX 8
#define DEV_SIZE (8ull << 20)
#define P_MASK BF_BLOCK_GROUP_PROFILE_MASK

static const uint8_t FSID[BF_FSID_SIZE] = { 0xf5, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15 };

/* ================= fixture: temporary files as devices ================= */

struct fix {
	int n;
	char path[NDEV_MAX][64];
	struct bf_volume v;
};

static void uuid_of(uint64_t devid, uint8_t u[BF_UUID_SIZE])
{
	memset(u, (int)(0xa0 + devid), BF_UUID_SIZE);
	u[0] = (uint8_t)devid;
}

static void dev_item_of(struct bf_dev_item *di, uint64_t devid)
{
	memset(di, 0, sizeof(*di));
	put64(&di->devid, devid);
	put64(&di->total_bytes, DEV_SIZE);
	put32(&di->sector_size, SECT);
	uuid_of(devid, di->uuid);
	memcpy(di->fsid, FSID, BF_FSID_SIZE);
}

static bool fix_create(struct fix *f, int n)
{
	f->n = n;
	for (int i = 0; i < n; i++) {
		snprintf(f->path[i], sizeof(f->path[i]), "/tmp/test_alloc.XXXXXX");
		int fd = mkstemp(f->path[i]);
		if (fd < 0 || ftruncate(fd, (off_t)DEV_SIZE) < 0) {
			printf("cannot create a test file in /tmp: %s\n", strerror(errno));
			return false;
		}
		close(fd);
	}
	return true;
}

static void fix_remove(struct fix *f)
{
	for (int i = 0; i < f->n; i++)
		unlink(f->path[i]);
}

/* Open the volume over the files, leaving out the devices whose bit is set in skip (devid = index + 1). */
static int fix_open(struct fix *f, unsigned skip)
{
	char err[256];
	bf_vol_init(&f->v, FSID, SECT, (uint64_t)f->n);
	for (int i = 0; i < f->n; i++) {
		if (skip & (1u << i))
			continue;
		int fd;
		uint64_t size;
		struct bf_dev_item di;
		int ret = bf_plat_open(f->path[i], true, &fd, &size, err, sizeof(err));
		CHECK(ret == 0 && size == DEV_SIZE, "open %s: %d %s", f->path[i], ret, err);
		if (ret)
			return ret;
		dev_item_of(&di, (uint64_t)i + 1);
		ret = bf_vol_add_device(&f->v, f->path[i], fd, size, &di, 7, err, sizeof(err));
		CHECK(ret == 0, "add device %s: %d %s", f->path[i], ret, err);
		if (ret) {
			close(fd);
			return ret;
		}
	}
	return 0;
}

static void file_rw(const char *path, uint64_t off, void *buf, size_t len, bool write)
{
	int fd = open(path, write ? O_WRONLY : O_RDONLY);
	ssize_t n = fd < 0 ? -1 : write ? pwrite(fd, buf, len, (off_t)off) : pread(fd, buf, len, (off_t)off);
	CHECK(n == (ssize_t)len, "%s %zu bytes at %" PRIu64 " of %s", write ? "write" : "read", len, off, path);
	if (fd >= 0)
		close(fd);
}

/* ================= chunk specs and the test's own layout model ================= */

struct spec {
	const char *name;
	uint64_t type;
	unsigned ns;
	uint64_t logical, length;
	uint64_t devid[NDEV_MAX], phys[NDEV_MAX];
};

static unsigned nparity(uint64_t type)
{
	return (type & BF_BLOCK_GROUP_RAID6) ? 2 : (type & BF_BLOCK_GROUP_RAID5) ? 1 : 0;
}

/* Stripe elements of logical data in one row: 0 for profiles that mirror the whole chunk. */
static unsigned model_cols(const struct spec *s)
{
	switch (s->type & P_MASK) {
	case BF_BLOCK_GROUP_RAID0:
		return s->ns;
	case BF_BLOCK_GROUP_RAID10:
		return s->ns / 2;
	case BF_BLOCK_GROUP_RAID5:
	case BF_BLOCK_GROUP_RAID6:
		return s->ns - nparity(s->type);
	default:
		return 0;
	}
}

static unsigned model_copies(const struct spec *s)
{
	switch (s->type & P_MASK) {
	case 0:
	case BF_BLOCK_GROUP_RAID0:
		return 1;
	case BF_BLOCK_GROUP_RAID5:
		return 2;
	case BF_BLOCK_GROUP_RAID6:
		return s->ns;
	case BF_BLOCK_GROUP_RAID10:
		return 2;
	default:
		return s->ns; /* DUP, RAID1, RAID1C3, RAID1C4 */
	}
}

/* Where chunk byte off lives for copy k (0-based; RAID5/6: the data itself): the stripe and the offset from
   the stripe's start. Rows of `cols` 64 KiB elements fill the devices in order; RAID10 writes each element to
   a pair of devices; RAID5/6 start row r's data on device r mod n, followed by P and Q. */
static void model(const struct spec *s, uint64_t off, unsigned k, unsigned *stripe, uint64_t *dev_off)
{
	unsigned cols = model_cols(s);
	if (!cols) {
		*stripe = k;
		*dev_off = off;
		return;
	}
	uint64_t row = off / (cols * SL), in_row = off % (cols * SL);
	unsigned col = (unsigned)(in_row / SL);
	*dev_off = row * SL + in_row % SL;
	if (s->type & BF_BLOCK_GROUP_RAID10)
		*stripe = 2 * col + k;
	else if (s->type & BF_BLOCK_GROUP_RAID56_MASK)
		*stripe = (unsigned)((row + col) % s->ns);
	else
		*stripe = col;
}

/* The item of a spec, into buf (room for NDEV_MAX stripes); returns its size. */
static size_t chunk_item(const struct spec *s, uint8_t *buf)
{
	size_t size = bf_chunk_item_size(s->ns);
	memset(buf, 0, size);
	struct bf_chunk *c = (void *)buf;
	put64(&c->length, s->length);
	put64(&c->owner, BF_EXTENT_TREE_OBJECTID);
	put64(&c->stripe_len, SL);
	put64(&c->type, s->type);
	put32(&c->io_align, (uint32_t)SL);
	put32(&c->io_width, (uint32_t)SL);
	put32(&c->sector_size, SECT);
	put16(&c->num_stripes, (uint16_t)s->ns);
	put16(&c->sub_stripes, (s->type & BF_BLOCK_GROUP_RAID10) ? 2 : 1);
	for (unsigned i = 0; i < s->ns; i++) {
		struct bf_stripe *st = (void *)(buf + offsetof(struct bf_chunk, stripe) + i * sizeof(*st));
		put64(&st->devid, s->devid[i]);
		put64(&st->offset, s->phys[i]);
		uuid_of(s->devid[i], st->dev_uuid);
	}
	return size;
}

static uint8_t itembuf[4096]; /* room for a chunk item of NDEV_MAX stripes */

static int add_spec(struct bf_volume *v, const struct spec *s, char *err, size_t errlen)
{
	size_t size = chunk_item(s, itembuf);
	return bf_vol_add_chunk(v, s->logical, (const struct bf_chunk *)itembuf, size, err, errlen);
}

/* A spec of 5 rows less 3 sectors (striped) or 1.25 MiB (mirrored); stripe i on devid i + 1 (DUP: both on
   devid 1), at addresses that differ per stripe. */
static struct spec spec_make(const char *name, uint64_t profile, unsigned ns)
{
	struct spec s = { .name = name, .type = profile | BF_BLOCK_GROUP_DATA, .ns = ns };
	s.logical = (1ull << 30) + 3 * SECT;
	unsigned cols = model_cols(&s);
	s.length = cols ? 5 * cols * SL - 3 * SECT : (5ull << 18);
	for (unsigned i = 0; i < ns; i++) {
		s.devid[i] = profile == BF_BLOCK_GROUP_DUP ? 1 : i + 1;
		s.phys[i] = (1ull << 20) + i * (192ull << 10);
	}
	if (profile == BF_BLOCK_GROUP_DUP)
		s.phys[1] = 4ull << 20;
	return s;
}

static int spec_ndevs(const struct spec *s) { return (s->type & BF_BLOCK_GROUP_DUP) ? 1 : (int)s->ns; }

/* ================= mirrored and striped profiles: write, then check every copy ================= */

/* Every copy of every sector on the devices must hold the shadow's bytes at the model's place. */
static void check_layout(const struct fix *f, const struct spec *s, const uint8_t *shadow)
{
	uint8_t sect[SECT];
	unsigned bad = 0;
	for (unsigned k = 0; k < model_copies(s); k++) {
		for (uint64_t off = 0; off < s->length; off += SECT) {
			unsigned st;
			uint64_t dev_off;
			model(s, off, k, &st, &dev_off);
			file_rw(f->path[s->devid[st] - 1], s->phys[st] + dev_off, sect, SECT, false);
			bad += memcmp(sect, shadow + off, SECT) != 0;
		}
	}
	CHECK(bad == 0, "%s: %u sectors on the devices are not where the model puts them", s->name, bad);
}

/* Random reads with mirrors lo..hi; returns the number of mismatches (with allow_eio, -EIO is no mismatch). */
static unsigned check_reads_eio(struct bf_volume *v, const struct spec *s, const uint8_t *shadow, int mirror_lo,
				int mirror_hi, int n, uint64_t maxlen, bool allow_eio)
{
	uint8_t *buf = malloc(maxlen);
	unsigned bad = 0;
	for (int i = 0; i < n; i++) {
		uint64_t len = 1 + rng() % maxlen, off = rng() % s->length;
		if (len > s->length - off)
			len = s->length - off;
		for (int m = mirror_lo; m <= mirror_hi; m++) {
			int ret = bf_vol_read(v, s->logical + off, buf, len, m);
			if (allow_eio && ret == -EIO)
				continue;
			if (ret || memcmp(buf, shadow + off, len)) {
				if (bad++ < 5)
					printf("  %s: read of %" PRIu64 "+%" PRIu64 " mirror %d: %s\n", s->name, off, len,
					       m, ret ? strerror(-ret) : "wrong data");
			}
		}
	}
	free(buf);
	return bad;
}

static unsigned check_reads(struct bf_volume *v, const struct spec *s, const uint8_t *shadow, int mirror_lo,
			    int mirror_hi, int n, uint64_t maxlen)
{
	return check_reads_eio(v, s, shadow, mirror_lo, mirror_hi, n, maxlen, false);
}

/* Mapping of single bytes must agree with the model for every mirror. */
static void check_map(struct bf_volume *v, const struct spec *s)
{
	unsigned bad = 0;
	for (int i = 0; i < 100; i++) {
		uint64_t off = rng() % s->length, devid, phys, dev_off;
		for (unsigned k = 0; k < model_copies(s); k++) {
			unsigned st;
			model(s, off, (s->type & BF_BLOCK_GROUP_RAID56_MASK) ? 0 : k, &st, &dev_off);
			if ((s->type & BF_BLOCK_GROUP_RAID56_MASK) && (k == 1 || k == 2))
				st = (unsigned)((off / (model_cols(s) * SL) + model_cols(s) + k - 1) % s->ns);
			int ret = bf_vol_map(v, s->logical + off, (int)k + 1, &devid, &phys);
			bad += ret || devid != s->devid[st] || phys != s->phys[st] + dev_off;
		}
	}
	CHECK(bad == 0, "%s: %u bf_vol_map results differ from the model", s->name, bad);
}

static void test_edges(struct bf_volume *v, const struct spec *s)
{
	uint8_t b[16];
	int copies = (int)model_copies(s);
	CHECK(bf_vol_num_copies(v, s->logical) == copies, "%s: num_copies %d, expected %d", s->name,
	      bf_vol_num_copies(v, s->logical), copies);
	CHECK(bf_vol_num_copies(v, s->logical - 1) == 0, "%s: num_copies of an unmapped address", s->name);
	CHECK(bf_vol_read(v, s->logical, b, 1, 0) == -EINVAL, "%s: mirror 0 accepted", s->name);
	CHECK(bf_vol_read(v, s->logical, b, 1, copies + 1) == -EINVAL, "%s: mirror %d accepted", s->name, copies + 1);
	CHECK(bf_vol_read(v, s->logical + s->length - 8, b, 16, 1) == -EIO, "%s: read past the chunk end", s->name);
	CHECK(bf_vol_read(v, s->logical - 8, b, 8, 1) == -EIO, "%s: read of an unmapped address", s->name);
	CHECK(bf_vol_read(v, s->logical + s->length, b, 8, 1) == -EIO, "%s: read after the chunk", s->name);
	CHECK(bf_vol_write(v, s->logical + s->length - 8, b, 16) == -EIO, "%s: write past the chunk end", s->name);
}

static void test_profile(uint64_t profile, unsigned ns, const char *name)
{
	struct spec s = spec_make(name, profile, ns);
	struct fix f;
	char err[256] = "";
	if (!fix_create(&f, spec_ndevs(&s)))
		return;
	if (fix_open(&f, 0) == 0) {
		int ret = add_spec(&f.v, &s, err, sizeof(err));
		CHECK(ret == 0, "%s: add chunk: %s", name, err);
		ret = bf_vol_resolve_devices(&f.v, false, err, sizeof(err));
		CHECK(ret == 0, "%s: resolve: %s", name, err);
		uint8_t *shadow = malloc(s.length);
		fill_random(shadow, s.length);
		for (uint64_t off = 0, len; off < s.length; off += len) { /* random-sized writes */
			len = bf_min64(1 + rng() % (200 << 10), s.length - off);
			ret = bf_vol_write(&f.v, s.logical + off, shadow + off, len);
			CHECK(ret == 0, "%s: write %" PRIu64 "+%" PRIu64 ": %d", name, off, len, ret);
		}
		check_layout(&f, &s, shadow);
		unsigned bad = check_reads(&f.v, &s, shadow, 1, (int)model_copies(&s), 150, 3 * SL);
		CHECK(bad == 0, "%s: %u reads gave wrong data", name, bad);
		check_map(&f.v, &s);
		test_edges(&f.v, &s);
		if (model_copies(&s) > 1) { /* a bad first copy must not affect the second */
			uint64_t off = (rng() % s.length) & ~(uint64_t)(SECT - 1), dev_off;
			unsigned st;
			uint8_t junk[SECT], got[SECT];
			memset(junk, 0x5a, SECT);
			model(&s, off, 0, &st, &dev_off);
			file_rw(f.path[s.devid[st] - 1], s.phys[st] + dev_off, junk, SECT, true);
			CHECK(bf_vol_read(&f.v, s.logical + off, got, SECT, 1) == 0 && !memcmp(got, junk, SECT),
			      "%s: corrupted copy 1 not seen through mirror 1", name);
			CHECK(bf_vol_read(&f.v, s.logical + off, got, SECT, 2) == 0 && !memcmp(got, shadow + off, SECT),
			      "%s: mirror 2 affected by a corrupted copy 1", name);
		}
		free(shadow);
	}
	bf_vol_destroy(&f.v);
	fix_remove(&f);
}

/* ================= RAID5/6: hand-made layout, rebuilds, degraded ================= */

/* Open the volume without the devices in skip, add the spec's chunk and resolve. Returns resolve's result. */
static int open_spec(struct fix *f, const struct spec *s, unsigned skip, bool degraded, char *err, size_t errlen)
{
	int ret = fix_open(f, skip);
	if (!ret)
		ret = add_spec(&f->v, s, err, errlen);
	CHECK(ret == 0, "%s: open/add chunk: %s", s->name, err);
	return ret ? ret : bf_vol_resolve_devices(&f->v, degraded, err, errlen);
}

static uint8_t gf_mul2(uint8_t x) { return (uint8_t)((x << 1) ^ ((x & 0x80) ? 0x1d : 0)); }

/* The stripe holding parity w (0 = P, 1 = Q) of row r. */
static unsigned model_parity(const struct spec *s, uint64_t row, unsigned w)
{
	return (unsigned)((row + model_cols(s) + w) % s->ns);
}

/* Write `rows` full rows of data (shadow, zero-padded) with P and Q to the devices: P is the XOR of the row's
   data elements, Q = sum 2^j * D_j by Horner's rule over the polynomial 0x11d. */
static void raid56_layout(const struct fix *f, const struct spec *s, const uint8_t *shadow, uint64_t rows)
{
	unsigned nd = model_cols(s), st;
	uint8_t *p = malloc(SL), *q = malloc(SL);
	uint64_t dev_off;
	for (uint64_t r = 0; r < rows; r++) {
		memset(p, 0, SL);
		memset(q, 0, SL);
		for (unsigned j = nd; j-- > 0;) {
			const uint8_t *d = shadow + (r * nd + j) * SL;
			model(s, (r * nd + j) * SL, 0, &st, &dev_off);
			file_rw(f->path[s->devid[st] - 1], s->phys[st] + dev_off, (void *)d, SL, true);
			for (size_t b = 0; b < SL; b++) {
				p[b] ^= d[b];
				q[b] = gf_mul2(q[b]) ^ d[b];
			}
		}
		st = model_parity(s, r, 0);
		file_rw(f->path[s->devid[st] - 1], s->phys[st] + r * SL, p, SL, true);
		if (nparity(s->type) == 2) {
			st = model_parity(s, r, 1);
			file_rw(f->path[s->devid[st] - 1], s->phys[st] + r * SL, q, SL, true);
		}
	}
	free(p);
	free(q);
}

/* Overwrite (junk != NULL) or restore (from saved) one element of row r on stripe st. */
static void element_swap(const struct fix *f, const struct spec *s, uint64_t r, unsigned st, uint8_t *saved,
			 bool corrupt)
{
	const char *path = f->path[s->devid[st] - 1];
	if (corrupt) {
		uint8_t *junk = malloc(SL);
		file_rw(path, s->phys[st] + r * SL, saved, SL, false);
		fill_random(junk, SL);
		file_rw(path, s->phys[st] + r * SL, junk, SL, true);
		free(junk);
	} else {
		file_rw(path, s->phys[st] + r * SL, saved, SL, true);
	}
}

/* Read a piece of data column a of row r with mirror m; true if it gives the right bytes. */
static bool read_ok(struct bf_volume *v, const struct spec *s, const uint8_t *shadow, uint64_t r, unsigned a, int m)
{
	uint64_t off = (r * model_cols(s) + a) * SL + SECT, len = SL - 2 * SECT;
	uint8_t *buf = malloc(len);
	bool ok = bf_vol_read(v, s->logical + off, buf, len, m) == 0 && !memcmp(buf, shadow + off, len);
	free(buf);
	return ok;
}

/* Corrupt stripes of one row and check which mirrors still give the data. */
static void raid56_corrupt(struct fix *f, const struct spec *s, const uint8_t *shadow, uint64_t rows)
{
	unsigned nd = model_cols(s), a = (unsigned)(rng() % nd), st, b;
	uint64_t r = rng() % (rows - 1), dev_off;
	bool raid6 = nparity(s->type) == 2;
	uint8_t *save_a = malloc(SL), *save_x = malloc(SL);
	model(s, (r * nd + a) * SL, 0, &st, &dev_off);
	element_swap(f, s, r, st, save_a, true);
	CHECK(!read_ok(&f->v, s, shadow, r, a, 1), "%s: mirror 1 did not see a corrupted data stripe", s->name);
	CHECK(read_ok(&f->v, s, shadow, r, a, 2), "%s: mirror 2 (from P) did not rebuild column %u", s->name, a);
	if (raid6) {
		CHECK(read_ok(&f->v, s, shadow, r, a, 3), "%s: mirror 3 (from Q) did not rebuild column %u", s->name, a);
		for (unsigned w = 0; w < 2; w++) { /* data and P (or Q) bad: the other parity rebuilds */
			element_swap(f, s, r, model_parity(s, r, w), save_x, true);
			CHECK(!read_ok(&f->v, s, shadow, r, a, 2 + (int)w), "%s: mirror %u used a corrupted parity",
			      s->name, 2 + w);
			CHECK(read_ok(&f->v, s, shadow, r, a, 3 - (int)w), "%s: mirror %u failed with parity %u bad",
			      s->name, 3 - w, w);
			element_swap(f, s, r, model_parity(s, r, w), save_x, false);
		}
	}
	if (raid6 && nd >= 2) { /* two data columns bad: only the P+Q mirror naming the other column works */
		b = (a + 1 + (unsigned)(rng() % (nd - 1))) % nd;
		model(s, (r * nd + b) * SL, 0, &st, &dev_off);
		element_swap(f, s, r, st, save_x, true);
		int good = 4 + (int)(b < a ? b : b - 1);
		for (int m = 1; m <= (int)s->ns; m++)
			CHECK(read_ok(&f->v, s, shadow, r, a, m) == (m == good),
			      "%s: columns %u and %u bad: mirror %d %s", s->name, a, b, m,
			      m == good ? "did not rebuild" : "gave data that cannot be right");
		element_swap(f, s, r, st, save_x, false);
	}
	model(s, (r * nd + a) * SL, 0, &st, &dev_off);
	element_swap(f, s, r, st, save_a, false);
	CHECK(read_ok(&f->v, s, shadow, r, a, 1), "%s: restored stripe does not read back", s->name);
	free(save_a);
	free(save_x);
}

/* Leave out each set of up to nparity devices: degraded reads give the data; one more is refused. */
static void raid56_degraded(struct fix *f, const struct spec *s, const uint8_t *shadow)
{
	char err[256], want[64];
	unsigned np = nparity(s->type);
	for (unsigned skip = 1; skip < (1u << s->ns); skip++) {
		unsigned n = (unsigned)__builtin_popcount(skip);
		if (n > np + 1)
			continue;
		err[0] = 0;
		int ret = open_spec(f, s, skip, false, err, sizeof(err));
		snprintf(want, sizeof(want), "missing device(s): devid %d", __builtin_ctz(skip) + 1);
		CHECK(ret == -ENODEV && strstr(err, want) && strstr(err, "-o degraded"),
		      "%s: without degraded, devices 0x%x missing: %d '%s'", s->name, skip, ret, err);
		ret = bf_vol_resolve_devices(&f->v, true, err, sizeof(err));
		if (n > np) {
			CHECK(ret != 0 && strstr(err, "chunk at logical"), "%s: %u devices missing accepted: '%s'",
			      s->name, n, err);
		} else {
			CHECK(ret == 0, "%s: degraded without 0x%x: %s", s->name, skip, err);
			unsigned bad = check_reads(&f->v, s, shadow, 1, n < np ? 3 : 1, 12, SL);
			CHECK(bad == 0, "%s: %u degraded reads without devices 0x%x gave wrong data", s->name, bad, skip);
			bad = check_reads_eio(&f->v, s, shadow, 2, (int)model_copies(s), 6, SL, true);
			CHECK(bad == 0, "%s: degraded rebuilds without devices 0x%x gave wrong data", s->name, skip);
		}
		bf_vol_destroy(&f->v);
	}
}

static void test_raid56(uint64_t profile, unsigned ns, const char *name)
{
	struct spec s = spec_make(name, profile, ns);
	struct fix f;
	char err[256] = "";
	unsigned nd = model_cols(&s);
	uint64_t rows = (s.length + nd * SL - 1) / (nd * SL);
	uint8_t *shadow = calloc(rows * nd, SL);
	if (!fix_create(&f, (int)ns))
		return;
	fill_random(shadow, s.length);
	raid56_layout(&f, &s, shadow, rows);
	if (open_spec(&f, &s, 0, false, err, sizeof(err)) == 0) {
		unsigned bad = check_reads(&f.v, &s, shadow, 1, (int)model_copies(&s), 100, 3 * SL);
		CHECK(bad == 0, "%s: %u reads gave wrong data", name, bad);
		check_map(&f.v, &s);
		test_edges(&f.v, &s);
		CHECK(bf_vol_write(&f.v, s.logical, shadow, 10) == -EROFS, "%s: write not refused", name);
		raid56_corrupt(&f, &s, shadow, rows);
	}
	bf_vol_destroy(&f.v);
	raid56_degraded(&f, &s, shadow);
	free(shadow);
	fix_remove(&f);
}

/* Missing devices under mirrored and striped profiles. */
static void test_degraded_mirrors(void)
{
	static const struct {
		uint64_t profile;
		unsigned ns, skip;
		bool readable;
	} cases[] = {
		{ BF_BLOCK_GROUP_RAID1, 2, 1, true },   { BF_BLOCK_GROUP_RAID1, 2, 2, true },
		{ BF_BLOCK_GROUP_RAID1C3, 3, 3, true }, { BF_BLOCK_GROUP_RAID1C4, 4, 7, true },
		{ BF_BLOCK_GROUP_RAID10, 4, 5, true },  { BF_BLOCK_GROUP_RAID10, 4, 10, true },
		{ BF_BLOCK_GROUP_RAID10, 4, 3, false }, { BF_BLOCK_GROUP_RAID10, 6, 0x30, false },
		{ BF_BLOCK_GROUP_RAID0, 2, 2, false },  { 0, 1, 1, false },
		{ BF_BLOCK_GROUP_RAID1, 2, 3, false },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct spec s = spec_make(bf_profile_name(cases[i].profile), cases[i].profile, cases[i].ns);
		struct fix f;
		char err[256] = "";
		uint8_t *shadow = malloc(s.length);
		fill_random(shadow, s.length);
		if (!fix_create(&f, (int)s.ns)) {
			free(shadow);
			return;
		}
		if (open_spec(&f, &s, 0, false, err, sizeof(err)) == 0)
			CHECK(bf_vol_write(&f.v, s.logical, shadow, s.length) == 0, "%s: write", s.name);
		bf_vol_destroy(&f.v);
		CHECK(open_spec(&f, &s, cases[i].skip, false, err, sizeof(err)) == -ENODEV,
		      "%s without 0x%x: missing devices accepted without degraded", s.name, cases[i].skip);
		int ret = bf_vol_resolve_devices(&f.v, true, err, sizeof(err));
		CHECK((ret == 0) == cases[i].readable, "%s without devices 0x%x: degraded resolve %d '%s'", s.name,
		      cases[i].skip, ret, err);
		/* every mirror reads: a missing copy is replaced by a present one, piece by piece */
		if (ret == 0) {
			unsigned bad = check_reads(&f.v, &s, shadow, 1, (int)model_copies(&s), 20, 4 * SL);
			CHECK(bad == 0, "%s without 0x%x: %u reads gave wrong data", s.name, cases[i].skip, bad);
		}
		bf_vol_destroy(&f.v);
		free(shadow);
		fix_remove(&f);
	}
}

/* ================= hostile chunk items and system chunk arrays ================= */

static bool verbose;

static void expect_reject(struct bf_volume *v, const char *what, uint64_t logical, const uint8_t *item, size_t size)
{
	char err[256] = "";
	int ret = bf_vol_add_chunk(v, logical, (const struct bf_chunk *)item, size, err, sizeof(err));
	CHECK(ret == -EUCLEAN && err[0], "%s: not rejected (%d) '%s'", what, ret, err);
	if (verbose)
		printf("  rejected %s: %s\n", what, err);
}

/* Build the item of spec_expr, apply mutate (may change item, size_ and logical_), expect a rejection. */
#define HOSTILE(what, spec_expr, mutate)                                                                   \
	do {                                                                                               \
		struct spec s_ = spec_expr;                                                                \
		size_t size_ = chunk_item(&s_, item);                                                      \
		uint64_t logical_ = s_.logical;                                                            \
		struct bf_chunk *c_ = (struct bf_chunk *)item;                                             \
		(void)c_;                                                                                  \
		mutate;                                                                                    \
		expect_reject(&v, what, logical_, item, size_);                                            \
	} while (0)

static void test_hostile_chunks(void)
{
	struct bf_volume v;
	uint8_t item[4096];
	char err[256] = "";
	const uint64_t R1 = BF_BLOCK_GROUP_RAID1;
	bf_vol_init(&v, FSID, SECT, 4);
	struct spec good = spec_make("good", R1, 2);
	CHECK(add_spec(&v, &good, err, sizeof(err)) == 0, "valid RAID1 chunk rejected: %s", err);
	good.logical += good.length + SECT; /* further ones go after it, where nothing overlaps */
#define G good

	HOSTILE("num_stripes 0", G, { put16(&c_->num_stripes, 0); size_ = sizeof(struct bf_chunk); });
	HOSTILE("RAID1 with 3 stripes", spec_make("", R1, 3), logical_ = G.logical);
	HOSTILE("RAID1C3 with 2 stripes", spec_make("", BF_BLOCK_GROUP_RAID1C3, 2), logical_ = G.logical);
	HOSTILE("RAID1C4 with 5 stripes", spec_make("", BF_BLOCK_GROUP_RAID1C4, 5), logical_ = G.logical);
	HOSTILE("DUP with 1 stripe", spec_make("", BF_BLOCK_GROUP_DUP, 1), logical_ = G.logical);
	HOSTILE("single with 2 stripes", spec_make("", 0, 2), logical_ = G.logical);
	HOSTILE("RAID10 with 3 stripes", spec_make("", BF_BLOCK_GROUP_RAID10, 3), logical_ = G.logical);
	HOSTILE("RAID10 with sub_stripes 1", spec_make("", BF_BLOCK_GROUP_RAID10, 4),
		{ logical_ = G.logical; put16(&c_->sub_stripes, 1); });
	HOSTILE("RAID0 with sub_stripes 3", spec_make("", BF_BLOCK_GROUP_RAID0, 2),
		{ logical_ = G.logical; put16(&c_->sub_stripes, 3); });
	HOSTILE("RAID5 with 1 stripe", spec_make("", BF_BLOCK_GROUP_RAID5, 1), logical_ = G.logical);
	HOSTILE("RAID6 with 2 stripes", spec_make("", BF_BLOCK_GROUP_RAID6, 2), logical_ = G.logical);
	HOSTILE("item one stripe short", G, size_ -= sizeof(struct bf_stripe));
	HOSTILE("item one stripe long", G, size_ += sizeof(struct bf_stripe));
	HOSTILE("item shorter than a chunk", G, size_ = 40);
	HOSTILE("length 0", G, put64(&c_->length, 0));
	HOSTILE("length not sector aligned", G, put64(&c_->length, G.length + 512));
	HOSTILE("logical not sector aligned", G, logical_ += 512);
	HOSTILE("logical + length overflows", G, logical_ = UINT64_MAX - SECT + 1);
	HOSTILE("length too large", G, put64(&c_->length, (uint64_t)UINT32_MAX * SL));
	HOSTILE("stripe_len 32 KiB", G, put64(&c_->stripe_len, SL / 2));
	HOSTILE("stripe_len 3", G, put64(&c_->stripe_len, 3));
	HOSTILE("sector size 512", G, put32(&c_->sector_size, 512));
	HOSTILE("two profile bits", G, put64(&c_->type, G.type | BF_BLOCK_GROUP_RAID0));
	HOSTILE("no type bit", G, put64(&c_->type, R1));
	HOSTILE("unknown type bit", G, put64(&c_->type, G.type | (1ull << 20)));
	HOSTILE("system and data", G, put64(&c_->type, G.type | BF_BLOCK_GROUP_SYSTEM));
	HOSTILE("stripe offset + length overflows", G, {
		struct bf_stripe *st = (void *)(item + offsetof(struct bf_chunk, stripe) + sizeof(struct bf_stripe));
		put64(&st->offset, UINT64_MAX - SECT);
	});
	HOSTILE("stripe uuid differs from its device's", G, {
		struct bf_stripe *st = (void *)(item + offsetof(struct bf_chunk, stripe));
		st->dev_uuid[5] ^= 1;
	});
	struct spec first = spec_make("", R1, 2);
	HOSTILE("overlap with the end of a chunk", G, logical_ = first.logical + first.length - SECT);
	HOSTILE("overlap with the start of a chunk", G, logical_ = first.logical - G.length + SECT);
	HOSTILE("inside a chunk", G, { logical_ = first.logical + SECT; put64(&c_->length, SECT); });
	HOSTILE("around a chunk", G, { logical_ = first.logical - SECT; put64(&c_->length, first.length + 2 * SECT); });
	HOSTILE("same start, other length", G, { logical_ = first.logical; put64(&c_->length, SECT); });
#undef G
	CHECK(add_spec(&v, &first, err, sizeof(err)) == 0, "identical duplicate chunk rejected: %s", err);
	CHECK(add_spec(&v, &good, err, sizeof(err)) == 0, "chunk after the first rejected: %s", err);
	CHECK(v.nchunks == 2, "%zu chunks in the map, expected 2", v.nchunks);
	CHECK(bf_vol_find_chunk(&v, first.logical + first.length - 1) == v.chunks[0] &&
		      bf_vol_find_chunk(&v, first.logical + first.length) == NULL &&
		      bf_vol_find_chunk(&v, good.logical) == v.chunks[1] && bf_vol_find_chunk(&v, 0) == NULL,
	      "bf_vol_find_chunk boundaries");
	bf_vol_destroy(&v);
}

/* One record (key, chunk item) of a system chunk array; returns its size. */
static size_t sys_record(uint8_t *p, const struct spec *s)
{
	struct bf_disk_key *k = (void *)p;
	put64(&k->objectid, BF_FIRST_CHUNK_TREE_OBJECTID);
	k->type = BF_CHUNK_ITEM_KEY;
	put64(&k->offset, s->logical);
	return sizeof(*k) + chunk_item(s, p + sizeof(*k));
}

static void test_sys_array(void)
{
	struct bf_super *sb = calloc(1, sizeof(*sb));
	struct spec a = spec_make("sys RAID1", BF_BLOCK_GROUP_RAID1, 2), b = spec_make("sys single", 0, 1);
	a.type = BF_BLOCK_GROUP_SYSTEM | BF_BLOCK_GROUP_RAID1;
	b.type = BF_BLOCK_GROUP_SYSTEM;
	b.logical = a.logical + a.length;
	uint8_t *arr = sb->sys_chunk_array;
	size_t la = sys_record(arr, &a), lb = sys_record(arr + la, &b);
	struct bf_volume v;
	char err[256];
	static const struct {
		const char *what;
		long size_delta; /* from la + lb, or an absolute size if absolute */
		bool absolute;
		int poke; /* 1: key type, 2: not a system chunk, 3: num_stripes 60, 4: num_stripes 0 */
	} cases[] = {
		{ "valid", 0, false, 0 },
		{ "size 2049", 2049, true, 0 },
		{ "size 0", 0, true, 0 },
		{ "last record cut short", -1, false, 0 },
		{ "record cut inside its key", 10, true, 0 },
		{ "record cut inside its chunk", 17 + 50, true, 0 },
		{ "key type not CHUNK_ITEM", 0, false, 1 },
		{ "chunk not SYSTEM", 0, false, 2 },
		{ "num_stripes runs past the array", 0, false, 3 },
		{ "num_stripes 0", 0, false, 4 },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint8_t saved[sizeof(sb->sys_chunk_array)];
		memcpy(saved, arr, sizeof(saved));
		struct bf_chunk *c = (void *)(arr + sizeof(struct bf_disk_key));
		long size = cases[i].absolute ? cases[i].size_delta : (long)(la + lb) + cases[i].size_delta;
		put32(&sb->sys_chunk_array_size, (uint32_t)size);
		if (cases[i].poke == 1)
			arr[offsetof(struct bf_disk_key, type)] = BF_DEV_ITEM_KEY;
		if (cases[i].poke == 2)
			put64(&c->type, BF_BLOCK_GROUP_METADATA | BF_BLOCK_GROUP_RAID1);
		if (cases[i].poke == 3)
			put16(&c->num_stripes, 60);
		if (cases[i].poke == 4)
			put16(&c->num_stripes, 0);
		bf_vol_init(&v, FSID, SECT, 2);
		err[0] = 0;
		int ret = bf_vol_load_sys_chunks(&v, sb, err, sizeof(err));
		if (i == 0) {
			const struct bf_chunk_map *m = bf_vol_find_chunk(&v, a.logical);
			CHECK(ret == 0 && v.nchunks == 2 && m && m->num_stripes == 2 && m->stripes[1].physical == a.phys[1],
			      "valid system chunk array: %d %s", ret, err);
		} else {
			CHECK(ret == -EUCLEAN && err[0], "system chunk array, %s: not rejected (%d)", cases[i].what, ret);
			if (verbose)
				printf("  rejected %s: %s\n", cases[i].what, err);
		}
		bf_vol_destroy(&v);
		memcpy(arr, saved, sizeof(saved));
	}
	free(sb);
}

/* ================= devices: open, lock, bounds, registration ================= */

static void test_devices(void)
{
	struct fix f;
	char err[256];
	int fd, fd2;
	uint64_t size;
	uint8_t buf[8192], uuid[BF_UUID_SIZE];
	struct bf_dev_item di;
	if (!fix_create(&f, 3))
		return;
	CHECK(bf_plat_open(f.path[0], false, &fd, &size, err, sizeof(err)) == 0 && size == DEV_SIZE, "open: %s", err);
	CHECK(bf_plat_open(f.path[0], false, &fd2, &size, err, sizeof(err)) == -EBUSY && strstr(err, f.path[0]) &&
		      strstr(err, "in use"),
	      "second open of a locked image: '%s'", err);
	CHECK(bf_plat_open("/nonexistent/img", false, &fd2, &size, err, sizeof(err)) == -ENOENT &&
		      strstr(err, "/nonexistent/img"),
	      "open of a missing path: '%s'", err);
	CHECK(bf_plat_open("/tmp", false, &fd2, &size, err, sizeof(err)) == -EINVAL, "open of a directory: '%s'", err);

	struct bf_volume v;
	bf_vol_init(&v, FSID, SECT, 2);
	dev_item_of(&di, 1);
	CHECK(bf_vol_add_device(&v, f.path[0], fd, size, &di, 5, err, sizeof(err)) == 0, "add device: %s", err);
	struct bf_device *d = bf_vol_find_device(&v, 1);
	CHECK(d && d->fd == fd && !d->writable && d->total_bytes == DEV_SIZE && d->generation == 5 &&
		      !strcmp(d->path, f.path[0]),
	      "device 1 fields");
	CHECK(bf_dev_pread(d, buf, 4096, DEV_SIZE - 4096) == 0, "read of the last 4 KiB");
	CHECK(bf_dev_pread(d, buf, 4096, DEV_SIZE - 4095) == -EIO, "read past the end accepted");
	CHECK(bf_dev_pread(d, buf, 100, UINT64_MAX - 10) == -EIO, "read at an overflowing address accepted");
	CHECK(bf_dev_pwrite(d, buf, 10, 0) == -EIO, "write to a read-only device accepted");

	CHECK(bf_plat_open(f.path[1], true, &fd2, &size, err, sizeof(err)) == 0, "open rw: %s", err);
	CHECK(bf_vol_add_device(&v, f.path[1], fd2, size, &di, 5, err, sizeof(err)) == -EEXIST &&
		      strstr(err, "devid 1"),
	      "duplicate devid: '%s'", err);
	CHECK(fcntl(fd2, F_GETFD) >= 0, "the rejected device's fd was closed; the caller still owns it");
	close(fd2);
	CHECK(bf_plat_open(f.path[1], true, &fd2, &size, err, sizeof(err)) == 0, "reopen: %s", err);
	dev_item_of(&di, 2);
	CHECK(bf_vol_add_device(&v, f.path[1], fd2, size, &di, 5, err, sizeof(err)) == 0, "add device 2: %s", err);
	d = bf_vol_find_device(&v, 2);
	fill_random(buf, sizeof(buf));
	uint8_t back[8192];
	CHECK(d && d->writable && bf_dev_pwrite(d, buf, sizeof(buf), 12345) == 0 &&
		      bf_dev_pread(d, back, sizeof(back), 12345) == 0 && !memcmp(buf, back, sizeof(buf)) &&
		      bf_dev_flush(d) == 0,
	      "write, read back and flush on device 2");

	uuid_of(9, uuid);
	struct bf_device *m = bf_vol_add_missing(&v, 9, uuid);
	CHECK(m && m->fd == -1 && !m->path && bf_vol_add_missing(&v, 9, uuid) == m, "missing placeholder");
	CHECK(m && bf_dev_pread(m, buf, 10, 0) == -EIO, "read from a missing device");
	CHECK(v.ndevs == 3 && v.devs[0]->devid == 1 && v.devs[2]->devid == 9, "device list not sorted by devid");
	dev_item_of(&di, 9);
	di.uuid[3] ^= 1;
	CHECK(bf_plat_open(f.path[2], false, &fd2, &size, err, sizeof(err)) == 0, "open: %s", err);
	CHECK(bf_vol_add_device(&v, f.path[2], fd2, size, &di, 5, err, sizeof(err)) == -EUCLEAN,
	      "device with another uuid than the chunks name: '%s'", err);
	close(fd2);
	CHECK(bf_vol_resolve_devices(&v, false, err, sizeof(err)) == -ENODEV && strstr(err, "devid 9"),
	      "missing devid 9 not reported: '%s'", err);
	dev_item_of(&di, 9);
	CHECK(bf_plat_open(f.path[2], false, &fd2, &size, err, sizeof(err)) == 0, "reopen: %s", err);
	CHECK(bf_vol_add_device(&v, f.path[2], fd2, size, &di, 5, err, sizeof(err)) == 0 && m->fd == fd2,
	      "placeholder not filled in: %s", err);
	bf_vol_destroy(&v);

	/* a device no chunk names is still missing */
	struct spec s = spec_make("RAID1", BF_BLOCK_GROUP_RAID1, 2);
	f.n = 2;
	CHECK(fix_open(&f, 0) == 0 && add_spec(&f.v, &s, err, sizeof(err)) == 0, "open: %s", err);
	f.v.num_devices = 3;
	CHECK(bf_vol_resolve_devices(&f.v, false, err, sizeof(err)) == -ENODEV &&
		      strstr(err, "missing device(s): expected 3 devices, 2 given"),
	      "unnamed missing device: '%s'", err);
	CHECK(bf_vol_resolve_devices(&f.v, true, err, sizeof(err)) == 0, "degraded: '%s'", err);
	bf_vol_destroy(&f.v);
	f.n = 3;
	fix_remove(&f);
}

static void test_names(void)
{
	static const struct {
		uint64_t type;
		const char *profile, *kind;
	} t[] = {
		{ BF_BLOCK_GROUP_DATA, "single", "data" },
		{ BF_BLOCK_GROUP_METADATA | BF_BLOCK_GROUP_DUP, "DUP", "metadata" },
		{ BF_BLOCK_GROUP_SYSTEM | BF_BLOCK_GROUP_RAID1, "RAID1", "system" },
		{ BF_BLOCK_GROUP_DATA | BF_BLOCK_GROUP_METADATA | BF_BLOCK_GROUP_RAID0, "RAID0", "data+metadata" },
		{ BF_BLOCK_GROUP_DATA | BF_BLOCK_GROUP_RAID10, "RAID10", "data" },
		{ BF_BLOCK_GROUP_DATA | BF_BLOCK_GROUP_RAID5, "RAID5", "data" },
		{ BF_BLOCK_GROUP_DATA | BF_BLOCK_GROUP_RAID6, "RAID6", "data" },
		{ BF_BLOCK_GROUP_DATA | BF_BLOCK_GROUP_RAID1C3, "RAID1C3", "data" },
		{ BF_BLOCK_GROUP_DATA | BF_BLOCK_GROUP_RAID1C4, "RAID1C4", "data" },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		CHECK(!strcmp(bf_profile_name(t[i].type), t[i].profile) && !strcmp(bf_bg_type_name(t[i].type), t[i].kind),
		      "names of 0x%" PRIx64 ": %s %s", t[i].type, bf_profile_name(t[i].type), bf_bg_type_name(t[i].type));
}

/* ================= real images: mkfs.btrfs + kernel mount, read back through alloc/ ================= */
#ifdef __linux__
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <stdarg.h>
#include <sys/ioctl.h>

#define IMG_FILES 2
#define IMG_DEVS 5

struct extent {
	int file;
	uint64_t file_off, logical, len;
};

struct img {
	const char *name;
	int n;
	const char *mkfs;
	uint64_t data_profile, meta_profile;
	unsigned tolerate; /* devices that may be missing */
	/* filled in by img_build */
	char dir[64], path[IMG_DEVS][96], loop[IMG_DEVS][32];
	uint8_t *data[IMG_FILES];
	size_t size[IMG_FILES];
	struct extent ext[64];
	int next;
};

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
	char cmd[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	int st = system(cmd);
	return st == -1 ? -1 : WEXITSTATUS(st);
}

/* Record the file's extents (FIEMAP's "physical" is the btrfs logical address). */
static bool img_fiemap(struct img *im, int fd, int file)
{
	size_t sz = sizeof(struct fiemap) + 64 * sizeof(struct fiemap_extent);
	struct fiemap *fm = calloc(1, sz);
	fm->fm_length = FIEMAP_MAX_OFFSET;
	fm->fm_flags = FIEMAP_FLAG_SYNC;
	fm->fm_extent_count = 64;
	bool ok = ioctl(fd, FS_IOC_FIEMAP, fm) == 0;
	for (unsigned i = 0; ok && i < fm->fm_mapped_extents && im->next < 64; i++) {
		const struct fiemap_extent *e = &fm->fm_extents[i];
		if (e->fe_flags & (FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_ENCODED | FIEMAP_EXTENT_DATA_INLINE |
				   FIEMAP_EXTENT_NOT_ALIGNED | FIEMAP_EXTENT_DELALLOC))
			continue;
		im->ext[im->next++] = (struct extent){ file, e->fe_logical, e->fe_physical, e->fe_length };
	}
	free(fm);
	return ok;
}

/* Write the test files through the kernel mount at mnt. */
static bool img_fill(struct img *im, const char *mnt)
{
	static const size_t sizes[IMG_FILES] = { (3u << 20) + 777, (300u << 10) + 5 };
	for (int i = 0; i < IMG_FILES; i++) {
		char p[160];
		snprintf(p, sizeof(p), "%s/f%d", mnt, i);
		im->size[i] = sizes[i];
		im->data[i] = malloc(sizes[i]);
		fill_random(im->data[i], sizes[i]);
		int fd = open(p, O_CREAT | O_TRUNC | O_WRONLY, 0644);
		bool ok = fd >= 0 && write(fd, im->data[i], sizes[i]) == (ssize_t)sizes[i] && fsync(fd) == 0 &&
			  img_fiemap(im, fd, i);
		if (fd >= 0)
			close(fd);
		if (!ok)
			return false;
	}
	return true;
}

static void img_detach(struct img *im)
{
	for (int i = 0; i < im->n; i++)
		if (im->loop[i][0])
			sh("losetup -d %s", im->loop[i]);
}

/* A mounted block device is refused (O_EXCL); an unmounted one opens with its BLKGETSIZE64 size. */
static void img_check_blockdev(const char *loop, bool mounted)
{
	char err[256] = "";
	int fd = -1;
	uint64_t size = 0;
	int ret = bf_plat_open(loop, false, &fd, &size, err, sizeof(err));
	if (mounted)
		CHECK(ret == -EBUSY && strstr(err, loop) && strstr(err, "unmount it first"), "mounted %s: %d '%s'",
		      loop, ret, err);
	else
		CHECK(ret == 0 && size == (300u << 20), "unmounted %s: %d '%s' size %" PRIu64, loop, ret, err, size);
	if (ret == 0)
		close(fd);
}

/* mkfs over n sparse files, attach loop devices, mount, write, unmount, detach. */
static bool img_build(struct img *im)
{
	char devs[IMG_DEVS * 100] = "", opts[IMG_DEVS * 40] = "", mnt[96];
	snprintf(im->dir, sizeof(im->dir), "/tmp/test_alloc_img.XXXXXX");
	if (!mkdtemp(im->dir))
		return false;
	snprintf(mnt, sizeof(mnt), "%s/mnt", im->dir);
	mkdir(mnt, 0755);
	for (int i = 0; i < im->n; i++) {
		snprintf(im->path[i], sizeof(im->path[i]), "%s/d%d.img", im->dir, i);
		int fd = open(im->path[i], O_CREAT | O_WRONLY, 0644);
		if (fd < 0 || ftruncate(fd, 300 << 20) < 0)
			return false;
		close(fd);
		strcat(devs, " ");
		strcat(devs, im->path[i]);
	}
	if (sh("mkfs.btrfs -q -f %s %s >/dev/null 2>&1", im->mkfs, devs)) {
		printf("  mkfs.btrfs %s failed\n", im->mkfs);
		return false;
	}
	for (int i = 0; i < im->n; i++) {
		char cmd[160];
		snprintf(cmd, sizeof(cmd), "losetup -f --show %s", im->path[i]);
		FILE *p = popen(cmd, "r");
		if (!p || !fgets(im->loop[i], sizeof(im->loop[i]), p))
			im->loop[i][0] = 0;
		if (p)
			pclose(p);
		im->loop[i][strcspn(im->loop[i], "\n")] = 0;
		if (!im->loop[i][0])
			return img_detach(im), false;
		if (i)
			snprintf(opts + strlen(opts), sizeof(opts) - strlen(opts), "%sdevice=%s", i > 1 ? "," : "",
				 im->loop[i]);
	}
	if (sh("mount -t btrfs %s%s %s %s", im->n > 1 ? "-o " : "", opts, im->loop[0], mnt)) {
		printf("  kernel mount of %s failed\n", im->name);
		return img_detach(im), false;
	}
	bool ok = img_fill(im, mnt);
	img_check_blockdev(im->loop[0], true);
	ok &= sh("umount %s", mnt) == 0;
	img_check_blockdev(im->loop[0], false);
	img_detach(im);
	return ok;
}

static void img_remove(struct img *im)
{
	for (int i = 0; i < im->n; i++)
		unlink(im->path[i]);
	char mnt[96];
	snprintf(mnt, sizeof(mnt), "%s/mnt", im->dir);
	rmdir(mnt);
	rmdir(im->dir);
	for (int i = 0; i < IMG_FILES; i++)
		free(im->data[i]);
}

/* Read with the first mirror that works, as callers do. */
static int read_any(struct bf_volume *v, uint64_t logical, void *buf, size_t len)
{
	int ret = -EIO;
	for (int m = 1; ret && m <= bf_vol_num_copies(v, logical); m++)
		ret = bf_vol_read(v, logical, buf, len, m);
	return ret;
}

/* Add the chunk items of the chunk tree's root leaf (small test filesystems have a one-leaf chunk tree). */
static int load_chunk_leaf(struct bf_volume *v, const struct bf_super *sb, char *err, size_t errlen)
{
	uint32_t nodesize = get32(sb->nodesize);
	uint8_t *leaf = malloc(nodesize);
	int ret = read_any(v, get64(sb->chunk_root), leaf, nodesize);
	const struct bf_header *h = (const void *)leaf;
	if (ret)
		bf_err(err, errlen, ret, "cannot read the chunk tree root at %" PRIu64, get64(sb->chunk_root));
	else if ((h->level != 0 || get64(h->bytenr) != get64(sb->chunk_root)))
		ret = bf_err(err, errlen, -EIO, "chunk root is not a leaf at its bytenr (level %u)", h->level);
	uint32_t n = ret ? 0 : get32(h->nritems);
	for (uint32_t i = 0; i < n && !ret; i++) {
		const struct bf_item *it = (const void *)(leaf + sizeof(*h) + i * sizeof(*it));
		uint32_t off = get32(it->offset), size = get32(it->size);
		if ((const uint8_t *)(it + 1) > leaf + nodesize || !bf_range_ok(sizeof(*h) + (uint64_t)off, size, nodesize))
			ret = bf_err(err, errlen, -EIO, "chunk leaf item %u out of bounds", i);
		else if (it->key.type == BF_CHUNK_ITEM_KEY)
			ret = bf_vol_add_chunk(v, get64(it->key.offset), (const void *)(leaf + sizeof(*h) + off), size,
					       err, errlen);
	}
	free(leaf);
	return ret;
}

/* Open the image's files (less those in skip) the way the journal layer does: superblocks, devices, system
   chunks, chunk tree, resolve. */
static int img_open(struct img *im, struct bf_volume *v, unsigned skip, bool degraded, char *err, size_t errlen)
{
	struct bf_super *sb = malloc(sizeof(*sb)), *first = NULL;
	int ret = 0;
	for (int i = 0; i < im->n && !ret; i++) {
		int fd;
		uint64_t size;
		if (skip & (1u << i))
			continue;
		ret = bf_plat_open(im->path[i], false, &fd, &size, err, errlen);
		if (ret)
			break;
		if (pread(fd, sb, sizeof(*sb), BF_SUPER_INFO_OFFSET) != sizeof(*sb) || get64(sb->magic) != BF_MAGIC) {
			close(fd);
			ret = bf_err(err, errlen, -EIO, "no superblock on %s", im->path[i]);
			break;
		}
		if (!first) {
			first = malloc(sizeof(*first));
			*first = *sb;
			bf_vol_init(v, sb->fsid, get32(sb->sectorsize), get64(sb->num_devices));
		}
		ret = bf_vol_add_device(v, im->path[i], fd, size, &sb->dev_item, get64(sb->generation), err, errlen);
		if (ret)
			close(fd);
	}
	if (!ret && first)
		ret = bf_vol_load_sys_chunks(v, first, err, errlen);
	if (!ret && first)
		ret = load_chunk_leaf(v, first, err, errlen);
	if (!ret && first)
		ret = bf_vol_resolve_devices(v, degraded, err, errlen);
	if (!first)
		bf_vol_init(v, FSID, SECT, 0);
	free(sb);
	free(first);
	return ret;
}

enum read_mode { ALL_MIRRORS, MIRROR_1, ANY_MIRROR };

/* Every extent of the test files read with each mirror, with mirror 1 only, or with the first that works. */
static unsigned img_check_extents(struct img *im, struct bf_volume *v, enum read_mode mode)
{
	unsigned bad = 0;
	for (int e = 0; e < im->next; e++) {
		const struct extent *x = &im->ext[e];
		uint64_t len = bf_min64(x->len, im->size[x->file] - x->file_off);
		uint8_t *buf = malloc(len);
		int copies = mode == ALL_MIRRORS ? bf_vol_num_copies(v, x->logical) : 1;
		for (int m = 1; m <= copies; m++) {
			int ret = mode == ANY_MIRROR ? read_any(v, x->logical, buf, len)
						     : bf_vol_read(v, x->logical, buf, len, m);
			if (ret || memcmp(buf, im->data[x->file] + x->file_off, len)) {
				if (bad++ < 3)
					printf("  %s: extent at %" PRIu64 " (%" PRIu64 " bytes) mirror %d: %s\n", im->name,
					       x->logical, len, m, ret ? strerror(-ret) : "wrong data");
			}
		}
		free(buf);
	}
	return bad;
}

static void img_check_profiles(struct img *im, struct bf_volume *v)
{
	bool data = false, meta = false;
	for (size_t i = 0; i < v->nchunks; i++) {
		const struct bf_chunk_map *c = v->chunks[i];
		data |= (c->type & BF_BLOCK_GROUP_DATA) && (c->type & P_MASK) == im->data_profile;
		meta |= (c->type & BF_BLOCK_GROUP_METADATA) && (c->type & P_MASK) == im->meta_profile;
	}
	CHECK(data && meta, "%s: no data chunk of profile %s or metadata chunk of profile %s", im->name,
	      bf_profile_name(im->data_profile), bf_profile_name(im->meta_profile));
}

static void img_test(struct img *im)
{
	struct bf_volume v;
	char err[256] = "";
	if (!img_build(im)) {
		CHECK(0, "%s: could not build the image", im->name);
		img_remove(im);
		return;
	}
	CHECK(im->next > 0, "%s: FIEMAP found no extents", im->name);
	int ret = img_open(im, &v, 0, false, err, sizeof(err));
	CHECK(ret == 0, "%s: open: %s", im->name, err);
	if (!ret) {
		img_check_profiles(im, &v);
		unsigned bad = img_check_extents(im, &v, ALL_MIRRORS);
		CHECK(bad == 0, "%s: %u extent reads differ from the files", im->name, bad);
	}
	bf_vol_destroy(&v);
	for (unsigned skip = 1; skip < (1u << im->n); skip++) { /* degraded: up to tolerate + 1 missing */
		unsigned n = (unsigned)__builtin_popcount(skip);
		if (n > im->tolerate + 1 || n == (unsigned)im->n)
			continue;
		err[0] = 0;
		ret = img_open(im, &v, skip, false, err, sizeof(err));
		CHECK(ret != 0 && (strstr(err, "missing device(s): devid") ||
				   (n > im->tolerate && strstr(err, "cannot read the chunk tree root"))),
		      "%s without 0x%x: not refused: '%s'", im->name, skip, err);
		ret = bf_vol_resolve_devices(&v, true, err, sizeof(err));
		/* RAID10 may survive one more loss if it hits another pair; whatever is accepted must read right */
		bool maybe = im->data_profile == BF_BLOCK_GROUP_RAID10;
		if (n > im->tolerate && !(maybe && ret == 0)) {
			CHECK(ret != 0 && strstr(err, "chunk at logical"), "%s without 0x%x: degraded accepted",
			      im->name, skip);
		} else {
			CHECK(ret == 0, "%s without 0x%x: degraded: %s", im->name, skip, err);
			bool raid56 = im->data_profile & BF_BLOCK_GROUP_RAID56_MASK; /* mirror 1 rebuilds by itself */
			unsigned bad = img_check_extents(im, &v, raid56 ? MIRROR_1 : ANY_MIRROR);
			CHECK(bad == 0, "%s without devices 0x%x: %u extent reads differ", im->name, skip, bad);
		}
		if (verbose)
			printf("  %s without 0x%x, degraded: %s\n", im->name, skip, ret ? err : "ok");
		bf_vol_destroy(&v);
	}
	img_remove(im);
}

static void test_real_images(void)
{
#define IMG(nm, nd, args, dp, mp, tol)                                                                     \
	{ .name = nm, .n = nd, .mkfs = args, .data_profile = dp, .meta_profile = mp, .tolerate = tol }
	static struct img imgs[] = {
		IMG("raid1 metadata, raid0 data, 2 devices", 2, "-m raid1 -d raid0", BF_BLOCK_GROUP_RAID0,
		    BF_BLOCK_GROUP_RAID1, 0),
		IMG("raid5, 3 devices", 3, "-m raid5 -d raid5", BF_BLOCK_GROUP_RAID5, BF_BLOCK_GROUP_RAID5, 1),
		IMG("raid6, 4 devices", 4, "-m raid6 -d raid6", BF_BLOCK_GROUP_RAID6, BF_BLOCK_GROUP_RAID6, 2),
		IMG("raid1c4 metadata, raid6 data, 5 devices", 5, "-m raid1c4 -d raid6", BF_BLOCK_GROUP_RAID6,
		    BF_BLOCK_GROUP_RAID1C4, 2),
		IMG("raid1c3 metadata, raid10 data, 4 devices", 4, "-m raid1c3 -d raid10", BF_BLOCK_GROUP_RAID10,
		    BF_BLOCK_GROUP_RAID1C3, 1),
		IMG("dup metadata, single data", 1, "-m dup -d single", 0, BF_BLOCK_GROUP_DUP, 0),
	};
#undef IMG
	if (geteuid() != 0 || sh("command -v mkfs.btrfs >/dev/null && command -v losetup >/dev/null") ||
	    sh("grep -qw btrfs /proc/filesystems || modprobe btrfs 2>/dev/null")) {
		printf("SKIP real images: needs root, mkfs.btrfs, losetup and kernel btrfs\n");
		return;
	}
	for (size_t i = 0; i < sizeof(imgs) / sizeof(imgs[0]); i++)
		img_test(&imgs[i]);
}
#else
static void test_real_images(void) { printf("SKIP real images: Linux only\n"); }
#endif

int main(int argc, char **argv)
{
	check_seed = argc > 1 ? strtoull(argv[1], NULL, 0) : (uint64_t)time(NULL);
	verbose = getenv("TEST_VERBOSE") != NULL;
	rng_state = check_seed;
	printf("test_alloc: seed %" PRIu64 "\n", check_seed);
	bf_log_set_verbosity(verbose ? BF_LOG_DEBUG : (enum bf_log_level)0);

	test_names();
	test_devices();
	test_hostile_chunks();
	test_sys_array();
	static const struct {
		uint64_t profile;
		unsigned ns;
	} plain[] = {
		{ 0, 1 },
		{ BF_BLOCK_GROUP_DUP, 2 },
		{ BF_BLOCK_GROUP_RAID0, 1 },
		{ BF_BLOCK_GROUP_RAID0, 3 },
		{ BF_BLOCK_GROUP_RAID1, 2 },
		{ BF_BLOCK_GROUP_RAID1C3, 3 },
		{ BF_BLOCK_GROUP_RAID1C4, 4 },
		{ BF_BLOCK_GROUP_RAID10, 2 },
		{ BF_BLOCK_GROUP_RAID10, 4 },
		{ BF_BLOCK_GROUP_RAID10, 6 },
	}, parity[] = {
		{ BF_BLOCK_GROUP_RAID5, 2 }, { BF_BLOCK_GROUP_RAID5, 3 }, { BF_BLOCK_GROUP_RAID5, 5 },
		{ BF_BLOCK_GROUP_RAID6, 3 }, { BF_BLOCK_GROUP_RAID6, 4 }, { BF_BLOCK_GROUP_RAID6, 6 },
	};
	for (size_t i = 0; i < sizeof(plain) / sizeof(plain[0]); i++) {
		char name[32];
		snprintf(name, sizeof(name), "%s x%u", bf_profile_name(plain[i].profile), plain[i].ns);
		test_profile(plain[i].profile, plain[i].ns, name);
	}
	for (size_t i = 0; i < sizeof(parity) / sizeof(parity[0]); i++) {
		char name[32];
		snprintf(name, sizeof(name), "%s x%u", bf_profile_name(parity[i].profile), parity[i].ns);
		test_raid56(parity[i].profile, parity[i].ns, name);
	}
	test_degraded_mirrors();
	test_real_images();

	return check_summary();
}
