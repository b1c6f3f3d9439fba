//! Who is asking: sessions in signed cookies, bearer JWTs (HS256, RS256, ES256), CSRF tokens and the sign-in
//! rate limit. The console keeps no user table: a session names a PostgreSQL role, and the database
//! decides what that role may see and do.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

pub const SESSION_COOKIE: &str = "ebc_session";
pub const LOGIN_COOKIE: &str = "ebc_login";
pub const LANG_COOKIE: &str = "ebc_lang";
pub const JWT_COOKIE: &str = "ebc_jwt";

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn random_token() -> String {
    let bytes: [u8; 24] = rand::random();
    B64.encode(bytes)
}

/// Constant-time comparison of two tokens.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// What a session cookie carries: the role, the CSRF token of the session, when it was last used.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Session {
    /// the PostgreSQL role the requests run as (SET LOCAL ROLE)
    pub role: String,
    /// the session's CSRF token, echoed by every form
    pub csrf: String,
    /// unix seconds of the last request
    pub seen: u64,
}

/// Signs and checks session cookies (HMAC-SHA256 over the JSON body).
pub struct Signer {
    key: Vec<u8>,
    pub idle: Duration,
}

impl Signer {
    pub fn new(key: Vec<u8>, idle: Duration) -> Signer {
        Signer { key, idle }
    }

    fn mac(&self, data: &[u8]) -> Vec<u8> {
        let mut m = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        m.update(b"event-bus-console session v1\0");
        m.update(data);
        m.finalize().into_bytes().to_vec()
    }

    /// The CSRF token of a JWT cookie session: bound to the token, unguessable without the key.
    pub fn csrf_for_token(&self, token: &str) -> String {
        let mut m = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        m.update(b"event-bus-console jwt csrf\0");
        m.update(token.as_bytes());
        B64.encode(&m.finalize().into_bytes()[..18])
    }

    pub fn seal(&self, s: &Session) -> String {
        let body = serde_json::to_vec(s).expect("a session serializes");
        format!("{}.{}", B64.encode(&body), B64.encode(self.mac(&body)))
    }

    /// The session in a cookie value, if the signature holds and it has not been idle too long.
    pub fn open(&self, value: &str, now: u64) -> Result<Session, SessionError> {
        let (body, sig) = value.split_once('.').ok_or(SessionError::Invalid)?;
        let body = B64.decode(body).map_err(|_| SessionError::Invalid)?;
        let sig = B64.decode(sig).map_err(|_| SessionError::Invalid)?;
        if !bool::from(self.mac(&body).ct_eq(&sig)) {
            return Err(SessionError::Invalid);
        }
        let s: Session = serde_json::from_slice(&body).map_err(|_| SessionError::Invalid)?;
        if now.saturating_sub(s.seen) > self.idle.as_secs() {
            return Err(SessionError::Expired);
        }
        Ok(s)
    }
}

#[derive(Debug, PartialEq)]
pub enum SessionError {
    Invalid,
    Expired,
}

/// A bearer token's identity: the role to act as and the claims for `request.jwt.claims`.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtIdentity {
    pub role: String,
    pub claims: serde_json::Value,
}

#[derive(Debug, PartialEq)]
pub enum JwtError {
    Malformed,
    /// `alg` is none, or one this console does not accept
    Algorithm,
    Signature,
    /// no key of the JWKS has the token's `kid` (or, without one, no single key fits)
    UnknownKey,
    Expired,
    NotYetValid,
    /// `aud` does not name the audience the console was given
    Audience,
    /// `iss` is not the issuer the console was given
    Issuer,
    NoRole,
}

/// What bearer tokens the console accepts: HS256 with a shared secret, RS256 / ES256 with a key of a
/// JWKS, or both; and the `aud` / `iss` they must carry, when given.
#[derive(Default)]
pub struct JwtConfig {
    pub secret: Option<Vec<u8>>,
    pub keys: Option<std::sync::Arc<crate::jwks::KeySet>>,
    pub audience: Option<String>,
    pub issuer: Option<String>,
}

/// Seconds of clock difference forgiven for `exp` and `nbf`.
const LEEWAY: u64 = 30;

