//! Splits a streamed request body into JSON documents as it arrives: either
//! one JSON array of documents, or NDJSON (any whitespace-separated sequence
//! of JSON values). Each document is checked to be valid JSON and its `id`
//! field is taken when it is a string or an integer.
//!
//! Memory stays bounded by the documents themselves: the body is never held
//! whole, each document is kept in a buffer of its exact size, a document
//! over the size limit is refused as soon as it grows past it, and a body
//! with more documents than the limit is refused at the first one too many.

use serde::Deserialize;
use serde::de::IgnoredAny;

use shoal_engine::{NewDoc, check_document};

/// Why a body was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SplitError {
    /// Not JSON, or not a sequence/array of JSON values.
    Invalid(String),
    /// Document number `number` (1-based, as users count) is larger than the limit.
    TooLarge { number: usize, limit: usize },
    /// More than `limit` documents.
    TooMany { limit: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Nothing but whitespace seen yet.
    Start,
    /// Inside a top-level array; `expect_value` tells what may come next.
    Array { expect_value: bool, seen_any: bool },
    /// The top-level array was closed; only whitespace may follow.
    ArrayDone,
    /// A sequence of top-level values (NDJSON).
    Stream,
}

pub(crate) struct DocSplitter {
    mode: Mode,
    max_doc_bytes: usize,
    max_docs: usize,
    /// Documents already handed out by `take_docs`.
    taken: usize,
    /// Bytes of the value being read; empty between values.
    cur: Vec<u8>,
    depth: u32,
    in_str: bool,
    esc: bool,
    docs: Vec<NewDoc>,
    /// The body's current line (1-based) and the line the value being read
    /// started on, to name it when it is refused.
    line: usize,
    doc_line: usize,
}

#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<IdField>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IdField {
    Str(String),
    Int(i64),
    Uint(u64),
    Other(IgnoredAny),
}

impl DocSplitter {
    pub(crate) fn new(max_doc_bytes: usize, max_docs: usize) -> DocSplitter {
        DocSplitter {
            mode: Mode::Start,
            max_doc_bytes,
            max_docs,
            taken: 0,
            cur: Vec::new(),
            depth: 0,
            in_str: false,
            esc: false,
            docs: Vec::new(),
            line: 1,
            doc_line: 1,
        }
    }

    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Result<(), SplitError> {
        for &b in chunk {
            if self.cur.is_empty() {
                self.between_values(b)?;
            } else {
                self.in_value(b)?;
            }
            if b == b'\n' {
                self.line += 1;
            }
        }
        Ok(())
    }

    /// The complete documents so far (in order), handed out: the splitter
    /// keeps no more of them. Numbering in errors goes on counting them.
    pub(crate) fn take_docs(&mut self) -> Vec<NewDoc> {
        self.taken += self.docs.len();
        std::mem::take(&mut self.docs)
    }

    /// Complete documents held, and their bytes.
    pub(crate) fn held(&self) -> (usize, usize) {
        (
            self.docs.len(),
            self.docs.iter().map(|d| d.body.len()).sum(),
        )
    }

    /// Ends the body; returns the documents in order.
    pub(crate) fn finish(mut self) -> Result<Vec<NewDoc>, SplitError> {
        if !self.cur.is_empty() {
            // A scalar at the very end of an NDJSON body (`1` without newline).
            if self.mode == Mode::Stream && self.depth == 0 && !self.in_str {
                self.complete()?;
            } else {
                return Err(SplitError::Invalid(
                    "the body ends in the middle of a document".into(),
                ));
            }
        }
        match self.mode {
            Mode::Array { .. } => Err(SplitError::Invalid(
                "the JSON array is not closed with `]`".into(),
            )),
            _ => {
                self.docs.shrink_to_fit();
                Ok(self.docs)
            }
        }
    }

