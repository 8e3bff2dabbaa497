// Command buildkit-parse runs BuildKit's own Dockerfile parser over Dockerfiles and prints, per
// file, what it made of them as one JSON object per line: the AST's Dump() (the format of
// BuildKit's parser testfiles/*/result), what Dump() leaves out (line numbers, exec form,
// heredocs, the escape token, the syntax directive), and whether BuildKit's instruction layer
// (instructions.Parse, with its linter) accepts the file. It is the independent side of Kiln's
// parser conformance tests (crates/dockerfile/tests/buildkit_conformance.rs); it judges nothing
// itself and must not grow checks of its own: scripts/buildkit-parse.sh builds it from the
// BuildKit module pinned in go.mod/go.sum.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

type heredoc struct {
	Name    string `json:"name"`
	Fd      uint   `json:"fd"`
	Expand  bool   `json:"expand"`
	Chomp   bool   `json:"chomp"`
	Content string `json:"content"`
}

type node struct {
	Line     int       `json:"line"`
	EndLine  int       `json:"end_line"`
	Dump     string    `json:"dump"`
	JSON     bool      `json:"json"`
	Original string    `json:"original"`
	Heredocs []heredoc `json:"heredocs"`
	// instructions.ParseInstruction's error for this instruction alone, if it failed.
	InstructionError *string `json:"instruction_error"`
}

type stage struct {
	Name     string `json:"name"`
	Base     string `json:"base"`
	Platform string `json:"platform"`
	Line     int    `json:"line"`
}

type metaArg struct {
	Name    string  `json:"name"`
	Default *string `json:"default"`
}

type result struct {
	File string `json:"file"`
	// parser.Parse's error, if it failed (then nothing else is set), and the first line its
	// location names (BuildKit's own numbering), if it has one.
	ParseError     *string `json:"parse_error"`
	ParseErrorLine *int    `json:"parse_error_line"`
	// Result.AST.Dump(), exactly what BuildKit's parser_test.go compares with testfiles/*/result.
	Dump     string   `json:"dump"`
	Escape   string   `json:"escape"`
	Syntax   *string  `json:"syntax"`
	Nodes    []node   `json:"nodes"`
	Warnings []string `json:"warnings"`
	// instructions.Parse's error, if it failed, and the first line its location names.
	InstructionsError     *string   `json:"instructions_error"`
	InstructionsErrorLine *int      `json:"instructions_error_line"`
	Stages                []stage   `json:"stages"`
	MetaArgs              []metaArg `json:"meta_args"`
	Lint                  []string  `json:"lint"`
}

func str(s string) *string { return &s }

// errorLine is the first line of the source location BuildKit attached to err, if any.
func errorLine(err error) *int {
	var le *parser.LocationError
	if errors.As(err, &le) && len(le.Locations) > 0 && len(le.Locations[0]) > 0 {
		line := le.Locations[0][0].Start.Line
		return &line
	}
	return nil
}

func parseFile(path string) result {
	out := result{File: path, Nodes: []node{}, Warnings: []string{}, Stages: []stage{}, MetaArgs: []metaArg{}, Lint: []string{}}
	dt, err := os.ReadFile(path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "buildkit-parse: %v\n", err)
		os.Exit(2)
	}
	res, err := parser.Parse(bytes.NewReader(dt))
	if err != nil {
		out.ParseError = str(err.Error())
		out.ParseErrorLine = errorLine(err)
		return out
	}
	out.Dump = res.AST.Dump()
	out.Escape = string(res.EscapeToken)
	if _, cmdline, _, ok := parser.ParseDirective("syntax", dt); ok {
		out.Syntax = str(cmdline)
	}
	for _, w := range res.Warnings {
		out.Warnings = append(out.Warnings, w.Short)
	}
	for _, child := range res.AST.Children {
		n := node{
			Line:     child.StartLine,
			EndLine:  child.EndLine,
			Dump:     child.Dump(),
			JSON:     child.Attributes["json"],
			Original: child.Original,
			Heredocs: []heredoc{},
		}
		// ONBUILD keeps its trigger's exec-form attribute on the trigger node.
		if child.Next != nil && len(child.Next.Children) > 0 {
			n.JSON = child.Next.Children[0].Attributes["json"]
		}
		for _, h := range child.Heredocs {
			n.Heredocs = append(n.Heredocs, heredoc{h.Name, h.FileDescriptor, h.Expand, h.Chomp, h.Content})
		}
		if _, err := instructions.ParseInstruction(child); err != nil {
			n.InstructionError = str(err.Error())
		}
		out.Nodes = append(out.Nodes, n)
	}
	lint := linter.New(&linter.Config{Warn: func(rule, _, _, msg string, _ []parser.Range) {
		out.Lint = append(out.Lint, rule+": "+msg)
	}})
	stages, metaArgs, err := instructions.Parse(res.AST, lint)
	if err != nil {
		out.InstructionsError = str(err.Error())
		out.InstructionsErrorLine = errorLine(err)
		return out
	}
	for _, s := range stages {
		line := 0
		if len(s.Location) > 0 {
			line = s.Location[0].Start.Line
		}
		out.Stages = append(out.Stages, stage{s.Name, s.BaseName, s.Platform, line})
	}
	for _, a := range metaArgs {
		for _, kv := range a.Args {
			out.MetaArgs = append(out.MetaArgs, metaArg{kv.Key, kv.Value})
		}
	}
	return out
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: buildkit-parse DOCKERFILE...")
		os.Exit(2)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false)
	for _, path := range os.Args[1:] {
		if err := enc.Encode(parseFile(path)); err != nil {
			fmt.Fprintf(os.Stderr, "buildkit-parse: %v\n", err)
			os.Exit(2)
		}
	}
}
