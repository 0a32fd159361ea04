# Sourced by the bench scripts (run.sh, instr.sh): a temporary directory
# in $tmp, and the server started in the background (its pid in $pid)
# stopped and the directory removed on exit; the workloads.

# need CMD...: exits unless every CMD is installed.
need() {
	local c
	for c in "$@"; do
		command -v "$c" >/dev/null || { echo "$(basename "$0") needs $c (apt-get install $c)" >&2; exit 1; }
	done
}

tmp=$(mktemp -d)
pid=
cleanup() {
	if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
	rm -rf "$tmp"
}
trap cleanup EXIT

# The workloads of run.sh and instr.sh (see run.sh): sets variants (of
# plain, tenant, write, write+tenant) from $VARIANTS, else from $TENANT
# and $WRITE; tenants, the tenant count (5 where a tenant workload is asked
# for without $TENANT); and extended, set where any of them is (the
# default modes then add pgxpool and pgx).
# shellcheck disable=SC2034 # set for the scripts that source this file
workloads() {
	tenants=${TENANT:-0}
	extended=
	if [ -n "${VARIANTS:-}" ]; then
		variants=$VARIANTS
		extended=1
	elif [ "${WRITE:-0}" = 1 ] && [ "$tenants" -gt 0 ]; then
		variants="plain tenant write" extended=1
	elif [ "${WRITE:-0}" = 1 ]; then
		variants="write" extended=1
	elif [ "$tenants" -gt 0 ]; then
		variants="plain tenant" extended=1
	else
		variants=plain
	fi
	case " $variants " in *tenant*) [ "$tenants" -gt 0 ] || tenants=5 ;; esac
}

# server_flags VARIANT, load_flags VARIANT: the flags of bench/server and
# bench/load for a workload.
server_flags() {
	case $1 in
	plain) ;;
	tenant) echo "-tenant -tenants $tenants" ;;
	write) echo "-write $(plain_writes)" ;;
	write+tenant) echo "-write -tenant -tenants $tenants $(plain_writes)" ;;
	*) echo "$(basename "$0"): unknown workload $1 (want plain, tenant, write or write+tenant)" >&2; exit 1 ;;
	esac
}
# plain_writes: -plain-writes where PLAIN_WRITES=1 (dbctx.Options.PlainWrites
# in the dbscope modes; raw and pgxpool ignore it).
plain_writes() {
	[ "${PLAIN_WRITES:-0}" = 1 ] && echo "-plain-writes"
	return 0
}
load_flags() {
	case $1 in
	tenant) echo "-tenants $tenants" ;;
	write) echo "-write" ;;
	write+tenant) echo "-write -tenants $tenants" ;;
	esac
}

# base_variant VARIANT: the workload a tenant workload is compared with
# (x_plain), or nothing.
base_variant() {
	case $1 in
	tenant) echo plain ;;
	write+tenant) echo write ;;
	esac
}

# The scripts that count instructions under cachegrind (instr.sh,
# instr-rooms.sh) define count NAME… N, which runs the server once for N
# messages, writes its instructions by function to $tmp/NAME….N.fn (see
# fn_counts) and prints their total; they share what follows.

# cachegrind_server: builds bench/server into $tmp/server for valgrind,
# whose 3.19 does not decode RDTSCP, which the Go runtime's cputicks uses
# where the CPU has it: with the runtime's other branch (MFENCE; LFENCE;
# RDTSC), through a build overlay.
cachegrind_server() {
	local asm
	asm=$(go env GOROOT)/src/runtime/asm_amd64.s
	awk '/CMPB.*HasRDTSCP/ { print "\tJMP\tfences"; getline; next } { print }' "$asm" >"$tmp/asm_amd64.s"
	grep -q 'JMP	fences' "$tmp/asm_amd64.s" || { echo "$(basename "$0"): cputicks not found in $asm" >&2; exit 1; }
	printf '{"Replace":{"%s":"%s"}}\n' "$asm" "$tmp/asm_amd64.s" >"$tmp/overlay.json"
	go build -overlay "$tmp/overlay.json" -o "$tmp/server" ./bench/server
}

# fn_counts OUT FN: the instructions of cachegrind's output OUT by
# function into FN (function<TAB>count); prints their total.
fn_counts() {
	awk '/^fn=/ { fn = substr($0, 4); next } NF == 2 && $1 ~ /^[0-9]+$/ { ir[fn] += $2 }
		END { for (f in ir) printf "%s\t%d\n", f, ir[f] }' "$1" >"$2"
	awk -F'\t' '{ t += $2 } END { printf "%d\n", t }' "$2"
}

# least A B N: count A B N's least total over $repeat runs, its functions
# kept: now and then a run spends far more (the runtime spinning while
# valgrind serializes its threads), never less.
least() {
	local best= t f=$1.$2.$3
	for _ in $(seq 1 "$repeat"); do
		t=$(count "$1" "$2" "$3")
		if [ -z "$best" ] || [ "$t" -lt "$best" ]; then
			best=$t
			cp "$tmp/$f.fn" "$tmp/$f.best"
		fi
	done
	mv "$tmp/$f.best" "$tmp/$f.fn"
	echo "$best"
}

# per_unit SMALL BIG UNITS: the instructions by function of the run of BIG
# (a .fn file) less those of SMALL's, over UNITS (the messages or
# deliveries between them).
per_unit() {
	awk -F'\t' -v m="$3" 'NR == FNR { s[$1] = $2; next } { d[$1] = $2 - s[$1] } END { for (f in d) printf "%s\t%.0f\n", f, d[f] / m }' "$1" "$2"
}

# topdiff A B TITLE: the $top functions whose instructions per unit differ
# most between $tmp/A.per and $tmp/B.per (B - A).
topdiff() {
	echo
	echo "# $3, the $top functions that differ most"
	awk -F'\t' 'NR == FNR { r[$1] = $2; next } { d = $2 - r[$1]; delete r[$1]; if (d) printf "%d\t%+8d\t%s\n", d < 0 ? -d : d, d, $1 }
		END { for (f in r) if (r[f]) printf "%d\t%+8d\t%s\n", r[f] < 0 ? -r[f] : r[f], -r[f], f }' "$tmp/$1.per" "$tmp/$2.per" |
		sort -t$'\t' -k1,1nr | awk -F'\t' -v n="$top" 'NR <= n { print $2 "\t" $3 }'
}
