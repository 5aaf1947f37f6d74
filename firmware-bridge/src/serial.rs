//! Serial ports (a UART, USB CDC, or a pseudo-terminal) in raw mode, and pseudo-terminal pairs.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Baud rates a port can be opened at.
pub const BAUDS: &[(u32, libc::speed_t)] = &[
    (9600, libc::B9600),
    (19200, libc::B19200),
    (38400, libc::B38400),
    (57600, libc::B57600),
    (115_200, libc::B115200),
    (230_400, libc::B230400),
    (460_800, libc::B460800),
    (500_000, libc::B500000),
    (921_600, libc::B921600),
    (1_000_000, libc::B1000000),
    (1_500_000, libc::B1500000),
    (2_000_000, libc::B2000000),
    (3_000_000, libc::B3000000),
    (4_000_000, libc::B4000000),
];

/// Why a port could not be opened.
#[derive(Debug)]
pub struct PortError(pub String);

impl std::fmt::Display for PortError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PortError {}

/// An open serial port: non-blocking, raw, exclusive.
pub struct Port {
    file: File,
}

/// What a read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// This many bytes.
    Bytes(usize),
    /// Nothing within the timeout.
    Idle,
}

fn termios_of(fd: i32, what: &Path) -> Result<libc::termios, PortError> {
    // SAFETY: termios is plain data; tcgetattr fills it or fails.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        return Err(PortError(format!(
            "{} is not a serial port ({}); give the tty of the UART or USB CDC device, e.g. /dev/ttyACM0, or the pty `bridge sim-mcu` prints",
            what.display(),
            io::Error::last_os_error()
        )));
    }
    Ok(t)
}

/// Puts `fd` in raw mode (no echo, no line editing, no translation, 8N1) at `speed`.
fn make_raw(fd: i32, speed: libc::speed_t, what: &Path) -> Result<(), PortError> {
    let mut t = termios_of(fd, what)?;
    // SAFETY: `t` came from tcgetattr on this fd.
    unsafe {
        libc::cfmakeraw(&mut t);
        t.c_cflag |= libc::CLOCAL | libc::CREAD;
        t.c_cc[libc::VMIN] = 0;
        t.c_cc[libc::VTIME] = 0;
        libc::cfsetispeed(&mut t, speed);
        libc::cfsetospeed(&mut t, speed);
        if libc::tcsetattr(fd, libc::TCSANOW, &t) != 0 {
            return Err(PortError(format!("cannot configure {}: {}", what.display(), io::Error::last_os_error())));
        }
    }
    Ok(())
}

impl Port {
    /// Opens `path` at `baud`, raw, and flushes what was waiting in its input.
    pub fn open(path: &Path, baud: u32) -> Result<Port, PortError> {
        let speed = BAUDS.iter().find(|(b, _)| *b == baud).map(|(_, s)| *s).ok_or_else(|| {
            let list: Vec<String> = BAUDS.iter().map(|(b, _)| b.to_string()).collect();
            PortError(format!("--baud {baud} is not a supported rate; use one of {}", list.join(", ")))
        })?;
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| PortError(format!("{} contains a NUL byte", path.display())))?;
        // SAFETY: a valid C string; the fd is owned by the File below.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            let hint = match e.kind() {
                io::ErrorKind::NotFound => "; is the controller plugged in (or `bridge sim-mcu` running)?",
                io::ErrorKind::PermissionDenied => {
                    "; add the user to the `dialout` group, or run with access to the port"
                }
                io::ErrorKind::ResourceBusy => "; another program (another bridge?) holds it exclusively",
                _ => "",
            };
            return Err(PortError(format!("cannot open {}: {e}{hint}", path.display())));
        }
        // SAFETY: fd is a fresh, open descriptor nobody else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        make_raw(fd, speed, path)?;
        // SAFETY: plain ioctls on our own descriptor. TIOCEXCL keeps a second bridge off the port;
        // the flush drops bytes the controller sent while nobody listened.
        unsafe {
            libc::ioctl(fd, libc::TIOCEXCL);
            libc::tcflush(fd, libc::TCIFLUSH);
        }
        Ok(Port { file })
    }

    /// Waits up to `timeout` for bytes and reads them into `buf`. An error means the link is gone
    /// (the device was unplugged, or the other end of a pty closed).
    pub fn read(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<ReadOutcome> {
        wait_readable(&self.file, timeout)?;
        read_some(&mut self.file, buf)
    }

    /// Writes a whole frame; `Ok(false)` when the port's output buffer is full (the frame was not
    /// sent, or only a part of it: the next frame's leading delimiter ends that part).
    pub fn write_frame(&mut self, frame: &[u8]) -> io::Result<bool> {
        write_frame(&mut self.file, frame)
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        // SAFETY: a plain ioctl on our own descriptor. A pty whose controller end stays open would
        // otherwise keep refusing the next bridge.
        unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TIOCNXCL) };
    }
}

