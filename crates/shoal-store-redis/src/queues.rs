//! The queues port (in progress).
