/*
 * inspect/items.c - decoding leaf item payloads, field for field as btrfs-progs prints them.
 *
 * Owns: one decoder per item type (inodes, refs, dir items, file extents, extent items with their inline
 * refs, block groups, chunks, devices, root items and refs, csums, free space, uuid, qgroup, dev stats,
 * balance, ...), and the superblock's system chunk array.
 *
 * Key idea: the leaf layout was validated by the core, so `data` and `size` are inside the block; what is not
 * validated is the payload. Every decoder first checks that the fixed part fits in `size`; records that repeat
 * inside one item (names, inline refs, stripes) are walked with an explicit cursor that is checked before each
 * record and each name, so a hostile length stops the walk with a "truncated" mark instead of a stray read.
 * Fixed-size structs are copied into zeroed locals before they are read.
 */
#include <stdio.h>
#include <string.h>

#include "inspect/inspect.h"

#define HIDE_LEN_MAX BF_NAME_LEN /* progs prints at most 255 bytes of a name or xattr value */

/* Mark a payload too small for its type. Returns false so callers can `return need(...)`. */
static bool need(struct emit *e, uint32_t size, size_t want, const char *what)
{
	if (size >= want)
		return true;
	char msg[160];
	snprintf(msg, sizeof(msg), "CORRUPT: %s needs %zu bytes, item has %u", what, want, size);
	em_str(e, "error", msg);
	em_nl(e);
	return false;
}

static void truncated(struct emit *e, const char *what, uint32_t at)
{
	char msg[160];
	snprintf(msg, sizeof(msg), "CORRUPT: %s truncated at byte %u of the item", what, at);
	em_str(e, "error", msg);
	em_nl(e);
}

/* Copy a struct of `want` bytes (zero-filled past size) so fields can be read without further checks. */
static void copy_in(void *dst, size_t want, const uint8_t *data, uint32_t size)
{
	memset(dst, 0, want);
	memcpy(dst, data, size < want ? size : want);
}

static uint64_t rd64(const uint8_t *p)
{
	bf_le64 v;
	memcpy(&v, p, sizeof(v));
	return get64(v);
}

static uint32_t rd32(const uint8_t *p)
{
	bf_le32 v;
	memcpy(&v, p, sizeof(v));
	return get32(v);
}

static void em_objid(struct emit *e, const char *label, uint64_t id)
{
	char buf[INSP_NAME_LEN];
	name_objectid(buf, sizeof(buf), id, 0);
	em_flagstr(e, label, id, buf);
}

/* A name of name_len bytes at data[pos]; progs prints at most 255 bytes of it. */
static void em_name(struct emit *e, const char *label, const uint8_t *p, uint32_t name_len)
{
	em_raw(e, label, p, name_len < HIDE_LEN_MAX ? name_len : HIDE_LEN_MAX);
}

/* ---- inodes, refs, directory entries ---- */

static void inode_item(struct emit *e, const uint8_t *data, uint32_t size)
{
	struct bf_inode_item ii;
	char flags[160];
	if (!need(e, size, sizeof(ii), "inode item"))
		return;
	copy_in(&ii, sizeof(ii), data, size);
	name_inode_flags(flags, sizeof(flags), get64(ii.flags));
	em_u64(e, "generation", get64(ii.generation));
	em_u64(e, "transid", get64(ii.transid));
	em_u64(e, "size", get64(ii.size));
	em_u64(e, "nbytes", get64(ii.nbytes));
	em_nl(e);
	em_u64(e, "block group", get64(ii.block_group));
	em_octal(e, "mode", get32(ii.mode));
	em_u64(e, "links", get32(ii.nlink));
	em_u64(e, "uid", get32(ii.uid));
	em_u64(e, "gid", get32(ii.gid));
	em_u64(e, "rdev", get64(ii.rdev));
	em_nl(e);
	em_u64(e, "sequence", get64(ii.sequence));
	em_flags(e, "flags", get64(ii.flags), flags);
	em_nl(e);
	em_time(e, "atime", get64(ii.atime.sec), get32(ii.atime.nsec));
	em_nl(e);
	em_time(e, "ctime", get64(ii.ctime.sec), get32(ii.ctime.nsec));
	em_nl(e);
	em_time(e, "mtime", get64(ii.mtime.sec), get32(ii.mtime.nsec));
	em_nl(e);
	em_time(e, "otime", get64(ii.otime.sec), get32(ii.otime.nsec));
	em_nl(e);
}

