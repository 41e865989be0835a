package bench

import (
	"math"
	"slices"
)

// Summary is the median and the spread of repeated measurements.
type Summary struct {
	N      int       `json:"n"`
	Median float64   `json:"median"`
	Min    float64   `json:"min"`
	Max    float64   `json:"max"`
	Values []float64 `json:"values"`
}

// Summarize returns the median, minimum and maximum of v (NaNs dropped).
func Summarize(v []float64) Summary {
	var xs []float64
	for _, x := range v {
		if !math.IsNaN(x) && !math.IsInf(x, 0) {
			xs = append(xs, x)
		}
	}
	s := Summary{N: len(xs), Values: slices.Clone(xs)}
	if len(xs) == 0 {
		return s // N = 0: no figure (JSON has no NaN)
	}
	slices.Sort(xs)
	s.Min, s.Max = xs[0], xs[len(xs)-1]
	if n := len(xs); n%2 == 1 {
		s.Median = xs[n/2]
	} else {
		s.Median = (xs[n/2-1] + xs[n/2]) / 2
	}
	return s
}

// Percentile returns the p-th percentile (0..100) of v by nearest rank; v
// is sorted in place.
func Percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	slices.Sort(v)
	k := int(math.Ceil(p/100*float64(len(v)))) - 1
	return v[max(0, min(k, len(v)-1))]
}
