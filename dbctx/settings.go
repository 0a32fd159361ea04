package dbctx

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
)

// A Setting is a PostgreSQL run-time parameter that a unit of work
// declares for all of its statements: the tenant that row-level-security
// policies read with current_setting('app.tenant', true), a
// statement_timeout, a role. Declare it once, at package level:
//
//	var tenant = dbctx.NewSetting("app.tenant")
//
// then give each unit of work its value where it is known (an HTTP
// middleware after authentication, a websocket's Connect, a job):
//
//	ctx = tenant.With(ctx, "42")
//
// Every statement a scope runs with that context, or with one derived from
// it, runs with app.tenant = '42', and with no value of another unit of
// work: through the Scope's database/sql and pgx methods, inside and
// outside transactions, in batches, in a statement retried on a fresh
// connection, in [Do], in both websocket consumer styles and their group
// events. A statement whose context declares no value of a setting runs
// without one: a built-in parameter at its default, a custom setting
// (app.tenant) unset or, on a connection where one was set before,
// empty, which current_setting('app.tenant', true) reads as the empty
// string rather than NULL (PostgreSQL cannot remove a custom setting once
// made): write policies that treat both as no tenant.
//
// The value is sent as a parameter of a set_config call that goes out in
// the same network round trip as the statement, never as SQL text: it
// costs no round trip of its own, it is skipped when the pinned session
// already carries the same values, and if it fails the statement does not
// run. Settings declared this way make no scope dirty: dbscope knows what
// it applied, and clears it when the next user of the connection wants
// otherwise, in that user's first round trip. See the package doc,
// "Settings and tenancy".
type Setting struct{ name string }

// settingsDeclared is set once a Setting exists in the process: until
// then statements skip the lookup of settings in their context.
var settingsDeclared atomic.Bool

// NewSetting declares the setting name: a custom setting ("app.tenant",
// two or more identifiers joined by dots) or a built-in parameter a
// session may set ("statement_timeout", "search_path", "role"…). Names
// are case-insensitive, as PostgreSQL's are. NewSetting panics on a name
// that is not one by its form (identifiers joined by dots); it does not
// know the server's parameters: a name without a dot that is none
// ("tenant"), or one no session may set ("server_version"), fails every
// statement run with it, with the server's error (SQLSTATE 42704, 55P02).
// It panics too on the names a unit of work cannot declare:
// session_authorization (the reset relies on it), the transaction_*
// parameters, which only SET TRANSACTION may set, the
// default_transaction_* ones, which a transaction reads as it begins,
// before a declared setting applies, client_encoding (pgx speaks UTF8
// only), seed (which no reset undoes), and transform_null_equals and
// standard_conforming_strings, which change how a statement is parsed: a
// statement prepared once per connection would keep the first unit's
// reading. (DateStyle, IntervalStyle and TimeZone, declared, change how a literal in a
// statement's text is read the same way, where pgx keeps the statement
// prepared: pass dates and times as arguments. pgx decodes dates,
// timestamps and intervals in the text format, that of exec and
// simple_protocol modes, in PostgreSQL's defaults only: a declared
// DateStyle whose output is not ISO (SQL, Postgres, German: the order,
// ISO, DMY, is harmless), or an IntervalStyle other than postgres, makes
// it fail to read such a column ("invalid PostgreSQL date/time value",
// "bad interval format"): format them in SQL (to_char) instead.) It panics too on a custom
// setting under a prefix that a module of PostgreSQL's reserves
// (plpgsql.…, pg_stat_statements.…) and that the module does not define
// (plpgsql.variable_conflict may be declared: see below), which the module's library
// removes from the session as it loads (plpgsql's at the first call of a PL/pgSQL
// function, also one a view calls): the statements after it would run
// without the value, and no error. An extension of another source may
// reserve its own prefix the same way: use one of your own (app.tenant).
// A setting the module defines for superusers only (plpgsql.variable_conflict,
// auto_explain's, pg_stat_statements.track…), declared by a role that may
// not SET it (not a superuser, no GRANT SET ON PARAMETER), is taken as a
// placeholder until the library loads; then PostgreSQL drops it with a
// WARNING: the statement that loaded it ran without the value, and no
// error, and the next ones fail (42501).
//
// A search_path (or a role, which "$user" puts in it) declared with
// different values for different units reaches, with the same statement
// text, different tables: pgx keeps each statement prepared, or its
// description, once per connection, whatever the search_path. The
// schemas it names must give a statement the same result type (the same
// columns, of the same types), as the schemas of one service per tenant
// do; where one differs, a statement prepared under the other fails once
// (SQLSTATE 0A000 or 08P01; it is prepared anew the next time), or in
// pgx's cache_describe mode may be decoded with the other's description.
// A statement is described, where it is not yet, after the declared
// search_path is applied (behind a pooler outside a transaction, use the
// exec mode, which describes nothing).
func NewSetting(name string) Setting {
	n, err := settingName(name)
	if err != nil {
		panic(err)
	}
	settingsDeclared.Store(true)
	return Setting{name: n}
}

