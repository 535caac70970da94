//! Keeps secrets out of every text that leaves the process (errors, logs, the db, `status`).
//!
//! API error bodies are untrusted text that may echo what was sent (a 401 repeating the token).
//! Before such text reaches an error it is shortened and [`scrub`]bed: every secret the process
//! knows (the config's secret files, and each token as it is issued: [`register`]) is replaced by
//! `[redacted]`, and so is anything token-shaped (a JWT, a bcrypt-like `$2y$...` string, a long run
//! of letters and digits). The registry is process-wide on purpose: a secret learnt anywhere must
//! be hidden everywhere.

use std::sync::RwLock;

/// What replaces a secret.
pub const MASK: &str = "[redacted]";
/// The most secrets remembered (the newest win); tokens rotate, so old ones age out.
const MAX_SECRETS: usize = 64;
/// An unbroken run of letters and digits (both) at least this long is taken for a token.
const TOKEN_MIN_RUN: usize = 20;
/// Secrets shorter than this are not registered (they would mask ordinary words).
const SECRET_MIN_LEN: usize = 6;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Remembers a secret so that [`scrub`] hides it from now on.
pub fn register(secret: &str) {
    let secret = secret.trim();
    if secret.len() < SECRET_MIN_LEN {
        return;
    }
    let mut s = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    if s.iter().any(|x| x == secret) {
        return;
    }
    if s.len() >= MAX_SECRETS {
        s.remove(0);
    }
    s.push(secret.to_string());
}

/// `text` without any known secret or token-shaped word.
pub fn scrub(text: &str) -> String {
    let mut out = text.to_string();
    for s in SECRETS.read().unwrap_or_else(|e| e.into_inner()).iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), MASK);
        }
    }
    mask_token_shaped(&out)
}

/// `text` cut to `max` characters (on a character boundary), one line, then [`scrub`]bed.
pub fn excerpt(text: &str, max: usize) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    let mut s = scrub(&one_line);
    if text.chars().count() > max {
        s.push_str("...");
    }
    s
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '/' | '=' | '$' | '~')
}

/// Replaces words made of token characters that look like credentials.
fn mask_token_shaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if looks_like_token(word) {
            out.push_str(MASK);
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if is_token_char(c) {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

fn looks_like_token(w: &str) -> bool {
    if w.starts_with("eyJ") && w.len() >= 16 {
        return true; // a JWT (base64url of `{"`)
    }
    if w.starts_with("$2") && w.len() >= 20 {
        return true; // bcrypt-like, as ChatApp's tokens look
    }
    // a long unbroken run of letters and digits, with both (paths and URLs have short segments)
    w.split(|c: char| !c.is_ascii_alphanumeric()).any(|run| {
        run.len() >= TOKEN_MIN_RUN
            && run.chars().any(|c| c.is_ascii_digit())
            && run.chars().any(|c| c.is_ascii_alphabetic())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_secrets_and_token_shapes_are_masked() {
        register("hunter2-password");
        let s = scrub("bad password hunter2-password for ops@example.com");
        assert_eq!(s, "bad password [redacted] for ops@example.com");
        let jwt = "eyJhbGciOiJub25lIn0.eyJleHAiOjE4OTM0NTYwMDB9.c2ln";
        assert!(!scrub(&format!("token {jwt} revoked")).contains("eyJ"));
        let bcrypt = "$2y$10$abcdefghijklmnopqrstuv";
        assert!(!scrub(&format!("{{\"refresh\":\"{bcrypt}\"}}")).contains("$2y$"));
        let hex = "def50200a1b2c3d4e5f60718293a4b5c6d7e8f90";
        assert_eq!(scrub(hex), MASK);
        // ordinary text survives: field paths, words, numbers, URLs
        let plain = "unexpected response at `_embedded.leads[3].responsible_user_id`: 504141 https://example.kommo.com/api/v4/leads";
        assert_eq!(scrub(plain), plain);
    }

    #[test]
    fn excerpts_are_short_single_lines_cut_on_characters() {
        let e = excerpt("€€€\n€€€", 4);
        assert_eq!(e, "€€€ ...");
        assert_eq!(excerpt("short", 10), "short");
    }
}
