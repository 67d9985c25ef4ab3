//! JWT issuers: validation of `[[auth.jwt]]` entries into [`JwtIssuer`]s,
//! reading their key files and checking the keys with the decoder in
//! `keys`.

use std::time::Duration;

use jsonwebtoken::Algorithm;

use super::keys::{JwtKeys, jwk_key, parse_jwks, pem_key};
use super::types::JwtConfig;
use crate::error::Problems;
use crate::names::check_name;

/// A validated JWT issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtIssuer {
    /// Name.
    pub name: String,
    /// The one accepted algorithm.
    pub algorithm: Algorithm,
    /// Verification key(s).
    pub keys: JwtKeys,
    /// Required issuer.
    pub issuer: Option<String>,
    /// Accepted audiences.
    pub audience: Vec<String>,
    /// Tenant claim.
    pub tenant_claim: String,
    /// Allowed skew.
    pub leeway: Duration,
}

fn read_file(path: &str, at: String, problems: &mut Problems) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) => Some(b),
        Err(e) => {
            problems.push(at, format!("cannot read {path}: {e}"));
            None
        }
    }
}

pub(super) fn check_jwt(j: &JwtConfig, at: &str, problems: &mut Problems) -> Option<JwtIssuer> {
    check_name(&j.name, &format!("{at}.name"), problems);
    let algorithm = match j.algorithm.as_str() {
        "HS256" => Algorithm::HS256,
        "RS256" => Algorithm::RS256,
        "ES256" => Algorithm::ES256,
        other => {
            problems.push(
                format!("{at}.algorithm"),
                format!("{other:?} must be \"HS256\", \"RS256\" or \"ES256\""),
            );
            return None;
        }
    };
    if !(0..=3600).contains(&j.leeway_seconds) {
        problems.push(
            format!("{at}.leeway_seconds"),
            format!("{} must be between 0 and 3600", j.leeway_seconds),
        );
    }
    if j.tenant_claim.is_empty() {
        problems.push(format!("{at}.tenant_claim"), "must not be empty");
    }
    let given = [
        ("secret_file", j.secret_file.as_ref()),
        ("public_key_file", j.public_key_file.as_ref()),
        ("jwks_file", j.jwks_file.as_ref()),
    ];
    let named: Vec<&str> = given
        .iter()
        .filter(|(_, v)| v.is_some())
        .map(|(n, _)| *n)
        .collect();
    let wanted = if algorithm == Algorithm::HS256 {
        "secret_file"
    } else {
        "public_key_file or jwks_file"
    };
    let keys = match (algorithm, &j.secret_file, &j.public_key_file, &j.jwks_file) {
        _ if named.len() != 1 => {
            problems.push(
                at.to_owned(),
                format!("needs exactly one of {wanted} for {}", j.algorithm),
            );
            return None;
        }
        (Algorithm::HS256, Some(f), _, _) => {
            let mut secret = read_file(f, format!("{at}.secret_file"), problems)?;
            while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                secret.pop();
            }
            if secret.len() < 32 {
                problems.push(
                    format!("{at}.secret_file"),
                    "an HS256 secret needs at least 32 bytes",
                );
                return None;
            }
            JwtKeys::Secret(secret)
        }
        (Algorithm::RS256 | Algorithm::ES256, _, Some(f), _) => {
            let pem = read_file(f, format!("{at}.public_key_file"), problems)?;
            if let Err(e) = pem_key(algorithm, &pem) {
                problems.push(
                    format!("{at}.public_key_file"),
                    format!("not a {} public key in PEM: {e}", j.algorithm),
                );
                return None;
            }
            JwtKeys::Pem(pem)
        }
        (Algorithm::RS256 | Algorithm::ES256, _, _, Some(f)) => {
            let raw = read_file(f, format!("{at}.jwks_file"), problems)?;
            let text = String::from_utf8(raw).unwrap_or_default();
            match parse_jwks(&text) {
                Ok(set) if !set.keys.is_empty() => {
                    for (k, jwk) in set.keys.iter().enumerate() {
                        if let Err(e) = jwk_key(jwk) {
                            problems.push(
                                format!("{at}.jwks_file"),
                                format!("key {k} is unusable: {e}"),
                            );
                        }
                    }
                    JwtKeys::Jwks(text)
                }
                Ok(_) => {
                    problems.push(format!("{at}.jwks_file"), "holds no keys");
                    return None;
                }
                Err(e) => {
                    problems.push(
                        format!("{at}.jwks_file"),
                        format!("not a JWKS document: {e}"),
                    );
                    return None;
                }
            }
        }
        _ => {
            problems.push(
                at.to_owned(),
                format!("{} takes {wanted}, not {}", j.algorithm, named.join(", ")),
            );
            return None;
        }
    };
    Some(JwtIssuer {
        name: j.name.clone(),
        algorithm,
        keys,
        issuer: j.issuer.clone(),
        audience: j.audience.clone(),
        tenant_claim: j.tenant_claim.clone(),
        leeway: Duration::from_secs(j.leeway_seconds.clamp(0, 3600).unsigned_abs()),
    })
}
