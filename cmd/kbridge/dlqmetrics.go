package main

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kbridge/kbridge/bridge"
)

// dlqCollector exposes bridge.Ingest.DLQStats (the export of dead letters to
// Kafka) as kbridge_ingest_dlq_* metrics.
type dlqCollector struct {
	stats    func() bridge.DLQStats
	counters []counterDesc[bridge.DLQStats]
	gauges   []counterDesc[bridge.DLQStats]
}

func newDLQCollector(stats func() bridge.DLQStats) *dlqCollector {
	d := func(name, help string, get func(bridge.DLQStats) int64) counterDesc[bridge.DLQStats] {
		return counterDesc[bridge.DLQStats]{prometheus.NewDesc("kbridge_ingest_dlq_"+name, help, nil, nil), get}
	}
	return &dlqCollector{
		stats: stats,
		counters: []counterDesc[bridge.DLQStats]{
			d("exported_total", "Dead letters exported to their Kafka dead-letter topic.", func(s bridge.DLQStats) int64 { return s.Exported }),
			d("skipped_total", "Dead letters over --dlq-max-bytes exported as stubs (coordinates and why, not the record; recorded in <stream>:dlq:stubs): the record is whole only in Redis and its source topic; each logged as an error.", func(s bridge.DLQStats) int64 { return s.Skipped }),
			d("export_errors_total", "Failed exports of a partition's dead letters (retried; the partition's commit waits for them).", func(s bridge.DLQStats) int64 { return s.Errors }),
		},
		gauges: []counterDesc[bridge.DLQStats]{
			d("unexported", "Dead letters of the assigned partitions not yet in Kafka, at the last look.", func(s bridge.DLQStats) int64 { return s.Unexported }),
			d("held_partitions", "Assigned partitions whose commit waits for a dead letter to reach Kafka.", func(s bridge.DLQStats) int64 { return int64(s.HeldPartitions) }),
		},
	}
}

// Describe implements prometheus.Collector.
func (c *dlqCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.counters {
		ch <- d.desc
	}
	for _, d := range c.gauges {
		ch <- d.desc
	}
}

// Collect implements prometheus.Collector.
func (c *dlqCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.stats()
	for _, d := range c.counters {
		ch <- prometheus.MustNewConstMetric(d.desc, prometheus.CounterValue, float64(d.get(st)))
	}
	for _, d := range c.gauges {
		ch <- prometheus.MustNewConstMetric(d.desc, prometheus.GaugeValue, float64(d.get(st)))
	}
}

// collectorList is several collectors as one.
type collectorList []prometheus.Collector

// Describe implements prometheus.Collector.
func (l collectorList) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range l {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (l collectorList) Collect(ch chan<- prometheus.Metric) {
	for _, c := range l {
		c.Collect(ch)
	}
}
