//! Traffic shaping: `config/shaping.toml` (`[delivery] shaping` names
//! another file). Provider groups are matched by the destination's MX host
//! names (`[[shaping]]`), back-off rules by the replies of their servers
//! (`[[backoff]]`). The file Herald ships is also its built-in default: a
//! config directory without one gets exactly that.
//!
//! The delivery engine applies them (`delivery::shaping`); this file only
//! reads and checks them, each problem named with the shaping file's line.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::values::{count, duration};
use super::{Checker, ConfigError, parse_raw};

/// The shaping file Herald ships (`config/shaping.toml`): the defaults.
pub const BUILT_IN: &str = include_str!("../../config/shaping.toml");
/// Name of the catch-all group.
pub const DEFAULT_GROUP: &str = "default";

/// The shaping file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShaping {
    #[serde(default)]
    shaping: Vec<RawGroup>,
    #[serde(default)]
    backoff: Vec<RawRule>,
}

/// `[[shaping]]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: Option<Spanned<String>>,
    mx: Option<Vec<Spanned<String>>>,
    connections: Option<Spanned<i64>>,
    messages_per_second: Option<Spanned<f64>>,
    messages_per_hour: Option<Spanned<f64>>,
    messages_per_connection: Option<Spanned<i64>>,
    recipients_per_transaction: Option<Spanned<i64>>,
}

/// `[[backoff]]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<Spanned<String>>,
    reply: Option<Vec<Spanned<String>>>,
    groups: Option<Vec<Spanned<String>>>,
    action: Option<Spanned<String>>,
    factor: Option<Spanned<f64>>,
    connections: Option<Spanned<i64>>,
    duration: Option<Spanned<String>>,
    recover_after: Option<Spanned<String>>,
}

/// A provider group: the limits of the traffic to every destination whose
/// MX hosts end with one of its suffixes, counted per source IP across all
/// senders. The `default` group's limits count per destination domain.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// Its name (`google`, `wp`, …, `default`).
    pub name: String,
    /// MX host name suffixes, lower case, e.g. `.google.com`.
    pub mx: Vec<String>,
    /// Connections open at once.
    pub connections: usize,
    /// Messages per second, when limited.
    pub messages_per_second: Option<f64>,
    /// Messages per hour, when limited.
    pub messages_per_hour: Option<f64>,
    /// Messages sent over one connection before it is closed.
    pub messages_per_connection: usize,
    /// Recipients in one SMTP transaction.
    pub recipients_per_transaction: usize,
}

impl Group {
    /// The least time between two messages (the stricter of the limits per
    /// second and per hour), `None` without a limit.
    pub fn interval(&self) -> Option<Duration> {
        interval(self.messages_per_second, self.messages_per_hour)
    }

    /// Whether one of the MX host names matches a suffix of this group.
    fn matches(&self, host: &str) -> bool {
        self.mx.iter().any(|s| {
            host.ends_with(s.as_str()) || s.strip_prefix('.').is_some_and(|bare| host == bare)
        })
    }
}

/// The least time between two messages under limits per second and per
/// hour (the stricter wins); `None` without a limit. A group's and a
/// sender's rates are both spaced by it.
pub fn interval(per_second: Option<f64>, per_hour: Option<f64>) -> Option<Duration> {
    let mut s = 0f64;
    if let Some(r) = per_second {
        s = s.max(1.0 / r);
    }
    if let Some(r) = per_hour {
        s = s.max(3600.0 / r);
    }
    Duration::try_from_secs_f64(s).ok().filter(|d| !d.is_zero())
}

/// What a back-off rule does to the group whose server gave the reply.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    /// Multiply the group's rate by this factor (0 < f < 1).
    Reduce(f64),
    /// Allow at most this many connections.
    Connections(usize),
    /// Start nothing for the group for this long.
    Suspend(Duration),
}

/// A back-off rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Its name, shown in the group's state.
    pub name: String,
    /// Reply patterns: a three-digit code matches the reply code; anything
    /// else matches (case-insensitively) anywhere in the reply text.
    pub reply: Vec<String>,
    /// The groups it applies to; empty: every group.
    pub groups: Vec<String>,
    /// What it does.
    pub action: Action,
    /// Deliveries without a new match for this long restore one step.
    pub recover_after: Duration,
}

