//! The tick allocator under load: blocks from the pool and from the system, allocated inside and
//! outside ticks, resized, and freed on other threads, keep their contents and never overlap.
//! Where a block came from is read from this thread's own count of system-allocator calls
//! (`alloc::thread_system_calls`), not the process-wide counters, which the other test moves too.

use std::sync::mpsc;

use skillgraft::alloc;

fn fill(v: &mut [u8], tag: u8) {
    for (i, b) in v.iter_mut().enumerate() {
        *b = tag ^ (i as u8);
    }
}

fn check(v: &[u8], tag: u8) {
    for (i, b) in v.iter().enumerate() {
        assert_eq!(*b, tag ^ (i as u8), "block tagged {tag} corrupted at {i}");
    }
}

#[test]
fn pooled_and_system_blocks_keep_their_contents_across_threads() {
    let (tx, rx) = mpsc::channel::<(Vec<u8>, u8)>();
    let dropper = std::thread::spawn(move || {
        let mut n = 0;
        for (v, tag) in rx {
            check(&v, tag);
            n += 1;
        }
        n
    });
    let workers: Vec<_> = (0..4u64)
        .map(|t| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut seed = t * 7919 + 1;
                let mut rand = move || {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (seed >> 33) as usize
                };
                let mut live: Vec<(Vec<u8>, u8)> = Vec::new();
                let mut pooled = 0;
                for round in 0..2000 {
                    let tick = round % 3 != 0;
                    let size = if rand() % 100 == 0 {
                        (1 << 20) + 1
                    } else {
                        [1, 15, 16, 17, 100, 4096, 9000][rand() % 7] + rand() % 5
                    };
                    let tag = (rand() % 251) as u8;
                    let step = || {
                        let mut v = vec![0u8; size];
                        fill(&mut v, tag);
                        v
                    };
                    let calls = alloc::thread_system_calls();
                    let v = if tick { alloc::in_tick(step) } else { step() };
                    let reached_system = alloc::thread_system_calls() - calls;
                    let want = u64::from(!tick || size > 1 << 20);
                    assert_eq!(
                        reached_system,
                        want,
                        "a {size}-byte block {} a tick: system-allocator calls",
                        if tick { "inside" } else { "outside" }
                    );
                    pooled += usize::from(want == 0);
                    live.push((v, tag));
                    if rand() % 4 == 0 {
                        let (mut v, tag) = live.swap_remove(rand() % live.len());
                        check(&v, tag);
                        let grow = |v: &mut Vec<u8>| {
                            v.resize(v.len() * 2 + 3, 0);
                            fill(v, tag);
                        };
                        if tick {
                            alloc::in_tick(|| grow(&mut v))
                        } else {
                            grow(&mut v)
                        }
                        tx.send((v, tag)).unwrap();
                    }
                    if live.len() > 40 {
                        let (v, tag) = live.swap_remove(rand() % live.len());
                        check(&v, tag);
                        if tick {
                            alloc::in_tick(|| drop(v));
                        }
                    }
                }
                for (v, tag) in &live {
                    check(v, tag.to_owned());
                }
                pooled
            })
        })
        .collect();
    let pooled: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    drop(tx);
    assert!(dropper.join().unwrap() > 1000);
    assert!(alloc::installed());
    assert!(pooled > 4000, "most blocks are allocated in ticks and fit a class: {pooled} pooled");
}

#[test]
fn nested_ticks_restore_the_outer_state() {
    let block = || drop(std::hint::black_box(vec![1u8; 10]));
    let before = alloc::thread_system_calls();
    alloc::in_tick(|| {
        alloc::in_tick(block);
        block();
    });
    assert_eq!(alloc::thread_system_calls(), before, "after the inner tick ends the outer one still pools");
    block();
    assert_eq!(alloc::thread_system_calls(), before + 2, "after the outer tick ends, the system allocates and frees");
}
