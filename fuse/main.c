/*
 * fuse/main.c - the btrfs-fuse daemon: command line, opening the filesystem, mounting, and the request loop.
 *
 * Owns: argument parsing (btrfs options are taken out, the rest go to libfuse), the default mount options, and
 * the start-up sequence. Key idea: every check that can fail is done while the caller still waits on our exit
 * status and sees stderr: the mountpoint, then the devices (bf_fs_open validates and locks them all, decides
 * whether -o rw can be honoured, and reads the root directory once), then the options (by creating the FUSE
 * session, with "ro" added unless the filesystem is writable), then the mount itself. Only a mounted, working
 * filesystem goes into the background, so `btrfs-fuse img dir && ls dir` always works, and a failure leaves
 * neither a mount nor a daemon behind. The mount is read-only unless -o rw is given; a read-write mount ends
 * (unmount, SIGTERM, SIGINT) with a final commit before the process exits.
 *
 * Usage: btrfs-fuse [options] DEVICE_OR_IMAGE [MORE_DEVICES...] MOUNTPOINT; options may also follow the
 * positional arguments, as mount.fuse3 passes them (`btrfs-fuse SOURCE MOUNTPOINT -o OPTS`).
 */
#include "fuse/loop.h"
#include "fuse/qos.h"
#include "fuse/ops.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "alloc/alloc.h"
#include "util/util.h"

#ifndef BF_VERSION
#define BF_VERSION "unknown"
#endif

/* Nothing can change under a read-only mount, so the kernel may cache names and attributes for long. */
#define BF_RO_TIMEOUT 3600.0
/* A read-write mount: st_blocks and the like move when buffered data gets its extents at commit. */
#define BF_RW_TIMEOUT 1.0
/* At most this many worker threads for reads and fsync (libfuse's default max_threads is 10). */
#define BF_MAX_WORKERS 16u

struct strv {
	char **v;
	int n;
};

struct cli {
	struct strv pos;  /* positional arguments: devices..., mountpoint */
	struct strv dev;  /* -o device= */
	char *subvol;
	char *trace;       /* -o trace=FILE */
	char *iorecord;    /* -o iorecord=FILE (tests only) */
	uint64_t testkill; /* -o testkill=N (tests only) */
	uint64_t subvolid;
	unsigned commit;   /* -o commit=N: seconds between commits (0 = 30, as the kernel) */
	struct bf_loop_opts loop; /* -o spin=N, cpu_latency=N (fuse/loop.c) */
	bool degraded, help, version, debug, rw;
	bool allow_given;  /* allow_other, allow_root or noallow_other given */
	bool no_defperm;   /* nodefault_permissions */
	bool noacl;
	bool fsname_given, subtype_given;
	bool nologreplay;  /* nologreplay, rescue=nologreplay or rescue=all: only a read-only mount may skip the replay */
};

enum {
	K_HELP, K_VERSION, K_SUBVOL, K_SUBVOLID, K_DEVICE, K_DEGRADED, K_RO, K_RW, K_ALLOW, K_NOALLOW, K_DEFPERM,
	K_NODEFPERM, K_ACL, K_NOACL, K_FSNAME, K_SUBTYPE, K_DEBUG, K_COMMIT, K_TRACE, K_IOREC, K_TESTKILL, K_SPIN, K_CPULAT,
};

