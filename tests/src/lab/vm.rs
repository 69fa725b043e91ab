//! A QEMU guest of the lab: network boot from a tap on the lab bridge with
//! Debian's iPXE option ROM, console on a serial log file, bounded run time,
//! killed by PID.

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use super::{contains, Accel, Lab};
use crate::require;

/// Whether process `pid` exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// A child killed (by PID) and reaped when dropped.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The emulated network card and the firmware that boots from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NicModel {
    /// SeaBIOS with the e1000's iPXE option ROM from `ipxe-qemu`.
    E1000,
    /// SeaBIOS with the virtio-net iPXE option ROM.
    Virtio,
    /// UEFI (OVMF) with its own virtio-net driver and PXE client, no option
    /// ROM: the first DHCP comes from plain UEFI PXE, not from iPXE.
    UefiVirtio,
}

impl NicModel {
    /// (device, option ROM or "" for none)
    fn device(self) -> (&'static str, &'static str) {
        match self {
            NicModel::E1000 => ("e1000", "/usr/lib/ipxe/qemu/pxe-e1000.rom"),
            NicModel::Virtio => ("virtio-net-pci", "/usr/lib/ipxe/qemu/pxe-virtio.rom"),
            NicModel::UefiVirtio => ("virtio-net-pci", ""),
        }
    }
}

/// OVMF's firmware image (Debian package ovmf).
pub const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

/// One booting guest. It borrows the lab, so it always goes before the
/// namespace and the servers.
#[derive(Debug)]
pub struct Vm<'a> {
    pub lab: &'a Lab,
    pub name: String,
    pub serial: PathBuf,
    proc: KillOnDrop,
    pub started: Instant,
}

/// How long a single wait for a guest may take at most, whatever the caller
/// asks, so a wedged guest cannot hang the suite.
const HARD_LIMIT: Duration = Duration::from_secs(600);

impl<'a> Vm<'a> {
    /// Starts QEMU inside the lab namespace on a new tap, booting from the
    /// network (`-boot n`) with MAC `mac`.
    pub fn start(lab: &'a Lab, name: &str, mac: [u8; 6], nic: NicModel) -> Self {
        let qemu = require("qemu-system-x86_64", "qemu-system-x86");
        let tap = lab.new_tap();
        let (dev, rom) = nic.device();
        assert!(
            rom.is_empty() || std::path::Path::new(rom).exists(),
            "MISSING: {rom} (Debian package ipxe-qemu)"
        );
        static BOOTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = BOOTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let serial = lab.path(&format!("serial-{name}-{n}.log"));
        let qlog = lab.path(&format!("qemu-{name}-{n}.log"));
        let mac_s = mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        let accel = match lab.accel {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        };
        let mut cmd = lab.ns.command(qemu);
        // The iPXE console reaches the file only with exactly this trio.
        cmd.args(["-nographic", "-monitor", "none"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .args([
                "-accel",
                accel,
                "-m",
                "256",
                "-boot",
                "n",
                "-no-user-config",
            ])
            .args(["-name", name])
            .arg("-netdev")
            .arg(format!("tap,id=n0,ifname={tap},script=no,downscript=no"))
            .arg("-device")
            .arg(format!("{dev},netdev=n0,mac={mac_s},romfile={rom}"));
        if nic == NicModel::UefiVirtio {
            assert!(
                std::path::Path::new(OVMF).exists(),
                "MISSING: {OVMF} (Debian package ovmf)"
            );
            cmd.args(["-bios", OVMF]);
        }
        let f = std::fs::File::create(&qlog).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("starting QEMU for {name}: {e}"));
        eprintln!(
            "LAB VM {name}: mac {mac_s} on {tap}, pid {}, serial {}",
            child.id(),
            serial.display()
        );
        Vm {
            lab,
            name: name.to_owned(),
            serial,
            proc: KillOnDrop(child),
            started: Instant::now(),
        }
    }

    /// The serial output so far (lossy UTF-8, escape sequences kept).
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial).unwrap_or_default()).into_owned()
    }

    /// Waits until the serial log contains `marker`; returns the log. Panics
    /// with the log and the server logs on timeout (scaled for TCG), when QEMU
    /// exits first, or when a `fail` string shows up.
    pub fn wait_for(&mut self, marker: &str, timeout: Duration, fail: &[&str]) -> String {
        let timeout = self.lab.accel.timeout(timeout).min(HARD_LIMIT);
        let start = Instant::now();
        loop {
            let bytes = std::fs::read(&self.serial).unwrap_or_default();
            if contains(&bytes, marker.as_bytes()) {
                eprintln!(
                    "LAB VM {}: `{marker}` after {:.1} s",
                    self.name,
                    self.started.elapsed().as_secs_f64()
                );
                return String::from_utf8_lossy(&bytes).into_owned();
            }
            if let Some(f) = fail.iter().find(|f| contains(&bytes, f.as_bytes())) {
                self.die(&format!("the guest reported `{f}`"));
            }
            if let Ok(Some(st)) = self.proc.0.try_wait() {
                // Read once more: the marker may have been written just before.
                let bytes = std::fs::read(&self.serial).unwrap_or_default();
                if contains(&bytes, marker.as_bytes()) {
                    return String::from_utf8_lossy(&bytes).into_owned();
                }
                self.die(&format!("QEMU exited ({st}) before `{marker}`"));
            }
            if start.elapsed() > timeout {
                self.die(&format!(
                    "no `{marker}` on the serial port after {timeout:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn die(&self, why: &str) -> ! {
        let qlog = std::fs::read_to_string(
            self.serial.with_file_name(
                self.serial
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .replacen("serial-", "qemu-", 1),
            ),
        )
        .unwrap_or_default();
        panic!(
            "LAB VM {}: {why}\n---- serial log ({}) ----\n{}\n---- qemu ----\n{qlog}\n{}",
            self.name,
            self.serial.display(),
            printable(&self.log()),
            self.lab.daemon_logs()
        );
    }

    /// Waits until QEMU exits by itself (the guest powered off).
    pub fn wait_exit(&mut self, timeout: Duration) {
        let timeout = self.lab.accel.timeout(timeout).min(HARD_LIMIT);
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.proc.0.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.die("the guest did not power off");
    }

    /// Kills QEMU now (by PID).
    pub fn kill(self) {
        drop(self);
    }
}

/// The log with terminal escape sequences removed, for failure messages.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}
