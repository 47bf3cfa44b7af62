package simulate

import (
	"fmt"
	"io"
	"strings"
)

// WriteTable prints res's totals as an aligned Markdown table: one row per algorithm with
// the requests admitted and denied, the most cost admitted in any window of one period
// and in any second, and the shaper's delays. Notes follow the table.
func WriteTable(w io.Writer, res *Result) error {
	rows := [][]string{{"algorithm", "admitted", "denied", "worst " + fmtDur(res.Params.Period) + " window", "max in 1s", "delay mean / max"}}
	for _, s := range res.Series {
		t := s.Totals
		delay := "-"
		if s.Shaping {
			delay = fmtDur(roundDelay(t.MeanDelay)) + " / " + fmtDur(roundDelay(t.MaxDelay))
		}
		rows = append(rows, []string{s.Name, fmt.Sprint(t.Admitted), fmt.Sprint(t.Denied), fmt.Sprint(t.WorstWindow), fmt.Sprint(t.MaxPerSecond), delay})
	}
	width := make([]int, len(rows[0]))
	for _, r := range rows {
		for i, c := range r {
			width[i] = max(width[i], len([]rune(c)))
		}
	}
	var b strings.Builder
	line := func(cells []string) {
		for i, c := range cells {
			pad := strings.Repeat(" ", width[i]-len([]rune(c)))
			if i == 0 {
				fmt.Fprintf(&b, "| %s%s ", c, pad)
			} else {
				fmt.Fprintf(&b, "| %s%s ", pad, c)
			}
		}
		b.WriteString("|\n")
	}
	line(rows[0])
	rule := make([]string, len(width))
	for i, n := range width {
		rule[i] = strings.Repeat("-", n-1) + ":"
		if i == 0 {
			rule[i] = ":" + strings.Repeat("-", n-1)
		}
	}
	line(rule)
	for _, r := range rows[1:] {
		line(r)
	}
	for _, n := range res.Notes {
		fmt.Fprintf(&b, "\nnote: %s\n", n)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
