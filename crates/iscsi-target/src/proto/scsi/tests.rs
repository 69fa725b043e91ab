//! Unit tests of the SCSI emulation: CDBs in, status/sense/data out, against a
//! RAM-backed device.

use super::*;
use anyboot_images::raw::RawFile;
use proptest::prelude::*;

const IQN: &str = "iqn.2026-11.org.anyboot:unit";

/// A 1 MiB LU on a raw file in `dir` opened read-only.
fn read_only_lu(dir: &std::path::Path) -> Lu {
    let p = dir.join("ro.raw");
    std::fs::File::create(&p).unwrap().set_len(1 << 20).unwrap();
    Lu {
        lun: 0,
        device: Arc::new(RawFile::open(&p, true).unwrap()),
        shared: Arc::new(LuShared::default()),
    }
}

fn lu(size: u64) -> Lu {
    Lu {
        lun: 0,
        device: Arc::new(RawFile::memory(size).unwrap()),
        shared: Arc::new(LuShared {
            id: 0x1122_3344_5566_7788,
            ..LuShared::default()
        }),
    }
}

fn ctx(nexus: &str) -> Context<'_> {
    Context {
        nexus,
        target_iqn: IQN,
        luns: &[0, 3],
    }
}

fn cdb(bytes: &[u8]) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[..bytes.len()].copy_from_slice(bytes);
    c
}

fn exec(lu: &Lu, c: &[u8], data: &[u8]) -> Response {
    execute(Some(lu), &ctx("a,i,0x1"), &cdb(c), data)
}

fn sense_of(r: &Response) -> (SenseKey, u8, u8) {
    assert_eq!(r.status, status::CHECK_CONDITION, "{r:?}");
    let s = Sense::parse(&r.sense).unwrap();
    (s.key, s.asc, s.ascq)
}

fn rw16(op: u8, lba: u64, blocks: u32, flags: u8) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[1] = flags;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

