use bytes::BytesMut;
use proptest::prelude::*;
use zeroize::Zeroizing;

use super::*;

fn sample_requests() -> Vec<Request> {
    vec![
        Request::Ping {
            payload: b"hi".to_vec(),
        },
        Request::Sign {
            key: "web".into(),
            version: None,
            scheme: 0x0403,
            message: vec![7; 130],
        },
        Request::Sign {
            key: "web".into(),
            version: Some(3),
            scheme: 0x0804,
            message: vec![],
        },
        Request::Verify {
            key: "web".into(),
            version: Some(1),
            scheme: 0x0403,
            message: b"m".to_vec(),
            signature: b"s".to_vec(),
        },
        Request::PublicKey {
            key: "web".into(),
            version: None,
        },
        Request::Encrypt {
            key: "data".into(),
            plaintext: Zeroizing::new(b"secret".to_vec()),
            context: b"ctx".to_vec(),
        },
        Request::Decrypt {
            ciphertext: vec![1, 2, 3],
            context: vec![],
        },
        Request::GenerateDataKey {
            key: "data".into(),
            length: 32,
            context: vec![],
        },
        Request::Create {
            key: "k".into(),
            key_type: KeyType::Rsa2048,
            rotate_every: Some(86400),
        },
        Request::Import {
            key: "k".into(),
            pem: Zeroizing::new(b"-----BEGIN".to_vec()),
            new_version: true,
        },
        Request::List,
        Request::Describe { key: "k".into() },
        Request::Rotate { key: "k".into() },
        Request::Enable { key: "k".into() },
        Request::Disable { key: "k".into() },
        Request::ScheduleDeletion {
            key: "k".into(),
            wait_secs: Some(5),
        },
        Request::CancelDeletion { key: "k".into() },
        Request::BackupExport {
            key: Some("k".into()),
            passphrase: Zeroizing::new(b"pw".to_vec()),
            salt: vec![9; 16],
        },
        Request::BackupExport {
            key: None,
            passphrase: Zeroizing::new(b"pw".to_vec()),
            salt: vec![9; 16],
        },
        Request::BackupImport {
            blob: vec![1],
            passphrase: Zeroizing::new(b"pw".to_vec()),
            skip_existing: false,
        },
        Request::BackupImport {
            blob: vec![1],
            passphrase: Zeroizing::new(b"pw".to_vec()),
            skip_existing: true,
        },
        Request::AuditVerify,
        Request::AuditRotate,
        Request::Subscribe,
        Request::CertInstall {
            key: "k".into(),
            version: Some(2),
            chain_pem: "-----BEGIN CERTIFICATE-----".into(),
        },
        Request::CertGet {
            key: "k".into(),
            version: None,
        },
    ]
}

fn sample_responses() -> Vec<(Op, Response)> {
    vec![
        (
            Op::Ping,
            Response::Pong {
                payload: b"hi".to_vec(),
            },
        ),
        (
            Op::Sign,
            Response::Signature {
                version: 2,
                signature: vec![1; 72],
            },
        ),
        (Op::Verify, Response::Verified { valid: true }),
        (
            Op::PublicKey,
            Response::PublicKey {
                key_type: KeyType::Ed25519,
                version: 1,
                spki_der: vec![3; 44],
            },
        ),
        (
            Op::Encrypt,
            Response::Ciphertext {
                version: 1,
                blob: vec![4; 50],
            },
        ),
        (
            Op::Decrypt,
            Response::Plaintext {
                key: "d".into(),
                version: 4,
                plaintext: Zeroizing::new(b"p".to_vec()),
            },
        ),
        (
            Op::GenerateDataKey,
            Response::DataKey {
                version: 1,
                plaintext: Zeroizing::new(vec![5; 32]),
                ciphertext: vec![6; 70],
            },
        ),
        (Op::List, Response::Json { json: "[]".into() }),
        (
            Op::BackupExport,
            Response::BackupEntry { blob: vec![8; 10] },
        ),
        (Op::Sign, Response::error(ErrorCode::Denied, "no grant")),
        (
            Op::CertGet,
            Response::Certificate {
                version: 3,
                chain_pem: "pem".into(),
            },
        ),
        (Op::Subscribe, Response::Json { json: "{}".into() }),
    ]
}

fn wire(frame: &Frame) -> Vec<u8> {
    let mut out = BytesMut::new();
    frame.encode(&mut out).unwrap();
    out.to_vec()
}

