package dbctx_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
)

// dbctx.From on a context no middleware gave a scope returns a scope
// whose error says what to mount, or what to call instead.
func TestNoScopeSaysWhatToMount(t *testing.T) {
	ctx := context.Background()
	var n int
	err := dbctx.From(ctx).QueryRowContext(ctx, "SELECT 1").Scan(&n)
	if !errors.Is(err, dbctx.ErrNoScope) || !strings.Contains(err.Error(), "middleware.DB") || !strings.Contains(err.Error(), "Pool.Do") {
		t.Fatalf("got %v, want ErrNoScope naming middleware.DB and Pool.Do", err)
	}
}
