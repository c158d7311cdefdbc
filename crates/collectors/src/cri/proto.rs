//! CRI v1 messages, generated at build time from `proto/cri.proto` by build.rs (protox +
//! tonic-prost-build: prost structs, no protoc). prost skips fields a runtime sends that are not
//! declared there, so a newer runtime's extra fields do no harm. v1alpha2 (containerd 1.5–1.7,
//! CRI-O ≤ 1.23 also serve it) uses the same numbers for every field declared there.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/runtime.v1.rs"));
}

pub use generated::*;

impl ContainerState {
    /// The word the kubelet uses for the state.
    pub fn word(self) -> &'static str {
        match self {
            Self::ContainerCreated => "Created",
            Self::ContainerRunning => "Running",
            Self::ContainerExited => "Exited",
            Self::ContainerUnknown => "Unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn field_numbers_match_the_cri_wire_format() {
        // Container{id: "a", state: RUNNING, created_at: 5}: tag 1 (len), tag 6 (varint),
        // tag 7 (varint), as protoc-generated code encodes it.
        let c = Container {
            id: "a".into(),
            state: ContainerState::ContainerRunning as i32,
            created_at: 5,
            ..Default::default()
        };
        assert_eq!(c.encode_to_vec(), vec![0x0a, 1, b'a', 0x30, 1, 0x38, 5]);
        // ContainerStatusRequest{container_id: "x", verbose: true}.
        let r = ContainerStatusRequest {
            container_id: "x".into(),
            verbose: true,
        };
        assert_eq!(r.encode_to_vec(), vec![0x0a, 1, b'x', 0x10, 1]);
        // ContainerStatus{exit_code: 137, reason: "OOMKilled", log_path: "l"}: tags 7, 10, 15.
        let s = ContainerStatus {
            exit_code: 137,
            reason: "OOMKilled".into(),
            log_path: "l".into(),
            ..Default::default()
        };
        let mut expected = vec![0x38, 0x89, 0x01, 0x52, 9];
        expected.extend_from_slice(b"OOMKilled");
        expected.extend_from_slice(&[0x7a, 1, b'l']);
        assert_eq!(s.encode_to_vec(), expected);
        // PodSandbox{metadata: {uid: "u"}}: tag 2 holding tag 2.
        let p = PodSandbox {
            metadata: Some(PodSandboxMetadata {
                uid: "u".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(p.encode_to_vec(), vec![0x12, 3, 0x12, 1, b'u']);
    }

    #[test]
    fn unknown_fields_from_a_newer_runtime_are_skipped() {
        // ContainerStatus with field 14 (mounts, not declared here) before field 1.
        let bytes = vec![0x72, 2, 0x0a, 0x00, 0x0a, 1, b'z'];
        let s = ContainerStatus::decode(bytes.as_slice()).unwrap();
        assert_eq!(s.id, "z");
    }
}
