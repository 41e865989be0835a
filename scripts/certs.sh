#!/usr/bin/env bash
# A throw-away certificate authority, a server and a client certificate for
# tests on loopback (Kafka SASL_SSL, Redis TLS). Never use them in production.
set -euo pipefail

LOG_NAME=certs.sh
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/_lib.sh
source "$SCRIPT_DIR/_lib.sh"

usage() {
  cat <<EOF
Usage: scripts/certs.sh DIR

Writes a fresh test CA and two certificates signed by it into DIR (created if
missing), with openssl (installed with apt-get when missing):

  ca.crt, ca.key          the CA (self-signed, 7 days)
  server.crt, server.key  CN=localhost, SAN DNS:localhost + IP:127.0.0.1, serverAuth
                          (Kafka reads it as a PEM keystore; redis-server --tls-cert-file)
  client.crt, client.key  CN=\${CERTS_CLIENT_CN:-kbridge}, clientAuth (for Redis
                          tls-auth-clients and Kafka ssl.client.auth)
  server.pem              server.key + server.crt in one file (Kafka's PEM keystore)

Keys are EC P-256, unencrypted PKCS#8, mode 0600. A DIR that already holds all
the files is left as it is (exit 0), so concurrent callers can share one.
Two runs into two dirs give two unrelated CAs: a client that trusts one must
refuse the other's server (the wrong-CA tests rely on it).
EOF
}

[[ ${1:-} == -h || ${1:-} == --help || ${1:-} == help ]] && { usage; exit 0; }
(( $# == 1 )) || { usage >&2; exit 2; }
DIR=$1
CLIENT_CN=${CERTS_CLIENT_CN:-kbridge}
FILES=(ca.crt ca.key server.crt server.key server.pem client.crt client.key)

complete() {
  local f
  for f in "${FILES[@]}"; do [[ -s $DIR/$f ]] || return 1; done
}

ensure_cmds openssl:openssl
mkdir -p "$DIR"
complete && exit 0

# Generate in a temporary dir beside DIR, then move the files in: a reader
# never sees half a set.
tmp=$(mktemp -d "$DIR/.certs.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
umask 077

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

key "$tmp/ca.key"
openssl req -x509 -new -key "$tmp/ca.key" -sha256 -days 7 -subj "/CN=kbridge test CA $(date +%s%N)" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
  -out "$tmp/ca.crt" 2>/dev/null || die "openssl could not make the CA"

# sign NAME CN EXTENSIONS
sign() {
  local name=$1 cn=$2 ext=$3
  key "$tmp/$name.key"
  openssl req -new -key "$tmp/$name.key" -subj "/CN=$cn" -out "$tmp/$name.csr" 2>/dev/null ||
    die "openssl could not make the $name request"
  printf '%b' "$ext" >"$tmp/$name.ext"
  openssl x509 -req -in "$tmp/$name.csr" -CA "$tmp/ca.crt" -CAkey "$tmp/ca.key" -CAcreateserial \
    -days 7 -sha256 -extfile "$tmp/$name.ext" -out "$tmp/$name.crt" 2>/dev/null ||
    die "openssl could not sign the $name certificate"
  rm -f "$tmp/$name.csr" "$tmp/$name.ext"
}
sign server localhost 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n'
sign client "$CLIENT_CN" 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n'
cat "$tmp/server.key" "$tmp/server.crt" >"$tmp/server.pem"
rm -f "$tmp"/*.srl
chmod 0644 "$tmp"/*.crt

for f in "${FILES[@]}"; do mv -f "$tmp/$f" "$DIR/$f"; done
log "test CA and certificates in $DIR"
