-- Roles and models: who may train, predict and change what.  No model row
-- makes another role run code it chose; a model belongs to the role that
-- first trained it; training is refused before any work when its result
-- could not be stored.
SET client_min_messages = warning;
DO $$
DECLARE r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['regress_bst_alice', 'regress_bst_bob', 'regress_bst_carol'] LOOP
        IF EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('DROP OWNED BY %I CASCADE', r);
            EXECUTE format('DROP ROLE %I', r);
        END IF;
    END LOOP;
END $$;
CREATE ROLE regress_bst_alice;
CREATE ROLE regress_bst_bob;
CREATE ROLE regress_bst_carol;   -- may predict, not train

-- An error as "SQLSTATE: message HINT: hint", so the expected output
-- shows them all.
CREATE FUNCTION pg_temp.error_of(query text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    hint text;
BEGIN
    EXECUTE query;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS hint = PG_EXCEPTION_HINT;
    RETURN SQLSTATE || ': ' || SQLERRM || coalesce(nullif(' HINT: ' || hint, ' HINT: '), '');
END $$;
DELETE FROM bst_models;

-- 20 users with 12 ratings each of 30 movies.
CREATE TABLE sec_ratings (user_id int, movie_id int, rating real, unix_timestamp bigint);
INSERT INTO sec_ratings
SELECT u, 1 + (u * 7 + k * 11) % 30, 1 + (u + k) % 5, 100 * u + k
FROM generate_series(1, 20) u, generate_series(1, 12) k;
CREATE TABLE sec_windows AS SELECT * FROM bst_sequences('sec_ratings');
GRANT SELECT ON sec_ratings, sec_windows TO PUBLIC;

-- Who may train is granted, as the install script's comment says.
GRANT EXECUTE ON FUNCTION bst_train TO regress_bst_alice, regress_bst_bob;
GRANT INSERT, DELETE ON bst_models TO regress_bst_alice, regress_bst_bob;
CREATE SCHEMA alice AUTHORIZATION regress_bst_alice;

-- Alice trains a model whose history is her own view, which calls her own
-- functions: one tries to make her a superuser, one records who runs it.
SET ROLE regress_bst_alice;
CREATE TABLE alice.seen (who text, search_path text);
CREATE FUNCTION alice.escalate() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    ALTER ROLE regress_bst_alice SUPERUSER;
    RETURN true;
END $$;
CREATE FUNCTION alice.record() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO alice.seen VALUES (current_user, current_setting('search_path'));
    RETURN true;
END $$;
CREATE VIEW alice.evil_history AS SELECT * FROM public.sec_ratings WHERE alice.escalate();
CREATE VIEW alice.spy_history AS SELECT * FROM public.sec_ratings WHERE alice.record();
SELECT model, version FROM bst_train('alice_evil', 'SELECT movie_ids, ratings FROM public.sec_windows',
                                     epochs => 1, hidden => '{8,4}', vocabulary => NULL, movies => NULL, users => NULL,
                                     history => 'alice.evil_history');
SELECT model, version FROM bst_train('alice_spy', 'SELECT movie_ids, ratings FROM public.sec_windows',
                                     epochs => 1, hidden => '{8,4}', vocabulary => NULL, movies => NULL, users => NULL,
                                     history => 'alice.spy_history');
RESET ROLE;

-- A superuser with bst.model unset does not get "the latest model of
-- anyone": only its own.  It has none yet.
SHOW bst.model;
SELECT pg_temp.error_of('SELECT bst_predict(1, 5)');
SELECT model, version FROM bst_train('admin_model', 'SELECT movie_ids, ratings FROM sec_windows',
                                     epochs => 1, hidden => '{8,4}', vocabulary => NULL, movies => NULL, users => NULL,
                                     history => 'sec_ratings');
-- Alice trains again, later; the default still is the superuser's own.
SET ROLE regress_bst_alice;
SELECT version FROM bst_train('alice_spy', 'SELECT movie_ids, ratings FROM public.sec_windows',
                              epochs => 1, hidden => '{8,4}', vocabulary => NULL, movies => NULL, users => NULL,
                              history => 'alice.spy_history');
RESET ROLE;
SELECT bst_predict(1, 5) = (SELECT bst_predict('admin_model', 1, array_append(movie_ids, 5), ratings)
                            FROM (SELECT array_agg(movie_id ORDER BY unix_timestamp) AS movie_ids,
                                         array_agg(rating ORDER BY unix_timestamp) AS ratings
                                  FROM (SELECT * FROM sec_ratings WHERE user_id = 1
                                        ORDER BY unix_timestamp DESC LIMIT 3) l) h)
       AS default_is_own_model;

-- Asked for by name, alice's history runs as alice, not as the superuser:
-- her escalation fails, and the superuser stays the only superuser.
SET bst.model = 'alice_evil';
SELECT pg_temp.error_of('SELECT bst_predict(1, 5)');
SELECT rolsuper AS alice_is_superuser FROM pg_roles WHERE rolname = 'regress_bst_alice';
-- ... under a security-restricted operation with a search_path of
-- pg_catalog only (so her view's unqualified names cannot be steered).
SET bst.model = 'alice_spy';
SELECT bst_predict(1, 5) BETWEEN 1 AND 5 AS predicted;
SELECT DISTINCT who, search_path FROM alice.seen;
RESET bst.model;

-- Ownership: bob cannot add a version to alice's model, by bst_train or by
-- hand, nor see, use, change or drop it until she grants it.
SET ROLE regress_bst_bob;
SELECT pg_temp.error_of($q$SELECT bst_train('alice_spy', 'SELECT movie_ids, ratings FROM public.sec_windows',
                                            epochs => 1, vocabulary => NULL, movies => NULL, users => NULL, history => NULL)$q$);
SELECT pg_temp.error_of($q$INSERT INTO bst_models (name, version, config, metrics, weights)
                           VALUES ('alice_spy', 99, '{}', '{}', '\x00')$q$);
SELECT pg_temp.error_of($q$INSERT INTO bst_models (name, version, config, metrics, weights, owner)
                           VALUES ('alice_spy', 99, '{}', '{}', '\x00', 'regress_bst_alice')$q$);
SELECT count(*) AS models_bob_sees FROM bst_models;
SELECT pg_temp.error_of($q$SELECT bst_predict('alice_spy', '{1,2,3,4}', '{5,4,3}')$q$);
DELETE FROM bst_models WHERE name = 'alice_spy';
SELECT pg_temp.error_of($q$SELECT bst_grant('alice_spy', 'regress_bst_bob')$q$);
SELECT pg_temp.error_of($q$INSERT INTO bst_model_grants VALUES ('alice_spy', 'regress_bst_bob')$q$);
-- Bob's own model is his.
SELECT model, version FROM bst_train('bob_model', 'SELECT movie_ids, ratings FROM public.sec_windows',
                                     epochs => 1, hidden => '{8,4}', vocabulary => NULL, movies => NULL, users => NULL, history => NULL);
SELECT name, version, owner FROM bst_models ORDER BY name, version;
RESET ROLE;
SELECT name, version, owner FROM bst_models ORDER BY name, version;

-- Alice grants her model to bob, then to everyone, then takes it back.
SET ROLE regress_bst_alice;
SELECT bst_grant('alice_spy', 'regress_bst_bob');
SET ROLE regress_bst_bob;
SELECT bst_predict('alice_spy', '{1,2,3,4}', '{5,4,3}') BETWEEN 1 AND 5 AS bob_predicts;
SELECT name, version FROM bst_models WHERE name = 'alice_spy' ORDER BY version;
-- ... but not deploy, drop or delete it.
SELECT pg_temp.error_of($q$SELECT bst_deploy('alice_spy', 1)$q$);
SELECT pg_temp.error_of($q$SELECT bst_drop('alice_spy', 1)$q$);
SELECT pg_temp.error_of($q$INSERT INTO bst_deployments (model, version, strategy) VALUES ('alice_spy', 1, 'version')$q$);
DELETE FROM bst_models WHERE name = 'alice_spy';
SELECT count(*) AS alice_versions_bob_sees FROM bst_models WHERE name = 'alice_spy';
SET ROLE regress_bst_carol;
SELECT pg_temp.error_of($q$SELECT bst_predict('alice_spy', '{1,2,3,4}', '{5,4,3}')$q$);
SET ROLE regress_bst_alice;
SELECT bst_grant('alice_spy', 'public');
SELECT model, grantee FROM bst_model_grants ORDER BY grantee NULLS FIRST;
SET ROLE regress_bst_carol;
SELECT bst_predict('alice_spy', '{1,2,3,4}', '{5,4,3}') BETWEEN 1 AND 5 AS carol_predicts;
SET ROLE regress_bst_alice;
SELECT bst_revoke('alice_spy', 'public');
SELECT bst_revoke('alice_spy', 'regress_bst_bob');
SET ROLE regress_bst_bob;
SELECT pg_temp.error_of($q$SELECT bst_predict('alice_spy', '{1,2,3,4}', '{5,4,3}')$q$);
-- A role with alice's privileges (a member of her role) may add versions.
RESET ROLE;
GRANT regress_bst_alice TO regress_bst_bob;
SET ROLE regress_bst_bob;
SELECT version FROM bst_train('alice_spy', 'SELECT movie_ids, ratings FROM public.sec_windows',
                              epochs => 1, hidden => '{8,4}', vocabulary => NULL, movies => NULL, users => NULL, history => NULL);
SELECT name, version, owner FROM bst_models WHERE name = 'alice_spy' ORDER BY version;
RESET ROLE;
REVOKE regress_bst_alice FROM regress_bst_bob;

-- Refused before any work (no NOTICE of the training's start): a role that
-- may not insert into bst_models, a read-only transaction, a name too long
-- for the index.
SET client_min_messages = notice;
SET ROLE regress_bst_carol;
SELECT pg_temp.error_of($q$SELECT bst_train('carol_model', 'SELECT movie_ids, ratings FROM public.sec_windows',
                                            history => NULL, vocabulary => NULL, movies => NULL, users => NULL)$q$);
RESET ROLE;
GRANT EXECUTE ON FUNCTION bst_train TO regress_bst_carol;
SET ROLE regress_bst_carol;
SELECT pg_temp.error_of($q$SELECT bst_train('carol_model', 'SELECT movie_ids, ratings FROM public.sec_windows',
                                            history => NULL, vocabulary => NULL, movies => NULL, users => NULL)$q$);
RESET ROLE;
BEGIN READ ONLY;
SELECT pg_temp.error_of($q$SELECT bst_train('ro_model', 'SELECT movie_ids, ratings FROM sec_windows',
                                            history => NULL, vocabulary => NULL, movies => NULL, users => NULL)$q$);
ROLLBACK;
SELECT pg_temp.error_of(format($q$SELECT bst_train(%L, 'SELECT movie_ids, ratings FROM sec_windows',
                                                   history => NULL, vocabulary => NULL, movies => NULL, users => NULL)$q$, repeat('x', 1025)));
-- (the longest name is stored)
SET client_min_messages = warning;
SELECT version FROM bst_train(repeat('x', 1024), 'SELECT movie_ids, ratings FROM sec_windows',
                              epochs => 1, hidden => '{8,4}', history => NULL, vocabulary => NULL, movies => NULL, users => NULL);
SET client_min_messages = notice;
-- ... and a history the model's owner may not read.
CREATE TABLE secret_ratings (LIKE sec_ratings);
SET ROLE regress_bst_alice;
SELECT pg_temp.error_of($q$SELECT bst_train('alice_other', 'SELECT movie_ids, ratings FROM public.sec_windows',
                                            history => 'public.secret_ratings', vocabulary => NULL, movies => NULL, users => NULL)$q$);
RESET ROLE;
SET client_min_messages = warning;

-- An empty model name is an error everywhere; a long one is shortened in
-- messages; a quote in a name is quoted in the hint.
SELECT pg_temp.error_of($q$SELECT bst_predict('', '{1,2,3,4}', '{5,4,3}')$q$);
SELECT pg_temp.error_of($q$SELECT * FROM bst_evaluate('', 'SELECT movie_ids, ratings FROM sec_windows')$q$);
SELECT pg_temp.error_of($q$SELECT bst_predict('', 1, '{1,2,3,4}', '{5,4,3}')$q$);
SELECT pg_temp.error_of(format($q$SELECT bst_predict(%L, '{1,2,3,4}', '{5,4,3}')$q$, repeat('y', 300)));
SELECT pg_temp.error_of($q$SELECT bst_predict('it''s', '{1,2,3,4}', '{5,4,3}')$q$);

DELETE FROM bst_models;
DELETE FROM bst_model_grants;
DROP SCHEMA alice CASCADE;
DROP TABLE sec_ratings, sec_windows, secret_ratings;
REVOKE ALL ON bst_models FROM regress_bst_alice, regress_bst_bob, regress_bst_carol;
REVOKE ALL ON FUNCTION bst_train FROM regress_bst_alice, regress_bst_bob, regress_bst_carol;
DROP ROLE regress_bst_alice, regress_bst_bob, regress_bst_carol;
