// kaniko-flags prints the command-line flags and environment variables of kaniko's executor
// and warmer, read from kaniko's own source with go/parser (nothing of kaniko is built or run):
// the independent side of Kiln's flag-parity test (executor/tests/kaniko_flags.rs, through
// scripts/kaniko-flags.sh).
//
//	kaniko-flags KANIKO_SOURCE_DIR
//
// prints one JSON object:
//
//	{"programs": {"executor": [FLAG...], "warmer": [FLAG...]},
//	 "env": [{"name": "KANIKO_DIR", "files": ["pkg/config/init.go"]}, ...],
//	 "normalize_func": false,
//	 "undefined_marks": [{"program": "executor", "call": "MarkHidden", "flag": "..."}]}
//
// where FLAG is {"long", "short", "kind", "go_type", "default", "deprecated", "hidden"}: every
// pflag definition call (StringVarP, BoolVar, VarP, DurationVarP, ...) in
// cmd/<program>/cmd/root.go, with the Go type of a Var target resolved from pkg/config's struct
// definitions, and MarkDeprecated/MarkHidden applied. `env` lists every variable that kaniko's
// non-test code under cmd/ and pkg/ reads with os.Getenv or os.LookupEnv (string constants
// resolved). `undefined_marks` are MarkHidden/MarkDeprecated calls naming a flag that kaniko
// never defines (they change nothing in kaniko).
package main

import (
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

type Flag struct {
	Long       string `json:"long"`
	Short      string `json:"short"`
	Kind       string `json:"kind"`
	GoType     string `json:"go_type"`
	Default    string `json:"default"`
	Deprecated bool   `json:"deprecated"`
	Hidden     bool   `json:"hidden"`
}

type Env struct {
	Name  string   `json:"name"`
	Files []string `json:"files"`
}

type Mark struct {
	Program string `json:"program"`
	Call    string `json:"call"`
	Flag    string `json:"flag"`
}

type Output struct {
	Programs       map[string][]Flag `json:"programs"`
	Env            []Env             `json:"env"`
	NormalizeFunc  bool              `json:"normalize_func"`
	UndefinedMarks []Mark            `json:"undefined_marks"`
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: kaniko-flags KANIKO_SOURCE_DIR")
		os.Exit(2)
	}
	root := os.Args[1]
	fields := structFields(filepath.Join(root, "pkg/config"))
	consts := stringConsts(root)
	out := Output{Programs: map[string][]Flag{}, UndefinedMarks: []Mark{}}
	for _, program := range []string{"executor", "warmer"} {
		path := filepath.Join(root, "cmd", program, "cmd", "root.go")
		flags, marks, normalize := programFlags(path, program, fields, consts)
		if len(flags) == 0 {
			die("no flag definitions found in %s", path)
		}
		out.Programs[program] = flags
		out.UndefinedMarks = append(out.UndefinedMarks, marks...)
		out.NormalizeFunc = out.NormalizeFunc || normalize
	}
	out.Env = envVars(root, consts)
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", " ")
	if err := enc.Encode(out); err != nil {
		die("%v", err)
	}
}

func die(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "kaniko-flags: "+format+"\n", args...)
	os.Exit(1)
}

func parseFile(path string) *ast.File {
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
	if err != nil {
		die("parsing %s: %v", path, err)
	}
	return f
}

// definition describes one pflag method: where its name, shorthand and default arguments are.
type definition struct {
	kind     string
	name     int
	short    int // -1: no shorthand argument
	dflt     int // -1: no default argument (Var, VarP)
	isVarArg bool
}

func definitionOf(method string) (definition, bool) {
	d := definition{short: -1, dflt: -1}
	m := method
	p := strings.HasSuffix(m, "P")
	if p {
		m = strings.TrimSuffix(m, "P")
	}
	if m == "Var" {
		d.kind, d.name, d.isVarArg = "value", 1, true
		if p {
			d.short = 2
		}
		return d, true
	}
	base, isVar := strings.CutSuffix(m, "Var")
	kinds := map[string]string{
		"String": "string", "Bool": "bool", "Int": "int", "Int64": "int", "Uint": "int",
		"Duration": "duration", "StringSlice": "string-slice", "StringArray": "string-array",
		"StringToString": "string-to-string", "Float64": "float",
	}
	kind, ok := kinds[base]
	if !ok {
		return d, false
	}
	d.kind = kind
	if isVar {
		d.name = 1
	}
	next := d.name + 1
	if p {
		d.short = next
		next++
	}
	d.dflt = next
	return d, true
}

