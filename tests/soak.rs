//! Soak (bounded): seeded random human changes on both sides plus faults (429, 5xx, slow and
//! truncated bodies, an HTML 403, ChatApp token expiry, SIGKILL of `once` in the middle of its
//! writes and a restart), the real binary run as `once` each round against the simulators. After
//! every successful cycle each pair's three values equal what an independent oracle of the rules
//! (SPEC section 3, README "How decisions are made") expects; at the end, fault-free idle cycles
//! write nothing and every target was written exactly as often as the oracle needed it changed.
//!
//! World (built here, not the demo's sample world): `K` pairs; pair `i` = contact `41000+i`
//! (linked to its dialog by a `<license>:<type>:<chatId>` Messenger value, a bare chat id, or a
//! phone), dialog `7999500<iiii>@c.us`, lead `42000+i` linked to the contact with its sync flag
//! checked. Kommo users 504141..504143 <-> employees 85501..85503 (matched by e-mail). Config:
//! `crm_to_chat = ["contact"]`, `chat_to_crm = ["lead"]`, `conflict = "newest"`,
//! `bootstrap = "adopt"` (the world starts agreeing, so adopt leaves nothing to fix).
//!
//! Knobs: `SOAK_SEED` (decimal or 0x-hex; default: time-based, always printed), `SOAK_ROUNDS`
//! (default 30), `SOAK_BUDGET_SECS` (wall-clock budget of the rounds phase, default 75: once spent
//! no new round starts, the catch-up and idle checks still run).
//!
//! Oracle (per pair, applied when a cycle succeeds, to the human changes made since the last
//! successful cycle; "changed" = the last value differs from the value at that cycle, as the
//! daemon's base does; human changes are >= 10 s apart on one shared clock, so no two change
//! times are within `clock_skew` and every comparison is strict):
//! - contact changed, and the dialog did not or changed earlier (rules 1 + 5 newest): the dialog
//!   takes the contact's user; the lead is offered the contact's user dated by the contact's
//!   change (rule 4). Rule 7 (the dialog was changed to that same person) writes nothing to the
//!   dialog, but the cascade is the same.
//! - otherwise, dialog changed (rule 3, or rule 5 with the dialog later): the lead is offered the
//!   dialog's employee dated by the dialog's change; the contact keeps its value.
//! - the lead takes the offer, unless a person changed the lead after the offer's change time
//!   (README "Decisions this project made": a target a person changed after the source keeps its
//!   value). Without an offer the lead keeps its value.
//!
//! A failed or killed cycle changes nothing in the oracle. It may have landed some writes, so the
//! pairs with pending changes are *frozen* (no more human changes) until a cycle succeeds: then
//! "the pending human changes are resolved by the next successful cycle" is unambiguous. A human
//! undoing a write that landed in a failed cycle is deliberately not generated (the daemon's base
//! then holds the landed value, which a value-based oracle of the last good state cannot see).
//!
//! Each round: 2..=6 changes on 1..=2 "hot" pairs (so conflicts, rule 7 and leads changed between
//! sources happen), each after the shared clock moved on 10..24 s; then 0..=3 faults (or, in one
//! or two rounds, a SIGKILL right after a PUT or PATCH landed, via `Fault::LatencyAfter`); then
//! `once` (`--full` every 5th round). The end prints what was covered.
//!
//! Found with it (see `rule7_equal_change_still_cascades_the_later_contact_to_the_lead`, e.g.
//! `SOAK_SEED=8`): when the contact and the dialog were both changed to the same person (rule 7)
//! and a person changed the lead between the dialog's change and the contact's, the daemon keeps
//! the lead's value, although the contact's change (the source of rule 1 + 4) is later; with the
//! dialog changed to anyone else the same lead follows the contact.

#![allow(clippy::unwrap_used)]

#[path = "common/e2e.rs"]
mod e2e;

use chatapp_kommo_sync::commands::demo::{DemoWorld, LEAD_FLAG_FIELD, MESSENGER_FIELD};
use chatapp_kommo_sync::sim::{
    ChatAppSim, ChatAppSimConfig, Fault, FaultRule, KommoSim, KommoSimConfig, SimCard, SimChat,
    SimClock, SimField, XorShift,
};
use e2e::Env;
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WA: &str = "grWhatsApp";
/// Human change times are at least this far apart (more than `clock_skew`, 5 s).
const MIN_GAP: i64 = 10;
/// Kommo PATCH batch size in the soak's config.
const BATCH: usize = 4;
/// The longest a single `once` may take (faults included) before the test gives up.
const ONCE_TIMEOUT: Duration = Duration::from_secs(40);

