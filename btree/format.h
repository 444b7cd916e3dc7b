/*
 * btree/format.h - the btrfs on-disk format, defined by btrfs-fuse itself.
 *
 * Owns: every on-disk structure, key type, objectid, flag and feature bit that btrfs-fuse reads or writes.
 * It is definitions only (no calls), so every layer may include it; it needs no Linux header, so the core
 * builds on macOS and FreeBSD too. tests/unit/test_format.c checks each struct's size and field offsets
 * against the kernel's <linux/btrfs_tree.h>.
 *
 * Key idea: on-disk integers are little-endian and may sit at any byte offset. Each one is a one-byte-aligned
 * wrapper type (bf_le16/32/64, a struct of bytes), so the structs have no padding and no alignment demands, and
 * the compiler refuses any access that does not go through the accessors get16/get32/get64 and
 * put16/put32/put64. A struct pointer may therefore point anywhere inside a block buffer; the caller's only duty
 * is to check that the whole struct lies inside the buffer before it reads.
 */
#ifndef BF_FORMAT_H
#define BF_FORMAT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ---- little-endian wrapper types and accessors ---- */
typedef struct { uint8_t b[2]; } bf_le16;
typedef struct { uint8_t b[4]; } bf_le32;
typedef struct { uint8_t b[8]; } bf_le64;

static inline uint16_t get16(bf_le16 x) { return (uint16_t)(x.b[0] | (x.b[1] << 8)); }
static inline uint32_t get32(bf_le32 x)
{
	return (uint32_t)x.b[0] | ((uint32_t)x.b[1] << 8) | ((uint32_t)x.b[2] << 16) | ((uint32_t)x.b[3] << 24);
}
static inline uint64_t get64(bf_le64 x)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = (v << 8) | x.b[i];
	return v;
}
static inline void put16(bf_le16 *x, uint16_t v) { x->b[0] = (uint8_t)v; x->b[1] = (uint8_t)(v >> 8); }
static inline void put32(bf_le32 *x, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		x->b[i] = (uint8_t)(v >> (8 * i));
}
static inline void put64(bf_le64 *x, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		x->b[i] = (uint8_t)(v >> (8 * i));
}

/* ---- sizes and fixed locations ---- */
#define BF_MAGIC 0x4D5F53665248425FULL /* "_BHRfS_M" */
#define BF_CSUM_SIZE 32
#define BF_FSID_SIZE 16
#define BF_UUID_SIZE 16
#define BF_LABEL_SIZE 256
#define BF_SUPER_INFO_OFFSET 65536ULL
#define BF_SUPER_INFO_SIZE 4096
#define BF_SUPER_MIRROR_MAX 3
#define BF_SUPER_MIRROR_SHIFT 12
#define BF_SYSTEM_CHUNK_ARRAY_SIZE 2048
#define BF_NUM_BACKUP_ROOTS 4
#define BF_MAX_LEVEL 8
#define BF_NAME_LEN 255
#define BF_LINK_MAX 65535U
#define BF_STRIPE_LEN 65536ULL
#define BF_MAX_INLINE_DATA_SIZE(nodesize) ((nodesize) - sizeof(struct bf_header) - sizeof(struct bf_item) - 21)
/* Bytes past the superblock start that the superblock checksum covers. */
#define BF_SUPER_CSUM_START BF_CSUM_SIZE

/* Offset of superblock copy i (0 = primary at 64 KiB, 1 = 64 MiB, 2 = 256 GiB). */
static inline uint64_t bf_sb_offset(int i)
{
	return i == 0 ? BF_SUPER_INFO_OFFSET : (16384ULL << (BF_SUPER_MIRROR_SHIFT * i));
}

