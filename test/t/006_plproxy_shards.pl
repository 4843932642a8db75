# Sharded serving: a router and two shards on local ports, with PL/Proxy.
# One server holds all the ratings and trains; its model tables reach the
# shards by logical replication; each shard holds the ratings of its users
# (user_id & 1); the router runs bst_predict and bst_recommend on the
# user's shard.  Routed results equal the single server's, and a new
# version trained there reaches the shards.  The SQL is the operator's
# (scripts/sharding.sh).
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use BstTap;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $sharding = "$FindBin::RealBin/../../scripts/sharding.sh";
sub sharding_sql { my @args = @_; my $sql = `bash $sharding @args`; die "sharding.sh @args failed" if $?; return $sql; }
sub shell_quote { my $s = shift; $s =~ s{'}{'\\''}g; return "'$s'"; }

my $single = bst_node('single', allows_streaming => 'logical');
bst_load_data($single);
bst_train($single, 'sharded', epochs => 2);
$single->safe_psql('postgres', sharding_sql('trainer'));

my @shards;
for my $n (0, 1)
{
	my $shard = bst_node("shard$n");
	my $rows = $single->safe_psql('postgres', qq{
SELECT string_agg(format('(%s, %s, %s, %s)', user_id, movie_id, rating, unix_timestamp), ', ')
FROM ratings WHERE user_id & 1 = $n});
	$shard->safe_psql('postgres', qq{
CREATE TABLE ratings (user_id int, movie_id int, rating real, unix_timestamp bigint);
INSERT INTO ratings VALUES $rows;
CREATE INDEX ON ratings (user_id, unix_timestamp, movie_id) INCLUDE (rating);
});
	$shard->safe_psql('postgres', sharding_sql('shard', shell_quote($single->connstr('postgres')), $n));
	$shard->wait_for_subscription_sync($single, "bst_models_shard$n");
	push @shards, $shard;
}
is($shards[0]->safe_psql('postgres', 'SELECT count(DISTINCT user_id) || \' \' || min(user_id & 1) FROM ratings'),
	'60 0', 'shard 0 holds the 60 even users');
is($shards[1]->safe_psql('postgres', 'SELECT count(DISTINCT user_id) || \' \' || min(user_id & 1) FROM ratings'),
	'60 1', 'shard 1 the 60 odd ones');
my $models = models_fingerprint($single);
is(models_fingerprint($_), $models, 'the shard has the trainer\'s model, byte for byte') for @shards;

my $router = PostgreSQL::Test::Cluster->new('router');
$router->init;
$router->start;
$router->safe_psql('postgres', sharding_sql('router', map { shell_quote($_->connstr('postgres')) } @shards));

# Every user, a few movies: routed predictions equal the single server's.
my $predictions = q{SELECT string_agg(format('%s:%s:%s', u, m, bst_predict(u, m)), ',' ORDER BY u, m)
                    FROM generate_series(1, 120) u, (VALUES (3), (17), (42)) v(m)};
my $routed = $router->safe_psql('postgres', $predictions);
is($routed, $single->safe_psql('postgres', "SET bst.threads = 1; $predictions"),
	'bst_predict through the router equals the single server for all 120 users');
my $recommend = q{SELECT string_agg(format('%s:%s:%s:%s', u, movie_id, score, rank), ',' ORDER BY u, rank)
                  FROM generate_series(1, 6) u, LATERAL bst_recommend(u, 5) r};
is($router->safe_psql('postgres', $recommend), $single->safe_psql('postgres', $recommend),
	'bst_recommend through the router equals the single server');

# A new version trained on the single server reaches the shards.
bst_train($single, 'sharded', epochs => 1, seed => 9);
$single->wait_for_catchup("bst_models_shard$_") for (0, 1);
my $after = $router->safe_psql('postgres', $predictions);
isnt($after, $routed, 'after a new version, routed predictions change');
is($after, $single->safe_psql('postgres', $predictions), 'to the new version\'s, as on the single server');

$_->stop for ($router, @shards, $single);
done_testing();
