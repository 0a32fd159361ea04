package dbctx

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Writes that leave only sequence state.
//
// An INSERT, UPDATE or DELETE may leave anything in the session: its
// sequence values (currval, lastval), and whatever its table's own code
// does (a trigger may call set_config or take an advisory lock). So every
// write made its scope dirty, and the connection's next user paid the
// whole reset. Where the statement's text is otherwise clean (kindDML),
// the scope asks the catalog, in the statement's own round trip and
// transaction (right after it, before the Sync), whether the table runs
// code of its own (dmlCheckSQL). If it runs none, what the write left is
// its sequence state, and the reset owed is DISCARD SEQUENCES alone
// (kindSeq), one statement in the next user's round trip instead of the
// reset's ten.
//
// The answer holds for the write it follows: the write holds its lock on
// the table (ROW EXCLUSIVE) until its transaction ends, and every change
// that could add code to it (CREATE TRIGGER, CREATE RULE, ALTER TABLE,
// CREATE INDEX) takes a lock that conflicts with that one, so it either
// committed before the write took its lock, and the check, a statement
// after the write under READ COMMITTED, sees it, or waits until the
// write's transaction is over. Under REPEATABLE READ and SERIALIZABLE the
// check would read the catalog as of the transaction's snapshot: it
// answers no there.
//
// The table is every relation of that name, in the schema named or, the
// name unqualified, in any schema (what search_path picked is not asked,
// since a trigger could have changed it): each must be a plain table with
// no trigger but the foreign-key checks that only read (RI_FKey_check_*,
// the NO ACTION and RESTRICT ones), no rule, no child table, no column of
// a type of the user's (enums aside: their I/O is built in), no index on
// an operator class of the user's, no exclusion constraint, and no
// default, generated column, check constraint or index expression that
// calls anything but built-in functions and operators (an OID below
// 16384) other than set_config, setseed and the session advisory locks.
// What row-level security policies call is not seen, as for a SELECT
// (see the package doc).
//
// The check reads the catalog tables every role may read unless an
// administrator revoked that: were it refused, the write's transaction
// would fail with it. So a pool asks it once alone, outside a transaction,
// before the first write it follows (Pool.dmlAllowed); refused
// (insufficient_privilege), the pool never asks it again, warns once, and
// its writes owe the whole reset as before.
//
// The check runs only where the reset is dbscope's to choose: a pgx
// connection in a mode of the extended protocol, not under
// TransactionPooling (no reset there), with the default ResetSQL and
// without ResetAlways.

// dmlCheckSQL answers, right after a write to table $2 (in schema $1, or
// any where $1 is ”), whether every relation of that name runs no code
// of its own (see above).
const dmlCheckSQL = `SELECT pg_catalog.current_setting('transaction_isolation') = 'read committed' AND pg_catalog.count(*) > 0 AND pg_catalog.bool_and(` +
	`c.relkind = 'r' AND NOT c.relhasrules AND NOT c.relhassubclass ` +
	`AND (NOT c.relhastriggers OR NOT EXISTS (SELECT FROM pg_catalog.pg_trigger t WHERE t.tgrelid = c.oid AND NOT (t.tgisinternal AND t.tgfoid IN (` +
	`'pg_catalog."RI_FKey_check_ins"'::pg_catalog.regproc, 'pg_catalog."RI_FKey_check_upd"'::pg_catalog.regproc, ` +
	`'pg_catalog."RI_FKey_noaction_del"'::pg_catalog.regproc, 'pg_catalog."RI_FKey_noaction_upd"'::pg_catalog.regproc, ` +
	`'pg_catalog."RI_FKey_restrict_del"'::pg_catalog.regproc, 'pg_catalog."RI_FKey_restrict_upd"'::pg_catalog.regproc)))) ` +
	`AND NOT EXISTS (SELECT FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type y ON y.oid = a.atttypid ` +
	`WHERE a.attrelid = c.oid AND a.attnum > 0 AND y.oid >= 16384 AND y.typtype <> 'e') ` +
	`AND NOT EXISTS (SELECT FROM pg_catalog.pg_attrdef d WHERE d.adrelid = c.oid AND d.adbin::pg_catalog.text ~ ` + dmlCodeRE + `) ` +
	`AND NOT EXISTS (SELECT FROM pg_catalog.pg_constraint k WHERE k.conrelid = c.oid AND (k.contype = 'x' OR k.conbin::pg_catalog.text ~ ` + dmlCodeRE + `)) ` +
	`AND NOT EXISTS (SELECT FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND (i.indexprs::pg_catalog.text ~ ` + dmlCodeRE +
	` OR i.indpred::pg_catalog.text ~ ` + dmlCodeRE + ` OR EXISTS (SELECT FROM pg_catalog.unnest(i.indclass::pg_catalog.oid[]) o WHERE o >= 16384)))` +
	`) FROM pg_catalog.pg_class c WHERE c.relname = $2::pg_catalog.name AND ($1 = '' OR c.relnamespace = (SELECT n.oid FROM pg_catalog.pg_namespace n WHERE n.nspname = $1))`

