// Package itemserver serves the benchmark workload "items" over websocket
// and HTTP, in one of several modes that share the same *sql.DB settings,
// so that dbscope can be compared against a hand-written baseline:
//
//   - raw: coder/websocket and net/http over a plain *sql.DB, no dbscope;
//   - sync: a wsconsumer.NewSync consumer, HTTP through middleware.DB;
//   - async: a wsconsumer.NewAsync consumer (queries through dbctx.Do),
//     HTTP through middleware.DB;
//   - atomic: HTTP through middleware.DB and middleware.Atomic, websocket
//     as in sync.
//   - pgx: as sync, the lookup through the Scope's pgx methods
//     (Scope.QueryRow: sqlc's pgx/v5 mode) rather than database/sql's;
//   - pgxpool: the hand-written baseline of pgx users: as raw, the lookup
//     on a *pgxpool.Pool of as many connections (no rooms).
//
// The websocket endpoint /ws/items answers each text frame {"id":k} with
// {"id":k,"name":"item-k"} from one SELECT; a failed query is answered
// {"id":k,"error":"..."} and the socket stays open. GET /items/{id} answers
// the same JSON. Only a refusal of the pool (dbctx.ErrBusy) ends a socket,
// with close 1013, as it answers HTTP with 503. In the dbscope modes GET
// /debug/dbstats answers the pool's dbctx.Stats (bench/load reads its
// resets).
//
// Two more workloads on the same endpoints:
//
//   - Config.Tenant (tenant.go): each socket and request names its tenant
//     (?tenant=T); its lookups read tenant_items, under a row-level-security
//     policy on app.tenant, as a role the policy binds, and replies carry
//     the tenant the statement saw, {"id":k,"name":"item-k","tenant":"T"}.
//     The dbscope modes declare the tenant with dbctx.Setting (in Connect,
//     in an HTTP middleware); raw and pgxpool run a transaction per message
//     (BEGIN, set_config(…, true), the lookup, COMMIT);
//   - Config.Write (write.go): each frame, and each POST /items/{id},
//     inserts a row into a table with a serial key and is answered
//     {"id":k,"row":n}.
//
// Start runs a server in-process (tests use 127.0.0.1:0); bench/server is
// the command around it.
//
//	srv, err := itemserver.Start(ctx, itemserver.Config{Mode: "sync", Addr: "127.0.0.1:0", DSN: dsn})
//	…
//	srv.Shutdown(ctx)
package itemserver