static const struct fuse_opt cli_opts[] = {
	FUSE_OPT_KEY("-h", K_HELP),
	FUSE_OPT_KEY("--help", K_HELP),
	FUSE_OPT_KEY("-V", K_VERSION),
	FUSE_OPT_KEY("--version", K_VERSION),
	FUSE_OPT_KEY("subvol=", K_SUBVOL),
	FUSE_OPT_KEY("subvolid=", K_SUBVOLID),
	FUSE_OPT_KEY("commit=", K_COMMIT),
	FUSE_OPT_KEY("spin=", K_SPIN),
	FUSE_OPT_KEY("cpu_latency=", K_CPULAT),
	FUSE_OPT_KEY("trace=", K_TRACE),
	FUSE_OPT_KEY("iorecord=", K_IOREC),
	FUSE_OPT_KEY("testkill=", K_TESTKILL),
	FUSE_OPT_KEY("device=", K_DEVICE),
	FUSE_OPT_KEY("degraded", K_DEGRADED),
	FUSE_OPT_KEY("ro", K_RO),
	FUSE_OPT_KEY("-r", K_RO),
	FUSE_OPT_KEY("rw", K_RW),
	FUSE_OPT_KEY("-w", K_RW),
	FUSE_OPT_KEY("allow_other", K_ALLOW),
	FUSE_OPT_KEY("allow_root", K_ALLOW),
	FUSE_OPT_KEY("noallow_other", K_NOALLOW),
	FUSE_OPT_KEY("default_permissions", K_DEFPERM),
	FUSE_OPT_KEY("nodefault_permissions", K_NODEFPERM),
	FUSE_OPT_KEY("acl", K_ACL),
	FUSE_OPT_KEY("noacl", K_NOACL),
	FUSE_OPT_KEY("fsname=", K_FSNAME),
	FUSE_OPT_KEY("subtype=", K_SUBTYPE),
	FUSE_OPT_KEY("-d", K_DEBUG),
	FUSE_OPT_KEY("debug", K_DEBUG),
	FUSE_OPT_END,
};

/* Options mount(8), mount.fuse3 or an fstab line may pass that mean nothing here (btrfs-fuse keeps no access
   times): dropped silently. */
static const char *const generic_ignored[] = {
	"defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group", "nofail", "_netdev",
	"relatime", "norelatime", "strictatime", "nostrictatime", "lazytime", "nolazytime", "diratime",
	"nodiratime", "iversion", "noiversion", "mand", "nomand", "silent", "loud", NULL,
};

/* Options of the kernel's btrfs that do not apply to btrfs-fuse: dropped with a note, so an fstab line copied
   from a kernel mount still works. A trailing '=' matches any value. */
static const char *const btrfs_ignored[] = {
	"compress", "compress=", "compress-force", "compress-force=", "space_cache", "space_cache=",
	"nospace_cache", "clear_cache", "ssd", "ssd_spread", "nossd", "nossd_spread", "discard", "discard=",
	"nodiscard", "autodefrag", "noautodefrag", "thread_pool=", "flushoncommit", "noflushoncommit",
	"datacow", "nodatacow", "datasum", "nodatasum", "barrier", "nobarrier", "max_inline=", "metadata_ratio=",
	"skip_balance", "enospc_debug", "noenospc_debug", "user_subvol_rm_allowed", "treelog", "notreelog",
	"rescan_uuid_tree", "fatal_errors=", "usebackuproot", "nologreplay", "rescue=", "norecovery", NULL,
};

static bool in_list(const char *const *list, const char *opt)
{
	for (; *list; list++) {
		size_t n = strlen(*list);
		if ((*list)[n - 1] == '=' ? strncmp(opt, *list, n) == 0 : strcmp(opt, *list) == 0)
			return true;
	}
	return false;
}

static int strv_push(struct strv *s, const char *arg)
{
	char **nv = realloc(s->v, (size_t)(s->n + 1) * sizeof(*nv));
	if (!nv)
		return -1;
	s->v = nv;
	if (!(s->v[s->n] = strdup(arg)))
		return -1;
	s->n++;
	return 0;
}

static void strv_free(struct strv *s)
{
	for (int i = 0; i < s->n; i++)
		free(s->v[i]);
	free(s->v);
}

/* A whole number in [min, max] (base: 10, or 0 for C prefixes) into *out; false if val is anything else. */
static bool parse_num(const char *val, int base, uint64_t min, uint64_t max, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(val, &end, base);
	if (errno || end == val || *end || val[0] == '-' || v < min || v > max)
		return false;
	*out = v;
	return true;
}

