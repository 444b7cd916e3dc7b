/*
 * tests/unit/test_format.c - btree/format.h against the kernel's <linux/btrfs_tree.h>.
 *
 * For every on-disk struct the kernel's UAPI header defines, the size and every field offset must match ours.
 * The superblock, header, item and key pointer are not in the UAPI header of every kernel, so they are checked
 * against the offsets the btrfs on-disk format documentation gives. Also round-trips the endian accessors.
 */
#include <stdio.h>
#include <stddef.h>
#include <linux/btrfs_tree.h>

#include "btree/format.h"

static int passed, failed;

static void check(int ok, const char *what, long ours, long theirs)
{
	if (ok) {
		passed++;
		return;
	}
	failed++;
	printf("FAIL %s: ours %ld, kernel %ld\n", what, ours, theirs);
}

#define SAME_SIZE(ours, theirs) \
	check(sizeof(struct ours) == sizeof(struct theirs), "sizeof " #ours, (long)sizeof(struct ours), \
	      (long)sizeof(struct theirs))
#define SAME_OFF(ours, theirs, f) \
	check(offsetof(struct ours, f) == offsetof(struct theirs, f), #ours "." #f, \
	      (long)offsetof(struct ours, f), (long)offsetof(struct theirs, f))
#define AT(ours, f, off) check(offsetof(struct ours, f) == (off), #ours "." #f, (long)offsetof(struct ours, f), off)

