// Command fileserver serves a directory on a loopback port, so hack/verify-krew.sh
// can let krew download release archives offline, exactly as it would from GitHub.
// It writes its base URL to the file named by -url-file and serves until killed.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
)

func main() {
	dir := flag.String("dir", ".", "directory to serve")
	urlFile := flag.String("url-file", "", "file to write the base URL to (http://127.0.0.1:PORT)")
	flag.Parse()

	// Port 0: the verify scripts of several clones may run at once.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatalf("listen: %v", err)
	}
	url := fmt.Sprintf("http://%s", ln.Addr())
	if *urlFile != "" {
		if err := os.WriteFile(*urlFile, []byte(url+"\n"), 0o644); err != nil {
			log.Fatalf("write %s: %v", *urlFile, err)
		}
	}
	log.Fatal(http.Serve(ln, http.FileServer(http.Dir(*dir))))
}
