// Package sqlcpgx is what sqlc generates with sql_package "pgx/v5" for a
// small schema, written out by hand in sqlc's shape (its DBTX, Queries,
// New, WithTx and one method per query, with sqlc's CopyFrom and batch
// code), so that tests run real sqlc-style pgx code through dbctx's Scope.
//
// The schema, in the caller's search_path:
//
//	CREATE TABLE items (id bigserial PRIMARY KEY, name text NOT NULL);
package sqlcpgx

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Schema creates the table the queries use.
const Schema = `CREATE TABLE items (id bigserial PRIMARY KEY, name text NOT NULL)`

// DBTX is sqlc's interface for sql_package "pgx/v5" (with copyfrom and
// batch queries in the package, it has CopyFrom and SendBatch).
type DBTX interface {
	Exec(context.Context, string, ...interface{}) (pgconn.CommandTag, error)
	Query(context.Context, string, ...interface{}) (pgx.Rows, error)
	QueryRow(context.Context, string, ...interface{}) pgx.Row
	CopyFrom(ctx context.Context, tableName pgx.Identifier, columnNames []string, rowSrc pgx.CopyFromSource) (int64, error)
	SendBatch(context.Context, *pgx.Batch) pgx.BatchResults
}

func New(db DBTX) *Queries {
	return &Queries{db: db}
}

type Queries struct {
	db DBTX
}

func (q *Queries) WithTx(tx pgx.Tx) *Queries {
	return &Queries{
		db: tx,
	}
}

type Item struct {
	ID   int64
	Name string
}

const createItem = `-- name: CreateItem :one
INSERT INTO items (name) VALUES ($1) RETURNING id, name
`

func (q *Queries) CreateItem(ctx context.Context, name string) (Item, error) {
	row := q.db.QueryRow(ctx, createItem, name)
	var i Item
	err := row.Scan(&i.ID, &i.Name)
	return i, err
}

const getItem = `-- name: GetItem :one
SELECT id, name FROM items WHERE id = $1
`

func (q *Queries) GetItem(ctx context.Context, id int64) (Item, error) {
	row := q.db.QueryRow(ctx, getItem, id)
	var i Item
	err := row.Scan(&i.ID, &i.Name)
	return i, err
}

const getName = `-- name: GetName :one
SELECT name FROM items WHERE id = $1
`

func (q *Queries) GetName(ctx context.Context, id int64) (string, error) {
	row := q.db.QueryRow(ctx, getName, id)
	var name string
	err := row.Scan(&name)
	return name, err
}

const listItems = `-- name: ListItems :many
SELECT id, name FROM items ORDER BY id
`

func (q *Queries) ListItems(ctx context.Context) ([]Item, error) {
	rows, err := q.db.Query(ctx, listItems)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var items []Item
	for rows.Next() {
		var i Item
		if err := rows.Scan(&i.ID, &i.Name); err != nil {
			return nil, err
		}
		items = append(items, i)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return items, nil
}

const renameItem = `-- name: RenameItem :execrows
UPDATE items SET name = $2 WHERE id = $1
`

type RenameItemParams struct {
	ID   int64
	Name string
}

func (q *Queries) RenameItem(ctx context.Context, arg RenameItemParams) (int64, error) {
	result, err := q.db.Exec(ctx, renameItem, arg.ID, arg.Name)
	if err != nil {
		return 0, err
	}
	return result.RowsAffected(), nil
}

const countItems = `-- name: CountItems :one
SELECT count(*) FROM items
`

func (q *Queries) CountItems(ctx context.Context) (int64, error) {
	row := q.db.QueryRow(ctx, countItems)
	var count int64
	err := row.Scan(&count)
	return count, err
}

// iteratorForCopyItems implements pgx.CopyFromSource, as sqlc's copyfrom.go.
type iteratorForCopyItems struct {
	rows                 []string
	skippedFirstNextCall bool
}

func (r *iteratorForCopyItems) Next() bool {
	if len(r.rows) == 0 {
		return false
	}
	if !r.skippedFirstNextCall {
		r.skippedFirstNextCall = true
		return true
	}
	r.rows = r.rows[1:]
	return len(r.rows) > 0
}

func (r iteratorForCopyItems) Values() ([]interface{}, error) {
	return []interface{}{
		r.rows[0],
	}, nil
}

func (r iteratorForCopyItems) Err() error {
	return nil
}

// CopyItems is sqlc's :copyfrom.
func (q *Queries) CopyItems(ctx context.Context, names []string) (int64, error) {
	return q.db.CopyFrom(ctx, []string{"items"}, []string{"name"}, &iteratorForCopyItems{rows: names})
}

const renameItems = `-- name: RenameItems :batchexec
UPDATE items SET name = $2 WHERE id = $1
`

// RenameItemsBatchResults is sqlc's :batchexec result, as its batch.go.
type RenameItemsBatchResults struct {
	br     pgx.BatchResults
	tot    int
	closed bool
}

func (q *Queries) RenameItems(ctx context.Context, arg []RenameItemParams) *RenameItemsBatchResults {
	batch := &pgx.Batch{}
	for _, a := range arg {
		vals := []interface{}{
			a.ID,
			a.Name,
		}
		batch.Queue(renameItems, vals...)
	}
	br := q.db.SendBatch(ctx, batch)
	return &RenameItemsBatchResults{br, len(arg), false}
}

func (b *RenameItemsBatchResults) Exec(f func(int, error)) {
	defer b.br.Close()
	for t := 0; t < b.tot; t++ {
		if b.closed {
			if f != nil {
				f(t, errBatchAlreadyClosed)
			}
			continue
		}
		_, err := b.br.Exec()
		if f != nil {
			f(t, err)
		}
	}
}

func (b *RenameItemsBatchResults) Close() error {
	b.closed = true
	return b.br.Close()
}

var errBatchAlreadyClosed = batchError("batch already closed")

type batchError string

func (e batchError) Error() string { return string(e) }
