//! Linux AF_PACKET raw sockets (packet(7)) for AoE frames: one bound socket per
//! interface, a classic BPF filter so only EtherType 0x88A2 reaches userspace,
//! and 802.1Q tags recovered from `PACKET_AUXDATA` (the kernel strips the tag
//! before packet sockets see the frame).
//!
//! Why AF_PACKET through `libc` and not `pnet_datalink`: we need
//! `PACKET_AUXDATA` (VLAN tags), `PACKET_IGNORE_OUTGOING`, a BPF filter and
//! receiving into caller-owned buffers with no per-frame allocation; pnet's
//! channel hides all four.

use std::ffi::CString;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use anyboot_wire::aoe::{Mac, ETHERTYPE_AOE, ETHERTYPE_VLAN};

const SOL_PACKET: libc::c_int = 263;
const PACKET_AUXDATA: libc::c_int = 8;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
const PACKET_OUTGOING: u8 = 4;

/// Most frames one batched receive or send handles.
pub const BATCH: usize = 16;

/// `struct tpacket_auxdata` from `<linux/if_packet.h>`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct TpacketAuxdata {
    tp_status: u32,
    tp_len: u32,
    tp_snaplen: u32,
    tp_mac: u16,
    tp_net: u16,
    tp_vlan_tci: u16,
    tp_vlan_tpid: u16,
}

/// Errors opening a raw socket.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error(
        "opening a raw AF_PACKET socket needs CAP_NET_RAW (run as root or grant the \
         capability: setcap cap_net_raw+ep <binary>): {0}"
    )]
    Permission(io::Error),
    #[error("no network interface named `{0}`")]
    NoInterface(String),
    #[error("interface `{name}`: {source}")]
    Io { name: String, source: io::Error },
}

/// What the receive side wants to see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// Every AoE frame, VLAN-tagged ones included (binds `ETH_P_ALL` plus a BPF
    /// filter: sockets bound to `ETH_P_AOE` lose the tag of frames for VLANs
    /// that have no VLAN interface).
    AllVlans,
    /// Untagged AoE frames only (binds `ETH_P_AOE`).
    AoeOnly,
}

/// A raw socket bound to one interface.
#[derive(Debug)]
pub struct RawSocket {
    fd: OwnedFd,
    pub name: String,
    pub ifindex: i32,
    pub mac: Mac,
    pub mtu: usize,
}

/// Metadata of a received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvMeta {
    /// Bytes written into the buffer.
    pub len: usize,
    /// The 802.1Q TCI the kernel stripped, if the frame was tagged.
    pub vlan_tci: Option<u16>,
}

fn ifreq_for(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(ifr)
}

