#!/usr/bin/env bash
# Builds the Debian package: target/debian/chatapp-kommo-sync_<version>_<arch>.deb
# (release binary, both systemd units, the sysusers file, the conffile
# /etc/chatapp-kommo-sync/config.toml, man pages, shell completions, docs, and
# the Grafana dashboard and Prometheus alert rules of packaging/dashboards/ in
# /usr/share/chatapp-kommo-sync/).
# Prints the .deb's path as the last line of its output. Idempotent; works from
# any directory.
#
# The man pages and completions are generated first, by examples/gen_docs.rs
# (debug build; CI has built the examples already), into target/packaging/.
# The newest entry of packaging/debian/changelog must be for Cargo.toml's
# version; its date is the man pages' date. (SOURCE_DATE_EPOCH is not set
# here: aws-lc-sys's build script watches it, so setting it would rebuild the
# release binary whenever it differs from the previous build's.)
#
# Needs: cargo; cargo-deb (installed here if missing, pinned below);
# dpkg-dev (dpkg-shlibdeps for "$auto" in Depends, dpkg-parsechangelog;
# installed with apt-get if missing and we are root). CARGO_BUILD_JOBS limits
# build parallelism.
set -euo pipefail

CARGO_DEB_VERSION=3.8.0

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

log() { printf 'build-deb: %s\n' "$*" >&2; }
die() { printf 'build-deb: error: %s\n' "$*" >&2; exit 1; }

command -v cargo >/dev/null || die "cargo not found"

apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        die "$1 is missing; install the Debian package $2 (needs root)"
    fi
    log "installing $2 (for $1) with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "$2" >&2
}

# cargo-deb, pinned.
have_deb=$(cargo deb --version 2>/dev/null || true)
if [ "$have_deb" != "cargo-deb $CARGO_DEB_VERSION" ]; then
    log "installing cargo-deb $CARGO_DEB_VERSION (found: ${have_deb:-none})"
    cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked >&2
fi

# Without dpkg-shlibdeps cargo-deb silently drops the "$auto" part of Depends.
command -v dpkg-shlibdeps >/dev/null || apt_install dpkg-shlibdeps dpkg-dev
command -v dpkg-deb >/dev/null || die "dpkg-deb not found (not a Debian system?)"

command -v dpkg-parsechangelog >/dev/null || apt_install dpkg-parsechangelog dpkg-dev

for f in Cargo.toml config.example.toml README.md packaging/README.md \
         packaging/debian/changelog packaging/debian/copyright packaging/debian/lintian-overrides \
         packaging/dashboards/grafana-dashboard.json packaging/dashboards/alerts.yml; do
    [ -f "$f" ] || die "$f is missing (it is packaged)"
done

meta=$(cargo metadata --format-version 1 --no-deps --locked)
read -r version target_dir < <(printf '%s' "$meta" | python3 -c '
import json, sys
m = json.load(sys.stdin)
p = next(p for p in m["packages"] if p["name"] == "chatapp-kommo-sync")
print(p["version"], m["target_directory"])')
arch=$(dpkg --print-architecture)
deb="$target_dir/debian/chatapp-kommo-sync_${version}_${arch}.deb"

changelog=packaging/debian/changelog
cl_version=$(dpkg-parsechangelog -l "$changelog" -S Version)
[ "$cl_version" = "$version" ] \
    || die "the newest entry of $changelog is for $cl_version, Cargo.toml says $version: add an entry (see packaging/README.md)"
cl_epoch=$(dpkg-parsechangelog -l "$changelog" -S Timestamp)
docs_date=$(date -u -d "@$cl_epoch" +%Y-%m-%d)

# Man pages and completions, for the assets under target/packaging/ in Cargo.toml.
log "generating the man pages and shell completions (examples/gen_docs.rs)"
cargo run --locked --example gen_docs -- \
    --out-dir "$ROOT/target/packaging" --date "$docs_date" \
    --config-example "$ROOT/config.example.toml" >&2

log "building the release binary and $deb"
rm -f "$deb" "$target_dir"/debian/chatapp-kommo-sync*_"${version}"_"${arch}".*deb
# cargo-deb runs "cargo build --release --locked" itself and strips the binary.
cargo deb --locked --output "$target_dir/debian/" >&2

[ -f "$deb" ] || die "cargo deb finished but $deb is missing"
log "done: $(du -h "$deb" | cut -f1)"
printf '%s\n' "$deb"
