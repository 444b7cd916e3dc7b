/*
 * inspect/map.c - `map`: where every byte of a file lives, down to the device and mirror, and whether its
 * checksums verify.
 *
 * Owns: the map subcommand: path resolution, the walk over the file's EXTENT_DATA items, the logical ->
 * physical mapping of each piece on each mirror, and the csum-tree lookup and verification.
 *
 * Key idea: the path is resolved through the fs layer (bf_fs_open + bf_fs_lookup, component by component);
 * the node id it returns names (subvolume, objectid) by the rule fs/fs.h documents. When the fs layer cannot
 * open the image, or gives a node id outside that rule, the directory items are walked here instead
 * (DIR_ITEM by name hash, crossing into subvolumes at ROOT_ITEM locations). Then the file's extent items are
 * listed in order, gaps shown as implicit holes; each on-disk range is cut at stripe boundaries and mapped with
 * bf_vol_map for every mirror (for RAID5/6: the data stripe and the P and Q stripes). Checksums are looked up
 * per sector in the csum tree and each mirror's copy is read with bf_vol_read and checked with bf_csum.
 */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fs/fs.h"
#include "inspect/inspect.h"
#include "util/util.h"

#define MAX_COMPONENTS 4096
#define MAX_SECTORS_SHOWN 8 /* per extent, mismatching sectors listed one by one */

struct target {
	uint64_t subvol, objectid;
};

struct mapper {
	struct insp_fs *fs;
	struct emit e;
	struct target t;
	int bad; /* checksum mismatches or unreadable pieces */
};

/* ---- path resolution through the fs layer ---- */

static bool split_nodeid(uint64_t nodeid, uint64_t mounted, struct target *t)
{
	if (nodeid == BF_ROOT_NODEID)
		*t = (struct target){ mounted, BF_FIRST_FREE_OBJECTID };
	else if (nodeid < (1ULL << 48))
		*t = (struct target){ mounted, nodeid };
	else if (nodeid < (1ULL << 63))
		*t = (struct target){ nodeid >> 48, nodeid & ((1ULL << 48) - 1) };
	else
		return false; /* a large id mapped through the fs layer's private table */
	return true;
}

/* The next path component of *p (skipping slashes) into name; false at the end. */
static bool next_component(const char **p, char *name, size_t len)
{
	while (**p == '/')
		(*p)++;
	size_t n = strcspn(*p, "/");
	if (n == 0)
		return false;
	snprintf(name, len, "%.*s", (int)(n < len - 1 ? n : len - 1), *p);
	*p += n;
	return true;
}

static int resolve_fs(const char *const *paths, int n, const char *subvol, uint64_t subvolid, const char *path,
		      struct target *t)
{
	struct bf_fs_opts o = { .open = { .paths = paths, .npaths = n, .degraded = true }, .subvol = subvol,
				.subvolid = subvolid };
	struct bf_fs *fs;
	char err[512], name[BF_NAME_LEN + 1];
	int r = bf_fs_open(&o, &fs, err, sizeof(err));
	if (r) {
		insp_err("the fs layer cannot open the image (%s); resolving the path from the directory items", err);
		return r;
	}
	uint64_t node = BF_ROOT_NODEID, gen;
	struct stat st;
	for (const char *p = path; !r && next_component(&p, name, sizeof(name));)
		r = bf_fs_lookup(fs, node, name, &node, &gen, &st);
	if (r)
		insp_err("cannot find %s: %s", path, strerror(-r));
	else if (!split_nodeid(node, bf_fs_mounted_subvol(fs), t))
		r = -ERANGE;
	bf_fs_close(fs);
	return r;
}

/* ---- path resolution from the directory items (fallback) ---- */

