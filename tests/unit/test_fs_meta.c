/*
 * tests/unit/test_fs_meta.c - the metadata side of fs/ against the Linux kernel, on real images.
 *
 * Owns: building btrfs images in /tmp with mkfs.btrfs and a kernel mount (files, a 3000-entry directory, hard
 * links, symlinks, devices, a fifo and a socket, xattrs of every namespace with a hash collision, names with a
 * hash collision, subvolumes, a nested subvolume, a snapshot, a deleted subvolume, set-default), recording
 * what the kernel shows (lstat, readdir order, readlink, listxattr/getxattr, statvfs) on a read-only mount,
 * then opening the unmounted image with bf_fs_open and checking lookup, getattr, readdir (plain and plus,
 * resumed at every offset), readlink, xattrs and statfs against it; subvol=, subvolid= and the default
 * subvolume; the node id mapping; errors; concurrent lookups. statfs is also checked on mixed, DUP, RAID1,
 * RAID0 (unequal devices) and partly converted (single + RAID1) images. Corrupted item payloads (re-checksummed
 * so they pass block validation) must give -EUCLEAN and one log line; a seeded fuzz loop corrupts random item
 * bytes and walks everything (pass a seed as argv[1] to replay; the seed is printed).
 * Needs root, mkfs.btrfs, btrfs, losetup and kernel btrfs; without them it says so and reports 0 checks.
 * Ends with "N passed, N failed"; exit 0 only if none failed.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "btree/csum.h"
#include "fs/fs.h"
#include "fs/internal.h"
#include "util/util.h"
#include "tests/unit/check.h"



/* ================= shell helpers and cleanup ================= */

#define MAX_DEVS 4
static char g_dir[64];
static char g_mnt[128];
static char g_loops[MAX_DEVS][128];
static int g_nloops;
static int g_mounted;

