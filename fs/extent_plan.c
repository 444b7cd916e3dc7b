/*
 * fs/extent_plan.c - what dropping a file range does to one file extent: the case analysis of the kernel's
 * btrfs_drop_extents as a pure function (bf_drop_step), so that it is tested over in-memory extent lists.
 *
 * Owns: bf_drop_step and bf_fext_end.
 * Key idea: an extent [pos, pos + len) and a range [start, end) overlap in one of five ways: not at all (keep),
 * completely (delete: its data ref goes), over the extent's tail (trim the tail: num_bytes shrinks), over its
 * head (trim the head: the key moves to end and the extent offset moves on by as much), or strictly inside it
 * (split: the item keeps the head and a new item with its own data ref takes the tail - both refs carry the same
 * key offset - extent offset, so that ref's count becomes 2). nbytes loses the dropped part of extents with disk
 * bytes and the whole ram_bytes of an inline extent, nothing for holes (the kernel's bytes_found). An inline
 * extent covered in part cannot be cut (-EOPNOTSUPP, as in the kernel); a zero-length item at or after start is
 * deleted (old kernels made such items).
 */
#include <errno.h>
#include <string.h>

#include "fs/write.h"

static uint64_t round_up_ss(uint64_t x, uint32_t ss)
{
	return x % ss ? x - x % ss + ss : x;
}

uint64_t bf_fext_end(const struct bf_fext *e, uint32_t sectorsize)
{
	uint64_t end = e->pos + e->len; /* bf_fext_decode checked that it does not overflow */

	return e->type == BF_FILE_EXTENT_INLINE ? round_up_ss(end, sectorsize) : end;
}

int bf_drop_step(const struct bf_fext *e, uint64_t start, uint64_t end, uint32_t sectorsize, struct bf_drop_step *s)
{
	uint64_t e_end = e->pos + e->len;
	bool inl = e->type == BF_FILE_EXTENT_INLINE;
	bool disk = !inl && e->disk_bytenr != 0;

	memset(s, 0, sizeof(*s));
	s->keep = *e;
	s->next = e_end;
	if (e_end <= start && !(e->len == 0 && e->pos >= start)) {
		s->act = BF_DROP_KEEP;
		return 0;
	}
	if (inl && (start > e->pos || end < e_end))
		return -EOPNOTSUPP;
	if (start > e->pos && end < e_end) {
		s->act = BF_DROP_SPLIT;
		s->keep.len = start - e->pos;
		s->added = *e;
		s->added.pos = end;
		s->added.offset = e->offset + (end - e->pos);
		s->added.len = e_end - end;
		s->bytes_found = disk ? end - start : 0;
		s->ref_add = disk;
		s->next = end;
	} else if (end < e_end) {
		s->act = BF_DROP_TRIM_HEAD;
		s->keep.pos = end;
		s->keep.offset = e->offset + (end - e->pos);
		s->keep.len = e_end - end;
		s->bytes_found = disk ? end - e->pos : 0;
		s->next = end;
	} else if (start > e->pos) {
		s->act = BF_DROP_TRIM_TAIL;
		s->keep.len = start - e->pos;
		s->bytes_found = disk ? e_end - start : 0;
	} else {
		s->act = BF_DROP_DELETE;
		s->bytes_found = inl || disk ? e->len : 0;
		s->ref_drop = disk;
		if (inl)
			s->next = round_up_ss(e_end, sectorsize);
	}
	return 0;
}