func settingName(name string) (string, error) {
	n := strings.ToLower(name)
	for part := range strings.SplitSeq(n, ".") {
		if !validIdent(part) {
			return "", fmt.Errorf("dbctx: NewSetting(%q): not a parameter name: want identifiers joined by dots", name)
		}
	}
	// PostgreSQL's old names of two parameters (map_old_guc_names): one
	// parameter, under the name dbscope tracks it by.
	switch n {
	case "sort_mem":
		n = "work_mem"
	case "vacuum_mem":
		n = "maintenance_work_mem"
	}
	switch {
	case n == "session_authorization":
		return "", fmt.Errorf("dbctx: NewSetting(%q): the session reset relies on it; use role", name)
	case strings.HasPrefix(n, "transaction_"):
		return "", fmt.Errorf("dbctx: NewSetting(%q): only SET TRANSACTION sets it", name)
	case strings.HasPrefix(n, "default_transaction_"):
		// Read when a transaction begins, which is before a setting
		// declared is applied (in the statement's own implicit
		// transaction, or after Atomic's BEGIN).
		return "", fmt.Errorf("dbctx: NewSetting(%q): a transaction reads it as it begins, before a declared setting applies; use SET TRANSACTION, or sql.TxOptions with BeginTx", name)
	case n == "client_encoding":
		return "", fmt.Errorf("dbctx: NewSetting(%q): pgx speaks UTF8 only", name)
	case n == "seed":
		return "", fmt.Errorf("dbctx: NewSetting(%q): setting it calls setseed, which no reset undoes", name)
	case reservedUnknown(n):
		// PostgreSQL removes a placeholder under such a prefix, with a
		// WARNING, when the module's library loads in the session (the
		// first call of a PL/pgSQL function, also one a view or a policy
		// calls): the statements after it would run without the value
		// dbscope knows it applied, and no error.
		return "", fmt.Errorf("dbctx: NewSetting(%q): %q is a prefix a module of PostgreSQL's reserves, and it defines no such setting: its library, once loaded, removes it from the session; use a prefix of your own (app.)", name, n[:strings.IndexByte(n, '.')])
	case n == "transform_null_equals" || n == "standard_conforming_strings":
		// A statement prepared under one value would run under another
		// as parsed then; the second changes how dbscope reads the text
		// too.
		return "", fmt.Errorf("dbctx: NewSetting(%q): it changes how statements are parsed, which a statement prepared once per connection keeps", name)
	}
	return n, nil
}

// reservedPrefixes are the prefixes of custom settings that modules of
// PostgreSQL's own reserve (MarkGUCPrefixReserved) as their library
// loads, with the settings each defines, which may be declared.
var reservedPrefixes = map[string][]string{
	"plpgsql":            {"variable_conflict", "print_strict_params", "check_asserts", "extra_warnings", "extra_errors"},
	"pg_stat_statements": {"max", "track", "track_utility", "track_planning", "save"},
	"auto_explain": {"log_min_duration", "log_parameter_max_length", "log_analyze", "log_settings", "log_verbose",
		"log_buffers", "log_wal", "log_triggers", "log_format", "log_level", "log_nested_statements", "log_timing", "sample_rate"},
	"pg_trgm":      {"similarity_threshold", "word_similarity_threshold", "strict_word_similarity_threshold"},
	"postgres_fdw": {"application_name"},
}

