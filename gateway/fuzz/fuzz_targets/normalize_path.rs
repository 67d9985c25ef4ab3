//! Path normalisation on arbitrary text: no panic; an accepted path is
//! absolute, has no `//`, no `.` or `..` segment, no `\`, `;` or encoded
//! separator, and normalising it again changes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_gateway::normalize::path;

fuzz_target!(|raw: &str| {
    let Ok(normal) = path(raw) else {
        return;
    };
    assert!(normal.starts_with('/'));
    assert!(!normal.contains("//"), "{raw:?} -> {normal:?}");
    assert!(!normal.contains('\\') && !normal.contains(';'));
    let upper = normal.to_ascii_uppercase();
    assert!(!upper.contains("%2F") && !upper.contains("%5C"));
    assert!(
        normal.split('/').all(|s| s != "." && s != ".."),
        "{raw:?} -> {normal:?}"
    );
    assert_eq!(path(&normal).as_deref(), Ok(&*normal), "not idempotent: {raw:?}");
});
