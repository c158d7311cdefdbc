//! The state machine, case by case.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kdiag_api::*;
use serde_json::json;

use super::*;

fn now() -> Time {
    Time("2026-11-22T10:00:00Z".parse().unwrap())
}

fn abnormal(spec: serde_json::Value) -> Abnormal {
    let mut a: Abnormal = serde_json::from_value(json!({
        "apiVersion": "diagnosis.netease.com/v1", "kind": "Abnormal",
        "metadata": {"name": "a", "namespace": "default"}, "spec": spec
    }))
    .unwrap();
    a.status = Some(AbnormalStatus {
        phase: Some(AbnormalPhase::InformationCollecting),
        ..Default::default()
    });
    a
}

fn ok(message: &str) -> StepResult {
    StepResult {
        result: ProcessorResult::Succeeded,
        message: message.into(),
        start_time: now(),
        duration_ms: 5,
        output: StepOutput::None,
    }
}

fn failed(message: &str) -> StepResult {
    StepResult {
        result: ProcessorResult::Failed,
        message: message.into(),
        ..ok("")
    }
}

fn with_context(key: &str, value: serde_json::Value) -> StepResult {
    StepResult {
        output: StepOutput::Processor {
            context: [(key.to_owned(), value)].into(),
            root_cause: None,
            command_executors: None,
            profilers: None,
            removed_context_keys: Vec::new(),
        },
        ..ok("collected")
    }
}

fn expect_run(a: &Abnormal) -> Step {
    match next(a) {
        Next::Run(step) => step,
        other => panic!("expected a step to run, got {other:?}"),
    }
}

/// Drives an Abnormal to a final phase, answering each step with `answer(label)`.
fn drive(a: &mut Abnormal, answer: impl Fn(&Step) -> StepResult) -> Vec<StageEvent> {
    let mut events = Vec::new();
    for _ in 0..100 {
        match next(a) {
            Next::Idle => return events,
            Next::Run(step) => {
                let r = answer(&step);
                apply_step(a, &step, r, Limits::default());
            }
            Next::Abandon(step) => apply_step(a, &step, abandoned(&now()), Limits::default()),
            Next::EndStage(stage, outcome) => events.push(end_stage(a, stage, &outcome, &now())),
        }
    }
    panic!("did not finish");
}

fn condition(a: &Abnormal, t: AbnormalConditionType) -> AbnormalCondition {
    a.status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == t)
        .cloned()
        .unwrap_or_else(|| panic!("no {t:?} condition"))
}

fn seed() -> Abnormal {
    abnormal(json!({
        "assignedDiagnosers": [{"name": "pod-disk-usage-diagnoser", "namespace": "kube-diagnoser"}],
        "assignedInformationCollectors": [{"name": "pod-collector", "namespace": "kube-diagnoser"}],
        "nodeName": "10.177.16.22", "skipDiagnosis": false, "skipInformationCollection": false, "skipRecovery": true,
        "source": "Custom"
    }))
}

#[test]
fn the_seed_readme_abnormal_collects_diagnoses_skips_recovery_and_succeeds() {
    let mut a = seed();
    let events = drive(&mut a, |step| match step.label.as_str() {
        "kube-diagnoser/pod-collector" => with_context("podInformation", json!([])),
        "kube-diagnoser/pod-disk-usage-diagnoser" => ok("pod x uses 90% of the disk"),
        other => panic!("unexpected step {other}"),
    });
    let st = a.status.as_ref().unwrap();
    assert_eq!(st.phase, Some(AbnormalPhase::Succeeded));
    assert!(st.identifiable);
    assert!(!st.recoverable);
    assert_eq!(
        st.diagnoser,
        Some(NamespacedName::new(
            "kube-diagnoser",
            "pod-disk-usage-diagnoser"
        ))
    );
    assert_eq!(
        condition(&a, AbnormalConditionType::InformationCollected).status,
        ConditionStatus::True
    );
    assert_eq!(
        condition(&a, AbnormalConditionType::Identified).status,
        ConditionStatus::True
    );
    let recovered = condition(&a, AbnormalConditionType::Recovered);
    assert_eq!(
        (recovered.status, recovered.reason.as_str()),
        (ConditionStatus::False, "Skipped")
    );
    assert!(
        recovered.message.contains("skipRecovery is true"),
        "{}",
        recovered.message
    );
    let reasons: Vec<_> = events.iter().map(|e| e.reason).collect();
    assert_eq!(reasons, ["Collected", "Identified", "SkippingRecovery"]);
    assert_eq!(st.context.as_ref().unwrap()["podInformation"], json!([]));
}

