//! Datagram layout.
