// Package gitcmd runs git the one way gcn-punch runs it: no shell, no terminal prompt, errors with git's own words.
package gitcmd

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// Output runs `git [-C dir] args...` and returns its standard output,
// trimmed. git never prompts (a daemon or hook has no terminal), and a
// failure carries git's standard error.
func Output(ctx context.Context, dir string, args ...string) (string, error) {
	full := args
	if dir != "" {
		full = append([]string{"-C", dir}, args...)
	}
	cmd := exec.CommandContext(ctx, "git", full...)
	cmd.Env = append(os.Environ(), "GIT_TERMINAL_PROMPT=0")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("git %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return strings.TrimSpace(out.String()), nil
}

// OriginURL is the URL of a clone's origin remote.
func OriginURL(ctx context.Context, clone string) (string, error) {
	url, err := Output(ctx, clone, "config", "--get", "remote.origin.url")
	if err != nil || url == "" {
		return "", fmt.Errorf("%s has no origin remote", clone)
	}
	return url, nil
}
