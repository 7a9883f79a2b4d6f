package main

// Configuration of reach server from the environment and a config file,
// with the flags' own names: flags > environment > file > defaults.

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// serverEnvPrefix starts the environment variables of reach server's
// flags.
const serverEnvPrefix = "REACH_SERVER_"

// Named errors of the configuration sources.
var (
	// errUnknownKey: a config file key or a prefixed environment variable
	// that names no flag (most likely a typo, which would otherwise be
	// silently ignored).
	errUnknownKey = errors.New("unknown key")
	// errConfigSyntax: a config file line that is not "name = value".
	errConfigSyntax = errors.New("want name = value")
)

// repeatable is a flag.Value that may be given more than once (a
// stringList).
type repeatable interface{ isRepeatable() }

func (l *stringList) isRepeatable() {}

// envName is the environment variable of flag name: prefix, then the name
// upper-cased with - as _ (public-addr -> REACH_SERVER_PUBLIC_ADDR).
func envName(prefix, name string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// configEntry is one value from a source, for its error messages.
type configEntry struct {
	where string // "FILE:LINE" or the variable's name
	value string
}

// readConfigFile reads a config file: one "name = value" a line, name a
// flag's name without dashes; blank lines and lines starting with # are
// skipped; a value in double quotes is unquoted (Go syntax), else taken
// as it is after trimming spaces. A repeatable flag's name may appear on
// several lines; another's, once.
func readConfigFile(path string) (map[string][]configEntry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--config: %w", err)
	}
	defer f.Close()
	out := map[string][]configEntry{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		where := fmt.Sprintf("%s:%d", path, n)
		name, value, ok := strings.Cut(line, "=")
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		if !ok || name == "" {
			return nil, fmt.Errorf("%s: %q: %w", where, line, errConfigSyntax)
		}
		if strings.HasPrefix(value, `"`) {
			uq, err := strconv.Unquote(value)
			if err != nil {
				return nil, fmt.Errorf("%s: %s: bad quoted value: %w", where, name, errConfigSyntax)
			}
			value = uq
		}
		out[name] = append(out[name], configEntry{where, value})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("--config %s: %w", path, err)
	}
	return out, nil
}

// configSources fills the flags of fs that the command line did not set
// from the environment (prefix + the flag's name, see envName; a
// repeatable flag's values separated by commas), else from the config
// file entries (readConfigFile; nil: none). A source sets a flag whole:
// a repeatable flag set in the environment ignores the file's values.
// skip names flags that take no part (--config itself). environ is the
// process's environment (os.Environ). It returns the names of the flags
// each source set, for the log.
func configSources(fs *flag.FlagSet, prefix string, environ []string, file map[string][]configEntry, skip ...string) (fromEnv, fromFile []string, err error) {
	onCommandLine := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { onCommandLine[f.Name] = true })
	skipped := func(name string) bool {
		for _, s := range skip {
			if s == name {
				return true
			}
		}
		return false
	}
	known := map[string]*flag.Flag{}
	byEnv := map[string]*flag.Flag{}
	fs.VisitAll(func(f *flag.Flag) {
		if !skipped(f.Name) {
			known[f.Name] = f
			byEnv[envName(prefix, f.Name)] = f
		}
	})
	env := map[string]configEntry{}
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		name, ok := strings.CutPrefix(k, prefix)
		if !ok {
			continue
		}
		if f := byEnv[k]; f != nil {
			env[f.Name] = configEntry{"$" + k, v}
		} else if name = strings.ToLower(strings.ReplaceAll(name, "_", "-")); !skipped(name) {
			return nil, nil, fmt.Errorf("$%s: %w: no flag --%s", k, errUnknownKey, name)
		}
	}
	for name, es := range file {
		f := known[name]
		switch {
		case f == nil:
			return nil, nil, fmt.Errorf("%s: %w %q: no flag --%s", es[0].where, errUnknownKey, name, name)
		case len(es) > 1:
			if _, ok := f.Value.(repeatable); !ok {
				return nil, nil, fmt.Errorf("%s: %q given again (first at %s): only repeatable flags may be", es[1].where, name, es[0].where)
			}
		}
	}
	set := func(f *flag.Flag, e configEntry) error {
		if err := fs.Set(f.Name, e.value); err != nil {
			return fmt.Errorf("%s: --%s %q: %w", e.where, f.Name, e.value, err)
		}
		return nil
	}
	for name, f := range known {
		if onCommandLine[name] {
			continue
		}
		if e, ok := env[name]; ok {
			vals := []string{e.value}
			if _, rep := f.Value.(repeatable); rep {
				vals = nil
				for _, v := range strings.Split(e.value, ",") {
					if v = strings.TrimSpace(v); v != "" {
						vals = append(vals, v)
					}
				}
			}
			for _, v := range vals {
				if err := set(f, configEntry{e.where, v}); err != nil {
					return nil, nil, err
				}
			}
			fromEnv = append(fromEnv, name)
			continue
		}
		for _, e := range file[name] {
			if err := set(f, e); err != nil {
				return nil, nil, err
			}
		}
		if len(file[name]) > 0 {
			fromFile = append(fromFile, name)
		}
	}
	return fromEnv, fromFile, nil
}
