package rung

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"golang.org/x/sync/errgroup"
)

// raceCore is Race for any closable result, so the race logic can be tested
// without sessions. See Race for the rules.
func raceCore[T io.Closer](ctx context.Context, cands []contender[T], log *slog.Logger) (T, string, error) {
	var zero T
	if len(cands) == 0 {
		return zero, "", ErrEmptyLadder
	}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()

	type result struct {
		i   int
		v   T
		err error
	}
	// Buffered for every candidate, so a strategy's goroutine never blocks
	// on sending its result.
	results := make(chan result, len(cands))
	var g errgroup.Group
	started, pending := 0, 0
	start := func() {
		i := started
		started++
		pending++
		g.Go(func() error {
			v, err := cands[i].run(rctx)
			results <- result{i, v, err}
			return nil
		})
	}

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	// startNext starts the next candidate and arms the timer for its head
	// start, if there is one after it.
	startNext := func() {
		start()
		if started < len(cands) {
			timer.Reset(cands[started-1].headStart)
		}
	}

	errs := make([]*Error, len(cands))
	winner := -1
	var won T
	ctxDone := ctx.Done()
	startNext()
	for pending > 0 {
		var headStart <-chan time.Time
		if winner < 0 && ctxDone != nil && started < len(cands) {
			headStart = timer.C
		}
		select {
		case r := <-results:
			pending--
			switch {
			case r.err != nil:
				errs[r.i] = &Error{Strategy: cands[r.i].name, Err: r.err}
			case winner < 0 && ctx.Err() == nil:
				winner, won = r.i, r.v
				cancel()
			default:
				// A loser that succeeded after all (or after ctx ended).
				log.Debug("strategy: closing loser's session", "strategy", cands[r.i].name)
				r.v.Close()
				errs[r.i] = &Error{Strategy: cands[r.i].name, Err: context.Canceled}
			}
			if winner < 0 && ctxDone != nil && ctx.Err() == nil && r.err != nil && r.i == started-1 && started < len(cands) {
				// The latest rung failed: its head start is moot, start the
				// next at once (earlier rungs still running keep going).
				timer.Stop()
				startNext()
			}
		case <-headStart:
			startNext()
		case <-ctxDone:
			ctxDone = nil // stop starting entries; wait for the started ones
			cancel()
		}
	}
	g.Wait() // every goroutine has sent its result; this only joins them

	if winner >= 0 {
		return won, cands[winner].name, nil
	}
	var failed []*Error
	for _, e := range errs {
		if e != nil {
			failed = append(failed, e)
		}
	}
	raceErr := &RaceError{Errs: failed}
	if err := ctx.Err(); err != nil {
		if len(failed) == 0 {
			return zero, "", fmt.Errorf("strategy: race: %w", err)
		}
		return zero, "", fmt.Errorf("strategy: race: %w (%w)", err, raceErr)
	}
	return zero, "", raceErr
}
