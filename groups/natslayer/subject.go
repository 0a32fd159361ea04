package natslayer

import "strings"

// Subject returns the NATS subject that carries group under prefix:
// prefix + ".g." + the group's name with every '.' written ':'. A group
// name (groups.CheckGroup: letters, digits, '-', '_', '.') thus becomes a
// single token, as NATS reads '.' as a separator, and the mapping is
// one-to-one, as ':' is not in group names: two groups never share a
// subject. "room.42" under "dbscope" is "dbscope.g.room:42". The result
// holds no '*', '>' or whitespace.
func Subject(prefix, group string) string {
	return prefix + ".g." + strings.ReplaceAll(group, ".", ":")
}
