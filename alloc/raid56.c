/*
 * alloc/raid56.c - RAID5/6 reads with rebuild from parity.
 *
 * Owns: bf_raid56_read and the GF(2^8) arithmetic of RAID6. Key idea: the kernel's raid6 code defines
 * P = D_0 ^ D_1 ^ ... and Q = sum g^i * D_i over GF(2^8) with the polynomial x^8+x^4+x^3+x^2+1 (0x11d) and
 * g = 2, where i is the data column in logical order. A rebuild works on the same byte range of every column
 * (one "vertical" slice of a full stripe): it folds the surviving data columns into P' = P ^ sum D_j and
 * Q' = Q ^ sum g^j D_j, which leaves P' = D_a (^ D_b) and Q' = g^a D_a (^ g^b D_b) for the lost columns a, b:
 * one lost column is P' or Q' * g^-a; two are D_a = (Q' ^ g^b P') / (g^a ^ g^b) and D_b = P' ^ D_a.
 * Memory stays at three slices whatever the number of stripes.
 */
#include "alloc/internal.h"
#include "util/util.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static uint8_t gf_exp[255], gf_log[256];
static pthread_once_t gf_once = PTHREAD_ONCE_INIT;

static void gf_init(void)
{
	unsigned x = 1;
	for (unsigned i = 0; i < 255; i++) {
		gf_exp[i] = (uint8_t)x;
		gf_log[x] = (uint8_t)i;
		x <<= 1;
		if (x & 0x100)
			x ^= 0x11d;
	}
}

/* g^e for any e >= 0 (g has order 255). */
static uint8_t gf_pow2(uint64_t e) { return gf_exp[e % 255]; }

static uint8_t gf_mul(uint8_t a, uint8_t b)
{
	return a && b ? gf_exp[(gf_log[a] + gf_log[b]) % 255] : 0;
}

static uint8_t gf_inv(uint8_t a) { return gf_exp[(255 - gf_log[a]) % 255]; } /* a != 0 */

/* dst (^)= k * src over len bytes, through a 256-entry table for k. */
static void gf_mul_region(uint8_t *dst, const uint8_t *src, size_t len, uint8_t k, bool accumulate)
{
	uint8_t t[256];
	for (unsigned b = 0; b < 256; b++)
		t[b] = gf_mul(k, (uint8_t)b);
	for (size_t i = 0; i < len; i++)
		dst[i] = accumulate ? dst[i] ^ t[src[i]] : t[src[i]];
}

static void xor_region(uint8_t *dst, const uint8_t *src, size_t len)
{
	for (size_t i = 0; i < len; i++)
		dst[i] ^= src[i];
}

/* Read column j (data, P or Q) of the piece's full stripe. */
static int col_read(const struct bf_chunk_map *c, const struct bf_piece *p, unsigned j, uint8_t *buf)
{
	unsigned i = bf_raid56_stripe(c, p, j);
	if (!bf_stripe_present(c, i))
		return -EIO;
	return bf_dev_pread(c->stripes[i].dev, buf, p->len, bf_piece_physical(c, p, i));
}

/* What a rebuild treats as lost (nlost data columns, the first two in lost[]) and which parity it uses. */
struct rebuild {
	unsigned lost[2], nlost;
	bool use_p, use_q;
};

/* Fold the surviving data columns into P' (pacc) and Q' (qacc). */
static int rebuild_fold(const struct bf_chunk_map *c, const struct bf_piece *p, unsigned nd, const struct rebuild *r,
			uint8_t *pacc, uint8_t *qacc, uint8_t *tmp)
{
	int ret = 0;
	if (r->use_p)
		ret = col_read(c, p, nd, pacc);
	if (!ret && r->use_q)
		ret = col_read(c, p, nd + 1, qacc);
	for (unsigned j = 0; j < nd && !ret; j++) {
		if (j == r->lost[0] || (r->nlost == 2 && j == r->lost[1]))
			continue;
		ret = col_read(c, p, j, tmp);
		if (!ret && r->use_p)
			xor_region(pacc, tmp, p->len);
		if (!ret && r->use_q)
			gf_mul_region(qacc, tmp, p->len, gf_pow2(j), true);
	}
	return ret;
}

