//! Pseudo-terminals: allocation, terminal modes from `pty-req`, window size and asynchronous
//! I/O on the master side.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use russh::Pty;
use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;
use rustix::termios::{
    ControlModes, InputModes, LocalModes, OptionalActions, OutputModes, SpecialCodeIndex, Termios,
    Winsize,
};
use tokio::io::unix::AsyncFd;

/// Terminal settings requested by the client with `pty-req`.
#[derive(Debug, Clone)]
pub struct PtyRequest {
    /// Value for `TERM`.
    pub term: String,
    /// Columns and rows, and the size in pixels.
    pub size: WindowSize,
    /// Encoded terminal modes (RFC 4254 section 8).
    pub modes: Vec<(Pty, u32)>,
}

/// Terminal window size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSize {
    /// Columns.
    pub columns: u32,
    /// Rows.
    pub rows: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl WindowSize {
    fn to_winsize(self) -> Winsize {
        let clamp = |value: u32| u16::try_from(value).unwrap_or(u16::MAX);
        Winsize {
            ws_row: clamp(self.rows),
            ws_col: clamp(self.columns),
            ws_xpixel: clamp(self.width),
            ws_ypixel: clamp(self.height),
        }
    }
}

/// An allocated pseudo-terminal pair.
pub struct PtyPair {
    /// Master side, kept by the server.
    pub master: OwnedFd,
    /// Slave side, given to the child as its controlling terminal.
    pub slave: OwnedFd,
    /// Path of the slave device, for `SSH_TTY`.
    pub slave_path: String,
}

/// Opens a pseudo-terminal with the requested size and modes.
pub fn open(request: &PtyRequest) -> io::Result<PtyPair> {
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut termios = rustix::termios::tcgetattr(&slave)?;
    apply_modes(&mut termios, &request.modes);
    rustix::termios::tcsetattr(&slave, OptionalActions::Now, &termios)?;
    rustix::termios::tcsetwinsize(&master, request.size.to_winsize())?;
    Ok(PtyPair {
        master,
        slave,
        slave_path: name.to_string_lossy().into_owned(),
    })
}

/// Changes the window size of the terminal whose master is `master`; the kernel sends
/// `SIGWINCH` to the foreground process group.
pub fn resize(master: impl AsFd, size: WindowSize) -> io::Result<()> {
    rustix::termios::tcsetwinsize(master, size.to_winsize())?;
    Ok(())
}

/// Applies RFC 4254 terminal modes to `termios`; unknown or unsupported modes are ignored.
pub fn apply_modes(termios: &mut Termios, modes: &[(Pty, u32)]) {
    for &(mode, value) in modes {
        let on = value != 0;
        if let Some(index) = special_code(mode) {
            termios.special_codes[index] = u8::try_from(value).unwrap_or(0);
        } else if let Some(flag) = input_flag(mode) {
            termios.input_modes.set(flag, on);
        } else if let Some(flag) = local_flag(mode) {
            termios.local_modes.set(flag, on);
        } else if let Some(flag) = output_flag(mode) {
            termios.output_modes.set(flag, on);
        } else {
            match mode {
                Pty::CS7 if on => {
                    termios.control_modes.remove(ControlModes::CSIZE);
                    termios.control_modes.insert(ControlModes::CS7);
                }
                Pty::CS8 if on => {
                    termios.control_modes.remove(ControlModes::CSIZE);
                    termios.control_modes.insert(ControlModes::CS8);
                }
                Pty::PARENB => termios.control_modes.set(ControlModes::PARENB, on),
                Pty::PARODD => termios.control_modes.set(ControlModes::PARODD, on),
                Pty::TTY_OP_ISPEED => {
                    let _ = termios.set_input_speed(value);
                }
                Pty::TTY_OP_OSPEED => {
                    let _ = termios.set_output_speed(value);
                }
                _ => {}
            }
        }
    }
}

fn special_code(mode: Pty) -> Option<SpecialCodeIndex> {
    Some(match mode {
        Pty::VINTR => SpecialCodeIndex::VINTR,
        Pty::VQUIT => SpecialCodeIndex::VQUIT,
        Pty::VERASE => SpecialCodeIndex::VERASE,
        Pty::VKILL => SpecialCodeIndex::VKILL,
        Pty::VEOF => SpecialCodeIndex::VEOF,
        Pty::VEOL => SpecialCodeIndex::VEOL,
        Pty::VEOL2 => SpecialCodeIndex::VEOL2,
        Pty::VSTART => SpecialCodeIndex::VSTART,
        Pty::VSTOP => SpecialCodeIndex::VSTOP,
        Pty::VSUSP => SpecialCodeIndex::VSUSP,
        Pty::VREPRINT => SpecialCodeIndex::VREPRINT,
        Pty::VWERASE => SpecialCodeIndex::VWERASE,
        Pty::VLNEXT => SpecialCodeIndex::VLNEXT,
        Pty::VDISCARD => SpecialCodeIndex::VDISCARD,
        _ => return None,
    })
}

