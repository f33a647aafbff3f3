//! The inbound SMTP listener (smtp-proto's server side on tokio).
