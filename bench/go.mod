module github.com/dbscope/dbscope/bench

go 1.26.0

// The benchmarks run against the code beside them.
replace (
	github.com/dbscope/dbscope => ../
	github.com/dbscope/dbscope/groups/natslayer => ../groups/natslayer
)

require (
	github.com/coder/websocket v1.8.15
	github.com/dbscope/dbscope v0.1.0
	github.com/dbscope/dbscope/groups/natslayer v0.1.0
	github.com/jackc/pgx/v5 v5.12.0
	github.com/nats-io/nats.go v1.56.0
)

require (
	github.com/jackc/pgpassfile v1.0.0 // indirect
	github.com/jackc/pgservicefile v0.0.0-20240606120523-5a60cdf6a761 // indirect
	github.com/jackc/puddle/v2 v2.2.3 // indirect
	github.com/klauspost/compress v1.20.0 // indirect
	github.com/nats-io/nkeys v0.4.16 // indirect
	github.com/nats-io/nuid v1.0.1 // indirect
	go.uber.org/goleak v1.3.0 // indirect
	golang.org/x/crypto v0.57.0 // indirect
	golang.org/x/sync v0.23.0 // indirect
	golang.org/x/sys v0.48.0 // indirect
	golang.org/x/text v0.42.0 // indirect
)
