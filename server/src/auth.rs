//! `Authorization: Bearer <JWT>`: HS256 with a shared secret and/or RS256 with a public key.
//! The token names the tenant and the application user (claims configurable); whether that user
//! may use that tenant is the database's decision (`udm_use`), never the server's.

use crate::config::Config;
use crate::error::ApiError;
use axum::http::{header, HeaderMap};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

pub struct Keys {
    hs256: Option<DecodingKey>,
    rs256: Option<DecodingKey>,
    tenant_claim: String,
    user_claim: String,
    audience: Option<String>,
    issuer: Option<String>,
    leeway: u64,
}

/// Who a request acts for.
#[derive(Debug, Clone)]
pub struct Identity {
    pub tenant: String,
    pub user: String,
}

/// The token of `Authorization: Bearer <JWT>` (one such header, scheme in any case), or 401.
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let missing =
        || ApiError::unauthenticated("a bearer token is required (Authorization: Bearer <JWT>)");
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(missing());
    };
    value
        .to_str()
        .ok()
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN_BYTES)
        .ok_or_else(missing)
}

/// Tokens longer than this are refused before any decoding.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

impl Keys {
    pub fn new(c: &Config) -> Result<Keys, String> {
        let hs256 = c
            .jwt_secret
            .as_ref()
            .map(|s| DecodingKey::from_secret(s.as_bytes()));
        let rs256 = match &c.jwt_public_key_file {
            Some(f) => {
                let pem = std::fs::read(f)
                    .map_err(|e| format!("cannot read jwt_public_key_file {}: {e}", f.display()))?;
                Some(DecodingKey::from_rsa_pem(&pem).map_err(|e| {
                    format!(
                        "jwt_public_key_file {}: not an RSA public key in PEM: {e}",
                        f.display()
                    )
                })?)
            }
            None => None,
        };
        Ok(Keys {
            hs256,
            rs256,
            tenant_claim: c.tenant_claim.clone(),
            user_claim: c.user_claim.clone(),
            audience: c.jwt_audience.clone(),
            issuer: c.jwt_issuer.clone(),
            leeway: c.jwt_leeway_s,
        })
    }

    /// The identity of a request (401 without a valid token) and its place among its token's
    /// connections (429 past `max_connections_per_token`), for as long as the request holds it.
    pub fn admit(
        &self,
        headers: &HeaderMap,
        limits: &std::sync::Arc<crate::limit::PerToken>,
    ) -> Result<(Identity, crate::limit::Slot), ApiError> {
        let token = bearer(headers)?;
        let who = self.verify(token)?;
        let slot = limits
            .take(token)
            .ok_or_else(ApiError::too_many_connections)?;
        Ok((who, slot))
    }

    pub fn verify(&self, token: &str) -> Result<Identity, ApiError> {
        self.verify_with_expiry(token).map(|(who, _)| who)
    }

    /// The identity of a token and its `exp`.
    pub fn verify_with_expiry(&self, token: &str) -> Result<(Identity, i64), ApiError> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(ApiError::unauthenticated("invalid token"));
        }
        let invalid = || ApiError::unauthenticated("invalid token");
        let alg = decode_header(token).map_err(|_| invalid())?.alg;
        let key = match alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::RS256 => self.rs256.as_ref(),
            _ => None,
        }
        .ok_or_else(invalid)?;
        let mut v = Validation::new(alg);
        v.leeway = self.leeway;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp"]);
        match &self.audience {
            Some(a) => v.set_audience(&[a]),
            None => v.validate_aud = false,
        }
        if let Some(i) = &self.issuer {
            v.set_issuer(&[i]);
        }
        let claims = decode::<Map<String, Value>>(token, key, &v)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => ApiError::unauthenticated("the token has expired"),
                ErrorKind::ImmatureSignature => {
                    ApiError::unauthenticated("the token is not valid yet (nbf)")
                }
                _ => invalid(),
            })?
            .claims;
        let text = |name: &str| {
            claims
                .get(name)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty() && !s.contains('\0'))
                .map(str::to_string)
                .ok_or_else(|| {
                    ApiError::unauthenticated(format!("the token has no usable \"{name}\" claim"))
                })
        };
        let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
        Ok((
            Identity {
                tenant: text(&self.tenant_claim)?,
                user: text(&self.user_claim)?,
            },
            exp,
        ))
    }
}

/// `udm-server token`: an HS256 token for `user` in `tenant`, valid for `ttl` seconds, signed
/// with the configured secret (for development and tests; production tokens come from the
/// application's identity provider).
pub fn issue(c: &Config, tenant: &str, user: &str, ttl: u64) -> Result<String, String> {
    let secret = c
        .jwt_secret
        .as_ref()
        .ok_or("no jwt_secret (HS256) is configured")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let mut claims = Map::new();
    claims.insert(c.tenant_claim.clone(), Value::from(tenant));
    claims.insert(c.user_claim.clone(), Value::from(user));
    claims.insert("iat".into(), Value::from(now));
    claims.insert("exp".into(), Value::from(now + ttl));
    if let Some(a) = &c.jwt_audience {
        claims.insert("aud".into(), Value::from(a.as_str()));
    }
    if let Some(i) = &c.jwt_issuer {
        claims.insert("iss".into(), Value::from(i.as_str()));
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| e.to_string())
}
