package config

import (
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/halt-envoy/halt-envoy/internal/reload"
)

// Load reads a file, or every *.yaml and *.yml file under a directory (recursively), and
// validates them as one Set. Hidden files and directories (names starting with ".") are
// skipped: they are editors' temporary files and the internals of a Kubernetes ConfigMap
// volume ("..data", "..2024_01_01_..."), whose visible files are symlinks into them and are
// followed. An empty directory is a valid Set with no domains. On failure the error is a
// *LoadError listing every problem.
func Load(path string) (*Set, error) { return Options{}.Load(path) }

// Load is the package's Load with o's options.
func (o Options) Load(path string) (*Set, error) {
	s, _, err := o.load(path)
	return s, err
}

// load also returns the directories it read, for the watcher.
func (o Options) load(path string) (*Set, []string, error) {
	files, dirs, problems := o.readFiles(path)
	if files == nil {
		return nil, nil, &LoadError{Problems: problems}
	}
	s, err := o.parseWith(files, problems)
	if err != nil {
		return nil, dirs, err
	}
	return s, dirs, nil
}

// parseWith parses files as Parse does and adds problems (of reading them) to its error.
func (o Options) parseWith(files map[string][]byte, problems []Problem) (*Set, error) {
	for _, p := range problems {
		if p.overCap { // parsing what was read would cost up to the caps for nothing
			e := &LoadError{Problems: problems}
			e.sort()
			return nil, e
		}
	}
	s, err := o.Parse(files)
	if err != nil {
		le := err.(*LoadError)
		le.Problems = append(problems, le.Problems...)
		le.sort()
		return nil, le
	}
	if len(problems) > 0 {
		e := &LoadError{Problems: problems}
		e.sort()
		return nil, e
	}
	return s, nil
}

// readFiles reads path as Load does, without parsing: the contents by file name, the
// directories read (sorted; none for a file) and the problems of reading. files is nil
// when path itself cannot be read. A file above MaxFileBytes is refused unread; once the
// files read reach MaxTotalBytes no more are read, so a refused load costs at most the
// caps in memory.
func (o Options) readFiles(path string) (map[string][]byte, []string, []Problem) {
	files := map[string][]byte{}
	var problems []Problem
	var total int64
	fail := func(name string, err error) {
		var tl *reload.TooLargeError
		if errors.As(err, &tl) {
			problems = append(problems, Problem{File: name, Line: 1, Column: 1, Msg: tl.Reason(), overCap: true})
			return
		}
		problems = append(problems, Problem{File: name, Line: 1, Column: 1, Msg: "cannot read: " + unwrapPathError(err)})
	}
	fi, err := os.Stat(path)
	if err != nil {
		fail(path, err)
		return nil, nil, problems
	}
	if !fi.IsDir() {
		b, err := reload.ReadFile(path, o.maxFile(), FlagMaxFileBytes)
		if err != nil {
			fail(path, err)
		} else {
			files[path] = b
		}
		return files, nil, problems
	}
	var dirs []string
	seen := map[string]bool{}
	overTotal := false
	var walk func(dir string, depth int)
	walk = func(dir string, depth int) {
		if overTotal {
			return
		}
		real, err := filepath.EvalSymlinks(dir)
		if err != nil {
			fail(dir, err)
			return
		}
		if seen[real] || depth > 64 {
			return // a symlink loop, or a directory reached twice
		}
		seen[real] = true
		dirs = append(dirs, dir)
		ents, err := os.ReadDir(dir)
		if err != nil {
			fail(dir, err)
			return
		}
		for _, e := range ents {
			name := e.Name()
			if strings.HasPrefix(name, ".") {
				continue
			}
			full := filepath.Join(dir, name)
			st, err := os.Stat(full) // follows symlinks
			if err != nil {
				if isYAML(name) {
					fail(full, err)
				}
				continue
			}
			switch {
			case st.IsDir():
				walk(full, depth+1)
			case st.Mode().IsRegular() && isYAML(name):
				if overTotal {
					continue
				}
				if total+min(st.Size(), o.maxFile()+1) > o.maxTotal() {
					overTotal = true
					tl := &reload.TooLargeError{Size: total + st.Size(), Max: o.maxTotal(), Flag: FlagMaxTotalBytes}
					problems = append(problems, Problem{File: path, Line: 1, Column: 1, overCap: true,
						Msg: "the YAML files under this directory are " + tl.Reason() + "; stopped reading at " + full})
					continue
				}
				b, err := reload.ReadFile(full, o.maxFile(), FlagMaxFileBytes)
				if err != nil {
					fail(full, err)
					continue
				}
				total += int64(len(b))
				files[full] = b
			}
		}
	}
	walk(path, 0)
	sort.Strings(dirs)
	return files, dirs, problems
}

func isYAML(name string) bool {
	ext := strings.ToLower(filepath.Ext(name))
	return ext == ".yaml" || ext == ".yml"
}

func unwrapPathError(err error) string {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Op + ": " + pe.Err.Error()
	}
	return err.Error()
}
