//! The SQL92 filter compiler on arbitrary text: never panics or overflows the stack; whatever
//! compiles prints a canonical form that compiles again to the same canonical form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quiver::filter::{Filter, FilterKind};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for kind in [FilterKind::Sql, FilterKind::Tag] {
        if let Ok(f) = Filter::parse(kind, text) {
            let canonical = f.canonical();
            let again = Filter::parse(kind, &canonical).expect("canonical form compiles");
            assert_eq!(again.canonical(), canonical, "canonical form is stable");
        }
    }
});
