/*
 * tests/unit/test_journal.c - transactions and commits (journal/trans.c, commit.c, superwrite.c, wopen.c) on a
 * real mkfs.btrfs image.
 *
 * Owns: (1) commits: each of several transactions changes subvolume 5 and commits; then every superblock copy
 * on the image (64 KiB, 64 MiB, 256 GiB: the image is a sparse file just past 256 GiB) passes bf_super_check
 * (checksum, magic, location, sizes), carries the new generation and roots, the copies differ only in bytenr
 * and checksum, the backup-root ring has advanced by one slot per commit after the newest slot found at open
 * (the kernel's rotation) with the new tree root and generation, and the four slots hold the last four commits;
 * the root item of the changed tree names its new root with generation_v2 and ctransid = the transid;
 * (2) an abort: a change is made, the transaction aborted: the change is gone from the live tree, the journal
 * reports failure, new transactions are refused with -EROFS, and the image (superblocks untouched) still holds
 * the last commit - which a fresh open shows, with every committed change and without the aborted one;
 * (3) a commit with nothing pending, or of a transaction that changed nothing, writes nothing; the read-only
 * refusal for an image opened read-only.
 * Needs mkfs.btrfs (the test is skipped without it). Ends with "N passed, N failed".
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "journal/journal.h"
#include "util/util.h"
#include "tests/unit/check.h"
#include "tests/unit/mkfs_image.h"

#define IMG_SIZE ((256ULL << 30) + (64ULL << 20))
#define COMMITS 6
#define TEST_OBJECTID 100000ULL

static char img[64];

static struct bf_fsinfo *open_fs(bool writable)
{
	const char *paths[1] = { img };
	struct bf_open_opts o = { .paths = paths, .npaths = 1, .writable = writable };
	struct bf_fsinfo *fi = NULL;
	char err[512] = "";

	if (bf_fsinfo_open(&o, &fi, err, sizeof(err)) != 0) {
		printf("cannot open %s: %s\n", img, err);
		return NULL;
	}
	if (writable && bf_journal_open(fi, NULL, 0, err, sizeof(err)) != 0) {
		printf("cannot open the journal of %s: %s\n", img, err);
		bf_fsinfo_close(fi);
		return NULL;
	}
	return fi;
}

static void close_fs(struct bf_fsinfo *fi)
{
	if (fi->journal)
		CHECK(bf_journal_close(fi) == 0, "final commit at close");
	bf_fsinfo_close(fi);
}

static bool read_copy(int i, struct bf_super *sb)
{
	int fd = open(img, O_RDONLY);
	bool ok = fd >= 0 && pread(fd, sb, sizeof(*sb), (off_t)bf_sb_offset(i)) == (ssize_t)sizeof(*sb);

	if (fd >= 0)
		close(fd);
	return ok;
}

/* An item of the test's own in subvolume 5 (an orphan-free spot far above the inodes). */
static int put_item(struct bf_fsinfo *fi, uint64_t n)
{
	struct bf_trans *t;
	struct bf_root *root;
	struct bf_key key = { TEST_OBJECTID + n, BF_TEMPORARY_ITEM_KEY, n };
	uint64_t payload = n * 7;
	int r = bf_txn_begin(fi, &t);

	if (r)
		return r;
	r = bf_txn_root(fi, t, BF_FS_TREE_OBJECTID, &root);
	if (!r)
		r = bf_insert_item(t, root, &key, &payload, sizeof(payload));
	int e = bf_txn_end(fi, t);
	return r ? r : e;
}

static bool has_item(struct bf_fsinfo *fi, uint64_t n)
{
	struct bf_root root;
	struct bf_key key = { TEST_OBJECTID + n, BF_TEMPORARY_ITEM_KEY, n };
	struct bf_path p;
	bool found;

	if (bf_journal_root(fi, BF_FS_TREE_OBJECTID, &root) != 0 && bf_find_root(fi, BF_FS_TREE_OBJECTID, &root, NULL))
		return false;
	bf_path_init(&p, &fi->env);
	found = bf_search(&fi->env, &root, &key, &p) == 0;
	bf_path_release(&p);
	return found;
}

/* The slot the kernel fills next: after the one holding the superblock's generation, else slot 0. */
static int next_slot(const struct bf_super *sb)
{
	for (int i = 0; i < BF_NUM_BACKUP_ROOTS; i++)
		if (get64(sb->super_roots[i].tree_root_gen) == get64(sb->generation))
			return (i + 1) % BF_NUM_BACKUP_ROOTS;
	return 0;
}

static void check_copies(const struct bf_fsinfo *fi, uint64_t gen, int slot)
{
	struct bf_super first;
	char why[256];

	for (int i = 0; i < BF_SUPER_MIRROR_MAX; i++) {
		struct bf_super sb;
		CHECK(read_copy(i, &sb), "read superblock copy %d", i);
		CHECK(bf_super_check(&sb, bf_sb_offset(i), why, sizeof(why)) == 0, "copy %d valid: %s", i, why);
		CHECK(get64(sb.generation) == gen, "copy %d generation %" PRIu64 ", want %" PRIu64, i,
		      get64(sb.generation), gen);
		CHECK(get64(sb.root) == fi->tree_root.bytenr && sb.root_level == fi->tree_root.level,
		      "copy %d root %" PRIu64 ", live %" PRIu64, i, get64(sb.root), fi->tree_root.bytenr);
		CHECK(get64(sb.log_root) == 0, "copy %d has no log root", i);
		const struct bf_root_backup *b = &sb.super_roots[slot];
		CHECK(get64(b->tree_root_gen) == gen && get64(b->tree_root) == get64(sb.root),
		      "copy %d backup slot %d holds the new root (gen %" PRIu64 ")", i, slot, get64(b->tree_root_gen));
		CHECK(get64(b->bytes_used) == get64(sb.bytes_used) && get64(b->num_devices) == 1,
		      "copy %d backup slot %d sizes", i, slot);
		if (i == 0) {
			first = sb;
		} else {
			put64(&sb.bytenr, get64(first.bytenr));
			memcpy(sb.csum, first.csum, sizeof(sb.csum));
			CHECK(memcmp(&sb, &first, sizeof(sb)) == 0, "copy %d equals the primary but for bytenr and csum",
			      i);
		}
	}
}

