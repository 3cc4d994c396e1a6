package cluster

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/kubectl-bridge/kubectl-bridge/hack/localkube/internal/pki"
)

// nodeIP returns the machine's primary IPv4 address: the source address of the default route,
// or else the first global IPv4 address of an interface that is up.
func nodeIP() (net.IP, error) {
	out, err := exec.Command("ip", "-4", "-o", "route", "get", "192.0.2.123").Output()
	if err == nil {
		f := strings.Fields(string(out))
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "src" {
				if ip := net.ParseIP(f[i+1]); ip != nil {
					return ip, nil
				}
			}
		}
	}
	ifaces, err := net.Interfaces()
	if err != nil {
		return nil, err
	}
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 || ifc.Name == CNIBridge {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil && ipn.IP.IsGlobalUnicast() {
				return ipn.IP, nil
			}
		}
	}
	return nil, fmt.Errorf("no IPv4 address found for the node (no default route and no global address)")
}

// writePKI generates every certificate and key of the cluster under l.pki().
func writePKI(l layout, ip net.IP) error {
	dir := l.pki()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	ca, caPair, err := pki.NewCA("localkube-ca")
	if err != nil {
		return err
	}
	if err := caPair.Write(dir, "ca"); err != nil {
		return err
	}
	loopback := net.ParseIP("127.0.0.1")
	leaves := map[string]pki.Leaf{
		"apiserver": {
			CommonName: "kube-apiserver", Server: true,
			DNSNames: []string{"localhost", NodeName, "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
			IPs:      []net.IP{loopback, ip, net.ParseIP(APIServiceIP)},
		},
		"apiserver-kubelet-client": {CommonName: "kube-apiserver-kubelet-client", Organization: []string{"system:masters"}, Client: true},
		"apiserver-etcd-client":    {CommonName: "kube-apiserver-etcd-client", Client: true},
		"etcd-server":              {CommonName: "etcd", Server: true, Client: true, DNSNames: []string{"localhost"}, IPs: []net.IP{loopback}},
		"kubelet-server":           {CommonName: NodeName, Server: true, DNSNames: []string{NodeName, "localhost"}, IPs: []net.IP{loopback, ip}},
		"admin":                    {CommonName: "kubernetes-admin", Organization: []string{"system:masters"}, Client: true},
		"controller-manager":       {CommonName: "system:kube-controller-manager", Client: true},
		"scheduler":                {CommonName: "system:kube-scheduler", Client: true},
		"kubelet":                  {CommonName: "system:node:" + NodeName, Organization: []string{"system:nodes"}, Client: true},
		"kube-proxy":               {CommonName: "system:kube-proxy", Client: true},
	}
	for name, leaf := range leaves {
		kp, err := ca.Issue(leaf)
		if err != nil {
			return err
		}
		if err := kp.Write(dir, name); err != nil {
			return err
		}
	}
	// The aggregation layer's front proxy has a CA of its own, as in kubeadm clusters.
	fpCA, fpPair, err := pki.NewCA("localkube-front-proxy-ca")
	if err != nil {
		return err
	}
	if err := fpPair.Write(dir, "front-proxy-ca"); err != nil {
		return err
	}
	fpClient, err := fpCA.Issue(pki.Leaf{CommonName: "front-proxy-client", Client: true})
	if err != nil {
		return err
	}
	if err := fpClient.Write(dir, "front-proxy-client"); err != nil {
		return err
	}
	key, pub, err := pki.NewKey()
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "sa.key"), key, 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "sa.pub"), pub, 0o644)
}

