/*
 * tests/unit/check.h - what every unit-test program shares: the CHECK counter, the seeded PRNG and the summary.
 *
 * Owns: n_pass/n_fail, CHECK(cond, fmt, ...) (a failure prints file, line, the running seed when there is one,
 * and the message), mix64/splitmix64/check_below (small, seedable, good enough for test data) and check_summary(), which prints
 * the one closing line "N passed, N failed" and gives the exit status.
 * Key idea: one header-only definition per test program (each test is a single translation unit), so the
 * tests report failures and results the same way and scripts/run-tests can add them up.
 */
#ifndef BF_TEST_CHECK_H
#define BF_TEST_CHECK_H

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>

static unsigned n_pass, n_fail;
/* The seed of the random test running now; 0: none (not printed). */
static uint64_t check_seed;

#define CHECK(cond, ...)                                                                                           \
	do {                                                                                                       \
		if (cond) {                                                                                        \
			n_pass++;                                                                                  \
		} else {                                                                                           \
			n_fail++;                                                                                  \
			printf("FAIL %s:%d", __FILE__, __LINE__);                                                  \
			if (check_seed)                                                                            \
				printf(" (seed %" PRIu64 ")", check_seed);                                         \
			printf(": ");                                                                              \
			printf(__VA_ARGS__);                                                                       \
			printf("\n");                                                                              \
		}                                                                                                  \
	} while (0)

/* The splitmix64 finalizer: a stateless 64-bit mix (also a hash of positions and keys for test data). */
static inline uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static inline uint64_t splitmix64(uint64_t *state) { return mix64(*state += 0x9E3779B97F4A7C15ull); }
/* A number below n (0 when n is 0) from the generator at *state. */
static inline uint64_t check_below(uint64_t *state, uint64_t n) { return n ? splitmix64(state) % n : 0; }

/* Print the closing "N passed, N failed" line; the program's exit status. */
static inline int check_summary(void)
{
	printf("%u passed, %u failed\n", n_pass, n_fail);
	return n_fail ? 1 : 0;
}

#endif