fn contact_id(i: usize) -> u64 {
    41_000 + i as u64
}
fn lead_id(i: usize) -> u64 {
    42_000 + i as u64
}
fn phone(i: usize) -> String {
    format!("7999500{i:04}")
}
fn chat_id(i: usize) -> String {
    format!("{}@c.us", phone(i))
}
/// Person `u` (1..=3) as a Kommo user.
fn kommo_user(u: u8) -> u64 {
    504_140 + u64::from(u)
}
/// Person `u` (1..=3) as a ChatApp employee.
fn employee(u: u8) -> u64 {
    85_500 + u64::from(u)
}
fn person_of_kommo(id: Option<u64>) -> Option<u8> {
    id.filter(|v| (504_141..=504_143).contains(v))
        .map(|v| (v - 504_140) as u8)
}
fn person_of_employee(id: Option<u64>) -> Option<u8> {
    id.filter(|v| (85_501..=85_503).contains(v))
        .map(|v| (v - 85_500) as u8)
}

// ---------------------------------------------------------------------------------------------
// The oracle

/// One pair's values, as persons 1..=3 (identity user map).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Vals {
    c: u8,
    d: u8,
    l: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Contact,
    Dialog,
    Lead,
}

impl Side {
    fn idx(self) -> usize {
        match self {
            Side::Contact => 0,
            Side::Dialog => 1,
            Side::Lead => 2,
        }
    }
    fn tag(self) -> char {
        match self {
            Side::Contact => 'C',
            Side::Dialog => 'D',
            Side::Lead => 'L',
        }
    }
}

impl Vals {
    fn get(&self, s: Side) -> u8 {
        match s {
            Side::Contact => self.c,
            Side::Dialog => self.d,
            Side::Lead => self.l,
        }
    }
    fn set(&mut self, s: Side, v: u8) {
        match s {
            Side::Contact => self.c = v,
            Side::Dialog => self.d = v,
            Side::Lead => self.l = v,
        }
    }
}

/// The model of one pair.
#[derive(Clone, Debug)]
struct PairModel {
    /// Values at the end of the last successful cycle (what the daemon's base holds).
    base: Vals,
    /// Values after the humans' changes since then (what the simulators hold, as long as no write
    /// of a failed cycle landed).
    cur: Vals,
    /// Time of the last human change of each side since the last successful cycle.
    t: [Option<i64>; 3],
    /// Human changes since the last successful cycle, for diagnostics: (side, person, time).
    log: Vec<(Side, u8, i64)>,
}

impl PairModel {
    fn new(v: Vals) -> Self {
        PairModel {
            base: v,
            cur: v,
            t: [None; 3],
            log: vec![],
        }
    }
    fn pending(&self) -> bool {
        self.t.iter().any(Option::is_some)
    }
    fn change(&mut self, side: Side, v: u8, at: i64) {
        self.cur.set(side, v);
        self.t[side.idx()] = Some(at);
        self.log.push((side, v, at));
    }
}

