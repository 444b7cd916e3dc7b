/*
 * inspect/dot.c - Graphviz output shared by tree-graph and diff-gen.
 *
 * Owns: one dot node per tree block (bytenr, level, generation, key range, item count and fill), the edges,
 * in-memory text buffers, and writing the result as dot text or as SVG through `dot -Tsvg`.
 *
 * Key idea: the picture is built as dot text in memory first; for SVG it is piped into Graphviz's `dot`
 * (started with fork/exec, no shell, so no file name is ever interpreted), and the exit status of dot is
 * checked, so a half-written picture is reported rather than left silently.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "inspect/inspect.h"

#define HDR_SIZE ((uint32_t)sizeof(struct bf_header))

int membuf_open(struct membuf *m)
{
	m->data = NULL, m->len = 0;
	m->f = open_memstream(&m->data, &m->len);
	return m->f ? 0 : -ENOMEM;
}

void membuf_close(struct membuf *m)
{
	if (m->f)
		fclose(m->f);
	m->f = NULL;
}

void membuf_free(struct membuf *m)
{
	membuf_close(m);
	free(m->data);
	m->data = NULL, m->len = 0;
}

void dot_escape(FILE *f, const char *s)
{
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			fputc('\\', f);
		if (*s == '\n')
			fputs("\\n", f);
		else
			fputc(*s, f);
	}
}

/* Bytes of a leaf in use (header, item headers and item data): nodesize minus the free space. */
static uint32_t leaf_used(uint32_t nodesize, const struct bf_block *b)
{
	uint32_t size;
	if (b->nritems == 0)
		return HDR_SIZE;
	const uint8_t *last = bf_leaf_item(b, b->nritems - 1, &size);
	uint32_t off_last = (uint32_t)(last - (b->data + HDR_SIZE));
	return HDR_SIZE + b->nritems * (uint32_t)sizeof(struct bf_item) + (nodesize - HDR_SIZE - off_last);
}

static struct bf_key last_key(const struct bf_block *b)
{
	return b->level ? bf_node_key(b, b->nritems - 1) : bf_leaf_key(b, b->nritems - 1);
}

void dot_block_node(FILE *f, uint32_t nodesize, const struct walk_block *wb, const char *fill, const char *note)
{
	char label[1024], k1[INSP_NAME_LEN], k2[INSP_NAME_LEN];
	const struct bf_block *b = wb->b;
	if (!b) {
		snprintf(label, sizeof(label), "BAD block %llu\nlevel %d\n%.300s", (unsigned long long)wb->bytenr,
			 wb->level, wb->why ? wb->why : "");
	} else {
		struct bf_key first = b->level ? bf_node_key(b, 0) : bf_leaf_key(b, 0), last = last_key(b);
		name_key(k1, sizeof(k1), first.objectid, first.type, first.offset);
		name_key(k2, sizeof(k2), last.objectid, last.type, last.offset);
		if (b->nritems == 0)
			snprintf(k1, sizeof(k1), "(empty)"), k2[0] = 0;
		if (b->level)
			snprintf(label, sizeof(label), "node %llu\nlevel %u gen %llu\n%u pointers\n%s\n.. %s",
				 (unsigned long long)b->bytenr, b->level, (unsigned long long)b->generation,
				 b->nritems, k1, k2);
		else
			snprintf(label, sizeof(label), "leaf %llu\ngen %llu\n%u items, %u%% full\n%s\n.. %s",
				 (unsigned long long)b->bytenr, (unsigned long long)b->generation, b->nritems,
				 (unsigned)(100ULL * leaf_used(nodesize, b) / nodesize), k1, k2);
	}
	fprintf(f, "  b%llu [label=\"", (unsigned long long)wb->bytenr);
	dot_escape(f, label);
	if (note && *note) {
		fputs("\\n", f);
		dot_escape(f, note);
	}
	fprintf(f, "\", fillcolor=\"%s\"%s];\n", fill, b ? "" : ", color=\"#b00000\", penwidth=2");
	if (wb->parent)
		fprintf(f, "  b%llu -> b%llu [label=\"%u\"];\n", (unsigned long long)wb->parent,
			(unsigned long long)wb->bytenr, wb->slot);
}

/* Leaf fill shading: white (empty) to blue (full). */
void dot_fill_colour(const struct bf_block *b, uint32_t nodesize, char *buf, size_t len)
{
	if (!b || b->level) {
		snprintf(buf, len, b ? "#fff2cc" : "#ffb3b3");
		return;
	}
	unsigned pct = (unsigned)(100ULL * leaf_used(nodesize, b) / nodesize);
	unsigned c = 255 - pct * 120 / 100;
	snprintf(buf, len, "#%02x%02xff", c, c);
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w, n -= (size_t)w;
	}
	return 0;
}

/* Run `dot -Tsvg [-o path]` with text on its standard input. */
static int run_dot(const char *text, size_t len, const char *path)
{
	int pfd[2];
	if (pipe(pfd))
		return -1;
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0) {
		close(pfd[0]), close(pfd[1]);
		return -1;
	}
	if (pid == 0) {
		dup2(pfd[0], 0);
		close(pfd[0]), close(pfd[1]);
		if (path)
			execlp("dot", "dot", "-Tsvg", "-o", path, (char *)NULL);
		else
			execlp("dot", "dot", "-Tsvg", (char *)NULL);
		_exit(127);
	}
	close(pfd[0]);
	void (*old)(int) = signal(SIGPIPE, SIG_IGN);
	int wr = write_all(pfd[1], text, len);
	close(pfd[1]);
	signal(SIGPIPE, old);
	int st;
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	if (WIFEXITED(st) && WEXITSTATUS(st) == 127) {
		insp_err("cannot run Graphviz 'dot' (install the graphviz package), or use --format dot");
		return -1;
	}
	if (wr || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		insp_err("Graphviz 'dot' failed (status %d)", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
		return -1;
	}
	return 0;
}

int dot_output(const char *text, size_t len, const char *format, const char *path)
{
	if (path && !strcmp(path, "-"))
		path = NULL;
	if (!strcmp(format, "svg"))
		return run_dot(text, len, path);
	FILE *f = path ? fopen(path, "w") : stdout;
	if (!f) {
		insp_err("cannot write %s: %s", path, strerror(errno));
		return -1;
	}
	int r = fwrite(text, 1, len, f) == len ? 0 : -1;
	if (path && fclose(f))
		r = -1;
	if (r)
		insp_err("cannot write %s", path ? path : "standard output");
	return r;
}