/* Look name up in directory dir of subvolume *sv: on success *sv and *obj name the entry's inode. */
static int lookup_dir_item(struct bf_fsinfo *fi, uint64_t *sv, uint64_t dir, const char *name, uint64_t *obj)
{
	struct bf_root root;
	struct bf_path p;
	size_t len = strlen(name);
	int r = bf_find_root(fi, *sv, &root, NULL);
	if (r)
		return r;
	struct bf_key key = { dir, BF_DIR_ITEM_KEY, bf_name_hash(name, len) };
	bf_path_init(&p, &fi->env);
	r = bf_search(&fi->env, &root, &key, &p);
	if (r == 0) {
		uint32_t size, pos = 0;
		const uint8_t *data = bf_path_item(&p, &size);
		r = -ENOENT;
		while (size - pos >= sizeof(struct bf_dir_item)) {
			struct bf_dir_item di;
			memcpy(&di, data + pos, sizeof(di));
			uint32_t nl = get16(di.name_len), dl = get16(di.data_len);
			pos += (uint32_t)sizeof(di);
			if (size - pos < (uint64_t)nl + dl)
				break;
			if (nl == len && memcmp(data + pos, name, len) == 0) {
				struct bf_key loc = bf_key_from_disk(&di.location);
				if (loc.type == BF_ROOT_ITEM_KEY)
					*sv = loc.objectid, *obj = BF_FIRST_FREE_OBJECTID;
				else
					*obj = loc.objectid;
				r = 0;
				break;
			}
			pos += nl + dl;
		}
	} else if (r > 0) {
		r = -ENOENT;
	}
	bf_path_release(&p);
	return r;
}

static int resolve_items(struct bf_fsinfo *fi, const char *subvol, uint64_t subvolid, const char *path,
			 struct target *t)
{
	char name[BF_NAME_LEN + 1];
	uint64_t sv = BF_FS_TREE_OBJECTID, obj = BF_FIRST_FREE_OBJECTID, dir = get64(fi->super.root_dir_objectid);
	int r = 0, steps = 0;
	if (subvolid) {
		sv = subvolid;
	} else if (subvol) {
		for (const char *p = subvol; !r && next_component(&p, name, sizeof(name)) && steps++ < MAX_COMPONENTS;)
			r = lookup_dir_item(fi, &sv, obj, name, &obj);
	} else {
		/* the default subvolume: the "default" entry of the root tree's directory */
		struct bf_key key = { dir, BF_DIR_ITEM_KEY, bf_name_hash("default", 7) };
		struct bf_path p;
		bf_path_init(&p, &fi->env);
		if (bf_search(&fi->env, &fi->tree_root, &key, &p) == 0) {
			uint32_t size;
			const uint8_t *data = bf_path_item(&p, &size);
			if (size >= sizeof(struct bf_dir_item)) {
				struct bf_dir_item di;
				memcpy(&di, data, sizeof(di));
				sv = get64(di.location.objectid);
			}
		}
		bf_path_release(&p);
	}
	if (r)
		return r;
	obj = BF_FIRST_FREE_OBJECTID;
	for (const char *p = path; !r && next_component(&p, name, sizeof(name)) && steps++ < MAX_COMPONENTS;)
		r = lookup_dir_item(fi, &sv, obj, name, &obj);
	if (r)
		return r;
	*t = (struct target){ sv, obj };
	return 0;
}

/* ---- physical placement ---- */

static const char *dev_path(struct bf_fsinfo *fi, uint64_t devid)
{
	struct bf_device *d = bf_vol_find_device(&fi->vol, devid);
	return d && d->path ? d->path : "(missing)";
}

/* Index of the chunk stripe holding (devid, physical), or -1. */
static int stripe_index(const struct bf_chunk_map *c, uint64_t devid, uint64_t physical)
{
	for (unsigned i = 0; i < c->num_stripes; i++)
		if (c->stripes[i].devid == devid && physical >= c->stripes[i].physical &&
		    physical - c->stripes[i].physical < c->length)
			return (int)i;
	return -1;
}

static void copy_entry(struct mapper *m, const struct bf_chunk_map *c, uint64_t logical, int mirror,
		       const char *role)
{
	struct emit *e = &m->e;
	uint64_t devid, phys;
	em_obj_begin(e, NULL);
	e->indent = 3;
	if (bf_vol_map(&m->fs->fi->vol, logical, mirror, &devid, &phys)) {
		em_str(e, role, "unmapped");
		em_nl(e);
		em_obj_end(e);
		return;
	}
	em_str(e, "|role", role);
	em_u64(e, "mirror", (uint64_t)mirror);
	em_u64(e, "devid", devid);
	em_str(e, "device", dev_path(m->fs->fi, devid));
	em_u64(e, "physical", phys);
	em_i64(e, "stripe", stripe_index(c, devid, phys));
	em_nl(e);
	em_obj_end(e);
}

/* The length of the piece at logical that stays inside one stripe unit of chunk c (whole rest of the chunk for
   unstriped profiles). */
