package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	flag "github.com/spf13/pflag"
)

// Log formats: --log-format auto (the default) writes lines for people on
// a terminal and logfmt (slog's text, which journald and log tools parse)
// elsewhere; text and json choose one.
const (
	logAuto  = "auto"
	logHuman = "human"
	logText  = "text"
	logJSON  = "json"
)

// logFlags adds --verbose and --log-format to a long-running command.
type logFlags struct {
	verbose *bool
	format  *string
}

func addLogFlags(fs *flag.FlagSet) logFlags {
	return logFlags{
		verbose: fs.BoolP("verbose", "v", false, "debug logging"),
		format:  fs.String("log-format", logAuto, "log format: human (on a terminal), text (logfmt, for journald), json; auto chooses human on a terminal, else text"),
	}
}

// logger builds the command's logger, or exits 2 on an unknown format.
func (lf logFlags) logger(fs *flag.FlagSet) *slog.Logger {
	format := *lf.format
	if !slices.Contains([]string{logAuto, logHuman, logText, logJSON}, format) {
		usageFail(fs, fmt.Errorf("--log-format %q: give auto, human, text or json", format))
	}
	return newLogger(os.Stderr, format, *lf.verbose)
}

func newLogger(w *os.File, format string, verbose bool) *slog.Logger {
	lvl := slog.LevelInfo
	if verbose {
		lvl = slog.LevelDebug
	}
	if format == logAuto {
		format = logText
		if fi, err := w.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			format = logHuman
		}
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch format {
	case logJSON:
		return slog.New(slog.NewJSONHandler(w, opts))
	case logHuman:
		return slog.New(newHumanHandler(w, lvl))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// humanHandler writes one short line per record, for a person at a
// terminal: "15:04:05 WARN  message  key=value ...".
type humanHandler struct {
	mu     *sync.Mutex
	w      io.Writer
	level  slog.Leveler
	prefix string // the group, with a dot, for keys
	attrs  string // attributes given by With, formatted
}

func newHumanHandler(w io.Writer, level slog.Leveler) *humanHandler {
	return &humanHandler{mu: &sync.Mutex{}, w: w, level: level}
}

func (h *humanHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level.Level() }

func (h *humanHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	if !r.Time.IsZero() {
		b.WriteString(r.Time.Format(time.TimeOnly))
		b.WriteByte(' ')
	}
	fmt.Fprintf(&b, "%-5s %s", r.Level.String(), r.Message)
	b.WriteString(h.attrs)
	r.Attrs(func(a slog.Attr) bool {
		appendAttr(&b, h.prefix, a)
		return true
	})
	b.WriteByte('\n')
	h.mu.Lock()
	defer h.mu.Unlock()
	_, err := io.WriteString(h.w, b.String())
	return err
}

func (h *humanHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	var b strings.Builder
	for _, a := range as {
		appendAttr(&b, h.prefix, a)
	}
	c.attrs += b.String()
	return &c
}

func (h *humanHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := *h
	c.prefix += name + "."
	return &c
}

// appendAttr writes "  key=value", quoting a value that has spaces or
// quotes, and flattening groups.
func appendAttr(b *strings.Builder, prefix string, a slog.Attr) {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return
	}
	if a.Value.Kind() == slog.KindGroup {
		for _, g := range a.Value.Group() {
			appendAttr(b, prefix+a.Key+".", g)
		}
		return
	}
	v := a.Value.String()
	if v == "" || strings.ContainsAny(v, " \t\n\"=") {
		v = strconv.Quote(v)
	}
	fmt.Fprintf(b, "  %s%s=%s", prefix, a.Key, v)
}

// logStopped writes a long-running command's last line: INFO when it
// stopped as asked, ERROR with the reason when it failed.
func logStopped(log *slog.Logger, name string, err error) {
	if err != nil {
		log.Error(name+" stopped", "err", errText(err))
		return
	}
	log.Info(name + " stopped")
}
