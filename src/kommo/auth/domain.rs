//! Kommo's account-subdomain change: where is the account now?
//!
//! Facts, with their sources:
//! - AMO `oauth/account-subdomain-info.md` (the amoCRM docs mirror, "Получение информации о домене
//!   аккаунта по Refresh Token"): `GET /oauth2/account/current/subdomain` with the header
//!   `X-Refresh-Token: <refresh token>` answers `{id, subdomain, domain, top_level_domain}` (200) or
//!   401. It works only with an active refresh token, and only on the host named by the
//!   `api_domain` claim of the (JWT) access token; it is meant for "the account's subdomain
//!   changed".
//! - amoCRM's official PHP library (`src/AmoCRM/OAuth/AmoCRMOAuth.php`,
//!   `getAccessTokenByRefreshToken`): a refresh answered 401 or 404 asks that endpoint, switches
//!   its base domain to the answer's `domain` and refreshes again.
//!
//! Decision: the daemon asks the endpoint after a refresh answered 401 or 404, like the library,
//! but it does not switch hosts by itself: it reports the move loudly, naming the new domain and
//! the config line to change. The refresh token was not spent (the endpoint accepting it proves
//! it is still active), so after `kommo.base_url` is changed and the daemon reloaded, the stored
//! pair goes on working: no new authorization, no new bootstrap. Reasons: the config stays the
//! one truth about which host the daemon talks to (`check-config`, webhooks and firewall rules
//! all follow it); and a domain learnt from an answer is never given credentials. The refresh
//! token itself goes only to an `api_domain` under the same registered Kommo suffix as the
//! configured `base_url` (`kommo.com`, `amocrm.ru`, `amocrm.com`); with a loopback `base_url` (a
//! simulator) only to that same host and port.

use crate::http::{ApiClient, Response};
use serde::Deserialize;

/// The registered suffixes of Kommo (amoCRM) accounts.
pub const KOMMO_SUFFIXES: [&str; 3] = ["kommo.com", "amocrm.ru", "amocrm.com"];
/// The endpoint's path.
pub const PATH: &str = "/oauth2/account/current/subdomain";

/// What Kommo says about the account's domain, asked after a refused refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainCheck {
    /// The account now answers under this domain (checked: under a Kommo suffix).
    Moved(String),
    /// The account is still at the configured host, and the refresh token is still active.
    Same,
    /// The endpoint refused the refresh token too: it is no longer valid.
    TokenRefused,
    /// Not asked, or no answer to trust (why).
    Unknown(String),
}

/// The answer of `GET /oauth2/account/current/subdomain` (only what is used).
#[derive(Deserialize)]
struct AccountDomain {
    #[serde(default)]
    id: Option<u64>,
    domain: String,
}

/// Asks Kommo where the account is, with the pair's refresh token, at the access token's
/// `api_domain` (when that host may be trusted with the token; see the module docs).
pub async fn check(api: &ApiClient, access_token: &str, refresh_token: &str) -> DomainCheck {
    let claims = super::jwt_claims(access_token);
    let url = match endpoint_url(api.base(), claims.as_ref()) {
        Ok(u) => u,
        Err(why) => return DomainCheck::Unknown(why),
    };
    let endpoint = format!("GET {url}");
    let r = match api
        .execute(&endpoint, |c| {
            c.get(&url).header("X-Refresh-Token", refresh_token)
        })
        .await
    {
        Ok(r) => r,
        Err(e) => return DomainCheck::Unknown(e.to_string()),
    };
    let token_account = claims
        .as_ref()
        .and_then(|c| c.get("account_id"))
        .and_then(serde_json::Value::as_u64);
    judge(api, &endpoint, &r, token_account)
}

/// Reads the endpoint's answer.
fn judge(api: &ApiClient, endpoint: &str, r: &Response, token_account: Option<u64>) -> DomainCheck {
    match r.status.as_u16() {
        200 => {}
        401 => return DomainCheck::TokenRefused,
        s => {
            return DomainCheck::Unknown(format!("{endpoint}: HTTP {s}: {}", r.excerpt(200)));
        }
    }
    let a: AccountDomain = match api.decode(endpoint, &r.body) {
        Ok(a) => a,
        Err(e) => return DomainCheck::Unknown(e.to_string()),
    };
    if let (Some(answer), Some(token)) = (a.id, token_account)
        && answer != token
    {
        return DomainCheck::Unknown(format!(
            "{endpoint} named account {answer}, the access token account {token}: not trusted"
        ));
    }
    let domain = normalize(&a.domain);
    if Some(domain.as_str()) == authority(api.base()).as_deref() {
        return DomainCheck::Same;
    }
    if is_hostname(&domain) && kommo_suffix(&domain).is_some() {
        DomainCheck::Moved(domain)
    } else {
        DomainCheck::Unknown(format!(
            "{endpoint} named {:?} as the account's domain, which is not under {}: not trusted",
            crate::redact::excerpt(&a.domain, 100),
            KOMMO_SUFFIXES.join(", ")
        ))
    }
}

