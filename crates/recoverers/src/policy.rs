//! The node policy: what kdiag may do on a node. Read by the agent from a ConfigMap.
//!
//! It fails closed: until the agent has read the ConfigMap, and whenever it is missing or does not
//! parse, the agent holds a [`Policy::closed`] policy that denies every action that changes the
//! node (command executors, recoverers, signals) and says why. Read-only collectors and
//! diagnosers do not ask the policy and keep running. The defaults ([`PolicySpec::default`]) are
//! what a policy ConfigMap that leaves a section out gets; they never stand in for a missing one.

use std::sync::Arc;

use arc_swap::ArcSwap;

use nix::sys::signal::Signal;
use regex::Regex;
use serde::{Deserialize, Serialize};

/// The policy as written in the ConfigMap (key `policy.yaml`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    /// Record what would have been done instead of doing it: commands, recoverers and signals.
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub commands: CommandRules,
    #[serde(default)]
    pub recoverers: RecovererRules,
    #[serde(default)]
    pub signals: SignalRules,
    #[serde(default)]
    pub budget: BudgetRules,
}

/// Which recoverers may run on this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecovererRules {
    /// Registrations (namespace/name; `*` matches any part) that may run as recoverers. Default:
    /// all, because signals — the only built-in action — are denied by default.
    #[serde(default = "all")]
    pub allow: Vec<String>,
}

impl Default for RecovererRules {
    fn default() -> Self {
        Self { allow: all() }
    }
}

fn all() -> Vec<String> {
    vec!["*".into()]
}

/// Which signals signal-recoverer may send.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignalRules {
    /// Signal names (SIGTERM, SIGKILL, …) or numbers. Default: none.
    #[serde(default)]
    pub allow: Vec<String>,
}

/// How many recoveries a node may run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BudgetRules {
    /// Recoverers run on this node in any hour, at most. Default 10.
    #[serde(default = "ten")]
    pub recoveries_per_hour: u32,
}

impl Default for BudgetRules {
    fn default() -> Self {
        Self {
            recoveries_per_hour: 10,
        }
    }
}

