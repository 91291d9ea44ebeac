//! The protocol pinned twice: every opcode's request and answer encoded
//! and compared with the bytes in `golden.txt`, and docs/PROTOCOL.md's
//! opcode, field and error tables compared with the enums. A change to
//! either side that the other does not follow fails here.
//!
//! After a deliberate wire change, check the new bytes against the doc and
//! rewrite the file: `BLESS=1 cargo test --lib protocol::golden`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use bytes::BytesMut;
use zeroize::Zeroizing;

use super::fields::Tag;
use super::*;

const GOLDEN: &str = include_str!("golden.txt");
const GOLDEN_PATH: &str = "src/protocol/golden.txt";
const DOC: &str = include_str!("../../docs/PROTOCOL.md");

/// One request per opcode, with every field the opcode defines (optional
/// ones included), so the golden bytes show each field's encoding.
#[allow(clippy::too_many_lines, reason = "one arm per opcode")]
fn request(op: Op) -> Request {
    let key = || "web".to_owned();
    let secret = |b: &[u8]| Zeroizing::new(b.to_vec());
    match op {
        Op::Ping => Request::Ping {
            payload: b"hi".to_vec(),
        },
        Op::Sign => Request::Sign {
            key: key(),
            version: Some(2),
            scheme: 0x0403,
            message: b"msg".to_vec(),
        },
        Op::SignDigest => Request::SignDigest {
            key: key(),
            version: Some(2),
            scheme: 0x0403,
            digest: vec![0xd1; 32],
        },
        Op::Verify => Request::Verify {
            key: key(),
            version: Some(2),
            scheme: 0x0403,
            message: b"msg".to_vec(),
            signature: vec![0x30, 0x02],
        },
        Op::PublicKey => Request::PublicKey {
            key: key(),
            version: Some(2),
        },
        Op::Encrypt => Request::Encrypt {
            key: key(),
            plaintext: secret(b"pt"),
            context: b"ctx".to_vec(),
        },
        Op::Decrypt => Request::Decrypt {
            ciphertext: vec![0xc1, 0xc2],
            context: b"ctx".to_vec(),
        },
        Op::GenerateDataKey => Request::GenerateDataKey {
            key: key(),
            length: 32,
            context: b"ctx".to_vec(),
        },
        Op::Create => Request::Create {
            key: key(),
            key_type: KeyType::EcdsaP256,
            rotate_every: Some(86_400),
        },
        Op::Import => Request::Import {
            key: key(),
            pem: secret(b"PEM"),
            new_version: true,
        },
        Op::List => Request::List,
        Op::Describe => Request::Describe { key: key() },
        Op::Rotate => Request::Rotate { key: key() },
        Op::Enable => Request::Enable { key: key() },
        Op::Disable => Request::Disable { key: key() },
        Op::ScheduleDeletion => Request::ScheduleDeletion {
            key: key(),
            wait_secs: Some(604_800),
        },
        Op::CancelDeletion => Request::CancelDeletion { key: key() },
        Op::BackupExport => Request::BackupExport {
            key: Some(key()),
            passphrase: secret(b"pw"),
            salt: vec![0x5a; 16],
        },
        Op::BackupImport => Request::BackupImport {
            blob: vec![0xb1],
            passphrase: secret(b"pw"),
            skip_existing: true,
        },
        Op::AuditVerify => Request::AuditVerify,
        Op::AuditRotate => Request::AuditRotate,
        Op::Subscribe => Request::Subscribe,
        Op::CertInstall => Request::CertInstall {
            key: key(),
            version: Some(2),
            chain_pem: "PEM".into(),
        },
        Op::CertGet => Request::CertGet {
            key: key(),
            version: Some(2),
        },
        Op::CertCsr => Request::CertCsr {
            key: key(),
            version: Some(2),
            params: r#"{"names":["a.example"]}"#.into(),
        },
        Op::CertIssue => Request::CertIssue {
            key: key(),
            version: Some(2),
            params: r#"{"ca":"ca"}"#.into(),
        },
        Op::CertSign => Request::CertSign {
            key: key(),
            version: None,
            params: r#"{"csr":"PEM"}"#.into(),
        },
    }
}

