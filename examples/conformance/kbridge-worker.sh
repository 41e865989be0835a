#!/bin/sh
# kbridge worker under the conformance kit: maps the kit's variables to its
# flags and handles records with "kbridge conformance-handler".
#   kbridge conformance -- sh examples/conformance/kbridge-worker.sh [PATH-TO-KBRIDGE]
# (KBRIDGE_REDIS_URL and KBRIDGE_PREFIX are read by kbridge itself.)
kbridge=${1:-kbridge}
exec "$kbridge" worker --exec "'$kbridge' conformance-handler" \
  --group "$KBRIDGE_GROUP" --consumer "$KBRIDGE_CONSUMER" \
  --visibility-timeout "${KBRIDGE_VISIBILITY_TIMEOUT_MS}ms" \
  --max-deliveries "$KBRIDGE_MAX_DELIVERIES" \
  --backoff-min "${KBRIDGE_BACKOFF_MS}ms" \
  --shutdown-timeout "${KBRIDGE_SHUTDOWN_TIMEOUT_MS}ms" \
  --log-level warn
