// kstatus computes what sigs.k8s.io/cli-utils's kstatus library (the status rules Flux, Argo CD's
// generic checks and `kubectl wait`-style tools share) says about Kubernetes objects: the
// independent side of the operator's kstatus tests (operator/tests/kstatus.rs). It reads one JSON
// object per line on stdin and prints, per object, one JSON line {"status": ..., "message": ...}.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 16<<20)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		line := in.Bytes()
		if len(line) == 0 {
			continue
		}
		// As a client decodes objects from the API server: integers stay int64.
		u := &unstructured.Unstructured{}
		if err := u.UnmarshalJSON(line); err != nil {
			fmt.Fprintf(os.Stderr, "kstatus: not a Kubernetes object: %v\n", err)
			os.Exit(1)
		}
		res, err := status.Compute(u)
		if err != nil {
			fmt.Fprintf(os.Stderr, "kstatus: %v\n", err)
			os.Exit(1)
		}
		if err := out.Encode(map[string]string{"status": res.Status.String(), "message": res.Message}); err != nil {
			fmt.Fprintf(os.Stderr, "kstatus: %v\n", err)
			os.Exit(1)
		}
	}
	if err := in.Err(); err != nil {
		fmt.Fprintf(os.Stderr, "kstatus: reading stdin: %v\n", err)
		os.Exit(1)
	}
}
