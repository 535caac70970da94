//! `demo`: the whole sync against the built-in simulators with a sample world. Needs no accounts
//! and no network beyond loopback. Prints what it corrected and why.

use crate::config;
use crate::core::model::{EmployeeId, KommoUserId};
use crate::core::text::Readable;
use crate::service::wiring::LiveSyncer;
use crate::sim::{
    ChatAppSim, ChatAppSimConfig, KommoSim, KommoSimConfig, SimCard, SimChat, SimClock, SimField,
};
use crate::store::Store;
use crate::sync::describe::{
    describe_conflict, describe_disagreement, describe_parked, describe_write,
};
use crate::sync::{CycleOptions, CycleReport, WriteResult};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Kommo field id of the contacts' Messenger field in the sample world.
pub const MESSENGER_FIELD: u64 = 700_001;
/// Kommo field id of the leads' sync flag in the sample world.
pub const LEAD_FLAG_FIELD: u64 = 184_994;

/// A running pair of simulators.
pub struct DemoWorld {
    /// Kommo.
    pub kommo: KommoSim,
    /// ChatApp.
    pub chatapp: ChatAppSim,
    /// Their shared clock.
    pub clock: SimClock,
}

/// Writes a config (and its secret files) for the simulators into `dir`; returns its path.
pub fn write_config(
    dir: &Path,
    kommo: &KommoSim,
    chatapp: &ChatAppSim,
    extra_sync: &str,
) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    for (name, secret) in [
        ("kommo-token", "kommo-test-token\n"),
        ("chatapp-password", "secret-password\n"),
    ] {
        std::fs::write(dir.join(name), secret)?;
        std::fs::set_permissions(
            dir.join(name),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
    }
    let text = format!(
        r#"[daemon]
state_path = "{state}"
poll_schedule = "*/30 * * * * *"
full_schedule = "0 0 3 * * *"
timezone = "UTC"
log_level = "warn"

[kommo]
base_url = "{kommo}"
token_file = "kommo-token"
requests_per_second = 7
batch_size = 50

[chatapp]
base_url = "{chatapp}"
email = "ops@example.com"
password_file = "chatapp-password"
app_id = "app_1_1"
company_id = 1
license_ids = [1]
requests_per_second = 20

[sync]
crm_to_chat = ["contact"]
chat_to_crm = ["lead"]
conflict = "newest"
bootstrap = "adopt"
max_writes_per_cycle = 500
{extra_sync}
[sync.flag_fields]
lead = {LEAD_FLAG_FIELD}

[links]
messenger_field = "MESSENGER"
match_phone = true

[users]
match_by_email = true
"#,
        state = dir.join("state.redb").display(),
        kommo = kommo.base_url(),
        chatapp = chatapp.base_url(),
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn messenger(value: &str) -> SimField {
    SimField::text(MESSENGER_FIELD, Some("MESSENGER"), &[value])
}

/// Starts both simulators and fills them with the sample world.
pub async fn sample_world() -> std::io::Result<DemoWorld> {
    sample_world_with(KommoSimConfig::default()).await
}

/// [`sample_world`] with a Kommo simulator configured by `kommo_cfg` (its clock is replaced by the
/// shared one).
// Long on purpose: the sample world, record by record.
pub async fn sample_world_with(kommo_cfg: KommoSimConfig) -> std::io::Result<DemoWorld> {
    let clock = SimClock::new();
    let kommo = KommoSim::start(KommoSimConfig {
        clock: Some(clock.clone()),
        ..kommo_cfg
    })
    .await?;
    let chatapp = ChatAppSim::start(ChatAppSimConfig {
        clock: Some(clock.clone()),
        ..Default::default()
    })
    .await?;
    for (id, name, email) in [
        (504141, "Anna", "anna@demo.example"),
        (504142, "Boris", "boris@demo.example"),
        (504143, "Vera", "vera@demo.example"),
        (504144, "Gleb", "gleb@demo.example"),
    ] {
        kommo.add_user(id, name, email, true);
    }
    for (id, name, email) in [
        (85501, "Anna", "anna@demo.example"),
        (85502, "Boris", "boris@demo.example"),
        (85503, "Vera", "VERA@demo.example"),
        (85509, "Dmitry (night shift)", "dmitry@demo.example"),
    ] {
        chatapp.add_employee(id, name, email);
    }
    // The account's field definitions (`check-config --online` checks the config against them).
    kommo.define_field(
        "contacts",
        MESSENGER_FIELD,
        "Messenger",
        Some("MESSENGER"),
        "text",
    );
    kommo.define_field("contacts", 3, "Phone", Some("PHONE"), "multitext");
    kommo.define_field(
        "leads",
        LEAD_FLAG_FIELD,
        "Synchronization to responsible",
        None,
        "checkbox",
    );
    let flag = |on| SimField::checkbox(LEAD_FLAG_FIELD, on);
    kommo.add_card(
        "contacts",
        SimCard::new(1001, "Ivan", 504141).with_field(messenger("1:grWhatsApp:79990000001@c.us")),
    );
    kommo.add_card(
        "contacts",
        SimCard::new(1002, "Maria", 504142).with_field(SimField::phones(&["+7 (999) 000-00-02"])),
    );
    kommo.add_card(
        "contacts",
        SimCard::new(1003, "Oleg", 504143).with_field(SimField::phones(&["+7 999 000 00 03"])),
    );
    kommo.add_card(
        "contacts",
        SimCard::new(1004, "Pavel", 504141).with_field(messenger("79990000004@c.us")),
    );
    kommo.add_card(
        "leads",
        SimCard::new(2001, "Ivan: 3 sofas", 504141)
            .with_field(flag(true))
            .with_contacts(&[1001]),
    );
    kommo.add_card(
        "leads",
        SimCard::new(2002, "Maria: kitchen", 504141)
            .with_field(flag(true))
            .with_contacts(&[1002]),
    );
    kommo.add_card(
        "leads",
        SimCard::new(2003, "Maria: warranty", 504142)
            .with_field(flag(false))
            .with_contacts(&[1002]),
    );
    chatapp.add_chat(SimChat::whatsapp(1, "79990000001", "Ivan", Some(85501)));
    chatapp.add_chat(SimChat::whatsapp(1, "79990000002", "Maria", Some(85502)));
    chatapp.add_chat(SimChat::whatsapp(1, "79990000004", "Pavel", Some(85501)));
    Ok(DemoWorld {
        kommo,
        chatapp,
        clock,
    })
}

fn print_report(title: &str, r: &CycleReport, at: &Readable) {
    println!("\n== {title}");
    println!(
        "   {} cycle: read {} cards and {} dialogs with {} Kommo and {} ChatApp requests; {} ms",
        r.record.kind,
        r.record.cards_read,
        r.record.dialogs_read,
        r.record.kommo_requests,
        r.record.chatapp_requests,
        r.record.duration_ms
    );
    if r.plan.bootstrap {
        println!(
            "   first run, bootstrap = adopt: what is there becomes the base; nothing is written"
        );
    }
    for d in &r.plan.disagreements {
        println!("   disagreement reported: {}", describe_disagreement(at, d));
    }
    if r.plan.writes.is_empty() {
        println!("   corrections: none");
    }
    for (w, res) in r.plan.writes.iter().zip(&r.results) {
        let status = match res {
            WriteResult::Done => "corrected",
            WriteResult::Dropped(_) => "dropped",
            WriteResult::Rejected(_) => "rejected",
            WriteResult::NotApplied(_) => "write not applied",
            WriteResult::Waiting(_) => "held back (failed before)",
            WriteResult::Skipped => "planned",
            WriteResult::Shadowed => "not written (shadow mode)",
        };
        println!("   {status}: {}", describe_write(at, w));
    }
    for p in &r.plan.parked {
        println!("   parked (not written): {}", describe_parked(at, p));
    }
    for c in &r.plan.conflicts {
        println!("   conflict: {}", describe_conflict(at, c));
    }
}

/// How the demo's output reads: the names of the cycle's read, ages by the simulators' clock.
fn readable<'a>(syncer: &LiveSyncer, r: &'a CycleReport, w: &DemoWorld) -> Readable<'a> {
    syncer.readable(&r.people, w.clock.now())
}

