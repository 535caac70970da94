//! Issue 13.6: a damaged, empty or foreign state db gives a clear error naming the file, from
//! `once` and `status` alike: never an abort, a panic or a fresh bootstrap, and the file is left
//! as it is. Also: the db is created 0600 whatever the umask (13.8).

#![allow(clippy::unwrap_used)]

#[path = "common/e2e.rs"]
mod e2e;

use e2e::{Env, Run};
use std::path::PathBuf;

fn db_path(env: &Env) -> PathBuf {
    env.dir.path().join("state.redb")
}

/// A run that refused the db: non-zero, not a crash, the file named, no panic text.
fn assert_refused(r: &Run, path: &std::path::Path, what: &str) {
    assert!(
        r.code != 0 && r.code != 101 && r.code != 134 && r.code != -1,
        "{what}: exit {} {r:?}",
        r.code
    );
    assert!(
        r.stderr.contains(&path.display().to_string()),
        "{what}: the file is not named: {}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("panicked at") && !r.stderr.contains("internal error (a bug)"),
        "{what}: {}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn damaged_dbs_are_refused_with_a_message_and_never_bootstrapped() {
    let env = Env::new("").await;
    env.once(&[]).await;
    let path = db_path(&env);
    let good = std::fs::read(&path).unwrap();
    assert!(good.len() > 8192, "{}", good.len());

    let len = good.len();
    let mut cases: Vec<(String, Vec<u8>, bool)> = vec![
        ("empty".into(), vec![], true),
        ("truncated to 100 bytes".into(), good[..100].to_vec(), true),
        ("truncated to half".into(), good[..len / 2].to_vec(), true),
        (
            "header zeroed".into(),
            {
                let mut b = good.clone();
                b[..4096].fill(0);
                b
            },
            true,
        ),
        (
            "not a redb file".into(),
            b"[daemon]\nstate_path = 1\n".to_vec(),
            true,
        ),
    ];
    // byte flips and zeroed blocks spread over the file: each is either caught or harmless
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..12 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let at = (seed as usize) % len;
        let mut b = good.clone();
        if i % 2 == 0 {
            b[at] ^= 0x5a;
            cases.push((format!("byte {at} flipped"), b, false));
        } else {
            let n = 4096.min(len - at);
            b[at..at + n].fill(0);
            cases.push((format!("4 KiB zeroed at {at}"), b, false));
        }
    }

    let mut refused = 0;
    for (what, bytes, must_refuse) in cases {
        std::fs::write(&path, &bytes).unwrap();
        let before = env.requests();
        let once = env.run(&["once"]).await;
        let status = env.run(&["status"]).await;
        if once.code == 0 {
            assert!(!must_refuse, "{what}: accepted: {once:?}");
            assert_eq!(
                status.code, 0,
                "{what}: once accepted it, status refused: {status:?}"
            );
            continue;
        }
        refused += 1;
        assert_refused(&once, &path, &what);
        assert_refused(&status, &path, &what);
        assert_eq!(
            env.requests(),
            before,
            "{what}: no cycle ran on a refused db"
        );
        assert!(
            std::fs::read(&path).unwrap() == bytes,
            "{what}: the file is left as it is"
        );
        assert!(
            once.stderr.contains("restore it from a backup") || once.stderr.contains("schema"),
            "{what}: the recovery step is named: {}",
            once.stderr
        );
    }
    eprintln!("damaged db variants refused: {refused}");
    assert!(refused >= 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_db_of_a_newer_schema_is_refused_before_anything_is_written() {
    let env = Env::new("").await;
    env.once(&[]).await;
    let path = db_path(&env);
    {
        let s = chatapp_kommo_sync::store::Store::open(&path).unwrap();
        s.put_meta(chatapp_kommo_sync::store::META_SCHEMA, &999u32)
            .unwrap();
        s.close().unwrap();
    }
    let bytes = std::fs::read(&path).unwrap();
    let r = env.run(&["once"]).await;
    assert_refused(&r, &path, "newer schema");
    assert!(r.stderr.contains("schema version 999"), "{}", r.stderr);
    assert!(std::fs::read(&path).unwrap() == bytes, "nothing written");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_db_is_created_0600_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new("").await;
    let nested = env.dir.path().join("new-dir").join("state.redb");
    env.edit_config(|t| {
        t.replace(
            &format!("state_path = \"{}\"", db_path(&env).display()),
            &format!("state_path = \"{}\"", nested.display()),
        )
    });
    // the binary inherits the test's umask; make it permissive for this run
    let old = unsafe { libc::umask(0o022) };
    let r = env.run(&["once"]).await;
    unsafe { libc::umask(old) };
    assert_eq!(r.code, 0, "{r:?}");
    let mode = std::fs::metadata(&nested).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
    let dir_mode = std::fs::metadata(nested.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700, "{dir_mode:o}");
}
