#!/bin/sh
# Adds the optional extra CA certificates (docker/extra-ca-certs/*.crt, copied to $1) to the
# image's system trust store. Without any certificate it changes nothing.
set -eu
dir="${1:?usage: install-ca-certs.sh DIR}"
rm -f "$dir/README.md" "$dir/.gitignore"
found=0
for cert in "$dir"/*.crt; do
    [ -e "$cert" ] && found=$((found + 1))
done
if [ "$found" = 0 ]; then
    echo "extra CA certificates: none"
    exit 0
fi
if ! command -v update-ca-certificates >/dev/null 2>&1; then
    echo "extra CA certificates given, but the base image has no update-ca-certificates" \
         "(Debian/Ubuntu package ca-certificates)" >&2
    exit 1
fi
update-ca-certificates
echo "extra CA certificates: added $found file(s)"
