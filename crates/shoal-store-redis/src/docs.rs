//! The docs port (in progress).
