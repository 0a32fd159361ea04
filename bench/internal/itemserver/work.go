package itemserver

import (
	"context"

	"github.com/dbscope/dbscope/dbctx"
)

// rawWork sets the raw and pgxpool modes' statements of a message (see
// Server.rawLook).
func (s *Server) rawWork() {
	testOps := s.cfg.TestOps
	read, write := stmt{query: tenantQuery(s.schema)}, stmt{query: writeQuery(s.schema), write: true}
	db, p := s.db, s.pgxp
	switch {
	case p == nil && !s.cfg.Tenant:
		s.rawLook = func(ctx context.Context, _ string, m *Msg) error { return lookup(ctx, db, m, testOps) }
		s.rawWrite = func(ctx context.Context, _ string, m *Msg) error { return write.run(ctx, db, m) }
	case p == nil:
		s.rawLook = func(ctx context.Context, t string, m *Msg) error { return read.runTx(ctx, db, t, m) }
		s.rawWrite = func(ctx context.Context, t string, m *Msg) error { return write.runTx(ctx, db, t, m) }
	case !s.cfg.Tenant:
		s.rawLook = func(ctx context.Context, _ string, m *Msg) error { return lookupPgx(ctx, p, m, testOps) }
		s.rawWrite = func(ctx context.Context, _ string, m *Msg) error { return write.runPgx(ctx, p, m) }
	default:
		s.rawLook = func(ctx context.Context, t string, m *Msg) error { return read.runPgxTx(ctx, p, t, m) }
		s.rawWrite = func(ctx context.Context, t string, m *Msg) error { return write.runPgxTx(ctx, p, t, m) }
	}
}

// scopeWork sets the dbscope modes' statements of a message (see
// Server.scopeLook): on the scope's database/sql methods, or in the pgx
// mode its pgx methods. The tenant is in ctx: the statements are the
// same with or without one.
func (s *Server) scopeWork() {
	testOps := s.cfg.TestOps
	read, write := stmt{query: tenantQuery(s.schema)}, stmt{query: writeQuery(s.schema), write: true}
	pgxMode := s.cfg.Mode == "pgx"
	switch {
	case !pgxMode && !s.cfg.Tenant:
		s.scopeLook = func(ctx context.Context, sc *dbctx.Scope, m *Msg) error { return lookup(ctx, sc, m, testOps) }
	case !pgxMode:
		s.scopeLook = func(ctx context.Context, sc *dbctx.Scope, m *Msg) error { return read.run(ctx, sc, m) }
	case !s.cfg.Tenant:
		s.scopeLook = func(ctx context.Context, sc *dbctx.Scope, m *Msg) error { return lookupPgx(ctx, sc, m, testOps) }
	default:
		s.scopeLook = func(ctx context.Context, sc *dbctx.Scope, m *Msg) error { return read.runPgx(ctx, sc, m) }
	}
	if pgxMode {
		s.scopeWrite = func(ctx context.Context, sc *dbctx.Scope, m *Msg) error { return write.runPgx(ctx, sc, m) }
	} else {
		s.scopeWrite = func(ctx context.Context, sc *dbctx.Scope, m *Msg) error { return write.run(ctx, sc, m) }
	}
}
