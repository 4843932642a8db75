# bst: a Behavior Sequence Transformer inside PostgreSQL (built with PGXS).
EXTENSION = bst
MODULE_big = bst
DATA = $(wildcard $(EXTENSION)--*.sql)
CORE_OBJS = $(patsubst %.c,%.o,$(wildcard src/core/*.c))
OBJS = $(patsubst %.c,%.o,$(wildcard src/*.c)) $(CORE_OBJS)
PGFILEDESC = "bst - Behavior Sequence Transformer recommender"

PG_CFLAGS = -O2 -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers
SHLIB_LINK = -lopenblas -lz -lm

REGRESS = $(patsubst sql/%.sql,%,$(sort $(wildcard sql/*.sql)))
REGRESS_OPTS = --load-extension=$(EXTENSION)

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# Standalone tests of the numerical core: no server needed.
.PHONY: unittest
unittest:
	$(MAKE) -C test/c check
