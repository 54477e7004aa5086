#!/usr/bin/env bash
# Generates the control plane's keys and NATS passwords into DIR (created 0700) with openssl,
# and prints the kubectl commands that create the Secrets from them (deploy/README.md:
# Secrets). Nothing is sent anywhere; keep DIR safe or delete it once the Secrets exist.
#
#   deploy/gen-secrets.sh ./ambient-secrets
#
# Formats (tests/tests/deploy.rs checks them with the events crate's own parsers):
#   command-signing.pem   the api's Ed25519 signing key, PKCS#8 PEM
#   command-verify.pem    its public key, SPKI PEM (concatenate several during a rotation)
#   sealing.key           the reconciler's X25519 sealing secret key: base64 of 32 bytes
#   sealing-public-key    its public half: base64 of 32 bytes
#   nats-<user>-password  NATS passwords of the api, reconciler, projector and subscriber users
#   cookie-secret         oauth-proxy cookie secret (OpenShift only): 32 characters
set -euo pipefail
dir="${1:?usage: deploy/gen-secrets.sh DIR}"
umask 077
mkdir -p "$dir"
cd "$dir"

openssl genpkey -algorithm ed25519 -out command-signing.pem
openssl pkey -in command-signing.pem -pubout -out command-verify.pem

# The raw 32-byte keys are the last 32 bytes of the DER encodings.
openssl genpkey -algorithm x25519 -out sealing.pem
openssl pkey -in sealing.pem -outform DER | tail -c 32 | base64 | tr -d '\n' >sealing.key
openssl pkey -in sealing.pem -pubout -outform DER | tail -c 32 | base64 | tr -d '\n' >sealing-public-key
rm -f sealing.pem

# A letter first: nats-server parses an all-digit value from the environment as a number.
for user in api reconciler projector subscriber; do
  printf 'n%s' "$(openssl rand -hex 24)" >"nats-$user-password"
done
openssl rand -base64 24 | tr -d '\n' >cookie-secret

cat <<EOF
Keys written to $(pwd). Create the Secrets (namespace ambient-system must exist:
kubectl apply -f deploy/base/rbac/00-namespace.yaml):

kubectl -n ambient-system create secret generic ambient-api-keys \\
  --from-file=command-signing.pem=$(pwd)/command-signing.pem \\
  --from-file=sealing-public-key=$(pwd)/sealing-public-key
kubectl -n ambient-system create secret generic ambient-reconciler-keys \\
  --from-file=command-verify.pem=$(pwd)/command-verify.pem \\
  --from-file=sealing.key=$(pwd)/sealing.key
for u in api reconciler projector subscriber; do
  kubectl -n ambient-system create secret generic ambient-nats-\$u \\
    --from-file=password=$(pwd)/nats-\$u-password
done
# OpenShift only:
kubectl -n ambient-system create secret generic ambient-api-oauth-cookie \\
  --from-file=cookie-secret=$(pwd)/cookie-secret
EOF
