// A plugin written as one for Kube Diagnoser would be: Go's standard library only, the
// Abnormal's status.context decoded with Kube Diagnoser's field types for the keys its built-ins
// wrote (the struct shapes of its pkg/types, declared here in our own words). kdiag's tests run it
// after kdiag's built-ins to prove that their output decodes as Kube Diagnoser's did.
//
// It answers 200 with status.context.goPluginDecoded saying what it decoded, or 500 with the
// decoding error, which kdiag records on the step.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"time"
)

// fileStatus has the fields and Go types of Kube Diagnoser's types.FileStatus.
type fileStatus struct {
	UID       uint32    `json:"uid"`
	GID       uint32    `json:"gid"`
	Inode     uint64    `json:"inode"`
	Links     uint64    `json:"links"`
	Mode      string    `json:"mode"`
	ModTime   time.Time `json:"modTime"`
	DiskUsage int       `json:"diskUsage"`
	Path      string    `json:"path"`
}

// fileStatusList has the shape of types.FileStatusList: a file's status, and its entries'.
type fileStatusList struct {
	fileStatus
	FileStatuses []fileStatus `json:"fileStatuses,omitempty"`
}

// process has the fields and Go types of Kube Diagnoser's types.Process (memoryInfo left out:
// gopsutil's struct is not in the standard library, and encoding/json skips fields not declared).
type process struct {
	PID        int32     `json:"pid"`
	PPID       int32     `json:"ppid"`
	TGID       int32     `json:"tgid"`
	Command    []string  `json:"command"`
	Status     string    `json:"status"`
	CreateTime time.Time `json:"createTime"`
	CPUPercent float64   `json:"cpuPercent"`
	Nice       int32     `json:"nice"`
}

type context struct {
	ProcessInformation    []process        `json:"processInformation"`
	FileStatusInformation []fileStatusList `json:"fileStatusInformation"`
}

func handle(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var typed struct {
		Status struct {
			Context context `json:"context"`
		} `json:"status"`
	}
	if err := json.Unmarshal(body, &typed); err != nil {
		http.Error(w, "decoding status.context with Kube Diagnoser's types: "+err.Error(), http.StatusInternalServerError)
		return
	}
	c := typed.Status.Context
	entries := 0
	for _, f := range c.FileStatusInformation {
		entries += len(f.FileStatuses)
	}
	oldest := ""
	for _, p := range c.ProcessInformation {
		if !p.CreateTime.IsZero() && (oldest == "" || p.CreateTime.Format(time.RFC3339) < oldest) {
			oldest = p.CreateTime.Format(time.RFC3339)
		}
	}
	// The reply carries the status alone, as Kube Diagnoser's plugins could.
	reply := map[string]interface{}{
		"status": map[string]interface{}{
			"context": map[string]interface{}{
				"goPluginDecoded": map[string]interface{}{
					"processes":     len(c.ProcessInformation),
					"oldestProcess": oldest,
					"files":         len(c.FileStatusInformation),
					"fileStatuses":  entries,
				},
			},
		},
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(reply)
}

func main() {
	portFile := flag.String("port-file", "", "where to write the port it listens on")
	flag.Parse()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := os.WriteFile(*portFile, []byte(fmt.Sprint(port)), 0o644); err != nil {
		log.Fatal(err)
	}
	log.Fatal(http.Serve(l, http.HandlerFunc(handle)))
}
