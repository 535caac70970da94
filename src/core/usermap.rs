//! The user map: Kommo user id <-> ChatApp employee id (SPEC section 1). Pure.

use crate::core::model::{Employee, EmployeeId, KommoUser, KommoUserId};
use std::collections::BTreeMap;

/// A one-to-one map between Kommo users and ChatApp employees.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserMap {
    to_chat: BTreeMap<KommoUserId, EmployeeId>,
    to_crm: BTreeMap<EmployeeId, KommoUserId>,
}

impl UserMap {
    /// Builds the map: explicit pairs first (they win, and are trusted as written), then, when
    /// `match_by_email`, the remaining active Kommo users and employees with the same e-mail
    /// (case-insensitive). An e-mail shared by two users on one side matches nobody.
    pub fn build(
        explicit: &[(KommoUserId, EmployeeId)],
        match_by_email: bool,
        users: &[KommoUser],
        employees: &[Employee],
    ) -> UserMap {
        let mut m = UserMap::default();
        for &(k, e) in explicit {
            m.to_chat.insert(k, e);
            m.to_crm.insert(e, k);
        }
        if !match_by_email {
            return m;
        }
        let mut crm_by_email: BTreeMap<String, Vec<KommoUserId>> = BTreeMap::new();
        for u in users.iter().filter(|u| u.active && !u.id.is_nobody()) {
            let email = u.email.trim().to_lowercase();
            if !email.is_empty() {
                crm_by_email.entry(email).or_default().push(u.id);
            }
        }
        let mut chat_by_email: BTreeMap<String, Vec<EmployeeId>> = BTreeMap::new();
        for e in employees.iter().filter(|e| e.id.0 != 0) {
            let email = e.email.trim().to_lowercase();
            if !email.is_empty() {
                chat_by_email.entry(email).or_default().push(e.id);
            }
        }
        for (email, ks) in &crm_by_email {
            let Some(es) = chat_by_email.get(email) else {
                continue;
            };
            if let ([k], [e]) = (ks.as_slice(), es.as_slice())
                && !m.to_chat.contains_key(k)
                && !m.to_crm.contains_key(e)
            {
                m.to_chat.insert(*k, *e);
                m.to_crm.insert(*e, *k);
            }
        }
        m
    }

    /// The employee of a Kommo user; `None` when unmapped or 0.
    pub fn to_chat(&self, user: KommoUserId) -> Option<EmployeeId> {
        if user.is_nobody() {
            return None;
        }
        self.to_chat.get(&user).copied()
    }

    /// The Kommo user of an employee; `None` when unmapped.
    pub fn to_crm(&self, employee: EmployeeId) -> Option<KommoUserId> {
        self.to_crm.get(&employee).copied()
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.to_chat.len()
    }

    /// No pairs at all.
    pub fn is_empty(&self) -> bool {
        self.to_chat.is_empty()
    }

    /// All pairs, ordered by Kommo id.
    pub fn pairs(&self) -> impl Iterator<Item = (KommoUserId, EmployeeId)> + '_ {
        self.to_chat.iter().map(|(k, e)| (*k, *e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(id: u64, email: &str, active: bool) -> KommoUser {
        KommoUser {
            id: KommoUserId(id),
            name: String::new(),
            email: email.into(),
            active,
        }
    }
    fn e(id: u64, email: &str) -> Employee {
        Employee {
            id: EmployeeId(id),
            name: String::new(),
            email: email.into(),
        }
    }

    #[test]
    fn explicit_pairs_win_over_email() {
        let m = UserMap::build(
            &[(KommoUserId(1), EmployeeId(100))],
            true,
            &[u(1, "a@x.com", true), u(2, "B@X.com", true)],
            &[e(100, "other@x.com"), e(101, "a@x.com"), e(102, "b@x.com")],
        );
        assert_eq!(m.to_chat(KommoUserId(1)), Some(EmployeeId(100)));
        assert_eq!(
            m.to_crm(EmployeeId(101)),
            None,
            "a@x.com's user is already paired explicitly"
        );
        assert_eq!(
            m.to_chat(KommoUserId(2)),
            Some(EmployeeId(102)),
            "e-mail match is case-insensitive"
        );
        assert_eq!(m.to_crm(EmployeeId(102)), Some(KommoUserId(2)));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn inactive_ambiguous_and_zero_are_unmapped() {
        let m = UserMap::build(
            &[],
            true,
            &[
                u(1, "a@x.com", false),
                u(2, "d@x.com", true),
                u(3, "d@x.com", true),
            ],
            &[e(100, "a@x.com"), e(101, "d@x.com")],
        );
        assert_eq!(m.to_chat(KommoUserId(1)), None, "inactive Kommo user");
        assert_eq!(m.to_chat(KommoUserId(2)), None, "ambiguous e-mail");
        assert_eq!(m.to_chat(KommoUserId(0)), None);
        assert!(m.is_empty());
    }

    #[test]
    fn email_matching_can_be_off() {
        let m = UserMap::build(&[], false, &[u(1, "a@x.com", true)], &[e(100, "a@x.com")]);
        assert!(m.is_empty());
    }
}
