/*
 * alloc/alloc.h - the volume: devices, the chunk map (logical -> physical) and RAID profile I/O.
 *
 * Owns: the open devices of one filesystem (matched by devid and uuid), the chunk map built from the superblock's
 * system chunk array and the chunk tree, and every read and write of a logical range in every profile
 * (single, DUP, RAID0, RAID1, RAID1C3, RAID1C4, RAID10, RAID5, RAID6), including rebuild from parity.
 * Later (write support): block groups, free space and extent allocation live here too.
 *
 * Key idea: a logical read is split at stripe boundaries; for each piece the chunk's profile picks one device
 * copy. Callers verify checksums themselves and ask again with the next mirror number on a mismatch, so this
 * layer never needs to know what the bytes mean. All device I/O goes through bf_dev_pread / bf_dev_pwrite.
 *
 * Mirror numbers (1-based), per profile:
 *   single, RAID0: 1 copy.  DUP, RAID1, RAID10: 2.  RAID1C3: 3.  RAID1C4: 4.
 *   RAID5: 2 (1 = data as stored, 2 = the data stripe rebuilt from the other data stripes and P).
 *   RAID6: num_stripes (1 = as stored, 2 = rebuilt from P, 3 = rebuilt from Q, k > 3 = rebuilt from P and Q
 *          treating the target stripe and data stripe (k - 4) (skipping the target) as both lost).
 *   A copy on a missing device is replaced, piece by piece, by the next present copy; RAID5/6 rebuild it from
 *   the parity that is present.
 *
 * Thread safety: reads may run concurrently; the chunk map is guarded by a rwlock for the coming write path.
 */
#ifndef BF_ALLOC_H
#define BF_ALLOC_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "btree/format.h"

struct bf_device {
	uint64_t devid;
	uint8_t uuid[BF_UUID_SIZE];
	int fd;               /* -1 when the device is missing */
	int dfd;              /* the same device opened for direct (uncached) writes, or -1 (alloc/device.c) */
	char *path;           /* NULL when missing */
	uint64_t size;        /* bytes readable on the device */
	uint64_t total_bytes; /* from its dev item */
	uint64_t generation;  /* superblock generation found on it */
	bool writable;
};

struct bf_stripe_map {
	uint64_t devid;
	uint64_t physical;
	struct bf_device *dev; /* NULL when the device is missing */
};

struct bf_chunk_map {
	uint64_t logical;
	uint64_t length;
	uint64_t type; /* BF_BLOCK_GROUP_* type and profile bits */
	uint64_t stripe_len;
	uint16_t num_stripes;
	uint16_t sub_stripes;
	struct bf_stripe_map stripes[]; /* num_stripes entries */
};

struct bf_volume {
	uint8_t fsid[BF_FSID_SIZE]; /* the fsid in every superblock (not metadata_uuid) */
	uint32_t sectorsize;
	uint64_t num_devices; /* what the superblock says the filesystem has */
	struct bf_device **devs;
	size_t ndevs;
	struct bf_chunk_map **chunks; /* sorted by logical, non-overlapping */
	size_t nchunks, chunks_cap;
	pthread_rwlock_t lock;
};

/* ---- the platform boundary (alloc/platform_*.c): the only OS-specific code in the core ---- */
/* Open an image file or block device. Block devices are opened O_EXCL; image files get an exclusive
   non-blocking flock. Fails with -EBUSY and a message naming the path if it is in use (kernel mount, another
   btrfs-fuse). *size gets the usable byte size (BLKGETSIZE64 for block devices). */
int bf_plat_open(const char *path, bool writable, int *fd, uint64_t *size, char *err, size_t errlen);
int bf_plat_flush(int fd);
/* A second descriptor of the device behind fd, for writes that bypass the page cache (O_DIRECT on Linux), or -1
   where the system or the filesystem holding the image cannot do that. Writes through it need memory, offset and
   length aligned to BF_DIRECT_ALIGN. */
