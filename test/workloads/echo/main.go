// Command echo is the end-to-end test workload: an HTTP server that reports which pod answered and
// what it received (HTTP/1.1, h2c and WebSocket), and a client used from inside the cluster.
//
//	echo serve [--listen :8080] [--extra-listen :8081]
//	echo get [--count N] [--new-conn] [-H Name=Value]... URL
//
// The same static binary serves both roles so the tests need a single image.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
)

// Reply is what the server answers to every request except /bulk and /ws.
type Reply struct {
	Pod     string              `json:"pod"`
	Method  string              `json:"method"`
	Path    string              `json:"path"`
	Query   string              `json:"query,omitempty"`
	Proto   string              `json:"proto"`
	Host    string              `json:"host"`
	Headers map[string][]string `json:"headers"`
	Body    string              `json:"body,omitempty"`
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: echo serve|get ...")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "get":
		err = get(os.Args[2:])
	case "hold":
		err = hold(os.Args[2:])
	case "grpc":
		err = grpcGet(os.Args[2:])
	default:
		err = fmt.Errorf("unknown subcommand %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
}

func podName() string {
	if p := os.Getenv("POD_NAME"); p != "" {
		return p
	}
	h, _ := os.Hostname()
	return h
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	listen := fs.String("listen", ":8080", "address of the HTTP listener")
	extra := fs.String("extra-listen", "", "optional second HTTP listener (for two-port Services)")
	useTLS := fs.Bool("tls", false, "serve HTTPS (a self-signed certificate made at start) instead of plain HTTP/h2c")
	drain := fs.Duration("drain", 2*time.Second, "on SIGTERM, keep serving this long (failing /healthz) before shutting down, as a well-behaved Kubernetes app does while endpoints converge")
	_ = fs.Parse(args)

	pod := podName()
	upgrader := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	mux := http.NewServeMux()
	var draining atomic.Bool
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if draining.Load() {
			http.Error(w, "draining", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok")
	})
	mux.HandleFunc("/bulk", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.ParseInt(r.URL.Query().Get("bytes"), 10, 64)
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		buf := make([]byte, 256<<10)
		_, _ = rand.Read(buf)
		for n > 0 {
			chunk := int64(len(buf))
			if n < chunk {
				chunk = n
			}
			if _, err := w.Write(buf[:chunk]); err != nil {
				return
			}
			n -= chunk
		}
	})
	// /sink reads and counts the request body: the upload direction of a bulk transfer.
	mux.HandleFunc("/sink", func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(Reply{Pod: pod, Method: r.Method, Path: r.URL.Path, Body: strconv.FormatInt(n, 10)})
	})
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			mt, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if err := c.WriteMessage(mt, []byte(pod+": "+string(msg))); err != nil {
				return
			}
		}
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(Reply{
			Pod: pod, Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Proto: r.Proto,
			Host: r.Host, Headers: r.Header, Body: string(body),
		})
	})
	// gRPC (the standard health service) on the same port, over h2c: every call names its pod in
	// the x-served-by response header.
	grpcSrv := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		_ = grpc.SetHeader(ctx, metadata.Pairs("x-served-by", pod))
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(grpcSrv, health.NewServer())
	// Every answer names its pod, bulk downloads included.
	servedBy := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			grpcSrv.ServeHTTP(w, r)
			return
		}
		w.Header().Set("X-Served-By", pod)
		mux.ServeHTTP(w, r)
	})
	handler := h2c.NewHandler(servedBy, &http2.Server{})

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	addrs := []string{*listen}
	if *extra != "" {
		addrs = append(addrs, *extra)
	}
	errc := make(chan error, len(addrs))
	var servers []*http.Server
	for _, a := range addrs {
		srv := &http.Server{Addr: a, Handler: handler, ReadHeaderTimeout: 10 * time.Second}
		servers = append(servers, srv)
		if *useTLS {
			cert, err := selfSigned(pod)
			if err != nil {
				return err
			}
			srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
			go func() { errc <- srv.ListenAndServeTLS("", "") }()
		} else {
			go func() { errc <- srv.ListenAndServe() }()
		}
		fmt.Printf("echo: pod %s serving on %s\n", pod, a)
	}
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	draining.Store(true)
	time.Sleep(*drain)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, s := range servers {
		_ = s.Shutdown(shutdownCtx)
	}
	return nil
}

