/*
 * tests/unit/test_btree_real.c - the btree read path on real mkfs.btrfs images.
 *
 * Owns: images made by mkfs.btrfs (default options, and 4K nodes with --rootdir of 2000 files) opened as a
 * volume: the chunk tree (every chunk item valid), the root tree (ROOT_ITEMs of trees 2, 4, 5, 7) and a
 * multi-level fs tree (the top directory's DIR_INDEX items and inodes, DIR_ITEMs found by name hash).
 * Skipped when mkfs.btrfs is not installed.
 * Key idea: the synthetic trees of btree_synth.h are built by the same hands that wrote the reader; a tree
 * written by btrfs-progs checks the reader against the real format.
 * Ends with "N passed, N failed".
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "alloc/alloc.h"
#include "btree/btree.h"
#include "util/util.h"
#include "tests/unit/check.h"

/* ================= (6) a real image ================= */

static int run(const char *cmd)
{
	int ret = system(cmd);

	return ret == 0 ? 0 : -1;
}

struct real {
	struct bf_volume vol;
	struct bf_tree_env env;
	struct bf_super sb;
	bool vol_ready;
	int chunks, roots_seen[16];
	unsigned dir_index, inodes;
};

static int chunk_cb(void *ctx, const struct bf_key *key, const uint8_t *data, uint32_t size)
{
	struct real *r = ctx;
	char err[256] = "";
	int ret;

	if (key->type != BF_CHUNK_ITEM_KEY)
		return 0;
	ret = bf_vol_add_chunk(&r->vol, key->offset, (const struct bf_chunk *)data, size, err, sizeof(err));
	if (ret)
		printf("chunk %" PRIu64 ": %s\n", key->offset, err);
	r->chunks++;
	return ret;
}

static int root_cb(void *ctx, const struct bf_key *key, const uint8_t *data, uint32_t size)
{
	struct real *r = ctx;

	(void)data;
	if (key->type == BF_ROOT_ITEM_KEY && key->objectid < 16 && size >= BF_ROOT_ITEM_LEGACY_SIZE)
		r->roots_seen[key->objectid]++;
	return 0;
}

static int fs_cb(void *ctx, const struct bf_key *key, const uint8_t *data, uint32_t size)
{
	struct real *r = ctx;

	(void)data, (void)size;
	r->dir_index += key->objectid == BF_FIRST_FREE_OBJECTID && key->type == BF_DIR_INDEX_KEY;
	r->inodes += key->type == BF_INODE_ITEM_KEY;
	return 0;
}

static int real_open(struct real *r, const char *img)
{
	char err[256] = "";
	int fd = open(img, O_RDONLY), ret;
	struct stat st;
	const uint8_t *fsid;

	if (fd < 0 || pread(fd, &r->sb, sizeof(r->sb), BF_SUPER_INFO_OFFSET) != sizeof(r->sb) || fstat(fd, &st))
		return -EIO;
	if (get64(r->sb.magic) != BF_MAGIC)
		return -EINVAL;
	fsid = (get64(r->sb.incompat_flags) & BF_FEATURE_INCOMPAT_METADATA_UUID) ? r->sb.metadata_uuid : r->sb.fsid;
	bf_vol_init(&r->vol, r->sb.fsid, get32(r->sb.sectorsize), get64(r->sb.num_devices));
	r->vol_ready = true;
	ret = bf_vol_add_device(&r->vol, img, fd, (uint64_t)st.st_size, &r->sb.dev_item, get64(r->sb.generation), err,
				sizeof(err));
	if (!ret)
		ret = bf_vol_load_sys_chunks(&r->vol, &r->sb, err, sizeof(err));
	if (!ret)
		ret = bf_vol_resolve_devices(&r->vol, false, err, sizeof(err));
	if (!ret)
		ret = bf_env_init(&r->env, &r->vol, get32(r->sb.nodesize), get32(r->sb.sectorsize), get16(r->sb.csum_type),
				  fsid, get64(r->sb.generation), 0);
	if (ret)
		printf("opening %s: %d %s\n", img, ret, err);
	return ret;
}

