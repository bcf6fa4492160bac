//! Kiroku's protobuf contracts, generated at build time from `proto/`.
#![allow(missing_debug_implementations, clippy::all)]

pub mod transcribe {
    pub mod v1 {
        tonic::include_proto!("kiroku.transcribe.v1");
    }
}

pub mod account {
    pub mod v1 {
        tonic::include_proto!("kiroku.account.v1");
    }
}

pub mod audit {
    pub mod v1 {
        tonic::include_proto!("kiroku.audit.v1");
    }
}

pub mod storage {
    pub mod v1 {
        tonic::include_proto!("kiroku.storage.v1");
    }
}

pub mod events {
    pub mod v1 {
        tonic::include_proto!("kiroku.events.v1");
    }
}

/// Encoded `FileDescriptorSet` of every Kiroku proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kiroku_descriptor");

/// The method names of service `service` (`kiroku.storage.v1.Storage`), read from the
/// descriptor set: what each service's "every method has an access rule" test checks
/// its table against.
pub fn method_names(service: &str) -> Vec<String> {
    use prost::Message as _;
    let Ok(set) = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET) else {
        return Vec::new();
    };
    set.file
        .iter()
        .flat_map(|f| {
            f.service
                .iter()
                .filter(move |s| format!("{}.{}", f.package(), s.name()) == service)
        })
        .flat_map(|s| s.method.iter().map(|m| m.name().to_string()))
        .collect()
}

/// Every service of the descriptor set (`kiroku.storage.v1.Storage`) with its methods.
pub fn services() -> Vec<(String, Vec<String>)> {
    use prost::Message as _;
    let Ok(set) = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET) else {
        return Vec::new();
    };
    set.file
        .iter()
        .flat_map(|f| {
            f.service.iter().map(move |s| {
                (
                    format!("{}.{}", f.package(), s.name()),
                    s.method.iter().map(|m| m.name().to_string()).collect(),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::transcribe::v1::{
        AudioFrame, StreamConfig, StreamTranscribeRequest, stream_transcribe_request::Request,
    };

    #[test]
    fn stream_messages_round_trip_through_the_wire_format() {
        let config = StreamTranscribeRequest {
            request: Some(Request::Config(StreamConfig {
                meeting_id: "m-1".into(),
                interim_results: true,
                ..StreamConfig::default()
            })),
        };
        let audio = StreamTranscribeRequest {
            request: Some(Request::Audio(AudioFrame {
                data: vec![1, 2, 3, 4],
                seq: 7,
            })),
        };
        for message in [config, audio] {
            let bytes = message.encode_to_vec();
            assert_eq!(
                StreamTranscribeRequest::decode(bytes.as_slice()).expect("decode"),
                message
            );
        }
    }

    #[test]
    fn descriptor_set_describes_the_public_service_and_events() {
        let set =
            prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).expect("decode");
        let packages: Vec<_> = set.file.iter().filter_map(|f| f.package.clone()).collect();
        assert!(packages.contains(&"kiroku.transcribe.v1".to_string()));
        assert!(packages.contains(&"kiroku.events.v1".to_string()));
        assert!(packages.contains(&"kiroku.account.v1".to_string()));
        let services: Vec<_> = set
            .file
            .iter()
            .flat_map(|f| f.service.iter().filter_map(|s| s.name.clone()))
            .collect();
        assert_eq!(
            services,
            vec![
                "Transcription".to_string(),
                "AccountService".to_string(),
                "AuditService".to_string(),
                "NoticeService".to_string(),
                "Storage".to_string()
            ]
        );
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;
        use prost::Message as _;

        /// Decodes `bytes` as every request type of every service; none may panic.
        /// Returns the full protobuf names tried, for the completeness check.
        macro_rules! request_types {
            ($( $package:ident :: $message:ident ),* $(,)?) => {
                fn decode_every_request(bytes: &[u8]) {
                    $( let _ = <$package::v1::$message as prost::Message>::decode(bytes); )*
                }
                fn request_type_names() -> Vec<String> {
                    vec![$( format!(".kiroku.{}.v1.{}", stringify!($package), stringify!($message)) ),*]
                }
            };
        }

        request_types!(
            transcribe::StreamTranscribeRequest,
            transcribe::TranscribeRequest,
            account::AcceptInvitationRequest,
            account::ChangePasswordRequest,
            account::CheckConsentRequest,
            account::ConfirmMfaRequest,
            account::CreateApiKeyRequest,
            account::EnrollMfaRequest,
            account::GetSigningKeysRequest,
            account::InviteUserRequest,
            account::ListApiKeysRequest,
            account::ListUsersRequest,
            account::LoginRequest,
            account::LogoutRequest,
            account::RecordConsentRequest,
            account::RefreshRequest,
            account::RegisterRequest,
            account::RevokeApiKeyRequest,
            account::SetConsentPolicyRequest,
            account::SetMeetingParticipantsRequest,
            account::SetRoleRequest,
            account::UserRef,
            account::VerifyApiKeyRequest,
            account::WhoAmIRequest,
            account::ListNoticeRecipientsRequest,
            audit::ExportEventsRequest,
            audit::GetUsageRequest,
            audit::ListEventsRequest,
            audit::ListNoticesRequest,
            audit::PublishNoticeRequest,
            audit::SetTimeZoneRequest,
            audit::VerifyChainRequest,
            storage::AddLabelRequest,
            storage::BundleFile,
            storage::EraseTenantRequest,
            storage::ExportMeetingRequest,
            storage::ExportTenantRequest,
            storage::GetMeetingRequest,
            storage::ListLabelsRequest,
            storage::ListMeetingsRequest,
            storage::RemoveLabelRequest,
            storage::RotateMasterKeyRequest,
            storage::SearchRequest,
        );

        /// The list above names every request type of every RPC in `proto/`.
        #[test]
        fn every_request_type_is_covered() {
            let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("decode");
            let mut inputs: Vec<String> = set
                .file
                .iter()
                .flat_map(|f| f.service.iter())
                .flat_map(|s| s.method.iter().filter_map(|m| m.input_type.clone()))
                .collect();
            inputs.sort();
            inputs.dedup();
            let mut covered = request_type_names();
            covered.sort();
            let missing: Vec<&String> = inputs.iter().filter(|i| !covered.contains(i)).collect();
            assert!(
                missing.is_empty(),
                "request types without a decoding property: {missing:?}"
            );
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_decode_or_are_refused_as_every_request(
                bytes in proptest::collection::vec(any::<u8>(), 0..1024),
            ) {
                decode_every_request(&bytes);
            }
        }
    }
}