/// The answer each opcode gets when it succeeds.
fn answer(op: Op) -> Response {
    let json = |j: &str| Response::Json { json: j.to_owned() };
    match op {
        Op::Ping => Response::Pong {
            payload: b"hi".to_vec(),
        },
        Op::Sign | Op::SignDigest => Response::Signature {
            version: 2,
            signature: vec![0x30, 0x02],
        },
        Op::Verify => Response::Verified { valid: true },
        Op::PublicKey => Response::PublicKey {
            key_type: KeyType::EcdsaP256,
            version: 2,
            spki_der: vec![0x30, 0x59],
        },
        Op::Encrypt => Response::Ciphertext {
            version: 2,
            blob: vec![0xc1, 0xc2],
        },
        Op::Decrypt => Response::Plaintext {
            key: "web".into(),
            version: 2,
            plaintext: Zeroizing::new(b"pt".to_vec()),
        },
        Op::GenerateDataKey => Response::DataKey {
            version: 2,
            plaintext: Zeroizing::new(vec![0x4b; 4]),
            ciphertext: vec![0xc1, 0xc2],
        },
        Op::BackupExport => Response::BackupEntry { blob: vec![0xb1] },
        Op::CertGet | Op::CertCsr | Op::CertSign => Response::Certificate {
            version: 2,
            chain_pem: "PEM".into(),
        },
        Op::List => json("[]"),
        Op::AuditVerify => json(r#"{"ok":true,"records":1,"segments":0,"first":1,"last":1}"#),
        Op::AuditRotate => json(
            r#"{"segment":"audit-00000000000000000001-00000000000000000009.log","first":1,"last":9,"deleted":[]}"#,
        ),
        Op::Subscribe => json(r#"{"subscribed":true}"#),
        Op::Create
        | Op::Import
        | Op::Describe
        | Op::Rotate
        | Op::Enable
        | Op::Disable
        | Op::ScheduleDeletion
        | Op::CancelDeletion
        | Op::BackupImport
        | Op::CertInstall
        | Op::CertIssue => json(r#"{"name":"web"}"#),
    }
}

fn hex_of(frame: &Frame) -> String {
    let mut buf = BytesMut::new();
    frame.encode(&mut buf).expect("sample frames are small");
    hex::encode(buf)
}

/// `request NAME` / `answer NAME` / `error` lines, in opcode order.
fn current() -> String {
    let mut out = String::new();
    for &op in Op::ALL {
        let req = request(op).to_frame(7);
        let _ = writeln!(out, "request {}: {}", op.name(), hex_of(&req));
        let ans = answer(op).to_frame(op, 7);
        let _ = writeln!(out, "answer {}: {}", op.name(), hex_of(&ans));
    }
    let err = Response::error(ErrorCode::Denied, "no grant").to_frame(Op::Sign, 7);
    let _ = writeln!(out, "error: {}", hex_of(&err));
    out
}

#[test]
fn every_opcode_encodes_to_its_golden_bytes() {
    let now = current();
    if std::env::var_os("BLESS").is_some() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN_PATH);
        std::fs::write(&path, &now).expect("write golden file");
        return;
    }
    let want: Vec<&str> = GOLDEN.lines().collect();
    let got: Vec<&str> = now.lines().collect();
    let differ: Vec<String> = got
        .iter()
        .filter(|l| !want.contains(l))
        .map(|l| format!("  now:  {l}"))
        .chain(
            want.iter()
                .filter(|l| !got.contains(l))
                .map(|l| format!("  file: {l}")),
        )
        .collect();
    assert!(
        differ.is_empty(),
        "the wire encoding differs from {GOLDEN_PATH}:\n{}\n\
         if the change is deliberate, update docs/PROTOCOL.md, then BLESS=1 cargo test --lib protocol::golden",
        differ.join("\n")
    );
}

#[test]
fn golden_bytes_decode_to_the_samples() {
    for line in GOLDEN.lines() {
        let (label, hex_bytes) = line.split_once(": ").expect("`label: hex` lines");
        let bytes = hex::decode(hex_bytes).expect("hex");
        let mut buf = BytesMut::from(&bytes[..]);
        let frame = frame::decode(&mut buf)
            .expect("valid frame")
            .expect("complete frame");
        assert!(buf.is_empty(), "{label}: trailing bytes");
        match label.split_once(' ') {
            Some(("request", name)) => {
                let op = Op::from_name(name).expect("known op");
                assert_eq!(Request::from_frame(&frame), Ok(request(op)), "{label}");
            }
            Some(("answer", name)) => {
                let op = Op::from_name(name).expect("known op");
                assert_eq!(Response::from_frame(op, &frame), Ok(answer(op)), "{label}");
            }
            _ => {
                let resp = Response::from_frame(Op::Sign, &frame).expect("error answer");
                assert!(matches!(
                    resp,
                    Response::Error {
                        code: ErrorCode::Denied,
                        ..
                    }
                ));
            }
        }
    }
}

/// The rows of docs/PROTOCOL.md's table whose header row starts with
/// `header`: `(value, name)` from the first two cells of each row.
fn doc_table(header: &str) -> BTreeMap<u64, String> {
    let table = DOC
        .split_once(header)
        .unwrap_or_else(|| panic!("docs/PROTOCOL.md has no table headed {header:?}"))
        .1;
    let mut rows = BTreeMap::new();
    for line in table.lines().skip(2) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Some(first), Some(name)) = (cells.get(1), cells.get(2)) else {
            break;
        };
        let value = match first.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16),
            None => first.parse(),
        };
        rows.insert(
            value.unwrap_or_else(|_| panic!("row {line:?}")),
            name.to_string(),
        );
    }
    rows
}

