//! The invocations port (in progress).