static int parse_subvolid(struct cli *c, const char *val)
{
	if (!parse_num(val, 0, 1, UINT64_MAX, &c->subvolid)) {
		bf_log(BF_LOG_ERR, "invalid subvolid '%s': give the numeric id of a subvolume (5 = the top level; "
		       "`btrfs subvolume list` shows them)", val);
		return -1;
	}
	return 0;
}

/* commit=N as the kernel's btrfs takes it: 0 means the default. */
static int parse_commit(struct cli *c, const char *val)
{
	uint64_t v;
	if (!parse_num(val, 10, 0, 86400, &v)) {
		bf_log(BF_LOG_ERR, "invalid commit interval '%s': give a number of seconds (0 = the default, 30)", val);
		return -1;
	}
	c->commit = (unsigned)v;
	return 0;
}

/* spin=N: microseconds, at most one second. */
static int parse_spin(struct cli *c, const char *val)
{
	uint64_t v;
	if (!parse_num(val, 10, 0, 1000000, &v)) {
		bf_log(BF_LOG_ERR, "invalid spin '%s': give microseconds from 0 (never spin) to 1000000", val);
		return -1;
	}
	c->loop.spin_us = (unsigned)v;
	return 0;
}

/* cpu_latency=N: microseconds, at most one second, or off. */
static int parse_cpu_latency(struct cli *c, const char *val)
{
	uint64_t v;
	if (strcmp(val, "off") == 0) {
		c->loop.cpu_latency_us = BF_CPU_LATENCY_OFF;
		return 0;
	}
	if (!parse_num(val, 10, 0, 1000000, &v)) {
		bf_log(BF_LOG_ERR, "invalid cpu_latency '%s': give microseconds from 0 to 1000000, or off", val);
		return -1;
	}
	c->loop.cpu_latency_us = (int32_t)v;
	return 0;
}

/* testkill=N (tests only): a positive count of device writes. */
static int parse_testkill(struct cli *c, const char *val)
{
	if (!parse_num(val, 10, 1, UINT64_MAX, &c->testkill)) {
		bf_log(BF_LOG_ERR, "invalid testkill '%s': give the number (1 or more) of the device write to die at",
		       val);
		return -1;
	}
	return 0;
}

/* An option libfuse does not own: drop the ones that mean nothing here, keep the rest for libfuse. */
static int other_opt(const char *arg)
{
	if (in_list(generic_ignored, arg) || strncmp(arg, "x-", 2) == 0 || strncmp(arg, "comment=", 8) == 0)
		return 0;
	if (in_list(btrfs_ignored, arg)) {
		bf_log(BF_LOG_WARN, "note: ignoring the kernel btrfs option '%s', which does not apply to btrfs-fuse",
		       arg);
		return 0;
	}
	return 1;
}