#[test]
fn steps_run_commands_then_profilers_then_processors_in_the_order_listed() {
    let a = abnormal(json!({
        "nodeName": "n",
        "assignedInformationCollectors": [{"name": "c-zeta"}, {"name": "a-alpha", "namespace": "kube-diagnoser"}, {"name": "m-mid"}],
        "commandExecutors": [
            {"command": ["uptime"], "type": "Diagnoser"},
            {"command": ["ps", "aux"], "type": "InformationCollector"},
        ],
        "profilers": [{"name": "heap", "type": "InformationCollector", "go": {"source": "http://127.0.0.1:6060/debug/pprof/heap"}}]
    }));
    let labels: Vec<String> = plan(&a, Stage::InformationCollecting)
        .into_iter()
        .map(|s| s.label)
        .collect();
    assert_eq!(
        labels,
        [
            "ps aux",
            "profiler heap",
            "default/c-zeta",
            "kube-diagnoser/a-alpha",
            "default/m-mid"
        ]
    );
    let labels: Vec<String> = plan(&a, Stage::Diagnosing)
        .into_iter()
        .map(|s| s.label)
        .collect();
    assert_eq!(labels, ["uptime"]);
}

#[test]
fn every_collector_runs_and_one_success_is_enough() {
    let mut a = abnormal(
        json!({"nodeName": "n", "assignedInformationCollectors": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}),
    );
    let mut ran = Vec::new();
    while let Next::Run(step) = next(&a) {
        ran.push(step.label.clone());
        let r = if step.label.ends_with("/b") {
            ok("fine")
        } else {
            failed("refused")
        };
        apply_step(&mut a, &step, r, Limits::default());
    }
    assert_eq!(ran, ["default/a", "default/b", "default/c"]);
    assert_eq!(
        next(&a),
        Next::EndStage(
            Stage::InformationCollecting,
            StageOutcome::Succeeded {
                by: None,
                succeeded: 1,
                total: 3
            }
        )
    );
}

#[test]
fn the_first_diagnoser_to_succeed_wins_and_the_rest_are_recorded_as_skipped() {
    let mut a = abnormal(
        json!({"nodeName": "n", "assignedDiagnosers": [{"name": "d1"}, {"name": "d2"}, {"name": "d3"}]}),
    );
    let ran = std::cell::RefCell::new(Vec::new());
    drive(&mut a, |step| {
        ran.borrow_mut().push(step.label.clone());
        if step.label.ends_with("d2") {
            ok("found it")
        } else {
            failed("nothing")
        }
    });
    assert_eq!(*ran.borrow(), ["default/d1", "default/d2"]);
    let st = a.status.unwrap();
    assert_eq!(st.diagnoser, Some(NamespacedName::new("default", "d2")));
    let d3 = st
        .processors
        .iter()
        .find(|r| r.processor == "default/d3")
        .unwrap();
    assert_eq!(d3.result, ProcessorResult::Skipped);
    assert_eq!(st.phase, Some(AbnormalPhase::Succeeded));
}

#[test]
fn when_every_diagnoser_fails_the_abnormal_fails_with_each_message() {
    let mut a =
        abnormal(json!({"nodeName": "n", "assignedDiagnosers": [{"name": "d1"}, {"name": "d2"}]}));
    let events = drive(&mut a, |step| {
        failed(&format!("{} found nothing", step.label))
    });
    let st = a.status.as_ref().unwrap();
    assert_eq!(st.phase, Some(AbnormalPhase::Failed));
    assert_eq!(st.reason, "NotIdentified");
    assert!(
        st.message.contains("default/d1: default/d1 found nothing")
            && st.message.contains("default/d2"),
        "{}",
        st.message
    );
    assert!(!st.identifiable);
    assert!(events.last().unwrap().warning);
    assert_eq!(events.last().unwrap().reason, "FailedIdentify");
}

#[test]
fn when_no_collector_succeeds_diagnosis_never_starts() {
    let mut a = abnormal(
        json!({"nodeName": "n", "assignedInformationCollectors": [{"name": "c"}], "assignedDiagnosers": [{"name": "d"}]}),
    );
    drive(&mut a, |step| {
        assert!(!step.label.ends_with("/d"), "diagnoser must not run");
        failed("connection refused")
    });
    let st = a.status.unwrap();
    assert_eq!(st.phase, Some(AbnormalPhase::Failed));
    assert_eq!(st.reason, "CollectionFailed");
}