#[test]
fn standard_inquiry_and_vpd_pages() {
    let l = lu(1 << 20);
    let r = exec(&l, &[op::INQUIRY, 0, 0, 0, 255, 0], &[]);
    assert_eq!(r.status, status::GOOD);
    assert_eq!(r.data[0], 0); // direct access, connected
    assert_eq!(r.data[2], 6); // SPC-4
    assert_eq!(&r.data[8..16], VENDOR);
    assert_eq!(r.data.len(), 66);
    // Allocation length truncates.
    assert_eq!(exec(&l, &[op::INQUIRY, 0, 0, 0, 5, 0], &[]).data.len(), 5);
    // A page code without EVPD is an error.
    let r = exec(&l, &[op::INQUIRY, 0, 0x80, 0, 255, 0], &[]);
    assert_eq!(sense_of(&r), (SenseKey::IllegalRequest, 0x24, 0));
    let r = exec(&l, &[op::INQUIRY, 1, 0, 0, 255, 0], &[]);
    assert_eq!(&r.data[4..], &[0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
    // Page 83h starts with the NAA 6 designator of the LU.
    let r = exec(&l, &[op::INQUIRY, 1, 0x83, 0, 255, 0], &[]);
    assert_eq!(&r.data[4..8], &[0x01, 0x03, 0, 16]);
    assert_eq!(r.data[8] >> 4, 6);
    assert_eq!(&r.data[12..20], &0x1122_3344_5566_7788u64.to_be_bytes());
    // Block limits: page length 3Ch, max transfer 8 MiB in blocks.
    let r = exec(&l, &[op::INQUIRY, 1, 0xb0, 0, 255, 0], &[]);
    assert_eq!(&r.data[2..4], &[0, 0x3c]);
    assert_eq!(&r.data[8..12], &(((8 << 20) / 512) as u32).to_be_bytes());
    // Thin provisioning: LBPU, LBPWS, LBPWS10 and LBPRZ.
    let r = exec(&l, &[op::INQUIRY, 1, 0xb2, 0, 255, 0], &[]);
    assert_eq!(r.data[5] & 0xe4, 0xe4);
    let r = exec(&l, &[op::INQUIRY, 1, 0x99, 0, 255, 0], &[]);
    assert_eq!(sense_of(&r).1, 0x24);
}

#[test]
fn missing_lun_and_report_luns() {
    let r = execute(None, &ctx("x"), &cdb(&[op::INQUIRY, 0, 0, 0, 36, 0]), &[]);
    assert_eq!(r.data[0], 0x7f);
    let r = execute(
        None,
        &ctx("x"),
        &cdb(&[op::READ_10, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
        &[],
    );
    assert_eq!(sense_of(&r), (SenseKey::IllegalRequest, 0x25, 0));
    let r = execute(
        None,
        &ctx("x"),
        &cdb(&[op::REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]),
        &[],
    );
    assert_eq!(
        r.data,
        vec![0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0]
    );
    let r = execute(
        None,
        &ctx("x"),
        &cdb(&[op::REPORT_LUNS, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0]),
        &[],
    );
    assert_eq!(sense_of(&r).1, 0x24, "allocation length below 16");
}

#[test]
fn capacity_read_write_and_range_checks() {
    let l = lu(1 << 20); // 2048 blocks
    let r = exec(&l, &[op::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[]);
    assert_eq!(r.data, vec![0, 0, 0x07, 0xff, 0, 0, 2, 0]);
    let mut c = [0u8; 16];
    c[0] = op::SERVICE_ACTION_IN_16;
    c[1] = sa::READ_CAPACITY_16;
    c[13] = 32;
    let r = exec(&l, &c, &[]);
    assert_eq!(&r.data[..8], &2047u64.to_be_bytes());
    assert_eq!(r.data[14] & 0xc0, 0xc0, "LBPME and LBPRZ");

    let data: Vec<u8> = (0..1024u32).map(|i| i as u8).collect();
    let r = exec(&l, &rw16(op::WRITE_16, 10, 2, 0x08), &data);
    assert_eq!(r.status, status::GOOD);
    let r = exec(&l, &[op::READ_10, 0, 0, 0, 0, 10, 0, 0, 2, 0], &[]);
    assert_eq!(r.data, data);
    let r = exec(&l, &[op::READ_6, 0, 0, 10, 1, 0], &[]);
    assert_eq!(r.data, &data[..512]);
    // Past the end, and overflowing the LBA.
    let r = exec(&l, &rw16(op::READ_16, 2047, 2, 0), &[]);
    assert_eq!(sense_of(&r), (SenseKey::IllegalRequest, 0x21, 0));
    let r = exec(&l, &rw16(op::READ_16, u64::MAX, 1, 0), &[]);
    assert_eq!(sense_of(&r).1, 0x21);
    // RDPROTECT is not supported.
    let r = exec(&l, &rw16(op::READ_16, 0, 1, 0x20), &[]);
    assert_eq!(sense_of(&r).1, 0x24);
    // A WRITE whose Data-Out falls short is refused, not half done.
    let r = exec(&l, &rw16(op::WRITE_16, 0, 2, 0), &data[..512]);
    assert_eq!(sense_of(&r), (SenseKey::IllegalRequest, 0x0e, 0x03));
}

#[test]
fn read_only_device_refuses_writes_with_data_protect() {
    let dir = tempfile::tempdir().unwrap();
    let l = read_only_lu(dir.path());
    let r = exec(&l, &rw16(op::WRITE_16, 0, 1, 0), &[0u8; 512]);
    assert_eq!(sense_of(&r), (SenseKey::DataProtect, 0x27, 0));
    let r = exec(&l, &[op::MODE_SENSE_6, 0x08, 0x3f, 0, 255, 0], &[]);
    assert_eq!(r.data[2] & 0x80, 0x80, "WP bit");
}

#[test]
fn verify_and_compare_and_write_report_miscompare_offsets() {
    let l = lu(1 << 20);
    let block = vec![0xabu8; 512];
    exec(&l, &rw16(op::WRITE_16, 5, 1, 0), &block);
    // BYTCHK=1 with equal data, then with one byte off.
    assert_eq!(
        exec(&l, &rw16(op::VERIFY_16, 5, 1, 0x02), &block).status,
        status::GOOD
    );
    let mut other = block.clone();
    other[100] = 0;
    let r = exec(&l, &rw16(op::VERIFY_16, 5, 1, 0x02), &other);
    let s = Sense::parse(&r.sense).unwrap();
    assert_eq!(
        (s.key, s.asc, s.information),
        (SenseKey::Miscompare, 0x1d, Some(100))
    );

    let mut caw = [0u8; 16];
    caw[0] = op::COMPARE_AND_WRITE;
    caw[2..10].copy_from_slice(&5u64.to_be_bytes());
    caw[13] = 1;
    let mut data = block.clone();
    data.extend_from_slice(&[0x11u8; 512]);
    assert_eq!(exec(&l, &caw, &data).status, status::GOOD);
    // The medium changed: the same compare now fails and writes nothing.
    let r = exec(&l, &caw, &data);
    assert_eq!(sense_of(&r).0, SenseKey::Miscompare);
    assert_eq!(
        exec(&l, &rw16(op::READ_16, 5, 1, 0), &[]).data,
        vec![0x11u8; 512]
    );
    // Zero blocks with Data-Out is contradictory; too many blocks too.
    caw[13] = 0;
    assert_eq!(sense_of(&exec(&l, &caw, &data)).1, 0x24);
    caw[13] = 200;
    assert_eq!(sense_of(&exec(&l, &caw, &data)).1, 0x24);
}

#[test]
fn unmap_write_same_and_get_lba_status() {
    let l = lu(4 << 20); // 8192 blocks
    exec(&l, &rw16(op::WRITE_16, 0, 2048, 0), &vec![0xffu8; 1 << 20]);
    // UNMAP blocks 0..1024.
    let mut p = vec![0u8; 24];
    p[0..2].copy_from_slice(&22u16.to_be_bytes());
    p[2..4].copy_from_slice(&16u16.to_be_bytes());
    p[16..20].copy_from_slice(&1024u32.to_be_bytes());
    let r = exec(&l, &[op::UNMAP, 0, 0, 0, 0, 0, 0, 0, 24, 0], &p);
    assert_eq!(r.status, status::GOOD);
    let r = exec(&l, &rw16(op::READ_16, 0, 1, 0), &[]);
    assert_eq!(
        r.data,
        vec![0u8; 512],
        "unmapped blocks read as zeroes (LBPRZ)"
    );
    let mut c = [0u8; 16];
    c[0] = op::SERVICE_ACTION_IN_16;
    c[1] = sa::GET_LBA_STATUS;
    c[13] = 64;
    let r = exec(&l, &c, &[]);
    assert_eq!(&r.data[8..16], &0u64.to_be_bytes());
    assert_eq!(r.data[20], 1, "first extent deallocated");
    assert_eq!(&r.data[16..20], &1024u32.to_be_bytes());
    assert_eq!(r.data[36], 0, "then mapped");
    // Out-of-range UNMAP descriptor.
    p[8..16].copy_from_slice(&8000u64.to_be_bytes());
    let r = exec(&l, &[op::UNMAP, 0, 0, 0, 0, 0, 0, 0, 24, 0], &p);
    assert_eq!(sense_of(&r).1, 0x21);

    // WRITE SAME(10) with a pattern, then with UNMAP.
    let mut ws = [op::WRITE_SAME_10, 0, 0, 0, 0x10, 0, 0, 0, 16, 0];
    assert_eq!(exec(&l, &ws, &[0x5au8; 512]).status, status::GOOD);
    assert_eq!(
        exec(&l, &rw16(op::READ_16, 0x1000 + 15, 1, 0), &[]).data,
        vec![0x5a; 512]
    );
    ws[1] = 0x08;
    assert_eq!(exec(&l, &ws, &[0x5au8; 512]).status, status::GOOD);
    assert_eq!(
        exec(&l, &rw16(op::READ_16, 0x1000, 1, 0), &[]).data,
        vec![0; 512]
    );
    // ANCHOR is not supported.
    ws[1] = 0x10;
    assert_eq!(sense_of(&exec(&l, &ws, &[0u8; 512])).1, 0x24);
}

#[test]
fn mode_pages_and_mode_select_of_d_sense() {
    let l = lu(1 << 20);
    let r = exec(&l, &[op::MODE_SENSE_6, 0, 0x3f, 0, 255, 0], &[]);
    assert_eq!(r.data[0] as usize, r.data.len() - 1);
    assert_eq!(r.data[3], 8, "block descriptor");
    let pages = &r.data[12..];
    assert_eq!((pages[0], pages[1]), (0x08, 0x12));
    assert_eq!(pages[2] & 0x04, 0x04, "WCE");
    assert_eq!((pages[20], pages[21]), (0x0a, 0x0a));
    assert_eq!((pages[32], pages[33]), (0x1c, 0x0a));
    // Saved values are not supported.
    let r = exec(&l, &[op::MODE_SENSE_6, 0, 0xc8, 0, 255, 0], &[]);
    assert_eq!(sense_of(&r).1, 0x39);
    // Turn on descriptor-format sense through MODE SELECT(10).
    let mut sel = vec![0u8; 8];
    let mut ctl = exec(
        &l,
        &[op::MODE_SENSE_10, 0x08, 0x0a, 0, 0, 0, 0, 0, 255, 0],
        &[],
    )
    .data[8..]
        .to_vec();
    ctl[2] |= 0x04;
    sel.extend_from_slice(&ctl);
    let r = exec(
        &l,
        &[
            op::MODE_SELECT_10,
            0x10,
            0,
            0,
            0,
            0,
            0,
            0,
            sel.len() as u8,
            0,
        ],
        &sel,
    );
    assert_eq!(r.status, status::GOOD);
    let r = exec(&l, &[0xff, 0, 0, 0, 0, 0], &[]);
    assert_eq!(r.sense[0], 0x72, "descriptor format now");
    assert_eq!((r.sense[1], r.sense[2]), (0x05, 0x20));
    // Changing a bit that is not changeable is refused.
    let mut bad = sel.clone();
    bad[8 + 3] ^= 0x10;
    let r = exec(
        &l,
        &[
            op::MODE_SELECT_10,
            0x10,
            0,
            0,
            0,
            0,
            0,
            0,
            bad.len() as u8,
            0,
        ],
        &bad,
    );
    assert_eq!(Sense::parse(&r.sense).unwrap().asc, 0x26);
}

#[test]
fn report_supported_opcodes_all_and_one() {
    let l = lu(1 << 20);
    let r = exec(
        &l,
        &[op::MAINTENANCE_IN, 0x0c, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0],
        &[],
    );
    let len = u32::from_be_bytes(r.data[..4].try_into().unwrap()) as usize;
    assert_eq!(len, SUPPORTED.len() * 8);
    // One command without service action: READ(10), 10-byte CDB, supported.
    let r = exec(
        &l,
        &[
            op::MAINTENANCE_IN,
            0x0c,
            1,
            op::READ_10,
            0,
            0,
            0,
            0,
            1,
            0,
            0,
            0,
        ],
        &[],
    );
    assert_eq!(&r.data[..4], &[0, 3, 0, 10]);
    // Asking without service action for a command that has them is an error.
    let r = exec(
        &l,
        &[
            op::MAINTENANCE_IN,
            0x0c,
            1,
            op::SERVICE_ACTION_IN_16,
            0,
            0,
            0,
            0,
            1,
            0,
            0,
            0,
        ],
        &[],
    );
    assert_eq!(sense_of(&r).1, 0x24);
    let r = exec(
        &l,
        &[
            op::MAINTENANCE_IN,
            0x0c,
            2,
            op::SERVICE_ACTION_IN_16,
            0,
            0x10,
            0,
            0,
            1,
            0,
            0,
            0,
        ],
        &[],
    );
    assert_eq!(&r.data[..4], &[0, 3, 0, 16]);
    let r = exec(
        &l,
        &[op::MAINTENANCE_IN, 0x0c, 1, 0xee, 0, 0, 0, 0, 1, 0, 0, 0],
        &[],
    );
    assert_eq!(r.data[1], 1, "not supported");
}

#[test]
fn reservations_and_unit_attention_per_nexus() {
    let l = lu(1 << 20);
    let a = ctx("a,i,0x1");
    let b = ctx("b,i,0x2");
    let reserve = cdb(&[op::RESERVE_6, 0, 0, 0, 0, 0]);
    assert_eq!(execute(Some(&l), &a, &reserve, &[]).status, status::GOOD);
    let read = rw16(op::READ_16, 0, 1, 0);
    assert_eq!(
        execute(Some(&l), &b, &read, &[]).status,
        status::RESERVATION_CONFLICT
    );
    assert_eq!(
        execute(Some(&l), &b, &cdb(&[op::INQUIRY, 0, 0, 0, 36, 0]), &[]).status,
        status::GOOD
    );
    // A LUN reset ends the reservation and raises a unit attention for both.
    {
        let mut st = l.shared.state.lock().unwrap();
        st.nexus_joined("a,i,0x1");
        st.nexus_joined("b,i,0x2");
        st.reset(asc::BUS_DEVICE_RESET);
    }
    let r = execute(Some(&l), &b, &read, &[]);
    assert_eq!(sense_of(&r), (SenseKey::UnitAttention, 0x29, 0x03));
    assert_eq!(
        execute(Some(&l), &b, &read, &[]).status,
        status::GOOD,
        "reported once"
    );
    let rs = execute(
        Some(&l),
        &a,
        &cdb(&[op::REQUEST_SENSE, 0, 0, 0, 18, 0]),
        &[],
    );
    assert_eq!(rs.status, status::GOOD);
    assert_eq!(rs.data[2], 0x06, "REQUEST SENSE returns and clears the UA");
    // Persistent reservations through the CDB path.
    let mut prout = [0u8; 16];
    prout[0] = op::PERSISTENT_RESERVE_OUT;
    prout[8] = 24;
    let mut params = vec![0u8; 24];
    params[8..16].copy_from_slice(&7u64.to_be_bytes());
    assert_eq!(execute(Some(&l), &a, &prout, &params).status, status::GOOD);
    prout[1] = 1;
    prout[2] = pr::pr_type::EXCLUSIVE_ACCESS;
    params[0..8].copy_from_slice(&7u64.to_be_bytes());
    params[8..16].fill(0);
    assert_eq!(execute(Some(&l), &a, &prout, &params).status, status::GOOD);
    assert_eq!(
        execute(Some(&l), &b, &read, &[]).status,
        status::RESERVATION_CONFLICT
    );
    assert_eq!(execute(Some(&l), &a, &read, &[]).status, status::GOOD);
    prout[8] = 23;
    assert_eq!(
        sense_of(&execute(Some(&l), &a, &prout, &params[..23])).1,
        0x1a
    );
}

/// A RAM device that records the first byte of every write at offset 0 and
/// can be told to fail writes.
#[derive(Debug)]
struct Spy {
    inner: RawFile,
    first_bytes: std::sync::Mutex<Vec<u8>>,
    fail: std::sync::atomic::AtomicBool,
}

impl Spy {
    fn failing(&self) -> anyboot_images::Result<()> {
        if self.fail.load(std::sync::atomic::Ordering::Relaxed) {
            Err(anyboot_images::Error::Io(std::io::Error::other("injected")))
        } else {
            Ok(())
        }
    }
}

impl BlockDevice for Spy {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> anyboot_images::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> anyboot_images::Result<()> {
        self.failing()?;
        if offset == 0 {
            self.first_bytes.lock().unwrap().push(buf[0]);
        }
        self.inner.write_at(buf, offset, fua)
    }
    fn flush(&self) -> anyboot_images::Result<()> {
        self.inner.flush()
    }
    fn trim(&self, offset: u64, len: u64) -> anyboot_images::Result<()> {
        self.failing()?;
        self.inner.trim(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool) -> anyboot_images::Result<()> {
        self.failing()?;
        self.inner.write_zeroes(offset, len, may_trim)
    }
    fn block_status(
        &self,
        offset: u64,
        len: u64,
    ) -> anyboot_images::Result<Vec<anyboot_images::Extent>> {
        self.inner.block_status(offset, len)
    }
}

fn spy_lu(size: u64) -> (Lu, Arc<Spy>) {
    let spy = Arc::new(Spy {
        inner: RawFile::memory(size).unwrap(),
        first_bytes: std::sync::Mutex::new(Vec::new()),
        fail: std::sync::atomic::AtomicBool::new(false),
    });
    let l = Lu {
        lun: 0,
        device: spy.clone(),
        shared: Arc::new(LuShared::default()),
    };
    (l, spy)
}

/// SANITIZE CDB with byte 1 (IMMED, AUSE, service action) and PARAMETER LIST LENGTH.
fn sanitize(b1: u8, plen: u16) -> [u8; 10] {
    let [hi, lo] = plen.to_be_bytes();
    [op::SANITIZE, b1, 0, 0, 0, 0, 0, hi, lo, 0]
}

/// OVERWRITE parameter list: byte 0 (INVERT, TEST, OVERWRITE COUNT) and pattern.
fn overwrite_params(b0: u8, pattern: &[u8]) -> Vec<u8> {
    let mut p = vec![b0, 0];
    p.extend_from_slice(&(pattern.len() as u16).to_be_bytes());
    p.extend_from_slice(pattern);
    p
}

#[test]
fn sanitize_overwrite_repeats_the_pattern_per_block_and_inverts_between_passes() {
    let (l, spy) = spy_lu(1 << 20); // 2048 blocks
    exec(&l, &rw16(op::WRITE_16, 0, 2, 0), &[0x61u8; 1024]);
    // A 3-byte pattern restarts at every block boundary (512 is no multiple of 3).
    let p = overwrite_params(0x01, &[1, 2, 3]);
    let r = exec(&l, &sanitize(sa::SANITIZE_OVERWRITE, p.len() as u16), &p);
    assert_eq!(r.status, status::GOOD, "{r:?}");
    let block: Vec<u8> = [1u8, 2, 3].iter().copied().cycle().take(512).collect();
    for lba in [0, 1, 1000, 2047] {
        let r = exec(&l, &rw16(op::READ_16, lba, 1, 0), &[]);
        assert_eq!(r.data, block, "LBA {lba}");
    }
    // INVERT with an even count: inverted first, the pattern itself last.
    spy.first_bytes.lock().unwrap().clear();
    let p = overwrite_params(0x80 | 4, &[0x0f; 512]);
    let r = exec(&l, &sanitize(sa::SANITIZE_OVERWRITE, p.len() as u16), &p);
    assert_eq!(r.status, status::GOOD, "{r:?}");
    assert_eq!(
        *spy.first_bytes.lock().unwrap(),
        vec![0xf0, 0x0f, 0xf0, 0x0f]
    );
    assert_eq!(
        exec(&l, &rw16(op::READ_16, 2047, 1, 0), &[]).data,
        vec![0x0f; 512]
    );
    // Odd count: pattern, inverted, pattern. Without INVERT: always the pattern.
    spy.first_bytes.lock().unwrap().clear();
    let p = overwrite_params(0x80 | 3, &[0x0f]);
    exec(&l, &sanitize(sa::SANITIZE_OVERWRITE, p.len() as u16), &p);
    assert_eq!(*spy.first_bytes.lock().unwrap(), vec![0x0f, 0xf0, 0x0f]);
    spy.first_bytes.lock().unwrap().clear();
    let p = overwrite_params(2, &[0x33]);
    exec(&l, &sanitize(sa::SANITIZE_OVERWRITE, p.len() as u16), &p);
    assert_eq!(*spy.first_bytes.lock().unwrap(), vec![0x33, 0x33]);
}

#[test]
fn sanitize_parameter_list_errors() {
    let l = lu(1 << 20);
    let invalid_cdb = (SenseKey::IllegalRequest, 0x24, 0);
    let invalid_param = (SenseKey::IllegalRequest, 0x26, 0);
    let full = overwrite_params(0x01, &[0xaa; 512]);
    // OVERWRITE: PARAMETER LIST LENGTH must be 5..=block length + 4.
    for plen in [0u16, 1, 2, 3, 4, 517] {
        let r = exec(&l, &sanitize(sa::SANITIZE_OVERWRITE, plen), &[0u8; 520]);
        assert_eq!(sense_of(&r), invalid_cdb, "length {plen}");
    }
    // OVERWRITE COUNT 0, reserved byte 1, TEST field.
    for b0 in [0x00u8, 0x21, 0x41] {
        let mut p = full.clone();
        p[0] = b0;
        let r = exec(&l, &sanitize(sa::SANITIZE_OVERWRITE, 516), &p);
        assert_eq!(sense_of(&r), invalid_param, "byte 0 {b0:#x}");
    }
    let mut p = full.clone();
    p[1] = 1;
    assert_eq!(sense_of(&exec(&l, &sanitize(1, 516), &p)), invalid_param);
    // INITIALIZATION PATTERN LENGTH 0, above the block length, or not the
    // rest of the list.
    for len in [0u16, 513, 100] {
        let mut p = vec![0x01, 0];
        p.extend_from_slice(&len.to_be_bytes());
        p.resize(4 + 512, 0xaa);
        let r = exec(&l, &sanitize(sa::SANITIZE_OVERWRITE, 516), &p);
        assert_eq!(sense_of(&r), invalid_param, "pattern length {len}");
    }
    // Less Data-Out than the list length says.
    let r = exec(&l, &sanitize(sa::SANITIZE_OVERWRITE, 516), &full[..100]);
    assert_eq!(sense_of(&r), (SenseKey::IllegalRequest, 0x1a, 0));
    // BLOCK ERASE and EXIT FAILURE MODE take no parameter list.
    for action in [sa::SANITIZE_BLOCK_ERASE, sa::SANITIZE_EXIT_FAILURE_MODE] {
        let r = exec(&l, &sanitize(action, 8), &[0u8; 8]);
        assert_eq!(sense_of(&r), invalid_cdb, "service action {action:#x}");
    }
    // Reserved CDB bit and bytes.
    let mut c = sanitize(sa::SANITIZE_BLOCK_ERASE | 0x40, 0);
    assert_eq!(sense_of(&exec(&l, &c, &[])), invalid_cdb);
    for i in 2..7 {
        c = sanitize(sa::SANITIZE_BLOCK_ERASE, 0);
        c[i] = i as u8;
        assert_eq!(sense_of(&exec(&l, &c, &[])), invalid_cdb, "byte {i}");
    }
    // Unknown service actions, CRYPTO ERASE among them.
    for action in [0u8, sa::SANITIZE_CRYPTO_ERASE, 4, 0x1e] {
        let r = exec(&l, &sanitize(action, 0), &[]);
        assert_eq!(sense_of(&r), invalid_cdb, "service action {action:#x}");
    }
    // Nothing above touched the medium.
    assert_eq!(l.shared.state.lock().unwrap().sanitize, SanitizeState::Idle);
}

#[test]
fn sanitize_block_erase_reads_zeroes_and_deallocates_everything() {
    let l = lu(4 << 20); // 8192 blocks
    exec(&l, &rw16(op::WRITE_16, 0, 2048, 0), &vec![0x61u8; 1 << 20]);
    exec(
        &l,
        &rw16(op::WRITE_16, 8192 - 256, 256, 0),
        &vec![0x61u8; 128 << 10],
    );
    let r = exec(&l, &sanitize(sa::SANITIZE_BLOCK_ERASE, 0), &[]);
    assert_eq!(r.status, status::GOOD, "{r:?}");
    for lba in [0, 2047, 8191] {
        let r = exec(&l, &rw16(op::READ_16, lba, 1, 0), &[]);
        assert_eq!(r.data, vec![0u8; 512], "LBA {lba}");
    }
    let mut c = [0u8; 16];
    c[0] = op::SERVICE_ACTION_IN_16;
    c[1] = sa::GET_LBA_STATUS;
    c[13] = 255;
    let r = exec(&l, &c, &[]);
    assert_eq!(&r.data[..4], &20u32.to_be_bytes(), "one descriptor");
    assert_eq!(&r.data[16..20], &8192u32.to_be_bytes());
    assert_eq!(r.data[20], 1, "deallocated");
    // WABEREQ 01b (reads after BLOCK ERASE succeed), WACEREQ 00b.
    let r = exec(&l, &[op::INQUIRY, 1, 0xb1, 0, 255, 0], &[]);
    assert_eq!(r.data[7] & 0xf0, 0x40);
    // EXIT FAILURE MODE with nothing failed is GOOD.
    let r = exec(&l, &sanitize(sa::SANITIZE_EXIT_FAILURE_MODE, 0), &[]);
    assert_eq!(r.status, status::GOOD);
}

#[test]
fn sanitize_refused_on_write_protected_and_reserved_lus() {
    // A read-only device.
    let dir = tempfile::tempdir().unwrap();
    let ro = read_only_lu(dir.path());
    let p = overwrite_params(0x01, &[0xaa; 512]);
    let ow = sanitize(sa::SANITIZE_OVERWRITE, p.len() as u16);
    let be = sanitize(sa::SANITIZE_BLOCK_ERASE, 0);
    assert_eq!(
        sense_of(&exec(&ro, &ow, &p)),
        (SenseKey::DataProtect, 0x27, 0)
    );
    assert_eq!(
        sense_of(&exec(&ro, &be, &[])),
        (SenseKey::DataProtect, 0x27, 0)
    );

    // Software write protect through the control mode page.
    let l = lu(1 << 20);
    let mask = exec(&l, &[op::MODE_SENSE_6, 0x08, 0x4a, 0, 255, 0], &[]).data;
    assert_eq!(mask[4 + 4] & 0x08, 0x08, "SWP is changeable");
    let set_swp = |on: bool| {
        let mut sel = exec(&l, &[op::MODE_SENSE_6, 0x08, 0x0a, 0, 255, 0], &[]).data;
        sel[0] = 0;
        sel[2] = 0;
        sel[4 + 4] = if on { 0x08 } else { 0 };
        let r = exec(
            &l,
            &[op::MODE_SELECT_6, 0x10, 0, 0, sel.len() as u8, 0],
            &sel,
        );
        assert_eq!(r.status, status::GOOD, "{r:?}");
    };
    set_swp(true);
    let ms = exec(&l, &[op::MODE_SENSE_6, 0x08, 0x0a, 0, 255, 0], &[]).data;
    assert_eq!((ms[2] & 0x80, ms[4 + 4] & 0x08), (0x80, 0x08), "WP and SWP");
    assert_eq!(
        sense_of(&exec(&l, &ow, &p)),
        (SenseKey::DataProtect, 0x27, 2)
    );
    assert_eq!(
        sense_of(&exec(&l, &be, &[])),
        (SenseKey::DataProtect, 0x27, 2)
    );
    let r = exec(&l, &rw16(op::WRITE_16, 0, 1, 0), &[0u8; 512]);
    assert_eq!(sense_of(&r), (SenseKey::DataProtect, 0x27, 2));
    assert_eq!(
        exec(&l, &rw16(op::READ_16, 0, 1, 0), &[]).status,
        status::GOOD
    );
    set_swp(false);
    assert_eq!(exec(&l, &be, &[]).status, status::GOOD);

    // Another nexus holds a reservation.
    let a = ctx("a,i,0x1");
    let b = ctx("b,i,0x2");
    let reserve = cdb(&[op::RESERVE_6, 0, 0, 0, 0, 0]);
    assert_eq!(execute(Some(&l), &b, &reserve, &[]).status, status::GOOD);
    for (c, d) in [(&ow, &p[..]), (&be, &[][..])] {
        let r = execute(Some(&l), &a, &cdb(c), d);
        assert_eq!(r.status, status::RESERVATION_CONFLICT);
    }
    assert_eq!(execute(Some(&l), &b, &cdb(&be), &[]).status, status::GOOD);
}

#[test]
fn sanitize_in_progress_and_failure_mode() {
    let (l, spy) = spy_lu(1 << 20);
    let tur = [op::TEST_UNIT_READY, 0, 0, 0, 0, 0];
    let read = rw16(op::READ_16, 0, 1, 0);
    let rs = [op::REQUEST_SENSE, 0, 0, 0, 18, 0];
    // While a sanitize runs (another thread), only a few commands pass.
    l.shared.state.lock().unwrap().sanitize = SanitizeState::Running;
    for c in [
        &tur[..],
        &read[..],
        &sanitize(sa::SANITIZE_BLOCK_ERASE, 0)[..],
    ] {
        assert_eq!(
            sense_of(&exec(&l, c, &[])),
            (SenseKey::NotReady, 0x04, 0x1b)
        );
    }
    assert_eq!(
        exec(&l, &[op::INQUIRY, 0, 0, 0, 36, 0], &[]).status,
        status::GOOD
    );
    let r = exec(&l, &rs, &[]);
    assert_eq!(
        (r.status, r.data[2], r.data[12], r.data[13]),
        (status::GOOD, 2, 0x04, 0x1b)
    );
    l.shared.state.lock().unwrap().sanitize = SanitizeState::Idle;

    // A sanitize that fails part way leaves the LU in failure mode.
    spy.fail.store(true, std::sync::atomic::Ordering::Relaxed);
    let be = sanitize(sa::SANITIZE_BLOCK_ERASE, 0);
    let failed = (SenseKey::MediumError, 0x31, 0x03);
    assert_eq!(sense_of(&exec(&l, &be, &[])), failed);
    assert_eq!(sense_of(&exec(&l, &read, &[])), failed);
    assert_eq!(sense_of(&exec(&l, &tur, &[])), failed);
    // Without AUSE it cannot be exited, only redone.
    let exit = sanitize(sa::SANITIZE_EXIT_FAILURE_MODE, 0);
    assert_eq!(sense_of(&exec(&l, &exit, &[])).1, 0x24);
    spy.fail.store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(exec(&l, &be, &[]).status, status::GOOD);
    assert_eq!(exec(&l, &read, &[]).status, status::GOOD);
    // With AUSE, EXIT FAILURE MODE ends it.
    spy.fail.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        sense_of(&exec(
            &l,
            &sanitize(sa::SANITIZE_BLOCK_ERASE | 0x20, 0),
            &[]
        )),
        failed
    );
    spy.fail.store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(exec(&l, &exit, &[]).status, status::GOOD);
    assert_eq!(exec(&l, &tur, &[]).status, status::GOOD);
}

#[test]
fn report_supported_opcodes_lists_sanitize_without_crypto_erase() {
    let l = lu(1 << 20);
    let one = |action: u8| {
        exec(
            &l,
            &[
                op::MAINTENANCE_IN,
                0x0c,
                2,
                op::SANITIZE,
                0,
                action,
                0,
                0,
                1,
                0,
                0,
                0,
            ],
            &[],
        )
        .data
    };
    for action in [
        sa::SANITIZE_OVERWRITE,
        sa::SANITIZE_BLOCK_ERASE,
        sa::SANITIZE_EXIT_FAILURE_MODE,
    ] {
        let d = one(action);
        assert_eq!(&d[..4], &[0, 3, 0, 10], "service action {action:#x}");
        assert_eq!(
            &d[4..],
            &[op::SANITIZE, 0xa0 | action, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07]
        );
    }
    assert_eq!(one(sa::SANITIZE_CRYPTO_ERASE)[1], 1, "not supported");
    // In the list of all commands, with SERVACTV.
    let r = exec(
        &l,
        &[op::MAINTENANCE_IN, 0x0c, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0],
        &[],
    );
    let sas: Vec<u16> = r.data[4..]
        .chunks(8)
        .filter(|d| d[0] == op::SANITIZE && d[5] & 1 == 1)
        .map(|d| u16::from_be_bytes([d[2], d[3]]))
        .collect();
    assert_eq!(sas, vec![1, 2, 0x1f]);
}

#[test]
fn unknown_opcode_is_illegal_request() {
    let l = lu(1 << 20);
    for opc in [0x02u8, 0xc0, 0xff, 0x4d] {
        let r = exec(&l, &[opc], &[]);
        assert_eq!(
            sense_of(&r),
            (SenseKey::IllegalRequest, 0x20, 0),
            "opcode {opc:#x}"
        );
    }
}

#[test]
fn write_residual_helpers() {
    let mut c = rw16(op::WRITE_16, 0, 4, 0);
    assert_eq!(data_out_len(&c, 512), Some((2048, false)));
    assert!(truncate_transfer(&mut c, 1));
    assert_eq!(data_out_len(&c, 512), Some((512, false)));
    let mut w6 = cdb(&[op::WRITE_6, 0, 0, 0, 0, 0]);
    assert_eq!(data_out_len(&w6, 512), Some((256 * 512, false)));
    assert!(
        !truncate_transfer(&mut w6, 0),
        "WRITE(6) cannot say zero blocks"
    );
    assert_eq!(
        data_out_len(&cdb(&[op::WRITE_SAME_10]), 4096),
        Some((4096, true))
    );
    assert_eq!(data_out_len(&cdb(&[op::READ_10]), 512), None);
}

proptest! {
    /// Any CDB with any Data-Out answers with a status, never a panic, and
    /// never touches bytes outside the 64 KiB device.
    #[test]
    fn arbitrary_cdbs_never_panic(c in proptest::collection::vec(any::<u8>(), 16), data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let l = lu(64 << 10);
        let mut cdb = [0u8; 16];
        cdb.copy_from_slice(&c);
        // Keep transfers small so the test stays fast.
        if matches!(cdb[0] >> 5, 1 | 2 | 4 | 5) { cdb[10] = 0; cdb[11] = 0; cdb[6] = 0; }
        let r = execute(Some(&l), &ctx("p"), &cdb, &data);
        prop_assert!(matches!(r.status, 0x00 | 0x02 | 0x18));
        prop_assert!(r.data.len() <= 8 << 20);
    }
}