func programFlags(path, program string, fields map[string]string, consts map[string]string) ([]Flag, []Mark, bool) {
	f := parseFile(path)
	var flags []Flag
	type mark struct{ call, flag string }
	var marks []mark
	normalize := false
	ast.Inspect(f, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok {
			return true
		}
		sel, ok := call.Fun.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		method := sel.Sel.Name
		switch method {
		case "SetNormalizeFunc", "SetGlobalNormalizationFunc":
			normalize = true
			return true
		case "MarkDeprecated", "MarkHidden", "MarkShorthandDeprecated":
			if len(call.Args) > 0 {
				marks = append(marks, mark{method, literal(call.Args[0], consts)})
			}
			return true
		}
		if !isFlagSet(sel.X) {
			return true
		}
		d, ok := definitionOf(method)
		if !ok || len(call.Args) <= d.name {
			return true
		}
		fl := Flag{Long: literal(call.Args[d.name], consts), Kind: d.kind}
		if d.short >= 0 {
			fl.Short = literal(call.Args[d.short], consts)
		}
		if d.dflt >= 0 {
			fl.Default = exprText(call.Args[d.dflt], consts)
		}
		if d.isVarArg {
			fl.GoType = targetType(call.Args[0], fields)
		} else {
			fl.GoType = d.kind
		}
		flags = append(flags, fl)
		return true
	})
	var undefined []Mark
	for _, m := range marks {
		found := false
		for i := range flags {
			if flags[i].Long == m.flag {
				found = true
				switch m.call {
				case "MarkDeprecated":
					flags[i].Deprecated = true
					flags[i].Hidden = true // pflag hides deprecated flags from help
				case "MarkHidden":
					flags[i].Hidden = true
				}
			}
		}
		if !found {
			undefined = append(undefined, Mark{program, m.call, m.flag})
		}
	}
	// kaniko's own "deprecated" flags that are not marked with pflag (their usage says so).
	for i := range flags {
		if strings.Contains(strings.ToLower(deprecatedUsage(f, flags[i].Long)), "deprecated") {
			flags[i].Deprecated = true
		}
	}
	return flags, undefined, normalize
}

// isFlagSet: the receiver is a flag set expression (X.PersistentFlags(), X.Flags(),
// pflag.CommandLine), not some other object with a String method.
func isFlagSet(x ast.Expr) bool {
	switch v := x.(type) {
	case *ast.CallExpr:
		if s, ok := v.Fun.(*ast.SelectorExpr); ok {
			switch s.Sel.Name {
			case "PersistentFlags", "Flags", "LocalFlags":
				return true
			}
		}
	case *ast.SelectorExpr:
		return v.Sel.Name == "CommandLine"
	}
	return false
}

// deprecatedUsage returns the usage string of the definition of flag `name` (its last argument).
func deprecatedUsage(f *ast.File, name string) string {
	usage := ""
	ast.Inspect(f, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok {
			return true
		}
		sel, ok := call.Fun.(*ast.SelectorExpr)
		if !ok || !isFlagSet(sel.X) {
			return true
		}
		d, ok := definitionOf(sel.Sel.Name)
		if !ok || len(call.Args) <= d.name {
			return true
		}
		if literal(call.Args[d.name], nil) == name {
			usage = literal(call.Args[len(call.Args)-1], nil)
		}
		return true
	})
	return usage
}

func literal(e ast.Expr, consts map[string]string) string {
	switch v := e.(type) {
	case *ast.BasicLit:
		if v.Kind == token.STRING {
			s, err := strconv.Unquote(v.Value)
			if err == nil {
				return s
			}
		}
		return v.Value
	case *ast.Ident:
		if c, ok := consts[v.Name]; ok {
			return c
		}
		return v.Name
	case *ast.SelectorExpr:
		if x, ok := v.X.(*ast.Ident); ok {
			if c, ok := consts[x.Name+"."+v.Sel.Name]; ok {
				return c
			}
			return x.Name + "." + v.Sel.Name
		}
	}
	return exprText(e, consts)
}

