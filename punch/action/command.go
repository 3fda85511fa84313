package action

import (
	"errors"
	"fmt"
	"strings"
)

// ErrCommand reports an --exec command line that does not parse.
var ErrCommand = errors.New("bad command line")

// SplitCommand splits a command line into the program and its arguments
// the way systemd's ExecStart does, never through a shell: words are
// separated by spaces or tabs; "double" and 'single' quotes group words
// with spaces; a backslash takes the next character literally, except in
// single quotes, where everything is literal. No variables, globs,
// redirections or pipes: a notification field can never become code.
func SplitCommand(s string) ([]string, error) {
	var words []string
	var w strings.Builder
	inWord := false
	var quote byte // 0, '"' or '\''
	if strings.ContainsAny(s, "\n\r\x00") {
		return nil, fmt.Errorf("%w: %q holds a control character", ErrCommand, s)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote == '\'':
			if c == '\'' {
				quote = 0
			} else {
				w.WriteByte(c)
			}
		case c == '\\':
			if i+1 == len(s) {
				return nil, fmt.Errorf("%w: %q ends in a backslash", ErrCommand, s)
			}
			i++
			w.WriteByte(s[i])
			inWord = true
		case quote == '"':
			if c == '"' {
				quote = 0
			} else {
				w.WriteByte(c)
			}
		case c == '"' || c == '\'':
			quote, inWord = c, true
		case c == ' ' || c == '\t':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		default:
			w.WriteByte(c)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("%w: %q has an unclosed %c quote", ErrCommand, s, quote)
	}
	if inWord {
		words = append(words, w.String())
	}
	if len(words) == 0 || words[0] == "" {
		return nil, fmt.Errorf("%w: %q names no program", ErrCommand, s)
	}
	return words, nil
}

// QuoteCommand is the inverse of SplitCommand: a command line that splits
// into exactly args.
func QuoteCommand(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a != "" && !strings.ContainsAny(a, " \t\"'\\") {
			q[i] = a
			continue
		}
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}
