/*
 * inspect/emit.c - the output emitter: the same calls write progs-style text or JSON.
 *
 * Owns: struct emit and the em_* calls that the item decoders and dump-tree use.
 *
 * Key idea: a decoder describes an item as a sequence of labelled fields and line breaks. In text mode a field
 * is "label value", separated by spaces, each line starting with `indent` tabs - exactly the layout of
 * `btrfs inspect-internal dump-tree`. In JSON mode the label becomes a member name (spaces -> '_', a trailing
 * ':' dropped), line breaks vanish, and em_obj/em_arr give the structure the text leaves implicit.
 */
#include <stdarg.h>
#include <string.h>
#include <time.h>

#include "inspect/inspect.h"
#include "util/util.h"

void em_init(struct emit *e, FILE *f, bool json)
{
	memset(e, 0, sizeof(*e));
	e->f = f;
	e->json = json;
	e->indent = 2;
	e->first[0] = true;
}

/* ---- JSON helpers ---- */

/* Length of a valid UTF-8 sequence starting at s (at most n bytes), 0 if invalid. */
static size_t utf8_len(const uint8_t *s, size_t n)
{
	/* RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF */
	uint8_t c = s[0], lo = 0x80, hi = 0xBF;
	size_t want = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3
		    : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
	if (want == 0 || want > n)
		return 0;
	if (c == 0xE0)
		lo = 0xA0;
	else if (c == 0xED)
		hi = 0x9F;
	else if (c == 0xF0)
		lo = 0x90;
	else if (c == 0xF4)
		hi = 0x8F;
	for (size_t i = 1; i < want; i++) {
		if (s[i] < (i == 1 ? lo : 0x80) || s[i] > (i == 1 ? hi : 0xBF))
			return 0;
	}
	return want;
}

void json_string(FILE *f, const uint8_t *s, size_t len)
{
	fputc('"', f);
	for (size_t i = 0; i < len;) {
		uint8_t c = s[i];
		size_t n = utf8_len(s + i, len - i);
		if (c == '"' || c == '\\') {
			fprintf(f, "\\%c", c);
		} else if (c < 0x20 || c == 0x7f || n == 0) {
			fprintf(f, "\\u%04x", c); /* invalid UTF-8 bytes are shown as Latin-1 code points */
		} else {
			fwrite(s + i, 1, n, f);
			i += n;
			continue;
		}
		i++;
	}
	fputc('"', f);
}

/* Start a JSON member (key may be NULL inside arrays): the comma, newline and key. */
static void json_member(struct emit *e, const char *key)
{
	int d = e->depth < 31 ? e->depth : 31;
	if (!e->first[d])
		fputc(',', e->f);
	e->first[d] = false;
	if (!e->noline)
		fputc('\n', e->f);
	if (e->arr[d])
		key = NULL; /* inside an array values have no names (keeps the output valid JSON whatever calls) */
	if (key) {
		char k[INSP_NAME_LEN];
		size_t n = 0;
		const char *bar = strchr(key, '|');
		if (bar)
			key = bar + 1;
		for (const char *p = key; *p && n + 1 < sizeof(k); p++)
			if (*p != ':')
				k[n++] = *p == ' ' ? '_' : *p;
		k[n] = 0;
		json_string(e->f, (const uint8_t *)k, n);
		fputc(':', e->f);
	}
}

static void json_open(struct emit *e, const char *key, char c)
{
	json_member(e, key);
	fputc(c, e->f);
	e->depth++;
	if (e->depth < 32)
		e->first[e->depth] = true, e->arr[e->depth] = c == '[';
}

static void json_close(struct emit *e, char c)
{
	if (e->depth > 0)
		e->depth--;
	fputc(c, e->f);
}

void em_obj_begin(struct emit *e, const char *key)
{
	if (e->json)
		json_open(e, key, '{');
}
void em_obj_end(struct emit *e)
{
	if (e->json)
		json_close(e, '}');
}
void em_arr_begin(struct emit *e, const char *key)
{
	if (e->json)
		json_open(e, key, '[');
}
void em_arr_end(struct emit *e)
{
	if (e->json)
		json_close(e, ']');
}

/* ---- text helpers ---- */

/* Begin a text field: indentation at the start of a line, else a separating space. */
static void text_sep(struct emit *e)
{
	if (!e->line_open) {
		for (int i = 0; i < e->indent; i++)
			fputc('\t', e->f);
		e->line_open = true;
	} else {
		fputc(' ', e->f);
	}
}

/* The text part of a label is what precedes '|' (all of it without one). */
static void text_label(struct emit *e, const char *label)
{
	bool first = !e->line_open;
	text_sep(e);
	if (!label)
		return;
	int n = (int)strcspn(label, "|");
	if (first && e->align)
		fprintf(e->f, "%-*.*s ", e->align - 1, n, label);
	else if (n)
		fprintf(e->f, "%.*s ", n, label);
}

/* ---- fields ---- */

