package dbctx_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgtest"
)

var (
	declaredRole = dbctx.NewSetting("role")
	logMinDur    = dbctx.NewSetting("log_min_duration_statement") // only a superuser, or a GRANT SET ON PARAMETER, may set it
)

// A unit that declares a role beside a parameter only its login may set
// (a superuser's here), and units after it on the same connection that
// declare one of them, or none: each statement runs with its own, where
// the parameter was set, or cleared, under the role the session carried
// and refused (42501), on that connection as long as it was kept.
// Outside a transaction, where the session carries the role from unit to
// unit, and inside Atomic, where the transaction carries it from
// statement to statement.
func TestSettingsRoleBesidePrivileged(t *testing.T) {
	t.Parallel()
	forDrivers(t, func(t *testing.T, drv string) {
		env := newEnv(t)
		tenantRole := env.Schema() + "_tenant"
		mustExec(t, env.Admin(), `CREATE ROLE "`+tenantRole+`"`)
		t.Cleanup(func() { env.Admin().Exec(`DROP ROLE "` + tenantRole + `"`) })
		mustExec(t, env.Admin(), `GRANT "`+tenantRole+`" TO "`+env.Role()+`"`)
		db := openWith(t, env, drv)
		db.SetMaxOpenConns(1)
		p := poolOn(t, env, db, &dbctx.Options{MaxWorkers: 1, Logger: quiet(), TransactionPooling: pgtest.Pooled()})
		type want struct{ user, logMin string }
		login, none := env.Role(), "-1"
		ask := func(ctx context.Context, s *dbctx.Scope, w want) error {
			var got want
			if err := s.QueryRowContext(ctx, "SELECT current_user::text, current_setting('log_min_duration_statement')").Scan(&got.user, &got.logMin); err != nil {
				return err
			}
			if got != w {
				return fmt.Errorf("ran as %+v, want %+v", got, w)
			}
			return nil
		}
		bg := context.Background()
		both := func(ctx context.Context) context.Context {
			return logMinDur.With(declaredRole.With(ctx, tenantRole), "5")
		}
		units := []struct {
			name string
			ctx  func(context.Context) context.Context
			want want
		}{
			{"role and parameter", both, want{tenantRole, "5ms"}},
			{"parameter", func(ctx context.Context) context.Context { return logMinDur.With(ctx, "7") }, want{login, "7ms"}},
			{"role", func(ctx context.Context) context.Context { return declaredRole.With(ctx, tenantRole) }, want{tenantRole, none}},
			{"role and parameter, after role", both, want{tenantRole, "5ms"}},
			{"none", func(ctx context.Context) context.Context { return ctx }, want{login, none}},
		}
		if !pgtest.Pooled() {
			// Outside a transaction: what the session carries.
			for _, u := range units {
				if err := p.Do(u.ctx(bg), func(ctx context.Context, s *dbctx.Scope) error { return ask(ctx, s, u.want) }); err != nil {
					t.Errorf("unit %s: %v", u.name, err)
				}
			}
		}
		// Inside Atomic: what the transaction carries.
		err := p.Do(bg, func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				for _, u := range units {
					if err := ask(u.ctx(ctx), s, u.want); err != nil {
						return fmt.Errorf("statement %s: %w", u.name, err)
					}
				}
				return nil
			})
		})
		if err != nil {
			t.Errorf("in Atomic: %v", err)
		}
	})
}
