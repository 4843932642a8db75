# Watching a training from another session: bst_training_progress shows a
# running bst_train's model, epoch, batch, running loss and elapsed time,
# refreshed as it goes, and nothing once it has ended; bst_training_log then
# holds its epochs.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use BstTap;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $node = bst_node('progress');
bst_load_data($node);

# A name beyond ASCII, to check the view decodes it.
my $model = 'wätched';
my $s   = start_session($node, 'bst_tap_progress');
my $pid = session_query($s, 'SELECT pg_backend_pid()')->{stdout};
chomp $pid;
session_wait_stderr($s, bst_train_sql($model, epochs => 10000), qr/epoch 2\/10000/);

# Before an epoch's first batch there is no running loss yet: NULL then.
my $progress = qq{SELECT pid, model, epoch, epochs, batch, batches,
                         CASE WHEN batch = 0 THEN running_loss IS NULL
                              ELSE running_loss > 0 AND running_loss < 100 END,
                         windows, extract(epoch FROM elapsed) FROM bst_training_progress};
my @first = split /\|/, $node->safe_psql('postgres', $progress);
is($first[0], $pid, 'another session sees the training backend');
is($first[1], $model, 'and its model, by name');
cmp_ok($first[2], '>=', 2, 'in its epoch 2 or later');
is($first[3], 10000, 'of the 10,000 asked for');
is($first[5], 75, 'with 75 batches per epoch (2,400 windows in batches of 32)');
cmp_ok($first[4], '<', $first[5], 'the batch is within the epoch');
is($first[6], 't', 'a running loss in range (NULL before the epoch\'s first batch)');
is($first[7], 2400, 'over 2,400 windows');

# A second later it has moved on (waiting longer if the host stalled it).
my $position = $first[2] * 75 + $first[4];
usleep(1_200_000);
ok($node->poll_query_until('postgres',
		"SELECT epoch * 75 + batch > $position FROM bst_training_progress"),
	'a second later it has moved on');
my @second = split /\|/, $node->safe_psql('postgres', $progress);
cmp_ok($second[8] - $first[8], '>=', 1.1, 'and the elapsed time grew by the time that passed');

$node->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
my $r = session_query($s, 'SELECT 1');
is($node->safe_psql('postgres', 'SELECT count(*) FROM bst_training_progress'), '0',
	'a cancelled training leaves no progress behind');

# A finished training: its epochs in bst_training_log, none in progress.
$r = session_query($s, bst_train_sql($model, epochs => 3));
is($r->{sqlstate}, '00000', 'a short training finishes');
is($node->safe_psql('postgres', 'SELECT count(*) FROM bst_training_progress'), '0',
	'and leaves no progress behind');
is($node->safe_psql('postgres', qq{SELECT string_agg(epoch::text, ',' ORDER BY epoch) FROM bst_training_log WHERE model = '$model'}),
	'1,2,3', 'its three epochs are in bst_training_log');

$s->{stdin} .= "\\q\n";
$s->{run}->finish;
$node->stop;
done_testing();
