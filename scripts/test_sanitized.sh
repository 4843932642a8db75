#!/usr/bin/env bash
# The SQL suites against an AddressSanitizer + UndefinedBehaviorSanitizer
# build of the extension:
#   scripts/test_sanitized.sh
# runs pg_regress (make installcheck), pgTAP (pg_prove), the pg_dump round
# trip and the 1.0 -> 1.1 upgrade test, prints one summary line per suite and
# exits non-zero when a suite fails or any sanitizer report appears.
#
# Nothing shared is touched: the sources are copied to a temporary directory
# and built there (the objects in src/ stay as they are), and the server
# installation is copied too (/usr/lib/postgresql/15 and
# /usr/share/postgresql/15 under $T/inst; PostgreSQL finds its share and lib
# directories relative to its own binary), so the sanitized bst.so is
# installed into the copy, never over the system's.  The copied postmaster
# runs as postgres on a private port (BST_SAN_PORT, default 54360) with its
# socket in the temporary directory, and is stopped and removed on exit, also
# on failure or Ctrl-C (BST_SAN_KEEP=1 keeps the directory).
#
# Limits: PostgreSQL itself is not instrumented, and the core's allocations
# go through palloc (bst.c), so AddressSanitizer sees overruns of the large
# buffers (their own malloc'd blocks) but not within a memory context's
# small chunks.  UndefinedBehaviorSanitizer covers all of bst's code, except
# signed overflow: PGXS compiles with -fwrapv, which defines it (the C tests
# and the fuzzer, built without it, do check it).
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

PORT=${BST_SAN_PORT:-54360}
# Fatal sanitizers, with frame pointers for readable stacks; float-cast-overflow
# is not in gcc's "undefined" group.
SAN_FLAGS="-g -fsanitize=address,undefined,float-cast-overflow -fno-omit-frame-pointer -fno-sanitize-recover=all"

ensure_packages || exit 1

T=$(mktemp -d /tmp/bst-san.XXXXXX)
chmod 755 "$T"
INST=$T/inst
BIN=$INST$PG_BIN
DATA=$T/data
SOCK=$T/sock
REPORTS=$T/reports     # ASan reports, one file per process (log_path)
SERVER_LOG=$T/server.log
server_pid=

