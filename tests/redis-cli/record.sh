#!/usr/bin/env bash
# Records tests/redis-cli/session.expected: what a real Redis answers to session.redis.
#
# Needs Debian's redis-server and redis-tools (apt-get install redis-server redis-tools). The
# committed file was recorded with Redis 7.0.15 (Debian 12) by running this script.
set -euo pipefail
cd "$(dirname "$0")"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --save "" --appendonly no --daemonize no >/dev/null &
server=$!
trap 'kill "$server"' EXIT
until redis-cli -p "$port" PING >/dev/null 2>&1; do sleep 0.1; done
redis-cli -p "$port" < session.redis > session.expected
echo "recorded session.expected with $(redis-server --version | cut -d' ' -f3)"