/* ---- well-known tree objectids ---- */
#define BF_ROOT_TREE_OBJECTID 1ULL
#define BF_EXTENT_TREE_OBJECTID 2ULL
#define BF_CHUNK_TREE_OBJECTID 3ULL
#define BF_DEV_TREE_OBJECTID 4ULL
#define BF_FS_TREE_OBJECTID 5ULL
#define BF_ROOT_TREE_DIR_OBJECTID 6ULL
#define BF_CSUM_TREE_OBJECTID 7ULL
#define BF_QUOTA_TREE_OBJECTID 8ULL
#define BF_UUID_TREE_OBJECTID 9ULL
#define BF_FREE_SPACE_TREE_OBJECTID 10ULL
#define BF_BLOCK_GROUP_TREE_OBJECTID 11ULL
#define BF_DEV_STATS_OBJECTID 0ULL
#define BF_BALANCE_OBJECTID ((uint64_t)-4)
#define BF_ORPHAN_OBJECTID ((uint64_t)-5)
#define BF_TREE_LOG_OBJECTID ((uint64_t)-6)
#define BF_TREE_LOG_FIXUP_OBJECTID ((uint64_t)-7)
#define BF_TREE_RELOC_OBJECTID ((uint64_t)-8)
#define BF_DATA_RELOC_TREE_OBJECTID ((uint64_t)-9)
#define BF_EXTENT_CSUM_OBJECTID ((uint64_t)-10)
#define BF_FREE_SPACE_OBJECTID ((uint64_t)-11)
#define BF_FREE_INO_OBJECTID ((uint64_t)-12)
#define BF_MULTIPLE_OBJECTIDS ((uint64_t)-255)
#define BF_FIRST_FREE_OBJECTID 256ULL
#define BF_LAST_FREE_OBJECTID ((uint64_t)-256)
#define BF_FIRST_CHUNK_TREE_OBJECTID 256ULL
#define BF_DEV_ITEMS_OBJECTID 1ULL

/* ---- key types ---- */
#define BF_INODE_ITEM_KEY 1
#define BF_INODE_REF_KEY 12
#define BF_INODE_EXTREF_KEY 13
#define BF_XATTR_ITEM_KEY 24
#define BF_VERITY_DESC_ITEM_KEY 36
#define BF_VERITY_MERKLE_ITEM_KEY 37
#define BF_ORPHAN_ITEM_KEY 48
#define BF_DIR_LOG_ITEM_KEY 60
#define BF_DIR_LOG_INDEX_KEY 72
#define BF_DIR_ITEM_KEY 84
#define BF_DIR_INDEX_KEY 96
#define BF_EXTENT_DATA_KEY 108
#define BF_EXTENT_CSUM_KEY 128
#define BF_ROOT_ITEM_KEY 132
#define BF_ROOT_BACKREF_KEY 144
#define BF_ROOT_REF_KEY 156
#define BF_EXTENT_ITEM_KEY 168
#define BF_METADATA_ITEM_KEY 169
#define BF_TREE_BLOCK_REF_KEY 176
#define BF_EXTENT_DATA_REF_KEY 178
#define BF_EXTENT_REF_V0_KEY 180
#define BF_SHARED_BLOCK_REF_KEY 182
#define BF_SHARED_DATA_REF_KEY 184
#define BF_BLOCK_GROUP_ITEM_KEY 192
#define BF_FREE_SPACE_INFO_KEY 198
#define BF_FREE_SPACE_EXTENT_KEY 199
#define BF_FREE_SPACE_BITMAP_KEY 200
#define BF_DEV_EXTENT_KEY 204
#define BF_DEV_ITEM_KEY 216
#define BF_CHUNK_ITEM_KEY 228
#define BF_QGROUP_STATUS_KEY 240
#define BF_QGROUP_INFO_KEY 242
#define BF_QGROUP_LIMIT_KEY 244
#define BF_QGROUP_RELATION_KEY 246
#define BF_TEMPORARY_ITEM_KEY 248
#define BF_PERSISTENT_ITEM_KEY 249
#define BF_DEV_REPLACE_KEY 250
#define BF_UUID_KEY_SUBVOL 251
#define BF_UUID_KEY_RECEIVED_SUBVOL 252
#define BF_STRING_ITEM_KEY 253

/* ---- directory entry types ---- */
#define BF_FT_UNKNOWN 0
#define BF_FT_REG_FILE 1
#define BF_FT_DIR 2
#define BF_FT_CHRDEV 3
#define BF_FT_BLKDEV 4
#define BF_FT_FIFO 5
#define BF_FT_SOCK 6
#define BF_FT_SYMLINK 7
#define BF_FT_XATTR 8
#define BF_FT_MAX 9

