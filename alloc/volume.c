/*
 * alloc/volume.c - the devices of one filesystem, and the check that every chunk can still be read.
 *
 * Owns: bf_vol_init/destroy, the device list (kept sorted by devid), placeholders for missing devices, and
 * bf_vol_resolve_devices. Key idea: a device that a chunk names but nobody gave gets a placeholder (fd -1)
 * holding its devid and uuid as soon as the chunk is added; a later bf_vol_add_device fills it in. So the order
 * of adding devices and chunks does not matter, and resolving only has to look for placeholders left over.
 */
#include "alloc/internal.h"
#include "util/util.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void bf_vol_init(struct bf_volume *v, const uint8_t fsid[BF_FSID_SIZE], uint32_t sectorsize, uint64_t num_devices)
{
	memset(v, 0, sizeof(*v));
	memcpy(v->fsid, fsid, BF_FSID_SIZE);
	v->sectorsize = sectorsize;
	v->num_devices = num_devices;
	pthread_rwlock_init(&v->lock, NULL);
}

void bf_vol_destroy(struct bf_volume *v)
{
	for (size_t i = 0; i < v->ndevs; i++) {
		if (v->devs[i]->fd >= 0)
			close(v->devs[i]->fd);
		if (v->devs[i]->dfd >= 0)
			close(v->devs[i]->dfd);
		free(v->devs[i]->path);
		free(v->devs[i]);
	}
	for (size_t i = 0; i < v->nchunks; i++)
		free(v->chunks[i]);
	free(v->devs);
	free(v->chunks);
	pthread_rwlock_destroy(&v->lock);
	memset(v, 0, sizeof(*v));
}

struct bf_device *bf_vol_find_device(const struct bf_volume *v, uint64_t devid)
{
	for (size_t i = 0; i < v->ndevs; i++)
		if (v->devs[i]->devid == devid)
			return v->devs[i];
	return NULL;
}

/* Insert a new placeholder device (fd -1) at its devid's place in the sorted list. */
static struct bf_device *dev_insert(struct bf_volume *v, uint64_t devid, const uint8_t uuid[BF_UUID_SIZE])
{
	struct bf_device *d = calloc(1, sizeof(*d));
	struct bf_device **devs = realloc(v->devs, (v->ndevs + 1) * sizeof(*devs));
	if (devs)
		v->devs = devs;
	if (!d || !devs) {
		free(d);
		return NULL;
	}
	d->devid = devid;
	d->fd = -1;
	d->dfd = -1;
	memcpy(d->uuid, uuid, BF_UUID_SIZE);
	size_t pos = v->ndevs;
	while (pos > 0 && devs[pos - 1]->devid > devid)
		pos--;
	memmove(devs + pos + 1, devs + pos, (v->ndevs - pos) * sizeof(*devs));
	devs[pos] = d;
	v->ndevs++;
	return d;
}

struct bf_device *bf_vol_add_missing(struct bf_volume *v, uint64_t devid, const uint8_t uuid[BF_UUID_SIZE])
{
	struct bf_device *d = bf_vol_find_device(v, devid);
	return d ? d : dev_insert(v, devid, uuid);
}

/* Fill a placeholder with the opened device. */
static int dev_claim(struct bf_device *d, const char *path, int fd, uint64_t size, const struct bf_dev_item *di,
		     uint64_t generation, char *err, size_t errlen)
{
	char want[37], have[37];
	if (memcmp(d->uuid, di->uuid, BF_UUID_SIZE)) {
		bf_uuid_str(d->uuid, want);
		bf_uuid_str(di->uuid, have);
		return bf_err(err, errlen, -EUCLEAN,
			      "%s is devid %" PRIu64 " with uuid %s, but the chunks name uuid %s for that devid; "
			      "is it a device of another filesystem?", path, d->devid, have, want);
	}
	if (!(d->path = strdup(path)))
		return bf_err(err, errlen, -ENOMEM, "out of memory adding %s", path);
	int fl = fcntl(fd, F_GETFL);
	d->fd = fd;
	d->size = size;
	d->total_bytes = get64(di->total_bytes);
	d->generation = generation;
	d->writable = fl >= 0 && (fl & O_ACCMODE) != O_RDONLY;
	d->dfd = d->writable ? bf_plat_open_direct(fd) : -1;
	if (size < d->total_bytes)
		bf_log(BF_LOG_WARN, "%s (devid %" PRIu64 ") has %" PRIu64 " bytes, less than the %" PRIu64
		       " its dev item says; reads past its end will fail", path, d->devid, size, d->total_bytes);
	return 0;
}

