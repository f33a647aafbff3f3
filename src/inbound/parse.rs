//! Classifies an inbound report (DSN, ARF, plain-text bounce, auto-reply).
//! TEMPORARY stand-in with the agreed API; replaced by the parser branch.

use serde::{Deserialize, Serialize};

/// What a report says about one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Hard.
    Hard,
    /// Soft.
    Soft,
    /// Policy.
    Policy,
    /// Complaint.
    Complaint,
    /// Auto-reply.
    AutoReply,
    /// Delay.
    Delay,
    /// Unknown.
    Unknown,
}

impl Verdict {
    /// Name.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Hard => "hard",
            Verdict::Soft => "soft",
            Verdict::Policy => "policy",
            Verdict::Complaint => "complaint",
            Verdict::AutoReply => "auto_reply",
            Verdict::Delay => "delay",
            Verdict::Unknown => "unknown",
        }
    }
    /// Bounce.
    pub fn is_bounce(self) -> bool {
        matches!(self, Verdict::Hard | Verdict::Soft | Verdict::Policy)
    }
    /// Class.
    pub fn bounce_class(self) -> Option<crate::delivery::model::BounceClass> {
        use crate::delivery::model::BounceClass;
        match self {
            Verdict::Hard => Some(BounceClass::Hard),
            Verdict::Soft => Some(BounceClass::Soft),
            Verdict::Policy => Some(BounceClass::Policy),
            _ => None,
        }
    }
}

/// Format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Dsn.
    Dsn,
    /// Arf.
    Arf,
    /// Plain.
    PlainBounce,
    /// Auto.
    AutoReply,
    /// Unknown.
    Unknown,
}

/// Finding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Recipient.
    pub recipient: Option<String>,
    /// Verdict.
    pub verdict: Verdict,
    /// Status.
    pub status: Option<String>,
    /// Diagnostic.
    pub diagnostic: Option<String>,
}

/// Report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Format.
    pub format: Format,
    /// Findings.
    pub findings: Vec<Finding>,
    /// Message-ID.
    pub original_message_id: Option<String>,
    /// Return paths.
    pub original_return_paths: Vec<String>,
    /// Feedback type.
    pub feedback_type: Option<String>,
    /// Subject.
    pub subject: Option<String>,
    /// From.
    pub from: Option<String>,
}

/// Parses.
pub fn parse(raw: &[u8]) -> Report {
    let text = String::from_utf8_lossy(raw);
    let verdict = if text.contains("feedback-report") {
        Verdict::Complaint
    } else if text.contains("5.1.1") {
        Verdict::Hard
    } else {
        Verdict::Unknown
    };
    Report {
        format: Format::Unknown,
        findings: vec![Finding {
            recipient: None,
            verdict,
            status: None,
            diagnostic: None,
        }],
        original_message_id: None,
        original_return_paths: Vec::new(),
        feedback_type: None,
        subject: None,
        from: None,
    }
}