static void inode_refs(struct emit *e, const uint8_t *data, uint32_t size, bool ext)
{
	uint32_t pos = 0;
	const uint32_t hdr = ext ? sizeof(struct bf_inode_extref) : sizeof(struct bf_inode_ref);
	em_arr_begin(e, "refs");
	while (pos < size) {
		uint64_t index, parent = 0;
		uint32_t name_len;
		if (size - pos < hdr) {
			truncated(e, "inode ref", pos);
			break;
		}
		if (ext) {
			struct bf_inode_extref r;
			memcpy(&r, data + pos, sizeof(r));
			index = get64(r.index), parent = get64(r.parent_objectid), name_len = get16(r.name_len);
		} else {
			struct bf_inode_ref r;
			memcpy(&r, data + pos, sizeof(r));
			index = get64(r.index), name_len = get16(r.name_len);
		}
		em_obj_begin(e, NULL);
		em_u64(e, "index", index);
		if (ext)
			em_u64(e, "parent", parent);
		em_u64(e, "namelen", name_len);
		if (size - pos - hdr < name_len) {
			em_obj_end(e);
			em_nl(e);
			truncated(e, "inode ref name", pos + hdr);
			break;
		}
		em_name(e, "name:", data + pos + hdr, name_len);
		em_obj_end(e);
		em_nl(e);
		pos += hdr + name_len;
	}
	em_arr_end(e);
}

static void dir_items(struct emit *e, const uint8_t *data, uint32_t size)
{
	uint32_t pos = 0;
	char tbuf[32];
	em_arr_begin(e, "entries");
	while (pos < size) {
		struct bf_dir_item di;
		if (size - pos < sizeof(di)) {
			truncated(e, "dir item", pos);
			break;
		}
		memcpy(&di, data + pos, sizeof(di));
		uint32_t name_len = get16(di.name_len), data_len = get16(di.data_len);
		struct bf_key loc = bf_key_from_disk(&di.location);
		em_obj_begin(e, NULL);
		em_keyf(e, "location", loc.objectid, loc.type, loc.offset);
		em_str(e, "type", name_dir_type(di.type, tbuf, sizeof(tbuf)));
		em_nl(e);
		em_u64(e, "transid", get64(di.transid));
		em_u64(e, "data_len", data_len);
		em_u64(e, "name_len", name_len);
		em_nl(e);
		uint32_t body = pos + (uint32_t)sizeof(di);
		if (size - body < (uint64_t)name_len + data_len) {
			em_obj_end(e);
			truncated(e, "dir item name/data", body);
			break;
		}
		em_name(e, "name:", data + body, name_len);
		em_nl(e);
		if (data_len) {
			em_name(e, "data", data + body + name_len, data_len);
			em_nl(e);
		}
		em_obj_end(e);
		pos = body + name_len + data_len;
	}
	em_arr_end(e);
}

/* ---- file extents ---- */

static void file_extent(struct emit *e, const uint8_t *data, uint32_t size)
{
	struct bf_file_extent_item fe;
	char cbuf[24];
	if (!need(e, size, BF_FILE_EXTENT_INLINE_DATA_START, "file extent item"))
		return;
	copy_in(&fe, sizeof(fe), data, size);
	const char *comp = name_compress(fe.compression, cbuf, sizeof(cbuf));
	em_u64(e, "generation", get64(fe.generation));
	em_enum(e, "type", fe.type, name_file_extent_type(fe.type));
	em_nl(e);
	if (fe.type == BF_FILE_EXTENT_INLINE) {
		em_u64(e, "inline extent data size", size - (uint32_t)BF_FILE_EXTENT_INLINE_DATA_START);
		em_u64(e, "ram_bytes", get64(fe.ram_bytes));
		em_enum(e, "compression", fe.compression, comp);
		em_nl(e);
		return;
	}
	if (!need(e, size, sizeof(fe), "regular file extent item"))
		return;
	bool prealloc = fe.type == BF_FILE_EXTENT_PREALLOC;
	em_text(e, prealloc ? "prealloc" : "extent");
	em_text(e, "data");
	em_u64(e, "disk byte|disk_bytenr", get64(fe.disk_bytenr));
	em_u64(e, "nr|disk_num_bytes", get64(fe.disk_num_bytes));
	em_nl(e);
	em_text(e, prealloc ? "prealloc" : "extent");
	em_text(e, "data");
	em_u64(e, "offset", get64(fe.offset));
	em_u64(e, "nr|num_bytes", get64(fe.num_bytes));
	if (prealloc) {
		em_nl(e);
		return;
	}
	em_u64(e, "ram|ram_bytes", get64(fe.ram_bytes));
	em_nl(e);
	em_text(e, "extent");
	em_enum(e, "compression", fe.compression, comp);
	em_nl(e);
}