// Summary is what `echo get` prints: one JSON object for the whole run.
type Summary struct {
	OK      int            `json:"ok"`
	Failed  int            `json:"failed"`
	Pods    map[string]int `json:"pods"`
	Errors  []string       `json:"errors,omitempty"`
	Last    *Reply         `json:"last,omitempty"`
	Elapsed string         `json:"elapsed"`
	// P50Ms and P99Ms are the latencies of the successful requests, in milliseconds.
	P50Ms float64 `json:"p50ms"`
	P99Ms float64 `json:"p99ms"`
	// Bytes is the body bytes received; MBps the rate over the whole run (with --discard).
	Bytes int64   `json:"bytes"`
	MBps  float64 `json:"mbps"`
	// UntilPodUnixNano is when the --until-pod answer was sent (the request's start; this
	// client's clock, which on one node is the test's clock too).
	UntilPodUnixNano int64 `json:"untilPodUnixNano,omitempty"`
	// LongestOutageMs is the longest stretch during which every request failed: from the start
	// of the first failed request of a run to the start of the next successful one (or the end).
	LongestOutageMs float64 `json:"longestOutageMs"`
	// Outages are those stretches as [start, end] Unix nanoseconds (at most 100), so that a test
	// running the client in pieces can join an outage that spans two of them; StartedFailing and
	// EndedFailing say whether the first and last request failed.
	Outages        [][2]int64 `json:"outages,omitempty"`
	StartedFailing bool       `json:"startedFailing,omitempty"`
	EndedFailing   bool       `json:"endedFailing,omitempty"`
}

type headerFlags []string

func (h *headerFlags) String() string     { return strings.Join(*h, ",") }
func (h *headerFlags) Set(v string) error { *h = append(*h, v); return nil }

