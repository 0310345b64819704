package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Environment of child processes: the directory to delete if the child finds
// itself orphaned (the supervisor was SIGKILLed and could not clean up), and
// the supervisor's pid (a child can be orphaned before it first looks).
const (
	envCleanupDir    = "KNIT_TESTENV_CLEANUP_DIR"
	envSupervisorPID = "KNIT_TESTENV_SUPERVISOR_PID"
)

// watchParent calls onDeath once our parent is no longer parentPID. Polling
// getppid is used instead of PR_SET_PDEATHSIG, which fires when the parent
// *thread* exits (the Rust test harness may spawn us from a short-lived thread).
func watchParent(parentPID int, onDeath func()) {
	go func() {
		for ; ; time.Sleep(250 * time.Millisecond) {
			if os.Getppid() != parentPID {
				onDeath()
				return
			}
		}
	}()
}

// orphanGuard runs in child processes: when the supervisor disappears the
// child removes the supervisor's temp dir (if it owned one) and exits.
func orphanGuard() {
	supervisor, err := strconv.Atoi(os.Getenv(envSupervisorPID))
	if err != nil {
		supervisor = os.Getppid() // started by hand, not by the supervisor
	}
	watchParent(supervisor, func() {
		if dir := os.Getenv(envCleanupDir); dir != "" {
			_ = os.RemoveAll(dir)
		}
		os.Exit(3)
	})
}

// child is a component (kube-apiserver, kube-controller-manager) running as a
// child process of this same binary.
type child struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // exit status, valid after done
	// forwardErrors is set once the component is ready and cleared when it is
	// being stopped: start-up and shutdown produce harmless error lines (they
	// are still in the log file and in lastLines for failure reports).
	forwardErrors atomic.Bool
	tailMu        sync.Mutex
	tail          []string // last lines of output, for startup failure reports
}

// stderrLines decouples components from our stderr: if whoever started us
// pipes stderr and stops reading it, a blocking write would back-pressure into
// the component's own logging and hang the API server.
var stderrLines = make(chan string, 4096)

func init() {
	go func() {
		for line := range stderrLines {
			_, _ = os.Stderr.WriteString(line)
		}
	}()
}

// klogInfoOrWarning matches klog headers of info/warning lines ("I0722 ...").
var klogInfoOrWarning = regexp.MustCompile(`^[IW]\d{4} `)

// startChild runs `<self> <name> args...`. All output goes to <logPath>; only
// error lines after start-up (or everything, if verbose) are forwarded to our
// stderr.
func startChild(name string, args []string, logPath string, verbose bool, cleanupDir string) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		logFile.Close()
		return nil, err
	}
	c := &child{name: name, done: make(chan struct{})}
	c.cmd = exec.Command(self, append([]string{name}, args...)...)
	c.cmd.Stdin = nil
	c.cmd.Stdout, c.cmd.Stderr = pw, pw
	c.cmd.Env = append(os.Environ(), envCleanupDir+"="+cleanupDir, envSupervisorPID+"="+strconv.Itoa(os.Getpid()))
	// Own process group: a terminal's Ctrl-C reaches only the supervisor, which
	// then stops the components in order.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		logFile.Close()
		return nil, err
	}
	pw.Close()

	copied := make(chan struct{})
	go func() {
		defer close(copied)
		c.pump(pr, logFile, verbose)
	}()
	go func() {
		c.err = c.cmd.Wait()
		<-copied
		logFile.Close()
		close(c.done)
	}()
	return c, nil
}

func (c *child) pump(r io.ReadCloser, logFile io.Writer, verbose bool) {
	defer r.Close()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintln(logFile, line)
		c.tailMu.Lock()
		c.tail = append(c.tail, line)
		if len(c.tail) > 40 {
			c.tail = c.tail[len(c.tail)-40:]
		}
		c.tailMu.Unlock()
		if verbose || (c.forwardErrors.Load() && !klogInfoOrWarning.MatchString(line)) {
			select {
			case stderrLines <- "[" + c.name + "] " + line + "\n":
			default: // stderr is not keeping up: drop rather than stall the component
			}
		}
	}
}

// lastLines returns the most recent output, for error reports.
func (c *child) lastLines() string {
	c.tailMu.Lock()
	defer c.tailMu.Unlock()
	return strings.Join(c.tail, "\n")
}

// exited reports whether the process has already exited.
func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, then SIGKILL after grace, and waits for the exit.
func (c *child) stop(grace time.Duration) {
	c.forwardErrors.Store(false)
	if c.exited() {
		return
	}
	_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(grace):
		_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		<-c.done
	}
}
