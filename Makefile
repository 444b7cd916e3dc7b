# btrfs-fuse build. `make` builds ./btrfs-fuse; `make test` installs what is missing, builds the normal and the
# ASan+UBSan variants and runs every test; `make demo` mounts a sample image.
CC      = gcc
PKGS    := fuse3 libzstd zlib lzo2 uuid libxxhash libb2 libcrypto
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
VERSION := 0.1.0
CFLAGS  ?= -O2 -g
WARN    := -std=c17 -Wall -Wextra -Werror -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -DBF_VERSION=\"$(VERSION)\"
ALL_CFLAGS = $(WARN) $(CFLAGS) -I. $(PKG_CFLAGS) -pthread -MMD -MP
LDLIBS  := $(PKG_LIBS) -pthread

PREFIX  ?= /usr/local
DESTDIR ?=

# B selects the build directory: build (normal) or build-asan (sanitizers).
B ?= build
ifeq ($(B),build-asan)
CFLAGS := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
endif

CORE_SRC := $(wildcard util/*.c alloc/*.c btree/*.c journal/*.c fs/*.c)
FUSE_SRC := $(wildcard fuse/*.c)
INSPECT_SRC := $(wildcard inspect/*.c)
INSPECT_OBJ := $(INSPECT_SRC:%.c=$(B)/%.o)
UNIT_SRC := $(wildcard tests/unit/test_*.c)
CORE_OBJ := $(CORE_SRC:%.c=$(B)/%.o)
FUSE_OBJ := $(FUSE_SRC:%.c=$(B)/%.o)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(B)/tests/%)

.PHONY: all asan test unit soak demo install clean deps bench tour unit-bins btrfs-fuse btrfs-fuse-inspect \
	crash-test soak-crash
PROGRAMS := btrfs-fuse $(if $(INSPECT_SRC),btrfs-fuse-inspect)
all: $(PROGRAMS)

btrfs-fuse: $(B)/btrfs-fuse
	@if [ "$(B)" = build ]; then cp $(B)/btrfs-fuse btrfs-fuse.tmp && mv -f btrfs-fuse.tmp btrfs-fuse; fi

$(B)/btrfs-fuse: $(FUSE_OBJ) $(B)/libcore.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

btrfs-fuse-inspect: $(B)/btrfs-fuse-inspect
	@if [ "$(B)" = build ]; then cp $(B)/btrfs-fuse-inspect btrfs-fuse-inspect.tmp && mv -f btrfs-fuse-inspect.tmp btrfs-fuse-inspect; fi

$(B)/btrfs-fuse-inspect: $(INSPECT_OBJ) $(B)/libcore.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(B)/libcore.a: $(CORE_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(B)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(B)/tests/%: tests/unit/%.c $(B)/libcore.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(LDFLAGS) -o $@ $< $(B)/libcore.a $(LDLIBS)

unit-bins: $(UNIT_BIN)

asan:
	$(MAKE) B=build-asan build-asan/btrfs-fuse unit-bins-asan

unit-bins-asan:
	$(MAKE) B=build-asan unit-bins

deps:
	@scripts/install-deps

test: deps
	$(MAKE) all unit-bins
	$(MAKE) B=build-asan $(PROGRAMS:%=build-asan/%) unit-bins
	scripts/run-tests

soak: deps all
	scripts/run-tests --soak

# The crash tests alone (kill -9 and power-cut replay; also part of test and soak): crash-test at the size of
# `make test`, soak-crash at the soak size. The replay tool tests/tools/iorec-replay is Python: nothing to build.
CRASH_TESTS := tests/integration/test_crash.py tests/integration/test_powercut.py
crash-test: deps all
	$(MAKE) B=build-asan build-asan/btrfs-fuse
	/usr/bin/python3 -m pytest -q -p no:cacheprovider $(CRASH_TESTS)

soak-crash: deps all
	$(MAKE) B=build-asan build-asan/btrfs-fuse
	BTRFS_FUSE_SOAK=1 /usr/bin/python3 -m pytest -q -p no:cacheprovider $(CRASH_TESTS)

demo: deps all
	scripts/demo

bench: deps all
	scripts/bench

tour: deps all
	scripts/tour

install: all
	install -D -m 0755 btrfs-fuse $(DESTDIR)$(PREFIX)/bin/btrfs-fuse
	install -D -m 0755 btrfs-fuse-inspect $(DESTDIR)$(PREFIX)/bin/btrfs-fuse-inspect
	install -D -m 0644 docs/btrfs-fuse.1 $(DESTDIR)$(PREFIX)/share/man/man1/btrfs-fuse.1
	install -D -m 0644 docs/btrfs-fuse-inspect.1 $(DESTDIR)$(PREFIX)/share/man/man1/btrfs-fuse-inspect.1

clean:
	rm -rf build build-asan btrfs-fuse btrfs-fuse-inspect

-include $(CORE_OBJ:.o=.d) $(FUSE_OBJ:.o=.d) $(INSPECT_OBJ:.o=.d) $(UNIT_BIN:=.d)
