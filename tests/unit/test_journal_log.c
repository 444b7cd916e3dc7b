/*
 * tests/unit/test_journal_log.c - the fsync log's writing side (journal/log.c, bf_super_write_log,
 * bf_extalloc_log_block) on a real mkfs.btrfs image.
 *
 * Owns: (1) a log sync in a running transaction: the primary superblock keeps the last commit's generation and
 * roots and gains log_root / log_root_level, the copies stay without a log; the log root tree on disk has owner
 * TREE_LOG and generation = the running transid (what the kernel's btrfs_replay_log reads it with), holds the
 * ROOT_ITEM (TREE_LOG_OBJECTID, ROOT_ITEM, 5) naming the subvolume's log tree, every block of which (several
 * levels: thousands of items) has owner TREE_LOG and generation = transid and no item in the extent tree, and
 * the log holds every item put in it; (2) a second sync in the same transaction adds to the same log, and the
 * main transaction's new tree blocks never land on a log block (their space is pinned); (3) the commit clears
 * log_root and drops the log; (4) after an abort the superblock still names the last synced log, intact, and
 * the image then opens read-only for writing (a log to replay).
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

#define IMG_SIZE (1ULL << 30)
#define OBJ 100000ULL
#define NLOG 3000
#define MAXBLOCKS 4096

static char img[64];

static struct bf_fsinfo *open_fs(bool writable, int *jr)
{
	const char *paths[1] = { img };
	struct bf_open_opts o = { .paths = paths, .npaths = 1, .writable = writable };
	struct bf_fsinfo *fi = NULL;
	char err[512] = "";

	if (bf_fsinfo_open(&o, &fi, err, sizeof(err)) != 0) {
		printf("cannot open %s: %s\n", img, err);
		return NULL;
	}
	*jr = writable ? bf_journal_open(fi, NULL, 0, err, sizeof(err)) : 0;
	return fi;
}

static bool read_copy(int i, struct bf_super *sb)
{
	int fd = open(img, O_RDONLY);
	bool ok = fd >= 0 && pread(fd, sb, sizeof(*sb), (off_t)bf_sb_offset(i)) == (ssize_t)sizeof(*sb);

	if (fd >= 0)
		close(fd);
	return ok;
}

/* A change of the main transaction: n items in subvolume 5. */
static int put_items(struct bf_fsinfo *fi, uint64_t first, uint64_t n)
{
	struct bf_trans *t;
	struct bf_root *root;
	int r = bf_txn_begin(fi, &t);

	if (r)
		return r;
	r = bf_txn_root(fi, t, BF_FS_TREE_OBJECTID, &root);
	for (uint64_t i = first; !r && i < first + n; i++) {
		struct bf_key key = { OBJ + i, BF_TEMPORARY_ITEM_KEY, i };
		r = bf_insert_item(t, root, &key, &i, sizeof(i));
	}
	int e = bf_txn_end(fi, t);
	return r ? r : e;
}

/* n items into subvolume 5's log, then a sync. */
static int log_items(struct bf_fsinfo *fi, uint64_t first, uint64_t n)
{
	struct bf_trans *lt;
	struct bf_root *log;
	int r = bf_log_tree(fi, BF_FS_TREE_OBJECTID, &lt, &log);

	for (uint64_t i = first; !r && i < first + n; i++) {
		struct bf_key key = { OBJ + i, BF_TEMPORARY_ITEM_KEY, i };
		uint64_t v = i * 3;
		r = bf_insert_item(lt, log, &key, &v, sizeof(v));
	}
	return r ? r : bf_log_sync(fi);
}

/* ---- reading the log back from disk ---- */

struct walk {
	uint64_t transid;
	uint64_t blocks[MAXBLOCKS];
	size_t nblocks;
	bool bad;
};

/* Every block of the tree at bytenr: owner TREE_LOG, generation transid. */
static void walk_blocks(struct bf_fsinfo *fi, struct walk *w, uint64_t bytenr, int level)
{
	struct bf_block_expect exp = { w->transid, level, NULL, BF_TREE_LOG_OBJECTID };
	struct bf_block *b;

	if (bf_block_read(&fi->env, bytenr, &exp, &b) != 0) {
		printf("cannot read log block %" PRIu64 "\n", bytenr);
		w->bad = true;
		return;
	}
	if (b->owner != BF_TREE_LOG_OBJECTID || b->generation != w->transid)
		w->bad = true;
	if (w->nblocks < MAXBLOCKS)
		w->blocks[w->nblocks++] = bytenr;
	for (uint32_t i = 0; b->level > 0 && i < b->nritems; i++)
		walk_blocks(fi, w, bf_node_blockptr(b, i), b->level - 1);
	bf_block_put(&fi->env, b);
}

