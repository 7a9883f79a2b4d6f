package main

// Which key a command uses: --key FILE, else $REACH_KEY (a path), else
// the default key in the user's config directory, created on first use.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/identity"
)

// errNoConfigDir: there is no user config directory for the default key
// ($XDG_CONFIG_HOME and $HOME unset on Linux).
var errNoConfigDir = errors.New("no config directory for the default key")

// defaultKeyPath is os.UserConfigDir()/reach/key: on Linux
// $XDG_CONFIG_HOME/reach/key or ~/.config/reach/key, on macOS
// ~/Library/Application Support/reach/key, on Windows
// %AppData%\reach\key.
func defaultKeyPath() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("%w (%v): pass --key FILE or set REACH_KEY", errNoConfigDir, err)
	}
	return filepath.Join(dir, "reach", "key"), nil
}

// keyPath is the key file a command uses and where the choice came from.
func keyPath(flagKey string) (path, from string, err error) {
	switch {
	case flagKey != "":
		return flagKey, "--key", nil
	case os.Getenv("REACH_KEY") != "":
		return os.Getenv("REACH_KEY"), "REACH_KEY", nil
	}
	p, err := defaultKeyPath()
	return p, "default", err
}

// loadKey loads the key a command uses (keyPath), creating it with mode
// 0600 (in a 0700 directory) if it does not exist. A key file readable by
// others is refused (identity.ErrKeyPermissions).
func loadKey(flagKey string) (*identity.Key, error) {
	path, _, err := keyPath(flagKey)
	if err != nil {
		return nil, err
	}
	k, _, err := identity.LoadOrCreateKey(path)
	return k, err
}

// loadKeyFor is loadKey for a command; the default key is also locked for
// as long as the process runs (a lock file beside it). A caller (a
// command that only dials) that finds the default key locked by another
// reach process on this machine (a listen in another shell) takes a
// one-time key instead, and says so on stderr: with the same key it would
// push that process offline (the server keeps one registration per key).
func loadKeyFor(flagKey string, caller bool) (*identity.Key, error) {
	path, from, err := keyPath(flagKey)
	if err != nil {
		return nil, err
	}
	k, _, err := identity.LoadOrCreateKey(path)
	if err != nil || from != "default" {
		return k, err
	}
	if lockKey(path) || !caller {
		return k, nil
	}
	fmt.Fprintln(os.Stderr, "reach: the default key is in use by another reach process here; using a one-time key (pass --key or set REACH_KEY for a lasting one)")
	return identity.GenerateKey()
}

// heldLocks keeps the lock files of keys in use open until the process
// exits.
var heldLocks []*os.File

// replacedError: another process registered this node's key with the
// server, and this one is offline (reach.ErrReplaced).
type replacedError struct {
	id  identity.PeerID
	err error
}

func (e *replacedError) Error() string {
	return fmt.Sprintf("another process registered this key (peer ID %s); this one is offline", e.id)
}

func (e *replacedError) Unwrap() error { return e.err }

// replaced names a reach.ErrReplaced error with the node's peer ID.
func replaced(n *reach.Node, err error) error {
	if errors.Is(err, reach.ErrReplaced) {
		return &replacedError{id: n.ID(), err: err}
	}
	return err
}

const idHelp = `usage: reach id [--key FILE]

Prints the peer ID of the key in use: --key FILE, else the file named by
$REACH_KEY, else the default key in the user's config directory (on Linux
$XDG_CONFIG_HOME/reach/key, ~/.config/reach/key without it). The key is
created (mode 0600, its directory 0700) if it does not exist. listen,
dial, ping, send, recv and supernode use the same key.

With -v it also says which file it is and whether it was just created, on
stderr.
`

func runID(args []string) error {
	fs := newFlagSet("id", idHelp)
	key := fs.String("key", "", "key `FILE` (default: $REACH_KEY, else the default key)")
	verbose := fs.Bool("v", false, "say which key file, on stderr")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usagef("id", "unexpected argument %q", fs.Arg(0))
	}
	path, from, err := keyPath(*key)
	if err != nil {
		return err
	}
	k, created, err := identity.LoadOrCreateKey(path)
	if err != nil {
		return err
	}
	if *verbose {
		what := "key"
		if created {
			what = "new key"
		}
		fmt.Fprintf(os.Stderr, "%s %s (%s)\n", what, path, from)
	}
	fmt.Println(k.ID())
	return nil
}
