package reach_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/reachp2p/reach"
)

// TestStrategyNames: the documented names are the ladder's, in its order,
// and Config.Strategies refuses any other with ErrUnknownStrategy.
func TestStrategyNames(t *testing.T) {
	want := []string{reach.StrategyDirect, reach.StrategyDirectTCP, reach.StrategyUPnP, reach.StrategyHolepunch, reach.StrategyHolepunchTCP,
		reach.StrategySupernode, reach.StrategyTURN, reach.StrategyRelay}
	if got := reach.Strategies(); !slices.Equal(got, want) {
		t.Fatalf("Strategies() = %v, want %v", got, want)
	}
	_, err := reach.New(context.Background(), reach.Config{Strategies: []string{reach.StrategyDirect, "teleport"}})
	if !errors.Is(err, reach.ErrUnknownStrategy) {
		t.Fatalf("New with an unknown strategy: %v, want ErrUnknownStrategy", err)
	}
}