/* ---- feature flags ---- */
#define BF_FEATURE_COMPAT_RO_FREE_SPACE_TREE (1ULL << 0)
#define BF_FEATURE_COMPAT_RO_FREE_SPACE_TREE_VALID (1ULL << 1)
#define BF_FEATURE_COMPAT_RO_VERITY (1ULL << 2)
#define BF_FEATURE_COMPAT_RO_BLOCK_GROUP_TREE (1ULL << 3)
#define BF_FEATURE_INCOMPAT_MIXED_BACKREF (1ULL << 0)
#define BF_FEATURE_INCOMPAT_DEFAULT_SUBVOL (1ULL << 1)
#define BF_FEATURE_INCOMPAT_MIXED_GROUPS (1ULL << 2)
#define BF_FEATURE_INCOMPAT_COMPRESS_LZO (1ULL << 3)
#define BF_FEATURE_INCOMPAT_COMPRESS_ZSTD (1ULL << 4)
#define BF_FEATURE_INCOMPAT_BIG_METADATA (1ULL << 5)
#define BF_FEATURE_INCOMPAT_EXTENDED_IREF (1ULL << 6)
#define BF_FEATURE_INCOMPAT_RAID56 (1ULL << 7)
#define BF_FEATURE_INCOMPAT_SKINNY_METADATA (1ULL << 8)
#define BF_FEATURE_INCOMPAT_NO_HOLES (1ULL << 9)
#define BF_FEATURE_INCOMPAT_METADATA_UUID (1ULL << 10)
#define BF_FEATURE_INCOMPAT_RAID1C34 (1ULL << 11)
#define BF_FEATURE_INCOMPAT_ZONED (1ULL << 12)
#define BF_FEATURE_INCOMPAT_EXTENT_TREE_V2 (1ULL << 13)
#define BF_FEATURE_INCOMPAT_RAID_STRIPE_TREE (1ULL << 14)
#define BF_FEATURE_INCOMPAT_SIMPLE_QUOTA (1ULL << 16)

/* Incompat features btrfs-fuse can read. Any other incompat bit refuses the mount. */
#define BF_FEATURE_INCOMPAT_SUPPORTED                                                                       \
	(BF_FEATURE_INCOMPAT_MIXED_BACKREF | BF_FEATURE_INCOMPAT_DEFAULT_SUBVOL |                          \
	 BF_FEATURE_INCOMPAT_MIXED_GROUPS | BF_FEATURE_INCOMPAT_COMPRESS_LZO |                             \
	 BF_FEATURE_INCOMPAT_COMPRESS_ZSTD | BF_FEATURE_INCOMPAT_BIG_METADATA |                            \
	 BF_FEATURE_INCOMPAT_EXTENDED_IREF | BF_FEATURE_INCOMPAT_RAID56 |                                  \
	 BF_FEATURE_INCOMPAT_SKINNY_METADATA | BF_FEATURE_INCOMPAT_NO_HOLES |                              \
	 BF_FEATURE_INCOMPAT_METADATA_UUID | BF_FEATURE_INCOMPAT_RAID1C34 | BF_FEATURE_INCOMPAT_SIMPLE_QUOTA)
/* compat_ro features btrfs-fuse can read; an unknown one allows a read-only mount only. */
#define BF_FEATURE_COMPAT_RO_SUPPORTED                                                                      \
	(BF_FEATURE_COMPAT_RO_FREE_SPACE_TREE | BF_FEATURE_COMPAT_RO_FREE_SPACE_TREE_VALID |               \
	 BF_FEATURE_COMPAT_RO_VERITY | BF_FEATURE_COMPAT_RO_BLOCK_GROUP_TREE)

