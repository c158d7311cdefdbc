//! docs/api-reference.md, generated from the CRDs kdiag serves (`kdiag_api::crds::all()`, the
//! same YAML as config/crd). The test that includes this module fails when the committed page
//! drifts; `KDIAG_UPDATE_DOCS=1 cargo test -p kdiag --test kubectl_diag api_reference`
//! rewrites it.

use std::fmt::Write as _;

use serde_json::Value;

/// Fields whose description starts so are kdiag's additions, and so are their children. Values
/// kdiag adds to an original field ("or (kdiag) a DNS name") are said in the description itself.
fn is_extension(description: &str) -> bool {
    description.starts_with("kdiag extension")
}

/// The whole page.
pub fn api_reference() -> String {
    let crds = kdiag_api::crds::all();
    let mut out = String::new();
    out.push_str(
        "# API reference\n\n\
         <!-- Generated from the Rust types (kdiag_api::crds::all(), the same as config/crd). Do not edit:\n     \
         KDIAG_UPDATE_DOCS=1 cargo test -p kdiag --test kubectl_diag api_reference -->\n\n\
         Every field of every kind kdiag serves, generated from the CustomResourceDefinitions in\n\
         [config/crd](../config/crd). Fields marked **kdiag** are kdiag's extensions: the original\n\
         projects (Kube Diagnoser v0.1.6, KubeProber) do not have them, and every one is optional, so\n\
         objects written for the originals stay valid. [compatibility.md](compatibility.md) explains\n\
         them; [concepts.md](concepts.md) explains what the Abnormal fields mean in the pipeline.\n\n\
         Enumerations are checked by the apiserver: a value not listed is refused at `kubectl create`.\n\n",
    );
    out.push_str("| kind | API version | scope | short names |\n|---|---|---|---|\n");
    for crd in &crds {
        let names = &crd.spec.names;
        let _ = writeln!(
            out,
            "| [{kind}](#{anchor}) | `{group}/{version}` | {scope} | {short} |",
            kind = names.kind,
            anchor = names.kind.to_lowercase(),
            group = crd.spec.group,
            version = crd.spec.versions[0].name,
            scope = crd.spec.scope,
            short = names
                .short_names
                .as_ref()
                .map(|s| s
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default(),
        );
    }
    for crd in &crds {
        let names = &crd.spec.names;
        for version in &crd.spec.versions {
            let _ = writeln!(out, "\n## {}\n", names.kind);
            let schema = version
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .map(|s| serde_json::to_value(s).unwrap_or_default())
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "`{}/{}` · `kind: {}` · {} · plural `{}`{}",
                crd.spec.group,
                version.name,
                names.kind,
                crd.spec.scope,
                names.plural,
                if version
                    .subresources
                    .as_ref()
                    .is_some_and(|s| s.status.is_some())
                {
                    " · status subresource"
                } else {
                    ""
                }
            );
            if let Some(d) = schema["description"].as_str() {
                let _ = writeln!(out, "\n{}", one_paragraph(d));
            }
            if let Some(columns) = &version.additional_printer_columns {
                let cols: Vec<String> = columns
                    .iter()
                    .map(|c| format!("{} (`{}`)", c.name, c.json_path))
                    .collect();
                let _ = writeln!(out, "\n`kubectl get` shows: {}.", cols.join(", "));
            }
            out.push_str("\n| field | type | description |\n|---|---|---|\n");
            let mut rows = Vec::new();
            walk(&schema, "", false, &mut rows);
            for row in rows {
                out.push_str(&row);
                out.push('\n');
            }
        }
    }
    out
}

/// One row per field, depth first in the schema's (alphabetical) order.
fn walk(schema: &Value, path: &str, inherited: bool, rows: &mut Vec<String>) {
    let Some(props) = schema["properties"].as_object() else {
        return;
    };
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (name, field) in props {
        if path.is_empty() && matches!(name.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        let here = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}.{name}")
        };
        let description = field["description"].as_str().unwrap_or("");
        let extension = inherited || is_extension(description);
        let mut cell = format!("`{here}`");
        if extension {
            cell.push_str(" **kdiag**");
        }
        let mut ty = type_of(field);
        if required.contains(&name.as_str()) {
            ty.push_str(", required");
        }
        rows.push(format!(
            "| {cell} | {ty} | {} |",
            escape(&one_paragraph(description))
        ));
        walk(field, &here, extension, rows);
        // Lists of objects: their item fields under `field[]`.
        let items = &field["items"];
        if items.is_object() {
            walk(items, &format!("{here}[]"), extension, rows);
        }
    }
}

