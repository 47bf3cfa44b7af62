package plans

// HasDomain reports whether the set configures domain, without allocating: the engine
// asks on every call that carries a limit override.
func (s *Set) HasDomain(domain string) bool {
	_, ok := s.domains[domain]
	return ok
}
