package gitcmd

import (
	"context"
	"os"
	"strings"
	"testing"
)

func TestOutputAndOrigin(t *testing.T) {
	os.Setenv("GIT_CONFIG_NOSYSTEM", "1")
	dir := t.TempDir()
	ctx := context.Background()
	if _, err := Output(ctx, dir, "init", "-q"); err != nil {
		t.Fatal(err)
	}
	if _, err := OriginURL(ctx, dir); err == nil || !strings.Contains(err.Error(), "no origin remote") {
		t.Fatalf("no origin: %v", err)
	}
	Output(ctx, dir, "remote", "add", "origin", "git@example.invalid:chat.git")
	if url, err := OriginURL(ctx, dir); err != nil || url != "git@example.invalid:chat.git" {
		t.Fatalf("origin %q %v", url, err)
	}
	// A failure carries git's own words.
	if _, err := Output(ctx, dir, "rev-parse", "--verify", "no-such-ref"); err == nil || !strings.Contains(err.Error(), "fatal") {
		t.Fatalf("error %v", err)
	}
}
