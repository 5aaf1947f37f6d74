//! Heap discipline for the control tick.
//!
//! tract allocates every op's output tensor on each run, so a control step would call the system
//! allocator dozens of times per tick. [`TickAllocator`] is a global allocator that serves
//! allocations made inside [`in_tick`] from a pool of recycled blocks (power-of-two size classes
//! carved from one region reserved up front), so a steady-state tick never reaches `malloc`, whose
//! latency is unbounded. Outside ticks, and for blocks larger than the largest class, it is the
//! system allocator. Blocks are recognised by address, so a pooled block may be freed on any
//! thread, at any time. The `skillgraft` binary installs it; library users may install it in
//! theirs with `#[global_allocator] static A: skillgraft::alloc::TickAllocator = TickAllocator;`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

/// Bytes of address space reserved for the pool; only the pages blocks are carved from are used.
pub const REGION_BYTES: usize = 64 << 20;
const MIN_CLASS_SHIFT: u32 = 4;
const MAX_CLASS_SHIFT: u32 = 20;
const CLASSES: usize = (MAX_CLASS_SHIFT - MIN_CLASS_SHIFT + 1) as usize;
const REGION_ALIGN: usize = 4096;

/// The global allocator that gives the control tick a pool instead of `malloc`.
pub struct TickAllocator;

thread_local! {
    static IN_TICK: Cell<bool> = const { Cell::new(false) };
    static SYSTEM_CALLS: Cell<u64> = const { Cell::new(0) };
}

fn count_system_call() {
    let _ = SYSTEM_CALLS.try_with(|c| c.set(c.get() + 1));
}

/// Calls this thread has made into the system allocator (alloc, free, realloc) through
/// `TickAllocator`; 0 when it is not installed. The control thread reports its own, so tests and
/// diagnostics can see that a steady-state tick makes none.
pub fn thread_system_calls() -> u64 {
    SYSTEM_CALLS.try_with(Cell::get).unwrap_or(0)
}

static INSTALLED: AtomicBool = AtomicBool::new(false);
static STATE: AtomicU8 = AtomicU8::new(0); // 0 none, 1 reserving, 2 ready, 3 failed
static BASE: AtomicUsize = AtomicUsize::new(0);
static BUMP: AtomicUsize = AtomicUsize::new(0);
static LOCK: AtomicBool = AtomicBool::new(false);
static POOLED: AtomicUsize = AtomicUsize::new(0);
static SYSTEM_IN_TICK: AtomicUsize = AtomicUsize::new(0);

struct FreeLists([Cell<*mut u8>; CLASSES]);
// SAFETY: every access happens with LOCK held.
unsafe impl Sync for FreeLists {}
static FREE: FreeLists = FreeLists([const { Cell::new(null_mut()) }; CLASSES]);

/// Counters of allocations made inside ticks since the process started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TickStats {
    /// Served from the pool.
    pub pooled: usize,
    /// That reached the system allocator (pool not reserved, full, or block too large).
    pub system: usize,
    /// Bytes of the region carved into blocks so far.
    pub carved: usize,
}

/// Counters of allocations made inside ticks.
pub fn stats() -> TickStats {
    TickStats {
        pooled: POOLED.load(Ordering::Relaxed),
        system: SYSTEM_IN_TICK.load(Ordering::Relaxed),
        carved: BUMP.load(Ordering::Relaxed),
    }
}

/// Whether `TickAllocator` is the process's global allocator.
pub fn installed() -> bool {
    INSTALLED.load(Ordering::Relaxed)
}

/// Reserves the pool's region now (outside any tick) when `TickAllocator` is installed; later
/// calls do nothing.
pub fn reserve() {
    if !installed() || STATE.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire).is_err() {
        return;
    }
    // SAFETY: the layout is valid and non-zero.
    let base = unsafe { System.alloc(Layout::from_size_align(REGION_BYTES, REGION_ALIGN).expect("valid layout")) };
    if base.is_null() {
        STATE.store(3, Ordering::Release);
    } else {
        BASE.store(base as usize, Ordering::Release);
        STATE.store(2, Ordering::Release);
    }
}

/// Runs `f` with this thread's allocations served from the pool (nesting is allowed).
pub fn in_tick<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = IN_TICK.try_with(|c| c.set(self.0));
        }
    }
    reserve();
    let _restore = Restore(IN_TICK.with(|c| c.replace(true)));
    f()
}

fn in_tick_now() -> bool {
    IN_TICK.try_with(Cell::get).unwrap_or(false)
}