static int vsh(char *out, size_t outlen, const char *fmt, va_list ap)
{
	char cmd[4096];
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	FILE *p = popen(cmd, "r");
	if (!p)
		return -1;
	size_t n = 0;
	char tmp[512];
	size_t got;
	while ((got = fread(tmp, 1, sizeof(tmp), p)) > 0)
		for (size_t i = 0; i < got && out && n + 1 < outlen; i++)
			out[n++] = tmp[i];
	if (out && outlen)
		out[n] = '\0';
	int st = pclose(p);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Run a shell command (stdout captured into out if given, stderr to the terminal); returns its exit status. */
static int sh(char *out, size_t outlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int sh(char *out, size_t outlen, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int r = vsh(out, outlen, fmt, ap);
	va_end(ap);
	return r;
}

static void unmount_all(void)
{
	if (g_mounted)
		sh(NULL, 0, "umount %s", g_mnt);
	g_mounted = 0;
	for (int i = 0; i < g_nloops; i++) {
		sh(NULL, 0, "btrfs device scan --forget %s >/dev/null 2>&1", g_loops[i]);
		sh(NULL, 0, "losetup -d %s", g_loops[i]);
	}
	g_nloops = 0;
}

static void cleanup(void)
{
	unmount_all();
	if (g_dir[0])
		sh(NULL, 0, "rm -rf %s", g_dir);
}

/* Attach images to loop devices and mount the first with the others as device= (options may be ""). */
static int mount_images(char **imgs, int n, const char *opts)
{
	char devopt[512] = "";
	for (int i = 0; i < n; i++) {
		char out[128];
		if (sh(out, sizeof(out), "losetup -f --show %s", imgs[i]) || !out[0])
			return -1;
		out[strcspn(out, "\n")] = '\0';
		snprintf(g_loops[g_nloops++], sizeof(g_loops[0]), "%s", out);
		if (i)
			snprintf(devopt + strlen(devopt), sizeof(devopt) - strlen(devopt), ",device=%s", out);
	}
	if (sh(NULL, 0, "mount -t btrfs -o noatime%s%s%s %s %s", devopt, *opts ? "," : "", opts,
	       g_loops[g_nloops - n], g_mnt))
		return -1;
	g_mounted = 1;
	return 0;
}

static int make_images(char **imgs, const char *const *sizes, int n, const char *mkfs_opts)
{
	char list[1024] = "";
	for (int i = 0; i < n; i++) {
		if (sh(NULL, 0, "truncate -s %s %s", sizes[i], imgs[i]))
			return -1;
		snprintf(list + strlen(list), sizeof(list) - strlen(list), " %s", imgs[i]);
	}
	return sh(NULL, 0, "mkfs.btrfs -q -f %s %s >/dev/null", mkfs_opts, list);
}

static int env_ok(void)
{
	if (geteuid() != 0) {
		printf("SKIP: needs root for loop mounts\n");
		return 0;
	}
	if (sh(NULL, 0, "command -v mkfs.btrfs >/dev/null && command -v btrfs >/dev/null && command -v losetup "
			  ">/dev/null")) {
		printf("SKIP: needs mkfs.btrfs, btrfs and losetup\n");
		return 0;
	}
	return 1;
}

/* ================= what the kernel shows ================= */

struct kx {
	char *name;
	char *value;
	ssize_t len;
};

struct krec {
	char *path; /* relative to the mount, "" for the root */
	struct stat st;
	uint64_t subvol;
	char link[4096];
	ssize_t linklen;
	char *xlist;
	ssize_t xlen;
	struct kx *xs;
	int nx;
	char **names; /* readdir order without . and .. */
	int nnames;
};

static struct krec *g_recs;
static size_t g_nrecs, g_caprecs;
static struct statvfs g_kstatvfs;

struct devmap {
	dev_t dev;
	uint64_t id;
};
static struct devmap g_devs[64];
static int g_ndevs;

static uint64_t subvol_of(const char *abs, dev_t dev)
{
	for (int i = 0; i < g_ndevs; i++)
		if (g_devs[i].dev == dev)
			return g_devs[i].id;
	char out[64];
	uint64_t id = 0;
	if (sh(out, sizeof(out), "btrfs inspect-internal rootid '%s'", abs) == 0)
		id = strtoull(out, NULL, 10);
	if (g_ndevs < 64)
		g_devs[g_ndevs++] = (struct devmap){ dev, id };
	return id;
}

static void record_xattrs(struct krec *k, const char *abs)
{
	k->xlen = llistxattr(abs, NULL, 0);
	if (k->xlen <= 0)
		return;
	k->xlist = malloc((size_t)k->xlen);
	k->xlen = llistxattr(abs, k->xlist, (size_t)k->xlen);
	for (ssize_t off = 0; off < k->xlen; off += (ssize_t)strlen(k->xlist + off) + 1) {
		struct kx x = { k->xlist + off, NULL, 0 };
		x.len = lgetxattr(abs, x.name, NULL, 0);
		x.value = malloc(x.len > 0 ? (size_t)x.len : 1);
		x.len = lgetxattr(abs, x.name, x.value, (size_t)(x.len > 0 ? x.len : 0));
		k->xs = realloc(k->xs, (size_t)(k->nx + 1) * sizeof(*k->xs));
		k->xs[k->nx++] = x;
	}
}

static void record(const char *rel, uint64_t parent_subvol)
{
	char abs[4096];
	snprintf(abs, sizeof(abs), "%s/%s", g_mnt, rel);
	if (g_nrecs == g_caprecs) {
		g_caprecs = g_caprecs ? g_caprecs * 2 : 1024;
		g_recs = realloc(g_recs, g_caprecs * sizeof(*g_recs));
	}
	size_t idx = g_nrecs++;
	struct krec *k = &g_recs[idx];
	memset(k, 0, sizeof(*k));
	k->path = strdup(rel);
	lstat(abs, &k->st);
	/* the kernel's placeholder directory has the superblock's st_dev; it belongs to its parent's subvolume */
	k->subvol = k->st.st_ino == 2 ? parent_subvol : subvol_of(abs, k->st.st_dev);
	k->linklen = S_ISLNK(k->st.st_mode) ? readlink(abs, k->link, sizeof(k->link)) : -1;
	record_xattrs(k, abs);
	if (!S_ISDIR(k->st.st_mode))
		return;
	DIR *d = opendir(abs);
	struct dirent *de;
	char **names = NULL;
	int n = 0;
	while (d && (de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		names = realloc(names, (size_t)(n + 1) * sizeof(*names));
		names[n++] = strdup(de->d_name);
	}
	if (d)
		closedir(d);
	g_recs[idx].names = names;
	g_recs[idx].nnames = n;
	uint64_t subvol = g_recs[idx].subvol;
	for (int i = 0; i < n; i++) {
		char child[4096];
		snprintf(child, sizeof(child), "%s%s%s", rel, *rel ? "/" : "", names[i]);
		record(child, subvol);
	}
}

static int cmp_rec(const void *a, const void *b)
{
	return strcmp(((const struct krec *)a)->path, ((const struct krec *)b)->path);
}

static const struct krec *find_rec(const char *path)
{
	struct krec key = { .path = (char *)path };
	return bsearch(&key, g_recs, g_nrecs, sizeof(*g_recs), cmp_rec);
}

static void free_recs(void)
{
	for (size_t i = 0; i < g_nrecs; i++) {
		struct krec *k = &g_recs[i];
		for (int j = 0; j < k->nx; j++)
			free(k->xs[j].value);
		for (int j = 0; j < k->nnames; j++)
			free(k->names[j]);
		free(k->xs);
		free(k->xlist);
		free(k->names);
		free(k->path);
	}
	free(g_recs);
	g_recs = NULL;
	g_nrecs = g_caprecs = 0;
	g_ndevs = 0;
}

/* ================= building the main image ================= */

/* Names whose btrfs name hashes collide (found by a birthday search; checked below). */
static const char *const COLL_FILE[2] = { "cxeocsopfvb", "cnbavbpygcx" };
static const char *const COLL_XATTR[2] = { "user.xvamvweatp", "user.ytzjfifcwe" };

static uint64_t g_sv1, g_nested, g_sv2, g_snap, g_gone, g_default;

static void put_file(const char *rel, const void *data, size_t len)
{
	char abs[4096];
	snprintf(abs, sizeof(abs), "%s/%s", g_mnt, rel);
	int fd = open(abs, O_CREAT | O_WRONLY | O_TRUNC, 0644);
	if (fd >= 0) {
		if (len && write(fd, data, len) != (ssize_t)len)
			perror(abs);
		close(fd);
	}
}

static void in_mnt(char *buf, size_t n, const char *rel) { snprintf(buf, n, "%s/%s", g_mnt, rel); }

static void put_files(void)
{
	char p[4096], q[4096];
	put_file("small", "hello\n", 6);
	static char big[300000];
	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = (char)(i * 7 + i / 251);
	put_file("big", big, sizeof(big));
	put_file("empty", "", 0);
	in_mnt(p, sizeof(p), "dir3000");
	mkdir(p, 0755);
	for (int i = 0; i < 3000; i++) {
		char rel[64];
		snprintf(rel, sizeof(rel), "dir3000/f%04d", i);
		put_file(rel, "", 0);
	}
	in_mnt(p, sizeof(p), "small");
	in_mnt(q, sizeof(q), "hardlink");
	link(p, q);
	in_mnt(q, sizeof(q), "dir3000/link_to_small");
	link(p, q);
	in_mnt(p, sizeof(p), "coll");
	mkdir(p, 0700);
	for (int i = 0; i < 2; i++) {
		char rel[64];
		snprintf(rel, sizeof(rel), "coll/%s", COLL_FILE[i]);
		put_file(rel, COLL_FILE[i], strlen(COLL_FILE[i]));
	}
}

static void put_specials(void)
{
	char p[4096], target[400];
	in_mnt(p, sizeof(p), "sym");
	symlink("small", p);
	memset(target, 'a', sizeof(target) - 1);
	target[sizeof(target) - 1] = '\0';
	for (size_t i = 9; i < sizeof(target) - 1; i += 10)
		target[i] = '/';
	in_mnt(p, sizeof(p), "symlong");
	symlink(target, p);
	in_mnt(p, sizeof(p), "symabs");
	symlink("/etc/passwd", p);
	in_mnt(p, sizeof(p), "chr");
	mknod(p, S_IFCHR | 0600, makedev(1, 3));
	in_mnt(p, sizeof(p), "blk");
	mknod(p, S_IFBLK | 0640, makedev(7, 0));
	in_mnt(p, sizeof(p), "bigdev");
	mknod(p, S_IFCHR | 0644, makedev(300, 70000));
	in_mnt(p, sizeof(p), "fifo");
	mkfifo(p, 0644);
	in_mnt(p, sizeof(p), "sock");
	mknod(p, S_IFSOCK | 0755, 0);
	put_file("perm", "x", 1);
	in_mnt(p, sizeof(p), "perm");
	chown(p, 1234, 5678);
	chmod(p, 04751);
	struct timespec ts[2] = { { 1000000000, 123456789 }, { 1234567890, 987654321 } };
	utimensat(AT_FDCWD, p, ts, AT_SYMLINK_NOFOLLOW);
}

static void put_xattrs(void)
{
	char p[4096];
	static char longval[2000];
	memset(longval, 'v', sizeof(longval));
	in_mnt(p, sizeof(p), "small");
	lsetxattr(p, "user.a", "1", 1, 0);
	lsetxattr(p, "user.long", longval, sizeof(longval), 0);
	lsetxattr(p, "user.empty", "", 0, 0);
	lsetxattr(p, "trusted.t", "tv", 2, 0);
	lsetxattr(p, "security.s", "sv", 2, 0);
	for (int i = 0; i < 2; i++)
		lsetxattr(p, COLL_XATTR[i], COLL_XATTR[i] + 5, 10, 0);
	sh(NULL, 0, "setfacl -m u:1000:r %s 2>/dev/null", p);
	sh(NULL, 0, "btrfs property set %s compression zstd", p);
	in_mnt(p, sizeof(p), "xdir");
	mkdir(p, 0755);
	for (int i = 0; i < 40; i++) {
		char name[32], val[32];
		snprintf(name, sizeof(name), "user.k%02d", i);
		snprintf(val, sizeof(val), "value-%d", i * i);
		lsetxattr(p, name, val, strlen(val), 0);
	}
	sh(NULL, 0, "setfacl -d -m u:1000:rx %s 2>/dev/null", p);
}

static uint64_t rootid(const char *rel)
{
	char out[64];
	return sh(out, sizeof(out), "btrfs inspect-internal rootid %s/%s", g_mnt, rel) ? 0 : strtoull(out, NULL, 10);
}

static int put_subvols(void)
{
	const char *m = g_mnt;
	int r = sh(NULL, 0, "btrfs -q subvolume create %s/sv1 && mkdir -p %s/sv1/d/e && echo f > %s/sv1/d/e/f && "
			    "echo a > %s/sv1/a && btrfs -q subvolume create %s/sv1/nested && echo in > "
			    "%s/sv1/nested/inner && mkdir %s/dir1 && btrfs -q subvolume create %s/dir1/sv2 && "
			    "echo x > %s/dir1/sv2/x && btrfs -q subvolume snapshot %s/sv1 %s/snap && "
			    "btrfs -q subvolume create %s/gone",
		   m, m, m, m, m, m, m, m, m, m, m, m);
	g_sv1 = rootid("sv1");
	g_nested = rootid("sv1/nested");
	g_sv2 = rootid("dir1/sv2");
	g_snap = rootid("snap");
	g_gone = rootid("gone");
	r = r ? r : sh(NULL, 0, "btrfs -q subvolume delete %s/gone >/dev/null", m);
	r = r ? r : sh(NULL, 0, "btrfs -q subvolume set-default %" PRIu64 " %s", g_sv1, m);
	return r;
}

static uint64_t parse_default(void)
{
	char out[256];
	if (sh(out, sizeof(out), "btrfs subvolume get-default %s", g_mnt))
		return 0;
	return strtoull(out + 3, NULL, 10); /* "ID 257 gen ..." */
}

/* ================= comparing our view with the kernel's ================= */

static struct bf_fs *g_fs;
static uint64_t g_mounted_subvol;

static uint64_t expect_ino(const struct krec *k)
{
	if (k->subvol == g_mounted_subvol)
		return (uint64_t)k->st.st_ino;
	return (k->subvol << 48) | (uint64_t)k->st.st_ino;
}

static int ts_eq(struct timespec a, struct timespec b) { return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec; }

static bool stat_eq(const struct stat *a, const struct stat *b)
{
	return a->st_ino == b->st_ino && a->st_mode == b->st_mode && a->st_nlink == b->st_nlink &&
	       a->st_uid == b->st_uid && a->st_gid == b->st_gid && a->st_rdev == b->st_rdev &&
	       a->st_size == b->st_size && a->st_blocks == b->st_blocks && a->st_blksize == b->st_blksize &&
	       ts_eq(a->st_atim, b->st_atim) && ts_eq(a->st_mtim, b->st_mtim) && ts_eq(a->st_ctim, b->st_ctim);
}

static void cmp_stat(const char *path, const struct stat *o, const struct krec *k)
{
	const struct stat *e = &k->st;
	bool placeholder = e->st_ino == 2;
	CHECK((uint64_t)o->st_ino == expect_ino(k), "%s: st_ino %" PRIx64 ", want %" PRIx64, path,
	      (uint64_t)o->st_ino, expect_ino(k));
	CHECK(o->st_mode == e->st_mode, "%s: mode 0%o, kernel 0%o", path, o->st_mode, e->st_mode);
	CHECK(o->st_nlink == e->st_nlink, "%s: nlink %lu, kernel %lu", path, (unsigned long)o->st_nlink,
	      (unsigned long)e->st_nlink);
	CHECK(o->st_uid == e->st_uid && o->st_gid == e->st_gid, "%s: owner %u:%u, kernel %u:%u", path, o->st_uid,
	      o->st_gid, e->st_uid, e->st_gid);
	CHECK(o->st_rdev == e->st_rdev, "%s: rdev %u:%u, kernel %u:%u", path, major(o->st_rdev), minor(o->st_rdev),
	      major(e->st_rdev), minor(e->st_rdev));
	CHECK(o->st_size == e->st_size, "%s: size %lld, kernel %lld", path, (long long)o->st_size,
	      (long long)e->st_size);
	CHECK(o->st_blocks == e->st_blocks, "%s: blocks %lld, kernel %lld", path, (long long)o->st_blocks,
	      (long long)e->st_blocks);
	/* for block devices the VFS (bdev_statx) replaces st_blksize by the real device's, on FUSE too */
	CHECK(o->st_blksize == e->st_blksize || S_ISBLK(e->st_mode), "%s: blksize %ld, kernel %ld", path,
	      (long)o->st_blksize, (long)e->st_blksize);
	CHECK(ts_eq(o->st_atim, e->st_atim), "%s: atime %lld.%09ld, kernel %lld.%09ld", path,
	      (long long)o->st_atim.tv_sec, o->st_atim.tv_nsec, (long long)e->st_atim.tv_sec, e->st_atim.tv_nsec);
	if (placeholder) /* the kernel gives its placeholder directory the current time */
		return;
	CHECK(ts_eq(o->st_mtim, e->st_mtim) && ts_eq(o->st_ctim, e->st_ctim), "%s: mtime/ctime differ", path);
}

static void cmp_xattrs(const char *path, uint64_t nodeid, const struct krec *k)
{
	char buf[8192];
	ssize_t want = k->xlen < 0 ? 0 : k->xlen;
	ssize_t n = bf_fs_listxattr(g_fs, nodeid, NULL, 0);
	CHECK(n == want, "%s: listxattr size %zd, kernel %zd", path, n, want);
	n = bf_fs_listxattr(g_fs, nodeid, buf, sizeof(buf));
	CHECK(n == want && (!want || !memcmp(buf, k->xlist, (size_t)want)), "%s: listxattr names differ", path);
	if (want > 0)
		CHECK(bf_fs_listxattr(g_fs, nodeid, buf, (size_t)want - 1) == -ERANGE, "%s: short listxattr", path);
	for (int i = 0; i < k->nx; i++) {
		const struct kx *x = &k->xs[i];
		n = bf_fs_getxattr(g_fs, nodeid, x->name, NULL, 0);
		CHECK(n == x->len, "%s: getxattr %s size %zd, kernel %zd", path, x->name, n, x->len);
		n = bf_fs_getxattr(g_fs, nodeid, x->name, buf, sizeof(buf));
		CHECK(n == x->len && !memcmp(buf, x->value, (size_t)(n > 0 ? n : 0)), "%s: getxattr %s value", path,
		      x->name);
		if (x->len > 1)
			CHECK(bf_fs_getxattr(g_fs, nodeid, x->name, buf, (size_t)x->len - 1) == -ERANGE,
			      "%s: short getxattr %s", path, x->name);
	}
	if (k->st.st_ino != 2)
		CHECK(bf_fs_getxattr(g_fs, nodeid, "user.absent", buf, sizeof(buf)) == -ENODATA,
		      "%s: absent xattr", path);
}

static void cmp_link(const char *path, uint64_t nodeid, const struct krec *k)
{
	char buf[4096];
	ssize_t n = bf_fs_readlink(g_fs, nodeid, buf, sizeof(buf));
	if (k->linklen < 0) {
		CHECK(n == -EINVAL, "%s: readlink of a non-symlink gave %zd", path, n);
		return;
	}
	CHECK(n == k->linklen && !memcmp(buf, k->link, (size_t)n), "%s: readlink %zd bytes, kernel %zd", path, n,
	      k->linklen);
	n = bf_fs_readlink(g_fs, nodeid, buf, 3);
	CHECK(n == k->linklen && !memcmp(buf, k->link, 3), "%s: readlink into a short buffer", path);
}

struct dent {
	char name[256];
	uint64_t nodeid, gen, next;
	struct stat st;
	bool has_st;
};

struct dlist {
	struct dent *v;
	size_t n, cap;
	size_t stop_after; /* stop (without consuming) when this many were taken; 0 = never */
};

static int collect(void *ctx, const char *name, size_t len, uint64_t nodeid, uint64_t gen, const struct stat *st,
		   uint64_t next)
{
	struct dlist *l = ctx;
	if (l->stop_after && l->n >= l->stop_after)
		return 1;
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 64;
		l->v = realloc(l->v, l->cap * sizeof(*l->v));
	}
	struct dent *d = &l->v[l->n++];
	memset(d, 0, sizeof(*d));
	memcpy(d->name, name, len < 255 ? len : 255);
	d->nodeid = nodeid;
	d->gen = gen;
	d->next = next;
	if (st) {
		d->st = *st;
		d->has_st = true;
	}
	return 0;
}

static void check_entry(const char *dirpath, uint64_t dirnode, const struct dent *d, const struct dent *plain);

/* readdir into a throw-away list: only the result counts */
static int readdir_result(struct bf_fs *fs, uint64_t node)
{
	struct dlist l = { 0 };
	int r = bf_fs_readdir(fs, node, 0, false, collect, &l);
	free(l.v);
	return r;
}

static void walk_dir(const char *path, uint64_t nodeid, const struct krec *k)
{
	struct dlist plus = { 0 }, plain = { 0 };
	int r = bf_fs_readdir(g_fs, nodeid, 0, true, collect, &plus);
	int r2 = bf_fs_readdir(g_fs, nodeid, 0, false, collect, &plain);
	CHECK(r == 0 && r2 == 0, "%s: readdir failed: %d %d", path, r, r2);
	CHECK(plus.n == (size_t)k->nnames + 2 && plain.n == plus.n, "%s: %zu/%zu entries, kernel %d + 2", path, plus.n,
	      plain.n, k->nnames);
	if (plus.n == (size_t)k->nnames + 2 && plain.n == plus.n) {
		CHECK(!strcmp(plus.v[0].name, ".") && plus.v[0].next == 1 && plus.v[0].nodeid == nodeid,
		      "%s: first entry is not .", path);
		CHECK(!strcmp(plus.v[1].name, "..") && plus.v[1].next == 2, "%s: second entry is not ..", path);
		for (int i = 0; i < k->nnames; i++) {
			CHECK(!strcmp(plus.v[i + 2].name, k->names[i]), "%s: entry %d is %s, kernel %s", path, i,
			      plus.v[i + 2].name, k->names[i]);
			check_entry(path, nodeid, &plus.v[i + 2], &plain.v[i + 2]);
		}
	}
	free(plus.v);
	free(plain.v);
}

static void check_entry(const char *dirpath, uint64_t dirnode, const struct dent *d, const struct dent *plain)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s%s%s", dirpath, *dirpath ? "/" : "", d->name);
	const struct krec *k = find_rec(path);
	CHECK(k != NULL, "%s: not seen by the kernel", path);
	if (!k)
		return;
	uint64_t node, gen;
	struct stat st, gst;
	int r = bf_fs_lookup(g_fs, dirnode, d->name, &node, &gen, &st);
	CHECK(r == 0, "%s: lookup failed: %d", path, r);
	if (r)
		return;
	CHECK(node == d->nodeid && node == plain->nodeid && gen == d->gen && d->next == plain->next,
	      "%s: lookup and readdir disagree on node id or generation", path);
	CHECK(d->has_st && stat_eq(&st, &d->st), "%s: readdirplus stat differs", path);
	CHECK(plain->has_st && plain->st.st_ino == st.st_ino && plain->st.st_mode == (st.st_mode & S_IFMT) &&
		      plain->st.st_nlink == 0 && plain->st.st_size == 0,
	      "%s: plain readdir must give only st_ino %llu and type 0%o, got %llu and 0%o", path,
	      (unsigned long long)st.st_ino, (unsigned)(st.st_mode & S_IFMT), (unsigned long long)plain->st.st_ino,
	      (unsigned)plain->st.st_mode);
	CHECK(bf_fs_getattr(g_fs, node, &gst) == 0 && stat_eq(&st, &gst), "%s: getattr differs", path);
	cmp_stat(path, &st, k);
	cmp_link(path, node, k);
	cmp_xattrs(path, node, k);
	if (S_ISDIR(st.st_mode))
		walk_dir(path, node, k);
}

/* Resume a listing at every offset it handed out: each resume must give exactly the next entry. */
static void check_resume(uint64_t dirnode, const char *path)
{
	struct dlist all = { 0 };
	int r = bf_fs_readdir(g_fs, dirnode, 0, false, collect, &all);
	CHECK(r == 0 && all.n > 3000, "%s: full listing: %d, %zu entries", path, r, all.n);
	size_t bad = 0;
	for (size_t i = 1; i <= all.n; i++) {
		struct dlist one = { .stop_after = 1 };
		r = bf_fs_readdir(g_fs, dirnode, all.v[i - 1].next, i % 2 == 0, collect, &one);
		const struct dent *want = i < all.n ? &all.v[i] : NULL;
		bool ok = r == 0 && (!want ? one.n == 0
					   : one.n == 1 && !strcmp(one.v[0].name, want->name) &&
						     one.v[0].nodeid == want->nodeid && one.v[0].next == want->next);
		bad += !ok;
		free(one.v);
	}
	CHECK(bad == 0, "%s: %zu of %zu resumed listings gave the wrong entry", path, bad, all.n);
	free(all.v);
}

/* ================= node id mapping, errors, threads ================= */

static void check_nodeids(void)
{
	struct bf_fs *fs = g_fs;
	uint64_t root, obj;
	uint64_t m = bf_fs_mounted_subvol(fs);
	CHECK(bf_nodeid_make(fs, m, 256) == 1 && bf_st_ino(fs, m, 256) == 256, "mount root is node 1, ino 256");
	CHECK(bf_nodeid_make(fs, m, 300) == 300, "mount root objects keep their objectid");
	CHECK(bf_nodeid_make(fs, 257, 258) == ((257ULL << 48) | 258), "direct mapping of other subvolumes");
	CHECK(bf_nodeid_split(fs, (257ULL << 48) | 258, &root, &obj) == 0 && root == 257 && obj == 258,
	      "direct split");
	uint64_t a = bf_nodeid_make(fs, 40000, 300), b = bf_nodeid_make(fs, m, 1ULL << 50);
	uint64_t c = bf_nodeid_make(fs, 300, 1ULL << 49);
	CHECK(a >= (1ULL << 63) && b >= (1ULL << 63) && c >= (1ULL << 63) && a != b && b != c && a != c,
	      "large ids go to the table: %" PRIx64 " %" PRIx64 " %" PRIx64, a, b, c);
	CHECK(bf_nodeid_make(fs, 40000, 300) == a, "table ids are stable");
	CHECK(bf_nodeid_split(fs, a, &root, &obj) == 0 && root == 40000 && obj == 300, "table split");
	CHECK(bf_nodeid_split(fs, b, &root, &obj) == 0 && root == m && obj == (1ULL << 50), "table split 2");
	CHECK(bf_nodeid_split(fs, (1ULL << 63) + 999999, &root, &obj) == -ESTALE, "unknown table id");
	CHECK(bf_nodeid_split(fs, (1ULL << 48) | 5, &root, &obj) == -ESTALE, "subvolume 1 is no subvolume");
	CHECK(bf_nodeid_split(fs, 0, &root, &obj) == -ESTALE, "node 0");
	struct stat st;
	CHECK(bf_fs_getattr(fs, (1ULL << 63) + 999999, &st) == -ESTALE, "getattr of an unknown node");
}

static void check_errors(void)
{
	uint64_t node, gen, small;
	struct stat st;
	char buf[64], longname[300];
	CHECK(bf_fs_lookup(g_fs, 1, "no-such-file", &node, &gen, &st) == -ENOENT, "absent name");
	memset(longname, 'n', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	CHECK(bf_fs_lookup(g_fs, 1, longname, &node, &gen, &st) == -ENAMETOOLONG, "name too long");
	CHECK(bf_fs_lookup(g_fs, 1, "small", &small, &gen, &st) == 0, "lookup small");
	CHECK(bf_fs_lookup(g_fs, small, "x", &node, &gen, &st) == -ENOTDIR, "lookup in a file");
	CHECK(readdir_result(g_fs, small) == -ENOTDIR, "readdir of a file");
	CHECK(bf_fs_getxattr(g_fs, small, "", buf, sizeof(buf)) == -ERANGE, "empty xattr name");
	CHECK(bf_fs_lookup(g_fs, 1, ".", &node, &gen, &st) == 0 && node == 1 && st.st_ino == 256, "lookup .");
	CHECK(bf_fs_lookup(g_fs, 1, "..", &node, &gen, &st) == 0 && node == 1, "lookup .. at the mount root");
	uint64_t d, e;
	CHECK(bf_fs_lookup(g_fs, 1, "dir1", &d, &gen, &st) == 0 && bf_fs_lookup(g_fs, d, "sv2", &e, &gen, &st) == 0 &&
		      bf_fs_lookup(g_fs, e, "..", &node, &gen, &st) == 0 && node == d,
	      ".. of a subvolume root is the directory holding it");
	uint64_t snap, ph;
	CHECK(bf_fs_lookup(g_fs, 1, "snap", &snap, &gen, &st) == 0 &&
		      bf_fs_lookup(g_fs, snap, "nested", &ph, &gen, &st) == 0 && (ph & ((1ULL << 48) - 1)) == 2,
	      "a subvolume nested in a snapshot is the placeholder directory");
	CHECK(bf_fs_getxattr(g_fs, ph, "user.a", buf, sizeof(buf)) == -EOPNOTSUPP, "placeholder has no xattrs");
	CHECK(bf_fs_lookup(g_fs, ph, "x", &node, &gen, &st) == -ENOENT, "placeholder is empty");
	CHECK(bf_fs_readlink(g_fs, ph, buf, sizeof(buf)) == -EINVAL, "readlink of the placeholder");
	CHECK(bf_name_hash(COLL_FILE[0], strlen(COLL_FILE[0])) == bf_name_hash(COLL_FILE[1], strlen(COLL_FILE[1])) &&
		      bf_name_hash(COLL_XATTR[0], 15) == bf_name_hash(COLL_XATTR[1], 15),
	      "the collision names really collide");
}

struct thr {
	uint64_t dir;
	const struct dent *want;
	size_t n;
	int bad;
};

static void *thread_main(void *arg)
{
	struct thr *t = arg;
	for (int round = 0; round < 3; round++)
		for (size_t i = 2; i < t->n; i++) {
			uint64_t node, gen;
			struct stat st, gst;
			int r = bf_fs_lookup(g_fs, t->dir, t->want[i].name, &node, &gen, &st);
			if (r || node != t->want[i].nodeid || bf_fs_getattr(g_fs, node, &gst) || !stat_eq(&st, &gst))
				t->bad++;
		}
	return NULL;
}

static void check_threads(uint64_t dir)
{
	struct dlist all = { 0 };
	bf_fs_readdir(g_fs, dir, 0, false, collect, &all);
	pthread_t th[8];
	struct thr t[8];
	for (int i = 0; i < 8; i++) {
		t[i] = (struct thr){ dir, all.v, all.n, 0 };
		pthread_create(&th[i], NULL, thread_main, &t[i]);
	}
	int bad = 0;
	for (int i = 0; i < 8; i++) {
		pthread_join(th[i], NULL);
		bad += t[i].bad;
	}
	CHECK(bad == 0, "%d lookups went wrong in 8 concurrent threads", bad);
	free(all.v);
}

/* ================= statfs ================= */

static void cmp_statfs(const char *what, const struct statvfs *k)
{
	struct statvfs o;
	int r = bf_fs_statfs(g_fs, &o);
	CHECK(r == 0, "%s: statfs failed: %d", what, r);
	if (r)
		return;
	CHECK(o.f_blocks == k->f_blocks && o.f_bfree == k->f_bfree && o.f_bavail == k->f_bavail,
	      "%s: blocks/bfree/bavail %llu/%llu/%llu, kernel %llu/%llu/%llu", what, (unsigned long long)o.f_blocks,
	      (unsigned long long)o.f_bfree, (unsigned long long)o.f_bavail, (unsigned long long)k->f_blocks,
	      (unsigned long long)k->f_bfree, (unsigned long long)k->f_bavail);
	CHECK(o.f_files == k->f_files && o.f_ffree == k->f_ffree && o.f_favail == k->f_favail,
	      "%s: files %llu/%llu, kernel %llu/%llu", what, (unsigned long long)o.f_files,
	      (unsigned long long)o.f_ffree, (unsigned long long)k->f_files, (unsigned long long)k->f_ffree);
	CHECK(o.f_bsize == k->f_bsize && o.f_frsize == k->f_frsize && o.f_namemax == k->f_namemax,
	      "%s: bsize/frsize/namemax %lu/%lu/%lu, kernel %lu/%lu/%lu", what, o.f_bsize, o.f_frsize, o.f_namemax,
	      k->f_bsize, k->f_frsize, k->f_namemax);
	CHECK(o.f_fsid == k->f_fsid, "%s: fsid %lx, kernel %lx", what, o.f_fsid, k->f_fsid);
}

static int open_fs(char **imgs, int n, const char *subvol, uint64_t subvolid, struct bf_fs **out, char *err,
		   size_t errlen)
{
	struct bf_fs_opts o;
	memset(&o, 0, sizeof(o));
	o.open.paths = (const char *const *)imgs;
	o.open.npaths = n;
	o.subvol = subvol;
	o.subvolid = subvolid;
	return bf_fs_open(&o, out, err, errlen);
}

/* Build an image set, write data, then compare statvfs of a fresh read-only kernel mount with ours. */
static void statfs_case(const char *label, const char *mkfs_opts, const char *const *sizes, int n,
			const char *after_cmd)
{
	char *imgs[MAX_DEVS], names[MAX_DEVS][128];
	for (int i = 0; i < n; i++) {
		snprintf(names[i], sizeof(names[i]), "%s/%s%d.img", g_dir, label, i);
		imgs[i] = names[i];
	}
	struct statvfs k;
	int r = make_images(imgs, sizes, n, mkfs_opts);
	r = r ? r : mount_images(imgs, n, "");
	r = r ? r : sh(NULL, 0, "dd if=/dev/urandom of=%s/data bs=1M count=40 status=none && sync", g_mnt);
	if (!r && after_cmd)
		r = sh(NULL, 0, after_cmd, g_mnt);
	unmount_all();
	r = r ? r : mount_images(imgs, n, "ro");
	r = r ? r : statvfs(g_mnt, &k);
	unmount_all();
	CHECK(r == 0, "%s: building the image failed", label);
	if (r)
		return;
	char err[512] = "";
	r = open_fs(imgs, n, NULL, 5, &g_fs, err, sizeof(err));
	CHECK(r == 0, "%s: bf_fs_open: %s", label, err);
	if (r)
		return;
	cmp_statfs(label, &k);
	bf_fs_close(g_fs);
	g_fs = NULL;
	for (int i = 0; i < n; i++)
		unlink(imgs[i]);
}

/* ================= the main image ================= */

static int build_main(char *img)
{
	const char *size = "384M";
	if (make_images(&img, &size, 1, "") || mount_images(&img, 1, ""))
		return -1;
	put_files();
	put_specials();
	put_xattrs();
	int r = put_subvols();
	sh(NULL, 0, "sync");
	unmount_all();
	if (r)
		return r;
	if (mount_images(&img, 1, "ro,subvolid=5"))
		return -1;
	statvfs(g_mnt, &g_kstatvfs);
	g_default = parse_default();
	record("", 5);
	unmount_all();
	qsort(g_recs, g_nrecs, sizeof(*g_recs), cmp_rec);
	return 0;
}

static void check_subvol_opts(char *img)
{
	char err[512];
	struct bf_fs *fs;
	struct { const char *subvol; uint64_t id, want; int err; } cases[] = {
		{ NULL, 0, g_default, 0 },
		{ "sv1/nested", 0, g_nested, 0 },
		{ "/dir1//sv2/", 0, g_sv2, 0 },
		{ "dir1/sv2/../../snap", 0, g_snap, 0 },
		{ "/", 0, 5, 0 },
		{ "dir1", 0, 0, -EINVAL },
		{ "snap/nested", 0, 0, -EINVAL },
		{ "nope", 0, 0, -ENOENT },
		{ "sym", 0, 0, -ELOOP },
		{ "sv1", 5, 0, -EINVAL },
		{ "sv1", g_sv1, g_sv1, 0 },
		{ NULL, g_nested, g_nested, 0 },
		{ NULL, 999999, 0, -ENOENT },
		{ NULL, g_gone, 0, -ENOENT },
		{ NULL, 2, 0, -ENOENT },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		err[0] = '\0';
		int r = open_fs(&img, 1, cases[i].subvol, cases[i].id, &fs, err, sizeof(err));
		CHECK(r == cases[i].err, "subvol=%s subvolid=%" PRIu64 ": got %d (%s), want %d",
		      cases[i].subvol ? cases[i].subvol : "-", cases[i].id, r, err, cases[i].err);
		if (r)
			continue;
		CHECK(bf_fs_mounted_subvol(fs) == cases[i].want, "subvol=%s: mounted %" PRIu64 ", want %" PRIu64,
		      cases[i].subvol ? cases[i].subvol : "-", bf_fs_mounted_subvol(fs), cases[i].want);
		bf_fs_close(fs);
	}
}

/* With the default subvolume (sv1) mounted, its objects have their plain objectids and others move. */
static void check_default_mount(char *img)
{
	char err[512];
	int r = open_fs(&img, 1, NULL, 0, &g_fs, err, sizeof(err));
	CHECK(r == 0, "default mount: %s", err);
	if (r)
		return;
	g_mounted_subvol = bf_fs_mounted_subvol(g_fs);
	const struct krec *k = find_rec("sv1");
	struct stat st;
	CHECK(k && bf_fs_getattr(g_fs, 1, &st) == 0 && st.st_ino == 256 && st.st_mode == k->st.st_mode,
	      "default mount root");
	if (k) {
		/* re-root the kernel's records of sv1 at the mount */
		struct dlist l = { 0 };
		bf_fs_readdir(g_fs, 1, 0, false, collect, &l);
		CHECK(l.n == (size_t)k->nnames + 2, "default mount lists sv1");
		for (size_t i = 2; i < l.n && i - 2 < (size_t)k->nnames; i++)
			CHECK(!strcmp(l.v[i].name, k->names[i - 2]), "default mount entry %zu", i);
		free(l.v);
	}
	uint64_t node, gen;
	CHECK(bf_fs_lookup(g_fs, 1, "nested", &node, &gen, &st) == 0 && node == ((g_nested << 48) | 256) &&
		      st.st_ino == node,
	      "nested subvolume seen from the default mount");
	CHECK(bf_fs_lookup(g_fs, 1, "a", &node, &gen, &st) == 0 && node < (1ULL << 48), "plain ids in the mount");
	bf_fs_close(g_fs);
	g_fs = NULL;
}

static void check_main(char *img)
{
	char err[512];
	int r = open_fs(&img, 1, NULL, 5, &g_fs, err, sizeof(err));
	CHECK(r == 0, "bf_fs_open: %s", err);
	if (r)
		return;
	g_mounted_subvol = 5;
	const struct krec *root = find_rec("");
	const struct krec *small = find_rec("small");
	static const char *const ns[] = { "user.a", "user.empty", "trusted.t", "security.s", "system.posix_acl_access",
					  "btrfs.compression", "user.xvamvweatp", "user.ytzjfifcwe" };
	bool have_acl = sh(NULL, 0, "command -v setfacl >/dev/null") == 0;
	for (size_t i = 0; small && i < sizeof(ns) / sizeof(ns[0]); i++) {
		bool seen = !have_acl && !strncmp(ns[i], "system.", 7);
		for (int j = 0; j < small->nx; j++)
			seen |= !strcmp(small->xs[j].name, ns[i]);
		CHECK(seen, "the kernel did not list xattr %s on small (setup incomplete)", ns[i]);
	}
	struct stat st;
	CHECK(root && bf_fs_getattr(g_fs, 1, &st) == 0, "getattr of the root");
	if (root) {
		cmp_stat("/", &st, root);
		cmp_xattrs("/", 1, root);
		walk_dir("", 1, root);
	}
	uint64_t dir, gen;
	if (bf_fs_lookup(g_fs, 1, "dir3000", &dir, &gen, &st) == 0) {
		check_resume(dir, "dir3000");
		check_threads(dir);
	}
	cmp_statfs("main image", &g_kstatvfs);
	struct statvfs sv;
	CHECK(bf_fs_statfs(g_fs, &sv) == 0 && (sv.f_flag & ST_RDONLY), "read-only open reports ST_RDONLY");
	check_nodeids();
	check_errors();
	bf_fs_close(g_fs);
	g_fs = NULL;
}

/* ================= corrupt images ================= */

/* One tree block of the image, located through the fs, to be patched on every copy with a valid checksum. */
struct patch {
	const char *img;
	uint64_t phys[4];
	int ncopies;
	uint32_t nodesize, item_off, item_size;
	unsigned csum_type;
	uint8_t orig[65536], block[65536];
};

static int tree_root_of(struct bf_fs *fs, uint64_t tree, struct bf_root *root)
{
	if (tree == BF_ROOT_TREE_OBJECTID) {
		*root = fs->fi->tree_root;
		return 0;
	}
	return bf_fs_root(fs, tree, root);
}

static int block_copies(struct bf_fs *fs, uint64_t logical, struct patch *pt)
{
	pt->ncopies = bf_vol_num_copies(&fs->fi->vol, logical);
	if (pt->ncopies < 1 || pt->ncopies > 4)
		return -1;
	for (int m = 0; m < pt->ncopies; m++) {
		uint64_t devid;
		if (bf_vol_map(&fs->fi->vol, logical, m + 1, &devid, &pt->phys[m]) || devid != 1)
			return -1;
	}
	pt->nodesize = fs->fi->nodesize;
	pt->csum_type = fs->fi->csum_type;
	return 0;
}

static int read_block(struct patch *pt)
{
	int fd = open(pt->img, O_RDONLY);
	ssize_t n = fd >= 0 ? pread(fd, pt->orig, pt->nodesize, (off_t)pt->phys[0]) : -1;
	if (fd >= 0)
		close(fd);
	memcpy(pt->block, pt->orig, pt->nodesize);
	return n == (ssize_t)pt->nodesize ? 0 : -1;
}

/* Find the leaf holding `key` of tree `tree` and remember where the item's data lies in it. */
static int patch_begin(const char *img, uint64_t tree, const struct bf_key *key, struct patch *pt)
{
	struct bf_fs *fs;
	char err[512];
	char *paths[1] = { (char *)img };
	if (open_fs(paths, 1, NULL, 5, &fs, err, sizeof(err)))
		return -1;
	struct bf_root root;
	struct bf_path p;
	bf_path_init(&p, fs->env);
	int r = tree_root_of(fs, tree, &root);
	r = r ? r : bf_search(fs->env, &root, key, &p);
	if (r == 0) {
		const uint8_t *items = p.nodes[0]->data + sizeof(struct bf_header);
		const struct bf_item *it = (const void *)(items + p.slots[0] * sizeof(struct bf_item));
		pt->img = img;
		pt->item_off = (uint32_t)sizeof(struct bf_header) + get32(it->offset);
		pt->item_size = get32(it->size);
		r = block_copies(fs, p.nodes[0]->bytenr, pt);
	}
	bf_path_release(&p);
	bf_fs_close(fs);
	return r ? -1 : read_block(pt);
}

static void write_copies(const struct patch *pt, uint8_t *block)
{
	uint8_t csum[BF_CSUM_MAX];
	bf_csum(pt->csum_type, block + BF_CSUM_SIZE, pt->nodesize - BF_CSUM_SIZE, csum);
	memcpy(block, csum, BF_CSUM_SIZE);
	int fd = open(pt->img, O_WRONLY);
	for (int m = 0; fd >= 0 && m < pt->ncopies; m++)
		if (pwrite(fd, block, pt->nodesize, (off_t)pt->phys[m]) != (ssize_t)pt->nodesize)
			perror("pwrite");
	if (fd >= 0)
		close(fd);
}

static void patch_end(struct patch *pt) { write_copies(pt, pt->orig); }

/* stderr capture, to see the one log line a corruption gives */
static char g_logfile[160];

static int capture_begin(void)
{
	fflush(stderr);
	int saved = dup(2), fd = open(g_logfile, O_RDWR | O_CREAT | O_TRUNC, 0600);
	dup2(fd, 2);
	close(fd);
	return saved;
}

static void capture_end(int saved, char *buf, size_t n)
{
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	int fd = open(g_logfile, O_RDONLY);
	ssize_t got = fd >= 0 ? read(fd, buf, n - 1) : 0;
	buf[got > 0 ? got : 0] = '\0';
	if (fd >= 0)
		close(fd);
}

static uint64_t ino_of(const char *name)
{
	uint64_t node = 0, gen;
	struct stat st;
	bf_fs_lookup(g_fs, 1, name, &node, &gen, &st);
	return node;
}

enum corrupt_kind { C_DIR_NAMELEN, C_MODE, C_XATTR_LEN, C_INDEX_LOCTYPE, C_LINK_SIZE, C_DIR_LOCOBJ, C_ROOTREF };

struct corrupt_case {
	const char *what;
	enum corrupt_kind kind;
	uint64_t tree;
	struct bf_key key;
	uint32_t at;    /* byte offset in the item */
	uint64_t value; /* written little-endian */
	int width;      /* bytes */
};

static void apply(struct patch *pt, const struct corrupt_case *c)
{
	for (int i = 0; i < c->width; i++)
		pt->block[pt->item_off + c->at + (uint32_t)i] = (uint8_t)(c->value >> (8 * i));
	write_copies(pt, pt->block);
}

/* Run the operation the corruption must break; returns its result. */
static long corrupt_op(const struct corrupt_case *c, uint64_t node)
{
	uint64_t n, gen;
	struct stat st;
	char buf[256];
	switch (c->kind) {
	case C_DIR_NAMELEN: return bf_fs_lookup(g_fs, 1, "small", &n, &gen, &st);
	case C_MODE: return bf_fs_getattr(g_fs, node, &st);
	case C_XATTR_LEN: return bf_fs_getxattr(g_fs, node, "user.a", buf, sizeof(buf));
	case C_INDEX_LOCTYPE: return readdir_result(g_fs, 1);
	case C_LINK_SIZE: return bf_fs_readlink(g_fs, node, buf, sizeof(buf));
	case C_DIR_LOCOBJ: return bf_fs_lookup(g_fs, 1, "empty", &n, &gen, &st);
	case C_ROOTREF: return bf_fs_lookup(g_fs, 1, "sv1", &n, &gen, &st);
	}
	return 0;
}

static void check_corrupt_case(char *img, const struct corrupt_case *c, uint64_t node)
{
	struct patch *pt = malloc(sizeof(*pt));
	int r = patch_begin(img, c->tree, &c->key, pt);
	CHECK(r == 0 && c->at + (uint32_t)c->width <= pt->item_size, "%s: cannot locate the item", c->what);
	if (r || c->at + (uint32_t)c->width > pt->item_size) {
		free(pt);
		return;
	}
	apply(pt, c);
	char err[512], log[4096];
	r = open_fs(&img, 1, NULL, 5, &g_fs, err, sizeof(err));
	CHECK(r == 0, "%s: open: %s", c->what, err);
	if (!r) {
		int saved = capture_begin();
		long got = corrupt_op(c, node);
		capture_end(saved, log, sizeof(log));
		CHECK(got == -EUCLEAN, "%s: got %ld, want -EUCLEAN", c->what, got);
		CHECK(strstr(log, "corrupt metadata in subvolume") && strchr(log, '\n') == strrchr(log, '\n'),
		      "%s: want one log line, got: %s", c->what, log);
		if (c->kind == C_XATTR_LEN) {
			saved = capture_begin();
			got = bf_fs_listxattr(g_fs, node, NULL, 0);
			capture_end(saved, log, sizeof(log));
			CHECK(got == -EUCLEAN, "%s: listxattr gave %ld", c->what, got);
		}
		if (c->kind == C_INDEX_LOCTYPE) {
			uint64_t n, gen;
			struct stat st;
			CHECK(bf_fs_lookup(g_fs, 1, "coll", &n, &gen, &st) == 0, "%s: lookup by name still works",
			      c->what);
		}
		bf_fs_close(g_fs);
		g_fs = NULL;
	}
	patch_end(pt);
	free(pt);
}

static void check_corruptions(char *img)
{
	char err[512];
	if (open_fs(&img, 1, NULL, 5, &g_fs, err, sizeof(err)))
		return;
	uint64_t small = ino_of("small"), perm = ino_of("perm"), symlong = ino_of("symlong");
	struct dlist l = { 0 };
	bf_fs_readdir(g_fs, 1, 0, false, collect, &l);
	uint64_t coll_index = 0;
	for (size_t i = 2; i < l.n; i++)
		if (!strcmp(l.v[i].name, "coll"))
			coll_index = l.v[i].next - 1;
	free(l.v);
	bf_fs_close(g_fs);
	g_fs = NULL;
	const size_t mode_at = offsetof(struct bf_inode_item, mode), size_at = offsetof(struct bf_inode_item, size);
	const struct corrupt_case cases[] = {
		{ "dir item name_len", C_DIR_NAMELEN, 5, { 256, BF_DIR_ITEM_KEY, bf_name_hash("small", 5) }, 27,
		  0xffff, 2 },
		{ "inode mode", C_MODE, 5, { perm, BF_INODE_ITEM_KEY, 0 }, (uint32_t)mode_at, 0170777, 4 },
		{ "xattr data_len", C_XATTR_LEN, 5, { small, BF_XATTR_ITEM_KEY, bf_name_hash("user.a", 6) }, 25,
		  0xfff0, 2 },
		{ "dir index location type", C_INDEX_LOCTYPE, 5, { 256, BF_DIR_INDEX_KEY, coll_index }, 8, 200, 1 },
		{ "symlink size", C_LINK_SIZE, 5, { symlong, BF_INODE_ITEM_KEY, 0 }, (uint32_t)size_at, 5000, 8 },
		{ "dir item location objectid", C_DIR_LOCOBJ, 5, { 256, BF_DIR_ITEM_KEY, bf_name_hash("empty", 5) },
		  0, 1, 8 },
		{ "root ref name_len", C_ROOTREF, 1, { 5, BF_ROOT_REF_KEY, g_sv1 }, 16, 0x7fff, 2 },
	};
	const uint64_t nodes[] = { 0, perm, small, 0, symlong, 0, 0 };
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		check_corrupt_case(img, &cases[i], nodes[i]);
	uint64_t n, gen;
	struct stat st;
	CHECK(open_fs(&img, 1, NULL, 5, &g_fs, err, sizeof(err)) == 0 &&
		      bf_fs_lookup(g_fs, 1, "small", &n, &gen, &st) == 0 && bf_fs_getattr(g_fs, perm, &st) == 0,
	      "image restored after the corruption cases");
	bf_fs_close(g_fs);
	g_fs = NULL;
}

/* ---- fuzz: random bytes of random items in subvolume and root tree leaves ---- */

static uint64_t g_rng;

static uint64_t rnd(void)
{
	uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static bool errno_ok(long r)
{
	static const int ok[] = { EUCLEAN, EIO, ENOENT, ENOTDIR, ENODATA, ERANGE, EINVAL, ENAMETOOLONG, ESTALE,
				  EOPNOTSUPP, ENOMEM, ELOOP };
	if (r >= 0)
		return true;
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
		if (r == -ok[i])
			return true;
	return false;
}

struct fuzz_stat {
	unsigned budget, bad, calls, caught;
	long last_bad;
};

static void fuzz_note(struct fuzz_stat *f, long r)
{
	f->calls++;
	f->caught += r == -EUCLEAN || r == -EIO;
	if (!errno_ok(r)) {
		f->bad++;
		f->last_bad = r;
	}
}

static void fuzz_node(struct bf_fs *fs, uint64_t node, struct fuzz_stat *f)
{
	char buf[8192], val[4096];
	struct stat st;
	fuzz_note(f, bf_fs_getattr(fs, node, &st));
	fuzz_note(f, bf_fs_readlink(fs, node, buf, sizeof(buf)));
	ssize_t n = bf_fs_listxattr(fs, node, buf, sizeof(buf));
	fuzz_note(f, n);
	for (ssize_t off = 0; n > 0 && off < n; off += (ssize_t)strlen(buf + off) + 1)
		fuzz_note(f, bf_fs_getxattr(fs, node, buf + off, val, sizeof(val)));
}

static void fuzz_walk(struct bf_fs *fs, uint64_t dir, int depth, struct fuzz_stat *f)
{
	struct dlist l = { .stop_after = 400 };
	fuzz_note(f, bf_fs_readdir(fs, dir, 0, depth % 2 == 0, collect, &l));
	for (size_t i = 2; i < l.n && f->budget; i++, f->budget--) {
		uint64_t node, gen;
		struct stat st;
		int r = bf_fs_lookup(fs, dir, l.v[i].name, &node, &gen, &st);
		fuzz_note(f, r);
		fuzz_node(fs, r ? l.v[i].nodeid : node, f);
		if (!r && S_ISDIR(st.st_mode) && depth < 8)
			fuzz_walk(fs, node, depth + 1, f);
	}
	free(l.v);
}

struct leaf {
	uint64_t tree, logical;
};

/* The leaves of every subvolume tree and of the root tree. */
static size_t collect_leaves(char *img, struct leaf *out, size_t max)
{
	char err[512];
	struct bf_fs *fs;
	if (open_fs(&img, 1, NULL, 5, &fs, err, sizeof(err)))
		return 0;
	const uint64_t trees[] = { 5, 256, 257, 258, 259, 260, BF_ROOT_TREE_OBJECTID };
	size_t n = 0;
	for (size_t t = 0; t < sizeof(trees) / sizeof(trees[0]); t++) {
		struct bf_root root;
		struct bf_path p;
		struct bf_key zero = { 0, 0, 0 };
		bf_path_init(&p, fs->env);
		int r = tree_root_of(fs, trees[t], &root);
		r = r ? r : bf_search(fs->env, &root, &zero, &p);
		uint64_t last = 0;
		while (r >= 0 && bf_path_valid(&p) && n < max) {
			if (p.nodes[0]->bytenr != last)
				out[n++] = (struct leaf){ trees[t], last = p.nodes[0]->bytenr };
			r = bf_path_next(&p);
			if (r == 1)
				break;
		}
		bf_path_release(&p);
	}
	bf_fs_close(fs);
	return n;
}

static void fuzz_round(char *img, const struct leaf *lf, struct fuzz_stat *f)
{
	char err[512];
	struct patch *pt = malloc(sizeof(*pt));
	struct bf_fs *fs;
	pt->img = img;
	if (open_fs(&img, 1, NULL, 5, &fs, err, sizeof(err)) || block_copies(fs, lf->logical, pt)) {
		free(pt);
		return;
	}
	bf_fs_close(fs);
	read_block(pt);
	uint32_t nritems = get32(((struct bf_header *)pt->block)->nritems);
	for (int k = 0; nritems && k < 1 + (int)(rnd() % 3); k++) {
		const struct bf_item *it = (const void *)(pt->block + sizeof(struct bf_header) +
							   (rnd() % nritems) * sizeof(struct bf_item));
		uint32_t size = get32(it->size), at = (uint32_t)sizeof(struct bf_header) + get32(it->offset);
		if (size && at + size <= pt->nodesize)
			pt->block[at + rnd() % size] = rnd() % 4 ? (uint8_t)rnd() : 0xff;
	}
	write_copies(pt, pt->block);
	int r = open_fs(&img, 1, NULL, 5, &fs, err, sizeof(err));
	fuzz_note(f, r);
	if (!r) {
		struct statvfs sv;
		fuzz_note(f, bf_fs_statfs(fs, &sv));
		f->budget = 5000;
		fuzz_walk(fs, 1, 0, f);
		bf_fs_close(fs);
	}
	patch_end(pt);
	free(pt);
}

/* A small image with one of everything, so that each corrupted item is met by the walk. */
static int build_fuzz_image(char *img)
{
	const char *size = "160M";
	if (make_images(&img, &size, 1, "") || mount_images(&img, 1, ""))
		return -1;
	put_file("small", "hello\n", 6);
	put_specials();
	put_xattrs();
	char p[4096], q[4096];
	in_mnt(p, sizeof(p), "small");
	in_mnt(q, sizeof(q), "hardlink");
	link(p, q);
	int r = sh(NULL, 0, "m=%s; btrfs -q subvolume create $m/sv && mkdir $m/sv/d && echo a > $m/sv/d/a && "
			    "btrfs -q subvolume create $m/sv/nested && btrfs -q subvolume snapshot $m/sv $m/snap && "
			    "setfattr -n user.z -v zz $m/sv/d/a && ln -s ../small $m/sv/link",
		   g_mnt);
	unmount_all();
	return r;
}

static void check_fuzz(char *img, uint64_t seed, int rounds)
{
	if (build_fuzz_image(img)) {
		CHECK(0, "fuzz: could not build the image");
		return;
	}
	struct leaf leaves[512];
	size_t n = collect_leaves(img, leaves, 512);
	CHECK(n > 4, "fuzz: found %zu leaves", n);
	if (n == 0)
		return;
	g_rng = seed;
	struct fuzz_stat f = { 0 };
	bf_log_set_verbosity((enum bf_log_level)0); /* corruptions log by design; keep the output readable */
	for (int i = 0; i < rounds; i++)
		fuzz_round(img, &leaves[rnd() % n], &f);
	bf_log_set_verbosity(BF_LOG_INFO);
	CHECK(f.bad == 0, "fuzz (seed %" PRIu64 "): %u of %u calls returned an unexpected error, last %ld", seed, f.bad,
	      f.calls, f.last_bad);
	printf("fuzz: seed %" PRIu64 ", %d rounds, %u calls, %u of them caught corruption\n", seed, rounds, f.calls,
	       f.caught);
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!env_ok()) {
		printf("0 passed, 0 failed\n");
		return 0;
	}
	snprintf(g_dir, sizeof(g_dir), "/tmp/bf_meta_XXXXXX");
	if (!mkdtemp(g_dir)) {
		perror("mkdtemp");
		return 1;
	}
	atexit(cleanup);
	snprintf(g_mnt, sizeof(g_mnt), "%s/mnt", g_dir);
	snprintf(g_logfile, sizeof(g_logfile), "%s/log", g_dir);
	mkdir(g_mnt, 0755);
	char imgbuf[128];
	snprintf(imgbuf, sizeof(imgbuf), "%s/main.img", g_dir);
	char *img = imgbuf;
	if (build_main(img)) {
		CHECK(0, "could not build the main image with the kernel");
	} else {
		CHECK(g_sv1 && g_nested && g_sv2 && g_snap && g_gone && g_default == g_sv1,
		      "subvolume ids %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " default %" PRIu64,
		      g_sv1,
		      g_nested, g_sv2, g_snap, g_gone, g_default);
		check_main(img);
		check_default_mount(img);
		check_subvol_opts(img);
		check_corruptions(img);
	}
	unlink(img);
	snprintf(imgbuf, sizeof(imgbuf), "%s/fuzz.img", g_dir);
	check_fuzz(img, argc > 1 ? strtoull(argv[1], NULL, 0) : (uint64_t)time(NULL), 150);
	unlink(img);
	free_recs();
	static const char *const one[] = { "256M" }, *const two[] = { "256M", "256M" };
	static const char *const uneq[] = { "256M", "512M", "320M" };
	statfs_case("mixed", "--mixed", one, 1, NULL);
	statfs_case("dup", "-d dup -m dup", one, 1, NULL);
	statfs_case("raid1", "-d raid1 -m raid1", two, 2, NULL);
	statfs_case("raid0", "-d raid0 -m raid1", uneq, 3, NULL);
	statfs_case("convert", "-d single -m raid1", two, 2,
		    "btrfs balance start -dconvert=raid1,limit=1 %s >/dev/null 2>&1");
	return check_summary();
}
