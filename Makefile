# bst: a Behavior Sequence Transformer inside PostgreSQL (built with PGXS).
EXTENSION = bst
MODULE_big = bst
DATA = $(wildcard $(EXTENSION)--*.sql)
CORE_OBJS = $(patsubst %.c,%.o,$(wildcard src/core/*.c))
OBJS = $(patsubst %.c,%.o,$(wildcard src/*.c)) $(CORE_OBJS)
PGFILEDESC = "bst - Behavior Sequence Transformer recommender"

# BST_BLAS_DLOPEN: OpenBLAS is not linked; _PG_init chooses its kernels,
# then loads it (src/core/blas.h says why).
PG_CPPFLAGS = -I$(srcdir)/src -DBST_BLAS_DLOPEN
PG_CFLAGS = -O2
# The core is plain C11 with its own stricter warnings; gcc 12 at -O2 leaves
# its element-wise loops scalar unless the cost model is dynamic (~20% faster),
# and sqrtf only vectorises without errno.  -fopenmp makes gcc turn each
# parallel loop into a function; the loops run on the core's own thread pool
# (src/core/parallel.c), so no OpenMP library is linked.  -ffp-contract=off
# (what -std=c11 implies for the C tests): the AVX2 and AVX-512 copies of the
# core's loops (src/core/simd.h) may not fuse a * b + c into an FMA, so every
# copy computes the generic one's bits, and 1.0's models predict as 1.0 did.
# -fno-wrapv undoes PostgreSQL's -fwrapv, which its own code needs but the
# core does not (the C tests build it without, and their sanitized build
# checks that no signed integer overflows): with it, gcc may not assume that
# an int index does not wrap, and left the attention's loops scalar, at half
# the speed, and a training epoch 25-30% slower than the C tests' build.
# -Wno-psabi: src/core/vec16.h passes 64-byte vectors between always-inlined
# functions, which changes no ABI; gcc notes it in the baseline copy anyway.
src/core/%.o: override CFLAGS += -Wextra -Wno-declaration-after-statement -fvect-cost-model=dynamic -fno-math-errno -fopenmp -ffp-contract=off -fno-wrapv -Wno-psabi
# The same note from clang, which compiles the bitcode for PostgreSQL's JIT.
src/core/%.bc: override BITCODE_CFLAGS += -Wno-psabi
SHLIB_LINK = -lz -lm

REGRESS = $(patsubst sql/%.sql,%,$(sort $(wildcard sql/*.sql)))
REGRESS_OPTS = --load-extension=$(EXTENSION)

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# Standalone tests of the numerical core: no server needed.
.PHONY: unittest
unittest:
	$(MAKE) -C test/c check

# PGXS does not track headers.  After the PGXS include, so that "all" stays
# the default target.
$(OBJS): $(wildcard src/*.h src/core/*.h)

# TAP tests (test/t/*.pl, PostgreSQL::Test::Cluster): crash-restart, cancel
# and hot-standby behaviour, each on clusters of their own.  Not TAP_TESTS:
# that would also run them in "make installcheck", which runs as root in
# scripts/test.sh, and initdb refuses root.  tmp_check/ goes to the current
# directory; as root, run them as postgres in a copy that postgres owns:
#   d=$(mktemp -d) && mkdir "$d/test" && cp Makefile "$d" && cp -r test/t "$d/test" &&
#     chown -R postgres: "$d" && runuser -u postgres -- make -C "$d" prove_installcheck
PROVE_TESTS = test/t/*.pl
.PHONY: prove_installcheck
prove_installcheck:
	$(prove_installcheck)
