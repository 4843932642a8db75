# Bounded memory on any input.  Each case runs in a backend whose address
# space is limited (prlimit --as), and checks the error or the result, the
# memory the backend's bst contexts hold, and the backend's peak resident
# size (VmHWM):
# - a training whose activations would take most of a gigabyte (one window
#   of 1024 movies) is refused with 54000 before anything is allocated;
# - a training on 3,000,000 windows (120 MB packed) is refused with 54000
#   while they are read, at the first window past maintenance_work_mem's
#   64 MB, its windows never held beyond that (before, it read them all,
#   held them twice, 250 MB, and trained);
# - one prediction with a model of 1024-movie windows and 4 heads holds a
#   predictor of at most 64 MB, not one sized for 256 such windows;
# - nine models used in turn, row after row, stay within
#   bst.model_cache_memory, and more rows do not need more memory.
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use BstTap;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

# Far above what any case needs when memory is bounded, far below what the
# unbounded cases took (8.4 GB for the predictor, 3.75 GB for the training).
my $address_space_limit = 1536 * 1024 * 1024;

my $node = bst_node('memory');
bst_load_data($node);

# A session whose backend runs under the address-space limit.
sub limited_session
{
	my ($name) = @_;
	my $s   = start_session($node, $name);
	my $pid = session_query($s, 'SELECT pg_backend_pid()')->{stdout};
	chomp $pid;
	system('prlimit', "--pid=$pid", "--as=$address_space_limit") == 0
	  or die "prlimit failed for backend $pid";
	return ($s, $pid);
}

# The peak resident set of a process, in MB.
sub peak_mb
{
	my ($pid) = @_;
	open my $f, '<', "/proc/$pid/status" or die "no /proc/$pid/status: $!";
	while (<$f>)
	{
		return $1 / 1024 if /^VmHWM:\s+(\d+) kB/;
	}
	die "no VmHWM for $pid";
}

# Bytes the backend's bst model contexts hold, in MB.
sub model_context_mb
{
	my ($s) = @_;
	my $r = session_query($s,
		q{SELECT coalesce(sum(total_bytes), 0) / 1048576.0 FROM pg_backend_memory_contexts WHERE name = 'bst model'});
	chomp $r->{stdout};
	return $r->{stdout};
}

# 1. The training estimate refuses before allocating.
my ($s, $pid) = limited_session('bst_tap_memory_train');
my $r = session_query($s,
	q{SELECT * FROM bst_train('huge', 'SELECT array_agg(m) AS movie_ids, array_agg(4::real) AS ratings FROM generate_series(1, 1024) m',
	                         batch_size => 16, early_stopping => false, vocabulary => NULL, history => NULL)});
is($r->{sqlstate}, '54000', 'a training of 1024-movie windows in batches of 16 is refused with 54000');
like($r->{message}, qr/needs \d+ MB of memory, more than the limit of 64 MB/,
	'naming what it needs and the limit (maintenance_work_mem by default)');
unlike($r->{stderr}, qr/bst_train "huge": epoch/, 'before any epoch');
cmp_ok(peak_mb($pid), '<', 200, 'the backend never held more than 200 MB');
session_query($s, '\q');

# 1b. Windows beyond the limit go to temporary files: 3,000,000 windows of
# 4 movies (120 MB packed) train under maintenance_work_mem's 64 MB, with a
# bucket of them in memory at a time.  Held in memory, they alone would
# take the backend past 120 MB.
($s, $pid) = limited_session('bst_tap_memory_windows');
$r = session_query($s,
	q{SELECT training_rows FROM bst_train('many', 'SELECT ARRAY[1 + a % 100, 2, 3, 4] AS movie_ids, ''{4,3,5,4}''::real[] AS ratings
	                                  FROM generate_series(1, 3000) a, generate_series(1, 1000) b',
	                         epochs => 1, hidden => '{4}', embed_dim => 2, heads => 1, batch_size => 1024,
	                         vocabulary => NULL, history => NULL)});
is($r->{sqlstate}, '00000', 'a training on 3,000,000 windows of 120 MB runs under a 64 MB limit');
like($r->{stdout}, qr/^2700000$/m, 'on all of them: 90% for training, the rest for validation');
like($r->{stderr}, qr/its 3000000 windows \(\d+ MB\) do not fit in memory .* within the limit of 64 MB: they are kept in temporary files and trained on \d+ at a time/,
	'saying so');
