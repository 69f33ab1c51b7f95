//! Service-account bearer tokens: `kubectl create token SA` (the TokenRequest subresource)
//! issues a JWT signed with the cluster's service-account key; requests carrying
//! `Authorization: Bearer <token>` are authenticated as
//! `system:serviceaccount:<namespace>:<name>` with Kubernetes' service-account groups.
//!
//! The key is a random 256-bit HMAC secret that `flotilla up` writes to
//! `pki/service-account.key` (mode 0600) and every master reads, so a token issued by one
//! master is accepted by all.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use serde_json::{json, Value};

use crate::http::User;
use crate::status::ApiError;

/// The file name of the signing key in the PKI directory.
pub const KEY_FILE: &str = "service-account.key";

/// Default and longest lifetimes of a token, in seconds (Kubernetes: 1 h default).
const DEFAULT_TTL: i64 = 3600;
const MAX_TTL: i64 = 48 * 3600;

/// Signs and checks tokens.
#[derive(Clone)]
pub struct TokenSigner {
    key: hmac::Key,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner")
    }
}

/// Makes a new random key (what `flotilla up` writes).
pub fn generate_key() -> Vec<u8> {
    rand::random::<[u8; 32]>().to_vec()
}

impl TokenSigner {
    /// A signer with `key` (at least 32 bytes).
    pub fn new(key: &[u8]) -> Result<TokenSigner, String> {
        if key.len() < 32 {
            return Err(format!(
                "the service-account key has {} bytes; 32 or more are needed",
                key.len()
            ));
        }
        Ok(TokenSigner {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        })
    }

    /// Issues a token for service account `name` (uid `uid`) in `namespace`, valid for
    /// `ttl` seconds (default 1 h, at most 48 h); returns the token and its expiry (unix s).
    pub fn issue(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        ttl: Option<i64>,
        audiences: &[String],
    ) -> (String, i64) {
        let now = jiff::Timestamp::now().as_second();
        let exp = now + ttl.unwrap_or(DEFAULT_TTL).clamp(600, MAX_TTL);
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = json!({
            "iss": "https://kubernetes.default.svc",
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "aud": audiences,
            "iat": now,
            "nbf": now,
            "exp": exp,
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": uid}},
        });
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signed = format!("{header}.{body}");
        let sig = URL_SAFE_NO_PAD.encode(hmac::sign(&self.key, signed.as_bytes()).as_ref());
        (format!("{signed}.{sig}"), exp)
    }

    /// The user a token authenticates, or 401.
    pub fn verify(&self, token: &str) -> Result<User, ApiError> {
        let mut parts = token.split('.');
        let (Some(h), Some(b), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ApiError::Unauthorized);
        };
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| ApiError::Unauthorized)?;
        hmac::verify(&self.key, format!("{h}.{b}").as_bytes(), &sig)
            .map_err(|_| ApiError::Unauthorized)?;
        let claims: Value = URL_SAFE_NO_PAD
            .decode(b)
            .ok()
            .and_then(|c| serde_json::from_slice(&c).ok())
            .ok_or(ApiError::Unauthorized)?;
        let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
        if exp <= jiff::Timestamp::now().as_second() {
            return Err(ApiError::Unauthorized);
        }
        let ns = claims
            .pointer("/kubernetes.io/namespace")
            .and_then(Value::as_str)
            .ok_or(ApiError::Unauthorized)?;
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .ok_or(ApiError::Unauthorized)?;
        Ok(User {
            name: sub.to_string(),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".into(),
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_until_they_expire_and_not_when_altered() {
        let s = TokenSigner::new(&generate_key()).unwrap();
        let (token, exp) = s.issue("team", "bot", "uid-1", None, &[]);
        assert!(exp > jiff::Timestamp::now().as_second());
        let user = s.verify(&token).unwrap();
        assert_eq!(user.name, "system:serviceaccount:team:bot");
        assert!(user
            .groups
            .contains(&"system:serviceaccounts:team".to_string()));
        let mut forged = token.clone();
        forged.insert(token.find('.').unwrap() + 2, 'x');
        assert!(s.verify(&forged).is_err());
        let other = TokenSigner::new(&generate_key()).unwrap();
        assert!(other.verify(&token).is_err());
        assert!(s.verify("not.a.token").is_err());
        assert!(TokenSigner::new(b"short").is_err());
    }
}
