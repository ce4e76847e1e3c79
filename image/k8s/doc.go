// Package k8s holds the Kubernetes example manifests for running sandboxes
// on an existing cluster (sandbox-pod.yaml, tl-proxy.yaml). It has no code:
// its test parses the manifests and checks what tl-agent needs of them.
package k8s