/* ---- extent tree ---- */

static void data_ref(struct emit *e, const uint8_t *p)
{
	struct bf_extent_data_ref d;
	memcpy(&d, p, sizeof(d));
	em_text(e, "extent data backref");
	em_objid(e, "root", get64(d.root));
	em_u64(e, "objectid", get64(d.objectid));
	em_u64(e, "offset", get64(d.offset));
	em_u64(e, "count", get32(d.count));
	em_nl(e);
}

/* Size of an inline ref of this type (type byte included), 0 for a type that cannot be inline. */
static uint32_t inline_ref_size(uint8_t type)
{
	switch (type) {
	case BF_TREE_BLOCK_REF_KEY:
	case BF_SHARED_BLOCK_REF_KEY:
		return sizeof(struct bf_extent_inline_ref);
	case BF_EXTENT_DATA_REF_KEY:
		return 1 + sizeof(struct bf_extent_data_ref);
	case BF_SHARED_DATA_REF_KEY:
		return sizeof(struct bf_extent_inline_ref) + sizeof(struct bf_shared_data_ref);
	default:
		return 0;
	}
}

static void inline_ref(struct emit *e, const uint8_t *p, uint8_t type)
{
	uint64_t offset = rd64(p + 1);
	em_obj_begin(e, NULL);
	em_ju64(e, "ref_type", type); /* the text shows the kind in words below */
	switch (type) {
	case BF_TREE_BLOCK_REF_KEY:
		em_text(e, "tree block backref");
		em_objid(e, "root", offset);
		break;
	case BF_SHARED_BLOCK_REF_KEY:
		em_text(e, "shared block backref");
		em_u64(e, "parent", offset);
		break;
	case BF_EXTENT_DATA_REF_KEY:
		data_ref(e, p + 1);
		em_obj_end(e);
		return;
	case BF_SHARED_DATA_REF_KEY:
		em_text(e, "shared data backref");
		em_u64(e, "parent", offset);
		em_u64(e, "count", rd32(p + 9));
		break;
	}
	em_nl(e);
	em_obj_end(e);
}

static void extent_item(struct emit *e, const struct bf_key *key, const uint8_t *data, uint32_t size)
{
	struct bf_extent_item ei;
	char flags[48];
	bool skinny = key->type == BF_METADATA_ITEM_KEY;
	if (size < sizeof(ei))
		return; /* progs prints nothing for the pre-2.6.31 (v0) extent items */
	copy_in(&ei, sizeof(ei), data, size);
	uint64_t fl = get64(ei.flags);
	name_extent_flags(flags, sizeof(flags), fl);
	em_u64(e, "refs", get64(ei.refs));
	em_u64(e, "gen", get64(ei.generation));
	em_flagstr(e, "flags", fl, flags);
	em_nl(e);
	uint32_t pos = sizeof(ei);
	if ((fl & BF_EXTENT_FLAG_TREE_BLOCK) && !skinny) {
		struct bf_tree_block_info info;
		if (!need(e, size, sizeof(ei) + sizeof(info), "tree block info"))
			return;
		memcpy(&info, data + pos, sizeof(info));
		struct bf_key k = bf_key_from_disk(&info.key);
		em_keyf(e, "tree block", k.objectid, k.type, k.offset);
		em_u64(e, "level", info.level);
		em_nl(e);
		pos += sizeof(info);
	} else if (skinny) {
		em_i64(e, "tree block skinny level|level", (int32_t)(uint32_t)key->offset);
		em_nl(e);
	}
	em_arr_begin(e, "inline_refs");
	while (pos < size) {
		uint8_t type = data[pos];
		uint32_t rs = inline_ref_size(type);
		if (rs == 0)
			break; /* progs stops silently at an unknown type */
		if (size - pos < rs) {
			truncated(e, "inline ref", pos);
			break;
		}
		inline_ref(e, data + pos, type);
		pos += rs;
	}
	em_arr_end(e);
}

/* ---- root tree ---- */

