//! The events service through the real CLI and library.
