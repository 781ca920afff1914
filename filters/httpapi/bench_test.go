package httpapi

import (
	"encoding/json"
	"fmt"
	"testing"
)

// podList builds a PodList of at least size bytes, as the API server
// writes one, with env values, annotations and statuses: no Secret in it.
func podList(size int) (body []byte, items int) {
	type env struct {
		Name  string `json:"name"`
		Value string `json:"value"`
	}
	pod := func(i int) map[string]any {
		return map[string]any{
			"metadata": map[string]any{
				"name": fmt.Sprintf("web-%d-7d9f8c6b5-x%04d", i%17, i), "namespace": "prod",
				"uid":               fmt.Sprintf("6f1c2a4e-%04d-4000-8000-000000000000", i%10000),
				"resourceVersion":   fmt.Sprint(100000 + i),
				"creationTimestamp": "2026-01-02T03:04:05Z",
				"labels":            map[string]string{"app": "web", "pod-template-hash": "7d9f8c6b5", "tier": "frontend"},
				"annotations":       map[string]string{"prometheus.io/scrape": "true", "owner": "team-web"},
				"ownerReferences": []map[string]any{{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8c6b5",
					"uid": "0b7e0c0e-0000-4000-8000-000000000000", "controller": true, "blockOwnerDeletion": true}},
			},
			"spec": map[string]any{
				"containers": []map[string]any{{
					"name": "web", "image": "registry.example.com/web:1.42.0",
					"ports":     []map[string]any{{"containerPort": 8080, "protocol": "TCP"}},
					"env":       []env{{"LOG_LEVEL", "info"}, {"REGION", "eu-west-1"}, {"FEATURE_FLAGS", "a,b,c"}},
					"resources": map[string]any{"requests": map[string]string{"cpu": "250m", "memory": "256Mi"}},
				}},
				"nodeName": fmt.Sprintf("node-%d", i%9), "restartPolicy": "Always", "serviceAccountName": "web",
			},
			"status": map[string]any{
				"phase": "Running", "podIP": fmt.Sprintf("10.1.%d.%d", i/250%250, i%250), "startTime": "2026-01-02T03:04:06Z",
				"conditions": []map[string]any{{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-02T03:04:09Z"}},
			},
		}
	}
	list := map[string]any{"kind": "PodList", "apiVersion": "v1", "metadata": map[string]any{"resourceVersion": "999999"}}
	var pods []map[string]any
	for len(body) < size {
		pods = append(pods, pod(len(pods)))
		if len(pods)%50 == 0 {
			list["items"] = pods
			body, _ = json.Marshal(list)
		}
	}
	return body, len(pods)
}

// k8sRules is the example configuration's masking rule
// (policies/examples/http-kubernetes.yaml).
func k8sRules(b *testing.B) *JSONRules {
	return mustRules(b, []string{"$.data", "$.stringData", "$.items[*].data"}, []string{"jwt", "api_key"})
}

func benchMask(b *testing.B, r *JSONRules, body []byte, objects int, opt JSONOptions) {
	b.Helper()
	if _, _, err := r.Mask(nil, body, opt); err != nil {
		b.Fatal(err)
	}
	dst := make([]byte, 0, len(body)+len(body)/8)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		dst, _, _ = r.Mask(dst[:0], body, opt)
	}
	b.ReportMetric(float64(objects)*float64(b.N)/b.Elapsed().Seconds(), "objects/s")
}

// BenchmarkMaskJSON measures whole-body masking. Valid is encoding/json's
// validation of the same body, the floor every run pays: compare against
// it, as the machine is shared.
func BenchmarkMaskJSON(b *testing.B) {
	secrets, _ := secretList(100)
	pods, n := podList(1 << 20)
	r := k8sRules(b)
	b.Run(fmt.Sprintf("SecretList-100/%dKB", len(secrets)>>10), func(b *testing.B) {
		benchMask(b, r, secrets, 100, kube)
	})
	b.Run(fmt.Sprintf("PodList-%d/%dKB/rules", n, len(pods)>>10), func(b *testing.B) {
		benchMask(b, r, pods, n, kube)
	})
	b.Run(fmt.Sprintf("PodList-%d/%dKB/secrets-only", n, len(pods)>>10), func(b *testing.B) {
		benchMask(b, nil, pods, n, kube)
	})
	b.Run(fmt.Sprintf("PodList-%d/%dKB/json.Valid", n, len(pods)>>10), func(b *testing.B) {
		b.SetBytes(int64(len(pods)))
		for b.Loop() {
			json.Valid(pods)
		}
		b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "objects/s")
	})
}

// BenchmarkLineMasker measures a watch stream of 100 Secret events
// arriving in 16 KiB chunks.
func BenchmarkLineMasker(b *testing.B) {
	var stream []byte
	for i := range 100 {
		stream = fmt.Appendf(stream, `{"type":"MODIFIED","object":{"kind":"Secret","apiVersion":"v1","metadata":{"name":"s-%d","namespace":"prod","resourceVersion":"%d"},"type":"Opaque","data":{"password":"aHVudGVyMg==","token":"c2VjcmV0LXRva2Vu"}}}`+"\n", i, 1000+i)
	}
	r := k8sRules(b)
	dst := make([]byte, 0, len(stream)+len(stream)/8)
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	for b.Loop() {
		m := r.NewLineMasker(kube, 0)
		dst = dst[:0]
		for c := stream; len(c) > 0; {
			n := min(len(c), 16<<10)
			dst, _ = m.Write(dst, c[:n])
			c = c[n:]
		}
		dst, _ = m.Close(dst)
	}
	b.ReportMetric(100*float64(b.N)/b.Elapsed().Seconds(), "objects/s")
}