// writeKubeconfig writes a self-contained kubeconfig authenticating with the named client pair.
func writeKubeconfig(l layout, name, pair string) error {
	ca, err := os.ReadFile(l.pkiFile("ca.crt"))
	if err != nil {
		return err
	}
	cert, err := os.ReadFile(l.pkiFile(pair + ".crt"))
	if err != nil {
		return err
	}
	key, err := os.ReadFile(l.pkiFile(pair + ".key"))
	if err != nil {
		return err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["localkube"] = &clientcmdapi.Cluster{
		Server:                   fmt.Sprintf("https://127.0.0.1:%d", APIServerPort),
		CertificateAuthorityData: ca,
	}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{ClientCertificateData: cert, ClientKeyData: key}
	cfg.Contexts["localkube"] = &clientcmdapi.Context{Cluster: "localkube", AuthInfo: name, Namespace: "default"}
	cfg.CurrentContext = "localkube"
	return clientcmd.WriteToFile(*cfg, l.kubeconfig(name))
}

func writeFile(path, content string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(content), 0o644)
}

// writeConfigs writes the kubeconfigs and every component's configuration.
func writeConfigs(l layout, ip net.IP) error {
	for name, pair := range map[string]string{
		"admin": "admin", "controller-manager": "controller-manager", "scheduler": "scheduler",
		"kubelet": "kubelet", "kube-proxy": "kube-proxy",
	} {
		if err := writeKubeconfig(l, name, pair); err != nil {
			return fmt.Errorf("kubeconfig %s: %w", name, err)
		}
	}

	containerd := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = %q

[plugins."io.containerd.internal.v1.opt"]
  path = %q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  restrict_oom_score_adj = true
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = %q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %q
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = %q
`, l.containerdRoot(), containerdState, ContainerdSocket, l.path("containerd", "opt"), PauseImage,
		runcRoot, l.cniConfDir(), l.certsD())
	if err := writeFile(l.containerdConfig(), containerd); err != nil {
		return err
	}

	// The loopback registry stands in for ghcr.io: pulls of ghcr.io/... are served from it.
	// Every other registry host (_default) points at it too, and none falls back to its real
	// server: no pull ever leaves this machine.
	// (containerd 1.6 ignores a hosts.toml without a host table and falls back to the real host.)
	local := fmt.Sprintf("server = \"http://%[1]s\"\n\n[host.\"http://%[1]s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", RegistryAddr)
	for _, host := range []string{"ghcr.io", "_default"} {
		if err := writeFile(filepath.Join(l.certsD(), host, "hosts.toml"), local); err != nil {
			return err
		}
	}

	cni := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": %q,
  "plugins": [
    {
      "type": "bridge",
      "bridge": %q,
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": %q}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": %q
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`, CNINetwork, CNIBridge, PodCIDR, cniIPAMDir)
	if err := writeFile(filepath.Join(l.cniConfDir(), "10-localkube.conflist"), cni); err != nil {
		return err
	}

	kubelet := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: %q
authorization:
  mode: Webhook
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://%s
clusterDNS: [%q]
clusterDomain: cluster.local
# No upstream DNS for pods: nothing outside this machine is reachable or wanted.
resolvConf: ""
tlsCertFile: %q
tlsPrivateKeyFile: %q
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
staticPodPath: ""
podLogsDir: %q
volumePluginDir: %q
rotateCertificates: false
serverTLSBootstrap: false
# Images are imported, never re-pullable here: never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "50Mi"
  nodefs.available: "1%%"
  nodefs.inodesFree: "1%%"
  imagefs.available: "1%%"
evictionPressureTransitionPeriod: 10s
maxPods: 110
serializeImagePulls: false
`, l.pkiFile("ca.crt"), ContainerdSocket, DNSServiceIP, l.pkiFile("kubelet-server.crt"), l.pkiFile("kubelet-server.key"),
		l.path("pod-logs"), l.path("kubelet-plugins"))
	if err := writeFile(l.path("kubelet-config.yaml"), kubelet); err != nil {
		return err
	}

	proxy := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %q
hostnameOverride: %q
mode: iptables
clusterCIDR: %q
bindAddress: 0.0.0.0
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack:
  # Leave the machine's conntrack sysctls alone.
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`, l.kubeconfig("kube-proxy"), NodeName, ClusterCIDR)
	return writeFile(l.path("kube-proxy-config.yaml"), proxy)
}

