#!/usr/bin/env bash
# ALTER EXTENSION bst UPDATE from 1.0 to 1.1 keeps what 1.0 made: install
# 1.0, build windows and train a model with its API, update, and check the
# version, the stored model's predictions (bit for bit), bst_sequences'
# new min_len parameter and its unchanged 1.0-style calls, and that the
# updated install has the same functions and comments as a fresh CREATE
# EXTENSION bst.
# Needs the libpq environment of a running cluster with bst (1.0 and 1.1
# scripts) installed; prints PASS or FAIL and exits non-zero on failure.
set -euo pipefail
cd "$(dirname "$0")/../.."
old=bst_upgrade_old        # created at 1.0, then updated
new=bst_upgrade_new        # created fresh at the default version
verdict=

drop_databases() {
    PGOPTIONS="-c client_min_messages=warning" psql -X -q -d postgres \
        -c "DROP DATABASE IF EXISTS $old" -c "DROP DATABASE IF EXISTS $new"
}
# A step that fails before the checks (set -e) still ends in a verdict.
finish() {
    local rc=$?
    drop_databases || true
    [ -n "$verdict" ] || echo "test_upgrade: FAIL (a step failed, see above)"
    exit $rc
}
drop_databases
trap finish EXIT
psql -X -q -d postgres -c "CREATE DATABASE $old" -c "CREATE DATABASE $new"

q() { psql -X -At -v ON_ERROR_STOP=1 -d "$@"; }
# After the update a failing query is a failed check, not the end: its error
# becomes the value compared.
qa() { q "$@" 2>&1 || true; }

psql -X -q -o /dev/null -d $old -v ON_ERROR_STOP=1 <<'SQL'
SET client_min_messages = warning;
CREATE EXTENSION bst VERSION '1.0';
-- 30 users with 8 to 14 of 40 movies each; timestamps with ties.
CREATE TABLE ratings (user_id int, movie_id int, rating real, unix_timestamp bigint);
INSERT INTO ratings
SELECT u, m, 1 + (u * 3 + m * 7) % 5, (m * 31 + u) % 20
FROM generate_series(1, 30) u, generate_series(1, 40) m
WHERE (u * 7 + m * 13) % 40 < 8 + u % 7;
CREATE TABLE w AS SELECT row_number() OVER () AS id, * FROM bst_sequences('ratings');
SELECT bst_train('m', 'SELECT movie_ids, ratings FROM w', epochs => 1, history => NULL, vocabulary => NULL);
SQL

# A row exactly as 1.0 stored it: format-1 weights written by the 1.0 core
# (test/c/fixtures), metrics without the 1.1 fields.  Its predictions by the
# 1.0 core, one window at a time, are in the fixture beside it; its movie
# ids are 10, 13, 16, ... (vocabulary index k is id 7 + 3k; index 0, out of
# the vocabulary, is id 1 here).
fixture=test/c/fixtures
v1_hex=$(od -An -v -tx1 "$fixture/model_v1.bin" | tr -d ' \n')
q $old -q -c "INSERT INTO bst_models (name, version, config, metrics, weights)
              VALUES ('v1', 1, '{\"seq_len\": 4}', '{\"epochs\": [], \"train_mean_rating\": 3.0}',
                      decode('$v1_hex', 'hex'))"
v1_values=$(awk '!/^#/ { n++; printf "%s(%d, ARRAY[%d,%d,%d,%d], ARRAY[%s,%s,%s]::real[])", sep, n,
                          $1 ? 7 + 3 * $1 : 1, $2 ? 7 + 3 * $2 : 1, $3 ? 7 + 3 * $3 : 1,
                          $4 ? 7 + 3 * $4 : 1, $5, $6, $7; sep = ", " }' "$fixture/model_v1_predictions.txt")
v1_predictions_sql="SELECT string_agg(encode(float4send(bst_predict('v1', m, r)), 'hex'), ',' ORDER BY i)
                    FROM (VALUES $v1_values) v(i, m, r)"
v1_expected=$(awk '!/^#/ { printf "%s%s", sep, $8; sep = "," }' "$fixture/model_v1_predictions.txt")

# Windows of 1.0-style calls (positional and named), in the order returned.
windows_sql="
SELECT c.call || ' ' || (SELECT count(*) || ' ' || md5(coalesce(string_agg(s::text, ';'), ''))
                         FROM bst_sequences_fingerprint(c.call) s)
