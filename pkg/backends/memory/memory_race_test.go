//go:build race

package memory

// raceEnabled scales memory-heavy tests down: the race detector multiplies memory use
// (shadow memory) and slows every access, so sizes measured under it mean nothing.
const raceEnabled = true
