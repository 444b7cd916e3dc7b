/*
 * inspect/names.c - the names btrfs-progs prints for objectids, key types, keys and flag words.
 *
 * Owns: every table of names the inspector shows, so that its text matches `btrfs inspect-internal dump-tree`
 * word for word (same spellings, same special cases such as DEV_ITEMS vs ROOT_TREE for objectid 1, qgroup
 * ids as level/id, uuid keys in hex, -1 offsets), and the parsing of tree names given on the command line.
 *
 * Key idea: tables indexed by the numeric value, with the same fallbacks progs uses ("UNKNOWN.%d") for
 * values outside them, so a hostile value always has a printable name.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "inspect/inspect.h"

struct named {
	uint64_t v;
	const char *name;
};

static const struct named objectid_names[] = {
	{ BF_ROOT_TREE_OBJECTID, "ROOT_TREE" },
	{ BF_EXTENT_TREE_OBJECTID, "EXTENT_TREE" },
	{ BF_CHUNK_TREE_OBJECTID, "CHUNK_TREE" },
	{ BF_DEV_TREE_OBJECTID, "DEV_TREE" },
	{ BF_FS_TREE_OBJECTID, "FS_TREE" },
	{ BF_ROOT_TREE_DIR_OBJECTID, "ROOT_TREE_DIR" },
	{ BF_CSUM_TREE_OBJECTID, "CSUM_TREE" },
	{ BF_BALANCE_OBJECTID, "BALANCE" },
	{ BF_ORPHAN_OBJECTID, "ORPHAN" },
	{ BF_TREE_LOG_OBJECTID, "TREE_LOG" },
	{ BF_TREE_LOG_FIXUP_OBJECTID, "LOG_FIXUP" },
	{ BF_TREE_RELOC_OBJECTID, "TREE_RELOC" },
	{ BF_DATA_RELOC_TREE_OBJECTID, "DATA_RELOC_TREE" },
	{ BF_EXTENT_CSUM_OBJECTID, "EXTENT_CSUM" },
	{ BF_FREE_SPACE_OBJECTID, "FREE_SPACE" },
	{ BF_FREE_INO_OBJECTID, "FREE_INO" },
	{ BF_QUOTA_TREE_OBJECTID, "QUOTA_TREE" },
	{ BF_UUID_TREE_OBJECTID, "UUID_TREE" },
	{ BF_FREE_SPACE_TREE_OBJECTID, "FREE_SPACE_TREE" },
	{ BF_MULTIPLE_OBJECTIDS, "MULTIPLE" },
	{ BF_BLOCK_GROUP_TREE_OBJECTID, "BLOCK_GROUP_TREE" },
	{ (uint64_t)-1, "-1" },
};

static const char *const key_type_names[256] = {
	[BF_INODE_ITEM_KEY] = "INODE_ITEM",
	[BF_INODE_REF_KEY] = "INODE_REF",
	[BF_INODE_EXTREF_KEY] = "INODE_EXTREF",
	[BF_DIR_ITEM_KEY] = "DIR_ITEM",
	[BF_DIR_INDEX_KEY] = "DIR_INDEX",
	[BF_DIR_LOG_ITEM_KEY] = "DIR_LOG_ITEM",
	[BF_DIR_LOG_INDEX_KEY] = "DIR_LOG_INDEX",
	[BF_XATTR_ITEM_KEY] = "XATTR_ITEM",
	[BF_VERITY_DESC_ITEM_KEY] = "VERITY_DESC_ITEM",
	[BF_VERITY_MERKLE_ITEM_KEY] = "VERITY_MERKLE_ITEM",
	[BF_ORPHAN_ITEM_KEY] = "ORPHAN_ITEM",
	[BF_ROOT_ITEM_KEY] = "ROOT_ITEM",
	[BF_ROOT_REF_KEY] = "ROOT_REF",
	[BF_ROOT_BACKREF_KEY] = "ROOT_BACKREF",
	[BF_EXTENT_ITEM_KEY] = "EXTENT_ITEM",
	[BF_METADATA_ITEM_KEY] = "METADATA_ITEM",
	[BF_TREE_BLOCK_REF_KEY] = "TREE_BLOCK_REF",
	[BF_SHARED_BLOCK_REF_KEY] = "SHARED_BLOCK_REF",
	[BF_EXTENT_DATA_REF_KEY] = "EXTENT_DATA_REF",
	[BF_SHARED_DATA_REF_KEY] = "SHARED_DATA_REF",
	[BF_EXTENT_REF_V0_KEY] = "EXTENT_REF_V0",
	[120] = "CSUM_ITEM",
	[BF_EXTENT_CSUM_KEY] = "EXTENT_CSUM",
	[BF_EXTENT_DATA_KEY] = "EXTENT_DATA",
	[BF_BLOCK_GROUP_ITEM_KEY] = "BLOCK_GROUP_ITEM",
	[BF_FREE_SPACE_INFO_KEY] = "FREE_SPACE_INFO",
	[BF_FREE_SPACE_EXTENT_KEY] = "FREE_SPACE_EXTENT",
	[BF_FREE_SPACE_BITMAP_KEY] = "FREE_SPACE_BITMAP",
	[BF_CHUNK_ITEM_KEY] = "CHUNK_ITEM",
	[BF_DEV_ITEM_KEY] = "DEV_ITEM",
	[BF_DEV_EXTENT_KEY] = "DEV_EXTENT",
	[BF_TEMPORARY_ITEM_KEY] = "TEMPORARY_ITEM",
	[BF_DEV_REPLACE_KEY] = "DEV_REPLACE",
	[BF_STRING_ITEM_KEY] = "STRING_ITEM",
	[BF_QGROUP_STATUS_KEY] = "QGROUP_STATUS",
	[BF_QGROUP_RELATION_KEY] = "QGROUP_RELATION",
	[BF_QGROUP_INFO_KEY] = "QGROUP_INFO",
	[BF_QGROUP_LIMIT_KEY] = "QGROUP_LIMIT",
	[BF_PERSISTENT_ITEM_KEY] = "PERSISTENT_ITEM",
	[BF_UUID_KEY_SUBVOL] = "UUID_KEY_SUBVOL",
	[BF_UUID_KEY_RECEIVED_SUBVOL] = "UUID_KEY_RECEIVED_SUBVOL",
};

static bool is_qgroup_key(uint8_t type)
{
	return type == BF_QGROUP_RELATION_KEY || type == BF_QGROUP_INFO_KEY || type == BF_QGROUP_LIMIT_KEY;
}

static void qgroup_id(char *buf, size_t len, uint64_t id)
{
	snprintf(buf, len, "%u/%llu", (unsigned)(id >> 48), (unsigned long long)(id & ((1ULL << 48) - 1)));
}

void name_objectid(char *buf, size_t len, uint64_t objectid, uint8_t type)
{
	switch (type) {
	case BF_PERSISTENT_ITEM_KEY:
		snprintf(buf, len, objectid == BF_DEV_STATS_OBJECTID ? "DEV_STATS" : "%llu",
			 (unsigned long long)objectid);
		return;
	case BF_DEV_EXTENT_KEY:
		snprintf(buf, len, "%llu", (unsigned long long)objectid);
		return;
	case BF_QGROUP_RELATION_KEY:
		qgroup_id(buf, len, objectid);
		return;
	case BF_UUID_KEY_SUBVOL:
	case BF_UUID_KEY_RECEIVED_SUBVOL:
		snprintf(buf, len, "0x%016llx", (unsigned long long)objectid);
		return;
	}
	if (objectid == BF_DEV_ITEMS_OBJECTID && type == BF_DEV_ITEM_KEY) {
		snprintf(buf, len, "DEV_ITEMS");
		return;
	}
	if (objectid == BF_FIRST_CHUNK_TREE_OBJECTID && type == BF_CHUNK_ITEM_KEY) {
		snprintf(buf, len, "FIRST_CHUNK_TREE");
		return;
	}
	for (size_t i = 0; i < sizeof(objectid_names) / sizeof(objectid_names[0]); i++)
		if (objectid_names[i].v == objectid) {
			snprintf(buf, len, "%s", objectid_names[i].name);
			return;
		}
	snprintf(buf, len, "%llu", (unsigned long long)objectid);
}

void name_key_type(char *buf, size_t len, uint64_t objectid, uint8_t type)
{
	if (type == 0 && objectid == BF_FREE_SPACE_OBJECTID)
		snprintf(buf, len, "UNTYPED");
	else if (key_type_names[type])
		snprintf(buf, len, "%s", key_type_names[type]);
	else
		snprintf(buf, len, "UNKNOWN.%d", type);
}

void name_key(char *buf, size_t len, uint64_t objectid, uint8_t type, uint64_t offset)
{
	char obj[INSP_NAME_LEN], ty[INSP_NAME_LEN], off[INSP_NAME_LEN];
	name_objectid(obj, sizeof(obj), objectid, type);
	name_key_type(ty, sizeof(ty), objectid, type);
	if (is_qgroup_key(type))
		qgroup_id(off, sizeof(off), offset);
	else if (type == BF_UUID_KEY_SUBVOL || type == BF_UUID_KEY_RECEIVED_SUBVOL)
		snprintf(off, sizeof(off), "0x%016llx", (unsigned long long)offset);
	else if (type == BF_ROOT_ITEM_KEY && objectid == BF_TREE_RELOC_OBJECTID)
		name_objectid(off, sizeof(off), offset, type);
	else if (type != BF_ROOT_ITEM_KEY && offset == (uint64_t)-1)
		snprintf(off, sizeof(off), "-1");
	else
		snprintf(off, sizeof(off), "%llu", (unsigned long long)offset);
	snprintf(buf, len, "(%s %s %s)", obj, ty, off);
}

/* Append "|"-separated words to buf (always NUL-terminated). */
static void append(char *buf, size_t len, const char *word)
{
	size_t used = strlen(buf);
	if (used + 1 < len)
		snprintf(buf + used, len - used, "%s%s", used ? "|" : "", word);
}

