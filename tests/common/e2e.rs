//! Shared set-up of the end-to-end tests: the simulators with the demo's sample world, a config
//! for them in a temp dir, and the real binary run as a child process.
#![allow(dead_code)]

use chatapp_kommo_sync::commands::demo::{DemoWorld, sample_world, write_config};
use std::path::PathBuf;
use std::process::Command;

/// A sample world, its config, and a temp dir that lives as long as it.
pub struct Env {
    pub w: DemoWorld,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

/// What a run of the binary printed.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Env {
    /// The sample world with `extra_sync` lines added to `[sync]`.
    pub async fn new(extra_sync: &str) -> Env {
        Env::from_world(sample_world().await.expect("simulators start"), extra_sync)
    }

    /// A given world, with `extra_sync` lines added to `[sync]`.
    pub fn from_world(w: DemoWorld, extra_sync: &str) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = write_config(dir.path(), &w.kommo, &w.chatapp, extra_sync).expect("config");
        Env { w, dir, config }
    }

    /// Edits the config text.
    pub fn edit_config(&self, f: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        std::fs::write(&self.config, f(text)).unwrap();
    }

    /// Runs the binary with `args` after `--config <path>`, bounded to 60 s.
    pub async fn run(&self, args: &[&str]) -> Run {
        let config = self.config.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            tokio::task::spawn_blocking(move || {
                Command::new(env!("CARGO_BIN_EXE_chatapp-kommo-sync"))
                    .arg("--config")
                    .arg(&config)
                    .args(&args)
                    .env_remove("RUST_LOG")
                    .output()
                    .expect("binary runs")
            }),
        )
        .await
        .expect("the binary finished within 60 s")
        .unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `once` with extra args; asserts exit 0 and returns the output.
    pub async fn once(&self, args: &[&str]) -> Run {
        let mut a = vec!["once"];
        a.extend_from_slice(args);
        let r = self.run(&a).await;
        assert_eq!(r.code, 0, "once {args:?} failed: {r:?}");
        r
    }

    /// Requests each simulator received so far: (kommo, chatapp).
    pub fn requests(&self) -> (usize, usize) {
        (self.w.kommo.request_count(), self.w.chatapp.request_count())
    }

    /// Writes each simulator received so far: (Kommo PATCH requests, ChatApp responsible writes).
    pub fn writes(&self) -> (u64, usize) {
        (
            self.w.kommo.patch_count(),
            self.w.chatapp.written_chats().len(),
        )
    }
}

/// The dialog chat id of sample contact `n` (1..=4).
pub fn chat(n: u64) -> String {
    format!("7999000000{n}@c.us")
}
