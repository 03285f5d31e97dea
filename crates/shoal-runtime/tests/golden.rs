//! The golden files of the host-call protocol (`tests/golden/host/`, see its
//! README): every frame the Python runner sends for an operation decodes into
//! that operation's `HostCall`, whose arguments encode back to the very same
//! bytes; every call in `errors.json` is refused with the golden error; every
//! operation has a file. The Python side checks that it sends these frames
//! (`crates/shoal-runtime-python/tests/python/test_host_golden.py`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::value::RawValue;

use shoal_runtime::{HOST_PROTOCOL_VERSION, HostCall, HostError};

#[derive(Deserialize)]
struct Golden {
    version: u32,
    #[serde(default)]
    op: Option<String>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    frame: String,
    reply: String,
}

/// A `host` frame, its arguments kept as the text sent.
#[derive(Deserialize)]
struct Frame<'a> {
    kind: &'a str,
    seq: u64,
    op: &'a str,
    #[serde(borrow)]
    args: &'a RawValue,
}

#[derive(Deserialize)]
struct Reply {
    kind: String,
    seq: u64,
    error: Option<ReplyError>,
}

#[derive(Deserialize)]
struct ReplyError {
    code: String,
    message: String,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/host")
}

fn load(name: &str) -> Golden {
    let path = dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let golden: Golden = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        golden.version, HOST_PROTOCOL_VERSION,
        "{name} is for another version of the protocol"
    );
    assert!(!golden.cases.is_empty(), "{name} has no cases");
    golden
}

fn frame<'a>(name: &str, case: &'a Case) -> Frame<'a> {
    let frame: Frame<'_> = serde_json::from_str(&case.frame)
        .unwrap_or_else(|e| panic!("{name}, {}: the frame: {e}", case.name));
    assert_eq!(frame.kind, "host", "{name}, {}", case.name);
    assert_eq!(frame.seq, 1, "{name}, {}", case.name);
    frame
}

fn reply(name: &str, case: &Case) -> Reply {
    let reply: Reply = serde_json::from_str(&case.reply)
        .unwrap_or_else(|e| panic!("{name}, {}: the reply: {e}", case.name));
    assert_eq!(reply.kind, "host_reply", "{name}, {}", case.name);
    assert_eq!(reply.seq, 1, "{name}, {}", case.name);
    reply
}

#[test]
fn every_op_has_a_golden_file_and_every_file_an_op() {
    let files: BTreeSet<String> = std::fs::read_dir(dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".json"))
        .collect();
    let mut expected: BTreeSet<String> = HostCall::OPS
        .iter()
        .map(|op| format!("{op}.json"))
        .collect();
    expected.insert("errors.json".into());
    assert_eq!(files, expected);
}

#[test]
fn golden_frames_decode_into_their_op_and_encode_back_byte_for_byte() {
    for op in HostCall::OPS {
        let name = format!("{op}.json");
        let golden = load(&name);
        assert_eq!(golden.op.as_deref(), Some(*op), "{name}");
        for case in &golden.cases {
            let frame = frame(&name, case);
            assert_eq!(frame.op, *op, "{name}, {}", case.name);
            let call = HostCall::decode(frame.op, frame.args.get())
                .unwrap_or_else(|e| panic!("{name}, {}: {e:?}", case.name));
            assert_eq!(call.op(), *op, "{name}, {}", case.name);
            // Field names, their order and the payloads agree with Python's.
            assert_eq!(
                call.encode_args(),
                frame.args.get(),
                "{name}, {}",
                case.name
            );
            reply(&name, case);
        }
    }
}

#[test]
fn golden_refusals_are_what_decoding_answers() {
    let golden = load("errors.json");
    assert_eq!(golden.op, None);
    for case in &golden.cases {
        let frame = frame("errors.json", case);
        let refused = HostCall::decode(frame.op, frame.args.get()).expect_err(&case.name);
        let error = reply("errors.json", case)
            .error
            .unwrap_or_else(|| panic!("errors.json, {}: the reply is no error", case.name));
        assert_eq!(
            refused,
            HostError::new(error.code, error.message),
            "errors.json, {}",
            case.name
        );
    }
}
