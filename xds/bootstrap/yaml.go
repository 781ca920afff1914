package bootstrap

import (
	"bytes"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"gopkg.in/yaml.v3"
)

// toYAML prints m as Envoy reads it: protojson with the proto field names
// (snake_case, as Envoy's docs write them), re-encoded as block YAML. The
// JSON is parsed into a yaml.Node rather than a map so that keys keep the
// proto's field order instead of being sorted.
func toYAML(m proto.Message) ([]byte, error) {
	js, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		return nil, err
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(js, &doc); err != nil {
		return nil, err
	}
	plain(&doc)
	annotate(&doc)
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// plain drops the flow and quoting styles JSON input carries. The encoder
// still quotes any string that would otherwise read as another type
// ("true", "10"), because the node keeps its !!str tag.
func plain(n *yaml.Node) {
	n.Style = 0
	for _, c := range n.Content {
		plain(c)
	}
}

// keyComments are written above a key wherever it appears, so the
// generated file explains itself to someone reading it without sluice.
var keyComments = map[string]string{
	"envoy.reloadable_features.connection_close_through_filter_manager": "" +
		"Off by default in Envoy. sluice's network ext_proc (the Postgres path)\n" +
		"needs it: a close then waits for the pending ext_proc response, so\n" +
		"sluice's last answer (for example an ErrorResponse) reaches the client.",
}

func annotate(n *yaml.Node) {
	if n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			if c, ok := keyComments[n.Content[i].Value]; ok {
				n.Content[i].HeadComment = c
			}
		}
	}
	for _, c := range n.Content {
		annotate(c)
	}
}
