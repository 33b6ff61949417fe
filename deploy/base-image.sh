#!/usr/bin/env bash
# Builds a Debian bookworm base image without a container registry: debootstrap a minimal rootfs
# from Debian's package mirror and `docker import` it. The image is the RUNTIME_IMAGE of
# deploy/Dockerfile.prebuilt (and works as that of deploy/Dockerfile).
#
#   sudo bash deploy/base-image.sh [TAG]        # default tag: ibench-base:bookworm
#
# Needs root, debootstrap (apt-get install debootstrap) and a reachable Debian mirror
# (IBENCH_DEBIAN_MIRROR, default http://deb.debian.org/debian). Does nothing when TAG exists.
set -euo pipefail
tag="${1:-ibench-base:bookworm}"
mirror="${IBENCH_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "base-image: $tag exists"
    exit 0
fi
command -v debootstrap >/dev/null || {
    echo "base-image: debootstrap is missing: apt-get install debootstrap" >&2
    exit 1
}
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=ca-certificates,procps bookworm "$root" "$mirror" >&2
# Nothing of the package caches is needed at run time.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$tag"
echo "base-image: built $tag"