like($r->{stderr}, qr/bst_train "many": epoch 1\/1: .*validation mae/, 'through an epoch and its validation');
my $windows_peak = peak_mb($pid);
note "the backend held at most $windows_peak MB";
cmp_ok($windows_peak, '<', 110, 'the backend never held more than 110 MB (a 64 MB limit)');
$r = session_query($s, q{SELECT (metrics->>'bucket_windows')::int < 2700000 FROM bst_models WHERE name = 'many'});
like($r->{stdout}, qr/^t$/m, 'a bucket of fewer windows than the training has (metrics)');
session_query($s, '\q');

# 1c. An evaluation scores its windows a predictor's batch at a time as they
# are read: 1,000,000 windows (about 84 MB read whole and packed) in a
# fresh session that stays far below that.
($s, $pid) = limited_session('bst_tap_memory_evaluate');
$r = session_query($s,
	q{SELECT n FROM bst_evaluate('many', 'SELECT ARRAY[1 + a % 100, 2, 3, 4] AS movie_ids, ''{4,3,5,4}''::real[] AS ratings
	                                    FROM generate_series(1, 1000) a, generate_series(1, 1000) b')});
is($r->{sqlstate}, '00000', 'an evaluation of 1,000,000 windows runs');
like($r->{stdout}, qr/^1000000$/m, 'over all of them');
my $evaluate_peak = peak_mb($pid);
note "the backend held at most $evaluate_peak MB";
cmp_ok($evaluate_peak, '<', 60, 'the backend never held more than 60 MB');
session_query($s, '\q');

# 2. A model of 1024-movie windows with 4 heads (trained in an unlimited
# session), then one prediction in a limited one.
$node->safe_psql('postgres', q{
SET client_min_messages = warning;
SET bst.train_memory = '2GB';
SELECT version FROM bst_train('long', 'SELECT movie_ids, ratings FROM windows LIMIT 8', seq_len => 1024, heads => 4,
                              batch_size => 4, epochs => 1, early_stopping => false, hidden => '{8}',
                              vocabulary => NULL, history => NULL);
});
($s, $pid) = limited_session('bst_tap_memory_predict');
$r = session_query($s,
	q{SELECT count(*) FROM windows w WHERE bst_predict('long', w.movie_ids, w.ratings) BETWEEN -100 AND 100 AND w.user_id < 3});
is($r->{sqlstate}, '00000', 'a model of 1024-movie windows with 4 heads predicts under the limit');
like($r->{stdout}, qr/^[1-9]\d*$/m, 'every window gets a prediction');
my $predictor_mb = model_context_mb($s);
note "the model's context holds $predictor_mb MB";
cmp_ok($predictor_mb, '<', 80, 'the loaded model and its predictor hold under 80 MB (a 64 MB predictor budget)');
cmp_ok(peak_mb($pid), '<', 300, 'the backend never held more than 300 MB');
session_query($s, '\q');

# 3. Nine models used in turn, under a cache of about three of them.
$node->safe_psql('postgres', q{
SET client_min_messages = warning;
SELECT count(*) FROM (SELECT bst_train('c' || i, 'SELECT movie_ids, ratings FROM windows LIMIT 50', epochs => 1,
                                       hidden => '{4}', embed_dim => 2, seed => i, history => NULL, vocabulary => NULL)
                      FROM generate_series(1, 9) i) t;
});
($s, $pid) = limited_session('bst_tap_memory_cache');
session_query($s, q{SET bst.model_cache_memory = '1MB'});
my $cycle = q{SELECT count(bst_predict('c' || (1 + i % 9), '{1,2,3,4}', '{5,4,3}')) FROM generate_series(0, %d) i};
$r = session_query($s, sprintf($cycle, 269));
is($r->{stdout}, "270\n", 'nine models used in turn over 270 rows');
my $cache_mb = model_context_mb($s);
cmp_ok($cache_mb, '<=', 1, 'the models held fit bst.model_cache_memory');
my $peak_after_270 = peak_mb($pid);
$r = session_query($s, sprintf($cycle, 8999));
is($r->{stdout}, "9000\n", 'and over 9,000 rows');
cmp_ok(model_context_mb($s), '<=', 1, 'still within bst.model_cache_memory');
cmp_ok(peak_mb($pid) - $peak_after_270, '<', 8, 'thirty times the rows, no more than 8 MB more at the peak');
session_query($s, '\q');

$node->stop;
done_testing();