fn input_flag(mode: Pty) -> Option<InputModes> {
    Some(match mode {
        Pty::IGNPAR => InputModes::IGNPAR,
        Pty::PARMRK => InputModes::PARMRK,
        Pty::INPCK => InputModes::INPCK,
        Pty::ISTRIP => InputModes::ISTRIP,
        Pty::INLCR => InputModes::INLCR,
        Pty::IGNCR => InputModes::IGNCR,
        Pty::ICRNL => InputModes::ICRNL,
        Pty::IUCLC => InputModes::IUCLC,
        Pty::IXON => InputModes::IXON,
        Pty::IXANY => InputModes::IXANY,
        Pty::IXOFF => InputModes::IXOFF,
        Pty::IMAXBEL => InputModes::IMAXBEL,
        Pty::IUTF8 => InputModes::IUTF8,
        _ => return None,
    })
}

fn local_flag(mode: Pty) -> Option<LocalModes> {
    Some(match mode {
        Pty::ISIG => LocalModes::ISIG,
        Pty::ICANON => LocalModes::ICANON,
        Pty::XCASE => LocalModes::XCASE,
        Pty::ECHO => LocalModes::ECHO,
        Pty::ECHOE => LocalModes::ECHOE,
        Pty::ECHOK => LocalModes::ECHOK,
        Pty::ECHONL => LocalModes::ECHONL,
        Pty::NOFLSH => LocalModes::NOFLSH,
        Pty::TOSTOP => LocalModes::TOSTOP,
        Pty::IEXTEN => LocalModes::IEXTEN,
        Pty::ECHOCTL => LocalModes::ECHOCTL,
        Pty::ECHOKE => LocalModes::ECHOKE,
        Pty::PENDIN => LocalModes::PENDIN,
        _ => return None,
    })
}

fn output_flag(mode: Pty) -> Option<OutputModes> {
    Some(match mode {
        Pty::OPOST => OutputModes::OPOST,
        Pty::OLCUC => OutputModes::OLCUC,
        Pty::ONLCR => OutputModes::ONLCR,
        Pty::OCRNL => OutputModes::OCRNL,
        Pty::ONOCR => OutputModes::ONOCR,
        Pty::ONLRET => OutputModes::ONLRET,
        _ => return None,
    })
}

/// Non-blocking, tokio-driven access to a pty master.
pub struct AsyncPty {
    fd: AsyncFd<OwnedFd>,
}

impl AsyncPty {
    /// Wraps a master descriptor, switching it to non-blocking mode.
    pub fn new(master: OwnedFd) -> io::Result<Self> {
        let flags = rustix::fs::fcntl_getfl(&master)?;
        rustix::fs::fcntl_setfl(&master, flags | OFlags::NONBLOCK)?;
        Ok(Self {
            fd: crate::sys::register_fd(master)?,
        })
    }

    /// Returns the master descriptor.
    pub fn master(&self) -> &OwnedFd {
        self.fd.get_ref()
    }

    /// Reads output; `Ok(0)` means every slave descriptor is closed (the kernel reports EIO).
    pub async fn read(&self, buffer: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| read_master(fd.get_ref(), buffer)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data` as terminal input.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| rustix::io::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(written)) => data = &data[written..],
                Ok(Err(error)) => return Err(error),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

fn read_master(fd: &OwnedFd, buffer: &mut [u8]) -> io::Result<usize> {
    match rustix::io::read(fd, buffer) {
        Ok(count) => Ok(count),
        // Linux returns EIO on the master once the last slave descriptor is closed.
        Err(rustix::io::Errno::IO) => Ok(0),
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_applied() {
        let request = PtyRequest {
            term: "xterm".into(),
            size: WindowSize {
                columns: 80,
                rows: 24,
                width: 0,
                height: 0,
            },
            modes: vec![
                (Pty::ECHO, 0),
                (Pty::VINTR, 3),
                (Pty::ICRNL, 1),
                (Pty::OPOST, 1),
            ],
        };
        let pair = open(&request).expect("open pty");
        let termios = rustix::termios::tcgetattr(&pair.slave).expect("tcgetattr");
        assert!(!termios.local_modes.contains(LocalModes::ECHO));
        assert_eq!(termios.special_codes[SpecialCodeIndex::VINTR], 3);
        assert!(termios.input_modes.contains(InputModes::ICRNL));
        let size = rustix::termios::tcgetwinsize(&pair.slave).expect("winsize");
        assert_eq!((size.ws_col, size.ws_row), (80, 24));
        resize(
            &pair.master,
            WindowSize {
                columns: 120,
                rows: 40,
                width: 0,
                height: 0,
            },
        )
        .expect("resize");
        let size = rustix::termios::tcgetwinsize(&pair.slave).expect("winsize");
        assert_eq!((size.ws_col, size.ws_row), (120, 40));
        assert!(pair.slave_path.starts_with("/dev/pts/"));
    }
}
