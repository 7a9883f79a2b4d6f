package matrix

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/reachlab"
	"github.com/reachp2p/reach/supernode"
)

// startVolunteer runs, for the whole matrix, a node on a public host that
// volunteers as a supernode, and waits until the server admitted it. Like
// the server, its link is not delayed: a well-connected volunteer (a host
// at a provider), so a path through it is as long as one through the
// relay. It returns a note for the result when the ladder has no
// supernode rung or the volunteer was not admitted.
func (r *runner) startVolunteer(ctx context.Context) (note string, err error) {
	if !slices.Contains(reach.Strategies(), Supernode) {
		return "", nil
	}
	h, err := r.lab.AddPublicHost(ctx, "vol")
	if err != nil {
		return "", err
	}
	cfg := withProxy(reach.Config{
		Servers:   []string{r.connect},
		Supernode: supernode.Config{Enable: true, MaxSessions: 64},
		Logger:    r.cfg.NodeLogger.With("volunteer", h.Name()),
	}, "")
	cfg = reachlab.HostConfig(h, cfg)
	var n *reach.Node
	err = h.Run(func() error {
		nctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		var err error
		n, err = reach.New(nctx, cfg)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("matrix: volunteer: %w", err)
	}
	r.volunteer = n
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := n.WaitSupernode(wctx); err != nil {
		return fmt.Sprintf("the volunteer on %s (%s) was not admitted as a supernode: %v", h.Name(), h.Addr(), err), nil
	}
	return "", nil
}
