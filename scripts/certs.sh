#!/usr/bin/env bash
# A throw-away certificate authority, server and client certificates for
# tests on loopback (Kafka SASL_SSL, Redis TLS). Never use them in production.
set -euo pipefail

LOG_NAME=certs.sh
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/_lib.sh
source "$SCRIPT_DIR/_lib.sh"

usage() {
  cat <<EOF
Usage: scripts/certs.sh DIR [NAME...]

Writes a test CA and certificates signed by it into DIR (created if missing),
with openssl (installed with apt-get when missing):

  ca.crt, ca.key          the CA (self-signed, 7 days)
  server.crt, server.key  CN=localhost, SAN DNS:localhost + IP:127.0.0.1, serverAuth and
                          clientAuth (Kafka reads it as a PEM keystore; redis-server
                          --tls-cert-file, which a cluster node also presents to the others)
  client.crt, client.key  CN=\${CERTS_CLIENT_CN:-kbridge}, clientAuth (for Redis
                          tls-auth-clients and Kafka ssl.client.auth)
  server.pem              server.key + server.crt in one file (Kafka's PEM keystore)

Each NAME adds server-NAME.crt and server-NAME.key: CN=NAME, SAN DNS:NAME +
IP:127.0.0.1, serverAuth and clientAuth, signed by the same CA (a certificate
per node of a Redis Cluster). NAME: letters, digits, '.' and '-'.

Keys are EC P-256, unencrypted PKCS#8, mode 0600. Concurrent callers may share
one DIR: they take turns (flock on DIR/.lock). Files already there are kept
while every certificate is valid for another \${CERTS_MIN_VALIDITY:-3600} seconds;
a missing one (a NAME not made yet) is added with the same CA; when one
expires before, the whole set is made again with a new CA.
Two runs into two dirs give two unrelated CAs: a client that trusts one must
refuse the other's server (the wrong-CA tests rely on it).
EOF
}

[[ ${1:-} == -h || ${1:-} == --help || ${1:-} == help ]] && { usage; exit 0; }
(( $# >= 1 )) || { usage >&2; exit 2; }
DIR=$1
shift
NAMES=("$@")
CLIENT_CN=${CERTS_CLIENT_CN:-kbridge}
MIN_VALIDITY=${CERTS_MIN_VALIDITY:-3600}
[[ $MIN_VALIDITY =~ ^[0-9]+$ ]] || die "CERTS_MIN_VALIDITY must be seconds"
BASE=(ca.crt ca.key server.crt server.key server.pem client.crt client.key)
for n in "${NAMES[@]}"; do
  [[ $n =~ ^[A-Za-z0-9][A-Za-z0-9.-]*$ ]] || die "NAME '$n': letters, digits, '.' and '-' only"
done

# valid FILE...: 0 when each exists and the CA is valid for at least another
# MIN_VALIDITY seconds; 1 when one is missing; 2 when the CA expires before.
# The CA expires first: the certificates it signed were made with it or
# after it, for as long, and are made again with a new one.
valid() {
  local f
  for f in "$@"; do
    [[ -s $DIR/$f ]] || return 1
  done
  openssl x509 -checkend "$MIN_VALIDITY" -noout -in "$DIR/ca.crt" >/dev/null 2>&1 || return 2
}

ensure_cmds openssl:openssl
mkdir -p "$DIR"
# One caller at a time: without the lock, callers that all found DIR
# incomplete would each move a set of their own in, file by file, and leave
# the CA of one beside the server certificate of another.
exec 9>"$DIR/.lock"
flock -w 300 9 || die "timed out waiting for $DIR/.lock"

named=()
for n in "${NAMES[@]}"; do named+=("server-$n.crt" "server-$n.key"); done
fresh=0 # 1: a new CA and every certificate
rc=0
valid "${BASE[@]}" || rc=$?
if (( rc == 0 )); then
  rc2=0
  valid "${named[@]}" || rc2=$?
  (( rc2 == 0 )) && exit 0
  (( rc2 == 2 )) && fresh=1
else
  fresh=1
fi
(( rc == 2 || fresh && rc == 0 )) && log "a certificate in $DIR expires within ${MIN_VALIDITY}s: making a new set"

# Generate in a temporary dir beside DIR, then move the files in.
tmp=$(mktemp -d "$DIR/.certs.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
umask 077

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# sign NAME CN EXTENSIONS (with the CA in $tmp)
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
# A server certificate is also a client one: a Redis Cluster node presents
# it when it connects to the other nodes (tls-cluster, tls-replication).
server_ext() {
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=%s\n' "$1"
}

files=()
if (( fresh )); then
  key "$tmp/ca.key"
  openssl req -x509 -new -key "$tmp/ca.key" -sha256 -days 7 -subj "/CN=kbridge test CA $(date +%s%N)" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    -out "$tmp/ca.crt" 2>/dev/null || die "openssl could not make the CA"
  sign server localhost "$(server_ext DNS:localhost,IP:127.0.0.1)"
  sign client "$CLIENT_CN" 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n'
  cat "$tmp/server.key" "$tmp/server.crt" >"$tmp/server.pem"
  files+=("${BASE[@]}")
  # A new CA: the named certificates already in DIR are made again too.
  for f in "$DIR"/server-*.crt; do
    [[ -e $f ]] || continue
    n=${f##*/server-}
    n=${n%.crt}
    [[ " ${NAMES[*]} " == *" $n "* ]] || NAMES+=("$n")
  done
else
  cp "$DIR/ca.crt" "$DIR/ca.key" "$tmp/"
fi
for n in "${NAMES[@]}"; do
  if (( fresh )) || ! valid "server-$n.crt" "server-$n.key"; then
    sign "server-$n" "$n" "$(server_ext "DNS:$n,IP:127.0.0.1")"
    files+=("server-$n.crt" "server-$n.key")
  fi
done
rm -f "$tmp"/*.srl
chmod 0644 "$tmp"/*.crt

# The CA last: a reader that does not take the lock and waits for ca.crt
# finds the certificates it signed already in place.
for f in "${files[@]}"; do [[ $f == ca.* ]] || mv -f "$tmp/$f" "$DIR/$f"; done
for f in "${files[@]}"; do [[ $f != ca.* ]] || mv -f "$tmp/$f" "$DIR/$f"; done
log "test CA and certificates in $DIR${NAMES[*]:+ (and for ${NAMES[*]})}"