static void root_item(struct emit *e, const uint8_t *data, uint32_t size)
{
	struct bf_root_item ri;
	if (!need(e, size, BF_ROOT_ITEM_LEGACY_SIZE, "root item"))
		return;
	copy_in(&ri, sizeof(ri), data, size);
	uint64_t fl = get64(ri.flags);
	struct bf_key dp = bf_key_from_disk(&ri.drop_progress);
	em_u64(e, "generation", get64(ri.generation));
	em_u64(e, "root_dirid", get64(ri.root_dirid));
	em_u64(e, "bytenr", get64(ri.bytenr));
	em_u64(e, "byte_limit", get64(ri.byte_limit));
	em_u64(e, "bytes_used", get64(ri.bytes_used));
	em_nl(e);
	em_u64(e, "last_snapshot", get64(ri.last_snapshot));
	em_flags(e, "flags", fl, (fl & BF_ROOT_SUBVOL_RDONLY) ? "RDONLY" : "none");
	em_u64(e, "refs", get32(ri.refs));
	em_nl(e);
	em_keyf(e, "drop_progress", dp.objectid, dp.type, dp.offset);
	em_u64(e, "drop_level", ri.drop_level);
	em_nl(e);
	em_u64(e, "level", ri.level);
	em_u64(e, "generation_v2", get64(ri.generation_v2));
	em_nl(e);
	if (get64(ri.generation) != get64(ri.generation_v2))
		return;
	em_uuid(e, "uuid", ri.uuid);
	em_nl(e);
	em_uuid(e, "parent_uuid", ri.parent_uuid);
	em_nl(e);
	em_uuid(e, "received_uuid", ri.received_uuid);
	em_nl(e);
	em_u64(e, "ctransid", get64(ri.ctransid));
	em_u64(e, "otransid", get64(ri.otransid));
	em_u64(e, "stransid", get64(ri.stransid));
	em_u64(e, "rtransid", get64(ri.rtransid));
	em_nl(e);
	const struct bf_timespec *ts[4] = { &ri.ctime, &ri.otime, &ri.stime, &ri.rtime };
	const char *names[4] = { "ctime", "otime", "stime", "rtime" };
	for (int i = 0; i < 4; i++) {
		em_time(e, names[i], get64(ts[i]->sec), get32(ts[i]->nsec));
		em_nl(e);
	}
}

static void root_ref(struct emit *e, const uint8_t *data, uint32_t size, bool back)
{
	struct bf_root_ref rr;
	if (!need(e, size, sizeof(rr), "root ref"))
		return;
	memcpy(&rr, data, sizeof(rr));
	uint32_t name_len = get16(rr.name_len);
	em_text(e, back ? "root backref key" : "root ref key");
	em_u64(e, "dirid", get64(rr.dirid));
	em_u64(e, "sequence", get64(rr.sequence));
	if (size - sizeof(rr) < name_len) {
		em_nl(e);
		truncated(e, "root ref name", sizeof(rr));
		return;
	}
	em_raw(e, "name", data + sizeof(rr), name_len);
	em_nl(e);
}

/* ---- chunk and device trees ---- */

void decode_chunk(struct emit *e, const uint8_t *data, uint32_t size)
{
	struct bf_chunk c;
	char type[64];
	if (!need(e, size, sizeof(c), "chunk item"))
		return;
	memcpy(&c, data, sizeof(c));
	unsigned n = get16(c.num_stripes);
	if (n < 1) {
		em_line(e, "invalid num_stripes: %u\n", n);
		return;
	}
	if (size < bf_chunk_item_size(n)) {
		em_line(e, "\t\tchunk item invalid\n");
		em_str(e, "error", "chunk item shorter than its stripes");
		return;
	}
	name_bg_flags(type, sizeof(type), get64(c.type));
	em_u64(e, "length", get64(c.length));
	em_u64(e, "owner", get64(c.owner));
	em_u64(e, "stripe_len", get64(c.stripe_len));
	em_flagstr(e, "type", get64(c.type), type);
	em_nl(e);
	em_u64(e, "io_align", get32(c.io_align));
	em_u64(e, "io_width", get32(c.io_width));
	em_u64(e, "sector_size", get32(c.sector_size));
	em_nl(e);
	em_u64(e, "num_stripes", n);
	em_u64(e, "sub_stripes", get16(c.sub_stripes));
	em_nl(e);
	em_arr_begin(e, "stripes");
	int saved = e->indent;
	e->indent = saved + 1;
	for (unsigned i = 0; i < n; i++) {
		struct bf_stripe s;
		memcpy(&s, data + offsetof(struct bf_chunk, stripe) + (size_t)i * sizeof(s), sizeof(s));
		em_obj_begin(e, NULL);
		em_u64(e, "stripe", i);
		em_u64(e, "devid", get64(s.devid));
		em_u64(e, "offset", get64(s.offset));
		em_nl(e);
		em_uuid(e, "dev_uuid", s.dev_uuid);
		em_nl(e);
		em_obj_end(e);
	}
	e->indent = saved;
	em_arr_end(e);
}