static void real_image_checks(struct real *r, unsigned nfiles)
{
	struct bf_root chunk = { BF_CHUNK_TREE_OBJECTID, get64(r->sb.chunk_root), get64(r->sb.chunk_root_generation),
				 r->sb.chunk_root_level };
	struct bf_root tree = { BF_ROOT_TREE_OBJECTID, get64(r->sb.root), get64(r->sb.generation), r->sb.root_level };
	struct bf_key lo = { 0, 0, 0 }, hi = { UINT64_MAX, 255, UINT64_MAX };
	struct bf_key fs_key = { BF_FS_TREE_OBJECTID, BF_ROOT_ITEM_KEY, UINT64_MAX };
	struct bf_path p;
	int ret;

	ret = bf_iterate(&r->env, &chunk, &lo, &hi, chunk_cb, r);
	CHECK(ret == 0 && r->chunks >= 3, "chunk tree of the mkfs image: ret %d, %d chunk items", ret, r->chunks);
	ret = bf_iterate(&r->env, &tree, &lo, &hi, root_cb, r);
	CHECK(ret == 0 && r->roots_seen[2] == 1 && r->roots_seen[4] == 1 && r->roots_seen[5] == 1 &&
	      r->roots_seen[7] == 1, "root tree has ROOT_ITEMs for trees 2, 4, 5, 7: ret %d, seen %d %d %d %d", ret,
	      r->roots_seen[2], r->roots_seen[4], r->roots_seen[5], r->roots_seen[7]);
	bf_path_init(&p, &r->env);
	ret = bf_search_le(&r->env, &tree, &fs_key, &p);
	if (ret >= 0 && bf_path_key(&p).objectid == BF_FS_TREE_OBJECTID) {
		uint32_t size;
		const struct bf_root_item *ri = (const struct bf_root_item *)bf_path_item(&p, &size);
		struct bf_root fs = { BF_FS_TREE_OBJECTID, get64(ri->bytenr), get64(ri->generation), ri->level };

		bf_path_release(&p);
		ret = bf_iterate(&r->env, &fs, &lo, &hi, fs_cb, r);
		CHECK(ret == 0 && r->dir_index == nfiles && r->inodes == nfiles + 1, "fs tree (level %u): ret %d, %u "
		      "DIR_INDEX items in the top directory (want %u), %u inodes (want %u)", fs.level, ret, r->dir_index,
		      nfiles, r->inodes, nfiles + 1);
		CHECK(nfiles < 1000 || fs.level >= 1, "fs tree of %u files has more than one level (%u)", nfiles, fs.level);
		for (unsigned i = 0; i < nfiles; i += 97) {
			char name[32];
			struct bf_key k = { BF_FIRST_FREE_OBJECTID, BF_DIR_ITEM_KEY, 0 };

			snprintf(name, sizeof(name), "file-%05u", i);
			k.offset = bf_name_hash(name, strlen(name));
			ret = bf_search(&r->env, &fs, &k, &p);
			CHECK(ret == 0, "DIR_ITEM for %s found (%d)", name, ret);
		}
	} else {
		CHECK(0, "ROOT_ITEM of the fs tree not found (%d)", ret);
	}
	bf_path_release(&p);
}

/* Make a directory of nfiles empty files for mkfs --rootdir. */
static int make_files(const char *dir, unsigned nfiles)
{
	char path[128];

	if (mkdir(dir, 0755) && errno != EEXIST)
		return -errno;
	for (unsigned i = 0; i < nfiles; i++) {
		int fd;

		snprintf(path, sizeof(path), "%s/file-%05u", dir, i);
		fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0644);
		if (fd < 0)
			return -errno;
		close(fd);
	}
	return 0;
}

/* mkfs.btrfs with opts (plus --rootdir of nfiles files when nfiles > 0), then read it through a volume. */
static void test_real_image(const char *opts, unsigned nfiles)
{
	char cmd[768], dir[64], img[64];
	struct real r;

	memset(&r, 0, sizeof(r));
	snprintf(dir, sizeof(dir), "/tmp/test_btree_root.%d", (int)getpid());
	snprintf(img, sizeof(img), "/tmp/test_btree_real.%d.img", (int)getpid());
	if (nfiles)
		CHECK(make_files(dir, nfiles) == 0, "creating %u files in %s: %s", nfiles, dir, strerror(errno));
	snprintf(cmd, sizeof(cmd), "rm -f %s && truncate -s 256M %s && mkfs.btrfs -q -f %s %s%s %s >/dev/null 2>&1", img,
		 img, opts, nfiles ? "-r " : "", nfiles ? dir : "", img);
	if (run(cmd) == 0 && real_open(&r, img) == 0) {
		real_image_checks(&r, nfiles);
		bf_env_destroy(&r.env);
	} else {
		CHECK(0, "mkfs.btrfs image %s (options \"%s\") could not be made or opened", img, opts);
	}
	if (r.vol_ready)
		bf_vol_destroy(&r.vol);
	snprintf(cmd, sizeof(cmd), "rm -rf %s %s", dir, img);
	run(cmd);
}

static void test_real_images(void)
{
	if (run("command -v mkfs.btrfs >/dev/null 2>&1")) {
		printf("skip: mkfs.btrfs not installed, real-image tests not run\n");
		return;
	}
	test_real_image("", 0);             /* default options: 16K nodes, DUP metadata */
	test_real_image("-n 4096", 2000);   /* a fs tree of several levels */
}

int main(void)
{
	printf("test_btree_real\n");
	test_real_images();
	return check_summary();
}