impl Rule {
    /// Whether `reply` ("421 4.7.0 Try again later") matches this rule.
    pub fn matches(&self, reply: &str) -> bool {
        let lower = reply.to_ascii_lowercase();
        self.reply.iter().any(|p| {
            if p.len() == 3 && p.bytes().all(|b| b.is_ascii_digit()) {
                lower.get(..3) == Some(p.as_str())
                    && lower.as_bytes().get(3).is_none_or(|b| !b.is_ascii_digit())
            } else {
                lower.match_indices(p.as_str()).any(|(i, m)| {
                    // "4.7.0" must not match "4.7.01".
                    let next = lower.as_bytes().get(i + m.len());
                    !(m.ends_with(|c: char| c.is_ascii_digit())
                        && next.is_some_and(u8::is_ascii_digit))
                })
            }
        })
    }

    /// Whether the rule applies to `group`.
    pub fn covers(&self, group: &str) -> bool {
        self.groups.is_empty() || self.groups.iter().any(|g| g == group)
    }
}

/// The validated shaping settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Shaping {
    /// Named groups, in file order (the first match wins).
    pub groups: Vec<Group>,
    /// The catch-all group.
    pub default: Group,
    /// Back-off rules, in file order (the first match wins).
    pub rules: Vec<Rule>,
}

impl Shaping {
    /// The group of a destination whose MX hosts are `hosts`, in preference
    /// order: the first host that matches a group decides.
    pub fn group_of<'a>(&self, hosts: impl IntoIterator<Item = &'a str>) -> &Group {
        for h in hosts {
            let h = h.trim_end_matches('.').to_ascii_lowercase();
            if let Some(g) = self.groups.iter().find(|g| g.matches(&h)) {
                return g;
            }
        }
        &self.default
    }

    /// A group by name (`default` included).
    pub fn group(&self, name: &str) -> Option<&Group> {
        if name == self.default.name {
            return Some(&self.default);
        }
        self.groups.iter().find(|g| g.name == name)
    }

    /// The first rule for `group` that matches `reply`.
    pub fn rule_for(&self, group: &str, reply: &str) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|r| r.covers(group) && r.matches(reply))
    }

    /// The built-in settings (the shipped file), with the default group's
    /// connections and messages per connection from `[delivery]`.
    pub fn built_in(connections: usize, per_connection: usize) -> Shaping {
        let mut errors = Vec::new();
        parse(
            Path::new("config/shaping.toml (built in)"),
            BUILT_IN,
            connections,
            per_connection,
            &mut errors,
        )
        .unwrap_or_else(|| Shaping {
            groups: Vec::new(),
            default: default_group(connections, per_connection),
            rules: Vec::new(),
        })
    }
}

fn default_group(connections: usize, per_connection: usize) -> Group {
    Group {
        name: DEFAULT_GROUP.into(),
        mx: Vec::new(),
        connections,
        messages_per_second: None,
        messages_per_hour: None,
        messages_per_connection: per_connection,
        recipients_per_transaction: 100,
    }
}

/// Reads and checks a shaping file's text; problems go to `errors` (named
/// with `file`), and then `None` is returned. `connections` and
/// `per_connection` are `[delivery]`'s, the default group's defaults.
pub fn parse(
    file: &Path,
    text: &str,
    connections: usize,
    per_connection: usize,
    errors: &mut Vec<ConfigError>,
) -> Option<Shaping> {
    let before = errors.len();
    let raw: RawShaping = parse_raw(file, text, errors)?;
    let mut c = Checker { file, text, errors };
    let mut default = default_group(connections, per_connection);
    if let Some((i, g)) = raw.shaping.iter().enumerate().find(|(_, g)| {
        g.name
            .as_ref()
            .is_some_and(|n| n.get_ref() == DEFAULT_GROUP)
    }) {
        default = group(&mut c, i, g, &default);
    }
    let mut groups: Vec<Group> = Vec::new();
    for (i, g) in raw.shaping.iter().enumerate() {
        let key = format!("shaping[{i}]");
        let Some(name) = &g.name else {
            c.missing(&format!("{key}.name"), "a name such as \"google\"");
            continue;
        };
        if name.get_ref() == DEFAULT_GROUP {
            if g.mx.is_some() {
                c.at(&format!("{key}.mx"), name, "the default group has no `mx`: it takes every destination no other group matches");
            }
            continue;
        }
        if groups.iter().any(|o| &o.name == name.get_ref()) {
            c.at(
                &format!("{key}.name"),
                name,
                format!("a second group named `{}`", name.get_ref()),
            );
        }
        let built = group(&mut c, i, g, &default);
        if built.mx.is_empty() {
            c.at(
                &format!("{key}.mx"),
                name,
                "needs `mx`: MX host name suffixes such as [\".google.com\"]",
            );
        }
        groups.push(built);
    }
    let names: Vec<String> = groups.iter().map(|g| g.name.clone()).collect();
    let rules = raw
        .backoff
        .iter()
        .enumerate()
        .filter_map(|(i, r)| rule(&mut c, i, r, &names))
        .collect();
    (errors.len() == before).then_some(Shaping {
        groups,
        default,
        rules,
    })
}

