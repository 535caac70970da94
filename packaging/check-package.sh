#!/usr/bin/env bash
# CI check of the Debian package. Builds it with build-deb.sh, then checks:
#   - the file list: binary, both units, the sysusers file, the conffile, docs;
#   - the control data: Depends has ca-certificates (and libc6 from $auto),
#     conffiles lists /etc/chatapp-kommo-sync/config.toml, whose mode is not
#     world-readable;
#   - the maintainer scripts: no leftover #DEBHELPER# token, "sh -n" clean, and
#     nothing enables or starts a unit on a fresh install;
#   - the shipped units: "systemd-analyze security --offline=yes" scores at most
#     MAX_EXPOSURE (2.0) for both, and "systemd-analyze verify" is clean;
#   - the shipped binary runs and accepts the shipped config;
#   - the docs: a man page for the command and one per subcommand (section 1)
#     and one for the config (section 5), gzipped, each rendered by
#     "man --warnings" with no warning; the bash, zsh and fish completions,
#     each syntax-checked where its shell is installed; the changelog (its
#     newest entry is the package's version) and the copyright file; every
#     file in packaging/dashboards/ (the Grafana dashboard and the Prometheus
#     alert rules, both required) under /usr/share/chatapp-kommo-sync/;
#   - lintian: no error and no warning; each override in
#     packaging/debian/lintian-overrides has a one-line reason comment and is
#     used.
# Prints a summary; exits non-zero with a message on the first failure.
# Works from any directory. Installs what it needs with apt-get if it is
# missing and we are root: systemd (systemd-analyze), lintian, man-db and
# groff-base (man).
set -euo pipefail

MAX_EXPOSURE=${MAX_EXPOSURE:-2.0}
PKG=chatapp-kommo-sync

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

fail() { printf 'check-package: FAIL: %s\n' "$*" >&2; exit 1; }
note() { printf 'check-package: %s\n' "$*"; }

check_start=$(date +%s)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# --- tools -------------------------------------------------------------------
apt_updated=""
apt_install() { # command package
    command -v "$1" >/dev/null && return 0
    [ "$(id -u)" -eq 0 ] || fail "$1 is missing; install the Debian package $2"
    note "installing $2 (for $1) with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "$apt_updated" ]; then
        apt-get update -qq
        apt_updated=yes
    fi
    apt-get install -y -qq --no-install-recommends "$2" >/dev/null
    command -v "$1" >/dev/null || fail "installed $2, but $1 is still missing"
}
apt_install systemd-analyze systemd   # Debian ships systemd-analyze in "systemd"
apt_install lintian lintian
apt_install man man-db
apt_install troff groff-base
command -v dpkg-deb >/dev/null || fail "dpkg-deb not found"

# --- build -------------------------------------------------------------------
start=$(date +%s)
deb=$(bash "$ROOT/packaging/build-deb.sh" | tail -n 1) || fail "build-deb.sh failed"
build_secs=$(( $(date +%s) - start ))
[ -f "$deb" ] || fail "build-deb.sh did not produce a .deb (got: '$deb')"
case "$(basename "$deb")" in
    ${PKG}_*_*.deb) ;;
    *) fail "unexpected package file name: $deb" ;;
esac
deb_bytes=$(stat -c %s "$deb")

# --- file list ---------------------------------------------------------------
dpkg-deb -c "$deb" > "$WORK/list" || fail "dpkg-deb -c failed"
# "<mode> <owner/group> <size> <date> <time> ./path" -> "path mode"
awk '{ p = $6; sub(/^\.\//, "/", p); print p, $1 }' "$WORK/list" > "$WORK/files"
has() { grep -q "^$1 " "$WORK/files" || fail "missing from the package: $1"; }
mode_of() { awk -v p="$1" '$1 == p { print $2 }' "$WORK/files"; }

