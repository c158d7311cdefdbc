//! What an exit code means, and which log line explains a crash.

use kdiag_collectors::pod_detail::LogLine;

/// The meaning of a container's exit code, in words.
pub fn meaning(code: i32) -> String {
    match code {
        0 => "exited successfully (0)".into(),
        1 => "a generic error (1): the program reported a failure".into(),
        2 => "a usage error (2): wrong arguments, or a shell builtin misused".into(),
        126 => "command found but not executable (126): a permission or format problem".into(),
        127 => "command not found (127)".into(),
        128 => "the runtime could not start the process (128)".into(),
        130 => "interrupted (130 = SIGINT)".into(),
        134 => "aborted (134 = SIGABRT): an assertion failed or the program called abort()".into(),
        135 => "a bus error (135 = SIGBUS)".into(),
        136 => "an arithmetic error (136 = SIGFPE)".into(),
        137 => "killed (137 = SIGKILL): by the OOM killer, by the kubelet after a failed liveness probe or grace period, or by kill -9".into(),
        139 => "a segmentation fault (139 = SIGSEGV): the program accessed invalid memory".into(),
        141 => "a broken pipe (141 = SIGPIPE)".into(),
        143 => "terminated (143 = SIGTERM): stopped by the kubelet or another process".into(),
        255 => "exit status 255: often an exit(-1) or an ssh/remote error".into(),
        c if c > 128 && c < 160 => format!("killed by signal {} ({c})", c - 128),
        c => format!("an application-specific error ({c})"),
    }
}

/// What the next step is for an exit code, when the code alone says it.
pub fn suggestion(code: i32) -> Option<&'static str> {
    match code {
        0 => Some(
            "The container completed, but restartPolicy Always restarts it: a long-running container must not exit; run one-off work as a Job, or fix the command so it keeps running.",
        ),
        126 => Some(
            "The command exists but cannot be executed: make it executable in the image (chmod +x) and check it is built for the node's CPU architecture.",
        ),
        127 => Some(
            "The command (or one a script calls) is not in the image: check the spelling in command/args, the image's PATH, and that the image contains the program (run the image with a shell to look).",
        ),
        137 => Some(
            "Something killed the process with SIGKILL: look for an OOM kill (kernel log), a failed liveness probe (Unhealthy events) or a stop past the grace period.",
        ),
        139 => Some(
            "The program crashed with a segmentation fault: a bug or a native library built for another platform; get a core dump or run it with debugging outside the cluster.",
        ),
        143 => Some(
            "The process got SIGTERM: something stopped it (the kubelet, a failing liveness probe, a preStop hook, or the program's own supervisor).",
        ),
        _ => None,
    }
}

/// A log line that says why, and what kind of problem it shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Hint {
    pub line: LogLine,
    /// The problem in a few words, such as "a missing file".
    pub problem: &'static str,
    /// What to do about it.
    pub suggestion: &'static str,
}