FROM unnest(ARRAY[
    \$\$bst_sequences('ratings')\$\$,
    \$\$bst_sequences('ratings', 3, 1, 'user_id', 'movie_id', 'rating', 'unix_timestamp')\$\$,
    \$\$bst_sequences('ratings', 5)\$\$,
    \$\$bst_sequences(source => 'ratings', seq_len => 6, step => 3, time_column => 'unix_timestamp')\$\$]) c(call)"
# A helper outside the extension: runs one call, rows as text in its order.
helper_sql="
CREATE FUNCTION bst_sequences_fingerprint(call text) RETURNS SETOF text LANGUAGE plpgsql AS \$\$
BEGIN RETURN QUERY EXECUTE 'SELECT s::text FROM ' || call || ' s'; END \$\$"
predictions_sql="
SELECT count(*) || ' ' || string_agg(encode(float4send(bst_predict('m', movie_ids, ratings)), 'hex'), ',' ORDER BY id)
FROM w"
weights_sql="SELECT string_agg(name || ':' || version || ':' || md5(weights), ',' ORDER BY model_id) FROM bst_models"
# The extension's functions, by signature, and in full (arguments with
# defaults, result, attributes, C symbol), from its pg_depend membership.
functions_sql="
SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'
FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid
WHERE d.classid = 'pg_proc'::regclass AND d.refclassid = 'pg_extension'::regclass
  AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'bst') AND d.deptype = 'e'
ORDER BY 1"
functions_full_sql="
SELECT p.proname || '(' || pg_get_function_arguments(p.oid) || ') ' || coalesce(pg_get_function_result(p.oid), '')
       || ' ' || concat_ws(' ', p.prokind, p.provolatile, p.proisstrict, p.proparallel, p.prorows,
                           p.prosrc, p.probin, p.prosecdef, p.proleakproof)
FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid
WHERE d.classid = 'pg_proc'::regclass AND d.refclassid = 'pg_extension'::regclass
  AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'bst') AND d.deptype = 'e'
ORDER BY 1"
members_sql="
SELECT pg_describe_object(classid, objid, objsubid) FROM pg_depend
WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
  AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'bst')
UNION ALL
SELECT 'config ' || c::regclass::text FROM pg_extension, unnest(extconfig) c WHERE extname = 'bst'
ORDER BY 1"
# The comments on the extension's members and their columns (what \dx+ bst,
# \df+ and \d+ show): the upgrade script must add those of a fresh install.
comments_sql="
SELECT pg_describe_object(d.classid, d.objid, c.objsubid) || ': ' || c.description
FROM pg_depend d JOIN pg_description c ON c.classoid = d.classid AND c.objoid = d.objid
WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
  AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'bst')
ORDER BY 1"
# The tables' columns, row-level security, policies and privileges, and the
# functions' privileges: the privilege model must be the same either way.
shape_sql="
SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || ' ' || a.attnotnull || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
WHERE c.relname IN ('bst_models', 'bst_model_grants')
UNION ALL
SELECT 'table ' || relname || ' rls ' || relrowsecurity || ' ' || coalesce(relacl::text, '')
FROM pg_class WHERE relname IN ('bst_models', 'bst_model_grants')
UNION ALL
SELECT 'policy ' || tablename || ' ' || policyname || ' ' || cmd || ' ' || roles::text || ' '
       || coalesce(qual, '') || ' ' || coalesce(with_check, '')
FROM pg_policies WHERE tablename IN ('bst_models', 'bst_model_grants')
UNION ALL
SELECT 'acl ' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ') ' || coalesce(p.proacl::text, '')
FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid
WHERE d.classid = 'pg_proc'::regclass AND d.refclassid = 'pg_extension'::regclass
  AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'bst') AND d.deptype = 'e'
ORDER BY 1"

q $old -q -c "$helper_sql"
version_before=$(q $old -c "SELECT extversion FROM pg_extension WHERE extname = 'bst'")
windows_before=$(q $old -c "$windows_sql")
predictions_before=$(q $old -c "$predictions_sql")
weights_before=$(q $old -c "$weights_sql")
v1_before=$(qa $old -c "$v1_predictions_sql")
min_len_before=$(qa $old -c "SELECT count(*) FROM bst_sequences('ratings', min_len => 2)")

