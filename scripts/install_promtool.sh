#!/usr/bin/env bash
# Installs promtool (Debian's `prometheus` package ships it), which `make docker-lint` uses to
# check docker/prometheus/prometheus.yml, the dashboard's PromQL and the server's /metrics text.
# The package's service is never started: promtool is the only part used.
set -euo pipefail

if ! command -v promtool >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus
fi

echo "promtool ready: $(command -v promtool)"
