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
#   - the shipped binary runs and accepts the shipped config.
# Prints a summary; exits non-zero with a message on the first failure.
# Works from any directory. Installs systemd (for systemd-analyze) with apt-get
# if it is missing and we are root.
set -euo pipefail

MAX_EXPOSURE=${MAX_EXPOSURE:-2.0}
PKG=chatapp-kommo-sync

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

fail() { printf 'check-package: FAIL: %s\n' "$*" >&2; exit 1; }
note() { printf 'check-package: %s\n' "$*"; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# --- tools -------------------------------------------------------------------
if ! command -v systemd-analyze >/dev/null; then
    # Debian ships systemd-analyze in the "systemd" package.
    [ "$(id -u)" -eq 0 ] || fail "systemd-analyze is missing; install the Debian package systemd"
    note "installing systemd (for systemd-analyze) with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
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
note "OK"