func get(args []string) error {
	fs := flag.NewFlagSet("get", flag.ExitOnError)
	count := fs.Int("count", 1, "number of requests")
	newConn := fs.Bool("new-conn", false, "open a new TCP connection for every request")
	timeout := fs.Duration("timeout", 5*time.Second, "timeout of each request")
	interval := fs.Duration("interval", 0, "pause between requests")
	discard := fs.Bool("discard", false, "count the body bytes instead of parsing the answer (bulk downloads)")
	h2c := fs.Bool("h2c", false, "speak HTTP/2 with prior knowledge (h2c, as gRPC does), all requests on one connection")
	insecure := fs.Bool("insecure", false, "accept any TLS certificate (https:// URLs)")
	ws := fs.Bool("ws", false, "open a WebSocket to the URL (ws://…), send one message per request and read the echo")
	method := fs.String("X", http.MethodGet, "request method")
	upload := fs.Int64("upload", 0, "send a request body of this many bytes (POST unless -X says otherwise) and count them as the bytes moved")
	duration := fs.Duration("duration", 0, "send requests for this long instead of --count times")
	untilPod := fs.String("until-pod", "", "stop at the first answer from this pod, reporting when its request was sent (measures when a switch takes effect)")
	var headers, alt headerFlags
	fs.Var(&headers, "H", "request header Name=Value (repeatable)")
	fs.Var(&alt, "alt-H", "header Name=Value added to every other request only (the 1st, 3rd, …), to mix matching and non-matching requests on one keep-alive connection")
	_ = fs.Parse(args)
	if fs.NArg() != 1 {
		return errors.New("get needs exactly one URL")
	}
	url := fs.Arg(0)
	tr := &http.Transport{DialContext: (&net.Dialer{Timeout: *timeout}).DialContext, DisableKeepAlives: *newConn,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: *insecure}} //nolint:gosec // test client of self-signed test servers
	client := &http.Client{Transport: tr, Timeout: *timeout}
	if *h2c {
		client.Transport = &http2.Transport{AllowHTTP: true,
			DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
				return (&net.Dialer{Timeout: *timeout}).DialContext(ctx, network, addr)
			}}
	}
	if *ws {
		return wsGet(url, headers, *count, *timeout)
	}
	sum := Summary{Pods: map[string]int{}}
	var lat []time.Duration
	start := time.Now()
	var failingSince time.Time
	outage := func(until time.Time) {
		if !failingSince.IsZero() {
			sum.LongestOutageMs = max(sum.LongestOutageMs, float64(until.Sub(failingSince).Microseconds())/1000)
			if len(sum.Outages) < 100 {
				sum.Outages = append(sum.Outages, [2]int64{failingSince.UnixNano(), until.UnixNano()})
			}
			failingSince = time.Time{}
		}
	}
	for i := 0; *duration > 0 || i < *count; i++ {
		if *duration > 0 && time.Since(start) >= *duration {
			break
		}
		if i > 0 && *interval > 0 {
			time.Sleep(*interval)
		}
		t0 := time.Now()
		hs := headers
		if i%2 == 0 {
			hs = append(slices.Clone(headers), alt...)
		}
		m := *method
		if *upload > 0 && m == http.MethodGet {
			m = http.MethodPost
		}
		rep, n, err := once(client, m, url, hs, *discard, *upload)
		sum.Bytes += n
		if err != nil {
			sum.Failed++
			if failingSince.IsZero() {
				failingSince = t0
			}
			sum.StartedFailing = sum.StartedFailing || i == 0
			if len(sum.Errors) < 10 {
				// When, on the node's clock, so that a test can tell which of its phases failed.
				sum.Errors = append(sum.Errors, t0.UTC().Format("15:04:05.000")+" "+err.Error())
			}
			continue
		}
		outage(t0)
		lat = append(lat, time.Since(t0))
		sum.Bytes += *upload // sent whole: the server answered
		sum.OK++
		sum.Pods[rep.Pod]++
		sum.Last = rep
		if *untilPod != "" && rep.Pod == *untilPod {
			sum.UntilPodUnixNano = t0.UnixNano()
			break
		}
	}
	sum.EndedFailing = !failingSince.IsZero()
	outage(time.Now())
	elapsed := time.Since(start)
	sum.Elapsed = elapsed.String()
	if len(lat) > 0 {
		slices.Sort(lat)
		ms := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))].Microseconds()) / 1000 }
		sum.P50Ms, sum.P99Ms = ms(0.50), ms(0.99)
	}
	sum.MBps = float64(sum.Bytes) / 1e6 / elapsed.Seconds()
	return json.NewEncoder(os.Stdout).Encode(sum)
}

