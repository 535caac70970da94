#!/usr/bin/env bash
# Builds the OCI image localhost/chatapp-kommo-sync:<Cargo version> from the release build, pulling
# nothing: an image FROM scratch holding the stripped binary (/usr/bin/chatapp-kommo-sync), the
# shared libraries `ldd` names, the host's CA bundle, /etc/passwd and /etc/group with the user
# chatapp-kommo-sync (uid/gid 10001), a state directory /var/lib/chatapp-kommo-sync owned by it
# and a sticky /tmp. Then writes the image as an OCI archive:
#   target/container/chatapp-kommo-sync-<version>.oci.tar
# and prints the image's size; it fails if the image is over 40 MB.
#
# Needs podman and skopeo (Debian: apt-get install podman skopeo), binutils (strip) and python3.
# Works from any directory; running it again rebuilds only what changed: the layer is a tar with
# sorted names, fixed owners and one timestamp (SOURCE_DATE_EPOCH, else the last commit's time),
# so the same binary gives the same image id.
#
# Environment:
#   CARGO_BUILD_JOBS   limits the release build's parallelism (cargo's own variable)
#   SOURCE_DATE_EPOCH  the timestamp of every file and of the image (default: HEAD's commit time)
#   CKS_IMAGE_SOURCE   org.opencontainers.image.source (default: Cargo.toml's `repository`, else
#                      git's origin, else https://chatapp-kommo-sync.invalid/source)
#   CKS_IMAGE_TAG      the tag (default: the Cargo version)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

fail() { printf 'build.sh: FAIL: %s\n' "$*" >&2; exit 1; }
note() { printf 'build.sh: %s\n' "$*"; }

MAX_BYTES=40000000   # issue 19: the image is at most 40 MB
APP_UID=10001
APP_GID=10001

for tool in podman skopeo strip ldd python3 tar cargo; do
    command -v "$tool" >/dev/null || fail "$tool is missing (Debian: apt-get install podman skopeo binutils python3)"
done

# Name, version, licence and repository from Cargo.toml, as cargo reads it.
read -r NAME VERSION LICENSE DESCRIPTION_B64 REPOSITORY < <(
    cargo metadata --no-deps --format-version 1 --locked | python3 -c '
import base64, json, sys
p = [p for p in json.load(sys.stdin)["packages"] if p["name"] == "chatapp-kommo-sync"][0]
print(p["name"], p["version"], p["license"].replace(" ", "_"),
      base64.b64encode((p["description"] or "").encode()).decode() or "-",
      p["repository"] or "-")'
)
LICENSE=${LICENSE//_/ }
DESCRIPTION=$(printf '%s' "$DESCRIPTION_B64" | base64 -d 2>/dev/null || true)
TAG=${CKS_IMAGE_TAG:-$VERSION}
IMAGE="localhost/$NAME:$TAG"

# org.opencontainers.image.source: $CKS_IMAGE_SOURCE, else Cargo.toml's `repository`, else git's
# origin when it is an http(s) URL (without any user or token in it; a local path or an ssh
# address is no place to get the source from), else the project's placeholder domain (the .deb's
# maintainer address uses it too): Cargo.toml has no `repository` yet, and a label that is always
# there is easier to rely on.
PLACEHOLDER_SOURCE="https://chatapp-kommo-sync.invalid/source"
if [ -n "${CKS_IMAGE_SOURCE:-}" ]; then
    SOURCE=$CKS_IMAGE_SOURCE
elif [ "$REPOSITORY" != "-" ]; then
    SOURCE=$REPOSITORY
else
    SOURCE=$(git -C "$ROOT" config --get remote.origin.url 2>/dev/null || true)
    case "$SOURCE" in
        http://*|https://*) SOURCE=$(printf '%s' "$SOURCE" | sed -E 's#^(https?://)[^/@]*@#\1#') ;;
        *) SOURCE=$PLACEHOLDER_SOURCE ;;
    esac
fi

REVISION=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
if [ "$REVISION" != unknown ] && [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    REVISION="$REVISION-dirty"
fi
EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 0)}
CREATED=$(date -u -d "@$EPOCH" +%Y-%m-%dT%H:%M:%SZ)

T0=$(date +%s)
note "release build (cargo build --release --locked)"
cargo build --release --locked --bin "$NAME"
BIN="$ROOT/target/release/$NAME"
[ -x "$BIN" ] || fail "$BIN was not built"
T1=$(date +%s)

OUT="$ROOT/target/container"
CTX="$OUT/context"
R="$CTX/rootfs"
rm -rf "$CTX"
mkdir -p "$R"/{usr/bin,etc/ssl/certs,etc/chatapp-kommo-sync,var/lib/chatapp-kommo-sync,tmp,run}

strip -o "$R/usr/bin/$NAME" "$BIN"
chmod 0755 "$R/usr/bin/$NAME"

# The libraries the dynamic linker loads, at the paths ldd names (the interpreter among them).
if ldd "$BIN" | grep -q 'not found'; then
    fail "ldd cannot resolve a library of $BIN: $(ldd "$BIN" | grep 'not found')"
