//! geosync's wire format: the gRPC services and messages between regions, the
//! coordinator and the console. Wire types only; conversions to and from the
//! engine's types live in `geosync-core`.
//!
//! - [`v1`]: package `geosync.v1`, generated from `proto/geosync/v1/*.proto`
//!   by `build.rs` (pure Rust: `protox` + `tonic-prost-build`, no `protoc`):
//!   - domain types (`types.proto`): [`v1::ChangeEvent`], [`v1::Version`],
//!     [`v1::VectorClock`], [`v1::Manifest`], [`v1::QueueStats`], ...;
//!   - `Coordinator` (`coordinator.proto`), region-facing: server trait
//!     [`v1::coordinator_server::Coordinator`], client
//!     [`v1::coordinator_client::CoordinatorClient`];
//!   - `Chunks` (`chunks.proto`), region to region: [`v1::chunks_server::Chunks`],
//!     [`v1::chunks_client::ChunksClient`];
//!   - `Admin` (`admin.proto`), console and CLI: [`v1::admin_server::Admin`],
//!     [`v1::admin_client::AdminClient`];
//!   - `Files` (`files.proto`), served by regions for access without a mount:
//!     [`v1::files_server::Files`], [`v1::files_client::FilesClient`].
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC reflection.
//! - [`MAX_MESSAGE_BYTES`], [`MAX_CHUNK_PIECE_BYTES`]: size limits every server
//!   and client configures alike.
#![forbid(unsafe_code)]

/// Package `geosync.v1`: every message, enum, client and server.
pub mod v1 {
    tonic::include_proto!("geosync.v1");
}

/// The encoded `google.protobuf.FileDescriptorSet` of package `geosync.v1`
/// (with comments), for a gRPC reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/geosync_v1_descriptor.bin"));