static void dev_item(struct emit *e, const uint8_t *data, uint32_t size)
{
	struct bf_dev_item d;
	if (!need(e, size, sizeof(d), "dev item"))
		return;
	memcpy(&d, data, sizeof(d));
	em_u64(e, "devid", get64(d.devid));
	em_u64(e, "total_bytes", get64(d.total_bytes));
	em_u64(e, "bytes_used", get64(d.bytes_used));
	em_nl(e);
	em_u64(e, "io_align", get32(d.io_align));
	em_u64(e, "io_width", get32(d.io_width));
	em_u64(e, "sector_size", get32(d.sector_size));
	em_u64(e, "type", get64(d.type));
	em_nl(e);
	em_u64(e, "generation", get64(d.generation));
	em_u64(e, "start_offset", get64(d.start_offset));
	em_u64(e, "dev_group", get32(d.dev_group));
	em_nl(e);
	em_u64(e, "seek_speed", d.seek_speed);
	em_u64(e, "bandwidth", d.bandwidth);
	em_nl(e);
	em_uuid(e, "uuid", d.uuid);
	em_nl(e);
	em_uuid(e, "fsid", d.fsid);
	em_nl(e);
}

static void dev_extent(struct emit *e, const uint8_t *data, uint32_t size)
{
	struct bf_dev_extent d;
	if (!need(e, size, sizeof(d), "dev extent"))
		return;
	memcpy(&d, data, sizeof(d));
	em_u64(e, "dev extent chunk_tree", get64(d.chunk_tree));
	em_nl(e);
	em_u64(e, "chunk_objectid", get64(d.chunk_objectid));
	em_u64(e, "chunk_offset", get64(d.chunk_offset));
	em_u64(e, "length", get64(d.length));
	em_nl(e);
	em_uuid(e, "chunk_tree_uuid", d.chunk_tree_uuid);
	em_nl(e);
}

static void block_group(struct emit *e, const uint8_t *data, uint32_t size)
{
	struct bf_block_group_item bg;
	char flags[64];
	if (!need(e, size, sizeof(bg), "block group item"))
		return;
	memcpy(&bg, data, sizeof(bg));
	name_bg_flags(flags, sizeof(flags), get64(bg.flags));
	em_u64(e, "block group used", get64(bg.used));
	em_u64(e, "chunk_objectid", get64(bg.chunk_objectid));
	em_flagstr(e, "flags", get64(bg.flags), flags);
	em_nl(e);
}

/* ---- csum, free space, uuid ---- */

static void extent_csum(struct emit *e, const struct insp_ctx *c, const struct bf_key *key, uint32_t size)
{
	uint32_t len = c->csum_size > 0 ? (uint32_t)((uint64_t)(size / (uint32_t)c->csum_size) * c->sectorsize) : 0;
	em_u64(e, "range start", key->offset);
	em_u64(e, "end", key->offset + len);
	em_u64(e, "length", len);
	em_nl(e);
}

static void free_space_header(struct emit *e, const uint8_t *data, uint32_t size)
{
	if (!need(e, size, sizeof(struct bf_disk_key) + 24, "free space header"))
		return;
	struct bf_disk_key dk;
	memcpy(&dk, data, sizeof(dk));
	struct bf_key k = bf_key_from_disk(&dk);
	em_keyf(e, "location", k.objectid, k.type, k.offset);
	em_nl(e);
	em_u64(e, "cache generation", rd64(data + 17));
	em_u64(e, "entries", rd64(data + 25));
	em_u64(e, "bitmaps", rd64(data + 33));
	em_nl(e);
}

static void free_space_info(struct emit *e, const uint8_t *data, uint32_t size)
{
	struct bf_free_space_info fi;
	if (!need(e, size, sizeof(fi), "free space info"))
		return;
	memcpy(&fi, data, sizeof(fi));
	em_u64(e, "free space info extent count", get32(fi.extent_count));
	em_u64(e, "flags", get32(fi.flags));
	em_nl(e);
}