static int opt_proc(void *data, const char *arg, int key, struct fuse_args *out)
{
	struct cli *c = data;
	(void)out;

	switch (key) {
	case FUSE_OPT_KEY_NONOPT: return strv_push(&c->pos, arg);
	case FUSE_OPT_KEY_OPT:
		if (strcmp(arg, "nologreplay") == 0 || (strncmp(arg, "rescue=", 7) == 0 &&
							 (strstr(arg, "nologreplay") || strstr(arg, "all"))))
			c->nologreplay = true;
		return other_opt(arg);
	case K_HELP: c->help = true; return 0;
	case K_VERSION: c->version = true; return 0;
	case K_SUBVOL:
		free(c->subvol);
		return (c->subvol = strdup(arg + strlen("subvol="))) ? 0 : -1;
	case K_SUBVOLID: return parse_subvolid(c, arg + strlen("subvolid="));
	case K_COMMIT: return parse_commit(c, arg + strlen("commit="));
	case K_SPIN: return parse_spin(c, arg + strlen("spin="));
	case K_CPULAT: return parse_cpu_latency(c, arg + strlen("cpu_latency="));
	case K_TRACE:
		free(c->trace);
		return (c->trace = strdup(arg + strlen("trace="))) ? 0 : -1;
	case K_IOREC:
		free(c->iorecord);
		return (c->iorecord = strdup(arg + strlen("iorecord="))) ? 0 : -1;
	case K_TESTKILL: return parse_testkill(c, arg + strlen("testkill="));
	case K_DEVICE: return strv_push(&c->dev, arg + strlen("device="));
	case K_DEGRADED: c->degraded = true; return 0;
	case K_RO: c->rw = false; return 0; /* added below unless the mount is writable; the last of ro/rw wins */
	case K_RW: c->rw = true; return 0;
	case K_ALLOW: c->allow_given = true; return 1;
	case K_NOALLOW: c->allow_given = true; return 0;
	case K_DEFPERM: c->no_defperm = false; return 0; /* added below unless turned off */
	case K_NODEFPERM: c->no_defperm = true; return 0;
	case K_ACL: c->noacl = false; return 0;
	case K_NOACL: c->noacl = true; return 0;
	case K_FSNAME: c->fsname_given = true; return 1;
	case K_SUBTYPE: c->subtype_given = true; return 1;
	case K_DEBUG: c->debug = true; return 1;
	}
	return 1;
}

/* A "--" the user gave stays in args after parsing; libfuse would reject it later. */
static void drop_separators(struct fuse_args *args)
{
	int j = 1;
	for (int i = 1; i < args->argc; i++) {
		if (strcmp(args->argv[i], "--") == 0 && args->allocated)
			free(args->argv[i]);
		else
			args->argv[j++] = args->argv[i];
	}
	args->argc = j;
	args->argv[j] = NULL;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: btrfs-fuse [options] DEVICE_OR_IMAGE [MORE_DEVICES...] MOUNTPOINT\n");
}

static void help(void)
{
	usage(stdout);
	printf("\n"
	       "Mounts a btrfs filesystem (an image file or a block device; for a filesystem on several devices\n"
	       "give all of them) through FUSE, without the kernel's btrfs driver.\n"
	       "The mount is READ-ONLY unless -o rw is given. Write support is new and still being tested\n"
	       "against the kernel: keep a backup of what you mount read-write. Images with RAID5/6, simple\n"
	       "quotas or unknown read-only-compatible features are always mounted read-only (with a message\n"
	       "saying why). Writing to an image with quota groups marks their counts inconsistent, as the kernel\n"
	       "does when it cannot count: run 'btrfs quota rescan'. A log tree (changes fsynced before a crash)\n"
	       "is replayed by -o rw, as the kernel does; a read-only mount shows the last commit without it.\n"
	       "\n"
	       "btrfs options:\n"
	       "    -o subvol=PATH         mount the subvolume at PATH (relative to the top-level subvolume)\n"
	       "    -o subvolid=N          mount the subvolume with id N (5 = the top level)\n"
	       "                           (with neither, the default subvolume is mounted)\n"
	       "    -o device=PATH         another device of the filesystem (may be repeated)\n"
	       "    -o degraded            mount even though devices are missing, if the profiles allow it\n"
	       "    -o noacl               do not apply POSIX ACLs to permission checks (acl is the default)\n"
	       "    -o ro                  read-only (the default)\n"
	       "    -o rw                  read-write: changes are committed every 30 seconds, on fsync\n"
	       "                           and at unmount (also on SIGTERM and SIGINT)\n"
	       "    -o commit=N            commit every N seconds instead of 30 (read-write mounts)\n"
	       "    -o spin=N              after a request, look for the next one for N microseconds before\n"
	       "                           sleeping (default 50; 0 = sleep at once, for the least CPU use)\n"
	       "    -o cpu_latency=N       while requests keep coming, ask idle CPUs to wake up within N\n"
	       "                           microseconds (/dev/cpu_dma_latency, root only; default 0: they\n"
	       "                           poll instead of halting until 2 ms after the last request);\n"
	       "                           off = never ask\n"
	       "    -o trace=FILE          append one JSON line per event to FILE: FUSE requests, tree\n"
	       "                           searches, block reads, copy-on-write, splits and merges, reference\n"
	       "                           changes, transactions and commits\n"
	       "\n"
	       "For tests only (crash tests; never on data you care about):\n"
	       "    -o iorecord=FILE       record every device write (with its data) and every flush in the\n"
	       "                           new file FILE (tests/lib/iorec.py replays it, power cuts included)\n"
	       "    -o testkill=N          the daemon kills itself with SIGKILL just before its N-th device write\n"
	       "\n"
	       "Defaults, as a kernel mount behaves:\n"
	       "    -o default_permissions the kernel checks permission bits and ACLs;\n"
	       "                           -o nodefault_permissions turns this off (then every file can be\n"
	       "                           read by whoever can reach the mount)\n"
	       "    -o allow_other         added when started by root, so every user can use the mount;\n"
	       "                           -o noallow_other or -o allow_root turns it off. An ordinary user\n"
	       "                           gets it only by asking, and only if /etc/fuse.conf has\n"
	       "                           user_allow_other\n"
	       "    -o fsname=DEVICE,subtype=btrfs-fuse\n"
	       "                           what mount and df show (type fuse.btrfs-fuse)\n"
	       "Options a kernel btrfs mount takes but that mean nothing here (noatime, compress=, ssd, ...)\n"
	       "are accepted and ignored.\n"
	       "\n"
	       "General options:\n");
	fuse_cmdline_help();
	printf("\nFUSE options:\n");
	fuse_lowlevel_help();
	printf("\nSee btrfs-fuse(1). In /etc/fstab:  /path/image  /mnt  fuse.btrfs-fuse  ro,subvol=home  0 0\n");
}

