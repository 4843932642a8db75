# A hot standby (streaming replica): the models arrive by WAL; prediction,
# evaluation and recommendations on the standby give the primary's values
# bit for bit; a new version or a deployment on the primary is used by a
# standby session at its next statement after replay; and bst_train is
# refused up front (SQLSTATE 25006, "... during recovery"): before it runs
# its training query, so before any epoch.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use BstTap;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use List::Util;

my $primary = bst_node('primary', allows_streaming => 1);
bst_load_data($primary);
bst_train($primary, 'keras', epochs => 5);

$primary->backup('backup');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'backup', has_streaming => 1);
$standby->start;

# Versions trained after the backup reach the standby by streaming.
bst_train($primary, 'keras', epochs => 1, seed => 7);
bst_train($primary, 'other', epochs => 1, seed => 3);
$primary->wait_for_catchup($standby, 'replay', $primary->lsn('insert'));

is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'the standby is in recovery');
my $models = models_fingerprint($primary);
is(scalar(split /\n/, $models), 3, 'three versions on the primary');
is(models_fingerprint($standby), $models, 'the standby has every version, byte for byte');
my $predictions = predictions_fingerprint($primary);
note "primary:\n$predictions";
is(predictions_fingerprint($standby), $predictions,
	'prediction and evaluation on the standby give the primary\'s values');

# The training refused on the standby would take many seconds: 300 epochs,
# each as long as the primary's epochs of this model.
my $epoch_seconds = $primary->safe_psql('postgres', q{
SELECT avg((e->>'seconds')::float8) FROM bst_models, jsonb_array_elements(metrics->'epochs') e
WHERE name = 'keras'});
my $would_take = 300 * $epoch_seconds;
note "an epoch takes $epoch_seconds s here: 300 would take about $would_take s";

# One session: a prediction first (the library is loaded, the session warm),
# then the training, then a prediction again.
my ($keras_line) = grep { /^keras: / } split /\n/, $predictions;
my $keras_window = (split / /, $keras_line)[1] . "\n";
my $predict = q{SELECT bst_predict('keras', '{1,2,3,4}'::int[], '{5,4,3}'::real[])};
my $s = start_session($standby, 'bst_tap_standby');
my $r = session_query($s, $predict);
is($r->{stdout}, $keras_window, 'a standby session predicts');

$r = session_query($s, bst_train_sql('keras', epochs => 300, seed => 99,
		query => 'SELECT movie_ids, ratings FROM windows WHERE (SELECT tap_seen())'));
my @stderr = split /\n/, $r->{stderr};
note sprintf("refused after %.3f s:\n%s", $r->{seconds},
	join("\n", @stderr <= 6 ? @stderr : (@stderr[0 .. 2], '...', @stderr[-2, -1])));
is($r->{sqlstate}, '25006', 'bst_train on the standby fails with SQLSTATE 25006 (read_only_sql_transaction)');
like($r->{message}, qr/\brecovery\b/,
	'because the server is in recovery ("cannot execute bst_train() during recovery")');
unlike($r->{stderr}, qr/tap_seen: the training query ran/, 'refused before the training query runs');
unlike($r->{stderr}, qr/NOTICE:  bst_train/, 'refused before training starts: no bst_train NOTICE at all');
# (At least 2 s: a loaded host can stall any round trip that long.)
cmp_ok($r->{seconds}, '<', List::Util::max(2, $would_take / 10),
	'refused in under a tenth of the time the training would take (at least 2 s)');

# The session is still good for predictions.
$r = session_query($s, $predict);
is($r->{sqlstate}, '00000', 'the standby session still predicts after the refusal');
is($r->{stdout}, $keras_window, 'the same value as the primary');

is(models_fingerprint($primary), $models, 'no version was added on the primary');
is(models_fingerprint($standby), $models, 'nor on the standby');

# bst_recommend on the standby, from the user's history there.
my $recommend = q{SELECT string_agg(movie_id || ':' || score, ',' ORDER BY rank) FROM bst_recommend(5, 10, model => 'keras')};
my $recommended = $primary->safe_psql('postgres', "SET bst.threads = 1; $recommend");
$r = session_query($s, $recommend);
is($r->{sqlstate}, '00000', 'bst_recommend runs on the standby');
is($r->{stdout}, "$recommended\n", 'and ranks as on the primary, with the same scores');

# A version trained on the primary is used by the standby session at its
# next statement after replay, and a deployment likewise.
bst_train($primary, 'keras', epochs => 2, seed => 21);
$primary->wait_for_catchup($standby, 'replay', $primary->lsn('insert'));
my $new_window = $primary->safe_psql('postgres', $predict);
isnt("$new_window\n", $keras_window, 'the primary predicts differently with its new version');
$r = session_query($s, $predict);
is($r->{stdout}, "$new_window\n", 'the standby session uses the new version at its next statement');
$primary->safe_psql('postgres', q{SELECT bst_deploy('keras', 2)});
$primary->wait_for_catchup($standby, 'replay', $primary->lsn('insert'));
$r = session_query($s, $predict);
is($r->{stdout}, $keras_window, 'and the version deployed on the primary (2, the earlier latest), after replay');

$s->{stdin} .= "\\q\n";
$s->{run}->finish;
$standby->stop;
$primary->stop;
done_testing();
