//! Request paths and hosts as routes see them, and as the upstream gets them.
//!
//! A route that guards `/admin/` must see every spelling of `/admin/x` as
//! `/admin/x`, or a client walks past it (`/x/../admin/x`, `/%61dmin/x`,
//! `//admin/x`). So before a route is matched, the path is normalised the way
//! Envoy's `normalize_path` and `merge_slashes` do it:
//!
//! - percent-encoded *unreserved* characters are decoded (`%61` → `a`,
//!   `%2e` → `.`); other escapes are kept, with upper-case hex digits;
//! - dot segments are removed (RFC 3986, 5.2.4); `..` never climbs above `/`;
//! - runs of `/` become one.
//!
//! Refused with 400, because an upstream may read them as separators that
//! the route did not see: an encoded `/` or `\` (`%2F`, `%5C`), a raw `\`,
//! a path parameter (`;`), and a malformed escape. The normalised path (with
//! the query as it came) is what the upstream receives.
//!
//! Hosts are compared lower-cased, without the port and without a trailing
//! dot (`API.example.com.:443` is `api.example.com`); a host with a
//! character no host name has (a space, a tab, `@`, ...) is refused with 400.
//!
//! A leaf: imports nothing from the crate.

use std::borrow::Cow;

/// Why a path or host was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `%2F` or `%5C` in the path.
    #[error("the path has an encoded '/' or '\\'")]
    EncodedSeparator,
    /// A raw `\` in the path.
    #[error("the path has a '\\'")]
    Backslash,
    /// A `;` in the path.
    #[error("the path has a path parameter (';')")]
    PathParameter,
    /// A `%` not followed by two hex digits.
    #[error("the path has a malformed percent escape")]
    BadEscape,
    /// The path does not start with `/`.
    #[error("the path must start with '/'")]
    NotAbsolute,
    /// A character no host name has, or a malformed port.
    #[error("the host is not a valid host name")]
    BadHost,
}

/// The normalised form of `raw` (a path without its query); borrowed when
/// `raw` is already normal, which is the common case.
pub fn path(raw: &str) -> Result<Cow<'_, str>, Refused> {
    if !raw.starts_with('/') {
        return Err(Refused::NotAbsolute);
    }
    let bytes = raw.as_bytes();
    // One pass (every request's path goes through here): no escape, `\\`
    // or `;`, and no `/` followed by `/` or `.`.
    let mut after_slash = false;
    let plain = bytes.iter().all(|&b| {
        let odd = matches!(b, b'%' | b'\\' | b';') || (after_slash && matches!(b, b'/' | b'.'));
        after_slash = b == b'/';
        !odd
    });
    if plain {
        return Ok(Cow::Borrowed(raw));
    }
    let decoded = decode(bytes)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

/// Decodes unreserved escapes, keeps the others (upper-cased), refuses
/// separators in disguise.
fn decode(bytes: &[u8]) -> Result<String, Refused> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\\' => return Err(Refused::Backslash),
            b';' => return Err(Refused::PathParameter),
            b'%' => {
                let hex = |k: usize| bytes.get(k).and_then(|&c| (c as char).to_digit(16));
                let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
                    return Err(Refused::BadEscape);
                };
                let v = (hi * 16 + lo) as u8;
                match v {
                    b'/' | b'\\' => return Err(Refused::EncodedSeparator),
                    v if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') => {
                        out.push(v as char);
                    }
                    v => {
                        out.push('%');
                        out.push_str(&format!("{v:02X}"));
                    }
                }
                i += 3;
                continue;
            }
            b => out.push(b as char),
        }
        i += 1;
    }
    Ok(out)
}

