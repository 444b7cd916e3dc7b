/*
 * fuse/ops.c - the FUSE low-level operations: each request becomes one call into fs/fs.h.
 *
 * Owns: the translation between libfuse requests and the fs layer, the kernel capabilities asked for at init,
 * and the caching hints given to the kernel. Key idea: node ids are stateless (a node id alone names an inode,
 * see fs/fs.h), so forget needs no bookkeeping and directory handles carry nothing: readdir resumes from the
 * offset the fs layer returned with the previous entry. Requests are answered in the thread that read them
 * (fuse/main.c), except file reads and fsync, which may wait on the disk and go to worker threads
 * (fuse/pool.h). Read calls run under the fs layer's shared lock (many at once); change calls take its
 * exclusive lock themselves. On a read-only mount nothing can change, so
 * entries, attributes, negative lookups, file data, listings and symlinks are cached by the kernel for a long
 * time; on a read-write mount every change goes through this mount and the kernel updates or drops its own
 * caches for the names and inodes a reply or request touches, so only the timeouts are short (1 s: st_blocks
 * and the like move when buffered data gets its extents at commit) and file data and listings are not kept
 * across opens. Every fs error is passed back as its errno; nothing here aborts on bad input.
 */
#include "fuse/ops.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>

#include "util/util.h"

#define BF_NAME_MAX 255
/* Larger than any read the kernel sends (max_pages is at most 256 pages); a bound so a bad size cannot make us
   allocate without limit. */
#define BF_READ_MAX (16u << 20)
/* Largest write asked of the kernel on read-write mounts (libfuse's buffer takes 1 MiB + headers). */
#define BF_MAX_WRITE (1u << 20)

static struct bf_fuse *ctx_of(fuse_req_t req) { return fuse_req_userdata(req); }

/* Reply with a negative errno from the fs layer (anything not negative is a bug there: report EIO). */
static void reply_err(fuse_req_t req, long err)
{
	int e = (err < 0 && err > -4096) ? (int)-err : EIO;
	fuse_reply_err(req, e);
}

/* Reply to a request that returns only a status: 0 or a negative errno from the fs layer. */
static void reply_status(fuse_req_t req, long r)
{
	if (r == 0)
		fuse_reply_err(req, 0);
	else
		reply_err(req, r);
}

/* ---------------------------------------------------------------- init */

static void set_want(struct fuse_conn_info *conn, unsigned cap, bool on)
{
	if (on && (conn->capable & cap))
		conn->want |= cap;
	else if (!on)
		conn->want &= ~cap;
}

