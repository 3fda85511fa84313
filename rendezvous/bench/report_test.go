package bench

import (
	"strings"
	"testing"
)

// The tables say how the simulated clients were spread over generator
// processes, which the tree's timings depend on.
func TestTableSaysHowClientsWereSimulated(t *testing.T) {
	for _, c := range []struct {
		per  int
		want string
	}{
		{100000, "One generator process holds 100k simulated clients here, on a thread per core."},
		{15000, "100k simulated clients take 7 generator processes of at most 15000, each on one thread"},
	} {
		var b strings.Builder
		Results{Machine: Machine{ClientsPerGenerator: c.per}}.Table(&b)
		if !strings.Contains(b.String(), c.want) {
			t.Errorf("with %d clients per generator the tables do not say %q:\n%s", c.per, c.want, b.String())
		}
	}
}