#[test]
fn empty_lists_skip_their_stage_without_claiming_success() {
    let mut a = abnormal(json!({"nodeName": "n"}));
    let events = drive(&mut a, |_| panic!("nothing to run"));
    let st = a.status.as_ref().unwrap();
    assert_eq!(st.phase, Some(AbnormalPhase::Succeeded));
    for t in [
        AbnormalConditionType::InformationCollected,
        AbnormalConditionType::Identified,
        AbnormalConditionType::Recovered,
    ] {
        let c = condition(&a, t);
        assert_eq!(
            (c.status, c.reason.as_str()),
            (ConditionStatus::False, "Skipped"),
            "{t:?}"
        );
    }
    assert!(!st.identifiable && st.diagnoser.is_none());
    let reasons: Vec<_> = events.iter().map(|e| e.reason).collect();
    assert_eq!(
        reasons,
        [
            "SkippingCollection",
            "SkippingDiagnosis",
            "SkippingRecovery"
        ]
    );
}

#[test]
fn a_stage_with_only_commands_runs_them_and_then_counts_as_skipped() {
    let mut a = abnormal(
        json!({"nodeName": "n", "commandExecutors": [{"command": ["ps", "aux"], "type": "InformationCollector"}]}),
    );
    let step = expect_run(&a);
    assert_eq!(step.kind, StepKind::Command(0));
    assert!(needs_intent(&step));
    apply_step(&mut a, &step, ok("exit 0"), Limits::default());
    assert!(matches!(
        next(&a),
        Next::EndStage(Stage::InformationCollecting, StageOutcome::Skipped(_))
    ));
}

#[test]
fn a_recovery_found_running_after_a_restart_is_never_run_again() {
    let mut a = abnormal(
        json!({"nodeName": "n", "assignedRecoverers": [{"name": "signal-recoverer", "namespace": "kube-diagnoser"}]}),
    );
    a.status.as_mut().unwrap().phase = Some(AbnormalPhase::Recovering);
    let step = expect_run(&a);
    assert!(needs_intent(&step));
    mark_running(&mut a, &step, &now());
    // The agent dies here. A new one reads the persisted status:
    let Next::EndStage(stage, outcome) = next(&a) else {
        panic!("expected the stage to end")
    };
    assert_eq!(
        outcome,
        StageOutcome::RecoveryInterrupted("kube-diagnoser/signal-recoverer".into())
    );
    let event = end_stage(&mut a, stage, &outcome, &now());
    assert_eq!(event.reason, "RecoveryInterrupted");
    let st = a.status.unwrap();
    assert_eq!(st.phase, Some(AbnormalPhase::Failed));
    assert_eq!(st.reason, "RecoveryInterrupted");
    assert_eq!(
        st.processors.len(),
        1,
        "the recoverer is recorded once, as failed"
    );
    assert_eq!(st.processors[0].result, ProcessorResult::Failed);
}

#[test]
fn an_interrupted_command_is_abandoned_and_the_stage_goes_on() {
    let mut a = abnormal(
        json!({"nodeName": "n", "assignedInformationCollectors": [{"name": "c"}],
        "commandExecutors": [{"command": ["kill", "-10", "1000"], "type": "InformationCollector"}]}),
    );
    let step = expect_run(&a);
    mark_running(&mut a, &step, &now());
    assert_eq!(next(&a), Next::Abandon(step.clone()));
    apply_step(&mut a, &step, abandoned(&now()), Limits::default());
    assert_eq!(expect_run(&a).label, "default/c");
    assert_eq!(a.status.as_ref().unwrap().processors.len(), 1);
}

#[test]
fn a_restarted_agent_resumes_after_the_last_recorded_step() {
    let mut a = abnormal(
        json!({"nodeName": "n", "assignedInformationCollectors": [{"name": "a"}, {"name": "b"}]}),
    );
    let first = expect_run(&a);
    apply_step(&mut a, &first, ok("done"), Limits::default());
    // Serialize and read back, as a new agent would.
    let a: Abnormal = serde_json::from_value(serde_json::to_value(&a).unwrap()).unwrap();
    assert_eq!(expect_run(&a).label, "default/b");
}

