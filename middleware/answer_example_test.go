package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/middleware"
)

// Answer answers the conditions package dbctx explains, whatever wraps
// them, and leaves the rest to the handler.
func ExampleAnswer() {
	gone, leave := context.WithCancel(context.Background())
	leave()
	for _, c := range []struct {
		err    error
		client context.Context
	}{
		{fmt.Errorf("list items: %w", dbctx.ErrBusy), context.Background()},
		{dbctx.ErrUnavailable, context.Background()},
		{dbctx.ErrPoolClosed, context.Background()},
		{dbctx.ErrMisconfigured, context.Background()},
		{context.Canceled, gone}, // the client went away
		{errors.New("no such item"), context.Background()},
	} {
		rec := httptest.NewRecorder()
		r := httptest.NewRequestWithContext(c.client, "GET", "/items/1", nil)
		answered := middleware.Answer(rec, r, c.err)
		if !answered {
			fmt.Println(answered, "(the handler's to answer)")
			continue
		}
		fmt.Println(answered, rec.Code, "Retry-After:", rec.Header().Get("Retry-After") != "")
	}
	// Output:
	// true 503 Retry-After: true
	// true 503 Retry-After: true
	// true 503 Retry-After: true
	// true 500 Retry-After: false
	// true 499 Retry-After: false
	// false (the handler's to answer)
}
