# Shared helpers of the TAP tests in test/t: a node with bst and small
# generated training data (no MovieLens), fingerprints of bst_models and of
# predictions, and psql sessions whose NOTICEs, errors and SQLSTATEs the
# tests inspect.
package BstTap;

use strict;
use warnings;

use Exporter 'import';
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

our @EXPORT = qw(bst_node bst_load_data bst_train_sql bst_train models_fingerprint
  predictions_fingerprint start_session session_query session_wait_stderr);

# A started node (one training thread per backend: the tests share two cores
# with whatever else runs); extra_conf is appended to postgresql.conf, the
# other options are init's.
sub bst_node
{
	my ($name, %opt) = @_;
	my $extra_conf = delete $opt{extra_conf} // '';
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(%opt);
	$node->append_conf('postgresql.conf', "bst.threads = 1\n$extra_conf");
	$node->start;
	return $node;
}

# 80 movies with a hidden quality, 120 users each with a bias, 40 ratings
# each: 2,400 windows of bst_sequences' (4, 2), learnable, generated in SQL.
# tap_seen() raises a NOTICE when a query calls it, so a test can tell
# whether bst_train ran its training query.
sub bst_load_data
{
	my ($node) = @_;
	$node->safe_psql('postgres', q{
SET client_min_messages = warning;
CREATE EXTENSION bst;
CREATE TABLE movies (movie_id int PRIMARY KEY, title text, genres text[]);
INSERT INTO movies SELECT m, 'movie ' || m, ARRAY['g' || m % 4] FROM generate_series(1, 80) m;
CREATE TABLE ratings (user_id int, movie_id int, rating real, unix_timestamp bigint);
INSERT INTO ratings
SELECT u, m, greatest(1, least(5, 1 + m % 5 + (u % 3) - 1)), 1000 * u + k
FROM generate_series(1, 120) u, generate_series(1, 40) k,
     LATERAL (SELECT 1 + (u * 17 + k * 29) % 80 AS m) mm;
CREATE INDEX ON ratings (user_id, unix_timestamp, movie_id) INCLUDE (rating);
CREATE TABLE windows AS SELECT * FROM bst_sequences('ratings');
CREATE FUNCTION tap_seen() RETURNS boolean LANGUAGE plpgsql AS
  $$BEGIN RAISE NOTICE 'tap_seen: the training query ran'; RETURN true; END$$;
});
	return;
}

# A bst_train call on the generated windows: the Keras example's preset
# (no early stopping, so it runs every epoch asked for) with a small MLP.
sub bst_train_sql
{
	my ($model, %opt) = @_;
	my $epochs = $opt{epochs} // 1;
	my $seed   = $opt{seed}   // 42;
	my $query  = $opt{query}  // 'SELECT movie_ids, ratings FROM windows';
	$query =~ s/'/''/g;
	return "SELECT * FROM bst_train('$model', '$query', epochs => $epochs, "
	  . "batch_size => 32, hidden => '{32,16}', seed => $seed, preset => 'keras_example')";
}

# Train through safe_psql without the NOTICEs; returns the new version.
sub bst_train
{
	my ($node, $model, %opt) = @_;
	my $sql = bst_train_sql($model, %opt) =~ s/^SELECT \*/SELECT version/r;
	return $node->safe_psql('postgres', "SET client_min_messages = warning;\n$sql");
}

# Every row of bst_models: name, version, md5 of the weights and md5 of the
# whole row, one line each.
sub models_fingerprint
{
	my ($node) = @_;
	return $node->safe_psql('postgres', q{
SELECT name || ' v' || version || ' weights ' || md5(weights) || ' row ' || md5(m::text)
FROM bst_models m ORDER BY name, version});
}

# Predictions of every model (its newest version) for an explicit window,
# for a user's window, bst_predict(user_id, movie_id) from the history
# table, and bst_evaluate over every window: real and float8 print exactly
# (shortest round-trip), so equal text is equal bits.
sub predictions_fingerprint
{
	my ($node) = @_;
	my @models = split /\n/,
	  $node->safe_psql('postgres', 'SELECT DISTINCT name FROM bst_models ORDER BY 1');
	my @lines;
	for my $m (@models)
	{
		push @lines, "$m: " . $node->safe_psql('postgres', qq{
SET bst.model = '$m';
SELECT bst_predict('$m', '{1,2,3,4}'::int[], '{5,4,3}'::real[])
       || ' ' || bst_predict('$m', 5, '{11,12,13,14}'::int[], '{1,2,3}'::real[])
       || ' ' || bst_predict(5, 10)
       || ' ' || (SELECT mae || '/' || rmse FROM bst_evaluate('$m', 'SELECT movie_ids, ratings FROM windows'))});
	}
	return join("\n", @lines);
}

# A psql session of our own (IPC::Run), so that a test sees its NOTICEs as
# they arrive, its errors, and can lose it to a crash.  Errors do not stop
# the session; each statement reports psql's LAST_ERROR_SQLSTATE.
sub start_session
{
	my ($node, $appname) = @_;
	my $s = {
		stdin   => '',
		stdout  => '',
		stderr  => '',
		n       => 0,
		timeout => IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default),
	};
	my $connstr = $node->connstr('postgres') . " application_name=$appname";
	$s->{run} = IPC::Run::start(
		[ $node->installed_command('psql'), '-XAtq', '-d', $connstr, '-f', '-' ],
		'<', \$s->{stdin}, '>', \$s->{stdout}, '2>', \$s->{stderr},
		$s->{timeout});
	return $s;
}

# Run one statement; returns a hash of its stdout and stderr (NOTICEs and
# errors), the SQLSTATE of its error ("00000" when none) and the error's
# message, and the seconds it took.  Waits for the statement to end.
sub session_query
{
	my ($s, $sql) = @_;
	my $n = ++$s->{n};
	$s->{stdout} = '';
	$s->{stderr} = '';
	my $start = time;
	# The end is marked on stdout and on stderr, so both are read whole.
	$s->{stdin} .= "\\set LAST_ERROR_SQLSTATE 00000\n$sql;\n"
	  . "\\echo '<<end $n>>' :LAST_ERROR_SQLSTATE\n\\warn '<<end $n>>'\n";
	pump_until($s->{run}, $s->{timeout}, \$s->{stdout}, qr/<<end $n>>.*\n/s)
	  or die "psql session: no end of statement $n: $s->{stderr}";
	pump_until($s->{run}, $s->{timeout}, \$s->{stderr}, qr/<<end $n>>\n/)
	  or die "psql session: no end of statement $n on stderr: $s->{stderr}";
	$s->{stderr} =~ s/<<end $n>>\n\z//;
	my $seconds = time - $start;
	$s->{stdout} =~ s/<<end $n>> (\S+)\n\z//s
	  or die "psql session: unexpected output $s->{stdout}";
	my $sqlstate = $1;
	my ($message) = $s->{stderr} =~ /ERROR:\s+(.*)/;
	return {
		stdout   => $s->{stdout},
		stderr   => $s->{stderr},
		sqlstate => $sqlstate,
		message  => $message // '',
		seconds  => $seconds,
	};
}

# Send a statement without waiting for it, then wait until its stderr
# matches $re; returns the stderr so far.
sub session_wait_stderr
{
	my ($s, $sql, $re) = @_;
	$s->{stdout} = '';
	$s->{stderr} = '';
	$s->{stdin} .= "$sql;\n";
	pump_until($s->{run}, $s->{timeout}, \$s->{stderr}, $re)
	  or die "psql session: stderr never matched $re: $s->{stderr}";
	return $s->{stderr};
}

1;
