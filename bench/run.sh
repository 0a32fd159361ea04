#!/usr/bin/env bash
# Load benchmark: raw, sync and async (websocket) and raw, sync and atomic
# (HTTP) back to back, interleaved (the order rotates every round), several
# rounds, each run against a fresh server process; then idle sockets held
# against raw, sync and async. Prints every run's JSON line, then the
# medians and the ratios (per round, paired, then the median).
#
#   bench/run.sh                      # 4 rounds, 8 clients x 3000 messages
#   ROUNDS=6 CLIENTS=4 MESSAGES=5000 IDLE=5000 bench/run.sh
#   WS_MODES="raw pgxpool sync pgx" HTTP_MODES="raw pgxpool sync pgx" IDLE=0 bench/run.sh
#   TENANT=5 IDLE=0 bench/run.sh      # each mode without and with -tenant (5 tenants)
#   WRITE=1 IDLE=0 bench/run.sh       # the write workload (-write)
#   TENANT=5 WRITE=1 WRITE_MESSAGES=500 IDLE=0 bench/run.sh   # both, side by side with the items workload
#   PLAIN_WRITES=1 VARIANTS=write IDLE=0 bench/run.sh   # the dbscope modes with dbctx.Options.PlainWrites
#   VARIANTS="write write+tenant" TENANT=5 bench/run.sh   # the workloads to run, of plain, tenant, write, write+tenant
#
# Workloads (VARIANTS): plain is the items workload; tenant adds -tenant
# (server) and -tenants $TENANT (load: client c is tenant t<c%N+1>); write
# adds -write to both. Default: plain, and tenant where TENANT is set, and
# write where WRITE=1 (then write alone when TENANT is not set). With TENANT
# or WRITE the default modes are raw pgxpool sync async pgx (websocket) and
# raw pgxpool sync pgx (HTTP).
#
# Columns: x_raw and x_pgxpool are the medians of the per-round ratios of a
# mode's msgs/s to raw's and pgxpool's in the same workload; x_plain is that
# of a tenant workload to the same mode's without a tenant (tenant over
# plain, write+tenant over write); cpu_x likewise for server CPU per message
# over raw's; resets/1k is the pool's session resets per 1,000 messages
# (median; "-" without a pool); wrong_t the replies of another tenant
# (sum).
#
# Needs jq and PostgreSQL ($DATABASE_URL, else 127.0.0.1:5432 as user
# postgres). Traffic goes to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

rounds=${ROUNDS:-4}
clients=${CLIENTS:-8}
messages=${MESSAGES:-3000}
# An INSERT waits for its commit's WAL flush: the write workloads run
# fewer messages (WRITE_MESSAGES per client).
write_messages=${WRITE_MESSAGES:-$messages}
idle=${IDLE:-5000}
port=${PORT:-18090}
source bench/lib.sh
workloads
# The modes of each protocol; raw, the baseline of the ratios, must be among them.
if [ -n "$extended" ]; then
	ws_modes=${WS_MODES:-raw pgxpool sync async pgx}
	http_modes=${HTTP_MODES:-raw pgxpool sync pgx}
else
	ws_modes=${WS_MODES:-raw sync async}
	http_modes=${HTTP_MODES:-raw sync atomic}
fi
url=http://127.0.0.1:$port

need jq
go build -o "$tmp/server" ./bench/server
go build -o "$tmp/load" ./bench/load
results=$tmp/results.jsonl

echo "# $(nproc) cores, $(go version | cut -d' ' -f3), $(psql --version 2>/dev/null || echo PostgreSQL), $(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# rounds=$rounds clients=$clients messages=$messages write_messages=$write_messages idle=$idle variants=\"$variants\" tenants=$tenants"

