//! The flow files of a config snapshot: `config/automations/*.toml` (the
//! `[paths] automations` folder), parsed and checked against the loaded
//! templates and the config's senders, every problem with its file, line
//! and column.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::flow::{self, Flow};
use crate::config::{Config, ConfigError};
use crate::render::Templates;
use crate::segment::lang::{self, Problem};

/// The flow files of a snapshot.
#[derive(Debug, Clone, Default)]
pub struct FlowFiles {
    /// The directory.
    pub dir: PathBuf,
    /// Flows that parsed and passed their checks, by name.
    pub loaded: BTreeMap<String, Arc<Flow>>,
    /// Flows with problems: name → every problem.
    pub failed: BTreeMap<String, Vec<ConfigError>>,
}

impl FlowFiles {
    /// Reads every `*.toml` in `dir` and checks each flow against the
    /// config and the templates loaded with it.
    pub fn load(dir: &Path, config: &Config, templates: &Templates) -> FlowFiles {
        let mut out = FlowFiles {
            dir: dir.to_path_buf(),
            ..Default::default()
        };
        let sites: Vec<String> = config.sites.iter().map(|s| s.id.clone()).collect();
        for f in crate::config::toml_files(dir) {
            let name = f
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            let err = |p: Problem| ConfigError {
                file: f.clone(),
                position: p.loc.position,
                key: p.loc.path,
                message: p.message,
            };
            let at_file = |message: String| ConfigError {
                file: f.clone(),
                position: None,
                key: String::new(),
                message,
            };
            if !flow::valid_name(&name) {
                out.failed.insert(
                    name,
                    vec![at_file(
                        "a flow's file name must be 1-64 letters, digits, `-`, `_` or `.` before .toml"
                            .into(),
                    )],
                );
                continue;
            }
            let text = match std::fs::read_to_string(&f) {
                Ok(t) => t,
                Err(e) => {
                    out.failed
                        .insert(name, vec![at_file(format!("cannot read: {e}"))]);
                    continue;
                }
            };
            let parsed = lang::from_toml(&text).and_then(|root| {
                let fl = flow::parse(&name, &root, &sites)?;
                let problems = check(&fl, &root, config, templates);
                if problems.is_empty() {
                    Ok(fl)
                } else {
                    Err(problems)
                }
            });
            match parsed {
                Ok(fl) => {
                    out.loaded.insert(name, Arc::new(fl));
                }
                Err(problems) => {
                    out.failed
                        .insert(name, problems.into_iter().map(err).collect());
                }
            }
        }
        out
    }

    /// Every problem, in file order.
    pub fn errors(&self) -> impl Iterator<Item = &ConfigError> {
        self.failed.values().flatten()
    }
}

/// Problems of a parsed flow against the config and templates: templates
/// that are not loaded, senders that are not configured. Each is located
/// at the key that names it (found again in the document tree).
pub fn check(f: &Flow, root: &lang::Node, config: &Config, templates: &Templates) -> Vec<Problem> {
    let mut out = Vec::new();
    let steps = child(root, "steps");
    for (i, s) in f.steps.iter().enumerate() {
        let step_node = steps.and_then(|n| item(n, i));
        let mut messages: Vec<(Option<&lang::Node>, &flow::Message)> = Vec::new();
        if let Some(m) = &s.message {
            messages.push((step_node, m));
        }
        let variants = step_node.and_then(|n| child(n, "variants"));
        for (j, v) in s.variants.iter().enumerate() {
            messages.push((variants.and_then(|n| item(n, j)), &v.message));
        }
        for (node, m) in messages {
            let loc_of = |key: &str| {
                node.and_then(|n| child(n, key))
                    .or(node)
                    .map(|n| n.loc.clone())
                    .unwrap_or_else(|| root.loc.clone())
            };
            if templates.get(&m.template).is_none() {
                let why = match templates.failed.get(&m.template) {
                    Some(_) => "has problems (see check-config's template errors)",
                    None => "is not in the templates folder",
                };
                out.push(Problem {
                    loc: loc_of("template"),
                    message: format!("template `{}` {why}", m.template),
                });
            }
            if m.channel == crate::contacts::model::Channel::Sms {
                if templates.get(&m.template).is_some_and(|t| t.sms.is_empty()) {
                    out.push(Problem {
                        loc: loc_of("sms"),
                        message: format!(
                            "template `{}` has no SMS body (body.<lang>.sms.txt)",
                            m.template
                        ),
                    });
                }
                let gw = m.gateway.as_ref().or(config.sms.default_gateway.as_ref());
                match gw {
                    Some(g) if config.sms.gateway(g).is_some() => {}
                    Some(g) => out.push(Problem {
                        loc: loc_of("sms"),
                        message: format!("no [[sms_gateway]] with id `{g}`"),
                    }),
                    None => out.push(Problem {
                        loc: loc_of("sms"),
                        message: "an SMS step needs an [[sms_gateway]] in the config".into(),
                    }),
                }
            }
            if let Some(sender) = &m.sender
                && config.sender(sender).is_none()
            {
                out.push(Problem {
                    loc: loc_of("sender"),
                    message: format!("no [[sender]] with id `{sender}`"),
                });
            }
        }
    }
    out
}

fn child<'a>(n: &'a lang::Node, key: &str) -> Option<&'a lang::Node> {
    match &n.v {
        lang::NodeV::Table(e) => e.iter().find(|(k, _)| k == key).map(|(_, v)| v),
        _ => None,
    }
}

fn item(n: &lang::Node, i: usize) -> Option<&lang::Node> {
    match &n.v {
        lang::NodeV::Array(a) => a.get(i),
        _ => None,
    }
}
