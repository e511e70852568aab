#!/usr/bin/env bash
# make-test-pki.sh OUT_DIR [HOSTNAME_OR_IP ...]
#
# Generates everything a test or pilot install of the Linewatch broker needs, into OUT_DIR:
#   ca.crt / ca.key                 a local certificate authority (clients trust ca.crt)
#   server.crt / server.key         broker certificate, SAN: localhost, 127.0.0.1 + the arguments
#   client-<user>.crt / .key        client certificates (for require_certificate true)
#   passwd                          mosquitto password file for the users below
#   passwords.env                   the generated passwords: EDGE_PASSWORD=..., SCADA_PASSWORD=...
# Users: $LINEWATCH_PKI_USERS (default "edge scada operator refresh"), matching deploy/mosquitto/acl.
#
# For production use your plant's CA; this is for a test bench or a first install.
# Needs openssl (1.1.1 or newer) and mosquitto_passwd (package mosquitto).
set -euo pipefail

out="${1:?usage: make-test-pki.sh OUT_DIR [HOSTNAME_OR_IP ...]}"
shift
days="${LINEWATCH_PKI_DAYS:-825}"
users="${LINEWATCH_PKI_USERS:-edge scada operator refresh}"

for tool in openssl mosquitto_passwd; do
    command -v "$tool" >/dev/null || { echo "make-test-pki.sh: $tool not found" >&2; exit 3; }
done

mkdir -p "$out"
cd "$out"
umask 077  # keys and passwords readable by the owner only; install them with the right group

san="DNS:localhost,IP:127.0.0.1"
for name in "$@"; do
    if [[ "$name" =~ ^[0-9.]+$ || "$name" == *:* ]]; then san="$san,IP:$name"; else san="$san,DNS:$name"; fi
done

echo "==> CA"
openssl req -x509 -newkey rsa:2048 -sha256 -nodes -days "$days" \
    -keyout ca.key -out ca.crt -subj "/O=Linewatch/CN=Linewatch test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

sign() {  # sign NAME SUBJECT EXTENSIONS
    openssl req -newkey rsa:2048 -sha256 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2" 2>/dev/null
    openssl x509 -req -sha256 -days "$days" -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
        -out "$1.crt" -extfile <(printf '%b' "$3") 2>/dev/null
    rm -f "$1.csr"
}

echo "==> server certificate ($san)"
sign server "/O=Linewatch/CN=${1:-localhost}" \
    "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=$san\n"

: > passwords.env
rm -f passwd
touch passwd
for user in $users; do
    echo "==> user $user (client-$user.crt, password in passwords.env)"
    sign "client-$user" "/O=Linewatch/CN=$user" \
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"
    password="$(openssl rand -hex 16)"
    mosquitto_passwd -b passwd "$user" "$password"
    echo "$(echo "$user" | tr '[:lower:]-' '[:upper:]_')_PASSWORD=$password" >> passwords.env
done

chmod 644 ca.crt server.crt client-*.crt
echo "==> done: $(pwd)"
openssl verify -CAfile ca.crt server.crt
