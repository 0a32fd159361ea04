package dbctx

import (
	"encoding/binary"
	"unsafe"
)

// How the client encodings split a text into characters.
//
// PostgreSQL converts a query's text from the client_encoding to the
// server's, character by character, before its scanner reads it; a
// character is as long as the client encoding's pg_encoding_mblen says
// (src/common/wchar.c). In the encodings a server may have (UTF8, the
// EUC_* ones, LATIN*, WIN*…) no byte of a character of several is below
// 0x80, so a reading byte by byte finds every quote and backslash where
// the scanner does. The client-only ones are not so: a byte above ASCII
// may take the byte after it, whatever it is, into its character, and
// with it a backslash, or a [ or a | that ended an identifier. Under
// SJIS, E'\xb1\x95\x5c' is a string of two characters (0xB1 is one of
// one byte, 0x95 0x5C one of two) whose quote ends it, where a reading
// byte by byte sees an escaped quote.
//
// The classifier does not know the client_encoding a text will be read
// under: a statement before it in the unit may have set it, for the
// session or its transaction, by SET, SET NAMES, set_config or code it
// cannot see, and the statements of a batch are read before any of them
// runs. So it follows no encoding: a text that a client-only
// encoding splits otherwise than byte by byte is read in that encoding's
// way too (see readings), and what every reading says is joined.

// mbSplit is a way of splitting text into characters: one of the
// client-only encodings' (or several that split alike), or byte by byte.
type mbSplit uint8

const (
	splitBytes   mbSplit = iota // every encoding a server may have: no ASCII byte inside a character
	splitTwo                    // BIG5, GBK, UHC: a byte above ASCII begins a character of two
	splitSJIS                   // SJIS, SHIFT_JIS_2004: 0xA1–0xDF are characters of one byte, other bytes above ASCII begin one of two
	splitGB18030                // GB18030: a byte above ASCII begins one of four where a digit follows it, else one of two
	splitJOHAB                  // JOHAB, as EUC: 0x8E begins one of two, 0x8F one of three, other bytes above ASCII one of two
)

// clientSplits are the splits a reading may take besides splitBytes.
var clientSplits = [...]mbSplit{splitTwo, splitSJIS, splitGB18030, splitJOHAB}

// charLen returns the length of the character at q[i] in split s, as the
// encoding's pg_encoding_mblen does: it may run past the end of q, where
// PostgreSQL refuses the text.
func (s mbSplit) charLen(q string, i int) int {
	switch c := q[i]; {
	case c < 0x80 || s == splitBytes:
		return 1
	case s == splitSJIS && c >= 0xa1 && c <= 0xdf:
		return 1
	case s == splitGB18030 && i+1 < len(q) && isDigit(q[i+1]):
		return 4
	case s == splitJOHAB && c == 0x8f:
		return 3
	}
	return 2
}

// splitMatters reports whether reading query in split s may find other
// tokens than reading it byte by byte: some character of several bytes
// takes in an ASCII byte that is neither a letter nor _ (inside an
// identifier, in a string or a dollar quote's tag, those are read alike
// either way), and PostgreSQL would convert the text (it refuses the
// whole text where a character is not one of the encoding's, so that a
// reading taking in a quote or a newline is never one it runs). The ASCII
// bytes a character of several may end in, in the conversions to UTF8,
// are 0x40–0x7E (UHC's, letters only; GB18030's of four bytes, digits
// only, and JOHAB's none, as their verifiers check): of those only
// @ [ \ ] ^ ` { | } ~ matter. A character cut by the end of the text
// makes PostgreSQL refuse it too. GB18030 is read only where it has a
// character of four bytes: else it splits as splitTwo, read already.
//
// Not covered: a server whose encoding is EUC_TW or MULE_INTERNAL, whose
// conversion from BIG5 maps most of BIG5's first bytes with any byte
// after them, a quote or a newline included (big5.c's ranges), to a
// character. The classifier would need the server's encoding to read
// BIG5 there.
func splitMatters(query string, s mbSplit) bool {
	matters, four := false, false
	for i := 0; i < len(query); {
		if query[i] < 0x80 {
			i++
			continue
		}
		n := s.charLen(query, i)
		if n == 1 {
			i++
			continue
		}
		if i+n > len(query) {
			return false // cut by the end of the text
		}
		if !s.lead(query[i]) {
			return false // no character begins so: PostgreSQL refuses the text
		}
		for k := 1; k < n; k++ {
			b := query[i+k]
			switch {
			case s == splitGB18030 && n == 4:
				// Its second and fourth bytes are digits, its third
				// above ASCII.
				if k == 2 && b < 0x80 || k != 2 && !isDigit(b) {
					return false
				}
				four = true
			case b >= 0x80:
			case s == splitJOHAB || b < 0x40 || b == 0x7f:
				// Not a character of the encoding's: PostgreSQL
				// refuses the text (its verifier, or its conversion's
				// map).
				return false
			case markByte(b):
				matters = true
			}
		}
		i += n
	}
	// Without a character of four bytes, GB18030 splits as splitTwo.
	return matters && (four || s != splitGB18030)
}

// lead reports whether c may begin a character of several bytes in split
// s: SJIS's verifier takes 0x81–0x9F and 0xE0–0xFC alone (so not the
// second byte of à or π in UTF-8, 0xA0 and 0x80); no encoding of the
// others maps a character beginning with 0x80 or 0xFF.
func (s mbSplit) lead(c byte) bool {
	if s == splitSJIS {
		return c >= 0x81 && c <= 0x9f || c >= 0xe0 && c <= 0xfc
	}
	return c > 0x80 && c < 0xff
}

// markByte reports whether b, an ASCII byte a character of several may
// end in, ends something where it stands alone: the byte of a backslash,
// an operator's, a bracket's (not a letter's or _'s).
func markByte(b byte) bool { return marks[b] }

var marks = func() (m [256]bool) {
	for _, b := range []byte("@[\\]^`{|}~") {
		m[b] = true
	}
	return m
}()

// highBeforeMark reports whether a byte above ASCII comes right before a
// byte that markByte says ends something: where none does, no split
// takes one in (see splitMatters), and query is read byte by byte only.
func highBeforeMark(query string) bool {
	// Most texts are ASCII alone: eight bytes at a time to the first
	// above it.
	b, i := unsafe.Slice(unsafe.StringData(query), len(query)), 0
	for ; i+8 <= len(b); i += 8 {
		if binary.LittleEndian.Uint64(b[i:])&0x8080808080808080 != 0 {
			break
		}
	}
	for i = max(i, 1); i < len(query); i++ {
		if marks[query[i]] && query[i-1] >= 0x80 {
			return true
		}
	}
	return false
}