fn ten() -> u32 {
    10
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommandRules {
    /// Commands that may run. A command runs when some rule's argv is a prefix of it and every
    /// further argument matches the rule's argsMatch (if it has one).
    #[serde(default = "default_command_rules")]
    pub allow: Vec<CommandRule>,
}

impl Default for CommandRules {
    fn default() -> Self {
        Self {
            allow: default_command_rules(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommandRule {
    /// The program and any fixed leading arguments.
    pub argv: Vec<String>,
    /// A regular expression every further argument must match (anchored at both ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_match: Option<String>,
}

fn rule(argv: &[&str], args_match: Option<&str>) -> CommandRule {
    CommandRule {
        argv: argv.iter().map(|s| (*s).to_owned()).collect(),
        args_match: args_match.map(str::to_owned),
    }
}

/// Read-only commands useful to diagnose a node. Nothing here changes state; paths are limited
/// to what describes the node (see [`forbidden_argument`], which every command passes first), and
/// the flags that write (`dmesg -C`, `ss -K`) or read a file named in the command (`dmesg -F`,
/// `ss -F`) or other processes' environments (`ps e`) are left out.
pub fn default_command_rules() -> Vec<CommandRule> {
    let flags = Some(r"-[A-Za-z0-9=,_.-]+|[A-Za-z0-9=,_.%-]+");
    // Absolute paths whose parts do not start with a dot (no `..`).
    let path = r"/|(/[A-Za-z0-9_:-][A-Za-z0-9._:-]*)+";
    let listing = format!(r"-[A-Za-z]+|{path}");
    vec![
        // BSD-style option letters without `e` (which prints every process's environment), or
        // dashed options and output formats (`-eo pid,args`, which name no environment).
        rule(
            &["ps"],
            Some(r"-[A-Za-z0-9=,_.-]+|[A-DF-Za-df-z]+|[A-Za-z0-9_%.]*[,=][A-Za-z0-9=,_.%-]*"),
        ),
        rule(&["df"], Some(&listing)),
        rule(&["du"], Some(&listing)),
        rule(&["uptime"], None),
        rule(&["free"], flags),
        rule(&["uname"], flags),
        rule(&["hostname"], Some("")),
        rule(&["date"], Some("")),
        rule(&["nproc"], Some("")),
        rule(&["lsblk"], flags),
        rule(
            &["findmnt"],
            Some(r"-[A-EG-Za-z0-9=,_.-]*|[A-Za-z0-9=,_.%][A-Za-z0-9=,_.%-]*"),
        ),
        rule(&["vmstat"], flags),
        // No -K (kills sockets), -D (writes a dump), -F (reads a filter file).
        rule(
            &["ss"],
            Some(
                r"-[AHMOabeilmnoprstuwxz0-9]+|--(tcp|udp|raw|unix|listening|processes|numeric|all|summary|info|extended|memory|options|no-header|ipv4|ipv6)|[A-Za-z0-9:.(),]+",
            ),
        ),
        rule(&["ip", "addr"], Some("show|list")),
        rule(&["ip", "route"], Some("show|list")),
        rule(&["ip", "link"], Some("show|list")),
        // Reading flags only: no -C/-c (clear), -D/-E/-n (console), -F (a file), -w (follow).
        rule(
            &["dmesg"],
            Some(
                r"-[TkuxtrdeSLPlfV]+|--(level|facility)=[a-z,]+|--(ctime|kernel|userspace|decode|raw|nopager|show-delta|reltime|human|notime)|[a-z]+(,[a-z]+)*",
            ),
        ),
        // What describes the node and its processes' state, not what they hold: named files at
        // the top of /proc (not kcore, kallsyms or keys), its pressure/, sys/ and net/ trees,
        // a process's own status files, and /sys.
        rule(
            &["cat"],
            Some(
                r"/proc/(meminfo|cpuinfo|loadavg|stat|vmstat|uptime|version|diskstats|partitions|mounts|swaps|zoneinfo|buddyinfo|pagetypeinfo|interrupts|softirqs|filesystems|cgroups|modules|devices|cmdline|locks|schedstat)|/proc/(pressure|sys|net)(/[A-Za-z0-9_:-][A-Za-z0-9._:-]*)+|/proc/[0-9]+/(status|stat|statm|cgroup|io|limits|oom_score|oom_score_adj|wchan|sched|cmdline|mountinfo)|/sys(/[A-Za-z0-9_:-][A-Za-z0-9._:-]*)+",
            ),
        ),
        rule(&["ls"], Some(&listing)),
        rule(&["stat"], Some(&listing)),
    ]
}

/// Why an argument is never allowed, whatever the policy's rules say: it reaches into another
/// process's files, memory or environment through /proc (`/proc/<pid>/root/...` is that process's
/// whole filesystem), or climbs out of a path with `..`. The collectors read what kdiag needs of a
/// process; a command is never the way to a pod's secrets.
pub fn forbidden_argument(arg: &str) -> Option<&'static str> {
    const PRIVATE: &[&str] = &[
        "root",
        "cwd",
        "exe",
        "fd",
        "fdinfo",
        "map_files",
        "environ",
        "mem",
        "maps",
        "smaps",
        "smaps_rollup",
        "pagemap",
        "auxv",
        "syscall",
        "stack",
        "personality",
        "timers",
    ];
    // Every path inside the argument (`--file=/proc/1/environ` too).
    for (at, _) in arg.match_indices('/') {
        let tail = &arg[at..];
        if tail.split('/').any(|part| part == "..") {
            return Some("a path may not contain `..`");
        }
        let Some(rest) = tail.strip_prefix("/proc/") else {
            continue;
        };
        let mut parts = rest.split('/').filter(|p| !p.is_empty());
        let Some(process) = parts.next() else {
            continue;
        };
        if !(process.bytes().all(|b| b.is_ascii_digit())
            || process == "self"
            || process == "thread-self")
        {
            continue;
        }
        let mut next = parts.next();
        // /proc/<pid>/task/<tid>/... is the same as /proc/<pid>/...
        if next == Some("task") {
            parts.next();
            next = parts.next();
        }
        if next.is_some_and(|n| PRIVATE.contains(&n)) {
            return Some(
                "a process's root, working directory, executable, open files, memory, maps or environment under /proc",
            );
        }
    }
    None
}

/// A policy ready to answer questions.
#[derive(Debug, Clone)]
pub struct Policy {
    pub spec: PolicySpec,
    commands: Vec<(Vec<String>, Option<Regex>)>,
    /// Set when no valid policy is loaded: why, and every action is denied with it.
    closed: Option<String>,
}

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "the node policy is not valid YAML for kdiag's policy format: {0} (see docs/policy.md)"
    )]
    Parse(String),
    #[error(
        "the node policy's commands.allow[{index}].argsMatch {pattern:?} is not a valid regular expression: {reason}"
    )]
    Pattern {
        index: usize,
        pattern: String,
        reason: String,
    },
    #[error("the node policy's commands.allow[{index}].argv is empty; name at least the program")]
    EmptyArgv { index: usize },
    #[error("the node policy's signals.allow has {0:?}, which is not a signal name or number")]
    Signal(String),
}

