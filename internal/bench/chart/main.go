// Command chart draws the PNG charts of docs/benchmarks.md from the results
// file that kbench writes (scripts/bench.sh runs it):
//
//	go run . -results ../../../docs/benchmarks.json -out ../../../docs/img
//
// It is a module of its own so that the plotting library (gonum.org/v1/plot
// and its font and image dependencies) stays out of kbridge's go.mod: only
// this benchmark tool needs it.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"image/color"
	"os"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

type summary struct {
	N      int     `json:"n"`
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

type results struct {
	Benchmarks map[string]json.RawMessage `json:"benchmarks"`
}

func main() {
	in := flag.String("results", "docs/benchmarks.json", "results file")
	out := flag.String("out", "docs/img", "directory of the PNG files")
	flag.Parse()
	b, err := os.ReadFile(*in)
	if err != nil {
		fail(err)
	}
	var res results
	if err := json.Unmarshal(b, &res); err != nil {
		fail(err)
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fail(err)
	}
	for id, draw := range map[string]func(json.RawMessage, string) error{
		"10a": ceiling, "10c": backlog, "10e": rebalance, "8-iv": little,
	} {
		raw, ok := res.Benchmarks[id]
		if !ok {
			continue
		}
		if err := draw(raw, *out); err != nil {
			fail(fmt.Errorf("%s: %w", id, err))
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "chart:", err)
	os.Exit(1)
}

func ceiling(raw json.RawMessage, dir string) error {
	var cs []struct {
		Size                         int
		Fetch, XAdd, Guarded, Ingest summary
	}
	if err := json.Unmarshal(raw, &cs); err != nil {
		return err
	}
	p := plot.New()
	p.Title.Text = "10a. Ingest against its ceiling (median records/s, 1,000s)"
	p.Y.Label.Text = "thousand records/s"
	w := vg.Points(18)
	var names []string
	for _, c := range cs {
		names = append(names, fmt.Sprintf("%d B records", c.Size))
	}
	for i, s := range []struct {
		name string
		get  func(int) summary
	}{
		{"raw kafka-go fetch", func(j int) summary { return cs[j].Fetch }},
		{"raw pipelined XADD", func(j int) summary { return cs[j].XAdd }},
		{"guarded MULTI/EXEC append", func(j int) summary { return cs[j].Guarded }},
		{"kbridge ingest", func(j int) summary { return cs[j].Ingest }},
	} {
		v := make(plotter.Values, len(cs))
		for j := range cs {
			v[j] = s.get(j).Median / 1000
		}
		bars, err := plotter.NewBarChart(v, w)
		if err != nil {
			return err
		}
		bars.LineStyle.Width = 0
		bars.Color = plotutil.Color(i)
		bars.Offset = (vg.Length(i) - 1.5) * w
		p.Add(bars)
		p.Legend.Add(s.name, bars)
	}
	p.Legend.Top = true
	top := 0.0
	for _, c := range cs {
		top = max(top, c.Fetch.Median, c.XAdd.Median, c.Guarded.Median, c.Ingest.Median)
	}
	p.Y.Max = top / 1000 * 1.3 // room for the legend
	p.NominalX(names...)
	return p.Save(16*vg.Centimeter, 10*vg.Centimeter, filepath.Join(dir, "10a-ceiling.png"))
}

func backlog(raw json.RawMessage, dir string) error {
	var r struct {
		Cap          int     `json:"cap"`
		Partitions   int     `json:"partitions"`
		WorkersStart float64 `json:"workers_start_s"`
		Series       []struct {
			T         float64 `json:"t"`
			Backlog   int64   `json:"backlog"`
			Length    int64   `json:"length"`
			Paused    int     `json:"paused"`
			Rate      float64 `json:"rate"`
			UsedMem   int64   `json:"used_memory"`
			IngestRSS int64   `json:"ingest_rss"`
		} `json:"series"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		return err
	}
	xy := func(f func(i int) float64) plotter.XYs {
		pts := make(plotter.XYs, len(r.Series))
		for i, s := range r.Series {
			pts[i] = plotter.XY{X: s.T, Y: f(i)}
		}
		return pts
	}
	mk := func(title, ylabel string, lines ...any) (*plot.Plot, error) {
		p := plot.New()
		p.Title.Text = title
		p.Y.Label.Text = ylabel
		p.X.Label.Text = fmt.Sprintf("seconds (workers start at %.0f s)", r.WorkersStart)
		p.Legend.Top = true
		if err := plotutil.AddLines(p, lines...); err != nil {
			return nil, err
		}
		return p, nil
	}
	p1, err := mk("10c. Backlog: records in Redis", "records",
		"backlog (unacknowledged)", xy(func(i int) float64 { return float64(r.Series[i].Backlog) }),
		"stream length", xy(func(i int) float64 { return float64(r.Series[i].Length) }))
	if err != nil {
		return err
	}
	p2, err := mk("Paused partitions", "partitions",
		"paused", xy(func(i int) float64 { return float64(r.Series[i].Paused) }))
	if err != nil {
		return err
	}
	p2.Y.Max = float64(r.Partitions) + 0.5
	p3, err := mk("Throughput (records handled per second)", "records/s",
		"handled/s", xy(func(i int) float64 { return r.Series[i].Rate }))
	if err != nil {
		return err
	}
	p4, err := mk("Memory", "MiB",
		"ingest RSS", xy(func(i int) float64 { return float64(r.Series[i].IngestRSS) / (1 << 20) }),
		"Redis used_memory", xy(func(i int) float64 { return float64(r.Series[i].UsedMem) / (1 << 20) }))
	if err != nil {
		return err
	}
	return saveTiles(filepath.Join(dir, "10c-backlog.png"), 18*vg.Centimeter, 28*vg.Centimeter, p1, p2, p3, p4)
}

// saveTiles stacks plots vertically in one PNG.
func saveTiles(path string, w, h vg.Length, plots ...*plot.Plot) error {
	img := vgimg.New(w, h)
	dc := draw.New(img)
	dc.Canvas.SetColor(color.White)
	t := draw.Tiles{Rows: len(plots), Cols: 1, PadTop: vg.Points(4), PadBottom: vg.Points(4), PadX: vg.Points(4), PadY: vg.Points(8)}
	grid := make([][]*plot.Plot, len(plots))
	for i, p := range plots {
		grid[i] = []*plot.Plot{p}
	}
	canvases := plot.Align(grid, t, dc)
	for i, p := range plots {
		p.Draw(canvases[i][0])
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = vgimg.PngCanvas{Canvas: img}.WriteTo(f)
	return err
}

func rebalance(raw json.RawMessage, dir string) error {
	var r struct {
		Steady summary     `json:"steady"`
		Series [][]float64 `json:"series"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		return err
	}
	pts := make(plotter.XYs, len(r.Series))
	for i, s := range r.Series {
		pts[i] = plotter.XY{X: s[0], Y: s[1]}
	}
	steady := plotter.XYs{{X: 0, Y: r.Steady.Median}, {X: pts[len(pts)-1].X, Y: r.Steady.Median}}
	p := plot.New()
	p.Title.Text = "10e. Worker throughput while a second ingest joins (last round)"
	p.X.Label.Text = "seconds after the second ingest started"
	p.Y.Label.Text = "records/s"
	p.Y.Min = 0
	top := r.Steady.Median
	for _, q := range pts {
		top = max(top, q.Y)
	}
	p.Y.Max = top * 1.35 // room for the legend
	p.Legend.Top = true
	if err := plotutil.AddLinePoints(p, "records handled per second", pts, "steady state (median)", steady); err != nil {
		return err
	}
	return p.Save(16*vg.Centimeter, 9*vg.Centimeter, filepath.Join(dir, "10e-rebalance.png"))
}

func little(raw json.RawMessage, dir string) error {
	var ls []struct {
		N          int     `json:"n"`
		Efficiency summary `json:"efficiency"`
		PoolEff    summary `json:"pool_eff"`
		Target     float64 `json:"target"`
	}
	if err := json.Unmarshal(raw, &ls); err != nil {
		return err
	}
	var w, pl, tg plotter.XYs
	for _, l := range ls {
		w = append(w, plotter.XY{X: float64(l.N), Y: l.Efficiency.Median})
		pl = append(pl, plotter.XY{X: float64(l.N), Y: l.PoolEff.Median})
		if l.Target > 0 {
			tg = append(tg, plotter.XY{X: float64(l.N), Y: l.Target})
		}
	}
	p := plot.New()
	p.Title.Text = "8-iv. Little's-law efficiency X / (N / 10 ms)"
	p.X.Label.Text = "N (concurrent handlers, log scale)"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Y.Label.Text = "fraction of ideal"
	p.Y.Min, p.Y.Max = 0, 1.05
	p.Legend.Top = true
	p.Legend.Left = true
	if err := plotutil.AddLinePoints(p, "ingest + worker process", w, "plain goroutine pool", pl); err != nil {
		return err
	}
	s, err := plotter.NewScatter(tg)
	if err != nil {
		return err
	}
	s.GlyphStyle.Shape = draw.CrossGlyph{}
	s.GlyphStyle.Radius = vg.Points(5)
	s.GlyphStyle.Color = color.RGBA{R: 200, A: 255}
	p.Add(s)
	p.Legend.Add("target", s)
	return p.Save(16*vg.Centimeter, 10*vg.Centimeter, filepath.Join(dir, "8-iv-efficiency.png"))
}