#[test]
fn an_output_over_the_cap_fails_the_step_and_keeps_nothing() {
    let mut a =
        abnormal(json!({"nodeName": "n", "assignedInformationCollectors": [{"name": "big"}]}));
    let step = expect_run(&a);
    let limits = Limits {
        max_step_output_bytes: 100,
        max_context_bytes: 1000,
        ..Limits::default()
    };
    apply_step(
        &mut a,
        &step,
        with_context("podInformation", json!("x".repeat(200))),
        limits,
    );
    let st = a.status.as_ref().unwrap();
    assert_eq!(st.processors[0].result, ProcessorResult::Failed);
    assert!(
        st.processors[0]
            .message
            .contains("exceeds the per-step cap of 100 bytes"),
        "{}",
        st.processors[0].message
    );
    assert!(st.context.is_none());
}

#[test]
fn context_that_would_outgrow_the_total_cap_is_refused() {
    let mut a = abnormal(
        json!({"nodeName": "n", "assignedInformationCollectors": [{"name": "a"}, {"name": "b"}]}),
    );
    let limits = Limits {
        max_step_output_bytes: 1000,
        max_context_bytes: 1200,
        ..Limits::default()
    };
    let s1 = expect_run(&a);
    apply_step(
        &mut a,
        &s1,
        with_context("one", json!("x".repeat(700))),
        limits,
    );
    let s2 = expect_run(&a);
    apply_step(
        &mut a,
        &s2,
        with_context("two", json!("y".repeat(700))),
        limits,
    );
    let st = a.status.as_ref().unwrap();
    assert_eq!(st.processors[0].result, ProcessorResult::Succeeded);
    assert_eq!(st.processors[1].result, ProcessorResult::Failed);
    assert!(
        st.processors[1]
            .message
            .contains("over the cap of 1200 bytes")
    );
    assert!(!st.context.as_ref().unwrap().contains_key("two"));
}

#[test]
fn abnormals_not_yet_admitted_or_already_final_need_nothing() {
    let mut a = seed();
    a.status = None;
    assert_eq!(next(&a), Next::Idle);
    for phase in [
        AbnormalPhase::Succeeded,
        AbnormalPhase::Failed,
        AbnormalPhase::Unknown,
    ] {
        a.status = Some(AbnormalStatus {
            phase: Some(phase),
            ..Default::default()
        });
        assert_eq!(next(&a), Next::Idle, "{phase:?}");
    }
}

#[test]
fn a_skip_flag_skips_the_stage_and_its_commands() {
    let mut a = abnormal(json!({"nodeName": "n", "skipInformationCollection": true,
        "assignedInformationCollectors": [{"name": "c"}],
        "commandExecutors": [{"command": ["ps"], "type": "InformationCollector"}]}));
    assert_eq!(
        next(&a),
        Next::EndStage(
            Stage::InformationCollecting,
            StageOutcome::Skipped("skipInformationCollection is true".into())
        )
    );
    drive(&mut a, |_| panic!("nothing runs"));
    assert_eq!(a.phase(), Some(AbnormalPhase::Succeeded));
}

fn of_release(release: &str, spec: serde_json::Value) -> Abnormal {
    let mut a = abnormal(spec);
    a.metadata.annotations = Some(
        [(
            kdiag_api::labels::KUBE_DIAGNOSER_VERSION_ANNOTATION.to_owned(),
            release.to_owned(),
        )]
        .into(),
    );
    a
}

#[test]
fn under_v0_1_2_and_v0_1_3_rules_a_skip_flag_still_runs_the_stages_commands_and_profilers() {
    for release in ["v0.1.2", "v0.1.3"] {
        // Kube Diagnoser v0.1.2's own command executor sample: every skip flag set.
        let mut a = of_release(
            release,
            json!({"nodeName": "n", "skipInformationCollection": true, "skipDiagnosis": true,
            "skipRecovery": true, "assignedInformationCollectors": [{"name": "c"}],
            "commandExecutors": [{"command": ["ps"], "type": "InformationCollector"},
                {"command": ["uname"], "type": "Diagnoser"}],
            "profilers": [{"name": "heap", "type": "Recoverer", "go": {"source": "http://10.0.0.1/"}}]}),
        );
        let ran = std::cell::RefCell::new(Vec::new());
        let events = drive(&mut a, |step| {
            ran.borrow_mut().push(step.label.clone());
            ok("ran")
        });
        assert_eq!(
            *ran.borrow(),
            ["ps", "uname", "profiler heap"],
            "{release}: the commands and profiler, not the processor"
        );
        assert_eq!(a.phase(), Some(AbnormalPhase::Succeeded), "{release}");
        assert!(
            events
                .iter()
                .any(|e| e.message.contains("skipInformationCollection is true")),
            "{release}: {events:?}"
        );
    }
}