/// A denial: the rule that denied and why, for the step's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub rule: String,
    pub message: String,
}

/// The rule of the denials of a closed policy (no valid policy loaded).
pub const CLOSED_RULE: &str = "policy";

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.rule == CLOSED_RULE {
            write!(f, "denied: {}", self.message)
        } else {
            write!(f, "denied by policy rule {}: {}", self.rule, self.message)
        }
    }
}

/// A signal by name (SIGKILL, KILL, kill) or number (9).
pub fn parse_signal(s: &str) -> Option<Signal> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse().ok()
}

impl Default for Policy {
    /// The defaults of every section ([`PolicySpec::default`]): what an empty `policy.yaml` gets.
    fn default() -> Self {
        Self::new(PolicySpec::default()).expect("the default policy is valid")
    }
}

impl Policy {
    pub fn new(spec: PolicySpec) -> Result<Self, PolicyError> {
        let mut commands = Vec::new();
        for (index, r) in spec.commands.allow.iter().enumerate() {
            if r.argv.is_empty() {
                return Err(PolicyError::EmptyArgv { index });
            }
            let re =
                match &r.args_match {
                    None => None,
                    Some(p) => Some(Regex::new(&format!("^(?:{p})$")).map_err(|e| {
                        PolicyError::Pattern {
                            index,
                            pattern: p.clone(),
                            reason: e.to_string(),
                        }
                    })?),
                };
            commands.push((r.argv.clone(), re));
        }
        if let Some(bad) = spec
            .signals
            .allow
            .iter()
            .find(|s| parse_signal(s).is_none())
        {
            return Err(PolicyError::Signal(bad.clone()));
        }
        Ok(Self {
            spec,
            commands,
            closed: None,
        })
    }

    /// A policy that denies every action that changes the node, because no valid policy is
    /// loaded; `why` says what happened and what to do, and is the message of every denial.
    pub fn closed(why: impl Into<String>) -> Self {
        Self {
            spec: PolicySpec {
                dry_run: true,
                commands: CommandRules { allow: Vec::new() },
                recoverers: RecovererRules { allow: Vec::new() },
                signals: SignalRules::default(),
                budget: BudgetRules {
                    recoveries_per_hour: 0,
                },
            },
            commands: Vec::new(),
            closed: Some(why.into()),
        }
    }

    /// Why every action is denied, when no valid policy is loaded.
    pub fn closed_reason(&self) -> Option<&str> {
        self.closed.as_deref()
    }

