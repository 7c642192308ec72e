#!/bin/sh
# One-shot (temporalio/admin-tools): create posflow's namespace and register the custom search
# attributes its workflows upsert (workflows/search_attributes.py). A workflow that upserts an
# attribute the server does not know fails its task until the attribute exists, so this runs
# before any worker polls. Safe to run again.
set -eu

ADDRESS="${TEMPORAL_ADDRESS:-temporal:7233}"
NAMESPACE="${TEMPORAL_NAMESPACE:-posflow}"
RETENTION="${TEMPORAL_NAMESPACE_RETENTION:-720h}"

echo "waiting for the Temporal frontend at ${ADDRESS}"
attempt=0
until temporal operator cluster health --address "$ADDRESS" >/dev/null 2>&1; do
  attempt=$((attempt + 1))
  [ "$attempt" -lt 60 ] || { echo "Temporal did not become healthy"; exit 1; }
  sleep 2
done

if temporal operator namespace describe --address "$ADDRESS" -n "$NAMESPACE" >/dev/null 2>&1; then
  echo "namespace ${NAMESPACE} exists"
else
  temporal operator namespace create --address "$ADDRESS" -n "$NAMESPACE" --retention "$RETENTION"
  echo "namespace ${NAMESPACE} created (retention ${RETENTION})"
fi

# name:type, as in workflows/search_attributes.py (nothing personal in them).
ATTRIBUTES="PosStage:Keyword PosChannel:Keyword PosMerchantType:Keyword PosReviewRound:Int
PosNeedsAttention:Bool PosStageDeadline:Datetime"

known=$(temporal operator search-attribute list --address "$ADDRESS" -n "$NAMESPACE")
for attribute in $ATTRIBUTES; do
  name="${attribute%%:*}"
  type="${attribute##*:}"
  if printf '%s\n' "$known" | grep -qw "$name"; then
    echo "search attribute ${name} exists"
  else
    temporal operator search-attribute create --address "$ADDRESS" -n "$NAMESPACE" \
      --name "$name" --type "$type"
    echo "search attribute ${name} (${type}) registered"
  fi
done