/* True if a and b name the same file or block device. */
static bool same_file(const char *a, const char *b)
{
	struct stat sa, sb;
	if (stat(a, &sa) != 0 || stat(b, &sb) != 0)
		return strcmp(a, b) == 0;
	if (S_ISBLK(sa.st_mode) && S_ISBLK(sb.st_mode))
		return sa.st_rdev == sb.st_rdev;
	return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

/* The devices: all positional arguments but the last, then each device= not already named. */
static int collect_devices(const struct cli *c, const char ***out)
{
	int n = 0;
	const char **v = calloc((size_t)(c->pos.n + c->dev.n), sizeof(*v));
	if (!v)
		return -1;
	for (int i = 0; i < c->pos.n - 1; i++)
		v[n++] = c->pos.v[i];
	for (int i = 0; i < c->dev.n; i++) {
		bool dup = false;
		for (int j = 0; j < n && !dup; j++)
			dup = same_file(v[j], c->dev.v[i]);
		if (!dup)
			v[n++] = c->dev.v[i];
	}
	*out = v;
	return n;
}

/* Undo the octal escapes (\040 for a space ...) of /proc/self/mountinfo, in place. */
static void unescape_mountinfo(char *s)
{
	char *d = s;
	while (*s) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] >= '0' && s[2] <= '7' && s[3] >= '0' &&
		    s[3] <= '7') {
			*d++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 + (s[3] - '0'));
			s += 4;
		} else {
			*d++ = *s++;
		}
	}
	*d = '\0';
}

/* If something is mounted exactly at path, describe it into what (fstype and source) and return true. */
static bool mounted_at(const char *path, char *what, size_t len)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char *line = NULL;
	size_t cap = 0;
	bool found = false;

	if (!f)
		return false;
	while (getline(&line, &cap, f) > 0) {
		char *save, *mp = NULL, *tok = strtok_r(line, " \n", &save);
		for (int i = 0; tok && i < 4; i++)
			mp = tok = strtok_r(NULL, " \n", &save);
		if (!mp)
			continue;
		unescape_mountinfo(mp);
		if (strcmp(mp, path) != 0)
			continue;
		while ((tok = strtok_r(NULL, " \n", &save)) && strcmp(tok, "-") != 0)
			;
		char *type = strtok_r(NULL, " \n", &save), *src = strtok_r(NULL, " \n", &save);
		if (src)
			unescape_mountinfo(src);
		snprintf(what, len, "%s (type %s)", src ? src : "?", type ? type : "?");
		found = true;
	}
	free(line);
	fclose(f);
	return found;
}

