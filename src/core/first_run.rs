//! A first run planned group by group, in memory bounded by the largest group rather than the
//! account.
//!
//! A first run's bootstrap decides every dialog from every card that may link to one. Planned at
//! once, that is every such card and dialog in the engine's working form: a fully linked account
//! (100 000 contacts each with a chat, 150 000 leads) took 160 MB over what the run had read.
//! But every decision reads only records linked to each other: a dialog's decision reads its
//! linked cards, a card's resolution the dialogs that propose to it, a parked pair its subject,
//! target and triggering card. So the records fall into *groups*: the connected components of
//! "may be linked", found by the same terms as the neighbourhood
//! ([`crate::core::neighbourhood`]: too many links only join groups, never split one), with the
//! records of each parked pair joined. The plan of a group is the whole plan's part for it.
//!
//! The groups are planned a batch at a time (small groups together, up to a batch's count of
//! records; a group is never split) and appended; [`Plan::order`] then gives the order the plan
//! of the whole has, and the brake is counted over every write. What a batch settles joins the
//! plan only where it differs from what the run staged, or a write names the card: every other
//! card read is stored from the staging as read, so the plan never holds every card.
//! `tests/neighbourhood_props.rs` checks the result against the plan of everything, with one
//! group a batch and with one batch.

use crate::core::engine::{
    Observations, Parked, Plan, Policy, Snapshot, plan_owned, too_many_writes,
};
use crate::core::model::{CardId, CardObs, CardState, DialogKey, DialogObs, DialogState, RecordId};
use crate::core::neighbourhood::{BaseLookup, Frame, Layered, Walk, frame_seeds, staged_obs};
use crate::core::usermap::UserMap;
use std::collections::{BTreeMap, BTreeSet};

/// How many records (cards and dialogs) a batch gathers before it is planned, unless one group
/// alone is larger. Small enough that a batch's working set is a few MB, large enough that the
/// engine's per-plan work (the user map's fingerprint, the link index) is paid rarely.
pub const BATCH: usize = 4096;

/// A first run's plan, group by group (see the module docs). `read` holds the cards the run
/// read, as [`crate::core::neighbourhood::staged_state`] made them; `bases` the bases; `snap`
/// the frame's parked pairs and held records and, in `snap.dialogs`, every dialog base (taken
/// out: each is planned with its group). `obs` holds the dialogs read (and any card observed
/// besides the staging). Returns the plan and the cards whose settled value replaces the staged
/// one (the commit stores the plan's value for those, the staged one for every other).
pub fn plan_first_run<E, R, B>(
    read: &R,
    bases: &B,
    snap: &mut Snapshot,
    obs: Observations,
    policy: &Policy,
    users: &UserMap,
    batch: usize,
) -> Result<(Plan, Vec<CardId>), E>
where
    R: BaseLookup<Error = E>,
    B: BaseLookup<Error = E>,
{
    let stored = std::mem::take(&mut snap.dialogs);
    let frame = Frame {
        parked: snap.parked.clone(),
        held: snap.held.clone(),
        bootstrapped: false,
        match_phone: policy.match_phone,
    };
    let groups = Batches::find(&Layered { read, bases }, &frame, &obs, &stored, batch)?;
    let mut work = groups.into_work(frame, obs, stored);
    let mut out = Merged::default();
    for b in 0..work.cards.len() {
        let (gsnap, gobs, staged) = work.batch(b, read, bases)?;
        let plan = plan_owned(&gsnap, gobs, policy, users);
        out.add(plan, &staged);
    }
    let mut plan = out.plan;
    plan.bootstrap = true;
    plan.order();
    plan.brake = too_many_writes(plan.writes.len(), policy.max_writes_per_cycle);
    Ok((plan, out.taken))
}

/// Union-find over the records: dialogs first (by their position in key order), then cards.
#[derive(Default)]
struct Groups {
    parent: Vec<u32>,
    size: Vec<u32>,
}

impl Groups {
    fn add(&mut self) -> u32 {
        let n = self.parent.len() as u32;
        self.parent.push(n);
        self.size.push(1);
        n
    }

    fn root(&mut self, mut n: u32) -> u32 {
        while self.parent[n as usize] != n {
            let up = self.parent[self.parent[n as usize] as usize];
            self.parent[n as usize] = up;
            n = up;
        }
        n
    }

    fn join(&mut self, a: u32, b: u32) {
        let (mut a, mut b) = (self.root(a), self.root(b));
        if a == b {
            return;
        }
        if self.size[a as usize] < self.size[b as usize] {
            std::mem::swap(&mut a, &mut b);
        }
        self.parent[b as usize] = a;
        self.size[a as usize] += self.size[b as usize];
    }