// dmlCodeRE finds, in an expression's stored node tree, a function,
// operator or type that runs code of the user's (an OID of 16384 or more)
// or a built-in that leaves session state: set_config (2078), setseed
// (1599), the session advisory locks (2880-2892). TestDMLCheckOIDs holds
// those numbers to the catalog.
const dmlCodeRE = `E':(funcid|opno|opfuncid|hashfuncid|negfuncid|aggfnoid|winfnoid|resulttype|refcontainertype|minmaxtype|opnos \\(o[ 0-9]*?) ` +
	`(1599|2078|28[89][0-9]|1638[4-9]|1639[0-9]|16[4-9][0-9][0-9]|1[7-9][0-9]{3}|[2-9][0-9]{4}|[0-9]{6,})\\M'`

// dmlTarget is the table a write names.
type dmlTarget struct {
	schema, name string
}

// lightWrites reports whether a kindDML statement on c gets the check
// (see above).
func (pl *Pool) lightWrites(c *session) bool {
	o := &pl.opts
	return c.px != nil && c.mode != pgx.QueryExecModeSimpleProtocol && !o.TransactionPooling && !o.ResetAlways &&
		o.ResetSQL == DefaultResetSQL
}

// writeTarget returns the table that query, a kindDML statement, writes:
// INSERT INTO name, UPDATE [ONLY] name, DELETE FROM [ONLY] name, the name
// as PostgreSQL reads it (unquoted, folded to lower case), or false where
// it is not that simple.
func writeTarget(query string) (dmlTarget, bool) {
	l := lexer{q: query}
	first := l.next()
	t := l.next()
	switch {
	case first.is("insert") && t.is("into"), first.is("delete") && t.is("from"):
		t = l.next()
	case first.is("update"):
	default:
		return dmlTarget{}, false
	}
	if t.is("only") && !first.is("insert") {
		t = l.next()
	}
	a, ok := nameOf(t)
	if !ok {
		return dmlTarget{}, false
	}
	l2 := l
	if l2.next().kind != tDot {
		return dmlTarget{name: a}, true
	}
	b, ok := nameOf(l2.next())
	if !ok || l2.next().kind == tDot {
		return dmlTarget{}, false
	}
	return dmlTarget{schema: a, name: b}, true
}

// nameOf is the name an identifier token stands for, as PostgreSQL reads
// it: a quoted one as written, an unquoted one that is not a reserved word
// folded to lower case (ASCII only, as PostgreSQL does in UTF-8). Names
// longer than PostgreSQL keeps (63 bytes) are not read.
func nameOf(t token) (string, bool) {
	switch t.kind {
	case tQuoted:
		if t.text == "" || len(t.text) > 63 {
			return "", false
		}
		return t.text, true
	case tWord:
		if len(t.text) > 63 || keywordOf(t.text) == kwReserved {
			return "", false
		}
		b := []byte(t.text)
		for i, ch := range b {
			if ch >= 'A' && ch <= 'Z' {
				b[i] = ch + 'a' - 'A'
			}
		}
		return string(b), true
	}
	return "", false
}

