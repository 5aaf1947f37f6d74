//! Manifests on arbitrary text: parsing and validation never panic, and a manifest that passes
//! validation can be sized, labelled and normalised without overflow (every number that sizes
//! memory is bounded).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use skillgraft::skill::Manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(m) = Manifest::parse(text, Path::new("skill.toml")) else {
        return;
    };
    let width = m.input_width();
    assert_eq!(m.input_labels().len(), width);
    assert_eq!(m.action_labels().len(), m.action_width());
    let n = m.normaliser();
    assert_eq!((n.input_width(), n.action_width()), (width, m.action_width()));
    let again = Manifest::parse(&m.to_toml(), Path::new("skill.toml")).expect("a valid manifest writes back valid");
    assert_eq!(again, m);
});
