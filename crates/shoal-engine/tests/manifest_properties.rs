//! Property tests of `shoal.toml` parsing: whatever the text, parsing never
//! panics and either gives a manifest that keeps every rule or an error
//! that starts with `shoal.toml:` and says what is wrong. Inputs are made
//! from a seeded generator (repeatable): valid manifests with random
//! values, then the same mutated byte by byte, then random keys and junk.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use shoal_engine::manifest::Manifest;

const KEYS: &[&str] = &[
    "name",
    "runtime",
    "handler",
    "timeout",
    "memory_mb",
    "concurrency",
    "retries",
    "retry_delay",
    "limiter",
    "concurrency_key",
    "concurrency_per_key",
    "network",
    "secrets",
    "bogus",
];

fn value(rng: &mut StdRng) -> String {
    match rng.random_range(0..12) {
        0 => format!("{}", rng.random_range(-5i64..100_000)),
        1 => format!("\"{}s\"", rng.random_range(0..2000)),
        2 => format!("\"{}ms\"", rng.random_range(0..200_000)),
        3 => "\"none\"".into(),
        4 => "\"default\"".into(),
        5 => "[\"API_KEY\", \"X\"]".into(),
        6 => "\"main:handler\"".into(),
        7 => "\"a-b_c\"".into(),
        8 => "true".into(),
        9 => "\"\"".into(),
        10 => format!("\"{}\"", "x".repeat(rng.random_range(0..100))),
        _ => "1.5".into(),
    }
}

fn manifest(rng: &mut StdRng) -> String {
    let mut text = format!("name = \"fn-{}\"\n", rng.random_range(0..1000));
    for _ in 0..rng.random_range(0..8) {
        let key = KEYS[rng.random_range(0..KEYS.len())];
        text += &format!("{key} = {}\n", value(rng));
    }
    if rng.random_bool(0.3) {
        text += &format!("[subscribe]\nqueue = \"q\"\nbatch_size = {}\n", value(rng));
    }
    if rng.random_bool(0.3) {
        text += &format!("[env]\nGREETING = {}\n", value(rng));
    }
    text
}

fn mutate(rng: &mut StdRng, text: &str) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for _ in 0..rng.random_range(1..4) {
        if bytes.is_empty() {
            break;
        }
        let i = rng.random_range(0..bytes.len());
        match rng.random_range(0..3) {
            0 => bytes[i] = rng.random(),
            1 => {
                bytes.remove(i);
            }
            _ => {
                let junk = b"=[]\"\n\\{}#";
                bytes.insert(i, junk[rng.random_range(0..junk.len())])
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn check(text: &str) {
    match Manifest::parse(text) {
        Ok(m) => {
            // What parsed keeps every rule.
            assert!(!m.name.is_empty());
            assert!(m.limits.concurrency >= 1, "{text}");
            assert!(m.retries <= Manifest::MAX_RETRIES, "{text}");
            if let Some((field, per_key)) = &m.concurrency_key {
                assert!(!field.is_empty() && (1..=m.limits.concurrency).contains(per_key));
            }
            for s in &m.secrets {
                assert!(!m.env.contains_key(s), "{text}");
            }
        }
        Err(e) => {
            assert!(
                e.starts_with("shoal.toml"),
                "unhelpful error {e:?} for {text:?}"
            );
            assert!(e.len() > "shoal.toml: ".len(), "{text:?}");
        }
    }
}

#[test]
fn parsing_any_text_gives_a_valid_manifest_or_a_clear_error() {
    let mut rng = StdRng::seed_from_u64(20_261_204);
    let mut accepted = 0;
    for _ in 0..3_000 {
        let text = manifest(&mut rng);
        if Manifest::parse(&text).is_ok() {
            accepted += 1;
        }
        check(&text);
        check(&mutate(&mut rng, &text));
        let junk: String = (0..rng.random_range(0..200))
            .map(|_| rng.random_range(0x09u8..0x7f) as char)
            .collect();
        check(&junk);
    }
    // The generator reaches both sides of the rules.
    assert!(accepted > 100 && accepted < 3_000, "accepted {accepted}");
}
