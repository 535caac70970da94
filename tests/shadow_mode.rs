//! Issue 12, item 6: shadow mode against the simulators, through the real binary.
//!
//! Two identical sample worlds (see `demo::sample_world` and tests/e2e_rules.rs for the people):
//! one synced in shadow mode, one normally, with the same human changes on both sides. The shadow
//! one must reach neither simulator with a write, and its `status` must count exactly the writes
//! the normal one made; switching it to normal mode then runs a first run with the configured
//! bootstrap (README, "Moving from ChatApp's widget").

#![allow(clippy::unwrap_used)]

#[path = "common/e2e.rs"]
mod e2e;

use chatapp_kommo_sync::store::Store;
use e2e::{Env, chat};
use std::time::Duration;

const WA: &str = "grWhatsApp";

/// Writes that reached a world's simulators: (dialog writes, card writes).
fn sim_writes(env: &Env) -> (usize, usize) {
    let cards: usize = ["leads", "contacts"]
        .iter()
        .map(|k| env.w.kommo.written_ids(k).len())
        .sum();
    (env.w.chatapp.written_chats().len(), cards)
}

/// The "Shadow mode" section's day rows summed: (to chat, to Kommo, cycles).
fn status_totals(status: &str) -> (u64, u64, u64) {
    let section = status
        .split("\nShadow mode")
        .nth(1)
        .unwrap_or_else(|| panic!("no Shadow mode section in:\n{status}"));
    let (mut chat, mut kommo, mut cycles) = (0, 0, 0);
    for line in section.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // date, cycles, agreed, "of", pairs, would change, to chat, to Kommo
        if f.len() == 8 && f[0].len() == 10 && f[0].as_bytes()[4] == b'-' && f[3] == "of" {
            cycles += f[1].parse::<u64>().unwrap();
            chat += f[6].parse::<u64>().unwrap();
            kommo += f[7].parse::<u64>().unwrap();
        }
    }
    (chat, kommo, cycles)
}

fn bootstrapped(env: &Env) -> bool {
    Store::open_read_only(&env.dir.path().join("state.redb"))
        .unwrap()
        .load_snapshot()
        .unwrap()
        .bootstrapped
}

