package cluster

import "path/filepath"

// layout names every path under the state dir.
type layout struct {
	dir string
}

func (l layout) path(parts ...string) string {
	return filepath.Join(append([]string{l.dir}, parts...)...)
}

func (l layout) pki() string                { return l.path("pki") }
func (l layout) pkiFile(name string) string { return l.path("pki", name) }
func (l layout) logs() string               { return l.path("logs") }
func (l layout) log(name string) string     { return l.path("logs", name+".log") }
func (l layout) etcdData() string           { return l.path("etcd") }
func (l layout) kubeletRoot() string        { return l.path("kubelet") }
func (l layout) containerdRoot() string     { return l.path("containerd", "root") }
func (l layout) containerdConfig() string   { return l.path("containerd", "config.toml") }
func (l layout) certsD() string             { return l.path("containerd", "certs.d") }
func (l layout) cniConfDir() string         { return l.path("cni", "net.d") }
func (l layout) kubeconfig(name string) string {
	return l.path(name + ".kubeconfig")
}
func (l layout) admin() string { return l.kubeconfig("admin") }

// Directories outside the state dir, all under RunDir so that their paths stay short.
var (
	containerdState = filepath.Join(RunDir, "containerd")
	runcRoot        = filepath.Join(RunDir, "runc")
	cniIPAMDir      = filepath.Join(RunDir, "cni-ipam")
)
