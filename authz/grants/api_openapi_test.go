package grants

import (
	"go/ast"
	"go/parser"
	"go/token"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// openAPIDoc is the part of openapi.yaml the checks below read.
type openAPIDoc struct {
	OpenAPI    string                    `yaml:"openapi"`
	Paths      map[string]map[string]any `yaml:"paths"`
	Components struct {
		Schemas map[string]struct {
			Properties map[string]struct {
				Enum []string `yaml:"enum"`
			} `yaml:"properties"`
		} `yaml:"schemas"`
	} `yaml:"components"`
}

// TestOpenAPIMatchesRoutes: every route the mux serves is documented,
// and the document describes no route the mux does not serve.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	var doc openAPIDoc
	if err := yaml.Unmarshal(OpenAPI, &doc); err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.1") {
		t.Errorf("openapi %q, want 3.1", doc.OpenAPI)
	}
	var documented, served []string
	for path, item := range doc.Paths {
		for method := range item {
			switch method {
			case "get", "put", "post", "delete", "patch", "head", "options", "trace":
				documented = append(documented, strings.ToUpper(method)+" "+path)
			}
		}
	}
	for _, r := range (&API{}).routes() {
		served = append(served, r.method+" "+r.path)
	}
	sort.Strings(documented)
	sort.Strings(served)
	if !slices.Equal(documented, served) {
		t.Errorf("openapi.yaml documents\n  %s\nthe mux serves\n  %s", strings.Join(documented, "\n  "), strings.Join(served, "\n  "))
	}

	// The Error schema lists exactly the codes api_errors.go defines.
	var codes []string
	f, err := parser.ParseFile(token.NewFileSet(), "api_errors.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	ast.Inspect(f, func(n ast.Node) bool {
		if vs, ok := n.(*ast.ValueSpec); ok {
			if id, ok := vs.Type.(*ast.Ident); ok && id.Name == "ErrorCode" {
				s, _ := strconv.Unquote(vs.Values[0].(*ast.BasicLit).Value)
				codes = append(codes, s)
			}
		}
		return true
	})
	enum := doc.Components.Schemas["Error"].Properties["error"].Enum
	sort.Strings(codes)
	sort.Strings(enum)
	if len(codes) == 0 || !slices.Equal(codes, enum) {
		t.Errorf("Error.error enum %v, codes defined %v", enum, codes)
	}
}