/* -o trace=FILE: one event per FUSE request (util/util.h). */
static void trace_op(fuse_req_t req, const char *op, fuse_ino_t ino)
{
	if (!bf_trace_enabled())
		return;
	const struct fuse_ctx *fc = fuse_req_ctx(req);
	bf_trace("fuse", "\"op\":\"%s\",\"ino\":%llu,\"uid\":%u,\"pid\":%d", op, (unsigned long long)ino,
		 (unsigned)fc->uid, (int)fc->pid);
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	struct bf_fuse *c = userdata;

	set_want(conn, FUSE_CAP_ASYNC_READ, true);
	set_want(conn, FUSE_CAP_READDIRPLUS, true);
	set_want(conn, FUSE_CAP_READDIRPLUS_AUTO, true);
	/* Asked for, but libfuse 3.14 (Debian 12) never passes it on to the kernel (fixed in later libfuse): the
	   kernel then runs changes in one directory one at a time, which costs nothing with one request thread. */
	set_want(conn, FUSE_CAP_PARALLEL_DIROPS, true);
	/* The kernel removes setuid/setgid bits and security.capability on write, truncate and chown itself (it
	   knows the caller's CAP_FSETID, we do not). libfuse asks for the opposite by default; 3.14 does not pass
	   that on, later versions do, so say no explicitly. */
	set_want(conn, FUSE_CAP_HANDLE_KILLPRIV, false);
	set_want(conn, FUSE_CAP_CACHE_SYMLINKS, true);
	/* The kernel turns FUSE_POSIX_ACL into default_permissions, so only ask for it when that is on anyway. */
	set_want(conn, FUSE_CAP_POSIX_ACL, c->acl && c->default_permissions);
	/* Nothing changes under a read-only mount, and a read-write one changes only through here: no need to
	   compare mtimes to drop cached pages. O_TRUNC comes as a setattr before the open. */
	set_want(conn, FUSE_CAP_AUTO_INVAL_DATA, false);
	set_want(conn, FUSE_CAP_ATOMIC_O_TRUNC, false);
	/* With POSIX ACLs the kernel leaves the umask to the filesystem, which applies it unless the parent has a
	   default ACL (posix_acl_create); without this the kernel would apply it even then. */
	set_want(conn, FUSE_CAP_DONT_MASK, c->rw && c->acl && c->default_permissions);
	/* No writeback cache: the kernel would keep its own sizes, times and block counts of written files, which
	   differ from what the commit records (tried: stale st_blocks and times). Writes come synchronously. */
	set_want(conn, FUSE_CAP_WRITEBACK_CACHE, false);
	if (c->rw)
		conn->max_write = BF_MAX_WRITE;
	/* Replies come from memory buffers, for which splicing only adds system calls. */
	set_want(conn, FUSE_CAP_SPLICE_WRITE, false);
	set_want(conn, FUSE_CAP_SPLICE_MOVE, false);
	conn->time_gran = 1;
	/* max_readahead stays at what the kernel offered (libfuse starts from the largest value). */
	if (c->conn_opts)
		fuse_apply_conn_info_opts(c->conn_opts, conn);
}

/* ------------------------------------------------------- names, attrs */

static void fill_entry(const struct bf_fuse *c, struct fuse_entry_param *e, uint64_t nodeid, uint64_t gen,
		       const struct stat *st)
{
	memset(e, 0, sizeof(*e));
	e->ino = nodeid;
	e->generation = gen;
	e->attr = *st;
	e->attr_timeout = c->timeout;
	e->entry_timeout = c->timeout;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	trace_op(req, "lookup", parent);
	struct bf_fuse *c = ctx_of(req);
	struct fuse_entry_param e;
	struct stat st;
	uint64_t nodeid = 0, gen = 0;

	if (strlen(name) > BF_NAME_MAX) {
		fuse_reply_err(req, ENAMETOOLONG);
		return;
	}
	memset(&st, 0, sizeof(st));
	bf_fs_rdlock(c->fs);
	int r = bf_fs_lookup(c->fs, parent, name, &nodeid, &gen, &st);
	bf_fs_unlock(c->fs);
	if (r == -ENOENT) {
		/* A negative entry: the kernel remembers the name is absent for the timeout. */
		memset(&e, 0, sizeof(e));
		e.entry_timeout = c->timeout;
		fuse_reply_entry(req, &e);
		return;
	}
	if (r < 0) {
		reply_err(req, r);
		return;
	}
	fill_entry(c, &e, nodeid, gen, &st);
	fuse_reply_entry(req, &e);
}

/* Node ids are stateless (fs/fs.h): the kernel's lookup counts need no bookkeeping. */
static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	trace_op(req, "forget", ino);
	(void)ino;
	(void)nlookup;
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	trace_op(req, "forget_multi", 0);
	(void)count;
	(void)forgets;
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	trace_op(req, "getattr", ino);
	struct bf_fuse *c = ctx_of(req);
	struct stat st;

	(void)fi;
	memset(&st, 0, sizeof(st));
	bf_fs_rdlock(c->fs);
	int r = bf_fs_getattr(c->fs, ino, &st);
	bf_fs_unlock(c->fs);
	if (r < 0)
		reply_err(req, r);
	else
		fuse_reply_attr(req, &st, c->timeout);
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
	trace_op(req, "readlink", ino);
	struct bf_fuse *c = ctx_of(req);
	size_t size = PATH_MAX;
	char *buf = NULL;

	for (int tries = 0; tries < 2; tries++) {
		char *nb = realloc(buf, size + 1);
		if (!nb) {
			free(buf);
			fuse_reply_err(req, ENOMEM);
			return;
		}
		buf = nb;
		bf_fs_rdlock(c->fs);
		ssize_t n = bf_fs_readlink(c->fs, ino, buf, size);
		bf_fs_unlock(c->fs);
		if (n < 0) {
			free(buf);
			reply_err(req, n);
			return;
		}
		if ((size_t)n <= size) {
			buf[n] = '\0';
			fuse_reply_readlink(req, buf);
			free(buf);
			return;
		}
		size = (size_t)n; /* the target is longer than the first guess: once more with its exact length */
	}
	free(buf);
	bf_log(BF_LOG_ERR, "readlink of node %llu: the target length changed between two reads",
	       (unsigned long long)ino);
	fuse_reply_err(req, EIO);
}