/* ---- superblock and header flags ---- */
#define BF_HEADER_FLAG_WRITTEN (1ULL << 0)
#define BF_HEADER_FLAG_RELOC (1ULL << 1)
#define BF_BACKREF_REV_SHIFT 56
#define BF_MIXED_BACKREF_REV 1
#define BF_SUPER_FLAG_ERROR (1ULL << 2)
#define BF_SUPER_FLAG_SEEDING (1ULL << 32)
#define BF_SUPER_FLAG_METADUMP (1ULL << 33)
#define BF_SUPER_FLAG_METADUMP_V2 (1ULL << 34)
#define BF_SUPER_FLAG_CHANGING_FSID (1ULL << 35)
#define BF_SUPER_FLAG_CHANGING_FSID_V2 (1ULL << 36)

/* ---- block group / chunk type and profile bits ---- */
#define BF_BLOCK_GROUP_DATA (1ULL << 0)
#define BF_BLOCK_GROUP_SYSTEM (1ULL << 1)
#define BF_BLOCK_GROUP_METADATA (1ULL << 2)
#define BF_BLOCK_GROUP_RAID0 (1ULL << 3)
#define BF_BLOCK_GROUP_RAID1 (1ULL << 4)
#define BF_BLOCK_GROUP_DUP (1ULL << 5)
#define BF_BLOCK_GROUP_RAID10 (1ULL << 6)
#define BF_BLOCK_GROUP_RAID5 (1ULL << 7)
#define BF_BLOCK_GROUP_RAID6 (1ULL << 8)
#define BF_BLOCK_GROUP_RAID1C3 (1ULL << 9)
#define BF_BLOCK_GROUP_RAID1C4 (1ULL << 10)
#define BF_BLOCK_GROUP_TYPE_MASK (BF_BLOCK_GROUP_DATA | BF_BLOCK_GROUP_SYSTEM | BF_BLOCK_GROUP_METADATA)
#define BF_BLOCK_GROUP_PROFILE_MASK                                                                         \
	(BF_BLOCK_GROUP_RAID0 | BF_BLOCK_GROUP_RAID1 | BF_BLOCK_GROUP_DUP | BF_BLOCK_GROUP_RAID10 |         \
	 BF_BLOCK_GROUP_RAID5 | BF_BLOCK_GROUP_RAID6 | BF_BLOCK_GROUP_RAID1C3 | BF_BLOCK_GROUP_RAID1C4)
#define BF_BLOCK_GROUP_RAID56_MASK (BF_BLOCK_GROUP_RAID5 | BF_BLOCK_GROUP_RAID6)

/* ---- extent item flags ---- */
#define BF_EXTENT_FLAG_DATA (1ULL << 0)
#define BF_EXTENT_FLAG_TREE_BLOCK (1ULL << 1)
#define BF_BLOCK_FLAG_FULL_BACKREF (1ULL << 8)

/* ---- inode flags ---- */
#define BF_INODE_NODATASUM (1ULL << 0)
#define BF_INODE_NODATACOW (1ULL << 1)
#define BF_INODE_READONLY (1ULL << 2)
#define BF_INODE_NOCOMPRESS (1ULL << 3)
#define BF_INODE_PREALLOC (1ULL << 4)
#define BF_INODE_SYNC (1ULL << 5)
#define BF_INODE_IMMUTABLE (1ULL << 6)
#define BF_INODE_APPEND (1ULL << 7)
#define BF_INODE_NODUMP (1ULL << 8)
#define BF_INODE_NOATIME (1ULL << 9)
#define BF_INODE_DIRSYNC (1ULL << 10)
#define BF_INODE_COMPRESS (1ULL << 11)
#define BF_INODE_ROOT_ITEM_INIT (1ULL << 31)

/* ---- root item flags ---- */
#define BF_ROOT_SUBVOL_RDONLY (1ULL << 0)
#define BF_ROOT_SUBVOL_DEAD (1ULL << 48)

/* ---- file extent types ---- */
#define BF_FILE_EXTENT_INLINE 0
#define BF_FILE_EXTENT_REG 1
#define BF_FILE_EXTENT_PREALLOC 2

/* ---- free space tree ---- */
#define BF_FREE_SPACE_USING_BITMAPS (1U << 0)

/* ================= structures ================= */

struct bf_disk_key {
	bf_le64 objectid;
	uint8_t type;
	bf_le64 offset;
} __attribute__((packed));