has /usr/bin/$PKG
has /usr/lib/systemd/system/$PKG.service
has /usr/lib/systemd/system/$PKG@.service
has /usr/lib/sysusers.d/$PKG.conf
has /etc/$PKG/config.toml
has /usr/share/doc/$PKG/README.md
has /usr/share/doc/$PKG/config.example.toml
has /usr/share/doc/$PKG/copyright
has /usr/share/doc/$PKG/changelog.gz
has /usr/share/lintian/overrides/$PKG
has /usr/share/man/man1/$PKG.1.gz
has /usr/share/man/man5/$PKG.toml.5.gz
has /usr/share/bash-completion/completions/$PKG
has /usr/share/zsh/vendor-completions/_$PKG
has /usr/share/fish/vendor_completions.d/$PKG.fish
# Data files for /usr/share/$PKG/ live in packaging/dashboards/: the Grafana
# dashboard and the Prometheus alert rules (both required), and anything added.
has /usr/share/$PKG/grafana-dashboard.json
has /usr/share/$PKG/alerts.yml
shared=0
while IFS= read -r -d '' f; do
    rel=${f#packaging/dashboards/}
    grep -q "^/usr/share/$PKG/$rel " "$WORK/files" \
        || fail "packaging/dashboards/$rel is not in the package as /usr/share/$PKG/$rel (see the assets in Cargo.toml)"
    [ "$(awk -v p="/usr/share/$PKG/$rel" '$1 == p { print $2 }' "$WORK/files")" = "-rw-r--r--" ] \
        || fail "/usr/share/$PKG/$rel is not mode 0644"
    shared=$((shared + 1))
done < <(find packaging/dashboards -maxdepth 1 -type f -print0)

[ "$(mode_of /usr/bin/$PKG)" = "-rwxr-xr-x" ] || fail "/usr/bin/$PKG mode is $(mode_of /usr/bin/$PKG)"
conf_mode=$(mode_of /etc/$PKG/config.toml)
case "$conf_mode" in
    -rw-r-----|-rw-------) ;;
    *) fail "/etc/$PKG/config.toml has mode $conf_mode: must not be world-readable (0640 or 0600)" ;;
esac
# Nothing else under /etc but the conffile and its directory.
extra_etc=$(awk '$1 ~ /^\/etc\// && $1 != "/etc/" && $1 != "/etc/'$PKG'/" && $1 != "/etc/'$PKG'/config.toml"' "$WORK/files")
[ -z "$extra_etc" ] || fail "unexpected files under /etc: $extra_etc"

# --- control data ------------------------------------------------------------
dpkg-deb -I "$deb" > /dev/null || fail "dpkg-deb -I failed"
mkdir "$WORK/control"
dpkg-deb -e "$deb" "$WORK/control" || fail "dpkg-deb -e failed"
[ "$(dpkg-deb -f "$deb" Package)" = "$PKG" ] || fail "Package is not $PKG"
depends=$(dpkg-deb -f "$deb" Depends)
grep -Eq '(^|, *)ca-certificates( |,|$)' <<<"$depends" || fail "Depends lacks ca-certificates: $depends"
grep -Eq '(^|, *)libc6( |,|$)' <<<"$depends" || fail "Depends lacks libc6 (was \$auto resolved? dpkg-shlibdeps): $depends"
grep -q 'sysusers' <<<"$depends" || fail "Depends lacks a systemd-sysusers provider: $depends"
grep -Eq '(^|, *)procps( |,|$)' <<<"$depends" || fail "Depends lacks procps (/bin/kill in ExecReload=): $depends"
[ -f "$WORK/control/conffiles" ] || fail "no conffiles in the control data"
grep -qx "/etc/$PKG/config.toml" "$WORK/control/conffiles" || fail "conffiles does not list /etc/$PKG/config.toml"

# --- maintainer scripts ------------------------------------------------------
scripts=""
for s in preinst postinst prerm postrm; do
    f="$WORK/control/$s"
    [ -f "$f" ] || continue
    scripts="$scripts $s"
    ! grep -q '#DEBHELPER#' "$f" || fail "$s still contains the #DEBHELPER# token"
    sh -n "$f" || fail "$s is not valid sh"
    [ -x "$f" ] || fail "$s is not executable"
done
for s in postinst prerm postrm; do
    [ -f "$WORK/control/$s" ] || fail "maintainer script $s is missing"
done
# Not started or enabled on install: no start action, and the enable fragment
# is the "dont-enable" one (it re-enables only what the admin had enabled).
! grep -q 'deb-systemd-invoke start' "$WORK/control/postinst" || fail "postinst starts a unit"
grep -q 'deb-systemd-helper debian-installed' "$WORK/control/postinst" \
    || fail "postinst uses the enabling fragment (systemd-units enable must be false)"
grep -q 'try-restart' "$WORK/control/postinst" || fail "postinst does not restart running units on upgrade"
grep -q 'systemd-sysusers' "$WORK/control/postinst" || fail "postinst does not create the system user"
grep -q 'rm -rf /etc/chatapp-kommo-sync' "$WORK/control/postrm" || fail "postrm does not remove /etc/$PKG on purge"

# --- units -------------------------------------------------------------------
mkdir "$WORK/root"
dpkg-deb -x "$deb" "$WORK/root" || fail "dpkg-deb -x failed"
unitdir="$WORK/root/usr/lib/systemd/system"