/// Patterns, most telling first: (needles, problem, suggestion).
const PATTERNS: &[(&[&str], &str, &str)] = &[
    (
        &[
            "command not found",
            ": not found",
            "executable file not found",
        ],
        "a command that does not exist",
        "A command the container runs (or a script calls) is not in the image: check its spelling and the image's PATH, or use an image that contains it.",
    ),
    (
        &[
            "no such file or directory",
            "filenotfounderror",
            "enoent",
            "cannot find the file",
        ],
        "a missing file",
        "Provide the file the log names: mount the ConfigMap, Secret or volume that should hold it, or fix the path in the command or configuration.",
    ),
    (
        &["connection refused", "econnrefused"],
        "a refused connection",
        "Nothing listens where the program connects (the address is in the log): start or fix that service, check the host and port in the configuration, or make the program wait for its dependency (an init container, or retries).",
    ),
    (
        &[
            "no such host",
            "name or service not known",
            "temporary failure in name resolution",
            "server misbehaving",
            "could not resolve host",
        ],
        "a name that does not resolve",
        "The host name in the log does not resolve: check its spelling and namespace (service.namespace.svc), and that cluster DNS works from the pod.",
    ),
    (
        &[
            "permission denied",
            "eacces",
            "operation not permitted",
            "read-only file system",
        ],
        "a permission problem",
        "The process may not do what the log line says: check the file's owner and mode, the container's securityContext (runAsUser, fsGroup, readOnlyRootFilesystem) and the volume's permissions.",
    ),
    (
        &["address already in use", "eaddrinuse"],
        "a port already in use",
        "Another process in the pod (or on the host, with hostNetwork) holds the port: change one of the ports.",
    ),
    (
        &[
            "out of memory",
            "outofmemoryerror",
            "cannot allocate memory",
            "std::bad_alloc",
        ],
        "memory exhausted",
        "The program ran out of memory: raise resources.limits.memory or lower its heap (-Xmx, GOMEMLIMIT) below the limit.",
    ),
    (
        &["i/o timeout", "timed out", "deadline exceeded", "timeout"],
        "a timeout",
        "A dependency did not answer in time (the log names it): check that it is up and reachable from the pod (network policies, firewalls), or raise the program's timeout.",
    ),
    (
        &[
            "unauthorized",
            "forbidden",
            "authentication failed",
            "access denied",
            "invalid credentials",
            "401",
            "403",
        ],
        "rejected credentials",
        "A dependency rejected the program's credentials: check the Secret it reads them from and that they are current.",
    ),
    (
        &[
            "panic:",
            "traceback (most recent call last)",
            "exception in thread",
            "uncaught exception",
            "segmentation fault",
            "fatal error:",
        ],
        "a crash in the program",
        "The program crashed: read the stack trace in the previous instance's log (kubectl logs --previous) and fix the bug it points at.",
    ),
    (
        &[
            "not found",
            "missing",
            "required",
            "invalid",
            "must be set",
            "undefined",
        ],
        "missing or invalid configuration",
        "The program rejects its configuration: set what the log line asks for (an environment variable, a flag, a config file entry).",
    ),
    (
        &["fatal", "error", "failed", "exception", "err "],
        "an error reported by the program",
        "Read the whole log of the previous instance (kubectl logs --previous) and fix what it reports.",
    ),
];

/// The line of `lines` that best explains a crash: the last line of the most telling kind.
pub fn explain(lines: &[LogLine]) -> Option<Hint> {
    for (needles, problem, suggestion) in PATTERNS {
        if let Some(line) = lines.iter().rev().find(|l| {
            let t = l.text.to_ascii_lowercase();
            needles.iter().any(|n| t.contains(n))
        }) {
            return Some(Hint {
                line: line.clone(),
                problem,
                suggestion,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(texts: &[&str]) -> Vec<LogLine> {
        texts
            .iter()
            .map(|t| LogLine {
                time: String::new(),
                text: (*t).into(),
            })
            .collect()
    }

    #[test]
    fn common_exit_codes_have_their_meaning() {
        assert!(meaning(127).contains("command not found"));
        assert!(meaning(137).contains("SIGKILL"));
        assert!(meaning(139).contains("segmentation fault"));
        assert!(meaning(143).contains("SIGTERM"));
        assert!(meaning(126).contains("not executable"));
        assert!(meaning(3).contains("application-specific"));
        assert!(meaning(131).contains("signal 3"));
    }

    #[test]
    fn the_most_telling_line_explains_a_crash() {
        let h = explain(&lines(&[
            "loading configuration from /etc/app/config.yaml",
            "fatal: /etc/app/config.yaml: no such file or directory",
        ]))
        .unwrap();
        assert_eq!(h.problem, "a missing file");
        assert!(h.line.text.contains("config.yaml"));
        let h = explain(&lines(&[
            "connecting to db at 127.0.0.1:5432",
            "error: dial tcp 127.0.0.1:5432: connect: connection refused",
            "exiting",
        ]))
        .unwrap();
        assert_eq!(h.problem, "a refused connection");
        assert!(explain(&lines(&["all good", "bye"])).is_none());
    }
}
