package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/filament-net/filament/internal/atomicfile"
)

// maxConfigBytes bounds a PUT /v1/config body.
const maxConfigBytes = 64 << 20

// stateFile is the persisted config in the state dir.
const stateFile = "config.json"

// Control is the proxy's control API, HTTP on a unix socket:
//
//	PUT /v1/config   replace the config (strict JSON; 400 naming the field)
//	GET /v1/config   the config in force
//	GET /v1/records  records as NDJSON until the client goes (binary with
//	                 Accept: RecordsBinary)
//	GET /v1/dns/learned  allowed DNS answers' addresses as NDJSON (Learned),
//	                 for the agent: one follower at a time, each answer held
//	                 until acknowledged
//	POST /v1/dns/ack {"session": S, "seq": N}: the answers given to
//	                 follower S up to the one numbered N are in the datapath
//	GET /metrics     Prometheus
//	GET /healthz     ok
//
// An accepted config is persisted atomically in the state dir before it
// takes effect; NewControl loads it, so a restarted proxy enforces the
// last config at once.
type Control struct {
	p        *Proxy
	stateDir string
	srv      *http.Server
	mu       sync.Mutex  // serialises PUTs: persisted order = applied order
	marked   atomic.Bool // the health answer says the listeners carry ListenerMark
}

// SetListenerMarked says whether the proxy's sockets carry ListenerMark
// (the health answer's ListenerMarkHeader): they do when transparent.
func (c *Control) SetListenerMarked(v bool) { c.marked.Store(v) }

