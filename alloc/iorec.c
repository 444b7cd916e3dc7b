/*
 * alloc/iorec.c - the I/O recorder behind the test-only mount options -o iorecord=FILE and -o testkill=N.
 *
 * Owns: the record file, the count of device writes, and the self-kill of the crash tests. Key idea: every
 * device write (devid, physical offset, length and the bytes) and every completed flush is appended to the
 * record file as one record with one writev() on an O_APPEND descriptor, after the device call succeeded. So at
 * any moment the file's size says exactly how far the device state has been recorded, and a reader can rebuild
 * the device from its state at mount time plus the records (tests/lib/iorec.py does; it also simulates a power
 * cut by dropping or tearing the writes after the last flush). A record that cannot be written fails the
 * device write (-EIO) and every later one, so the mount turns read-only instead of running on with a record
 * that lies; the partial record is cut off the file (the failed write itself may have reached the device).
 *
 * File format, all integers little-endian:
 *   header (16 bytes): "BFIOREC1", u32 version (1), u32 header size (16)
 *   record (32-byte head, then len bytes of data for a write):
 *     u32 magic 0x43455242 ("BREC"), u32 type (1 = write, 2 = flush), u64 devid, u64 physical (0 for a flush),
 *     u32 len (0 for a flush), u32 sequence number (counts records, wraps)
 * A record whose data the file does not hold in full (the daemon was killed during the append) is not part of
 * the record.
 *
 * testkill=N: the process sends itself SIGKILL just before its N-th device write (counted from the start, 1 =
 * the first), so a crash test can stop the daemon at an exact point of a commit.
 */
#include "alloc/alloc.h"
#include "util/util.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define IOREC_MAGIC 0x43455242u
#define IOREC_HEAD 32

static atomic_int rec_fd = -1; /* changed under rec_lock; read without it only to skip the lock when off */
static uint32_t rec_seq;
static off_t rec_size;  /* bytes of whole records written */
static bool rec_broken; /* an append failed: every later device write and flush fails */
static pthread_mutex_t rec_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_uint_fast64_t dev_writes;  /* device writes started since the process began */
static atomic_uint_fast64_t kill_before; /* 0: off */

static void put_le(uint8_t *p, uint64_t v, int n)
{
	for (int i = 0; i < n; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* Append all of iov with one writev (a regular file: short only on a full disk or an error). On failure the
   partial record is cut off, so the file still ends with a whole record, and the recorder is broken for good. */
static int rec_append(struct iovec *iov, int n, size_t total)
{
	ssize_t w;
	do
		w = writev(rec_fd, iov, n);
	while (w < 0 && errno == EINTR);
	if (w == (ssize_t)total) {
		rec_size += (off_t)total;
		return 0;
	}
	bf_log(BF_LOG_ERR, "cannot append to the I/O record (-o iorecord): %s; failing this and every later "
	       "device write", w < 0 ? strerror(errno) : "short write (disk full?)");
	if (w > 0 && ftruncate(rec_fd, rec_size) != 0)
		bf_log(BF_LOG_ERR, "cannot cut the partial record off the I/O record: %s", strerror(errno));
	rec_broken = true;
	return -EIO;
}

int bf_iorec_open(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	struct stat st;
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) != 0 || st.st_size != 0) {
		int e = st.st_size != 0 ? EEXIST : errno;
		close(fd);
		return -e; /* a record describes one mount from its start: never append to an old one */
	}
	pthread_mutex_lock(&rec_lock);
	if (rec_fd >= 0)
		close(rec_fd);
	rec_fd = fd;
	rec_seq = 0;
	rec_size = 0;
	rec_broken = false;
	uint8_t head[16];
	memcpy(head, "BFIOREC1", 8);
	put_le(head + 8, 1, 4);
	put_le(head + 12, sizeof(head), 4);
	struct iovec iov = { head, sizeof(head) };
	int r = rec_append(&iov, 1, sizeof(head));
	pthread_mutex_unlock(&rec_lock);
	return r;
}

void bf_iorec_close(void)
{
	pthread_mutex_lock(&rec_lock);
	if (rec_fd >= 0)
		close(rec_fd);
	rec_fd = -1;
	pthread_mutex_unlock(&rec_lock);
}

void bf_iorec_set_kill(uint64_t nth_write) { atomic_store(&kill_before, nth_write); }

void bf_iorec_before_write(void)
{
	uint64_t n = atomic_fetch_add(&dev_writes, 1) + 1;
	uint64_t k = atomic_load_explicit(&kill_before, memory_order_relaxed);
	if (k && n >= k) {
		bf_log(BF_LOG_WARN, "testkill: killing the daemon before device write %llu", (unsigned long long)n);
		raise(SIGKILL);
	}
}

static int rec_put(uint32_t type, uint64_t devid, uint64_t physical, const void *buf, size_t len)
{
	if (len > UINT32_MAX)
		return -EIO; /* device writes are far smaller; never record a length we cannot represent */
	int r = 0;
	if (atomic_load_explicit(&rec_fd, memory_order_relaxed) < 0)
		return 0;
	pthread_mutex_lock(&rec_lock);
	if (rec_broken) {
		r = -EIO;
	} else if (rec_fd >= 0) {
		uint8_t head[IOREC_HEAD];
		put_le(head, IOREC_MAGIC, 4);
		put_le(head + 4, type, 4);
		put_le(head + 8, devid, 8);
		put_le(head + 16, physical, 8);
		put_le(head + 24, len, 4);
		put_le(head + 28, rec_seq++, 4);
		struct iovec iov[2] = { { head, sizeof(head) }, { (void *)buf, len } };
		r = rec_append(iov, len ? 2 : 1, sizeof(head) + len);
	}
	pthread_mutex_unlock(&rec_lock);
	return r;
}

int bf_iorec_write(uint64_t devid, uint64_t physical, const void *buf, size_t len)
{
	return rec_put(1, devid, physical, buf, len);
}

int bf_iorec_flush(uint64_t devid) { return rec_put(2, devid, 0, NULL, 0); }
