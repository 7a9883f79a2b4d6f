package rendezvous

// Stats are a server's counters.
type Stats struct {
	Peers            int    // registered now
	Registrations    uint64 // successful registrations since start
	Replaced         uint64 // registrations that replaced an older one
	Introductions    uint64 // introductions forwarded to a target
	IntrosRefused    uint64 // introductions refused because their target had too many waiting
	STUNRequests     uint64 // STUN binding requests answered
	DroppedPackets   uint64 // non-QUIC datagrams that were not valid STUN binding requests
	ProtocolErrors   uint64 // connections closed for breaking the protocol
	FailedHandshakes uint64 // TLS/QUIC handshakes that failed or timed out
	FlightPackets    uint64 // first-flight packets relayed (FLIGHT)
	FlightDropped    uint64 // first-flight packets dropped: no such flight, over its limits, queue full
	// TLSTaken are the TCP ports' TLS connections (WebSockets' outer TLS,
	// TCP registrations) the server took over from crypto/tls after the
	// handshake; TLSKept those it left with crypto/tls (not TLS 1.3 with
	// AES-128-GCM: a TLS-inspecting proxy, a client without AES
	// instructions), which then cost more memory (docs/server.md).
	TLSTaken, TLSKept uint64
	// TCPReadersParked are the TCP registrations whose reader is parked
	// now: no goroutine until their connection has bytes (tcppark.go).
	TCPReadersParked int

	// Per-source limits (ServerConfig.Limits).
	ConnsRefused         uint64 // new connections refused: over their source's rate or a handshake cap
	Retries              uint64 // QUIC handshakes asked to prove their address first (Retry)
	RegistrationsLimited uint64 // registrations refused with ErrRateLimited
	IntrosLimited        uint64 // introductions refused with ErrRateLimited
	STUNLimited          uint64 // STUN binding requests dropped over their source's rate
	Handshakes           int    // handshakes in progress now
	PeakHandshakes       int    // most handshakes in progress at once since start
	Sources              int    // token buckets kept now, every limit together

	// The fleet (ServerConfig.Registry).
	FleetIntrosSent   uint64 // introductions handed to another server of the fleet
	FleetIntrosServed uint64 // introductions from another server delivered to a peer here
	RegistryErrors    uint64 // dials that failed because the registry was unavailable

	// Parked registrations (ServerConfig.Park).
	Parked        int    // registrations parked now (counted in Peers too)
	Parks         uint64 // registrations parked since start
	Resumed       uint64 // parked registrations their node came back to
	Wakes         uint64 // WAKE datagrams sent
	WakesLimited  uint64 // WAKEs not sent over ParkConfig.WakeRate (sent again a second later)
	NotWoken      uint64 // parked peers that did not come back within WakeTimeout
	ParkExpired   uint64 // parked registrations forgotten: their keepalives stopped
	Keepalives    uint64 // valid keepalive datagrams answered
	BadKeepalives uint64 // park datagrams dropped: unknown token, bad MAC, replayed, wrong size
}

// Stats returns a snapshot of the server's counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	n := len(s.peers)
	s.mu.Unlock()
	hs, peak := s.lim.inProgress()
	return Stats{
		Peers:            n,
		Registrations:    s.nRegistrations.Load(),
		Replaced:         s.nReplaced.Load(),
		Introductions:    s.nIntros.Load(),
		IntrosRefused:    s.nIntrosRefused.Load(),
		FlightPackets:    s.nFlightRelayed.Load(),
		FlightDropped:    s.nFlightDropped.Load(),
		STUNRequests:     s.nSTUN.Load(),
		DroppedPackets:   s.nDropped.Load(),
		ProtocolErrors:   s.nProtoErr.Load(),
		FailedHandshakes: s.nHandshakeFail.Load(),
		TLSTaken:         s.nTaken.Load(),
		TLSKept:          s.nTakeKept.Load(),
		TCPReadersParked: s.tcpPark.Len(),

		ConnsRefused:         s.lim.nConnsRefused.Load(),
		Retries:              s.lim.nRetries.Load(),
		RegistrationsLimited: s.lim.nRegLimited.Load(),
		IntrosLimited:        s.lim.nIntroLimited.Load(),
		STUNLimited:          s.lim.nSTUNLimited.Load(),
		Handshakes:           hs,
		PeakHandshakes:       peak,
		Sources:              s.lim.sources(),

		FleetIntrosSent:   s.nFleetSent.Load(),
		FleetIntrosServed: s.nFleetServed.Load(),
		RegistryErrors:    s.nRegistryErrors.Load(),

		Parked:        s.parkedCount(),
		Parks:         s.pk.nParks.Load(),
		Resumed:       s.pk.nResumed.Load(),
		Wakes:         s.pk.nWakes.Load(),
		WakesLimited:  s.pk.nWakesLimited.Load(),
		NotWoken:      s.pk.nNotWoken.Load(),
		ParkExpired:   s.pk.nExpired.Load(),
		Keepalives:    s.pk.nKeepalives.Load(),
		BadKeepalives: s.pk.nBadKeepalives.Load(),
	}
}
