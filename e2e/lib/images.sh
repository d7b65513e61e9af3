# shellcheck shell=bash
# Sourced by e2e/cluster: the images, docker-archive tars of one layer built into the cache and
# imported with ctr into every node's containerd (pack_image, import_image, import_on,
# binary_tar). The pause image (pause_ref, pause_tar), busybox (busybox_image), the PostgreSQL
# image from a minbase Debian root filesystem (debootstrap_rootfs, trim_rootfs, postgres_image),
# the operator's image on a small base (operator_base, operator_image, file_is_elf, check_libs),
# and clean_image_scratch for what a killed command left. Expects lib/common.sh (log, die,
# node_dir, ctr_on), lib/build.sh (debian_mirror; PAUSE_BIN from ensure_pause) and CACHE, NODES,
# PG_IMAGE, PG_IMAGE_RECIPE, OPERATOR_IMAGE, BUSYBOX_IMAGE, BASE_RECIPE. Sourcing it runs nothing.

# pack_image ROOTFS OUT.tar CONFIG_JSON_CONFIG_PART NAME:TAG...
pack_image() {
  local rootfs="$1" out="$2" cfg="$3"; shift 3
  local tmp; tmp="$(mktemp -d "$(dirname "$out")/.pack.XXXXXX")"
  tar --numeric-owner --xattrs --sort=name --mtime='2000-01-01 00:00:00Z' -C "$rootfs" -cf "$tmp/layer.tar" .
  local diff; diff="$(sha256sum "$tmp/layer.tar" | cut -d' ' -f1)"
  mkdir "$tmp/$diff"; mv "$tmp/layer.tar" "$tmp/$diff/layer.tar"
  printf '{"architecture":"amd64","os":"linux","created":"2000-01-01T00:00:00Z","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"2000-01-01T00:00:00Z","created_by":"sectordb e2e/cluster"}]}' \
    "$cfg" "$diff" >"$tmp/config.json"
  local cid; cid="$(sha256sum "$tmp/config.json" | cut -d' ' -f1)"
  mv "$tmp/config.json" "$tmp/$cid.json"
  local tags="" repos="" ref
  for ref in "$@"; do
    tags="$tags${tags:+,}\"$ref\""
    repos="$repos${repos:+,}\"${ref%:*}\":{\"${ref##*:}\":\"$diff\"}"
  done
  printf '[{"Config":"%s.json","RepoTags":[%s],"Layers":["%s/layer.tar"]}]' "$cid" "$tags" "$diff" >"$tmp/manifest.json"
  printf '{%s}' "$repos" >"$tmp/repositories"
  tar --numeric-owner --sort=name -C "$tmp" -cf "$out.partial" manifest.json repositories "$cid.json" "$diff"
  mv "$out.partial" "$out"
  echo "sha256:$cid" >"$out.id"
  rm -rf "$tmp"
}

# import_image TAR NAME:TAG: into every node whose containerd does not have NAME with the same
# config yet (side by side: each node has its own store).
import_image() {
  local tar="$1" ref="$2" node pids=() t0; t0=$(date +%s%N)
  for node in "${NODES[@]}"; do
    import_on "$node" "$tar" "$ref" & pids+=($!)
  done
  local p rc=0; for p in "${pids[@]}"; do wait "$p" || rc=1; done
  [ "$rc" = 0 ] || die "import of $ref failed"
  log "image $ref on every node ($(du -h "$tar" | cut -f1), $(( ($(date +%s%N) - t0) / 1000000 ))ms)"
}

