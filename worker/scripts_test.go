package worker

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"testing"
)

// TestScriptsPublished: every embedded Lua script is published in
// docs/wire.md verbatim, between <!-- lua:NAME --> markers, and the doc has no
// script block that is not one of the files: another language runs the very
// same scripts as kbridge worker.
func TestScriptsPublished(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	doc, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "docs", "wire.md"))
	if err != nil {
		t.Fatal(err)
	}
	files, err := fs.Glob(luaFiles, "lua/*.lua")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		names = append(names, filepath.Base(f))
	}
	slices.Sort(names)
	listed := slices.Sorted(slices.Values(ScriptNames))
	if !slices.Equal(names, listed) {
		t.Errorf("ScriptNames = %v, files in worker/lua = %v", listed, names)
	}
	block := regexp.MustCompile("(?s)<!-- lua:([a-z]+\\.lua) -->\n```lua\n(.*?)```\n<!-- /lua -->")
	published := map[string]string{}
	for _, m := range block.FindAllStringSubmatch(string(doc), -1) {
		if _, dup := published[m[1]]; dup {
			t.Errorf("docs/wire.md publishes %s twice", m[1])
		}
		published[m[1]] = m[2]
	}
	for _, name := range names {
		got, ok := published[name]
		switch {
		case !ok:
			t.Errorf("docs/wire.md does not publish worker/lua/%s (want a <!-- lua:%s --> block)", name, name)
		case got != ScriptSource(name):
			t.Errorf("docs/wire.md's %s differs from worker/lua/%s:\n--- doc\n%s--- file\n%s", name, name, got, ScriptSource(name))
		}
		delete(published, name)
	}
	for name := range published {
		t.Errorf("docs/wire.md publishes %s, which is not a file of worker/lua", name)
	}
	t.Logf("%d scripts in worker/lua, each checked against docs/wire.md", len(names))
}