/// What the rules give for one pair (see the module docs). Independent of the daemon's engine.
fn oracle(base: Vals, cur: Vals, t: [Option<i64>; 3]) -> Vals {
    let time = |s: Side| t[s.idx()].expect("a changed side has a change time");
    let changed_c = cur.c != base.c;
    let changed_d = cur.d != base.d;
    let changed_l = cur.l != base.l;
    let mut out = cur;
    let offer = if changed_c && (!changed_d || time(Side::Contact) > time(Side::Dialog)) {
        // Rule 1 (with rule 5 `newest`: the contact's change is the later one), rule 7 when the
        // dialog already holds that person; rule 4: the lead follows, dated by the contact.
        out.d = cur.c;
        Some((cur.c, time(Side::Contact)))
    } else if changed_d {
        // Rule 3 (or rule 5 with the dialog's change the later one).
        Some((cur.d, time(Side::Dialog)))
    } else {
        None
    };
    if let Some((v, tv)) = offer {
        let kept = changed_l && time(Side::Lead) > tv;
        if !kept {
            out.l = v;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The world and the binary

struct Soak {
    env: Env,
    pairs: Vec<PairModel>,
    run_seq: usize,
}

impl Soak {
    fn kommo(&self) -> &KommoSim {
        &self.env.w.kommo
    }
    fn chatapp(&self) -> &ChatAppSim {
        &self.env.w.chatapp
    }
    fn clock(&self) -> &SimClock {
        &self.env.w.clock
    }

    /// The simulators' values of pair `i` (None where a value is not a person 1..=3).
    fn actual(&self, i: usize) -> (Option<u8>, Option<u8>, Option<u8>) {
        (
            person_of_kommo(self.kommo().responsible_of("contacts", contact_id(i))),
            person_of_employee(self.chatapp().responsible_of(1, WA, &chat_id(i))),
            person_of_kommo(self.kommo().responsible_of("leads", lead_id(i))),
        )
    }

    /// Writes seen by the simulators so far: (lead ids, chat ids), duplicates kept.
    fn writes(&self) -> (Vec<u64>, Vec<String>) {
        (
            self.kommo().written_ids("leads"),
            self.chatapp()
                .written_chats()
                .into_iter()
                .map(|(_, _, c, _)| c)
                .collect(),
        )
    }

    /// Runs `once <args>`; with `kill`, SIGKILLs it as soon as `kill()` holds. Bounded by
    /// [`ONCE_TIMEOUT`].
    async fn once(&mut self, args: &[&str], kill: Option<&dyn Fn() -> bool>) -> Outcome {
        self.run_seq += 1;
        let out_path = self
            .env
            .dir
            .path()
            .join(format!("once-{}.out", self.run_seq));
        let err_path = self
            .env
            .dir
            .path()
            .join(format!("once-{}.err", self.run_seq));
        let t0 = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_chatapp-kommo-sync"))
            .arg("--config")
            .arg(&self.env.config)
            .arg("once")
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .spawn()
            .expect("the binary starts");
        let mut killed = false;
        let code = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status.code();
            }
            if kill.is_some_and(|f| f()) {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                killed = true;
                break None;
            }
            if t0.elapsed() > ONCE_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "once {args:?} did not finish within {ONCE_TIMEOUT:?}; stderr: {}",
                    std::fs::read_to_string(&err_path).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        Outcome {
            code,
            killed,
            stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
            secs: t0.elapsed().as_secs_f64(),
        }
    }
}

struct Outcome {
    code: Option<i32>,
    killed: bool,
    stdout: String,
    stderr: String,
    secs: f64,
}

impl Outcome {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }
    fn summary(&self) -> String {
        self.stdout
            .lines()
            .find(|l| l.starts_with("cycle "))
            .unwrap_or("")
            .to_string()
    }
}

/// `K` agreeing pairs with random initial persons; the config; the bootstrap (adopt) cycle.
async fn build(k: usize, rng: &mut XorShift) -> Soak {
    let clock = SimClock::new();
    let kommo = KommoSim::start(KommoSimConfig {
        clock: Some(clock.clone()),
        ..Default::default()
    })
    .await
    .expect("Kommo simulator");
    let chatapp = ChatAppSim::start(ChatAppSimConfig {
        clock: Some(clock.clone()),
        ..Default::default()
    })
    .await
    .expect("ChatApp simulator");
    for (u, name) in [(1u8, "anna"), (2, "boris"), (3, "vera")] {
        kommo.add_user(kommo_user(u), name, &format!("{name}@soak.example"), true);
        // ChatApp e-mails differ in case: matching is case-insensitive
        chatapp.add_employee(
            employee(u),
            name,
            &format!("{}@soak.example", name.to_uppercase()),
        );
    }
    let mut pairs = vec![];
    for i in 0..k {
        let u = 1 + (rng.next_u64() % 3) as u8;
        let link = match i % 3 {
            0 => SimField::text(
                MESSENGER_FIELD,
                Some("MESSENGER"),
                &[&format!("1:{WA}:{}", chat_id(i))],
            ),
            1 => SimField::text(MESSENGER_FIELD, Some("MESSENGER"), &[&chat_id(i)]),
            _ => SimField::phones(&[&format!("+7 (999) 500-{:02}-{:02}", i / 100, i % 100)]),
        };
        kommo.add_card(
            "contacts",
            SimCard::new(contact_id(i), format!("client {i}"), kommo_user(u)).with_field(link),
        );
        kommo.add_card(
            "leads",
            SimCard::new(lead_id(i), format!("deal {i}"), kommo_user(u))
                .with_field(SimField::checkbox(LEAD_FLAG_FIELD, true))
                .with_contacts(&[contact_id(i)]),
        );
        chatapp.add_chat(SimChat::whatsapp(
            1,
            &phone(i),
            &format!("client {i}"),
            Some(employee(u)),
        ));
        pairs.push(PairModel::new(Vals { c: u, d: u, l: u }));
    }
    let env = Env::from_world(
        DemoWorld {
            kommo,
            chatapp,
            clock,
        },
        "",
    );
    env.edit_config(|t| t.replace("batch_size = 50", &format!("batch_size = {BATCH}")));
    let mut soak = Soak {
        env,
        pairs,
        run_seq: 0,
    };
    let r = soak.once(&[], None).await;
    assert!(r.ok(), "bootstrap failed: {}\n{}", r.stdout, r.stderr);
    assert_eq!(
        soak.writes(),
        (vec![], vec![]),
        "adopt writes nothing: {}",
        r.stdout
    );
    soak
}

// ---------------------------------------------------------------------------------------------
// Faults

#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Kommo,
    ChatApp,
}

struct Injected {
    label: String,
    /// May legitimately fail the cycle (a truncated body, an HTML 403).
    fatal: bool,
}

const KOMMO_GETS: [&str; 5] = [
    "/api/v4/account",
    "/api/v4/users",
    "/api/v4/events",
    "/api/v4/contacts",
    "/api/v4/leads",
];
const CHATAPP_GETS: [&str; 3] = [
    "/v1/companies/1/employees",
    "/v1/chats",
    "/v1/licenses/1/messengers/grWhatsApp/chats/",
];

fn pick<'a, T>(rng: &mut XorShift, items: &'a [T]) -> &'a T {
    &items[(rng.next_u64() % items.len() as u64) as usize]
}