static void uuid_item(struct emit *e, const uint8_t *data, uint32_t size)
{
	if (size % 8) {
		em_line(e, "btrfs: uuid item with illegal size %lu!\n", (unsigned long)size);
		em_str(e, "error", "uuid item size is not a multiple of 8");
		return;
	}
	em_arr_begin(e, "subvol_ids");
	for (uint32_t pos = 0; pos < size; pos += 8) {
		em_u64(e, e->json ? NULL : "subvol_id", rd64(data + pos));
		em_nl(e);
	}
	em_arr_end(e);
}

/* ---- quota ---- */

static void qgroup_status(struct emit *e, const uint8_t *data, uint32_t size)
{
	struct bf_qgroup_status_item q;
	char flags[40];
	if (!need(e, size, sizeof(q), "qgroup status"))
		return;
	memcpy(&q, data, sizeof(q));
	uint64_t fl = get64(q.flags);
	snprintf(flags, sizeof(flags), "%s%s%s", (fl & 1) ? "ON" : "OFF", (fl & 2) ? "|SCANNING" : "",
		 (fl & 4) ? "|INCONSISTENT" : "");
	em_u64(e, "version", get64(q.version));
	em_u64(e, "generation", get64(q.generation));
	em_flagstr(e, "flags", fl, flags);
	em_u64(e, "scan", get64(q.rescan));
	em_nl(e);
}

static void qgroup_info(struct emit *e, const uint8_t *data, uint32_t size)
{
	if (!need(e, size, 40, "qgroup info"))
		return;
	em_u64(e, "generation", rd64(data));
	em_nl(e);
	em_u64(e, "referenced", rd64(data + 8));
	em_u64(e, "referenced_compressed", rd64(data + 16));
	em_nl(e);
	em_u64(e, "exclusive", rd64(data + 24));
	em_u64(e, "exclusive_compressed", rd64(data + 32));
	em_nl(e);
}

static void qgroup_limit(struct emit *e, const uint8_t *data, uint32_t size)
{
	if (!need(e, size, 40, "qgroup limit"))
		return;
	em_hexnum(e, "flags", rd64(data));
	em_nl(e);
	em_i64(e, "max_referenced", (int64_t)rd64(data + 8));
	em_i64(e, "max_exclusive", (int64_t)rd64(data + 16));
	em_nl(e);
	em_i64(e, "rsv_referenced", (int64_t)rd64(data + 24));
	em_i64(e, "rsv_exclusive", (int64_t)rd64(data + 32));
	em_nl(e);
}

/* ---- persistent and temporary items ---- */

static void dev_stats(struct emit *e, const uint8_t *data, uint32_t size)
{
	static const char *const names[] = { "write_errs", "read_errs", "flush_errs", "corruption_errs",
					     "generation" };
	em_text(e, "device stats");
	em_nl(e);
	if (!need(e, size, 40, "device stats"))
		return;
	for (int i = 0; i < 5; i++)
		em_u64(e, names[i], rd64(data + 8 * i));
	em_nl(e);
	if (size > 40)
		em_line(e, "\t\tunknown stats item bytes %u\n", size - 40);
}

static void balance_args(struct emit *e, const char *which, const uint8_t *a)
{
	em_text(e, which);
	em_nl(e);
	em_obj_begin(e, which);
	em_u64(e, "profiles", rd64(a));
	em_u64(e, "devid", rd64(a + 16));
	em_u64(e, "target", rd64(a + 56));
	em_u64(e, "flags", rd64(a + 64));
	em_nl(e);
	em_u64(e, "usage_min", rd32(a + 8));
	em_u64(e, "usage_max", rd32(a + 12));
	em_u64(e, "pstart", rd64(a + 24));
	em_u64(e, "pend", rd64(a + 32));
	em_nl(e);
	em_u64(e, "vstart", rd64(a + 40));
	em_u64(e, "vend", rd64(a + 48));
	em_u64(e, "limit_min", rd32(a + 72));
	em_u64(e, "limit_max", rd32(a + 76));
	em_nl(e);
	em_u64(e, "stripes_min", rd32(a + 80));
	em_u64(e, "stripes_max", rd32(a + 84));
	em_nl(e);
	em_obj_end(e);
}

