package punch

import (
	"context"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// The wait for the next registration follows the wall clock: after a
// suspend (the wall clock jumps, the monotonic one does not) the renewal
// is due within wallCheck of the resume, not a day of waking time later.
// Without a jump it waits the whole day, and no less.
func TestRenewalWaitFollowsTheWallClock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var slept atomic.Int64 // the wall clock's lead over the monotonic one
		now := func() time.Time { return time.Now().Add(time.Duration(slept.Load())) }
		start := time.Now()
		done := make(chan time.Duration, 1)
		go func() {
			waitWall(context.Background(), RenewEvery, now)
			done <- time.Since(start)
		}()
		time.Sleep(10 * time.Minute)
		slept.Store(int64(8 * 24 * time.Hour)) // a week's suspend ends
		took := <-done
		if took > 10*time.Minute+wallCheck {
			t.Fatalf("renewal due %v after start, %v after the resume; want within %v of it", took, took-10*time.Minute, wallCheck)
		}

		start = time.Now()
		slept.Store(0)
		go func() {
			waitWall(context.Background(), RenewEvery, now)
			done <- time.Since(start)
		}()
		if took := <-done; took != RenewEvery {
			t.Fatalf("with no suspend the wait took %v, want %v", took, RenewEvery)
		}

		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			time.Sleep(time.Hour)
			cancel()
		}()
		if waitWall(ctx, RenewEvery, now) {
			t.Fatal("the wait reported its time come when ctx ended")
		}
	})
}