/// Removes `.` and `..` segments and empty ones (merged slashes); keeps a
/// trailing `/` (also the one a final `.` or `..` leaves).
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing = false;
    for segment in path.split('/').skip(1) {
        trailing = false;
        match segment {
            "" | "." => trailing = true,
            ".." => {
                segments.pop();
                trailing = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    out
}

/// The host of a `Host` header or URI authority as routes compare it:
/// lower-case, no port, no trailing dot. Borrowed when already so.
pub fn host(raw: &str) -> Result<Cow<'_, str>, Refused> {
    host_bytes(raw.as_bytes())
}

/// [`host`] of a field's bytes as they came (any byte that is not part of
/// a host name is refused).
pub fn host_bytes(raw: &[u8]) -> Result<Cow<'_, str>, Refused> {
    let port_ok = |p: &[u8]| !p.is_empty() && p.iter().all(u8::is_ascii_digit);
    if let Some(v6) = raw.strip_prefix(b"[") {
        let close = v6.iter().position(|b| *b == b']').ok_or(Refused::BadHost)?;
        let (addr, rest) = (&v6[..close], &v6[close + 1..]);
        let literal = |b: &u8| b.is_ascii_hexdigit() || *b == b':' || *b == b'.';
        let port_fine = rest.is_empty() || rest.strip_prefix(b":").is_some_and(port_ok);
        if addr.is_empty() || !addr.iter().all(literal) || !port_fine {
            return Err(Refused::BadHost);
        }
        return Ok(lower(text(addr)?));
    }
    // One pass over the name (every request's host goes through here):
    // non-empty labels of letters, digits, `-` and `_` between dots, one
    // more dot allowed at the end, then an optional `:` and port.
    let mut label = 0usize;
    let mut upper = false;
    let mut end = raw.len();
    for (i, &b) in raw.iter().enumerate() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => label += 1,
            b'A'..=b'Z' => {
                label += 1;
                upper = true;
            }
            b'.' if label > 0 => label = 0,
            b':' if port_ok(&raw[i + 1..]) => {
                end = i;
                break;
            }
            _ => return Err(Refused::BadHost),
        }
    }
    // A name that ends with no label ends with its one trailing dot (a dot
    // after no label was refused above), or is empty.
    let name = match (label, end) {
        (_, 0) => return Err(Refused::BadHost),
        (0, _) => &raw[..end - 1],
        _ => &raw[..end],
    };
    let name = text(name)?;
    Ok(if upper {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    })
}

/// `b` as text (a host's bytes, checked by the caller, are ASCII).
fn text(b: &[u8]) -> Result<&str, Refused> {
    std::str::from_utf8(b).map_err(|_| Refused::BadHost)
}