#[test]
fn under_v0_1_0_and_v0_1_1_rules_and_kdiags_a_skip_flag_skips_the_commands_too() {
    let spec = json!({"nodeName": "n", "skipInformationCollection": true,
        "commandExecutors": [{"command": ["ps"], "type": "InformationCollector"}]});
    for mut a in [
        of_release("v0.1.1", spec.clone()),
        of_release("v0.1.4", spec.clone()),
        abnormal(spec.clone()),
    ] {
        drive(&mut a, |_| panic!("nothing runs"));
        assert_eq!(a.phase(), Some(AbnormalPhase::Succeeded));
    }
}

#[test]
fn a_diagnosers_root_cause_lands_in_status_and_in_the_event() {
    let mut a = abnormal(json!({"nodeName": "n", "assignedDiagnosers": [{"name": "d"}]}));
    let events = drive(&mut a, |_| StepResult {
        output: StepOutput::Processor {
            context: Default::default(),
            root_cause: Some(RootCause {
                summary: "disk full".into(),
                reason: "DiskFull".into(),
                ..Default::default()
            }),
            command_executors: None,
            profilers: None,
            removed_context_keys: Vec::new(),
        },
        ..ok("identified")
    });
    assert_eq!(
        a.status
            .as_ref()
            .unwrap()
            .root_cause
            .as_ref()
            .unwrap()
            .reason,
        "DiskFull"
    );
    assert!(
        events
            .iter()
            .any(|e| e.reason == "Identified" && e.message.contains("disk full"))
    );
}

#[test]
fn the_deadline_counts_from_admission_and_is_gone_once_passed() {
    let deadline = std::time::Duration::from_secs(600);
    let mut a = abnormal(json!({"nodeName": "n1"}));
    // Not admitted and no creation time: no clock to count from.
    assert_eq!(deadline_left(&a, deadline, &now()), None);
    a.status.as_mut().unwrap().start_time = Some(Time("2026-11-22T09:55:00Z".parse().unwrap()));
    assert_eq!(
        deadline_left(&a, deadline, &now()),
        Some(std::time::Duration::from_secs(300))
    );
    a.status.as_mut().unwrap().start_time = Some(Time("2026-11-22T09:50:00Z".parse().unwrap()));
    assert_eq!(deadline_left(&a, deadline, &now()), None, "exactly at it");
    a.status.as_mut().unwrap().start_time = Some(Time("2026-11-22T09:00:00Z".parse().unwrap()));
    assert_eq!(deadline_left(&a, deadline, &now()), None);
}

#[test]
fn a_stage_past_the_deadline_records_what_it_did_not_run_and_the_abnormal_fails() {
    let mut a = abnormal(json!({
        "nodeName": "n1",
        "assignedInformationCollectors": [{"namespace": "ns", "name": "c1"}, {"namespace": "ns", "name": "c2"}],
        "assignedDiagnosers": [{"namespace": "ns", "name": "d1"}],
    }));
    let first = expect_run(&a);
    apply_step(
        &mut a,
        &first,
        failed("stopped: deadline"),
        Limits::default(),
    );
    let outcome = StageOutcome::DeadlineExceeded(std::time::Duration::from_secs(1800));
    let event = end_stage(&mut a, Stage::InformationCollecting, &outcome, &now());
    let st = a.status.as_ref().unwrap();
    assert_eq!(st.phase, Some(AbnormalPhase::Failed));
    assert_eq!(st.reason, "DeadlineExceeded");
    assert!(st.message.contains("deadline of 30m"), "{}", st.message);
    assert_eq!(event.reason, "DeadlineExceeded");
    assert!(event.warning);
    let records: Vec<_> = st
        .processors
        .iter()
        .map(|r| (r.processor.as_str(), r.result))
        .collect();
    assert_eq!(
        records,
        [
            ("ns/c1", ProcessorResult::Failed),
            ("ns/c2", ProcessorResult::Skipped)
        ],
        "only the collection stage's own steps; diagnosis never starts"
    );
    assert_eq!(
        st.processors[1].message,
        "not run: the Abnormal's deadline of 30m had passed"
    );
    assert_eq!(next(&a), Next::Idle);
}