/* The extent tree has no item for bytenr. */
static bool no_extent_item(struct bf_fsinfo *fi, uint64_t bytenr)
{
	struct bf_key key = { bytenr, UINT8_MAX, UINT64_MAX };
	struct bf_path p;
	bool none = true;

	bf_path_init(&p, &fi->env);
	if (bf_search_le(&fi->env, &fi->extent_root, &key, &p) >= 0)
		none = bf_path_key(&p).objectid != bytenr;
	bf_path_release(&p);
	return none;
}

struct count {
	uint64_t n, bad;
};

static int count_cb(void *ctx, const struct bf_key *k, const uint8_t *data, uint32_t size)
{
	struct count *c = ctx;
	uint64_t v;

	if (size != sizeof(v))
		return (int)(++c->bad, 0);
	memcpy(&v, data, sizeof(v));
	if (v != k->offset * 3)
		c->bad++;
	c->n++;
	return 0;
}

/* The log the primary superblock names: its subvolume-5 log tree holds items [0, n), each block checked. */
static void check_log_on_disk(struct bf_fsinfo *fi, uint64_t transid, uint64_t n, struct walk *w)
{
	struct bf_super sb;
	struct bf_root lroot, log5;
	struct bf_root_item ri;
	struct bf_key key = { BF_TREE_LOG_OBJECTID, BF_ROOT_ITEM_KEY, BF_FS_TREE_OBJECTID };
	struct bf_path p;
	struct count c = { 0, 0 };

	CHECK(read_copy(0, &sb), "read the primary");
	CHECK(get64(sb.log_root) != 0, "log_root set after a log sync");
	lroot = (struct bf_root){ BF_TREE_LOG_OBJECTID, get64(sb.log_root), transid, sb.log_root_level };
	memset(w, 0, sizeof(*w));
	w->transid = transid;
	walk_blocks(fi, w, lroot.bytenr, lroot.level);
	CHECK(!w->bad && w->nblocks >= 1, "log root tree blocks: owner TREE_LOG, generation %" PRIu64, transid);
	bf_path_init(&p, &fi->env);
	int r = bf_search(&fi->env, &lroot, &key, &p);
	uint32_t size = 0;
	const uint8_t *d = r == 0 ? bf_path_item(&p, &size) : NULL;
	CHECK(d && size == sizeof(ri), "ROOT_ITEM (TREE_LOG, ROOT_ITEM, 5) in the log root tree (r=%d size=%u)", r,
	      size);
	if (!d || size != sizeof(ri)) {
		bf_path_release(&p);
		return;
	}
	memcpy(&ri, d, sizeof(ri));
	bf_path_release(&p);
	CHECK(get64(ri.generation) == transid && get64(ri.generation_v2) == transid, "log root item generation");
	CHECK(get32(ri.inode.mode) == (040000 | 0755) && get64(ri.inode.size) == 3, "log root item's inode");
	log5 = (struct bf_root){ BF_TREE_LOG_OBJECTID, get64(ri.bytenr), transid, ri.level };
	size_t before = w->nblocks;
	walk_blocks(fi, w, log5.bytenr, log5.level);
	CHECK(!w->bad, "every log tree block: owner TREE_LOG, generation %" PRIu64, transid);
	CHECK(log5.level >= 1, "a log of %" PRIu64 " items has more than one level (level %u)", n, log5.level);
	CHECK(w->nblocks > before, "log tree blocks walked");
	size_t with_item = 0;
	for (size_t i = 0; i < w->nblocks; i++)
		with_item += !no_extent_item(fi, w->blocks[i]);
	CHECK(with_item == 0, "%zu log blocks have extent items", with_item);
	struct bf_key min = { 0, 0, 0 }, max = { UINT64_MAX, UINT8_MAX, UINT64_MAX };
	CHECK(bf_iterate(&fi->env, &log5, &min, &max, count_cb, &c) == 0, "iterate the log tree");
	CHECK(c.n == n && c.bad == 0, "the log holds %" PRIu64 " items (found %" PRIu64 ", %" PRIu64 " wrong)", n,
	      c.n, c.bad);
}