static uint64_t piece_len(const struct bf_chunk_map *c, uint64_t logical, uint64_t len)
{
	uint64_t rest = c->logical + c->length - logical;
	bool striped = c->type & (BF_BLOCK_GROUP_RAID0 | BF_BLOCK_GROUP_RAID10 | BF_BLOCK_GROUP_RAID56_MASK);
	if (striped && c->stripe_len)
		rest = bf_min64(rest, c->stripe_len - (logical - c->logical) % c->stripe_len);
	return bf_min64(rest, len);
}

static void map_piece(struct mapper *m, const struct bf_chunk_map *c, uint64_t logical, uint64_t len)
{
	struct emit *e = &m->e;
	em_obj_begin(e, NULL);
	e->indent = 2;
	em_u64(e, "logical", logical);
	em_u64(e, "length", len);
	em_str(e, "profile", bf_profile_name(c->type));
	em_nl(e);
	em_arr_begin(e, "copies");
	if (c->type & BF_BLOCK_GROUP_RAID56_MASK) {
		copy_entry(m, c, logical, 1, "data");
		copy_entry(m, c, logical, 2, "P");
		if (c->type & BF_BLOCK_GROUP_RAID6)
			copy_entry(m, c, logical, 3, "Q");
	} else {
		int n = bf_vol_num_copies(&m->fs->fi->vol, logical);
		for (int i = 1; i <= n; i++)
			copy_entry(m, c, logical, i, "copy");
	}
	em_arr_end(e);
	em_obj_end(e);
}

/* Map [logical, logical + len) piece by piece. */
static void map_range(struct mapper *m, uint64_t logical, uint64_t len)
{
	struct emit *e = &m->e;
	em_arr_begin(e, "pieces");
	for (int guard = 0; len && guard < (1 << 20); guard++) {
		const struct bf_chunk_map *c = bf_vol_find_chunk(&m->fs->fi->vol, logical);
		if (!c) {
			e->indent = 2;
			em_obj_begin(e, NULL);
			em_u64(e, "logical", logical);
			em_str(e, "error", "not in any chunk");
			em_nl(e);
			em_obj_end(e);
			m->bad++;
			break;
		}
		uint64_t n = piece_len(c, logical, len);
		map_piece(m, c, logical, n);
		logical += n, len -= n;
	}
	em_arr_end(e);
}

/* ---- checksums ---- */

struct csum_run {
	uint64_t start, end; /* logical range being checked (sector aligned) */
	uint64_t next;       /* first sector not yet handled */
	uint64_t covered, verified[4], checked[4];
	int shown;
	struct mapper *m;
	int copies;
};

static void check_sector(struct csum_run *cr, uint64_t logical, const uint8_t *want)
{
	struct mapper *m = cr->m;
	struct bf_fsinfo *fi = m->fs->fi;
	uint8_t *buf = malloc(fi->sectorsize), got[BF_CSUM_MAX];
	if (!buf)
		return;
	cr->covered++;
	for (int mir = 1; mir <= cr->copies && mir <= 4; mir++) {
		bool ok = bf_vol_read(&fi->vol, logical, buf, fi->sectorsize, mir) == 0 &&
			  bf_csum(fi->csum_type, buf, fi->sectorsize, got) == 0 &&
			  memcmp(got, want, (size_t)fi->csum_size) == 0;
		cr->checked[mir - 1]++;
		cr->verified[mir - 1] += ok;
		if (!ok && cr->shown < MAX_SECTORS_SHOWN) {
			char w[2 * BF_CSUM_MAX + 1], g[2 * BF_CSUM_MAX + 1];
			bf_csum_hex(fi->csum_type, want, w, sizeof(w));
			bf_csum_hex(fi->csum_type, got, g, sizeof(g));
			em_obj_begin(&m->e, NULL);
			m->e.indent = 3;
			em_u64(&m->e, "MISMATCH logical|logical", logical);
			em_u64(&m->e, "mirror", (uint64_t)mir);
			em_str(&m->e, "expected", w);
			em_str(&m->e, "found", g);
			em_nl(&m->e);
			em_obj_end(&m->e);
			cr->shown++;
		}
	}
	free(buf);
}