// reservedUnknown reports whether n, lower case, is a custom setting
// under a prefix of reservedPrefixes that its module does not define.
func reservedUnknown(n string) bool {
	prefix, rest, ok := strings.Cut(n, ".")
	if !ok {
		return false
	}
	known, reserved := reservedPrefixes[prefix]
	return reserved && !slices.Contains(known, rest)
}

// validIdent reports whether s is an unquoted identifier: a letter or _,
// then letters, digits, _ or $.
func validIdent(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c == '_':
		case i > 0 && (c >= '0' && c <= '9' || c == '$'):
		default:
			return false
		}
	}
	return true
}

// Name returns the setting's name, in lower case.
func (st Setting) Name() string { return st.name }

// With returns a child of ctx in which the setting has value: every
// statement run with it, or with a context derived from it, runs with
// the setting set to value. A later With of the same setting overrides
// it. The value may come from a client: it is only ever sent as a
// parameter. A value with a NUL byte, which PostgreSQL cannot store,
// fails the statements (see [ErrSettingValue]); so does a value the
// server refuses for the parameter.
func (st Setting) With(ctx context.Context, value string) context.Context {
	if st.name == "" {
		panic("dbctx: Setting.With on a Setting not made by NewSetting")
	}
	old := settingsOf(ctx)
	next := make([]setting, 0, len(old)+1)
	i, found := slices.BinarySearchFunc(old, st.name, func(s setting, n string) int { return strings.Compare(s.name, n) })
	next = append(next, old[:i]...)
	next = append(next, setting{name: st.name, value: value, late: st.name == "search_path" && pathLate(value)})
	if found {
		i++
	}
	next = append(next, old[i:]...)
	return &settingsCtx{Context: ctx, list: next}
}

// pathLate reports whether the search_path value puts pg_catalog after
// another schema: the built-in functions and operators a statement names
// may then be a user's (see kindPathLate). Items are separated by commas,
// and may be quoted.
func pathLate(value string) bool {
	i := 0
	for item := range strings.SplitSeq(value, ",") {
		item = strings.TrimSpace(item)
		if len(item) >= 2 && item[0] == '"' && item[len(item)-1] == '"' {
			item = item[1 : len(item)-1]
		} else {
			item = strings.ToLower(item)
		}
		if item == "pg_catalog" {
			return i > 0
		}
		if item != "" {
			i++
		}
	}
	return false
}

// Value returns the setting's value in ctx, and whether ctx declares one.
func (st Setting) Value(ctx context.Context) (string, bool) {
	for _, s := range settingsOf(ctx) {
		if s.name == st.name {
			return s.value, true
		}
	}
	return "", false
}

// setting is a setting's value, or its reset where reset is set.
type setting struct {
	name, value string
	late        bool // a search_path that puts pg_catalog after another schema (see pathLate)
	reset       bool // back to what a fresh session has (set_config(name, NULL, …))
	around      bool // the role put back around the others, no change of its own (see roleAround)
}

var settingsKey = &ctxKey{name: "dbctx.settings"}

// settingsCtx carries the settings a unit of work declares, sorted by
// name.
type settingsCtx struct {
	context.Context
	list []setting
}

func (c *settingsCtx) Value(key any) any {
	if key == any(settingsKey) {
		return c
	}
	return c.Context.Value(key)
}

func (c *settingsCtx) AfterFunc(f func()) func() bool { return afterFunc(c.Context, f) }

// settingsOf returns the settings ctx declares, sorted by name.
func settingsOf(ctx context.Context) []setting {
	if !settingsDeclared.Load() {
		return nil
	}
	if c, ok := ctx.Value(settingsKey).(*settingsCtx); ok {
		return c.list
	}
	return nil
}

// sameSettings reports whether a and b, both sorted, set the same values.
func sameSettings(a, b []setting) bool {
	return slices.Equal(a, b)
}
