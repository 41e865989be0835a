package kfetch

import (
	"math/bits"
	"sync"

	"github.com/kbridge/kbridge/internal/wire"
)

// Byte buffers come from pools by power-of-two size class, so a steady
// stream of fetches reuses the same few buffers instead of allocating a
// record set per fetch. Buffers above the largest class are left to the GC.
const (
	minClass = 10 // 1 KiB
	maxClass = 26 // 64 MiB
)

var bufPools [maxClass + 1]sync.Pool

func sizeClass(n int) int {
	if n <= 1<<minClass {
		return minClass
	}
	return bits.Len(uint(n - 1))
}

// getBuf returns a buffer of length n (capacity the size class).
func getBuf(n int) []byte {
	c := sizeClass(n)
	if c > maxClass {
		return make([]byte, n)
	}
	if v := bufPools[c].Get(); v != nil {
		return (*v.(*[]byte))[:n]
	}
	return make([]byte, n, 1<<c)
}

// putBuf returns b to its pool. b must not be used afterwards.
func putBuf(b []byte) {
	if b == nil {
		return
	}
	c := sizeClass(cap(b))
	if c > maxClass || cap(b) != 1<<c {
		return
	}
	b = b[:0]
	bufPools[c].Put(&b)
}

var recordPool sync.Pool // *[]wire.Record

// getRecords returns an empty record slice with room for n records.
func getRecords(n int) []wire.Record {
	if v := recordPool.Get(); v != nil {
		s := *v.(*[]wire.Record)
		if cap(s) >= n {
			return s[:0]
		}
	}
	return make([]wire.Record, 0, max(n, 16))
}

func putRecords(s []wire.Record) {
	if cap(s) == 0 {
		return
	}
	clear(s[:cap(s)]) // drop references to the pooled byte buffers
	s = s[:0]
	recordPool.Put(&s)
}
