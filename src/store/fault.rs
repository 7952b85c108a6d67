//! Containing what LMDB does when a page of the data file is damaged in a way the header
//! check cannot see: it follows a page number into the map past the file's end (SIGBUS) or
//! past the map (SIGSEGV), and the process dies without a word.
//!
//! [`contain_faults`] installs a handler for both signals that writes one fixed line saying
//! what happened and what to do, then exits with the caller's status: the operator's shell gets
//! a message and an exit code, and systemd a status it can be told not to restart on. The
//! handler only calls `write(2)` and `_exit(2)`, both async-signal-safe. It is installed before
//! the coroutine runtime starts: the runtime's own handler (stack guard pages) passes every
//! fault that is not a stack overflow back to it.

use std::sync::atomic::{AtomicI32, Ordering};

/// The exit status the handler ends the process with.
static FAULT_EXIT: AtomicI32 = AtomicI32::new(2);

const BUS_MESSAGE: &[u8] = b"didgate: error: LMDB read a page of data.mdb that is not there \
(SIGBUS): the store is damaged. Restore the last backup (docs/operations.md, \"A damaged store\").\n";

const SEGV_MESSAGE: &[u8] = b"didgate: error: invalid memory access (SIGSEGV), most likely LMDB \
following a damaged page of data.mdb. Run `didgate check`; restore the last backup \
(docs/operations.md, \"A damaged store\").\n";

extern "C" fn on_fault(signal: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let message = if signal == libc::SIGBUS {
        BUS_MESSAGE
    } else {
        SEGV_MESSAGE
    };
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the message is a static byte string.
    unsafe {
        libc::write(libc::STDERR_FILENO, message.as_ptr().cast(), message.len());
        libc::_exit(FAULT_EXIT.load(Ordering::Relaxed));
    }
}

/// Turns a SIGBUS or SIGSEGV into one line on stderr and exit status `exit_code`. Call once,
/// early in `main`, before any thread or coroutine starts.
pub fn contain_faults(exit_code: i32) {
    FAULT_EXIT.store(exit_code, Ordering::Relaxed);
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler is an
    // `extern "C"` fn of the SA_SIGINFO signature; the pointers are valid for the calls.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_fault as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        for signal in [libc::SIGBUS, libc::SIGSEGV] {
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}