/// Where the refresh token may be sent: `https://{api_domain}{PATH}` when `api_domain` lies under
/// the configured host's Kommo suffix; with a loopback `base`, only `base` itself.
pub fn endpoint_url(base: &str, claims: Option<&serde_json::Value>) -> Result<String, String> {
    let api_domain = claims
        .and_then(|c| c.get("api_domain"))
        .and_then(serde_json::Value::as_str)
        .map(normalize)
        .ok_or("the stored access token names no api_domain (JWT claim), so the account's domain cannot be asked")?;
    let here = authority(base).ok_or("kommo.base_url has no host")?;
    if is_loopback(&here) {
        return if api_domain == here {
            Ok(format!("{}{PATH}", base.trim_end_matches('/')))
        } else {
            Err(format!(
                "the access token's api_domain {api_domain:?} is not the loopback base_url's host: not asked"
            ))
        };
    }
    let Some(suffix) = kommo_suffix(&here) else {
        return Err(format!(
            "kommo.base_url's host {here} is not under {}: not asked",
            KOMMO_SUFFIXES.join(", ")
        ));
    };
    if is_hostname(&api_domain) && kommo_suffix(&api_domain) == Some(suffix) {
        Ok(format!("https://{api_domain}{PATH}"))
    } else {
        Err(format!(
            "the access token's api_domain {:?} is not under {suffix} like kommo.base_url: the refresh token is not sent there",
            crate::redact::excerpt(&api_domain, 100)
        ))
    }
}

/// `host[:port]` of a URL, lowercased.
pub fn authority(url: &str) -> Option<String> {
    let u = reqwest::Url::parse(url).ok()?;
    let host = u.host_str()?.to_ascii_lowercase();
    Some(match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    })
}

/// The Kommo suffix `host` lies under (the suffix itself counts), if any.
pub fn kommo_suffix(host: &str) -> Option<&'static str> {
    KOMMO_SUFFIXES.into_iter().find(|s| {
        host == *s
            || host
                .strip_suffix(s)
                .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1)
    })
}

/// A plain DNS name: letters, digits, `-` and `.`, no port, no path, no empty label.
fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// `localhost` or a loopback IP, with or without a port.
fn is_loopback(authority: &str) -> bool {
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => authority,
    };
    host == "localhost"
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

/// Lowercased, trimmed, without a trailing dot or a scheme.
fn normalize(s: &str) -> String {
    let s = s.trim().to_ascii_lowercase();
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(&s);
    s.trim_end_matches('/').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_refresh_token_goes_only_under_the_configured_suffix() {
        let c = |d: &str| json!({ "api_domain": d });
        assert_eq!(
            endpoint_url("https://acme.amocrm.ru", Some(&c("api-a.amocrm.ru"))),
            Ok("https://api-a.amocrm.ru/oauth2/account/current/subdomain".into())
        );
        assert_eq!(
            endpoint_url("https://acme.kommo.com/", Some(&c("API-C.kommo.com"))),
            Ok("https://api-c.kommo.com/oauth2/account/current/subdomain".into())
        );
        for bad in [
            "api-a.amocrm.com",
            "evil.com",
            "kommo.com.evil.com",
            "evilkommo.com",
            "api.kommo.com:8443",
            "api.kommo.com/x",
            "",
        ] {
            assert!(
                endpoint_url("https://acme.kommo.com", Some(&c(bad))).is_err(),
                "{bad}"
            );
        }
        assert!(endpoint_url("https://acme.kommo.com", Some(&json!({}))).is_err());
        assert!(endpoint_url("https://acme.kommo.com", None).is_err());
        assert!(endpoint_url("https://proxy.example.com", Some(&c("api-a.kommo.com"))).is_err());
    }

    #[test]
    fn a_loopback_base_asks_only_itself() {
        let c = |d: &str| json!({ "api_domain": d });
        assert_eq!(
            endpoint_url("http://127.0.0.1:8080", Some(&c("127.0.0.1:8080"))),
            Ok("http://127.0.0.1:8080/oauth2/account/current/subdomain".into())
        );
        assert!(endpoint_url("http://127.0.0.1:8080", Some(&c("127.0.0.1:9090"))).is_err());
        assert!(endpoint_url("http://localhost:8080", Some(&c("api-a.kommo.com"))).is_err());
    }

    #[test]
    fn suffixes_and_names() {
        assert_eq!(kommo_suffix("a.kommo.com"), Some("kommo.com"));
        assert_eq!(kommo_suffix("kommo.com"), Some("kommo.com"));
        assert_eq!(kommo_suffix("xkommo.com"), None);
        assert_eq!(kommo_suffix(".kommo.com"), None);
        assert_eq!(kommo_suffix("a.amocrm.ru"), Some("amocrm.ru"));
        assert!(is_hostname("new-name.kommo.com"));
        assert!(!is_hostname("a..kommo.com"));
        assert!(!is_hostname("a.kommo.com:1"));
        assert!(is_loopback("127.0.0.1:1") && is_loopback("localhost") && is_loopback("[::1]:5"));
        assert!(!is_loopback("a.kommo.com"));
        assert_eq!(normalize(" HTTPS://New.Kommo.com./ "), "new.kommo.com");
        assert_eq!(
            authority("http://127.0.0.1:99/x"),
            Some("127.0.0.1:99".into())
        );
    }
}