score_of() { # unit file -> exposure number
    local out
    out=$(systemd-analyze security --offline=yes "$1" 2>&1) || true
    printf '%s\n' "$out" > "$WORK/security-$(basename "$1").txt"
    sed -n 's/.*Overall exposure level for [^:]*: \([0-9][0-9.]*\).*/\1/p' <<<"$out" | tail -n 1
}
declare -A score
for u in $PKG.service $PKG@.service; do
    s=$(score_of "$unitdir/$u")
    [ -n "$s" ] || { cat "$WORK/security-$u.txt" >&2; fail "no exposure level from systemd-analyze security for $u"; }
    score[$u]=$s
    awk -v s="$s" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }' \
        || { grep '✗' "$WORK/security-$u.txt" >&2 || true; fail "$u scores $s, above $MAX_EXPOSURE"; }
done

# systemd-analyze verify runs offline (no systemd as PID 1 needed) with
# --root: the extracted package plus the host's own units (for sysinit.target
# and friends), so that /usr/bin/$PKG resolves to the packaged binary. verify
# exits 0 on warnings such as unknown keys or bad values, so any output fails.
verify="skipped"
if [ -d /usr/lib/systemd/system ] && [ -e /usr/lib/systemd/system/sysinit.target ]; then
    cp -an /usr/lib/systemd/system/. "$unitdir/"
    # Commands the units run from other packages (/bin/kill, from procps) must
    # exist in the verify root too: copy them from this machine.
    while read -r cmd; do
        [ -e "$WORK/root$cmd" ] && continue
        [ -x "$cmd" ] || fail "the units run $cmd, which this machine lacks"
        mkdir -p "$WORK/root$(dirname "$cmd")"
        cp "$cmd" "$WORK/root$cmd"
    done < <(sed -n 's/^Exec[A-Za-z]*=[-@:+!]*\(\/[^ ]*\).*/\1/p' \
                 "$unitdir/$PKG.service" "$unitdir/$PKG@.service" | sort -u)
    if ! out=$(systemd-analyze verify --root="$WORK/root" $PKG.service $PKG@example.service 2>&1) \
        || [ -n "$out" ]; then
        printf '%s\n' "$out" >&2
        fail "systemd-analyze verify reported problems"
    fi
    verify="clean"
else
    note "systemd-analyze verify skipped: no systemd units on this machine"
fi

# --- the binary and the shipped config ----------------------------------------
bin="$WORK/root/usr/bin/$PKG"
"$bin" --help > /dev/null || fail "the packaged binary does not run (--help)"
mkdir -m 0700 "$WORK/creds"
printf 'dummy-kommo-token\n' > "$WORK/creds/kommo-token"
printf 'dummy-chatapp-password\n' > "$WORK/creds/chatapp-password"
if ! out=$(CREDENTIALS_DIRECTORY="$WORK/creds" "$bin" --config "$WORK/root/etc/$PKG/config.toml" check-config 2>&1); then
    printf '%s\n' "$out" >&2
    fail "check-config rejects the shipped /etc/$PKG/config.toml (with dummy secrets)"
fi

# --- man pages ---------------------------------------------------------------
# One section 1 page per command of the packaged binary (from its --help, less "help").
help_text=$("$bin" --help) || fail "the packaged binary's --help failed"
commands=$(awk '/^Commands:/ { on = 1; next } on && /^  [a-z]/ { if ($1 != "help") print $1; next } on { exit }' <<<"$help_text")
[ -n "$commands" ] || fail "no commands in the packaged binary's --help"
for c in $commands; do
    has /usr/share/man/man1/$PKG-$c.1.gz
done
pages=$(awk '$1 ~ /^\/usr\/share\/man\// && $1 !~ /\/$/ { print $1 }' "$WORK/files")
n_pages=0
for p in $pages; do
    case "$p" in
        *.gz) ;;
        *) fail "man page $p is not gzipped" ;;
    esac
    # As lintian does (manpage-has-errors-from-man): any message on stderr fails.
    if ! err=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -E UTF-8 -l -Tutf8 -Z "$WORK/root$p" 2>&1 >/dev/null) \
        || [ -n "$err" ]; then
        printf '%s\n' "$err" >&2
        fail "man --warnings reports problems in $p"
    fi
    n_pages=$((n_pages + 1))
done

# --- completions -------------------------------------------------------------
comp_bash="$WORK/root/usr/share/bash-completion/completions/$PKG"
comp_zsh="$WORK/root/usr/share/zsh/vendor-completions/_$PKG"
comp_fish="$WORK/root/usr/share/fish/vendor_completions.d/$PKG.fish"
bash -n "$comp_bash" || fail "the bash completion has a syntax error"
bash -c 'source "$1" && complete -p '"$PKG"' >/dev/null' _ "$comp_bash" \
    || fail "the bash completion does not register a completion for $PKG"
