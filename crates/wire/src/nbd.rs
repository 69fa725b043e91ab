//! NBD wire format per the NBD protocol document: handshake, options, requests, simple and structured replies.