static void test_commits(void)
{
	struct bf_fsinfo *fi = open_fs(true);
	struct bf_super sb;

	if (!fi) {
		CHECK(0, "open writable");
		return;
	}
	uint64_t gen0 = fi->generation;
	int slot = next_slot(&fi->super);
	CHECK(bf_commit(fi) == 0 && fi->generation == gen0, "a commit with nothing pending writes nothing");
	for (uint64_t n = 1; n <= COMMITS; n++) {
		CHECK(put_item(fi, n) == 0, "change %" PRIu64, n);
		CHECK(bf_commit(fi) == 0, "commit %" PRIu64, n);
		CHECK(fi->generation == gen0 + n, "generation after commit %" PRIu64 ": %" PRIu64, n, fi->generation);
		check_copies(fi, gen0 + n, slot);
		slot = (slot + 1) % BF_NUM_BACKUP_ROOTS;
	}
	CHECK(read_copy(0, &sb), "read primary");
	for (int i = 0; i < BF_NUM_BACKUP_ROOTS; i++) {
		uint64_t g = get64(sb.super_roots[i].tree_root_gen);
		CHECK(g > gen0 + COMMITS - BF_NUM_BACKUP_ROOTS && g <= gen0 + COMMITS,
		      "backup slot %d holds one of the last four commits (gen %" PRIu64 ")", i, g);
	}
	struct bf_root root;
	struct bf_root_item ri;
	CHECK(bf_find_root(fi, BF_FS_TREE_OBJECTID, &root, &ri) == 0, "root item of subvolume 5");
	CHECK(get64(ri.generation) == gen0 + COMMITS && get64(ri.generation_v2) == gen0 + COMMITS &&
	      get64(ri.ctransid) == gen0 + COMMITS, "root item generation %" PRIu64 " v2 %" PRIu64 " ctransid %"
	      PRIu64, get64(ri.generation), get64(ri.generation_v2), get64(ri.ctransid));
	CHECK(bf_journal_commits(fi) == COMMITS, "commit count %" PRIu64, bf_journal_commits(fi));
	struct bf_trans *t;
	struct bf_super again;
	CHECK(bf_txn_begin(fi, &t) == 0 && bf_txn_end(fi, t) == 0 && bf_commit(fi) == 0, "an empty transaction");
	CHECK(fi->generation == gen0 + COMMITS && read_copy(0, &again) && memcmp(&again, &sb, sizeof(sb)) == 0,
	      "a transaction that changed nothing writes nothing");
	close_fs(fi);
}

static void test_abort(void)
{
	struct bf_fsinfo *fi = open_fs(true);
	struct bf_super before, after;
	struct bf_trans *t;
	const char *why = NULL;

	if (!fi) {
		CHECK(0, "open writable");
		return;
	}
	uint64_t gen = fi->generation;
	CHECK(read_copy(0, &before), "read primary");
	CHECK(put_item(fi, 99) == 0 && has_item(fi, 99), "a change visible before the abort");
	CHECK(bf_txn_begin(fi, &t) == 0, "join the transaction");
	bf_txn_abort(fi, t, -EIO, "a test abort");
	CHECK(!has_item(fi, 99), "the aborted change is gone from the live tree");
	CHECK(bf_journal_failed(fi, &why) && why && strstr(why, "aborted"), "failure reported: %s", why ? why : "");
	CHECK(bf_txn_begin(fi, &t) == -EROFS, "new transactions are refused after an abort");
	CHECK(bf_commit(fi) == -EROFS, "commit refused after an abort");
	CHECK(fi->generation == gen, "generation unchanged by the abort");
	CHECK(bf_journal_close(fi) == 0, "close after an abort");
	bf_fsinfo_close(fi);
	CHECK(read_copy(0, &after) && memcmp(&before, &after, sizeof(before)) == 0,
	      "the superblock is untouched by the aborted transaction");

	fi = open_fs(false);
	if (!fi) {
		CHECK(0, "reopen read-only");
		return;
	}
	CHECK(fi->generation == gen, "reopened at generation %" PRIu64 ", want %" PRIu64, fi->generation, gen);
	for (uint64_t n = 1; n <= COMMITS; n++)
		CHECK(has_item(fi, n), "committed change %" PRIu64 " is there after reopening", n);
	CHECK(!has_item(fi, 99), "the aborted change is not");
	struct bf_trans *t2;
	char err[256];
	CHECK(bf_journal_open(fi, NULL, 0, err, sizeof(err)) == -EROFS && bf_txn_begin(fi, &t2) == -EROFS,
	      "an image opened read-only takes no transaction");
	bf_fsinfo_close(fi);
}

int main(void)
{
	bf_log_set_verbosity(BF_LOG_WARN);
	int go = mkfs_image_begin(img, sizeof(img), "/tmp/bf-test-journal", IMG_SIZE);
	if (go <= 0)
		return go < 0;
	test_commits();
	test_abort();
	unlink(img);
	return check_summary();
}
