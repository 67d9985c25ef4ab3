//! JWT key material and its decoding into verification keys: the one
//! decoder of JWT keys. The validator checks key files with it; the gateway
//! verifies tokens with the keys [`JwtKeys::decode`] returns.

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

/// Key material of a JWT issuer, as read from its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtKeys {
    /// HS256 secret.
    Secret(Vec<u8>),
    /// One PEM public key.
    Pem(Vec<u8>),
    /// A JWKS document.
    Jwks(String),
}

/// A verification key and the `kid` that selects it (`None` for a secret or
/// a PEM key: tried for any token).
pub type VerificationKey = (Option<String>, DecodingKey);

/// Why key material cannot be decoded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key does not decode.
    #[error(transparent)]
    Key(#[from] jsonwebtoken::errors::Error),
    /// The JWKS document does not parse.
    #[error(transparent)]
    Jwks(#[from] serde_json::Error),
}

impl JwtKeys {
    /// Decodes the material into the verification keys for tokens signed
    /// with `algorithm`: one for a secret or a PEM key, one per key of a
    /// JWKS document. Fails on the first key that does not decode.
    pub fn decode(&self, algorithm: Algorithm) -> Result<Vec<VerificationKey>, KeyError> {
        Ok(match self {
            JwtKeys::Secret(secret) => vec![(None, DecodingKey::from_secret(secret)?)],
            JwtKeys::Pem(pem) => vec![(None, pem_key(algorithm, pem)?)],
            JwtKeys::Jwks(text) => parse_jwks(text)?
                .keys
                .iter()
                .map(jwk_key)
                .collect::<Result<_, _>>()?,
        })
    }
}

/// Decodes a PEM public key: RSA for RS256, EC for ES256.
pub(super) fn pem_key(
    algorithm: Algorithm,
    pem: &[u8],
) -> Result<DecodingKey, jsonwebtoken::errors::Error> {
    if algorithm == Algorithm::RS256 {
        DecodingKey::from_rsa_pem(pem)
    } else {
        DecodingKey::from_ec_pem(pem)
    }
}

/// Parses a JWKS document.
pub(super) fn parse_jwks(text: &str) -> Result<JwkSet, serde_json::Error> {
    serde_json::from_str(text)
}

/// Decodes one key of a JWKS document, with its `kid`.
pub(super) fn jwk_key(jwk: &Jwk) -> Result<VerificationKey, jsonwebtoken::errors::Error> {
    Ok((jwk.common.key_id.clone(), DecodingKey::from_jwk(jwk)?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn decodes_secrets_and_reports_bad_material() {
        let keys = JwtKeys::Secret(vec![7; 32])
            .decode(Algorithm::HS256)
            .unwrap();
        assert_eq!(keys.len(), 1);
        assert!(keys[0].0.is_none());
        let garbage = b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".to_vec();
        assert!(matches!(
            JwtKeys::Pem(garbage).decode(Algorithm::RS256),
            Err(KeyError::Key(_))
        ));
        assert!(matches!(
            JwtKeys::Jwks("not json".into()).decode(Algorithm::ES256),
            Err(KeyError::Jwks(_))
        ));
        let empty = JwtKeys::Jwks(r#"{"keys":[]}"#.into()).decode(Algorithm::ES256);
        assert!(empty.unwrap().is_empty());
    }
}