static int add_opt(struct fuse_args *args, const char *name, const char *value)
{
	char *o = NULL;
	size_t n = strlen(name) + (value ? strlen(value) + 1 : 0) + 1;
	char *kv = malloc(n);
	if (!kv)
		return -1;
	snprintf(kv, n, "%s%s%s", name, value ? "=" : "", value ? value : "");
	int r = fuse_opt_add_opt_escaped(&o, kv);
	free(kv);
	if (r == 0)
		r = fuse_opt_add_arg(args, "-o");
	if (r == 0)
		r = fuse_opt_add_arg(args, o);
	free(o);
	return r;
}

/* The mountpoint goes last, for fuse_parse_cmdline to resolve. No "--" before it (libfuse keeps a "--" that is
   followed by -o options and then rejects it): a name starting with '-' gets a "./" instead. */
static int add_mountpoint(struct fuse_args *args, const char *mp)
{
	if (mp[0] != '-')
		return fuse_opt_add_arg(args, mp);
	size_t n = strlen(mp) + 3;
	char *p = malloc(n);
	if (!p)
		return -1;
	snprintf(p, n, "./%s", mp);
	int r = fuse_opt_add_arg(args, p);
	free(p);
	return r;
}

/* The mount options we add: what mount(8) shows and the kernel-mount-like permission defaults ("ro" is added
   once the filesystem is open and its writability known). */
static int add_defaults(struct fuse_args *args, const struct cli *c, const char *first_dev)
{
	char real[PATH_MAX];
	int r = 0;

	if (!c->subtype_given)
		r = add_opt(args, "subtype", "btrfs-fuse");
	if (r == 0 && !c->fsname_given)
		r = add_opt(args, "fsname", realpath(first_dev, real) ? real : first_dev);
	if (r == 0 && !c->no_defperm)
		r = add_opt(args, "default_permissions", NULL);
	if (r == 0 && !c->allow_given && geteuid() == 0)
		r = add_opt(args, "allow_other", NULL);
	return r;
}

/* libfuse's messages, once stderr is gone: through our log (syslog), one line each. */
static void fuse_log_to_bf(enum fuse_log_level level, const char *fmt, va_list ap)
{
	char buf[1024];
	vsnprintf(buf, sizeof(buf), fmt, ap);
	size_t n = strlen(buf);
	while (n && buf[n - 1] == '\n')
		buf[--n] = '\0';
	if (!n)
		return;
	enum bf_log_level l = level <= FUSE_LOG_ERR ? BF_LOG_ERR : level == FUSE_LOG_WARNING ? BF_LOG_WARN
			      : level == FUSE_LOG_DEBUG ? BF_LOG_DEBUG : BF_LOG_INFO;
	bf_log(l, "%s", buf);
}

/* Serve until unmounted. One thread reads and answers the requests (a wake-up of another thread per request would
   cost more than most requests do); -s leaves out the workers that take file reads and fsync (fuse/pool.h), and
   -o max_threads=N sets how many there are. */
static int run_loop(struct fuse_session *se, const struct fuse_cmdline_opts *o, struct bf_fuse *ctx)
{
	if (!o->singlethread) {
		unsigned n = o->max_threads >= 1 && o->max_threads <= BF_MAX_WORKERS ? o->max_threads : BF_MAX_WORKERS;
		int r = bf_pool_new(n, &ctx->pool);
		if (r < 0)
			bf_log(BF_LOG_WARN, "cannot start the worker threads (%s): serving every request in one thread",
			       strerror(-r));
	}
	int r = bf_loop_run(se, &ctx->loop);
	bf_pool_free(ctx->pool); /* the queued requests are answered first */
	ctx->pool = NULL;
	return r;
}