#define BALANCE_ARGS_SIZE 136
#define BALANCE_ITEM_SIZE (8 + 3 * BALANCE_ARGS_SIZE + 32)

static void balance_item(struct emit *e, const uint8_t *data, uint32_t size)
{
	if (!need(e, size, BALANCE_ITEM_SIZE, "balance item"))
		return;
	em_u64(e, "balance status flags", rd64(data));
	em_nl(e);
	balance_args(e, "DATA", data + 8);
	balance_args(e, "METADATA", data + 8 + BALANCE_ARGS_SIZE);
	balance_args(e, "SYSTEM", data + 8 + 2 * BALANCE_ARGS_SIZE);
}

#define CSUM_TREE_TMP_OBJECTID 13ULL

static void special_item(struct emit *e, const struct bf_key *key, const uint8_t *data, uint32_t size)
{
	char obj[INSP_NAME_LEN];
	bool persistent = key->type == BF_PERSISTENT_ITEM_KEY;
	name_objectid(obj, sizeof(obj), key->objectid, key->type);
	em_text(e, persistent ? "persistent item" : "temporary item");
	em_flagstr(e, "objectid", key->objectid, obj);
	em_u64(e, "offset", key->offset);
	em_nl(e);
	if (persistent && key->objectid == BF_DEV_STATS_OBJECTID)
		dev_stats(e, data, size);
	else if (!persistent && key->objectid == BF_BALANCE_OBJECTID)
		balance_item(e, data, size);
	else if (!persistent && key->objectid == CSUM_TREE_TMP_OBJECTID)
		em_u64(e, "csum tree tmp root", key->offset), em_nl(e);
	else
		em_line(e, "\t\tunknown %s item objectid %llu\n", persistent ? "persistent" : "temporary",
			(unsigned long long)key->objectid);
}

static uint64_t count_bits(const uint8_t *data, uint32_t size)
{
	uint64_t n = 0;
	for (uint32_t i = 0; i < size; i++)
		n += (uint64_t)__builtin_popcount(data[i]);
	return n;
}

/* ---- dispatch ---- */

/* Items whose payload progs describes with a fixed phrase. */
static const char *phrase_of(uint8_t type)
{
	switch (type) {
	case BF_ORPHAN_ITEM_KEY:
		return "orphan item";
	case BF_TREE_BLOCK_REF_KEY:
		return "tree block backref";
	case BF_SHARED_BLOCK_REF_KEY:
		return "shared block backref";
	case BF_EXTENT_REF_V0_KEY:
		return "extent ref v0 (deprecated)";
	case 120:
		return "csum item";
	case BF_FREE_SPACE_EXTENT_KEY:
		return "free space extent";
	case BF_FREE_SPACE_BITMAP_KEY:
		return "free space bitmap";
	default:
		return NULL;
	}
}

