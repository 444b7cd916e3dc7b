/*
 * fs/wacl.c - POSIX ACLs and inherited properties on the write side: what the kernel's posix_acl_create,
 * posix_acl_chmod and posix_acl_update_mode do for btrfs, and btrfs_inode_inherit_props.
 *
 * Owns: bf_acl_create_mode, bf_new_inode_xattrs, bf_acl_chmod, bf_acl_access_set, and the parser of the on-disk
 * ACL xattr (posix_acl_xattr: a le32 version 2, then (le16 tag, le16 perm, le32 id) entries in the kernel's
 * sorted order).
 *
 * Key idea: with ACLs on (the FUSE POSIX_ACL capability, under which the kernel leaves umask and inheritance to
 * the filesystem), a new inode's mode is masked by its directory's default ACL when there is one, else by the
 * caller's umask; a directory also inherits the default ACL itself, and an access ACL is stored only when it
 * says more than the mode does. The entries keep the parent's order, so the stored bytes are the ones the kernel
 * would write. Without ACLs the kernel has already applied the umask and nothing happens here.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fs/wmeta.h"
#include "util/util.h"

#define ACL_ACCESS "system.posix_acl_access"
#define ACL_DEFAULT "system.posix_acl_default"
#define ACL_VERSION 2
#define ACL_USER_OBJ 0x01
#define ACL_USER 0x02
#define ACL_GROUP_OBJ 0x04
#define ACL_GROUP 0x08
#define ACL_MASK 0x10
#define ACL_OTHER 0x20
#define ACL_HDR 4
#define ACL_ENTRY 8
#define ACL_MAX_BYTES 65536
#define COMPRESSION_PROP "btrfs.compression"

struct acl_entry {
	bf_le16 tag;
	bf_le16 perm;
	bf_le32 id;
} __attribute__((packed));

/* Check the layout of an ACL xattr; *n gets the entry count. */
static int acl_parse(const void *buf, size_t size, size_t *n)
{
	bf_le32 ver;

	if (size < ACL_HDR + ACL_ENTRY || (size - ACL_HDR) % ACL_ENTRY)
		return -EINVAL;
	memcpy(&ver, buf, sizeof(ver));
	if (get32(ver) != ACL_VERSION)
		return -EINVAL;
	*n = (size - ACL_HDR) / ACL_ENTRY;
	return 0;
}

static struct acl_entry *acl_at(void *buf, size_t i) { return (struct acl_entry *)((uint8_t *)buf + ACL_HDR) + i; }

/* posix_acl_create_masq: mask the ACL by mode and mode by the ACL. 1 if the ACL says more than the mode. */
static int acl_create_masq(void *acl, size_t n, uint32_t *mode_p)
{
	struct acl_entry *group_obj = NULL, *mask_obj = NULL;
	uint32_t mode = *mode_p;
	int not_equiv = 0;

	for (size_t i = 0; i < n; i++) {
		struct acl_entry *pa = acl_at(acl, i);
		uint16_t perm = get16(pa->perm);
		switch (get16(pa->tag)) {
		case ACL_USER_OBJ:
			perm &= (mode >> 6) & 7;
			mode &= ((uint32_t)perm << 6) | ~(uint32_t)S_IRWXU;
			put16(&pa->perm, perm);
			break;
		case ACL_USER:
		case ACL_GROUP:
			not_equiv = 1;
			break;
		case ACL_GROUP_OBJ:
			group_obj = pa;
			break;
		case ACL_OTHER:
			perm &= mode & 7;
			mode &= perm | ~(uint32_t)S_IRWXO;
			put16(&pa->perm, perm);
			break;
		case ACL_MASK:
			mask_obj = pa;
			not_equiv = 1;
			break;
		default:
			return -EIO;
		}
	}
	struct acl_entry *g = mask_obj ? mask_obj : group_obj;
	if (!g)
		return -EIO;
	uint16_t gp = get16(g->perm) & ((mode >> 3) & 7);
	put16(&g->perm, gp);
	mode &= ((uint32_t)gp << 3) | ~(uint32_t)S_IRWXG;
	*mode_p = (*mode_p & ~(uint32_t)07777) | (mode & 07777);
	return not_equiv;
}

/* posix_acl_equiv_mode: the mode bits the ACL gives; 1 if it says more than a mode can. */
static int acl_equiv_mode(const void *acl, size_t n, uint32_t *mode_p)
{
	uint32_t mode = 0;
	int not_equiv = 0;

	for (size_t i = 0; i < n; i++) {
		const struct acl_entry *pa = acl_at((void *)acl, i);
		uint32_t perm = get16(pa->perm) & 7;
		switch (get16(pa->tag)) {
		case ACL_USER_OBJ: mode |= perm << 6; break;
		case ACL_GROUP_OBJ: mode |= perm << 3; break;
		case ACL_OTHER: mode |= perm; break;
		case ACL_MASK: mode = (mode & ~(uint32_t)S_IRWXG) | (perm << 3); not_equiv = 1; break;
		case ACL_USER:
		case ACL_GROUP: not_equiv = 1; break;
		default: return -EINVAL;
		}
	}
	*mode_p = (*mode_p & ~(uint32_t)0777) | mode;
	return not_equiv;
}