// NewControl returns the control API of p, after loading the config
// persisted in stateDir (if any) into p.
func NewControl(p *Proxy, stateDir string) (*Control, error) {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	c := &Control{p: p, stateDir: stateDir}
	if cfg, ok, err := LoadConfig(stateDir); err != nil {
		return nil, err
	} else if ok {
		if err := p.SetConfig(cfg); err != nil {
			return nil, fmt.Errorf("persisted config %s: %w", filepath.Join(stateDir, stateFile), err)
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /v1/config", c.putConfig)
	mux.HandleFunc("GET /v1/config", c.getConfig)
	mux.HandleFunc("GET /v1/records", c.records)
	mux.HandleFunc("GET /v1/dns/learned", c.learned)
	mux.HandleFunc("POST /v1/dns/ack", c.ack)
	mux.Handle("GET /metrics", promhttp.HandlerFor(p.metrics.registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if c.marked.Load() {
			w.Header().Set(ListenerMarkHeader, "1")
		}
		io.WriteString(w, "ok\n")
	})
	// Profiles of the proxy, on its root-only control socket.
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	c.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return c, nil
}

// Serve serves the API on ln until Close.
func (c *Control) Serve(ln net.Listener) error { return c.srv.Serve(ln) }

// Close stops the API and its record streams.
func (c *Control) Close() error { return c.srv.Close() }

// LoadConfig reads the config persisted in stateDir; ok is false when
// there is none.
func LoadConfig(stateDir string) (cfg Config, ok bool, err error) {
	b, err := os.ReadFile(filepath.Join(stateDir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return cfg, false, nil
	}
	if err == nil {
		err = decodeStrict(bytes.NewReader(b), &cfg)
	}
	if err != nil {
		return cfg, false, fmt.Errorf("persisted config: %w", err)
	}
	return cfg, true, nil
}

// saveConfig writes cfg to stateDir atomically (temp file, fsync, rename,
// fsync of the dir).
func saveConfig(stateDir string, cfg Config) error {
	b, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(stateDir, stateFile), b, 0o600)
}

// decodeStrict decodes exactly one JSON value with no unknown fields.
func decodeStrict(r io.Reader, v any) error {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("data after the JSON value")
	}
	return nil
}

func (c *Control) putConfig(w http.ResponseWriter, r *http.Request) {
	var cfg Config
	if err := decodeStrict(http.MaxBytesReader(w, r.Body, maxConfigBytes), &cfg); err != nil {
		code := http.StatusBadRequest
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			code = http.StatusRequestEntityTooLarge
			err = fmt.Errorf("over the limit of %d bytes", maxConfigBytes)
		}
		http.Error(w, "config: "+err.Error(), code)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	compiled, err := compile(cfg)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if err := saveConfig(c.stateDir, cfg); err != nil {
		http.Error(w, "persisting config: "+err.Error(), http.StatusInternalServerError)
		return
	}
	c.p.store(compiled)
	c.p.log.Info("L7 proxy config applied", "revision", cfg.Revision, "policies", len(cfg.Policies), "ipcache", len(cfg.IPCache))
	w.WriteHeader(http.StatusNoContent)
}

func (c *Control) getConfig(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(c.p.Config())
}

// recordsLinger is how long the records stream gathers records after one
// before it sends them: one write (and one wake-up of the agent) carries
// the records of a few milliseconds under load, not one each (measured:
// docs/benchmarks.md, "Flows always on").
const recordsLinger = 5 * time.Millisecond

// records streams the records, in the binary form (RecordsBinary) when the
// client asks for it, else as NDJSON.
func (c *Control) records(w http.ResponseWriter, r *http.Request) {
	ch, cancel := c.p.Subscribe()
	defer cancel()
	if r.Header.Get("Accept") == RecordsBinary {
		var buf []byte
		stream(w, r, ch, recordsLinger, RecordsBinary, func(rec Record) error {
			buf = AppendRecord(buf[:0], &rec)
			_, err := w.Write(buf)
			return err
		})
		return
	}
	streamNDJSON(w, r, ch, recordsLinger)
}

// streamNDJSON writes what ch gives, one JSON line each, until the client
// goes or ch is closed. Each value is sent at once (linger 0), or with
// those that follow it within linger.
func streamNDJSON[T any](w http.ResponseWriter, r *http.Request, ch <-chan T, linger time.Duration) {
	enc := json.NewEncoder(w)
	stream(w, r, ch, linger, "application/x-ndjson", func(v T) error { return enc.Encode(v) })
}

// stream is streamNDJSON with write writing each value, in contentType.
func stream[T any](w http.ResponseWriter, r *http.Request, ch <-chan T, linger time.Duration, contentType string, write func(T) error) {
	w.Header().Set("Content-Type", contentType)
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	rc.Flush()
	timer := time.NewTimer(linger)
	timer.Stop()
	var flush <-chan time.Time // the pending flush's, nil when none is
	for {
		select {
		case <-r.Context().Done():
			return
		case v, ok := <-ch:
			if !ok || write(v) != nil {
				rc.Flush()
				return
			}
			if linger > 0 {
				if flush == nil {
					timer.Reset(linger)
					flush = timer.C
				}
				continue
			}
		case <-flush:
		}
		flush = nil
		if rc.Flush() != nil {
			return
		}
	}
}

// LearnSessionHeader names the follower's session in GET /v1/dns/learned;
// its acknowledgements carry it.
const LearnSessionHeader = "Filament-Learn-Session"

func (c *Control) learned(w http.ResponseWriter, r *http.Request) {
	ch, session, stop := c.p.learner.follow() // closed when another follower takes over
	defer stop()
	w.Header().Set(LearnSessionHeader, strconv.FormatUint(session, 10))
	streamNDJSON(w, r, ch, 0) // an answer waits for its addresses: no lingering
}

// Ack is the body of POST /v1/dns/ack.
type Ack struct {
	Session uint64 `json:"session"`
	Seq     uint64 `json:"seq"`
}

func (c *Control) ack(w http.ResponseWriter, r *http.Request) {
	var a Ack
	if err := decodeStrict(http.MaxBytesReader(w, r.Body, 4096), &a); err != nil {
		http.Error(w, "ack: "+err.Error(), http.StatusBadRequest)
		return
	}
	c.p.learner.ack(a.Session, a.Seq)
	w.WriteHeader(http.StatusNoContent)
}
