//! Host normalisation on arbitrary text: no panic; an accepted host is
//! lower-case, has no port, no trailing dot and only host-name characters
//! (or is an IPv6 literal), and normalising it again changes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_gateway::normalize::host;

fuzz_target!(|raw: &str| {
    let Ok(normal) = host(raw) else {
        return;
    };
    assert!(!normal.is_empty());
    assert!(!normal.bytes().any(|b| b.is_ascii_uppercase()));
    let v6 = raw.starts_with('[');
    if !v6 {
        assert!(!normal.ends_with('.') && !normal.contains(':'), "{raw:?} -> {normal:?}");
        assert!(normal.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)));
        assert_eq!(host(&normal).as_deref(), Ok(&*normal), "not idempotent: {raw:?}");
    }
});