/* Solve for data column want (one of the lost) into out, from the folded P' and Q'. */
static int rebuild_solve(const struct rebuild *r, unsigned want, size_t len, uint8_t *pacc, uint8_t *qacc,
			 uint8_t *out)
{
	if (r->nlost == 1) {
		if (r->use_p)
			memcpy(out, pacc, len);
		else
			gf_mul_region(out, qacc, len, gf_inv(gf_pow2(r->lost[0])), false);
		return 0;
	}
	uint8_t ga = gf_pow2(r->lost[0]), gb = gf_pow2(r->lost[1]);
	if (ga == gb)
		return -EIO; /* columns 255 apart: Q cannot tell them apart */
	gf_mul_region(qacc, pacc, len, gb, true);                /* Q' ^ g^b P' = (g^a ^ g^b) D_a */
	gf_mul_region(qacc, qacc, len, gf_inv(ga ^ gb), false); /* D_a */
	if (want == r->lost[0])
		memcpy(out, qacc, len);
	else
		for (size_t i = 0; i < len; i++)
			out[i] = pacc[i] ^ qacc[i];
	return 0;
}

static int rebuild(const struct bf_chunk_map *c, const struct bf_piece *p, unsigned nd, const struct rebuild *r,
		   void *out)
{
	if (r->nlost == 0 || r->nlost > 2 || (r->nlost == 2 && !(r->use_p && r->use_q)) || !(r->use_p || r->use_q))
		return -EIO;
	pthread_once(&gf_once, gf_init);
	uint8_t *mem = malloc(3 * p->len); /* P', Q' and one column; p->len <= stripe_len */
	if (!mem)
		return -ENOMEM;
	uint8_t *pacc = mem, *qacc = mem + p->len, *tmp = mem + 2 * p->len;
	int ret = rebuild_fold(c, p, nd, r, pacc, qacc, tmp);
	if (!ret)
		ret = rebuild_solve(r, p->col, p->len, pacc, qacc, out);
	free(mem);
	return ret;
}

static void lose(struct rebuild *r, unsigned j)
{
	for (unsigned i = 0; i < r->nlost && i < 2; i++)
		if (r->lost[i] == j)
			return;
	if (r->nlost < 2)
		r->lost[r->nlost] = j;
	r->nlost++;
}

/* What a mirror rebuilds from. Lost: the target column (unless mirror 1 reads it as stored), every data
   column on a missing device, and for mirror > 3 the extra column it names. Parity: mirror 3 prefers Q, the
   others P; when the preferred one is missing the other serves, and two lost columns need both. */
static void plan(const struct bf_chunk_map *c, const struct bf_piece *p, unsigned nd, int mirror, struct rebuild *r)
{
	unsigned t = p->col;
	*r = (struct rebuild){ .nlost = 0 };
	if (mirror > 1)
		lose(r, t);
	for (unsigned j = 0; j < nd; j++)
		if (!bf_stripe_present(c, bf_raid56_stripe(c, p, j)))
			lose(r, j);
	if (mirror > 3) {
		unsigned other = (unsigned)mirror - 4;
		lose(r, other >= t ? other + 1 : other);
	}
	bool has_p = bf_stripe_present(c, bf_raid56_stripe(c, p, nd));
	bool has_q = nd + 1 < c->num_stripes && bf_stripe_present(c, bf_raid56_stripe(c, p, nd + 1));
	if (r->nlost >= 2) {
		r->use_p = has_p;
		r->use_q = has_q;
		return;
	}
	r->use_q = has_q && (mirror == 3 || !has_p);
	r->use_p = has_p && !r->use_q;
}

int bf_raid56_read(const struct bf_chunk_map *c, const struct bf_piece *p, void *buf, int mirror)
{
	unsigned nd = c->num_stripes - bf_profile_of(c->type)->nparity;
	if (mirror == 1 && bf_stripe_present(c, bf_raid56_stripe(c, p, p->col)))
		return col_read(c, p, p->col, buf);
	struct rebuild r;
	plan(c, p, nd, mirror, &r);
	return rebuild(c, p, nd, &r, buf);
}