#define BF_DIRECT_ALIGN 4096u
int bf_plat_open_direct(int fd);

/* ---- devices ---- */
int bf_dev_pread(const struct bf_device *dev, void *buf, size_t len, uint64_t physical);        /* 0 or -EIO */
int bf_dev_pwrite(const struct bf_device *dev, const void *buf, size_t len, uint64_t physical); /* 0 or -EIO */
int bf_dev_flush(const struct bf_device *dev);

/* ---- the I/O recorder (alloc/iorec.c; tests only: -o iorecord=FILE, -o testkill=N) ----
 * When open, bf_dev_pwrite appends every successful write (devid, physical, bytes) and bf_dev_flush every
 * completed flush to the record file, one record per writev, so the file's size tells how far the device state
 * has been recorded; tests/lib/iorec.py rebuilds device states from it. The file must be new or empty
 * (-EEXIST otherwise). A failed append fails the device write with -EIO. */
int bf_iorec_open(const char *path); /* 0 or -errno */
void bf_iorec_close(void);
int bf_iorec_write(uint64_t devid, uint64_t physical, const void *buf, size_t len); /* 0 or -EIO */
int bf_iorec_flush(uint64_t devid);                                                  /* 0 or -EIO */
/* testkill: the process kills itself with SIGKILL just before its nth device write (0: never). */
void bf_iorec_set_kill(uint64_t nth_write);
void bf_iorec_before_write(void); /* called by bf_dev_pwrite: counts writes, carries out testkill */

/* ---- the volume ---- */
void bf_vol_init(struct bf_volume *v, const uint8_t fsid[BF_FSID_SIZE], uint32_t sectorsize, uint64_t num_devices);
void bf_vol_destroy(struct bf_volume *v); /* closes the devices' fds and frees everything */
/* Register an opened device (on success takes ownership of fd and keeps a copy of path; on failure the caller
   still owns fd). -EEXIST for a duplicate devid. */
int bf_vol_add_device(struct bf_volume *v, const char *path, int fd, uint64_t size, const struct bf_dev_item *di,
		      uint64_t generation, char *err, size_t errlen);
struct bf_device *bf_vol_find_device(const struct bf_volume *v, uint64_t devid);
/* Add a placeholder for a device the chunk tree names but that was not given (degraded mounts). */
struct bf_device *bf_vol_add_missing(struct bf_volume *v, uint64_t devid, const uint8_t uuid[BF_UUID_SIZE]);

/* Validate and insert one chunk item (key offset = logical). item_size is the item's size on disk. The chunk
   must be sane: length > 0 and a multiple of sectorsize, stripe_len a power of two, num_stripes > 0 and what the
   profile needs, item_size == bf_chunk_item_size(num_stripes), no overlap with another chunk (an identical
   duplicate, as the chunk tree repeats the system chunks, is accepted). Stripes on devices not yet known get
   dev = NULL and are resolved by bf_vol_resolve_devices. */
int bf_vol_add_chunk(struct bf_volume *v, uint64_t logical, const struct bf_chunk *c, size_t item_size, char *err,
		     size_t errlen);
/* Parse the superblock's sys_chunk_array (bounds-checked) and add its chunks. */
int bf_vol_load_sys_chunks(struct bf_volume *v, const struct bf_super *sb, char *err, size_t errlen);
/* Point every stripe at its device. If a device is missing: with degraded, add a missing placeholder when every
   chunk still has enough copies for its profile, else fail; without degraded, fail with a message naming the
   missing devids. */
int bf_vol_resolve_devices(struct bf_volume *v, bool degraded, char *err, size_t errlen);