/* ------------------------------------------------------------ readdir */

struct dir_fill {
	fuse_req_t req;
	struct bf_fuse *c;
	uint64_t dir;
	bool plus;
	char *buf;
	size_t size, used;
};

/* A name the kernel would reject (it fails the whole listing with EIO): skip it with a log line. */
static bool name_ok(const struct dir_fill *d, const char *name, size_t len)
{
	if (len > 0 && len <= BF_NAME_MAX && !memchr(name, '/', len) && !memchr(name, '\0', len))
		return true;
	bf_log(BF_LOG_WARN, "directory node %llu: skipping an entry with an invalid name (length %zu)",
	       (unsigned long long)d->dir, len);
	return false;
}

static int dir_add(void *ctx, const char *name, size_t namelen, uint64_t nodeid, uint64_t generation,
		   const struct stat *st, uint64_t next_off)
{
	struct dir_fill *d = ctx;
	char cname[BF_NAME_MAX + 1];
	size_t need;

	if (!name_ok(d, name, namelen))
		return 0;
	memcpy(cname, name, namelen);
	cname[namelen] = '\0';
	/* Without a stat from the fs layer only the inode number is known and the type is DT_UNKNOWN. */
	struct stat bare;
	if (!st) {
		memset(&bare, 0, sizeof(bare));
		bare.st_ino = nodeid == BF_ROOT_NODEID ? d->c->root_ino : nodeid;
	}
	if (d->plus) {
		struct fuse_entry_param e;
		fill_entry(d->c, &e, nodeid, generation, st ? st : &bare);
		if (!st)
			e.ino = 0; /* node id 0: the kernel takes the name only and looks it up later */
		need = fuse_add_direntry_plus(d->req, d->buf + d->used, d->size - d->used, cname, &e,
					      (off_t)next_off);
	} else {
		need = fuse_add_direntry(d->req, d->buf + d->used, d->size - d->used, cname, st ? st : &bare,
					 (off_t)next_off);
	}
	if (need > d->size - d->used)
		return 1; /* full: this entry is sent with the next request */
	d->used += need;
	return 0;
}

