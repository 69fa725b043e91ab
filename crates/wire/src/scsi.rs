//! SCSI command descriptor blocks and sense data (SPC-4, SBC-3) as carried by iSCSI.