/// `s` lower-cased, borrowed when it has no upper-case letter.
fn lower(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_disguise_of_a_path_is_the_path() {
        for (raw, want) in [
            ("/admin/x", "/admin/x"),
            ("/x/../admin/x", "/admin/x"),
            ("/x/%2e%2e/admin/x", "/admin/x"),
            ("/x/%2E%2E/admin/x", "/admin/x"),
            ("/%61dmin/x", "/admin/x"),
            ("//admin/x", "/admin/x"),
            ("/./admin/x", "/admin/x"),
            ("/admin//x", "/admin/x"),
            ("/../../admin/x", "/admin/x"),
            ("/admin/", "/admin/"),
            ("/admin/.", "/admin/"),
            ("/admin/x/..", "/admin/"),
            ("/", "/"),
            ("/..", "/"),
            ("/a%20b", "/a%20b"),
            ("/a%c3%a9", "/a%C3%A9"),
            ("/v1/chat/completions", "/v1/chat/completions"),
            ("/a.b/c", "/a.b/c"),
            ("/a/.b", "/a/.b"),
        ] {
            assert_eq!(path(raw).unwrap(), want, "{raw}");
        }
    }

    #[test]
    fn separators_in_disguise_and_bad_escapes_are_refused() {
        for (raw, why) in [
            ("/admin%2Fx", Refused::EncodedSeparator),
            ("/admin%2fx", Refused::EncodedSeparator),
            ("/admin%5cx", Refused::EncodedSeparator),
            ("/admin\\x", Refused::Backslash),
            ("/admin;/x", Refused::PathParameter),
            ("/a%2", Refused::BadEscape),
            ("/a%zz", Refused::BadEscape),
            ("admin", Refused::NotAbsolute),
            ("*", Refused::NotAbsolute),
        ] {
            assert_eq!(path(raw), Err(why), "{raw}");
        }
    }

    #[test]
    fn a_normal_path_is_borrowed() {
        assert!(matches!(path("/v1/chat/completions"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn hosts_compare_lower_case_without_port_or_trailing_dot() {
        for (raw, want) in [
            ("api.example.com", "api.example.com"),
            ("API.Example.com", "api.example.com"),
            ("api.example.com.", "api.example.com"),
            ("api.example.com.:8443", "api.example.com"),
            ("api.example.com:80", "api.example.com"),
            ("127.0.0.1:8080", "127.0.0.1"),
            ("[::1]:8080", "::1"),
            ("[::1]", "::1"),
            ("my_host", "my_host"),
        ] {
            assert_eq!(host(raw).unwrap(), want, "{raw}");
        }
        for bad in [
            "api.example.com\t",
            "api example.com",
            "user@api.example.com",
            "api.example.com:",
            "api.example.com:8x",
            "",
            "[::1",
            "[zz]",
            "a/b",
            "api..example.com",
            ".api.example.com",
            "api.example.com..",
        ] {
            assert_eq!(host(bad), Err(Refused::BadHost), "{bad:?}");
        }
        // A field's bytes that are no text, or no host, are refused too.
        for bad in [&b"api\xff.example"[..], b"a\x00", b"[::1\xff]", b"\xc3\xa9"] {
            assert_eq!(host_bytes(bad), Err(Refused::BadHost), "{bad:?}");
        }
        assert!(matches!(
            host_bytes(b"127.0.0.1:8080"),
            Ok(Cow::Borrowed("127.0.0.1"))
        ));
    }

    /// The former, plainer implementation of [`host`] (split and all):
    /// the one-pass version must agree with it on every input.
    fn host_by_splitting(raw: &str) -> Result<Cow<'_, str>, Refused> {
        let port_ok = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if raw.starts_with('[') {
            return host(raw);
        }
        let name = match raw.rsplit_once(':') {
            Some((name, port)) if port_ok(port) => name,
            Some(_) => return Err(Refused::BadHost),
            None => raw,
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        let valid = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_');
        let label_ok = |l: &str| !l.is_empty() && l.bytes().all(valid);
        if !name.split('.').all(label_ok) {
            return Err(Refused::BadHost);
        }
        Ok(lower(name))
    }

    #[test]
    fn the_one_pass_host_agrees_with_splitting() {
        const PIECES: [&str; 14] = [
            ".", "..", ":", ":80", "a", "Z", "-", "_", "9", " ", "é", "[", "]", "x:y",
        ];
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..50_000 {
            let n = rng.usize(0..8);
            let raw: String = (0..n).map(|_| PIECES[rng.usize(..PIECES.len())]).collect();
            assert_eq!(host(&raw), host_by_splitting(&raw), "{raw:?}");
        }
    }

    /// The fuzz targets' properties (gateway/fuzz) over random text made of
    /// the characters that matter, with a fixed seed.
    #[test]
    fn random_paths_and_hosts_keep_the_fuzz_properties() {
        const PIECES: [&str; 16] = [
            "/", "//", ".", "..", "%2e", "%2E", "%2f", "%5C", "%61", "%", ";", "\\", "a", "B",
            ":8", "%c3",
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let n = rng.usize(0..12);
            let raw: String = (0..n).map(|_| PIECES[rng.usize(..PIECES.len())]).collect();
            // Borrowed exactly when the path has nothing to normalise.
            let plain = raw.starts_with('/')
                && !raw.contains(['%', '\\', ';'])
                && !raw.contains("//")
                && !raw.contains("/.");
            assert_eq!(matches!(path(&raw), Ok(Cow::Borrowed(_))), plain, "{raw:?}");
            if let Ok(normal) = path(&raw) {
                assert!(normal.starts_with('/') && !normal.contains("//"), "{raw:?}");
                assert!(!normal.contains('\\') && !normal.contains(';'), "{raw:?}");
                let upper = normal.to_ascii_uppercase();
                assert!(!upper.contains("%2F") && !upper.contains("%5C"), "{raw:?}");
                assert!(normal.split('/').all(|s| s != "." && s != ".."), "{raw:?}");
                assert_eq!(path(&normal).as_deref(), Ok(&*normal), "{raw:?}");
            }
            if let Ok(normal) = host(&raw) {
                assert!(!normal.is_empty() && !normal.ends_with('.'), "{raw:?}");
                assert!(!normal.bytes().any(|b| b.is_ascii_uppercase()), "{raw:?}");
                assert_eq!(host(&normal).as_deref(), Ok(&*normal), "{raw:?}");
            }
        }
    }
}
