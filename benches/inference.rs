//! Criterion: the control step (batch 1) and batched feature extraction (batch 256) on every ONNX
//! fixture. `skillgraft bench inference` prints the same measurements next to onnxruntime's.

use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
#[path = "../src/bench/cases.rs"]
mod cases;

use cases::{FEATURE_BATCH, inference_cases};

fn inference(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx");
    for mut case in inference_cases(&dir).expect("fixtures load") {
        let mut action = vec![0.0; case.model.control.output_width()];
        c.bench_function(&format!("{}/control_step_batch1", case.name), |b| b.iter(|| case.step(&mut action)));
        c.bench_function(&format!("{}/features_batch{FEATURE_BATCH}", case.name), |b| {
            b.iter(|| std::hint::black_box(case.features()))
        });
    }
}

criterion_group!(benches, inference);
criterion_main!(benches);