impl RawSocket {
    /// Opens a socket on interface `name` for AoE frames.
    pub fn open(name: &str, listen: Listen) -> Result<Self, SocketError> {
        let io_err = |source| SocketError::Io {
            name: name.to_owned(),
            source,
        };
        let proto = match listen {
            Listen::AllVlans => libc::ETH_P_ALL as u16,
            Listen::AoeOnly => ETHERTYPE_AOE,
        };
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(proto.to_be()),
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => SocketError::Permission(e),
                _ => io_err(e),
            });
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let cname = CString::new(name).map_err(|_| SocketError::NoInterface(name.to_owned()))?;
        // SAFETY: `cname` is NUL-terminated.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) } as i32;
        if ifindex == 0 {
            return Err(SocketError::NoInterface(name.to_owned()));
        }
        let raw = fd.as_raw_fd();
        let mut ifr = ifreq_for(name).map_err(io_err)?;
        // SAFETY: SIOCGIFHWADDR fills `ifr_hwaddr` of a valid ifreq.
        if unsafe { libc::ioctl(raw, libc::SIOCGIFHWADDR, &mut ifr) } < 0 {
            return Err(io_err(io::Error::last_os_error()));
        }
        let mut mac = [0u8; 6];
        // SAFETY: the ioctl above initialised the hwaddr member of the union.
        let hw = unsafe { ifr.ifr_ifru.ifru_hwaddr };
        for (m, b) in mac.iter_mut().zip(hw.sa_data.iter()) {
            *m = *b as u8;
        }
        let mut ifr = ifreq_for(name).map_err(io_err)?;
        // SAFETY: SIOCGIFMTU fills `ifr_mtu` of a valid ifreq.
        if unsafe { libc::ioctl(raw, libc::SIOCGIFMTU, &mut ifr) } < 0 {
            return Err(io_err(io::Error::last_os_error()));
        }
        // SAFETY: the ioctl above initialised the mtu member.
        let mtu = unsafe { ifr.ifr_ifru.ifru_mtu } as usize;

        let sock = Self {
            fd,
            name: name.to_owned(),
            ifindex,
            mac,
            mtu,
        };
        if listen == Listen::AllVlans {
            sock.attach_aoe_filter().map_err(io_err)?;
            sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
                .map_err(io_err)?;
            // Our own transmissions would otherwise come back on ETH_P_ALL.
            // Older kernels lack the option; the receive path also checks the
            // packet type, so failure here costs only some wasted wakeups.
            let _ = sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1);
        }
        // Room for bursts of many requests in flight.
        let _ = sock.setsockopt(libc::SOL_SOCKET, libc::SO_RCVBUF, 4 << 20);
        let _ = sock.setsockopt(libc::SOL_SOCKET, libc::SO_SNDBUF, 4 << 20);

        // SAFETY: sockaddr_ll is plain old data.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto.to_be();
        sll.sll_ifindex = ifindex;
        // SAFETY: binds our socket to a valid sockaddr_ll of the right size.
        let rc = unsafe {
            libc::bind(
                raw,
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io_err(io::Error::last_os_error()));
        }
        Ok(sock)
    }

    /// Frames the kernel dropped for this socket (its receive buffer was
    /// full) since the last call; reading resets the count.
    pub fn take_drops(&self) -> io::Result<u32> {
        let mut st = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: passes a live tpacket_stats and its size for the kernel to fill.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(st.tp_drops)
    }

    fn setsockopt(&self, level: libc::c_int, name: libc::c_int, v: libc::c_int) -> io::Result<()> {
        // SAFETY: passes a pointer to a live c_int with its size.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                &v as *const libc::c_int as *const libc::c_void,
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Classic BPF: accept EtherType 0x88A2 (the kernel has already moved any
    /// VLAN tag out of the frame), drop everything else in the kernel.
    fn attach_aoe_filter(&self) -> io::Result<()> {
        const LDH_ABS: u16 = 0x28; // BPF_LD | BPF_H | BPF_ABS
        const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
        const RET_K: u16 = 0x06; // BPF_RET | BPF_K
        let mut prog = [
            libc::sock_filter {
                code: LDH_ABS,
                jt: 0,
                jf: 0,
                k: 12,
            },
            libc::sock_filter {
                code: JEQ_K,
                jt: 0,
                jf: 1,
                k: u32::from(ETHERTYPE_AOE),
            },
            libc::sock_filter {
                code: RET_K,
                jt: 0,
                jf: 0,
                k: 0x0004_0000,
            },
            libc::sock_filter {
                code: RET_K,
                jt: 0,
                jf: 0,
                k: 0,
            },
        ];
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_mut_ptr(),
        };
        // SAFETY: `fprog` points at `prog`, which outlives the call; the kernel
        // copies the program.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                &fprog as *const libc::sock_fprog as *const libc::c_void,
                size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Waits up to `timeout` for a frame to be readable.
    pub fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(e);
        }
        Ok(rc > 0)
    }

    /// Sets how long a blocking receive waits before `WouldBlock`.
    pub fn set_read_timeout(&self, t: Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: t.as_secs() as libc::time_t,
            tv_usec: t.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: passes a live timeval with its size.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Receives one frame into `buf` without blocking (`WouldBlock` if none).
    /// Our own outgoing frames are skipped (returned as `len == 0`).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<RecvMeta> {
        self.recv_with(buf, libc::MSG_DONTWAIT)
    }

    /// Like [`RawSocket::recv`] but waits up to the read timeout
    /// ([`RawSocket::set_read_timeout`]); one system call per frame.
    pub fn recv_blocking(&self, buf: &mut [u8]) -> io::Result<RecvMeta> {
        self.recv_with(buf, 0)
    }

    fn recv_with(&self, buf: &mut [u8], flags: libc::c_int) -> io::Result<RecvMeta> {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr() as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: POD, zero is valid.
        let mut from: libc::sockaddr_ll = unsafe { zeroed() };
        // Room for one cmsg carrying tpacket_auxdata, 8-byte aligned.
        let mut cbuf = [0u64; 8];
        // SAFETY: msghdr is POD; the pointers set below stay valid for the call.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_name = &mut from as *mut libc::sockaddr_ll as *mut libc::c_void;
        msg.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = size_of::<[u64; 8]>() as _;
        // SAFETY: recvmsg writes at most the sizes we gave it.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, flags) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if from.sll_pkttype == PACKET_OUTGOING {
            return Ok(RecvMeta {
                len: 0,
                vlan_tci: None,
            });
        }
        // SAFETY: the kernel filled `msg`'s control buffer.
        let vlan_tci = unsafe { vlan_from_cmsgs(&msg) };
        Ok(RecvMeta {
            len: n as usize,
            vlan_tci,
        })
    }

    /// Receives one frame into `buf[4..]` and, if it was VLAN-tagged, puts the
    /// tag back inline; returns the frame's range within `buf`.
    pub fn recv_frame(&self, buf: &mut [u8]) -> io::Result<std::ops::Range<usize>> {
        self.recv_frame_with(buf, libc::MSG_DONTWAIT)
    }

    /// [`RawSocket::recv_frame`], waiting up to the read timeout.
    pub fn recv_frame_blocking(&self, buf: &mut [u8]) -> io::Result<std::ops::Range<usize>> {
        self.recv_frame_with(buf, 0)
    }

    fn recv_frame_with(
        &self,
        buf: &mut [u8],
        flags: libc::c_int,
    ) -> io::Result<std::ops::Range<usize>> {
        let m = self.recv_with(&mut buf[4..], flags)?;
        if m.len < 14 {
            return Ok(4..4);
        }
        match m.vlan_tci {
            None => Ok(4..4 + m.len),
            Some(tci) => {
                buf.copy_within(4..16, 0);
                buf[12..14].copy_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
                buf[14..16].copy_from_slice(&tci.to_be_bytes());
                Ok(0..4 + m.len)
            }
        }
    }

    /// Receives up to `bufs.len()` (at most [`BATCH`]) frames with one system
    /// call, each into `bufs[i][4..]` with any VLAN tag put back inline like
    /// [`RawSocket::recv_frame`]; `out[i]` gets frame `i`'s range (empty for
    /// frames to skip). With `block`, waits up to the read timeout for the
    /// first frame, then takes what is queued. Returns how many were filled.
    pub fn recv_frames(
        &self,
        bufs: &mut [Vec<u8>],
        out: &mut [std::ops::Range<usize>],
        block: bool,
    ) -> io::Result<usize> {
        let n = bufs.len().min(out.len()).min(BATCH);
        // SAFETY: all of these are plain old data; zero is a valid value.
        let mut iov: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut names: [libc::sockaddr_ll; BATCH] = unsafe { zeroed() };
        let mut cbufs = [[0u64; 8]; BATCH];
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for i in 0..n {
            let b = &mut bufs[i][4..];
            iov[i] = libc::iovec {
                iov_base: b.as_mut_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            };
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = &mut names[i] as *mut libc::sockaddr_ll as *mut libc::c_void;
            h.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            h.msg_iov = &mut iov[i];
            h.msg_iovlen = 1;
            h.msg_control = cbufs[i].as_mut_ptr() as *mut libc::c_void;
            h.msg_controllen = size_of::<[u64; 8]>() as _;
        }
        let flags = if block {
            libc::MSG_WAITFORONE
        } else {
            libc::MSG_DONTWAIT
        };
        // SAFETY: every header points at live buffers of the sizes given.
        let r = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                hdrs.as_mut_ptr(),
                n as libc::c_uint,
                flags,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let r = r as usize;
        for i in 0..r {
            let len = hdrs[i].msg_len as usize;
            // SAFETY: the kernel filled this header's control buffer.
            let vlan = unsafe { vlan_from_cmsgs(&hdrs[i].msg_hdr) };
            let buf = &mut bufs[i];
            out[i] = if names[i].sll_pkttype == PACKET_OUTGOING || len < 14 {
                4..4
            } else if let Some(tci) = vlan {
                buf.copy_within(4..16, 0);
                buf[12..14].copy_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
                buf[14..16].copy_from_slice(&tci.to_be_bytes());
                0..4 + len
            } else {
                4..4 + len
            };
        }
        Ok(r)
    }

    /// Sends frames with as few system calls as possible (one per [`BATCH`]),
    /// waiting when the transmit queue is full.
    pub fn send_frames<'a>(&self, frames: impl IntoIterator<Item = &'a [u8]>) -> io::Result<()> {
        let mut it = frames.into_iter().peekable();
        // SAFETY: plain old data; zero is valid.
        let mut iov: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        while it.peek().is_some() {
            let mut n = 0;
            while n < BATCH {
                let Some(f) = it.next() else { break };
                iov[n] = libc::iovec {
                    iov_base: f.as_ptr() as *mut libc::c_void,
                    iov_len: f.len(),
                };
                // SAFETY: mmsghdr is plain old data; zero is valid.
                hdrs[n] = unsafe { zeroed() };
                hdrs[n].msg_hdr.msg_iov = &mut iov[n];
                hdrs[n].msg_hdr.msg_iovlen = 1;
                n += 1;
            }
            let mut sent = 0;
            let mut full = 0u32;
            while sent < n {
                // SAFETY: headers point at the caller's frames, alive for the call.
                let r = unsafe {
                    libc::sendmmsg(
                        self.fd.as_raw_fd(),
                        hdrs[sent..].as_mut_ptr(),
                        (n - sent) as libc::c_uint,
                        0,
                    )
                };
                if r >= 0 {
                    sent += r as usize;
                    continue;
                }
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => {}
                    Some(libc::ENOBUFS) | Some(libc::EAGAIN) if full < 10_000 => {
                        full += 1;
                        std::thread::yield_now();
                    }
                    _ => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Sends one complete frame (blocking if the socket buffer is full).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let mut full = 0u32;
        loop {
            // SAFETY: sends `frame` on our bound socket.
            let n = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    frame.as_ptr() as *const libc::c_void,
                    frame.len(),
                    0,
                )
            };
            if n >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) if full < 10_000 => {
                    // Transmit queue full: give the NIC a moment.
                    full += 1;
                    std::thread::yield_now();
                    continue;
                }
                _ => return Err(e),
            }
        }
    }
}

/// The VLAN TCI from a `PACKET_AUXDATA` control message, if the frame was
/// tagged.
///
/// # Safety
/// `msg`'s control pointer and length must describe a buffer the kernel
/// filled in `recvmsg`/`recvmmsg`.
unsafe fn vlan_from_cmsgs(msg: &libc::msghdr) -> Option<u16> {
    let mut vlan = None;
    // SAFETY: the libc CMSG helpers bound every access by `msg_controllen`.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == SOL_PACKET && (*c).cmsg_type == PACKET_AUXDATA {
                let aux: TpacketAuxdata =
                    std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const TpacketAuxdata);
                if aux.tp_status & TP_STATUS_VLAN_VALID != 0 || aux.tp_vlan_tci != 0 {
                    vlan = Some(aux.tp_vlan_tci);
                }
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    vlan
}

impl AsRawFd for RawSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
