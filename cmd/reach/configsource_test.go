package main

import (
	"errors"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// testFlags is a flag set like reach server's: a string, a number, a
// boolean, a repeatable flag, and --config.
type testFlags struct {
	fs     *flag.FlagSet
	listen *string
	port   *uint
	v      *bool
	public *stringList
}

func newTestFlags() testFlags {
	fs := flag.NewFlagSet("server", flag.ContinueOnError)
	fs.SetOutput(discard{})
	tf := testFlags{fs: fs, public: &stringList{}}
	fs.String("config", "", "")
	tf.listen = fs.String("listen", "default-listen", "")
	tf.port = fs.Uint("tls-port", 443, "")
	tf.v = fs.Bool("v", false, "")
	fs.Var(tf.public, "public-addr", "")
	return tf
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// writeConfig writes a config file and returns its path.
func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "server.conf")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// load parses args, then the environment and the file, as runServer does.
func load(t *testing.T, args, environ []string, fileText string) (testFlags, error) {
	t.Helper()
	tf := newTestFlags()
	if err := tf.fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	var file map[string][]configEntry
	if fileText != "" {
		var err error
		if file, err = readConfigFile(writeConfig(t, fileText)); err != nil {
			return tf, err
		}
	}
	_, _, err := configSources(tf.fs, serverEnvPrefix, environ, file, "config")
	return tf, err
}

func TestEnvName(t *testing.T) {
	for flag, want := range map[string]string{"public-addr": "REACH_SERVER_PUBLIC_ADDR", "v": "REACH_SERVER_V",
		"relay-max-sessions-per-ip": "REACH_SERVER_RELAY_MAX_SESSIONS_PER_IP"} {
		if got := envName(serverEnvPrefix, flag); got != want {
			t.Errorf("envName(%q) = %q, want %q", flag, got, want)
		}
	}
}

// TestConfigSources: each source alone sets every kind of flag, and the
// precedence is flags > environment > file > defaults, per flag.
func TestConfigSources(t *testing.T) {
	file := `# reach server
listen = 10.0.0.1:4950
tls-port = "8443"
v = true

public-addr = 203.0.113.1
public-addr = [2001:db8::1]:4950
`
	t.Run("defaults", func(t *testing.T) {
		tf, err := load(t, nil, nil, "")
		if err != nil || *tf.listen != "default-listen" || *tf.port != 443 || *tf.v || len(*tf.public) != 0 {
			t.Errorf("%v: listen %q port %d v %v public %v", err, *tf.listen, *tf.port, *tf.v, *tf.public)
		}
	})
	t.Run("file", func(t *testing.T) {
		tf, err := load(t, nil, nil, file)
		if err != nil || *tf.listen != "10.0.0.1:4950" || *tf.port != 8443 || !*tf.v ||
			!slices.Equal(*tf.public, []string{"203.0.113.1", "[2001:db8::1]:4950"}) {
			t.Errorf("%v: listen %q port %d v %v public %v", err, *tf.listen, *tf.port, *tf.v, *tf.public)
		}
	})
	t.Run("environment", func(t *testing.T) {
		tf, err := load(t, nil, []string{"REACH_SERVER_LISTEN=10.0.0.2", "REACH_SERVER_TLS_PORT=0", "REACH_SERVER_V=true",
			"REACH_SERVER_PUBLIC_ADDR=203.0.113.2, 2001:db8::2", "REACH_SERVER=reach://x@y:1", "PATH=/bin"}, "")
		if err != nil || *tf.listen != "10.0.0.2" || *tf.port != 0 || !*tf.v || !slices.Equal(*tf.public, []string{"203.0.113.2", "2001:db8::2"}) {
			t.Errorf("%v: listen %q port %d v %v public %v", err, *tf.listen, *tf.port, *tf.v, *tf.public)
		}
	})
	t.Run("precedence", func(t *testing.T) {
		// listen: flag, env and file; tls-port: env and file; public-addr
		// (repeatable): env and file, env replaces the file's two; v:
		// file only.
		tf, err := load(t, []string{"--listen", "10.0.0.3"},
			[]string{"REACH_SERVER_LISTEN=10.0.0.2", "REACH_SERVER_TLS_PORT=9443", "REACH_SERVER_PUBLIC_ADDR=203.0.113.2"}, file)
		if err != nil || *tf.listen != "10.0.0.3" || *tf.port != 9443 || !*tf.v || !slices.Equal(*tf.public, []string{"203.0.113.2"}) {
			t.Errorf("%v: listen %q (flag), port %d (env), v %v (file), public %v (env)", err, *tf.listen, *tf.port, *tf.v, *tf.public)
		}
		// A repeatable flag on the command line replaces env and file.
		tf, err = load(t, []string{"--public-addr", "203.0.113.3"}, []string{"REACH_SERVER_PUBLIC_ADDR=203.0.113.2"}, file)
		if err != nil || !slices.Equal(*tf.public, []string{"203.0.113.3"}) {
			t.Errorf("%v: public %v, want the flag's only", err, *tf.public)
		}
		// A flag set to its default value still wins.
		tf, err = load(t, []string{"--tls-port", "443"}, []string{"REACH_SERVER_TLS_PORT=9443"}, file)
		if err != nil || *tf.port != 443 {
			t.Errorf("%v: port %d, want the flag's 443", err, *tf.port)
		}
	})
}

func TestConfigSourceErrors(t *testing.T) {
	for _, c := range []struct {
		name, file string
		env        []string
		want       error
		msg        string
	}{
		{"unknown file key", "listen = x\npublic-adr = 1.2.3.4\n", nil, errUnknownKey, `server.conf:2: unknown key "public-adr"`},
		{"unknown env", "", []string{"REACH_SERVER_PUBLIC_ADR=1.2.3.4"}, errUnknownKey, "$REACH_SERVER_PUBLIC_ADR: unknown key: no flag --public-adr"},
		{"no equals", "listen 10.0.0.1\n", nil, errConfigSyntax, `server.conf:1: "listen 10.0.0.1"`},
		{"bad quote", "listen = \"10.0.0.1\n", nil, errConfigSyntax, "server.conf:1: listen: bad quoted value"},
		{"twice", "listen = a\nlisten = b\n", nil, nil, `server.conf:2: "listen" given again (first at `},
		{"bad value in file", "tls-port = many\n", nil, nil, `server.conf:1: --tls-port "many"`},
		{"bad value in env", "", []string{"REACH_SERVER_TLS_PORT=-1"}, nil, `$REACH_SERVER_TLS_PORT: --tls-port "-1"`},
		{"config in file", "config = other.conf\n", nil, errUnknownKey, `unknown key "config"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := load(t, nil, c.env, c.file)
			if err == nil || (c.want != nil && !errors.Is(err, c.want)) || !strings.Contains(err.Error(), c.msg) {
				t.Errorf("error %v, want %v containing %q", err, c.want, c.msg)
			}
		})
	}
	// REACH_SERVER_CONFIG names the file: not an unknown key.
	if _, err := load(t, nil, []string{"REACH_SERVER_CONFIG=/x"}, ""); err != nil {
		t.Errorf("REACH_SERVER_CONFIG: %v", err)
	}
	if _, err := readConfigFile(filepath.Join(t.TempDir(), "missing.conf")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

// TestServerConfigFileAndEnv runs the binary: the public address comes
// from the config file, then from the environment over it, then from a
// flag over both; an unknown key stops the server with exit 2.
func TestServerConfigFileAndEnv(t *testing.T) {
	bin := reachBinary(t)
	conf := writeConfig(t, "listen = 127.0.0.1:0\ntls-port = 0\npublic-addr = 203.0.113.7\nlog-format = json\n")
	state := "STATE_DIRECTORY=" + t.TempDir()
	for _, c := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"file", nil, []string{"--config", conf}, "203.0.113.7"},
		{"file from env", []string{"REACH_SERVER_CONFIG=" + conf}, nil, "203.0.113.7"},
		{"env over file", []string{"REACH_SERVER_PUBLIC_ADDR=203.0.113.8"}, []string{"--config", conf}, "203.0.113.8"},
		{"flag over env", []string{"REACH_SERVER_PUBLIC_ADDR=203.0.113.8"}, []string{"--config", conf, "--public-addr", "203.0.113.9"}, "203.0.113.9"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var stderr lockedBuffer
			sa, cmd := runServerEnv(t, bin, append([]string{state}, c.env...), &stderr, c.args...)
			if sa.Host != c.want || sa.TCPPort != 0 {
				t.Errorf("connect string %v, want host %s and no TLS port", sa, c.want)
			}
			stopServer(t, cmd)
			if !strings.HasPrefix(stderr.String(), `{"time":`) {
				t.Errorf("log-format = json from the file: stderr is\n%s", stderr.String())
			}
		})
	}
	bad := writeConfig(t, "listen = 127.0.0.1:0\nrelay-secret-fiel = /etc/secrets\n")
	out, err := exec.Command(bin, "server", "--config", bad).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitUsage || !strings.Contains(string(out), `unknown key "relay-secret-fiel"`) {
		t.Errorf("unknown key: %v\n%s", err, out)
	}
}

// TestServerGCTarget runs the binary: its GC target comes from the config
// file (gc-percent, memory-limit), is GOGC 100 and no limit by default,
// and a user's GOGC and GOMEMLIMIT win over both; GC off without a limit
// is refused with exit 2.
func TestServerGCTarget(t *testing.T) {
	bin := reachBinary(t)
	conf := writeConfig(t, "listen = 127.0.0.1:0\ntls-port = 0\ngc-percent = 300\nmemory-limit = 1GiB\n")
	plain := writeConfig(t, "listen = 127.0.0.1:0\ntls-port = 0\n")
	state := "STATE_DIRECTORY=" + t.TempDir()
	for _, c := range []struct {
		name string
		env  []string
		conf string
		want string
	}{
		{"default", nil, plain, `gogc=100 gogc_from=config memory_limit=none memory_limit_from=none`},
		{"file", nil, conf, `gogc=300 gogc_from=config memory_limit="1.0 GiB" memory_limit_from=config`},
		{"env", []string{"REACH_SERVER_GC_PERCENT=150"}, conf, `gogc=150 gogc_from=config`},
		{"GOGC and GOMEMLIMIT win", []string{"GOGC=50", "GOMEMLIMIT=512MiB"}, conf, `gogc=50 gogc_from=GOGC memory_limit="512.0 MiB" memory_limit_from=GOMEMLIMIT`},
	} {
		t.Run(c.name, func(t *testing.T) {
			var stderr lockedBuffer
			_, cmd := runServerEnv(t, bin, append([]string{state}, c.env...), &stderr, "--config", c.conf)
			stopServer(t, cmd)
			if !strings.Contains(stderr.String(), c.want) {
				t.Errorf("log lacks %q:\n%s", c.want, stderr.String())
			}
		})
	}
	out, err := exec.Command(bin, "server", "--config", plain, "--gc-percent", "-1").CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitUsage || !strings.Contains(string(out), "needs a memory limit") {
		t.Errorf("GC off without a limit: %v\n%s", err, out)
	}
}