// componentArgs returns the argv (after the binary) of each component.
func componentArgs(l layout, ip net.IP) map[string][]string {
	p := l.pkiFile
	return map[string][]string{
		"etcd": {"etcd",
			"--data-dir=" + l.etcdData(),
			"--cert-file=" + p("etcd-server.crt"), "--key-file=" + p("etcd-server.key"),
			"--trusted-ca-file=" + p("ca.crt"),
		},
		"kube-apiserver": {"kube-apiserver",
			"--advertise-address=" + ip.String(),
			"--bind-address=0.0.0.0",
			fmt.Sprintf("--secure-port=%d", APIServerPort),
			"--etcd-servers=https://127.0.0.1:2379",
			"--etcd-cafile=" + p("ca.crt"), "--etcd-certfile=" + p("apiserver-etcd-client.crt"), "--etcd-keyfile=" + p("apiserver-etcd-client.key"),
			"--client-ca-file=" + p("ca.crt"),
			"--tls-cert-file=" + p("apiserver.crt"), "--tls-private-key-file=" + p("apiserver.key"),
			"--kubelet-client-certificate=" + p("apiserver-kubelet-client.crt"), "--kubelet-client-key=" + p("apiserver-kubelet-client.key"),
			"--kubelet-certificate-authority=" + p("ca.crt"),
			"--kubelet-preferred-address-types=InternalIP,Hostname",
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--service-account-key-file=" + p("sa.pub"),
			"--service-account-signing-key-file=" + p("sa.key"),
			"--service-cluster-ip-range=" + ServiceCIDR,
			"--requestheader-client-ca-file=" + p("front-proxy-ca.crt"),
			"--requestheader-allowed-names=front-proxy-client",
			"--requestheader-username-headers=X-Remote-User",
			"--requestheader-group-headers=X-Remote-Group",
			"--requestheader-extra-headers-prefix=X-Remote-Extra-",
			"--proxy-client-cert-file=" + p("front-proxy-client.crt"),
			"--proxy-client-key-file=" + p("front-proxy-client.key"),
			"--authorization-mode=Node,RBAC",
			"--enable-admission-plugins=NodeRestriction",
			"--allow-privileged=true",
			"--profiling=false",
			"--event-ttl=1h",
		},
		"kube-controller-manager": {"kube-controller-manager",
			"--kubeconfig=" + l.kubeconfig("controller-manager"),
			"--authentication-kubeconfig=" + l.kubeconfig("controller-manager"),
			"--authorization-kubeconfig=" + l.kubeconfig("controller-manager"),
			"--bind-address=127.0.0.1",
			"--leader-elect=false",
			"--use-service-account-credentials=true",
			"--service-account-private-key-file=" + p("sa.key"),
			"--root-ca-file=" + p("ca.crt"),
			"--cluster-signing-cert-file=" + p("ca.crt"), "--cluster-signing-key-file=" + p("ca.key"),
			"--allocate-node-cidrs=true",
			"--cluster-cidr=" + ClusterCIDR,
			"--node-cidr-mask-size=24",
			"--service-cluster-ip-range=" + ServiceCIDR,
			"--profiling=false",
		},
		"kube-scheduler": {"kube-scheduler",
			"--kubeconfig=" + l.kubeconfig("scheduler"),
			"--authentication-kubeconfig=" + l.kubeconfig("scheduler"),
			"--authorization-kubeconfig=" + l.kubeconfig("scheduler"),
			"--bind-address=127.0.0.1",
			"--leader-elect=false",
			"--profiling=false",
		},
		"kubelet": {"kubelet",
			"--config=" + l.path("kubelet-config.yaml"),
			"--kubeconfig=" + l.kubeconfig("kubelet"),
			"--root-dir=" + l.kubeletRoot(),
			"--cert-dir=" + l.path("kubelet-pki"),
			"--hostname-override=" + NodeName,
			"--node-ip=" + ip.String(),
		},
		"kube-proxy": {"kube-proxy", "--config=" + l.path("kube-proxy-config.yaml")},
	}
}