    fn deny_if_closed(&self) -> Result<(), Denied> {
        match &self.closed {
            Some(why) => Err(Denied {
                rule: CLOSED_RULE.into(),
                message: why.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Parses the ConfigMap's `policy.yaml`.
    pub fn from_yaml(text: &str) -> Result<Self, PolicyError> {
        let spec: PolicySpec =
            serde_yaml::from_str(text).map_err(|e| PolicyError::Parse(e.to_string()))?;
        Self::new(spec)
    }

    /// May the recoverer registered as `namespace/name` run?
    pub fn allows_recoverer(&self, registration: &str) -> Result<(), Denied> {
        self.deny_if_closed()?;
        let (ns, name) = registration.split_once('/').unwrap_or(("", registration));
        let ok = self.spec.recoverers.allow.iter().any(|rule| {
            let (rns, rname) = rule.split_once('/').unwrap_or(("*", rule));
            (rns == "*" || rns == ns) && (rname == "*" || rname == name)
        });
        if ok {
            Ok(())
        } else {
            Err(Denied {
                rule: "recoverers.allow".into(),
                message: format!(
                    "recoverer {registration} is not in the node policy's recoverer allow-list; add it to the kdiag-policy ConfigMap (docs/policy.md) if it should run"
                ),
            })
        }
    }

    /// May this signal be sent?
    pub fn allows_signal(&self, signal: Signal) -> Result<(), Denied> {
        self.deny_if_closed()?;
        let ok = self
            .spec
            .signals
            .allow
            .iter()
            .any(|s| parse_signal(s) == Some(signal));
        if ok {
            Ok(())
        } else {
            Err(Denied {
                rule: "signals.allow".into(),
                message: format!(
                    "{} is not in the node policy's signal allow-list (default: none); add it to the kdiag-policy ConfigMap (docs/policy.md) to let signal-recoverer send it",
                    signal.as_str()
                ),
            })
        }
    }

    /// May this argv run?
    pub fn allows_command(&self, argv: &[String]) -> Result<(), Denied> {
        self.deny_if_closed()?;
        if let Some((arg, why)) = argv
            .iter()
            .find_map(|a| forbidden_argument(a).map(|why| (a, why)))
        {
            return Err(Denied {
                rule: "commands.paths".into(),
                message: format!(
                    "{arg:?} is never allowed, whatever the node policy says: {why}; the collectors (process-collector, pod-collector) read what a diagnosis needs of a process"
                ),
            });
        }
        let Some(program) = argv.first() else {
            return Err(Denied {
                rule: "commands".into(),
                message: "the command is empty".into(),
            });
        };
        for (prefix, args) in &self.commands {
            if argv.len() < prefix.len() || argv[..prefix.len()] != prefix[..] {
                continue;
            }
            let rest = &argv[prefix.len()..];
            if args
                .as_ref()
                .is_none_or(|re| rest.iter().all(|a| re.is_match(a)))
            {
                return Ok(());
            }
        }
        Err(Denied {
            rule: "commands.allow".into(),
            message: format!(
                "{} is not allowed by the node policy's command allow-list; add a rule for it to the kdiag-policy ConfigMap (docs/policy.md) if it should run",
                if self.commands.iter().any(|(p, _)| p[0] == *program) {
                    format!("{program} with these arguments")
                } else {
                    program.clone()
                }
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn the_default_policy_allows_read_only_diagnostics() {
        let p = Policy::default();
        for ok in [
            "ps aux",
            "ps -eo pid,ppid,stat,rss,vsz,args",
            "df -h",
            "du -sh /var/lib",
            "uptime",
            "ip addr show",
            "cat /proc/meminfo",
            "cat /proc/pressure/memory",
            "cat /proc/sys/vm/overcommit_memory",
            "cat /proc/1234/status",
            "cat /proc/1234/cgroup",
            "cat /sys/fs/cgroup/memory/memory.usage_in_bytes",
            "dmesg --level=err,warn",
            "dmesg -T -l err,warn",
            "ps -e",
            "ps -eo pid,user,args",
            "ps axjf",
            "ss -tlnp",
            "ss -s",
            "ls -la /var/lib/kubelet/pods",
            "stat /var/log",
            "df -h /",
            "findmnt -o TARGET,SOURCE",
        ] {
            assert_eq!(p.allows_command(&argv(ok)), Ok(()), "{ok}");
        }
    }

    #[test]
    fn the_default_policy_denies_anything_that_changes_the_node_or_reads_secrets() {
        let p = Policy::default();
        for denied in [
            "kill -10 1000",
            "rm -rf /",
            "ip addr add 10.0.0.1/24 dev eth0",
            "cat /etc/shadow",
            "sh -c ls",
            "du -sh /; rm -rf /",
            "hostname evil",
            "cat /proc/kcore",
            "cat /proc/kallsyms",
            // The fields the narrowed rules leave out.
            "ps e",
            "ps auxe",
            "ps eww",
            "dmesg -C",
            "dmesg -c",
            "dmesg --clear",
            "dmesg -n 1",
            "dmesg -D",
            "dmesg -F /etc/shadow",
            "dmesg -w",
            "ss -K dst 10.0.0.1",
            "ss --kill",
            "ss -D /tmp/dump",
            "ss -F /etc/shadow",
            "findmnt -F /etc/shadow",
            "findmnt -F fstab",
        ] {
            let d = p.allows_command(&argv(denied)).expect_err(denied);
            assert_eq!(d.rule, "commands.allow");
            assert!(d.message.contains("kdiag-policy"), "{}", d.message);
        }
    }

    #[test]
    fn no_policy_opens_another_processs_files_memory_or_environment() {
        // Even a policy that allows cat and ls of anything.
        let p = Policy::from_yaml(
            "commands:\n  allow:\n  - argv: [cat]\n  - argv: [ls]\n  - argv: [grep]\n",
        )
        .unwrap();
        for denied in [
            "cat /proc/1/root/etc/shadow",
            "cat /proc/self/root/etc/shadow",
            "cat /proc/thread-self/root/etc/kubernetes/admin.conf",
            "cat /proc/4242/environ",
            "cat /proc/4242/task/4243/environ",
            "cat /proc/4242/mem",
            "cat /proc/4242/maps",
            "cat /proc/4242/smaps",
            "ls -l /proc/4242/fd",
            "ls /proc/4242/cwd/",
            "ls /proc/4242/map_files",
            "cat /proc/4242/exe",
            "grep --file=/proc/1/environ x",
            "cat /var/log/../../etc/shadow",
            "cat /proc//1/root/etc/shadow",
            "cat /proc/1/cmdline/../../etc/shadow",
            "cat /proc/net/../1/root/etc/shadow",
        ] {
            let d = p.allows_command(&argv(denied)).expect_err(denied);
            assert_eq!(d.rule, "commands.paths", "{denied}");
            assert!(d.message.contains("never allowed"), "{}", d.message);
        }
        assert_eq!(p.allows_command(&argv("cat /proc/4242/status")), Ok(()));
        assert_eq!(p.allows_command(&argv("cat /etc/os-release")), Ok(()));
        assert_eq!(
            p.allows_command(&argv("cat /proc/rootfs/x")),
            Ok(()),
            "not a process"
        );
    }

    #[test]
    fn by_default_no_signal_may_be_sent_and_recoverers_are_gated_by_name() {
        let p = Policy::default();
        assert_eq!(
            p.allows_signal(Signal::SIGKILL).unwrap_err().rule,
            "signals.allow"
        );
        assert!(
            p.allows_recoverer("kube-diagnoser/signal-recoverer")
                .is_ok()
        );
        let p = Policy::from_yaml(
            "recoverers:\n  allow: [kube-diagnoser/*]\nsignals:\n  allow: [SIGTERM, kill, \"2\"]\n",
        )
        .unwrap();
        assert!(
            p.allows_recoverer("kube-diagnoser/signal-recoverer")
                .is_ok()
        );
        assert_eq!(
            p.allows_recoverer("team/fixer").unwrap_err().rule,
            "recoverers.allow"
        );
        for s in [Signal::SIGTERM, Signal::SIGKILL, Signal::SIGINT] {
            assert!(p.allows_signal(s).is_ok(), "{s}");
        }
        assert!(p.allows_signal(Signal::SIGHUP).is_err());
        let e = Policy::from_yaml("signals:\n  allow: [SIGNOPE]\n").unwrap_err();
        assert!(e.to_string().contains("SIGNOPE"), "{e}");
    }

    #[test]
    fn a_policy_can_allow_more_and_reports_bad_patterns_clearly() {
        let p = Policy::from_yaml(
            "commands:\n  allow:\n  - argv: [kill, \"-10\"]\n    argsMatch: '[0-9]+'\n",
        )
        .unwrap();
        assert_eq!(p.allows_command(&argv("kill -10 1000")), Ok(()));
        assert!(p.allows_command(&argv("kill -9 1000")).is_err());
        let err = Policy::from_yaml("commands:\n  allow:\n  - argv: [x]\n    argsMatch: '('\n")
            .unwrap_err();
        assert!(
            err.to_string().contains("commands.allow[0].argsMatch"),
            "{err}"
        );
        let err = Policy::from_yaml("comands: {}\n").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn a_closed_policy_denies_every_action_with_its_reason() {
        let p = Policy::closed("the node policy ConfigMap kube-diagnoser/kdiag-policy is invalid");
        for d in [
            p.allows_command(&argv("uptime")).unwrap_err(),
            p.allows_recoverer("kube-diagnoser/signal-recoverer")
                .unwrap_err(),
            p.allows_signal(Signal::SIGTERM).unwrap_err(),
        ] {
            assert_eq!(d.rule, CLOSED_RULE);
            assert_eq!(
                d.to_string(),
                "denied: the node policy ConfigMap kube-diagnoser/kdiag-policy is invalid"
            );
        }
        assert!(p.spec.dry_run && p.spec.budget.recoveries_per_hour == 0);
        assert!(Policy::default().closed_reason().is_none());
    }

    #[test]
    fn a_handle_denies_everything_until_a_policy_is_set() {
        let h = PolicyHandle::not_loaded();
        assert_eq!(h.current().closed_reason(), Some(NOT_LOADED));
        assert!(h.current().allows_command(&argv("uptime")).is_err());
        let seen_by_a_step = h.clone();
        h.set(Policy::default());
        assert!(
            seen_by_a_step
                .current()
                .allows_command(&argv("uptime"))
                .is_ok()
        );
    }
}

/// Why the agent holds no valid policy before it has read the ConfigMap.
pub const NOT_LOADED: &str = "the node policy has not been loaded yet; nothing that changes the node runs until the agent has read it (docs/policy.md)";

/// The current policy, shared by every step and swapped whole when the ConfigMap changes. It
/// starts closed ([`NOT_LOADED`]): nothing that changes the node runs before a policy is loaded.
#[derive(Clone)]
pub struct PolicyHandle(Arc<ArcSwap<Policy>>);

impl PolicyHandle {
    pub fn new(policy: Policy) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(policy)))
    }

    /// A handle that denies every action until a policy is [`set`](Self::set).
    pub fn not_loaded() -> Self {
        Self::new(Policy::closed(NOT_LOADED))
    }

    pub fn current(&self) -> Arc<Policy> {
        self.0.load_full()
    }

    pub fn set(&self, policy: Policy) {
        self.0.store(Arc::new(policy));
    }
}

#[cfg(test)]
mod shipped {
    use super::*;

    #[test]
    fn the_policy_config_deploy_ships_is_the_default() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/deploy/20-policy.yaml"
        );
        let cm: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let text = cm["data"]["policy.yaml"]
            .as_str()
            .expect("data.policy.yaml");
        let shipped = Policy::from_yaml(text).unwrap();
        assert_eq!(
            shipped.spec,
            PolicySpec::default(),
            "config/deploy/20-policy.yaml must show the defaults of every section"
        );
    }

    /// hack/image-tools.txt: (program, the invocation hack/build-image.sh runs in the image).
    fn image_tools() -> Vec<(String, Vec<String>)> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../hack/image-tools.txt");
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| l.split('#').next().unwrap_or_default().trim())
            .filter(|l| !l.is_empty())
            .map(|l| {
                let argv: Vec<String> = l.split_whitespace().map(str::to_owned).collect();
                (argv[0].clone(), argv)
            })
            .collect()
    }

    #[test]
    fn the_image_carries_every_program_the_default_policy_allows() {
        let tools = image_tools();
        let missing: Vec<String> = default_command_rules()
            .into_iter()
            .map(|r| r.argv[0].clone())
            .filter(|program| !tools.iter().any(|(t, _)| t == program))
            .collect();
        assert!(
            missing.is_empty(),
            "the default node policy allows {missing:?}, which the kdiag image would not have: add each to hack/image-tools.txt with an invocation the build can check"
        );
    }

    #[test]
    fn every_invocation_the_image_build_checks_is_allowed_by_the_default_policy() {
        let policy = Policy::default();
        for (_, argv) in image_tools() {
            assert!(
                policy.allows_command(&argv).is_ok(),
                "hack/image-tools.txt checks `{}` in the image, which the default policy denies: the image would carry a program the policy does not allow, or the check proves nothing about an allowed use",
                argv.join(" ")
            );
        }
    }
}