/* An unsigned number: decimal in JSON, in the text dump as conv says ('u' decimal, 'o' octal, 'x' hex). */
static void em_unsigned(struct emit *e, const char *label, uint64_t v, char conv)
{
	if (e->json) {
		json_member(e, label);
		fprintf(e->f, "%llu", (unsigned long long)v);
		return;
	}
	text_label(e, label);
	fprintf(e->f, conv == 'o' ? "%llo" : conv == 'x' ? "%llx" : "%llu", (unsigned long long)v);
}

void em_u64(struct emit *e, const char *label, uint64_t v)
{
	em_unsigned(e, label, v, 'u');
}

void em_i64(struct emit *e, const char *label, int64_t v)
{
	if (e->json)
		json_member(e, label);
	else
		text_label(e, label);
	fprintf(e->f, "%lld", (long long)v);
}

void em_octal(struct emit *e, const char *label, uint64_t v)
{
	em_unsigned(e, label, v, 'o');
}

void em_hexnum(struct emit *e, const char *label, uint64_t v)
{
	em_unsigned(e, label, v, 'x');
}

static void json_named(struct emit *e, const char *label, uint64_t v, const char *names)
{
	char key[INSP_NAME_LEN];
	json_member(e, label);
	fprintf(e->f, "%llu", (unsigned long long)v);
	const char *bar = strchr(label, '|');
	snprintf(key, sizeof(key), "%s_names", bar ? bar + 1 : label);
	json_member(e, key);
	json_string(e->f, (const uint8_t *)names, strlen(names));
}

void em_flags(struct emit *e, const char *label, uint64_t v, const char *names)
{
	if (e->json) {
		json_named(e, label, v, names);
		return;
	}
	text_label(e, label);
	fprintf(e->f, "0x%llx(%s)", (unsigned long long)v, names);
}

void em_flagstr(struct emit *e, const char *label, uint64_t v, const char *names)
{
	if (e->json) {
		json_named(e, label, v, names);
		return;
	}
	text_label(e, label);
	fputs(names, e->f);
}

void em_enum(struct emit *e, const char *label, uint64_t v, const char *name)
{
	if (e->json) {
		json_named(e, label, v, name);
		return;
	}
	text_label(e, label);
	fprintf(e->f, "%llu (%s)", (unsigned long long)v, name);
}

void em_str(struct emit *e, const char *label, const char *s)
{
	em_raw(e, label, (const uint8_t *)s, strlen(s));
}

void em_raw(struct emit *e, const char *label, const uint8_t *s, size_t len)
{
	if (e->json) {
		json_member(e, label);
		json_string(e->f, s, len);
		return;
	}
	text_label(e, label);
	fwrite(s, 1, len, e->f);
}

void em_keyf(struct emit *e, const char *label, uint64_t objectid, uint8_t type, uint64_t offset)
{
	char buf[INSP_NAME_LEN];
	name_key(buf, sizeof(buf), objectid, type, offset);
	if (e->json) {
		json_member(e, label);
		fprintf(e->f, "{\"objectid\":%llu,\"type\":%u,\"offset\":%llu,\"text\":", (unsigned long long)objectid,
			type, (unsigned long long)offset);
		json_string(e->f, (const uint8_t *)buf, strlen(buf));
		fputc('}', e->f);
		return;
	}
	text_label(e, label);
	fprintf(e->f, "key %s", buf);
}

void em_uuid(struct emit *e, const char *label, const uint8_t uuid[16])
{
	char buf[37];
	bf_uuid_str(uuid, buf);
	em_str(e, label, buf);
}

void em_time(struct emit *e, const char *label, uint64_t sec, uint32_t nsec)
{
	if (e->json) {
		char key[INSP_NAME_LEN];
		json_member(e, label);
		fprintf(e->f, "%llu", (unsigned long long)sec);
		const char *bar = strchr(label, '|');
		snprintf(key, sizeof(key), "%s_nsec", bar ? bar + 1 : label);
		json_member(e, key);
		fprintf(e->f, "%u", nsec);
		return;
	}
	struct tm tm;
	char stamp[64] = "";
	time_t t = (time_t)sec;
	if (localtime_r(&t, &tm))
		strftime(stamp, sizeof(stamp), "%Y-%m-%d %H:%M:%S", &tm);
	text_label(e, label);
	fprintf(e->f, "%llu.%u (%s)", (unsigned long long)sec, nsec, stamp);
}

void em_ju64(struct emit *e, const char *key, uint64_t v)
{
	if (!e->json)
		return;
	json_member(e, key);
	fprintf(e->f, "%llu", (unsigned long long)v);
}

void em_bool(struct emit *e, const char *label, bool v)
{
	if (e->json) {
		json_member(e, label);
		fputs(v ? "true" : "false", e->f);
		return;
	}
	text_label(e, label);
	fputs(v ? "yes" : "no", e->f);
}

void em_text(struct emit *e, const char *s)
{
	if (e->json)
		return;
	text_sep(e);
	fputs(s, e->f);
}

void em_nl(struct emit *e)
{
	if (e->json)
		return;
	fputc('\n', e->f);
	e->line_open = false;
}

void em_line(struct emit *e, const char *fmt, ...)
{
	if (e->json)
		return;
	va_list ap;
	va_start(ap, fmt);
	vfprintf(e->f, fmt, ap);
	va_end(ap);
	e->line_open = false;
}
