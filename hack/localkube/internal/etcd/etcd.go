// Package etcd runs an embedded etcd server for the single-node cluster.
package etcd

import (
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/server/v3/embed"
)

// NewCommand returns the `localkube etcd` command: one member, TLS with client-certificate
// authentication on loopback only.
func NewCommand() *cobra.Command {
	var dataDir, certFile, keyFile, caFile, clientURL, peerURL string
	cmd := &cobra.Command{
		Use:           "etcd",
		Short:         "Run an embedded single-member etcd",
		SilenceUsage:  true,
		SilenceErrors: false,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg := embed.NewConfig()
			cfg.Name = "localkube"
			cfg.Dir = dataDir
			cfg.Logger = "zap"
			cfg.LogOutputs = []string{"stderr"}
			cu, err := url.Parse(clientURL)
			if err != nil {
				return fmt.Errorf("parse client url: %w", err)
			}
			pu, err := url.Parse(peerURL)
			if err != nil {
				return fmt.Errorf("parse peer url: %w", err)
			}
			cfg.ListenClientUrls = []url.URL{*cu}
			cfg.AdvertiseClientUrls = []url.URL{*cu}
			cfg.ListenPeerUrls = []url.URL{*pu}
			cfg.AdvertisePeerUrls = []url.URL{*pu}
			cfg.InitialCluster = cfg.Name + "=" + pu.String()
			cfg.ClientTLSInfo.CertFile = certFile
			cfg.ClientTLSInfo.KeyFile = keyFile
			cfg.ClientTLSInfo.TrustedCAFile = caFile
			cfg.ClientTLSInfo.ClientCertAuth = true
			// Small test cluster: keep the backend and snapshots small.
			cfg.QuotaBackendBytes = 2 << 30
			cfg.SnapshotCount = 10000
			cfg.AutoCompactionMode = "periodic"
			cfg.AutoCompactionRetention = "5m"

			srv, err := embed.StartEtcd(cfg)
			if err != nil {
				return fmt.Errorf("start etcd: %w", err)
			}
			defer srv.Close()
			select {
			case <-srv.Server.ReadyNotify():
			case <-time.After(60 * time.Second):
				return fmt.Errorf("etcd did not become ready within 60s")
			}
			sig := make(chan os.Signal, 1)
			signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
			select {
			case err := <-srv.Err():
				return fmt.Errorf("etcd: %w", err)
			case <-sig:
				return nil
			}
		},
	}
	f := cmd.Flags()
	f.StringVar(&dataDir, "data-dir", dataDir, "etcd data directory")
	f.StringVar(&certFile, "cert-file", certFile, "server certificate")
	f.StringVar(&keyFile, "key-file", keyFile, "server key")
	f.StringVar(&caFile, "trusted-ca-file", caFile, "CA for client certificates")
	f.StringVar(&clientURL, "listen-client-url", "https://127.0.0.1:2379", "client URL")
	f.StringVar(&peerURL, "listen-peer-url", "http://127.0.0.1:2380", "peer URL")
	return cmd
}
