//! The codec of the core services' generated servers: tonic's prost codec, except that a request that is not valid
//! protobuf is answered `INVALID_ARGUMENT`.
//!
//! tonic's [`ProstCodec`] answers a message it cannot decode with `INTERNAL`, which is right for a client reading a
//! server's reply, but a server reading a malformed request is looking at the caller's mistake (or an attack), not a
//! fault of its own. `build.rs` generates the servers of `crate::proto` with `RequestCodec` and the clients with
//! [`ProstCodec`], so a malformed reply still reads as `INTERNAL` on the client side. Encoding is unchanged.

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// [`ProstCodec`] for servers: replies are encoded as tonic does, and a request that does not decode is
/// `INVALID_ARGUMENT`. Named by `build.rs` as the generated servers' `codec_path`.
#[derive(Debug, Clone)]
pub(crate) struct RequestCodec<T, U> {
    inner: ProstCodec<T, U>,
}

// By hand, because a derived `Default` would require `T: Default` and `U: Default`.
impl<T, U> Default for RequestCodec<T, U> {
    fn default() -> Self {
        Self { inner: ProstCodec::default() }
    }
}

impl<T, U> Codec for RequestCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder { inner: self.inner.decoder() }
    }
}

/// [`ProstDecoder`] whose decode errors are `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub(crate) struct RequestDecoder<U> {
    inner: ProstDecoder<U>,
}

impl<U: Message + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.inner.decode(buf).map_err(malformed)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}

/// The status of a request that did not decode. [`ProstDecoder`] fails only on a decode error, which it reports as
/// `INTERNAL`; any other status passes unchanged.
fn malformed(status: Status) -> Status {
    if status.code() != Code::Internal {
        return status;
    }
    Status::invalid_argument(format!("the request is not a valid protobuf message: {}", status.message()))
}

#[cfg(test)]
pub(crate) mod proptests {
    //! Arbitrary bytes decoded as every request type of the core services, through [`RequestCodec`] as their
    //! servers decode them: the decoder never panics, it agrees with prost, and every failure is
    //! `INVALID_ARGUMENT`.
    //!
    //! [`config`] is the case count of every property suite of the crate (`docs/fuzzing.md`).

    use super::*;
    use crate::proto::{auth, broker, config as cfg, debug, events, registry, runtime, store, tasks};
    use crate::testing::{config, protobuf};
    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;
    use std::collections::BTreeSet;
    use tonic::codec::Streaming;

