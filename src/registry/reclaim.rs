//! Releasing `Arc` references that lock-free structures hold as raw pointers: the release is
//! deferred with crossbeam-epoch until no reader that may have loaded the pointer is still
//! pinned. One helper for the topic log and the subscriber set.

use std::sync::Arc;

use crossbeam_epoch::Guard;

/// Drops the `Arc<T>` reference `ptr` stands for once every thread pinned now has unpinned.
///
/// # Safety
///
/// `ptr` must come from [`Arc::into_raw`], the caller must own that reference (nobody else will
/// release it), and it must be unreachable for readers that pin after this call.
pub(super) unsafe fn defer_release<T: Send + Sync + 'static>(guard: &Guard, ptr: *const T) {
    let ptr = SendPtr(ptr);
    // SAFETY: the closure runs once every reader that may hold `ptr` has unpinned, and the
    // caller hands over the one reference it owns, so it is released exactly once.
    unsafe { guard.defer_unchecked(move || drop(Arc::from_raw(ptr.into_inner()))) };
}

/// A raw pointer moved into a deferred destructor, which runs on whichever thread collects it.
struct SendPtr<T>(*const T);

impl<T> SendPtr<T> {
    fn into_inner(self) -> *const T {
        self.0
    }
}

// SAFETY: `T` is `Send + Sync`; the pointer is one `Arc` reference moved to the deferred drop.
unsafe impl<T: Send + Sync> Send for SendPtr<T> {}
