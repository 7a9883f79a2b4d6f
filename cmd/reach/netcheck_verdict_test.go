package main

import "testing"

// TestClassifyPorts: successive mappings' ports name the allocation.
func TestClassifyPorts(t *testing.T) {
	for _, tc := range []struct {
		ports []int
		want  string
	}{
		{[]int{40000, 40001, 40002, 40003, 40004, 40005}, "sequential +1"},
		{[]int{40000, 40002, 40004, 40007, 40008, 40010}, "sequential +2"}, // other traffic took one
		{[]int{50010, 50009, 50008, 50007}, "sequential -1"},
		{[]int{31337, 61024, 1999, 45000, 20000, 50001}, "random"},
		{[]int{40000, 40000, 40000}, "random"}, // no change is not a NAT that varies
		{[]int{40000, 40001}, ""},
	} {
		if got := classifyPorts(tc.ports); got != tc.want {
			t.Errorf("%v: %q, want %q", tc.ports, got, tc.want)
		}
	}
}

// TestNATSummary: the report's one-word-ish name of the NAT.
func TestNATSummary(t *testing.T) {
	for _, tc := range []struct {
		varies bool
		alloc  string
		want   string
	}{
		{false, "", "endpoint-independent"},
		{true, "sequential +1", "symmetric, sequential +1"},
		{true, "random", "symmetric, random"},
		{true, "random (the public address changes too)", "symmetric, random"},
		{true, "", "symmetric"},
	} {
		if got := natSummary(tc.varies, tc.alloc); got != tc.want {
			t.Errorf("natSummary(%v, %q) = %q, want %q", tc.varies, tc.alloc, got, tc.want)
		}
	}
}
