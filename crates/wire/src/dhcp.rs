//! DHCPv4 helpers on top of dhcproto: PXE/UEFI/iPXE option views (RFC 2132, RFC 4578, PXE 2.1).
