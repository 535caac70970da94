//! Issue 13.4 and 13.5 with a real full filesystem: the state db on a small tmpfs that the test
//! fills. The daemon never loses a rotated Kommo token, never goes silent, and either recovers or
//! exits non-zero. Mounting needs root; without it the tests say so and pass without running.

#![allow(clippy::unwrap_used)]

#[path = "common/proc.rs"]
mod proc;

use chatapp_kommo_sync::commands::demo::{sample_world_with, write_config};
use chatapp_kommo_sync::sim::{KommoSimConfig, OAuthSim};
use proc::{Daemon, bounded};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A tmpfs mounted for one test; unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(parent: &Path, size: &str) -> Option<Tmpfs> {
        let dir = parent.join("tmpfs");
        std::fs::create_dir_all(&dir).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("disk_full: skipped: cannot mount a tmpfs here (needs root)");
            return None;
        }
        Some(Tmpfs { dir })
    }

    /// Fills the filesystem (a filler file up to ENOSPC).
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.dir.join("filler")).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }

    fn free(&self) {
        let _ = std::fs::remove_file(self.dir.join("filler"));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn oauth() -> KommoSimConfig {
    KommoSimConfig {
        long_lived_token: None,
        oauth: Some(OAuthSim {
            client_id: "client-1".into(),
            client_secret: "client-secret-XYZ".into(),
            redirect_uri: "https://example.com/oauth".into(),
            refresh_token: "seed-refresh-token".into(),
            access_ttl_secs: 86_400,
        }),
        ..Default::default()
    }
}

/// A config for the world in `dir` with the state db in `state_dir`; OAuth when `oauth`.
fn config(
    dir: &Path,
    state_dir: &Path,
    w: &chatapp_kommo_sync::commands::demo::DemoWorld,
    oauth: bool,
) -> PathBuf {
    let cfg = write_config(dir, &w.kommo, &w.chatapp, "").unwrap();
    let mut t = std::fs::read_to_string(&cfg).unwrap();
    t = t
        .replace(
            &format!("state_path = \"{}\"", dir.join("state.redb").display()),
            &format!(
                "state_path = \"{}\"",
                state_dir.join("state.redb").display()
            ),
        )
        .replace(
            "poll_schedule = \"*/30 * * * * *\"",
            &format!("poll_schedule = \"{}\"", proc::NEVER),
        )
        .replace(
            "full_schedule = \"0 0 3 * * *\"",
            &format!("full_schedule = \"{}\"", proc::NEVER),
        )
        .replace("log_level = \"warn\"", "log_level = \"info\"");
    if oauth {
        for (name, secret) in [
            ("kommo-client-secret", "client-secret-XYZ\n"),
            ("kommo-refresh-token", "seed-refresh-token\n"),
        ] {
            std::fs::write(dir.join(name), secret).unwrap();
            std::fs::set_permissions(
                dir.join(name),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .unwrap();
        }
        t = t.replace("token_file = \"kommo-token\"\n", "").replace(
            "[chatapp]\n",
            "[kommo.oauth]\nclient_id = \"client-1\"\nclient_secret_file = \"kommo-client-secret\"\nredirect_uri = \"https://example.com/oauth\"\nrefresh_token_file = \"kommo-refresh-token\"\n\n[chatapp]\n",
        );
    }
    std::fs::write(&cfg, t).unwrap();
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_never_silent_and_the_daemon_recovers_or_exits_non_zero() {
    bounded(120, async {
        let dir = tempfile::tempdir().unwrap();
        let Some(fs) = Tmpfs::mount(dir.path(), "4m") else {
            return;
        };
        let w = sample_world_with(KommoSimConfig::default()).await.unwrap();
        let cfg = config(dir.path(), &fs.dir, &w, false);
        let mut d = Daemon::spawn(&cfg, dir.path(), &[]);
        d.ready(Duration::from_secs(30)).await;
        d.signal("USR1");
        d.cycle_done(1, Duration::from_secs(30)).await;

        fs.fill();
        w.clock.advance(10);
        w.kommo
            .set_responsible_as_human("contacts", 1001, 504142, 504141);
        d.signal("USR1");
        let logged = proc::eventually(Duration::from_secs(30), || {
            d.stderr().contains("state db error") || d.try_exit().is_some()
        })
        .await;
        assert!(logged, "never silent: {}", d.stderr());
        let err = d.stderr();
        assert!(err.contains("class=\"store\"") || err.contains("class=store"), "{err}");
        // either it exits non-zero (the db cannot be reopened) or it keeps running and recovers
        // once the disk has room again
        fs.free();
        match d.wait_exit(Duration::from_secs(3)).await {
            Some(st) => assert!(!st.success(), "a failing db exits non-zero: {st:?}"),
            None => {
                w.clock.advance(10);
                d.signal("USR1");
                let recovered = proc::eventually(Duration::from_secs(30), || {
                    d.notices().iter().filter_map(|n| n.get("STATUS")).any(|s| {
                        s.starts_with("last cycle #") && s.contains(" ok ")
                    } && w.chatapp.responsible_of(1, "grWhatsApp", "79990000001@c.us") == Some(85502))
                })
                .await;
                assert!(recovered, "{}", d.stderr());
                d.term(Duration::from_secs(10)).await;
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_never_loses_the_rotated_kommo_token() {
    bounded(150, async {
        let dir = tempfile::tempdir().unwrap();
        let Some(fs) = Tmpfs::mount(dir.path(), "4m") else {
            return;
        };
        let w = sample_world_with(oauth()).await.unwrap();
        let cfg = config(dir.path(), &fs.dir, &w, true);
        let mut d = Daemon::spawn(&cfg, dir.path(), &[]);
        d.ready(Duration::from_secs(30)).await;
        d.signal("USR1");
        d.cycle_done(1, Duration::from_secs(30)).await;
        assert_eq!(w.kommo.refresh_count(), 1, "the seed gave the first pair");

        // the disk is full and the access token expires: Kommo rotates the pair during the cycle
        fs.fill();
        w.kommo.expire_access_token();
        d.signal("USR1");
        // Which write meets the full disk first depends on redb's free pages: the pair's store
        // (kept in memory, reported), or the cycle's commit after the pair was stored (the db is
        // reopened, or the daemon exits non-zero). Each is a way of never losing the token.
        let settled = proc::eventually(Duration::from_secs(30), || {
            let err = d.stderr();
            d.try_exit().is_some()
                || err.contains("the state db was reopened")
                || d.notices()
                    .iter()
                    .filter_map(|n| n.get("STATUS"))
                    .any(|s| s.starts_with("ATTENTION: the rotated Kommo token is not stored"))
        })
        .await;
        assert!(settled, "{}", d.stderr());
        assert_eq!(w.kommo.refresh_count(), 2);
        let kept_running = d.try_exit().is_none();
        let in_memory = d
            .stderr()
            .contains("cannot store the rotated Kommo OAuth pair");
        eprintln!(
            "disk full during a token rotation: the pair was {}, and the daemon {}",
            if in_memory {
                "kept in memory"
            } else {
                "stored before the disk filled"
            },
            if kept_running {
                "kept running"
            } else {
                "exited non-zero"
            }
        );
        if !kept_running {
            let st = d.wait_exit(Duration::from_secs(1)).await.unwrap();
            assert!(!st.success(), "{st:?}");
        }

        // room again: the pair in use ends up stored; no 401 lock-out, no wasted refresh
        fs.free();
        w.clock.advance(10);
        if kept_running {
            let oks = |d: &Daemon| {
                d.notices()
                    .iter()
                    .filter_map(|n| n.get("STATUS"))
                    .filter(|s| s.contains("last cycle #") && s.contains(" ok "))
                    .count()
            };
            let before = oks(&d);
            d.signal("USR1");
            let done = proc::eventually(Duration::from_secs(30), || {
                let ok = oks(&d) > before;
                ok && (!in_memory
                    || d.stderr()
                        .contains("the rotated Kommo OAuth pair is stored now"))
            })
            .await;
            assert!(done, "{}", d.stderr());
            d.term(Duration::from_secs(10)).await;
        } else {
            // systemd restarts it: the stored pair works
            let mut d2 = Daemon::spawn(&cfg, dir.path(), &[]);
            d2.ready(Duration::from_secs(30)).await;
            d2.signal("USR1");
            let s = d2.cycle_done(1, Duration::from_secs(30)).await;
            assert!(s.contains(" ok "), "{s}\n{}", d2.stderr());
            d2.term(Duration::from_secs(10)).await;
        }
        let s =
            chatapp_kommo_sync::store::Store::open_read_only(&fs.dir.join("state.redb")).unwrap();
        let pair = chatapp_kommo_sync::tokens::TokenStore::kommo_pair(&s)
            .unwrap()
            .unwrap();
        assert_eq!(Some(pair.refresh_token), w.kommo.current_refresh_token());
        assert_eq!(w.kommo.refresh_count(), 2, "no refresh was wasted");
    })
    .await;
}
