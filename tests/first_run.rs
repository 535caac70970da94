//! Issue 11: a first run stages every card it reads in compact form and gives the engine only the
//! cards that may link to a dialog; the commit stores the others as they were read
//! (`store::staged`, `core::first_run`). Through the real binary against the
//! simulators, with the state db read afterwards.

#![allow(clippy::unwrap_used)]

#[path = "common/e2e.rs"]
mod e2e;

use chatapp_kommo_sync::core::model::{CardId, CardKind, KommoUserId};
use chatapp_kommo_sync::sim::kommo::{SimCard, SimField};
use chatapp_kommo_sync::store::Store;
use e2e::{Env, chat};

const WA: &str = "grWhatsApp";

fn bases(env: &Env) -> chatapp_kommo_sync::core::engine::Snapshot {
    Store::open_read_only(&env.dir.path().join("state.redb"))
        .unwrap()
        .load_snapshot()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_first_run_stores_every_card_it_read_and_decides_the_linked_ones() {
    let env = Env::new("").await;
    env.edit_config(|t| t.replace("bootstrap = \"adopt\"", "bootstrap = \"crm\""));
    // a contact and her lead that no dialog links to: they take part in no decision
    env.w.kommo.add_card(
        "contacts",
        SimCard::new(1099, "Nadia (no chat)", 504143)
            .with_field(SimField::phones(&["+7 999 555 00 99"])),
    );
    env.w.kommo.add_card(
        "leads",
        SimCard::new(2099, "Nadia: a quote", 504142).with_contacts(&[1099]),
    );
    env.once(&[]).await;

    let snap = bases(&env);
    assert!(snap.bootstrapped);
    // every card read has a base holding its responsible as read (the crm bootstrap writes
    // dialogs, not cards)
    for (kind, plural) in [(CardKind::Contact, "contacts"), (CardKind::Lead, "leads")] {
        for c in env.w.kommo.cards(plural) {
            let id = CardId::new(kind, c.id);
            let base = snap
                .cards
                .get(&id)
                .unwrap_or_else(|| panic!("{id} has no base after the first run"));
            assert_eq!(base.responsible, KommoUserId(c.responsible_user_id), "{id}");
        }
    }
    let nadia = &snap.cards[&CardId::new(CardKind::Contact, 1099)];
    assert_eq!(nadia.phones, vec!["79995550099".to_string()]);
    assert_eq!(
        snap.cards[&CardId::new(CardKind::Lead, 2099)].contacts,
        vec![1099]
    );
    // the linked ones were decided: Ivan's dialog takes his contact's responsible (Anna)
    assert_eq!(env.w.chatapp.responsible_of(1, WA, &chat(1)), Some(85501));

    // the next cycle finds nothing to do, and Nadia's stored base links her new chat
    env.w.clock.advance(10);
    let r = env.once(&[]).await;
    assert!(r.stdout.contains(" 0 planned"), "{}", r.stdout);
    env.w.clock.advance(10);
    env.w
        .chatapp
        .add_chat(chatapp_kommo_sync::sim::chatapp::SimChat::whatsapp(
            1,
            "79995550099",
            "Nadia",
            None,
        ));
    env.once(&[]).await;
    // a new dialog is opened: rule 2 gives it the contact's responsible (Vera)
    assert_eq!(
        env.w.chatapp.responsible_of(1, WA, "79995550099@c.us"),
        Some(85503)
    );
}

/// A first run that writes cards (`bootstrap = "chat"`): the plan settles the cards its writes
/// name, and the commit stores the rest from the staging as read. A confirmed write's card is
/// stored with the written value; a card whose write Kommo refused gets no base (it is decided
/// again: `core::first_run` keeps every card a write names out of the staging).
#[tokio::test(flavor = "multi_thread")]
async fn a_first_run_that_writes_cards_stores_the_written_value_and_no_base_for_a_refused_write() {
    for refused in [false, true] {
        let env = Env::new("").await;
        env.edit_config(|t| t.replace("bootstrap = \"adopt\"", "bootstrap = \"chat\""));
        if refused {
            env.w.kommo.push_fault(
                chatapp_kommo_sync::sim::FaultRule::new(chatapp_kommo_sync::sim::Fault::Status(
                    400,
                ))
                .method("PATCH"),
            );
        }
        env.once(&[]).await;
        let snap = bases(&env);
        let kitchen = CardId::new(CardKind::Lead, 2002);
        // Maria's chat is with 85502 (Kommo 504142): her checked lead, held by 504141, takes it
        assert_eq!(
            env.w.kommo.responsible_of("leads", 2002),
            Some(if refused { 504141 } else { 504142 }),
            "refused: {refused}"
        );
        match snap.cards.get(&kitchen) {
            Some(base) => {
                assert!(!refused, "a refused write's card has a base: {base:?}");
                assert_eq!(base.responsible, KommoUserId(504142));
            }
            None => assert!(refused, "the written card has no base"),
        }
        // every other card is stored as read
        for (kind, plural) in [(CardKind::Contact, "contacts"), (CardKind::Lead, "leads")] {
            for c in env.w.kommo.cards(plural) {
                let id = CardId::new(kind, c.id);
                if id == kitchen {
                    continue;
                }
                let base = snap
                    .cards
                    .get(&id)
                    .unwrap_or_else(|| panic!("{id}: no base"));
                assert_eq!(base.responsible, KommoUserId(c.responsible_user_id), "{id}");
            }
        }
    }
}
