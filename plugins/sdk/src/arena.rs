//! The plugin's global allocator: a bump arena over the memory the component starts with (built
//! with 2 MiB: 1 MiB of stack, the rest heap), then the standard allocator.
//!
//! Why: a plugin instance lives for one event. Rust's standard allocator grows linear memory on
//! its first allocation, and a grown memory must be shrunk back by the host after the call (an
//! mprotect and a TLB shootdown across cores), which was most of the cost of a small call. With
//! the arena, an event that needs less than about 1 MiB never grows memory. Freed arena memory
//! is reused only when it was the last allocation (the common push-then-pop and grow-in-place
//! patterns); past the arena, allocations go to the standard allocator as usual.
//!
//! Turn it off with `default-features = false` on the SDK to use your own `#[global_allocator]`.
//!
//! Single-threaded by construction: the state is two `Cell`s, read and written without
//! synchronisation. `lib.rs` compiles this module only for wasm32, and it refuses to compile
//! with the `atomics` target feature (shared memory, threads: `wasm32-wasip1-threads`, or
//! `-Ctarget-feature=+atomics`), so the `Sync` below cannot be wrong in a build that exists.
//! A threaded plugin turns the `arena` feature off.
//!
//! Where memory comes from: the arena owns `[__heap_base, initial memory size)`, which nothing
//! else allocates from; the standard allocator (dlmalloc on wasm32) gets its memory from
//! `memory.grow`, i.e. at or above the initial size. So an address below the arena's end is
//! the arena's and any other is the standard allocator's ([`Arena::contains`]).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Arena {
    next: Cell<usize>,
    end: Cell<usize>,
}

// The `Sync` below is sound only without threads: a build that may have them does not compile.
#[cfg(target_feature = "atomics")]
compile_error!(
    "hookyard-plugin-sdk's `arena` allocator is single-threaded and this target has atomics (threads): \
     build for wasm32-unknown-unknown without +atomics, or turn the SDK's `arena` feature off"
);

// SAFETY: the `Cell`s are never accessed from two threads, because there is one: this module
// is compiled only for wasm32 (the `cfg` on `mod arena` in lib.rs) and never with the `atomics`
// target feature (the check above), and such a module has no shared memory and cannot start
// a thread.
unsafe impl Sync for Arena {}

#[global_allocator]
static ARENA: Arena = Arena { next: Cell::new(0), end: Cell::new(0) };

// SAFETY: wasm-ld defines `__heap_base` in every wasm32 module it links, as a symbol whose
// address is the first byte after the stack and static data. The declaration's type does not
// matter: only its address is taken (`&raw const`), it is never read.
unsafe extern "C" {
    /// Set by the linker: the first address after the stack and static data.
    static __heap_base: u8;
}

impl Arena {
    /// Whether `ptr` is an arena block: below the arena's end, where the standard allocator
    /// never allocates (see the module doc). False for every pointer before the first `alloc`.
    fn contains(&self, ptr: *mut u8) -> bool {
        (ptr as usize) < self.end.get()
    }
}

// SAFETY: the `GlobalAlloc` contract. An arena block starts at an address rounded up to
// `layout.align()` and ends at or before the arena's end, inside memory the module owns and no
// other allocator uses; blocks never overlap, because `next` only moves past the last block
// and moves back only when that last block is freed or shrunk. Other requests go to `System`
// unchanged, and a pointer goes back to the allocator that made it (`contains`). Nothing here
// panics or unwinds: no address arithmetic overflows, as `next` stays at or below the arena's
// end (the initial memory: 2 MiB from build.sh, and below 2 GiB for any sane build) and a
// `Layout`'s size and alignment are at most `isize::MAX` (2 GiB on wasm32); `alloc` adds the
// size with `checked_add` all the same.
unsafe impl GlobalAlloc for Arena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if self.end.get() == 0 {
            // First call: the arena is the memory between the heap base and the initial end.
            self.next.set(&raw const __heap_base as usize);
            self.end.set(core::arch::wasm32::memory_size(0) * 65536);
        }
        let start = (self.next.get() + layout.align() - 1) & !(layout.align() - 1);
        match start.checked_add(layout.size()) {
            Some(end) if end <= self.end.get() => {
                self.next.set(end);
                start as *mut u8
            }
            // The standard allocator's memory comes from memory.grow, above the arena's end.
            // SAFETY: `layout` is the caller's, of non-zero size as `alloc`'s contract requires.
            _ => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !self.contains(ptr) {
            // SAFETY: not an arena block, so `System` allocated it (the only other allocator
            // whose blocks this one hands out), with `layout` (the caller's contract).
            unsafe { System.dealloc(ptr, layout) }
        } else if ptr as usize + layout.size() == self.next.get() {
            self.next.set(ptr as usize);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let at = ptr as usize;
        if self.contains(ptr) && at + layout.size() == self.next.get() && at + new_size <= self.end.get() {
            self.next.set(at + new_size); // the last allocation grows or shrinks in place
            return ptr;
        }
        if !self.contains(ptr) {
            // SAFETY: not an arena block, so `System` allocated it with `layout`; `new_size` is
            // the caller's, non-zero and not overflowing when rounded (`realloc`'s contract).
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: `layout.align()` is a valid alignment (it comes from a `Layout`), and
        // `realloc`'s contract says `new_size` rounded up to it does not overflow `isize`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: `new_layout` has a non-zero size (`realloc`'s contract: `new_size > 0`).
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: `ptr` is a live arena block of `layout.size()` bytes (the caller's) and
            // `new` a fresh one of `new_size`: both valid for the copied length, and disjoint,
            // since `ptr`'s block is still allocated while `new` is carved out and freed only
            // after the copy, with the layout it was allocated with.
            unsafe {
                core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}
