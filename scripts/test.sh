#!/usr/bin/env bash
# Every test suite of bst, on a throwaway cluster:
#   scripts/test.sh
# installs what is missing, builds and installs the extension, starts a
# private cluster, runs pg_regress (make installcheck), pgTAP (pg_prove),
# the loader, pg_dump and 1.0 -> 1.1 upgrade tests, the C unit tests of
# the numerical core (also under ASan and UBSan), 60 s of libFuzzer on the
# weights deserializer and prediction, the SQL suites against an ASan+UBSan
# build of the extension, and the TAP tests (kill -9, statement_timeout, hot
# standby, memory, progress), and builds, installs, tests and removes the
# Debian package, prints one summary line per suite, stops the cluster
# (also on failure or Ctrl-C) and exits non-zero when any suite failed.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_packages || exit 1
build_install || exit 1
trap cluster_stop EXIT
trap 'exit 130' INT TERM
cluster_start || exit 1


regress() {
    make -s installcheck || { cat regression.diffs 2>/dev/null; return 1; }
}

pgtap() {
    psql -X -q -c "DROP DATABASE IF EXISTS bst_tap" -c "CREATE DATABASE bst_tap" &&
        psql -X -q -d bst_tap -c "CREATE EXTENSION pgtap" -c "CREATE EXTENSION bst" &&
        pg_prove -d bst_tap --failures test/pgtap/*.sql
}

# PostgreSQL::Test::Cluster makes clusters of its own, as the cluster owner
# (initdb refuses root), in a copy of the tests that owner may write to.
tap() {
    local d rc
    d=$(mktemp -d /tmp/bst-tap.XXXXXX) && mkdir "$d/test" "$d/scripts" && cp Makefile "$d/" &&
        cp -r test/t "$d/test/" && cp scripts/sharding.sh "$d/scripts/" || return 1
    [ "$(id -u)" = 0 ] && chown -R postgres: "$d"
    as_owner make -s -C "$d" prove_installcheck
    rc=$?
    [ $rc = 0 ] || tail -n 40 "$d"/tmp_check/log/regress_log_* >&2
    rm -rf "$d"
    return $rc
}

run_suite "pg_regress (make installcheck)" regress
run_suite "pgTAP (pg_prove test/pgtap)" pgtap
run_suite "loader (test/loader)" bash test/loader/test_loader.sh
run_suite "pg_dump round trip (test/dump)" bash test/dump/test_dump.sh
run_suite "extension upgrade 1.0 -> 1.1 (test/upgrade)" bash test/upgrade/test_upgrade.sh
run_suite "C unit tests (make -C test/c check)" make -s -C test/c check
run_suite "C unit tests under ASan+UBSan (make -C test/c check-sanitized)" make -s -j2 -C test/c check-sanitized
run_suite "fuzzing the deserializer and prediction, 60 s (test/fuzz)" make -s -C test/fuzz run FUZZ_SECONDS=60 FUZZ_OPTS=-seed=1 QUIET=1
run_suite "SQL suites under ASan+UBSan (scripts/test_sanitized.sh)" bash scripts/test_sanitized.sh
run_suite "TAP: crash, cancel, standby (make prove_installcheck)" tap
# Last: removing the package removes what "make install" installed (the
# script installs the working tree again at its end).
run_suite "Debian package: build, install, installcheck, remove (scripts/test_package.sh)" bash scripts/test_package.sh

printf '\n'
printf '%s\n' "${summary[@]}"
[ $failed = 0 ] && echo "all suites passed" || echo "SOME SUITES FAILED"
exit $failed