    /// Each record's batch: groups in order of their first record, gathered until a batch
    /// holds `batch` records.
    fn batches(mut self, batch: usize) -> (Vec<u32>, usize) {
        let n = self.parent.len();
        let mut of_root = vec![u32::MAX; n];
        let mut out = Vec::with_capacity(n);
        let (mut current, mut filled, mut count) = (0u32, 0usize, 0usize);
        for i in 0..n as u32 {
            let r = self.root(i) as usize;
            if of_root[r] == u32::MAX {
                let size = self.size[r] as usize;
                if count == 0 || (filled > 0 && filled + size > batch) {
                    current = count as u32;
                    count += 1;
                    filled = 0;
                }
                filled += size;
                of_root[r] = current;
            }
            out.push(of_root[r]);
        }
        (out, count)
    }
}

/// The records of each batch, by id (dialogs by their position in key order).
struct Batches {
    /// Each batch's cards.
    cards: Vec<Vec<CardId>>,
    /// Each observed dialog's batch, in key order.
    observed: Vec<u32>,
    /// Each dialog base's batch, in key order.
    stored: Vec<u32>,
    /// Each parked pair's batch (its subject's), in key order.
    parked: Vec<u32>,
    /// Each held record's batch, in order.
    held: Vec<u32>,
}

impl Batches {
    /// Finds the groups over every dialog (read, stored, or named by the frame) and the cards
    /// that may link to one, and gathers them into batches.
    fn find<L: BaseLookup>(
        store: &L,
        frame: &Frame,
        obs: &Observations,
        stored: &BTreeMap<DialogKey, DialogState>,
        batch: usize,
    ) -> Result<Batches, L::Error> {
        let mut walk = Walk::new(store, obs, frame.match_phone);
        let (mut seed_cards, mut named) = frame_seeds(frame);
        seed_cards.extend(obs.cards.keys().copied());
        let mut seed_links = Vec::with_capacity(seed_cards.len());
        for c in &seed_cards {
            let ds = walk.dialogs_of_card(c)?;
            named.extend(ds.iter().cloned());
            seed_links.push((*c, ds));
        }
        let mut keys: Vec<&DialogKey> = obs.dialogs.keys().chain(stored.keys()).collect();
        keys.extend(named.iter());
        keys.sort_unstable();
        keys.dedup();
        let mut g = Groups::default();
        for _ in &keys {
            g.add();
        }
        let mut cards: BTreeMap<CardId, u32> = BTreeMap::new();
        let mut card_node = |g: &mut Groups, c: CardId| *cards.entry(c).or_insert_with(|| g.add());
        let dialog_node = |d: &DialogKey| keys.binary_search(&d).ok().map(|p| p as u32);
        for (p, d) in keys.iter().enumerate() {
            for c in walk.cards_of_dialog(d)? {
                let n = card_node(&mut g, c);
                g.join(p as u32, n);
            }
        }
        // the joins below repeat what the terms above found (a seed card shares a term with each
        // dialog it may link to; a parked pair's records are linked): kept so that a group never
        // depends on that symmetry holding
        for (c, ds) in &seed_links {
            let n = card_node(&mut g, *c);
            for p in ds.iter().filter_map(dialog_node) {
                g.join(p, n);
            }
        }
        let mut node = |g: &mut Groups, r: &RecordId| match r {
            RecordId::Card(c) => Some(card_node(g, *c)),
            RecordId::Dialog(d) => dialog_node(d),
        };
        for p in frame.parked.values() {
            let nodes: Vec<u32> = p.records().filter_map(|r| node(&mut g, &r)).collect();
            for w in nodes.windows(2) {
                g.join(w[0], w[1]);
            }
        }
        let parked_nodes: Vec<Option<u32>> = frame
            .parked
            .values()
            .map(|p| node(&mut g, &p.subject))
            .collect();
        let held_nodes: Vec<Option<u32>> = frame.held.iter().map(|r| node(&mut g, r)).collect();
        let (batch_of, count) = g.batches(batch);
        let at = |n: Option<u32>| n.map_or(u32::MAX, |n| batch_of[n as usize]);
        let of_key = |d: &DialogKey| at(dialog_node(d));
        let card_batch: Vec<u32> = cards.values().map(|n| batch_of[*n as usize]).collect();
        let mut by_batch = sized(count, &card_batch);
        drop(card_batch);
        for (c, n) in cards {
            by_batch[batch_of[n as usize] as usize].push(c);
        }
        Ok(Batches {
            cards: by_batch,
            observed: obs.dialogs.keys().map(of_key).collect(),
            stored: stored.keys().map(of_key).collect(),
            parked: parked_nodes.into_iter().map(at).collect(),
            held: held_nodes.into_iter().map(at).collect(),
        })
    }