import_on() { # NODE TAR NAME:TAG
  local node="$1" tar="$2" ref="$3" id; id="$(cat "$tar.id")"
  local marker; marker="$(node_dir "$node")/images/$(echo "$ref" | tr '/:' '__')"
  if [ -f "$marker" ] && [ "$(cat "$marker")" = "$id" ] && ctr_on "$node" images ls -q | grep -x "docker.io/$ref" >/dev/null; then
    return 0
  fi
  ctr_on "$node" images import --snapshotter overlayfs "$tar" >/dev/null || return 1
  local n
  for n in "$ref" "docker.io/$ref"; do
    ctr_on "$node" images ls -q | grep -x "$n" >/dev/null || ctr_on "$node" images tag --force \
      "$(ctr_on "$node" images ls -q | grep -x -e "$ref" -e "docker.io/$ref" | head -1)" "$n" >/dev/null
  done
  ctr_on "$node" images ls -q | grep -x "docker.io/$ref" >/dev/null || return 1
  mkdir -p "$(dirname "$marker")"; echo "$id" >"$marker"
}

# binary_tar NAME:TAG BINARY ENTRYPOINT-JSON USER: path of an image holding one static binary
# (built once per binary into the cache).
binary_tar() {
  local ref="$1" bin="$2" entry="$3" user="$4"
  local dir="$CACHE/images" key; key="$(sha256sum "$bin" | cut -c1-12)"
  local tar; tar="$dir/$(echo "${ref#local/}" | tr '/:' '__')-$key.tar"
  mkdir -p "$dir"
  if [ ! -f "$tar" ] || [ ! -f "$tar.id" ]; then
    local r; r="$(mktemp -d "$dir/.rootfs.XXXXXX")"
    mkdir -p "$r/etc" "$r/tmp"; chmod 1777 "$r/tmp"
    install -m 0755 "$bin" "$r/$(basename "$bin")"
    printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/:/sbin/nologin\n' >"$r/etc/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\n' >"$r/etc/group"
    pack_image "$r" "$tar" "{\"Entrypoint\":$entry,\"User\":\"$user\"}" "$ref" "docker.io/$ref"
    rm -rf "$r"
  fi
  echo "$tar"
}

pause_ref() { echo "local/pause:$(cat "$PAUSE_BIN/pause.tag")"; }
pause_tar() { binary_tar "$(pause_ref)" "$PAUSE_BIN/pause" '["/pause"]' 65535:65535; }

# busybox from Debian's static build: local-path-provisioner's helper pods (mkdir, rm) and checks.
busybox_image() {
  local dir="$CACHE/images" key; key="$(sha256sum /bin/busybox | cut -c1-12)"
  local tar="$dir/busybox-$key.tar"
  mkdir -p "$dir"
  if [ ! -f "$tar" ] || [ ! -f "$tar.id" ]; then
    local r a; r="$(mktemp -d "$dir/.rootfs.XXXXXX")"
    mkdir -p "$r/bin" "$r/tmp" "$r/etc"; chmod 1777 "$r/tmp"
    install -m 0755 /bin/busybox "$r/bin/busybox"
    for a in sh mkdir rm rmdir chmod chown ls cat echo sleep nc true false id stat; do ln -s busybox "$r/bin/$a"; done
    printf 'root:x:0:0:root:/:/bin/sh\n' >"$r/etc/passwd"; printf 'root:x:0:\n' >"$r/etc/group"
    pack_image "$r" "$tar" '{"Env":["PATH=/bin"],"Cmd":["/bin/sh"]}' "$BUSYBOX_IMAGE" "docker.io/$BUSYBOX_IMAGE"
    rm -rf "$r"
  fi
  import_image "$tar" "$BUSYBOX_IMAGE"
}

# Minbase Debian bookworm root filesystems, built with debootstrap from the machine's mirror.
debootstrap_rootfs() { # DIR INCLUDES
  local dir="$1" inc="$2" mirror; mirror="$(debian_mirror)"
  log "debootstrap minbase bookworm ($inc) from $mirror"
  rm -rf "$dir"
  env -u http_proxy -u https_proxy debootstrap --variant=minbase --include="$inc" bookworm "$dir" "$mirror" \
    >"$dir.log" 2>&1 || { tail -20 "$dir.log" >&2; die "debootstrap failed"; }
  local m; for m in proc sys dev/pts dev; do mountpoint -q "$dir/$m" && umount -l "$dir/$m"; done
  rm -f "$dir.log"
}

trim_rootfs() { # DIR
  local r="$1"
  rm -rf "${r:?}"/var/lib/apt/lists/* "$r"/var/cache/apt/* "$r"/var/cache/debconf/*-old "$r"/var/log/* \
    "$r"/usr/share/doc/* "$r"/usr/share/man/* "$r"/usr/share/info/* "$r"/usr/share/lintian \
    "$r"/usr/share/locale/* "$r"/tmp/* "$r"/var/tmp/*
  find "$r/usr/lib/locale" -mindepth 1 -maxdepth 1 ! -name C.utf8 -exec rm -rf {} + 2>/dev/null || true
  rm -rf "${r:?}"/dev/* "$r"/proc/* "$r"/sys/* "$r"/run/*
  chmod 1777 "$r/tmp"
}

postgres_image() {
  local key; key="$(printf 'recipe=%s\n' "$PG_IMAGE_RECIPE" | sha256sum | cut -c1-12)"
  local dir="$CACHE/images" tar="$CACHE/images/sectordb-postgres-15-$key.tar"
  mkdir -p "$dir"
  if [ ! -f "$tar" ] || [ ! -f "$tar.id" ]; then
    local t0; t0=$(date +%s)
    local r="$dir/.postgres-rootfs"
    # tini as PID 1: PostgreSQL as PID 1 takes a failed pgBackRest async archiver it reaps for a
    # crashed backend and restarts every session.
    debootstrap_rootfs "$r" postgresql-15,postgresql-15-pgaudit,pgbackrest,ca-certificates,tini
    # No default cluster in the image: the operator's pods run initdb on their own volume.
    rm -rf "$r/etc/postgresql/15/main" "$r/var/lib/postgresql/15/main"
    trim_rootfs "$r"
    mkdir -p "$r/var/run/postgresql"
    local uid gid; uid="$(awk -F: '$1=="postgres"{print $3}' "$r/etc/passwd")"; gid="$(awk -F: '$1=="postgres"{print $4}' "$r/etc/passwd")"
    chown "$uid:$gid" "$r/var/run/postgresql"; chmod 2775 "$r/var/run/postgresql"
    log "postgres user in the image: uid $uid gid $gid"
    pack_image "$r" "$tar" \
      '{"Env":["PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","LANG=C.UTF-8"],"Cmd":["/bin/bash"],"WorkingDir":"/"}' \
      "$PG_IMAGE" "docker.io/$PG_IMAGE"
    rm -rf "$r"
    log "built $PG_IMAGE in $(( $(date +%s) - t0 ))s ($(du -h "$tar" | cut -f1))"
  fi
  import_image "$tar" "$PG_IMAGE"
}

# A small base for the operator: libc6 + libgcc-s1 + the CA bundle, no shell, no package manager.
operator_base() { # prints the rootfs tarball path
  local dir="$CACHE/images" base
  base="$dir/operator-base-$(printf 'recipe=%s\n' "$BASE_RECIPE" | sha256sum | cut -c1-12).tar"
  if [ ! -f "$base" ]; then
    log "building the operator base root filesystem (libc6, libgcc-s1, ca-certificates)"
    local w; w="$(mktemp -d "$dir/.base.XXXXXX")"
    ( cd "$w" && apt-get download -q libc6 libgcc-s1 ca-certificates >&2 ) || die "apt-get download failed"
    mkdir "$w/r"
    local deb; for deb in "$w"/*.deb; do dpkg-deb -x "$deb" "$w/r"; done
    mkdir -p "$w/r/etc/ssl/certs" "$w/r/tmp" "$w/r/usr/local/bin"
    # What update-ca-certificates would produce.
    find "$w/r/usr/share/ca-certificates/mozilla" -name '*.crt' | sort | xargs cat >"$w/r/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$w/r/usr/share/doc" "$w/r/usr/share/lintian" "$w/r/usr/share/locale" "$w/r/usr/share/man" \
      "$w/r/usr/share/ca-certificates" "$w/r/usr/sbin/update-ca-certificates" "$w/r/etc/ca-certificates" \
      "$w/r/usr/lib/x86_64-linux-gnu/gconv"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$w/r/etc/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\n' >"$w/r/etc/group"
    mkdir -p "$w/r/home/nonroot"; chown 65532:65532 "$w/r/home/nonroot"; chmod 1777 "$w/r/tmp"
    tar --numeric-owner --sort=name -C "$w/r" -cf "$base.partial" .
    mv "$base.partial" "$base"
    rm -rf "$w"
  fi
  echo "$base"
}

operator_image() { # BINARY
  local bin="$1"
  [ -f "$bin" ] || die "no such binary: $bin"
  file_is_elf "$bin" || die "$bin is not an ELF executable"
  local base; base="$(operator_base)"
  local key; key="$( (sha256sum "$bin" | cut -d' ' -f1; sha256sum "$base" | cut -d' ' -f1) | sha256sum | cut -c1-12)"
  local dir="$CACHE/images" tar="$CACHE/images/sectordb-operator-dev-$key.tar"
  if [ ! -f "$tar" ] || [ ! -f "$tar.id" ]; then
    local t0; t0=$(date +%s)
    local r; r="$(mktemp -d "$dir/.oprootfs.XXXXXX")"
    tar -C "$r" -xf "$base"
    install -m 0755 "$bin" "$r/usr/local/bin/sectordb-operator"
    check_libs "$r" /usr/local/bin/sectordb-operator || { rm -rf "$r"; exit 1; }
    pack_image "$r" "$tar" \
      '{"Entrypoint":["/usr/local/bin/sectordb-operator"],"User":"65532:65532","Env":["PATH=/usr/local/bin:/usr/bin:/bin","SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],"WorkingDir":"/"}' \
      "$OPERATOR_IMAGE" "docker.io/$OPERATOR_IMAGE"
    rm -rf "$r"
    # Keep only the newest few operator images in the cache.
    find "$dir" -maxdepth 1 -name 'sectordb-operator-dev-*.tar' -printf '%T@ %p\n' | sort -rn | tail -n +4 \
      | cut -d' ' -f2- | while read -r old; do rm -f "$old" "$old.id"; done
    log "built $OPERATOR_IMAGE in $(( $(date +%s) - t0 ))s ($(du -h "$tar" | cut -f1))"
  fi
  import_image "$tar" "$OPERATOR_IMAGE"
}

file_is_elf() { [ "$(head -c4 "$1" | od -An -c | tr -d ' ')" = '177ELF' ]; }

# Work dirs a command killed half-way may have left in the image cache (we hold the lock).
clean_image_scratch() {
  rm -rf "$CACHE/images"/.pack.* "$CACHE/images"/.rootfs.* "$CACHE/images"/.base.* \
    "$CACHE/images"/.oprootfs.* "$CACHE/images"/*.partial 2>/dev/null || true
  if [ -d "$CACHE/images/.postgres-rootfs" ]; then
    local m; for m in proc sys dev/pts dev; do
      mountpoint -q "$CACHE/images/.postgres-rootfs/$m" && umount -l "$CACHE/images/.postgres-rootfs/$m"
    done
    rm -rf "$CACHE/images/.postgres-rootfs" "$CACHE/images/.postgres-rootfs.log"
  fi
  return 0
}

# Every shared library the binary needs must be in the root filesystem.
check_libs() { # ROOTFS PATH
  local r="$1" p="$2" lib
  for lib in $(LC_ALL=C readelf -d "$r$p" 2>/dev/null | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'); do
    if ! [ -e "$r/lib/x86_64-linux-gnu/$lib" ] && ! [ -e "$r/usr/lib/x86_64-linux-gnu/$lib" ] && ! [ -e "$r/lib64/$lib" ]; then
      log "ERROR: $p needs $lib, which the minimal base does not have (add its package to operator_base)"
      return 1
    fi
  done
}
