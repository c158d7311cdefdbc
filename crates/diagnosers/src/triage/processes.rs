//! Process trouble of the node that no condition reports: parents that never reap their
//! children (zombies accumulate, each holding a pid), and pods at their pids limit (forks fail
//! inside the pod long before the node runs short).

use std::collections::BTreeMap;

use kdiag_api::Evidence;
use kdiag_api::context_keys::PROCESS_INFORMATION;
use kdiag_collectors::pids::PodPids;

use super::facts::Proc;
use super::finding::{Finding, Rank, quote};
use super::node::{command, pod_of};

/// A parent holding this many zombies at one instant does not reap them: a parent that does
/// reaps within milliseconds, so even a busy one holds one or two.
pub const ZOMBIE_LIMIT: usize = 5;
/// A pod using this share of its pids limit is at it: the next burst of forks fails.
pub const PIDS_LIMIT_PERCENT: u64 = 90;
pub const WEIGHT_PIDS: i64 = 40;
pub const WEIGHT_ZOMBIES: i64 = 30;

fn pod_object(p: &Proc, names: &BTreeMap<String, String>) -> String {
    p.pod_uid
        .as_ref()
        .and_then(|u| names.get(u))
        .map(|n| format!("pod/{n}"))
        .unwrap_or_default()
}