/// One `[[shaping]]` entry; unset limits come from `base` (the default
/// group), except the rates, which are unlimited unless set.
fn group(c: &mut Checker<'_>, i: usize, g: &RawGroup, base: &Group) -> Group {
    let key = |k: &str| format!("shaping[{i}].{k}");
    let mut mx = Vec::new();
    for s in g.mx.iter().flatten() {
        let v = s
            .get_ref()
            .trim()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let bare = v.trim_start_matches('.');
        if !super::senders::is_host_name(bare) {
            c.at(
                &key("mx"),
                s,
                format!(
                    "`{}` is not a host name suffix such as \".google.com\"",
                    s.get_ref()
                ),
            );
            continue;
        }
        // A suffix without its dot would match "notgoogle.com" too.
        mx.push(format!(".{bare}"));
    }
    // At least one message an hour: a slower rate is no rate.
    let rate = |c: &mut Checker<'_>, k: &str, v: &Option<Spanned<f64>>, min: f64| match v {
        Some(r) if r.get_ref().is_finite() && *r.get_ref() >= min && *r.get_ref() <= 1e9 => {
            Some(*r.get_ref())
        }
        Some(r) => {
            c.at(
                &key(k),
                r,
                format!("must be a number from {min} to 1000000000 (at least one message an hour)"),
            );
            None
        }
        None => None,
    };
    Group {
        name: g
            .name
            .as_ref()
            .map(|n| n.get_ref().clone())
            .unwrap_or_default(),
        mx,
        connections: count(
            c,
            &key("connections"),
            &g.connections,
            10_000,
            base.connections,
        ),
        messages_per_second: rate(
            c,
            "messages_per_second",
            &g.messages_per_second,
            1.0 / 3600.0,
        ),
        messages_per_hour: rate(c, "messages_per_hour", &g.messages_per_hour, 1.0),
        messages_per_connection: count(
            c,
            &key("messages_per_connection"),
            &g.messages_per_connection,
            1_000_000,
            base.messages_per_connection,
        ),
        recipients_per_transaction: count(
            c,
            &key("recipients_per_transaction"),
            &g.recipients_per_transaction,
            1000,
            base.recipients_per_transaction,
        ),
    }
}

