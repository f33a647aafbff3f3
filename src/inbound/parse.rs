//! Classifies an inbound report (DSN, ARF, plain-text bounce, auto-reply).
