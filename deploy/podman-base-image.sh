#!/usr/bin/env bash
# A stand-in for python:3.11-slim-bookworm, built from Debian's own packages, for machines that have
# podman but cannot reach Docker Hub. Prints the image's name; does nothing when it already exists.
#   deploy/podman-base-image.sh [IMAGE]      (as root: debootstrap needs it; default IMAGE below)
# Then:  podman --runtime runc build --network host --build-arg PYTHON_IMAGE=IMAGE -f deploy/Dockerfile .
set -euo pipefail
image=${1:-localhost/debian-python:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
podman=(podman --runtime runc)

if "${podman[@]}" image exists "$image"; then
    echo "$image"
    exit 0
fi
root=$(mktemp -d /tmp/debian-python.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$mirror" >&2
ln -sf python3 "$root/usr/bin/python"
# The host's bundle: on machines that reach the package registries through a TLS-intercepting proxy,
# only it holds the proxy's CA. On others it is the same Mozilla bundle Debian ships.
if [ -r /etc/ssl/certs/ca-certificates.crt ]; then
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
fi
# What python:3.11-slim would not carry either: apt's lists and caches, documentation.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
tar -C "$root" -c . | "${podman[@]}" import \
    --change "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt" \
    --change "ENV LANG=C.UTF-8" \
    --change 'CMD ["python3"]' - "$image" >&2
echo "$image"
