//! Continual-adaptation statistics files (`continual.stats`) on arbitrary bytes: reading never
//! panics nor allocates by sizes it has not checked against the file, what reads writes back the
//! same, and a small layer's statistics solve and give a posterior without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skillgraft::adapt::continual::Continual;
use skillgraft::control::uncertainty::Posterior;

fuzz_target!(|data: &[u8]| {
    let Ok(c) = Continual::from_bytes(data, "fuzz.stats") else {
        return;
    };
    let again = Continual::from_bytes(&c.to_bytes(), "again.stats").expect("what reads writes back readable");
    assert_eq!(again.to_bytes(), c.to_bytes());
    if c.key.inputs <= 64 && c.key.outputs <= 8 {
        if let Some(s) = c.solve() {
            // What the control loop does with them each tick.
            let mut p = Posterior::new(&s, &vec![1.0; s.noise.len()]);
            let mut std = vec![0.0; p.actions()];
            let r = p.ratio(&vec![0.0; p.width()]);
            p.std(r, &mut std);
        }
    }
});
