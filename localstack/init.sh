#!/usr/bin/env bash
# Apply a topology (default: the reference application's) to a running LocalStack, host mode or Docker.
#
#   localstack/init.sh [ENDPOINT [TOPOLOGY]]
#
# ENDPOINT defaults to $AWS_ENDPOINT_URL, else the host-mode instance of localstack.sh (`localstack.sh endpoint`).
# TOPOLOGY is a .yaml/.json file or module:ATTRIBUTE (default microbus.reference.daemons.reference:TOPOLOGY).
# Uses `microbus` from $MICROBUS, else PATH, else the repository's .venv. Emulator-only dummy credentials.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
endpoint="${1:-${AWS_ENDPOINT_URL:-$("$here/localstack.sh" endpoint)}}"
topology="${2:-microbus.reference.daemons.reference:TOPOLOGY}"
microbus="${MICROBUS:-$(command -v microbus || echo "$here/../.venv/bin/microbus")}"
AWS_ENDPOINT_URL="$endpoint" AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test \
    AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}" \
    "$microbus" topology --topology "$topology" apply
