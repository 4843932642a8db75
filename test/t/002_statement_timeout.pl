# statement_timeout in the middle of bst_train: the training is cancelled
# with SQLSTATE 57014 long before it would end, the earlier versions are
# untouched, and the same session trains again afterwards; a training whose
# windows are in temporary files likewise, and its files go.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use BstTap;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = bst_node('primary');
bst_load_data($node);

bst_train($node, 'keras', epochs => 2);
bst_train($node, 'keras', epochs => 1, seed => 7);
bst_train($node, 'other', epochs => 1, seed => 3);
my $models_before      = models_fingerprint($node);
my $predictions_before = predictions_fingerprint($node);

my $s = start_session($node, 'bst_tap_timeout');
my $r = session_query($s, "SET statement_timeout = '1500ms'");
is($r->{sqlstate}, '00000', 'statement_timeout set');

$r = session_query($s, bst_train_sql('keras', epochs => 10000, seed => 99));
my @epochs = $r->{stderr} =~ /bst_train "keras": epoch (\d+)\/10000/g;
my $last_epoch = $epochs[-1] // 0;
note sprintf('cancelled after %.2f s, in epoch %d of 10000; the last lines:%s', $r->{seconds}, $last_epoch + 1,
	join('', map { "\n$_" } (split /\n/, $r->{stderr})[-2, -1]));
is($r->{sqlstate}, '57014', 'bst_train is cancelled with SQLSTATE 57014 (query_canceled)');
like($r->{message}, qr/canceling statement due to statement timeout/, 'by the statement timeout');
cmp_ok($last_epoch, '>=', 1, 'the cancel came in the middle of the epochs');
cmp_ok($last_epoch, '<', 5000, 'long before the training would have finished');
# 1.5 s of timeout plus the time to notice it: checked every batch.
cmp_ok($r->{seconds}, '<', 1.5 + 3, 'the cancel takes effect within seconds of the timeout');
cmp_ok($r->{seconds}, '>=', 1.4, 'and not before the timeout');

is(models_fingerprint($node), $models_before,
	'every earlier version is byte for byte unchanged, and no new version');
is(predictions_fingerprint($node), $predictions_before, 'predictions are the same');

# The same session goes on: the next bst_train stores version 3.
$r = session_query($s, 'RESET statement_timeout');
$r = session_query($s, bst_train_sql('keras', epochs => 2, seed => 11) =~ s/^SELECT \*/SELECT version/r);
is($r->{sqlstate}, '00000', 'a training afterwards in the same session succeeds');
is($r->{stdout}, "3\n", 'and stores version 3');
like($r->{stderr}, qr/epoch 2\/2/, 'running both its epochs');
is($node->safe_psql('postgres', q{SELECT string_agg(version::text, ',' ORDER BY version) FROM bst_models WHERE name = 'keras'}),
	'1,2,3', 'versions 1, 2 and 3 of the model are stored');

# A training whose windows are kept in temporary files (48,000 windows of
# about 4 MB under a 2 MB limit) is cancelled as promptly, mid-epoch, and
# leaves neither a version nor a temporary file behind.  Its epochs are 20
# times longer: a longer timeout, so that a slow host still finishes one.
my $spill_timeout = 6;
$models_before = models_fingerprint($node);
session_query($s, "SET bst.train_memory = '2MB'");
session_query($s, "SET statement_timeout = '${spill_timeout}s'");
$r = session_query($s, bst_train_sql('spilled', epochs => 10000,
		query => 'SELECT movie_ids, ratings FROM windows, generate_series(1, 20)'));
like($r->{stderr}, qr/its 48000 windows .* are kept in temporary files and trained on \d+ at a time/,
	'the windows are kept in temporary files');
is($r->{sqlstate}, '57014', 'that training is cancelled with SQLSTATE 57014 too');
my @spilled_epochs = $r->{stderr} =~ /bst_train "spilled": epoch (\d+)\/10000/g;
note 'the spilled training was cancelled in epoch ' . (($spilled_epochs[-1] // 0) + 1);
cmp_ok(scalar @spilled_epochs, '>=', 1, 'after at least one epoch from the files');
cmp_ok($r->{seconds}, '<', $spill_timeout + 3, 'within seconds of the timeout');
unlike($r->{stderr}, qr/temporary file leak/, 'without a leaked temporary file');
is(models_fingerprint($node), $models_before, 'no version of it is stored, the others unchanged');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_ls_tmpdir()}), '0',
	'and no temporary file is left in the tablespace');

$s->{stdin} .= "\\q\n";
$s->{run}->finish;
$node->stop;
done_testing();