/// One `[[backoff]]` rule, checked.
fn rule(c: &mut Checker<'_>, i: usize, r: &RawRule, groups: &[String]) -> Option<Rule> {
    let key = |k: &str| format!("backoff[{i}].{k}");
    let Some(name) = &r.name else {
        c.missing(&key("name"), "a name such as \"throttled\"");
        return None;
    };
    let reply: Vec<String> = r
        .reply
        .iter()
        .flatten()
        .map(|p| p.get_ref().trim().to_ascii_lowercase())
        .filter(|p| !p.is_empty())
        .collect();
    if reply.is_empty() {
        c.at(
            &key("reply"),
            name,
            "needs `reply`: codes or texts such as [\"421\", \"4.7.0\", \"too many connections\"]",
        );
    }
    for g in r.groups.iter().flatten() {
        if g.get_ref() != DEFAULT_GROUP && !groups.contains(g.get_ref()) {
            c.at(
                &key("groups"),
                g,
                format!("no `[[shaping]]` group named `{}`", g.get_ref()),
            );
        }
    }
    let Some(action) = &r.action else {
        c.missing(&key("action"), "\"reduce\", \"connections\" or \"suspend\"");
        return None;
    };
    let action = match action.get_ref().as_str() {
        "reduce" => match &r.factor {
            Some(f) if *f.get_ref() > 0.0 && *f.get_ref() < 1.0 => Action::Reduce(*f.get_ref()),
            Some(f) => {
                c.at(
                    &key("factor"),
                    f,
                    "must be between 0 and 1 (0.5 halves the rate)",
                );
                return None;
            }
            None => Action::Reduce(0.5),
        },
        "connections" => {
            Action::Connections(count(c, &key("connections"), &r.connections, 10_000, 1))
        }
        "suspend" => match &r.duration {
            Some(d) => Action::Suspend(duration(c, &key("duration"), d)?),
            None => {
                c.missing(&key("duration"), "how long to suspend, such as \"15m\"");
                return None;
            }
        },
        other => {
            c.at(
                &key("action"),
                action,
                format!("`{other}` is not \"reduce\", \"connections\" or \"suspend\""),
            );
            return None;
        }
    };
    let recover_after = match &r.recover_after {
        Some(d) => duration(c, &key("recover_after"), d)?,
        None => Duration::from_secs(300),
    };
    Some(Rule {
        name: name.get_ref().clone(),
        reply,
        groups: r
            .groups
            .iter()
            .flatten()
            .map(|g| g.get_ref().clone())
            .collect(),
        action,
        recover_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Result<Shaping, String> {
        let mut errors = Vec::new();
        parse(Path::new("shaping.toml"), BUILT_IN, 10, 1000, &mut errors)
            .ok_or_else(|| format!("the shipped shaping file does not load: {errors:?}"))
    }

    #[test]
    fn the_shipped_file_is_valid_and_groups_providers_by_mx() -> Result<(), String> {
        let s = shipped()?;
        let g = |hosts: &[&str]| s.group_of(hosts.iter().copied()).name.clone();
        assert_eq!(g(&["gmail-smtp-in.l.google.com."]), "google");
        assert_eq!(g(&["aspmx.l.google.com"]), "google");
        assert_eq!(g(&["shop-pl.mail.protection.outlook.com"]), "microsoft");
        assert_eq!(g(&["mta5.am0.yahoodns.net"]), "yahoo");
        assert_eq!(g(&["mx.wp.pl"]), "wp");
        assert_eq!(g(&["mx.poczta.onet.pl"]), "onet");
        assert_eq!(g(&["mx.interia.pl"]), "interia");
        assert_eq!(g(&["mx.o2.pl"]), "o2");
        assert_eq!(g(&["mail.notgoogle.com"]), "default");
        // The first MX host that matches decides.
        assert_eq!(g(&["backup.example.net", "mx.wp.pl"]), "wp");
        // The first matching rule acts: the specific ones come first.
        let rule = |group: &str, reply: &str| s.rule_for(group, reply).map(|r| r.name.clone());
        assert_eq!(
            rule("google", "421 4.7.0 Try again later").as_deref(),
            Some("rate-limited")
        );
        assert_eq!(
            rule(
                "microsoft",
                "451 4.7.650 The mail server has been temporarily rate limited"
            )
            .as_deref(),
            Some("blocked-for-now")
        );
        assert_eq!(
            rule(
                "microsoft",
                "451 4.7.500 Server busy. Please try again later"
            )
            .as_deref(),
            Some("blocked-for-now")
        );
        assert_eq!(
            rule("wp", "421 4.7.0 too many connections from your IP").as_deref(),
            Some("too-many-connections")
        );
        assert_eq!(
            rule("yahoo", "421 4.7.0 [TSS04] Messages temporarily deferred").as_deref(),
            Some("rate-limited")
        );
        assert_eq!(rule("google", "550 5.1.1 no such user"), None);
        Ok(())
    }

    #[test]
    fn reply_patterns_match_codes_and_text() {
        let r = Rule {
            name: "t".into(),
            reply: vec!["421".into(), "4.7.28".into(), "#cr-in-def".into()],
            groups: vec![],
            action: Action::Reduce(0.5),
            recover_after: Duration::from_secs(60),
        };
        assert!(r.matches("421 Service not available"));
        assert!(!r.matches("4210 odd"));
        assert!(!r.matches("450 4.2.1 mailbox busy"));
        assert!(r.matches("450 4.7.28 Our system has detected an unusual rate"));
        assert!(!r.matches("450 4.7.281 other"));
        assert!(r.matches("550 5.7.1 #CR-IN-DEF deferred"));
        assert!(r.covers("google"));
    }

    #[test]
    fn mistakes_are_named_with_their_place() {
        let text = "[[shaping]]\nname = \"x\"\nconnections = 0\n\n[[backoff]]\nname = \"b\"\nreply = [\"421\"]\naction = \"slow\"\ngroups = [\"nope\"]\n";
        let mut errors = Vec::new();
        assert!(parse(Path::new("s.toml"), text, 10, 100, &mut errors).is_none());
        let all = errors
            .iter()
            .map(|e| format!("{} {}", e.key, e.message))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            all.contains("shaping[0].connections must be between 1"),
            "{all}"
        );
        assert!(all.contains("shaping[0].mx needs `mx`"), "{all}");
        assert!(
            all.contains("backoff[0].groups no `[[shaping]]` group named `nope`"),
            "{all}"
        );
        assert!(all.contains("backoff[0].action `slow` is not"), "{all}");
    }

    #[test]
    fn the_interval_is_the_stricter_limit() {
        let mut g = default_group(1, 1);
        assert_eq!(g.interval(), None);
        g.messages_per_second = Some(10.0);
        assert_eq!(g.interval(), Some(Duration::from_millis(100)));
        g.messages_per_hour = Some(360.0);
        assert_eq!(g.interval(), Some(Duration::from_secs(10)));
    }
}
