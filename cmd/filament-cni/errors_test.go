package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
)

// fakeAgent serves the agent API on a unix socket with one answer to
// every request.
func fakeAgent(t *testing.T, status int, body string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		fmt.Fprint(w, body)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func addWith(t *testing.T, sock string) *types.Error {
	t.Helper()
	netns := filepath.Join(t.TempDir(), "netns")
	os.WriteFile(netns, nil, 0o600)
	err := cmdAdd(&skel.CmdArgs{ContainerID: "c1", Netns: netns, IfName: "eth0",
		StdinData: []byte(fmt.Sprintf(`{"cniVersion":"1.1.0","name":"filament","type":"filament","agentSocket":%q}`, sock))})
	var te *types.Error
	if !errors.As(err, &te) {
		t.Fatalf("ADD: want a CNI error, got %v", err)
	}
	return te
}

// An ADD the agent cannot serve because the kvstore is unreachable, or
// with no agent on the socket, is CNI code 11 (try again later) with a
// message naming the cause (issue 13, item 10), not an unknown error.
func TestAddTryAgainLater(t *testing.T) {
	e := addWith(t, fakeAgent(t, http.StatusServiceUnavailable, `{"code":"unavailable","error":"kvstore unavailable: identity for k8s:app=web: the kvstore did not answer within 10s"}`))
	if e.Code != types.ErrTryAgainLater || !strings.Contains(e.Msg, "kvstore") {
		t.Fatalf("kvstore outage: %+v", e)
	}
	e = addWith(t, filepath.Join(t.TempDir(), "no-agent.sock"))
	if e.Code != types.ErrTryAgainLater || !strings.Contains(e.Msg, "no-agent.sock") {
		t.Fatalf("no agent on the socket: %+v", e)
	}
	// An invalid request stays code 7.
	e = addWith(t, fakeAgent(t, http.StatusBadRequest, `{"code":"invalid","error":"invalid endpoint request: label \"reserved:host\""}`))
	if e.Code != types.ErrInvalidNetworkConfig {
		t.Fatalf("invalid: %+v", e)
	}
}