static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus)
{
	struct dir_fill d = { .req = req, .c = ctx_of(req), .dir = ino, .plus = plus, .size = size };

	if (off < 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	d.buf = malloc(size ? size : 1);
	if (!d.buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	bf_fs_rdlock(d.c->fs);
	int r = bf_fs_readdir(d.c->fs, ino, (uint64_t)off, plus, dir_add, &d);
	bf_fs_unlock(d.c->fs);
	/* Entries already in the buffer go out; an error after them shows up again on the next call. */
	if (r < 0 && d.used == 0)
		reply_err(req, r);
	else
		fuse_reply_buf(req, d.buf, d.used);
	free(d.buf);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	trace_op(req, "readdir", ino);
	(void)fi;
	do_readdir(req, ino, size, off, false);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	trace_op(req, "readdirplus", ino);
	(void)fi;
	do_readdir(req, ino, size, off, true);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	trace_op(req, "opendir", ino);
	(void)ino;
	if ((fi->flags & O_ACCMODE) != O_RDONLY) {
		fuse_reply_err(req, EROFS);
		return;
	}
	fi->fh = 0;
	fi->cache_readdir = !ctx_of(req)->rw; /* read-only: listings never change, the kernel may keep them */
	fi->keep_cache = !ctx_of(req)->rw;
	fuse_reply_open(req, fi);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	trace_op(req, "releasedir", ino);
	(void)ino;
	(void)fi;
	fuse_reply_err(req, 0);
}

/* ---------------------------------------------------------- file data */

static struct bf_file *file_of(const struct fuse_file_info *fi) { return (struct bf_file *)(uintptr_t)fi->fh; }

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	trace_op(req, "open", ino);
	struct bf_fuse *c = ctx_of(req);
	struct bf_file *f = NULL;

	int r = 0;
	if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC))
		r = c->rw ? bf_fs_may_write(c->fs, ino) : -EROFS;
	if (r < 0) {
		reply_err(req, r);
		return;
	}
	bf_fs_rdlock(c->fs);
	r = bf_fs_open_file(c->fs, ino, &f);
	bf_fs_unlock(c->fs);
	if (r < 0) {
		reply_err(req, r);
		return;
	}
	fi->fh = (uint64_t)(uintptr_t)f;
	fi->keep_cache = !c->rw; /* read-only: the data cannot change while mounted */
	fi->noflush = 1;         /* written data is buffered by the fs layer; close has nothing to send */
	if (fuse_reply_open(req, fi) != 0)
		bf_fs_release_file(c->fs, f); /* the open was interrupted: no release will come */
}

static void do_read(fuse_req_t req, struct bf_file *f, size_t size, off_t off)
{
	struct bf_fuse *c = ctx_of(req);

	if (size > BF_READ_MAX)
		size = BF_READ_MAX;
	char *buf = malloc(size ? size : 1);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	bf_fs_rdlock(c->fs);
	ssize_t n = bf_fs_read(c->fs, f, buf, size, (uint64_t)off);
	bf_fs_unlock(c->fs);
	if (n < 0)
		reply_err(req, n);
	else
		fuse_reply_buf(req, buf, (size_t)n < size ? (size_t)n : size);
	free(buf);
}

/* A read may wait on the disk: it goes to a worker (fuse/pool.h), so other requests need not wait for it. */
struct read_job {
	struct bf_job job;
	fuse_req_t req;
	struct bf_file *f;
	size_t size;
	off_t off;
};

static void read_job_run(struct bf_job *job)
{
	struct read_job *j = (struct read_job *)job;
	do_read(j->req, j->f, j->size, j->off);
	free(j);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	trace_op(req, "read", ino);
	struct read_job *j;

	if (off < 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if (ctx_of(req)->pool && (j = malloc(sizeof(*j)))) {
		*j = (struct read_job){ .job.run = read_job_run, .req = req, .f = file_of(fi), .size = size, .off = off };
		if (bf_pool_submit(ctx_of(req)->pool, &j->job))
			return;
		free(j);
	}
	do_read(req, file_of(fi), size, off);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	trace_op(req, "release", ino);
	(void)ino;
	bf_fs_release_file(ctx_of(req)->fs, file_of(fi));
	fuse_reply_err(req, 0);
}

/* Written data is buffered by the fs layer until a commit: close has nothing to send (noflush is set). */
static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	trace_op(req, "flush", ino);
	(void)ino;
	(void)fi;
	fuse_reply_err(req, 0);
}

/* ----------------------------------------------------- statfs, xattrs */

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	trace_op(req, "statfs", ino);
	struct statvfs st;

	(void)ino;
	memset(&st, 0, sizeof(st));
	bf_fs_rdlock(ctx_of(req)->fs);
	int r = bf_fs_statfs(ctx_of(req)->fs, &st);
	bf_fs_unlock(ctx_of(req)->fs);
	if (r < 0)
		reply_err(req, r);
	else
		fuse_reply_statfs(req, &st);
}