/* One csum item: the sectors of it that fall in [cr->start, cr->end). */
static int on_csum_item(void *ctx, const struct bf_key *k, const uint8_t *data, uint32_t size)
{
	struct csum_run *cr = ctx;
	struct bf_fsinfo *fi = cr->m->fs->fi;
	if (k->objectid != BF_EXTENT_CSUM_OBJECTID || k->type != BF_EXTENT_CSUM_KEY)
		return 0;
	if (k->offset >= cr->end)
		return 1;
	uint64_t nsec = size / (uint32_t)fi->csum_size;
	uint64_t item_end = k->offset + nsec * fi->sectorsize;
	if (item_end <= cr->start)
		return 0;
	struct emit *e = &cr->m->e;
	em_obj_begin(e, NULL);
	e->indent = 3;
	em_u64(e, "csum item|item_start", k->offset);
	em_u64(e, "end|item_end", item_end);
	em_nl(e);
	em_arr_begin(e, "mismatches");
	for (uint64_t s = bf_max64(k->offset, cr->start); s < item_end && s < cr->end; s += fi->sectorsize) {
		uint64_t idx = (s - k->offset) / fi->sectorsize;
		uint8_t want[BF_CSUM_MAX] = { 0 };
		memcpy(want, data + idx * (uint64_t)fi->csum_size, (size_t)fi->csum_size);
		check_sector(cr, s, want);
	}
	em_arr_end(e);
	em_obj_end(e);
	return 0;
}

static void check_csums(struct mapper *m, uint64_t logical, uint64_t len)
{
	struct bf_fsinfo *fi = m->fs->fi;
	struct emit *e = &m->e;
	struct csum_run cr = { .m = m };
	cr.start = bf_round_down(logical, fi->sectorsize);
	cr.end = logical + len;
	cr.copies = bf_vol_num_copies(&fi->vol, logical);
	em_obj_begin(e, "csums");
	e->indent = 2;
	em_text(e, "checksums:");
	em_nl(e);
	em_arr_begin(e, "items");
	if (fi->has_csum_root) {
		struct bf_path p;
		struct bf_key k = { BF_EXTENT_CSUM_OBJECTID, BF_EXTENT_CSUM_KEY, cr.start };
		bf_path_init(&p, &fi->env);
		int r = bf_search_le(&fi->env, &fi->csum_root, &k, &p);
		if (r == -ENOENT)
			r = bf_search(&fi->env, &fi->csum_root, &k, &p);
		for (int guard = 0; r >= 0 && bf_path_valid(&p) && guard < (1 << 24); guard++) {
			struct bf_key ik = bf_path_key(&p);
			uint32_t size;
			const uint8_t *data = bf_path_item(&p, &size);
			if (on_csum_item(&cr, &ik, data, size))
				break;
			r = bf_path_next(&p);
		}
		if (r < 0) {
			em_str(e, "error", "the csum tree could not be read here");
			em_nl(e);
			m->bad++;
		}
		bf_path_release(&p);
	}
	em_arr_end(e);
	e->indent = 2;
	uint64_t sectors = (cr.end - cr.start + fi->sectorsize - 1) / fi->sectorsize;
	em_u64(e, "sectors", sectors);
	em_u64(e, "with csum|with_csum", cr.covered);
	for (int i = 0; i < cr.copies && i < 4; i++) {
		char label[96];
		snprintf(label, sizeof(label), "mirror %d verified|mirror%d_verified", i + 1, i + 1);
		em_u64(e, label, cr.verified[i]);
		if (cr.verified[i] != cr.checked[i])
			m->bad++;
	}
	em_nl(e);
	em_obj_end(e);
}

/* ---- the file's extents ---- */

static void emit_hole(struct mapper *m, uint64_t start, uint64_t end)
{
	struct emit *e = &m->e;
	em_obj_begin(e, NULL);
	e->indent = 1;
	em_u64(e, "file offset|file_offset", start);
	em_u64(e, "length", end - start);
	em_str(e, "type", "hole (no extent item)");
	em_nl(e);
	em_obj_end(e);
}

static void inline_extent(struct mapper *m, const struct bf_path *p, const uint8_t *data, uint32_t size)
{
	struct emit *e = &m->e;
	const struct bf_block *leaf = p->nodes[0];
	uint64_t off_in_leaf = (uint64_t)(data - leaf->data) + BF_FILE_EXTENT_INLINE_DATA_START;
	em_u64(e, "inline bytes|inline_size", size - BF_FILE_EXTENT_INLINE_DATA_START);
	em_u64(e, "in leaf|leaf", leaf->bytenr);
	em_u64(e, "slot", p->slots[0]);
	em_u64(e, "at byte|leaf_offset", off_in_leaf);
	em_nl(e);
	/* the data is inside the tree block: where that block lives on each device */
	map_range(m, leaf->bytenr, m->fs->fi->nodesize);
}