#[tokio::test(flavor = "multi_thread")]
async fn shadow_cycles_write_nothing_count_what_a_normal_run_writes_then_switch_to_a_first_run() {
    let shadow = Env::new("mode = \"shadow\"\n").await;
    let normal = Env::new("").await;
    let both = [&shadow, &normal];

    // first cycles: the shadow one is its own first run, the normal one bootstraps (adopt)
    for env in both {
        env.once(&[]).await;
    }
    assert!(
        !bootstrapped(&shadow),
        "a shadow cycle never marks the db bootstrapped"
    );

    // a person in Kommo: Ivan's contact goes to Boris (rule 1, and rule 4 to lead 2001)
    for env in both {
        env.w.clock.advance(10);
        env.w
            .kommo
            .set_responsible_as_human("contacts", 1001, 504142, 504141);
    }
    let r = shadow.once(&[]).await;
    assert!(
        r.stdout.contains("would write (shadow mode)"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("shadow mode: nothing was written"),
        "{}",
        r.stdout
    );
    normal.once(&[]).await;
    assert_eq!(
        normal.w.chatapp.responsible_of(1, WA, &chat(1)),
        Some(85502)
    );

    // a person in ChatApp: Maria's dialog goes to Vera (rule 3 to lead 2002)
    for env in both {
        env.w.clock.advance(10);
        env.w.chatapp.assign_as_human(1, WA, &chat(2), Some(85503));
    }
    for env in both {
        env.once(&[]).await;
    }
    // nothing new: a change is counted once, not again each cycle
    for env in both {
        env.w.clock.advance(10);
        env.once(&[]).await;
    }

    // the CLI override: the config says normal, `--shadow` keeps the cycle a shadow one
    shadow.edit_config(|t| t.replace("mode = \"shadow\"", "mode = \"normal\""));
    for env in both {
        env.w.clock.advance(10);
        env.w
            .kommo
            .set_responsible_as_human("contacts", 1004, 504143, 504141);
    }
    let r = shadow.once(&["--shadow"]).await;
    assert!(
        r.stdout.contains("would write (shadow mode)"),
        "{}",
        r.stdout
    );
    normal.once(&[]).await;

    // zero writes reached the shadow world's simulators; the normal world's got some
    assert_eq!(sim_writes(&shadow), (0, 0));
    assert_eq!(shadow.w.kommo.patch_count(), 0);
    assert_eq!(
        shadow.w.chatapp.responsible_of(1, WA, &chat(1)),
        Some(85501)
    );
    let (to_chat, to_kommo) = sim_writes(&normal);
    assert!(to_chat > 0 && to_kommo > 0, "{to_chat} {to_kommo}");

    // status counts exactly what the normal run wrote, per side
    let st = shadow.run(&["status"]).await;
    assert_eq!(st.code, 0, "{st:?}");
    assert_eq!(
        status_totals(&st.stdout),
        (to_chat as u64, to_kommo as u64, 5),
        "normal run wrote {to_chat} dialog(s), {to_kommo} card(s):\n{}",
        st.stdout
    );
    assert!(
        st.stdout.contains("recent would-be writes"),
        "{}",
        st.stdout
    );
    assert!(
        st.stdout
            .contains("the next normal cycle is a first run with bootstrap = \"adopt\""),
        "{}",
        st.stdout
    );
    assert!(!bootstrapped(&shadow));

    // switch to normal mode: a first run with bootstrap = adopt: a full read, nothing written,
    // the pairs that disagree reported
    let r = shadow.once(&[]).await;
    assert_eq!(sim_writes(&shadow), (0, 0), "{}", r.stdout);
    assert!(r.stdout.contains("(full)"), "{}", r.stdout);
    assert!(r.stdout.contains("0 written"), "{}", r.stdout);
    assert!(!r.stdout.contains(" 0 disagreements"), "{}", r.stdout);
    assert!(bootstrapped(&shadow));
    // from then on it syncs: Maria's contact goes to Anna -> dialog 2 follows (rule 1)
    shadow.w.clock.advance(10);
    shadow
        .w
        .kommo
        .set_responsible_as_human("contacts", 1002, 504141, 504142);
    let r = shadow.once(&[]).await;
    assert_eq!(
        shadow.w.chatapp.responsible_of(1, WA, &chat(2)),
        Some(85501),
        "{}",
        r.stdout
    );
    assert_eq!(shadow.w.chatapp.written_chats().len(), 1);
    // the shadow history stays readable in status
    let st = shadow.run(&["status"]).await;
    assert_eq!(status_totals(&st.stdout).0, to_chat as u64, "{}", st.stdout);
    assert!(!st.stdout.contains("the next normal cycle is a first run"));
}

#[tokio::test(flavor = "multi_thread")]
async fn switching_to_normal_with_bootstrap_crm_aligns_what_shadow_mode_saw() {
    let env = Env::new("mode = \"shadow\"\n").await;
    env.edit_config(|t| t.replace("bootstrap = \"adopt\"", "bootstrap = \"crm\""));
    env.once(&[]).await;
    env.w.clock.advance(10);
    env.w
        .kommo
        .set_responsible_as_human("contacts", 1001, 504142, 504141);
    env.once(&[]).await;
    assert_eq!(sim_writes(&env), (0, 0));
    assert_eq!(env.w.chatapp.responsible_of(1, WA, &chat(1)), Some(85501));

    env.edit_config(|t| t.replace("mode = \"shadow\"", "mode = \"normal\""));
    let r = env.once(&[]).await;
    // the first normal cycle is a first run with bootstrap = crm: dialog 1 takes its contact's
    // responsible, and lead 2001 follows the dialog (rule 4)
    assert_eq!(
        env.w.chatapp.responsible_of(1, WA, &chat(1)),
        Some(85502),
        "{}",
        r.stdout
    );
    assert_eq!(env.w.kommo.responsible_of("leads", 2001), Some(504142));
    assert!(bootstrapped(&env));
    // and it is a first run only once
    let r = env.once(&[]).await;
    assert!(r.stdout.contains("0 planned"), "{}", r.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_mode_is_checked_by_name() {
    let env = Env::new("mode = \"silent\"\n").await;
    let r = env.run(&["check-config"]).await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("sync.mode"), "{}", r.stderr);
    env.edit_config(|t| t.replace("mode = \"silent\"", "mode = \"shadow\""));
    let r = env.run(&["check-config"]).await;
    assert_eq!(r.code, 0, "{r:?}");
}

#[path = "common/proc.rs"]
mod proc;

/// `run --shadow`: the daemon's cycles are shadow ones whatever the config says; would-be writes are counted in `/metrics`, none reaches a simulator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_shadow_counts_would_be_writes_in_metrics() {
    proc::bounded(120, async {
        let (env, port) = proc::Env::listening().await;
        let mut d = proc::Daemon::spawn_run(&env.config, env.dir.path(), &[], None, &["--shadow"]);
        d.ready(Duration::from_secs(30)).await;
        d.signal("USR1");
        d.cycle_done(1, Duration::from_secs(30)).await;
        env.w.clock.advance(10);
        env.w
            .kommo
            .set_responsible_as_human("contacts", 1001, 504142, 504141);
        d.signal("USR1");
        let st = d.cycle_done(2, Duration::from_secs(30)).await;
        assert!(st.contains("shadow"), "{st}");
        let body = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for line in [
            "chatapp_kommo_sync_shadow_writes_total{side=\"chat\"} 1",
            "chatapp_kommo_sync_shadow_writes_total{side=\"kommo\"} 1",
        ] {
            assert!(body.contains(line), "{line}\n{body}");
        }
        assert!(
            d.stderr().contains("shadow mode, not written"),
            "{}",
            d.stderr()
        );
        assert_eq!(env.w.chatapp.written_chats().len(), 0);
        assert_eq!(env.w.kommo.patch_count(), 0);
        d.term(Duration::from_secs(20)).await;
    })
    .await;
}

/// A full count of the linked pairs and of those that agree, over every base the state db holds
/// (what shadow cycles computed each cycle before they kept the count up to date, issue 21):
/// the user map built from what the simulators hold now, as a cycle builds it.
fn full_count(env: &Env) -> (u64, u64) {
    use chatapp_kommo_sync::core::engine::Plan;
    use chatapp_kommo_sync::core::model::{Employee, EmployeeId, KommoUser, KommoUserId};
    use chatapp_kommo_sync::core::usermap::UserMap;
    let cfg = chatapp_kommo_sync::config::load(&env.config)
        .unwrap()
        .config;
    let users: Vec<KommoUser> = env
        .w
        .kommo
        .users()
        .into_iter()
        .map(|u| KommoUser {
            id: KommoUserId(u.id),
            name: u.name,
            email: u.email,
            active: u.active,
        })
        .collect();
    let employees: Vec<Employee> = env
        .w
        .chatapp
        .employees()
        .into_iter()
        .map(|e| Employee {
            id: EmployeeId(e.id),
            name: e.full_name,
            email: e.email,
        })
        .collect();
    let map = UserMap::build(
        &cfg.user_pairs(),
        cfg.users.match_by_email,
        &users,
        &employees,
    );
    let snap = Store::open_read_only(&env.dir.path().join("state.redb"))
        .unwrap()
        .load_snapshot()
        .unwrap();
    chatapp_kommo_sync::sync::shadow::agreement(&snap, &Plan::default(), &cfg.policy(), &map)
}

/// The newest day's "pairs agreed" as the store keeps them, (pairs, agreed), and what the kept
/// count was counted under (the next shadow cycle updates it when that is unchanged).
fn day_count(env: &Env) -> ((u64, u64), u64) {
    let s = Store::open_read_only(&env.dir.path().join("state.redb")).unwrap();
    let d = s.shadow_days(1).unwrap().remove(0);
    let tally = s
        .shadow_tally()
        .unwrap()
        .expect("a shadow cycle keeps its count");
    assert_eq!((tally.pairs, tally.agreed), (d.pairs, d.agreed));
    ((d.pairs, d.agreed), tally.under)
}

/// Issue 21, item 3: after every shadow cycle of a series with changes of every kind that moves
/// a pair (responsibles on both sides, links made and broken, dialogs opened and closed, new
/// dialogs and cards, deleted and restored cards, a lead's flag, the user map, a normal cycle in
/// between), the day's "pairs agreed" equal a full count over the bases the cycle committed
/// (written first, against the full count every shadow cycle made before issue 21).
#[tokio::test(flavor = "multi_thread")]
async fn shadow_agreement_equals_a_full_count_after_every_cycle() {
    use chatapp_kommo_sync::commands::demo::LEAD_FLAG_FIELD;
    use chatapp_kommo_sync::sim::{SimCard, SimChat, SimField};
    let env = Env::new("").await;
    let (k, c) = (&env.w.kommo, &env.w.chatapp);
    let users = [504141, 504142, 504143, 504144];
    let employees = [85501, 85502, 85503, 85509];
    let phone = |i: u64| format!("7998{i:07}");
    const CONTACTS: u64 = 24;
    const CHATS: u64 = 18;
    const LEADS: u64 = 30;
    for i in 0..CONTACTS {
        k.add_card(
            "contacts",
            SimCard::new(3000 + i, "c", users[(i % 4) as usize])
                .with_field(SimField::phones(&[&phone(i)])),
        );
    }
    for i in 0..LEADS {
        k.add_card(
            "leads",
            SimCard::new(6000 + i, "l", users[(i * 3 % 4) as usize])
                .with_field(SimField::checkbox(LEAD_FLAG_FIELD, i % 7 != 0))
                .with_contacts(&[3000 + i % CONTACTS]),
        );
    }
    for i in 0..CHATS {
        let emp = (i % 5 != 4).then(|| employees[(i % 4) as usize]);
        c.add_chat(SimChat::whatsapp(1, &phone(i), "c", emp));
    }
    let mut chats = CHATS; // chats 0..chats exist
    let mut extra_contacts = 0;
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut unders = std::collections::BTreeSet::new();
    for step in 0..24 {
        env.w.clock.advance(10);
        for _ in 0..3 {
            match rnd(11) {
                0 => k.set_responsible_as_human(
                    "contacts",
                    3000 + rnd(CONTACTS),
                    users[rnd(4) as usize],
                    504141,
                ),
                1 => {
                    let i = rnd(chats);
                    c.assign_as_human(
                        1,
                        "grWhatsApp",
                        &format!("{}@c.us", phone(i)),
                        Some(employees[rnd(4) as usize]),
                    );
                }
                2 => c.close_chat(1, "grWhatsApp", &format!("{}@c.us", phone(rnd(chats)))),
                3 => c.reopen_chat(1, "grWhatsApp", &format!("{}@c.us", phone(rnd(chats)))),
                4 if chats < CONTACTS => {
                    c.add_chat(SimChat::whatsapp(
                        1,
                        &phone(chats),
                        "c",
                        Some(employees[rnd(4) as usize]),
                    ));
                    chats += 1;
                }
                5 => k.set_field(
                    "contacts",
                    3000 + rnd(CONTACTS),
                    SimField::phones(&[&phone(rnd(CONTACTS))]),
                ),
                6 => {
                    let lead = 6000 + rnd(LEADS);
                    if rnd(2) == 0 {
                        k.link_contact("leads", lead, 3000 + rnd(CONTACTS));
                    } else {
                        k.unlink_contact("leads", lead, 3000 + lead % CONTACTS);
                    }
                }
                7 => {
                    let (kind, id) = if rnd(2) == 0 {
                        ("leads", 6000 + rnd(LEADS))
                    } else {
                        ("contacts", 3000 + rnd(CONTACTS))
                    };
                    if rnd(2) == 0 {
                        k.delete_card(kind, id);
                    } else {
                        k.restore_card(kind, id);
                    }
                }
                8 => k.set_field(
                    "leads",
                    6000 + rnd(LEADS),
                    SimField::checkbox(LEAD_FLAG_FIELD, rnd(2) == 0),
                ),
                9 => k.set_responsible_as_human(
                    "leads",
                    6000 + rnd(LEADS),
                    users[rnd(4) as usize],
                    504141,
                ),
                _ => {
                    k.add_card(
                        "contacts",
                        SimCard::new(4000 + extra_contacts, "new", users[rnd(4) as usize])
                            .with_field(SimField::phones(&[&phone(rnd(chats))])),
                    );
                    extra_contacts += 1;
                }
            }
        }
        if step == 6 {
            // the user map changes alone: Gleb gets his ChatApp account (same e-mail)
            c.add_employee(85504, "Gleb", "gleb@demo.example");
        }
        if step == 10 {
            // a normal cycle in between (a first run, bootstrap = adopt: nothing written)
            env.once(&[]).await;
            env.w.clock.advance(10);
            k.set_responsible_as_human("contacts", 3001, 504144, 504141);
        }
        let full = if step % 5 == 4 {
            &["--shadow", "--full"][..]
        } else {
            &["--shadow"][..]
        };
        let r = env.once(full).await;
        let (day, under) = day_count(&env);
        unders.insert(under);
        assert_eq!(
            day,
            full_count(&env),
            "step {step}: the day's (pairs, agreed) against a full count\n{}",
            r.stdout
        );
        seen.insert(day);
    }
    assert_eq!(sim_writes(&env), (0, 0));
    assert!(seen.len() > 3, "the counts moved: {seen:?}");
    // counted under one user map before Gleb's account and another after: every other shadow
    // cycle updated the count it found (none but the first, the one after Gleb's account and the
    // one after the normal cycle counted from every base)
    assert_eq!(unders.len(), 2, "{unders:?}");
    assert!(
        seen.iter().all(|(p, a)| *p > 20 && a < p && *a > 0),
        "pairs that agree and pairs that do not: {seen:?}"
    );
}