/* Shared tail of getxattr and listxattr: size 0 asks for the size needed; otherwise the value itself. */
static void reply_sized(fuse_req_t req, ssize_t n, const void *buf, size_t size)
{
	if (n < 0)
		reply_err(req, n);
	else if (size == 0)
		fuse_reply_xattr(req, (size_t)n);
	else if ((size_t)n > size)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, buf, (size_t)n);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	trace_op(req, "getxattr", ino);
	char *buf = size ? malloc(size) : NULL;

	if (size && !buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	bf_fs_rdlock(ctx_of(req)->fs);
	ssize_t n = bf_fs_getxattr(ctx_of(req)->fs, ino, name, buf, size);
	bf_fs_unlock(ctx_of(req)->fs);
	reply_sized(req, n, buf, size);
	free(buf);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	trace_op(req, "listxattr", ino);
	char *buf = size ? malloc(size) : NULL;

	if (size && !buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	bf_fs_rdlock(ctx_of(req)->fs);
	ssize_t n = bf_fs_listxattr(ctx_of(req)->fs, ino, buf, size);
	bf_fs_unlock(ctx_of(req)->fs);
	reply_sized(req, n, buf, size);
	free(buf);
}

/* Called only without default_permissions: then this filesystem enforces no permission bits (documented in
   the man page), so everything may be read, and written only on a read-write mount. */
static void op_access(fuse_req_t req, fuse_ino_t ino, int mask)
{
	trace_op(req, "access", ino);
	(void)ino;
	fuse_reply_err(req, (mask & W_OK) && !ctx_of(req)->rw ? EROFS : 0);
}

/* ------------------------------------------------------------ changes */

/* Who asks: fsuid, fsgid and umask from the request (groups are not needed: the kernel made the setgid
   checks). */
static struct bf_cred cred_of(fuse_req_t req)
{
	const struct fuse_ctx *x = fuse_req_ctx(req);
	struct bf_fuse *c = ctx_of(req);
	struct bf_cred cr = { (uint32_t)x->uid, (uint32_t)x->gid, (uint32_t)x->umask,
			      c->acl && c->default_permissions, NULL, 0 };
	return cr;
}

static void reply_new(fuse_req_t req, int r, const struct bf_entry *out)
{
	struct fuse_entry_param e;

	if (r < 0) {
		reply_err(req, r);
		return;
	}
	fill_entry(ctx_of(req), &e, out->nodeid, out->generation, &out->st);
	fuse_reply_entry(req, &e);
}

static bool name_too_long(fuse_req_t req, const char *name)
{
	if (strlen(name) <= BF_NAME_MAX)
		return false;
	fuse_reply_err(req, ENAMETOOLONG);
	return true;
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev)
{
	trace_op(req, "mknod", parent);
	struct bf_cred cr = cred_of(req);
	struct bf_entry out;

	if (!name_too_long(req, name))
		reply_new(req, bf_fs_mknod(ctx_of(req)->fs, parent, name, mode, rdev, &cr, &out), &out);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode)
{
	trace_op(req, "mkdir", parent);
	struct bf_cred cr = cred_of(req);
	struct bf_entry out;

	if (!name_too_long(req, name))
		reply_new(req, bf_fs_mkdir(ctx_of(req)->fs, parent, name, mode, &cr, &out), &out);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name)
{
	trace_op(req, "symlink", parent);
	struct bf_cred cr = cred_of(req);
	struct bf_entry out;

	if (!name_too_long(req, name))
		reply_new(req, bf_fs_symlink(ctx_of(req)->fs, parent, name, link, &cr, &out), &out);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname)
{
	trace_op(req, "link", ino);
	struct bf_entry out;

	if (!name_too_long(req, newname))
		reply_new(req, bf_fs_link(ctx_of(req)->fs, ino, newparent, newname, &out), &out);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	trace_op(req, "unlink", parent);
	reply_status(req, bf_fs_unlink(ctx_of(req)->fs, parent, name));
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	trace_op(req, "rmdir", parent);
	reply_status(req, bf_fs_rmdir(ctx_of(req)->fs, parent, name));
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent,
		      const char *newname, unsigned flags)
{
	trace_op(req, "rename", parent);
	if (!name_too_long(req, newname))
		reply_status(req, bf_fs_rename(ctx_of(req)->fs, parent, name, newparent, newname, flags));
}

/* FUSE_SET_ATTR_* -> struct bf_setattr. *_NOW comes with the plain bit set too. */
static void setattr_of(const struct stat *a, int to_set, struct bf_setattr *s)
{
	static const struct { int fuse; unsigned bf; } map[] = {
		{ FUSE_SET_ATTR_MODE, BF_SET_MODE }, { FUSE_SET_ATTR_UID, BF_SET_UID },
		{ FUSE_SET_ATTR_GID, BF_SET_GID }, { FUSE_SET_ATTR_SIZE, BF_SET_SIZE },
		{ FUSE_SET_ATTR_ATIME, BF_SET_ATIME }, { FUSE_SET_ATTR_MTIME, BF_SET_MTIME },
		{ FUSE_SET_ATTR_ATIME_NOW, BF_SET_ATIME | BF_SET_ATIME_NOW },
		{ FUSE_SET_ATTR_MTIME_NOW, BF_SET_MTIME | BF_SET_MTIME_NOW }, { FUSE_SET_ATTR_CTIME, BF_SET_CTIME },
	};

	memset(s, 0, sizeof(*s));
	for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
		if (to_set & map[i].fuse)
			s->valid |= map[i].bf;
	s->mode = a->st_mode;
	s->uid = (uint32_t)a->st_uid;
	s->gid = (uint32_t)a->st_gid;
	s->size = a->st_size < 0 ? 0 : (uint64_t)a->st_size;
	s->atime = a->st_atim;
	s->mtime = a->st_mtim;
	s->ctime = a->st_ctim;
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi)
{
	trace_op(req, "setattr", ino);
	struct bf_fuse *c = ctx_of(req);
	struct bf_setattr s;
	struct stat st;

	(void)fi;
	if ((to_set & FUSE_SET_ATTR_SIZE) && attr->st_size < 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	setattr_of(attr, to_set, &s);
	memset(&st, 0, sizeof(st));
	int r = bf_fs_setattr(c->fs, ino, &s, &st);
	if (r < 0)
		reply_err(req, r);
	else
		fuse_reply_attr(req, &st, c->timeout);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi)
{
	trace_op(req, "create", parent);
	struct bf_fuse *c = ctx_of(req);
	struct bf_cred cr = cred_of(req);
	struct fuse_entry_param e;
	struct bf_entry out;
	struct bf_file *f = NULL;

	if (name_too_long(req, name))
		return;
	int r = bf_fs_mknod(c->fs, parent, name, (mode & ~(mode_t)S_IFMT) | S_IFREG, 0, &cr, &out);
	if (r == 0) {
		bf_fs_rdlock(c->fs);
		r = bf_fs_open_file(c->fs, out.nodeid, &f);
		bf_fs_unlock(c->fs);
	}
	if (r < 0) {
		reply_err(req, r);
		return;
	}
	fill_entry(c, &e, out.nodeid, out.generation, &out.st);
	fi->fh = (uint64_t)(uintptr_t)f;
	fi->keep_cache = 0;
	fi->noflush = 1;
	if (fuse_reply_create(req, &e, fi) != 0)
		bf_fs_release_file(c->fs, f); /* interrupted: no release will come */
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	trace_op(req, "write", ino);
	(void)ino;
	if (off < 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	ssize_t n = bf_fs_write(ctx_of(req)->fs, file_of(fi), buf, size, (uint64_t)off);
	if (n < 0)
		reply_err(req, n);
	else
		fuse_reply_write(req, (size_t)n);
}

/* fsync is a whole commit: a worker does it (fuse/pool.h), so requests that need no lock are not held up. */
struct fsync_job {
	struct bf_job job;
	fuse_req_t req;
	fuse_ino_t ino;
	bool datasync;
};

static void fsync_job_run(struct bf_job *job)
{
	struct fsync_job *j = (struct fsync_job *)job;
	reply_status(j->req, bf_fs_fsync(ctx_of(j->req)->fs, j->ino, j->datasync));
	free(j);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	trace_op(req, "fsync", ino);
	struct fsync_job *j;

	(void)fi;
	if (ctx_of(req)->pool && (j = malloc(sizeof(*j)))) {
		*j = (struct fsync_job){ .job.run = fsync_job_run, .req = req, .ino = ino, .datasync = datasync != 0 };
		if (bf_pool_submit(ctx_of(req)->pool, &j->job))
			return;
		free(j);
	}
	reply_status(req, bf_fs_fsync(ctx_of(req)->fs, ino, datasync != 0));
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value, size_t size,
			int flags)
{
	trace_op(req, "setxattr", ino);
	reply_status(req, bf_fs_setxattr(ctx_of(req)->fs, ino, name, value, size, flags));
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	trace_op(req, "removexattr", ino);
	reply_status(req, bf_fs_removexattr(ctx_of(req)->fs, ino, name));
}

/* Not done yet on read-write mounts: fallocate is refused; copy_file_range makes the kernel copy through
   read and write. */
static void op_fallocate(fuse_req_t req, fuse_ino_t i, int m, off_t o, off_t l, struct fuse_file_info *f)
{
	trace_op(req, "fallocate", i);
	(void)i, (void)m, (void)o, (void)l, (void)f;
	fuse_reply_err(req, ctx_of(req)->rw ? EOPNOTSUPP : EROFS);
}

static void op_copy_file_range(fuse_req_t req, fuse_ino_t i, off_t o, struct fuse_file_info *f, fuse_ino_t io,
			       off_t oo, struct fuse_file_info *fo, size_t l, int fl)
{
	trace_op(req, "copy_file_range", i);
	(void)i, (void)o, (void)f, (void)io, (void)oo, (void)fo, (void)l, (void)fl;
	fuse_reply_err(req, ctx_of(req)->rw ? ENOSYS : EROFS);
}

/* Of the btrfs ioctls only BTRFS_IOC_SYNC, _IO(0x94, 8): a full commit, as the kernel's (tests use it to know
   what is committed). Anything else is ENOTTY, as before there was an ioctl handler. */
#define BF_IOC_SYNC 0x9408u

static void op_ioctl(fuse_req_t req, fuse_ino_t ino, unsigned int cmd, void *arg, struct fuse_file_info *fi,
		     unsigned flags, const void *in_buf, size_t in_bufsz, size_t out_bufsz)
{
	trace_op(req, "ioctl", ino);
	(void)arg, (void)fi, (void)flags, (void)in_buf, (void)in_bufsz, (void)out_bufsz;
	if (cmd != BF_IOC_SYNC) {
		fuse_reply_err(req, ENOTTY);
		return;
	}
	const struct bf_fuse *c = ctx_of(req);
	int r = c->rw ? bf_fs_sync(c->fs) : 0;
	if (r)
		reply_err(req, r);
	else
		fuse_reply_ioctl(req, 0, NULL, 0);
}

const struct fuse_lowlevel_ops bf_fuse_ops = {
	.init = op_init,
	.lookup = op_lookup,
	.forget = op_forget,
	.forget_multi = op_forget_multi,
	.getattr = op_getattr,
	.readlink = op_readlink,
	.opendir = op_opendir,
	.readdir = op_readdir,
	.readdirplus = op_readdirplus,
	.releasedir = op_releasedir,
	.fsyncdir = op_fsync,
	.open = op_open,
	.read = op_read,
	.release = op_release,
	.flush = op_flush,
	.fsync = op_fsync,
	.statfs = op_statfs,
	.getxattr = op_getxattr,
	.listxattr = op_listxattr,
	.access = op_access,
	.setattr = op_setattr,
	.mknod = op_mknod,
	.mkdir = op_mkdir,
	.unlink = op_unlink,
	.rmdir = op_rmdir,
	.symlink = op_symlink,
	.rename = op_rename,
	.link = op_link,
	.write = op_write,
	.setxattr = op_setxattr,
	.removexattr = op_removexattr,
	.create = op_create,
	.fallocate = op_fallocate,
	.copy_file_range = op_copy_file_range,
	.ioctl = op_ioctl,
};