static void kernel_structs(void)
{
	SAME_SIZE(bf_disk_key, btrfs_disk_key);
	SAME_OFF(bf_disk_key, btrfs_disk_key, type);
	SAME_OFF(bf_disk_key, btrfs_disk_key, offset);
	SAME_SIZE(bf_dev_item, btrfs_dev_item);
	SAME_OFF(bf_dev_item, btrfs_dev_item, total_bytes);
	SAME_OFF(bf_dev_item, btrfs_dev_item, bytes_used);
	SAME_OFF(bf_dev_item, btrfs_dev_item, io_align);
	SAME_OFF(bf_dev_item, btrfs_dev_item, io_width);
	SAME_OFF(bf_dev_item, btrfs_dev_item, sector_size);
	SAME_OFF(bf_dev_item, btrfs_dev_item, type);
	SAME_OFF(bf_dev_item, btrfs_dev_item, generation);
	SAME_OFF(bf_dev_item, btrfs_dev_item, start_offset);
	SAME_OFF(bf_dev_item, btrfs_dev_item, dev_group);
	SAME_OFF(bf_dev_item, btrfs_dev_item, seek_speed);
	SAME_OFF(bf_dev_item, btrfs_dev_item, bandwidth);
	SAME_OFF(bf_dev_item, btrfs_dev_item, uuid);
	SAME_OFF(bf_dev_item, btrfs_dev_item, fsid);
	SAME_SIZE(bf_stripe, btrfs_stripe);
	SAME_OFF(bf_stripe, btrfs_stripe, offset);
	SAME_OFF(bf_stripe, btrfs_stripe, dev_uuid);
	SAME_SIZE(bf_chunk, btrfs_chunk);
	SAME_OFF(bf_chunk, btrfs_chunk, owner);
	SAME_OFF(bf_chunk, btrfs_chunk, stripe_len);
	SAME_OFF(bf_chunk, btrfs_chunk, type);
	SAME_OFF(bf_chunk, btrfs_chunk, io_align);
	SAME_OFF(bf_chunk, btrfs_chunk, io_width);
	SAME_OFF(bf_chunk, btrfs_chunk, sector_size);
	SAME_OFF(bf_chunk, btrfs_chunk, num_stripes);
	SAME_OFF(bf_chunk, btrfs_chunk, sub_stripes);
	SAME_OFF(bf_chunk, btrfs_chunk, stripe);
	SAME_SIZE(bf_extent_item, btrfs_extent_item);
	SAME_OFF(bf_extent_item, btrfs_extent_item, generation);
	SAME_OFF(bf_extent_item, btrfs_extent_item, flags);
	SAME_SIZE(bf_tree_block_info, btrfs_tree_block_info);
	SAME_OFF(bf_tree_block_info, btrfs_tree_block_info, level);
	SAME_SIZE(bf_extent_inline_ref, btrfs_extent_inline_ref);
	SAME_OFF(bf_extent_inline_ref, btrfs_extent_inline_ref, offset);
	SAME_SIZE(bf_extent_data_ref, btrfs_extent_data_ref);
	SAME_OFF(bf_extent_data_ref, btrfs_extent_data_ref, objectid);
	SAME_OFF(bf_extent_data_ref, btrfs_extent_data_ref, offset);
	SAME_OFF(bf_extent_data_ref, btrfs_extent_data_ref, count);
	SAME_SIZE(bf_shared_data_ref, btrfs_shared_data_ref);
	SAME_SIZE(bf_dev_extent, btrfs_dev_extent);
	SAME_OFF(bf_dev_extent, btrfs_dev_extent, chunk_objectid);
	SAME_OFF(bf_dev_extent, btrfs_dev_extent, chunk_offset);
	SAME_OFF(bf_dev_extent, btrfs_dev_extent, length);
	SAME_OFF(bf_dev_extent, btrfs_dev_extent, chunk_tree_uuid);
	SAME_SIZE(bf_inode_ref, btrfs_inode_ref);
	SAME_OFF(bf_inode_ref, btrfs_inode_ref, name_len);
	SAME_SIZE(bf_inode_extref, btrfs_inode_extref);
	SAME_OFF(bf_inode_extref, btrfs_inode_extref, index);
	SAME_OFF(bf_inode_extref, btrfs_inode_extref, name_len);
	SAME_SIZE(bf_timespec, btrfs_timespec);
	SAME_OFF(bf_timespec, btrfs_timespec, nsec);
	SAME_SIZE(bf_inode_item, btrfs_inode_item);
	SAME_OFF(bf_inode_item, btrfs_inode_item, transid);
	SAME_OFF(bf_inode_item, btrfs_inode_item, size);
	SAME_OFF(bf_inode_item, btrfs_inode_item, nbytes);
	SAME_OFF(bf_inode_item, btrfs_inode_item, block_group);
	SAME_OFF(bf_inode_item, btrfs_inode_item, nlink);
	SAME_OFF(bf_inode_item, btrfs_inode_item, uid);
	SAME_OFF(bf_inode_item, btrfs_inode_item, gid);
	SAME_OFF(bf_inode_item, btrfs_inode_item, mode);
	SAME_OFF(bf_inode_item, btrfs_inode_item, rdev);
	SAME_OFF(bf_inode_item, btrfs_inode_item, flags);
	SAME_OFF(bf_inode_item, btrfs_inode_item, sequence);
	SAME_OFF(bf_inode_item, btrfs_inode_item, reserved);
	SAME_OFF(bf_inode_item, btrfs_inode_item, atime);
	SAME_OFF(bf_inode_item, btrfs_inode_item, ctime);
	SAME_OFF(bf_inode_item, btrfs_inode_item, mtime);
	SAME_OFF(bf_inode_item, btrfs_inode_item, otime);
	SAME_SIZE(bf_dir_log_item, btrfs_dir_log_item);
	SAME_SIZE(bf_dir_item, btrfs_dir_item);
	SAME_OFF(bf_dir_item, btrfs_dir_item, transid);
	SAME_OFF(bf_dir_item, btrfs_dir_item, data_len);
	SAME_OFF(bf_dir_item, btrfs_dir_item, name_len);
	SAME_OFF(bf_dir_item, btrfs_dir_item, type);
	SAME_SIZE(bf_root_item, btrfs_root_item);
	SAME_OFF(bf_root_item, btrfs_root_item, generation);
	SAME_OFF(bf_root_item, btrfs_root_item, root_dirid);
	SAME_OFF(bf_root_item, btrfs_root_item, bytenr);
	SAME_OFF(bf_root_item, btrfs_root_item, byte_limit);
	SAME_OFF(bf_root_item, btrfs_root_item, bytes_used);
	SAME_OFF(bf_root_item, btrfs_root_item, last_snapshot);
	SAME_OFF(bf_root_item, btrfs_root_item, flags);
	SAME_OFF(bf_root_item, btrfs_root_item, refs);
	SAME_OFF(bf_root_item, btrfs_root_item, drop_progress);
	SAME_OFF(bf_root_item, btrfs_root_item, drop_level);
	SAME_OFF(bf_root_item, btrfs_root_item, level);
	SAME_OFF(bf_root_item, btrfs_root_item, generation_v2);
	SAME_OFF(bf_root_item, btrfs_root_item, uuid);
	SAME_OFF(bf_root_item, btrfs_root_item, parent_uuid);
	SAME_OFF(bf_root_item, btrfs_root_item, received_uuid);
	SAME_OFF(bf_root_item, btrfs_root_item, ctransid);
	SAME_OFF(bf_root_item, btrfs_root_item, otransid);
	SAME_OFF(bf_root_item, btrfs_root_item, stransid);
	SAME_OFF(bf_root_item, btrfs_root_item, rtransid);
	SAME_OFF(bf_root_item, btrfs_root_item, ctime);
	SAME_OFF(bf_root_item, btrfs_root_item, otime);
	SAME_OFF(bf_root_item, btrfs_root_item, stime);
	SAME_OFF(bf_root_item, btrfs_root_item, rtime);
	SAME_OFF(bf_root_item, btrfs_root_item, reserved);
	SAME_SIZE(bf_root_ref, btrfs_root_ref);
	SAME_OFF(bf_root_ref, btrfs_root_ref, sequence);
	SAME_OFF(bf_root_ref, btrfs_root_ref, name_len);
	SAME_SIZE(bf_file_extent_item, btrfs_file_extent_item);
	SAME_OFF(bf_file_extent_item, btrfs_file_extent_item, ram_bytes);
	SAME_OFF(bf_file_extent_item, btrfs_file_extent_item, compression);
	SAME_OFF(bf_file_extent_item, btrfs_file_extent_item, encryption);
	SAME_OFF(bf_file_extent_item, btrfs_file_extent_item, other_encoding);
	SAME_OFF(bf_file_extent_item, btrfs_file_extent_item, type);
	SAME_OFF(bf_file_extent_item, btrfs_file_extent_item, disk_bytenr);
	SAME_OFF(bf_file_extent_item, btrfs_file_extent_item, disk_num_bytes);
	SAME_OFF(bf_file_extent_item, btrfs_file_extent_item, offset);
	SAME_OFF(bf_file_extent_item, btrfs_file_extent_item, num_bytes);
	SAME_SIZE(bf_block_group_item, btrfs_block_group_item);
	SAME_OFF(bf_block_group_item, btrfs_block_group_item, chunk_objectid);
	SAME_OFF(bf_block_group_item, btrfs_block_group_item, flags);
	SAME_SIZE(bf_free_space_info, btrfs_free_space_info);
	SAME_OFF(bf_free_space_info, btrfs_free_space_info, flags);
	SAME_SIZE(bf_qgroup_status_item, btrfs_qgroup_status_item);
	SAME_OFF(bf_qgroup_status_item, btrfs_qgroup_status_item, rescan);
}

