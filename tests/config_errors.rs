//! Issue 18 item 11, through the binary: every config problem is reported in one run (SPEC 6),
//! wrong types and unknown enum values included, each naming its key and line; exit code 2.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A config the binary accepts without going online (its secret files written next to it).
const GOOD: &str = r#"[daemon]
state_path = "state.redb"
log_level = "warn"

[kommo]
base_url = "https://example.kommo.com"
token_file = "kommo-token"

[chatapp]
base_url = "https://api.chatapp.online"
email = "ops@example.com"
password_file = "chatapp-password"
app_id = "app_1_1"
company_id = 1
license_ids = [1]

[sync]
crm_to_chat = ["contact"]
chat_to_crm = ["lead"]
mode = "normal"
"#;

/// Writes `text` as `config.toml` in `dir`, with the secret files it names (mode 0600).
fn write(dir: &Path, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    for (name, secret) in [
        ("kommo-token", "kommo-test-token\n"),
        ("chatapp-password", "secret-password\n"),
    ] {
        let f = dir.join(name);
        std::fs::write(&f, secret).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `check-config --config <path>`: exit code and stdout + stderr.
fn check_config(path: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_chatapp-kommo-sync"))
        .arg("check-config")
        .args(extra)
        .arg("--config")
        .arg(path)
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("CHATAPP_KOMMO_SYNC_CONFIG")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

/// The line of `text` that starts with `at` (1-based).
fn line_of(text: &str, at: &str) -> usize {
    1 + text.lines().position(|l| l.starts_with(at)).unwrap()
}

/// Checks that `out` has a problem line naming `key` with `words` at `line`.
fn assert_named(out: &str, key: &str, words: &str, line: Option<usize>) {
    let found = out.lines().find(|l| l.contains(&format!(": {key}: ")));
    let found = found.unwrap_or_else(|| panic!("{key} not named in:\n{out}"));
    assert!(found.contains(words), "{found}");
    if let Some(line) = line {
        assert!(found.contains(&format!("(line {line})")), "{found}");
    }
}

#[test]
fn two_wrong_types_an_unknown_value_and_an_unknown_key_are_reported_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = check_config(&write(dir.path(), GOOD), &[]);
    assert_eq!(code, Some(0), "the base config is valid: {out}");
    let bad = GOOD
        .replace("company_id = 1", "company_id = \"one\"")
        .replace(
            "token_file = \"kommo-token\"",
            "token_file = \"kommo-token\"\nrequests_per_second = \"fast\"\nbatch_sise = 5",
        )
        .replace("mode = \"normal\"", "mode = \"shdow\"");
    for extra in [&[][..], &["--no-secrets"][..]] {
        let (code, out) = check_config(&write(dir.path(), &bad), extra);
        assert_eq!(code, Some(2), "{extra:?}: {out}");
        for (key, words, at) in [
            (
                "chatapp.company_id",
                "expected an integer (a whole number >= 0), found a string",
                "company_id =",
            ),
            (
                "kommo.requests_per_second",
                "expected an integer from 0 to 4294967295, found a string",
                "requests_per_second =",
            ),
            (
                "sync.mode",
                "unknown value \"shdow\", expected normal or shadow",
                "mode =",
            ),
            (
                "kommo.batch_sise",
                "unknown field `batch_sise`",
                "batch_sise =",
            ),
        ] {
            assert_named(&out, key, words, Some(line_of(&bad, at)));
        }
        assert!(out.contains("4 problems in the config"), "{extra:?}: {out}");
        // the strings the file holds are not echoed (a secret may be pasted in the wrong key)
        assert!(!out.contains("one\"") && !out.contains("fast"), "{out}");
    }
}

/// A missing key and a semantic problem of a section that parsed come in the same run as a wrong
/// type; a secret file of a key that parsed is still checked.
#[test]
fn missing_keys_and_value_checks_come_with_the_type_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bad = GOOD
        .replace("email = \"ops@example.com\"\n", "")
        .replace("log_level = \"warn\"", "log_level = \"verbose\"")
        .replace("[sync]\n", "[sync]\nclock_skew = 5\n");
    let path = write(dir.path(), &bad);
    std::fs::remove_file(dir.path().join("chatapp-password")).unwrap();
    let (code, out) = check_config(&path, &[]);
    assert_eq!(code, Some(2), "{out}");
    assert_named(
        &out,
        "chatapp.email",
        "required, but missing from [chatapp]",
        Some(line_of(&bad, "[chatapp]")),
    );
    assert_named(
        &out,
        "sync.clock_skew",
        "expected a duration such as \"30s\", \"15m\" or \"1h 30m\", found an integer",
        Some(line_of(&bad, "clock_skew")),
    );
    assert_named(&out, "daemon.log_level", "not a log level", None);
    assert_named(&out, "chatapp.password_file", "cannot read", None);
    assert!(out.contains("4 problems in the config"), "{out}");
}