/// Size class for a layout: the power of two at least as large as its size and alignment.
fn class_of(layout: Layout) -> Option<usize> {
    let size = layout.size().max(layout.align()).max(1 << MIN_CLASS_SHIFT);
    let shift = size.next_power_of_two().trailing_zeros();
    (shift <= MAX_CLASS_SHIFT && layout.align() <= REGION_ALIGN).then(|| (shift - MIN_CLASS_SHIFT) as usize)
}

fn class_size(class: usize) -> usize {
    1 << (class as u32 + MIN_CLASS_SHIFT)
}

fn in_region(ptr: *mut u8) -> bool {
    if STATE.load(Ordering::Acquire) != 2 {
        return false;
    }
    let base = BASE.load(Ordering::Relaxed);
    (base..base + REGION_BYTES).contains(&(ptr as usize))
}

fn lock() -> impl Drop {
    struct Unlock;
    impl Drop for Unlock {
        fn drop(&mut self) {
            LOCK.store(false, Ordering::Release);
        }
    }
    while LOCK.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
        std::hint::spin_loop();
    }
    Unlock
}

/// A block of `class` from the free list, or newly carved; null when the region is full.
fn pool_alloc(class: usize) -> *mut u8 {
    let _guard = lock();
    let head = FREE.0[class].get();
    if !head.is_null() {
        // SAFETY: free blocks store the next free block in their first word.
        FREE.0[class].set(unsafe { *(head as *mut *mut u8) });
        return head;
    }
    let size = class_size(class);
    let align = size.min(REGION_ALIGN);
    let offset = BUMP.load(Ordering::Relaxed).next_multiple_of(align);
    if offset + size > REGION_BYTES {
        return null_mut();
    }
    BUMP.store(offset + size, Ordering::Relaxed);
    (BASE.load(Ordering::Relaxed) + offset) as *mut u8
}

fn pool_free(ptr: *mut u8, class: usize) {
    let _guard = lock();
    // SAFETY: the block is at least 16 bytes, aligned, and no longer in use.
    unsafe { *(ptr as *mut *mut u8) = FREE.0[class].get() };
    FREE.0[class].set(ptr);
}

unsafe impl GlobalAlloc for TickAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !INSTALLED.load(Ordering::Relaxed) {
            INSTALLED.store(true, Ordering::Relaxed);
        }
        if in_tick_now() {
            if STATE.load(Ordering::Acquire) == 2
                && let Some(class) = class_of(layout)
            {
                let p = pool_alloc(class);
                if !p.is_null() {
                    POOLED.fetch_add(1, Ordering::Relaxed);
                    return p;
                }
            }
            SYSTEM_IN_TICK.fetch_add(1, Ordering::Relaxed);
        }
        count_system_call();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if in_region(ptr) {
            pool_free(ptr, class_of(layout).expect("pooled blocks have a class"));
        } else {
            count_system_call();
            // SAFETY: not a pool block, so System allocated it with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if in_tick_now() {
            // SAFETY: as alloc; the block is then zeroed over the layout's size.
            let p = unsafe { self.alloc(layout) };
            if !p.is_null() {
                unsafe { p.write_bytes(0, layout.size()) };
            }
            p
        } else {
            INSTALLED.store(true, Ordering::Relaxed);
            count_system_call();
            // SAFETY: forwarded with the caller's layout.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !in_region(ptr) && !in_tick_now() {
            count_system_call();
            // SAFETY: a system block resized outside a tick stays with the system allocator.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: the caller guarantees new_size and the alignment form a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if in_region(ptr) && class_of(layout) == class_of(new_layout) {
            return ptr;
        }
        // SAFETY: a fresh block, then the old contents, then the old block released.
        unsafe {
            let p = self.alloc(new_layout);
            if !p.is_null() {
                std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            p
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_size_and_alignment() {
        let l = |s, a| Layout::from_size_align(s, a).unwrap();
        assert_eq!(class_size(class_of(l(1, 1)).unwrap()), 16);
        assert_eq!(class_size(class_of(l(17, 8)).unwrap()), 32);
        assert_eq!(class_size(class_of(l(24, 64)).unwrap()), 64);
        assert_eq!(class_size(class_of(l(1 << 20, 16)).unwrap()), 1 << 20);
        assert_eq!(class_of(l((1 << 20) + 1, 16)), None);
        assert_eq!(class_of(l(64, 8192)), None);
    }
}
