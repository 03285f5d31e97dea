//! What every stored document must be, whichever way it comes in (an HTTP
//! write or a function's `ctx.put_docs`): UTF-8 text nesting objects and
//! arrays at most [`MAX_DOC_DEPTH`] levels deep. Its JSON syntax is checked
//! where it is split from its request.

/// How deep a document may nest objects and arrays inside each other.
pub const MAX_DOC_DEPTH: u32 = 128;

/// Checks one document's text: UTF-8, and nested at most
/// [`MAX_DOC_DEPTH`] levels deep (brackets inside strings do not count).
/// The reason completes a sentence that names the document
/// ("document 2 ...").
pub fn check_document(body: &[u8]) -> Result<(), String> {
    if let Err(e) = std::str::from_utf8(body) {
        return Err(format!(
            "is not valid UTF-8 (at byte {} of the document)",
            e.valid_up_to()
        ));
    }
    let (mut depth, mut in_str, mut esc) = (0u32, false, false);
    for &b in body {
        if in_str {
            if esc {
                esc = false;
            } else if b == b'\\' {
                esc = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DOC_DEPTH {
                    return Err(format!(
                        "nests objects and arrays more than {MAX_DOC_DEPTH} levels deep"
                    ));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_and_at_most_128_levels() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(check_document(deep(128).as_bytes()), Ok(()));
        assert!(
            check_document(deep(129).as_bytes())
                .unwrap_err()
                .contains("more than 128")
        );
        let quoted = format!("{{\"s\": \"\\\"{}\"}}", "[".repeat(500));
        assert_eq!(check_document(quoted.as_bytes()), Ok(()));
        assert_eq!(
            check_document(b"{\"a\": \"\xff\"}"),
            Err("is not valid UTF-8 (at byte 7 of the document)".into())
        );
    }
}
