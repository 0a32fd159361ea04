#!/usr/bin/env bash
# The room workload (bench/server's /ws/room and /ws/fanout, bench/load
# -members): raw, sync and async side by side, interleaved (the order
# rotates every round), several rounds, a fresh server per instance per
# run; sync and async with each groups engine, on one instance and (postgres,
# nats) on two; raw in process and, with -nats, over NATS (a subscription
# per room: the hand-written NATS fan-out). Prints every run's JSON line,
# then the medians and the ratios (per round, paired, then the median) to
# raw in process and to the raw run of the same engine and instances,
# with the instances' memory per member at rest, the client's share of the
# CPU and how busy the machine was (bench/scale.sh runs it with 10,000
# members).
#
#   bench/rooms.sh                                  # 3 rounds, 100 members, 4 senders x 200
#   ROUNDS=5 MEMBERS=1000 ENDPOINTS="room fanout" bench/rooms.sh
#   CONFIGS="raw/nats/2 sync/nats/2 async/nats/2" bench/rooms.sh
#   SERVER_FLAGS="-wait-timeout 30s" bench/rooms.sh  # flags for every instance (bench/server -h)
#
# A configuration is mode/layer/instances; raw/memory/1 is always run (the
# baseline). Needs jq and PostgreSQL ($DATABASE_URL, else 127.0.0.1:5432
# as user postgres); for the nats configurations, nats-server (a copy of
# its own on a free port, unless $NATS_URL names one). Traffic goes to
# 127.0.0.1 only. The room is named after this run (rooms<pid>, or $ROOM):
# two runs on one database or NATS server at once would otherwise get each
# other's messages; and the ports must be free (PORT+1..., PORT+100),
# else it stops rather than measure another run's servers.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

rounds=${ROUNDS:-3}
members=${MEMBERS:-100}
senders=${SENDERS:-4}
messages=${MESSAGES:-200}
endpoints=${ENDPOINTS:-room fanout}
port=${PORT:-18290}
room=${ROOM:-rooms$$}
read -ra server_flags <<<"${SERVER_FLAGS:-}"
read -ra configs <<<"${CONFIGS:-raw/memory/1 sync/memory/1 async/memory/1 sync/postgres/1 async/postgres/1 sync/postgres/2 async/postgres/2 raw/nats/1 sync/nats/1 async/nats/1 raw/nats/2 sync/nats/2 async/nats/2}"
[[ " ${configs[*]} " == *" raw/memory/1 "* ]] || configs=(raw/memory/1 "${configs[@]}")

source bench/lib.sh
need jq
go build -o "$tmp/server" ./bench/server
go build -o "$tmp/load" ./bench/load
results=$tmp/results.jsonl
pids=()
natspid=
stop_all() {
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	pids=()
}
trap 'stop_all; [ -n "$natspid" ] && kill "$natspid" 2>/dev/null; cleanup' EXIT

# need_free PORT: stops unless nothing listens on 127.0.0.1:PORT.
need_free() {
	if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
		echo "rooms.sh: port $1 is taken (another bench run?): set PORT" >&2
		exit 1
	fi
}

nats_url=${NATS_URL:-}
if [[ " ${configs[*]} " == *"/nats/"* ]] && [ -z "$nats_url" ]; then
	natsd=$(command -v nats-server || echo /usr/sbin/nats-server)
	[ -x "$natsd" ] || { echo "rooms.sh: the nats configurations need nats-server (apt-get install nats-server) or \$NATS_URL" >&2; exit 1; }
	np=$((port + 100))
	need_free "$np"
	"$natsd" -a 127.0.0.1 -p "$np" >"$tmp/nats.out" 2>&1 &
	natspid=$!
	for i in $(seq 1 50); do
		timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$np" 2>/dev/null && break
		[ "$i" = 50 ] && { echo "nats-server did not start:" >&2; cat "$tmp/nats.out" >&2; exit 1; }
		sleep 0.1
	done
	nats_url=nats://127.0.0.1:$np
fi

echo "# $(nproc) cores, $(go version | cut -d' ' -f3), $(psql --version 2>/dev/null || echo PostgreSQL), ${nats_url:+nats-server $(${natsd:-nats-server} --version 2>/dev/null | cut -d' ' -f2), }$(date -u +%FT%TZ)"
echo "# rounds=$rounds members=$members senders=$senders messages=$messages endpoints=$endpoints; load average $(cut -d' ' -f1-3 /proc/loadavg)"

