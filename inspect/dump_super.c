/*
 * inspect/dump_super.c - `dump-super`: every field of a superblock, its copies, system chunks and backups.
 *
 * Owns: the dump-super subcommand.
 *
 * Key idea: the superblock is read straight from each image file (no filesystem open, so this works on images
 * nothing else can open). Without --all-copies the copy the core would use (bf_super_read: an intact primary,
 * else the newest valid copy) is shown; if none is valid the primary is shown anyway, marked invalid with
 * bf_super_check's reason. With --all-copies each copy that fits on the device is read and checked on its own.
 * All decoding works on a 4096-byte local copy; the system chunk array is walked with bounds checks (items.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "inspect/inspect.h"
#include "util/util.h"

static void flags_field(struct emit *e, const char *label, uint64_t v, void (*namer)(uint64_t, char *, size_t))
{
	char names[512] = "";
	if (namer)
		namer(v, names, sizeof(names));
	em_flags(e, label, v, names);
	em_nl(e);
}

static void super_flag_names(uint64_t v, char *buf, size_t len)
{
	static const struct {
		uint64_t bit;
		const char *name;
	} names[] = { { BF_HEADER_FLAG_WRITTEN, "WRITTEN" },	       { BF_HEADER_FLAG_RELOC, "RELOC" },
		      { BF_SUPER_FLAG_ERROR, "ERROR" },		       { BF_SUPER_FLAG_SEEDING, "SEEDING" },
		      { BF_SUPER_FLAG_METADUMP, "METADUMP" },	       { BF_SUPER_FLAG_METADUMP_V2, "METADUMP_V2" },
		      { BF_SUPER_FLAG_CHANGING_FSID, "CHANGING_FSID" }, { BF_SUPER_FLAG_CHANGING_FSID_V2, "CHANGING_FSID_V2" } };
	size_t used = 0;
	buf[0] = 0;
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (!(v & names[i].bit) || used + 1 >= len)
			continue;
		int w = snprintf(buf + used, len - used, "%s%s", used ? ", " : "", names[i].name);
		used += w > 0 ? (size_t)w : 0;
		v &= ~names[i].bit;
	}
	if (v && used + 1 < len)
		snprintf(buf + used, len - used, "%sunknown 0x%llx", used ? ", " : "", (unsigned long long)v);
}

static void u64f(struct emit *e, const char *label, uint64_t v)
{
	em_u64(e, label, v);
	em_nl(e);
}

static void uuidf(struct emit *e, const char *label, const uint8_t *u)
{
	em_uuid(e, label, u);
	em_nl(e);
}

static void dev_item_fields(struct emit *e, const struct bf_super *sb)
{
	const struct bf_dev_item *d = &sb->dev_item;
	bool meta = get64(sb->incompat_flags) & BF_FEATURE_INCOMPAT_METADATA_UUID;
	uuidf(e, "dev_item.uuid", d->uuid);
	bool match = memcmp(d->fsid, meta ? sb->metadata_uuid : sb->fsid, BF_FSID_SIZE) == 0;
	em_uuid(e, "dev_item.fsid", d->fsid);
	em_text(e, match ? "[match]" : "[DON'T MATCH]");
	em_ju64(e, "dev_item.fsid_matches", match);
	em_nl(e);
	u64f(e, "dev_item.type", get64(d->type));
	u64f(e, "dev_item.total_bytes", get64(d->total_bytes));
	u64f(e, "dev_item.bytes_used", get64(d->bytes_used));
	u64f(e, "dev_item.io_align", get32(d->io_align));
	u64f(e, "dev_item.io_width", get32(d->io_width));
	u64f(e, "dev_item.sector_size", get32(d->sector_size));
	u64f(e, "dev_item.devid", get64(d->devid));
	u64f(e, "dev_item.dev_group", get32(d->dev_group));
	u64f(e, "dev_item.seek_speed", d->seek_speed);
	u64f(e, "dev_item.bandwidth", d->bandwidth);
	u64f(e, "dev_item.generation", get64(d->generation));
}

static void backup_roots(struct emit *e, const struct bf_super *sb)
{
	em_line(e, "backup_roots[%d]:\n", BF_NUM_BACKUP_ROOTS);
	em_arr_begin(e, "backup_roots");
	for (int i = 0; i < BF_NUM_BACKUP_ROOTS; i++) {
		const struct bf_root_backup *b = &sb->super_roots[i];
		em_obj_begin(e, NULL);
		em_ju64(e, "slot", (uint64_t)i);
		if (!get64(b->tree_root) && !get64(b->tree_root_gen)) {
			em_obj_end(e);
			continue;
		}
		em_line(e, "\tbackup %d:\n", i);
		e->indent = 2;
		e->align = 0;
		struct {
			const char *name;
			uint64_t at, gen;
			uint8_t level;
		} t[] = { { "tree_root", get64(b->tree_root), get64(b->tree_root_gen), b->tree_root_level },
			  { "chunk_root", get64(b->chunk_root), get64(b->chunk_root_gen), b->chunk_root_level },
			  { "extent_root", get64(b->extent_root), get64(b->extent_root_gen), b->extent_root_level },
			  { "fs_root", get64(b->fs_root), get64(b->fs_root_gen), b->fs_root_level },
			  { "dev_root", get64(b->dev_root), get64(b->dev_root_gen), b->dev_root_level },
			  { "csum_root", get64(b->csum_root), get64(b->csum_root_gen), b->csum_root_level } };
		for (size_t j = 0; j < sizeof(t) / sizeof(t[0]); j++) {
			char gen[48], lvl[48];
			snprintf(gen, sizeof(gen), "gen|%s_gen", t[j].name);
			snprintf(lvl, sizeof(lvl), "level|%s_level", t[j].name);
			em_u64(e, t[j].name, t[j].at);
			em_u64(e, gen, t[j].gen);
			em_u64(e, lvl, t[j].level);
			em_nl(e);
		}
		u64f(e, "total_bytes", get64(b->total_bytes));
		u64f(e, "bytes_used", get64(b->bytes_used));
		u64f(e, "num_devices", get64(b->num_devices));
		e->indent = 0;
		em_obj_end(e);
	}
	em_arr_end(e);
	e->align = 24;
}

static void super_fields(struct emit *e, const struct bf_super *sb)
{
	unsigned ct = get16(sb->csum_type);
	int cs = bf_csum_size(ct);
	char hex[2 * BF_CSUM_MAX + 1] = "", label[BF_LABEL_SIZE + 1];
	em_enum(e, "csum_type", ct, bf_csum_name(ct));
	em_nl(e);
	u64f(e, "csum_size", (uint64_t)(cs > 0 ? cs : 0));
	bf_csum_hex(ct, sb->csum, hex, sizeof(hex));
	em_str(e, "csum", hex);
	em_nl(e);
	u64f(e, "bytenr", get64(sb->bytenr));
	flags_field(e, "flags", get64(sb->flags), super_flag_names);
	char magic[9];
	for (int i = 0; i < 8; i++) {
		char ch = (char)sb->magic.b[i];
		magic[i] = ch >= 0x20 && ch < 0x7f ? ch : '.';
	}
	magic[8] = 0;
	em_str(e, "magic", magic);
	em_text(e, get64(sb->magic) == BF_MAGIC ? "[match]" : "[DON'T MATCH]");
	em_ju64(e, "magic_matches", get64(sb->magic) == BF_MAGIC);
	em_nl(e);
	uuidf(e, "fsid", sb->fsid);
	uuidf(e, "metadata_uuid", (get64(sb->incompat_flags) & BF_FEATURE_INCOMPAT_METADATA_UUID) ? sb->metadata_uuid
												    : sb->fsid);
	size_t n = strnlen(sb->label, BF_LABEL_SIZE);
	memcpy(label, sb->label, n);
	label[n] = 0;
	em_str(e, "label", label);
	em_nl(e);
	u64f(e, "generation", get64(sb->generation));
	u64f(e, "root", get64(sb->root));
	u64f(e, "sys_array_size", get32(sb->sys_chunk_array_size));
	u64f(e, "chunk_root_generation", get64(sb->chunk_root_generation));
	u64f(e, "root_level", sb->root_level);
	u64f(e, "chunk_root", get64(sb->chunk_root));
	u64f(e, "chunk_root_level", sb->chunk_root_level);
	u64f(e, "log_root", get64(sb->log_root));
	u64f(e, "log_root_transid", get64(sb->unused_log_root_transid));
	u64f(e, "log_root_level", sb->log_root_level);
	u64f(e, "total_bytes", get64(sb->total_bytes));
	u64f(e, "bytes_used", get64(sb->bytes_used));
	u64f(e, "sectorsize", get32(sb->sectorsize));
	u64f(e, "nodesize", get32(sb->nodesize));
	u64f(e, "leafsize", get32(sb->unused_leafsize));
	u64f(e, "stripesize", get32(sb->stripesize));
	u64f(e, "root_dir", get64(sb->root_dir_objectid));
	u64f(e, "num_devices", get64(sb->num_devices));
	flags_field(e, "compat_flags", get64(sb->compat_flags), NULL);
	flags_field(e, "compat_ro_flags", get64(sb->compat_ro_flags), bf_compat_ro_names);
	flags_field(e, "incompat_flags", get64(sb->incompat_flags), bf_incompat_names);
	u64f(e, "cache_generation", get64(sb->cache_generation));
	u64f(e, "uuid_tree_generation", get64(sb->uuid_tree_generation));
	u64f(e, "nr_global_roots", get64(sb->nr_global_roots));
	dev_item_fields(e, sb);
	em_line(e, "sys_chunk_array[%d]:\n", BF_SYSTEM_CHUNK_ARRAY_SIZE);
	e->align = 0;
	decode_sys_chunk_array(e, sb);
	e->indent = 0;
	backup_roots(e, sb);
}

/* Show one superblock image read at `at`; valid/why say what bf_super_check found. */
static void show(struct emit *e, const char *path, int copy, uint64_t at, const struct bf_super *sb, int r,
		 const char *why)
{
	em_obj_begin(e, NULL);
	em_line(e, "superblock: copy %d, bytenr=%llu, device=%s\n", copy, (unsigned long long)at, path);
	em_line(e, "---------------------------------------------------------\n");
	if (r)
		em_line(e, "valid: NO (%s)\n", why);
	else
		em_line(e, "valid: yes\n");
	if (e->json) {
		em_str(e, "device", path);
		em_ju64(e, "copy", (uint64_t)copy);
		em_ju64(e, "offset", at);
		em_bool(e, "valid", r == 0);
		if (r)
			em_str(e, "invalid_reason", why);
	}
	e->indent = 0;
	super_fields(e, sb);
	em_obj_end(e);
	em_line(e, "\n");
}