/* The chunk containing logical, or NULL. The pointer stays valid until bf_vol_destroy. */
const struct bf_chunk_map *bf_vol_find_chunk(const struct bf_volume *v, uint64_t logical);
/* Number of mirrors for reads of logical (see the table above); 0 if unmapped. */
int bf_vol_num_copies(const struct bf_volume *v, uint64_t logical);
/* Read len bytes at logical using copy `mirror` (1-based). The range may span stripes but must lie inside one
   chunk. Returns 0, -EIO (device error, missing device, unmapped or out-of-range address), -ENOMEM (RAID5/6
   rebuild buffer), or -EINVAL. */
int bf_vol_read(const struct bf_volume *v, uint64_t logical, void *buf, size_t len, int mirror);
/* Write len bytes at logical to every copy (write path; RAID5/6 return -EROFS for now). */
int bf_vol_write(const struct bf_volume *v, uint64_t logical, const void *buf, size_t len);
/* Describe where logical lands for mirror (for messages and the inspector). For RAID5/6, mirror 2 names the P
   stripe and mirror 3 the Q stripe; other mirrors name the data stripe. */
int bf_vol_map(const struct bf_volume *v, uint64_t logical, int mirror, uint64_t *devid, uint64_t *physical);

/* Names for messages: "single", "DUP", "RAID1", ...; "data", "metadata", "system", "data+metadata". */
const char *bf_profile_name(uint64_t type);
const char *bf_bg_type_name(uint64_t type);

/* ================= the extent allocator (alloc/extalloc*.c, alloc/bgroup.c, alloc/delayed_ref.c, ...) ===========
 *
 * Block groups with their free space in memory; allocation of tree blocks (implements the btree layer's
 * struct bf_alloc_ops) and of data extents; new chunks when block groups fill; extent references kept exactly
 * as the kernel keeps them, batched as delayed references and applied to the extent tree at commit; the free
 * space tree (or, for v1 space cache images, its invalidation); block group used bytes, the superblock's
 * bytes_used and devices' bytes_used. Extents freed in a transaction are pinned until it commits.
 * This part sits beside the btree layer (it changes the extent, free-space, block-group, chunk, device and
 * checksum trees through btree/btree.h); the btree layer reaches it only through struct bf_alloc_ops.
 * Not thread-safe: the caller serializes every call (the fs write lock; statfs may read under the read lock).
 */
struct bf_trans;
struct bf_root;
struct bf_tree_env;
struct bf_alloc_ops;
struct bf_extalloc;

/* The global trees the allocator changes; pointers to the journal's live roots (NULL where a tree is absent).
   The allocator changes them only through btree calls inside bf_extalloc_run_delayed. */
struct bf_extalloc_roots {
	struct bf_root *extent, *chunk, *dev, *free_space, *block_group;
};

/* Load the block groups (one BLOCK_GROUP_ITEM per chunk of vol), each device's DEV_EXTENTs and DEV_ITEM, and the
   free space (the free space tree when compat_ro FREE_SPACE_TREE is set, else a scan of the extent tree),
   checking every item. super is the superblock the journal writes at commit: bytes_used, dev_item.bytes_used,
   sys_chunk_array(_size) and cache_generation are kept up to date in it (the journal must not change those
   fields itself). env->chunk_tree_uuid must be set (new device extents carry it). Errors: -EUCLEAN (a corrupt
   item; err says which), -EROFS (features whose trees cannot be kept: extent-tree-v2, zoned, raid-stripe-tree,
   simple quotas, or a free space tree marked not valid), -ENOMEM, or a read error. */
int bf_extalloc_open(struct bf_tree_env *env, struct bf_volume *vol, struct bf_super *super,
		     const struct bf_extalloc_roots *roots, struct bf_extalloc **out, char *err, size_t errlen);
void bf_extalloc_close(struct bf_extalloc *ea);
/* The checksum tree's live root (NULL: none). When the last reference of a data extent goes, its checksums are
   deleted from it at commit, as the kernel's __btrfs_free_extent does; without it they would be left behind. */
