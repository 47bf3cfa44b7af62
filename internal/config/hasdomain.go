package config

// HasDomain reports whether the set configures domain, without allocating: the engine
// asks on every call that carries a limit override.
func (s *Set) HasDomain(domain string) bool {
	_, ok := s.domains[domain]
	return ok
}

// PenaltyPolicy returns the penalty defined under penalties: with that name, for
// penalties charged outside descriptor rules (ext_authz's invalid-key guard).
func (s *Set) PenaltyPolicy(name string) (*PenaltyPolicy, bool) {
	p, ok := s.penalties[name]
	return p, ok
}
