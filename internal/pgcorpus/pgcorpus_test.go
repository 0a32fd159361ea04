package pgcorpus

import (
	"reflect"
	"testing"
)

// A script splits where psql sends: at semicolons outside quotes,
// comments, parentheses and SQL function bodies, at \g and its kin; \;
// joins; meta-commands are dropped; COPY's data is read when asked for.
func TestScript(t *testing.T) {
	src := "SELECT 1;\n" +
		"-- comment; not a statement\n" +
		"SELECT 'a;b', \"c;d\", $x$ ; $x$, E'\\';', /* ; /* ; */ */ 2;\n" +
		"\\set x 1\n" +
		"SELECT 3 \\gset\n" +
		"SELECT 4 \\; SELECT 5;\n" +
		"CREATE FUNCTION f() RETURNS int BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 2 END; END;\n" +
		"SELECT 'x\\';\n" +
		"COPY t FROM stdin;\n" +
		"1\tone;\n" +
		"\\.\n" +
		"\\c -\n" +
		"SELECT 'a'\n'b' ; SELECT (1;\n2);\n" +
		"SELECT 6"
	s := NewScript(src)
	var got []string
	for {
		st, ok := s.Next(true)
		if !ok {
			break
		}
		switch {
		case st.Reconnect:
			got = append(got, `\c`)
		default:
			got = append(got, st.SQL)
		}
		if st.SQL == "COPY t FROM stdin;" {
			if d := s.CopyData(); d != "1\tone;\n" {
				t.Errorf("copy data %q", d)
			}
		}
	}
	want := []string{
		"SELECT 1;",
		"SELECT 'a;b', \"c;d\", $x$ ; $x$, E'\\';', /* ; /* ; */ */ 2;",
		"SELECT 3",
		"SELECT 4 ; SELECT 5;",
		"CREATE FUNCTION f() RETURNS int BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 2 END; END;",
		"SELECT 'x\\';",
		"COPY t FROM stdin;",
		`\c`,
		"SELECT 'a'\n'b' ;",
		"SELECT (1;\n2);",
		"SELECT 6",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("steps:\n%q\nwant\n%q", got, want)
	}
	// With standard_conforming_strings off, a backslash escapes the quote.
	s = NewScript("SELECT 'x\\'; y'; SELECT 2;")
	if st, _ := s.Next(false); st.SQL != "SELECT 'x\\'; y';" {
		t.Errorf("escapes: %q", st.SQL)
	}
}
