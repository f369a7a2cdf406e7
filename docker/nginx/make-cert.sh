#!/usr/bin/env bash
# A self-signed certificate for nginx's TLS server, for development only:
# docker/nginx/tls/blaze.crt and blaze.key (never committed).
#
#   docker/nginx/make-cert.sh [HOSTNAME [DIRECTORY]]   # localhost, docker/nginx/tls
set -euo pipefail
host=${1:-localhost}
directory=${2:-"$(cd "$(dirname "$0")" && pwd)/tls"}
mkdir -p "$directory"
openssl req -x509 -newkey rsa:2048 -sha256 -days 365 -nodes \
  -keyout "$directory/blaze.key" -out "$directory/blaze.crt" \
  -subj "/CN=$host" -addext "subjectAltName=DNS:$host,IP:127.0.0.1" 2>/dev/null
chmod 600 "$directory/blaze.key"
echo "wrote $directory/blaze.crt and blaze.key for $host"
