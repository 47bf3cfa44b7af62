package reload

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// TooLargeError says a file is larger than the cap on what halt reads of it.
type TooLargeError struct {
	// Path is the file, Max the cap in bytes, Size the file's size (0 when unknown: it is
	// not a regular file, or it grew while being read).
	Path      string
	Size, Max int64
	// Flag names the setting that raises the cap, for the message ("": none does).
	Flag string
}

func (e *TooLargeError) Error() string { return e.Path + ": " + e.Reason() }

// Reason is the message without the path: "5 MiB, more than the cap of 4 MiB (raise it
// with --max-config-bytes)".
func (e *TooLargeError) Reason() string {
	msg := fmt.Sprintf("%s, more than the cap of %s", sizeText(e.Size, e.Max), Size(e.Max))
	if e.Flag != "" {
		msg += " (raise it with " + e.Flag + ")"
	}
	return msg
}

// sizeText says how large a refused file is, when known.
func sizeText(size, max int64) string {
	if size <= max {
		return "larger"
	}
	return Size(size)
}

// Size prints a byte count the way the caps are documented: "4 MiB", "1.5 KiB", "17 B".
func Size(n int64) string {
	const k = 1024
	switch {
	case n >= k*k*k:
		return trim(float64(n)/(k*k*k)) + " GiB"
	case n >= k*k:
		return trim(float64(n)/(k*k)) + " MiB"
	case n >= k:
		return trim(float64(n)/k) + " KiB"
	}
	return fmt.Sprintf("%d B", n)
}

func trim(f float64) string {
	s := fmt.Sprintf("%.1f", f)
	if len(s) > 2 && s[len(s)-2:] == ".0" {
		s = s[:len(s)-2]
	}
	return s
}

// ReadFile reads path, refusing with a *TooLargeError, before reading a byte, a file
// whose size is above max, and stopping at max+1 bytes when the size does not tell (a
// file growing while read, a device or a pipe named like a config file). The cost of a
// refused file is a stat and at most max+1 bytes of memory. max <= 0 means no cap.
func ReadFile(path string, max int64, flag string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if max <= 0 {
		return io.ReadAll(f)
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Mode().IsRegular() && fi.Size() > max {
		return nil, &TooLargeError{Path: path, Size: fi.Size(), Max: max, Flag: flag}
	}
	initial := max + 1
	if fi.Mode().IsRegular() && fi.Size() < max {
		initial = fi.Size() + 1
	}
	b := make([]byte, 0, initial)
	for {
		n, err := f.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if int64(len(b)) > max {
			return nil, &TooLargeError{Path: path, Max: max, Flag: flag}
		}
		if errors.Is(err, io.EOF) {
			return b, nil
		}
		if err != nil {
			return nil, err
		}
		if len(b) == cap(b) { // grow, never past max+1
			nb := make([]byte, len(b), min(max+1, 2*int64(cap(b))+512))
			copy(nb, b)
			b = nb
		}
	}
}