int bf_vol_add_device(struct bf_volume *v, const char *path, int fd, uint64_t size, const struct bf_dev_item *di,
		      uint64_t generation, char *err, size_t errlen)
{
	uint64_t devid = get64(di->devid);
	struct bf_device *d = bf_vol_find_device(v, devid);
	int ret = 0;
	if (d && d->fd >= 0)
		ret = bf_err(err, errlen, -EEXIST, "%s and %s both are devid %" PRIu64 "; give each device once",
			     d->path, path, devid);
	else if (!d && !(d = dev_insert(v, devid, di->uuid)))
		ret = bf_err(err, errlen, -ENOMEM, "out of memory adding %s", path);
	else
		ret = dev_claim(d, path, fd, size, di, generation, err, errlen);
	return ret; /* on failure the caller still owns fd */
}

/* "devid 2, 3 (expected 4 devices, 2 given)" for the placeholders left, or "expected 3 devices, 2 given" when
   no chunk names the missing ones. Returns true if anything is missing. */
static bool missing_text(const struct bf_volume *v, char *buf, size_t len)
{
	size_t n = 0, used = 0;
	buf[0] = 0;
	for (size_t i = 0; i < v->ndevs; i++) {
		if (v->devs[i]->fd >= 0)
			continue;
		int w = snprintf(buf + used, len - used, "%s%" PRIu64, n ? ", " : "devid ", v->devs[i]->devid);
		if (w > 0 && (size_t)w < len - used)
			used += (size_t)w;
		n++;
	}
	size_t given = v->ndevs - n;
	snprintf(buf + used, len - used, "%sexpected %" PRIu64 " devices, %zu given%s", n ? " (" : "", v->num_devices,
		 given, n ? ")" : "");
	return n || given < v->num_devices;
}

/* Does every copy group (or, for RAID5/6, the parity) still have a device for each piece of the chunk? */
static bool chunk_readable(const struct bf_chunk_map *c)
{
	unsigned missing = 0;
	for (unsigned i = 0; i < c->num_stripes; i++)
		missing += !bf_stripe_present(c, i);
	if (c->type & BF_BLOCK_GROUP_RAID56_MASK)
		return missing <= bf_profile_of(c->type)->nparity;
	unsigned g = bf_chunk_group(c);
	for (unsigned i = 0; i < c->num_stripes; i += g) {
		bool any = false;
		for (unsigned k = 0; k < g && i + k < c->num_stripes; k++)
			any |= bf_stripe_present(c, i + k);
		if (!any)
			return false;
	}
	return true;
}

static int check_degraded(const struct bf_volume *v, char *err, size_t errlen)
{
	for (size_t i = 0; i < v->nchunks; i++) {
		const struct bf_chunk_map *c = v->chunks[i];
		if (!chunk_readable(c))
			return bf_err(err, errlen, -EIO,
				      "chunk at logical %" PRIu64 " (%s, %s, %u stripes) has lost too many devices; it "
				      "cannot be read even degraded: give the missing devices",
				      c->logical, bf_bg_type_name(c->type), bf_profile_name(c->type), c->num_stripes);
	}
	return 0;
}

int bf_vol_resolve_devices(struct bf_volume *v, bool degraded, char *err, size_t errlen)
{
	pthread_rwlock_wrlock(&v->lock);
	for (size_t i = 0; i < v->nchunks; i++) {
		struct bf_chunk_map *c = v->chunks[i];
		for (unsigned k = 0; k < c->num_stripes; k++) {
			struct bf_device *d = bf_vol_find_device(v, c->stripes[k].devid);
			c->stripes[k].dev = d && d->fd >= 0 ? d : NULL;
		}
	}
	char list[256];
	int ret = 0;
	if (!missing_text(v, list, sizeof(list)))
		goto out;
	if (!degraded) {
		ret = bf_err(err, errlen, -ENODEV,
			     "missing device(s): %s; give all devices on the command line, or mount with -o degraded",
			     list);
		goto out;
	}
	ret = check_degraded(v, err, errlen);
	if (!ret)
		bf_log(BF_LOG_WARN, "mounting degraded: missing device(s): %s", list);
out:
	pthread_rwlock_unlock(&v->lock);
	return ret;
}
