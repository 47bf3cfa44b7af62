package simulate

import (
	"bufio"
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"strconv"
	"time"
)

// Chart geometry, in SVG user units (pixels at 100%).
const (
	chartWidth  = 1000
	labelX      = 16  // left edge of the row labels
	plotLeft    = 232 // left edge of the plots
	plotRight   = 976 // right edge of the plots
	headerH     = 92  // title, subtitle and legend
	rowH        = 78  // one plot's height
	rowGap      = 26  // space between plots
	footerH     = 46  // x axis labels and caption
	colAdmitted = "#3b6fb6"
	colDenied   = "#f08c3a"
	colLimit    = "#1d1d1d"
	colGrid     = "#e4e4e4"
	colText     = "#1d1d1d"
	colMuted    = "#666666"
	fontFamily  = "system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif"
)

// WriteSVG draws res as small multiples: one row per algorithm on a shared time axis,
// each time bucket a bar of admitted cost with the denied cost stacked above it, and a
// dashed line at the limit's rate. Every row has the same vertical scale.
func WriteSVG(w io.Writer, res *Result) error {
	bw := bufio.NewWriter(w)
	p := res.Params
	rows := len(res.Series)
	height := headerH + rows*(rowH+rowGap) + footerH
	plotW := float64(plotRight - plotLeft)
	bucketW := plotW / float64(res.Buckets)
	span := time.Duration(res.Buckets) * p.Bucket
	limitPerBucket := float64(p.Limit) * float64(p.Bucket) / float64(p.Period)

	var peak int64
	for _, s := range res.Series {
		for i := range s.Admitted {
			peak = max(peak, s.Admitted[i]+s.Denied[i])
		}
	}
	ymax := niceCeil(max(float64(peak)*1.08, limitPerBucket*1.1, 1))

	fmt.Fprintf(bw, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="%s" font-size="12" fill="%s">`+"\n",
		chartWidth, height, chartWidth, height, esc(fontFamily), colText)
	fmt.Fprintf(bw, "<title>%s</title>\n", esc(title(res)))
	fmt.Fprintf(bw, `<rect width="%d" height="%d" fill="#ffffff"/>`+"\n", chartWidth, height)
	fmt.Fprintf(bw, `<text x="%d" y="28" font-size="18" font-weight="600">%s</text>`+"\n", labelX, esc(title(res)))
	fmt.Fprintf(bw, `<text x="%d" y="50" font-size="13" fill="%s">%s</text>`+"\n", labelX, colMuted, esc(subtitle(res)))

	// Legend.
	lx, ly := labelX, 74
	fmt.Fprintf(bw, `<g class="legend" font-size="12">`+"\n")
	fmt.Fprintf(bw, `<rect x="%d" y="%d" width="12" height="12" fill="%s"/><text x="%d" y="%d">admitted</text>`+"\n", lx, ly-10, colAdmitted, lx+17, ly)
	lx += 92
	fmt.Fprintf(bw, `<rect x="%d" y="%d" width="12" height="12" fill="%s"/><text x="%d" y="%d">denied</text>`+"\n", lx, ly-10, colDenied, lx+17, ly)
	lx += 80
	fmt.Fprintf(bw, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="1.5" stroke-dasharray="5 3"/><text x="%d" y="%d">limit rate: %s per %s bucket</text>`+"\n",
		lx, ly-4, lx+24, ly-4, colLimit, lx+30, ly, fmtNum(limitPerBucket), fmtDur(p.Bucket))
	lx += 260
	fmt.Fprintf(bw, `<text x="%d" y="%d" fill="%s">bars per %s, stacked · worst %s: most admitted in any sliding %s</text>`+"\n", lx, ly, colMuted, fmtDur(p.Bucket), fmtDur(p.Period), fmtDur(p.Period))
	fmt.Fprintf(bw, "</g>\n")

	// X ticks: a round step giving at most about ten labels.
	step := niceDuration(span / 10)
	var ticks []time.Duration
	for t := time.Duration(0); t <= span; t += step {
		ticks = append(ticks, t)
	}
	xOf := func(d time.Duration) float64 { return plotLeft + plotW*float64(d)/float64(span) }

	for r, s := range res.Series {
		top := headerH + r*(rowH+rowGap) + rowGap/2
		bottom := float64(top + rowH)
		yOf := func(v float64) float64 { return bottom - float64(rowH)*v/ymax }
		fmt.Fprintf(bw, `<g class="series" data-algorithm="%s">`+"\n", esc(s.Name))
		// Row label and totals.
		t := s.Totals
		fmt.Fprintf(bw, `<text x="%d" y="%d" font-size="14" font-weight="600">%s</text>`+"\n", labelX, top+16, esc(s.Name))
		fmt.Fprintf(bw, `<text x="%d" y="%d" fill="%s">admitted %d (%s)</text>`+"\n", labelX, top+34, colMuted, t.Admitted, pct(t.Admitted, t.Arrivals))
		fmt.Fprintf(bw, `<text x="%d" y="%d" fill="%s">denied %d · worst %s: %d</text>`+"\n", labelX, top+50, colMuted, t.Denied, fmtDur(p.Period), t.WorstWindow)
		if s.Shaping {
			fmt.Fprintf(bw, `<text x="%d" y="%d" fill="%s">delay mean %s, max %s</text>`+"\n", labelX, top+66, colMuted, fmtDur(roundDelay(t.MeanDelay)), fmtDur(roundDelay(t.MaxDelay)))
			fmt.Fprintf(bw, `<text x="%d" y="%d" fill="%s" font-style="italic">admitted drawn when released</text>`+"\n", labelX, top+82, colMuted)
		}
		// Frame, grid and y ticks.
		fmt.Fprintf(bw, `<rect x="%d" y="%d" width="%d" height="%d" fill="#fafafa" stroke="%s"/>`+"\n", plotLeft, top, plotRight-plotLeft, rowH, colGrid)
		for _, tk := range ticks {
			x := xOf(tk)
			fmt.Fprintf(bw, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%.1f" stroke="%s"/>`+"\n", x, top, x, bottom, colGrid)
		}
		for _, v := range yTicks(ymax) {
			y := yOf(v)
			if v > 0 && v < ymax {
				fmt.Fprintf(bw, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="%s"/>`+"\n", plotLeft, y, plotRight, y, colGrid)
			}
			fmt.Fprintf(bw, `<text x="%d" y="%.1f" text-anchor="end" font-size="11" fill="%s">%s</text>`+"\n", plotLeft-6, y+4, colMuted, fmtNum(v))
		}
		// Bars: admitted from the baseline, denied stacked above.
		gap := 0.0
		if bucketW >= 4 {
			gap = 1
		}
		fmt.Fprintf(bw, `<g class="admitted" fill="%s">`, colAdmitted)
		for i, v := range s.Admitted {
			if v > 0 {
				fmt.Fprintf(bw, `<rect x="%.2f" y="%.2f" width="%.2f" height="%.2f"/>`, plotLeft+float64(i)*bucketW+gap/2, yOf(float64(v)), bucketW-gap, bottom-yOf(float64(v)))
			}
		}
		fmt.Fprintf(bw, "</g>\n")
		fmt.Fprintf(bw, `<g class="denied" fill="%s">`, colDenied)
		for i, v := range s.Denied {
			if v > 0 {
				base := float64(s.Admitted[i])
				fmt.Fprintf(bw, `<rect x="%.2f" y="%.2f" width="%.2f" height="%.2f"/>`, plotLeft+float64(i)*bucketW+gap/2, yOf(base+float64(v)), bucketW-gap, yOf(base)-yOf(base+float64(v)))
			}
		}
		fmt.Fprintf(bw, "</g>\n")
		// The limit's rate.
		ly := yOf(limitPerBucket)
		fmt.Fprintf(bw, `<line class="limit" x1="%d" y1="%.2f" x2="%d" y2="%.2f" stroke="%s" stroke-width="1.5" stroke-dasharray="5 3"/>`+"\n", plotLeft, ly, plotRight, ly, colLimit)
		fmt.Fprintf(bw, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#999999"/>`+"\n", plotLeft, bottom, plotRight, bottom)
		fmt.Fprintf(bw, "</g>\n")
	}

	// Shared x axis under the last row.
	axisY := headerH + rows*(rowH+rowGap) - rowGap/2
	for _, tk := range ticks {
		x := xOf(tk)
		fmt.Fprintf(bw, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#999999"/>`, x, axisY, x, axisY+5)
		fmt.Fprintf(bw, `<text x="%.1f" y="%d" text-anchor="middle" font-size="11" fill="%s">%s</text>`+"\n", x, axisY+18, colMuted, fmtDur(tk))
	}
	fmt.Fprintf(bw, `<text x="%d" y="%d" text-anchor="middle" font-size="12">simulated time since the first bucket</text>`+"\n", (plotLeft+plotRight)/2, axisY+36)
	for i, n := range res.Notes {
		fmt.Fprintf(bw, `<text x="%d" y="%d" font-size="11" fill="%s">note: %s</text>`+"\n", labelX, axisY+18+14*i, colMuted, esc(n))
	}
	fmt.Fprintf(bw, "</svg>\n")
	return bw.Flush()
}

// title is the chart's heading: the pattern and the limit.
func title(res *Result) string {
	p := res.Params
	lim := fmt.Sprintf("%d per %s", p.Limit, fmtDur(p.Period))
	switch res.Pattern {
	case Steady:
		return fmt.Sprintf("steady %s req/s against %s", fmtNum(p.Rate), lim)
	case Ramp:
		return fmt.Sprintf("ramp 0 → %s req/s against %s", fmtNum(p.Rate), lim)
	case Burst:
		return fmt.Sprintf("bursts of %d every %s against %s", p.BurstSize, fmtDur(p.BurstEvery), lim)
	}
	return fmt.Sprintf("trace (%d requests) against %s", res.Series[0].Totals.Arrivals, lim)
}

// subtitle lists the remaining parameters.
func subtitle(res *Result) string {
	p := res.Params
	s := fmt.Sprintf("halt-envoy simulate · burst %d · max_delay %s · %s simulated · %s buckets · %d arrivals",
		p.Burst, fmtDur(p.MaxDelay), fmtDur(p.Duration), fmtDur(p.Bucket), res.Series[0].Totals.Arrivals)
	if p.Seed != 0 && (res.Pattern == Steady || res.Pattern == Ramp) {
		s += fmt.Sprintf(" · Poisson, seed %d", p.Seed)
	}
	return s
}

// esc escapes s for XML text and attributes.
func esc(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s)) // writes to memory: cannot fail
	return b.String()
}

// niceCeil rounds v up to a round number (1, 2, 3, 4, 5, 6 or 8 times a power of ten).
func niceCeil(v float64) float64 {
	for step := 1.0; ; step *= 10 {
		for _, m := range []float64{1, 2, 3, 4, 5, 6, 8} {
			if m*step >= v {
				return m * step
			}
		}
	}
}

// yTicks returns 0, the middle when it is a whole number, and ymax.
func yTicks(ymax float64) []float64 {
	if mid := ymax / 2; mid == float64(int64(mid)) {
		return []float64{0, mid, ymax}
	}
	return []float64{0, ymax}
}

// fmtNum prints v without trailing zeros.
func fmtNum(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }

// fmtDur prints d briefly: 0, 250ms, 1.5s, 2m, 90s.
func fmtDur(d time.Duration) string {
	switch {
	case d == 0:
		return "0"
	case d >= time.Minute && d%time.Minute == 0:
		return fmt.Sprintf("%dm", d/time.Minute)
	case d >= time.Second:
		return fmtNum(d.Seconds()) + "s"
	case d >= time.Millisecond:
		return fmtNum(float64(d)/float64(time.Millisecond)) + "ms"
	}
	return fmtNum(float64(d)/float64(time.Microsecond)) + "µs"
}

// roundDelay rounds d to three significant figures or so for labels.
func roundDelay(d time.Duration) time.Duration {
	switch {
	case d >= 10*time.Second:
		return d.Round(100 * time.Millisecond)
	case d >= 10*time.Millisecond:
		return d.Round(time.Millisecond)
	}
	return d.Round(10 * time.Microsecond)
}

// pct is part/whole as a percentage.
func pct(part, whole int64) string {
	if whole == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", 100*float64(part)/float64(whole))
}
