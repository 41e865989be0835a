package main

import (
	"math"
	"os"
)

func readFile(p string) ([]byte, error) { return os.ReadFile(p) }

func nan() float64 { return math.NaN() }

var errNoData = errorString("no data")

type errorString string

func (e errorString) Error() string { return string(e) }
