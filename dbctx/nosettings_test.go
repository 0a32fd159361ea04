package dbctx

import "testing"

// needsNoSettings tells transaction control, and SET TRANSACTION, from
// every other statement, whatever the case, including statements whose
// first word merely begins like one.
func TestNeedsNoSettings(t *testing.T) {
	for q, want := range map[string]bool{
		"BEGIN":                              true,
		"begin isolation level serializable": true,
		"START TRANSACTION READ ONLY":        true,
		"Commit":                             true,
		"END":                                true,
		"ROLLBACK":                           true,
		"rollback to savepoint a":            true,
		"ABORT":                              true,
		"SAVEPOINT a":                        true,
		"RELEASE SAVEPOINT a":                true,
		"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE": true,
		"set transaction read only":                    true,
		"  /* c */ COMMIT":                             true,

		"SELECT 1":                             false,
		"select set_config('a.b', 'c', false)": false,
		"SET transaction.x = '1'":              false,
		"SET statement_timeout = 0":            false,
		"SHOW transaction_isolation":           false,
		"BEGIN; SELECT 1":                      false,
		"COMMIT; SET x.y = 1":                  false,
		"beginning":                            false,
		"ends":                                 false,
		"abortive":                             false,
		"RELEASEx":                             false,
		"ANALYZE":                              false,
		"CALL p()":                             false,
		"EXPLAIN SELECT 1":                     false,
		"RESET ALL":                            false,
		"":                                     false,
		"   ":                                  false,
		"'BEGIN'":                              false,
		"\"begin\"":                            false,
	} {
		if got := needsNoSettings(q); got != want {
			t.Errorf("needsNoSettings(%q) = %v, want %v", q, got, want)
		}
	}
}
