package jsonvar_test

import (
	"expvar"
	"testing"

	"github.com/dbscope/dbscope/internal/jsonvar"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestFunc(t *testing.T) {
	n := 1
	var v expvar.Var = jsonvar.Func(func() any { return struct{ N int }{n} })
	if got := v.String(); got != `{"N":1}` {
		t.Errorf("String() = %s", got)
	}
	n = 2
	if got := v.String(); got != `{"N":2}` {
		t.Errorf("String() after a change = %s, want it read again", got)
	}
	// expvar writes String() into its JSON as it is: it must be JSON.
	if got := jsonvar.Func(func() any { return make(chan int) }).String(); got != "null" {
		t.Errorf("String() of what JSON cannot hold = %s, want null", got)
	}
}
