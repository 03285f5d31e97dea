//! The jobs port (in progress).