/// 0..=3 random faults for one cycle; pushed to the simulators (or applied: token expiry).
fn inject_faults(s: &Soak, rng: &mut XorShift) -> Vec<Injected> {
    let n = match rng.next_u64() % 20 {
        0..=4 => 0,
        5..=11 => 1,
        12..=16 => 2,
        _ => 3,
    };
    let mut out = vec![];
    for _ in 0..n {
        let api = if rng.next_u64().is_multiple_of(2) {
            Api::Kommo
        } else {
            Api::ChatApp
        };
        // a request to hit: a GET of a path, or a write
        let (method, path): (&str, Option<&str>) = match (api, rng.next_u64() % 4) {
            (Api::Kommo, 0) => ("PATCH", None),
            (Api::Kommo, _) => ("GET", Some(*pick(rng, &KOMMO_GETS))),
            (Api::ChatApp, 0) => ("PUT", None),
            (Api::ChatApp, _) => ("GET", Some(*pick(rng, &CHATAPP_GETS))),
        };
        let roll = rng.next_u64() % 100;
        let (fault, times, fatal) = match roll {
            0..=29 => (Fault::TooMany { retry_after: 1 }, 1, false),
            30..=59 | 97..=99 => (
                Fault::Status(*pick(rng, &[500u16, 502, 503, 504])),
                1 + (rng.next_u64() % 2) as u32,
                false,
            ),
            60..=71 => {
                let revoke = rng.next_u64().is_multiple_of(4);
                s.chatapp().expire_access_tokens();
                if revoke {
                    s.chatapp().revoke_refresh_tokens();
                }
                out.push(Injected {
                    label: if revoke {
                        "chatapp tokens expired+refresh revoked".into()
                    } else {
                        "chatapp token expired".into()
                    },
                    fatal: false,
                });
                continue;
            }
            72..=81 => (
                Fault::Latency(Duration::from_millis(100 + rng.next_u64() % 600)),
                1,
                false,
            ),
            82..=89 => {
                // a truncated body on a GET
                let path = match api {
                    Api::Kommo => *pick(rng, &KOMMO_GETS),
                    Api::ChatApp => *pick(rng, &CHATAPP_GETS),
                };
                push(
                    s,
                    api,
                    FaultRule::new(Fault::Truncated).method("GET").path(path),
                );
                out.push(Injected {
                    label: format!("{} truncated GET {path}", api_tag(api)),
                    fatal: true,
                });
                continue;
            }
            90..=93 => {
                // a write that lands but whose answer is cut
                let m = if api == Api::Kommo { "PATCH" } else { "PUT" };
                push(s, api, FaultRule::new(Fault::Truncated).method(m));
                out.push(Injected {
                    label: format!("{} truncated {m}", api_tag(api)),
                    fatal: true,
                });
                continue;
            }
            _ => {
                let path = *pick(rng, &KOMMO_GETS);
                push(
                    s,
                    Api::Kommo,
                    FaultRule::new(Fault::HtmlForbidden)
                        .method("GET")
                        .path(path),
                );
                out.push(Injected {
                    label: format!("kommo HTML 403 GET {path}"),
                    fatal: true,
                });
                continue;
            }
        };
        let mut rule = FaultRule::new(fault.clone()).method(method).times(times);
        if let Some(p) = path {
            rule = rule.path(p);
        }
        push(s, api, rule);
        out.push(Injected {
            label: format!(
                "{} {fault:?}x{times} {method} {}",
                api_tag(api),
                path.unwrap_or("")
            ),
            fatal,
        });
    }
    out
}

fn api_tag(api: Api) -> &'static str {
    match api {
        Api::Kommo => "kommo",
        Api::ChatApp => "chatapp",
    }
}

fn push(s: &Soak, api: Api, rule: FaultRule) {
    match api {
        Api::Kommo => s.kommo().push_fault(rule),
        Api::ChatApp => s.chatapp().push_fault(rule),
    }
}

// ---------------------------------------------------------------------------------------------
// The soak

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

