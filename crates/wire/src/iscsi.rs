//! iSCSI PDUs (RFC 7143 section 11): basic header segment, AHS, data segment, login text keys.