#[test]
fn a_root_cause_that_would_outgrow_the_whole_object_cap_is_dropped_and_the_step_says_why() {
    let mut a = abnormal(json!({"nodeName": "n", "assignedDiagnosers": [{"name": "d"}]}));
    a.status.as_mut().unwrap().phase = Some(AbnormalPhase::Diagnosing);
    let limits = Limits {
        max_object_bytes: 2000,
        ..Limits::default()
    };
    let step = expect_run(&a);
    let huge = StepResult {
        output: StepOutput::Processor {
            context: Default::default(),
            root_cause: Some(RootCause {
                summary: "s".repeat(5000),
                ..Default::default()
            }),
            command_executors: None,
            profilers: None,
            removed_context_keys: Vec::new(),
        },
        ..ok("found it")
    };
    apply_step(&mut a, &step, huge, limits);
    let st = a.status.as_ref().unwrap();
    assert!(st.root_cause.is_none(), "nothing of the output was kept");
    assert_eq!(st.processors[0].result, ProcessorResult::Failed);
    assert!(
        st.processors[0]
            .message
            .contains("over the cap of 2000 bytes on the whole object"),
        "{}",
        st.processors[0].message
    );
    assert!(serde_json::to_vec(&a).unwrap().len() <= 2000);
}

#[test]
fn a_commands_output_that_would_outgrow_the_whole_object_cap_is_replaced_by_a_marker() {
    let mut a = abnormal(json!({"nodeName": "n",
        "assignedInformationCollectors": [{"name": "c"}],
        "commandExecutors": [{"command": ["uname", "-a"], "type": "InformationCollector"}]}));
    let limits = Limits {
        max_object_bytes: 3000,
        ..Limits::default()
    };
    let step = expect_run(&a);
    assert!(matches!(step.kind, StepKind::Command(_)), "{step:?}");
    let ran = StepResult {
        output: StepOutput::Command(CommandExecutorStatus {
            command: vec!["uname".into(), "-a".into()],
            type_: ProcessorType::InformationCollector,
            timeout_seconds: None,
            stdout: "o".repeat(10_000),
            stderr: "e".repeat(100),
            error: String::new(),
        }),
        ..ok("exit 0")
    };
    apply_step(&mut a, &step, ran, limits);
    let st = a.status.as_ref().unwrap();
    assert_eq!(
        st.processors[0].result,
        ProcessorResult::Succeeded,
        "it ran"
    );
    let c = &st.command_executors[0];
    assert!(
        c.stdout
            .starts_with("[10100 bytes of output dropped: the Abnormal would have grown to ")
            && c.stdout
                .ends_with("over the cap of 3000 bytes on the whole object]"),
        "{}",
        c.stdout
    );
    assert!(c.stderr.is_empty());
    assert!(st.processors[0].message.contains("its output was dropped"));
}

#[test]
fn a_status_refused_for_its_size_drops_context_and_output_says_what_and_ends() {
    let mut a =
        abnormal(json!({"nodeName": "n", "assignedInformationCollectors": [{"name": "c"}]}));
    {
        let st = a.status.as_mut().unwrap();
        st.context = Some([("podInformation".to_owned(), json!("x".repeat(1000)))].into());
        st.command_executors.push(CommandExecutorStatus {
            command: vec!["dmesg".into()],
            type_: ProcessorType::InformationCollector,
            timeout_seconds: None,
            stdout: "k".repeat(500),
            stderr: String::new(),
            error: String::new(),
        });
    }
    let event = shrink_to_fit(&mut a, &now());
    let st = a.status.as_ref().unwrap();
    assert_eq!(st.phase, Some(AbnormalPhase::Failed));
    assert_eq!(st.reason, "TooLarge");
    assert_eq!(event.reason, "TooLarge");
    assert_eq!(
        st.context.as_ref().unwrap()["droppedForSize"],
        json!([
            "status.context.podInformation (1002 bytes)",
            "the output of command 0 (500 bytes)"
        ])
    );
    assert!(st.command_executors[0].stdout.starts_with("[dropped"));
    assert_eq!(
        condition(&a, AbnormalConditionType::InformationCollected).reason,
        "TooLarge"
    );

    // One that had ended keeps its phase.
    let mut done = abnormal(json!({"nodeName": "n"}));
    done.status.as_mut().unwrap().phase = Some(AbnormalPhase::Succeeded);
    shrink_to_fit(&mut done, &now());
    let st = done.status.unwrap();
    assert_eq!(st.phase, Some(AbnormalPhase::Succeeded));
    assert!(st.message.contains("refused to store"), "{}", st.message);
}