fi
LIBS=$(ldd "$BIN" | grep -oE '/[^ ]+\.so[^ ]*' | sort -u)
[ -n "$LIBS" ] || fail "ldd named no library (a static binary needs no change here, but check it)"
for l in $LIBS; do
    install -D -m 0755 "$(readlink -f "$l")" "$R$l"
done

CA=/etc/ssl/certs/ca-certificates.crt
[ -s "$CA" ] || fail "$CA is missing (Debian: apt-get install ca-certificates)"
install -m 0644 "$CA" "$R/etc/ssl/certs/ca-certificates.crt"

printf 'root:x:0:0:root:/root:/sbin/nologin\n%s:x:%s:%s:chatapp-kommo-sync:/var/lib/chatapp-kommo-sync:/sbin/nologin\n' \
    "$NAME" "$APP_UID" "$APP_GID" > "$R/etc/passwd"
printf 'root:x:0:\n%s:x:%s:\n' "$NAME" "$APP_GID" > "$R/etc/group"
printf 'passwd: files\ngroup: files\nhosts: files dns\n' > "$R/etc/nsswitch.conf"
chmod 0644 "$R/etc/passwd" "$R/etc/group" "$R/etc/nsswitch.conf"

# The layer: every entry root-owned except the state directory, one timestamp, sorted names.
# Owners are set in the tar (not on disk), so no chown is needed; `ADD` of a tar keeps them
# (a COPY of a directory would leave the state directory root-owned: the daemon then cannot
# create its db). Modes are set here for the same reason.
python3 - "$R" "$CTX/rootfs.tar" "$EPOCH" "$APP_UID" "$APP_GID" <<'PY'
import os, sys, tarfile
root, out, epoch, uid, gid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
special = {  # path -> (mode, uid, gid)
    "var/lib/chatapp-kommo-sync": (0o750, uid, gid),
    "tmp": (0o1777, 0, 0),
}
entries = []
for d, dirs, files in os.walk(root):
    for n in dirs + files:
        entries.append(os.path.relpath(os.path.join(d, n), root))
with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as t:
    for rel in sorted(entries):
        info = t.gettarinfo(os.path.join(root, rel), arcname=rel)
        info.mtime = epoch
        info.uid, info.gid, info.uname, info.gname = 0, 0, "", ""
        if info.isdir():
            info.mode = 0o755
        if rel in special:
            info.mode, info.uid, info.gid = special[rel]
        if info.isreg():
            with open(os.path.join(root, rel), "rb") as f:
                t.addfile(info, f)
        else:
            t.addfile(info)
PY
rm -rf "$R"
cp "$ROOT/packaging/container/Containerfile" "$CTX/Containerfile"

OLD_ID=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
note "podman build $IMAGE (FROM scratch, --pull=never)"
LABELS=(
    --label "org.opencontainers.image.title=$NAME"
    --label "org.opencontainers.image.description=$DESCRIPTION"
    --label "org.opencontainers.image.version=$VERSION"
    --label "org.opencontainers.image.licenses=$LICENSE"
    --label "org.opencontainers.image.revision=$REVISION"
    --label "org.opencontainers.image.created=$CREATED"
    --label "org.opencontainers.image.source=$SOURCE"
)
if [ "$SOURCE" = "$PLACEHOLDER_SOURCE" ]; then
    note "note: org.opencontainers.image.source is the placeholder $SOURCE (no CKS_IMAGE_SOURCE, no 'repository' in Cargo.toml, no http(s) git origin)"
fi
podman build --quiet --pull=never --timestamp "$EPOCH" --format oci "${LABELS[@]}" \
    -t "$IMAGE" "$CTX" >/dev/null
NEW_ID=$(podman image inspect --format '{{.Id}}' "$IMAGE")
if [ -n "$OLD_ID" ] && [ "$OLD_ID" != "$NEW_ID" ]; then
    # the previous build of this tag, unless something else still uses it
    podman rmi "$OLD_ID" >/dev/null 2>&1 || true
fi

ARCHIVE="$OUT/$NAME-$TAG.oci.tar"
rm -f "$ARCHIVE"
skopeo copy --quiet "containers-storage:$IMAGE" "oci-archive:$ARCHIVE:$TAG"
T2=$(date +%s)

SIZE=$(podman image inspect --format '{{.Size}}' "$IMAGE")
ASIZE=$(stat -c %s "$ARCHIVE")
note "image    $IMAGE (id ${NEW_ID:0:12}$( [ "$OLD_ID" = "$NEW_ID" ] && echo ', unchanged'))"
note "size     $SIZE bytes in storage (limit $MAX_BYTES), OCI archive $ASIZE bytes: $ARCHIVE"
note "contents binary $(stat -c %s "$BIN") bytes unstripped; libraries: $(echo $LIBS)"
note "time     release build $((T1 - T0)) s, image and archive $((T2 - T1)) s"
[ "$SIZE" -le "$MAX_BYTES" ] || fail "the image is $SIZE bytes, over $MAX_BYTES"