/* Every tree block (node or leaf) starts with this header. */
struct bf_header {
	uint8_t csum[BF_CSUM_SIZE];
	uint8_t fsid[BF_FSID_SIZE];
	bf_le64 bytenr;
	bf_le64 flags; /* low bits: BF_HEADER_FLAG_*; top byte: backref revision */
	uint8_t chunk_tree_uuid[BF_UUID_SIZE];
	bf_le64 generation;
	bf_le64 owner;
	bf_le32 nritems;
	uint8_t level;
} __attribute__((packed));

/* A leaf: header, then nritems item headers growing forward, item data growing back from the block's end.
   offset is relative to the end of the header. */
struct bf_item {
	struct bf_disk_key key;
	bf_le32 offset;
	bf_le32 size;
} __attribute__((packed));

/* A node: header, then nritems key pointers. */
struct bf_key_ptr {
	struct bf_disk_key key;
	bf_le64 blockptr;
	bf_le64 generation;
} __attribute__((packed));

struct bf_dev_item {
	bf_le64 devid;
	bf_le64 total_bytes;
	bf_le64 bytes_used;
	bf_le32 io_align;
	bf_le32 io_width;
	bf_le32 sector_size;
	bf_le64 type;
	bf_le64 generation;
	bf_le64 start_offset;
	bf_le32 dev_group;
	uint8_t seek_speed;
	uint8_t bandwidth;
	uint8_t uuid[BF_UUID_SIZE];
	uint8_t fsid[BF_FSID_SIZE];
} __attribute__((packed));

struct bf_stripe {
	bf_le64 devid;
	bf_le64 offset;
	uint8_t dev_uuid[BF_UUID_SIZE];
} __attribute__((packed));

/* A chunk item; num_stripes stripes follow, the first inside the struct. */
struct bf_chunk {
	bf_le64 length;
	bf_le64 owner;
	bf_le64 stripe_len;
	bf_le64 type;
	bf_le32 io_align;
	bf_le32 io_width;
	bf_le32 sector_size;
	bf_le16 num_stripes;
	bf_le16 sub_stripes;
	struct bf_stripe stripe;
} __attribute__((packed));

/* Size of a chunk item with n stripes. */
static inline size_t bf_chunk_item_size(unsigned n)
{
	return sizeof(struct bf_chunk) + (n ? n - 1 : 0) * sizeof(struct bf_stripe);
}

struct bf_root_backup {
	bf_le64 tree_root;
	bf_le64 tree_root_gen;
	bf_le64 chunk_root;
	bf_le64 chunk_root_gen;
	bf_le64 extent_root;
	bf_le64 extent_root_gen;
	bf_le64 fs_root;
	bf_le64 fs_root_gen;
	bf_le64 dev_root;
	bf_le64 dev_root_gen;
	bf_le64 csum_root;
	bf_le64 csum_root_gen;
	bf_le64 total_bytes;
	bf_le64 bytes_used;
	bf_le64 num_devices;
	bf_le64 unused_64[4];
	uint8_t tree_root_level;
	uint8_t chunk_root_level;
	uint8_t extent_root_level;
	uint8_t fs_root_level;
	uint8_t dev_root_level;
	uint8_t csum_root_level;
	uint8_t unused_8[10];
} __attribute__((packed));

struct bf_super {
	uint8_t csum[BF_CSUM_SIZE];
	uint8_t fsid[BF_FSID_SIZE];
	bf_le64 bytenr;
	bf_le64 flags;
	bf_le64 magic;
	bf_le64 generation;
	bf_le64 root;
	bf_le64 chunk_root;
	bf_le64 log_root;
	bf_le64 unused_log_root_transid;
	bf_le64 total_bytes;
	bf_le64 bytes_used;
	bf_le64 root_dir_objectid;
	bf_le64 num_devices;
	bf_le32 sectorsize;
	bf_le32 nodesize;
	bf_le32 unused_leafsize;
	bf_le32 stripesize;
	bf_le32 sys_chunk_array_size;
	bf_le64 chunk_root_generation;
	bf_le64 compat_flags;
	bf_le64 compat_ro_flags;
	bf_le64 incompat_flags;
	bf_le16 csum_type;
	uint8_t root_level;
	uint8_t chunk_root_level;
	uint8_t log_root_level;
	struct bf_dev_item dev_item;
	char label[BF_LABEL_SIZE];
	bf_le64 cache_generation;
	bf_le64 uuid_tree_generation;
	uint8_t metadata_uuid[BF_FSID_SIZE];
	bf_le64 nr_global_roots;
	bf_le64 reserved[27];
	uint8_t sys_chunk_array[BF_SYSTEM_CHUNK_ARRAY_SIZE];
	struct bf_root_backup super_roots[BF_NUM_BACKUP_ROOTS];
	uint8_t padding[565];
} __attribute__((packed));

