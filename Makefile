# mpool — GNU make build.  `make`, `make check`, `make run`, `make install`.

PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
SBINDIR ?= $(PREFIX)/sbin
LIBEXECDIR ?= $(PREFIX)/libexec
SYSCONFDIR ?= /etc
DATADIR ?= /usr/share
MANDIR ?= $(DATADIR)/man
DESTDIR ?=
SYSTEMDSYSTEMUNITDIR ?= $(shell $(PKG_CONFIG) --variable=systemdsystemunitdir systemd 2>/dev/null || echo /lib/systemd/system)
SYSUSERSDIR ?= $(shell $(PKG_CONFIG) --variable=sysusersdir systemd 2>/dev/null || echo /usr/lib/sysusers.d)
TMPFILESDIR ?= $(shell $(PKG_CONFIG) --variable=tmpfilesdir systemd 2>/dev/null || echo /usr/lib/tmpfiles.d)
BASHCOMPLETIONDIR ?= $(DATADIR)/bash-completion/completions

PKG_CONFIG ?= pkg-config
CC ?= cc

# `make SANITIZE=1 …` builds everything with AddressSanitizer (with
# LeakSanitizer) and UndefinedBehaviorSanitizer, into its own directory so
# that it never mixes objects with a normal build. Every report is fatal.
SANITIZE ?=
ifeq ($(SANITIZE),1)
B ?= build-sanitize
SANITIZE_FLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
# For the unit tests; the integration harness sets its own (and keeps these).
export ASAN_OPTIONS ?= detect_leaks=1:halt_on_error=1:abort_on_error=0
export UBSAN_OPTIONS ?= print_stacktrace=1:halt_on_error=1
export LSAN_OPTIONS ?= suppressions=$(CURDIR)/tests/lsan.supp:print_suppressions=0
else ifneq ($(filter-out 0,$(SANITIZE)),)
$(error SANITIZE=$(SANITIZE): only SANITIZE=1 or SANITIZE=0 is understood)
endif
# `make fuzz` builds the libFuzzer targets (tests/fuzz/) with clang in this
# mode: everything instrumented for coverage and sanitized, in its own
# directory. Only clang has libFuzzer, whatever CC says elsewhere.
FUZZ ?=
ifeq ($(FUZZ),1)
ifeq ($(SANITIZE),1)
$(error FUZZ=1 already sanitizes: give it without SANITIZE=1)
endif
B ?= build-fuzz
CC = clang
SANITIZE_FLAGS = -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
endif
B ?= build

# Debian 12 packages the build needs; `make deps` installs what is missing.
# libopenblas0-pthread: OpenBLAS, which the daemon loads at run time
# (daemon/blas.h) and the unit tests run; nothing links it.
BUILD_DEB_PACKAGES = build-essential pkg-config libsystemd-dev libcjson-dev libinih-dev libcmocka-dev uthash-dev \
	libcurl4-openssl-dev libssl-dev libicu-dev libopenblas0-pthread
TEST_DEB_PACKAGES = dbus-daemon systemd python3 python3-dbus polkitd util-linux tmux libglib2.0-bin python3-gi \
	python3-prometheus-client valgrind
# Only `make fuzz` needs these: clang, and libFuzzer's runtime, which clang
# merely recommends.
FUZZ_DEB_PACKAGES = clang libclang-rt-dev
DEB_PACKAGES ?= $(BUILD_DEB_PACKAGES) $(TEST_DEB_PACKAGES)
# What `make bench` runs besides the tests' packages (tests/bench/): the
# references it compares Embed and Load with, and perf for where mpoold's
# time goes. Not CI's: CI does not run benchmarks.
BENCH_DEB_PACKAGES = python3-torch python3-numpy linux-perf
DEPS_PC = libsystemd libcjson inih

CFLAGS ?= -O2 -g
override CFLAGS += -std=gnu11 -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers \
	-Wshadow -Wformat=2 -Wundef -Werror=implicit-function-declaration -fno-strict-aliasing -pthread -MMD -MP $(SANITIZE_FLAGS)
