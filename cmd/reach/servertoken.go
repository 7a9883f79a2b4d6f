package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/relay"
)

const serverTokenHelp = `usage: reach server token --peer ID [--ttl D] [--relay-secret-file FILE]...

Prints a relay token for the peer ID (reach id prints a node's), valid
for --ttl, made with the first secret a server given the same
--relay-secret, --relay-secret-file and $REACH_RELAY_SECRET would accept
(relay.NewToken). The peer passes it with --relay-token or
$REACH_RELAY_TOKEN (reach.Config.RelayToken in the SDK). A service that
hands out tokens should call relay.NewToken itself; this is for scripts
and tests. See docs/server.md, Tokens.
`

// errNoSecretGiven: reach server token without any secret.
var errNoSecretGiven = errors.New("no secret: pass --relay-secret-file FILE or set REACH_RELAY_SECRET")

// runServerToken is `reach server token`.
func runServerToken(args []string) error {
	fs := newFlagSet("server token", serverTokenHelp)
	peer := fs.String("peer", "", "the peer `ID` the token is for")
	ttl := fs.Duration("ttl", 24*time.Hour, "how long the token is valid")
	var secrets, files stringList
	fs.Var(&files, "relay-secret-file", "`FILE` with secrets, one a line (repeatable)")
	fs.Var(&secrets, "relay-secret", "`SECRET` (repeatable; visible in the process list: prefer a file)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("server token", "unexpected argument %q", fs.Arg(0))
	}
	if *peer == "" {
		return usagef("server token", "--peer ID is required")
	}
	id, err := identity.ParsePeerID(*peer)
	if err != nil {
		return err
	}
	if *ttl <= 0 {
		return usagef("server token", "--ttl %v: want a positive duration", *ttl)
	}
	ss, err := relaySecrets(secrets, files, os.Getenv)
	if err != nil {
		return err
	}
	if len(ss) == 0 {
		return errNoSecretGiven
	}
	_, err = fmt.Println(relay.NewToken(ss[0], id, time.Now().Add(*ttl)))
	return err
}
