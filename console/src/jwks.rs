//! Public keys for asymmetric JWTs (RS256, ES256): a JSON Web Key Set read from a file or fetched from a
//! URL at start, read again every few minutes, and at once (at most every 10 s) when a token names a
//! key id the set does not have — a key rotated in by the issuer (Supabase's signing keys, an identity
//! provider's) works without restarting the console.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Where the keys come from.
#[derive(Clone, Debug)]
pub enum Source {
    File(std::path::PathBuf),
    Url(String),
}

impl Source {
    /// An http(s) URL, or else a file path.
    pub fn parse(s: &str) -> Source {
        if s.starts_with("https://") || s.starts_with("http://") {
            Source::Url(s.to_string())
        } else {
            Source::File(s.into())
        }
    }
}

/// A verifying key of the set.
#[derive(Clone, Debug, PartialEq)]
pub enum Key {
    /// RS256: modulus and exponent, big-endian
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// ES256: the uncompressed P-256 point (0x04 || x || y)
    Ec { point: Vec<u8> },
}

#[derive(Clone, Debug)]
struct Entry {
    kid: Option<String>,
    /// the JWK's own `alg`, when it names one
    alg: Option<String>,
    key: Key,
}

/// The algorithm a key type verifies.
fn alg_of(k: &Key) -> &'static str {
    match k {
        Key::Rsa { .. } => "RS256",
        Key::Ec { .. } => "ES256",
    }
}

/// Read a JWKS document: the RSA and P-256 keys meant for signatures. Other keys (encryption keys,
/// symmetric `oct` keys, other curves) are left out; a set with no usable key is an error.
pub fn parse(text: &str) -> Result<Vec<(Option<String>, Option<String>, Key)>, String> {
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let keys = doc
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("no \"keys\" array")?;
    let b64 = |v: Option<&serde_json::Value>, what: &str| -> Result<Vec<u8>, String> {
        let s = v
            .and_then(|v| v.as_str())
            .ok_or(format!("a key without {what}"))?;
        B64.decode(s.trim_end_matches('='))
            .map_err(|_| format!("{what} is not base64url"))
    };
    let mut out = Vec::new();
    for k in keys {
        let s = |f: &str| k.get(f).and_then(|v| v.as_str());
        if s("use").is_some_and(|u| u != "sig") {
            continue;
        }
        let key = match (s("kty"), s("crv")) {
            (Some("RSA"), _) => Key::Rsa {
                n: b64(k.get("n"), "n")?,
                e: b64(k.get("e"), "e")?,
            },
            (Some("EC"), Some("P-256")) => {
                let (x, y) = (b64(k.get("x"), "x")?, b64(k.get("y"), "y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err("a P-256 key whose x or y is not 32 bytes".into());
                }
                let mut point = vec![4u8];
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                Key::Ec { point }
            }
            _ => continue,
        };
        out.push((
            s("kid").map(str::to_string),
            s("alg").map(str::to_string),
            key,
        ));
    }
    if out.is_empty() {
        return Err("no RS256 or ES256 signing key in the set".into());
    }
    Ok(out)
}

/// Check a signature over `message` with a key, for the token's `alg`.
pub fn verify(key: &Key, alg: &str, message: &[u8], signature: &[u8]) -> bool {
    use ring::signature;
    match (key, alg) {
        (Key::Rsa { n, e }, "RS256") => signature::RsaPublicKeyComponents { n, e }
            .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, signature)
            .is_ok(),
        (Key::Ec { point }, "ES256") => {
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(message, signature)
                .is_ok()
        }
        _ => false,
    }
}

/// The key set, replaced whole on each successful read.
pub struct KeySet {
    source: Source,
    entries: RwLock<Arc<Vec<Entry>>>,
    last_read: Mutex<Instant>,
    client: reqwest::Client,
}

/// A token naming an unknown key id reads the set again at most this often.
const UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(10);