/* Offsets from the on-disk format documentation (superblock, header, leaf item, key pointer, backup root). */
static void documented_structs(void)
{
	AT(bf_header, fsid, 0x20);
	AT(bf_header, bytenr, 0x30);
	AT(bf_header, flags, 0x38);
	AT(bf_header, chunk_tree_uuid, 0x40);
	AT(bf_header, generation, 0x50);
	AT(bf_header, owner, 0x58);
	AT(bf_header, nritems, 0x60);
	AT(bf_header, level, 0x64);
	AT(bf_item, offset, 0x11);
	AT(bf_item, size, 0x15);
	AT(bf_key_ptr, blockptr, 0x11);
	AT(bf_key_ptr, generation, 0x19);
	AT(bf_super, fsid, 0x20);
	AT(bf_super, bytenr, 0x30);
	AT(bf_super, flags, 0x38);
	AT(bf_super, magic, 0x40);
	AT(bf_super, generation, 0x48);
	AT(bf_super, root, 0x50);
	AT(bf_super, chunk_root, 0x58);
	AT(bf_super, log_root, 0x60);
	AT(bf_super, total_bytes, 0x70);
	AT(bf_super, bytes_used, 0x78);
	AT(bf_super, root_dir_objectid, 0x80);
	AT(bf_super, num_devices, 0x88);
	AT(bf_super, sectorsize, 0x90);
	AT(bf_super, nodesize, 0x94);
	AT(bf_super, stripesize, 0x9c);
	AT(bf_super, sys_chunk_array_size, 0xa0);
	AT(bf_super, chunk_root_generation, 0xa4);
	AT(bf_super, compat_flags, 0xac);
	AT(bf_super, compat_ro_flags, 0xb4);
	AT(bf_super, incompat_flags, 0xbc);
	AT(bf_super, csum_type, 0xc4);
	AT(bf_super, root_level, 0xc6);
	AT(bf_super, chunk_root_level, 0xc7);
	AT(bf_super, log_root_level, 0xc8);
	AT(bf_super, dev_item, 0xc9);
	AT(bf_super, label, 0x12b);
	AT(bf_super, cache_generation, 0x22b);
	AT(bf_super, uuid_tree_generation, 0x233);
	AT(bf_super, metadata_uuid, 0x23b);
	AT(bf_super, sys_chunk_array, 0x32b);
	AT(bf_super, super_roots, 0xb2b);
	AT(bf_root_backup, total_bytes, 0x60);
	AT(bf_root_backup, tree_root_level, 0x98);
	AT(bf_root_backup, csum_root_level, 0x9d);
	check(sizeof(struct bf_super) == 4096, "sizeof bf_super", (long)sizeof(struct bf_super), 4096);
	check(bf_sb_offset(1) == 64ULL << 20, "superblock copy 1", (long)bf_sb_offset(1), 64L << 20);
	check(bf_sb_offset(2) == 256ULL << 30, "superblock copy 2", (long)bf_sb_offset(2), 256L << 30);
	check(BF_MAX_INLINE_DATA_SIZE(4096) == 3949, "max inline data for 4K nodes",
	      (long)BF_MAX_INLINE_DATA_SIZE(4096), 3949);
}

static void accessors(void)
{
	bf_le64 a;
	bf_le32 b;
	bf_le16 c;
	put64(&a, 0x0102030405060708ULL);
	put32(&b, 0xA1B2C3D4u);
	put16(&c, 0xBEEF);
	check(a.b[0] == 0x08 && a.b[7] == 0x01 && get64(a) == 0x0102030405060708ULL, "le64 round trip", 0, 0);
	check(b.b[0] == 0xD4 && get32(b) == 0xA1B2C3D4u, "le32 round trip", 0, 0);
	check(c.b[0] == 0xEF && get16(c) == 0xBEEF, "le16 round trip", 0, 0);
	struct bf_key k1 = { 5, 1, 0 }, k2 = { 5, 1, 1 }, k3 = { 5, 2, 0 };
	check(bf_key_cmp(&k1, &k2) < 0 && bf_key_cmp(&k2, &k3) < 0 && bf_key_cmp(&k3, &k3) == 0, "key order", 0, 0);
}

int main(void)
{
	kernel_structs();
	documented_structs();
	accessors();
	printf("%d passed, %d failed\n", passed, failed);
	return failed != 0;
}