void decode_item(struct emit *e, const struct insp_ctx *c, const struct bf_key *key, const uint8_t *data,
		 uint32_t size)
{
	const char *phrase = phrase_of(key->type);
	if (key->type == 0 && key->objectid == BF_FREE_SPACE_OBJECTID)
		free_space_header(e, data, size);
	if (key->type == BF_FREE_SPACE_EXTENT_KEY || key->type == BF_FREE_SPACE_BITMAP_KEY) {
		/* progs shows only the phrase (the key holds start and length); JSON gets them decoded */
		em_ju64(e, "start", key->objectid);
		em_ju64(e, "length", key->offset);
		if (key->type == BF_FREE_SPACE_BITMAP_KEY)
			em_ju64(e, "free_sectors", count_bits(data, size));
	}
	if (phrase) {
		em_text(e, phrase);
		em_nl(e);
		return;
	}
	switch (key->type) {
	case BF_INODE_ITEM_KEY:
		return inode_item(e, data, size);
	case BF_INODE_REF_KEY:
		return inode_refs(e, data, size, false);
	case BF_INODE_EXTREF_KEY:
		return inode_refs(e, data, size, true);
	case BF_DIR_ITEM_KEY:
	case BF_DIR_INDEX_KEY:
	case BF_XATTR_ITEM_KEY:
		return dir_items(e, data, size);
	case BF_DIR_LOG_ITEM_KEY:
	case BF_DIR_LOG_INDEX_KEY:
		if (need(e, size, 8, "dir log item"))
			em_u64(e, "dir log end", rd64(data)), em_nl(e);
		return;
	case BF_ROOT_ITEM_KEY:
		return root_item(e, data, size);
	case BF_ROOT_REF_KEY:
	case BF_ROOT_BACKREF_KEY:
		return root_ref(e, data, size, key->type == BF_ROOT_BACKREF_KEY);
	case BF_EXTENT_ITEM_KEY:
	case BF_METADATA_ITEM_KEY:
		return extent_item(e, key, data, size);
	case BF_EXTENT_DATA_REF_KEY:
		if (need(e, size, sizeof(struct bf_extent_data_ref), "extent data ref"))
			data_ref(e, data);
		return;
	case BF_SHARED_DATA_REF_KEY:
		if (need(e, size, 4, "shared data ref"))
			em_u64(e, "shared data backref count", rd32(data)), em_nl(e);
		return;
	case BF_EXTENT_CSUM_KEY:
		return extent_csum(e, c, key, size);
	case BF_EXTENT_DATA_KEY:
		return file_extent(e, data, size);
	case BF_BLOCK_GROUP_ITEM_KEY:
		return block_group(e, data, size);
	case BF_FREE_SPACE_INFO_KEY:
		return free_space_info(e, data, size);
	case BF_CHUNK_ITEM_KEY:
		return decode_chunk(e, data, size);
	case BF_DEV_ITEM_KEY:
		return dev_item(e, data, size);
	case BF_DEV_EXTENT_KEY:
		return dev_extent(e, data, size);
	case BF_QGROUP_STATUS_KEY:
		return qgroup_status(e, data, size);
	case BF_QGROUP_INFO_KEY:
		return qgroup_info(e, data, size);
	case BF_QGROUP_LIMIT_KEY:
		return qgroup_limit(e, data, size);
	case BF_UUID_KEY_SUBVOL:
	case BF_UUID_KEY_RECEIVED_SUBVOL:
		return uuid_item(e, data, size);
	case BF_STRING_ITEM_KEY:
		em_raw(e, "item data", data, size);
		em_nl(e);
		return;
	case BF_PERSISTENT_ITEM_KEY:
	case BF_TEMPORARY_ITEM_KEY:
		return special_item(e, key, data, size);
	default:
		return; /* QGROUP_RELATION, DEV_REPLACE, verity, unknown: progs prints no payload */
	}
}

/* ---- superblock system chunk array ---- */

void decode_sys_chunk_array(struct emit *e, const struct bf_super *sb)
{
	uint32_t size = get32(sb->sys_chunk_array_size), pos = 0;
	const uint8_t *a = sb->sys_chunk_array;
	if (size > BF_SYSTEM_CHUNK_ARRAY_SIZE) {
		em_line(e, "ERROR: sys_array_size %u shouldn't exceed %u bytes\n", size, BF_SYSTEM_CHUNK_ARRAY_SIZE);
		em_str(e, "error", "sys_array_size too large");
		return;
	}
	em_arr_begin(e, "sys_chunks");
	for (int item = 0; pos < size; item++) {
		struct bf_disk_key dk;
		if (size - pos < sizeof(dk))
			goto short_read;
		memcpy(&dk, a + pos, sizeof(dk));
		struct bf_key k = bf_key_from_disk(&dk);
		pos += sizeof(dk);
		em_obj_begin(e, NULL);
		e->indent = 1;
		em_u64(e, "item", (uint64_t)item);
		em_keyf(e, "|key", k.objectid, k.type, k.offset);
		em_nl(e);
		e->indent = 2;
		if (k.type != BF_CHUNK_ITEM_KEY) {
			em_obj_end(e);
			em_line(e, "ERROR: unexpected item type %u in sys_array at offset %u\n", k.type, pos);
			break;
		}
		if (size - pos < sizeof(struct bf_chunk)) {
			em_obj_end(e);
			goto short_read;
		}
		struct bf_chunk c;
		memcpy(&c, a + pos, sizeof(c));
		unsigned n = get16(c.num_stripes);
		if (n == 0 || size - pos < bf_chunk_item_size(n)) {
			em_obj_end(e);
			em_line(e, "ERROR: invalid chunk in sys_array at offset %u (%u stripes)\n", pos, n);
			break;
		}
		decode_chunk(e, a + pos, (uint32_t)bf_chunk_item_size(n));
		em_obj_end(e);
		pos += (uint32_t)bf_chunk_item_size(n);
	}
	em_arr_end(e);
	return;
short_read:
	em_arr_end(e);
	em_line(e, "ERROR: sys_array too short at offset %u\n", pos);
}
