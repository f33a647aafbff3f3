//! Time arithmetic of automations: pure functions over instants (ms),
//! site time zones and clock times.