/* Open and check the filesystem; the daemon context gets the handle and the root's inode number. */
static int open_fs(const struct cli *c, const char **devs, int ndevs, struct bf_fuse *ctx)
{
	struct bf_fs_opts fo = { .open = { .paths = devs, .npaths = ndevs, .degraded = c->degraded,
					   .writable = c->rw },
				 .subvol = c->subvol, .subvolid = c->subvolid, .commit_interval = c->commit };
	char err[512] = "";
	struct stat st;

	if (c->rw && c->nologreplay) {
		bf_log(BF_LOG_ERR, "nologreplay needs a read-only mount, as with the kernel: drop -o rw to see the last "
		       "commit without the log, or drop nologreplay to replay the log tree");
		return -1;
	}
	/* Opened before the daemon changes directory, so a relative path means what the user meant. */
	if (c->trace) {
		int t = bf_trace_open(c->trace);
		if (t < 0) {
			bf_log(BF_LOG_ERR, "cannot open the trace file %s: %s", c->trace, strerror(-t));
			return -1;
		}
	}
	if (c->iorecord) {
		int t = bf_iorec_open(c->iorecord);
		if (t < 0) {
			bf_log(BF_LOG_ERR, "cannot start the I/O record %s: %s%s", c->iorecord, strerror(-t),
			       t == -EEXIST ? " (it must be a new or empty file)" : "");
			return -1;
		}
	}
	bf_iorec_set_kill(c->testkill);
	int r = bf_fs_open(&fo, &ctx->fs, err, sizeof(err));
	if (r < 0) {
		if (err[0])
			bf_log(BF_LOG_ERR, "%s", err);
		else
			bf_log(BF_LOG_ERR, "cannot open %s: %s", devs[0], strerror(-r));
		return -1;
	}
	memset(&st, 0, sizeof(st));
	r = bf_fs_getattr(ctx->fs, BF_ROOT_NODEID, &st);
	if (r < 0) {
		bf_log(BF_LOG_ERR, "cannot read the root directory of the subvolume to mount on %s: %s", devs[0],
		       strerror(-r));
		bf_fs_close(ctx->fs);
		ctx->fs = NULL;
		return -1;
	}
	ctx->root_ino = st.st_ino;
	ctx->rw = bf_fs_writable(ctx->fs);
	ctx->timeout = ctx->rw ? BF_RW_TIMEOUT : BF_RO_TIMEOUT;
	return 0;
}

/* Mount, go to the background unless asked not to, serve until unmounted. Returns the exit status. */
static int serve(struct fuse_session *se, const struct fuse_cmdline_opts *o, const char *mnt,
		 struct bf_fuse *ctx, const char *dev)
{
	if (fuse_set_signal_handlers(se) != 0) {
		bf_log(BF_LOG_ERR, "cannot install signal handlers");
		return 1;
	}
	if (fuse_session_mount(se, mnt) != 0) {
		bf_log(BF_LOG_ERR, "cannot mount on %s (see the message above)", mnt);
		fuse_remove_signal_handlers(se);
		return 1;
	}
	if (fuse_daemonize(o->foreground) != 0) {
		bf_log(BF_LOG_ERR, "cannot go to the background; run with -f to stay in the foreground");
		fuse_session_unmount(se);
		fuse_remove_signal_handlers(se);
		return 1;
	}
	if (!o->foreground) {
		bf_log_to_syslog(true);
		fuse_set_log_func(fuse_log_to_bf);
	}
	bf_log(BF_LOG_INFO, "mounted %s on %s, %s, subvolume %llu", dev, mnt, ctx->rw ? "read-write" : "read-only",
	       (unsigned long long)bf_fs_mounted_subvol(ctx->fs));
	int r = run_loop(se, o, ctx);
	fuse_session_unmount(se);
	fuse_remove_signal_handlers(se);
	if (r < 0)
		bf_log(BF_LOG_ERR, "the request loop for %s failed: %s", mnt, strerror(-r));
	return r < 0 ? 1 : 0; /* r > 0: ended by a signal after a clean unmount */
}

