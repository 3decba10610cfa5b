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

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Arena {
    next: Cell<usize>,
    end: Cell<usize>,
}

// SAFETY: wasm32-unknown-unknown without the atomics feature is single-threaded.
unsafe impl Sync for Arena {}

#[global_allocator]
static ARENA: Arena = Arena { next: Cell::new(0), end: Cell::new(0) };

unsafe extern "C" {
    /// Set by the linker: the first address after the stack and static data.
    static __heap_base: u8;
}

impl Arena {
    fn contains(&self, ptr: *mut u8) -> bool {
        (ptr as usize) < self.end.get()
    }
}

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
            _ => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !self.contains(ptr) {
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
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            unsafe {
                core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}