fn type_of(field: &Value) -> String {
    if field["x-kubernetes-int-or-string"] == Value::Bool(true) {
        return "integer or string".into();
    }
    let base = match field["type"].as_str() {
        Some("array") => format!("array of {}", type_of(&field["items"])),
        Some("object")
            if field["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true)
                && field["properties"].is_null() =>
        {
            "object (free-form)".into()
        }
        Some("object") if field["additionalProperties"].is_object() => {
            format!("map of {}", type_of(&field["additionalProperties"]))
        }
        Some(t) => match field["format"].as_str() {
            Some(f) => format!("{t} ({f})"),
            None => t.to_owned(),
        },
        None if field["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true) => "any".into(),
        None => "any".into(),
    };
    match field["enum"].as_array() {
        Some(values) => format!(
            "{base}: {}",
            values
                .iter()
                .filter_map(Value::as_str)
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(" \\| ")
        ),
        None => base,
    }
}

fn one_paragraph(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn escape(s: &str) -> String {
    s.replace('|', "\\|")
}

/// The RBAC of config/deploy/10-rbac.yaml as tables, one per role, for docs/security.md.
pub fn rbac_tables(rbac_yaml: &str) -> String {
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(rbac_yaml)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .collect();
    let whys = rule_comments(rbac_yaml);
    let mut out = String::new();
    let bindings: Vec<&serde_yaml::Value> = docs
        .iter()
        .filter(|d| {
            matches!(
                d["kind"].as_str(),
                Some("ClusterRoleBinding" | "RoleBinding")
            )
        })
        .collect();
    for role in docs
        .iter()
        .filter(|d| matches!(d["kind"].as_str(), Some("ClusterRole" | "Role")))
    {
        let kind = role["kind"].as_str().unwrap_or_default();
        let name = role["metadata"]["name"].as_str().unwrap_or_default();
        let scope = match role["metadata"]["namespace"].as_str() {
            Some(ns) => format!("namespace `{ns}` only"),
            None => "every namespace".to_owned(),
        };
        let subjects: Vec<String> = bindings
            .iter()
            .filter(|b| {
                b["roleRef"]["kind"].as_str() == Some(kind)
                    && b["roleRef"]["name"].as_str() == Some(name)
            })
            .flat_map(|b| b["subjects"].as_sequence().cloned().unwrap_or_default())
            .map(|s| {
                format!(
                    "{} `{}/{}`",
                    s["kind"].as_str().unwrap_or_default(),
                    s["namespace"].as_str().unwrap_or_default(),
                    s["name"].as_str().unwrap_or_default()
                )
            })
            .collect();
        if subjects.is_empty() {
            // Such a role is bound at run time, by a RoleBinding in one namespace
            // (kubeprober-worker, by the probe runner), so its scope is that namespace.
            let _ = writeln!(
                out,
                "\n**{kind} `{name}`** (bound to nobody in config/deploy; kdiag binds it in a namespace with a RoleBinding, which grants it there only):\n"
            );
        } else {
            let _ = writeln!(
                out,
                "\n**{kind} `{name}`** ({scope}), bound to {}:\n",
                subjects.join(", ")
            );
        }
        out.push_str("| API group | resources | verbs | needed for |\n|---|---|---|---|\n");
        let role_whys = whys
            .iter()
            .find(|(k, n, _)| k == kind && n == name)
            .map(|(_, _, w)| w.clone())
            .unwrap_or_default();
        for (i, rule) in role["rules"]
            .as_sequence()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let list = |key: &str| -> Vec<String> {
                rule[key]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            };
            let groups: Vec<String> = list("apiGroups")
                .into_iter()
                .map(|g| if g.is_empty() { "core".into() } else { g })
                .collect();
            let mut resources = list("resources").join(", ");
            let names = list("resourceNames");
            if !names.is_empty() {
                resources.push_str(&format!(" (only {})", names.join(", ")));
            }
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                groups.join(", "),
                resources,
                list("verbs").join(", "),
                escape(role_whys.get(i).map(String::as_str).unwrap_or_default())
            );
        }
    }
    out
}

/// The comment above each rule of each role in an RBAC manifest, by (kind, name): why the rule
/// is there. A rule without a comment of its own shares the one above it.
pub fn rule_comments(rbac_yaml: &str) -> Vec<(String, String, Vec<String>)> {
    let mut out = Vec::new();
    for doc in rbac_yaml.split("\n---") {
        let (mut kind, mut name) = (String::new(), String::new());
        let (mut block, mut current, mut whys) = (Vec::<String>::new(), String::new(), Vec::new());
        let mut in_rules = false;
        for line in doc.lines() {
            let t = line.trim();
            if let Some(c) = t.strip_prefix('#') {
                block.push(c.trim().to_owned());
                continue;
            }
            if !block.is_empty() {
                current = block.join(" ");
                block.clear();
            }
            if let Some(k) = line.strip_prefix("kind: ") {
                kind = k.trim().to_owned();
            } else if let Some(n) = line.strip_prefix("  name: ")
                && name.is_empty()
            {
                name = n.trim().to_owned();
            } else if line.starts_with("rules:") {
                in_rules = true;
                current.clear();
            } else if in_rules && line.starts_with("- ") {
                whys.push(current.clone());
            }
        }
        if matches!(kind.as_str(), "ClusterRole" | "Role") {
            out.push((kind, name, whys));
        }
    }
    out
}

/// What the agent's pod may touch on its node, from config/deploy/40-agent.yaml.
pub fn agent_privileges(agent_yaml: &str) -> String {
    let ds: serde_yaml::Value = serde_yaml::Deserializer::from_str(agent_yaml)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .find(|d: &serde_yaml::Value| d["kind"].as_str() == Some("DaemonSet"))
        .unwrap_or_default();
    let pod = &ds["spec"]["template"]["spec"];
    let mut out = String::from("| setting | value |\n|---|---|\n");
    let flag = |v: &serde_yaml::Value| v.as_bool().unwrap_or(false).to_string();
    let _ = writeln!(out, "| `hostPID` | {} |", flag(&pod["hostPID"]));
    let _ = writeln!(out, "| `hostNetwork` | {} |", flag(&pod["hostNetwork"]));
    for c in pod["containers"].as_sequence().into_iter().flatten() {
        let sc = &c["securityContext"];
        let seq = |v: &serde_yaml::Value| -> String {
            v.as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(|s| format!("`{s}`")))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "| `runAsUser` | {} |",
            sc["runAsUser"]
                .as_i64()
                .map(|u| u.to_string())
                .unwrap_or_else(|| "image default".into())
        );
        let _ = writeln!(out, "| `privileged` | {} |", flag(&sc["privileged"]));
        let _ = writeln!(
            out,
            "| `seccompProfile` | {} |",
            sc["seccompProfile"]["type"]
                .as_str()
                .or(pod["securityContext"]["seccompProfile"]["type"].as_str())
                .unwrap_or("none (Unconfined on Kubernetes before 1.27)")
        );
        let _ = writeln!(
            out,
            "| `allowPrivilegeEscalation` | {} |",
            flag(&sc["allowPrivilegeEscalation"])
        );
        let _ = writeln!(
            out,
            "| `readOnlyRootFilesystem` | {} |",
            flag(&sc["readOnlyRootFilesystem"])
        );
        let _ = writeln!(
            out,
            "| capabilities | drop {}; add {} |",
            seq(&sc["capabilities"]["drop"]),
            seq(&sc["capabilities"]["add"])
        );
        out.push_str("\n| host path | mounted at | access |\n|---|---|---|\n");
        let volumes = pod["volumes"].as_sequence().cloned().unwrap_or_default();
        for m in c["volumeMounts"].as_sequence().into_iter().flatten() {
            let name = m["name"].as_str().unwrap_or_default();
            let host = volumes
                .iter()
                .find(|v| v["name"].as_str() == Some(name))
                .and_then(|v| v["hostPath"]["path"].as_str())
                .unwrap_or("(not a host path)");
            let access = if m["readOnly"].as_bool().unwrap_or(false) {
                "read-only"
            } else {
                "read-write"
            };
            let _ = writeln!(
                out,
                "| `{host}` | `{}` | {access} |",
                m["mountPath"].as_str().unwrap_or_default()
            );
        }
    }
    out
}

/// `doc` with the text between `<!-- BEGIN GENERATED name -->` and `<!-- END GENERATED name -->`
/// replaced by `content`; None when the markers are missing.
pub fn replace_generated(doc: &str, name: &str, content: &str) -> Option<String> {
    let begin = format!("<!-- BEGIN GENERATED {name} -->");
    let end = format!("<!-- END GENERATED {name} -->");
    let start = doc.find(&begin)? + begin.len();
    let stop = doc[start..].find(&end)? + start;
    Some(format!(
        "{}\n{}\n{}",
        &doc[..start],
        content.trim(),
        &doc[stop..]
    ))
}
