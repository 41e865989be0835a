package testenv

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// DocsACLRule returns the commands (lower case, without the +) of the
// kbridge user's ACL SETUSER rule in docs/operations.md, which operators
// copy: the tests check that every command kbridge runs is in it.
func DocsACLRule(t *testing.T) []string {
	t.Helper()
	text := DocsOperations(t)
	i := strings.Index(text, "ACL SETUSER kbridge on")
	if i < 0 {
		t.Fatal("no ACL rule in docs/operations.md")
	}
	block := text[i:]
	if j := strings.Index(block, "```"); j >= 0 {
		block = block[:j]
	}
	var rule []string
	for _, f := range strings.Fields(block) {
		if strings.HasPrefix(f, "+") {
			rule = append(rule, strings.ToLower(f[1:]))
		}
	}
	return rule
}

// DocsOperations returns the text of docs/operations.md.
func DocsOperations(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	doc, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "..", "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	return string(doc)
}