static void regular_extent(struct mapper *m, const struct bf_file_extent_item *fe)
{
	struct emit *e = &m->e;
	uint64_t disk = get64(fe->disk_bytenr), dlen = get64(fe->disk_num_bytes), off = get64(fe->offset);
	uint64_t num = get64(fe->num_bytes);
	em_u64(e, "disk_bytenr", disk);
	em_u64(e, "disk_num_bytes", dlen);
	em_u64(e, "offset in extent|offset", off);
	em_u64(e, "ram_bytes", get64(fe->ram_bytes));
	em_nl(e);
	if (disk == 0) {
		em_text(e, "(a hole: no data on disk)");
		em_nl(e);
		return;
	}
	/* compressed extents are read (and checksummed) whole; plain ones only the referenced part */
	uint64_t start = fe->compression ? disk : disk + off, len = fe->compression ? dlen : num;
	em_u64(e, "reads logical|read_logical", start);
	em_u64(e, "length|read_length", len);
	em_nl(e);
	map_range(m, start, len);
	if (fe->type == BF_FILE_EXTENT_REG)
		check_csums(m, start, len);
}

static void one_extent(struct mapper *m, const struct bf_path *p, const struct bf_key *k, const uint8_t *data,
		       uint32_t size, uint64_t *end)
{
	struct emit *e = &m->e;
	struct bf_file_extent_item fe;
	char cbuf[24];
	memset(&fe, 0, sizeof(fe));
	memcpy(&fe, data, size < sizeof(fe) ? size : sizeof(fe));
	bool inl = fe.type == BF_FILE_EXTENT_INLINE;
	uint64_t len = inl ? get64(fe.ram_bytes) : get64(fe.num_bytes);
	bool hole = !inl && get64(fe.disk_bytenr) == 0;
	em_obj_begin(e, NULL);
	e->indent = 1;
	em_u64(e, "file offset|file_offset", k->offset);
	em_u64(e, "length", len);
	em_str(e, "type", hole ? "hole" : name_file_extent_type(fe.type));
	em_str(e, "compression", name_compress(fe.compression, cbuf, sizeof(cbuf)));
	em_u64(e, "generation", get64(fe.generation));
	em_nl(e);
	e->indent = 2;
	if (size < BF_FILE_EXTENT_INLINE_DATA_START || (!inl && size < sizeof(fe))) {
		em_str(e, "error", "extent item too small");
		em_nl(e);
		m->bad++;
	} else if (inl) {
		inline_extent(m, p, data, size);
	} else {
		regular_extent(m, &fe);
	}
	em_obj_end(e);
	*end = k->offset + len;
}

static int map_extents(struct mapper *m, uint64_t isize)
{
	struct bf_fsinfo *fi = m->fs->fi;
	struct bf_root root;
	struct bf_path p;
	int r = bf_find_root(fi, m->t.subvol, &root, NULL);
	if (r) {
		insp_err("cannot read the root of subvolume %llu: %s", (unsigned long long)m->t.subvol, strerror(-r));
		return r;
	}
	struct bf_key k = { m->t.objectid, BF_EXTENT_DATA_KEY, 0 };
	uint64_t pos = 0;
	bf_path_init(&p, &fi->env);
	em_arr_begin(&m->e, "extents");
	r = bf_search(&fi->env, &root, &k, &p);
	for (size_t guard = 0; r >= 0 && bf_path_valid(&p) && guard < (1u << 26); guard++) {
		struct bf_key ik = bf_path_key(&p);
		uint32_t size;
		const uint8_t *data = bf_path_item(&p, &size);
		if (ik.objectid != m->t.objectid || ik.type != BF_EXTENT_DATA_KEY)
			break;
		if (ik.offset > pos)
			emit_hole(m, pos, ik.offset);
		uint64_t end;
		one_extent(m, &p, &ik, data, size, &end);
		pos = bf_max64(pos, end);
		r = bf_path_next(&p);
	}
	if (r < 0) {
		em_line(&m->e, "ERROR: the extent items could not all be read (%s)\n", strerror(-r));
		m->bad++;
	} else if (pos < isize) {
		emit_hole(m, pos, isize);
	}
	em_arr_end(&m->e);
	bf_path_release(&p);
	return 0;
}

