package rendezvous

import (
	"context"
	"slices"
	"time"
)

// MaxFleetServers is how many connect strings of other servers a
// REGISTERED frame carries at most (a server's own v4 and v6 strings
// count one each), and how many a client keeps beside its configured
// ones.
const MaxFleetServers = 8

// FleetServersEvery is how often a server of a fleet reads the list of
// live servers it gives its clients.
const FleetServersEvery = 5 * time.Second

// fleetServersEvery is FleetServersEvery (tests shorten it).
var fleetServersEvery = FleetServersEvery

// listServers keeps s.fleet fresh from sl until ctx ends; clients learn
// it in REGISTERED, and a change in their next PONG. A failed read
// keeps the list it had: a server that Redis cannot reach still tells
// its clients where else to go.
func (s *Server) listServers(ctx context.Context, sl ServerLister) {
	t := time.NewTicker(fleetServersEvery)
	defer t.Stop()
	for {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		list, err := sl.LiveServers(rctx)
		cancel()
		if err == nil {
			if len(list) > MaxFleetServers {
				list = list[:MaxFleetServers]
			}
			if old := s.fleet.Load(); old == nil || !slices.Equal(*old, list) {
				s.fleet.Store(&list)
				s.fleetVer.Add(1) // the next PONG of each session says it
			}
		} else if ctx.Err() == nil {
			s.log.Debug("fleet: cannot list the live servers", "err", err)
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// fleetServers is what REGISTERED says about the other live servers.
func (s *Server) fleetServers() []string {
	if p := s.fleet.Load(); p != nil {
		return *p
	}
	return nil
}