    fn between_values(&mut self, b: u8) -> Result<(), SplitError> {
        if b.is_ascii_whitespace() {
            return Ok(());
        }
        match self.mode {
            Mode::Start if b == b'[' => {
                self.mode = Mode::Array {
                    expect_value: true,
                    seen_any: false,
                };
                Ok(())
            }
            Mode::Start => {
                self.mode = Mode::Stream;
                self.start_value(b)
            }
            Mode::Stream => self.start_value(b),
            Mode::ArrayDone => Err(SplitError::Invalid(
                "unexpected data after the closing `]` of the array".into(),
            )),
            Mode::Array {
                expect_value,
                seen_any,
            } => match b {
                b']' if !expect_value || !seen_any => {
                    self.mode = Mode::ArrayDone;
                    Ok(())
                }
                b',' if !expect_value => {
                    self.mode = Mode::Array {
                        expect_value: true,
                        seen_any,
                    };
                    Ok(())
                }
                _ if expect_value && b != b']' && b != b',' => {
                    self.mode = Mode::Array {
                        expect_value: false,
                        seen_any: true,
                    };
                    self.start_value(b)
                }
                _ => Err(SplitError::Invalid(format!(
                    "unexpected `{}` on line {} between documents of the array (after document {})",
                    b as char,
                    self.line,
                    self.taken + self.docs.len()
                ))),
            },
        }
    }

    fn start_value(&mut self, b: u8) -> Result<(), SplitError> {
        self.doc_line = self.line;
        self.cur.push(b);
        match b {
            b'{' | b'[' => self.depth = 1,
            b'"' => self.in_str = true,
            _ => {}
        }
        Ok(())
    }

