//! The store service through the real CLI and library.
