//! Kommo's answers that say the account itself refuses us, told apart (issue 18): what the
//! operator has to fix differs for each, and only a real rate block may stop every call.
//!
//! Sources: AMO `crm_platform/error-codes.md` L134 "402 | Подписка закончилась" (and the list
//! pages' "402 | Аккаунт не оплачен"), L135 "403 | Аккаунт заблокирован, за неоднократное
//! превышение количества запросов в секунду", L45 "113 | 403 Forbidden | Доступ к данному аккаунту
//! запрещён с Вашего IP адреса" (the account's IP allow-list); `users-api.md` L32/L55 and
//! `webhooks-api.md`: the users and webhooks endpoints answer 403 when the token's user is not an
//! account administrator.

/// Why Kommo refused the account as a whole (not this one request's content).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountRefusal {
    /// 402: the account's subscription is not paid.
    NotPaid,
    /// 403 with code 113: this machine's IP is not in the account's allow-list.
    IpNotAllowed,
    /// 403 on an endpoint the docs reserve to administrators: the token's user is not one.
    NotAdmin,
}

impl AccountRefusal {
    /// A short, stable class for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            AccountRefusal::NotPaid => "not_paid",
            AccountRefusal::IpNotAllowed => "ip_not_allowed",
            AccountRefusal::NotAdmin => "not_admin",
        }
    }

    /// What it means and what the operator does about it.
    pub fn explain(self) -> &'static str {
        match self {
            AccountRefusal::NotPaid => {
                "the Kommo account is not paid (HTTP 402): renew the subscription; the sync resumes by itself"
            }
            AccountRefusal::IpNotAllowed => {
                "Kommo refuses this machine's IP address (HTTP 403, code 113): add it to the account's IP allow-list (Settings, Security)"
            }
            AccountRefusal::NotAdmin => {
                "the token's Kommo user lacks the rights this call needs (HTTP 403; users and webhooks need an account administrator): authorize the integration as an administrator"
            }
        }
    }
}

/// Endpoints (paths) the docs reserve to account administrators.
const ADMIN_ONLY: [&str; 2] = ["/api/v4/users", "/api/v4/webhooks"];

/// What a Kommo answer with `status` and `body` on `path` says about the account, if anything.
/// An HTML 403 is the rate block and is not decided here.
pub fn account_refusal(status: u16, path: &str, body: &[u8]) -> Option<AccountRefusal> {
    match status {
        402 => Some(AccountRefusal::NotPaid),
        403 if names_code_113(body) => Some(AccountRefusal::IpNotAllowed),
        403 if ADMIN_ONLY.iter().any(|p| path.starts_with(p)) => Some(AccountRefusal::NotAdmin),
        _ => None,
    }
}

/// Whether the body carries error code 113.
///
/// Assumption (no source shows the v4 body of this error): the code is a number or a string under
/// `code`, `error_code` or `response.error_code` (the last is the v2 API's shape).
fn names_code_113(body: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    let is_113 = |x: Option<&serde_json::Value>| match x {
        Some(serde_json::Value::Number(n)) => n.as_u64() == Some(113),
        Some(serde_json::Value::String(s)) => s.trim() == "113",
        _ => false,
    };
    is_113(v.get("code"))
        || is_113(v.get("error_code"))
        || is_113(v.get("response").and_then(|r| r.get("error_code")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_named_and_a_plain_403_is_not() {
        let none = b"{\"title\":\"Forbidden\",\"status\":403}";
        assert_eq!(
            account_refusal(402, "/api/v4/leads", b""),
            Some(AccountRefusal::NotPaid)
        );
        assert_eq!(
            account_refusal(403, "/api/v4/leads", b"{\"code\":113}"),
            Some(AccountRefusal::IpNotAllowed)
        );
        assert_eq!(
            account_refusal(
                403,
                "/api/v4/leads",
                b"{\"response\":{\"error_code\":\"113\"}}"
            ),
            Some(AccountRefusal::IpNotAllowed)
        );
        assert_eq!(
            account_refusal(403, "/api/v4/users", none),
            Some(AccountRefusal::NotAdmin)
        );
        assert_eq!(account_refusal(403, "/api/v4/leads", none), None);
        assert_eq!(account_refusal(404, "/api/v4/users", none), None);
    }
}