/// A plugin's answer that writes `added` and returns `removed` as null.
fn plugin_answer(added: &[&str], removed: &[&str]) -> StepResult {
    StepResult {
        output: StepOutput::Processor {
            context: added
                .iter()
                .map(|k| (k.to_string(), json!(format!("{k}-value"))))
                .collect(),
            root_cause: None,
            command_executors: None,
            profilers: None,
            removed_context_keys: removed.iter().map(|k| k.to_string()).collect(),
        },
        ..ok("answered 200")
    }
}

#[test]
fn a_plugin_removes_a_context_key_it_wrote_but_not_one_another_processor_wrote() {
    // The same registration name as collector and diagnoser: its diagnoser step may drop the
    // scratch key its collector step wrote; the other collector's key stays.
    let mut a = abnormal(json!({"nodeName": "n",
        "assignedInformationCollectors": [{"name": "plugin"}, {"name": "other"}],
        "assignedDiagnosers": [{"name": "plugin"}]}));
    drive(&mut a, |step| match (step.stage, step.label.as_str()) {
        (Stage::InformationCollecting, "default/plugin") => plugin_answer(&["scratch"], &[]),
        (Stage::InformationCollecting, _) => plugin_answer(&["podInformation"], &[]),
        _ => plugin_answer(&["verdict"], &["scratch", "podInformation"]),
    });
    let status = a.status.as_ref().unwrap();
    let keys: Vec<&String> = status.context.as_ref().unwrap().keys().collect();
    assert_eq!(keys, ["podInformation", "verdict"]);
    let diagnoser = status
        .processors
        .iter()
        .find(|r| r.stage == Stage::Diagnosing)
        .unwrap();
    assert_eq!(diagnoser.context_keys, ["verdict"]);
    assert!(
        diagnoser.message.contains(
            "kept status.context keys it returned as null but did not write: podInformation"
        ),
        "{}",
        diagnoser.message
    );
}

#[test]
fn an_interrupted_idempotent_recovery_is_retried_up_to_three_attempts() {
    let mut a = abnormal(json!({"nodeName": "n", "assignedRecoverers": [{"name": "r"}]}));
    a.status.as_mut().unwrap().phase = Some(AbnormalPhase::Recovering);
    let step = expect_run(&a);
    mark_running(&mut a, &step, &now());
    assert_eq!(
        next(&a),
        Next::EndStage(
            Stage::Recovering,
            StageOutcome::RecoveryInterrupted("default/r".into())
        )
    );
    assert_eq!(retry_interrupted(&mut a), Some(2));
    assert_eq!(next(&a), Next::Run(step.clone()), "it runs again");
    mark_running_attempt(&mut a, &step, &now(), 2);
    assert!(
        a.status.as_ref().unwrap().processors[0]
            .message
            .starts_with("attempt 2: run again after the agent stopped during attempt 1")
    );
    assert_eq!(retry_interrupted(&mut a), Some(3));
    mark_running_attempt(&mut a, &step, &now(), 3);
    assert_eq!(retry_interrupted(&mut a), None, "three attempts in all");
    assert_eq!(a.status.as_ref().unwrap().processors.len(), 1);
    // The end says how many attempts there were.
    let outcome = StageOutcome::RecoveryInterrupted("default/r".into());
    end_stage(&mut a, Stage::Recovering, &outcome, &now());
    let st = a.status.unwrap();
    assert!(
        st.message.contains("in each of its 3 attempts"),
        "{}",
        st.message
    );
    assert!(
        st.processors[0].message.contains("before attempt 3 ended"),
        "{}",
        st.processors[0].message
    );
}

#[test]
fn a_command_inserted_after_a_crash_does_not_shift_the_records_onto_other_steps() {
    let mut a = abnormal(json!({"nodeName": "n", "commandExecutors": [
        {"command": ["kill", "-10", "1000"], "type": "Recoverer"}],
        "assignedRecoverers": [{"name": "r"}]}));
    a.status.as_mut().unwrap().phase = Some(AbnormalPhase::Recovering);
    let kill = expect_run(&a);
    apply_step(&mut a, &kill, ok("exit 0"), Limits::default());
    // An Abnormal admitted before plans were recorded, edited while no agent ran it: a command
    // inserted first. Matched by position, the kill's record would land on the new command and
    // the kill would run a second time.
    a.spec.command_executors.insert(
        0,
        serde_json::from_value(json!({"command": ["uptime"], "type": "Recoverer"})).unwrap(),
    );
    let step = expect_run(&a);
    assert_eq!(step.label, "uptime");
    apply_step(&mut a, &step, ok("exit 0"), Limits::default());
    assert_eq!(
        expect_run(&a).label,
        "default/r",
        "the kill is not run again"
    );
}

