//! The printed table, and the targets of issue 9 checked against the results. Everything here is
//! read from the results JSON, so the table and the file cannot disagree.

use serde_json::{Value, json};

/// A number at a JSON pointer, NaN when absent.
fn num(v: &Value, pointer: &str) -> f64 {
    v.pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or(f64::NAN)
}

fn fmt(x: f64) -> String {
    if x.is_nan() {
        "n/a".into()
    } else if x == 0.0 {
        // Never "-0.00".
        "0.00".into()
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

struct Table {
    head: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(head: &[&str]) -> Self {
        Self {
            head: head.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self, out: &mut String) {
        let cols = self.head.len();
        let width: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .chain(std::iter::once(&self.head))
                    .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for (i, r) in std::iter::once(&self.head).chain(&self.rows).enumerate() {
            let cells: Vec<String> = (0..cols)
                .map(|c| {
                    let s = r.get(c).cloned().unwrap_or_default();
                    let pad = width[c] - s.chars().count();
                    if c == 0 {
                        format!("{s}{}", " ".repeat(pad))
                    } else {
                        format!("{}{s}", " ".repeat(pad))
                    }
                })
                .collect();
            out.push_str(&format!("  {}\n", cells.join("  ")));
            if i == 0 {
                out.push_str(&format!(
                    "  {}\n",
                    "-".repeat(width.iter().sum::<usize>() + 2 * (cols - 1))
                ));
            }
        }
    }
}

/// A target of the issue: what was measured, the limit, and whether it holds.
pub struct Target {
    pub name: &'static str,
    pub value: f64,
    pub limit: &'static str,
    pub met: bool,
}

/// The targets, from the results of the sections that ran.
pub fn targets(r: &Value) -> Vec<Target> {
    let mut t = Vec::new();
    let mut add = |name, value: f64, limit, ok: fn(f64) -> bool| {
        if !value.is_nan() {
            t.push(Target {
                name,
                value,
                limit,
                met: ok(value),
            });
        }
    };
    add(
        "pipeline p99 / floor p99 (loaded)",
        num(r, "/pipeline/loaded/ratio/p99"),
        "<= 2",
        |v| v <= 2.0,
    );
    add(
        "pipeline throughput / floor throughput",
        num(r, "/pipeline/loaded/ratio/throughput"),
        ">= 0.5",
        |v| v >= 0.5,
    );
    add(
        "agent idle RSS (MiB)",
        num(r, "/footprint/idle/agent/rssMiB"),
        "<= 20",
        |v| v <= 20.0,
    );
    add(
        "agent RSS with the node full (MiB)",
        num(r, "/footprint/full/agent/rssMiB"),
        "<= 64",
        |v| v <= 64.0,
    );
    add(
        "agent idle CPU (% of a core)",
        num(r, "/footprint/idle/agent/cpuPercent"),
        "near 0 (<= 0.5)",
        |v| v <= 0.5,
    );
    add(
        "controller idle RSS (MiB)",
        num(r, "/footprint/idle/controller/rssMiB"),
        "<= 20",
        |v| v <= 20.0,
    );
    add(
        "controller RSS with the node full (MiB)",
        num(r, "/footprint/full/controller/rssMiB"),
        "<= 64",
        |v| v <= 64.0,
    );
    add(
        "controller idle CPU (% of a core)",
        num(r, "/footprint/idle/controller/cpuPercent"),
        "near 0 (<= 0.5)",
        |v| v <= 0.5,
    );
    add(
        "controller CPU, continuous probes (% of a core)",
        num(r, "/probes/continuous/controllerCpuPercentOfCore"),
        "< 2 (issue 19)",
        |v| v < 2.0,
    );
    add(
        "apiserver writes while continuous results are unchanged",
        num(r, "/probes/continuous/apiserverWrites"),
        "0 (issue 19)",
        |v| v == 0.0,
    );
    if let Some(steps) = r.pointer("/scale/steps").and_then(Value::as_array)
        && let (Some(first), Some(last)) = (steps.first(), steps.last())
    {
        let routed = steps
            .iter()
            .all(|s| s["routing"]["onlyItsNodesAgent"] == json!(true));
        add(
            "every Abnormal reached only its node's agent (1 = yes)",
            if routed { 1.0 } else { 0.0 },
            "1",
            |v| v == 1.0,
        );
        let grow = num(last, "/kdiag/apiserverPerAbnormal/requests")
            / num(first, "/kdiag/apiserverPerAbnormal/requests");
        add(
            "apiserver requests per Abnormal, most agents / fewest",
            grow,
            "~1 (<= 1.1)",
            |v| v <= 1.1,
        );
        let events = num(last, "/kdiag/abnormalWatchEventsPerAbnormal")
            / num(first, "/kdiag/abnormalWatchEventsPerAbnormal");
        add(
            "watch events per Abnormal, most agents / fewest",
            events,
            "~1 (<= 1.1)",
            |v| v <= 1.1,
        );
    }
    add(
        "change -> probe result p99 (ms, issue 19)",
        num(r, "/probeTriggers/changeToResult/p99Ms"),
        "< 10000",
        |v| v < 10_000.0,
    );
    t
}

pub fn targets_json(t: &[Target]) -> Value {
    json!(
        t.iter()
            .map(|t| json!({"target": t.name, "value": (t.value * 1000.0).round() / 1000.0, "limit": t.limit, "met": t.met}))
            .collect::<Vec<_>>()
    )
}

pub fn render(r: &Value) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "kdiag benchmarks, {} — {} CPUs, {} GiB RAM, load average {} at start; took {} s\n",
        r["startedAt"].as_str().unwrap_or(""),
        r["machine"]["cpus"],
        r["machine"]["memoryGiB"],
        r["machine"]["loadAverage"].as_str().unwrap_or("?"),
        fmt(num(r, "/durationSeconds")),
    ));
    out.push_str(
        "Every figure is next to a baseline measured in the same run on this machine.\n\n",
    );
    if let Some(p) = r.get("pipeline").filter(|v| !v.is_null()) {
        pipeline(&mut out, p);
    }
    if let Some(f) = r.get("footprint").filter(|v| !v.is_null()) {
        footprint(&mut out, f);
    }
    if let Some(s) = r.get("scale").filter(|v| !v.is_null()) {
        scale(&mut out, s);
    }
    if let Some(tr) = r.get("triggers").filter(|v| !v.is_null()) {
        triggers(&mut out, tr);
    }
    if let Some(c) = r.get("collectors").filter(|v| !v.is_null()) {
        collectors(&mut out, c);
    }
    if let Some(p) = r.get("probes").filter(|v| !v.is_null()) {
        probes(&mut out, p);
    }
    if let Some(p) = r.get("probeTriggers").filter(|v| !v.is_null()) {
        probe_triggers(&mut out, p);
    }
    if let Some(f) = r.get("fleet").filter(|v| !v.is_null()) {
        fleet(&mut out, f);
    }
    let t = targets(r);
    if !t.is_empty() {
        out.push_str("Targets (issues 9 and 19)\n");
        let mut tab = Table::new(&["target", "measured", "limit", "verdict"]);
        for x in &t {
            tab.row(vec![
                x.name.into(),
                fmt(x.value),
                x.limit.into(),
                if x.met { "met" } else { "MISSED" }.into(),
            ]);
        }
        tab.render(&mut out);
    }
    if let Some(errors) = r
        .get("errors")
        .and_then(Value::as_object)
        .filter(|e| !e.is_empty())
    {
        out.push_str("\nSections that failed:\n");
        for (k, v) in errors {
            out.push_str(&format!("  {k}: {}\n", v.as_str().unwrap_or("")));
        }
    }
    out
}