// noteWrite returns what st is noted as on c before it runs: its kind,
// but for a write whose catalog check will follow it, sequence state
// (kindSeq) until the check answers otherwise (dmlOpen, dmlChecked). The
// runner finds the table in c.dml; one that does not run the check
// leaves the write counted whole at the boundary.
func (s *Scope) noteWrite(ctx context.Context, c *session, st *stmt) queryKind {
	if st.kind&kindDML == 0 || !s.pool.lightWrites(c) {
		return st.kind
	}
	t, ok := writeTarget(st.query)
	if !ok || !s.pool.dmlAllowed(ctx, c) {
		return st.kind
	}
	c.dml = t
	c.pin.dmlOpen++
	return st.kind&^(kindState|kindCode) | kindSeq
}

// sendDMLCheck queues t's catalog check on rt, prepared under a name
// where named (the name, where it is prepared in this round trip).
func (c *session) sendDMLCheck(rt *roundTrip, t dmlTarget, named bool) (prepared string) {
	c.dmlParams[0], c.dmlParams[1] = stringBytes(t.schema), stringBytes(t.name)
	params := c.dmlParams[:]
	switch sd := c.prep[dmlCheckSQL]; {
	case !named:
		rt.sendParams(dmlCheckSQL, params, nil, nil, nil)
	case sd != nil:
		rt.sendStatement(sd, params, nil, nil)
	default: // startPrefix made rt a pipeline for it
		prepared = c.newName()
		rt.pl.SendPrepare(prepared, dmlCheckSQL, nil)
		rt.pl.SendQueryPrepared(prepared, params, nil, nil)
	}
	c.dmlParams = [2][]byte{}
	return prepared
}

// dmlChecked reads the catalog check that followed r's write, where the
// write ran without an error (err), and settles what the write is noted
// as: sequence state where the check found the table running no code of
// its own, else state and code, as any write.
func (r *result) dmlChecked(err error) error {
	c := r.c
	inert := false
	if err == nil {
		inert, err = r.readDMLCheck()
	}
	c.pin.dmlOpen--
	if !inert {
		c.pin.seen |= kindState | kindCode
	}
	r.dml = dmlTarget{}
	return err
}

func (r *result) readDMLCheck() (bool, error) {
	c, rt := r.c, r.rt
	if rt == nil {
		return false, errOutOfStep
	}
	if r.dmlPrepared != "" {
		_, sd, err := rt.next()
		if err != nil {
			return false, err
		}
		if sd == nil {
			return false, errOutOfStep
		}
		sd.Name, sd.SQL = r.dmlPrepared, dmlCheckSQL
		if c.prep == nil {
			c.prep = make(map[string]*pgconn.StatementDescription)
		}
		c.prep[dmlCheckSQL] = sd
	}
	rr, _, err := rt.next()
	if err != nil {
		return false, err
	}
	if rr == nil {
		return false, errOutOfStep
	}
	inert := false
	for rr.NextRow() {
		v := rr.Values()
		inert = len(v) == 1 && len(v[0]) == 1 && v[0][0] == 't'
	}
	_, err = rr.Close()
	return inert && err == nil, err
}

// dmlAllowed reports whether the pool's role may ask the catalog check:
// asked once alone on c, where c is outside a transaction (see above).
func (pl *Pool) dmlAllowed(ctx context.Context, c *session) bool {
	switch pl.dmlCheck.Load() {
	case dmlCheckOK:
		return true
	case dmlCheckRefused:
		return false
	}
	if c.pc.TxStatus() != 'I' {
		return false // not known yet: the write counts whole
	}
	var err error
	if lerr := withLock(c.pin.conn, func() error {
		err = c.pc.ExecParams(ctx, dmlCheckSQL, [][]byte{{}, []byte("pg_class")}, nil, nil, nil).Read().Err
		return nil
	}); lerr != nil {
		return false
	}
	var pe *pgconn.PgError
	switch {
	case err == nil:
		pl.dmlCheck.Store(dmlCheckOK)
		return true
	case errors.As(err, &pe) && pe.Code == "42501": // insufficient_privilege
		if pl.dmlCheck.Swap(dmlCheckRefused) != dmlCheckRefused {
			pl.opts.Logger.Warn("dbctx: the role cannot read the catalog tables a write's check reads (pg_class, pg_trigger, pg_attribute, pg_type, pg_attrdef, pg_constraint, pg_index, pg_namespace); every write owes the whole session reset", "err", err)
		}
	}
	return false
}

// Pool.dmlCheck's states.
const (
	dmlCheckUnknown int32 = iota
	dmlCheckOK
	dmlCheckRefused
)
