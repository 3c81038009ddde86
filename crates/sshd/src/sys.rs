//! The two operations that need `unsafe`: code run between `fork` and `exec`, and registering
//! a descriptor with tokio's reactor.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::OwnedFd;

use tokio::io::unix::AsyncFd;
use tokio::process::Command;

/// Makes the child a session leader with its standard input (the pty slave, already in place
/// when the hook runs) as controlling terminal, as `login_tty(3)` does.
pub fn start_session_with_controlling_tty(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before `exec`. It only makes the `setsid`
    // and `ioctl(TIOCSCTTY)` system calls through rustix, which are async-signal-safe, do not
    // allocate, and touch no lock or state shared with the parent's other threads.
    unsafe {
        command.pre_exec(|| {
            rustix::process::setsid()?;
            rustix::process::ioctl_tiocsctty(rustix::stdio::stdin())?;
            Ok(())
        });
    }
}

/// Registers an owned descriptor with the reactor.
pub fn register_fd(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: `OwnedFd` owns an open descriptor, closes it only when dropped (which happens
    // only when the `AsyncFd` is dropped), and `as_raw_fd` always returns that descriptor.
    unsafe { AsyncFd::register(fd).map_err(|error| error.into_parts().1) }
}
