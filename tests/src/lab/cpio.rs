//! A writer for the cpio "newc" format the Linux kernel unpacks as initramfs
//! (Documentation/driver-api/early-userspace/buffer-format.rst): a 110-byte
//! ASCII header of 13 eight-digit hex fields, the NUL-terminated name padded
//! to 4 bytes, the data padded to 4 bytes, and a `TRAILER!!!` entry.

/// An archive being built in memory.
#[derive(Debug, Default)]
pub struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

impl Cpio {
    pub fn new() -> Self {
        Self::default()
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.ino += 1;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            u32::try_from(data.len()).expect("initramfs file under 4 GiB"),
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            u32::try_from(name.len() + 1).unwrap(),
            0, // check (only for the "crc" format)
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    /// A directory (parents must be added first).
    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(name, S_IFDIR | 0o755, &[], (0, 0));
        self
    }

    /// A regular file with permission bits `perm`.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> &mut Self {
        self.entry(name, S_IFREG | (perm & 0o7777), data, (0, 0));
        self
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name, S_IFLNK | 0o777, target.as_bytes(), (0, 0));
        self
    }

    /// A character device node (the kernel creates it while unpacking).
    pub fn char_dev(&mut self, name: &str, major: u32, minor: u32) -> &mut Self {
        self.entry(name, S_IFCHR | 0o600, &[], (major, minor));
        self
    }

    /// Ends the archive and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_and_padding() {
        let mut c = Cpio::new();
        c.file("init", 0o755, b"abc");
        let b = c.finish();
        assert_eq!(&b[..6], b"070701");
        // ino 1, mode 0100755
        assert_eq!(&b[6..22], b"00000001000081ed");
        // filesize field (7th) is 3.
        assert_eq!(&b[6 + 6 * 8..6 + 7 * 8], b"00000003");
        // namesize "init\0" = 5.
        assert_eq!(&b[6 + 11 * 8..6 + 12 * 8], b"00000005");
        // 110 + 5 = 115 -> padded to 116, then the data.
        assert_eq!(&b[116..119], b"abc");
        assert_eq!(b.len() % 4, 0);
        assert!(crate::lab::contains(&b, b"TRAILER!!!\0"));
    }
}
