package agent_test

import (
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/kubectl-bridge/kubectl-bridge/pkg/agent"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/match"
	"github.com/kubectl-bridge/kubectl-bridge/pkg/tunnel"
)

// benchApp is a minimal HTTP app: a fixed small answer.
func benchApp(b *testing.B) string {
	return startHTTPApp(b, "app").addr
}

// ruleAgent starts an agent whose port "http" carries n stealing sessions with header rules
// x-dev=dev0…dev(n-1), all delivering to laptop; dev(n-1) is the youngest, so matching it scans
// every rule.
func ruleAgent(b *testing.B, n int, upstream, laptop string) *testAgent {
	static := agent.StaticSessions{}
	start := time.Now().Add(-time.Hour)
	for i := range n {
		id := fmt.Sprintf("dev%02d", i)
		s := ruleSpec(b, id, tunnel.ModeSteal, id, match.Flags{Header: []string{"x-dev=" + id}})
		s.StartTime = start.Add(time.Duration(i) * time.Second)
		static[id] = s
	}
	// Many sessions: do not queue their events (startAgent's channel would fill up).
	a := startAgent(b, static, upstream, upstream, func(c *agent.Config) { c.OnSessionEvent = nil })
	for i := range n {
		id := fmt.Sprintf("dev%02d", i)
		startCLI(b, a, id, "tok-"+id, laptop).waitState(b, tunnel.StateConnected)
	}
	waitSessions(b, a, n)
	return a
}

func benchRequests(b *testing.B, url string, header ...string) {
	tr := &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 1}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	req, _ := http.NewRequest("GET", url, nil)
	for i := 0; i < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %s", resp.Status)
		}
	}
}

// BenchmarkHTTPRouting measures one small request on a keep-alive connection: directly to the
// upstream, through the agent without rules (connection pass-through), unmatched through the HTTP
// router (to the upstream), matched (to a laptop through the tunnel), and a whole-port steal, with
// 1, 5 and 50 live rules. Allocations count both ends, as everything runs in this process.
func BenchmarkHTTPRouting(b *testing.B) {
	upstream, laptop := benchApp(b), benchApp(b)
	b.Run("direct", func(b *testing.B) { benchRequests(b, "http://"+upstream+"/") })
	plain := startAgent(b, agent.StaticSessions{}, upstream, upstream, nil)
	b.Run("pass-through-no-rules", func(b *testing.B) { benchRequests(b, "http://"+plain.Addr("http").String()+"/") })
	steal := startAgent(b, agent.StaticSessions{"s1": spec("s1", "tok-s1", tunnel.ModeSteal, "alice")}, upstream, upstream, nil)
	startCLI(b, steal, "s1", "tok-s1", laptop).waitState(b, tunnel.StateConnected)
	waitSessions(b, steal, 1)
	b.Run("whole-port-steal", func(b *testing.B) { benchRequests(b, "http://"+steal.Addr("http").String()+"/") })
	for _, n := range []int{1, 5, 50} {
		a := ruleAgent(b, n, upstream, laptop)
		url := "http://" + a.Addr("http").String() + "/"
		b.Run(fmt.Sprintf("unmatched/rules=%d", n), func(b *testing.B) { benchRequests(b, url, "X-Dev", "nobody") })
		b.Run(fmt.Sprintf("matched/rules=%d", n), func(b *testing.B) { benchRequests(b, url, "X-Dev", fmt.Sprintf("dev%02d", n-1)) })
	}
}