    /// Decodes `bytes`, framed as one gRPC message, the way a generated server does.
    fn through_codec<U: Message + Default + Send + 'static>(bytes: &[u8]) -> Result<Option<U>, Status> {
        let mut frame = Vec::with_capacity(5 + bytes.len());
        frame.push(0); // not compressed
        frame.extend_from_slice(&u32::try_from(bytes.len()).expect("a small message").to_be_bytes());
        frame.extend_from_slice(bytes);
        let decoder = RequestCodec::<(), U>::default().decoder();
        let mut stream = Streaming::new_request(decoder, axum::body::Body::from(frame), None, None);
        futures::executor::block_on(stream.message())
    }

    /// The property for one request type: the codec decodes what prost decodes, to the same message, and answers
    /// `INVALID_ARGUMENT` for what prost refuses.
    fn check<U: Message + Default + PartialEq + std::fmt::Debug + Send + 'static>(
        bytes: &[u8],
    ) -> Result<(), TestCaseError> {
        let name = std::any::type_name::<U>();
        match (U::decode(bytes), through_codec::<U>(bytes)) {
            (Ok(want), Ok(Some(got))) => prop_assert_eq!(got, want, "{}", name),
            (Err(_), Err(status)) => {
                prop_assert_eq!(status.code(), Code::InvalidArgument, "{}: {}", name, status.message());
                prop_assert!(status.message().contains("not a valid protobuf message"), "{}", status.message());
            }
            (direct, codec) => prop_assert!(false, "{name}: prost decoded {direct:?}, the codec {codec:?}"),
        }
        Ok(())
    }

    type Check = fn(&[u8]) -> Result<(), TestCaseError>;

    /// Every request type of the core services, by full protobuf name.
    const REQUESTS: &[(&str, Check)] = &[
        ("auth.GenerateRequest", check::<auth::GenerateRequest>),
        ("auth.InspectRequest", check::<auth::InspectRequest>),
        ("auth.TokenRequest", check::<auth::TokenRequest>),
        ("auth.RevokeRequest", check::<auth::RevokeRequest>),
        ("auth.ListAccountsRequest", check::<auth::ListAccountsRequest>),
        ("auth.DeleteAccountRequest", check::<auth::DeleteAccountRequest>),
        ("auth.ChangeSecretRequest", check::<auth::ChangeSecretRequest>),
        ("auth.CreateRequest", check::<auth::CreateRequest>),
        ("auth.DeleteRequest", check::<auth::DeleteRequest>),
        ("auth.ListRequest", check::<auth::ListRequest>),
        ("broker.PublishRequest", check::<broker::PublishRequest>),
        ("broker.SubscribeRequest", check::<broker::SubscribeRequest>),
        ("config.GetRequest", check::<cfg::GetRequest>),
        ("config.SetRequest", check::<cfg::SetRequest>),
        ("config.DeleteRequest", check::<cfg::DeleteRequest>),
        ("debug.StatsRequest", check::<debug::StatsRequest>),
        ("events.PublishRequest", check::<events::PublishRequest>),
        ("events.ConsumeRequest", check::<events::ConsumeRequest>),
        ("events.ReadRequest", check::<events::ReadRequest>),
        ("registry.GetRequest", check::<registry::GetRequest>),
        ("registry.Service", check::<registry::Service>),
        ("registry.ListRequest", check::<registry::ListRequest>),
        ("registry.WatchRequest", check::<registry::WatchRequest>),
        ("registry.GetSchemaRequest", check::<registry::GetSchemaRequest>),
        ("runtime.CreateRequest", check::<runtime::CreateRequest>),
        ("runtime.ReadRequest", check::<runtime::ReadRequest>),
        ("runtime.DeleteRequest", check::<runtime::DeleteRequest>),
        ("runtime.UpdateRequest", check::<runtime::UpdateRequest>),
        ("runtime.LogsRequest", check::<runtime::LogsRequest>),
        ("runtime.UploadRequest", check::<runtime::UploadRequest>),
        ("store.ReadRequest", check::<store::ReadRequest>),
        ("store.WriteRequest", check::<store::WriteRequest>),
        ("store.DeleteRequest", check::<store::DeleteRequest>),
        ("store.ListRequest", check::<store::ListRequest>),
        ("store.DatabasesRequest", check::<store::DatabasesRequest>),
        ("store.TablesRequest", check::<store::TablesRequest>),
        ("store.ExportRequest", check::<store::ExportRequest>),
        ("store.ImportRequest", check::<store::ImportRequest>),
        ("tasks.ScheduleRequest", check::<tasks::ScheduleRequest>),
        ("tasks.UnscheduleRequest", check::<tasks::UnscheduleRequest>),
        ("tasks.SchedulesRequest", check::<tasks::SchedulesRequest>),
        ("tasks.RunRequest", check::<tasks::RunRequest>),
        ("tasks.EnqueueRequest", check::<tasks::EnqueueRequest>),
        ("tasks.ListRequest", check::<tasks::ListRequest>),
        ("tasks.GetRequest", check::<tasks::GetRequest>),
        ("tasks.RetryRequest", check::<tasks::RetryRequest>),
        ("tasks.LeaseRequest", check::<tasks::LeaseRequest>),
        ("tasks.ExtendRequest", check::<tasks::ExtendRequest>),
        ("tasks.AckRequest", check::<tasks::AckRequest>),
        ("tasks.FailRequest", check::<tasks::FailRequest>),
    ];

    #[test]
    fn every_request_type_of_the_core_services_is_checked() {
        let pool = crate::schema::Schema::decode(crate::proto::FILE_DESCRIPTOR_SET).expect("the core schema").pool;
        let inputs: BTreeSet<String> = pool
            .services()
            .flat_map(|s| s.methods().collect::<Vec<_>>())
            .map(|m| m.input().full_name().to_string())
            .collect();
        let checked: BTreeSet<String> = REQUESTS.iter().map(|(name, _)| name.to_string()).collect();
        assert_eq!(inputs, checked, "REQUESTS must list the input type of every core method, and nothing else");
    }

    proptest! {
        #![proptest_config(config(256))]

        #[test]
        fn core_requests_decode_or_are_invalid_argument(bytes in protobuf()) {
            for (_, check) in REQUESTS {
                check(&bytes)?;
            }
        }
    }

    #[test]
    fn malformed_requests_are_invalid_argument() {
        for bytes in [&[0xff, 0xff, 0xff][..], &[0x0a, 0x05, b'a'], &[0x08]] {
            let status = through_codec::<store::ReadRequest>(bytes).expect_err("malformed");
            assert_eq!(status.code(), Code::InvalidArgument, "{bytes:?}: {status:?}");
        }
        let ok = through_codec::<store::ReadRequest>(
            &store::ReadRequest { key: "k".into(), ..Default::default() }.encode_to_vec(),
        )
        .expect("a valid request");
        assert_eq!(ok.map(|r| r.key).as_deref(), Some("k"));
        // Other statuses pass unchanged.
        assert_eq!(malformed(Status::resource_exhausted("big")).code(), Code::ResourceExhausted);
    }
}