struct bf_timespec {
	bf_le64 sec;
	bf_le32 nsec;
} __attribute__((packed));

struct bf_inode_item {
	bf_le64 generation;
	bf_le64 transid;
	bf_le64 size;
	bf_le64 nbytes;
	bf_le64 block_group;
	bf_le32 nlink;
	bf_le32 uid;
	bf_le32 gid;
	bf_le32 mode;
	bf_le64 rdev;
	bf_le64 flags;
	bf_le64 sequence;
	bf_le64 reserved[4];
	struct bf_timespec atime;
	struct bf_timespec ctime;
	struct bf_timespec mtime;
	struct bf_timespec otime;
} __attribute__((packed));

/* INODE_REF item: a sequence of (bf_inode_ref, name) records. key: (inode, INODE_REF, parent dir). */
struct bf_inode_ref {
	bf_le64 index;
	bf_le16 name_len;
} __attribute__((packed));

/* INODE_EXTREF item: a sequence of (bf_inode_extref, name). key: (inode, INODE_EXTREF, hash(parent, name)). */
struct bf_inode_extref {
	bf_le64 parent_objectid;
	bf_le64 index;
	bf_le16 name_len;
} __attribute__((packed));

/* DIR_ITEM / DIR_INDEX / XATTR_ITEM: a sequence of (bf_dir_item, name[name_len], data[data_len]). */
struct bf_dir_item {
	struct bf_disk_key location;
	bf_le64 transid;
	bf_le16 data_len;
	bf_le16 name_len;
	uint8_t type;
} __attribute__((packed));

struct bf_root_item {
	struct bf_inode_item inode;
	bf_le64 generation;
	bf_le64 root_dirid;
	bf_le64 bytenr;
	bf_le64 byte_limit;
	bf_le64 bytes_used;
	bf_le64 last_snapshot;
	bf_le64 flags;
	bf_le32 refs;
	struct bf_disk_key drop_progress;
	uint8_t drop_level;
	uint8_t level;
	/* Fields from here on exist only in items of at least sizeof(struct bf_root_item) bytes. */
	bf_le64 generation_v2;
	uint8_t uuid[BF_UUID_SIZE];
	uint8_t parent_uuid[BF_UUID_SIZE];
	uint8_t received_uuid[BF_UUID_SIZE];
	bf_le64 ctransid;
	bf_le64 otransid;
	bf_le64 stransid;
	bf_le64 rtransid;
	struct bf_timespec ctime;
	struct bf_timespec otime;
	struct bf_timespec stime;
	struct bf_timespec rtime;
	bf_le64 reserved[8];
} __attribute__((packed));
#define BF_ROOT_ITEM_LEGACY_SIZE offsetof(struct bf_root_item, generation_v2)

/* ROOT_REF / ROOT_BACKREF item, followed by the name. */
struct bf_root_ref {
	bf_le64 dirid;
	bf_le64 sequence;
	bf_le16 name_len;
} __attribute__((packed));

/* EXTENT_DATA item. For inline extents the data starts at offsetof(disk_bytenr). */
struct bf_file_extent_item {
	bf_le64 generation;
	bf_le64 ram_bytes;
	uint8_t compression;
	uint8_t encryption;
	bf_le16 other_encoding;
	uint8_t type;
	bf_le64 disk_bytenr;
	bf_le64 disk_num_bytes;
	bf_le64 offset;
	bf_le64 num_bytes;
} __attribute__((packed));
#define BF_FILE_EXTENT_INLINE_DATA_START offsetof(struct bf_file_extent_item, disk_bytenr)

