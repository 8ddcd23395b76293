#!/usr/bin/env bash
# Local base images for building the serving image without a registry.
#
#   scripts/container-base.sh            # prints the Python base image name when done
#   scripts/container-base.sh --rebuild  # throw the cached images away first
#
# Machines where CI runs have no Docker engine and reach no image registry, but they
# reach Debian's mirror and PyPI. So we debootstrap a minimal bookworm root file system,
# import it into buildah's storage as `localhost/tl2edge-base:bookworm`, and add the
# Debian Python 3.11 (`localhost/tl2edge-base-python:bookworm`). The Dockerfile then
# builds on it with `--build-arg BASE_IMAGE=localhost/tl2edge-base-python:bookworm`.
#
# Both images live in buildah's own storage and are reused on the next run, so only a
# fresh machine pays for debootstrap (about a minute here). Needs root; installs buildah and
# debootstrap with apt when they are missing.
#
# Environment: TL2EDGE_DEBIAN_MIRROR (default: the machine's own apt sources),
# TL2EDGE_DEBIAN_SUITE (default bookworm).
set -euo pipefail

SUITE="${TL2EDGE_DEBIAN_SUITE:-bookworm}"
ROOT_IMAGE="localhost/tl2edge-base:${SUITE}"
PYTHON_IMAGE="localhost/tl2edge-base-python:${SUITE}"

log() { echo "container-base: $*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "needs root (debootstrap and buildah's chroot isolation); run it with sudo"

rebuild=0
[[ "${1:-}" == "--rebuild" ]] && rebuild=1

have_image() { buildah inspect --type image "$1" >/dev/null 2>&1; }

install_tools() {
    local missing=()
    command -v buildah >/dev/null || missing+=(buildah)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    [[ ${#missing[@]} -eq 0 ]] && return
    command -v apt-get >/dev/null || die "${missing[*]} missing and there is no apt-get to install them"
    log "installing ${missing[*]} with apt"
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
}

# The Debian archive this machine already uses (deb822 .sources files or sources.list),
# so a mirror or caching proxy configured here is used for the image too.
debian_mirror() {
    if [[ -n "${TL2EDGE_DEBIAN_MIRROR:-}" ]]; then
        echo "$TL2EDGE_DEBIAN_MIRROR"
        return
    fi
    local uri
    uri=$(
        {
            grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}'
            grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
                sed -E 's/^deb (\[[^]]*\] )?//' | awk '{print $1}'
        } | grep -E '/debian/?$' | head -n1
    )
    echo "${uri:-http://deb.debian.org/debian}"
}

# Extra CAs the host trusts (e.g. a TLS-inspecting egress proxy) must be trusted inside
# the build too, or pip cannot reach PyPI. Nothing is copied on a machine without any.
copy_host_cas() {
    local mnt="$1"
    compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null || return 0
    mkdir -p "$mnt/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$mnt/usr/local/share/ca-certificates/"
    log "trusting the host's extra CA certificates inside the base image"
}

build_root_image() {
    local mirror rootfs ctr mnt
    mirror=$(debian_mirror)
    rootfs=$(mktemp -d /var/tmp/tl2edge-rootfs.XXXXXX)
    log "debootstrap --variant=minbase $SUITE from $mirror (about a minute, once per machine)"
    if ! debootstrap --variant=minbase "$SUITE" "$rootfs" "$mirror" >&2; then
        rm -rf "$rootfs"
        die "debootstrap failed; see the log above (is $mirror reachable?)"
    fi
    # Smaller image: no apt lists, caches or docs we will never read.
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/usr/share/doc/* \
        "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
    ctr=$(buildah from scratch)
    mnt=$(buildah mount "$ctr")
    cp -a "$rootfs"/. "$mnt"/
    buildah umount "$ctr" >/dev/null
    rm -rf "$rootfs"
    buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 --cmd /bin/bash "$ctr"
    buildah commit --quiet --rm "$ctr" "$ROOT_IMAGE" >/dev/null
    log "committed $ROOT_IMAGE"
}

build_python_image() {
    local ctr mnt
    ctr=$(buildah from "$ROOT_IMAGE")
    mnt=$(buildah mount "$ctr")
    copy_host_cas "$mnt"
    # Same apt sources as the host, reduced to the Debian archive and its security suite.
    cat >"$mnt/etc/apt/sources.list" <<EOF
deb $(debian_mirror) $SUITE main
deb $(debian_mirror) $SUITE-updates main
EOF
    buildah umount "$ctr" >/dev/null
    buildah run --isolation chroot "$ctr" -- sh -ec '
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends python3 python3-venv ca-certificates
        update-ca-certificates >/dev/null
        apt-get clean
        rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/*
    ' >&2
    buildah commit --quiet --rm "$ctr" "$PYTHON_IMAGE" >/dev/null
    log "committed $PYTHON_IMAGE"
}

install_tools
# One builder at a time (`make image` and the container test may start together).
exec 9>/var/lock/tl2edge-container-base.lock
flock 9
if [[ $rebuild -eq 1 ]]; then
    buildah rmi "$PYTHON_IMAGE" "$ROOT_IMAGE" >/dev/null 2>&1 || true
fi
if have_image "$PYTHON_IMAGE"; then
    log "reusing $PYTHON_IMAGE"
else
    have_image "$ROOT_IMAGE" || build_root_image
    build_python_image
fi
echo "$PYTHON_IMAGE"
