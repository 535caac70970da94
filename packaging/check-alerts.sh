#!/usr/bin/env bash
# CI check of the Prometheus alert rules: `promtool check rules` on
# packaging/dashboards/alerts.yml. promtool comes from Debian's "prometheus"
# package, installed here with apt-get when it is missing (CI runs as root on
# Debian). Without root or apt-get, or when the install fails, it says so and
# exits 1: the check is never skipped silently. Works from any directory.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RULES="$ROOT/packaging/dashboards/alerts.yml"

fail() { printf 'check-alerts: FAIL: %s\n' "$*" >&2; exit 1; }
note() { printf 'check-alerts: %s\n' "$*"; }

[ -f "$RULES" ] || fail "$RULES is missing"

if ! command -v promtool >/dev/null; then
    [ "$(id -u)" -eq 0 ] \
        || fail "promtool is missing and this is not root: install it with 'sudo apt-get install prometheus' (Debian), then run me again"
    command -v apt-get >/dev/null \
        || fail "promtool is missing and there is no apt-get: install promtool (Prometheus) by hand, then run me again"
    note "installing prometheus (for promtool) with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d: do not start the prometheus service this package would start
    policy="/usr/sbin/policy-rc.d"
    created_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 755 "$policy"
        created_policy=yes
    fi
    status=0
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } || status=$?
    [ -z "$created_policy" ] || rm -f "$policy"
    [ "$status" -eq 0 ] || fail "apt-get install prometheus failed (exit $status): cannot check the rules without promtool"
    command -v promtool >/dev/null || fail "installed prometheus, but promtool is still missing"
fi

note "$(promtool --version 2>&1 | head -n 1)"
promtool check rules "$RULES" || fail "promtool check rules $RULES failed"
note "ok: $RULES"