    /// Moves the dialogs, parked pairs and held records into their batches.
    fn into_work(
        self,
        frame: Frame,
        obs: Observations,
        stored: BTreeMap<DialogKey, DialogState>,
    ) -> Work {
        let n = self.cards.len();
        let mut w = Work {
            now: obs.now,
            cards: self.cards,
            observed: sized(n, &self.observed),
            stored: sized(n, &self.stored),
            parked: vec![BTreeMap::new(); n],
            held: vec![BTreeSet::new(); n],
            other_obs: obs.cards,
        };
        let slot = |b: u32| (b as usize) < n;
        for ((k, o), b) in obs.dialogs.into_iter().zip(self.observed) {
            if slot(b) {
                w.observed[b as usize].push((k, o));
            }
        }
        for ((k, st), b) in stored.into_iter().zip(self.stored) {
            if slot(b) {
                w.stored[b as usize].push((k, st));
            }
        }
        for ((k, p), b) in frame.parked.into_iter().zip(self.parked) {
            if slot(b) {
                w.parked[b as usize].insert(k, p);
            }
        }
        for (r, b) in frame.held.into_iter().zip(self.held) {
            if slot(b) {
                w.held[b as usize].insert(r);
            }
        }
        w
    }
}

/// One empty list per batch, each with room for exactly its records (`of`: each record's batch).
fn sized<T>(batches: usize, of: &[u32]) -> Vec<Vec<T>> {
    let mut count = vec![0usize; batches];
    for b in of {
        if let Some(c) = count.get_mut(*b as usize) {
            *c += 1;
        }
    }
    count.into_iter().map(Vec::with_capacity).collect()
}

/// What each batch plans from, taken out batch by batch.
struct Work {
    now: i64,
    cards: Vec<Vec<CardId>>,
    observed: Vec<Vec<(DialogKey, DialogObs)>>,
    stored: Vec<Vec<(DialogKey, DialogState)>>,
    parked: Vec<BTreeMap<String, Parked>>,
    held: Vec<BTreeSet<RecordId>>,
    /// Cards observed besides the staging (none on a plain first run).
    other_obs: BTreeMap<CardId, CardObs>,
}

/// A batch's bases and observations, and the staged states of its cards.
type BatchInput = (Snapshot, Observations, BTreeMap<CardId, CardState>);

impl Work {
    /// Batch `b`'s input: a read card is observed as staged (its base hidden), another card
    /// keeps its base and any observation.
    fn batch<E, R, B>(&mut self, b: usize, read: &R, bases: &B) -> Result<BatchInput, E>
    where
        R: BaseLookup<Error = E>,
        B: BaseLookup<Error = E>,
    {
        let mut snap = Snapshot {
            dialogs: std::mem::take(&mut self.stored[b]).into_iter().collect(),
            parked: std::mem::take(&mut self.parked[b]),
            held: std::mem::take(&mut self.held[b]),
            ..Snapshot::default()
        };
        let mut obs = Observations {
            dialogs: std::mem::take(&mut self.observed[b]).into_iter().collect(),
            now: self.now,
            ..Observations::default()
        };
        let mut staged = BTreeMap::new();
        for c in std::mem::take(&mut self.cards[b]) {
            if let Some(st) = read.card(&c)? {
                self.other_obs.remove(&c);
                obs.cards.insert(c, staged_obs(st.clone()));
                staged.insert(c, st);
                continue;
            }
            if let Some(o) = self.other_obs.remove(&c) {
                obs.cards.insert(c, o);
            }
            if let Some(st) = bases.card(&c)? {
                snap.cards.insert(c, st);
            }
        }
        Ok((snap, obs, staged))
    }
}

/// The batches' plans appended, and the staged cards whose settled value differs.
#[derive(Default)]
struct Merged {
    plan: Plan,
    taken: Vec<CardId>,
}

impl Merged {
    fn add(&mut self, mut p: Plan, staged: &BTreeMap<CardId, CardState>) {
        let named: BTreeSet<CardId> = p
            .writes
            .iter()
            .flat_map(|w| std::iter::once(w.target.record()).chain(w.holds.iter().cloned()))
            .filter_map(|r| match r {
                RecordId::Card(c) => Some(c),
                RecordId::Dialog(_) => None,
            })
            .collect();
        for (c, st) in std::mem::take(&mut p.settle_cards) {
            let was = staged.get(&c);
            if was == Some(&st) && !named.contains(&c) {
                continue; // stored from the staging as read
            }
            if was.is_some() {
                self.taken.push(c);
            }
            self.plan.settle_cards.insert(c, st);
        }
        // one by one: `BTreeMap::append` builds a new tree of both, a second copy of every
        // dialog settled so far, and the batches' keys interleave
        let out = &mut self.plan;
        out.settle_dialogs
            .extend(std::mem::take(&mut p.settle_dialogs));
        out.decided.extend(std::mem::take(&mut p.decided));
        out.writes.append(&mut p.writes);
        out.parked.append(&mut p.parked);
        out.conflicts.append(&mut p.conflicts);
        out.disagreements.append(&mut p.disagreements);
    }
}