/// Waits until `f` is readable or `timeout` passes (µs resolution); a hang-up is an error.
pub fn wait_readable(f: &File, timeout: Duration) -> io::Result<()> {
    let mut p = libc::pollfd { fd: f.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ts = libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: timeout.subsec_nanos() as _ };
    // SAFETY: one valid pollfd and a valid timespec.
    let r = unsafe { libc::ppoll(&mut p, 1, &ts, std::ptr::null()) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted { Ok(()) } else { Err(e) };
    }
    if r > 0 && p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 && p.revents & libc::POLLIN == 0 {
        return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the port hung up"));
    }
    Ok(())
}

/// Reads what is there without blocking.
pub fn read_some(f: &mut File, buf: &mut [u8]) -> io::Result<ReadOutcome> {
    match f.read(buf) {
        // A raw tty with VMIN = VTIME = 0 reads 0 bytes when there are none; a hang-up shows in
        // poll (POLLHUP) or as EIO instead.
        Ok(0) => Ok(ReadOutcome::Idle),
        Ok(n) => Ok(ReadOutcome::Bytes(n)),
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => Ok(ReadOutcome::Idle),
        Err(e) => Err(e),
    }
}

/// Writes a whole frame to a non-blocking file; `Ok(false)` when it did not all fit.
pub fn write_frame(f: &mut File, frame: &[u8]) -> io::Result<bool> {
    match f.write(frame) {
        Ok(n) => Ok(n == frame.len()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

/// A pseudo-terminal: the controller's end (`master`), and the path a host opens as its port.
pub struct Pty {
    /// The controller's end, non-blocking.
    pub master: File,
    /// The port's path, e.g. `/dev/pts/5`.
    pub path: PathBuf,
    // Held open so the master never sees a hang-up while no host is connected, and so the raw
    // mode set here stays in force for the host.
    _slave: File,
}

impl Pty {
    /// Opens a pair, both ends raw.
    pub fn open() -> io::Result<Pty> {
        let (mut master, mut slave) = (-1, -1);
        // SAFETY: openpty writes two descriptors; the name buffer is not used.
        let r =
            unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
        if r != 0 {
            return Err(io::Error::other(format!(
                "cannot open a pseudo-terminal: {}; is /dev/pts mounted?",
                io::Error::last_os_error()
            )));
        }
        // SAFETY: both descriptors are fresh and ours.
        let (master_f, slave_f) = unsafe { (File::from_raw_fd(master), File::from_raw_fd(slave)) };
        let path = std::fs::read_link(format!("/proc/self/fd/{slave}"))?;
        make_raw(slave, libc::B115200, &path).map_err(|e| io::Error::other(e.0))?;
        // SAFETY: plain fcntls on our own descriptors.
        unsafe {
            for fd in [master, slave] {
                libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
            }
            let flags = libc::fcntl(master, libc::F_GETFL);
            libc::fcntl(master, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        Ok(Pty { master: master_f, path, _slave: slave_f })
    }
}