fn pipeline(out: &mut String, p: &Value) {
    out.push_str(&format!(
        "1. Pipeline: {} Abnormals on one node through the real kdiag controller and agent \
         (pod-collector in the agent + an HTTP plugin collect, an HTTP plugin diagnoses);\n   \
         floor = create + {} status writes with kdiag's own status bodies, by a bare client\n",
        num(p, "/loaded/kdiag/n"),
        p["statusWritesPerAbnormal"],
    ));
    let mut t = Table::new(&["measure", "kdiag", "floor", "kdiag/floor"]);
    let w = p["loaded"]["window"].as_u64().unwrap_or(0);
    // (row, JSON pointer under kdiag/ and floor/, whether the floor has a counterpart)
    let rows = [
        (
            "one at a time: latency p50 (ms)".to_string(),
            "/unloaded/{}/p50Ms",
            true,
        ),
        (
            "one at a time: latency p99 (ms)".to_string(),
            "/unloaded/{}/p99Ms",
            true,
        ),
        (
            format!("{w} in flight: latency p50 (ms)"),
            "/loaded/{}/latency/p50Ms",
            true,
        ),
        (
            format!("{w} in flight: latency p99 (ms)"),
            "/loaded/{}/latency/p99Ms",
            true,
        ),
        (
            format!("{w} in flight: Abnormals per second"),
            "/loaded/{}/perSecond",
            true,
        ),
        (
            "apiserver writes per Abnormal".into(),
            "/loaded/{}/apiserverPerItem/writes",
            true,
        ),
        (
            "apiserver requests per Abnormal".into(),
            "/loaded/{}/apiserverPerItem/requests",
            true,
        ),
        (
            "409 conflicts per Abnormal".into(),
            "/loaded/{}/apiserverPerItem/conflicts",
            true,
        ),
        (
            "CPU s per 1,000: apiserver + etcd".into(),
            "/loaded/{}/cpuSecondsPer1000/controlPlane",
            true,
        ),
        (
            "CPU s per 1,000: kdiag agent".into(),
            "/loaded/{}/cpuSecondsPer1000/agent",
            false,
        ),
        (
            "CPU s per 1,000: kdiag controller".into(),
            "/loaded/{}/cpuSecondsPer1000/controller",
            false,
        ),
    ];
    for (name, pointer, has_floor) in rows {
        let k = num(p, &pointer.replace("{}", "kdiag"));
        if has_floor {
            let f = num(p, &pointer.replace("{}", "floor"));
            t.row(vec![name, fmt(k), fmt(f), fmt(k / f)]);
        } else {
            t.row(vec![name, fmt(k), "-".into(), "".into()]);
        }
    }
    t.render(out);
    if let Some(req) = p
        .pointer("/loaded/kdiag/apiserverPerItem/byRequest")
        .and_then(Value::as_object)
    {
        let parts: Vec<String> = req
            .iter()
            .filter(|(k, _)| !k.starts_with("WATCH"))
            .map(|(k, v)| format!("{k} {}", fmt(v.as_f64().unwrap_or(0.0))))
            .collect();
        out.push_str(&format!(
            "  kdiag's requests per Abnormal: {}\n",
            parts.join(", ")
        ));
    }
    out.push_str(&format!(
        "  admission webhook (above: on, as shipped): {} creates one at a time on a node with no agent, \
         p50 {} ms / p99 {} ms with it ({} reviews), {} ms / {} ms without ({} reviews): x{} / x{}\n",
        num(p, "/admission/n"),
        fmt(num(p, "/admission/webhook/p50Ms")),
        fmt(num(p, "/admission/webhook/p99Ms")),
        num(p, "/admission/reviews/webhook"),
        fmt(num(p, "/admission/noWebhook/p50Ms")),
        fmt(num(p, "/admission/noWebhook/p99Ms")),
        num(p, "/admission/reviews/noWebhook"),
        fmt(num(p, "/admission/ratio/p50")),
        fmt(num(p, "/admission/ratio/p99")),
    ));
    out.push('\n');
}