static void test_log(void)
{
	int jr = 0;
	struct bf_fsinfo *fi = open_fs(true, &jr);
	struct bf_super before, sb, copy;
	struct walk w1, w2;

	CHECK(fi && jr == 0, "open writable");
	if (!fi || jr)
		return;
	uint64_t gen = fi->generation, transid = gen + 1;
	CHECK(read_copy(0, &before), "read the primary before");
	CHECK(put_items(fi, 0, 10) == 0, "a change in the running transaction");
	struct bf_trans *lt;
	struct bf_root *log;
	CHECK(bf_log_tree(fi, BF_FS_TREE_OBJECTID, &lt, &log) == 0 && lt->transid == transid,
	      "the log's transid is the running one");
	CHECK(log_items(fi, 0, NLOG) == 0, "log sync");
	CHECK(bf_journal_commits(fi) == 0 && bf_log_syncs(fi) == 1, "a sync, no commit (%" PRIu64 " commits)",
	      bf_journal_commits(fi));
	CHECK(read_copy(0, &sb) && get64(sb.generation) == gen && get64(sb.root) == get64(before.root) &&
		      sb.log_root_level < BF_MAX_LEVEL,
	      "primary keeps the last commit's generation and roots");
	CHECK(read_copy(1, &copy) && get64(copy.log_root) == 0, "the copies name no log");
	check_log_on_disk(fi, transid, NLOG, &w1);

	/* the same transaction goes on: more main-tree changes, then more log */
	CHECK(put_items(fi, 10, 3000) == 0, "more changes in the running transaction");
	CHECK(log_items(fi, NLOG, NLOG) == 0, "second log sync");
	check_log_on_disk(fi, transid, 2 * NLOG, &w2);
	CHECK(bf_journal_commits(fi) == 0, "still no commit");
	/* no block of the main transaction sits on a block of either log version */
	struct bf_trans *t;
	size_t clash = 0;
	CHECK(bf_txn_begin(fi, &t) == 0, "join");
	for (size_t i = 0; i < t->ndirty; i++) {
		for (size_t a = 0; a < w1.nblocks; a++)
			clash += t->dirty[i]->bytenr == w1.blocks[a];
		for (size_t a = 0; a < w2.nblocks; a++)
			clash += t->dirty[i]->bytenr == w2.blocks[a];
	}
	CHECK(bf_txn_end(fi, t) == 0, "leave");
	CHECK(clash == 0, "%zu main-tree blocks were put on log blocks", clash);

	CHECK(bf_commit(fi) == 0, "commit");
	CHECK(read_copy(0, &sb) && get64(sb.log_root) == 0 && sb.log_root_level == 0 &&
		      get64(sb.generation) == transid,
	      "the commit clears log_root");
	CHECK(!bf_log_active(fi), "the commit drops the log");
	CHECK(bf_journal_close(fi) == 0, "close");
	bf_fsinfo_close(fi);
}

static void test_abort_keeps_log(void)
{
	int jr = 0;
	struct bf_fsinfo *fi = open_fs(true, &jr);
	struct bf_trans *t;
	struct walk w;

	CHECK(fi && jr == 0, "open writable");
	if (!fi || jr)
		return;
	uint64_t transid = fi->generation + 1;
	CHECK(put_items(fi, 5000, 5) == 0 && log_items(fi, 0, NLOG) == 0, "log sync before the abort");
	CHECK(bf_txn_begin(fi, &t) == 0, "join");
	bf_txn_abort(fi, t, -EIO, "a test abort");
	bf_txn_end(fi, t);
	CHECK(bf_journal_failed(fi, NULL) && !bf_log_active(fi), "aborted, log dropped from memory");
	bf_journal_close(fi);
	bf_fsinfo_close(fi);

	fi = open_fs(false, &jr);
	CHECK(fi != NULL, "reopen");
	if (!fi)
		return;
	check_log_on_disk(fi, transid, NLOG, &w);
	bf_fsinfo_close(fi);
	fi = open_fs(true, &jr);
	CHECK(fi && jr == -EROFS, "an image with a log to replay is not written (journal open %d)", jr);
	if (fi) {
		if (!jr)
			bf_journal_close(fi);
		bf_fsinfo_close(fi);
	}
}

int main(void)
{
	bf_log_set_verbosity(BF_LOG_WARN);
	int go = mkfs_image_begin(img, sizeof(img), "/tmp/bf-test-jlog", IMG_SIZE);
	if (go <= 0)
		return go < 0;
	test_log();
	test_abort_keeps_log();
	unlink(img);
	return check_summary();
}
