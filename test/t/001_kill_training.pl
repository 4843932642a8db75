# kill -9 of a backend in the middle of bst_train: the postmaster restarts
# the cluster and runs crash recovery; afterwards every earlier version of
# every model is byte for byte what it was, the killed training left no
# version, predictions are the same, and training works again.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use BstTap;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

# PostgreSQL::Test::Cluster turns restart_after_crash off; the server's default
# is on.  No timed checkpoint during the test: recovery replays every model.
my $node = bst_node('primary', extra_conf => "restart_after_crash = on\ncheckpoint_timeout = 1h\n");
bst_load_data($node);

# Earlier versions: two of one model, one of another, one a default-preset
# model (bias and factor terms, user ids, early stopping).  No checkpoint
# after them: crash recovery has to replay their WAL.
bst_train($node, 'keras', epochs => 2);
bst_train($node, 'keras', epochs => 1, seed => 7);
bst_train($node, 'other', epochs => 1, seed => 3);
$node->safe_psql('postgres', q{
SET client_min_messages = warning;
SELECT version FROM bst_train('full', 'SELECT user_id, movie_ids, ratings FROM windows', epochs => 3,
                              hidden => '{16}', validation_fraction => 0.2)});

my $models_before      = models_fingerprint($node);
my $predictions_before = predictions_fingerprint($node);
is(scalar(split /\n/, $models_before), 4, 'four versions stored before the crash');
note "before:\n$models_before\n$predictions_before";

# A training of 10000 epochs (minutes): wait for its third epoch, so that it
# is well inside the training loop, then SIGKILL its backend.
my $trainer = start_session($node, 'bst_tap_trainer');
my $progress = session_wait_stderr($trainer, bst_train_sql('keras', epochs => 10000, seed => 99),
	qr/epoch 3\/10000/);
like($progress, qr/bst_train "keras": epoch 1\/10000/, 'the long training is in its epochs');

my $pid = $node->safe_psql('postgres', q{
SELECT pid FROM pg_stat_activity
WHERE application_name = 'bst_tap_trainer' AND state = 'active' AND query LIKE '%bst_train(%'});
like($pid, qr/^\d+$/, "one active backend runs bst_train (pid $pid)");
my $log_offset = -s $node->logfile;
is(kill('KILL', $pid), 1, 'SIGKILL sent to the training backend');

# psql loses its connection in the middle of the statement.
$trainer->{run}->finish;
like($trainer->{stderr}, qr/server closed the connection unexpectedly|connection to server was lost/,
	'the training session lost its server mid-statement');
unlike($trainer->{stderr}, qr/epoch 10000\/10000/, 'the training did not finish');

# The postmaster notices, restarts every backend and recovers.
$node->wait_for_log(qr/server process \(PID $pid\) was terminated by signal 9/, $log_offset);
$node->wait_for_log(qr/all server processes terminated; reinitializing/, $log_offset);
$node->poll_query_until('postgres', 'SELECT true')
  or die 'the server does not accept connections after the crash';
ok($node->log_contains(qr/database system was not properly shut down; automatic recovery in progress/,
		$log_offset),
	'crash recovery ran');
is($node->safe_psql('postgres', 'SELECT 1'), '1', 'the server accepts connections again');

is(models_fingerprint($node), $models_before,
	'every earlier version is byte for byte unchanged (weights and whole rows), and no new version');
is($node->safe_psql('postgres', q{SELECT max(version) FROM bst_models WHERE name = 'keras'}),
	'2', 'the killed training stored no version');
is(predictions_fingerprint($node), $predictions_before,
	'predictions and evaluations are the same as before the crash');

# A training after the restart stores the next version.
is(bst_train($node, 'keras', epochs => 1, seed => 5), '3', 'training after the restart stores version 3');

$node->stop;
done_testing();