# serve MODE [FLAGS...]: starts a server in the background, sets pid.
serve() {
	local mode=$1
	shift
	"$tmp/server" -mode "$mode" -addr "127.0.0.1:$port" -app "dbscope-bench-$mode" "$@" >"$tmp/server.out" 2>&1 &
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
		configs=()
		for v in $variants; do
			for m in "${modes[@]}"; do configs+=("$m/$v"); done
		done
		n=${#configs[@]}
		for i in $(seq 0 $((n - 1))); do
			c=${configs[$(((i + r) % n))]}
			mode=${c%%/*} v=${c#*/} msgs=$messages
			case $v in write*) msgs=$write_messages ;; esac
			# shellcheck disable=SC2046 # the flags are words
			serve "$mode" $(server_flags "$v")
			# shellcheck disable=SC2046
			load "$mode" "$proto/$mode/$v/$r" -proto "$proto" -clients "$clients" -messages "$msgs" $(load_flags "$v") | tee -a "$results"
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
echo "# medians over $rounds rounds; x_raw, x_pgxpool, x_plain = median of the per-round msgs/s ratios (see the script's comment);"
echo "# cpu_us = server CPU per message while the clients ran, cpu_x = median of the per-round mode/raw cpu_us"
jq -rs --arg variants "$variants" --arg modes "$ws_modes $http_modes" '
	def median: sort | if length == 0 then null else .[(length - 1) / 2 | floor] end;
	def r3: if . == null then "-" else . * 1000 | round / 1000 end;
	def index_of($list): . as $x | ($list | index($x)) // 99;
	($variants | split(" ") | map(select(. != ""))) as $vs
	| ($modes | split(" ") | map(select(. != ""))) as $ms
	| [.[] | select(.label | test("^(ws|http)/")) | . + {key: (.label | split("/") | {proto: .[0], mode: .[1], variant: .[2], round: .[3]})}] as $runs
	| def run($p; $m; $v; $r): $runs | map(select(.key.proto == $p and .key.mode == $m and .key.variant == $v and .key.round == $r)) | .[0];
	  def ratios($mine; f): $mine | map(f) | map(select(. != null)) | median;
	  def base($v): if $v == "tenant" then "plain" elif $v == "write+tenant" then "write" else null end;
	($runs | map(.key | {proto, mode, variant}) | unique
		| sort_by((.proto != "ws"), (.variant | index_of($vs)), (.mode | index_of($ms)))) as $keys
	| ["proto", "workload", "mode", "msgs/s", "p50_us", "p99_us", "x_raw", "x_pgxpool", "x_plain", "cpu_us", "cpu_x", "resets/1k", "wrong_t", "err", "broken", "db_conns", "rss_MiB"],
	  ($keys[] | . as $k
		| ($runs | map(select(.key.proto == $k.proto and .key.mode == $k.mode and .key.variant == $k.variant))) as $mine
		| [$k.proto, $k.variant, $k.mode,
		   ($mine | map(.msgs_per_s) | median | floor),
		   ($mine | map(.p50_us) | median),
		   ($mine | map(.p99_us) | median),
		   (ratios($mine; . as $x | run($k.proto; "raw"; $k.variant; $x.key.round) | if . == null then null else $x.msgs_per_s / .msgs_per_s end) | r3),
		   (ratios($mine; . as $x | run($k.proto; "pgxpool"; $k.variant; $x.key.round) | if . == null then null else $x.msgs_per_s / .msgs_per_s end) | r3),
		   (if base($k.variant) == null then "-" else
		      ratios($mine; . as $x | run($k.proto; $k.mode; base($k.variant); $x.key.round) | if . == null then null else $x.msgs_per_s / .msgs_per_s end) | r3 end),
		   ($mine | map(.server_cpu_us_per_msg // 0) | median * 10 | round / 10),
		   (ratios($mine; . as $x | run($k.proto; "raw"; $k.variant; $x.key.round)
		      | if . == null or (.server_cpu_us_per_msg // 0) == 0 then null else ($x.server_cpu_us_per_msg // 0) / .server_cpu_us_per_msg end) | r3),
		   ($mine | map(.resets_per_1k_msgs) | map(select(. != null)) | median | if . == null then "-" else . * 10 | round / 10 end),
		   ($mine | map(.wrong_tenants) | add),
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