struct bf_extent_item {
	bf_le64 refs;
	bf_le64 generation;
	bf_le64 flags;
} __attribute__((packed));

struct bf_tree_block_info {
	struct bf_disk_key key;
	uint8_t level;
} __attribute__((packed));

struct bf_extent_inline_ref {
	uint8_t type;
	bf_le64 offset;
} __attribute__((packed));

struct bf_extent_data_ref {
	bf_le64 root;
	bf_le64 objectid;
	bf_le64 offset;
	bf_le32 count;
} __attribute__((packed));

struct bf_shared_data_ref {
	bf_le32 count;
} __attribute__((packed));

struct bf_block_group_item {
	bf_le64 used;
	bf_le64 chunk_objectid;
	bf_le64 flags;
} __attribute__((packed));

struct bf_dev_extent {
	bf_le64 chunk_tree;
	bf_le64 chunk_objectid;
	bf_le64 chunk_offset;
	bf_le64 length;
	uint8_t chunk_tree_uuid[BF_UUID_SIZE];
} __attribute__((packed));

struct bf_free_space_info {
	bf_le32 extent_count;
	bf_le32 flags;
} __attribute__((packed));

struct bf_dir_log_item {
	bf_le64 end;
} __attribute__((packed));

struct bf_qgroup_status_item {
	bf_le64 version;
	bf_le64 generation;
	bf_le64 flags;
	bf_le64 rescan;
} __attribute__((packed));
#define BF_QGROUP_STATUS_VERSION 1
#define BF_QGROUP_STATUS_FLAG_ON (1ULL << 0)
#define BF_QGROUP_STATUS_FLAG_RESCAN (1ULL << 1)
#define BF_QGROUP_STATUS_FLAG_INCONSISTENT (1ULL << 2)

/* Compile-time checks of sizes that the format fixes. */
_Static_assert(sizeof(struct bf_disk_key) == 17, "disk_key");
_Static_assert(sizeof(struct bf_header) == 101, "header");
_Static_assert(sizeof(struct bf_item) == 25, "item");
_Static_assert(sizeof(struct bf_key_ptr) == 33, "key_ptr");
_Static_assert(sizeof(struct bf_dev_item) == 98, "dev_item");
_Static_assert(sizeof(struct bf_stripe) == 32, "stripe");
_Static_assert(sizeof(struct bf_chunk) == 80, "chunk");
_Static_assert(sizeof(struct bf_root_backup) == 168, "root_backup");
_Static_assert(sizeof(struct bf_super) == BF_SUPER_INFO_SIZE, "super");
_Static_assert(offsetof(struct bf_super, sys_chunk_array) == 0x32b, "sys_chunk_array offset");
_Static_assert(sizeof(struct bf_inode_item) == 160, "inode_item");
_Static_assert(sizeof(struct bf_root_item) == 439, "root_item");
_Static_assert(sizeof(struct bf_file_extent_item) == 53, "file_extent_item");
_Static_assert(sizeof(struct bf_dir_item) == 30, "dir_item");

/* ---- in-memory key (CPU order) ---- */
struct bf_key {
	uint64_t objectid;
	uint8_t type;
	uint64_t offset;
};

static inline struct bf_key bf_key_from_disk(const struct bf_disk_key *d)
{
	struct bf_key k = { get64(d->objectid), d->type, get64(d->offset) };
	return k;
}
static inline void bf_key_to_disk(struct bf_disk_key *d, const struct bf_key *k)
{
	put64(&d->objectid, k->objectid);
	d->type = k->type;
	put64(&d->offset, k->offset);
}
static inline int bf_key_cmp(const struct bf_key *a, const struct bf_key *b)
{
	if (a->objectid != b->objectid)
		return a->objectid < b->objectid ? -1 : 1;
	if (a->type != b->type)
		return a->type < b->type ? -1 : 1;
	if (a->offset != b->offset)
		return a->offset < b->offset ? -1 : 1;
	return 0;
}

#endif
