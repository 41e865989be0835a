package kfetch

import (
	"math/bits"
	"sync"

	"github.com/kbridge/kbridge/internal/wire"
)

// Buffers come from pools by size class, so a steady stream of fetches
// reuses the same few buffers instead of allocating a record set per fetch.
// There are four classes per power of two (at most 25% of a buffer unused),
// from 1 KiB to 64 MiB; larger buffers are left to the GC.
const (
	minShift = 10 // 1 KiB
	maxShift = 26 // 64 MiB
	steps    = 4
)

// class returns the index and size of the smallest class holding n.
func class(n int) (int, int) {
	if n <= 1<<minShift {
		return 0, 1 << minShift
	}
	k := bits.Len(uint(n-1)) - 1 // 2^k < n ≤ 2^(k+1)
	base, step := 1<<k, 1<<k/steps
	j := (n - base + step - 1) / step // 1..steps
	return (k-minShift)*steps + j, base + j*step
}

var (
	bufPools    [(maxShift-minShift)*steps + 1]sync.Pool
	recordPools [(maxShift-minShift)*steps + 1]sync.Pool
)

// getBuf returns a buffer of length n.
func getBuf(n int) []byte {
	i, size := class(n)
	if i >= len(bufPools) {
		return make([]byte, n)
	}
	if v := bufPools[i].Get(); v != nil {
		return (*v.(*[]byte))[:n]
	}
	return make([]byte, n, size)
}

// putBuf returns b to its pool. b must not be used afterwards.
func putBuf(b []byte) {
	if b == nil {
		return
	}
	i, size := class(cap(b))
	if i >= len(bufPools) || size != cap(b) {
		return
	}
	b = b[:0]
	bufPools[i].Put(&b)
}

// recordsCap is the capacity getRecords gives for n records.
func recordsCap(n int) int {
	_, size := class(max(n, 1) * int(recordSize))
	return size / int(recordSize)
}

// getRecords returns an empty record slice with room for n records.
func getRecords(n int) []wire.Record {
	c := recordsCap(n)
	i, _ := class(c * int(recordSize))
	if i < len(recordPools) {
		if v := recordPools[i].Get(); v != nil {
			return (*v.(*[]wire.Record))[:0]
		}
	}
	return make([]wire.Record, 0, c)
}

func putRecords(s []wire.Record) {
	if cap(s) == 0 {
		return
	}
	i, size := class(cap(s) * int(recordSize))
	if i >= len(recordPools) || size/int(recordSize) != cap(s) {
		return
	}
	clear(s[:cap(s)]) // drop references to the pooled byte buffers
	s = s[:0]
	recordPools[i].Put(&s)
}