# Every link passes $(CFLAGS) too, which brings in the sanitizers' runtimes.
override CPPFLAGS += -D_GNU_SOURCE -Iinclude -Ibase $(shell $(PKG_CONFIG) --cflags $(DEPS_PC) 2>/dev/null)
LIBS = $(shell $(PKG_CONFIG) --libs $(DEPS_PC) 2>/dev/null) -pthread -lm
CMOCKA_LIBS = $(shell $(PKG_CONFIG) --libs cmocka 2>/dev/null)
# Only the download helper speaks HTTP and hashes: only it links these.
PULL_PC = libcurl libcrypto
PULL_CFLAGS = $(shell $(PKG_CONFIG) --cflags $(PULL_PC) 2>/dev/null)
PULL_LIBS = $(shell $(PKG_CONFIG) --libs $(PULL_PC) 2>/dev/null)
# Unicode data for the tokenizer (daemon/tokenizer-unicode.c): what runs
# models links it, the download helper and the client do not.
ICU_PC = icu-uc
ICU_CFLAGS = $(shell $(PKG_CONFIG) --cflags $(ICU_PC) 2>/dev/null)
ICU_LIBS = $(shell $(PKG_CONFIG) --libs $(ICU_PC) 2>/dev/null)

# base/: what daemon, client and tests all use (macros, logging, parsers,
# string vectors, clocks). The client links it alone, never the daemon's code.
BASE_SRCS := $(wildcard base/*.c)
BASE_OBJS := $(BASE_SRCS:%.c=$(B)/%.o)
DAEMON_LIB_SRCS := $(filter-out daemon/mpoold.c,$(wildcard daemon/*.c))
DAEMON_LIB_OBJS := $(DAEMON_LIB_SRCS:%.c=$(B)/%.o)
CLIENT_SRCS := $(wildcard client/*.c)
CLIENT_OBJS := $(CLIENT_SRCS:%.c=$(B)/%.o)
PULL_SRCS := $(wildcard pull/*.c)
PULL_OBJS := $(PULL_SRCS:%.c=$(B)/%.o)
UNIT_TEST_SRCS := $(wildcard tests/unit/test-*.c)
UNIT_TESTS := $(UNIT_TEST_SRCS:tests/unit/%.c=$(B)/tests/%)
# The download helper's code but its main(), for the fuzz targets.
PULL_LIB_OBJS := $(filter-out $(B)/pull/mpool-pull.o,$(PULL_OBJS))
# tests/fuzz/fuzz-NAME.c: a libFuzzer target NAME, seeds in tests/fuzz/NAME/.
FUZZ_TARGETS := $(patsubst tests/fuzz/fuzz-%.c,%,$(wildcard tests/fuzz/fuzz-*.c))
# The same targets without libFuzzer, each input given once: `make check`
# replays the seeds (and the crashes found once) through them.
FUZZ_REPLAYS := $(FUZZ_TARGETS:%=$(B)/tests/replay-%)
FUZZ_SECONDS ?= 10
# `make stress`: tests/integration/tests_stress.py for this long (`make check`
# runs it for 30 s); STRESS_SEED=N replays a run's random choices.
STRESS_SECONDS ?= 300

PROGRAMS = $(B)/mpoold $(B)/mpool-mkmodel $(B)/mpool-client $(B)/mpool-pull

.PHONY: FORCE all deps check check-unit check-fuzz check-integration check-valgrind check-system run install clean bench fuzz fuzz-deps fuzz-run stress
.DEFAULT_GOAL := all
# Keep intermediate objects (unit test .o files): rebuilding is needless, and
# make's cleanup line would otherwise follow the test summary in logs.
.SECONDARY:

all: $(PROGRAMS)

$(B)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

# The daemon's headers are visible to the daemon and the tests, not the client.
$(B)/daemon/%.o $(B)/tests/%.o: override CPPFLAGS += -Idaemon
# Where the unit tests find their fixtures (tests/fixtures/), whatever the
# directory they run in.
$(B)/tests/unit/%.o: override CPPFLAGS += -DMPOOL_TESTS_DIR='"$(CURDIR)/tests"'

$(B)/libmpool-base.a: $(BASE_OBJS)
	@rm -f $@
	$(AR) rcs $@ $^

$(B)/libmpoold.a: $(DAEMON_LIB_OBJS)
	@rm -f $@
	$(AR) rcs $@ $^

# Where the daemon finds the download helper; MPOOL_PULL_PATH in its
# environment overrides it (the integration tests point it at the build).
$(B)/daemon/mpoold.o: override CPPFLAGS += -DMPOOL_PULL_PATH='"$(LIBEXECDIR)/mpool/mpool-pull"'

# Comparisons that select, not branch: what lets GCC vectorize the loops of
# daemon/vector-math.c for SSE2 and AVX2 too (they never trap: no NaN reaches them).
$(B)/daemon/vector-math.o: override CFLAGS += -fno-trapping-math

$(B)/daemon/tokenizer.o $(B)/daemon/tokenizer-json.o $(B)/daemon/tokenizer-unicode.o: override CPPFLAGS += $(ICU_CFLAGS)

$(B)/mpoold: $(B)/daemon/mpoold.o $(B)/libmpoold.a $(B)/libmpool-base.a
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(ICU_LIBS) $(LIBS)

# The test build of the daemon: the same code plus the hooks in
# daemon/test-hooks.h that let tests hold a load where they choose. The
# hooked objects come before the library, so theirs are the ones linked.
TEST_HOOK_OBJS := $(B)/test-hooks/daemon/loader.o $(B)/test-hooks/daemon/download.o \
	$(B)/test-hooks/daemon/inspection.o $(B)/test-hooks/daemon/embed.o $(B)/test-hooks/daemon/test-hooks.o
$(B)/test-hooks/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) -Idaemon -DMPOOL_TEST_HOOKS $(CFLAGS) -c -o $@ $<

$(B)/mpoold-test: $(B)/daemon/mpoold.o $(TEST_HOOK_OBJS) $(B)/libmpoold.a $(B)/libmpool-base.a
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(ICU_LIBS) $(LIBS)

$(B)/mpool-client: $(CLIENT_OBJS) $(B)/libmpool-base.a
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LIBS)

# The download helper (libexec): the daemon's readers (json-scan, the
# safetensors validator, the index reader) from libmpoold.a, and libcurl
# and libcrypto, which nothing else links.
$(B)/pull/%.o: override CPPFLAGS += -Idaemon $(PULL_CFLAGS)

$(B)/mpool-pull: $(PULL_OBJS) $(B)/libmpoold.a $(B)/libmpool-base.a
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(PULL_LIBS) $(LIBS)

# The helper's test build, which mpoold-test starts: it also takes the
# --test-* options that shorten its retry delays (the installed one refuses
# them).
$(B)/test-hooks/pull/%.o: override CPPFLAGS += $(PULL_CFLAGS)

$(B)/mpool-pull-test: $(B)/test-hooks/pull/mpool-pull.o $(filter-out $(B)/pull/mpool-pull.o,$(PULL_OBJS)) \
		$(B)/libmpoold.a $(B)/libmpool-base.a
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(PULL_LIBS) $(LIBS)

$(B)/mpool-mkmodel: $(B)/tests/tools/mkmodel.o $(B)/libmpoold.a $(B)/libmpool-base.a
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LIBS)

# What tests/bench/bus-roundtrip.sh, responsiveness.sh and scale.sh time
# calls with: built by `make bench` only, never installed.
$(B)/bus-latency: $(B)/tests/bench/bus-latency.o $(B)/libmpool-base.a
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(LIBS)

$(B)/tests/test-%: $(B)/tests/unit/test-%.o $(B)/libmpoold.a $(B)/libmpool-base.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^ $(CMOCKA_LIBS) $(ICU_LIBS) $(LIBS)

$(B)/libmpool-pull.a: $(PULL_LIB_OBJS)
	@rm -f $@
	$(AR) rcs $@ $^

# The fuzz targets read the download helper's headers too.
$(B)/tests/fuzz/%.o: override CPPFLAGS += -Ipull $(PULL_CFLAGS)

FUZZ_LINK = $(B)/libmpool-pull.a $(B)/libmpoold.a $(B)/libmpool-base.a $(PULL_LIBS) $(ICU_LIBS) $(LIBS)

$(B)/tests/replay-%: $(B)/tests/fuzz/fuzz-%.o $(B)/tests/fuzz/replay.o $(B)/libmpool-pull.a $(B)/libmpoold.a $(B)/libmpool-base.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $(B)/tests/fuzz/fuzz-$*.o $(B)/tests/fuzz/replay.o $(FUZZ_LINK)

$(B)/fuzz/fuzz-%: $(B)/tests/fuzz/fuzz-%.o $(B)/libmpool-pull.a $(B)/libmpoold.a $(B)/libmpool-base.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fsanitize=fuzzer $(LDFLAGS) -o $@ $< $(FUZZ_LINK)

# Installs the Debian packages the build and the tests need: with apt as
# root, otherwise it prints the one command that does.
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
		echo "Installing: $$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing || \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; }; \
	else \
		echo "Missing build dependencies. Install them with:"; \
		echo "  sudo apt-get install $$missing"; exit 1; \
	fi

check: all $(B)/mpoold-test $(B)/mpool-pull-test $(UNIT_TESTS)
	@$(MAKE) --no-print-directory check-unit
	@$(MAKE) --no-print-directory check-system
	@$(MAKE) --no-print-directory check-integration

check-unit: $(UNIT_TESTS) $(FUZZ_REPLAYS)
	@failed=0; for t in $(UNIT_TESTS); do echo "== $$t"; $$t || failed=1; done; \
	$(MAKE) --no-print-directory check-fuzz || failed=1; exit $$failed

# Seconds, not minutes: each fuzz target once over its seeds and the crashes
# it found before (`make fuzz` is what searches).
check-fuzz: $(FUZZ_REPLAYS)
	@failed=0; for t in $(FUZZ_TARGETS); do \
		echo "== replay $$t"; $(B)/tests/replay-$$t tests/fuzz/$$t || failed=1; done; exit $$failed

# Runs each fuzz target for FUZZ_SECONDS, FUZZ_JOBS of them at once, from
# its seeds and what earlier runs found (kept in build-fuzz/corpus/). A target
# stops at its first crash, leaving the input in build-fuzz/crash-TARGET-*;
# the others still run, and make fails at the end. Copy the input into
# tests/fuzz/TARGET/ once fixed, so that `make check` replays it. Each
# target's output goes to build-fuzz/fuzz-TARGET.log, so that targets run at
# once do not mix their lines; its summary is printed, its tail on a crash.
FUZZ_JOBS ?= 1
FUZZ_RUNS := $(FUZZ_TARGETS:%=fuzz-run-%)

fuzz: fuzz-deps
	@$(MAKE) --no-print-directory FUZZ=1 fuzz-run

fuzz-deps:
	@$(MAKE) --no-print-directory deps DEB_PACKAGES="$(BUILD_DEB_PACKAGES) $(FUZZ_DEB_PACKAGES)"

fuzz-run:
	@$(MAKE) --no-print-directory -k -j$(FUZZ_JOBS) $(FUZZ_RUNS) || \
		{ echo "Fuzz targets that crashed:" $$(cd $(B) && ls crash-* 2>/dev/null); exit 1; }

# Not .PHONY, which would skip this pattern rule: FORCE makes it run each time.
fuzz-run-%: $(B)/fuzz/fuzz-% FORCE
	@mkdir -p $(B)/corpus/$*
	@if $< -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 \
		-artifact_prefix=$(B)/crash-$*- $(B)/corpus/$* tests/fuzz/$* > $(B)/fuzz-$*.log 2>&1; then \
		echo "== fuzz $* ($(FUZZ_SECONDS) s): $$(grep -E '^#[0-9]+[[:space:]]+DONE' $(B)/fuzz-$*.log | tr '\n' ' ')"; \
	else \
		echo "== fuzz $* ($(FUZZ_SECONDS) s): CRASHED, the last lines of $(B)/fuzz-$*.log:"; tail -n 60 $(B)/fuzz-$*.log; exit 1; \
	fi

FORCE:

# The unit must verify and keep its sandbox score; `make install` must lay
# out the tree a Debian package would ship.
check-system: all
	tests/tools/security-check.sh 2.0
	tests/tools/install-check.sh

check-integration: all $(B)/mpoold-test $(B)/mpool-pull-test
	/usr/bin/python3 tests/integration/run.py --build=$(B)

# The stress run alone, longer than `make check` runs it: 32 clients against
# one mpoold, then the checks of what it left (tests/integration/tests_stress.py).
stress: all $(B)/mpoold-test $(B)/mpool-pull-test
	STRESS_SECONDS=$(STRESS_SECONDS) /usr/bin/python3 tests/integration/run.py --build=$(B) --filter=test_stress

# The integration suite once more with every mpoold the tests start under
# valgrind's memcheck (tests/integration/harness.py, VALGRIND_OPTIONS): an
# error or a definite leak fails the test that ran the daemon. Suppressions,
# for libraries that are not ours only, in tests/valgrind.supp. In shards at
# once, each with its own bus: under valgrind the tests mostly wait for a
# daemon to start.
VALGRIND_JOBS ?= 2
check-valgrind: all $(B)/mpoold-test $(B)/mpool-pull-test
ifeq ($(SANITIZE),1)
	$(error check-valgrind runs the normal build: the sanitizers' runtimes and valgrind exclude each other)
endif
	/usr/bin/python3 tests/integration/run.py --build=$(B) --valgrind --jobs=$(VALGRIND_JOBS)

bench:
	@$(MAKE) --no-print-directory deps DEB_PACKAGES="$(BUILD_DEB_PACKAGES) $(TEST_DEB_PACKAGES) $(BENCH_DEB_PACKAGES)"
	@$(MAKE) --no-print-directory all $(B)/bus-latency
	@for b in tests/bench/*.sh; do [ -e "$$b" ] && bash "$$b" $(B); done; true

# Development: a demo store and a private bus, mpoold in the foreground.
run: deps
	@$(MAKE) --no-print-directory all
	tests/tools/run-dev.sh $(B)

install: all
	install -Dm0755 $(B)/mpoold $(DESTDIR)$(SBINDIR)/mpoold
	install -Dm0755 $(B)/mpool-client $(DESTDIR)$(BINDIR)/mpool-client
	install -Dm0755 $(B)/mpool-pull $(DESTDIR)$(LIBEXECDIR)/mpool/mpool-pull
	install -Dm0644 client/mpool-client.1 $(DESTDIR)$(MANDIR)/man1/mpool-client.1
	install -Dm0644 client/mpool-client.bash-completion $(DESTDIR)$(BASHCOMPLETIONDIR)/mpool-client
	install -Dm0644 dbus/org.mpool.Manager.xml $(DESTDIR)$(DATADIR)/dbus-1/interfaces/org.mpool.Manager.xml
	install -Dm0644 dbus/org.mpool.Manager.conf $(DESTDIR)$(DATADIR)/dbus-1/system.d/org.mpool.Manager.conf
	install -Dm0644 dbus/org.mpool.Manager.service $(DESTDIR)$(DATADIR)/dbus-1/system-services/org.mpool.Manager.service
	install -Dm0644 polkit/org.mpool.policy $(DESTDIR)$(DATADIR)/polkit-1/actions/org.mpool.policy
	install -Dm0644 systemd/mpool.sysusers $(DESTDIR)$(SYSUSERSDIR)/mpool.conf
	install -Dm0644 systemd/mpool.tmpfiles $(DESTDIR)$(TMPFILESDIR)/mpool.conf
	install -d $(DESTDIR)$(SYSTEMDSYSTEMUNITDIR)
	sed 's|/usr/sbin/mpoold|$(SBINDIR)/mpoold|' systemd/mpoold.service > $(DESTDIR)$(SYSTEMDSYSTEMUNITDIR)/mpoold.service
	chmod 0644 $(DESTDIR)$(SYSTEMDSYSTEMUNITDIR)/mpoold.service
	install -Dm0644 daemon/mpoold.conf $(DESTDIR)$(SYSCONFDIR)/mpool/mpoold.conf

clean:
	rm -rf $(B)

-include $(shell find $(B) -name '*.d' 2>/dev/null)