    fn in_value(&mut self, b: u8) -> Result<(), SplitError> {
        if self.in_str {
            self.push(b)?;
            if self.esc {
                self.esc = false;
            } else if b == b'\\' {
                self.esc = true;
            } else if b == b'"' {
                self.in_str = false;
                if self.depth == 0 {
                    return self.complete();
                }
            }
            return Ok(());
        }
        if self.depth == 0 {
            // A number or literal ends at a delimiter, which belongs to what
            // comes between values.
            if b.is_ascii_whitespace() || b == b',' || b == b']' {
                self.complete()?;
                return self.between_values(b);
            }
            return self.push(b);
        }
        self.push(b)?;
        match b {
            b'"' => self.in_str = true,
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' => {
                self.depth -= 1;
                if self.depth == 0 {
                    return self.complete();
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn push(&mut self, b: u8) -> Result<(), SplitError> {
        if self.cur.len() >= self.max_doc_bytes {
            return Err(SplitError::TooLarge {
                number: self.taken + self.docs.len() + 1,
                limit: self.max_doc_bytes,
            });
        }
        self.cur.push(b);
        Ok(())
    }

    /// The current value is complete: check it and keep it.
    fn complete(&mut self) -> Result<(), SplitError> {
        if self.taken + self.docs.len() >= self.max_docs {
            return Err(SplitError::TooMany {
                limit: self.max_docs,
            });
        }
        // A copy of its exact size: the buffer grew by doubling, and a
        // write keeps every document until it commits.
        let body = self.cur.as_slice().to_vec();
        if self.cur.capacity() > 64 * 1024 {
            self.cur = Vec::new();
        } else {
            self.cur.clear();
        }
        self.depth = 0;
        self.in_str = false;
        self.esc = false;
        // Documents are counted from 1, as users count them.
        let number = self.taken + self.docs.len() + 1;
        let which = match self.mode {
            Mode::Stream => format!("line {} (document {number})", self.doc_line),
            _ => format!("document {number}"),
        };
        if let Err(why) = check_document(&body) {
            return Err(SplitError::Invalid(format!(
                "{which} {why}; nothing was written"
            )));
        }
        let doc_line = self.doc_line;
        let bad = |e: serde_json::Error| {
            SplitError::Invalid(format!(
                "{which} is not valid JSON: {}; nothing was written",
                json_error_in_body(&e, doc_line)
            ))
        };
        let id = if body[0] == b'{' {
            let parsed: IdOnly = serde_json::from_slice(&body).map_err(bad)?;
            match parsed.id {
                None => None,
                Some(IdField::Str(s)) => Some(s),
                Some(IdField::Int(n)) => Some(n.to_string()),
                Some(IdField::Uint(n)) => Some(n.to_string()),
                Some(IdField::Other(_)) => {
                    return Err(SplitError::Invalid(format!(
                        "{which}: `id` must be a string or an integer; nothing was written"
                    )));
                }
            }
        } else {
            serde_json::from_slice::<IgnoredAny>(&body).map_err(bad)?;
            None
        };
        self.docs.push(NewDoc { id, body });
        Ok(())
    }
}

/// A JSON error's message with its position counted in the request body:
/// serde_json counts lines from the document's start, which for any
/// document but the first is not where the user looks.
fn json_error_in_body(e: &serde_json::Error, doc_line: usize) -> String {
    let text = e.to_string();
    let message = match text.rfind(" at line ") {
        Some(at) => &text[..at],
        None => &text,
    };
    if e.line() == 0 {
        return message.to_string();
    }
    let line = doc_line + e.line() - 1;
    format!("{message} at line {line} column {} of the body", e.column())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(body: &str, chunk: usize) -> Result<Vec<(Option<String>, String)>, SplitError> {
        let mut s = DocSplitter::new(1000, 100);
        for c in body.as_bytes().chunks(chunk.max(1)) {
            s.feed(c)?;
        }
        Ok(s.finish()?
            .into_iter()
            .map(|d| (d.id, String::from_utf8(d.body).unwrap()))
            .collect())
    }

    #[test]
    fn arrays_and_ndjson_give_the_same_documents() {
        let arr = r#" [ {"id": "a", "x": [1, {"y": "]}"}]}, {"id": 7}, {"z": "q\"uote"}, 5, "s", null, true, [1,2] ] "#;
        let nd = "{\"id\": \"a\", \"x\": [1, {\"y\": \"]}\"}]}\n{\"id\": 7}\n{\"z\": \"q\\\"uote\"}\n5\n\"s\"\nnull\ntrue\n[1,2]\n";
        for chunk in [1, 2, 3, 7, 1000] {
            let a = split(arr, chunk).unwrap();
            let n = split(nd, chunk).unwrap();
            assert_eq!(a, n, "chunk {chunk}");
            assert_eq!(a.len(), 8);
            assert_eq!(a[0].0.as_deref(), Some("a"));
            assert_eq!(a[1].0.as_deref(), Some("7"));
            assert_eq!(a[2].0, None);
            assert_eq!(a[3].1, "5");
        }
        // No trailing newline, empty bodies, empty arrays.
        assert_eq!(split("1\n2", 1).unwrap().len(), 2);
        assert_eq!(split("", 1).unwrap().len(), 0);
        assert_eq!(split(" [ ] ", 1).unwrap().len(), 0);
    }

    #[test]
    fn refuses_broken_input() {
        for bad in [
            "[1,,2]",
            "[1 2]",
            "[1,]",
            "[,1]",
            "[1",
            "{\"a\": 1",
            "{\"a\" 1}",
            "[1] 2",
            "nul",
            "{\"id\": 1.5}",
            "{\"id\": {}}",
            "{\"id\": 1, \"id\": 2}",
            "[{\"a\":1}}]",
        ] {
            assert!(
                matches!(split(bad, 1), Err(SplitError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_json_error_names_the_document_from_1_and_its_line_in_the_body() {
        let nd = "{\"a\": 1}\n{\"b\":\n nope}\n";
        let Err(SplitError::Invalid(m)) = split(nd, 3) else {
            panic!("accepted bad JSON");
        };
        assert_eq!(
            m,
            "line 2 (document 2) is not valid JSON: expected ident at line 3 column 3 of the body; nothing was written"
        );
        let Err(SplitError::Invalid(m)) = split("[{\"id\": \"a\"}, {\"id\": 1.5}]", 3) else {
            panic!("accepted a float id");
        };
        assert_eq!(
            m,
            "document 2: `id` must be a string or an integer; nothing was written"
        );
    }

    #[test]
    fn refuses_invalid_utf8_and_deep_nesting_naming_the_document() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        // 128 levels are fine, 129 are not; brackets inside strings do not count.
        assert_eq!(split(&deep(128), 7).unwrap().len(), 1);
        let quoted = format!("{{\"s\": \"{}\"}}", "[".repeat(500));
        assert_eq!(split(&quoted, 7).unwrap().len(), 1);
        let nd = format!("{{\"a\": 1}}\n\n{{\"b\":\n2}}\n{}\n", deep(129));
        let Err(SplitError::Invalid(m)) = split(&nd, 3) else {
            panic!("accepted 129 levels");
        };
        assert!(m.starts_with("line 5 (document 3) nests"), "{m}");
        let arr = format!("[1, {}]", deep(129));
        let Err(SplitError::Invalid(m)) = split(&arr, 3) else {
            panic!("accepted 129 levels");
        };
        assert!(m.starts_with("document 2 nests"), "{m}");

        let mut s = DocSplitter::new(1000, 100);
        let r = s.feed(b"{\"a\": \"ok\"}\n{\"a\": \"\xff\xfe\"}\n");
        assert_eq!(
            r,
            Err(SplitError::Invalid(
                "line 2 (document 2) is not valid UTF-8 (at byte 7 of the document); nothing was written".into()
            ))
        );
    }

    #[test]
    fn refuses_oversized_documents_early() {
        let mut s = DocSplitter::new(10, 100);
        s.feed(b"[{\"a\": 1}, ").unwrap();
        let err = s.feed(b"{\"a\": \"0123456789\"}]").unwrap_err();
        assert_eq!(
            err,
            SplitError::TooLarge {
                number: 2,
                limit: 10
            }
        );
    }

    #[test]
    fn refuses_too_many_documents_at_the_first_one_over() {
        let mut s = DocSplitter::new(100, 3);
        s.feed(b"1\n2\n3\n").unwrap();
        assert_eq!(
            s.feed(b"4\n").unwrap_err(),
            SplitError::TooMany { limit: 3 }
        );
        let mut s = DocSplitter::new(100, 3);
        s.feed(b"[1, 2, 3]").unwrap();
        assert_eq!(s.finish().unwrap().len(), 3);
    }

    #[test]
    fn documents_taken_out_keep_their_numbering() {
        let mut s = DocSplitter::new(100, 4);
        s.feed(b"[1, 2, ").unwrap();
        assert_eq!(s.held(), (2, 2));
        assert_eq!(s.take_docs().len(), 2);
        assert_eq!(s.held(), (0, 0));
        let Err(SplitError::Invalid(m)) = s.feed(b"3, {\"id\": []}") else {
            panic!("accepted a bad id");
        };
        assert!(m.contains("document 4"), "{m}");
        let mut s = DocSplitter::new(100, 3);
        s.feed(b"1\n2\n").unwrap();
        s.take_docs();
        s.feed(b"3\n").unwrap();
        assert_eq!(
            s.feed(b"4\n").unwrap_err(),
            SplitError::TooMany { limit: 3 }
        );
    }

    #[test]
    fn bodies_are_kept_at_their_exact_size() {
        let mut s = DocSplitter::new(1000, 10);
        s.feed(b"{\"id\": \"a\", \"x\": \"0123456789012345678\"}\n")
            .unwrap();
        let docs = s.finish().unwrap();
        assert_eq!(docs[0].body.capacity(), docs[0].body.len());
    }

    /// A small seeded generator (xorshift): the property tests repeat.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn value(&mut self, depth: u32) -> serde_json::Value {
            use serde_json::Value;
            let leaf = depth >= 4 || self.below(3) == 0;
            match if leaf {
                self.below(5)
            } else {
                5 + self.below(2)
            } {
                0 => Value::Null,
                1 => Value::Bool(self.below(2) == 0),
                2 => Value::from(self.next() as i64 >> 20),
                3 => Value::from((self.below(1_000_000) as f64) / 8.0),
                4 => {
                    const PIECES: &[&str] = &[
                        "a", "\"", "\\", "]", "[", "{", "}", ",", "\n", "é", "💡", " ", "\u{1}",
                    ];
                    let n = self.below(6);
                    Value::String(
                        (0..n)
                            .map(|_| PIECES[self.below(PIECES.len() as u64) as usize])
                            .collect(),
                    )
                }
                5 => Value::Array((0..self.below(4)).map(|_| self.value(depth + 1)).collect()),
                _ => {
                    let mut map = serde_json::Map::new();
                    for i in 0..self.below(4) {
                        map.insert(format!("k{i}"), self.value(depth + 1));
                    }
                    Value::Object(map)
                }
            }
        }
    }

    #[test]
    fn any_documents_split_back_to_themselves_however_the_body_is_cut() {
        let mut g = Gen(0x5eed_2026_1204);
        for round in 0..400 {
            // Documents are objects (a body starting with `[` is an array
            // of documents, so an NDJSON body cannot start with an array),
            // some with an `id`.
            let docs: Vec<serde_json::Value> = (0..1 + g.below(8))
                .map(|i| {
                    let mut doc = serde_json::Map::new();
                    if g.below(2) == 0 {
                        doc.insert("id".into(), serde_json::json!(format!("d{round}-{i}")));
                    }
                    for k in 0..g.below(4) {
                        doc.insert(format!("f{k}"), g.value(1));
                    }
                    serde_json::Value::Object(doc)
                })
                .collect();
            let space = |g: &mut Gen| [" ", "", "\n", "\t ", "\r\n"][g.below(5) as usize];
            let mut array = String::from(space(&mut g));
            array.push('[');
            for (i, d) in docs.iter().enumerate() {
                if i > 0 {
                    array.push(',');
                }
                array += space(&mut g);
                array += &d.to_string();
                array += space(&mut g);
            }
            array.push(']');
            let ndjson: String = docs.iter().map(|d| format!("{d}\n")).collect();
            for body in [&array, &ndjson] {
                let chunk = 1 + g.below(40) as usize;
                let mut s = DocSplitter::new(1 << 20, 1000);
                for c in body.as_bytes().chunks(chunk) {
                    s.feed(c).unwrap_or_else(|e| {
                        panic!("round {round}, chunk {chunk}: {e:?} in {body:?}")
                    });
                }
                let got = s.finish().unwrap();
                assert_eq!(got.len(), docs.len(), "round {round}: {body}");
                for (d, want) in got.iter().zip(&docs) {
                    let parsed: serde_json::Value = serde_json::from_slice(&d.body).unwrap();
                    assert_eq!(&parsed, want, "round {round}: {body}");
                    let id = want.get("id");
                    assert_eq!(
                        d.id.is_some(),
                        id.is_some_and(|v| v.is_string() || v.is_i64() || v.is_u64())
                    );
                }
            }
            // The same bodies, damaged: never a panic, only an answer.
            for body in [&array, &ndjson] {
                let mut bytes = body.clone().into_bytes();
                for _ in 0..1 + g.below(3) {
                    let i = g.below(bytes.len() as u64) as usize;
                    let junk = b"[]{}\",:x\xff\n";
                    bytes[i] = junk[g.below(junk.len() as u64) as usize];
                }
                let mut s = DocSplitter::new(1 << 20, 1000);
                let fed = bytes
                    .chunks(1 + g.below(16) as usize)
                    .try_for_each(|c| s.feed(c));
                if fed.is_ok() {
                    let _ = s.finish();
                }
            }
        }
    }
}
