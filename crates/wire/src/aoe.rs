//! ATA over Ethernet (AoE revision 11) headers and commands: Query Config, MAC Mask List, Reserve/Release.
