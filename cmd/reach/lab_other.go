//go:build !linux

package main

// reach lab where there is no Linux: the NAT lab is built from Linux
// network namespaces (lab/natlab), so the command only says so, and the
// rest of the CLI builds for every platform.

import (
	"errors"
	"fmt"
)

// errLabLinuxOnly: reach lab runs on Linux only.
var errLabLinuxOnly = errors.New("reach lab needs Linux: the NAT lab is built from network namespaces (docs/lab.md)")

const labUsage = `usage: reach lab up|classify|matrix|down [flags] [arguments]

Builds NAT lab topologies from Linux network namespaces, for manual
experiments and the connectivity matrix. Linux only, as root; this build
is for another system. See docs/lab.md.
`

func runLab(args []string) error {
	if len(args) > 0 {
		switch args[0] {
		case "-h", "-help", "--help", "help":
			fmt.Print(labUsage)
			return errHelp
		}
	}
	return errLabLinuxOnly
}
