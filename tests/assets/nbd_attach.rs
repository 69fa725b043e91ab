//! nbd-attach: connects a Linux NBD device to an NBD server, for the lab's
//! initramfs (busybox has no nbd-client). Built by the lab with plain `rustc`
//! as a static binary (no crates): the fixed-newstyle handshake with
//! NBD_OPT_EXPORT_NAME (NBD protocol doc, "Fixed newstyle negotiation"), then
//! the kernel's ioctls (include/uapi/linux/nbd.h): SET_BLKSIZE, SET_SIZE,
//! SET_FLAGS, SET_SOCK and DO_IT in a child that stays behind.
//!
//! Usage: `nbd-attach HOST PORT EXPORT /dev/nbdN` or `nbd-attach -d /dev/nbdN`.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

extern "C" {
    fn ioctl(fd: i32, request: u64, ...) -> i32;
    fn fork() -> i32;
    fn setsid() -> i32;
}

const NBD_SET_SOCK: u64 = 0xab00;
const NBD_SET_BLKSIZE: u64 = 0xab01;
const NBD_SET_SIZE: u64 = 0xab02;
const NBD_DO_IT: u64 = 0xab03;
const NBD_CLEAR_SOCK: u64 = 0xab04;
const NBD_DISCONNECT: u64 = 0xab08;
const NBD_SET_FLAGS: u64 = 0xab0a;

const NBDMAGIC: &[u8; 8] = b"NBDMAGIC";
const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const NBD_OPT_EXPORT_NAME: u32 = 1;

fn die(msg: &str) -> ! {
    eprintln!("nbd-attach: {msg}");
    std::process::exit(1)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 3 && args[1] == "-d" {
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&args[2])
            .unwrap_or_else(|e| die(&format!("{}: {e}", args[2])));
        // SAFETY: NBD ioctls on an open NBD device, no pointer arguments.
        unsafe {
            ioctl(dev.as_raw_fd(), NBD_DISCONNECT);
            ioctl(dev.as_raw_fd(), NBD_CLEAR_SOCK);
        }
        return;
    }
    if args.len() != 5 {
        die("usage: nbd-attach HOST PORT EXPORT /dev/nbdN | nbd-attach -d /dev/nbdN");
    }
    let (host, port, export, devpath) = (&args[1], &args[2], &args[3], &args[4]);
    let mut s = TcpStream::connect(format!("{host}:{port}"))
        .unwrap_or_else(|e| die(&format!("connect {host}:{port}: {e}")));
    let _ = s.set_nodelay(true);
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello)
        .unwrap_or_else(|e| die(&format!("reading the greeting: {e}")));
    if &hello[..8] != NBDMAGIC || u64::from_be_bytes(hello[8..16].try_into().unwrap()) != IHAVEOPT
    {
        die("not a newstyle NBD server");
    }
    let sflags = u16::from_be_bytes([hello[16], hello[17]]);
    if sflags & FLAG_FIXED_NEWSTYLE == 0 {
        die("server does not do fixed newstyle");
    }
    let cflags = u32::from(sflags & (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES));
    let mut msg = Vec::new();
    msg.extend_from_slice(&cflags.to_be_bytes());
    msg.extend_from_slice(&IHAVEOPT.to_be_bytes());
    msg.extend_from_slice(&NBD_OPT_EXPORT_NAME.to_be_bytes());
    msg.extend_from_slice(&(export.len() as u32).to_be_bytes());
    msg.extend_from_slice(export.as_bytes());
    s.write_all(&msg)
        .unwrap_or_else(|e| die(&format!("sending the export name: {e}")));
    let mut info = [0u8; 10];
    s.read_exact(&mut info)
        .unwrap_or_else(|e| die(&format!("export {export:?} refused: {e}")));
    let size = u64::from_be_bytes(info[..8].try_into().unwrap());
    let tflags = u16::from_be_bytes([info[8], info[9]]);
    if cflags & u32::from(FLAG_NO_ZEROES) == 0 {
        let mut zeroes = [0u8; 124];
        s.read_exact(&mut zeroes)
            .unwrap_or_else(|e| die(&format!("reading padding: {e}")));
    }
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open(devpath)
        .unwrap_or_else(|e| die(&format!("{devpath}: {e}")));
    let fd = dev.as_raw_fd();
    // SAFETY: NBD ioctls on an open NBD device with integer arguments.
    unsafe {
        if ioctl(fd, NBD_SET_BLKSIZE, 512u64) < 0
            || ioctl(fd, NBD_SET_SIZE, size) < 0
            || ioctl(fd, NBD_SET_FLAGS, u64::from(tflags)) < 0
            || ioctl(fd, NBD_SET_SOCK, s.as_raw_fd() as u64) < 0
        {
            die(&format!("NBD ioctl: {}", std::io::Error::last_os_error()));
        }
        match fork() {
            0 => {
                setsid();
                // Serves the device until NBD_DISCONNECT or the socket dies.
                ioctl(fd, NBD_DO_IT);
                ioctl(fd, NBD_CLEAR_SOCK);
                std::process::exit(0);
            }
            pid if pid < 0 => die("fork failed"),
            _ => {}
        }
    }
    let name = devpath.rsplit('/').next().unwrap();
    let sys = format!("/sys/block/{name}/size");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let sectors: u64 = std::fs::read_to_string(&sys)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if sectors > 0 {
            println!("nbd-attach: {devpath} is {export:?} on {host}:{port}, {size} bytes");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    die(&format!("{devpath} did not come up"));
}
