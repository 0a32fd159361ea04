#!/usr/bin/env bash
# The room workload (bench/server's /ws/room and /ws/fanout, bench/load
# -members): raw, sync and async side by side, interleaved (the order
# rotates every round), several rounds, a fresh server per run; sync and
# async with each groups engine, on one instance and (postgres) on two.
# Prints every run's JSON line, then the medians and the ratios to raw
# (per round, paired, then the median).
#
#   bench/rooms.sh                                  # 3 rounds, 100 members, 4 senders x 200
#   ROUNDS=5 MEMBERS=1000 ENDPOINTS="room fanout" bench/rooms.sh
#
# Needs jq and PostgreSQL ($DATABASE_URL, else 127.0.0.1:5432 as user
# postgres). Traffic goes to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

rounds=${ROUNDS:-3}
members=${MEMBERS:-100}
senders=${SENDERS:-4}
messages=${MESSAGES:-200}
endpoints=${ENDPOINTS:-room fanout}
port=${PORT:-18290}

source bench/lib.sh
need jq
go build -o "$tmp/server" ./bench/server
go build -o "$tmp/load" ./bench/load
results=$tmp/results.jsonl
pids=()
stop_all() {
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	pids=()
}
trap 'stop_all; cleanup' EXIT

echo "# $(nproc) cores, $(go version | cut -d' ' -f3), $(psql --version 2>/dev/null || echo PostgreSQL), $(date -u +%FT%TZ)"
echo "# rounds=$rounds members=$members senders=$senders messages=$messages endpoints=$endpoints"

# A configuration: mode/layer/instances.
configs=(raw/memory/1 sync/memory/1 async/memory/1 sync/postgres/1 async/postgres/1 sync/postgres/2 async/postgres/2)
for r in $(seq 1 "$rounds"); do
	for endpoint in $endpoints; do
		n=${#configs[@]}
		for i in $(seq 0 $((n - 1))); do
			c=${configs[$(((i + r) % n))]}
			IFS=/ read -r mode layer instances <<<"$c"
			urls=() apps=()
			for k in $(seq 1 "$instances"); do
				p=$((port + k))
				"$tmp/server" -mode "$mode" -layer "$layer" -addr "127.0.0.1:$p" -app "dbscope-rooms-$mode-$k" >"$tmp/server.$k.out" 2>&1 &
				pids+=($!)
				urls+=("http://127.0.0.1:$p")
				apps+=("dbscope-rooms-$mode-$k")
			done
			"$tmp/load" -members "$members" -senders "$senders" -messages "$messages" -endpoint "$endpoint" \
				-urls "$(IFS=,; echo "${urls[*]}")" -apps "$(IFS=,; echo "${apps[*]}")" \
				-label "$endpoint/$c/$r" | tee -a "$results"
			stop_all
		done
	done
done

echo
echo "# medians over $rounds rounds; ratio = median of the per-round deliveries/s over raw's (raw/memory/1)"
jq -rs '
	def median: sort | if length == 0 then null else .[(length - 1) / 2 | floor] end;
	. as $runs
	| ($runs | map(.label | split("/") | {e: .[0], c: (.[1:4] | join("/"))}) | unique) as $keys
	| ["endpoint", "config", "deliveries/s", "p50_us", "p99_us", "ratio", "lost", "duplicated", "wrong", "broken", "db_conns"],
	  ($keys[] | . as $k
		| ($runs | map(select(.label | startswith("\($k.e)/\($k.c)/")))) as $mine
		| ($mine | map(. as $run | .label | split("/")[4] as $r
			| ($runs | map(select(.label == "\($k.e)/raw/memory/1/\($r)"))[0]) as $raw
			| $run.deliveries_per_s / $raw.deliveries_per_s)) as $ratios
		| [$k.e, $k.c,
		   ($mine | map(.deliveries_per_s) | median | floor),
		   ($mine | map(.p50_us) | median),
		   ($mine | map(.p99_us) | median),
		   ($ratios | median * 1000 | round / 1000),
		   ($mine | map(.lost) | add), ($mine | map(.duplicated) | add),
		   ($mine | map(.wrong) | add), ($mine | map(.broken_sockets) | add),
		   ($mine | map(.peak_db_conns) | max)])
	| @tsv' "$results" | column -t