/* Read an ACL xattr of (root, ino) into a new buffer; -ENODATA if there is none. */
static int acl_read(struct bf_fs *fs, uint64_t root, uint64_t ino, const char *name, void **out, size_t *size)
{
	ssize_t n = bf_xattr_get(fs, root, ino, name, NULL, 0);
	void *buf;
	size_t cnt;

	if (n < 0)
		return (int)n;
	if (n > ACL_MAX_BYTES)
		return -EINVAL;
	buf = malloc(n ? (size_t)n : 1);
	if (!buf)
		return -ENOMEM;
	n = bf_xattr_get(fs, root, ino, name, buf, (size_t)n);
	if (n >= 0 && acl_parse(buf, (size_t)n, &cnt) != 0) {
		bf_log(BF_LOG_ERR, "subvolume %llu inode %llu: the %s xattr is not a valid ACL; ignoring it",
		       (unsigned long long)root, (unsigned long long)ino, name);
		n = -ENODATA;
	}
	if (n < 0) {
		free(buf);
		return (int)n;
	}
	*out = buf;
	*size = (size_t)n;
	return 0;
}

int bf_acl_create_mode(struct bf_wop *op, const struct bf_wino *d, uint32_t *mode, const struct bf_cred *c,
		       void **default_acl, size_t *dlen, void **access_acl, size_t *alen)
{
	void *dacl, *acl;
	size_t size, n = 0;
	int r;

	*default_acl = *access_acl = NULL;
	*dlen = *alen = 0;
	if (!c->acl || S_ISLNK(*mode))
		return 0;
	r = acl_read(op->fs, d->root, d->ino, ACL_DEFAULT, &dacl, &size);
	if (r == -ENODATA) {
		*mode &= ~(c->umask & 0777);
		return 0;
	}
	if (r)
		return r;
	acl = malloc(size);
	if (!acl) {
		free(dacl);
		return -ENOMEM;
	}
	memcpy(acl, dacl, size);
	acl_parse(acl, size, &n);
	r = acl_create_masq(acl, n, mode);
	if (r > 0) {
		*access_acl = acl;
		*alen = size;
	} else {
		free(acl);
	}
	if (r >= 0 && S_ISDIR(*mode)) {
		*default_acl = dacl;
		*dlen = size;
	} else {
		free(dacl);
	}
	if (r < 0) {
		free(*default_acl);
		free(*access_acl);
		*default_acl = *access_acl = NULL;
		return bf_corrupt(d->root, d->ino, NULL, "default ACL with an unknown entry type");
	}
	return 0;
}

int bf_new_inode_xattrs(struct bf_wop *op, const struct bf_wino *d, const struct bf_wino *w, const void *dacl,
			size_t dlen, const void *aacl, size_t alen)
{
	char prop[64];
	ssize_t n = bf_xattr_get(op->fs, d->root, d->ino, COMPRESSION_PROP, prop, sizeof(prop));
	int r = 0;

	/* btrfs_inode_inherit_props: the compression property is inheritable */
	if (n > 0)
		r = bf_xattr_set(op, w->root, w->ino, COMPRESSION_PROP, prop, (size_t)n, 0);
	else if (n < 0 && n != -ENODATA && n != -ERANGE)
		r = (int)n;
	if (!r && dacl)
		r = bf_xattr_set(op, w->root, w->ino, ACL_DEFAULT, dacl, dlen, 0);
	if (!r && aacl)
		r = bf_xattr_set(op, w->root, w->ino, ACL_ACCESS, aacl, alen, 0);
	return r;
}

int bf_acl_access_set(struct bf_wop *op, struct bf_wino *w, const void **value, size_t *size)
{
	uint32_t mode = get32(w->ii.mode);
	size_t n;
	int r = acl_parse(*value, *size, &n);

	(void)op;
	if (r)
		return r;
	r = acl_equiv_mode(*value, n, &mode);
	if (r < 0)
		return r;
	if (r == 0)
		*value = NULL; /* the mode says it all: no ACL is stored */
	if (mode != get32(w->ii.mode)) {
		put32(&w->ii.mode, mode);
		w->dirty = true;
	}
	return 0;
}

int bf_acl_chmod(struct bf_wop *op, struct bf_wino *w)
{
	uint32_t mode = get32(w->ii.mode);
	struct acl_entry *group_obj = NULL, *mask_obj = NULL;
	const void *value;
	void *acl;
	size_t size, n = 0;
	int r = acl_read(op->fs, w->root, w->ino, ACL_ACCESS, &acl, &size);

	if (r == -ENODATA)
		return 0;
	if (r)
		return r;
	acl_parse(acl, size, &n);
	for (size_t i = 0; i < n; i++) {
		struct acl_entry *pa = acl_at(acl, i);
		switch (get16(pa->tag)) {
		case ACL_USER_OBJ: put16(&pa->perm, (uint16_t)((mode & S_IRWXU) >> 6)); break;
		case ACL_GROUP_OBJ: group_obj = pa; break;
		case ACL_MASK: mask_obj = pa; break;
		case ACL_OTHER: put16(&pa->perm, (uint16_t)(mode & S_IRWXO)); break;
		default: break;
		}
	}
	if (mask_obj || group_obj)
		put16(&(mask_obj ? mask_obj : group_obj)->perm, (uint16_t)((mode & S_IRWXG) >> 3));
	/* then btrfs_set_acl: posix_acl_update_mode, the xattr, sequence and ctime */
	value = acl;
	r = bf_acl_access_set(op, w, &value, &size);
	if (!r)
		r = bf_xattr_set(op, w->root, w->ino, ACL_ACCESS, value, value ? size : 0, 0);
	free(acl);
	if (r)
		return r;
	bf_inode_inc_seq(&w->ii);
	bf_inode_touch(&w->ii, BF_TOUCH_CTIME);
	w->dirty = true;
	return bf_wino_save(op, w);
}