/// Runs the demo; returns an error message on failure.
pub async fn run() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("chatapp-kommo-sync-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let result = run_in(&dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Who is who in the sample world.
fn print_intro(w: &DemoWorld) {
    println!("chatapp-kommo-sync demo");
    println!("Kommo simulator:   {}", w.kommo.base_url());
    println!("ChatApp simulator: {}", w.chatapp.base_url());
    println!(
        "Sample world: managers Anna, Boris, Vera (in both systems, matched by e-mail), Gleb (Kommo only),"
    );
    println!(
        "Dmitry (ChatApp only); contacts Ivan, Maria, Oleg, Pavel; leads linked to Ivan and Maria;"
    );
    println!(
        "direction: contact -> dialog (crm_to_chat), dialog -> lead (chat_to_crm); lead 2003 has its sync flag unchecked;"
    );
    println!("lead 2004 is a deal Boris won last year (closed leads are left alone).");
}

/// A manager, an operator and a customer change things in both systems.
fn people_make_changes(w: &DemoWorld) {
    println!("\n== people make changes");
    println!("   Kommo:   a manager moves contact 1001 (Ivan) from Anna to Boris");
    w.kommo
        .set_responsible_as_human("contacts", 1001, 504142, 504141);
    w.clock.advance(5);
    println!("   ChatApp: an operator takes Maria's dialog and assigns it to Vera");
    w.chatapp
        .assign_as_human(1, "grWhatsApp", "79990000002@c.us", Some(85503));
    w.clock.advance(5);
    println!(
        "   ChatApp: Oleg writes for the first time; the distribution gives the new dialog to Dmitry"
    );
    w.chatapp
        .add_chat(SimChat::whatsapp(1, "79990000003", "Oleg", Some(85509)));
    w.clock.advance(5);
    println!("   Kommo:   contact 1004 (Pavel) is given to Gleb, who has no ChatApp account");
    w.kommo
        .set_responsible_as_human("contacts", 1004, 504144, 504141);
    w.clock.advance(5);
}

/// Every dialog's and card's responsible at the end.
fn print_final_state(w: &DemoWorld, at: &Readable) {
    println!("\n== final state");
    for chat in [
        "79990000001@c.us",
        "79990000002@c.us",
        "79990000003@c.us",
        "79990000004@c.us",
    ] {
        let key = crate::core::model::DialogKey::new(1, "grWhatsApp", chat);
        let who = w.chatapp.responsible_of(1, "grWhatsApp", chat);
        println!("   {key}: {}", at.employee(who.map(EmployeeId)));
    }
    for (kind, id) in [
        ("contacts", 1001),
        ("contacts", 1002),
        ("contacts", 1003),
        ("contacts", 1004),
        ("leads", 2001),
        ("leads", 2002),
        ("leads", 2003),
        ("leads", 2004),
    ] {
        let card = crate::core::model::CardId::new(
            crate::core::model::CardKind::parse(kind).expect("a card kind"),
            id,
        );
        let who = w.kommo.responsible_of(kind, id).unwrap_or(0);
        println!("   {card}: {}", at.user(KommoUserId(who)));
    }
}

async fn run_in(dir: &Path) -> anyhow::Result<()> {
    let w = sample_world().await?;
    // A deal Boris won last year: its manager is sales history, never rewritten.
    w.kommo.add_card(
        "leads",
        SimCard::new(2004, "Maria: last year's order (won)", 504142)
            .with_field(SimField::checkbox(LEAD_FLAG_FIELD, true))
            .with_contacts(&[1002])
            .with_status(crate::sim::MAIN_PIPELINE_ID, crate::sim::STATUS_WON),
    );
    let path = write_config(dir, &w.kommo, &w.chatapp, "")?;
    let loaded = config::load(&path)?;
    let store = Arc::new(Store::open(&loaded.config.daemon.state_path)?);
    let syncer = LiveSyncer::live(&loaded, store.clone())?;
    print_intro(&w);

    let r1 = syncer.run_cycle(CycleOptions::default()).await?;
    print_report("cycle 1: first run", &r1, &readable(&syncer, &r1, &w));

    w.clock.advance(20);
    people_make_changes(&w);

    let r2 = syncer.run_cycle(CycleOptions::default()).await?;
    print_report("cycle 2: incremental", &r2, &readable(&syncer, &r2, &w));
    w.clock.advance(30);
    let r3 = syncer.run_cycle(CycleOptions::default()).await?;
    print_report(
        "cycle 3: incremental, nothing changed since",
        &r3,
        &readable(&syncer, &r3, &w),
    );
    w.clock.advance(30);
    let r4 = syncer
        .run_cycle(CycleOptions {
            kind: crate::store::CycleKind::Full,
            ..Default::default()
        })
        .await?;
    print_report("cycle 4: full reconcile", &r4, &readable(&syncer, &r4, &w));

    print_final_state(&w, &readable(&syncer, &r4, &w));
    println!(
        "\nRun `chatapp-kommo-sync status` on a real state db to see the same from the audit log."
    );
    let done = r2
        .results
        .iter()
        .filter(|r| **r == WriteResult::Done)
        .count();
    anyhow::ensure!(
        r1.plan.writes.is_empty(),
        "the bootstrap cycle must write nothing"
    );
    anyhow::ensure!(
        done >= 4,
        "expected the demo's changes to be corrected, got {done} writes"
    );
    anyhow::ensure!(
        r3.plan.writes.is_empty() && r4.plan.writes.is_empty(),
        "idle cycles must write nothing"
    );
    anyhow::ensure!(
        w.kommo.responsible_of("leads", 2002) == Some(504143)
            && w.kommo.responsible_of("leads", 2004) == Some(504142),
        "Maria's open lead follows her dialog (Vera), the won one keeps Boris"
    );
    w.kommo.shutdown().await;
    w.chatapp.shutdown().await;
    drop(syncer);
    if let Ok(s) = Arc::try_unwrap(store) {
        s.close()?;
    }
    Ok(())
}
