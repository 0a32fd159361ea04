package dbprom_test

import (
	"bufio"
	"database/sql"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/dbprom"
	"github.com/dbscope/dbscope/groups"
	_ "github.com/jackc/pgx/v5/stdlib"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// A service registers its pool's and its layer's collectors on its
// registry, beside database/sql's and the Go runtime's, and serves the
// registry on GET /metrics.
func Example() {
	db, err := sql.Open("pgx", os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	pool := dbctx.New(db, &dbctx.Options{MaxWorkers: 4})
	defer pool.Close()
	layer, err := groups.New(groups.NewMemory(), nil)
	if err != nil {
		log.Fatal(err)
	}
	defer layer.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewDBStatsCollector(db, "app"),
		dbprom.NewCollector(pool, &dbprom.Options{ConstLabels: prometheus.Labels{"pool": "primary"}}),
		dbprom.NewGroupsCollector(layer, nil),
	)
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))

	// What a scrape sees (a server of the example's own, in place of
	// http.ListenAndServe):
	srv := httptest.NewServer(mux)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	for sc := bufio.NewScanner(resp.Body); sc.Scan(); {
		if line := sc.Text(); strings.HasPrefix(line, "dbscope_slots") || strings.HasPrefix(line, "dbscope_groups_members") {
			fmt.Println(line)
		}
	}
	// Output:
	// dbscope_groups_members 0
	// dbscope_slots{pool="primary"} 4
	// dbscope_slots_in_use{pool="primary"} 0
}
