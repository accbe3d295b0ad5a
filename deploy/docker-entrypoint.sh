#!/bin/sh
# The image's entrypoint: the first argument chooses the leadflow process to run (as PID 1, so
# SIGTERM reaches the service itself and it stops gracefully).
set -eu
case "${1:-}" in
  gateway | pricing_service | routing_service | delivery_service | ledger_service)
    exec python -m "$@"
    ;;
  leadflow)
    shift
    exec leadflow "$@"
    ;;
  *)
    echo "usage: gateway | pricing_service | routing_service | delivery_service | ledger_service | leadflow <command>" >&2
    exit 64
    ;;
esac