cleanup() {
    local rc=$?
    if [ -f "$DATA/postmaster.pid" ]; then
        as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -t 60 stop >/dev/null 2>&1 ||
            as_owner "$BIN/pg_ctl" -D "$DATA" -m immediate stop >/dev/null 2>&1
    fi
    if [ -n "$server_pid" ]; then
        # A postmaster that never got as far as its pid file (or survived
        # pg_ctl) is killed by the pid it wrote at launch.
        local pm
        pm=$(cat "$T/launch.pid" 2>/dev/null)
        [ -n "$pm" ] && kill -0 "$pm" 2>/dev/null && kill -KILL "$pm"
        wait "$server_pid" 2>/dev/null
    fi
    if [ "${BST_SAN_KEEP:-0}" = 1 ]; then
        log "kept $T"
    else
        rm -rf "$T"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- build ---------------------------------------------------------------
log "building the sanitized extension in $T/src"
mkdir -p "$T/src"
# The working tree as it is (uncommitted edits included), without build
# products: tracked and untracked files that .gitignore does not exclude.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z -co --exclude-standard | tar --null -T - -cf - | tar -C "$T/src" -xf -
else
    tar --exclude=.git --exclude='*.o' --exclude='*.so' --exclude='*.bc' -cf - . | tar -C "$T/src" -xf -
fi || exit 1
# COPT goes into PGXS's CFLAGS and LDFLAGS (the .so links the gcc sanitizer
# runtimes); with_llvm=no skips the JIT bitcode, which the server (jit=off)
# would not use.
make -s -C "$T/src" -j2 with_llvm=no COPT="$SAN_FLAGS" >"$T/build.log" 2>&1 ||
    { cat "$T/build.log" >&2; exit 1; }

# --- a private copy of the server installation ----------------------------
log "copying the PostgreSQL 15 installation to $INST"
mkdir -p "$INST/usr/lib/postgresql" "$INST/usr/share/postgresql"
# Real copies, not hard links: installing into the copy must not be able to
# write through to the system's files.
cp -a /usr/lib/postgresql/15 "$INST/usr/lib/postgresql/" &&
    cp -a /usr/share/postgresql/15 "$INST/usr/share/postgresql/" || exit 1
make -s -C "$T/src" with_llvm=no install DESTDIR="$INST" >/dev/null || exit 1
cmp -s "$T/src/bst.so" "$INST/usr/lib/postgresql/15/lib/bst.so" ||
    { echo "the sanitized bst.so is not in the copied installation" >&2; exit 1; }

# --- the cluster ------------------------------------------------------------
mkdir -p "$SOCK" "$REPORTS"
[ "$(id -u)" = 0 ] && chown postgres: "$T" "$SOCK" "$REPORTS"
log "starting the copied server on port $PORT (socket in $SOCK)"
as_owner "$BIN/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 \
    --locale=C.UTF-8 >"$T/initdb.log" 2>&1 || { cat "$T/initdb.log" >&2; exit 1; }

# The ASan runtime must be the first library loaded: the postgres binary is
# not instrumented, so it is preloaded, from the gcc that built bst.so.  On
# Debian 12 the server then needs libgpg-error and libgnutls preloaded too
# (without them it hangs at start-up, before it logs anything).  The
# postmaster is started directly (not through pg_ctl) so that it surely gets
# this environment, and its backends inherit it.
#   detect_leaks=0: PostgreSQL frees by memory context and leaves the rest
#                   to process exit, by design;
#   abort_on_error=1: a report ends the backend with SIGABRT, which the
#                   postmaster logs (UBSan's default, exit code 1, it does not);
#   log_path: ASan's reports also land in $REPORTS, which must stay empty.
# UBSan's options cannot come from UBSAN_OPTIONS: its runtime, loaded with
# bst.so, reads them at its first report, from /proc/self/environ, which
# PostgreSQL has overwritten with its ps display by then (the report had no
# stack and did not stop the backend).  A preloaded __ubsan_default_options
# gives them instead; its reports go to stderr, the server log, whatever
# log_path says.
asan_rt=$(readlink -f "$(gcc -print-file-name=libasan.so)")
[ -f "$asan_rt" ] || { echo "no libasan for $(gcc --version | head -1)" >&2; exit 1; }
printf '%s\n' 'const char *__ubsan_default_options(void)' \
    '{ return "print_stacktrace=1:halt_on_error=1:abort_on_error=1:disable_coredump=1"; }' \
    >"$T/ubsan_options.c"
gcc -shared -fPIC -o "$T/ubsan_options.so" "$T/ubsan_options.c" || exit 1
# sh writes its pid, which exec hands on to the postmaster, for cleanup().
as_owner sh -c 'echo $$ >"$0"; exec "$@"' "$T/launch.pid" env \
    LD_PRELOAD="$asan_rt $T/ubsan_options.so libgpg-error.so.0 libgnutls.so.30" \
    ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:disable_coredump=1:log_path=$REPORTS/asan" \
    "$BIN/postgres" -D "$DATA" -p "$PORT" -k "$SOCK" -c listen_addresses='' \
    -c jit=off -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
    -c shared_buffers=512MB -c max_wal_size=4GB -c work_mem=64MB -c maintenance_work_mem=512MB \
    >"$SERVER_LOG" 2>&1 &
server_pid=$!
export PGHOST=$SOCK PGPORT=$PORT PGUSER=postgres PGDATABASE=postgres
for _ in $(seq 120); do
    "$PG_BIN/pg_isready" -q && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.5
done
"$PG_BIN/pg_isready" -q || { echo "the server did not start:" >&2; cat "$SERVER_LOG" >&2; exit 1; }

# A backend that loads bst must map the sanitized bst.so and both runtimes.
maps=$(psql -X -At -c "LOAD 'bst'" -c "SELECT pg_read_file('/proc/self/maps')")
grep -q "$INST/usr/lib/postgresql/15/lib/bst.so" <<<"$maps" && grep -q libasan <<<"$maps" &&
    grep -q libubsan <<<"$maps" ||
    { echo "the backend did not load the sanitized bst.so with the sanitizer runtimes" >&2; exit 1; }

# --- the suites -------------------------------------------------------------

regress() {
    make -s -C "$T/src" with_llvm=no installcheck ||
        { cat "$T/src/regression.diffs" 2>/dev/null; return 1; }
}

pgtap() {
    psql -X -q -c "DROP DATABASE IF EXISTS bst_tap" -c "CREATE DATABASE bst_tap" &&
        psql -X -q -d bst_tap -c "CREATE EXTENSION pgtap" -c "CREATE EXTENSION bst" &&
        (cd "$T/src" && pg_prove -d bst_tap --failures test/pgtap/*.sql)
}

run_suite "pg_regress (make installcheck)" regress
run_suite "pgTAP (pg_prove test/pgtap)" pgtap
run_suite "pg_dump round trip (test/dump)" bash "$T/src/test/dump/test_dump.sh"
run_suite "extension upgrade 1.0 -> 1.1 (test/upgrade)" bash "$T/src/test/upgrade/test_upgrade.sh"

# --- sanitizer reports --------------------------------------------------------
# Stop first, so that every backend has exited and written what it had to.
as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -t 60 stop >/dev/null 2>&1
wait "$server_pid" 2>/dev/null
server_pid=
reports=$(find "$REPORTS" -type f)
# UBSan's reports, and the postmaster's note of a backend a report killed,
# are in the server log.
crashes=$(grep -E 'AddressSanitizer|runtime error:|terminated by signal' "$SERVER_LOG")
if [ -z "$reports" ] && [ -z "$crashes" ]; then
    summary+=("PASS  no sanitizer reports")
else
    summary+=("FAIL  sanitizer reports (see above)")
    failed=1
    for f in $reports; do
        printf '\n==== %s\n' "$f" >&2
        cat "$f" >&2
    done
    if [ -n "$crashes" ]; then
        printf '\n==== %s\n' "$SERVER_LOG" >&2
        grep -E -A40 'AddressSanitizer|runtime error:' "$SERVER_LOG" | head -n 300 >&2
        grep -E 'terminated by signal' "$SERVER_LOG" >&2
    fi
fi

printf '\n'
printf '%s\n' "${summary[@]}"
[ $failed = 0 ] && echo "all sanitized suites passed" || echo "SOME SANITIZED SUITES FAILED"
exit $failed