fn code_table<T: Copy>(
    all: &[T],
    value: impl Fn(T) -> u64,
    name: impl Fn(T) -> &'static str,
) -> BTreeMap<u64, String> {
    all.iter()
        .map(|&v| (value(v), name(v).to_owned()))
        .collect()
}

#[test]
fn the_protocol_doc_lists_every_opcode_field_and_error_code() {
    assert_eq!(
        doc_table("| opcode | request |"),
        code_table(Op::ALL, |o| o.value().into(), Op::name),
        "docs/PROTOCOL.md's opcode table and `Op` differ"
    );
    assert_eq!(
        doc_table("| tag | name |"),
        code_table(Tag::ALL, |t| t.value().into(), Tag::name),
        "docs/PROTOCOL.md's field table and `Tag` differ"
    );
    assert_eq!(
        doc_table("| code | name |"),
        code_table(ErrorCode::ALL, |c| c.value().into(), ErrorCode::name),
        "docs/PROTOCOL.md's error table and `ErrorCode` differ"
    );
}

#[test]
fn tags_run_from_one_without_gaps() {
    for (i, tag) in Tag::ALL.iter().enumerate() {
        assert_eq!(usize::from(tag.value()), i + 1, "{tag}");
    }
}

#[test]
fn values_and_names_convert_both_ways() {
    for &op in Op::ALL {
        assert_eq!(Op::from_value(op.value()), Some(op));
        assert_eq!(Op::from_name(op.name()), Some(op));
    }
    for &code in ErrorCode::ALL {
        assert_eq!(ErrorCode::from_value(code.value()), Some(code));
    }
    for &kt in KeyType::ALL {
        assert_eq!(KeyType::from_name(kt.name()), Some(kt));
        let json = serde_json::to_string(&kt).expect("serialise");
        assert_eq!(json, format!("\"{}\"", kt.name()));
        assert_eq!(serde_json::from_str::<KeyType>(&json).ok(), Some(kt));
    }
    assert!(serde_json::from_str::<KeyType>("\"rsa-1024\"").is_err());
}
