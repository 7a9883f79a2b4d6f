package main

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// dockerInstructions reads a Dockerfile into its instructions (comments
// dropped, continuation lines joined), each "KEYWORD rest".
func dockerInstructions(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	var cur string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") || line == "" && cur == "" {
			continue
		}
		if more, ok := strings.CutSuffix(line, "\\"); ok {
			cur += strings.TrimSpace(more) + " "
			continue
		}
		out = append(out, cur+line)
		cur = ""
	}
	if cur != "" {
		t.Errorf("%s ends in a continuation line", path)
	}
	return out
}

// TestDockerfile checks what the image must have (docs/server.md,
// Production) where no docker daemon can build it; .ci/run also runs
// BuildKit's frontend on it (dist/dockercheck: lint rules, the build
// definition, the image's configuration), and builds it where a docker
// daemon runs.
func TestDockerfile(t *testing.T) {
	known := []string{"FROM", "RUN", "COPY", "WORKDIR", "ENV", "VOLUME", "USER", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT", "CMD", "ARG", "LABEL"}
	var from, exposed []string
	have := map[string]string{}
	for _, ins := range dockerInstructions(t, "../../Dockerfile") {
		kw, rest, _ := strings.Cut(ins, " ")
		if !slices.Contains(known, kw) {
			t.Errorf("Dockerfile: unknown instruction %q", ins)
		}
		switch kw {
		case "FROM":
			from = append(from, rest)
		case "EXPOSE":
			exposed = append(exposed, strings.Fields(rest)...)
		}
		have[kw] = rest
	}
	if len(from) != 2 || !strings.HasPrefix(from[0], "golang:") || !strings.Contains(from[0], " AS build") ||
		!strings.HasPrefix(from[1], "gcr.io/distroless/static") {
		t.Errorf("Dockerfile stages %q: want golang AS build, then distroless/static", from)
	}
	if u := have["USER"]; u == "" || u == "root" || strings.HasPrefix(u, "0") {
		t.Errorf("Dockerfile USER %q: want a non-root user", u)
	}
	for _, p := range []string{"4950/udp", "4950/tcp", "4951/udp", "443/tcp", "9100/tcp"} {
		if !slices.Contains(exposed, p) {
			t.Errorf("Dockerfile does not EXPOSE %s", p)
		}
	}
	if !strings.Contains(have["ENV"], "STATE_DIRECTORY=/var/lib/reach") || !strings.Contains(have["VOLUME"], "/var/lib/reach") {
		t.Errorf("Dockerfile: the state directory: ENV %q, VOLUME %q", have["ENV"], have["VOLUME"])
	}
	if hc := have["HEALTHCHECK"]; !strings.Contains(hc, `"server", "healthcheck", "`+defaultHealthURL+`"`) {
		t.Errorf("Dockerfile HEALTHCHECK %q: want reach server healthcheck %s", hc, defaultHealthURL)
	}
	if cmd := have["CMD"]; !strings.Contains(cmd, `"--metrics", ":9100"`) {
		t.Errorf("Dockerfile CMD %q: the health check needs --metrics :9100", cmd)
	}
	if !strings.Contains(have["RUN"], "CGO_ENABLED=0") {
		t.Error("Dockerfile: the binary must be static (CGO_ENABLED=0) for distroless/static")
	}
}

// TestSystemdUnit checks the unit's hardening and state directory;
// TestSystemdUnitBoots starts it under systemd, and .ci/run also runs
// systemd-analyze verify on it.
func TestSystemdUnit(t *testing.T) {
	b, err := os.ReadFile("../../dist/systemd/reach-server.service")
	if err != nil {
		t.Fatal(err)
	}
	set := map[string][]string{}
	section := ""
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "[") {
			section = line
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Errorf("unit: %q is no key=value", line)
		}
		set[section+k] = append(set[section+k], v)
	}
	for k, want := range map[string]string{
		"[Service]ExecStart":               "/usr/local/bin/reach server --metrics 127.0.0.1:9100",
		"[Service]DynamicUser":             "yes",
		"[Service]StateDirectory":          "reach",
		"[Service]NoNewPrivileges":         "yes",
		"[Service]ProtectSystem":           "strict",
		"[Service]ProtectHome":             "yes",
		"[Service]PrivateTmp":              "yes",
		"[Service]CapabilityBoundingSet":   "CAP_NET_BIND_SERVICE",
		"[Service]AmbientCapabilities":     "CAP_NET_BIND_SERVICE",
		"[Service]RestrictAddressFamilies": "AF_INET AF_INET6 AF_NETLINK AF_UNIX",
		"[Service]KillSignal":              "SIGTERM",
		"[Install]WantedBy":                "multi-user.target",
	} {
		if got := set[k]; len(got) != 1 || got[0] != want {
			t.Errorf("unit %s = %q, want %q", k, got, want)
		}
	}
}

// TestServerHealthcheck: reach server healthcheck exits 0 against a
// running server's /healthz and 1 when nothing answers; checkHealth
// refuses an answer other than 200 "ok".
func TestServerHealthcheck(t *testing.T) {
	bin := reachBinary(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	maddr := ln.Addr().String()
	ln.Close()
	_, cmd := runServerEnv(t, bin, []string{"STATE_DIRECTORY=" + t.TempDir()}, os.Stderr,
		"--listen", "127.0.0.1:0", "--tls-port", "0", "--metrics", maddr)
	if out, err := exec.Command(bin, "server", "healthcheck", "http://"+maddr+"/healthz").CombinedOutput(); err != nil {
		t.Errorf("healthcheck of a running server: %v %s", err, out)
	}
	stopServer(t, cmd)
	hc := exec.Command(bin, "server", "healthcheck", "--timeout", "2s", "http://"+maddr+"/healthz")
	if out, err := hc.CombinedOutput(); hc.ProcessState == nil || hc.ProcessState.ExitCode() != 1 {
		t.Errorf("healthcheck of a stopped server: %v %s, want exit 1", err, out)
	}
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "draining", http.StatusServiceUnavailable)
	}))
	defer bad.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := checkHealth(ctx, bad.URL); !errors.Is(err, errUnhealthy) {
		t.Errorf("a 503: %v, want errUnhealthy", err)
	}
}