/* Everything after the command line is parsed: returns the exit status. */
static int start(struct cli *c, struct fuse_args *args)
{
	struct fuse_cmdline_opts o;
	struct bf_fuse ctx = { .timeout = BF_RO_TIMEOUT, .acl = !c->noacl, .default_permissions = !c->no_defperm,
			       .loop = c->loop };
	const char **devs = NULL;
	struct fuse_session *se = NULL;
	char what[PATH_MAX + 64];
	int status = 1;

	memset(&o, 0, sizeof(o));
	int ndevs = collect_devices(c, &devs);
	if (ndevs < 0 || add_defaults(args, c, devs[0]) != 0 || add_mountpoint(args, c->pos.v[c->pos.n - 1]) != 0) {
		bf_log(BF_LOG_ERR, "out of memory");
		goto out;
	}
	if (fuse_parse_cmdline(args, &o) != 0)
		goto out; /* libfuse said why (bad mount point ...) */
	if (strncmp(o.mountpoint, "/dev/fd/", 8) != 0 && mounted_at(o.mountpoint, what, sizeof(what))) {
		bf_log(BF_LOG_ERR, "mountpoint %s is busy: %s is mounted there; unmount it first "
		       "(fusermount3 -u or umount) or choose another directory", o.mountpoint, what);
		goto out_opts;
	}
	if (open_fs(c, devs, ndevs, &ctx) != 0)
		goto out_opts;
	if ((!ctx.rw && add_opt(args, "ro", NULL) != 0) || !(ctx.conn_opts = fuse_parse_conn_info_opts(args)))
		goto out_fs;
	se = fuse_session_new(args, &bf_fuse_ops, sizeof(bf_fuse_ops), &ctx);
	if (!se) {
		bf_log(BF_LOG_ERR, "cannot set up the FUSE session (see the message above; "
		       "`btrfs-fuse --help` lists the options)");
		goto out_fs;
	}
	status = serve(se, &o, o.mountpoint, &ctx, devs[0]);
	fuse_session_destroy(se);
	/* The final commit: its failure (the log says why) makes the exit status non-zero. */
	if (ctx.rw && bf_fs_sync(ctx.fs) != 0)
		status = 1;
out_fs:
	bf_fs_close(ctx.fs);
out_opts:
	free(ctx.conn_opts);
	free(o.mountpoint);
out:
	free(devs);
	return status;
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct cli c;
	int status = 1;

	memset(&c, 0, sizeof(c));
	c.loop.spin_us = BF_SPIN_US_DEFAULT;
	c.loop.cpu_latency_us = BF_CPU_LATENCY_DEFAULT;
	if (fuse_opt_parse(&args, &c, cli_opts, opt_proc) != 0) {
		usage(stderr);
		goto out;
	}
	if (c.help || c.version) {
		if (c.help)
			help();
		else
			printf("btrfs-fuse %s\n", BF_VERSION);
		status = 0;
		goto out;
	}
	drop_separators(&args);
	if (c.pos.n < 2) {
		bf_log(BF_LOG_ERR, "missing %s", c.pos.n ? "the MOUNTPOINT (or the device)" : "DEVICE and MOUNTPOINT");
		usage(stderr);
		fprintf(stderr, "Try 'btrfs-fuse --help' for more information.\n");
		goto out;
	}
	if (c.debug)
		bf_log_set_verbosity(BF_LOG_DEBUG);
	status = start(&c, &args);
out:
	fuse_opt_free_args(&args);
	strv_free(&c.pos);
	strv_free(&c.dev);
	free(c.subvol);
	free(c.trace);
	free(c.iorecord);
	bf_trace_close();
	bf_iorec_close();
	return status;
}
