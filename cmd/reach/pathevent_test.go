package main

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/reachp2p/reach"
)

// TestPathEvent: a move to a direct path names the strategy and the
// address; a fall back to the relay has no address and says why.
func TestPathEvent(t *testing.T) {
	k, err := reach.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	peer := k.ID()
	up := pathEvent(reach.PathEvent{Peer: peer, Kind: reach.PathMoved, Strategy: reach.StrategyHolepunch, Path: netip.MustParseAddrPort("203.0.113.12:4242")})
	if up["event"] != "path" || up["strategy"] != "holepunch" || up["path"] != "203.0.113.12:4242" || up["reason"] != nil {
		t.Errorf("moved to direct: %v", up)
	}
	down := pathEvent(reach.PathEvent{Peer: peer, Kind: reach.PathMoved, Strategy: reach.StrategyRelay, Err: errors.New("silent")})
	if _, ok := down["path"]; ok || down["strategy"] != "relay" || down["reason"] != "silent" {
		t.Errorf("fell back: %v", down)
	}
}
