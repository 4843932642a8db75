#!/usr/bin/env bash
# The Debian package, built, installed, tested and removed:
#   scripts/test_package.sh
# builds postgresql-15-bst with dpkg-buildpackage (debian/, pg_buildext) in a
# copy of the tracked files, installs it with apt-get (which brings its
# declared dependencies), runs the regression suite (make installcheck)
# against the installed package in a fresh cluster, removes the package and
# checks that its files are gone.  Removing the package removes the files
# "make install" put in the same places, so the script ends by building and
# installing the working tree again.  Exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."
BST_PORT=${BST_PACKAGE_PORT:-54350}
source scripts/lib.sh
BST_PACKAGES="$BST_PACKAGES dpkg-dev debhelper postgresql-server-dev-all"

version=$(dpkg-parsechangelog -l debian/changelog -S Version 2>/dev/null || sed -n '1s/.*(\(.*\)).*/\1/p' debian/changelog)
package=postgresql-15-bst
work=$(mktemp -d /tmp/bst-package.XXXXXX)
status=0

finish() {
    cluster_stop
    dpkg -s "$package" >/dev/null 2>&1 && dpkg -r "$package" >/dev/null 2>&1
    rm -rf "$work"
    log "restoring the working tree's build"
    build_install || status=1
    echo "test_package: $([ $status = 0 ] && echo PASS || echo FAIL)"
    exit $status
}
fail() { echo "not ok: $*"; status=1; exit 1; }
ok() { echo "ok: $*"; }

ensure_packages || exit 1
trap finish EXIT
trap 'exit 130' INT TERM

log "building $package $version"
mkdir -p "$work/bst-$version"
git ls-files -z | tar --null -T - -c | tar -x -C "$work/bst-$version"
(cd "$work/bst-$version" && dpkg-buildpackage -b -us -uc) >"$work/build.log" 2>&1 ||
    { tail -n 40 "$work/build.log"; fail "dpkg-buildpackage"; }
deb=$work/${package}_${version}_amd64.deb
[ -f "$deb" ] || fail "no $deb"
ok "dpkg-buildpackage built $(basename "$deb")"
depends=$(dpkg-deb -f "$deb" Depends)
grep -q 'libopenblas0' <<<"$depends" && grep -q 'postgresql-15' <<<"$depends" ||
    fail "Depends declares OpenBLAS and PostgreSQL 15: $depends"
ok "it depends on OpenBLAS and PostgreSQL 15 ($depends)"

log "installing it"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$deb" >"$work/install.log" 2>&1 ||
    { tail -n 20 "$work/install.log"; fail "apt-get install $deb"; }
dpkg -L "$package" | grep -qx /usr/lib/postgresql/15/lib/bst.so || fail "the package owns bst.so"
cmp -s <(dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/lib/postgresql/15/lib/bst.so) \
    /usr/lib/postgresql/15/lib/bst.so || fail "the installed bst.so is the package's"
ok "installed: bst.so and the extension files are the package's"

log "the regression suite against the installed package, in a fresh cluster"
cluster_start || fail "cluster start"
make -s installcheck >"$work/regress.log" 2>&1 ||
    { cat "$work/regress.log" regression.diffs 2>/dev/null | tail -n 60; fail "make installcheck"; }
ok "make installcheck passes against the package ($(grep -o 'All [0-9]* tests passed' "$work/regress.log"))"
cluster_stop

log "removing it"
dpkg -r "$package" >/dev/null || fail "dpkg -r"
for f in /usr/lib/postgresql/15/lib/bst.so /usr/share/postgresql/15/extension/bst.control; do
    [ -e "$f" ] && fail "$f is still there after dpkg -r"
done
ok "removed: bst.so and bst.control are gone"