/* The inode item: size and flags, shown first. */
static int show_inode(struct mapper *m, uint64_t *isize)
{
	struct bf_fsinfo *fi = m->fs->fi;
	struct bf_root root;
	struct bf_path p;
	struct bf_key k = { m->t.objectid, BF_INODE_ITEM_KEY, 0 };
	int r = bf_find_root(fi, m->t.subvol, &root, NULL);
	bf_path_init(&p, &fi->env);
	if (!r)
		r = bf_search(&fi->env, &root, &k, &p);
	if (r == 0) {
		uint32_t size;
		const uint8_t *data = bf_path_item(&p, &size);
		struct bf_inode_item ii;
		char flags[160];
		memset(&ii, 0, sizeof(ii));
		memcpy(&ii, data, size < sizeof(ii) ? size : sizeof(ii));
		*isize = get64(ii.size);
		name_inode_flags(flags, sizeof(flags), get64(ii.flags));
		em_u64(&m->e, "size", *isize);
		em_octal(&m->e, "mode", get32(ii.mode));
		em_flags(&m->e, "flags", get64(ii.flags), flags);
		em_nl(&m->e);
	}
	bf_path_release(&p);
	if (r)
		insp_err("cannot read inode %llu of subvolume %llu: %s", (unsigned long long)m->t.objectid,
			 (unsigned long long)m->t.subvol, strerror(r > 0 ? ENOENT : -r));
	return r > 0 ? -ENOENT : r;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: btrfs-fuse-inspect map IMAGE... PATH [--subvol PATH | --subvolid N] [--json]\n"
		   "Show where each byte of the file PATH lives: file range -> extent item (inline, regular,\n"
		   "prealloc, hole; compression; offset into the extent) -> logical address -> device and physical\n"
		   "offset on every mirror (RAID5/6: data, P and Q stripes) -> the csum items that cover it and\n"
		   "whether each mirror's copy verifies.\n"
		   "  PATH is relative to the subvolume chosen as btrfs-fuse would mount it (default subvolume,\n"
		   "  or --subvol PATH from the top level, or --subvolid N).\n"
		   "  -j, --json   one JSON object\n"
		   "Exit status 1 if a checksum does not verify on some mirror or a piece is unreadable.\n");
}

int cmd_map(int argc, char **argv)
{
	static const struct option opts[] = { { "subvol", required_argument, NULL, 's' },
					       { "subvolid", required_argument, NULL, 'i' },
					       { "json", no_argument, NULL, 'j' },
					       { "verbose", no_argument, NULL, 'v' },
					       { "help", no_argument, NULL, 'h' },
					       { NULL, 0, NULL, 0 } };
	const char *subvol = NULL;
	uint64_t subvolid = 0;
	bool json = false;
	int c;
	while ((c = getopt_long(argc, argv, "s:i:jvh", opts, NULL)) != -1) {
		if (c == 's')
			subvol = optarg;
		else if (c == 'i' && insp_parse_u64(optarg, &subvolid) && subvolid)
			;
		else if (c == 'j')
			json = true;
		else if (c == 'v')
			bf_log_set_verbosity(BF_LOG_DEBUG);
		else if (c == 'h')
			return usage(stdout), 0;
		else
			return usage(stderr), 2;
	}
	if (argc - optind < 2)
		return usage(stderr), 2;
	const char *path = argv[argc - 1];
	const char *const *images = (const char *const *)argv + optind;
	int nimages = argc - optind - 1;
	struct mapper m = { 0 };
	int r = resolve_fs(images, nimages, subvol, subvolid, path, &m.t);
	if (r == -ENOENT)
		return 1;
	struct insp_fs fs;
	if (insp_open(images, nimages, &fs))
		return 1;
	if (r)
		r = resolve_items(fs.fi, subvol, subvolid, path, &m.t);
	if (r) {
		insp_err("cannot resolve %s: %s", path, strerror(-r));
		insp_close(&fs);
		return 1;
	}
	m.fs = &fs;
	em_init(&m.e, stdout, json);
	em_obj_begin(&m.e, NULL);
	m.e.indent = 0;
	em_str(&m.e, "path", path);
	em_u64(&m.e, "subvolume", m.t.subvol);
	em_u64(&m.e, "inode", m.t.objectid);
	uint64_t isize = 0;
	r = show_inode(&m, &isize);
	if (!r)
		r = map_extents(&m, isize);
	em_obj_end(&m.e);
	if (json)
		fputc('\n', stdout);
	insp_close(&fs);
	return r || m.bad ? 1 : 0;
}
