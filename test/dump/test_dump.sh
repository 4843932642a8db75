#!/usr/bin/env bash
# pg_dump keeps the models: train a small model, dump the database, restore
# it into a new one, and compare the weights, owners, grants, training log,
# deployments and a prediction (of the deployed version).
# Needs the libpq environment of a running cluster with bst installed.
set -euo pipefail
cd "$(dirname "$0")/../.."
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
src=bst_dump_src
dst=bst_dump_dst
dump=$(mktemp /tmp/bst-dump.XXXXXX.sql)
trap 'rm -f "$dump"' EXIT

PGOPTIONS="-c client_min_messages=warning" psql -X -q -d postgres \
     -c "DROP DATABASE IF EXISTS $src" -c "DROP DATABASE IF EXISTS $dst" \
     -c "CREATE DATABASE $src" -c "CREATE DATABASE $dst"
psql -X -q -o /dev/null -d $src -v ON_ERROR_STOP=1 <<'SQL'
SET client_min_messages = warning;
CREATE EXTENSION bst;
CREATE TABLE ratings (user_id int, movie_id int, rating real, unix_timestamp bigint);
INSERT INTO ratings SELECT u, 1 + (u * 7 + k * 13) % 30, 1 + (u + k) % 5, k
FROM generate_series(1, 20) u, generate_series(1, 12) k;
SELECT bst_train('dumped', 'SELECT movie_ids, ratings FROM bst_sequences(''ratings'')',
                 epochs => 2, hidden => '{8}', vocabulary => NULL);
SELECT bst_train('dumped', 'SELECT movie_ids, ratings FROM bst_sequences(''ratings'')',
                 epochs => 1, hidden => '{8}', vocabulary => NULL, seed => 3);
SELECT bst_grant('dumped', 'public');
SELECT bst_deploy('dumped', 1);
SQL
"$PG_BIN/pg_dump" -d $src -f "$dump"
psql -X -q -d $dst -v ON_ERROR_STOP=1 -f "$dump" >/dev/null

fingerprint="SELECT string_agg(name || ':' || version || ':' || owner || ':' || md5(weights), ',' ORDER BY name, version)
                    || ' ' || bst_predict('dumped', '{1,2,3,4}', '{5,4,3}')
                    || ' grants ' || (SELECT string_agg(model || ':' || coalesce(grantee::text, 'PUBLIC'), ',')
                                      FROM bst_model_grants)
                    || ' log ' || (SELECT count(*) || ':' || sum(epoch) FROM bst_training_log)
                    || ' deployed ' || (SELECT string_agg(model || ':' || version, ',') FROM bst_deployments) FROM bst_models"
before=$(psql -X -At -d $src -c "$fingerprint")
after=$(psql -X -At -d $dst -c "$fingerprint")
next=$(PGOPTIONS="-c client_min_messages=warning" psql -X -At -d $dst -c "
    SELECT version FROM bst_train('dumped', 'SELECT movie_ids, ratings FROM bst_sequences(''ratings'')',
                                  epochs => 1, hidden => '{8}', vocabulary => NULL)")
psql -X -q -d postgres -c "DROP DATABASE $src" -c "DROP DATABASE $dst"

status=0
if [ -n "$before" ] && [ "$before" = "$after" ]; then echo "ok: restored models equal the dumped ones ($after)"
else echo "not ok: dumped '$before', restored '$after'"; status=1; fi
if [ "$next" = 3 ]; then echo "ok: training after the restore stores version 3"
else echo "not ok: training after the restore stored version '$next', expected 3"; status=1; fi
echo "test_dump: $([ $status = 0 ] && echo passed || echo FAILED)"
exit $status