void bf_extalloc_set_csum_root(struct bf_extalloc *ea, struct bf_root *csum);
/* The ops the btree layer uses for tree blocks; ctx is the struct bf_extalloc. Tree blocks are nodesize-aligned,
   from SYSTEM block groups for the chunk tree (owner 3) and METADATA (or mixed) groups for every other tree.
   tree_block_cowed does the kernel's update_ref_for_cow for blocks snapshots share; changing the relocation tree
   is refused with -EROFS. */
const struct bf_alloc_ops *bf_extalloc_tree_ops(void);
/* A transaction starts: new allocations belong to t (call before any op or data call of t). */
void bf_extalloc_begin(struct bf_extalloc *ea, struct bf_trans *t);

/* Allocate a data extent of up to len bytes (sector multiple), contiguous, near hint if possible (0: after the
   last data allocation). *got is the length granted (>= one sector; shorter than len only when no free run of
   len is left, after trying a new chunk). -ENOSPC if no data space is left and no chunk can be made. */
int bf_extalloc_data(struct bf_extalloc *ea, uint64_t len, uint64_t hint, uint64_t *bytenr, uint64_t *got);
/* Give back the unused tail [bytenr, end) or all of a data extent allocated in this transaction that was never
   referenced; it is reusable at once. Misuse is logged and fails the next commit. */
void bf_extalloc_data_unused(struct bf_extalloc *ea, uint64_t bytenr, uint64_t len);
/* Queue a change of the data extent's reference from (root, inode, file offset - extent offset) by delta (+1 a
   new file extent item points at it, -1 one stopped). bytenr/num_bytes are the extent's (disk_bytenr,
   disk_num_bytes): for an extent allocated in this transaction, exactly what bf_extalloc_data granted less any
   tail given back. The extent item is created on the first reference and deleted when the count reaches zero;
   then its checksums are deleted and its space pinned until commit. Changes of the same reference merge, so +1
   then -1 in one transaction never reaches the tree. -EINVAL for impossible arguments, -EUCLEAN for an extent
   known with another length or kind, -ENOMEM. */
int bf_extalloc_data_ref(struct bf_extalloc *ea, uint64_t bytenr, uint64_t num_bytes, uint64_t root,
			 uint64_t inode, uint64_t offset, int delta);

/* A block of a log tree (the fsync log, journal/log.c): nodesize bytes of metadata space from a block group the
   last commit knows (never a new chunk: a log may reach only what the committed chunk tree maps), with no extent
   item and no reference; the space stays pinned until the next commit is on disk (bf_extalloc_committed), since
   the superblock may point at the log until then. -ENOSPC when no committed metadata group has room, or when
   the block would eat into what reservations, the global reserve and the queued changes' commit may need (the
   log never starves the commit: the caller commits instead). */
int bf_extalloc_log_block(struct bf_extalloc *ea, uint64_t *bytenr);
/* True if the running transaction made a chunk (a log must not be written then: it could name space the
   committed chunk tree does not map). */
bool bf_extalloc_new_chunks(const struct bf_extalloc *ea);

/* Log replay (alloc/claim.c), before the replay allocates anything: keep [start, start + len) - a log tree block
   (tree_block: it must be free in the committed extent tree, in a metadata group) or a data extent a logged file
   extent item names - from being handed out until the commit; only the part free now is taken, and it is free
   again after the commit unless claimed. Then, for each logged file extent item, add its reference (root, inode,
   offset) to the data extent; an extent the extent tree does not know (written after the last commit) is taken
   as allocated in this transaction, so that the reference creates its extent item at commit (the kernel's
   btrfs_alloc_logged_file_extent). -EUCLEAN (with a log line) for a range no block group can hold this way. */
int bf_extalloc_exclude(struct bf_extalloc *ea, uint64_t start, uint64_t len, bool tree_block);
int bf_extalloc_logged_data_ref(struct bf_extalloc *ea, uint64_t bytenr, uint64_t num_bytes, uint64_t root,
				uint64_t inode, uint64_t offset);

