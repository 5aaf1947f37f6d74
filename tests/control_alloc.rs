//! The control step in steady state never reaches the system allocator: with the `TickAllocator`
//! the binary installs, tract's per-op outputs are served from recycled pool blocks, the pool stops
//! growing after the first ticks, and the step retains no memory. One test per file: the counters
//! are process-wide.

mod common;

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

use common::{FIXTURES, Reference, fixture};
use skillgraft::alloc::{self, TickAllocator};
use skillgraft::model::Model;
use skillgraft::model::onnx::OnnxFile;

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_add(l.size() as isize, Ordering::Relaxed);
        unsafe { TickAllocator.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE_BYTES.fetch_sub(l.size() as isize, Ordering::Relaxed);
        unsafe { TickAllocator.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

#[test]
fn steady_state_step_never_reaches_the_system_allocator() {
    for name in FIXTURES {
        let r = Reference::load(name);
        let file = OnnxFile::read(&fixture(&format!("{name}.onnx"))).unwrap();
        let mut model = Model::load(file, &["obs"], "action", &r.features_tensor).unwrap();
        let w = r.input_width();
        let mut out = vec![0.0; r.output_width];
        for _ in 0..10 {
            model.control.step(&[&r.input[..w]], &mut out).unwrap();
        }
        let window = |model: &mut Model, out: &mut Vec<f32>| {
            let (a, b, s) = (ALLOCS.load(Ordering::Relaxed), LIVE_BYTES.load(Ordering::Relaxed), alloc::stats());
            for i in 0..200 {
                let k = i % r.batch();
                model.control.step(&[&r.input[k * w..(k + 1) * w]], out).unwrap();
            }
            let t = alloc::stats();
            assert_eq!(t.system, s.system, "{name}: a steady-state tick reached the system allocator");
            assert_eq!(t.carved, s.carved, "{name}: the pool grew in steady state");
            assert!(t.pooled > s.pooled, "{name}: the tick pool was not used");
            (ALLOCS.load(Ordering::Relaxed) - a, LIVE_BYTES.load(Ordering::Relaxed) - b)
        };
        let (allocs_1, growth_1) = window(&mut model, &mut out);
        let (allocs_2, growth_2) = window(&mut model, &mut out);
        println!("{name}: {} pooled allocations per step, pool {} KiB", allocs_1 / 200, alloc::stats().carved / 1024);
        assert_eq!(allocs_1, allocs_2, "{name}: allocations per step must not vary");
        assert_eq!((growth_1, growth_2), (0, 0), "{name}: the step must not retain memory");
        let mut check = vec![0.0; r.output_width];
        model.control.step(&[&r.input[..w]], &mut check).unwrap();
        common::assert_close(&format!("{name} output through the pool"), &check, &r.output[..r.output_width]);
    }
}
