//go:build !race

package worker

// raceEnabled: this test binary was built with -race (simTest skips).
const raceEnabled = false
