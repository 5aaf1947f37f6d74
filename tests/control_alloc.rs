//! The control step in steady state: the same number of heap allocations every tick and no net
//! memory growth, counted with a counting global allocator. tract allocates each op's output per
//! run; the count is reported by `skillgraft bench inference`.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

use common::{FIXTURES, Reference, fixture};
use skillgraft::model::Model;
use skillgraft::model::onnx::OnnxFile;

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE_BYTES.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
fn steady_state_step_neither_grows_nor_varies() {
    for name in FIXTURES {
        let r = Reference::load(name);
        let file = OnnxFile::read(&fixture(&format!("{name}.onnx"))).unwrap();
        let mut model = Model::load(file, "obs", "action", &r.features_tensor).unwrap();
        let w = r.input_width();
        let mut out = vec![0.0; r.output_width];
        for _ in 0..10 {
            model.control.step(&r.input[..w], &mut out).unwrap();
        }
        let window = |model: &mut Model, out: &mut Vec<f32>| {
            let (a, b) = (
                ALLOCS.load(Ordering::Relaxed),
                LIVE_BYTES.load(Ordering::Relaxed),
            );
            for i in 0..200 {
                let s = i % r.batch();
                model
                    .control
                    .step(&r.input[s * w..(s + 1) * w], out)
                    .unwrap();
            }
            (
                ALLOCS.load(Ordering::Relaxed) - a,
                LIVE_BYTES.load(Ordering::Relaxed) - b,
            )
        };
        let (allocs_1, growth_1) = window(&mut model, &mut out);
        let (allocs_2, growth_2) = window(&mut model, &mut out);
        println!(
            "{name}: {} allocations per step (inside tract)",
            allocs_1 / 200
        );
        assert_eq!(
            allocs_1, allocs_2,
            "{name}: allocations per step must not vary"
        );
        assert_eq!(
            (growth_1, growth_2),
            (0, 0),
            "{name}: the step must not retain memory"
        );
    }
}