# Before the update the 1.1 library serves 1.0's table, whose models have
# no owner to read a history as: a history relation another role owns (a
# view that could run its code) is refused, one the caller owns is read.
hostile_1_0=$(qa $old -c "SET client_min_messages = warning" \
    -c "DROP ROLE IF EXISTS regress_bst_upgrade_mallory" -c "CREATE ROLE regress_bst_upgrade_mallory" \
    -c "CREATE VIEW mallory_history AS SELECT * FROM ratings" \
    -c "ALTER VIEW mallory_history OWNER TO regress_bst_upgrade_mallory" \
    -c "INSERT INTO bst_models (name, version, config, metrics, history, weights)
        SELECT 'mallory', 1, config, metrics, 'public.mallory_history', weights FROM bst_models WHERE name = 'm'" \
    -c "SET bst.model = 'mallory'" -c "SELECT bst_predict(1, 10)")
own_1_0=$(qa $old -c "UPDATE bst_models SET history = 'public.ratings' WHERE name = 'mallory'" \
    -c "SET bst.model = 'mallory'" -c "SELECT bst_predict(1, 10) BETWEEN -10 AND 20")
q $old -q -c "DELETE FROM bst_models WHERE name = 'mallory'" -c "DROP VIEW mallory_history" \
    -c "DROP ROLE regress_bst_upgrade_mallory"

q $old -q -c "ALTER EXTENSION bst UPDATE TO '1.1'"

version_after=$(qa $old -c "SELECT extversion FROM pg_extension WHERE extname = 'bst'")
windows_after=$(qa $old -c "$windows_sql")
predictions_after=$(qa $old -c "$predictions_sql")
weights_after=$(qa $old -c "$weights_sql")
v1_after=$(qa $old -c "$v1_predictions_sql")
v1_short=$(qa $old -c "SELECT bst_predict('v1', '{10,13,16}', '{4,5}')")
signature_after=$(qa $old -c "SELECT pg_get_function_arguments(oid)
                             FROM pg_proc WHERE proname = 'bst_sequences'")
min_len_windows=$(qa $old -c "SELECT (SELECT count(*) FROM bst_sequences('ratings', step => 1, min_len => 2))
                                  - (SELECT count(*) - count(DISTINCT user_id) FROM ratings)")
functions_old=$(qa $old -c "$functions_sql")
functions_full_old=$(qa $old -c "$functions_full_sql")
members_old=$(qa $old -c "$members_sql")
comments_old=$(qa $old -c "$comments_sql")
shape_old=$(qa $old -c "$shape_sql")
# A format-1 row keeps its fallback rating in the metrics: an edit there is
# an error naming the field (format 3 keeps it in the weights).
v1_edited=$(qa $old -c "UPDATE bst_models SET metrics = jsonb_set(metrics, '{train_mean_rating}', '\"three\"')
                        WHERE name = 'v1'" -c "SELECT bst_predict('v1', '{10,13,16,19}', '{4,5,3}')")
owners_old=$(qa $old -c "SELECT string_agg(DISTINCT owner::text, ',') FROM bst_models")
# The epochs 1.0 recorded in metrics become bst_training_log rows.
log_old=$(qa $old -c "SELECT string_agg(format('%s:%s:%s', l.model, l.epoch, l.train_loss = (m.metrics->'epochs'->(l.epoch - 1)->>'loss')::float8), ',' ORDER BY l.model, l.epoch)
                      FROM bst_training_log l JOIN bst_models m USING (model_id)")
table_owner=$(qa $old -c "SELECT relowner::regrole FROM pg_class WHERE relname = 'bst_models'")

q $new -q -c "SET client_min_messages = warning" -c "CREATE EXTENSION bst"
version_new=$(qa $new -c "SELECT extversion FROM pg_extension WHERE extname = 'bst'")
functions_new=$(qa $new -c "$functions_sql")
functions_full_new=$(qa $new -c "$functions_full_sql")
members_new=$(qa $new -c "$members_sql")
comments_new=$(qa $new -c "$comments_sql")
shape_new=$(qa $new -c "$shape_sql")

status=0
check() {   # check DESCRIPTION 'CONDITION' (shell code, evaluated here)
    if eval "$2"; then echo "ok: $1"; else echo "not ok: $1"; status=1; fi
}
check "installed at 1.0 (extversion '$version_before')" '[ "$version_before" = 1.0 ]'
check "1.0's bst_sequences has no min_len" \
    'grep -q "ERROR:  function bst_sequences(unknown, min_len => integer) does not exist" <<<"$min_len_before"'
check "before the update, another role's history relation is refused" \
    'grep -q "history relation public.mallory_history of model \"mallory\" belongs to another role" <<<"$hostile_1_0"'
check "... and the caller's own is read" '[ "$(tail -n 1 <<<"$own_1_0")" = t ]'
check "extension version after the update is 1.1 ('$version_after')" '[ "$version_after" = 1.1 ]'
check "a fresh CREATE EXTENSION bst installs 1.1 ('$version_new')" '[ "$version_new" = 1.1 ]'
check "stored model unchanged ($weights_after)" \
    '[ -n "$weights_before" ] && [ "$weights_before" = "$weights_after" ]'
check "model trained under 1.0 predicts bit-identically after the update (${predictions_before%% *} windows)" \
    '[ "${predictions_before%% *}" -gt 100 ] && [ "$predictions_before" = "$predictions_after" ]'
check "a format-1 row of the 1.0 core predicts what the 1.0 core did, bit for bit, before and after" \
    '[ "$(tr , "\n" <<<"$v1_expected" | grep -c .)" = 20 ] && [ "$v1_before" = "$v1_expected" ] && [ "$v1_after" = "$v1_expected" ]'
check "... and, recording no shortest history, still takes full windows only" \
    'grep -q "needs at least 3 history ratings" <<<"$v1_short"'
min_len_last="time_column text DEFAULT 'unix_timestamp'::text, min_len integer DEFAULT NULL::integer, OUT user_id"
check "bst_sequences is declared once, with min_len last" \
    '[ "$(grep -c . <<<"$signature_after")" = 1 ] && grep -qF -- "$min_len_last" <<<"$signature_after"'
check "min_len works after the update (step 1, min_len 2 gives n - 1 windows per user: off by $min_len_windows)" \
    '[ "$min_len_windows" = 0 ]'
check "1.0-style bst_sequences calls give the same windows as before the update" \
    '[ "$(grep -c . <<<"$windows_before")" = 4 ] && [ "$windows_before" = "$windows_after" ]'
check "updated and fresh installs have the same function signatures ($(grep -c . <<<"$functions_new") functions)" \
    '[ -n "$functions_new" ] && [ "$functions_old" = "$functions_new" ]'
check "updated and fresh installs have the same function definitions (defaults, results, attributes)" \
    '[ -n "$functions_full_new" ] && [ "$functions_full_old" = "$functions_full_new" ]'
check "updated and fresh installs have the same member objects and dumped tables" \
    '[ -n "$members_new" ] && [ "$members_old" = "$members_new" ]'
check "updated and fresh installs have the same comments ($(grep -c . <<<"$comments_new") on members and columns)" \
    '[ -n "$comments_new" ] && [ "$comments_old" = "$comments_new" ]'
check "updated and fresh installs have the same columns, row-level security, policies and privileges ($(grep -c '^policy' <<<"$shape_new") policies)" \
    '[ "$(grep -c "^policy" <<<"$shape_new")" -ge 4 ] && [ "$shape_old" = "$shape_new" ]'
check "an edited fallback rating of a format-1 row is an error naming the field" \
    'grep -q "metrics->.train_mean_rating. of model \"v1\" version 1 is not a finite number: three" <<<"$v1_edited"'
check "the epochs of the 1.0 model are in bst_training_log ($log_old)" \
    '[ "$log_old" = "m:1:t" ]'
check "1.0 models belong to the owner of bst_models after the update ($owners_old)" \
    '[ -n "$table_owner" ] && [ "$owners_old" = "$table_owner" ]'

if [ $status != 0 ]; then
    echo "--- windows before the update"; printf '%s\n' "$windows_before"
    echo "--- windows after the update"; printf '%s\n' "$windows_after"
    echo "--- bst_sequences after the update: $signature_after"
    echo "--- members: updated 1.0 (<) vs fresh 1.1 (>)"
    diff <(printf '%s\n' "$functions_full_old" "$members_old" "$comments_old" "$shape_old") \
         <(printf '%s\n' "$functions_full_new" "$members_new" "$comments_new" "$shape_new") || true
fi
verdict=$([ $status = 0 ] && echo PASS || echo FAIL)
echo "test_upgrade: $verdict"
exit $status
