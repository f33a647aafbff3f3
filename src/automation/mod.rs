//! Automations: event-triggered flows (see `config/automations/README.md`).

pub mod when;
