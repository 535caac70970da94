//! Issue 6 / SPEC rule 11: `once` killed with SIGKILL at many points of a cycle with many writes,
//! then restarted: every change is applied and every target is written exactly once.

#![allow(clippy::unwrap_used)]

#[path = "common/e2e.rs"]
mod e2e;

use chatapp_kommo_sync::sim::{Fault, FaultRule, SimCard, SimChat, SimField};
use e2e::Env;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const WA: &str = "grWhatsApp";
const N: u64 = 24;

fn phone(i: u64) -> String {
    format!("7999{:07}", 2_000_000 + i)
}

/// The sample world plus `N` contacts (Anna), each with a dialog (Anna) and a checked lead (Anna).
async fn world() -> Env {
    let env = Env::new("").await;
    for i in 0..N {
        let p = phone(i);
        env.w.kommo.add_card(
            "contacts",
            SimCard::new(30_000 + i, "c", 504141).with_field(SimField::phones(&[&p])),
        );
        env.w.kommo.add_card(
            "leads",
            SimCard::new(40_000 + i, "l", 504141)
                .with_field(SimField::checkbox(
                    chatapp_kommo_sync::commands::demo::LEAD_FLAG_FIELD,
                    true,
                ))
                .with_contacts(&[30_000 + i]),
        );
        env.w
            .chatapp
            .add_chat(SimChat::whatsapp(1, &p, "c", Some(85501)));
    }
    env.edit_config(|t| t.replace("batch_size = 50", "batch_size = 5"));
    env.once(&[]).await; // bootstrap (adopt)
    env.w.clock.advance(10);
    // a manager hands all N contacts to Vera: N dialog writes and N lead writes (cascade)
    for i in 0..N {
        env.w
            .kommo
            .set_responsible_as_human("contacts", 30_000 + i, 504143, 504141);
    }
    env
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn counts<T: Ord>(items: impl IntoIterator<Item = T>) -> BTreeMap<T, usize> {
    let mut m = BTreeMap::new();
    for i in items {
        *m.entry(i).or_default() += 1;
    }
    m
}

/// Runs `once`, kills it with SIGKILL as soon as `landed` holds, restarts, and checks the result.
async fn crash_and_recover(
    label: &str,
    fault_on: &str,
    skip: u32,
    fault: Fault,
    landed: impl Fn(&Env) -> bool,
) {
    let env = world().await;
    let sim_faults = |rule: FaultRule| {
        if fault_on == "PATCH" {
            env.w.kommo.push_fault(rule)
        } else {
            env.w.chatapp.push_fault(rule)
        }
    };
    if skip > 0 {
        sim_faults(
            FaultRule::new(Fault::Latency(Duration::ZERO))
                .method(fault_on)
                .times(skip),
        );
    }
    sim_faults(FaultRule::new(fault).method(fault_on));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_chatapp-kommo-sync"))
        .arg("--config")
        .arg(&env.config)
        .arg("once")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(label, || landed(&env)).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    env.w.kommo.clear_faults();
    env.w.chatapp.clear_faults();
    let r = env.once(&[]).await;
    // every change applied
    for i in 0..N {
        assert_eq!(
            env.w
                .chatapp
                .responsible_of(1, WA, &format!("{}@c.us", phone(i))),
            Some(85503),
            "{label}: dialog {i}: {}",
            r.stdout
        );
        assert_eq!(
            env.w.kommo.responsible_of("leads", 40_000 + i),
            Some(504143),
            "{label}: lead {i}"
        );
    }
    // every target written exactly once
    let leads = counts(env.w.kommo.written_ids("leads"));
    let chats = counts(
        env.w
            .chatapp
            .written_chats()
            .into_iter()
            .map(|(_, _, c, _)| c),
    );
    assert_eq!(leads.len() as u64, N, "{label}: {leads:?}");
    assert!(
        leads.values().all(|n| *n == 1),
        "{label}: a lead written twice: {leads:?}"
    );
    assert_eq!(chats.len() as u64, N, "{label}: {chats:?}");
    assert!(
        chats.values().all(|n| *n == 1),
        "{label}: a dialog written twice: {chats:?}"
    );
    // and the state is settled: an idle cycle writes nothing
    env.w.clock.advance(30);
    let idle = env.once(&[]).await;
    assert!(
        idle.stdout.contains("0 planned"),
        "{label}: {}",
        idle.stdout
    );
    eprintln!(
        "{label}: recovered ({})",
        r.stdout.lines().last().unwrap_or("")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_after_a_kommo_batch_landed_unanswered() {
    for batch in [1u32, 3, 5] {
        crash_and_recover(
            &format!("PATCH #{batch} landed"),
            "PATCH",
            batch - 1,
            Fault::LatencyAfter(Duration::from_secs(20)),
            move |env| {
                env.w.kommo.written_ids("leads").len() >= ((batch as usize) * 5).min(N as usize)
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_after_a_dialog_write_landed_unanswered() {
    for k in [1u32, 12, N as u32] {
        crash_and_recover(
            &format!("PUT #{k} landed"),
            "PUT",
            k - 1,
            Fault::LatencyAfter(Duration::from_secs(20)),
            move |env| env.w.chatapp.written_chats().len() >= k as usize,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_before_a_write_landed() {
    // the 7th dialog write hangs before the simulator applies it; the kill comes while it hangs
    crash_and_recover(
        "PUT #7 in flight",
        "PUT",
        6,
        Fault::Latency(Duration::from_secs(20)),
        |env| {
            env.w.chatapp.written_chats().len() >= 6
                && env
                    .w
                    .chatapp
                    .requests()
                    .iter()
                    .filter(|r| r.method == "PUT")
                    .count()
                    >= 6
        },
    )
    .await;
}