/// The largest encoded message a server or client accepts or sends. Set it on
/// every generated server and client (`max_decoding_message_size` and
/// `max_encoding_message_size`): tonic's default of 4 MiB for decoding is too
/// small for a batch of events or a chunk.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// The largest `data` of one [`v1::Chunk`] message: a content chunk larger
/// than this is sent in several pieces, so every message stays well within
/// [`MAX_MESSAGE_BYTES`] whatever the chunk size.
pub const MAX_CHUNK_PIECE_BYTES: usize = 8 << 20;

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::v1::{self, event_outcome, resolve_conflict_request};
    use super::{MAX_CHUNK_PIECE_BYTES, MAX_MESSAGE_BYTES};

    fn stamp(region: &str, physical_ms: u64, logical: u32) -> v1::Timestamp {
        v1::Timestamp {
            physical_ms,
            logical,
            region: region.to_owned(),
        }
    }

    fn change(region: &str, physical_ms: u64, counter: u64) -> v1::Change {
        v1::Change {
            stamp: Some(stamp(region, physical_ms, 7)),
            counter,
        }
    }

    /// A change event with every field set, nested ones included, to non-default values.
    fn full_event() -> v1::ChangeEvent {
        let content = v1::ContentRef {
            id: (0u8..32).collect(),
            size: 5 << 30,
        };
        v1::ChangeEvent {
            node: u128::MAX.wrapping_sub(41).to_be_bytes().to_vec(),
            op: v1::ChangeOp::Rename.into(),
            version: Some(v1::Version {
                meta: Some(v1::NodeMeta {
                    kind: v1::NodeKind::Symlink.into(),
                    parent: 1u128.to_be_bytes().to_vec(),
                    name: b"caf\xc3\xa9 \xff.mkv".to_vec(),
                    mode: 0o4755,
                    uid: 1000,
                    gid: u32::MAX,
                    size: 5 << 30,
                    mtime_ns: -1_234_567_890_123,
                    content: Some(content.clone()),
                    target: Some(b"../elsewhere".to_vec()),
                    xattrs: vec![
                        v1::Xattr {
                            name: b"user.a".to_vec(),
                            value: Vec::new(),
                        },
                        v1::Xattr {
                            name: b"user.b".to_vec(),
                            value: vec![0, 255, 10],
                        },
                    ],
                    deleted: true,
                }),
                vclock: Some(v1::VectorClock {
                    entries: vec![
                        v1::ClockEntry {
                            region: "eu".to_owned(),
                            counter: 3,
                        },
                        v1::ClockEntry {
                            region: "us".to_owned(),
                            counter: u64::MAX,
                        },
                    ],
                }),
                write: Some(change("us", 1_700_000_000_123, u64::MAX)),
                changes: Some(v1::FieldChanges {
                    location: Some(change("us", 1_700_000_000_123, u64::MAX)),
                    content: Some(change("eu", 1_700_000_000_001, 3)),
                    perms: Some(change("eu", 1_700_000_000_002, 2)),
                    mtime: Some(change("eu", 1_700_000_000_003, 1)),
                    xattrs: Some(change("us", 1_700_000_000_004, 9)),
                }),
                forks: vec![v1::ForkEntry {
                    dot: Some(v1::Dot {
                        region: "ap".to_owned(),
                        counter: 4,
                    }),
                    fork: Some(v1::Fork {
                        change: Some(change("ap", 1_699_999_999_999, 4)),
                        content: Some(content),
                        size: 42,
                        mtime_ns: i64::MIN,
                        mode: 0o644,
                    }),
                }],
                dismissed: vec![v1::Dot {
                    region: "ap".to_owned(),
                    counter: 2,
                }],
            }),
            origin: "us".to_owned(),
            seq: Some(u64::MAX - 1),
        }
    }

    #[test]
    fn a_full_change_event_round_trips() {
        let event = full_event();
        let bytes = event.encode_to_vec();
        assert_eq!(bytes.len(), event.encoded_len());
        let decoded = v1::ChangeEvent::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(decoded, event);
        assert_eq!(decoded.op(), v1::ChangeOp::Rename);
        let meta = decoded.version.and_then(|v| v.meta).expect("meta");
        assert_eq!(meta.kind(), v1::NodeKind::Symlink);

        // Length-delimited framing, as in a stream, too.
        let framed = event.encode_length_delimited_to_vec();
        assert_eq!(
            v1::ChangeEvent::decode_length_delimited(framed.as_slice()).expect("decodes"),
            event
        );
    }

    #[test]
    fn unset_optional_fields_stay_unset() {
        let event = v1::ChangeEvent {
            seq: None,
            ..full_event()
        };
        let decoded = v1::ChangeEvent::decode(event.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(decoded.seq, None);
        // `Some(0)` is sent (explicit presence) and stays distinct from `None`.
        let zero = v1::ChangeEvent {
            seq: Some(0),
            ..full_event()
        };
        let decoded = v1::ChangeEvent::decode(zero.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(decoded.seq, Some(0));
    }

    #[test]
    fn truncated_events_never_decode_to_the_original() {
        let event = full_event();
        let bytes = event.encode_to_vec();
        // Any cut: no panic, and never the original value (a cut at a field boundary is a
        // valid but smaller message; the engine's conversion rejects missing fields).
        for len in 0..bytes.len() {
            if let Ok(decoded) = v1::ChangeEvent::decode(&bytes[..len]) {
                assert_ne!(decoded, event, "prefix of {len} bytes");
            }
        }
        // A cut inside a field is an error: the last byte, and the middle of `version`.
        assert!(v1::ChangeEvent::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(v1::ChangeEvent::decode(&bytes[..bytes.len() / 2]).is_err());
        let framed = event.encode_length_delimited_to_vec();
        assert!(v1::ChangeEvent::decode_length_delimited(&framed[..framed.len() - 1]).is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let cases: [&[u8]; 6] = [
            // A tag whose varint never ends.
            b"\xff\xff\xff",
            // Field 1 with wire type 7, which does not exist.
            b"\x0f",
            // `node` (field 1, length-delimited) claiming more bytes than there are.
            b"\x0a\xff\xff\xff\xff\x0f\x00",
            // `origin` (field 4) that is not UTF-8.
            b"\x22\x02\xc3\x28",
            // `version` (field 3) whose content is a truncated varint.
            b"\x1a\x01\x80",
            // A varint longer than ten bytes.
            b"\x10\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
        ];
        for case in cases {
            assert!(v1::ChangeEvent::decode(case).is_err(), "{case:x?}");
        }

        // Random bytes (a fixed xorshift sequence): whatever the result, no panic.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2000 {
            let len = (next() % 64) as usize;
            let buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = v1::ChangeEvent::decode(buf.as_slice());
            let _ = v1::PushRequest::decode(buf.as_slice());
            let _ = v1::ClusterView::decode(buf.as_slice());
        }
    }

    #[test]
    fn unknown_enum_values_decode_and_read_as_unspecified() {
        // A newer peer's op: the raw value survives, the accessor falls back to the default.
        let event = v1::ChangeEvent {
            op: 99,
            ..full_event()
        };
        let decoded = v1::ChangeEvent::decode(event.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(decoded.op, 99);
        assert_eq!(decoded.op(), v1::ChangeOp::Unspecified);
        assert_eq!(v1::ChangeOp::try_from(99).ok(), None);
        assert_eq!(
            v1::EventOutcome::default().status(),
            event_outcome::Status::Unspecified
        );
    }

    #[test]
    fn oneof_choice_round_trips() {
        for choice in [
            resolve_conflict_request::Choice::KeepRegion("eu".to_owned()),
            resolve_conflict_request::Choice::KeepBoth(true),
            resolve_conflict_request::Choice::Merge(true),
        ] {
            let request = v1::ResolveConflictRequest {
                id: "c1".to_owned(),
                choice: Some(choice),
            };
            let bytes = request.encode_to_vec();
            let decoded = v1::ResolveConflictRequest::decode(bytes.as_slice()).expect("decodes");
            assert_eq!(decoded, request);
        }
    }

    #[test]
    fn a_full_chunk_piece_fits_in_a_message() {
        let chunk = v1::Chunk {
            index: u32::MAX,
            offset: u32::MAX,
            data: vec![0xa5; MAX_CHUNK_PIECE_BYTES].into(),
        };
        assert!(chunk.encoded_len() <= MAX_MESSAGE_BYTES);
    }

    #[test]
    fn the_descriptor_set_is_embedded() {
        // Field 1 of FileDescriptorSet (`file`), length-delimited: the first byte is its tag.
        assert_eq!(super::FILE_DESCRIPTOR_SET.first(), Some(&0x0a));
        let needle = b"geosync/v1/admin.proto";
        assert!(
            super::FILE_DESCRIPTOR_SET
                .windows(needle.len())
                .any(|w| w == needle)
        );
    }
}
