# Shared set-up for scripts/demo.sh and scripts/test.sh: Debian packages,
# build and install, and a throwaway PostgreSQL 15 cluster.  Source it.

PG_BIN=/usr/lib/postgresql/15/bin
BST_PORT=${BST_PORT:-54329}
BST_PACKAGES="make gcc clang libclang-rt-14-dev postgresql-15 postgresql-server-dev-15 libopenblas-dev zlib1g-dev postgresql-15-pgtap pgtap libipc-run-perl postgresql-15-plproxy"

log() { printf '== %s\n' "$*" >&2; }

# Install what is missing, and nothing when all is there (no network needed).
ensure_packages() {
    local missing=""
    for p in $BST_PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing="$missing $p"
    done
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "missing Debian packages:$missing (run as root, or: sudo apt-get install$missing)" >&2
        return 1
    fi
    log "installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

build_install() {
    log "building and installing the extension"
    make -s -j2 >/dev/null && make -s install >/dev/null
}

# Run a command as the cluster owner: initdb refuses root.
as_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# Start a private cluster in a fresh temporary directory; exports the libpq
# environment (PGHOST, PGPORT, PGUSER, PGDATABASE) for everything after.
cluster_start() {
    BST_CLUSTER_DIR=$(mktemp -d /tmp/bst-cluster.XXXXXX)
    chmod 755 "$BST_CLUSTER_DIR"
    [ "$(id -u)" = 0 ] && chown postgres: "$BST_CLUSTER_DIR"
    log "starting a throwaway cluster in $BST_CLUSTER_DIR on port $BST_PORT"
    as_owner "$PG_BIN/initdb" -D "$BST_CLUSTER_DIR/data" -U postgres --auth=trust \
        --encoding=UTF8 --locale=C.UTF-8 >"$BST_CLUSTER_DIR/initdb.log" 2>&1 ||
        { cat "$BST_CLUSTER_DIR/initdb.log" >&2; return 1; }
    as_owner "$PG_BIN/pg_ctl" -D "$BST_CLUSTER_DIR/data" -l "$BST_CLUSTER_DIR/server.log" -w \
        -o "-p $BST_PORT -k $BST_CLUSTER_DIR -c listen_addresses='' -c fsync=off \
            -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=512MB \
            -c max_wal_size=4GB -c work_mem=64MB -c maintenance_work_mem=512MB" \
        start >/dev/null ||
        { cat "$BST_CLUSTER_DIR/server.log" >&2; return 1; }
    export PGHOST=$BST_CLUSTER_DIR PGPORT=$BST_PORT PGUSER=postgres PGDATABASE=postgres
}

cluster_stop() {
    [ -n "${BST_CLUSTER_DIR:-}" ] && [ -d "$BST_CLUSTER_DIR" ] || return 0
    log "stopping the cluster"
    as_owner "$PG_BIN/pg_ctl" -D "$BST_CLUSTER_DIR/data" -m immediate stop >/dev/null 2>&1
    rm -rf "$BST_CLUSTER_DIR"
    BST_CLUSTER_DIR=
}

# The CPU and the OpenBLAS kernels that run on it, for the header of every
# benchmark: float results and timings depend on both.
machine_description() {
    local probe
    probe=$(mktemp -d /tmp/bst-blas.XXXXXX)
    printf '#include <stdio.h>\nchar *openblas_get_corename(void);\nchar *openblas_get_config(void);\nint main(void) { printf("%%s, kernels %%s", openblas_get_config(), openblas_get_corename()); return 0; }\n' >"$probe/probe.c"
    local blas="OpenBLAS unknown"
    gcc -o "$probe/probe" "$probe/probe.c" -lopenblas 2>/dev/null && blas=$("$probe/probe")
    rm -rf "$probe"
    printf '%s (family %s, model %s), %s cores; %s' \
        "$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)" \
        "$(sed -n 's/^cpu family\s*: //p' /proc/cpuinfo | head -1)" \
        "$(sed -n 's/^model\s*: //p' /proc/cpuinfo | head -1)" "$(nproc)" "$blas"
}

# Run one suite of a test script ("run_suite NAME COMMAND..."): a PASS or
# FAIL line with its seconds goes to $summary, and a failure sets $failed.
summary=()
failed=0
run_suite() {
    local name=$1 start=$SECONDS
    shift
    log "suite: $name"
    if "$@"; then
        summary+=("PASS  $name ($((SECONDS - start)) s)")
    else
        summary+=("FAIL  $name ($((SECONDS - start)) s)")
        failed=1
    fi
}