#[test]
fn every_request_round_trips_and_every_prefix_is_incomplete() {
    for (i, req) in sample_requests().into_iter().enumerate() {
        let bytes = wire(&req.to_frame(i as u32));
        for n in 0..bytes.len() {
            let mut b = BytesMut::from(&bytes[..n]);
            assert_eq!(frame::decode(&mut b).unwrap(), None, "{req:?} prefix {n}");
        }
        let frame = Frame::parse_exact(&bytes).unwrap();
        assert_eq!(frame.request_id, i as u32);
        assert_eq!(Request::from_frame(&frame).unwrap(), req);
    }
}

#[test]
fn every_response_round_trips() {
    for (op, resp) in sample_responses() {
        let frame = Frame::parse_exact(&wire(&resp.to_frame(op, 42))).unwrap();
        assert_eq!(Response::from_frame(op, &frame).unwrap(), resp);
    }
}

#[test]
fn body_errors_are_named() {
    let f = |opcode: u8, body: &[u8]| Request::from_frame(&Frame::new(opcode, 1, body.to_vec()));
    assert_eq!(f(0x77, b""), Err(ProtocolError::UnknownOpcode(0x77)));
    assert_eq!(
        f(Op::Sign as u8, b""),
        Err(ProtocolError::MissingField(0x01))
    );
    assert_eq!(
        f(Op::Ping as u8, &[0x99, 0, 0, 0, 0]),
        Err(ProtocolError::UnknownTag(0x99))
    );
    assert_eq!(
        f(Op::Ping as u8, &[0x04, 0, 0, 0, 9, 1]),
        Err(ProtocolError::TruncatedField)
    );
    assert_eq!(
        f(Op::Ping as u8, &[0x04, 0, 0, 0, 0, 0x04, 0, 0, 0, 0]),
        Err(ProtocolError::DuplicateTag(0x04))
    );
    assert_eq!(
        f(Op::List as u8, &[0x01, 0, 0, 0, 1, b'k']),
        Err(ProtocolError::UnexpectedField(0x01))
    );
    // a u16 scheme given in three bytes
    let mut body = Vec::new();
    body.extend_from_slice(&[
        0x01, 0, 0, 0, 1, b'k', 0x03, 0, 0, 0, 3, 1, 2, 3, 0x04, 0, 0, 0, 0,
    ]);
    assert_eq!(f(Op::Sign as u8, &body), Err(ProtocolError::BadField(0x03)));
    // a response opcode that answers another request
    let resp = Response::Pong { payload: vec![] }.to_frame(Op::Ping, 1);
    assert_eq!(
        Response::from_frame(Op::Sign, &resp),
        Err(ProtocolError::UnexpectedOpcode(0x81))
    );
}

#[test]
fn the_decoder_splits_a_stream_of_many_frames() {
    let mut stream = Vec::new();
    for (i, req) in sample_requests().iter().enumerate() {
        stream.extend(wire(&req.to_frame(i as u32)));
    }
    // feed in 7-byte pieces, as a socket might deliver
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for chunk in stream.chunks(7) {
        buf.extend_from_slice(chunk);
        while let Some(frame) = frame::decode(&mut buf).unwrap() {
            got.push(Request::from_frame(&frame).unwrap());
        }
    }
    assert_eq!(got, sample_requests());
}

proptest! {
    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        fuzz_decode(&data);
    }

    #[test]
    fn random_bodies_behind_valid_headers_never_panic(
        opcode in any::<u8>(),
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let frame = Frame::new(opcode, 1, body);
        fuzz_decode(&wire(&frame));
    }

    #[test]
    fn sign_requests_round_trip(
        key in "[a-z0-9._-]{1,64}",
        version in proptest::option::of(any::<u32>()),
        scheme in any::<u16>(),
        message in proptest::collection::vec(any::<u8>(), 0..300),
        id in any::<u32>(),
    ) {
        let req = Request::Sign { key, version, scheme, message };
        let frame = Frame::parse_exact(&wire(&req.to_frame(id))).unwrap();
        prop_assert_eq!(frame.request_id, id);
        prop_assert_eq!(Request::from_frame(&frame).unwrap(), req);
    }
}

#[test]
fn key_events_round_trip() {
    let e = KeyEvent {
        key: "web".into(),
        primary: 3,
        json: "{}".into(),
    };
    let frame = Frame::parse_exact(&wire(&e.to_frame(9))).unwrap();
    assert_eq!((frame.opcode, frame.request_id), (OP_EVENT, 9));
    assert_eq!(KeyEvent::from_frame(&frame).unwrap(), e);
}