func once(client *http.Client, method, url string, headers []string, discard bool, upload int64) (*Reply, int64, error) {
	var reqBody io.Reader
	if upload > 0 {
		reqBody = io.LimitReader(repeatReader{}, upload)
	}
	req, err := http.NewRequest(method, url, reqBody)
	if err != nil {
		return nil, 0, err
	}
	req.ContentLength = upload // NewRequest cannot tell a LimitReader's length
	for _, h := range headers {
		k, v, ok := strings.Cut(h, "=")
		if !ok {
			return nil, 0, fmt.Errorf("header %q is not Name=Value", h)
		}
		req.Header.Add(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	if discard && resp.StatusCode == http.StatusOK {
		n, err := io.Copy(io.Discard, resp.Body)
		return &Reply{Pod: resp.Header.Get("X-Served-By")}, n, err
	}
	body, err := io.ReadAll(resp.Body)
	n := int64(len(body))
	if err != nil {
		return nil, n, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, n, fmt.Errorf("status %d: %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	var rep Reply
	if err := json.Unmarshal(body, &rep); err != nil {
		// Not our echo server (e.g. a developer's local app answering a stolen request): report the body.
		return &Reply{Pod: "(non-echo) " + strings.TrimSpace(string(body))}, n, nil
	}
	return &rep, n, nil
}

// wsGet opens one WebSocket per request, sends "hi" and reports which pod echoed it.
func wsGet(url string, headers []string, count int, timeout time.Duration) error {
	sum := Summary{Pods: map[string]int{}}
	h := http.Header{}
	for _, kv := range headers {
		k, v, _ := strings.Cut(kv, "=")
		h.Add(k, v)
	}
	d := websocket.Dialer{HandshakeTimeout: timeout}
	for i := 0; i < count; i++ {
		c, _, err := d.Dial(url, h)
		if err == nil {
			err = c.WriteMessage(websocket.TextMessage, []byte("hi"))
		}
		var msg []byte
		if err == nil {
			_ = c.SetReadDeadline(time.Now().Add(timeout))
			_, msg, err = c.ReadMessage()
		}
		if c != nil {
			_ = c.Close()
		}
		if err != nil {
			sum.Failed++
			sum.Errors = append(sum.Errors, err.Error())
			continue
		}
		sum.OK++
		who, _, _ := strings.Cut(string(msg), ": ")
		sum.Pods[who]++
	}
	return json.NewEncoder(os.Stdout).Encode(sum)
}

// selfSigned makes a throwaway certificate for the TLS pass-through tests.
func selfSigned(name string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), DNSNames: []string{name}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// hold opens --conns keep-alive connections to URL, makes one request on each, keeps them all
// open for --duration, and reports how many were established: load for measuring what many
// concurrent connections cost a proxy.
func hold(args []string) error {
	fs := flag.NewFlagSet("hold", flag.ExitOnError)
	conns := fs.Int("conns", 1000, "connections to hold")
	duration := fs.Duration("duration", 10*time.Second, "how long to hold them")
	_ = fs.Parse(args)
	if fs.NArg() != 1 {
		return errors.New("hold needs exactly one URL")
	}
	url := fs.Arg(0)
	sum := Summary{Pods: map[string]int{}}
	var open []*http.Client
	start := time.Now()
	for i := 0; i < *conns; i++ {
		// One client per connection: each keeps its own idle connection open.
		c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}, Timeout: 10 * time.Second}
		rep, _, err := once(c, http.MethodGet, url, nil, false, 0)
		if err != nil {
			sum.Failed++
			if len(sum.Errors) < 10 {
				sum.Errors = append(sum.Errors, err.Error())
			}
			continue
		}
		sum.OK++
		sum.Pods[rep.Pod]++
		open = append(open, c)
	}
	fmt.Fprintf(os.Stderr, "holding %d connections\n", len(open))
	time.Sleep(*duration)
	for _, c := range open {
		c.CloseIdleConnections()
	}
	sum.Elapsed = time.Since(start).String()
	return json.NewEncoder(os.Stdout).Encode(sum)
}

// grpcGet makes --count gRPC health checks to ADDR (host:port, h2c) with -H metadata and reports
// which pod answered each (its x-served-by header).
func grpcGet(args []string) error {
	fs := flag.NewFlagSet("grpc", flag.ExitOnError)
	count := fs.Int("count", 1, "number of calls, on one connection")
	var headers headerFlags
	fs.Var(&headers, "H", "request metadata Name=Value (repeatable)")
	_ = fs.Parse(args)
	if fs.NArg() != 1 {
		return errors.New("grpc needs exactly one HOST:PORT")
	}
	conn, err := grpc.NewClient(fs.Arg(0), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)
	md := metadata.MD{}
	for _, h := range headers {
		k, v, _ := strings.Cut(h, "=")
		md.Append(k, v)
	}
	sum := Summary{Pods: map[string]int{}}
	for i := 0; i < *count; i++ {
		ctx, cancel := context.WithTimeout(metadata.NewOutgoingContext(context.Background(), md), 5*time.Second)
		var header metadata.MD
		_, err := client.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Header(&header))
		cancel()
		if err != nil {
			sum.Failed++
			sum.Errors = append(sum.Errors, err.Error())
			continue
		}
		sum.OK++
		sum.Pods[strings.Join(header.Get("x-served-by"), ",")]++
	}
	return json.NewEncoder(os.Stdout).Encode(sum)
}

// repeatReader is an endless source of upload bytes that costs no allocation or randomness.
type repeatReader struct{}

func (repeatReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(i)
	}
	return len(p), nil
}