impl JwtConfig {
    /// Check a JWT as PostgREST does: the signature (HS256 with the secret; RS256 / ES256 with the JWKS
    /// key its `kid` names), `exp` / `nbf` (with 30 s of leeway), `aud` and `iss` when configured, and a
    /// `role` claim naming the role to act as. `alg: none` and any other algorithm are refused.
    pub fn verify(&self, token: &str, now: u64) -> Result<JwtIdentity, JwtError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let header: serde_json::Value =
            serde_json::from_slice(&B64.decode(h).map_err(|_| JwtError::Malformed)?)
                .map_err(|_| JwtError::Malformed)?;
        let alg = header.get("alg").and_then(|a| a.as_str()).unwrap_or("");
        let sig = B64.decode(s).map_err(|_| JwtError::Malformed)?;
        let signed = format!("{h}.{p}");
        match alg {
            "HS256" => {
                let secret = self.secret.as_deref().ok_or(JwtError::Algorithm)?;
                let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
                m.update(signed.as_bytes());
                m.verify_slice(&sig).map_err(|_| JwtError::Signature)?;
            }
            "RS256" | "ES256" => {
                let keys = self.keys.as_ref().ok_or(JwtError::Algorithm)?;
                let kid = header.get("kid").and_then(|k| k.as_str());
                let key = keys.find(kid, alg).ok_or(JwtError::UnknownKey)?;
                if !crate::jwks::verify(&key, alg, signed.as_bytes(), &sig) {
                    return Err(JwtError::Signature);
                }
            }
            _ => return Err(JwtError::Algorithm),
        }
        let claims: serde_json::Value =
            serde_json::from_slice(&B64.decode(p).map_err(|_| JwtError::Malformed)?)
                .map_err(|_| JwtError::Malformed)?;
        if let Some(exp) = claims.get("exp") {
            let exp = exp.as_f64().ok_or(JwtError::Malformed)?;
            if (now as f64) > exp + LEEWAY as f64 {
                return Err(JwtError::Expired);
            }
        }
        if let Some(nbf) = claims.get("nbf") {
            let nbf = nbf.as_f64().ok_or(JwtError::Malformed)?;
            if (now as f64) + (LEEWAY as f64) < nbf {
                return Err(JwtError::NotYetValid);
            }
        }
        if let Some(want) = &self.audience {
            let ok = match claims.get("aud") {
                Some(serde_json::Value::String(a)) => a == want,
                Some(serde_json::Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(want)),
                _ => false,
            };
            if !ok {
                return Err(JwtError::Audience);
            }
        }
        if let Some(want) = &self.issuer {
            if claims.get("iss").and_then(|i| i.as_str()) != Some(want.as_str()) {
                return Err(JwtError::Issuer);
            }
        }
        let role = claims
            .get("role")
            .and_then(|r| r.as_str())
            .filter(|r| !r.is_empty())
            .ok_or(JwtError::NoRole)?
            .to_string();
        Ok(JwtIdentity { role, claims })
    }
}

/// [`JwtConfig::verify`] with an HS256 secret alone.
#[cfg(test)]
pub fn verify_jwt(token: &str, secret: &[u8], now: u64) -> Result<JwtIdentity, JwtError> {
    JwtConfig {
        secret: Some(secret.to_vec()),
        ..Default::default()
    }
    .verify(token, now)
}

/// Sign claims as an HS256 JWT (for the tests).
#[cfg(test)]
pub fn sign_jwt(claims: &serde_json::Value, secret: &[u8]) -> String {
    let h = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let p = B64.encode(serde_json::to_vec(claims).expect("claims serialize"));
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(h.as_bytes());
    m.update(b".");
    m.update(p.as_bytes());
    format!("{h}.{p}.{}", B64.encode(m.finalize().into_bytes()))
}