void name_bg_flags(char *buf, size_t len, uint64_t flags)
{
	/* the first profile bit in this order names the profile, as progs' btrfs_bg_flags_to_raid_index */
	static const struct named profiles[] = {
		{ BF_BLOCK_GROUP_RAID10, "RAID10" }, { BF_BLOCK_GROUP_RAID1, "RAID1" },
		{ BF_BLOCK_GROUP_RAID1C3, "RAID1C3" }, { BF_BLOCK_GROUP_RAID1C4, "RAID1C4" },
		{ BF_BLOCK_GROUP_DUP, "DUP" },       { BF_BLOCK_GROUP_RAID0, "RAID0" },
		{ BF_BLOCK_GROUP_RAID5, "RAID5" },   { BF_BLOCK_GROUP_RAID6, "RAID6" },
	};
	const char *profile = "single";
	buf[0] = 0;
	if (flags & BF_BLOCK_GROUP_DATA)
		append(buf, len, "DATA");
	if (flags & BF_BLOCK_GROUP_METADATA)
		append(buf, len, "METADATA");
	if (flags & BF_BLOCK_GROUP_SYSTEM)
		append(buf, len, "SYSTEM");
	for (size_t i = 0; i < sizeof(profiles) / sizeof(profiles[0]); i++)
		if (flags & profiles[i].v) {
			profile = profiles[i].name;
			break;
		}
	/* progs always writes the '|' before the profile, even after no type word */
	size_t used = strlen(buf);
	if (used + 1 < len)
		snprintf(buf + used, len - used, "|%s", profile);
}

