#!/usr/bin/env bash
# Load benchmark: raw, sync and async (websocket) and raw, sync and atomic
# (HTTP) back to back, interleaved (the order rotates every round), several
# rounds, each run against a fresh server process; then idle sockets held
# against raw, sync and async. Prints every run's JSON line, then the
# medians and the ratios to raw (per round, paired, then the median).
#
#   bench/run.sh                      # 4 rounds, 8 clients x 3000 messages
#   ROUNDS=6 CLIENTS=4 MESSAGES=5000 IDLE=5000 bench/run.sh
#   WS_MODES="raw pgxpool sync pgx" HTTP_MODES="raw pgxpool sync pgx" IDLE=0 bench/run.sh
#
# Needs jq and PostgreSQL ($DATABASE_URL, else 127.0.0.1:5432 as user
# postgres). Traffic goes to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

rounds=${ROUNDS:-4}
clients=${CLIENTS:-8}
messages=${MESSAGES:-3000}
idle=${IDLE:-5000}
port=${PORT:-18090}
# The modes of each protocol; raw, the baseline of the ratios, must be among them.
ws_modes=${WS_MODES:-raw sync async}
http_modes=${HTTP_MODES:-raw sync atomic}
url=http://127.0.0.1:$port

source bench/lib.sh
need jq
go build -o "$tmp/server" ./bench/server
go build -o "$tmp/load" ./bench/load
results=$tmp/results.jsonl

echo "# $(nproc) cores, $(go version | cut -d' ' -f3), $(psql --version 2>/dev/null || echo PostgreSQL), $(date -u +%FT%TZ)"
echo "# rounds=$rounds clients=$clients messages=$messages idle=$idle"

# serve MODE: starts a server in the background, sets pid.
serve() {
	"$tmp/server" -mode "$1" -addr "127.0.0.1:$port" -app "dbscope-bench-$1" >"$tmp/server.out" 2>&1 &
	pid=$!
}
stop() {
	kill -TERM "$pid"
	wait "$pid" || { echo "server failed:" >&2; cat "$tmp/server.out" >&2; exit 1; }
	pid=
}
load() { # mode label args...
	local mode=$1 label=$2
	shift 2
	"$tmp/load" -url "$url" -app "dbscope-bench-$mode" -server-pid "$pid" -label "$label" "$@"
}

for r in $(seq 1 "$rounds"); do
	for proto in ws http; do
		if [ "$proto" = ws ]; then read -ra modes <<<"$ws_modes"; else read -ra modes <<<"$http_modes"; fi
		n=${#modes[@]}
		for i in $(seq 0 $((n - 1))); do
			mode=${modes[$(((i + r) % n))]}
			serve "$mode"
			load "$mode" "$proto/$mode/$r" -proto "$proto" -clients "$clients" -messages "$messages" | tee -a "$results"
			stop
		done
	done
done

# Idle sockets: the server's peak RSS with 100 messages and no idle
# socket, then again with $idle idle sockets held open, same process.
if [ "$idle" -gt 0 ]; then
	for mode in raw sync async; do
		serve "$mode"
		load "$mode" "idle/$mode/0" -clients 4 -messages 100 >"$tmp/idle0.json"
		load "$mode" "idle/$mode/$idle" -clients 4 -messages 100 -idle "$idle" | tee -a "$results"
		tail -1 "$results" | jq -c --slurpfile z "$tmp/idle0.json" \
			'{label: .label, server_bytes_per_idle_socket: ((.server_peak_rss_bytes - $z[0].server_peak_rss_bytes) / .idle_sockets | floor),
			  peak_db_conns: .peak_db_conns}' >>"$tmp/idle.jsonl"
		stop
	done
fi

echo
echo "# medians over $rounds rounds; ratio = median of the per-round mode/raw msgs/s;"
echo "# cpu_us = server CPU per message while the clients ran, cpu_x = median of the per-round mode/raw cpu_us"
jq -rs '
	def median: sort | if length == 0 then null else .[(length - 1) / 2 | floor] end;
	[.[] | select(.label | test("^(ws|http)/"))] as $runs
	| ($runs | map(.label | split("/") | {proto: .[0], mode: .[1]}) | unique | sort_by(.proto != "ws", .mode != "raw", .mode)) as $keys
	| ["proto", "mode", "msgs/s", "p50_us", "p99_us", "ratio", "cpu_us", "cpu_x", "err", "broken", "db_conns", "rss_MiB"],
	  ($keys[] | . as $k
		| ($runs | map(select(.label | startswith("\($k.proto)/\($k.mode)/")))) as $mine
		| ($mine | map(. as $run | .label | split("/")[2] as $r
			| ($runs | map(select(.label == "\($k.proto)/raw/\($r)"))[0]) as $raw
			| {rate: ($run.msgs_per_s / $raw.msgs_per_s),
			   cpu: (if ($raw.server_cpu_us_per_msg // 0) > 0 then ($run.server_cpu_us_per_msg // 0) / $raw.server_cpu_us_per_msg else null end)})) as $ratios
		| [$k.proto, $k.mode,
		   ($mine | map(.msgs_per_s) | median | floor),
		   ($mine | map(.p50_us) | median),
		   ($mine | map(.p99_us) | median),
		   ($ratios | map(.rate) | median * 1000 | round / 1000),
		   ($mine | map(.server_cpu_us_per_msg // 0) | median * 10 | round / 10),
		   ($ratios | map(.cpu // 0) | median * 1000 | round / 1000),
		   ($mine | map(.error_replies) | add),
		   ($mine | map(.broken_sockets) | add),
		   ($mine | map(.peak_db_conns) | max),
		   ($mine | map(.server_peak_rss_bytes) | median / 1048576 * 10 | round / 10)])
	| @tsv' "$results" | column -t
if [ -s "$tmp/idle.jsonl" ]; then
	echo
	echo "# idle sockets: server peak RSS growth per socket (VmHWM, server process only)"
	jq -rs '(.[] | select(.label | startswith("idle/raw/")) | .server_bytes_per_idle_socket) as $raw
		| ["mode", "bytes/socket", "over_raw", "db_conns"],
		  (.[] | [(.label | split("/")[1]), .server_bytes_per_idle_socket, .server_bytes_per_idle_socket - $raw, .peak_db_conns])
		| @tsv' "$tmp/idle.jsonl" | column -t
fi