static int read_copy(int fd, uint64_t at, struct bf_super *sb)
{
	ssize_t n = pread(fd, sb, sizeof(*sb), (off_t)at);
	return n == (ssize_t)sizeof(*sb) ? 0 : -EIO;
}

static int dump_device(struct emit *e, const char *path, bool all)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	char why[512];
	struct bf_super sb;
	uint64_t size;
	if (fd < 0 || fstat(fd, &st) != 0) {
		insp_err("cannot open %s: %s", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return 1;
	}
	size = (uint64_t)st.st_size;
	if (S_ISBLK(st.st_mode)) {
		off_t end = lseek(fd, 0, SEEK_END);
		size = end > 0 ? (uint64_t)end : 0;
	}
	int rc = 0, copy;
	if (!all && bf_super_read(fd, size, &sb, &copy, why, sizeof(why)) == 0) {
		show(e, path, copy, bf_sb_offset(copy), &sb, 0, "");
	} else {
		for (int i = 0; i < BF_SUPER_MIRROR_MAX; i++) {
			uint64_t at = bf_sb_offset(i);
			if (at + BF_SUPER_INFO_SIZE > size)
				break;
			int r = read_copy(fd, at, &sb);
			if (r == 0)
				r = bf_super_check(&sb, at, why, sizeof(why));
			else
				snprintf(why, sizeof(why), "read error");
			rc |= r != 0;
			show(e, path, i, at, &sb, r, why);
			if (!all)
				break;
		}
	}
	close(fd);
	return rc;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: btrfs-fuse-inspect dump-super IMAGE... [--all-copies] [--json]\n"
		   "Print every superblock field of each image: flags and features by name, checksum type,\n"
		   "device item, the system chunk array decoded, and the backup roots.\n"
		   "  -a, --all-copies  read each copy (64 KiB, 64 MiB, 256 GiB) that fits and say if it is valid\n"
		   "  -j, --json        JSON (an array with one object per superblock shown)\n"
		   "Without --all-copies the copy btrfs-fuse would use (the newest valid) is shown; if no copy\n"
		   "is valid, the primary is shown with the reason.\n");
}

int cmd_dump_super(int argc, char **argv)
{
	static const struct option opts[] = { { "all-copies", no_argument, NULL, 'a' },
					       { "json", no_argument, NULL, 'j' },
					       { "help", no_argument, NULL, 'h' },
					       { NULL, 0, NULL, 0 } };
	bool all = false, json = false;
	int c;
	while ((c = getopt_long(argc, argv, "ajh", opts, NULL)) != -1) {
		if (c == 'a')
			all = true;
		else if (c == 'j')
			json = true;
		else if (c == 'h')
			return usage(stdout), 0;
		else
			return usage(stderr), 2;
	}
	if (optind >= argc)
		return usage(stderr), 2;
	struct emit e;
	em_init(&e, stdout, json);
	e.indent = 0;
	e.align = 24;
	em_arr_begin(&e, NULL);
	int rc = 0;
	for (int i = optind; i < argc; i++)
		rc |= dump_device(&e, argv[i], all);
	em_arr_end(&e);
	if (json)
		fputc('\n', stdout);
	return rc;
}
