# OpenBLAS's kernels inside the server: bst chooses them by the CPU's
# features when the server's environment does not set OPENBLAS_CORETYPE,
# never overrides it when it does, says which ones run (bst_compute_info()
# and bst_train's first NOTICE), and a model predicts the same, within
# rounding, on the generic kernels (Prescott: SSE2) and on the chosen ones.
# The core's own loops likewise: the copy BST_SIMD names, else the CPU's
# best (src/core/simd.h).
use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;
use BstTap;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

# What bst should choose here, from the kernel's view of the CPU (blas_load.h).
open(my $cpuinfo, '<', '/proc/cpuinfo') or die "cannot read /proc/cpuinfo: $!";
my ($flags_line) = grep { /^flags\s*:/ } <$cpuinfo>;
close $cpuinfo;
my %flag = map { $_ => 1 } split ' ', ($flags_line =~ s/^flags\s*:\s*//r);
my $amd = `grep -m1 vendor_id /proc/cpuinfo` =~ /AuthenticAMD/;
my ($kernels, $reason);
if (!grep { !$flag{"avx512$_"} } qw(f cd bw dq vl)) { ($kernels, $reason) = ('SkylakeX', 'AVX-512') }
elsif ($flag{avx2} && $flag{fma}) { ($kernels, $reason) = ($amd ? 'Zen' : 'Haswell', 'AVX2 and FMA') }
# The loaded models' own prediction kernels (src/core/infer.h), by the same
# features: they do not depend on OpenBLAS's.
my $isa = !grep({ !$flag{"avx512$_"} } qw(f cd bw dq vl)) ? 'AVX-512' : ($flag{avx2} && $flag{fma}) ? 'AVX2' : 'none';
# The core's own loops (src/core/simd.h): the best copy the CPU runs, unless
# BST_SIMD in the server's environment names another.
my $loops = $isa eq 'none' ? 'generic' : $isa;
note 'this CPU: ' . ($kernels ? "$kernels ($reason)" : 'neither AVX2 nor AVX-512: OpenBLAS decides')
  . "; prediction kernels $isa, training loops $loops";

my $node = bst_node('kernels');

# The model's predictions of every window, one per line, in full precision.
my $predictions_sql = q{
SET extra_float_digits = 3;
SELECT string_agg(bst_predict('k', movie_ids, ratings)::text, E'\n' ORDER BY user_id, movie_ids, ratings)
FROM windows};

# Restarts the server with OPENBLAS_CORETYPE and BST_SIMD as given (undef:
# unset).
sub restart_with_coretype
{
	my ($coretype, $simd) = @_;
	local $ENV{OPENBLAS_CORETYPE} = $coretype;
	local $ENV{BST_SIMD} = $simd;
	delete $ENV{OPENBLAS_CORETYPE} unless defined $coretype;
	delete $ENV{BST_SIMD} unless defined $simd;
	$node->restart;
	return;
}

# 1. The server's environment says Prescott, and the generic copy of the
# core's loops: bst leaves them so.
restart_with_coretype('Prescott', 'generic');
bst_load_data($node);
is( $node->safe_psql('postgres', 'SELECT bst_compute_info()') =~ s/^.*, kernels //r,
	"Prescott (from OPENBLAS_CORETYPE), 1 thread; prediction kernels $isa, training loops generic",
	'OPENBLAS_CORETYPE and BST_SIMD set by the server environment are kept, and reported');

my $s = start_session($node, 'bst_tap_kernels');
my $r = session_query($s, bst_train_sql('k', epochs => 2));
is($r->{sqlstate}, '00000', 'a model trains on the generic kernels');
like($r->{stderr}, qr/NOTICE:  bst_train "k": .*\nDETAIL:  Computing with OpenBLAS .*, kernels Prescott \(from OPENBLAS_CORETYPE\), 1 thread; prediction kernels \Q$isa\E, training loops generic\./,
	"bst_train's first NOTICE says which kernels and how many threads compute");
$s->{stdin} .= "\\q\n";
$s->{run}->finish;
my @generic = split /\n/, $node->safe_psql('postgres', $predictions_sql);
is(scalar @generic, 2400, 'predictions of every window on the generic kernels');

# 2. No OPENBLAS_CORETYPE: bst chooses by the CPU's features.
restart_with_coretype(undef);
my $info = $node->safe_psql('postgres', 'SELECT bst_compute_info()');
note "chosen: $info";
if ($kernels)
{
	is($info =~ s/^.*, kernels //r,
		"$kernels (chosen by bst: $reason), 1 thread; prediction kernels $isa, training loops $loops",
		"without OPENBLAS_CORETYPE, bst chooses $kernels by the CPU's features");
}
else
{
	like($info, qr/\(OpenBLAS's own detection\)/, 'on a CPU without AVX2, OpenBLAS decides');
}
# The automatic thread count: this process's cores, at most 4 (parallel.h).
# (nproc obeys OMP_NUM_THREADS and OMP_THREAD_LIMIT; bst counts the cores
# this process may run on.)
chomp(my $cores = `env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc`);
my $auto = $cores < 4 ? $cores : 4;
like($node->safe_psql('postgres', "SET bst.threads = 0; SELECT bst_compute_info()"),
	qr/, $auto threads?; /, "bst.threads = 0 means this process's $cores cores, at most 4: $auto");
like($node->safe_psql('postgres', "SET bst.threads = 3; SELECT bst_compute_info()"),
	qr/, 3 threads; /, 'SET bst.threads takes effect at once');

# 3. The same model, the same windows: the predictions agree within rounding.
# A loaded model predicts on its own kernels (src/core/infer.h), which do not
# go through OpenBLAS, so they compute the same bits under either: 1e-4
# (rating units) leaves room for a server whose prediction kernels differ
# (test/c/test_train.c bounds the frozen path against the sgemm path at
# that).  A wrong kernel is off by the order of the ratings themselves.
my @chosen = split /\n/, $node->safe_psql('postgres', $predictions_sql);
is(scalar @chosen, scalar @generic, 'predictions of every window on the chosen kernels');
my ($max_diff, $differ) = (0, 0);
for my $i (0 .. $#generic)
{
	my $d = abs($generic[$i] - $chosen[$i]);
	$max_diff = $d if $d > $max_diff;
	$differ++ if $generic[$i] ne $chosen[$i];
}
note sprintf('largest difference %.3g; %d of %d predictions differ in some digit', $max_diff, $differ, scalar @generic);
cmp_ok($max_diff, '<', 1e-4, 'a model predicts the same within 1e-4 (rating units) under either kernels');

# 4. Training is where OpenBLAS's kernels count (the core's loops compute the
# same bits in every copy: test/c/test_train.c).  The same training under
# the chosen kernels starts from the same weights, but sums each product in
# another order: after 150 steps the two models have drifted apart in the
# last bits (test/c/test_train.c, test_kernels_agree, bounds the first steps
# sharply), so only their quality compares: the MAE over every window within
# 10% (relative).  A wrong kernel trains a model that does not learn.
$node->safe_psql('postgres', "SET client_min_messages = warning;\n"
	  . (bst_train_sql('k_chosen', epochs => 2) =~ s/^SELECT \*/SELECT version/r));
my ($mae_generic, $mae_chosen) = split /\|/, $node->safe_psql('postgres', q{
SELECT (SELECT mae FROM bst_evaluate('k', 'SELECT movie_ids, ratings FROM windows')) || '|' ||
       (SELECT mae FROM bst_evaluate('k_chosen', 'SELECT movie_ids, ratings FROM windows'))});
note "MAE trained on Prescott $mae_generic, on the chosen kernels $mae_chosen";
cmp_ok(abs($mae_generic - $mae_chosen) / $mae_generic, '<', 0.10,
	'a training on the generic and one on the chosen kernels reach the same MAE within 10%');
my $mae_untrained = $node->safe_psql('postgres', "SET client_min_messages = warning;\n"
	  . (bst_train_sql('k_untrained', epochs => 1) =~ s/epochs => 1,/epochs => 1, learning_rate => 1e-9,/r =~ s/^SELECT \*/SELECT version/r)
	  . ";\nSELECT mae FROM bst_evaluate('k_untrained', 'SELECT movie_ids, ratings FROM windows')");
$mae_untrained = (split /\n/, $mae_untrained)[-1];
note "MAE of an untrained model of the same shape: $mae_untrained";
cmp_ok($mae_chosen, '<', 0.8 * $mae_untrained, 'and both learned: the check can tell a model that did not');

$node->stop;
done_testing();
