//! The runtime service through the real CLI and library.
