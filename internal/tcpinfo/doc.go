// Package tcpinfo reads what the kernel knows of a TCP connection
// (TCP_INFO on Linux): its smoothed round-trip time, for the rendezvous
// client's estimate of its server and for the stream window of a TCP
// path.
package tcpinfo