impl KeySet {
    /// Read the set now: a console that cannot check the tokens it is told to accept does not start.
    pub async fn load(source: Source) -> Result<Arc<KeySet>, String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("JWKS client: {e}"))?;
        let set = KeySet {
            source,
            entries: RwLock::new(Arc::new(Vec::new())),
            last_read: Mutex::new(Instant::now()),
            client,
        };
        set.read().await?;
        Ok(Arc::new(set))
    }

    async fn fetch(&self) -> Result<String, String> {
        match &self.source {
            // a small file: read on the runtime's blocking pool
            Source::File(p) => {
                let p = p.clone();
                tokio::task::spawn_blocking(move || {
                    std::fs::read_to_string(&p)
                        .map_err(|e| format!("cannot read {}: {e}", p.display()))
                })
                .await
                .map_err(|e| format!("reading the JWKS: {e}"))?
            }
            Source::Url(u) => {
                let r = self
                    .client
                    .get(u)
                    .send()
                    .await
                    .map_err(|e| format!("cannot fetch {u}: {e}"))?;
                if !r.status().is_success() {
                    return Err(format!("{u} answered {}", r.status()));
                }
                r.text().await.map_err(|e| format!("{u}: {e}"))
            }
        }
    }

    /// Read the set again; on failure the keys in use stay.
    pub async fn read(&self) -> Result<usize, String> {
        *self.last_read.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.replace().await
    }

    /// Fetch and parse the set, and put it in place of the one in use.
    async fn replace(&self) -> Result<usize, String> {
        let text = self.fetch().await?;
        let keys = parse(&text).map_err(|e| format!("the JWKS: {e}"))?;
        let n = keys.len();
        let entries = keys
            .into_iter()
            .map(|(kid, alg, key)| Entry { kid, alg, key })
            .collect();
        *self.entries.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(entries);
        Ok(n)
    }

    /// Read again because a token named an unknown key, unless that was done moments ago.
    pub async fn read_for_unknown_kid(&self) {
        // checked and claimed under one lock: a burst of such tokens makes one fetch, not one each
        let due = {
            let mut last = self.last_read.lock().unwrap_or_else(|e| e.into_inner());
            let due = last.elapsed() >= UNKNOWN_KID_INTERVAL;
            if due {
                *last = Instant::now();
            }
            due
        };
        if due {
            if let Err(e) = self.replace().await {
                eprintln!("event-bus-console: {e}");
            }
        }
    }

    /// Read the set again every `every`, for as long as the console runs.
    pub fn spawn_refresher(self: &Arc<Self>, every: Duration) {
        let set = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = set.read().await {
                    eprintln!("event-bus-console: keeping the JWKS keys in use: {e}");
                }
            }
        });
    }

    /// The key for a token's `kid` and `alg`: the key with that id; without an id, the one key of the
    /// algorithm's type (two or more is ambiguous: none).
    pub fn find(&self, kid: Option<&str>, alg: &str) -> Option<Key> {
        let entries = self
            .entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let fits = |e: &&Entry| alg_of(&e.key) == alg && e.alg.as_deref().is_none_or(|a| a == alg);
        match kid {
            Some(kid) => entries
                .iter()
                .filter(fits)
                .find(|e| e.kid.as_deref() == Some(kid))
                .map(|e| e.key.clone()),
            None => {
                let mut it = entries.iter().filter(fits);
                match (it.next(), it.next()) {
                    (Some(e), None) => Some(e.key.clone()),
                    _ => None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_keeps_its_signing_keys_and_refuses_nonsense() {
        let x = B64.encode([1u8; 32]);
        let y = B64.encode([2u8; 32]);
        let doc = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "r1", "n": B64.encode([7u8; 256]), "e": "AQAB", "alg": "RS256", "use": "sig"},
            {"kty": "EC", "crv": "P-256", "kid": "e1", "x": x, "y": y},
            {"kty": "RSA", "kid": "enc", "n": "AQAB", "e": "AQAB", "use": "enc"},
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
            {"kty": "EC", "crv": "P-384", "kid": "p384", "x": x, "y": y},
        ]})
        .to_string();
        let keys = parse(&doc).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.0.clone().unwrap()).collect();
        assert_eq!(kids, ["r1", "e1"]);
        assert!(matches!(&keys[1].2, Key::Ec { point } if point.len() == 65 && point[0] == 4));
        assert!(parse("[]").is_err());
        assert!(parse(r#"{"keys": []}"#).is_err());
        assert!(
            parse(r#"{"keys": [{"kty": "EC", "crv": "P-256", "x": "AQ", "y": "AQ"}]}"#).is_err()
        );
    }
}