/// Every parent holding at least [`ZOMBIE_LIMIT`] zombie children, the most first.
pub fn zombies(procs: &[Proc], names: &BTreeMap<String, String>) -> Vec<Finding> {
    let mut by_parent: BTreeMap<i32, Vec<&Proc>> = BTreeMap::new();
    for p in procs.iter().filter(|p| p.status == "Z") {
        by_parent.entry(p.ppid).or_default().push(p);
    }
    let mut out: Vec<Finding> = by_parent
        .into_iter()
        .filter(|(_, z)| z.len() >= ZOMBIE_LIMIT)
        .map(|(ppid, children)| {
            let parent = procs.iter().find(|p| p.pid == ppid);
            let who = match parent {
                Some(p) => format!("process {ppid} `{}` of {}", command(p), pod_of(p, names)),
                None => format!("process {ppid}"),
            };
            let mut kinds: Vec<&str> = children.iter().map(|c| c.name.as_str()).collect();
            kinds.sort_unstable();
            kinds.dedup();
            let n = children.len();
            Finding::new(
                "ZombieProcesses",
                Rank::Node,
                format!(
                    "{who} never reaps its children: {n} zombie(s) ({}) wait for it, each holding a pid",
                    quote(&kinds.join(", "), 60)
                ),
                "The parent does not wait() for the children it starts: a shell or program run as a container's pid 1 that forks (use an init such as tini or dumb-init, or shareProcessNamespace), or a bug in its child handling. Restarting it frees the pids; zombies cannot be killed themselves.".into(),
            )
            .weighted(WEIGHT_ZOMBIES + n as i64)
            .with(Evidence {
                kind: "Process".into(),
                message: format!(
                    "{who}: zombie children {}",
                    children
                        .iter()
                        .take(10)
                        .map(|c| format!("{} ({})", c.pid, c.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                object: parent.map(|p| pod_object(p, names)).unwrap_or_default(),
                context_key: PROCESS_INFORMATION.into(),
                timestamp: None,
            })
        })
        .collect();
    out.sort_by_key(|f| std::cmp::Reverse(f.weight));
    out
}

/// Pods at [`PIDS_LIMIT_PERCENT`] of their pids limit, the fullest first.
pub fn pids_limits(
    pods: &[PodPids],
    procs: Option<&[Proc]>,
    names: &BTreeMap<String, String>,
) -> Vec<Finding> {
    let mut out: Vec<(u64, Finding)> = pods
        .iter()
        .filter_map(|p| {
            let max = p.max.filter(|m| *m > 0)?;
            let percent = p.current * 100 / max;
            if percent < PIDS_LIMIT_PERCENT {
                return None;
            }
            let name = names
                .get(&p.pod_uid)
                .cloned()
                .unwrap_or_else(|| format!("UID {}", p.pod_uid));
            let processes: Vec<&Proc> = procs
                .unwrap_or_default()
                .iter()
                .filter(|x| x.pod_uid.as_deref() == Some(p.pod_uid.as_str()))
                .collect();
            let mut commands: BTreeMap<String, usize> = BTreeMap::new();
            for x in &processes {
                *commands.entry(x.name.clone()).or_default() += 1;
            }
            let mut top: Vec<(String, usize)> = commands.into_iter().collect();
            top.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
            let most = top
                .iter()
                .take(3)
                .map(|(c, n)| format!("{n} × {c}"))
                .collect::<Vec<_>>()
                .join(", ");
            let f = Finding::new(
                "PodPidsLimitReached",
                Rank::Node,
                format!(
                    "pod {name} holds {} of its {max} pids ({percent}%): new processes and threads in it fail to start (fork: resource temporarily unavailable){}",
                    p.current,
                    if most.is_empty() {
                        String::new()
                    } else {
                        format!("; most are {most}")
                    }
                ),
                format!(
                    "Find why pod {name} forks so much (a process or thread leak, children never reaped, a fork bomb) and fix it; raise the kubelet's podPidsLimit (--pod-max-pids, now {max}) only if the pod really needs more."
                ),
            )
            .weighted(WEIGHT_PIDS)
            .with(Evidence {
                kind: "PidsCgroup".into(),
                message: format!(
                    "{}: pids.current {} of pids.max {max}; {} process(es) of the pod in /proc",
                    p.cgroup,
                    p.current,
                    processes.len()
                ),
                object: names
                    .get(&p.pod_uid)
                    .map(|n| format!("pod/{n}"))
                    .unwrap_or_default(),
                context_key: PROCESS_INFORMATION.into(),
                timestamp: None,
            });
            Some((p.current * 1000 / max, f))
        })
        .collect();
    out.sort_by_key(|(share, _)| std::cmp::Reverse(*share));
    out.into_iter().map(|(_, f)| f).collect()
}

/// The pods with the most processes, for reading their pids cgroups: (pod UID, a pid in it).
pub fn busiest_pods(procs: &[Proc], n: usize) -> Vec<(String, i32)> {
    let mut by_pod: BTreeMap<&str, (usize, i32)> = BTreeMap::new();
    for p in procs {
        if let Some(uid) = p.pod_uid.as_deref() {
            let e = by_pod.entry(uid).or_insert((0, p.pid));
            e.0 += 1;
        }
    }
    let mut sorted: Vec<(&str, (usize, i32))> = by_pod.into_iter().collect();
    sorted.sort_by_key(|(_, (count, _))| std::cmp::Reverse(*count));
    sorted
        .into_iter()
        .take(n)
        .map(|(uid, (_, pid))| (uid.to_owned(), pid))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn procs(v: serde_json::Value) -> Vec<Proc> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_parent_holding_five_zombies_is_named_with_its_pod_and_one_holding_two_is_not() {
        let mut list = vec![
            json!({"pid": 100, "ppid": 90, "name": "sleep", "command": ["sleep", "3600"], "status": "S", "podUID": "u1"}),
            json!({"pid": 200, "ppid": 1, "name": "bash", "command": ["bash"], "status": "S"}),
        ];
        for i in 0..5 {
            list.push(json!({"pid": 101 + i, "ppid": 100, "name": "sleep", "status": "Z", "podUID": "u1"}));
        }
        for i in 0..2 {
            list.push(json!({"pid": 201 + i, "ppid": 200, "name": "true", "status": "Z"}));
        }
        let mut names = BTreeMap::new();
        names.insert("u1".to_owned(), "shop/reaper".to_owned());
        let f = zombies(&procs(json!(list)), &names);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].reason, "ZombieProcesses");
        assert!(
            f[0].summary.contains("process 100 `sleep 3600` of pod shop/reaper never reaps its children: 5 zombie(s) (sleep)"),
            "{}",
            f[0].summary
        );
        assert_eq!(f[0].evidence[0].object, "pod/shop/reaper");
    }

    #[test]
    fn a_pod_at_ninety_percent_of_its_pids_limit_is_named_with_what_it_runs() {
        let list = procs(json!([
            {"pid": 10, "name": "sh", "podUID": "u1"},
            {"pid": 11, "name": "sleep", "podUID": "u1"},
            {"pid": 12, "name": "sleep", "podUID": "u1"},
            {"pid": 13, "name": "nginx", "podUID": "u2"}
        ]));
        let mut names = BTreeMap::new();
        names.insert("u1".to_owned(), "shop/forker".to_owned());
        let pods = [
            PodPids {
                pod_uid: "u1".into(),
                cgroup: "/kubepods/besteffort/podu1".into(),
                current: 19,
                max: Some(20),
            },
            PodPids {
                pod_uid: "u2".into(),
                current: 5,
                max: Some(20),
                ..Default::default()
            },
            PodPids {
                pod_uid: "u3".into(),
                current: 500,
                max: None,
                ..Default::default()
            },
        ];
        let f = pids_limits(&pods, Some(&list), &names);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].reason, "PodPidsLimitReached");
        assert!(
            f[0].summary
                .starts_with("pod shop/forker holds 19 of its 20 pids (95%)"),
            "{}",
            f[0].summary
        );
        assert!(f[0].summary.contains("2 × sleep"), "{}", f[0].summary);
        assert_eq!(busiest_pods(&list, 1), [("u1".to_owned(), 10)]);
    }
}
