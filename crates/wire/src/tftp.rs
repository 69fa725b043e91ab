//! TFTP packets (RFC 1350) with option extensions (RFC 2347, 2348, 2349, 7440).