fn footprint(out: &mut String, f: &Value) {
    out.push_str(&format!(
        "2. Footprint of the real processes (VmRSS; utime+stime over {} s idle); for scale: \
         Kube Diagnoser's agent requested 100 MiB (limit 4 GiB), node-problem-detector requests 80 MiB\n",
        f["idle"]["seconds"]
    ));
    let n = f["abnormalsOnNode"].as_u64().unwrap_or(0);
    let mut t = Table::new(&["measure", "agent", "controller", "target"]);
    let rows = [
        ("idle RSS (MiB)".to_string(), "/idle/{}/rssMiB", "<= 20"),
        (
            "  of it anonymous (heap, stacks)".to_string(),
            "/idle/{}/rssAnonMiB",
            "",
        ),
        (
            "  of it file-backed (the binary)".to_string(),
            "/idle/{}/rssFileMiB",
            "",
        ),
        (
            "idle CPU (% of a core)".to_string(),
            "/idle/{}/cpuPercent",
            "near 0",
        ),
        (
            format!("RSS with {n} Abnormals (MiB)"),
            "/full/{}/rssMiB",
            "<= 64",
        ),
        (
            "  of it anonymous (heap, stacks)".to_string(),
            "/full/{}/rssAnonMiB",
            "",
        ),
        (
            "peak RSS during the run (MiB)".to_string(),
            "/full/{}/peakRssMiB",
            "",
        ),
        (
            format!("idle CPU with {n} Abnormals (% of a core)"),
            "/full/{}/cpuPercent",
            "near 0",
        ),
        (
            "CPU s per 1,000 Abnormals (filling the node)".to_string(),
            "/fill/cpuSecondsPer1000/{}",
            "",
        ),
    ];
    for (name, pointer, target) in rows {
        t.row(vec![
            name,
            fmt(num(f, &pointer.replace("{}", "agent"))),
            fmt(num(f, &pointer.replace("{}", "controller"))),
            target.into(),
        ]);
    }
    t.render(out);
    out.push_str(&format!(
        "  a finished Abnormal is {} bytes of JSON ({} of it status.context, {} managedFields); \
         filling ran at {} Abnormals/s; apiserver requests per minute while idle: {}\n\n",
        fmt(num(f, "/storedAbnormal/jsonBytes")),
        fmt(num(f, "/storedAbnormal/contextBytes")),
        fmt(num(f, "/storedAbnormal/managedFieldsBytes")),
        fmt(num(f, "/fill/perSecond")),
        fmt(num(f, "/idle/apiserverRequestsPerMinute")),
    ));
}

