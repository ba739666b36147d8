#!/bin/sh
# Installs the real servers the tests start (redis-server, prometheus with
# promtool, nginx; chromium for the pages) from Debian's packages when they
# are missing. The tests run them on loopback ports of their own; nothing is
# started here.
set -eu
missing=""
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
command -v nginx >/dev/null 2>&1 || missing="$missing nginx"
command -v amtool >/dev/null 2>&1 || missing="$missing prometheus-alertmanager"
[ -x /usr/bin/chromium ] || missing="$missing chromium"
# Sentinels run as `redis-server --sentinel`; redis-cli comes with it.
# The Kubernetes manifests render with kubectl's kustomize (v5), which Debian
# does not package: tests/kubernetes_test.ts names it when it is missing.
command -v kubectl >/dev/null 2>&1 ||
  echo "kubectl not found: tests/kubernetes_test.ts needs it (kustomize v5)" >&2
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "tests need:$missing (Debian packages); install them, then run the tests again" >&2
  exit 1
fi
echo "installing$missing from Debian for the tests" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends $missing >/dev/null
