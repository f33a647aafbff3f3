//! What the daemon runs on: the validated config together with the
//! templates and segment files it points to, loaded at one moment.
//!
//! The config is a leaf ([`crate::config`] names neither rendering nor
//! segments); this module is where the three meet. [`Snapshot::load`] is the
//! one way to build one, used by `check-config`, start-up, SIGHUP and the
//! command-line tools alike, so all of them report the same problems: the
//! config's first (every one, with its position), then, once the config is
//! valid, whether `[signup] template` names a loaded transactional template.
//! Templates and segment files that fail are not errors here: each is kept,
//! with its problems, in the sets' `failed`.
//!
//! A snapshot never changes. The daemon holds the current one in a
//! [`Current`] and SIGHUP swaps in a new one whole, so a reader that took
//! one sees templates that were loaded with (and checked against) exactly
//! that config's senders and sites.

use std::path::Path;
use std::sync::{Arc, RwLock};

use crate::automation::files::FlowFiles;
use crate::config::{Config, ConfigError, ConfigErrors};
use crate::render::Templates;
use crate::render::template::Kind;
use crate::segment::SegmentFiles;

/// A config and what was loaded with it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The validated config.
    pub config: Arc<Config>,
    /// Template folders as loaded (and trial-rendered), with each failing
    /// one's problems.
    pub templates: Arc<Templates>,
    /// Segment files as loaded, with each failing one's problems.
    pub segments: Arc<SegmentFiles>,
    /// Automation flow files as loaded (checked against the templates),
    /// with each failing one's problems.
    pub automations: Arc<FlowFiles>,
}

impl Snapshot {
    /// Loads and validates the config at `path`, then the templates and
    /// segment files it points to. Returns every problem of the config, or
    /// the `[signup] template` problem; the daemon cannot run on either.
    pub fn load(path: &Path) -> Result<Snapshot, ConfigErrors> {
        Snapshot::with_config(Config::load(path)?)
    }

    /// Loads the templates and segment files `config` points to: every
    /// template folder (each checked against the config's senders, sites and
    /// greetings, then rendered once with its sample data for every site and
    /// language) and every segment file.
    pub fn with_config(config: Config) -> Result<Snapshot, ConfigErrors> {
        let templates = Templates::load(
            &config.paths.templates,
            &config.senders,
            &config.sites,
            &config.rendering.greetings,
        );
        if let Some(e) = signup_template_problem(&config, &templates) {
            return Err(ConfigErrors(vec![e]));
        }
        let site_ids: Vec<String> = config.sites.iter().map(|s| s.id.clone()).collect();
        let segments = SegmentFiles::load(&config.paths.segments, &site_ids);
        // Render every template with its sample data once: errors that only
        // rendering reveals (an unknown filter, a type error) fail the
        // template now, not on the first recipient.
        let templates = templates.trial_render(&config).unwrap_or(templates);
        let automations = FlowFiles::load(&config.paths.automations, &config, &templates);
        Ok(Snapshot {
            config: Arc::new(config),
            templates: Arc::new(templates),
            segments: Arc::new(segments),
            automations: Arc::new(automations),
        })
    }
}

/// The problem of `[signup] template`, if it does not name a loaded
/// transactional template.
fn signup_template_problem(config: &Config, templates: &Templates) -> Option<ConfigError> {
    let signup = config.signup.as_ref()?;
    let name = &signup.template;
    let why = match templates.get(name) {
        Some(t) if t.kind == Kind::Transactional => return None,
        Some(_) => format!("template `{name}` must be kind = \"transactional\""),
        None => format!("no template `{name}` in the templates folder"),
    };
    Some(signup.template_problem(&config.file, why))
}

/// The running snapshot: SIGHUP replaces it whole. Readers take an `Arc`
/// and keep a consistent view for as long as they need it.
#[derive(Debug)]
pub struct Current(RwLock<Arc<Snapshot>>);

impl Current {
    /// Holds `s`.
    pub fn new(s: Snapshot) -> Current {
        Current(RwLock::new(Arc::new(s)))
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        // A poisoned lock only means a panic while swapping; the Arc inside is
        // still a complete snapshot.
        match self.0.read() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The current snapshot's config (for readers that need nothing else).
    pub fn get(&self) -> Arc<Config> {
        self.snapshot().config.clone()
    }

    /// Replaces the snapshot.
    pub fn set(&self, s: Snapshot) {
        match self.0.write() {
            Ok(mut g) => *g = Arc::new(s),
            Err(p) => *p.into_inner() = Arc::new(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    /// Writes `signup` as the config's `[signup]` section and a marketing
    /// template `m`, and loads the snapshot; the problems as text, with the
    /// directory replaced by `D`.
    fn load(signup: &str) -> Result<Result<Snapshot, Vec<String>>, std::io::Error> {
        let dir = tempfile::tempdir()?;
        let t = dir.path().join("templates/m");
        std::fs::create_dir_all(&t)?;
        std::fs::write(
            t.join("template.toml"),
            "sender = \"news\"\ndefault_language = \"en\"\n[subject]\nen = \"Hi\"\n",
        )?;
        std::fs::write(t.join("body.en.html"), "<p>Hi</p>")?;
        let path = dir.path().join("herald.toml");
        std::fs::write(
            &path,
            format!(
                "[http]\nlisten = \"127.0.0.1:0\"\npublic_url = \"http://localhost\"\n[storage]\npath = \"data\"\n[admin]\ntoken = \"{TOKEN}\"\n[tracking]\nsecret = \"{TOKEN}\"\n[[sender]]\nid = \"news\"\nfrom = \"news@shop.example\"\n{signup}"
            ),
        )?;
        let d = dir.path().display().to_string();
        Ok(Snapshot::load(&path)
            .map_err(|e| e.0.iter().map(|e| e.to_string().replace(&d, "D")).collect()))
    }

    #[test]
    fn the_signup_template_is_checked_with_the_position_of_its_key()
    -> Result<(), Box<dyn std::error::Error>> {
        let s = load("")?.map_err(|e| e.join("\n"))?;
        assert!(s.templates.get("m").is_some());
        assert_eq!(
            load("[signup]\nlists = [\"news\"]\ntemplate = \"m\"\n")?.err(),
            Some(vec![
                "D/herald.toml:15:12: `signup.template`: template `m` must be kind = \"transactional\"".to_string()
            ])
        );
        assert_eq!(
            load("[signup]\nlists = [\"news\"]\ntemplate = \"nope\"\n")?.err(),
            Some(vec![
                "D/herald.toml:15:12: `signup.template`: no template `nope` in the templates folder".to_string()
            ])
        );
        assert_eq!(
            load("[signup]\nlists = [\"news\"]\n")?.err(),
            Some(vec![
                "D/herald.toml: `signup.template`: missing required key (no template `confirm_subscription` in the templates folder)".to_string()
            ])
        );
        Ok(())
    }
}