// exprText renders a default-value expression compactly (literals unquoted, names kept).
func exprText(e ast.Expr, consts map[string]string) string {
	switch v := e.(type) {
	case *ast.BasicLit, *ast.Ident:
		return literal(v, consts)
	case *ast.SelectorExpr:
		return literal(v, consts)
	case *ast.BinaryExpr:
		return exprText(v.X, consts) + v.Op.String() + exprText(v.Y, consts)
	case *ast.UnaryExpr:
		return v.Op.String() + exprText(v.X, consts)
	}
	return fmt.Sprintf("%T", e)
}

// targetType: the Go type of `&opts.Field` (or `&x`), from pkg/config's structs.
func targetType(e ast.Expr, fields map[string]string) string {
	if u, ok := e.(*ast.UnaryExpr); ok && u.Op == token.AND {
		e = u.X
	}
	if s, ok := e.(*ast.SelectorExpr); ok {
		if t, ok := fields[s.Sel.Name]; ok {
			return t
		}
		return "unknown:" + s.Sel.Name
	}
	return "unknown"
}

// structFields maps each field name of pkg/config's option structs to its type name.
func structFields(dir string) map[string]string {
	out := map[string]string{}
	for _, path := range goFiles(dir, false) {
		f := parseFile(path)
		ast.Inspect(f, func(n ast.Node) bool {
			st, ok := n.(*ast.StructType)
			if !ok {
				return true
			}
			for _, field := range st.Fields.List {
				for _, name := range field.Names {
					out[name.Name] = typeName(field.Type)
				}
			}
			return true
		})
	}
	return out
}

func typeName(e ast.Expr) string {
	switch v := e.(type) {
	case *ast.Ident:
		return v.Name
	case *ast.SelectorExpr:
		return typeName(v.X) + "." + v.Sel.Name
	case *ast.StarExpr:
		return "*" + typeName(v.X)
	case *ast.ArrayType:
		return "[]" + typeName(v.Elt)
	case *ast.MapType:
		return "map[" + typeName(v.Key) + "]" + typeName(v.Value)
	}
	return fmt.Sprintf("%T", e)
}

// stringConsts: every string constant under cmd/ and pkg/, by `Name` and `pkg.Name`.
func stringConsts(root string) map[string]string {
	out := map[string]string{}
	for _, path := range append(goFiles(filepath.Join(root, "cmd"), true), goFiles(filepath.Join(root, "pkg"), true)...) {
		f := parseFile(path)
		for _, decl := range f.Decls {
			g, ok := decl.(*ast.GenDecl)
			if !ok || g.Tok != token.CONST {
				continue
			}
			for _, spec := range g.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, name := range vs.Names {
					if i < len(vs.Values) {
						if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
							s, _ := strconv.Unquote(lit.Value)
							out[name.Name] = s
							out[f.Name.Name+"."+name.Name] = s
						}
					}
				}
			}
		}
	}
	return out
}

// envVars: the variables non-test code under cmd/ and pkg/ reads with os.Getenv/os.LookupEnv.
func envVars(root string, consts map[string]string) []Env {
	seen := map[string]map[string]bool{}
	for _, path := range append(goFiles(filepath.Join(root, "cmd"), true), goFiles(filepath.Join(root, "pkg"), true)...) {
		f := parseFile(path)
		rel, _ := filepath.Rel(root, path)
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) != 1 {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if x, ok := sel.X.(*ast.Ident); !ok || x.Name != "os" || (sel.Sel.Name != "Getenv" && sel.Sel.Name != "LookupEnv") {
				return true
			}
			// A constant that does not resolve keeps its Go name, which no README row matches.
			name := literal(call.Args[0], consts)
			if seen[name] == nil {
				seen[name] = map[string]bool{}
			}
			seen[name][rel] = true
			return true
		})
	}
	var out []Env
	for name, files := range seen {
		e := Env{Name: name}
		for f := range files {
			e.Files = append(e.Files, f)
		}
		sort.Strings(e.Files)
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func goFiles(dir string, recursive bool) []string {
	var out []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != dir && !recursive {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, "_test.go") {
			out = append(out, path)
		}
		return nil
	})
	if err != nil {
		die("walking %s: %v", dir, err)
	}
	sort.Strings(out)
	return out
}