fn scale(out: &mut String, s: &Value) {
    out.push_str(&format!(
        "3. Scale with nodes: {} Abnormals per step, round-robin over the agents' nodes; baseline = \
         the same with one watch-everything watcher per agent (as Kube Diagnoser's agents watched)\n",
        s["abnormalsPerStep"]
    ));
    let mut t = Table::new(&[
        "agents",
        "watches",
        "per agent",
        "p50 ms",
        "p99 ms",
        "Abn/s",
        "ended Failed",
        "requests/Abn",
        "writes/Abn",
        "watch events/Abn",
        "baseline events/Abn",
        "CPU ms/Abn",
        "only its node's agent",
    ]);
    for step in s["steps"].as_array().into_iter().flatten() {
        t.row(vec![
            step["agents"].to_string(),
            fmt(num(step, "/watches")),
            fmt(num(step, "/watchesPerAgent")),
            fmt(num(step, "/kdiag/latency/p50Ms")),
            fmt(num(step, "/kdiag/latency/p99Ms")),
            fmt(num(step, "/kdiag/perSecond")),
            fmt(num(step, "/kdiag/failed")),
            fmt(num(step, "/kdiag/apiserverPerAbnormal/requests")),
            fmt(num(step, "/kdiag/apiserverPerAbnormal/writes")),
            fmt(num(step, "/kdiag/abnormalWatchEventsPerAbnormal")),
            fmt(num(
                step,
                "/watchEverythingBaseline/abnormalWatchEventsPerAbnormal",
            )),
            fmt(num(step, "/kdiag/processCpuMsPerAbnormal")),
            if step["routing"]["onlyItsNodesAgent"] == json!(true) {
                "yes".into()
            } else {
                format!("NO: {}", step["routing"])
            },
        ]);
    }
    t.render(out);
    out.push('\n');
}

fn triggers(out: &mut String, tr: &Value) {
    out.push_str(&format!(
        "4. Trigger paths, {} episodes each, one at a time; baseline = one bare create of an \
         Abnormal-sized object (p50 {} ms, p99 {} ms)\n",
        tr["episodes"],
        fmt(num(tr, "/apiserverWrite/p50Ms")),
        fmt(num(tr, "/apiserverWrite/p99Ms")),
    ));
    let mut t = Table::new(&["path", "p50 ms", "p99 ms", "p50 / write", "p99 / write"]);
    for (name, key) in [
        ("ProbeStatus ERROR -> Abnormal exists", "probeToAbnormal"),
        (
            "ProbeStatus ERROR -> root cause on the ProbeStatus",
            "probeToRootCause",
        ),
        ("Warning Event -> Abnormal exists", "eventToAbnormal"),
        ("POST /api/v2/alerts -> Abnormal exists", "alertToAbnormal"),
    ] {
        let p = |q: &str| num(tr, &format!("/{key}/{q}"));
        t.row(vec![
            name.into(),
            fmt(p("latency/p50Ms")),
            fmt(p("latency/p99Ms")),
            fmt(p("ratioToWrite/p50")),
            fmt(p("ratioToWrite/p99")),
        ]);
    }
    t.render(out);
    out.push('\n');
}

