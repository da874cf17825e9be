#!/bin/sh
# Throwaway TLS material and a token for the local compose stack (never for production):
# a CA, a server certificate for localhost / 127.0.0.1 / aeguard, and one client token.
# Writes deploy/secrets/ (git-ignored). Needs openssl.
set -eu
dir="$(dirname "$0")/secrets"
mkdir -p "$dir"
cd "$dir"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -keyout ca.key -out ca.crt -subj "/CN=aeguard dev CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout server.key -out server.csr -subj "/CN=aeguard" 2>/dev/null
printf 'subjectAltName=DNS:localhost,DNS:aeguard,IP:127.0.0.1\n' > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
    -extfile server.ext -out server.crt 2>/dev/null
token=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
printf '%s\n' "$token" > client-token
printf 'dev-client:%s\n' "$token" > tokens
chmod 0644 server.key tokens  # read by the container's non-root user
rm -f server.csr server.ext ca.srl
echo "wrote $(pwd): ca.crt server.crt server.key tokens client-token"