/// Failed sign-ins per client address and per user name: at most `max` in `window`.
pub struct LoginLimiter {
    max: usize,
    window: Duration,
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl LoginLimiter {
    pub fn new(max: usize, window: Duration) -> LoginLimiter {
        LoginLimiter {
            max,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn keys(addr: &str, user: &str) -> [String; 2] {
        [format!("a:{addr}"), format!("u:{}", user.to_lowercase())]
    }

    /// May this address try this user name now?
    pub fn allowed(&self, addr: &str, user: &str, now: Instant) -> bool {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let window = self.window;
        map.retain(|_, v| {
            v.retain(|t| now.duration_since(*t) < window);
            !v.is_empty()
        });
        Self::keys(addr, user)
            .iter()
            .all(|k| map.get(k).map_or(0, |v| v.len()) < self.max)
    }

    pub fn failed(&self, addr: &str, user: &str, now: Instant) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        for k in Self::keys(addr, user) {
            map.entry(k).or_default().push(now);
        }
    }

    pub fn succeeded(&self, addr: &str, user: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&format!("u:{}", user.to_lowercase()));
        let _ = addr;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_session_cookie_opens_only_unaltered_and_fresh() {
        let s = Signer::new(b"k".repeat(32), Duration::from_secs(600));
        let sess = Session {
            role: "alice".into(),
            csrf: random_token(),
            seen: 1_000,
        };
        let v = s.seal(&sess);
        assert_eq!(s.open(&v, 1_100), Ok(sess.clone()));
        assert_eq!(s.open(&v, 1_601), Err(SessionError::Expired));
        // another role with the same signature
        let (body, sig) = v.split_once('.').unwrap();
        let mut forged: serde_json::Value =
            serde_json::from_slice(&B64.decode(body).unwrap()).unwrap();
        forged["role"] = json!("postgres");
        let forged = format!("{}.{sig}", B64.encode(serde_json::to_vec(&forged).unwrap()));
        assert_eq!(s.open(&forged, 1_100), Err(SessionError::Invalid));
        // another key
        let other = Signer::new(b"j".repeat(32), Duration::from_secs(600));
        assert_eq!(other.open(&v, 1_100), Err(SessionError::Invalid));
        assert_eq!(s.open("garbage", 1_100), Err(SessionError::Invalid));
    }

    #[test]
    fn jwt_checks_signature_expiry_and_role() {
        let key = b"a-secret-of-at-least-32-characters!!";
        let t = sign_jwt(
            &json!({"role": "alice", "tenant_id": "t1", "exp": 2_000}),
            key,
        );
        let id = verify_jwt(&t, key, 1_000).unwrap();
        assert_eq!(id.role, "alice");
        assert_eq!(id.claims["tenant_id"], "t1");
        assert_eq!(verify_jwt(&t, key, 2_031), Err(JwtError::Expired));
        assert_eq!(
            verify_jwt(&t, b"another-secret-of-32-characters!!!!!", 1_000),
            Err(JwtError::Signature)
        );
        let no_role = sign_jwt(&json!({"sub": "x"}), key);
        assert_eq!(verify_jwt(&no_role, key, 1_000), Err(JwtError::NoRole));
        let nbf = sign_jwt(&json!({"role": "a", "nbf": 5_000}), key);
        assert_eq!(verify_jwt(&nbf, key, 1_000), Err(JwtError::NotYetValid));
        // alg none is refused even with a valid-looking body
        let none = format!(
            "{}.{}.",
            B64.encode(br#"{"alg":"none"}"#),
            B64.encode(br#"{"role":"postgres"}"#)
        );
        assert_eq!(verify_jwt(&none, key, 1_000), Err(JwtError::Algorithm));
        assert_eq!(verify_jwt("a.b", key, 1_000), Err(JwtError::Malformed));
    }

    #[test]
    fn sign_in_failures_are_limited_per_address_and_per_user() {
        let l = LoginLimiter::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.allowed("1.2.3.4", "alice", t0));
            l.failed("1.2.3.4", "alice", t0);
        }
        assert!(!l.allowed("1.2.3.4", "bob", t0), "the address is throttled");
        assert!(
            !l.allowed("5.6.7.8", "Alice", t0),
            "the user name is throttled"
        );
        assert!(l.allowed("5.6.7.8", "bob", t0));
        assert!(
            l.allowed("1.2.3.4", "alice", t0 + Duration::from_secs(61)),
            "the window passes"
        );
    }
}
