//! Many accounts on one IP: `n` instances run at once, each with its own state db, against one
//! Kommo simulator (so every Kommo request of every instance lands in one log), all configured
//! with the same `[kommo.shared_limit]` file at `rps`. Figure: the most Kommo requests the
//! simulator received in any sliding second, summed over the instances.

use chatapp_kommo_sync::commands::demo::write_config;
use chatapp_kommo_sync::sim::{ChatAppSim, KommoSim};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// What the instances phase measured.
pub struct InstancesFigures {
    /// Instances run.
    pub instances: usize,
    /// Kommo requests of all of them.
    pub kommo_requests: usize,
    /// The most Kommo requests in any 1-s window.
    pub max_in_any_second: usize,
    /// Wall time of the phase.
    pub wall_s: f64,
}

/// Runs `n` first-run `once` processes at once under one shared limit of `rps`.
pub fn measure(
    bin: &Path,
    dir: &Path,
    n: usize,
    rps: u32,
    kommo: &KommoSim,
    chatapp: &ChatAppSim,
) -> InstancesFigures {
    kommo.clear_log();
    let limit_file = dir.join("kommo.limit");
    let t0 = Instant::now();
    let children: Vec<_> = (0..n)
        .map(|i| {
            let idir = dir.join(format!("instance-{i}"));
            let config = write_config(&idir, kommo, chatapp, "").expect("write config");
            let text = std::fs::read_to_string(&config).expect("config").replace(
                "[chatapp]",
                &format!(
                    "[kommo.shared_limit]\npath = \"{}\"\nrequests_per_second = {rps}\n\n[chatapp]",
                    limit_file.display()
                ),
            );
            std::fs::write(&config, text).expect("config");
            Command::new(bin)
                .arg("--config")
                .arg(&config)
                .arg("once")
                .env("CHATAPP_KOMMO_SYNC_INSTANCE", format!("instance-{i}"))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start once")
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().expect("wait for an instance");
        assert!(
            out.status.success(),
            "an instance failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    InstancesFigures {
        instances: n,
        kommo_requests: kommo.request_count(),
        max_in_any_second: kommo.max_requests_in_any_second(),
        wall_s: t0.elapsed().as_secs_f64(),
    }
}
