module github.com/kubectl-bridge/kubectl-bridge/hack/localkube/pause

go 1.24.0
