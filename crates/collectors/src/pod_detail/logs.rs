//! The last log lines of a container instance, read through the apiserver (the kubelet's
//! `containerLogs`), so they come from wherever the kubelet keeps them.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::api::{Api, LogParams};

use super::types::{ContainerLogs, LogLine, LogTail};

/// Lines kept per container instance.
pub const MAX_LINES: usize = 50;
/// Bytes kept per container instance (the last ones).
pub const MAX_BYTES: usize = 16 * 1024;
/// One line longer than this is cut: a minified JSON blob tells nothing more past it.
pub const MAX_LINE_BYTES: usize = 2 * 1024;
/// What the apiserver may send at most, so one huge line cannot make the agent read megabytes.
const FETCH_LIMIT_BYTES: i64 = 256 * 1024;

/// The log tails of every container of `pod` that ever started, fetched concurrently.
pub async fn collect(api: &Api<Pod>, pod: &Pod) -> Vec<ContainerLogs> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let status = pod.status.as_ref();
    let statuses = |list: Option<&Vec<ContainerStatus>>, init: bool| {
        list.into_iter()
            .flatten()
            .map(move |s| (s.clone(), init))
            .collect::<Vec<_>>()
    };
    let mut all = statuses(
        status.and_then(|s| s.init_container_statuses.as_ref()),
        true,
    );
    all.extend(statuses(
        status.and_then(|s| s.container_statuses.as_ref()),
        false,
    ));
    let fetches = all.into_iter().map(|(s, init)| {
        let name = name.clone();
        async move {
            // A container that never started has no log; one that restarted has a previous one.
            let state = s.state.as_ref();
            let started = state.is_some_and(|st| st.running.is_some() || st.terminated.is_some());
            let restarted = s.restart_count > 0
                || s.last_state
                    .as_ref()
                    .is_some_and(|l| l.terminated.is_some());
            let (current, previous) = tokio::join!(
                async {
                    if started {
                        tail(api, &name, &s.name, false).await
                    } else {
                        None
                    }
                },
                async {
                    if restarted {
                        tail(api, &name, &s.name, true).await
                    } else {
                        None
                    }
                }
            );
            ContainerLogs {
                container: s.name.clone(),
                init,
                current,
                previous,
            }
        }
    });
    futures::future::join_all(fetches).await
}

/// One instance's tail; `None` when it has no log to read (a previous instance already
/// removed, a container not created yet).
async fn tail(api: &Api<Pod>, pod: &str, container: &str, previous: bool) -> Option<LogTail> {
    let lp = LogParams {
        container: Some(container.to_owned()),
        previous,
        tail_lines: Some(MAX_LINES as i64),
        limit_bytes: Some(FETCH_LIMIT_BYTES),
        timestamps: true,
        ..Default::default()
    };
    match api.logs(pod, &lp).await {
        Ok(text) => Some(parse(&text)),
        // The kubelet answers 400 "previous terminated container … not found" when the
        // runtime has removed that instance, and for a container still being created.
        Err(kube::Error::Api(s)) if s.code == 400 || s.code == 404 => None,
        Err(kube::Error::Api(s)) if s.code == 403 => Some(LogTail {
            error: format!(
                "reading the {} log of container {container}: forbidden ({}); the agent needs get on pods/log",
                if previous { "previous" } else { "current" },
                s.message
            ),
            ..Default::default()
        }),
        Err(e) => Some(LogTail {
            error: format!(
                "reading the {} log of container {container}: {e}",
                if previous { "previous" } else { "current" }
            ),
            ..Default::default()
        }),
    }
}

/// Splits `<RFC 3339 time> <text>` lines and keeps the last [`MAX_LINES`] within [`MAX_BYTES`].
pub fn parse(text: &str) -> LogTail {
    let mut lines: Vec<LogLine> = text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (time, rest) = match l.split_once(' ') {
                Some((t, rest)) if t.parse::<jiff::Timestamp>().is_ok() => (t.to_owned(), rest),
                _ => (String::new(), l),
            };
            LogLine {
                time,
                text: cut(rest, MAX_LINE_BYTES),
            }
        })
        .collect();
    let mut truncated = false;
    if lines.len() > MAX_LINES {
        lines.drain(..lines.len() - MAX_LINES);
        truncated = true;
    }
    let mut size: usize = lines.iter().map(|l| l.text.len() + l.time.len() + 8).sum();
    while size > MAX_BYTES && !lines.is_empty() {
        let l = lines.remove(0);
        size -= l.text.len() + l.time.len() + 8;
        truncated = true;
    }
    LogTail {
        lines,
        truncated,
        error: String::new(),
    }
}

/// At most `max` bytes of `s`, cut at a character boundary, marked when cut.
pub fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamped_lines_split_into_time_and_text() {
        let t = parse(
            "2026-11-22T10:00:00.123456789Z loading config\n2026-11-22T10:00:01Z fatal: no such file\n",
        );
        assert_eq!(t.lines.len(), 2);
        assert_eq!(t.lines[1].time, "2026-11-22T10:00:01Z");
        assert_eq!(t.lines[1].text, "fatal: no such file");
        assert!(!t.truncated);
        let plain = parse("no stamp here\n");
        assert_eq!(plain.lines[0].time, "");
        assert_eq!(plain.lines[0].text, "no stamp here");
    }

    #[test]
    fn a_long_log_keeps_its_last_lines_within_the_byte_bound() {
        let text: String = (0..200)
            .map(|i| format!("2026-11-22T10:00:00Z line {i} {}\n", "x".repeat(500)))
            .collect();
        let t = parse(&text);
        assert!(t.truncated);
        assert!(t.lines.len() <= MAX_LINES);
        assert!(t.lines.last().unwrap().text.starts_with("line 199 "));
        let bytes: usize = t.lines.iter().map(|l| l.text.len()).sum();
        assert!(bytes <= MAX_BYTES, "{bytes}");
    }

    #[test]
    fn a_huge_line_is_cut_at_a_character_boundary() {
        let s = "é".repeat(3000);
        let c = cut(&s, MAX_LINE_BYTES);
        assert!(c.len() <= MAX_LINE_BYTES + "…".len());
        assert!(c.ends_with('…'));
    }
}
