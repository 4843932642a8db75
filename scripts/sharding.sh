#!/usr/bin/env bash
# SQL that sets up sharded serving of bst models with PL/Proxy and logical
# replication (README, "Beyond one server"), printed for psql:
#   scripts/sharding.sh trainer                      | psql -d bst  (on the training server)
#   scripts/sharding.sh shard 'TRAINER_CONNINFO' N   | psql -d bst  (on shard N)
#   scripts/sharding.sh router 'SHARD0' 'SHARD1' ... | psql -d app  (on the router)
# The training server publishes the model tables; each shard, which holds the
# ratings of its users (user_id & (N - 1) = shard number, N a power of 2, as
# PL/Proxy's RUN ON requires) and runs bst, subscribes to them; the router
# runs bst_predict and bst_recommend on the user's shard.
set -euo pipefail

# What a shard needs of the trainer: the versions, their log, deployments
# and grants.  Owners replicate by role name (regrole's text form), so the
# roles must exist on the shards.
MODEL_TABLES="bst_models, bst_training_log, bst_deployments, bst_model_grants"

sql_quote() { printf "'%s'" "${1//\'/\'\'}"; }

case "${1:-}" in
trainer)
    cat <<SQL
CREATE PUBLICATION bst_models FOR TABLE $MODEL_TABLES;
SQL
    ;;
shard)
    [ $# = 3 ] && [[ $3 =~ ^[0-9]+$ ]] || { echo "usage: $0 shard TRAINER_CONNINFO SHARD_NUMBER" >&2; exit 2; }
    # One subscription, hence one replication slot on the trainer, per shard.
    cat <<SQL
CREATE EXTENSION IF NOT EXISTS bst;
-- The trainer's rows arrive as they are (model_id included); nothing is
-- trained here, so the shard's own identity sequence is never used.
CREATE SUBSCRIPTION bst_models_shard$3 CONNECTION $(sql_quote "$2") PUBLICATION bst_models;
SQL
    ;;
router)
    shift
    n=$#
    if [ "$n" -lt 1 ] || [ $((n & (n - 1))) != 0 ]; then
        echo "router: give 1, 2, 4, ... shard conninfos (PL/Proxy needs a power of 2)" >&2
        exit 2
    fi
    options=""
    i=0
    for conninfo in "$@"; do
        options="$options${options:+, }p$i $(sql_quote "$conninfo")"
        i=$((i + 1))
    done
    cat <<SQL
CREATE EXTENSION IF NOT EXISTS plproxy;
CREATE SERVER bst_shards FOREIGN DATA WRAPPER plproxy OPTIONS ($options);
CREATE USER MAPPING FOR PUBLIC SERVER bst_shards;
-- Each runs the same function on the shard that holds the user's history:
-- partition user_id & (N - 1).
CREATE FUNCTION bst_predict(user_id integer, movie_id integer) RETURNS real
LANGUAGE plproxy AS \$\$
    CLUSTER 'bst_shards';
    RUN ON user_id;
\$\$;
CREATE FUNCTION bst_recommend(user_id integer, k integer DEFAULT 10, exclude_rated boolean DEFAULT true,
                              model text DEFAULT NULL)
RETURNS TABLE (movie_id integer, score real, rank integer)
LANGUAGE plproxy AS \$\$
    CLUSTER 'bst_shards';
    RUN ON user_id;
\$\$;
SQL
    ;;
*)
    echo "usage: $0 trainer | shard TRAINER_CONNINFO SHARD_NUMBER | router SHARD_CONNINFO..." >&2
    exit 2
    ;;
esac