void name_inode_flags(char *buf, size_t len, uint64_t flags)
{
	static const struct named names[] = {
		{ BF_INODE_NODATASUM, "NODATASUM" }, { BF_INODE_NODATACOW, "NODATACOW" },
		{ BF_INODE_READONLY, "READONLY" },   { BF_INODE_NOCOMPRESS, "NOCOMPRESS" },
		{ BF_INODE_PREALLOC, "PREALLOC" },   { BF_INODE_SYNC, "SYNC" },
		{ BF_INODE_IMMUTABLE, "IMMUTABLE" }, { BF_INODE_APPEND, "APPEND" },
		{ BF_INODE_NODUMP, "NODUMP" },       { BF_INODE_NOATIME, "NOATIME" },
		{ BF_INODE_DIRSYNC, "DIRSYNC" },     { BF_INODE_COMPRESS, "COMPRESS" },
	};
	buf[0] = 0;
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (flags & names[i].v)
			append(buf, len, names[i].name);
	if (!buf[0])
		snprintf(buf, len, "none");
}

void name_extent_flags(char *buf, size_t len, uint64_t flags)
{
	buf[0] = 0;
	if (flags & BF_EXTENT_FLAG_DATA)
		append(buf, len, "DATA");
	if (flags & BF_EXTENT_FLAG_TREE_BLOCK)
		append(buf, len, "TREE_BLOCK");
	if (flags & BF_BLOCK_FLAG_FULL_BACKREF) {
		/* progs writes the '|' unconditionally here */
		size_t used = strlen(buf);
		if (used + 1 < len)
			snprintf(buf + used, len - used, "|FULL_BACKREF");
	}
}

void name_header_flags(char *buf, size_t len, uint64_t flags)
{
	buf[0] = 0;
	if (flags & BF_HEADER_FLAG_WRITTEN)
		append(buf, len, "WRITTEN");
	if (flags & BF_HEADER_FLAG_RELOC)
		append(buf, len, "RELOC");
}

const char *name_compress(uint8_t type, char *buf, size_t len)
{
	static const char *const names[] = { "none", "zlib", "lzo", "zstd" };
	if (type < 4)
		return names[type];
	snprintf(buf, len, "UNKNOWN.%d", type);
	return buf;
}

