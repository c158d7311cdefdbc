//! Well-known keys of `spec.context` (input) and `status.context` (processors' output).
//!
//! The first group keeps Kube Diagnoser's names so its plugins read and write the same keys.

/// Output of pod-collector: the pods on the node.
pub const POD_INFORMATION: &str = "podInformation";
/// Output of container-collector: the containers on the node, shaped as Docker's
/// `types.Container` list Kube Diagnoser wrote here (filled from the CRI runtime; kdiag's own,
/// richer view is [`CRI_CONTAINER_INFORMATION`]).
pub const CONTAINER_INFORMATION: &str = "containerInformation";
/// Output of process-collector: every process on the node.
pub const PROCESS_INFORMATION: &str = "processInformation";
/// Input of file-status-collector: the paths to stat.
pub const FILE_PATH_INFORMATION: &str = "filePathInformation";
/// Output of file-status-collector.
pub const FILE_STATUS_INFORMATION: &str = "fileStatusInformation";
/// Input of systemd-collector: unit names ("" means the manager itself).
pub const SYSTEMD_UNIT_NAME_INFORMATION: &str = "systemdUnitNameInformationContextKey";
/// Output of systemd-collector.
pub const SYSTEMD_UNIT_PROPERTY_INFORMATION: &str = "systemdUnitPropertyInformationContextKey";
/// Output of pod-disk-usage-diagnoser.
pub const POD_DISK_USAGE_DIAGNOSIS: &str = "podDiskUsageDiagnosis";
/// Output of terminating-pod-diagnoser: the whole Pods past their deadline (`[]corev1.Pod`), as
/// Kube Diagnoser wrote them; kdiag's findings about them are [`TERMINATING_POD_FINDINGS`].
pub const TERMINATING_POD_DIAGNOSIS: &str = "terminatingPodDiagnosis";
/// Input of signal-recoverer: `[{pid, signal}]`, from spec.context or a diagnoser.
pub const SIGNAL_RECOVERY: &str = "signalRecovery";

/// kdiag: output of kernel-log-collector.
pub const KERNEL_LOG_INFORMATION: &str = "kernelLogInformation";
/// kdiag: output of node-collector.
pub const NODE_INFORMATION: &str = "nodeInformation";
/// kdiag: output of signal-recoverer, one entry per signal with its result.
pub const SIGNAL_RECOVERY_RESULT: &str = "signalRecoveryResult";
/// kdiag: output of container-collector, the node's containers as the CRI runtime reports them
/// (pod, container name, attempt, state, times, exit code, reason, pid); what kdiag's own readers
/// use. [`CONTAINER_INFORMATION`] holds the same containers in Kube Diagnoser's shape.
pub const CRI_CONTAINER_INFORMATION: &str = "criContainerInformation";
/// kdiag: output of terminating-pod-diagnoser, one finding per terminating pod (deadline, how
/// long overdue, causes, live processes, mounts); what the root cause points at.
/// [`TERMINATING_POD_DIAGNOSIS`] holds the overdue pods themselves, as Kube Diagnoser wrote them.
pub const TERMINATING_POD_FINDINGS: &str = "terminatingPodFindings";