completions="bash (bash -n, registers)"
if command -v zsh >/dev/null; then
    zsh -n "$comp_zsh" || fail "the zsh completion has a syntax error"
    completions="$completions, zsh (zsh -n)"
else
    completions="$completions, zsh (not checked: no zsh)"
fi
if command -v fish >/dev/null; then
    fish --no-execute "$comp_fish" || fail "the fish completion has a syntax error"
    completions="$completions, fish (fish --no-execute)"
else
    completions="$completions, fish (not checked: no fish)"
fi

# --- changelog and copyright -------------------------------------------------
pkg_version=$(dpkg-deb -f "$deb" Version)
if command -v dpkg-parsechangelog >/dev/null; then
    zcat "$WORK/root/usr/share/doc/$PKG/changelog.gz" > "$WORK/changelog"
    cl_version=$(dpkg-parsechangelog -l "$WORK/changelog" -S Version)
    [ "$cl_version" = "$pkg_version" ] \
        || fail "the changelog's newest entry is $cl_version, the package is $pkg_version"
fi
head -n 1 "$WORK/root/usr/share/doc/$PKG/copyright" \
    | grep -qx 'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/' \
    || fail "copyright is not a machine-readable (DEP-5) file"

# --- lintian -----------------------------------------------------------------
# Each override needs a one-line reason: exactly one comment line right above it.
overrides_src=packaging/debian/lintian-overrides
awk '
    /^#/ { c++; next }
    /^[[:space:]]*$/ { c = 0; next }
    { if (c != 1) { printf "line %d: %s\n", NR, $0; bad = 1 } c = 0 }
    END { exit bad }
' "$overrides_src" > "$WORK/bad-overrides" \
    || { cat "$WORK/bad-overrides" >&2; fail "$overrides_src: each override needs exactly one reason comment line above it"; }
cmp -s "$overrides_src" "$WORK/root/usr/share/lintian/overrides/$PKG" \
    || fail "the shipped lintian overrides differ from $overrides_src"
# The verdict is ours, from the tags printed: with --show-overrides, lintian's
# own --fail-on would count the overridden tags too. O: lines are overridden.
lintian_rc=0
lintian --fail-on none --display-info --show-overrides "$deb" > "$WORK/lintian.txt" 2> "$WORK/lintian.err" \
    || lintian_rc=$?
grep -v 'running with root privileges is not recommended' "$WORK/lintian.err" >&2 || true
count_tags() { grep -c "^$1: " "$WORK/lintian.txt" || true; }
l_err=$(count_tags E); l_warn=$(count_tags W); l_info=$(count_tags I); l_over=$(count_tags O)
if [ "$lintian_rc" -ne 0 ] || [ "$l_err" -ne 0 ] || [ "$l_warn" -ne 0 ] \
    || grep -Eq '(unused|mismatched)-override' "$WORK/lintian.txt"; then
    cat "$WORK/lintian.txt" >&2
    fail "lintian: $l_err errors, $l_warn warnings (exit $lintian_rc), or an unused override; fix them, or override what is intended in $overrides_src"
fi

# --- summary -----------------------------------------------------------------
installed_kib=$(dpkg-deb -f "$deb" Installed-Size)
note "package:     $deb"
note "size:        $deb_bytes bytes ($(( deb_bytes / 1024 )) KiB; installed ${installed_kib} KiB)"
note "built in:    ${build_secs}s"
note "Depends:     $depends"
note "conffile:    /etc/$PKG/config.toml ($conf_mode)"
note "scripts:    $scripts (no #DEBHELPER# left, sh -n clean, nothing started on install)"
note "exposure:    $PKG.service ${score[$PKG.service]}, $PKG@.service ${score[$PKG@.service]} (max $MAX_EXPOSURE)"
note "verify:      $verify"
note "man pages:   $n_pages, gzipped, man --warnings clean: $(for p in $pages; do basename "$p" .gz; done | tr '\n' ' ')"
note "completions: $completions"
note "changelog:   $pkg_version (changelog.gz, native package); copyright: DEP-5"
note "shared data: $shared file(s) from packaging/dashboards/ in /usr/share/$PKG/"
note "lintian:     $(lintian --version | awk '{ print $2 }'): $l_err errors, $l_warn warnings, $l_info info, $l_over overridden"
grep -E '^I: ' "$WORK/lintian.txt" | sed 's/^/check-package:   /' || true
# Each override with its reason (the comment line above it).
awk '/^#/ { r = substr($0, 3); next } /^[^[:space:]]/ { sub(/^[^:]*: /, ""); printf "check-package:   O: %s\ncheck-package:      reason: %s\n", $0, r }' "$overrides_src"
note "check took:  $(( $(date +%s) - check_start ))s in all"
note "OK"
