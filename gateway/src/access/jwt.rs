//! JWT verification: each issuer accepts exactly one algorithm (so
//! `alg: none` and algorithm confusion are refused); `exp` is always
//! required, and `iss` and `aud` are required whenever the issuer names an
//! issuer or an audience: a validly signed token without them is refused.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{DecodingKey, Validation};
use weir_conf::access::JwtIssuer;

use crate::errors::GatewayError;

/// One JWT issuer, ready to verify.
pub(super) struct Verifier {
    issuer: JwtIssuer,
    /// `(kid, key)`; a PEM key has no kid.
    keys: Vec<(Option<String>, DecodingKey)>,
    validation: Validation,
}

impl Verifier {
    pub(super) fn new(issuer: &JwtIssuer) -> Result<Self, String> {
        let keys = issuer
            .keys
            .decode(issuer.algorithm)
            .map_err(|e| format!("auth.jwt[{}]: {e}", issuer.name))?;
        let mut validation = Validation::new(issuer.algorithm);
        validation.leeway = issuer.leeway.as_secs();
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(iss) = &issuer.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        if issuer.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&issuer.audience);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        Ok(Self {
            issuer: issuer.clone(),
            keys,
            validation,
        })
    }
}

/// The tenant a token names, verified by one of `verifiers`.
pub(super) fn verify(verifiers: &[Verifier], token: &[u8]) -> Result<String, GatewayError> {
    let invalid = |why: &str| GatewayError::InvalidCredentials(format!("invalid token: {why}"));
    let header = jsonwebtoken::decode_header(token)
        .map_err(|_| invalid("malformed, or an algorithm that is never accepted"))?;
    let mut last = invalid("its algorithm is not accepted");
    for v in verifiers
        .iter()
        .filter(|v| v.issuer.algorithm == header.alg)
    {
        let keys = v.keys.iter().filter(|(kid, _)| match (&header.kid, kid) {
            (Some(want), Some(have)) => want == have,
            _ => true,
        });
        for (_, key) in keys {
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token,
                key,
                &v.validation,
            ) {
                Ok(data) => {
                    return match data
                        .claims
                        .get(&v.issuer.tenant_claim)
                        .and_then(|c| c.as_str())
                    {
                        Some(name) => Ok(name.to_owned()),
                        None => Err(invalid(&format!(
                            "no string claim {:?} naming the tenant",
                            v.issuer.tenant_claim
                        ))),
                    };
                }
                Err(e) => {
                    last = invalid(match e.kind() {
                        ErrorKind::ExpiredSignature => "expired",
                        ErrorKind::ImmatureSignature => "not valid yet",
                        ErrorKind::InvalidAudience => "wrong audience",
                        ErrorKind::InvalidIssuer => "wrong issuer",
                        ErrorKind::InvalidSignature => "bad signature",
                        ErrorKind::InvalidAlgorithm => "its algorithm is not accepted",
                        ErrorKind::MissingRequiredClaim(_) => "a required claim is missing",
                        _ => "malformed",
                    })
                }
            }
        }
    }
    Err(last)
}
