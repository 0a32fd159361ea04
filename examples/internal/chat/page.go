package chat

import (
	_ "embed"
	"encoding/json"
	"net/http"
)

//go:embed index.html
var page []byte

// ServePage serves the chat page: plain HTML and JavaScript, no build
// step. It opens /ws/sync, or /ws/async with ?ws=async, and joins the
// room named by ?room= (DefaultRoom without) of the tenant named by
// ?tenant= (DefaultTenant without).
func ServePage(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Write(page)
}

// WriteJSON answers with v as JSON and the given status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