/// Every pair equals the oracle (called right after a successful cycle resolved the models).
fn check_pairs(s: &Soak, when: &str, seed: u64, out: &Outcome, before: &[PairModel]) {
    let mut bad = vec![];
    for (i, p) in s.pairs.iter().enumerate() {
        let want = (Some(p.cur.c), Some(p.cur.d), Some(p.cur.l));
        let got = s.actual(i);
        if got != want {
            let b = &before[i];
            let lines: Vec<&str> = out
                .stdout
                .lines()
                .filter(|l| {
                    l.contains(&contact_id(i).to_string())
                        || l.contains(&lead_id(i).to_string())
                        || l.contains(&chat_id(i))
                })
                .collect();
            bad.push(format!(
                "pair {i} (contact {}, dialog {}, lead {}): base {:?}, human changes since (side, person, time) {:?}, \
                 human values {:?}, change times C/D/L {:?}\n    expected (C, D, L) {:?}, actual {:?}\n    daemon: {}",
                contact_id(i),
                chat_id(i),
                lead_id(i),
                b.base,
                b.log.iter().map(|(s, v, t)| (s.tag(), *v, *t)).collect::<Vec<_>>(),
                b.cur,
                b.t,
                want,
                got,
                lines.join("\n            ")
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "SOAK_SEED={seed}: {when}: the state differs from the oracle (persons: 1 = Kommo 504141 / employee 85501, 2, 3):\n  {}\nstdout:\n{}\nstderr:\n{}",
        bad.join("\n  "),
        out.stdout,
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_random_changes_and_faults_converge_to_the_oracle() {
    let t_start = Instant::now();
    let seed = env_u64("SOAK_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    let rounds = env_u64("SOAK_ROUNDS").unwrap_or(30) as usize;
    let budget = Duration::from_secs(env_u64("SOAK_BUDGET_SECS").unwrap_or(75));
    const K: usize = 12;
    eprintln!("soak: SOAK_SEED={seed} SOAK_ROUNDS={rounds} budget {budget:?}, {K} pairs");
    let mut rng = XorShift::new(seed);
    let mut s = build(K, &mut rng).await;

    // one or two rounds kill `once` in the middle of its writes
    let mut kill_rounds = BTreeSet::new();
    if rounds >= 4 {
        kill_rounds.insert(rounds / 4 + (rng.next_u64() as usize) % (rounds / 4).max(1));
    }
    if rounds >= 8 {
        kill_rounds.insert(rounds / 2 + (rng.next_u64() as usize) % (rounds / 4).max(1));
    }

    let mut frozen: BTreeSet<usize> = BTreeSet::new();
    let mut tally = Tally {
        needed_d: vec![0; K],
        needed_l: vec![0; K],
        ..Tally::default()
    };
    let (mut ok_cycles, mut failed_cycles, mut kills, mut human_changes, mut faults_n) =
        (0, 0, 0, 0, 0);
    let mut rounds_run = 0;

    for round in 1..=rounds {
        if t_start.elapsed() > budget {
            eprintln!("soak: wall-clock budget spent after {} rounds", round - 1);
            break;
        }
        rounds_run = round;
        let kill_round = kill_rounds.contains(&round);

        // people make changes (only on pairs that no failed cycle may have half-written)
        let free: Vec<usize> = (0..K).filter(|i| !frozen.contains(i)).collect();
        let mut changes = vec![];
        if !free.is_empty() {
            // changes concentrate on 1..=2 "hot" pairs, so that one pair often sees changes of
            // several sides in one round (conflicts, rule 7, a target changed between sources)
            let hot: Vec<usize> = (0..1 + rng.next_u64() % 2)
                .map(|_| *pick(&mut rng, &free))
                .collect();
            let n = 2 + (rng.next_u64() % 5) as usize;
            for _ in 0..n {
                let i = *pick(&mut rng, &hot);
                let side = *pick(&mut rng, &[Side::Contact, Side::Dialog, Side::Lead]);
                let old = s.pairs[i].cur.get(side);
                let v = 1 + ((old as u64 + rng.next_u64() % 2) % 3) as u8; // != old
                apply_change(&mut s, i, side, v, &mut rng);
                changes.push(format!("{}{i}={v}", side.tag()));
                human_changes += 1;
            }
        }

        // a kill round needs writes to kill in the middle of: what the oracle says is to write
        let mut kill_plan: Option<(&str, u32)> = None;
        if kill_round {
            let (mut dw, mut lw) = predicted_writes(&s);
            if dw == 0 && !free.is_empty() {
                // a contact change that its dialog must follow
                let i = *pick(&mut rng, &free);
                let p = &s.pairs[i];
                let v = (1..=3u8)
                    .find(|v| *v != p.cur.c && *v != p.cur.d)
                    .expect("three persons");
                apply_change(&mut s, i, Side::Contact, v, &mut rng);
                changes.push(format!("C{i}={v}"));
                human_changes += 1;
                (dw, lw) = predicted_writes(&s);
            }
            if lw > 0 && (dw == 0 || rng.next_u64().is_multiple_of(2)) {
                let batches = lw.div_ceil(BATCH) as u32;
                kill_plan = Some(("PATCH", 1 + (rng.next_u64() % u64::from(batches)) as u32));
            } else if dw > 0 {
                kill_plan = Some(("PUT", 1 + (rng.next_u64() % dw as u64) as u32));
            }
        }

        // faults for this round's cycle
        let faults = if kill_plan.is_some() {
            vec![]
        } else {
            inject_faults(&s, &mut rng)
        };
        faults_n += faults.len();
        let may_fail = faults.iter().any(|f| f.fatal);
        if let Some((method, k)) = kill_plan {
            let rule_skip = FaultRule::new(Fault::Latency(Duration::ZERO))
                .method(method)
                .times(k - 1);
            let rule_hang =
                FaultRule::new(Fault::LatencyAfter(Duration::from_secs(20))).method(method);
            if method == "PATCH" {
                if k > 1 {
                    s.kommo().push_fault(rule_skip);
                }
                s.kommo().push_fault(rule_hang);
            } else {
                if k > 1 {
                    s.chatapp().push_fault(rule_skip);
                }
                s.chatapp().push_fault(rule_hang);
            }
        }

        // the cycle
        s.clock().advance(MIN_GAP);
        let full = round % 5 == 0;
        let args: &[&str] = if full { &["--full"] } else { &[] };
        let (w0_l, w0_d) = s.writes();
        let patches0 = s.kommo().patch_count();
        let before = s.pairs.clone();
        let out = match kill_plan {
            Some((method, k)) => {
                let kommo = s.kommo().clone();
                let chatapp = s.chatapp().clone();
                let n_chats = w0_d.len();
                let landed = move || {
                    if method == "PATCH" {
                        kommo.patch_count() >= patches0 + u64::from(k)
                    } else {
                        chatapp.written_chats().len() >= n_chats + k as usize
                    }
                };
                s.once(args, Some(&landed)).await
            }
            None => s.once(args, None).await,
        };
        s.kommo().clear_faults();
        s.chatapp().clear_faults();
        let (w1_l, w1_d) = s.writes();
        let status = if out.killed {
            kills += 1;
            format!(
                "KILLED at {} #{}",
                kill_plan.unwrap().0,
                kill_plan.unwrap().1
            )
        } else if out.ok() {
            "ok".to_string()
        } else {
            format!("exit {:?}", out.code)
        };
        eprintln!(
            "r{round:02} {} changes [{}] faults [{}] -> {status} in {:.1}s; +{} lead +{} dialog writes; {}",
            if full { "full" } else { "inc " },
            changes.join(" "),
            faults
                .iter()
                .map(|f| f.label.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            out.secs,
            w1_l.len() - w0_l.len(),
            w1_d.len() - w0_d.len(),
            out.summary()
        );

        if out.ok() {
            ok_cycles += 1;
            resolve_all(&mut s, &mut tally);
            frozen.clear();
            check_pairs(&s, &format!("round {round}"), seed, &out, &before);
        } else {
            assert!(
                out.killed || may_fail,
                "SOAK_SEED={seed}: round {round}: the cycle failed although every fault was recoverable \
                 (429 with retry_after 1, 5xx once or twice, a slow answer, token expiry): {status}\nstdout:\n{}\nstderr:\n{}",
                out.stdout,
                out.stderr
            );
            failed_cycles += 1;
            frozen.extend((0..K).filter(|i| s.pairs[*i].pending()));
        }
    }

    // catch up, fault-free
    s.clock().advance(MIN_GAP);
    let before = s.pairs.clone();
    let out = s.once(&[], None).await;
    assert!(
        out.ok(),
        "SOAK_SEED={seed}: the fault-free catch-up cycle failed\nstdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    eprintln!("catch-up -> ok in {:.1}s; {}", out.secs, out.summary());
    resolve_all(&mut s, &mut tally);
    check_pairs(&s, "after the catch-up cycle", seed, &out, &before);

    // idle: three fault-free cycles (one full, one past the read overlaps) write nothing
    let writes = s.writes();
    let before = s.pairs.clone();
    for (i, (advance, args)) in [(30, &[][..]), (30, &["--full"][..]), (300, &[][..])]
        .into_iter()
        .enumerate()
    {
        s.clock().advance(advance);
        let out = s.once(args, None).await;
        assert!(
            out.ok() && out.stdout.contains(" 0 planned, 0 written"),
            "SOAK_SEED={seed}: idle cycle {i} ({args:?}) planned or failed:\nstdout:\n{}\nstderr:\n{}",
            out.stdout,
            out.stderr
        );
        check_pairs(&s, &format!("idle cycle {i}"), seed, &out, &before);
    }
    assert_eq!(
        s.writes(),
        writes,
        "SOAK_SEED={seed}: idle cycles wrote something"
    );
    let status = s.env.run(&["status"]).await;
    assert!(
        status.stdout.contains("parked pairs: 0"),
        "SOAK_SEED={seed}: {}",
        status.stdout
    );

    // writes: contacts never (not in chat_to_crm); each lead and dialog exactly as often as the
    // oracle needed it changed (no ping-pong, no write made twice), and at most 2x in any case
    assert!(
        s.kommo().written_ids("contacts").is_empty(),
        "SOAK_SEED={seed}: a contact was written: {:?}",
        s.kommo().written_ids("contacts")
    );
    let count = |items: Vec<String>| {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for i in items {
            *m.entry(i).or_default() += 1;
        }
        m
    };
    let (leads, chats) = s.writes();
    let leads = count(leads.into_iter().map(|l| l.to_string()).collect());
    let chats = count(chats);
    let mut over = vec![];
    let mut not_exact = vec![];
    for i in 0..K {
        for (what, got, need) in [
            (
                format!("lead {}", lead_id(i)),
                leads.get(&lead_id(i).to_string()).copied().unwrap_or(0),
                tally.needed_l[i],
            ),
            (
                format!("dialog {}", chat_id(i)),
                chats.get(&chat_id(i)).copied().unwrap_or(0),
                tally.needed_d[i],
            ),
        ] {
            if got > 2 * need {
                over.push(format!(
                    "{what}: {got} writes, oracle changed it {need} times"
                ));
            }
            if got != need {
                not_exact.push(format!(
                    "{what}: {got} writes, oracle changed it {need} times"
                ));
            }
        }
    }
    assert!(
        over.is_empty(),
        "SOAK_SEED={seed}: too many writes (ping-pong?): {over:#?}"
    );
    assert!(
        not_exact.is_empty(),
        "SOAK_SEED={seed}: a target was written other than once per change (rule 11: no write is made twice): {not_exact:#?}"
    );
    let total_w: usize = leads.values().sum::<usize>() + chats.values().sum::<usize>();
    eprintln!(
        "soak: SOAK_SEED={seed}: {rounds_run} rounds, {human_changes} human changes, {faults_n} faults, \
         {kills} kills, {ok_cycles} ok / {failed_cycles} failed cycles (+1 catch-up, 3 idle), \
         {total_w} writes = oracle's {}; conflicts won by contact/dialog {:?}, rule 7 {}, \
         leads changed by a person with a source kept/overridden {:?}; {:.1}s",
        tally.needed_d.iter().sum::<usize>() + tally.needed_l.iter().sum::<usize>(),
        tally.conflicts,
        tally.rule7,
        tally.lead_changed,
        t_start.elapsed().as_secs_f64()
    );
    s.kommo().shutdown().await;
    s.chatapp().shutdown().await;
}

/// A person changes one side of pair `i` (the shared clock first moves on by >= [`MIN_GAP`]).
fn apply_change(s: &mut Soak, i: usize, side: Side, v: u8, rng: &mut XorShift) {
    s.clock().advance(MIN_GAP + (rng.next_u64() % 15) as i64);
    let at = s.clock().now();
    match side {
        Side::Contact => {
            s.kommo()
                .set_responsible_as_human("contacts", contact_id(i), kommo_user(v), 504_141)
        }
        Side::Lead => {
            s.kommo()
                .set_responsible_as_human("leads", lead_id(i), kommo_user(v), 504_142)
        }
        Side::Dialog => s
            .chatapp()
            .assign_as_human(1, WA, &chat_id(i), Some(employee(v))),
    }
    s.pairs[i].change(side, v, at);
}

/// The writes the oracle expects the next cycle to make, against the simulators' current values:
/// (dialog writes, lead writes).
fn predicted_writes(s: &Soak) -> (usize, usize) {
    let (mut dw, mut lw) = (0, 0);
    for (i, p) in s.pairs.iter().enumerate() {
        if !p.pending() {
            continue;
        }
        let want = oracle(p.base, p.cur, p.t);
        let (_, d, l) = s.actual(i);
        dw += usize::from(d != Some(want.d));
        lw += usize::from(l != Some(want.l));
    }
    (dw, lw)
}

/// A cycle succeeded: every pair's pending changes are resolved by the oracle.
fn resolve_all(s: &mut Soak, tally: &mut Tally) {
    for (i, p) in s.pairs.iter_mut().enumerate() {
        if !p.pending() {
            continue;
        }
        let out = oracle(p.base, p.cur, p.t);
        tally.needed_d[i] += usize::from(out.d != p.cur.d);
        tally.needed_l[i] += usize::from(out.l != p.cur.l);
        tally.count(p, out);
        *p = PairModel::new(out);
    }
}

/// What the oracle needed written, and which rule situations the soak reached.
#[derive(Default)]
struct Tally {
    needed_d: Vec<usize>,
    needed_l: Vec<usize>,
    /// contact and dialog both changed to different persons: (contact won, dialog won)
    conflicts: (usize, usize),
    /// contact and dialog both changed to the same person (rule 7)
    rule7: usize,
    /// a lead a person changed: (kept its value, took a later source's)
    lead_changed: (usize, usize),
}

impl Tally {
    fn count(&mut self, p: &PairModel, out: Vals) {
        let (cc, cd, cl) = (
            p.cur.c != p.base.c,
            p.cur.d != p.base.d,
            p.cur.l != p.base.l,
        );
        if cc && cd && p.cur.c == p.cur.d {
            self.rule7 += 1;
        } else if cc && cd && out.d == p.cur.c {
            self.conflicts.0 += 1;
        } else if cc && cd {
            self.conflicts.1 += 1;
        }
        if cl && (cc || cd) {
            if out.l == p.cur.l {
                self.lead_changed.0 += 1;
            } else {
                self.lead_changed.1 += 1;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The oracle itself, on the README's examples (so a wrong oracle fails here, not in the soak)

#[test]
fn oracle_follows_the_documented_rules() {
    let v = |c, d, l| Vals { c, d, l };
    let base = v(1, 1, 1);
    // rule 1 + 4: only the contact changed
    assert_eq!(oracle(base, v(2, 1, 1), [Some(10), None, None]), v(2, 2, 2));
    // rule 3: only the dialog changed; the contact keeps its value
    assert_eq!(oracle(base, v(1, 3, 1), [None, Some(10), None]), v(1, 3, 3));
    // rule 5 newest: the later change wins
    assert_eq!(
        oracle(base, v(2, 3, 1), [Some(10), Some(40), None]),
        v(2, 3, 3)
    );
    assert_eq!(
        oracle(base, v(2, 3, 1), [Some(40), Some(10), None]),
        v(2, 2, 2)
    );
    // rule 7: both to the same person
    assert_eq!(
        oracle(base, v(2, 2, 1), [Some(10), Some(20), None]),
        v(2, 2, 2)
    );
    // a lead a person changed after the source keeps its value...
    assert_eq!(
        oracle(base, v(2, 1, 3), [Some(10), None, Some(20)]),
        v(2, 2, 3)
    );
    assert_eq!(
        oracle(base, v(1, 2, 3), [None, Some(10), Some(20)]),
        v(1, 2, 3)
    );
    // ... and takes a later source's value
    assert_eq!(
        oracle(base, v(2, 1, 3), [Some(20), None, Some(10)]),
        v(2, 2, 2)
    );
    assert_eq!(
        oracle(base, v(1, 2, 3), [None, Some(20), Some(10)]),
        v(1, 2, 2)
    );
    // the later of the two sources decides, whoever won the dialog
    assert_eq!(
        oracle(base, v(2, 3, 1), [Some(10), Some(30), Some(20)]),
        v(2, 3, 3)
    );
    assert_eq!(
        oracle(base, v(2, 3, 3), [Some(30), Some(10), Some(20)]),
        v(2, 2, 2)
    );
    // A -> B -> A is no change
    assert_eq!(oracle(base, v(1, 1, 1), [Some(10), None, None]), base);
}

// ---------------------------------------------------------------------------------------------
// Fixed scenarios on one pair, through the binary, checked against the same oracle

/// One pair, everyone person 1; applies `changes` (side, person) >= 10 s apart, runs one `once`,
/// and returns (expected by the oracle, actual, the daemon's stdout).
async fn one_pair(changes: &[(Side, u8)]) -> (Vals, (Option<u8>, Option<u8>, Option<u8>), String) {
    let mut rng = XorShift::new(7);
    let mut s = build(1, &mut rng).await;
    for (i, p) in s.pairs.iter_mut().enumerate() {
        // build() picked a random person: start every side at person 1
        *p = PairModel::new(Vals { c: 1, d: 1, l: 1 });
        s.env
            .w
            .kommo
            .set_responsible_silently("contacts", contact_id(i), kommo_user(1));
        s.env
            .w
            .kommo
            .set_responsible_silently("leads", lead_id(i), kommo_user(1));
        s.env
            .w
            .chatapp
            .set_responsible_silently(1, WA, &chat_id(i), Some(employee(1)));
    }
    let r = s.once(&["--full"], None).await; // the silent edits become the base
    assert!(r.ok() && r.stdout.contains(" 0 planned"), "{}", r.stdout);
    for &(side, v) in changes {
        apply_change(&mut s, 0, side, v, &mut rng);
    }
    s.clock().advance(MIN_GAP);
    let p = &s.pairs[0];
    let want = oracle(p.base, p.cur, p.t);
    let r = s.once(&[], None).await;
    assert!(r.ok(), "{}\n{}", r.stdout, r.stderr);
    let got = s.actual(0);
    s.kommo().shutdown().await;
    s.chatapp().shutdown().await;
    (want, got, r.stdout)
}

/// Rule 7 must not change which change the lead is weighed against: the contact and the dialog
/// were both changed to Boris (dialog first, contact last); between the two, a person gave the
/// lead to Vera. The contact's change is the latest source change, later than the lead's, so the
/// lead follows Boris, exactly as it does when the dialog was changed to anyone else (second
/// case, which the daemon gets right).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule7_equal_change_still_cascades_the_later_contact_to_the_lead() {
    use Side::*;
    // control: the dialog changed to someone else (Vera), then lead, then contact (Boris)
    let (want, got, out) = one_pair(&[(Dialog, 3), (Lead, 3), (Contact, 2)]).await;
    assert_eq!(want, Vals { c: 2, d: 2, l: 2 });
    assert_eq!(got, (Some(2), Some(2), Some(2)), "control case: {out}");
    // rule 7 with the dialog's change the later one: the lead follows the dialog (daemon: right)
    let (want, got, out) = one_pair(&[(Contact, 2), (Lead, 3), (Dialog, 2)]).await;
    assert_eq!(want, Vals { c: 2, d: 2, l: 2 });
    assert_eq!(
        got,
        (Some(2), Some(2), Some(2)),
        "rule 7, dialog later: {out}"
    );
    // the first case with the dialog changed to the contact's new person (rule 7): the daemon
    // keeps the lead's Vera, because its rule 7 branch goes the rule 3 way and dates the offer
    // to the lead by the dialog's (earlier) change instead of the contact's
    // (src/engine.rs, `decide_dialog`: `mapped == dialog.responsible` => `crm_wins = false`)
    let (want, got, out) = one_pair(&[(Dialog, 2), (Lead, 3), (Contact, 2)]).await;
    assert_eq!(want, Vals { c: 2, d: 2, l: 2 });
    assert_eq!(
        got,
        (Some(2), Some(2), Some(2)),
        "rule 7 case: the lead (changed before the contact) must follow the contact: {out}"
    );
}
