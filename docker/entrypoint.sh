#!/bin/sh
# The container's command, also runnable on the host from the repository root:
#   entrypoint.sh [serve] [--flag ...]   the inference server (settings from BACKTRACK_* variables)
#   entrypoint.sh train [VAR=value ...]  `make train` (CONFIG=... picks the training config)
#   entrypoint.sh COMMAND [ARG ...]      anything else, e.g. `bash` or `python -m training.evaluate`
# `exec` makes the server PID 1 in a container, so `docker stop`'s SIGTERM reaches it directly.
set -eu

command="${1:-serve}"
if [ "$#" -gt 0 ]; then
    shift
fi

case "$command" in
    serve)
        exec python -m server "$@"
        ;;
    train)
        exec make --no-print-directory train VENV="${VIRTUAL_ENV:-.venv}" "$@"
        ;;
    *)
        exec "$command" "$@"
        ;;
esac
