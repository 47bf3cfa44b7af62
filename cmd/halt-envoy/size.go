package main

import (
	"flag"
	"fmt"
	"strconv"
	"strings"

	authzpkg "github.com/halt-envoy/halt-envoy/internal/authz"
	"github.com/halt-envoy/halt-envoy/internal/config"
	"github.com/halt-envoy/halt-envoy/internal/reload"
)

// byteSize is a flag holding a byte count, written "4194304", "4MiB", "512KiB" or "1GiB"
// (binary units; "B" allowed).
type byteSize int64

func (b *byteSize) String() string { return reload.Size(int64(*b)) }

// Set parses a count with an optional binary unit.
func (b *byteSize) Set(s string) error {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"b", 1}} {
		if strings.HasSuffix(strings.ToLower(t), u.suffix) {
			t, mult = strings.TrimSpace(t[:len(t)-len(u.suffix)]), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 || n > (1<<40)/mult {
		return fmt.Errorf("want a positive size such as 4194304, 512KiB, 4MiB or 1GiB (at most 1024GiB), got %q", s)
	}
	*b = byteSize(n * mult)
	return nil
}

// configCaps are the flags bounding what is read of configuration files before they are
// parsed (a parse costs 20-35 times a file's size in memory).
type configCaps struct {
	file, total, keys byteSize
	// merge is --merge-domains (the reference's MERGE_DOMAIN_CONFIG), which rides with
	// the caps since every loader of a configuration takes both.
	merge bool
}

func (c *configCaps) register(fs *flag.FlagSet, authz bool) {
	c.file, c.total, c.keys = config.DefaultMaxFileBytes, config.DefaultMaxTotalBytes, authzpkg.DefaultMaxKeysBytes
	fs.Var(&c.file, "max-config-bytes", "refuse a config file (or xDS resource, or authz file) larger than this, before parsing it")
	fs.Var(&c.total, "max-config-total-bytes", "refuse a config directory (and xDS push) whose YAML files together are larger than this")
	fs.BoolVar(&c.merge, "merge-domains", false, "merge the files (and xDS resources) of one domain instead of refusing a domain defined twice; a top-level descriptor in two of them is still an error (the reference's MERGE_DOMAIN_CONFIG)")
	if authz {
		fs.Var(&c.keys, "max-authz-keys-bytes", "refuse an authz API key file larger than this (about 110 bytes a key)")
	}
}

// options are the config loader's options under these caps.
func (c *configCaps) options() config.Options {
	return config.Options{MaxFileBytes: int64(c.file), MaxTotalBytes: int64(c.total), MergeDomains: c.merge}
}

// authz are the authz loader's caps.
func (c *configCaps) authz() authzpkg.Caps {
	return authzpkg.Caps{ConfigBytes: int64(c.file), KeysBytes: int64(c.keys)}
}