fn probes(out: &mut String, p: &Value) {
    out.push_str(&format!(
        "6. Probes: {} native TCP probes with unchanged results for {} s; continuous every {} s \
         against the same probes periodic (runInterval 1 minute), the baseline\n",
        p["probes"], p["seconds"], p["intervalSeconds"],
    ));
    let mut t = Table::new(&[
        "mode",
        "controller CPU % of a core",
        "apiserver writes",
        "apiserver requests",
    ]);
    for (name, key) in [
        ("continuous", "continuous"),
        ("periodic (baseline)", "periodic"),
    ] {
        let q = |f: &str| num(p, &format!("/{key}/{f}"));
        t.row(vec![
            name.into(),
            fmt(q("controllerCpuPercentOfCore")),
            fmt(q("apiserverWrites")),
            fmt(q("apiserverRequests")),
        ]);
    }
    t.render(out);
    out.push('\n');
}

fn probe_triggers(out: &mut String, p: &Value) {
    out.push_str(&format!(
        "7. Probes triggered by change, {} rollouts, one at a time (quiet period {} s, included); \
         baseline = a manual run of the same probe\n",
        p["changes"],
        fmt(num(p, "/quietSeconds")),
    ));
    let mut t = Table::new(&["path", "p50 ms", "p99 ms", "max ms"]);
    for (name, key) in [
        (
            "rollout finished -> ProbeRun (Change) has its results",
            "changeToResult",
        ),
        (
            "manual ProbeRun created -> it has its results",
            "manualRunToResult",
        ),
    ] {
        t.row(vec![
            name.into(),
            fmt(num(p, &format!("/{key}/p50Ms"))),
            fmt(num(p, &format!("/{key}/p99Ms"))),
            fmt(num(p, &format!("/{key}/maxMs"))),
        ]);
    }
    t.row(vec![
        "change -> result, less the quiet period".into(),
        fmt(num(p, "/changeMinusQuiet/p50Ms")),
        fmt(num(p, "/changeMinusQuiet/p99Ms")),
        String::new(),
    ]);
    t.render(out);
    out.push('\n');
}

fn fleet(out: &mut String, f: &Value) {
    out.push_str(&format!(
        "8. Fleet: the kdiag hub process with N member links (simulated members, real \
         WebSocket+TLS links), heartbeats every {} s, measured idle for {} s per size; {} \
         ProbeStatus changes per size, member send to hub ack (stored), against the floor: the \
         hub's two writes of that object done directly. Hub RSS with no links: {} MiB\n",
        f["heartbeatSeconds"],
        f["idleSeconds"],
        f["changes"],
        fmt(num(f, "/hubWithoutLinks/rssMiB")),
    ));
    let mut t = Table::new(&[
        "clusters",
        "hub RSS MiB",
        "KiB/cluster",
        "hub CPU % core",
        "% core/cluster",
        "heartbeats/s",
        "CPU ms/heartbeat",
        "change p50 ms",
        "change p99 ms",
        "floor p99 ms",
        "p99 ratio",
    ]);
    for s in f["sizes"].as_array().into_iter().flatten() {
        let q = |p: &str| num(s, p);
        t.row(vec![
            s["clusters"].to_string(),
            fmt(q("/hubRssMiB")),
            fmt(q("/perCluster/rssKiBAboveNoLinks")),
            fmt(q("/hubCpuPercentOfCore")),
            fmt(q("/perCluster/cpuPercentOfCore")),
            fmt(q("/heartbeatsPerSecond")),
            fmt(q("/hubCpuMsPerHeartbeat")),
            fmt(q("/changeToStored/p50Ms")),
            fmt(q("/changeToStored/p99Ms")),
            fmt(q("/floorDirectWrite/p99Ms")),
            fmt(q("/ratioToFloor/p99")),
        ]);
    }
    t.render(out);
    out.push('\n');
}

fn collectors(out: &mut String, c: &Value) {
    out.push_str(&format!(
        "5. Collectors against ps and du (kdiag-collectors' bench_collectors: median of {} alternating runs)\n",
        c["runs"]
    ));
    let mut t = Table::new(&["case", "kdiag ms", "reference ms", "kdiag/reference"]);
    for (key, name) in [
        ("processScan", "process scan"),
        ("directoryWalk", "directory walk"),
    ] {
        let x = &c[key];
        let what = match key {
            "processScan" => format!(
                "{name}, {} processes vs {}",
                x["processes"],
                x["reference"].as_str().unwrap_or("")
            ),
            _ => format!(
                "{name}, {} files vs {}",
                x["files"],
                x["reference"].as_str().unwrap_or("")
            ),
        };
        t.row(vec![
            what,
            fmt(num(x, "/kdiagMs")),
            fmt(num(x, "/referenceMs")),
            fmt(num(x, "/ratio")),
        ]);
    }
    t.render(out);
    out.push('\n');
}