/* Commit steps, called by the journal in order: apply every queued reference change (changing the extent
   tree, block group items and free space tree, inserting the items of chunks made in this transaction, which
   queues more; loops until none is left, at most 64 rounds, then -EUCLEAN); it may be called again after more
   changes (root items). Any error means the transaction must be aborted. After the superblocks are on disk:
   committed (unpins). On abort (after bf_trans_abort, the roots back at the last commit): forget the queue, what
   was allocated, the chunks made and every in-memory change since the last commit. */
int bf_extalloc_run_delayed(struct bf_extalloc *ea, struct bf_trans *t);
void bf_extalloc_committed(struct bf_extalloc *ea);
void bf_extalloc_abort(struct bf_extalloc *ea);

/* Space: bytes_used for the superblock; free data bytes (free in data groups plus what new chunks could add)
   for statfs.
   Metadata reservation (docs/ARCHITECTURE.md, "Space reservation"): a writer reserves room for the tree blocks
   its change may need before starting it (items * nodesize * BF_MAX_LEVEL * 2, the kernel's
   btrfs_calc_insert_metadata_size), so that a full filesystem fails the write with -ENOSPC and never a commit.
   A reservation is granted only against metadata space that is free in existing block groups now, beyond the
   global reserve (sized like the kernel's), all outstanding reservations and the queued changes' commit: there
   is no overcommit, so no reservation ever counts on unallocated device space that a data chunk could take.
   When short, mode says whether a metadata chunk may be made first: BF_RESV_NO_FORCE only once the metadata
   space is 80% taken (the kernel's CHUNK_ALLOC_NO_FORCE), BF_RESV_FORCE_CHUNK whenever the devices have room;
   BF_RESV_ALWAYS never fails (accounting of a change that cannot be refused any more; covered by the global
   reserve). Callers escalate as the kernel's flush_space does: NO_FORCE, then write out buffered data (which
   gives back what its reservation held beyond what it took), FORCE_CHUNK, then commit (which unpins freed space)
   and try once more; only then -ENOSPC. */
enum bf_resv_mode { BF_RESV_NO_FORCE, BF_RESV_FORCE_CHUNK, BF_RESV_ALWAYS };
uint64_t bf_extalloc_bytes_used(const struct bf_extalloc *ea);
/* DEV_ITEM.bytes_used of a device (for the dev_item of each device's superblock); 0 for an unknown devid. */
uint64_t bf_extalloc_dev_bytes_used(const struct bf_extalloc *ea, uint64_t devid);
int bf_extalloc_reserve_meta(struct bf_extalloc *ea, uint64_t items, enum bf_resv_mode mode);
void bf_extalloc_release_meta(struct bf_extalloc *ea, uint64_t items);
/* Bytes held by outstanding metadata reservations. */
uint64_t bf_extalloc_meta_reserved(const struct bf_extalloc *ea);
uint64_t bf_extalloc_free_data(const struct bf_extalloc *ea);

/* ---- read-only views for statfs (alloc/extalloc_query.c) ---- */
struct bf_extalloc_bg_info {
	uint64_t start, length, flags; /* flags: BF_BLOCK_GROUP_* type and profile */
	uint64_t used; /* in the extent tree, plus allocated in the running transaction (freed ones count until commit) */
};
/* cb returns 0 to go on, > 0 to stop (for_each then returns 0), < 0 to fail (returned as is). */
typedef int (*bf_extalloc_bg_cb)(void *ctx, const struct bf_extalloc_bg_info *bg);
/* Call cb for every block group in address order, those made in the running transaction included (their items
   are inserted at commit). The fs lock held shared is enough: no allocator call runs meanwhile. */
int bf_extalloc_for_each_bg(const struct bf_extalloc *ea, bf_extalloc_bg_cb cb, void *ctx);

#endif
