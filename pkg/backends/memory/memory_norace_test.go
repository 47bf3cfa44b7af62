//go:build !race

package memory

// raceEnabled is false: memory-heavy tests run at full size.
const raceEnabled = false
