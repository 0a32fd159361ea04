#!/usr/bin/env bash
# Instructions per delivery of the room workload (bench/server's /ws/room
# and /ws/fanout, bench/load -members), raw vs sync vs async on the memory
# engine, one instance: the server's user-space instructions, counted by
# valgrind's cachegrind, as instr.sh counts them per message. They barely
# move with what else the machine does, where rooms.sh's deliveries/s
# and CPU time do; they miss the kernel, cache misses and waiting.
#
#   bench/instr-rooms.sh                          # 100 members, 4 senders x 20 then 100 messages
#   TOP=30 bench/instr-rooms.sh                   # and the 30 functions that differ most from raw
#   MODES="raw sync" ENDPOINTS=fanout bench/instr-rooms.sh
#   KEEP=/tmp/before bench/instr-rooms.sh         # keep each run's instructions per function (MODE.ENDPOINT.per)
#
# Each server runs under cachegrind for SMALL and BIG messages per sender
# (each REPEAT times, the least count kept); the difference of the two
# totals over the difference in deliveries (members x senders x (BIG -
# SMALL)) cancels start-up, the joins and shutdown. The window holds only a
# few collections, so their number moves the counts by several percent
# from run to run (more at 20 then 60 messages, where one collection more
# or less moved them by up to 20%): compare runs of several REPEATs, and
# see the collector's functions in TOP. Slots wait for up to a minute
# (the server's -wait-timeout): under valgrind the lookups of the room
# endpoint queue far longer than the default 2s. Needs valgrind, jq and
# PostgreSQL as rooms.sh does.
set -euo pipefail
shopt -s inherit_errexit # a failed count ends the script, not only its $(…)
cd "$(dirname "${BASH_SOURCE[0]}")/.."

members=${MEMBERS:-100}
senders=${SENDERS:-4}
small=${SMALL:-20}
big=${BIG:-100}
top=${TOP:-0}
repeat=${REPEAT:-2}
port=${PORT:-18590}
modes=${MODES:-raw sync async}
endpoints=${ENDPOINTS:-fanout room}
source bench/lib.sh
need valgrind jq

cachegrind_server
go build -o "$tmp/load" ./bench/load

# count MODE ENDPOINT N: the server's instructions over N messages per
# sender, by function, into $tmp/MODE.ENDPOINT.N.fn; prints the total.
count() {
	local mode=$1 e=$2 n=$3 out=$tmp/cg.$1.$2.$3
	if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
		echo "instr-rooms.sh: port $port is taken (set PORT)" >&2
		exit 1
	fi
	GODEBUG=asyncpreemptoff=1 valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file="$out" \
		"$tmp/server" -mode "$mode" -addr "127.0.0.1:$port" -app "instr-rooms-$mode" -wait-timeout 1m >"$tmp/server.out" 2>&1 &
	pid=$!
	"$tmp/load" -url "http://127.0.0.1:$port" -wait 120s -timeout 120s -members "$members" -senders "$senders" \
		-messages "$n" -endpoint "$e" >"$tmp/load.json" || true
	if ! jq -e '.lost == 0 and .duplicated == 0 and .wrong == 0 and .broken_sockets == 0' "$tmp/load.json" >/dev/null; then
		echo "instr-rooms.sh: $mode/$e/$n: load failed: $(cat "$tmp/load.json")" >&2
		kill -TERM "$pid"
		exit 1
	fi
	kill -TERM "$pid"
	wait "$pid" || true
	pid=
	fn_counts "$out" "$tmp/$mode.$e.$n.fn"
}

deliveries=$((members * senders * (big - small)))
echo "# $(go version | cut -d' ' -f3), $(valgrind --version), members=$members senders=$senders messages=$small,$big, $(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-8s %-8s %16s %8s\n' endpoint mode instr/delivery x_raw
declare -A per
for e in $endpoints; do
	for mode in $modes; do
		a=$(least "$mode" "$e" "$small")
		b=$(least "$mode" "$e" "$big")
		per[$mode.$e]=$(((b - a) / deliveries))
		per_unit "$tmp/$mode.$e.$small.fn" "$tmp/$mode.$e.$big.fn" "$deliveries" >"$tmp/$mode.$e.per"
		x=-
		[ -n "${per[raw.$e]:-}" ] && x=$(awk -v a="${per[$mode.$e]}" -v r="${per[raw.$e]}" 'BEGIN { printf "%.3f", a / r }')
		printf '%-8s %-8s %16d %8s\n' "$e" "$mode" "${per[$mode.$e]}" "$x"
		if [ -n "${KEEP:-}" ]; then
			mkdir -p "$KEEP"
			cp "$tmp/$mode.$e.per" "$KEEP/"
		fi
	done
done

if [ "$top" -gt 0 ]; then
	for e in $endpoints; do
		for mode in $modes; do
			if [ "$mode" != raw ] && [ -f "$tmp/raw.$e.per" ]; then
				topdiff "raw.$e" "$mode.$e" "$e: $mode - raw, instructions per delivery"
			fi
		done
	done
fi