for r in $(seq 1 "$rounds"); do
	for endpoint in $endpoints; do
		n=${#configs[@]}
		for i in $(seq 0 $((n - 1))); do
			c=${configs[$(((i + r) % n))]}
			IFS=/ read -r mode layer instances <<<"$c"
			flags=(-mode "$mode" "${server_flags[@]}")
			case $mode/$layer in
			raw/memory) ;;
			raw/nats) flags+=(-nats -nats-url "$nats_url") ;;
			raw/*) echo "rooms.sh: raw has no $layer layer" >&2; exit 1 ;;
			*/nats) flags+=(-layer nats -nats-url "$nats_url") ;;
			*) flags+=(-layer "$layer") ;;
			esac
			urls=() apps=()
			for k in $(seq 1 "$instances"); do
				p=$((port + k))
				need_free "$p"
				"$tmp/server" "${flags[@]}" -addr "127.0.0.1:$p" -app "dbscope-rooms-$mode-$k" >"$tmp/server.$k.out" 2>&1 &
				pids+=($!)
				urls+=("http://127.0.0.1:$p")
				apps+=("dbscope-rooms-$mode-$k")
			done
			"$tmp/load" -members "$members" -senders "$senders" -messages "$messages" -endpoint "$endpoint" -room "$room" \
				-urls "$(IFS=,; echo "${urls[*]}")" -apps "$(IFS=,; echo "${apps[*]}")" \
				-server-pids "$(IFS=,; echo "${pids[*]}")" \
				-label "$endpoint/$c/$r" | tee -a "$results"
			stop_all
		done
	done
done

echo
echo "# medians over $rounds rounds; ratio = median of the per-round deliveries/s over raw's in process (raw/memory/1),"
echo "# ratio_same = the same over the raw run of the same engine and instances where there is one (raw/nats/N), else raw/memory/1;"
echo "# cpu_us = the instances' CPU per delivery, cpu_x = median of the per-round cpu_us over that same raw run's,"
echo "# p99_x likewise for p99; rss_B = the instances' RSS growth per member at rest (from before the first dial);"
echo "# cli = the client's share of the CPU the client and instances used, busy = the cores' busy share, load = the"
echo "# 1-minute load average at the start of the run (medians); load average now $(cut -d' ' -f1-3 /proc/loadavg)"
jq -rs '
	def median: sort | if length == 0 then null else .[(length - 1) / 2 | floor] end;
	. as $runs
	| ($runs | map(.label | split("/") | {e: .[0], c: (.[1:4] | join("/"))}) | unique) as $keys
	| ["endpoint", "config", "deliveries/s", "p50_us", "p99_us", "p99_x", "ratio", "ratio_same", "cpu_us", "cpu_x", "rss_B", "cli", "busy", "load", "lost", "dup", "wrong", "broken", "db_conns"],
	  ($keys[] | . as $k
		| ($k.c | split("/")) as $cp
		| ("raw/\($cp[1])/\($cp[2])") as $same
		| (if ($runs | any(.label | startswith("\($k.e)/\($same)/"))) then $same else "raw/memory/1" end) as $base
		| ($runs | map(select(.label | startswith("\($k.e)/\($k.c)/")))) as $mine
		| ($mine | map(. as $run | .label | split("/")[4] as $r
			| ($runs | map(select(.label == "\($k.e)/raw/memory/1/\($r)"))[0]) as $raw
			| ($runs | map(select(.label == "\($k.e)/\($base)/\($r)"))[0]) as $b
			| {rate: ($run.deliveries_per_s / $raw.deliveries_per_s),
			   same: ($run.deliveries_per_s / $b.deliveries_per_s),
			   cpu: (if ($b.server_cpu_us_per_delivery // 0) > 0 then ($run.server_cpu_us_per_delivery // 0) / $b.server_cpu_us_per_delivery else null end),
			   p99: (if $b.p99_us > 0 then $run.p99_us / $b.p99_us else null end)})) as $ratios
		| [$k.e, $k.c,
		   ($mine | map(.deliveries_per_s) | median | floor),
		   ($mine | map(.p50_us) | median),
		   ($mine | map(.p99_us) | median),
		   ($ratios | map(.p99 // 0) | median * 1000 | round / 1000),
		   ($ratios | map(.rate) | median * 1000 | round / 1000),
		   ($ratios | map(.same) | median * 1000 | round / 1000),
		   ($mine | map(.server_cpu_us_per_delivery // 0) | median * 100 | round / 100),
		   ($ratios | map(.cpu // 0) | median * 1000 | round / 1000),
		   ($mine | map(.server_rss_per_member_bytes // 0) | median | round),
		   ($mine | map(.client_cpu_share // 0) | median * 100 | round / 100),
		   ($mine | map(.machine_busy // 0) | median * 100 | round / 100),
		   ($mine | map(.loadavg // 0) | median),
		   ($mine | map(.lost) | add), ($mine | map(.duplicated) | add),
		   ($mine | map(.wrong) | add), ($mine | map(.broken_sockets) | add),
		   ($mine | map(.peak_db_conns) | max)])
	| @tsv' "$results" | column -t