const char *name_file_extent_type(uint8_t type)
{
	switch (type) {
	case BF_FILE_EXTENT_INLINE:
		return "inline";
	case BF_FILE_EXTENT_REG:
		return "regular";
	case BF_FILE_EXTENT_PREALLOC:
		return "prealloc";
	default:
		return "unknown";
	}
}

const char *name_dir_type(uint8_t type, char *buf, size_t len)
{
	static const char *const names[] = { NULL, "FILE", "DIR", "CHRDEV", "BLKDEV", "FIFO", "SOCK", "SYMLINK",
					     "XATTR" };
	if (type < sizeof(names) / sizeof(names[0]) && names[type])
		return names[type];
	snprintf(buf, len, "DIR_ITEM.%u", type);
	return buf;
}

const char *name_tree_label(uint64_t id)
{
	static const struct named labels[] = {
		{ BF_ROOT_TREE_OBJECTID, "root" },
		{ BF_EXTENT_TREE_OBJECTID, "extent" },
		{ BF_CHUNK_TREE_OBJECTID, "chunk" },
		{ BF_DEV_TREE_OBJECTID, "device" },
		{ BF_FS_TREE_OBJECTID, "fs" },
		{ BF_ROOT_TREE_DIR_OBJECTID, "directory" },
		{ BF_CSUM_TREE_OBJECTID, "checksum" },
		{ BF_ORPHAN_OBJECTID, "orphan" },
		{ BF_TREE_LOG_OBJECTID, "log" },
		{ BF_TREE_LOG_FIXUP_OBJECTID, "log fixup" },
		{ BF_TREE_RELOC_OBJECTID, "reloc" },
		{ BF_DATA_RELOC_TREE_OBJECTID, "data reloc" },
		{ BF_EXTENT_CSUM_OBJECTID, "extent checksum" },
		{ BF_QUOTA_TREE_OBJECTID, "quota" },
		{ BF_UUID_TREE_OBJECTID, "uuid" },
		{ BF_FREE_SPACE_TREE_OBJECTID, "free space" },
		{ BF_MULTIPLE_OBJECTIDS, "multiple" },
		{ BF_BLOCK_GROUP_TREE_OBJECTID, "block group" },
	};
	for (size_t i = 0; i < sizeof(labels) / sizeof(labels[0]); i++)
		if (labels[i].v == id)
			return labels[i].name;
	return "file";
}

uint64_t tree_id_from_string(const char *s)
{
	static const struct named trees[] = {
		{ BF_ROOT_TREE_OBJECTID, "root" },
		{ BF_EXTENT_TREE_OBJECTID, "extent" },
		{ BF_CHUNK_TREE_OBJECTID, "chunk" },
		{ BF_DEV_TREE_OBJECTID, "dev" },
		{ BF_DEV_TREE_OBJECTID, "device" },
		{ BF_FS_TREE_OBJECTID, "fs" },
		{ BF_CSUM_TREE_OBJECTID, "csum" },
		{ BF_CSUM_TREE_OBJECTID, "checksum" },
		{ BF_QUOTA_TREE_OBJECTID, "quota" },
		{ BF_UUID_TREE_OBJECTID, "uuid" },
		{ BF_FREE_SPACE_TREE_OBJECTID, "free_space" },
		{ BF_TREE_LOG_OBJECTID, "log" },
		{ BF_TREE_LOG_OBJECTID, "tree_log" },
		{ BF_TREE_LOG_FIXUP_OBJECTID, "tree_log_fixup" },
		{ BF_TREE_RELOC_OBJECTID, "tree_reloc" },
		{ BF_DATA_RELOC_TREE_OBJECTID, "data_reloc" },
		{ BF_BLOCK_GROUP_TREE_OBJECTID, "block_group" },
	};
	uint64_t v;
	char norm[64];
	size_t n = 0;

	if (insp_parse_u64(s, &v))
		return v;
	if (strncasecmp(s, "btrfs_", 6) == 0)
		s += 6;
	for (; *s && n + 1 < sizeof(norm); s++)
		norm[n++] = *s == '-' ? '_' : *s;
	norm[n] = 0;
	/* progs accepts the _TREE and _OBJECTID suffixes too */
	const char *suffixes[] = { "_tree_objectid", "_objectid", "_tree" };
	for (size_t i = 0; i < 3; i++) {
		size_t sl = strlen(suffixes[i]);
		if (n > sl && strcasecmp(norm + n - sl, suffixes[i]) == 0) {
			norm[n - sl] = 0;
			break;
		}
	}
	for (size_t i = 0; i < sizeof(trees) / sizeof(trees[0]); i++)
		if (strcasecmp(norm, trees[i].name) == 0)
			return trees[i].v;
	return 0;
}
