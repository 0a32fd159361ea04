#!/usr/bin/env bash
# Groups at scale (issue 25): one group of 10,000 members, the fan-out
# endpoint (/ws/fanout: no lookup), beside the hand-written fan-outs. First
# the layer's own cost of an idle member (Go benchmarks: bytes and
# goroutines per member), then bench/rooms.sh with these defaults:
#
#	memory, one instance (all 10,000 sockets there): raw/memory/1 (the
#	  hand-written hub in process), sync/memory/1, async/memory/1;
#	for N in $INSTANCES (default "2 4"), the members spread over N
#	  instances: raw/nats/N (the hand-written NATS fan-out),
#	  sync/nats/N, async/nats/N, sync/postgres/N, async/postgres/N.
#
#   bench/scale.sh                                   # 3 rounds, 10,000 members, 4 senders x 10
#   ROUNDS=5 INSTANCES=2 bench/scale.sh
#   MEMBERS=5000 MESSAGES=20 ENDPOINTS="fanout room" bench/scale.sh
#   IDLE=0 CONFIGS="raw/nats/2 async/nats/2" bench/scale.sh   # no Go benchmarks; raw/memory/1 is added
#   ENDPOINTS=room MESSAGES=5 INSTANCES=2 SERVER_FLAGS="-wait-timeout 30s" bench/scale.sh   # with the lookup
#
# Environment: ROUNDS (3), MEMBERS (10000), SENDERS (4), MESSAGES per
# sender (10: each message is MEMBERS deliveries; a run then takes 10-30 s
# on 2 busy cores), ENDPOINTS (fanout), INSTANCES ("2 4"), CONFIGS (the
# list above), PORT (18290: instances on PORT+1..., nats-server on
# PORT+100), IDLE (1: run the idle-member benchmarks first; 0: skip them),
# SERVER_FLAGS (added to every instance's bench/server flags, e.g.
# "-wait-timeout 30s": with the lookup (ENDPOINTS=room) 10,000 events a
# message wait for 6 slots per instance, and past the default 2 s the
# members are closed with 1013).
# See bench/rooms.sh for the columns.
#
# Needs: Go; jq; PostgreSQL at $DATABASE_URL, else 127.0.0.1:5432 as user
# postgres without a password (the servers and the load client's
# pg_stat_activity sampler use it; the postgres engine's LISTEN/NOTIFY
# too); nats-server on PATH or at /usr/sbin/nats-server (rooms.sh starts
# its own copy on PORT+100 unless $NATS_URL names one); a hard limit of
# open files above MEMBERS (the client holds every socket; Go raises its
# soft limit to the hard one). All traffic stays on 127.0.0.1: one source
# address is enough for 10,000 sockets per instance (28,000 ephemeral
# ports, and Linux reuses TIME_WAIT ports on loopback:
# net.ipv4.tcp_tw_reuse=2).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export ROUNDS=${ROUNDS:-3} MEMBERS=${MEMBERS:-10000} SENDERS=${SENDERS:-4} MESSAGES=${MESSAGES:-10}
export ENDPOINTS=${ENDPOINTS:-fanout}
if [ -z "${CONFIGS:-}" ]; then
	CONFIGS="raw/memory/1 sync/memory/1 async/memory/1"
	for n in ${INSTANCES:-2 4}; do
		CONFIGS+=" raw/nats/$n sync/nats/$n async/nats/$n sync/postgres/$n async/postgres/$n"
	done
fi
export CONFIGS

hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt $((MEMBERS + 1000)) ]; then
	echo "scale.sh: $MEMBERS members need more open files than the hard limit $hard (ulimit -Hn)" >&2
	exit 1
fi

echo "# scale: load average $(cut -d' ' -f1-3 /proc/loadavg), $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
if [ "${IDLE:-1}" = 1 ]; then
	echo "# the layer's cost of an idle member: groups, 10,000 members of one group (memory engine);"
	echo "# wsconsumer, 5,000 idle sockets joining one group (what joining adds per socket, at rest)"
	go test -run x -bench 'IdleMembers' -benchtime 1x ./groups ./wsconsumer | grep '^Benchmark'
fi
exec bench/rooms.sh