#[test]
fn a_processor_listed_twice_runs_twice_and_each_run_has_its_own_record() {
    let mut a = abnormal(json!({"nodeName": "n",
        "assignedInformationCollectors": [{"name": "c"}, {"name": "d"}, {"name": "c"}]}));
    drive(&mut a, |_| ok("collected"));
    let st = a.status.unwrap();
    let labels: Vec<&str> = st
        .processors
        .iter()
        .filter(|r| r.stage == Stage::InformationCollecting)
        .map(|r| r.processor.as_str())
        .collect();
    assert_eq!(labels, ["default/c", "default/d", "default/c"]);
}

#[test]
fn records_are_matched_to_steps_by_kind_label_and_occurrence_not_position() {
    let a = abnormal(json!({"nodeName": "n",
        "assignedInformationCollectors": [{"name": "c"}, {"name": "d"}, {"name": "c"}]}));
    let steps = plan(&a, Stage::InformationCollecting);
    let record = |name: &str| ProcessorRecord {
        processor: format!("default/{name}"),
        kind: ProcessorKind::Processor,
        stage: Stage::InformationCollecting,
        result: ProcessorResult::Succeeded,
        message: String::new(),
        start_time: now(),
        duration_milliseconds: Some(1),
        context_keys: Vec::new(),
    };
    // Written in another order, with one of c's two runs missing.
    let records = [record("d"), record("c"), record("x")];
    let matched = records_by_step(&steps, &records);
    let names: Vec<Option<&str>> = matched
        .iter()
        .map(|r| r.map(|r| r.processor.as_str()))
        .collect();
    assert_eq!(names, [Some("default/c"), Some("default/d"), None]);
}

#[test]
fn a_spec_changed_after_admission_ends_the_abnormal_without_running_anything_new() {
    let mut a =
        abnormal(json!({"nodeName": "n", "assignedInformationCollectors": [{"name": "c"}]}));
    a.metadata.annotations = Some(
        [(
            kdiag_api::labels::PLAN_ANNOTATION.to_owned(),
            fingerprint(&a),
        )]
        .into(),
    );
    assert_eq!(plan_changed(&a), None);
    assert_eq!(expect_run(&a).label, "default/c");
    a.spec.command_executors.push(
        serde_json::from_value(
            json!({"command": ["rm", "-rf", "/tmp/x"], "type": "InformationCollector"}),
        )
        .unwrap(),
    );
    let Next::EndStage(stage, outcome) = next(&a) else {
        panic!("expected the stage to end")
    };
    assert!(
        matches!(outcome, StageOutcome::PlanChanged(_)),
        "{outcome:?}"
    );
    let event = end_stage(&mut a, stage, &outcome, &now());
    assert_eq!(event.reason, "PlanChanged");
    let st = a.status.unwrap();
    assert_eq!(st.phase, Some(AbnormalPhase::Failed));
    assert!(
        st.message.contains("create a new Abnormal"),
        "{}",
        st.message
    );
    assert!(
        st.processors
            .iter()
            .all(|r| r.kind != ProcessorKind::CommandExecutor),
        "the new command never ran: {:?}",
        st.processors
    );
}

#[test]
fn the_plan_fingerprint_covers_every_input_of_the_steps() {
    let base = abnormal(json!({"nodeName": "n", "assignedDiagnosers": [{"name": "d"}]}));
    let f = fingerprint(&base);
    let mut changed = base.clone();
    changed.spec.skip_diagnosis = true;
    assert_ne!(fingerprint(&changed), f);
    let mut changed = base.clone();
    changed.spec.assigned_recoverers.push(NamespacedName {
        name: "r".into(),
        namespace: String::new(),
    });
    assert_ne!(fingerprint(&changed), f);
    let mut same = base.clone();
    same.spec.node_name = "other".into();
    same.status = None;
    assert_eq!(
        fingerprint(&same),
        f,
        "where it runs is not part of the plan"
    );
}
