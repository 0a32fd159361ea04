// Package chat is what the two example servers (examples/chi and
// examples/nethttp) share and what is not about dbscope: the messages
// table and its queries, the wire format and the embedded page. The handlers that show dbscope at work are in
// package chatserver.
package chat
