//! Templates and rendering: template folders (`template.rs`), load-time
//! preparation (`prepare.rs`: MJML, CSS inlining, text derivation), a
//! template compiled for a send and rendered per recipient (`compile.rs`),
//! click tracking and the open pixel (`links.rs`), prices (`locale.rs`) and
//! the parallel bulk renderer (`bulk.rs`).
//!
//! Errors are messages (`String`, and [`RenderError`] around one), because
//! no caller tells render failures apart: the template loader files them
//! as load problems (`prepare.rs`), a preview or template message answers
//! them as one 422 `render_failed`, a campaign logs them or refuses its
//! spec with them, `herald serve` stops on `bulk::pool`'s. The sender check
//! of `Compiled::new` is done before it by the send layer
//! (`OutboxError::UnknownSender`). One caller does branch, on the text:
//! `campaign::check_spec` tells a subject's own error from the template's
//! by `subject:` / `(subject)` in `preview::render`'s message. A typed error
//! naming the failing part would serve it better; it waits for the
//! campaign module, which also returns `Compiled::new`'s `String` as it is
//! and reads `RenderError.0`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{ConfigError, Greeting, Sender, Site};

pub mod bulk;
pub mod compile;
pub mod links;
pub mod locale;
pub mod prepare;
pub mod preview;
pub mod template;

pub use compile::{Compiled, Recipient, RenderError, Rendered, SendOptions};
pub use template::Template;

/// Every template folder of the templates directory, loaded or not.
#[derive(Debug, Default)]
pub struct Templates {
    /// The templates directory.
    pub dir: PathBuf,
    /// Templates that loaded, by name.
    pub loaded: BTreeMap<String, Arc<Template>>,
    /// Templates that did not, by name, with every problem.
    pub failed: BTreeMap<String, Vec<ConfigError>>,
}

impl Templates {
    /// Loads every folder of `dir` (a missing directory is an empty set).
    pub fn load(
        dir: &Path,
        senders: &[Arc<Sender>],
        sites: &[Site],
        greetings: &BTreeMap<String, Greeting>,
    ) -> Templates {
        let mut t = Templates {
            dir: dir.to_path_buf(),
            ..Default::default()
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return t;
        };
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        for d in dirs {
            let name = d
                .file_name()
                .and_then(|f| f.to_str())
                .unwrap_or("")
                .to_string();
            if name.starts_with('.') {
                continue;
            }
            match template::load(&d, senders, sites, greetings) {
                Ok(tpl) => {
                    t.loaded.insert(name, Arc::new(tpl));
                }
                Err(errors) => {
                    t.failed.insert(name, errors);
                }
            }
        }
        t
    }

    /// Renders every template that has a `sample.json` with that sample for
    /// every site and language it may be sent in: a contact of each
    /// `[[site]]` (the site's own sample values when `sample.json` gives
    /// some) in each language of the template, so a site that lacks what
    /// the template needs fails here and not on every recipient. Returns
    /// the set with failing templates moved to `failed`, or `None` if all
    /// passed. `config` is the config the set was loaded with.
    pub fn trial_render(&self, config: &crate::config::Config) -> Option<Templates> {
        let mut failed: BTreeMap<String, Vec<ConfigError>> = BTreeMap::new();
        // Without a [[site]], contacts have none: render as the sample's.
        let sites: Vec<Option<&Site>> = if config.sites.is_empty() {
            vec![None]
        } else {
            config.sites.iter().map(Some).collect()
        };
        for (name, t) in &self.loaded {
            if t.sample.is_none() {
                continue;
            }
            for site in &sites {
                for lang in t.languages() {
                    let Some(v) = t.variant(*site, Some(&lang)) else {
                        continue;
                    };
                    let input = preview::PreviewInput {
                        language: Some(lang.clone()),
                        site: site.map(|s| s.id.clone()),
                        personalize: true,
                        tracking: true,
                        ..Default::default()
                    };
                    if let Err(e) =
                        preview::render(t.clone(), config, preview::preview_send(), input, 0)
                    {
                        let for_site = match site {
                            Some(s) => format!("a contact of site `{}`", s.id),
                            None => "the sample contact".to_string(),
                        };
                        failed.entry(name.clone()).or_default().push(ConfigError {
                            file: v.html_file.clone(),
                            position: None,
                            key: String::new(),
                            message: format!(
                                "template `{name}` cannot be rendered for {for_site} in `{lang}` (trial render with sample.json): {e}"
                            ),
                        });
                    }
                }
            }
        }
        if failed.is_empty() {
            return None;
        }
        let mut out = Templates {
            dir: self.dir.clone(),
            loaded: self.loaded.clone(),
            failed: self.failed.clone(),
        };
        for (name, errors) in failed {
            out.loaded.remove(&name);
            out.failed.insert(name, errors);
        }
        Some(out)
    }

    /// Every problem of every template.
    pub fn errors(&self) -> impl Iterator<Item = &ConfigError> {
        self.failed.values().flatten()
    }

    /// A loaded template.
    pub fn get(&self, name: &str) -> Option<&Arc<Template>> {
        self.loaded.get(name)
    }
}
